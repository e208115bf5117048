//! Reaping a task's main process with `wait4`, which also gives its resource usage and that
//! of the descendants it waited for: the usage of a task without a control group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::protocol::TaskUsage;

/// Waits for (and reaps) child `pid`; its exit status and usage.
pub fn reap(pid: u32) -> io::Result<(ExitStatus, TaskUsage)> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data, valid when zeroed; `wait4` writes into the two
    // pointers, which live for the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `pid` is our child, reaped here once.
    crate::eintr::retry(|| match unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } {
        -1 => Err(io::Error::last_os_error()),
        r => Ok(r),
    })?;
    let ms = |tv: libc::timeval| (tv.tv_sec as u64).saturating_mul(1000) + tv.tv_usec as u64 / 1000;
    let usage = TaskUsage {
        cpu_user_ms: ms(ru.ru_utime),
        cpu_system_ms: ms(ru.ru_stime),
        // Linux gives the largest resident set in KiB.
        memory_peak_bytes: (ru.ru_maxrss.max(0) as u64).saturating_mul(1024),
        ..TaskUsage::default()
    };
    Ok((ExitStatus::from_raw(status), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_cpu_time_of_a_child() {
        let mut child =
            std::process::Command::new("perl").args(["-e", "1 while times() < 0.2; exit 3"]).spawn().unwrap();
        let (status, usage) = reap(child.id()).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(usage.cpu_user_ms >= 150 && usage.cpu_user_ms < 2000, "{usage:?}");
        assert!(usage.memory_peak_bytes > 100_000, "{usage:?}");
        assert!(reap(child.id()).is_err(), "reaped once");
        assert!(child.wait().is_err(), "std's handle finds it reaped");
    }
}
