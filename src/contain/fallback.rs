//! Without a control group: each task's processes carry `CODARA_TASK=<agent pid>-<task id>`
//! in their environment, and the agent is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a
//! process that left the task's process group (`setsid`, a daemon) is re-parented to the
//! agent instead of init when its parent dies, and stays the agent's descendant. At the end
//! of the task, the agent's descendants are read from `/proc/*/stat`, those whose
//! `/proc/<pid>/environ` holds the mark are killed, and this is repeated until none is left.
//!
//! What it cannot find: a process that replaced its environment when it started another
//! program (`env -i`, a daemon that `exec`s itself with a clean one), or whose environment
//! the agent's user may not read (one that became another user).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::procfs::Stat;

/// The variable that marks a task's processes.
pub const MARK_VAR: &str = "CODARA_TASK";

/// Makes the agent a child subreaper; false (logged) when the kernel refuses.
pub fn become_subreaper() -> bool {
    match rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot become a child subreaper: {e}; a task's escaped processes are not found");
            false
        }
    }
}

/// The mark of task `id` of the agent `agent`.
pub fn mark(agent: u32, id: u64) -> String {
    format!("{agent}-{id}")
}

/// A process found: its pid and start time (to check it is still the same before the kill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    pid: u32,
    start_ticks: u64,
}

/// Kills the descendants of `agent` that carry `mark`, until none is left or `deadline`;
/// returns how many were killed.
pub fn kill_marked(agent: u32, mark: &str, deadline: Instant) -> usize {
    let needle = format!("{MARK_VAR}={mark}\0").into_bytes();
    let mut killed = 0;
    loop {
        let found = marked(agent, &needle);
        if found.is_empty() {
            return killed;
        }
        for f in found {
            if kill_if_same(f) {
                killed += 1;
            }
        }
        if Instant::now() >= deadline {
            return killed;
        }
        // What was killed must leave /proc (be reaped) before the next look.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live descendants of `agent` whose environment holds `needle`.
fn marked(agent: u32, needle: &[u8]) -> Vec<Found> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut parent = HashMap::new();
    let mut live = Vec::new();
    for pid in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let Some(stat) = Stat::read(pid) else { continue };
        let (Some(ppid), Some(state), Some(start)) = (
            stat.field(4).and_then(|p| p.parse::<u32>().ok()),
            stat.field(3),
            stat.field(22).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        parent.insert(pid, ppid);
        if state != "Z" && state != "X" {
            live.push(Found { pid, start_ticks: start });
        }
    }
    live.into_iter()
        .filter(|f| descends_from(f.pid, agent, &parent))
        .filter(|f| std::fs::read(format!("/proc/{}/environ", f.pid)).is_ok_and(|env| holds(&env, needle)))
        .collect()
}

/// Whether `pid`'s chain of parents reaches `agent` (at most 64 steps up).
fn descends_from(pid: u32, agent: u32, parent: &HashMap<u32, u32>) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        match parent.get(&at) {
            Some(&p) if p == agent => return true,
            Some(&p) if p > 1 => at = p,
            _ => return false,
        }
    }
    false
}

/// Whether the NUL-separated `environ` holds the entry `needle` (which ends in NUL).
fn holds(environ: &[u8], needle: &[u8]) -> bool {
    environ.split_inclusive(|b| *b == 0).any(|entry| entry == needle || (entry == &needle[..needle.len() - 1]))
}

/// SIGKILL through a pidfd, after checking the pid still names the process found.
fn kill_if_same(f: Found) -> bool {
    let Some(pid) = i32::try_from(f.pid).ok().and_then(Pid::from_raw) else { return false };
    let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else { return false };
    let same = Stat::read(f.pid).and_then(|s| s.field(22)?.parse::<u64>().ok()) == Some(f.start_ticks);
    same && pidfd_send_signal(&fd, Signal::KILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_matched_whole() {
        let needle = b"CODARA_TASK=1-2\0";
        assert!(holds(b"A=1\0CODARA_TASK=1-2\0B=2\0", needle));
        assert!(holds(b"CODARA_TASK=1-2", needle));
        assert!(!holds(b"CODARA_TASK=1-23\0", needle));
        assert!(!holds(b"XCODARA_TASK=1-2\0", needle));
    }

    #[test]
    fn ancestry_is_followed_to_the_agent() {
        let parent: HashMap<u32, u32> = [(10, 5), (11, 10), (12, 1), (5, 1)].into_iter().collect();
        assert!(descends_from(11, 5, &parent));
        assert!(descends_from(10, 5, &parent));
        assert!(!descends_from(12, 5, &parent));
        assert!(!descends_from(99, 5, &parent));
        let looped: HashMap<u32, u32> = [(20, 21), (21, 20)].into_iter().collect();
        assert!(!descends_from(20, 5, &looped));
    }

    /// A marked child of this test process (which plays the agent) is found and killed.
    #[test]
    fn a_marked_descendant_is_killed() {
        let me = std::process::id();
        let m = mark(me, 424_242);
        let mut child = std::process::Command::new("sleep").arg("30").env(MARK_VAR, &m).spawn().unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        // Killed but not reaped here: a zombie counts as gone.
        assert_eq!(kill_marked(me, &m, deadline), 1);
        assert!(child.wait().is_ok());
        assert!(other.try_wait().unwrap().is_none(), "an unmarked process is left alone");
        let _ = other.kill();
        let _ = other.wait();
    }
}
