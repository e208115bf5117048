//! Containing tasks: a control group per task where the agent can make one, else process
//! groups, the agent as child subreaper and a mark in each task's environment. See README,
//! "Containing tasks".
//!
//! - `cgroup-v2`: a subtree of the agent's v2 group ([`tree`]); tracking, `cgroup.kill`,
//!   limits and usage all there.
//! - `cgroup-hybrid`: a v2 mount without controllers tracks and kills (`cgroup.kill` and
//!   `cgroup.events` need none) and counts CPU time; v1 `memory`, `cpu`, `pids` limit.
//! - `cgroup-v1`: v1 only; `freezer` freezes the group for the kill, `cpuacct` counts.
//! - `process`: [`fallback`].

pub mod fallback;
pub mod group;
pub mod reap;
pub mod tree;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::contain::group::TaskGroup;
use crate::contain::tree::Tree;
use crate::protocol::{TaskLimits, TaskUsage};

/// How long the end of a task waits for its group to empty after the kill.
pub const EMPTY_WAIT: Duration = Duration::from_secs(5);

/// `TASK_ISOLATION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// A control group when one can be made, else `process`.
    Auto,
    /// A control group, or the agent does not start.
    Cgroup,
    Process,
}

impl Choice {
    pub fn parse(s: &str) -> Option<Choice> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Choice::Auto),
            "cgroup" => Some(Choice::Cgroup),
            "process" => Some(Choice::Process),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Cgroup => "cgroup",
            Choice::Process => "process",
        }
    }
}

/// The mode in use (`isolation` in `/health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    CgroupV2,
    Hybrid,
    CgroupV1,
    Process,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::CgroupV2 => "cgroup-v2",
            Mode::Hybrid => "cgroup-hybrid",
            Mode::CgroupV1 => "cgroup-v1",
            Mode::Process => "process",
        }
    }
}

/// The limit names of `/execute`, with the controller each needs.
const LIMITS: [(&str, &str); 3] = [("memoryBytes", "memory"), ("cpus", "cpu"), ("pids", "pids")];

/// How this agent contains its tasks; made once at start.
pub struct Isolation {
    mode: Mode,
    tree: Option<Tree>,
    /// The limits that can be applied (names as in `/execute`).
    limits: Vec<&'static str>,
    /// The agent's own `oom_score_adj` is not 0 (a unit's low `OOMScoreAdjust`): children put
    /// theirs back to 0, or the OOM killer would pass them over as it does the agent.
    reset_oom_score: bool,
    agent_pid: u32,
    /// The agent is a child subreaper (the `process` mode, when the kernel allowed it): the
    /// orphans of tasks come to it, to be reaped by the `reaper` thread.
    subreaper: bool,
}

impl Isolation {
    /// Sets up the mode `choice` allows, for the agent whose data is in `data_dir`: its
    /// subtree in every writable hierarchy, or the subreaper. Fails for `cgroup` without a
    /// hierarchy. The groups a previous run left are for [`Isolation::sweep_leftovers`].
    pub fn setup(choice: Choice, data_dir: &Path) -> Result<Isolation, String> {
        let agent_pid = std::process::id();
        let reset_oom_score = own_oom_score_adj().is_some_and(|n| n != 0);
        let tree = match choice {
            Choice::Process => None,
            Choice::Auto | Choice::Cgroup => {
                let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let tree = Tree::make(&own, &mounts, &subtree_name(data_dir), agent_pid);
                for note in &tree.notes {
                    log::info!("isolation: {note}");
                }
                Some(tree).filter(Tree::is_usable)
            }
        };
        if tree.is_none() && choice == Choice::Cgroup {
            return Err("TASK_ISOLATION=cgroup: no control group hierarchy is writable here (run as root, or in a delegated group: see README, \"Containing tasks\")".into());
        }
        let mode = match &tree {
            None => Mode::Process,
            Some(t) if t.v2.is_some() && t.v1.is_empty() => Mode::CgroupV2,
            Some(t) if t.v2.is_some() => Mode::Hybrid,
            Some(_) => Mode::CgroupV1,
        };
        let subreaper = mode == Mode::Process && fallback::become_subreaper();
        let limits = LIMITS
            .iter()
            .filter(|(_, ctl)| tree.as_ref().is_some_and(|t| t.can_limit(ctl)))
            .map(|(name, _)| *name)
            .collect();
        Ok(Isolation { mode, tree, limits, reset_oom_score, agent_pid, subreaper })
    }

    /// Process groups only (tests of the layers above).
    pub fn process_only() -> Isolation {
        Isolation {
            mode: Mode::Process,
            tree: None,
            limits: Vec::new(),
            reset_oom_score: false,
            agent_pid: std::process::id(),
            subreaper: false,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the orphans of tasks come to the agent (see [`Isolation::setup`]).
    pub fn is_subreaper(&self) -> bool {
        self.subreaper
    }

    /// The limits a task may ask for.
    pub fn limits(&self) -> &[&'static str] {
        &self.limits
    }

    /// The agent's subtree directories (logged at start; removed at shutdown).
    pub fn subtrees(&self) -> Vec<std::path::PathBuf> {
        self.tree.as_ref().map(Tree::dirs).unwrap_or_default()
    }

    /// Whether a child resets its `oom_score_adj` to 0.
    pub fn resets_oom_score(&self) -> bool {
        self.reset_oom_score
    }

    /// `Err` names the first limit of `l` this mode cannot apply.
    pub fn check(&self, l: &TaskLimits) -> Result<(), &'static str> {
        let set = [l.memory_bytes.is_some(), l.cpus.is_some(), l.pids.is_some()];
        match LIMITS.iter().zip(set).find(|((name, _), set)| *set && !self.limits.contains(name)) {
            Some(((name, _), _)) => Err(name),
            None => Ok(()),
        }
    }

    /// Prepares task `id`'s containment: creates its group (or picks its mark).
    pub fn contain(&self, id: u64, limits: TaskLimits) -> io::Result<Contained> {
        let (how, oom) = match &self.tree {
            Some(tree) => {
                let group = TaskGroup::plan(tree, id, limits);
                group.create()?;
                // Before the spawn: an OOM before the registration would not be signalled.
                let oom = group
                    .oom_eventfd()
                    .inspect_err(|e| log::warn!("task {id}: cannot watch its memory group for OOM: {e}"))
                    .ok()
                    .flatten();
                (How::Group(group), oom)
            }
            None => (How::Marked { agent: self.agent_pid, mark: fallback::mark(self.agent_pid, id) }, None),
        };
        Ok(Contained { how, oom, reset_oom_score: self.reset_oom_score, done: false })
    }

    /// At start, after the recovery of the history: kills and removes the task groups a
    /// previous run of this agent left (it was killed, or crashed), with whatever still runs
    /// in them (`setsid` daemons included).
    pub fn sweep_leftovers(&self) {
        self.sweep("was left by an earlier run");
    }

    /// Kills and removes the task groups found in the subtree, logging each with `why`.
    fn sweep(&self, why: &str) {
        let Some(tree) = &self.tree else { return };
        let mut ids: Vec<u64> = Vec::new();
        for dir in tree.dirs() {
            let Ok(list) = std::fs::read_dir(dir) else { continue };
            ids.extend(
                list.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("task-")?.parse::<u64>().ok()),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            // Every hierarchy, limits or not: whatever the run before made.
            let all = TaskLimits { memory_bytes: Some(0), cpus: Some(0.0), pids: Some(0) };
            let group = TaskGroup::plan(tree, id, all);
            let left = group.procs().len();
            let emptied = group.end(Instant::now() + EMPTY_WAIT);
            group.remove();
            log::warn!(
                "isolation: the group of task {id} {why}: {left} process(es) killed{}",
                if emptied { "" } else { " (some still there)" }
            );
        }
    }

    /// At shutdown, after the tasks: removes the agent's subtree.
    /// In pure v2, the agent's own leaf `agent/` stays: the agent is in it.
    pub fn shutdown(&self) {
        self.sweep("was still there at shutdown");
        for dir in self.subtrees() {
            group::remove_dir(&dir);
        }
    }
}

/// `codara-agent-<FNV-1a of DATA_DIR, 16 hex digits>`.
fn subtree_name(data_dir: &Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("codara-agent-{h:016x}")
}

/// This process's `oom_score_adj`.
fn own_oom_score_adj() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj").ok()?.trim().parse().ok()
}

enum How {
    Group(TaskGroup),
    Marked { agent: u32, mark: String },
}

/// One task's containment, from before its spawn to after its end. Dropped without
/// [`Contained::finish`] (a task abandoned half-way), it still kills and removes the group.
pub struct Contained {
    how: How,
    /// The group's OOM signal (see [`Contained::oom_watch`]), registered at its creation.
    oom: Option<OwnedFd>,
    reset_oom_score: bool,
    done: bool,
}

impl Contained {
    /// Sets up `cmd` so the child is contained before it runs anything of its own: it writes
    /// itself into the group's `cgroup.procs` files (and resets its `oom_score_adj`) between
    /// `fork` and `exec`. Without a group, it gets the mark in its environment.
    pub fn configure(&self, cmd: &mut Command) -> io::Result<()> {
        let fds = match &self.how {
            How::Group(g) => g.placement_fds()?,
            How::Marked { mark, .. } => {
                cmd.env(fallback::MARK_VAR, mark);
                Vec::new()
            }
        };
        if fds.is_empty() && !self.reset_oom_score {
            return Ok(()); // std keeps posix_spawn, the fast path
        }
        let reset = self.reset_oom_score;
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes plain write/open/close system calls
        // on descriptors and a path it owns, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || enter(&fds, reset));
        }
        Ok(())
    }

    /// What the task's waiter watches besides the exit: on v1 with a memory limit, the
    /// group's OOM signal (see [`TaskGroup::oom_eventfd`]), registered when the group was
    /// made, before the spawn (so an OOM at once is not missed); `None` elsewhere, or if it
    /// could not be set up (logged: the task then runs with the kernel's v1 behaviour).
    pub fn oom_watch(&mut self) -> Option<OwnedFd> {
        self.oom.take()
    }

    /// The task's control group, if it has one (for the final SIGKILL of a stop).
    pub fn group(&self) -> Option<TaskGroup> {
        match &self.how {
            How::Group(g) => Some(g.clone()),
            How::Marked { .. } => None,
        }
    }

    /// Whether the end of the task walks the agent's descendants (the fallback).
    pub fn walks_processes(&self) -> bool {
        matches!(self.how, How::Marked { .. })
    }

    /// SIGKILL to everything of the task now (a group's `cgroup.kill`; with a mark, the
    /// marked processes are found at the end).
    pub fn kill(&self) {
        if let How::Group(g) = &self.how {
            g.kill();
        }
    }

    /// The task's main process has exited: kills whatever is left of the task and waits until
    /// it is gone (up to [`EMPTY_WAIT`]) and reads what the task used; the group is removed
    /// when this is dropped (after the task's end is reported: an `rmdir` costs more than the
    /// rest). `rusage` is `wait4`'s for the main process, used where the group counted
    /// nothing; `group` is the task's process group, killed already; `others` are the main
    /// processes of the other running tasks (whose subtrees the fallback need not walk).
    /// Returns the usage and, for the log, what had to be killed (or could not be).
    pub fn finish(
        &mut self,
        rusage: Option<TaskUsage>,
        group: Option<u32>,
        others: &[u32],
    ) -> (TaskUsage, Option<String>) {
        self.done = true;
        let deadline = Instant::now() + EMPTY_WAIT;
        match &self.how {
            How::Group(g) => {
                // One look at the group: an empty task group cannot gain a process.
                let populated = g.populated();
                let left = if populated { g.procs().len() } else { 0 };
                let emptied = !populated || g.end(deadline);
                let usage = g.usage().with_rusage(rusage);
                let note = if !emptied {
                    Some(format!("{} process(es) in its control group would not die", g.procs().len()))
                } else {
                    (left > 0).then(|| format!("{left} process(es) still in its control group at its end killed"))
                };
                (usage, note)
            }
            How::Marked { agent, mark } => {
                let (killed, left) = fallback::kill_marked(*agent, mark, group, others, deadline);
                let note = match (killed, left) {
                    (0, 0) => None,
                    (k, 0) => Some(format!("{k} process(es) that had left its process group killed")),
                    (k, l) => Some(format!(
                        "{k} process(es) that had left its process group killed; {l} still found after {} s (killed again, not waited for)",
                        EMPTY_WAIT.as_secs()
                    )),
                };
                (rusage.unwrap_or_default(), note)
            }
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.finish(None, None, &[]);
        }
        if let How::Group(g) = &self.how {
            g.remove();
        }
    }
}

/// In the child, before `exec`: into each group, and the OOM score back to 0.
fn enter(fds: &[OwnedFd], reset_oom_score: bool) -> io::Result<()> {
    for fd in fds {
        if let Err(e) = rustix::io::write(fd, b"0") {
            return Err(io::Error::from_raw_os_error(e.raw_os_error()));
        }
    }
    if reset_oom_score {
        // Raising it needs no privilege (lowering it below what a privileged process set
        // does); a failure leaves the agent's score.
        let path = c"/proc/self/oom_score_adj";
        if let Ok(fd) =
            rustix::fs::open(path, rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        {
            let _ = rustix::io::write(&fd, b"0");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_by_name() {
        let iso = Isolation::process_only();
        assert_eq!(iso.check(&TaskLimits::default()), Ok(()));
        assert_eq!(iso.check(&TaskLimits { pids: Some(3), ..TaskLimits::default() }), Err("pids"));
        let v1 = Isolation { limits: vec!["memoryBytes", "pids"], ..Isolation::process_only() };
        assert_eq!(v1.check(&TaskLimits { memory_bytes: Some(1 << 20), pids: Some(3), cpus: None }), Ok(()));
        assert_eq!(v1.check(&TaskLimits { cpus: Some(1.0), ..TaskLimits::default() }), Err("cpus"));
    }

    /// v1 memory limit: a task that goes over it before its waiter looks (at once, as
    /// here, where the waiter looks only after the exit) is still signalled, so the whole
    /// task is killed: the watch is registered with the group, before the spawn. Needs root
    /// and a v1 memory hierarchy (CI); skipped elsewhere with `CODARA_TEST_ALLOW_SKIP=1`.
    #[test]
    fn an_oom_at_once_is_signalled() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("codara-oom-at-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let iso =
            Isolation::setup(Choice::Cgroup, &dir).ok().filter(|i| matches!(i.mode(), Mode::Hybrid | Mode::CgroupV1));
        let Some(iso) = iso else {
            let _ = std::fs::remove_dir_all(&dir);
            assert_eq!(std::env::var("CODARA_TEST_ALLOW_SKIP").as_deref(), Ok("1"), "needs root and v1 memory");
            return;
        };
        let limits = TaskLimits { memory_bytes: Some(32 << 20), ..TaskLimits::default() };
        let mut c = iso.contain(1, limits).unwrap();
        let mut cmd = Command::new("perl");
        cmd.args(["-e", "$x = 'a' x 300e6"]).stderr(std::process::Stdio::null());
        c.configure(&mut cmd).unwrap();
        let status = cmd.status().unwrap();
        let oom = c.oom_watch();
        let signalled = oom.as_ref().map(|fd| {
            let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            crate::eintr::poll(&mut fds, Some(Duration::ZERO)).unwrap()
        });
        drop(c);
        iso.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(status.signal(), Some(9), "killed for memory: {status:?}");
        assert_eq!(signalled, Some(1), "the OOM was signalled to the watch");
    }

    #[test]
    fn names_and_choices() {
        assert_eq!(Choice::parse("CGROUP"), Some(Choice::Cgroup));
        assert_eq!(Choice::parse("docker"), None);
        let a = subtree_name(Path::new("/nonexistent/a"));
        assert!(a.starts_with("codara-agent-") && a.len() == "codara-agent-".len() + 16);
        assert_ne!(a, subtree_name(Path::new("/nonexistent/b")));
    }
}
