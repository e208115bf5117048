//! One task: what was asked, its record, its process group, and its live output.
//! Everything mutable sits behind one mutex; `changed` wakes waiters (`?wait=true`,
//! `?follow=true`) on new output and at the end. The whole request is held only until its
//! process is spawned: the record holds it, or its summary when it is large
//! ([`crate::request`]), and the whole one is read back from its file when shown.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};

use crate::events::Stream;
use crate::events::{Event, EventKind, EventTx};
use crate::protocol::{self, TaskEnd, TaskLimits, TaskRecord, TaskStatus, TaskUsage, TaskView};
use crate::request::Request;
use crate::sync::Recover;
use crate::task_files::{self, TaskPaths};
use crate::tasks::job::JobLog;
use crate::tasks::log_health::LogHealth;
use crate::tasks::mask::{Masker, Secrets};
use crate::tasks::output_log::{self, LogReader, Next, Scan};

/// A validated request to run something.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    /// Merged over the agent's environment (minus the secret).
    pub env: BTreeMap<String, String>,
    /// Overrides `TASK_TIMEOUT`; `Some(0)` = no limit.
    pub timeout_ms: Option<u64>,
    pub job: Option<JobSpec>,
    /// Effective once admitted (the request's over the defaults).
    pub limits: TaskLimits,
    /// Given to the process like `env`, never shown or written anywhere: `secretEnv`, and the
    /// `env` values `REDACT_VARS` names (shown in `env` as `[REDACTED]`).
    pub secret_env: BTreeMap<String, String>,
    /// The names of `secretEnv` (the task object's `secretEnv`).
    pub secret_names: Vec<String>,
}

/// A job folder run (`POST /execute-job`).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub id: String,
    pub dir: PathBuf,
}

/// The last `cap` bytes of a stream.
#[derive(Debug, Default)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail { buf: VecDeque::new(), cap }
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let excess = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..excess);
        self.buf.extend(data);
    }

    pub fn to_text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(self.buf.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        tail_text(&v)
    }
}

/// Lossy UTF-8 of a tail, without the broken character a cut may leave at its start.
fn tail_text(bytes: &[u8]) -> String {
    let skip = bytes.iter().take(3).take_while(|b| (**b & 0xC0) == 0x80).count();
    String::from_utf8_lossy(&bytes[skip..]).into_owned()
}

/// Where a running task's output goes.
struct Output {
    log: Option<File>,
    log_path: PathBuf,
    /// Set after the first failed write: later output stays in memory only.
    log_broken: bool,
    tails: [Tail; 2],
    /// A job's `logs/output.log`, for job tasks.
    job_log: Option<JobLog>,
    /// Set when the task has ended: output arriving later is dropped, so `completed` stays last.
    closed: bool,
    /// What the last read of the ended task's log found; `None` until it is read.
    health: Option<LogHealth>,
}

/// Called once with the task when it has ended.
pub type OnEnd = Box<dyn FnOnce(&Task) + Send>;

struct State {
    record: TaskRecord,
    /// Run by the task's own thread once its end is recorded.
    on_end: Vec<OnEnd>,
    /// A cancel was asked for: the task ends `cancelled` whatever its exit.
    cancelled: bool,
    /// Why the agent ended it, when it did (shutdown).
    killed_because: Option<String>,
    /// The process group, while it is safe to signal: cleared before the leader is reaped,
    /// so a signal can never reach a group that reused the id.
    pgid: Option<Pid>,
    /// The task's control group, while its main process runs: the final SIGKILL of a stop
    /// (timeout, cancel, shutdown) goes to it too, so a main process that left its process
    /// group (`setpgid` into another group of the agent's session) is still stopped.
    group: Option<crate::contain::group::TaskGroup>,
    /// The main process has exited: the task is only being wound up, and a cancel now would
    /// mislabel a clean run.
    exited: bool,
    /// Its `started` event is behind it: sent to the broadcaster under this lock (or skipped
    /// with no client connected), before any output. A replay then sends `started` first
    /// itself ([`crate::ws::replay`]).
    started_sent: bool,
    output: Output,
    /// Pipe readers still reading.
    readers_open: u8,
    /// The whole request, from admission until its process is spawned; `None` after (and for
    /// a task from history).
    request: Option<Arc<Request>>,
    /// A stop request has sent SIGTERM to the group: a hundred cancels send it once, so a
    /// task's cleanup trap runs once.
    term_sent: bool,
    /// The secret variables, from admission until the process is spawned (never written).
    secret_env: Option<BTreeMap<String, String>>,
    /// The values masked in its output (with the cluster secret), until it ends.
    secrets: Option<Arc<Secrets>>,
}

pub struct Task {
    pub id: u64,
    /// Overrides `TASK_TIMEOUT`; `Some(0)` = no limit.
    pub timeout_ms: Option<u64>,
    pub job: Option<JobSpec>,
    /// Where a large request is kept whole.
    request_path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    slot_released: AtomicBool,
    events: EventTx,
}

/// How a task's process ended, or why it never ran.
#[derive(Debug, Default)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// Set when the program could not be started (or the agent ended it).
    pub error: Option<String>,
    pub spawn_failed: bool,
    /// When the main process exited (ms since the epoch); the end is recorded at it, not
    /// after the readers' grace.
    pub exited_at: Option<u64>,
    /// What it used (its group's counts, or `wait4`'s); a process of it killed for memory
    /// makes the task `failed`.
    pub usage: Option<TaskUsage>,
}

impl Outcome {
    pub fn from_status(status: ExitStatus) -> Outcome {
        Outcome { exit_code: status.code(), signal: status.signal().map(protocol::signal_name), ..Outcome::default() }
    }

    pub fn spawn_failure(error: String) -> Outcome {
        Outcome { error: Some(error), spawn_failed: true, ..Outcome::default() }
    }
}

/// What [`Task::settle`] recorded, for the bookkeeping done after the task's lock.
pub struct Settled {
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub duration: u64,
    pub completed_at: u64,
    pub timed_out: bool,
    /// The output log holds everything (no write to it failed).
    pub log_whole: bool,
    /// A job's `job.json` was marked running (so its end must be written too).
    pub job_started: bool,
    pub error: Option<String>,
    pub usage: Option<TaskUsage>,
}

/// A `cancel` that came too late.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyEnded;

impl Task {
    /// `base` holds what every task's output is masked for (the cluster secret).
    pub fn new(
        id: u64,
        spec: TaskSpec,
        paths: TaskPaths,
        max_output: usize,
        events: EventTx,
        base: &Arc<Secrets>,
    ) -> Task {
        let TaskSpec { command, args, cwd, env, timeout_ms, job, secret_env, secret_names, limits } = spec;
        let secrets = Secrets::with(base, secret_env.values());
        let request = Request { command, args, cwd, env };
        let mut record = TaskRecord {
            id,
            command: String::new(),
            args: Vec::new(),
            cwd: String::new(),
            env: BTreeMap::new(),
            status: TaskStatus::Running,
            started_at: protocol::now_ms(),
            timeout: timeout_ms,
            pid: None,
            timed_out: false,
            job_id: job.as_ref().map(|j| j.id.clone()),
            end: None,
            error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            request_truncated: false,
            limits: (!limits.is_empty()).then_some(limits),
            usage: None,
            secret_env: secret_names,
        };
        set_request(&mut record, &request, &secrets);
        let mut task = Task::from_record(record, paths, max_output, events, false);
        task.job = job;
        let st = task.state.get_mut().recover();
        st.request = Some(Arc::new(request));
        st.secret_env = Some(secret_env);
        st.secrets = Some(secrets);
        task
    }

    /// A task known from history (finished, or found running after a crash).
    pub fn from_record(
        record: TaskRecord,
        paths: TaskPaths,
        max_output: usize,
        events: EventTx,
        slot_released: bool,
    ) -> Task {
        let closed = record.status != TaskStatus::Running;
        Task {
            id: record.id,
            timeout_ms: record.timeout,
            job: None,
            request_path: paths.request,
            state: Mutex::new(State {
                record,
                on_end: Vec::new(),
                cancelled: false,
                killed_because: None,
                pgid: None,
                group: None,
                exited: false,
                started_sent: closed,
                output: Output {
                    log: None,
                    log_path: paths.log,
                    log_broken: false,
                    tails: [Tail::new(max_output), Tail::new(max_output)],
                    job_log: None,
                    closed,
                    health: None,
                },
                readers_open: 2,
                request: None,
                term_sent: false,
                secret_env: None,
                secrets: None,
            }),
            changed: Condvar::new(),
            slot_released: AtomicBool::new(slot_released),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().recover()
    }

    pub fn record(&self) -> TaskRecord {
        self.lock().record.clone()
    }

    /// The whole request, until the process is spawned ([`Task::spawned`]).
    pub fn request(&self) -> Option<Arc<Request>> {
        self.lock().request.clone()
    }

    /// The environment a job's `job.json` gives replaces the request's; `secret` (its values
    /// `REDACT_VARS` names, see [`crate::tasks::mask::split_env`]) joins the secret variables,
    /// under those of the request.
    pub fn set_env(&self, mut env: BTreeMap<String, String>, secret: BTreeMap<String, String>, base: &Arc<Secrets>) {
        let mut st = self.lock();
        let st = &mut *st;
        let pending = st.secret_env.get_or_insert_with(BTreeMap::new);
        let mut added = false;
        for (k, v) in secret {
            if let std::collections::btree_map::Entry::Vacant(e) = pending.entry(k) {
                e.insert(v);
                added = true;
            }
        }
        for name in &st.record.secret_env {
            env.remove(name);
        }
        // The automaton `Task::new` built already serves unless job.json added a value.
        let secrets = match (&st.secrets, added) {
            (Some(s), false) => Arc::clone(s),
            _ => Secrets::with(base, pending.values()),
        };
        if let Some(req) = st.request.as_mut() {
            Arc::make_mut(req).env = env;
            set_request(&mut st.record, req, &secrets);
        }
        st.secrets = Some(secrets);
    }

    /// The secret variables, for the spawn (once; they are kept nowhere after it).
    pub fn take_secret_env(&self) -> BTreeMap<String, String> {
        self.lock().secret_env.take().unwrap_or_default()
    }

    /// The values masked in this task's output.
    pub fn secrets(&self) -> Option<Arc<Secrets>> {
        self.lock().secrets.clone()
    }

    /// A masker for one of its streams; `None` when there is nothing to mask.
    pub fn masker(&self) -> Option<Masker> {
        self.secrets().filter(|s| !s.is_empty()).map(Masker::new)
    }

    /// The process has its own copy of the request now: this one goes (the record holds it,
    /// or its summary and the file it).
    pub fn spawned(&self) {
        self.lock().request = None;
    }

    /// Where the whole request goes when the record holds only its summary.
    pub fn request_path(&self) -> &std::path::Path {
        &self.request_path
    }

    pub fn status(&self) -> TaskStatus {
        self.lock().record.status
    }

    /// Marks the slot free; true only the first time, so the running count moves once.
    pub fn take_slot(&self) -> bool {
        !self.slot_released.swap(true, Ordering::AcqRel)
    }

    /// Whether the task has ended and takes no more output (a reader still reading then stops).
    pub fn output_closed(&self) -> bool {
        self.lock().output.closed
    }

    /// A pipe reader reached the end of its pipe.
    pub fn reader_done(&self) {
        let mut st = self.lock();
        st.readers_open = st.readers_open.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }

    /// Waits up to `grace` for both pipe readers to finish; false if one is still reading
    /// (a process outside the group holds the pipe).
    pub fn wait_readers(&self, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        let mut st = self.lock();
        while st.readers_open > 0 {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            st = self.changed.wait_timeout(st, left).recover().0;
        }
        true
    }

    /// Runs `f` once the task has ended: now if it has, else from its own thread at the end.
    pub fn on_end(&self, f: OnEnd) {
        let mut st = self.lock();
        if st.record.status == TaskStatus::Running {
            st.on_end.push(f);
            return;
        }
        drop(st);
        f(self);
    }

    /// Runs what waited for the end (see [`Task::on_end`]).
    pub fn run_on_end(&self) {
        let waiting = std::mem::take(&mut self.lock().on_end);
        for f in waiting {
            f(self);
        }
    }

    /// Wakes everyone waiting on this task.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Sends `sig` to the task's process group, if it still has one (SIGTERM with a SIGCONT,
    /// see [`send_to_group`]).
    pub fn signal_group(&self, sig: Signal) -> bool {
        let st = self.lock();
        if st.record.status != TaskStatus::Running || st.exited {
            return false;
        }
        let sent = st.pgid.is_some_and(|pgid| send_to_group(pgid, sig));
        let group = st.group.as_ref().filter(|_| sig == Signal::KILL).cloned();
        drop(st);
        // Outside the lock: a v1 kill freezes the group first, which may take a moment.
        match group {
            Some(g) => {
                g.kill();
                true
            }
            None => sent,
        }
    }

    /// The process runs as `pid`, leading group `pgid`. True when a stop was asked for while
    /// it was being spawned: the caller acts on it now (there was no group to signal then).
    pub fn running_as(&self, pid: u32, pgid: Option<Pid>, group: Option<crate::contain::group::TaskGroup>) -> bool {
        let mut st = self.lock();
        st.record.pid = Some(pid);
        st.pgid = pgid;
        st.group = group;
        st.cancelled || st.killed_because.is_some()
    }

    /// Sends `started` (when a client wants events: `data` is the task object) and marks it
    /// sent, under the task's lock, so a replay sees both or neither; before the readers
    /// start, so no output precedes it.
    pub fn announce_start(&self, data: Option<serde_json::Value>) {
        let mut st = self.lock();
        if let Some(data) = data {
            self.emit(EventKind::Started, "started", data);
        }
        st.started_sent = true;
    }

    /// The main process has exited and is not reaped yet: its zombie keeps the group id
    /// ours, so the group (whatever the task left running in it) is killed now, and forgotten
    /// before the leader is reaped, so no signal can reach a group that reused the id.
    pub fn leader_exited(&self) {
        let mut st = self.lock();
        st.exited = true;
        st.group = None;
        if let Some(pgid) = st.pgid.take() {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }

    /// Its deadline passed: true (and marked timed out) when it still runs with a group to
    /// stop.
    pub fn time_out(&self) -> bool {
        let mut st = self.lock();
        if st.record.status == TaskStatus::Running && st.pgid.is_some() {
            st.record.timed_out = true;
            true
        } else {
            false
        }
    }

    /// Records the end once: the status by the rules of CONTRACT.md §2 (a cancel stays
    /// `cancelled`; exit 0 without a timeout or a stop by the agent is `completed`; anything
    /// else `failed`), the error, the exit; closes the output. `None` when it had ended
    /// already. `timeout_text` says what the timeout was, for the error.
    pub fn settle(&self, outcome: &Outcome, timeout_text: impl FnOnce() -> String) -> Option<Settled> {
        let mut st = self.lock();
        if st.record.status != TaskStatus::Running {
            return None;
        }
        let job_started = st.output.job_log.is_some();
        let now = outcome.exited_at.unwrap_or_else(protocol::now_ms);
        let duration = now.saturating_sub(st.record.started_at);
        let oom = outcome.usage.is_some_and(|u| u.oom_killed);
        let clean = outcome.error.is_none() && st.killed_because.is_none() && !st.record.timed_out && !oom;
        let status = match (st.cancelled, clean && outcome.exit_code == Some(0)) {
            (true, _) => TaskStatus::Cancelled,
            (false, true) => TaskStatus::Completed,
            (false, false) => TaskStatus::Failed,
        };
        let error = outcome
            .error
            .clone()
            .or_else(|| st.killed_because.clone())
            .or_else(|| st.record.timed_out.then(|| format!("timed out after {} ms", timeout_text())))
            .or_else(|| oom.then(|| oom_text(st.record.limits)));
        st.record.status = status;
        // Bounded: a journal line stays within `store::MAX_LINE` (a path in it may be long).
        st.record.error = error.map(|e| crate::request::cut(&e, 1024));
        let signal = outcome.signal.clone();
        let end = TaskEnd { exit_code: outcome.exit_code, signal: signal.clone(), completed_at: now, duration };
        st.record.end = Some(end);
        st.record.usage = outcome.usage;
        st.pgid = None;
        let log_whole = Task::close_output(&mut st);
        Some(Settled {
            status,
            exit_code: outcome.exit_code,
            signal,
            duration,
            completed_at: now,
            timed_out: st.record.timed_out,
            log_whole,
            job_started,
            error: st.record.error.clone(),
            usage: outcome.usage,
        })
    }

    pub fn set_job_log(&self, log: JobLog) {
        self.lock().output.job_log = Some(log);
    }

    /// The record as it is now, and whether `started` has gone out (for a replay's cut).
    pub fn record_and_started(&self) -> (TaskRecord, bool) {
        let st = self.lock();
        (st.record.clone(), st.started_sent)
    }

    /// Whether the record holds only a summary of the request (the whole is in its file).
    pub fn request_truncated(&self) -> bool {
        self.lock().record.request_truncated
    }

    /// The limits it runs under.
    pub fn limits(&self) -> TaskLimits {
        self.lock().record.limits.unwrap_or_default()
    }

    /// The process id, once spawned.
    pub fn pid(&self) -> Option<u32> {
        self.lock().record.pid
    }

    /// Asks the task to stop: records why, sends SIGTERM to its group.
    /// The caller schedules the SIGKILL after the grace.
    pub fn request_stop(&self, cancel: bool, why: Option<String>) -> Result<(), AlreadyEnded> {
        let mut st = self.lock();
        if st.record.status != TaskStatus::Running || st.output.closed || st.exited {
            return Err(AlreadyEnded);
        }
        if cancel {
            st.cancelled = true;
        }
        if why.is_some() && st.killed_because.is_none() {
            st.killed_because = why;
        }
        if let Some(pgid) = st.pgid.filter(|_| !st.term_sent) {
            st.term_sent = send_to_group(pgid, Signal::TERM);
        }
        Ok(())
    }

    /// Waits up to `timeout` for output past `seen_bytes` (stdout + stderr) or the end.
    pub fn wait_output(&self, seen_bytes: u64, timeout: Duration) {
        let st = self.lock();
        if st.record.status == TaskStatus::Running && st.record.stdout_bytes + st.record.stderr_bytes <= seen_bytes {
            let _ = self.changed.wait_timeout(st, timeout);
        }
    }

    /// Emits an event that is not output (`started`, `failed`, `completed`).
    pub fn emit(&self, kind: EventKind, event: &str, data: impl serde::Serialize) {
        if !self.events.wanted() {
            return;
        }
        let json = protocol::task_update(self.id, event, data, None);
        self.events.send(Event { task_id: self.id, kind, json: json.into() });
    }

    /// Whether anyone listens for events (see [`EventTx::wanted`]); `emit` checks it too,
    /// this spares building what would be sent.
    pub fn events_wanted(&self) -> bool {
        self.events.wanted()
    }

    /// Takes one chunk from a reader: counts it, logs it, keeps its tail, and emits it, all
    /// under the lock so the log, the offsets and the events agree on one order.
    pub fn push_output(&self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut st = self.lock();
        let st = &mut *st;
        if st.output.closed {
            return;
        }
        let counter = match stream {
            Stream::Stdout => &mut st.record.stdout_bytes,
            Stream::Stderr => &mut st.record.stderr_bytes,
        };
        let offset = *counter;
        *counter += data.len() as u64;
        let out = &mut st.output;
        if !out.log_broken {
            if out.log.is_none() {
                // Truncated: a file of that name can only be left from an id given out
                // before a crash lost its record; its bytes are not this task's.
                match OpenOptions::new().write(true).create(true).truncate(true).open(&out.log_path) {
                    Ok(f) => out.log = Some(f),
                    Err(e) => {
                        log::warn!(
                            "task {}: cannot create output log {}: {e}; output kept in memory only",
                            self.id,
                            out.log_path.display()
                        );
                        out.log_broken = true;
                    }
                }
            }
            if let Some(f) = out.log.as_mut() {
                if let Err(e) = output_log::append(f, stream, data) {
                    log::warn!(
                        "task {}: cannot write output log {}: {e}; output kept in memory only",
                        self.id,
                        out.log_path.display()
                    );
                    out.log_broken = true;
                    out.log = None;
                }
            }
        }
        out.tails[stream.index()].push(data);
        if let Some(job_log) = out.job_log.as_mut() {
            job_log.write(stream, data);
        }
        if self.events.wanted() {
            let text = String::from_utf8_lossy(data);
            let json = protocol::task_update(self.id, stream.event(), &*text, Some(offset));
            let kind = EventKind::Output { stream, offset, len: data.len() as u64 };
            self.events.send(Event { task_id: self.id, kind, json: json.into() });
        }
        self.changed.notify_all();
    }

    /// Stops accepting output (the task has ended); returns whether its log is whole.
    /// The in-memory tails are dropped when the log has everything, to keep memory flat.
    fn close_output(st: &mut State) -> bool {
        st.output.closed = true;
        // The readers hold their own; an ended task keeps no secret value in memory.
        st.secrets = None;
        st.secret_env = None;
        st.output.log = None;
        st.output.job_log = None;
        let whole = !st.output.log_broken;
        if whole {
            let cap = st.output.tails[0].cap;
            st.output.tails = [Tail::new(cap), Tail::new(cap)];
        }
        whole
    }

    /// Records what a walk of the log found, judged against the task's byte counts, and warns
    /// the first time a log is found damaged or incomplete. Returns the verdict.
    pub fn note_log(&self, scan: &Scan) -> LogHealth {
        let mut st = self.lock();
        let produced = [st.record.stdout_bytes, st.record.stderr_bytes];
        let mut health =
            if st.output.log_broken { LogHealth::unwritten(produced) } else { LogHealth::judge(scan, produced) };
        if !st.output.closed && !st.output.log_broken {
            // Still being written: the counts have moved on since the walk; only damage counts.
            health = LogHealth { damage: health.damage, ..LogHealth::default() };
        }
        if let Some(what) = health.describe().filter(|_| st.output.health.is_none_or(|h| h.is_whole())) {
            log::warn!("task {}: output log {} is {what}", self.id, st.output.log_path.display());
        }
        // A running task's log grows: only the verdict on an ended one is kept.
        if st.output.closed {
            st.output.health = Some(health);
        }
        health
    }

    /// What is known of the log without reading it.
    fn known_health(st: &State) -> Option<LogHealth> {
        if st.output.log_broken {
            return Some(LogHealth::unwritten([st.record.stdout_bytes, st.record.stderr_bytes]));
        }
        st.output.health
    }

    /// The in-memory tails of stdout and stderr, when the output log could not be written
    /// (so it is not whole); `None` when the log has everything.
    pub fn tails_if_log_broken(&self) -> Option<(String, String)> {
        let st = self.lock();
        st.output.log_broken.then(|| (st.output.tails[0].to_text(), st.output.tails[1].to_text()))
    }

    /// The task object of the API. `with_output` adds the stdout/stderr tails (read from the
    /// log once the task has ended).
    pub fn to_json(&self, with_output: bool) -> serde_json::Value {
        self.view(with_output, |v| serde_json::to_value(v).expect("task view serialises"))
    }

    /// The task object as JSON text, serialised straight from the record.
    pub fn to_json_bytes(&self, with_output: bool) -> Vec<u8> {
        self.view(with_output, |v| serde_json::to_vec(v).expect("task view serialises"))
    }

    /// Calls `f` with the task's view; the tails of an ended task are read from its log
    /// without holding the task's lock.
    fn view<R>(&self, with_output: bool, f: impl FnOnce(&TaskView) -> R) -> R {
        let st = self.lock();
        let cap = st.output.tails[0].cap as u64;
        let mut record = st.record.clone();
        let pending = st.request.clone().map(|r| (r, st.secrets.clone()));
        let mut health = Self::known_health(&st);
        // An ended task's tails are read from its log, unless it could not be written.
        let from_log = with_output && st.output.closed && !st.output.log_broken;
        let mut tails =
            (with_output && !from_log).then(|| (st.output.tails[0].to_text(), st.output.tails[1].to_text()));
        let path = st.output.log_path.clone();
        drop(st);
        if from_log {
            let (read, scan) = read_tails(&path, cap as usize, &record);
            health = Some(self.note_log(&scan));
            tails = Some(read);
        }
        if with_output && record.request_truncated {
            self.whole_request(&mut record, pending);
        }
        let make = |record: &TaskRecord, out: Option<(String, String)>, health: Option<LogHealth>| {
            let has = out.is_some();
            let truncated = |n: u64| has.then_some(n > cap);
            let (stdout, stderr) = out.map_or((None, None), |(o, e)| (Some(o), Some(e)));
            let damage = health.and_then(|h| h.damage);
            let view = TaskView {
                record,
                stdout_truncated: truncated(record.stdout_bytes),
                stderr_truncated: truncated(record.stderr_bytes),
                stdout,
                stderr,
                output_damaged: damage.map(|_| true),
                output_damaged_at: damage.map(|d| d.offset),
                output_incomplete: health.is_some_and(|h| h.incomplete()).then_some(true),
            };
            f(&view)
        };
        make(&record, tails, health)
    }

    /// Puts the whole request in place of the summary in `record`: the one not yet spawned
    /// (`pending`), else the one in its file. If the file cannot be read, the summary stays,
    /// marked `requestTruncated`.
    fn whole_request(&self, record: &mut TaskRecord, pending: Option<(Arc<Request>, Option<Arc<Secrets>>)>) {
        let whole = match pending {
            Some((req, secrets)) => Ok(masked_request(&req, secrets.as_deref())),
            None => task_files::read_request(&self.request_path),
        };
        match whole {
            Ok(req) => {
                (record.command, record.args, record.cwd, record.env) = (req.command, req.args, req.cwd, req.env);
                record.request_truncated = false;
            }
            Err(e) => log::warn!(
                "task {}: cannot read its request from {}: {e}; its summary is shown",
                self.id,
                self.request_path.display()
            ),
        }
    }
}

/// Puts `req` in `record`: whole when it is small, else its summary, marked
/// `requestTruncated` (the whole one then goes to the task's request file); a secret value
/// in it (an argument that repeats a token) masked.
pub fn set_request(record: &mut TaskRecord, req: &Request, secrets: &Secrets) {
    // Masked before it is cut: a summary's cut could leave a value's first bytes.
    let masked = masked_request(req, Some(secrets));
    let kept = if req.fits_inline() { masked } else { masked.summary() };
    record.request_truncated = !req.fits_inline();
    (record.command, record.args, record.cwd, record.env) = (kept.command, kept.args, kept.cwd, kept.env);
}

/// `req` as it may be shown or kept: every secret value in its fields masked.
pub fn masked_request(req: &Request, secrets: Option<&Secrets>) -> Request {
    let Some(s) = secrets.filter(|s| !s.is_empty()) else { return req.clone() };
    let m = |v: &String| s.mask_str(v).into_owned();
    Request {
        command: m(&req.command),
        args: req.args.iter().map(m).collect(),
        cwd: m(&req.cwd),
        env: req.env.iter().map(|(k, v)| (m(k), m(v))).collect(),
    }
}

/// The tails of both streams of a finished task, from its log, and what the walk through it
/// found. A missing log (no output, or deleted) gives empty strings.
fn read_tails(path: &std::path::Path, cap: usize, record: &TaskRecord) -> ((String, String), Scan) {
    let mut scan = Scan::default();
    if record.stdout_bytes == 0 && record.stderr_bytes == 0 {
        return ((String::new(), String::new()), scan);
    }
    let mut tails = [Tail::new(cap), Tail::new(cap)];
    if let Ok(f) = File::open(path) {
        let mut reader = LogReader::new(f);
        let mut buf = Vec::new();
        loop {
            match reader.next(&mut buf, true) {
                Ok(Next::Record(stream)) => {
                    tails[stream.index()].push(&buf);
                    scan.sizes[stream.index()] += buf.len() as u64;
                }
                Ok(Next::Damaged(d)) => {
                    scan.damage = Some(d);
                    break;
                }
                Ok(Next::Cut(at)) => {
                    scan.cut = Some(at);
                    break;
                }
                Ok(Next::End) => break,
                Err(e) => {
                    log::warn!("cannot read output log {}: {e}", path.display());
                    break;
                }
            }
        }
    }
    ((tails[0].to_text(), tails[1].to_text()), scan)
}

pub type TaskRef = Arc<Task>;

/// The error of a task a process of which the kernel killed for memory.
fn oom_text(limits: Option<TaskLimits>) -> String {
    match limits.and_then(|l| l.memory_bytes) {
        Some(n) => {
            format!("out of memory: a process of the task went over its memory limit ({n} bytes) and was killed")
        }
        None => "out of memory: the kernel killed a process of the task".to_string(),
    }
}

/// Sends `sig` to a process group. SIGTERM is followed by SIGCONT: a stopped process (one
/// that stopped itself, or got SIGTTIN reading a terminal) would otherwise only see the
/// SIGKILL after the grace, and never run its cleanup.
fn send_to_group(pgid: Pid, sig: Signal) -> bool {
    let sent = kill_process_group(pgid, sig).is_ok();
    if sent && sig == Signal::TERM {
        let _ = kill_process_group(pgid, Signal::CONT);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.to_text(), "cdefg");
        t.push(b"0123456789");
        assert_eq!(t.to_text(), "56789");
        let mut z = Tail::new(0);
        z.push(b"abc");
        assert_eq!(z.to_text(), "");
    }

    /// A value the summary's cut would split is masked whole first.
    #[test]
    fn a_summary_holds_no_part_of_a_secret() {
        let value = "tok-0123456789abcdefghij";
        let arg = format!("{}{value}", "x".repeat(185));
        let req = Request { command: "c".into(), args: vec![arg; 100], cwd: "/".into(), env: BTreeMap::new() };
        let mut record: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": 1, "command": "", "args": [], "cwd": "", "env": {}, "status": "running", "startedAt": 1
        }))
        .unwrap();
        set_request(&mut record, &req, &Secrets::new([value]));
        assert!(record.request_truncated);
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains("tok-0123"), "{text}");
        assert!(record.args[0].starts_with(&"x".repeat(185)), "{:?}", record.args[0]);
    }

    #[test]
    fn tail_text_skips_a_cut_character() {
        assert_eq!(tail_text(&"é!".as_bytes()[1..]), "!");
    }
}
