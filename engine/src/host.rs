//! Facts about the machine and the moment: host name, core count, wall-clock timestamps
//! (RFC 3339, UTC) and the git commit of a folder, as recorded in runs and store entries.

use std::path::Path;
use std::time::SystemTime;

/// This machine's host name ("unknown" if it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname NUL-terminates on success
    // (and we stop at the buffer's end regardless).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Logical cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `now` as RFC 3339 UTC with milliseconds, e.g. `2026-11-26T13:45:01.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Parses a timestamp written by [`timestamp`].
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// `YYYYmmdd-HHMMSS` in UTC, for run ids.
pub fn compact_timestamp(at: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(at).to_string(); // 2026-11-26T13:45:01Z
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8], &digits[8..14])
}

/// The commit checked out in the git repository containing `dir`, if any.
pub fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!sha.is_empty()).then_some(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_round_trip_and_compact_form_sorts() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_700_701_123);
        let s = timestamp(t);
        assert_eq!(s, "2026-11-26T13:45:01.123Z");
        assert_eq!(parse_timestamp(&s), Some(t));
        assert_eq!(compact_timestamp(t), "20261126-134501");
    }

    #[test]
    fn hostname_and_cores_are_known() {
        assert!(!hostname().is_empty());
        assert!(cores() >= 1);
    }
}
