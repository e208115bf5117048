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
