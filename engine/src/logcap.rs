//! Bounded logs. A stage log keeps its first [`HEAD_BYTES`] and its last [`TAIL_BYTES`]
//! (the middle is replaced by one line saying how much was left out), so a command that
//! prints without end cannot fill the disk through its log. The failure report reads at
//! most the last [`TAIL_READ_BYTES`] of a log and cuts lines longer than
//! [`LINE_BYTES`], so a log ending in one huge line prints a few KB, not the line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes of a stage log kept from its start.
pub const HEAD_BYTES: u64 = 8 << 20;
/// Bytes of a stage log kept from its end, once the head is full.
pub const TAIL_BYTES: usize = 1 << 20;
/// Bytes of a log the failure report reads from its end.
pub const TAIL_READ_BYTES: u64 = 16 << 10;
/// Longest line the failure report shows whole.
pub const LINE_BYTES: usize = 400;

/// What a capped log has written so far.
#[derive(Debug, Default)]
pub struct Capped {
    written: u64,
    /// The newest bytes past the head, at most `TAIL_BYTES`.
    tail: VecDeque<u8>,
    /// Bytes past the head that were dropped from `tail`.
    dropped: u64,
}

impl Capped {
    /// Writes `bytes` to `file` within the caps (errors, e.g. a full disk, are ignored: a
    /// log must not fail the stage it describes).
    pub fn write(&mut self, file: &mut File, mut bytes: &[u8]) {
        let room = HEAD_BYTES.saturating_sub(self.written);
        if room > 0 {
            let n = (bytes.len() as u64).min(room) as usize;
            let _ = file.write_all(&bytes[..n]);
            self.written += n as u64;
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        self.tail.extend(bytes);
        let over = self.tail.len().saturating_sub(TAIL_BYTES);
        if over > 0 {
            self.tail.drain(..over);
            self.dropped += over as u64;
        }
    }

    /// Writes the kept tail after a line saying what was left out; later writes start a
    /// new head.
    pub fn flush(&mut self, file: &mut File) {
        if self.tail.is_empty() {
            return;
        }
        if self.dropped > 0 {
            let _ = writeln!(
                file,
                "\n# itera: [log cut: {} bytes left out here; a log keeps its first {} MiB \
                 and its last {} MiB]",
                self.dropped,
                HEAD_BYTES >> 20,
                TAIL_BYTES >> 20
            );
        }
        let (a, b) = self.tail.as_slices();
        let _ = file.write_all(a);
        let _ = file.write_all(b);
        *self = Self::default();
    }
}

/// Cuts `line` to [`LINE_BYTES`] (at a character boundary) with a marker.
pub fn cut_line(line: &str) -> String {
    if line.len() <= LINE_BYTES {
        return line.to_owned();
    }
    let mut end = LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [... line cut: {} more bytes]",
        &line[..end],
        line.len() - end
    )
}

/// The last `lines` lines of the log at `path`, reading at most [`TAIL_READ_BYTES`]
/// from its end, each cut to [`LINE_BYTES`].
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_READ_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(TAIL_READ_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let mut shown: Vec<String> = all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| cut_line(l))
        .collect();
    if start > 0 && all.len() <= lines {
        // The first line read may be the end of a longer one.
        if let Some(first) = shown.first_mut() {
            *first = format!("[...] {first}");
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_head_and_tail_and_says_what_it_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = File::create(&path).unwrap();
        let mut cap = Capped::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..12 {
            cap.write(&mut file, &chunk);
        }
        cap.write(&mut file, b"\nthe end\n");
        cap.flush(&mut file);
        drop(file);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < HEAD_BYTES + TAIL_BYTES as u64 + 200, "{len}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[log cut: "), "marker present");
        assert!(text.ends_with("\nthe end\n"));
        let shown = tail(&path, 3);
        assert_eq!(shown.last().unwrap(), "the end");
        assert!(shown.iter().all(|l| l.len() < LINE_BYTES + 60), "{shown:?}");
    }

    #[test]
    fn one_huge_line_is_cut_when_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "y".repeat(1 << 20)).unwrap();
        let shown = tail(&path, 20);
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("[... line cut: "), "{}", &shown[0][..50]);
        assert!(shown[0].len() < 1000);
    }
}
