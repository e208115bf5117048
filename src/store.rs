//! Task records and output logs under `DATA_DIR/tasks`: `<id>.json` (the record, replaced
//! atomically) and `<id>.log` (the output, see [`crate::tasks::log`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::protocol::TaskRecord;

/// Creates `DATA_DIR` when missing and checks that files can be written in it.
pub fn prepare_data_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::create_dir_all(dir.join("tasks"))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let result = File::create(&probe).and_then(|mut f| f.write_all(b"ok")).and_then(|_| fs::remove_file(&probe));
    if result.is_err() {
        let _ = fs::remove_file(&probe);
    }
    result
}

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store inside `data_dir` (created by [`prepare_data_dir`]).
    pub fn new(data_dir: &Path) -> Store {
        Store { dir: data_dir.join("tasks") }
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `rec` through a temporary file and a rename, so a reader or a crash sees either
    /// the old record or the new one. `sync` makes the new one survive a power loss.
    pub fn save(&self, rec: &TaskRecord, sync: bool) -> io::Result<()> {
        let json = serde_json::to_vec(rec).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&json)?;
        if sync {
            f.sync_data()?;
        }
        drop(f);
        fs::rename(&tmp, self.record_path(rec.id))
    }

    /// Deletes a task's record and log.
    pub fn remove(&self, id: u64) {
        for path in [self.record_path(id), self.log_path(id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot delete {}: {e}", path.display());
                }
            }
        }
    }

    /// Every readable record, oldest first. Unreadable ones are logged and skipped.
    pub fn load_all(&self) -> Vec<TaskRecord> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(rec) => out.push(rec),
                Err(e) => log::warn!("skipping unreadable task record {}: {e}", path.display()),
            }
        }
        out.sort_by_key(|r| r.id);
        out
    }
}
