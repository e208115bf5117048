//! The memory limit of the agent's own control group, when it has one (a container started
//! with `--memory`, a systemd unit with `MemoryMax=`). The agent and its tasks share that
//! group, so its limit, not the host's RAM, is what a task can use: admission and the stats
//! use it when it is lower. cgroup v2 and v1 are both read; the files are found from
//! `/proc/self/cgroup` under `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};

/// Where to read the group's memory figures.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryGroup {
    /// cgroup v2: the agent's group and its ancestors (a limit on any of them applies).
    V2(Vec<PathBuf>),
    /// cgroup v1: the memory controller's group (`hierarchical_memory_limit` covers the
    /// ancestors).
    V1(PathBuf),
}

/// A group's limit and what counts against it now (its usage minus inactive page cache,
/// which the kernel reclaims before it kills anything).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFigures {
    pub limit: u64,
    pub used: u64,
}

impl MemoryGroup {
    /// The agent's memory group, if `/proc/self/cgroup` names one whose files are readable.
    pub fn find() -> Option<MemoryGroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::from_proc(&own, Path::new("/sys/fs/cgroup"))
    }

    fn from_proc(own: &str, root: &Path) -> Option<MemoryGroup> {
        // v1 first: on a hybrid host the memory controller is on v1.
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            if controllers.split(',').any(|c| c == "memory") {
                let dir = root.join("memory").join(path.trim_start_matches('/'));
                return dir.join("memory.stat").is_file().then_some(MemoryGroup::V1(dir));
            }
        }
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let base =
            [root.to_path_buf(), root.join("unified")].into_iter().find(|b| b.join("cgroup.controllers").is_file())?;
        let mut dirs = Vec::new();
        let mut dir = base.join(path.trim_start_matches('/'));
        while dir.starts_with(&base) {
            if dir.join("memory.max").is_file() {
                dirs.push(dir.clone());
            }
            if !dir.pop() {
                break;
            }
        }
        (!dirs.is_empty()).then_some(MemoryGroup::V2(dirs))
    }

    /// The limit and usage now; `None` when there is no limit (or the files cannot be read).
    pub fn read(&self) -> Option<MemoryFigures> {
        match self {
            MemoryGroup::V1(dir) => {
                let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
                // Unlimited is a page-rounded i64::MAX.
                let limit = stat_value(&stat, "hierarchical_memory_limit").filter(|l| *l < (1 << 62))?;
                let usage = read_number(&dir.join("memory.usage_in_bytes"))?;
                let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
                Some(MemoryFigures { limit, used: usage.saturating_sub(inactive) })
            }
            MemoryGroup::V2(dirs) => {
                // The tightest limit on the way to the root, and that group's usage.
                let (dir, limit) = dirs
                    .iter()
                    .filter_map(|d| Some((d, read_number(&d.join("memory.max"))?)))
                    .min_by_key(|(_, l)| *l)?;
                let usage = read_number(&dir.join("memory.current"))?;
                let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
                Some(MemoryFigures { limit, used: usage.saturating_sub(inactive) })
            }
        }
    }
}

/// A file holding one number (`max` and unreadable files give `None`).
fn read_number(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The value of `key` in a `memory.stat` file.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("codara-cgroup-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    #[test]
    fn v2_takes_the_tightest_limit_on_the_way_up() {
        let root = tree(&[
            ("cgroup.controllers", "memory"),
            ("a/memory.max", "1000000"),
            ("a/memory.current", "300000"),
            ("a/b/memory.max", "max"),
            ("a/b/memory.current", "600000"),
            ("a/memory.stat", "active_file 5\ninactive_file 100000\n"),
        ]);
        let g = MemoryGroup::from_proc("0::/a/b\n", &root).unwrap();
        assert_eq!(g, MemoryGroup::V2(vec![root.join("a/b"), root.join("a")]));
        assert_eq!(g.read(), Some(MemoryFigures { limit: 1_000_000, used: 200_000 }));
        let unlimited =
            MemoryGroup::from_proc("0::/a/b\n", &tree(&[("cgroup.controllers", ""), ("a/b/memory.max", "max")]));
        assert_eq!(unlimited.and_then(|g| g.read()), None);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn v1_uses_the_hierarchical_limit_and_skips_unlimited() {
        let root = tree(&[
            ("memory/x/y/memory.stat", "hierarchical_memory_limit 268435456\ntotal_inactive_file 1000\n"),
            ("memory/x/y/memory.usage_in_bytes", "5000\n"),
        ]);
        let g = MemoryGroup::from_proc("4:memory:/x/y\n0::/\n", &root).unwrap();
        assert_eq!(g.read(), Some(MemoryFigures { limit: 268_435_456, used: 4000 }));
        std::fs::write(root.join("memory/x/y/memory.stat"), "hierarchical_memory_limit 9223372036854771712\n").unwrap();
        assert_eq!(g.read(), None);
        assert_eq!(MemoryGroup::from_proc("4:memory:/nowhere\n", &root), None);
        let _ = std::fs::remove_dir_all(root);
    }
}
