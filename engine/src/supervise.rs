//! Child processes that cannot outlive itera. A command started with [`spawn`] leads its
//! own session (and so its own process group: everything it starts, e.g. both sides of
//! `sleep 1 | cat`), and gets a *supervisor*: a small process forked from itera that holds
//! the read end of a pipe whose write end only itera holds. However itera ends — `kill
//! -9`, a second Ctrl-C, a panic — the kernel closes the write end; the supervisor reads
//! end-of-file and SIGKILLs the command's whole group. When the command ends normally,
//! itera kills what is left of the group (a stray `cmd &` must not write into a published
//! result) and releases the supervisor with one byte.
//!
//! No root, no subreaper, no polling: the supervisor sleeps in `read(2)`. It ignores
//! SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C reaches itera's whole process group),
//! and closes every other descriptor, so it keeps no pipe or log of itera open.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// A running command with its supervisor.
#[derive(Debug)]
pub struct Supervised {
    pub child: Child,
    supervisor: libc::pid_t,
    /// itera's end of the supervisor's pipe; closing it (by dying) kills the group.
    release: Option<OwnedFd>,
}

/// Starts `cmd` in a new session, with a supervisor that kills its process group if this
/// process dies before [`Supervised::finish`].
pub fn spawn(cmd: &mut Command) -> io::Result<Supervised> {
    // SAFETY: setsid is async-signal-safe and only changes the child's own session.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pgid = child.id() as libc::pid_t;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = io::Error::last_os_error();
        kill_group(pgid, libc::SIGKILL);
        return Err(e);
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child of fork only calls async-signal-safe functions (signal, close,
    // syscall, read, kill, _exit) and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { supervise(read.as_raw_fd(), pgid) }
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        kill_group(pgid, libc::SIGKILL);
        return Err(e);
    }
    drop(read);
    Ok(Supervised {
        child,
        supervisor: pid,
        release: Some(write),
    })
}

/// The supervisor's whole life (in the forked child).
///
/// # Safety
/// Only to be called in a freshly forked child; never returns.
unsafe fn supervise(read: libc::c_int, pgid: libc::pid_t) -> ! {
    libc::signal(libc::SIGINT, libc::SIG_IGN);
    libc::signal(libc::SIGTERM, libc::SIG_IGN);
    libc::signal(libc::SIGHUP, libc::SIG_IGN);
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    close_all_but(read);
    let mut byte = 0u8;
    loop {
        let n = libc::read(read, (&mut byte as *mut u8).cast(), 1);
        if n == 1 {
            // Released: the command ended and itera cleaned up.
            libc::_exit(0);
        }
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        // End of file: itera is gone.
        libc::kill(-pgid, libc::SIGKILL);
        libc::_exit(0);
    }
}

/// Closes every descriptor except `keep` (async-signal-safe).
unsafe fn close_all_but(keep: libc::c_int) {
    let max = libc::c_uint::MAX;
    let ok = |rc: libc::c_long| rc == 0;
    let low = keep > 0
        && ok(libc::syscall(
            libc::SYS_close_range,
            0u32,
            (keep - 1) as u32,
            0u32,
        ));
    let high = ok(libc::syscall(
        libc::SYS_close_range,
        (keep + 1) as u32,
        max,
        0u32,
    ));
    if (keep == 0 || low) && high {
        return;
    }
    // No close_range (Linux < 5.9): close the usual range one by one.
    for fd in 0..65_536 {
        if fd != keep {
            libc::close(fd);
        }
    }
}

/// Sends `signal` to the process group `pgid` (errors, e.g. an empty group, are ignored).
pub fn kill_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: kill(2) on a process group we created.
        unsafe { libc::kill(-pgid, signal) };
    }
}

impl Supervised {
    /// The command's pid, which is also its process group and session id.
    pub fn pgid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// After the command ended: kills what is left of its group and releases the
    /// supervisor.
    pub fn finish(mut self) {
        kill_group(self.pgid(), libc::SIGKILL);
        self.release_supervisor();
    }

    fn release_supervisor(&mut self) {
        if let Some(fd) = self.release.take() {
            // SAFETY: writing one byte to a pipe we own.
            unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            drop(fd);
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.supervisor, &mut status, 0) };
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.release.is_some() {
            // Dropped without `finish` (an error while waiting): stop everything.
            kill_group(self.pgid(), libc::SIGKILL);
            let _ = self.child.wait();
            self.release_supervisor();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn finish_kills_leftovers_of_the_group_and_releases_the_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 3003 & echo $! > {}", pidfile.display()));
        let mut s = spawn(&mut cmd).unwrap();
        assert!(s.child.wait().unwrap().success());
        let bg: libc::pid_t = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(bg));
        let supervisor = s.supervisor;
        s.finish();
        let t = Instant::now();
        while alive(bg) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(bg), "the background sleep was killed");
        assert!(!alive(supervisor), "the supervisor was released and reaped");
    }
}
