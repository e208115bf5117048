//! The agent's own subtree in each control group hierarchy it can write: found from
//! `/proc/self/cgroup` and `/proc/self/mountinfo` (the mounts parsed by [`crate::cgroup`]),
//! and always *below* the group the agent started in. That group itself is never changed,
//! except, on pure v2 without delegated controllers, its `cgroup.subtree_control` once the
//! agent (alone in it) has moved to its leaf `agent/` (v2's no-internal-processes rule).
//!
//! Layout, per hierarchy: `<start>/<name>/task-<id>` (not `tasks/<id>`: every v1 group has a
//! file named `tasks`), where `<name>` is
//! `codara-agent-<hash of DATA_DIR>`: stable across restarts (so the groups a crashed agent
//! left are found and killed at the next start) and distinct between agents (one per
//! `DATA_DIR`).

use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup::Mount;

/// The controllers a task's limits use.
pub const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// v1 controllers used without a v2 hierarchy: accounting and freezing too.
const V1_ALONE: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

/// The agent's subtree in the v2 hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Tree {
    /// `<start>/<name>`.
    pub dir: PathBuf,
    /// Controllers enabled for the task groups (of [`LIMIT_CONTROLLERS`]).
    pub controllers: Vec<&'static str>,
}

/// Every hierarchy the agent has a subtree in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    pub v2: Option<V2Tree>,
    /// A v1 controller and the agent's subtree in its hierarchy (comounted controllers share
    /// a directory).
    pub v1: Vec<(&'static str, PathBuf)>,
    /// What was tried and did not work, for the start-up log.
    pub notes: Vec<String>,
}

impl Tree {
    /// Makes the subtree `name` wherever the agent can, from the agent's `/proc/self/cgroup`
    /// (`own`) and `mountinfo`; `pid` is the agent's own pid (for the move to `agent/`).
    pub fn make(own: &str, mountinfo: &str, name: &str, pid: u32) -> Tree {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        let mut tree = Tree::default();
        if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            tree.v2 = v2_tree(&mounts, path, name, pid, &mut tree.notes);
        }
        let wanted: &[&'static str] = if tree.v2.is_some() { &LIMIT_CONTROLLERS } else { &V1_ALONE };
        for &ctl in wanted {
            if tree.v2.as_ref().is_some_and(|v| v.controllers.contains(&ctl)) {
                continue;
            }
            let Some(path) = own.lines().find_map(|l| v1_path(l, ctl)) else { continue };
            let Some(start) = mounts
                .iter()
                .rev()
                .filter(|m| !m.v2 && m.options.split(',').any(|o| o == ctl))
                .find_map(|m| m.dir_of(path).filter(|d| d.is_dir()))
            else {
                continue;
            };
            let dir = start.join(name);
            match make_dir(&dir) {
                Ok(()) => tree.v1.push((ctl, dir)),
                Err(e) => tree.notes.push(format!("{ctl} (v1): cannot create {}: {e}", dir.display())),
            }
        }
        tree
    }

    /// Whether there is anything to hold a task's processes.
    pub fn is_usable(&self) -> bool {
        self.v2.is_some() || !self.v1.is_empty()
    }

    /// The v1 subtree of `ctl`, if the agent has one.
    pub fn v1_dir(&self, ctl: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| *c == ctl).map(|(_, d)| d.as_path())
    }

    /// Whether a limit of `ctl` can be applied (v2 with the controller, or its v1 hierarchy).
    pub fn can_limit(&self, ctl: &str) -> bool {
        self.v2.as_ref().is_some_and(|v| v.controllers.contains(&ctl)) || self.v1_dir(ctl).is_some()
    }

    /// Every subtree directory, each once (v2 first).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.v2.iter().map(|v| v.dir.clone()).collect();
        for (_, d) in &self.v1 {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }
}

/// The group path of `ctl` in a v1 line of `/proc/self/cgroup` (`4:memory:/a/b`).
fn v1_path<'a>(line: &'a str, ctl: &str) -> Option<&'a str> {
    let mut f = line.splitn(3, ':');
    let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
    controllers.split(',').any(|c| c == ctl).then_some(path)
}

/// The v2 subtree, with the limit controllers enabled for it when the start group offers
/// them (see [`enable`]).
fn v2_tree(mounts: &[Mount], path: &str, name: &str, pid: u32, notes: &mut Vec<String>) -> Option<V2Tree> {
    let start = mounts.iter().rev().filter(|m| m.v2).find_map(|m| m.dir_of(path).filter(|d| d.is_dir()))?;
    let dir = start.join(name);
    if let Err(e) = make_dir(&dir) {
        notes.push(format!("v2: cannot create {}: {e}", dir.display()));
        return None;
    }
    let offered = std::fs::read_to_string(start.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&'static str> =
        LIMIT_CONTROLLERS.into_iter().filter(|c| offered.split_whitespace().any(|o| o == *c)).collect();
    let controllers = match enable(&start, &dir, &wanted, pid) {
        Ok(()) => wanted,
        Err(e) => {
            notes.push(format!("v2: cannot enable {} for the task groups: {e}", wanted.join(", ")));
            Vec::new()
        }
    };
    Some(V2Tree { dir, controllers })
}

/// Enables `wanted` in `start` (if not yet) and in `dir`. v2 lets a group with processes
/// enable nothing for its children (EBUSY; the real root excepted): if the agent is alone in
/// `start` (a unit with `Delegate=yes`, a container's own cgroup namespace), it moves to the
/// leaf `start/agent` first; if others are there too, nothing is enabled (the tasks are still
/// tracked and killed).
fn enable(start: &Path, dir: &Path, wanted: &[&str], pid: u32) -> io::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let enabled = std::fs::read_to_string(start.join("cgroup.subtree_control")).unwrap_or_default();
    if !wanted.iter().all(|c| enabled.split_whitespace().any(|e| e == *c)) {
        if let Err(e) = subtree_control(start, wanted) {
            let busy = e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error());
            if !busy || !alone_in(start, pid) {
                return Err(e);
            }
            let leaf = start.join("agent");
            make_dir(&leaf)?;
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())?;
            subtree_control(start, wanted)?;
        }
    }
    subtree_control(dir, wanted)
}

/// Whether `pid` is the only process in group `dir`.
fn alone_in(dir: &Path, pid: u32) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs.split_whitespace().all(|p| p == pid.to_string())
}

/// Writes `+c` for each of `ctls` to `dir/cgroup.subtree_control`.
fn subtree_control(dir: &Path, ctls: &[&str]) -> io::Result<()> {
    if ctls.is_empty() {
        return Ok(());
    }
    let line = ctls.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    std::fs::write(dir.join("cgroup.subtree_control"), line)
}

/// `mkdir`, content if it exists already.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn temp(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("codara-tree-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mount(kind: &str, opts: &str, point: &Path) -> String {
        format!("30 20 0:26 / {} rw,nosuid - {kind} cgroup rw,{opts}\n", point.display())
    }

    /// The hybrid layout of these machines: v2 without controllers tracks, v1 limits.
    #[test]
    fn hybrid_uses_v2_to_track_and_v1_for_the_limits() {
        let root = temp("hybrid");
        for d in ["unified", "memory/sup/x", "cpu", "pids", "freezer", "cpuacct"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let mi: String = [("cgroup2", ""), ("cgroup", "memory"), ("cgroup", "cpu"), ("cgroup", "pids")]
            .iter()
            .map(|(k, o)| mount(k, o, &root.join(if o.is_empty() { "unified" } else { o })))
            .collect::<String>()
            + &mount("cgroup", "freezer", &root.join("freezer"));
        let own = "8:pids:/\n6:freezer:/\n4:memory:/sup/x\n1:cpu:/\n0::/\n";
        let t = Tree::make(own, &mi, "codara-agent-1", 7);
        assert_eq!(t.v2, Some(V2Tree { dir: root.join("unified/codara-agent-1"), controllers: vec![] }));
        let v1: Vec<&str> = t.v1.iter().map(|(c, _)| *c).collect();
        assert_eq!(v1, ["memory", "cpu", "pids"], "freezer and cpuacct are not needed with v2");
        assert_eq!(t.v1_dir("memory"), Some(root.join("memory/sup/x/codara-agent-1").as_path()));
        assert!(t.can_limit("memory") && t.can_limit("pids") && t.can_limit("cpu"));
        let _ = std::fs::remove_dir_all(root);
    }

    /// Pure v2 in a delegated group where the agent is alone: it moves to `agent/`, and the
    /// controllers are enabled for its subtree.
    #[test]
    fn pure_v2_moves_the_agent_to_a_leaf_and_enables_the_controllers() {
        let root = temp("v2");
        let start = root.join("unit.service");
        std::fs::create_dir_all(&start).unwrap();
        std::fs::write(start.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::write(start.join("cgroup.procs"), "7\n").unwrap();
        let t = Tree::make("0::/unit.service\n", &mount("cgroup2", "nsdelegate", &root), "c", 7);
        let v2 = t.v2.clone().expect("v2 subtree");
        assert_eq!(v2.controllers, ["memory", "cpu", "pids"]);
        assert_eq!(std::fs::read_to_string(start.join("cgroup.subtree_control")).unwrap(), "+memory +cpu +pids");
        assert_eq!(std::fs::read_to_string(v2.dir.join("cgroup.subtree_control")).unwrap(), "+memory +cpu +pids");
        assert!(t.v1.is_empty() && t.can_limit("cpu"));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn no_writable_hierarchy_is_no_tree() {
        let mi = mount("cgroup2", "", Path::new("/nonexistent-codara"));
        let t = Tree::make("0::/\n", &mi, "c", 1);
        assert!(!t.is_usable());
        assert_eq!(v1_path("4:cpu,cpuacct:/a", "cpuacct"), Some("/a"));
        assert_eq!(v1_path("0::/", "memory"), None);
    }
}
