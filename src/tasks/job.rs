//! Job folders (`POST /execute-job`, CONTRACT.md §7): `JOBS_BASE_PATH/<jobId>` holds `run.sh`,
//! an optional `job.json` (its `env` is the task's environment; its `status` is kept up to
//! date), and `logs/output.log` (stdout as is, stderr lines prefixed `[STDERR] `).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde_json::{Map, Value};

use crate::events::Stream;
use crate::protocol::TaskStatus;
use crate::sync::Recover;

/// Where a job's folder is, or why the request is refused (a 400).
pub fn resolve(base: &Path, job_id: &str, job_path: Option<&str>) -> Result<PathBuf, String> {
    if job_id.is_empty()
        || job_id == "."
        || job_id == ".."
        || job_id.contains(['/', '\\', '\0'])
        || job_id.contains("..")
    {
        return Err("jobId must be a plain name (no '/', '\\' or '..')".into());
    }
    // A folder name is at most 255 bytes (NAME_MAX); the task record keeps the id.
    if job_id.len() > 255 {
        return Err("jobId must be a plain name of at most 255 bytes".into());
    }
    let base = absolute(base);
    let base_real = fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
    let dir = match job_path {
        None => base.join(job_id),
        Some(p) if p.is_empty() || p.contains('\0') => return Err("jobPath must be a non-empty path".into()),
        Some(p) => absolute(Path::new(p)),
    };
    // Follow symlinks where the folder exists, so a link cannot lead outside.
    let dir_real = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let inside = |d: &Path| d.starts_with(&base_real) && d != base_real;
    let inside_lexically = dir.starts_with(&base) && dir != base;
    if !(inside(&dir_real) || (inside_lexically && !dir.exists())) {
        return Err("jobPath must be inside JOBS_BASE_PATH".into());
    }
    Ok(dir_real)
}

/// `p` made absolute and with `.` and `..` removed, without touching the file system.
fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

const JOB_JSON_NAME: &str = "job.json";

/// The job folder, opened without following a symlink: everything in it is then reached by
/// name from this handle, never following one either. A task may run as another user
/// (`TASK_USER`) who can write in the folder: a link it plants there (`logs`,
/// `logs/output.log`, `job.json`, a temporary name) must not make the agent read or write
/// a file that user cannot.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    crate::eintr::retry(|| {
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(io::Error::from)
    })
}

/// `name` in the folder `dir`, opened with `flags` (plus no-follow, close-on-exec and
/// non-blocking: a FIFO would block the open), as a regular file with no other hard link.
fn open_in(dir: &OwnedFd, name: &str, flags: OFlags) -> io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = crate::eintr::retry(|| {
        rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o666)).map_err(io::Error::from)
    })
    .map_err(|e| if e.raw_os_error() == Some(eloop()) { io::Error::other("it is a symbolic link") } else { e })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(io::Error::other("it has other hard links"));
    }
    // Blocking again (a regular file never blocks anyway).
    rustix::fs::fcntl_setfl(&file, rustix::fs::fcntl_getfl(&file)? - OFlags::NONBLOCK)?;
    Ok(file)
}

fn eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}

/// The largest `job.json` read (as large as a request body may be).
const MAX_JOB_JSON: u64 = 1 << 20;

/// Why `job.json` gives no object.
enum JobJsonError {
    /// It cannot be read (or is not a regular file, or too large): it is left as it is.
    Unreadable(String),
    /// It was read and is not a JSON object: the end of the run may replace it.
    Invalid(String),
}

impl From<JobJsonError> for String {
    fn from(e: JobJsonError) -> String {
        match e {
            JobJsonError::Unreadable(s) | JobJsonError::Invalid(s) => s,
        }
    }
}

fn read_job_json(dir: &OwnedFd) -> Result<Map<String, Value>, JobJsonError> {
    let bytes = match read_bounded(dir) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(JobJsonError::Unreadable(format!("cannot read job.json: {e}"))),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JobJsonError::Invalid("job.json is not a JSON object".into())),
        Err(e) => Err(JobJsonError::Invalid(format!("job.json is not valid JSON: {e}"))),
    }
}

/// A regular file of at most [`MAX_JOB_JSON`] bytes (a FIFO would block the read, a huge
/// file would be held in memory whole).
fn read_bounded(dir: &OwnedFd) -> io::Result<Vec<u8>> {
    let file = open_in(dir, JOB_JSON_NAME, OFlags::RDONLY)?;
    let mut bytes = Vec::new();
    file.take(MAX_JOB_JSON + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_JOB_JSON {
        return Err(io::Error::other(format!("it is over {} KiB", MAX_JOB_JSON >> 10)));
    }
    Ok(bytes)
}

/// Serialises every read-modify-write of a `job.json`: two runs of one job folder may start
/// or end at once (jobs are rare enough that one lock for all folders costs nothing).
static JOB_JSON: Mutex<()> = Mutex::new(());

fn job_json_lock() -> MutexGuard<'static, ()> {
    JOB_JSON.lock().recover()
}

/// Replaces `job.json` atomically (a temporary file of its own, then rename).
/// The temporary file is new (an existing name, a planted link, is an error), and the
/// rename replaces whatever `job.json` is, a link too, without following it.
fn write_job_json(dir: &OwnedFd, m: &Map<String, Value>) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(".job.json.{}.{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let mut f = open_in(dir, &tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
    let written = f
        .write_all(&serde_json::to_vec_pretty(m).map_err(io::Error::other)?)
        .and_then(|()| f.sync_data())
        .and_then(|()| rustix::fs::renameat(dir, tmp.as_str(), dir, JOB_JSON_NAME).map_err(io::Error::from));
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    written
}

/// Checks the folder and `run.sh`, marks `job.json` running, and returns the job's env and
/// its output log. An `Err` is the task's `error`.
pub fn prepare(dir: &Path, cluster_id: &str) -> Result<(BTreeMap<String, String>, JobLog), String> {
    if !dir.is_dir() {
        return Err(format!("job folder not found: {}", dir.display()));
    }
    if !dir.join("run.sh").is_file() {
        return Err(format!("run.sh not found in job folder {}", dir.display()));
    }
    let dir_fd = open_dir(dir).map_err(|e| format!("cannot open job folder {}: {e}", dir.display()))?;
    let guard = job_json_lock();
    let mut meta = read_job_json(&dir_fd)?;
    let env = match meta.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .filter(|(k, v)| !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'))
            .collect(),
        Some(_) => return Err("job.json: env must be an object".into()),
    };
    meta.insert("status".into(), "running".into());
    meta.insert("clusterId".into(), cluster_id.into());
    write_job_json(&dir_fd, &meta).map_err(|e| format!("cannot write job.json: {e}"))?;
    drop(guard);
    let file = open_output_log(&dir_fd).map_err(|e| format!("cannot open logs/output.log: {e}"))?;
    Ok((env, JobLog { file: Some(file), err_line_start: true }))
}

/// Opens (creates) a job's `logs/output.log` for appending; a FIFO or another non-regular
/// file there is refused rather than waited on, and so is a link as `logs` or `output.log`.
fn open_output_log(dir: &OwnedFd) -> io::Result<File> {
    match rustix::fs::mkdirat(dir, "logs", Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let logs = crate::eintr::retry(|| {
        rustix::fs::openat(
            dir,
            "logs",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    })?;
    open_in(&logs, "output.log", OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
}

/// How a job's run ended, as `job.json` records it.
pub struct JobEnd<'a> {
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub completed_at: u64,
    pub duration: u64,
    /// Why the agent ended it or it could not run (`error`, removed when `None`).
    pub error: Option<&'a str>,
}

/// Records the end in `job.json`, keeping its other keys.
pub fn finish(dir: &Path, end: &JobEnd<'_>) {
    let fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("job {}: cannot open the folder: {e}; the end of this run is not recorded", dir.display());
            return;
        }
    };
    let _guard = job_json_lock();
    let meta = match read_job_json(&fd) {
        Ok(m) => m,
        Err(JobJsonError::Invalid(e)) => {
            log::warn!("job {}: {e}; rewriting it", dir.display());
            Map::new()
        }
        Err(JobJsonError::Unreadable(e)) => {
            log::warn!("job {}: {e}; the end of this run is not recorded in it", dir.display());
            return;
        }
    };
    write_end((&fd, dir), meta, end);
}

/// Records the end of a run the agent lost track of (it died while the job ran), unless
/// `job.json` no longer says `running` (a later run has written it). True when written.
pub fn finish_if_running(dir: &Path, end: &JobEnd<'_>) -> bool {
    let Ok(fd) = open_dir(dir) else { return false };
    let _guard = job_json_lock();
    match read_job_json(&fd) {
        Ok(meta) if meta.get("status").and_then(Value::as_str) == Some("running") => {
            write_end((&fd, dir), meta, end);
            true
        }
        _ => false,
    }
}

fn write_end((fd, dir): (&OwnedFd, &Path), mut meta: Map<String, Value>, end: &JobEnd<'_>) {
    let status = if end.status == TaskStatus::Completed { "completed" } else { "failed" };
    meta.insert("status".into(), status.into());
    meta.insert("exitCode".into(), end.exit_code.map_or(Value::Null, Value::from));
    meta.insert("completedAt".into(), end.completed_at.into());
    meta.insert("duration".into(), end.duration.into());
    match end.error {
        Some(e) => meta.insert("error".into(), e.into()),
        None => meta.remove("error"),
    };
    if let Err(e) = write_job_json(fd, &meta) {
        log::warn!("job {}: cannot write job.json: {e}", dir.display());
    }
}

/// `logs/output.log` of a job folder.
pub struct JobLog {
    file: Option<File>,
    /// Whether the next stderr byte starts a line (and so gets the prefix).
    err_line_start: bool,
}

impl JobLog {
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        let result = match stream {
            Stream::Stdout => f.write_all(data),
            Stream::Stderr => {
                let mut out = Vec::with_capacity(data.len() + 32);
                for line in data.split_inclusive(|&b| b == b'\n') {
                    if self.err_line_start {
                        out.extend_from_slice(b"[STDERR] ");
                    }
                    out.extend_from_slice(line);
                    self.err_line_start = line.ends_with(b"\n");
                }
                f.write_all(&out)
            }
        };
        if let Err(e) = result {
            log::warn!("cannot write a job's logs/output.log: {e}; its output stays in the task log");
            self.file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        let base = std::env::temp_dir().join(format!("codara-jobs-{}", std::process::id()));
        fs::create_dir_all(base.join("a")).unwrap();
        assert!(resolve(&base, "a", None).is_ok());
        assert!(resolve(&base, "missing", None).is_ok());
        for bad in ["", "..", "../x", "a/b", "a\\b", "x..y", ".", &"j".repeat(256)] {
            assert!(resolve(&base, bad, None).is_err(), "{bad}");
        }
        assert!(resolve(&base, "a", Some(base.join("a").to_str().unwrap())).is_ok());
        assert!(resolve(&base, "a", Some("/etc")).is_err());
        assert!(resolve(&base, "a", Some(base.join("../x").to_str().unwrap())).is_err());
        assert!(resolve(&base, "a", Some(base.to_str().unwrap())).is_err());
        std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
        assert!(resolve(&base, "link", None).is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    /// A task may run as another user who can write in its job folder (`TASK_USER`): links
    /// it plants there must not make the agent append to, create, read or copy a file
    /// outside the folder.
    #[test]
    fn links_planted_in_a_job_folder_are_not_followed() {
        use std::os::unix::fs::symlink;
        let base = std::env::temp_dir().join(format!("codara-joblinks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (job, outside) = (base.join("job"), base.join("outside"));
        fs::create_dir_all(&job).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(job.join("run.sh"), "true\n").unwrap();
        let target = outside.join("target");
        fs::write(&target, "root only\n").unwrap();
        let end =
            JobEnd { status: TaskStatus::Completed, exit_code: Some(0), completed_at: 1, duration: 1, error: None };

        // logs/output.log a link to a file of the agent's.
        fs::create_dir_all(job.join("logs")).unwrap();
        symlink(&target, job.join("logs/output.log")).unwrap();
        let e = prepare(&job, "c").map(|_| ()).unwrap_err();
        assert!(e.starts_with("cannot open logs/output.log"), "{e}");
        // logs itself a link to a directory of the agent's.
        fs::remove_dir_all(job.join("logs")).unwrap();
        symlink(&outside, job.join("logs")).unwrap();
        let e = prepare(&job, "c").map(|_| ()).unwrap_err();
        assert!(e.starts_with("cannot open logs/output.log"), "{e}");
        assert!(!outside.join("output.log").exists());
        assert_eq!(fs::read_to_string(&target).unwrap(), "root only\n");

        // job.json a link to a JSON file of the agent's: neither read (its env would go to
        // the task) nor copied into the folder.
        fs::remove_file(job.join("logs")).unwrap();
        fs::remove_file(job.join("job.json")).unwrap();
        let private = outside.join("config.json");
        fs::write(&private, r#"{"auths":{"registry":"cGFzc3dvcmQ="}}"#).unwrap();
        symlink(&private, job.join("job.json")).unwrap();
        let e = prepare(&job, "c").map(|_| ()).unwrap_err();
        assert!(e.starts_with("cannot read job.json"), "{e}");
        finish(&job, &end);
        assert!(fs::symlink_metadata(job.join("job.json")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&private).unwrap(), r#"{"auths":{"registry":"cGFzc3dvcmQ="}}"#);

        // The folder itself swapped for a link after it was resolved.
        fs::remove_file(job.join("job.json")).unwrap();
        let moved = base.join("moved");
        fs::rename(&job, &moved).unwrap();
        symlink(&outside, &job).unwrap();
        fs::write(outside.join("run.sh"), "true\n").unwrap();
        assert!(prepare(&job, "c").is_err());
        finish(&job, &end);
        assert!(!outside.join("job.json").exists() && !outside.join("logs").exists());

        // A plain folder still works.
        fs::remove_file(&job).unwrap();
        fs::rename(&moved, &job).unwrap();
        prepare(&job, "c").map(|_| ()).unwrap();
        finish(&job, &end);
        let meta: Value = serde_json::from_slice(&fs::read(job.join("job.json")).unwrap()).unwrap();
        assert_eq!(meta["status"], "completed");
        assert!(job.join("logs/output.log").is_file());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn stderr_lines_are_prefixed() {
        let path = std::env::temp_dir().join(format!("codara-joblog-{}", std::process::id()));
        let mut log = JobLog { file: Some(File::create(&path).unwrap()), err_line_start: true };
        log.write(Stream::Stdout, b"out\n");
        log.write(Stream::Stderr, b"e1\ne2 part");
        log.write(Stream::Stderr, b" end\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "out\n[STDERR] e1\n[STDERR] e2 part end\n");
        fs::remove_file(&path).unwrap();
    }
}
