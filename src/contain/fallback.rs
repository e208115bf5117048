//! Without a control group: each task's processes carry `CODARA_TASK=<agent pid>-<task id>`
//! in their environment, and the agent is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a
//! process that left the task's process group (`setsid`, a daemon) is re-parented to the
//! agent instead of init when its parent dies, and stays the agent's descendant. At the end
//! of the task, the agent's descendants are walked (`/proc/<pid>/task/*/children`), those
//! whose `/proc/<pid>/environ` holds the mark are killed, and this is repeated until none is
//! left.
//!
//! What it cannot find: a process that replaced its environment when it started another
//! program (`env -i`, a daemon that `exec`s itself with a clean one), or whose environment
//! the agent's user may not read (one that became another user).

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

/// A process found: its pid and start time (to check it is still the same before the kill),
/// and its process group if the kill takes that group too (see [`group_to_kill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    pid: u32,
    start_ticks: u64,
    group: Option<u32>,
}

/// The process group of a marked process that is killed whole with it: one in a session
/// other than the agent's. A session is only ever made by `setsid`, and holds only the
/// descendants of the process that made it, here a task's: so its groups hold nothing but
/// the task's processes, including those that carry no mark (an empty environment). One
/// `kill(-pgid)` takes them all at once, which a fork bomb cannot outrun (the kernel stops a
/// fork that races a group kill); killed one by one, a bomb refills every freed slot while
/// the agent's walks starve for CPU. A group in the agent's own session is never killed so
/// (a task may join the agent's group, or its parent shell's).
fn group_to_kill(pgrp: u32, session: u32, agent: Option<(u32, u32)>) -> Option<u32> {
    let (agent_pgrp, agent_session) = agent?;
    // 0 is a session or group whose leader is outside the agent's PID namespace (a
    // container's, or a CI sandbox's): never one a task made with `setsid`.
    (session > 0 && session != agent_session && pgrp != agent_pgrp && pgrp > 1).then_some(pgrp)
}

/// Kills the descendants of `agent` that carry `mark` and are not in process group
/// `killed_group` (which got its SIGKILL already), until none is left or `deadline`;
/// returns how many were killed and how many were still found at `deadline`. The subtrees of `others` (the main processes of the other
/// running tasks) are not walked.
pub fn kill_marked(
    agent: u32,
    mark: &str,
    killed_group: Option<u32>,
    others: &[u32],
    deadline: Instant,
) -> (usize, usize) {
    let needle = format!("{MARK_VAR}={mark}\0").into_bytes();
    let ids = crate::procfs::own_group_and_session();
    let unsure_until = Instant::now() + UNSURE_WAIT;
    let mut killed = 0;
    let mut empty_walks = 0;
    loop {
        let (found, unsure) = marked(agent, &needle, killed_group, others, ids);
        if found.is_empty() {
            // A `children` file read while that thread gains or loses a child (another task
            // starting or ending, a thread exiting) may skip an entry: done after two empty
            // walks in a row. A process in the middle of an `exec` shows no environment yet:
            // looked at again for a moment.
            empty_walks += 1;
            if empty_walks >= 2 && (unsure == 0 || Instant::now() >= unsure_until) {
                return (killed, 0);
            }
            if unsure > 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            continue;
        }
        empty_walks = 0;
        if Instant::now() >= deadline {
            let left = found.len();
            found.into_iter().for_each(|f| {
                kill_if_same(f);
            });
            return (killed, left);
        }
        for f in found {
            if kill_if_same(f) {
                killed += 1;
            }
        }
        // What was killed must leave /proc (be reaped) before the next look.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long a descendant with an empty environment (one in the middle of an `exec`, or one
/// started with none) is looked at again before the end of a task goes on without it.
const UNSURE_WAIT: Duration = Duration::from_millis(100);

/// The live descendants of `agent` outside process group `skip_group` whose environment
/// holds `needle`, found by walking `/proc/<pid>/task/*/children` down from the agent (far
/// cheaper than reading every process of the machine), not into the subtrees of `others`;
/// and how many showed an empty environment.
fn marked(
    agent: u32,
    needle: &[u8],
    skip_group: Option<u32>,
    others: &[u32],
    ids: Option<(u32, u32)>,
) -> (Vec<Found>, usize) {
    let mut out = Vec::new();
    let mut unsure = 0;
    let mut todo = children(agent);
    let mut walked = 0;
    while let Some(pid) = todo.pop() {
        walked += 1;
        if others.contains(&pid) || walked > 1_000_000 {
            continue;
        }
        let Some(stat) = Stat::read(pid) else { continue };
        let (Some(state), Some(pgrp), Some(session), Some(start)) = (
            stat.field(3),
            stat.field(5).and_then(|p| p.parse::<u32>().ok()),
            stat.field(6).and_then(|p| p.parse::<u32>().ok()),
            stat.field(22).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        todo.extend(children(pid));
        if state == "Z" || state == "X" || Some(pgrp) == skip_group {
            continue;
        }
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(env) if holds(&env, needle) => {
                out.push(Found { pid, start_ticks: start, group: group_to_kill(pgrp, session, ids) })
            }
            Ok(env) if env.is_empty() => unsure += 1,
            _ => {}
        }
    }
    (out, unsure)
}

/// The children of every thread of `pid` (a subreaper's orphans go to any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for t in threads.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    out
}

/// Whether the NUL-separated `environ` holds the entry `needle` (which ends in NUL).
fn holds(environ: &[u8], needle: &[u8]) -> bool {
    environ.split_inclusive(|b| *b == 0).any(|entry| entry == needle || (entry == &needle[..needle.len() - 1]))
}

/// SIGKILL through a pidfd, after checking the pid still names the process found; and to
/// its process group, if [`Found::group`] and it is still in it (the pidfd holds the pid, so
/// the check and the kill name the same process; its group cannot have gone while it is in
/// it).
fn kill_if_same(f: Found) -> bool {
    let Some(pid) = i32::try_from(f.pid).ok().and_then(Pid::from_raw) else { return false };
    let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else { return false };
    let Some(stat) = Stat::read(f.pid) else { return false };
    if stat.field(22).and_then(|s| s.parse::<u64>().ok()) != Some(f.start_ticks) {
        return false;
    }
    let group = f.group.filter(|g| stat.field(5).and_then(|p| p.parse::<u32>().ok()) == Some(*g));
    if let Some(g) = group.and_then(|g| i32::try_from(g).ok()).and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(g, Signal::KILL);
    }
    pidfd_send_signal(&fd, Signal::KILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_other_sessions_are_killed_whole() {
        let agent = Some((100, 90));
        assert_eq!(group_to_kill(200, 200, agent), Some(200), "a session a task made");
        assert_eq!(group_to_kill(200, 90, agent), None, "the agent's session");
        assert_eq!(group_to_kill(100, 7, agent), None, "the agent's group");
        assert_eq!(group_to_kill(200, 200, None), None, "the agent's session unknown");
        // In a PID namespace whose session leader is outside it (a container, a CI sandbox).
        let inside = Some((0, 0));
        assert_eq!(group_to_kill(200, 200, inside), Some(200), "a session a task made in it");
        assert_eq!(group_to_kill(0, 0, inside), None, "the agent's own, seen as 0");
        assert_eq!(group_to_kill(300, 0, inside), None, "a group in a session from outside");
    }

    #[test]
    fn the_mark_is_matched_whole() {
        let needle = b"CODARA_TASK=1-2\0";
        assert!(holds(b"A=1\0CODARA_TASK=1-2\0B=2\0", needle));
        assert!(holds(b"CODARA_TASK=1-2", needle));
        assert!(!holds(b"CODARA_TASK=1-23\0", needle));
        assert!(!holds(b"XCODARA_TASK=1-2\0", needle));
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
        assert_eq!(kill_marked(me, &m, None, &[], deadline), (1, 0));
        assert!(child.wait().is_ok());
        assert!(other.try_wait().unwrap().is_none(), "an unmarked process is left alone");
        let _ = other.kill();
        let _ = other.wait();
    }
}
