//! Task history under `DATA_DIR/tasks`: `journal.jsonl`, one task record a line, appended at
//! each task's start and end (the last line of an id wins), and `<id>.log`, each task's output
//! (see [`crate::tasks::output_log`]). Appending to one open file costs one write per change, where a
//! file per record cost a create and a rename. The journal is rewritten (temporary file, then
//! rename) at every start and whenever it has grown past eight times `TASK_HISTORY`, so it
//! holds about what the agent keeps.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::TaskRecord;

const JOURNAL: &str = "journal.jsonl";

/// The largest task id: above 2^53 − 1, a main server in JavaScript cannot tell ids apart.
/// A larger one in the files is damage, and is skipped.
pub const MAX_TASK_ID: u64 = (1 << 53) - 1;

/// Whether the file's last byte is a newline.
fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    File::open(path).and_then(|mut f| f.seek(SeekFrom::End(-1)).and_then(|_| f.read_exact(&mut last))).is_ok()
        && last[0] == b'\n'
}

/// Whether `e` says the file system (or the user's quota) is full: a state that passes, unlike
/// a permission or a path that is wrong.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Creates `DATA_DIR` when missing and checks that files can be written in it. A full disk is
/// a warning, not a refusal: refusing would only make a service manager restart the agent in
/// a loop, and the agent can run tasks without writing history (their output then stays in
/// memory, as tails). Anything else (a file in the way, no permission) is an error.
pub fn prepare_data_dir(dir: &Path) -> io::Result<()> {
    match try_data_dir(dir) {
        Err(e) if is_full(&e) => {
            log::warn!(
                "DATA_DIR {} is full ({e}): the agent starts, but task records and output logs cannot be written until space is freed (output is then kept in memory, as tails)",
                dir.display()
            );
            Ok(())
        }
        other => other,
    }
}

fn try_data_dir(dir: &Path) -> io::Result<()> {
    for d in [dir.to_path_buf(), dir.join("tasks")] {
        if d.exists() && !d.is_dir() {
            return Err(io::Error::other(format!("{} exists and is not a directory", d.display())));
        }
        fs::create_dir_all(&d)?;
    }
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let result = File::create(&probe).and_then(|mut f| f.write_all(b"ok")).and_then(|_| fs::remove_file(&probe));
    if result.is_err() {
        let _ = fs::remove_file(&probe);
    }
    result
}

struct Journal {
    /// `None` after a failure to reopen it: records then stay in memory only.
    file: Option<File>,
    lines: usize,
    /// Bytes of whole records in the file.
    len: u64,
    /// A failed append may have left part of a record that could not be cut off: the next
    /// append starts on a new line, so the fragment stays a line of its own (skipped at load).
    fragment: bool,
}

/// `DATA_DIR/agent.lock`, locked (flock) for as long as the agent runs: a second agent
/// started on the same `DATA_DIR` by mistake would otherwise "recover" the first one's
/// running tasks (killing them), rewrite its journal under it, and reuse its task ids.
/// The lock goes with the process, however it ends; the file holds the owner's pid.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, String> {
        use rustix::fs::{flock, FlockOperation};
        let path = data_dir.join("agent.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let owner = fs::read_to_string(&path).unwrap_or_default();
                let owner = owner.trim();
                let owner = if owner.is_empty() { String::new() } else { format!(" (pid {owner})") };
                return Err(format!(
                    "DATA_DIR {} is in use by another codara-agent{owner}; each agent needs a DATA_DIR of its own",
                    data_dir.display()
                ));
            }
            // Some network filesystems have no locks: run without, and say so.
            Err(e) => {
                log::warn!(
                    "cannot lock {} ({e}): nothing stops a second agent from using this DATA_DIR",
                    path.display()
                );
                return Ok(DataDirLock { _file: file });
            }
        }
        // Best effort: the pid only makes the message above more useful.
        let _ = file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(DataDirLock { _file: file })
    }
}

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
}

impl Store {
    /// The store inside `data_dir` (created by [`prepare_data_dir`]). The caller holds the
    /// [`DataDirLock`].
    pub fn open(data_dir: &Path) -> io::Result<Store> {
        let dir = data_dir.join("tasks");
        let file = OpenOptions::new().create(true).append(true).open(dir.join(JOURNAL))?;
        let len = file.metadata()?.len();
        // A record cut short by a crash may end the file: the next starts on a new line.
        let fragment = len > 0 && !ends_with_newline(&dir.join(JOURNAL));
        let journal = Journal { file: Some(file), lines: 0, len, fragment };
        Ok(Store { dir, journal: Arc::new(Mutex::new(journal)) })
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Appends `rec` as one line, in one write.
    pub fn append(&self, rec: &TaskRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut j = self.lock();
        let j = &mut *j;
        let file = j.file.as_mut().ok_or_else(|| io::Error::other("the journal could not be reopened"))?;
        if j.fragment {
            line.insert(0, b'\n');
        }
        match file.write_all(&line) {
            Ok(()) => {
                // After a fragment, the file is longer than the records written: ask it.
                j.len = if j.fragment { file.metadata().map_or(j.len, |m| m.len()) } else { j.len + line.len() as u64 };
                j.lines += 1;
                j.fragment = false;
                Ok(())
            }
            Err(e) => {
                // Part of the record may be in the file (a full disk): cut it off, so the next
                // record does not run into it and both become one unreadable line.
                j.fragment = file.set_len(j.len).is_err();
                Err(e)
            }
        }
    }

    /// Whether the journal holds many more lines than the `kept` tasks need.
    pub fn wants_compaction(&self, kept: usize) -> bool {
        self.lock().lines > 8 * kept + 1024
    }

    /// Replaces the journal with the records that `records` hands to the writer it gets. It
    /// runs with the journal locked, so no append can fall between reading the records and
    /// the swap; records are written one by one, never all held at once.
    /// `next_id` is kept beside it (`next-id`): the kept tasks need not hold the highest id
    /// ever given (a long task may outlive newer ones in the history).
    pub fn rewrite(
        &self,
        next_id: u64,
        records: impl FnOnce(&mut dyn FnMut(&TaskRecord) -> io::Result<()>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut j = self.lock();
        let id_tmp = self.dir.join(".next-id.tmp");
        let result = File::create(&id_tmp)
            .and_then(|mut f| writeln!(f, "{next_id}").and_then(|_| f.sync_data()))
            .and_then(|_| fs::rename(&id_tmp, self.dir.join("next-id")));
        // A temporary file left on a full disk would hold on to the space it got.
        if let Err(e) = result {
            let _ = fs::remove_file(&id_tmp);
            return Err(e);
        }
        let tmp = self.dir.join(format!(".{JOURNAL}.tmp"));
        let mut lines = 0;
        let result = File::create(&tmp).and_then(|f| {
            let mut out = io::BufWriter::new(f);
            records(&mut |rec| {
                serde_json::to_writer(&mut out, rec).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
                lines += 1;
                Ok(())
            })?;
            out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
            fs::rename(&tmp, self.dir.join(JOURNAL))
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let file = OpenOptions::new().append(true).open(self.dir.join(JOURNAL))?;
        j.len = file.metadata()?.len();
        j.file = Some(file);
        j.lines = lines;
        j.fragment = false;
        Ok(())
    }

    /// Deletes a task's output log.
    pub fn remove_log(&self, id: u64) {
        let path = self.log_path(id);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot delete {}: {e}", path.display());
            }
        }
    }

    /// The id the agent had reached at the last rewrite (0 when unknown).
    pub fn load_next_id(&self) -> u64 {
        let path = self.dir.join("next-id");
        let Ok(text) = fs::read_to_string(&path) else { return 0 };
        match text.trim().parse::<u64>() {
            Ok(n) if n <= MAX_TASK_ID => n,
            _ => {
                log::warn!(
                    "{}: ignored {:?}, not a task id (ids continue from the journal)",
                    path.display(),
                    text.trim()
                );
                0
            }
        }
    }

    /// The latest record of every task in the journal, oldest first. A line that does not
    /// parse (cut short by a crash) is skipped.
    pub fn load_all(&self) -> Vec<TaskRecord> {
        let path = self.dir.join(JOURNAL);
        let Ok(f) = File::open(&path) else { return Vec::new() };
        let mut latest: BTreeMap<u64, TaskRecord> = BTreeMap::new();
        let mut bad = 0usize;
        for line in BufReader::new(f).split(b'\n') {
            let Ok(line) = line else { break };
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<TaskRecord>(&line) {
                Ok(rec) if rec.id <= MAX_TASK_ID => {
                    latest.insert(rec.id, rec);
                }
                _ => bad += 1,
            }
        }
        if bad > 0 {
            log::warn!("{}: skipped {bad} unreadable line(s)", path.display());
        }
        latest.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskStatus;

    fn rec(id: u64, status: TaskStatus) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "command": "x", "args": [], "cwd": "/", "env": {}, "status": status, "startedAt": 1
        }))
        .unwrap()
    }

    #[test]
    fn last_line_wins_and_rewrite_compacts() {
        let dir = std::env::temp_dir().join(format!("codara-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_data_dir(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        s.append(&rec(1, TaskStatus::Running)).unwrap();
        s.append(&rec(2, TaskStatus::Running)).unwrap();
        s.append(&rec(1, TaskStatus::Completed)).unwrap();
        // A line cut short by a crash, then a later good one.
        s.lock().file.as_mut().unwrap().write_all(b"{\"id\":3,\"comm").unwrap();
        s.lock().file.as_mut().unwrap().write_all(b"\n").unwrap();
        s.append(&rec(4, TaskStatus::Failed)).unwrap();
        let all = s.load_all();
        assert_eq!(
            all.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            vec![(1, TaskStatus::Completed), (2, TaskStatus::Running), (4, TaskStatus::Failed)]
        );
        s.rewrite(9, |write| write(&rec(4, TaskStatus::Failed))).unwrap();
        s.append(&rec(5, TaskStatus::Running)).unwrap();
        let ids: Vec<u64> = Store::open(&dir).unwrap().load_all().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![4, 5]);
        assert_eq!(s.load_next_id(), 9);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_beyond_what_a_main_server_can_read_are_skipped() {
        let dir = std::env::temp_dir().join(format!("codara-store-big-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_data_dir(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        s.append(&rec(7, TaskStatus::Completed)).unwrap();
        s.append(&rec(u64::MAX, TaskStatus::Completed)).unwrap();
        s.append(&rec(MAX_TASK_ID + 1, TaskStatus::Completed)).unwrap();
        assert_eq!(s.load_all().iter().map(|r| r.id).collect::<Vec<_>>(), vec![7]);
        fs::write(dir.join("tasks/next-id"), "18446744073709551614\n").unwrap();
        assert_eq!(s.load_next_id(), 0);
        fs::write(dir.join("tasks/next-id"), "garbage").unwrap();
        assert_eq!(s.load_next_id(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_left_by_a_crash_does_not_swallow_the_next_record() {
        let dir = std::env::temp_dir().join(format!("codara-store-torn-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_data_dir(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        s.append(&rec(1, TaskStatus::Completed)).unwrap();
        drop(s);
        // The crash: half a record, no newline.
        OpenOptions::new()
            .append(true)
            .open(dir.join("tasks").join(JOURNAL))
            .unwrap()
            .write_all(b"{\"id\":2,\"co")
            .unwrap();
        let s = Store::open(&dir).unwrap();
        s.append(&rec(3, TaskStatus::Completed)).unwrap();
        assert_eq!(s.load_all().iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 3]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
