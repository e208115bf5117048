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
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_proc(&own, &mounts)
    }

    /// From `/proc/self/cgroup` and `/proc/self/mountinfo`. A group's path is relative to its
    /// hierarchy's root, and a mount may show a subtree (Docker on cgroup v1 mounts the
    /// container's own group at `/sys/fs/cgroup/memory`): the mount's root is cut off the path.
    fn from_proc(own: &str, mountinfo: &str) -> Option<MemoryGroup> {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        // v1 first: on a hybrid host the memory controller is on v1.
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            if controllers.split(',').any(|c| c == "memory") {
                // The last mount wins: a later mount on the same point hides the earlier one.
                return mounts
                    .iter()
                    .rev()
                    .filter(|m| !m.v2 && m.options.split(',').any(|o| o == "memory"))
                    .find_map(|m| m.dir_of(path).filter(|d| d.join("memory.stat").is_file()))
                    .map(MemoryGroup::V1);
            }
        }
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let (m, mut dir) =
            mounts.iter().rev().filter(|m| m.v2).find_map(|m| Some((m, m.dir_of(path).filter(|d| d.is_dir())?)))?;
        let mut dirs = Vec::new();
        while dir.starts_with(&m.point) {
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

/// A cgroup mount from `/proc/self/mountinfo` (also used by [`crate::contain`]).
pub(crate) struct Mount {
    pub v2: bool,
    /// Super options (v1: the controllers).
    pub options: String,
    /// The group of the hierarchy shown at the mount point.
    root: String,
    pub point: PathBuf,
}

impl Mount {
    /// `id parent major:minor root point options [optional...] - fstype source superoptions`
    pub fn parse(line: &str) -> Option<Mount> {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let v2 = match *fields.get(sep + 1)? {
            "cgroup2" => true,
            "cgroup" => false,
            _ => return None,
        };
        Some(Mount {
            v2,
            options: fields.get(sep + 3).unwrap_or(&"").to_string(),
            root: unescape(fields.get(3)?),
            point: PathBuf::from(unescape(fields.get(4)?)),
        })
    }

    /// Where group `path` (from `/proc/self/cgroup`) is under this mount.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" { path } else { path.strip_prefix(self.root.as_str())? };
        Some(self.point.join(rel.trim_start_matches('/')))
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A file holding one number (`max` and unreadable files give `None`).
pub(crate) fn read_number(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The value of `key` in a `memory.stat` file.
pub(crate) fn stat_value(stat: &str, key: &str) -> Option<u64> {
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

    fn mount(kind: &str, opts: &str, root: &str, point: &Path) -> String {
        format!("30 20 0:26 {root} {} rw,nosuid - {kind} cgroup rw,{opts}\n", point.display())
    }

    #[test]
    fn v2_takes_the_tightest_limit_on_the_way_up() {
        let root = tree(&[
            ("a/memory.max", "1000000"),
            ("a/memory.current", "300000"),
            ("a/b/memory.max", "max"),
            ("a/b/memory.current", "600000"),
            ("a/memory.stat", "active_file 5\ninactive_file 100000\n"),
        ]);
        let mi = mount("cgroup2", "nsdelegate", "/", &root);
        let g = MemoryGroup::from_proc("0::/a/b\n", &mi).unwrap();
        assert_eq!(g, MemoryGroup::V2(vec![root.join("a/b"), root.join("a")]));
        assert_eq!(g.read(), Some(MemoryFigures { limit: 1_000_000, used: 200_000 }));
        let other = tree(&[("a/b/memory.max", "max")]);
        let unlimited = MemoryGroup::from_proc("0::/a/b\n", &mount("cgroup2", "", "/", &other));
        assert_eq!(unlimited.and_then(|g| g.read()), None);
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(other);
    }

    #[test]
    fn v1_uses_the_hierarchical_limit_and_skips_unlimited() {
        let root = tree(&[
            ("x/y/memory.stat", "hierarchical_memory_limit 268435456\ntotal_inactive_file 1000\n"),
            ("x/y/memory.usage_in_bytes", "5000\n"),
        ]);
        let mi = mount("cgroup", "cpu", "/", Path::new("/nonexistent")) + &mount("cgroup", "memory", "/", &root);
        let g = MemoryGroup::from_proc("4:memory:/x/y\n0::/\n", &mi).unwrap();
        assert_eq!(g.read(), Some(MemoryFigures { limit: 268_435_456, used: 4000 }));
        std::fs::write(root.join("x/y/memory.stat"), "hierarchical_memory_limit 9223372036854771712\n").unwrap();
        assert_eq!(g.read(), None);
        assert_eq!(MemoryGroup::from_proc("4:memory:/nowhere\n", &mi), None);
        let _ = std::fs::remove_dir_all(root);
    }

    /// Docker on cgroup v1: the container's own group is mounted at the mount point, while
    /// /proc/self/cgroup still names it from the hierarchy's root.
    #[test]
    fn a_mount_showing_a_subtree_is_followed() {
        let point = tree(&[("memory.stat", "hierarchical_memory_limit 536870912\n"), ("memory.usage_in_bytes", "7\n")]);
        let mi = mount("cgroup", "memory", "/docker/abc", &point);
        let g = MemoryGroup::from_proc("4:memory:/docker/abc\n", &mi).unwrap();
        assert_eq!(g, MemoryGroup::V1(point.clone()));
        assert_eq!(g.read(), Some(MemoryFigures { limit: 536_870_912, used: 7 }));
        let _ = std::fs::remove_dir_all(point);
    }

    /// A group bind-mounted over the hierarchy's mount point: the later mount is the one seen.
    #[test]
    fn the_last_mount_on_a_point_wins() {
        let point = tree(&[("memory.stat", "hierarchical_memory_limit 1048576\n"), ("memory.usage_in_bytes", "0\n")]);
        let mi = mount("cgroup", "memory", "/", &point) + &mount("cgroup", "memory", "/a/b", &point);
        let g = MemoryGroup::from_proc("4:memory:/a/b\n", &mi).unwrap();
        assert_eq!(g, MemoryGroup::V1(point.clone()));
        let _ = std::fs::remove_dir_all(point);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
        assert!(Mount::parse("garbage").is_none());
        assert!(Mount::parse("1 2 3 / /x rw - ext4 /dev/sda rw").is_none());
    }
}
