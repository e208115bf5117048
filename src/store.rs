//! Task history under `DATA_DIR/tasks`: `journal.jsonl`, one task record a line, appended at
//! each task's start and end (the last line of an id wins), and each task's files
//! ([`crate::task_files`]: its output log, and its request when that is large). Appending to
//! one open file costs one write per change, where a file per record cost a create and a
//! rename. A record holds a bounded summary of a large request ([`crate::request`]), so a line
//! is at most a few KiB ([`MAX_LINE`]). The journal is rewritten (temporary file, then rename)
//! at every start, and whenever it holds more than eight lines per kept task or has grown
//! [`SLACK_BYTES`] past twice its size after the last rewrite; so it holds about what the
//! agent keeps, in lines and in bytes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::TaskRecord;
use crate::request::Request;
use crate::sync::Recover;
use crate::task_files::{self, TaskPaths};

const JOURNAL: &str = "journal.jsonl";

/// About the longest line the agent writes: a request summary (1 KiB of JSON), an `error`
/// (cut to 1 KiB), a `jobId` (255 bytes, up to 6 bytes each as JSON) and the fixed fields.
pub const MAX_LINE: usize = 4096;

/// The journal is compacted once it is this much larger than twice its size after the last
/// rewrite: with lines of at most [`MAX_LINE`], it stays under `SLACK_BYTES` plus twice the
/// kept tasks' lines.
pub const SLACK_BYTES: u64 = 4 << 20;

/// Lines longer than this are skipped when the journal is read, unparsed. Older agents wrote
/// whole requests (up to the 1 MiB body limit) into their lines.
const MAX_LINE_READ: usize = 16 << 20;

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
        // Only the agent's: a task run under TASK_USER must not read the history, the logs
        // or the secret (an existing directory keeps its mode; the agent warns about it).
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
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
    /// Its size after the last rewrite (or at open).
    base: u64,
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
        let journal = Journal { file: Some(file), lines: 0, len, base: len, fragment };
        Ok(Store { dir, journal: Arc::new(Mutex::new(journal)) })
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().recover()
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.paths(id).log
    }

    pub fn paths(&self, id: u64) -> TaskPaths {
        TaskPaths::new(&self.dir, id)
    }

    /// Appends `rec` as one line, in one write.
    pub fn append(&self, rec: &TaskRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        debug_assert!(line.len() <= MAX_LINE, "a journal line of {} bytes", line.len());
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

    /// Whether the journal holds many more lines, or bytes, than the `kept` tasks need.
    pub fn wants_compaction(&self, kept: usize) -> bool {
        let j = self.lock();
        j.lines > 8 * kept + 1024 || j.len > SLACK_BYTES + 2 * j.base
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
        j.base = j.len;
        j.file = Some(file);
        j.lines = lines;
        j.fragment = false;
        Ok(())
    }

    /// Deletes a task's files (output log, request).
    pub fn remove_files(&self, id: u64) {
        self.paths(id).remove();
    }

    /// Deletes the files of tasks that `kept` does not hold (see [`task_files::remove_orphans`]).
    pub fn remove_orphans(&self, kept: impl Fn(u64) -> bool) -> (usize, Option<u64>) {
        task_files::remove_orphans(&self.dir, kept)
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
    /// parse (cut short by a crash), or is longer than any record, is skipped. A record with a
    /// large request (written by an older agent) has its request moved to the task's request
    /// file, so what is held stays small whatever the journal holds.
    pub fn load_all(&self) -> Vec<TaskRecord> {
        let path = self.dir.join(JOURNAL);
        let Ok(f) = File::open(&path) else { return Vec::new() };
        let mut reader = BufReader::new(f);
        let mut latest: BTreeMap<u64, TaskRecord> = BTreeMap::new();
        let mut bad = 0usize;
        let mut line = Vec::new();
        loop {
            match read_line_bounded(&mut reader, &mut line, MAX_LINE_READ) {
                Ok(Some(true)) if line.is_empty() => continue,
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    bad += 1;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{}: cannot read on: {e}", path.display());
                    break;
                }
            }
            match serde_json::from_slice::<TaskRecord>(&line) {
                Ok(mut rec) if rec.id <= MAX_TASK_ID => {
                    let moved = latest.get(&rec.id).is_some_and(|r| r.request_truncated);
                    self.shrink(&mut rec, moved);
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

    /// Replaces a large request in `rec` by its summary, writing it whole to the task's request
    /// file first (unless an earlier line of the task did: `written`).
    fn shrink(&self, rec: &mut TaskRecord, written: bool) {
        if rec.request_truncated {
            return;
        }
        let req = Request {
            command: std::mem::take(&mut rec.command),
            args: std::mem::take(&mut rec.args),
            cwd: std::mem::take(&mut rec.cwd),
            env: std::mem::take(&mut rec.env),
        };
        let kept = if req.fits_inline() {
            req
        } else {
            let path = self.paths(rec.id).request;
            let result = if written { Ok(()) } else { task_files::write_request(&path, &req) };
            if let Err(e) = result {
                log::warn!(
                    "task {}: cannot write its request to {}: {e}; only a summary is kept",
                    rec.id,
                    path.display()
                );
            }
            rec.request_truncated = true;
            req.summary()
        };
        (rec.command, rec.args, rec.cwd, rec.env) = (kept.command, kept.args, kept.cwd, kept.env);
    }
}

/// Reads the next line of `r` into `line` (without its newline): `Some(true)`; a line longer
/// than `max` is passed over, never held: `Some(false)`; `None` at the end.
fn read_line_bounded(r: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(!too_long));
        }
        any = true;
        let (part, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long && line.len() + part.len() <= max {
            line.extend_from_slice(part);
        } else {
            too_long = true;
            line.clear();
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(!too_long));
        }
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

    /// An older agent wrote whole requests into its lines: at load, a large one goes to the
    /// task's request file and the record keeps a summary; a line longer than any record is
    /// passed over without being held.
    #[test]
    fn large_requests_of_old_lines_move_to_their_file() {
        let dir = std::env::temp_dir().join(format!("codara-store-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_data_dir(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        let mut big = rec(1, TaskStatus::Running);
        big.args = vec!["a".into(); 100_000];
        let old_line = |r: &TaskRecord| {
            let mut line = serde_json::to_vec(r).unwrap();
            line.push(b'\n');
            s.lock().file.as_mut().unwrap().write_all(&line).unwrap();
        };
        old_line(&big);
        big.status = TaskStatus::Completed;
        old_line(&big);
        s.append(&rec(2, TaskStatus::Completed)).unwrap();
        let all = s.load_all();
        assert_eq!(all.len(), 2);
        assert!(all[0].request_truncated && all[0].args.len() <= crate::request::SUMMARY_ITEMS);
        assert_eq!(all[0].status, TaskStatus::Completed);
        assert!(!all[1].request_truncated);
        let whole = crate::task_files::read_request(&s.paths(1).request).unwrap();
        assert_eq!(whole.args.len(), 100_000);
        assert!(!s.paths(2).request.exists());

        let mut r = io::Cursor::new(b"short\nxxxxxxxxxxxxxxxxxxxx\n\nlast".to_vec());
        let mut line = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(true));
        assert_eq!(line, b"short");
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(false));
        assert!(line.is_empty() && line.capacity() <= 16);
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(true));
        assert!(line.is_empty());
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(true));
        assert_eq!(line, b"last");
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_is_wanted_by_lines_or_by_bytes() {
        let dir = std::env::temp_dir().join(format!("codara-store-bytes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_data_dir(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        s.rewrite(1, |write| write(&rec(1, TaskStatus::Completed))).unwrap();
        assert!(!s.wants_compaction(1000));
        s.lock().len += 2 * SLACK_BYTES;
        assert!(s.wants_compaction(1000), "past the slack");
        s.rewrite(1, |write| write(&rec(1, TaskStatus::Completed))).unwrap();
        for _ in 0..1100 {
            s.append(&rec(1, TaskStatus::Completed)).unwrap();
        }
        assert!(s.wants_compaction(1), "past eight lines per kept task");
        assert!(!s.wants_compaction(1000));
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
