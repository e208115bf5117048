//! Job folders (`POST /execute-job`, CONTRACT.md §7): `JOBS_BASE_PATH/<jobId>` holds `run.sh`,
//! an optional `job.json` (its `env` is the task's environment; its `status` is kept up to
//! date), and `logs/output.log` (stdout as is, stderr lines prefixed `[STDERR] `).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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

fn job_json(dir: &Path) -> PathBuf {
    dir.join("job.json")
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

fn read_job_json(dir: &Path) -> Result<Map<String, Value>, JobJsonError> {
    let bytes = match read_bounded(&job_json(dir)) {
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
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let file = OpenOptions::new().read(true).custom_flags(nonblocking()).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
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
fn write_job_json(dir: &Path, m: &Map<String, Value>) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".job.json.{}.{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(m).map_err(io::Error::other)?)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, job_json(dir))
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
    let guard = job_json_lock();
    let mut meta = read_job_json(dir)?;
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
    write_job_json(dir, &meta).map_err(|e| format!("cannot write job.json: {e}"))?;
    drop(guard);
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let file = open_output_log(&logs.join("output.log")).map_err(|e| format!("cannot open logs/output.log: {e}"))?;
    Ok((env, JobLog { file: Some(file), err_line_start: true }))
}

/// Opens (creates) a job's `output.log` for appending; a FIFO or another non-regular file
/// there is refused rather than waited on.
fn open_output_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new().create(true).append(true).custom_flags(nonblocking()).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    // Blocking again for the writes (a regular file never blocks on them anyway).
    rustix::fs::fcntl_setfl(&file, rustix::fs::fcntl_getfl(&file)? - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

fn nonblocking() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
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
    let _guard = job_json_lock();
    let meta = match read_job_json(dir) {
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
    write_end(dir, meta, end);
}

/// Records the end of a run the agent lost track of (it died while the job ran), unless
/// `job.json` no longer says `running` (a later run has written it). True when written.
pub fn finish_if_running(dir: &Path, end: &JobEnd<'_>) -> bool {
    let _guard = job_json_lock();
    match read_job_json(dir) {
        Ok(meta) if meta.get("status").and_then(Value::as_str) == Some("running") => {
            write_end(dir, meta, end);
            true
        }
        _ => false,
    }
}

fn write_end(dir: &Path, mut meta: Map<String, Value>, end: &JobEnd<'_>) {
    let status = if end.status == TaskStatus::Completed { "completed" } else { "failed" };
    meta.insert("status".into(), status.into());
    meta.insert("exitCode".into(), end.exit_code.map_or(Value::Null, Value::from));
    meta.insert("completedAt".into(), end.completed_at.into());
    meta.insert("duration".into(), end.duration.into());
    match end.error {
        Some(e) => meta.insert("error".into(), e.into()),
        None => meta.remove("error"),
    };
    if let Err(e) = write_job_json(dir, &meta) {
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
