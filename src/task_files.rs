//! The files a task may have under `DATA_DIR/tasks` besides its journal lines: `<id>.log`, its
//! output ([`crate::tasks::output_log`]), and `<id>.request.json`, the whole request of a task
//! whose request is too large to keep in memory ([`crate::request`]).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::request::Request;

/// The largest request file read back. A request is at most the body limit (1 MiB) of JSON;
/// a job's `env` comes from its `job.json` and may be larger, but not this large.
pub const MAX_REQUEST_FILE: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct TaskPaths {
    pub log: PathBuf,
    pub request: PathBuf,
}

impl TaskPaths {
    pub fn new(dir: &Path, id: u64) -> TaskPaths {
        TaskPaths { log: dir.join(format!("{id}.log")), request: dir.join(format!("{id}.request.json")) }
    }

    /// Deletes both files (a missing one is fine).
    pub fn remove(&self) {
        for path in [&self.log, &self.request] {
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot delete {}: {e}", path.display());
                }
            }
        }
    }
}

/// The task a file of `DATA_DIR/tasks` belongs to: `<id>.log`, `<id>.request.json`, or the
/// temporary file of the latter (`.<id>.request.json.tmp`). `None` for anything else.
pub fn owner(name: &str) -> Option<u64> {
    let name = match name.strip_prefix('.') {
        Some(tmp) => tmp.strip_suffix(".request.json.tmp")?,
        None => name.strip_suffix(".log").or_else(|| name.strip_suffix(".request.json"))?,
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Deletes the files in `dir` of tasks `kept` does not hold: left when journal lines were
/// lost (a crash, a full disk). Returns how many were deleted and the highest id they had
/// (that id was given out: ids must go on above it).
pub fn remove_orphans(dir: &Path, kept: impl Fn(u64) -> bool) -> (usize, Option<u64>) {
    let Ok(entries) = fs::read_dir(dir) else { return (0, None) };
    let (mut removed, mut highest) = (0, None);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(owner) else { continue };
        if kept(id) {
            continue;
        }
        highest = highest.max(Some(id));
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => log::warn!("cannot delete {}: {e}", entry.path().display()),
        }
    }
    (removed, highest)
}

/// Writes the whole request to `path`, through a temporary file and a rename, so a reader
/// finds the whole file or none (not synced, like the journal: a crash of the agent loses
/// nothing, a power cut may).
pub fn write_request(path: &Path, req: &Request) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("request");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = File::create(&tmp).and_then(|f| {
        let mut out = io::BufWriter::new(f);
        serde_json::to_writer(&mut out, req).map_err(io::Error::other)?;
        out.flush()?;
        fs::rename(&tmp, path)
    });
    if result.is_err() {
        // On a full disk it would keep the space it got.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a request written by [`write_request`]; its size is checked before it is read.
pub fn read_request(path: &Path) -> io::Result<Request> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > MAX_REQUEST_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than a request can be ({MAX_REQUEST_FILE})"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_REQUEST_FILE).read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_file_names() {
        assert_eq!(owner("12.log"), Some(12));
        assert_eq!(owner("12.request.json"), Some(12));
        assert_eq!(owner(".12.request.json.tmp"), Some(12));
        for other in ["journal.jsonl", "next-id", ".journal.jsonl.tmp", "x.log", ".log", "1.2.log", "+1.log", "12.txt"]
        {
            assert_eq!(owner(other), None, "{other}");
        }
    }

    #[test]
    fn a_request_round_trips_and_a_bad_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("codara-task-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let paths = TaskPaths::new(&dir, 7);
        let req = Request { command: "c".into(), args: vec!["a".into(); 3], cwd: "/".into(), env: Default::default() };
        write_request(&paths.request, &req).unwrap();
        assert_eq!(read_request(&paths.request).unwrap(), req);
        fs::write(&paths.request, b"{\"command\":").unwrap();
        assert_eq!(read_request(&paths.request).unwrap_err().kind(), io::ErrorKind::InvalidData);
        paths.remove();
        assert_eq!(read_request(&paths.request).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
