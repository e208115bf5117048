//! EINTR is "try again", never an end.
//!
//! Where the interruptions come from here (seen with strace under load):
//! - **SIGCHLD.** Its disposition is the default (ignore), which normally means the kernel
//!   drops it before it reaches a thread. But a thread that spawns a task blocks every signal
//!   around its `clone` (glibc's `posix_spawn`), and a signal sent to a process while the
//!   receiving thread blocks it is queued instead of dropped; the kernel then wakes another
//!   thread to take it. That thread's blocking call returns EINTR, even though no handler
//!   runs. With tasks started four at a time, this happens every few seconds.
//! - **SIGSTOP / SIGCONT** (a debugger, `docker pause`, `kill -STOP`): every blocking call
//!   with a timeout in the process returns EINTR at the SIGCONT, handler or not.
//! - The handled signals (SIGTERM, SIGINT, SIGHUP via `signal-hook`, glibc's SIGSETXID).
//!
//! Socket calls with a timeout (`SO_RCVTIMEO`, `poll`) are never restarted by the kernel,
//! whatever `SA_RESTART` says, so each such call site loops. The std helpers (`write_all`,
//! `read_exact`, `read_to_end`, `BufRead::read_line`, `BufWriter::flush`) already retry;
//! plain `read`/`write`/`recv_from`/`poll`/`waitid` do not: they go through this module (or
//! loop on `Interrupted` where they are).

use std::io;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, Timespec};

/// Calls `f` until it returns anything but `ErrorKind::Interrupted`.
pub fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `poll(2)` that goes on after an interruption for the time left of `timeout` (`None`:
/// no limit). Returns the number of ready descriptors (0 on timeout).
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> rustix::io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|l| Timespec { tv_sec: l.as_secs() as _, tv_nsec: l.subsec_nanos() as _ });
        match rustix::event::poll(fds, ts.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A reader that is interrupted `n` times before each read succeeds.
    struct Flaky {
        interruptions: u32,
        left: u32,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left > 0 {
                self.left -= 1;
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            self.left = self.interruptions;
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let mut r = Flaky { interruptions: 3, left: 3 };
        let mut buf = [0u8; 4];
        assert_eq!(retry(|| r.read(&mut buf)).unwrap(), 1);
        assert_eq!(retry(|| r.read(&mut buf)).unwrap(), 1);
    }

    #[test]
    fn other_errors_pass_through() {
        let r: io::Result<()> = retry(|| Err(io::Error::from(io::ErrorKind::TimedOut)));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn poll_waits_out_its_timeout() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let mut fds = [PollFd::new(&r, rustix::event::PollFlags::IN)];
        let t0 = Instant::now();
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(30))).unwrap(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(25));
    }
}
