//! One task's control group: `task-<id>` in each hierarchy of the agent's [`Tree`] that the
//! task needs, its limits, the descriptors its process writes itself into before `exec`, the
//! kill of everything in it, and what it used.
//!
//! Which directories a task gets: the v2 one whenever there is a v2 subtree (it tracks, kills
//! with `cgroup.kill`, and counts CPU time in `cpu.stat` with no controller at all); v1
//! `memory`, `cpu` and `pids` only with a limit of theirs (without a memory group, the peak
//! comes from `wait4`); v1 `cpuacct` and `freezer` only without v2 (CPU time, and a kill that
//! no fork can outrun). Each directory costs a `mkdir`, the child's write into it (which takes
//! the kernel's cgroup locks: the dearest part) and an `rmdir`, so none is made that is not
//! needed.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::process::{kill_process, Pid, Signal};

use crate::cgroup::{read_number, stat_value};
use crate::contain::tree::{make_dir, Tree};
use crate::protocol::{TaskLimits, TaskUsage};

/// The CFS period a CPU limit is a quota of.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct TaskGroup {
    /// The v2 directory, and the controllers enabled in it.
    v2: Option<(PathBuf, Vec<&'static str>)>,
    /// v1 controller → directory (comounted controllers share one).
    v1: Vec<(&'static str, PathBuf)>,
    limits: TaskLimits,
}

impl TaskGroup {
    /// The group of task `id` (nothing is created: see [`TaskGroup::create`]).
    pub fn plan(tree: &Tree, id: u64, limits: TaskLimits) -> TaskGroup {
        let name = format!("task-{id}");
        let v2 = tree.v2.as_ref().map(|v| (v.dir.join(&name), v.controllers.clone()));
        let v2_has = |c: &str| v2.as_ref().is_some_and(|(_, ctls)| ctls.contains(&c));
        let wanted = |ctl: &str| match ctl {
            "memory" => limits.memory_bytes.is_some() && !v2_has("memory"),
            "cpu" => limits.cpus.is_some() && !v2_has("cpu"),
            "pids" => limits.pids.is_some() && !v2_has("pids"),
            _ => v2.is_none(), // cpuacct, freezer
        };
        let mut v1: Vec<(&'static str, PathBuf)> =
            tree.v1.iter().filter(|(c, _)| wanted(c)).map(|(c, d)| (*c, d.join(&name))).collect();
        if v2.is_none() && v1.is_empty() {
            // Something must hold the processes, limits or not.
            v1.extend(tree.v1.first().map(|(c, d)| (*c, d.join(&name))));
        }
        TaskGroup { v2, v1, limits }
    }

    /// Every directory, each once, v2 first.
    pub fn dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = self.v2.iter().map(|(d, _)| d.as_path()).collect();
        for (_, d) in &self.v1 {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    fn v1_dir(&self, ctl: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| *c == ctl).map(|(_, d)| d.as_path())
    }

    /// The v2 directory if `ctl` is enabled there.
    fn v2_with(&self, ctl: &str) -> Option<&Path> {
        self.v2.as_ref().filter(|(_, c)| c.contains(&ctl)).map(|(d, _)| d.as_path())
    }

    /// Makes the directories and writes the limits; on an error, removes what it made.
    pub fn create(&self) -> io::Result<()> {
        let made = self.dirs().into_iter().try_for_each(make_task_dir).and_then(|()| self.write_limits());
        if made.is_err() {
            self.remove();
        }
        made
    }

    fn write_limits(&self) -> io::Result<()> {
        let l = self.limits;
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), value).map_err(|e| io::Error::new(e.kind(), format!("{file}: {e}")))
        };
        if let Some(bytes) = l.memory_bytes {
            if let Some(d) = self.v2_with("memory") {
                write(d, "memory.max", bytes.to_string())?;
                // The whole task goes at once, as `memory.oom.group` says; no swap, so the
                // limit is the limit.
                write(d, "memory.oom.group", "1".into())?;
                let _ = write(d, "memory.swap.max", "0".into());
            } else if let Some(d) = self.v1_dir("memory") {
                write(d, "memory.limit_in_bytes", bytes.to_string())?;
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    write(d, "memory.memsw.limit_in_bytes", bytes.to_string())?;
                }
            }
        }
        if let Some(cpus) = l.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
            if let Some(d) = self.v2_with("cpu") {
                write(d, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            } else if let Some(d) = self.v1_dir("cpu") {
                write(d, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                write(d, "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        if let Some(n) = l.pids {
            if let Some(d) = self.v2_with("pids").or_else(|| self.v1_dir("pids")) {
                write(d, "pids.max", n.to_string())?;
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of each directory, opened for the child to write `0` (itself) into
    /// after `fork` and before `exec` (see [`crate::contain::Contained::configure`]).
    pub fn placement_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs()
            .into_iter()
            .map(|d| {
                rustix::fs::open(d.join("cgroup.procs"), OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(io::Error::from)
            })
            .collect()
    }

    /// v1 only, with a memory limit: an eventfd the kernel signals when the group hits its
    /// limit (`cgroup.event_control` on `memory.oom_control`). v1 has no `memory.oom.group`:
    /// the kernel would kill one process and leave the rest of the task running, so the
    /// agent kills the whole group on this signal, as v2 does by itself.
    pub fn oom_eventfd(&self) -> io::Result<Option<OwnedFd>> {
        let Some(d) = self.v1_dir("memory").filter(|_| self.limits.memory_bytes.is_some()) else {
            return Ok(None);
        };
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let ctl = rustix::fs::open(d.join("memory.oom_control"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let line = format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd());
        std::fs::write(d.join("cgroup.event_control"), line)?;
        Ok(Some(efd))
    }

    /// The pids in the group (from the first directory: each holds every process).
    pub fn procs(&self) -> Vec<i32> {
        let Some(d) = self.dirs().first().copied() else { return Vec::new() };
        let text = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Whether any process is left in the group.
    pub fn populated(&self) -> bool {
        if let Some((d, _)) = &self.v2 {
            if let Ok(events) = std::fs::read_to_string(d.join("cgroup.events")) {
                return stat_value(&events, "populated") != Some(0);
            }
        }
        !self.procs().is_empty()
    }

    /// SIGKILL to every process in the group, now: `cgroup.kill` (v2, Linux 5.14), else
    /// freeze, signal each process, thaw (so nothing forks between the list and the kill).
    pub fn kill(&self) {
        if let Some((d, _)) = &self.v2 {
            if std::fs::write(d.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        let frozen = self.freeze(true);
        for pid in self.procs() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        if frozen {
            self.freeze(false);
        }
    }

    /// Freezes (or thaws) the group; true once it is frozen (thawing: always true).
    fn freeze(&self, on: bool) -> bool {
        let (file, value, check): (PathBuf, &str, Box<dyn Fn() -> bool>) =
            if let Some((d, _)) = self.v2.as_ref().filter(|(d, _)| d.join("cgroup.freeze").exists()) {
                let events = d.join("cgroup.events");
                let check = move || std::fs::read_to_string(&events).is_ok_and(|e| stat_value(&e, "frozen") == Some(1));
                (d.join("cgroup.freeze"), if on { "1" } else { "0" }, Box::new(check))
            } else if let Some(d) = self.v1_dir("freezer") {
                let state = d.join("freezer.state");
                let check = move || std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN");
                (d.join("freezer.state"), if on { "FROZEN" } else { "THAWED" }, Box::new(check))
            } else {
                return !on;
            };
        if std::fs::write(&file, value).is_err() || !on {
            return !on;
        }
        let give_up = Instant::now() + Duration::from_millis(200);
        while !check() {
            if Instant::now() > give_up {
                // Frozen or not, signal now (and thaw after, in case part of it froze).
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Kills everything in the group and waits until it is empty, up to `deadline`; false
    /// if something is still there then (a process stuck in the kernel).
    pub fn end(&self, deadline: Instant) -> bool {
        let mut pause = Duration::from_micros(200);
        loop {
            if !self.populated() {
                return true;
            }
            self.kill();
            if Instant::now() >= deadline {
                return !self.populated();
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// What the group used (read once it is empty, so the counts are final).
    pub fn usage(&self) -> GroupUsage {
        let mut u = GroupUsage::default();
        if let Some(stat) = self.v2.as_ref().and_then(|(d, _)| std::fs::read_to_string(d.join("cpu.stat")).ok()) {
            u.cpu_ms =
                stat_value(&stat, "user_usec").zip(stat_value(&stat, "system_usec")).map(|(a, b)| (a / 1000, b / 1000));
        } else if let Some(d) = self.v1_dir("cpuacct") {
            u.cpu_ms = cpuacct(d);
        }
        if let Some(d) = self.v2_with("memory") {
            u.memory_peak = read_number(&d.join("memory.peak"));
            let events = std::fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            u.oom_killed = stat_value(&events, "oom_kill").is_some_and(|n| n > 0);
        } else if let Some(d) = self.v1_dir("memory") {
            u.memory_peak = read_number(&d.join("memory.max_usage_in_bytes"));
            let oom = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            u.oom_killed = stat_value(&oom, "oom_kill").is_some_and(|n| n > 0);
        }
        if self.limits.pids.is_some() {
            if let Some(d) = self.v2_with("pids").or_else(|| self.v1_dir("pids")) {
                let events = std::fs::read_to_string(d.join("pids.events")).unwrap_or_default();
                u.forks_refused = stat_value(&events, "max");
            }
        }
        u
    }

    /// Removes the directories (each must be empty of processes), deepest last made first.
    pub fn remove(&self) {
        for d in self.dirs().into_iter().rev() {
            remove_dir(d);
        }
    }
}

/// `mkdir` of a task's group; the agent's subtree is made again first if it went (removed
/// by hand while the agent ran).
fn make_task_dir(d: &Path) -> io::Result<()> {
    match make_dir(d) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_dir(d.parent().unwrap_or(d))?;
            make_dir(d)
        }
        other => other,
    }
}

/// `rmdir` of a group, retried for a moment: the kernel may still be finishing the exit of
/// its last process.
pub fn remove_dir(d: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(d) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove control group {}: {e}", d.display());
                return;
            }
            _ => return,
        }
    }
    log::warn!("cannot remove control group {}: still busy", d.display());
}

/// v1 CPU time in ms: `cpuacct.usage_user`/`usage_sys` (ns), else `cpuacct.stat` (ticks).
fn cpuacct(d: &Path) -> Option<(u64, u64)> {
    let ns = read_number(&d.join("cpuacct.usage_user")).zip(read_number(&d.join("cpuacct.usage_sys")));
    if let Some((user, sys)) = ns {
        return Some((user / 1_000_000, sys / 1_000_000));
    }
    let stat = std::fs::read_to_string(d.join("cpuacct.stat")).ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((stat_value(&stat, "user")? * 1000 / hz, stat_value(&stat, "system")? * 1000 / hz))
}

/// What a group counted; `None` where its files did not say.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct GroupUsage {
    /// User and system CPU time, ms.
    pub cpu_ms: Option<(u64, u64)>,
    pub memory_peak: Option<u64>,
    pub oom_killed: bool,
    pub forks_refused: Option<u64>,
}

impl GroupUsage {
    /// The task's usage: the group's figures, and `rusage`'s (`wait4` of the main process)
    /// where the group had none.
    pub fn with_rusage(self, rusage: Option<TaskUsage>) -> TaskUsage {
        let r = rusage.unwrap_or_default();
        let (user, sys) = self.cpu_ms.unwrap_or((r.cpu_user_ms, r.cpu_system_ms));
        TaskUsage {
            cpu_user_ms: user,
            cpu_system_ms: sys,
            memory_peak_bytes: self.memory_peak.unwrap_or(r.memory_peak_bytes),
            oom_killed: self.oom_killed,
            forks_refused: self.forks_refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contain::tree::V2Tree;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("codara-group-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn limits() -> TaskLimits {
        TaskLimits { memory_bytes: Some(64 << 20), cpus: Some(1.5), pids: Some(20) }
    }

    /// Pure v2 with delegated controllers, against a fake hierarchy: the limit files, and
    /// the usage read from `cpu.stat`, `memory.peak`, `memory.events`, `pids.events`.
    #[test]
    fn v2_files_are_written_and_read() {
        let root = temp("v2");
        let tree = Tree {
            v2: Some(V2Tree { dir: root.clone(), controllers: vec!["memory", "cpu", "pids"] }),
            ..Tree::default()
        };
        let g = TaskGroup::plan(&tree, 9, limits());
        assert_eq!(g.dirs(), [root.join("task-9")]);
        g.create().unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("task-9").join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "20");
        let write = |f: &str, t: &str| std::fs::write(root.join("task-9").join(f), t).unwrap();
        write("cpu.stat", "usage_usec 1250000\nuser_usec 1000400\nsystem_usec 249600\nnr_periods 0\n");
        write("memory.peak", "70000000\n");
        write("memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n");
        write("pids.events", "max 7\n");
        write("cgroup.events", "populated 0\nfrozen 0\n");
        assert!(!g.populated());
        let u = g.usage();
        assert_eq!(
            u,
            GroupUsage {
                cpu_ms: Some((1000, 249)),
                memory_peak: Some(70_000_000),
                oom_killed: true,
                forks_refused: Some(7)
            }
        );
        write("cgroup.events", "populated 1\nfrozen 0\n");
        assert!(g.populated());
        let _ = std::fs::remove_dir_all(root);
    }

    /// v1 alone: memory, cpu, pids limits in their own hierarchies; cpuacct and freezer
    /// join, since there is no v2 group to count and kill.
    #[test]
    fn v1_files_are_written_and_read() {
        let root = temp("v1");
        let ctls = ["memory", "cpu", "cpuacct", "pids", "freezer"];
        let tree = Tree { v1: ctls.iter().map(|c| (*c, root.join(c))).collect(), ..Tree::default() };
        for c in ctls {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        let g = TaskGroup::plan(&tree, 3, limits());
        assert_eq!(g.dirs().len(), 5);
        g.create().unwrap();
        let at = |c: &str, f: &str| root.join(c).join("task-3").join(f);
        assert_eq!(std::fs::read_to_string(at("memory", "memory.limit_in_bytes")).unwrap(), "67108864");
        assert_eq!(std::fs::read_to_string(at("cpu", "cpu.cfs_quota_us")).unwrap(), "150000");
        assert_eq!(std::fs::read_to_string(at("pids", "pids.max")).unwrap(), "20");
        std::fs::write(at("cpuacct", "cpuacct.usage_user"), "1003000000\n").unwrap();
        std::fs::write(at("cpuacct", "cpuacct.usage_sys"), "5000000\n").unwrap();
        std::fs::write(at("memory", "memory.max_usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(at("memory", "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        let u = g.usage();
        assert_eq!((u.cpu_ms, u.memory_peak, u.oom_killed), (Some((1003, 5)), Some(4096), false));
        // Without limits only cpuacct (usage) and freezer (the kill) are used.
        let plain = TaskGroup::plan(&tree, 4, TaskLimits::default());
        assert_eq!(plain.dirs(), [root.join("cpuacct/task-4"), root.join("freezer/task-4")]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn rusage_fills_what_the_group_did_not_count() {
        let r = TaskUsage { cpu_user_ms: 5, cpu_system_ms: 6, memory_peak_bytes: 7, ..TaskUsage::default() };
        let u = GroupUsage { cpu_ms: Some((1, 2)), ..GroupUsage::default() }.with_rusage(Some(r));
        assert_eq!((u.cpu_user_ms, u.cpu_system_ms, u.memory_peak_bytes), (1, 2, 7));
    }
}
