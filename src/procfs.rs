//! `/proc`: `/proc/<pid>/stat` read by field number as proc(5) numbers them, the boot time,
//! and this process's own usage for the `process_*` metrics.

use std::sync::OnceLock;

/// One process's `/proc/<pid>/stat` line.
pub struct Stat(String);

impl Stat {
    /// Reads `/proc/<who>/stat`; `who` is a pid or `self`.
    pub fn read(who: impl std::fmt::Display) -> Option<Stat> {
        std::fs::read_to_string(format!("/proc/{who}/stat")).ok().map(Stat)
    }

    pub fn parse(line: &str) -> Stat {
        Stat(line.to_owned())
    }

    /// Field 1: the pid, as the PID namespace of the /proc mount sees it.
    pub fn pid(&self) -> Option<i32> {
        self.0.split(' ').next()?.parse().ok()
    }

    /// Field `n` (3 = state, 4 = parent pid, 6 = session, 22 = start time), for n ≥ 3. The
    /// command name (field 2) may hold spaces and parentheses: fields are counted from its
    /// last ')'.
    pub fn field(&self, n: usize) -> Option<&str> {
        let rest = &self.0[self.0.rfind(')')? + 1..];
        rest.split_whitespace().nth(n.checked_sub(3)?)
    }
}

/// What recovery needs to know of a process: its group and when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Field 3: `Z` for a zombie (dead, not yet reaped).
    pub state: char,
    /// Field 5: its process group.
    pub pgrp: i32,
    /// Field 22: when it started, in clock ticks since boot.
    pub start_ticks: u64,
}

impl Stat {
    pub fn info(&self) -> Option<ProcInfo> {
        Some(ProcInfo {
            pid: u32::try_from(self.pid()?).ok()?,
            state: self.field(3)?.chars().next()?,
            pgrp: self.field(5)?.parse().ok()?,
            start_ticks: self.field(22)?.parse().ok()?,
        })
    }
}

/// This process's group and session as its own PID namespace sees them: 0 for one whose
/// leader is outside the namespace (a container's, a CI runner's), where getpgrp(2) and
/// getsid(2) answer 0, which rustix's `Pid` cannot hold. `None` when `/proc` is not this
/// namespace's (the pid it shows differs).
pub fn own_group_and_session() -> Option<(u32, u32)> {
    let stat = Stat::read("self")?;
    if stat.pid()? != rustix::process::getpid().as_raw_nonzero().get() {
        return None;
    }
    Some((stat.field(5)?.parse().ok()?, stat.field(6)?.parse().ok()?))
}

/// Every process `/proc` lists (one that ends while the list is read is left out).
pub fn processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Stat::read(pid)?.info())
        .collect()
}

/// The boot time, in seconds since the epoch (`btime` of `/proc/stat`).
pub fn boot_time() -> Option<u64> {
    parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// The number after `key:` in a `/proc/<pid>/status` text (`Threads`, `VmRSS` in kB, ...).
pub fn status_value(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?.split_whitespace().next()?.parse().ok()
}

/// This process's resource usage, as the `process_*` series of every Prometheus client
/// library report it. A figure that cannot be read (no `/proc`) is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelfUsage {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    /// User plus system CPU time.
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`; infinite when unlimited.
    pub max_fds: Option<f64>,
    /// Seconds since the epoch.
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

impl SelfUsage {
    /// Reads `/proc/self/{stat,status,fd}` and the open-file limit.
    pub fn read() -> SelfUsage {
        let stat = Stat::read("self");
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let mut u = stat.as_ref().map(Self::from_stat).unwrap_or_default();
        u.threads = status.as_deref().and_then(|s| status_value(s, "Threads"));
        u.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        u.max_fds = Some(soft.map_or(f64::INFINITY, |n| n as f64));
        u
    }

    /// The figures `/proc/self/stat` holds: CPU time (fields 14 + 15, in clock ticks), start
    /// time (22, ticks after boot), virtual size (23, bytes), resident set (24, pages).
    fn from_stat(stat: &Stat) -> SelfUsage {
        let num = |n: usize| stat.field(n).and_then(|f| f.parse::<u64>().ok());
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let page = rustix::param::page_size() as u64;
        // Constant for the life of the process: read /proc/stat once.
        static START: OnceLock<Option<f64>> = OnceLock::new();
        let start = *START.get_or_init(|| Some(boot_time()? as f64 + num(22)? as f64 / hz));
        SelfUsage {
            resident_bytes: num(24).map(|pages| pages * page),
            virtual_bytes: num(23),
            cpu_seconds: num(14).zip(num(15)).map(|(user, system)| (user + system) as f64 / hz),
            start_time_seconds: start,
            ..SelfUsage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_past_an_odd_command_name() {
        let s = Stat::parse("7 (a) b (c)) S 99 7 5 0");
        assert_eq!(s.pid(), Some(7));
        assert_eq!(s.field(3), Some("S"));
        assert_eq!(s.field(4), Some("99"));
        assert_eq!(s.field(6), Some("5"));
        assert_eq!(s.field(9), None);
        assert_eq!(s.field(2), None);
        assert_eq!(Stat::parse("7 (x").field(3), None);
        assert_eq!(Stat::parse("").field(3), None);
    }

    #[test]
    fn process_info_and_the_list() {
        let me = Stat::parse("7 (a b) S 1 42 42 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 12345 0 0").info().unwrap();
        assert_eq!(me, ProcInfo { pid: 7, state: 'S', pgrp: 42, start_ticks: 12345 });
        let own = std::process::id();
        assert!(processes().iter().any(|p| p.pid == own && p.state != 'Z'));
    }

    #[test]
    fn reads_this_process() {
        let s = Stat::read("self").unwrap();
        assert_eq!(
            s.field(4).and_then(|p| p.parse::<u32>().ok()),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
    }

    #[test]
    fn status_and_boot_time_parse() {
        let status = "Name:\tcodara-agent\nThreadsX:\t9\nThreads:\t12\nVmRSS:\t   3800 kB\n";
        assert_eq!(status_value(status, "Threads"), Some(12));
        assert_eq!(status_value(status, "VmRSS"), Some(3800));
        assert_eq!(status_value(status, "Nope"), None);
        assert_eq!(parse_btime("cpu  1 2 3\nbtime 1764800000\nprocesses 9\n"), Some(1_764_800_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn usage_of_this_process() {
        let u = SelfUsage::read();
        let rss = u.resident_bytes.expect("rss");
        assert!(rss > 1 << 20 && rss < 1 << 32, "rss {rss}");
        assert!(u.virtual_bytes.expect("vsize") >= rss);
        assert!(u.cpu_seconds.expect("cpu") >= 0.0);
        assert!(u.open_fds.expect("fds") >= 3);
        assert!(u.max_fds.expect("limit") >= u.open_fds.unwrap_or(0) as f64);
        assert!(u.threads.expect("threads") >= 1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = u.start_time_seconds.expect("start time");
        assert!(start <= now + 2.0 && start > now - 3600.0, "start {start}, now {now}");
    }
}
