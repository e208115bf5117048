//! `TASK_USER`: running every task as another user, so a build cannot read what the agent
//! keeps (its `.env`, `DATA_DIR`, the cluster secret) or signal and trace the agent.
//!
//! The user comes from `/etc/passwd` (by name or uid) with its primary group and home. Each
//! task's process takes that uid and gid, no supplementary group (only its primary one), and
//! `HOME`, `USER` and `LOGNAME` of its own; then it drops every capability it may have had (an
//! agent that is not root holds CAP_SETUID, CAP_SETGID and CAP_KILL as ambient capabilities,
//! which a plain `setuid` between two non-root users would pass on). The agent needs root, or
//! those three capabilities: CAP_KILL is what lets it signal the tasks' process groups.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The user tasks run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl std::fmt::Display for TaskUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

const PASSWD: &str = "/etc/passwd";

/// The user named by `spec` (a name, or a uid) in `/etc/passwd`, or why not.
pub fn resolve(spec: &str) -> Result<TaskUser, String> {
    let text = std::fs::read_to_string(PASSWD).map_err(|e| format!("cannot read {PASSWD}: {e}"))?;
    let user = find(&text, spec).ok_or_else(|| format!("no user {spec:?} in {PASSWD}"))?;
    if user.uid == 0 {
        return Err("it is root (uid 0): tasks would run with every privilege".into());
    }
    Ok(user)
}

/// The entry of `passwd` (its text) whose name, or else uid, is `spec`.
fn find(passwd: &str, spec: &str) -> Option<TaskUser> {
    let entries = passwd.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        Some(TaskUser { name: f[0].to_string(), uid, gid, home: PathBuf::from(f.get(5)?) })
    });
    let all: Vec<TaskUser> = entries.collect();
    let by_name = all.iter().find(|u| u.name == spec);
    let by_uid = || spec.parse::<u32>().ok().and_then(|id| all.iter().find(|u| u.uid == id));
    by_name.or_else(by_uid).cloned()
}

/// Whether this process may run tasks as another user: root, or holding CAP_SETUID,
/// CAP_SETGID and CAP_KILL. The error names what is missing.
pub fn check_privilege() -> Result<(), String> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    missing_capabilities().map_or(Ok(()), |missing| {
        Err(format!(
            "running tasks as another user needs root or the capabilities CAP_SETUID, CAP_SETGID and CAP_KILL \
             (the systemd unit grants them as AmbientCapabilities); missing: {missing}"
        ))
    })
}

#[cfg(target_os = "linux")]
fn missing_capabilities() -> Option<String> {
    use rustix::thread::CapabilitySet as C;
    let have = rustix::thread::capabilities(None).map(|s| s.effective).unwrap_or(C::empty());
    let missing: Vec<&str> = [(C::SETUID, "CAP_SETUID"), (C::SETGID, "CAP_SETGID"), (C::KILL, "CAP_KILL")]
        .into_iter()
        .filter(|(c, _)| !have.contains(*c))
        .map(|(_, n)| n)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(not(target_os = "linux"))]
fn missing_capabilities() -> Option<String> {
    Some("root (no capabilities on this system)".into())
}

/// Makes `cmd` run as `user`: its uid and gid (std sets them in the child after `fork`,
/// clearing the supplementary groups, and changes directory after, as the user), its
/// `HOME`, `USER` and `LOGNAME` (a request's `env` may still set them), and no capability.
/// This turns off std's `posix_spawn` path, so it is done only with a `TASK_USER`.
pub fn apply(cmd: &mut Command, user: &TaskUser) {
    use std::os::unix::process::CommandExt;
    cmd.uid(user.uid).gid(user.gid).env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
    // SAFETY: the closure runs in the child between fork and exec; it makes two system calls
    // through rustix (no allocation, no lock) and touches no state of the parent.
    unsafe {
        cmd.pre_exec(drop_capabilities);
    }
}

/// In the child, after the uid changed: no ambient, effective, permitted or inheritable
/// capability survives into the task.
fn drop_capabilities() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::{CapabilitySet, CapabilitySets};
        // EINVAL on kernels before 4.3, which have no ambient set.
        let _ = rustix::thread::clear_ambient_capability_set();
        let none = CapabilitySet::empty();
        rustix::thread::set_capabilities(None, CapabilitySets { effective: none, permitted: none, inheritable: none })?;
    }
    Ok(())
}

/// Whether `user` can read `path` (a directory: list or enter it), by the mode bits of the
/// path and of every directory above it. ACLs are not looked at.
pub fn can_read(path: &Path, user: &TaskUser) -> bool {
    allowed(path, user, if path.is_dir() { 0o5 } else { 0o4 })
}

/// Whether `user` can make the directory `path` its working directory (by the mode bits).
pub fn can_enter(path: &Path, user: &TaskUser) -> bool {
    allowed(path, user, 0o1)
}

/// Whether every directory above `path` lets `user` through and `path` grants it one of
/// `bits` (4 read, 2 write, 1 search/execute).
fn allowed(path: &Path, user: &TaskUser, bits: u32) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(path) = path.canonicalize() else { return false };
    let allows = |p: &Path, bits: u32| {
        std::fs::metadata(p).is_ok_and(|m| {
            let mode = m.permissions().mode();
            let shift = if m.uid() == user.uid {
                6
            } else if m.gid() == user.gid {
                3
            } else {
                0
            };
            (mode >> shift) & bits != 0
        })
    };
    path.ancestors().skip(1).all(|dir| allows(dir, 0o1)) && allows(&path, bits)
}

/// Warns once for each of `paths` (what it is, where) that `user` can read.
pub fn warn_readable(user: &TaskUser, paths: &[(&str, &Path)]) {
    for (what, path) in paths {
        if path.exists() && can_read(path, user) {
            let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            log::warn!(
                "TASK_USER {}: {what} {} is readable by that user, so tasks can read it; make it (or a directory above it) inaccessible to the user (chmod 0600 for a file, 0700 for a directory)",
                user.name,
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str =
        "root:x:0:0:root:/root:/bin/bash\n# comment\nbuild:x:1500:1600:CI:/home/build:/bin/sh\nbad:x:nope:1:::\n";

    #[test]
    fn users_by_name_or_uid() {
        let want = TaskUser { name: "build".into(), uid: 1500, gid: 1600, home: "/home/build".into() };
        assert_eq!(find(PASSWD_TEXT, "build"), Some(want.clone()));
        assert_eq!(find(PASSWD_TEXT, "1500"), Some(want));
        assert_eq!(find(PASSWD_TEXT, "bad"), None);
        assert_eq!(find(PASSWD_TEXT, "nobody-here"), None);
        assert!(resolve("root").unwrap_err().contains("uid 0"));
        assert!(resolve("no-such-user-codara").unwrap_err().starts_with("no user"));
    }

    #[test]
    fn readable_by_mode_bits_and_directories_above() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("codara-task-user-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        let file = dir.join("inner/f");
        std::fs::write(&file, "x").unwrap();
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        // Someone else: neither the file's owner nor in its group.
        let other = TaskUser { name: "o".into(), uid: 4_000_000, gid: 4_000_000, home: "/".into() };
        set(&dir, 0o755);
        set(&dir.join("inner"), 0o755);
        set(&file, 0o644);
        assert!(can_read(&file, &other) && can_read(&dir, &other));
        set(&file, 0o600);
        assert!(!can_read(&file, &other));
        set(&file, 0o644);
        set(&dir.join("inner"), 0o700);
        assert!(!can_read(&file, &other), "a directory above it cannot be entered");
        assert!(!can_read(&dir.join("inner"), &other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
