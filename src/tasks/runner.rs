//! Starting a task's process and seeing it to its end.
//!
//! Per task: the process runs in its own process group (posix_spawn keeps the fast path),
//! two reader threads drain its pipes ([`crate::tasks::reader`]), and a `task-N` thread waits
//! for its exit. When the main process exits, whatever it left in its group is killed before
//! the leader is reaped (so the group id cannot have been reused), and the readers get a short
//! grace to reach the end of the pipes: a grandchild that escaped the group and holds them open
//! cannot hang the task.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{waitid, Pid, Signal, WaitId, WaitIdOptions};

use crate::contain::reap::reap;
use crate::contain::Contained;
use crate::events::EventKind;
use crate::events::Stream;
use crate::protocol::{self, CompletedData, TaskStatus};
use crate::request::{self, Request};
use crate::sync::Recover;
use crate::task_files;
use crate::task_user::TaskUser;
use crate::tasks::job;
use crate::tasks::mask;
use crate::tasks::reader;
use crate::tasks::registry::Registry;
use crate::tasks::task::{self, Outcome, Settled, Task};
use crate::tasks::timer::Action;

/// How long the readers may take to reach the end of the pipes after the process group died.
pub const READER_GRACE: Duration = Duration::from_millis(1000);

/// The variable a task must never see.
pub const SECRET_VAR: &str = "CLUSTER_SECRET";

/// Starts an admitted task: records it, emits `started`, spawns its process and threads.
/// Never fails: a task that cannot start ends `failed`, and its slot is freed.
pub fn start(reg: &Arc<Registry>, task: &Arc<Task>) {
    // Until the pid is recorded below: the PID-1 reaper must not take this child for an orphan.
    let gate = reg.spawn_gate.read().recover();
    let prepared = prepare_job(reg, task);
    let request = task.request().expect("a task is started once, with its request");
    let secret_env = task.take_secret_env();
    let shown = task::masked_request(&request, task.secrets().as_deref());
    keep_request(task, &shown);
    // Its group first (a failure removes what was made, with `Contained`'s drop).
    let spawned = prepared
        .and_then(|()| {
            reg.isolation.contain(task.id, task.limits()).map_err(|e| format!("cannot create its control group: {e}"))
        })
        .and_then(|contained| {
            let user = reg.limits.task_user.as_ref();
            spawn_process(&request, &shown, &secret_env, user, &contained).map(|child| (child, contained))
        });
    let described = describe(&shown.command, &shown.args);
    // The child has its own copy: from here on, the task holds at most a summary.
    drop((request, secret_env));
    task.spawned();
    let (mut child, contained) = match spawned {
        Ok(c) => c,
        Err(error) => {
            drop(gate);
            // It names the command, which may hold a secret value.
            let error = task.secrets().map_or_else(|| error.clone(), |s| s.mask_str(&error).into_owned());
            persist(reg, task);
            if task.events_wanted() {
                task.emit(EventKind::Started, "started", task.to_json(false));
            }
            log::info!("task {} failed to start: {error}", task.id);
            finish(reg, task, Outcome::spawn_failure(error));
            return;
        }
    };
    let pid = child.id();
    let pgid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let stop_now = task.running_as(pid, pgid, contained.group());
    drop(gate);
    if stop_now {
        task.signal_group(Signal::TERM);
        reg.timer.kill_after_grace(task);
    }
    persist(reg, task);
    task.announce_start(task.events_wanted().then(|| task.to_json(false)));
    log::info!("task {} started: pid {pid}, {described}", task.id);

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let started = reader::spawn(&reg.pool, Arc::clone(task), Stream::Stdout, stdout)
        .and_then(|_| reader::spawn(&reg.pool, Arc::clone(task), Stream::Stderr, stderr));
    if let Err(e) = started {
        abandon(reg, task, child, contained, format!("cannot start a reader thread: {e}"));
        return;
    }
    if let Some(timeout) = timeout_of(reg, task) {
        reg.timer.schedule(Instant::now() + timeout, task, Action::Timeout);
    }
    spawn_waiter(reg, task, child, contained, pgid);
}

/// Starts the `task-N` thread that sees the task to its end ([`supervise`]). Should that
/// thread not start, or panic (a bug), the task is killed and ends failed all the same: it
/// never stays `running` with its slot taken.
fn spawn_waiter(reg: &Arc<Registry>, task: &Arc<Task>, child: Child, contained: Contained, pgid: Option<Pid>) {
    let (reg2, task2) = (Arc::clone(reg), Arc::clone(task));
    let (reg3, task3) = (Arc::clone(reg), Arc::clone(task));
    let waiter = reg.pool.spawn_or_else(
        format!("task-{}", task.id),
        move || supervise(&reg2, &task2, child, contained),
        // After a panic: what is left of its group is killed (its control group went with
        // the unwinding).
        move || {
            task3.signal_group(Signal::KILL);
            let error = "the agent failed while supervising this task (a bug: see the agent's log)";
            finish(&reg3, &task3, Outcome { error: Some(error.into()), ..Outcome::default() });
        },
    );
    if let Err(e) = waiter {
        // The child was dropped with the job (its control group killed and removed with it);
        // the process group is still ours to kill.
        log::error!("task {}: cannot start its waiter thread: {e}; killing it", task.id);
        task.signal_group(Signal::KILL);
        // Its `Child` went with the job; reap it by pid, or it stays a zombie. Bounded: a
        // process that left the group did not get the SIGKILL.
        if let Some(p) = pgid {
            let give_up = Instant::now() + Duration::from_secs(2);
            while matches!(rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG), Ok(None))
                && Instant::now() < give_up
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        finish(reg, task, Outcome { error: Some(format!("cannot start a waiter thread: {e}")), ..Outcome::default() });
    }
}

/// The task's limit: its own `timeout`, else `TASK_TIMEOUT`; `None` = none.
fn timeout_of(reg: &Registry, task: &Task) -> Option<Duration> {
    match task.timeout_ms {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => reg.limits.task_timeout,
    }
}

/// The command line for the log, bounded: the command and the first 8 args, each cut.
fn describe(command: &str, args: &[String]) -> String {
    let mut s = format!("{:?}", request::cut(command, 200));
    for a in args.iter().take(8) {
        s.push(' ');
        s.push_str(&format!("{:?}", request::cut(a, 100)));
    }
    if args.len() > 8 {
        s.push_str(&format!(" … ({} args)", args.len()));
    }
    s
}

/// For a job: checks its folder, marks `job.json` running, opens `logs/output.log`, and
/// makes the environment from `job.json` the task's.
fn prepare_job(reg: &Registry, task: &Task) -> Result<(), String> {
    let Some(job) = &task.job else { return Ok(()) };
    let (mut env, job_log) = job::prepare(&job.dir, &reg.monitor.host.hostname)?;
    task.set_job_log(job_log);
    let secret = mask::split_env(&mut env, &reg.limits.redact_vars).map_err(|e| format!("job.json: {e}"))?;
    task.set_env(env, secret, &reg.limits.secrets);
    Ok(())
}

/// A request too large for the record (which holds its summary) goes whole to its file,
/// before the record is written. If it cannot be written, the summary is all that is kept.
fn keep_request(task: &Task, request: &Request) {
    if !task.request_truncated() {
        return;
    }
    if let Err(e) = task_files::write_request(task.request_path(), request) {
        log::warn!(
            "task {}: cannot write its request to {}: {e}; only a summary of it is kept",
            task.id,
            task.request_path().display()
        );
    }
}

/// Spawns the process in its own process group and in its containment (control group or
/// mark), or says why it could not (in a message of bounded size: the command and `cwd` may
/// be huge). `secret_env` goes over `env` (where `env` holds `[REDACTED]` in their place).
/// Messages quote `shown`, the request with its secret values masked: masked before it is
/// cut, so a cut cannot leave a value's first bytes.
fn spawn_process(
    req: &Request,
    shown: &Request,
    secret_env: &BTreeMap<String, String>,
    user: Option<&TaskUser>,
    contained: &Contained,
) -> Result<Child, String> {
    match std::fs::metadata(&req.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("cwd is not a directory: {}", request::cut(&shown.cwd, 300))),
        Err(e) => return Err(format!("cwd {} is not usable: {e}", request::cut(&shown.cwd, 300))),
    }
    if let Some(user) = user.filter(|u| !crate::task_user::can_enter(std::path::Path::new(&req.cwd), u)) {
        let cwd = request::cut(&shown.cwd, 300);
        return Err(format!("cwd {cwd} cannot be entered by TASK_USER {} (permission denied)", user.name));
    }
    let mut cmd = Command::new(&req.command);
    cmd.args(&req.args).current_dir(&req.cwd).env_remove(SECRET_VAR);
    if let Some(user) = user {
        crate::task_user::apply(&mut cmd, user);
    }
    cmd.envs(&req.env)
        .envs(secret_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    contained.configure(&mut cmd).map_err(|e| format!("cannot open its control group: {e}"))?;
    cmd.spawn().map_err(|e| format!("cannot start {:?}: {e}", request::cut(&shown.command, 300)))
}

/// Waits for the process, kills what is left of the task (its process group, then its control
/// group or marked processes), reaps it, waits for the readers, and ends the task.
fn supervise(reg: &Arc<Registry>, task: &Arc<Task>, child: Child, mut contained: Contained) {
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
    let oom_killed = contained.oom_watch().is_some_and(|oom| watch_oom(task, pid, &oom, &contained));
    // Wait for the exit without reaping: the zombie keeps the group id ours while we kill
    // whatever the task left running in it.
    loop {
        match waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log::warn!("task {}: waitid failed: {e}", task.id);
                break;
            }
        }
    }
    let exited_at = protocol::now_ms();
    task.leader_exited();
    let (mut outcome, rusage) = match reap(child.id()) {
        Ok((status, rusage)) => (Outcome { exited_at: Some(exited_at), ..Outcome::from_status(status) }, Some(rusage)),
        Err(e) => (Outcome { error: Some(format!("cannot collect the exit status: {e}")), ..Outcome::default() }, None),
    };
    // The other tasks' main processes (this one's pid is free again: it is reaped).
    let others: Vec<u32> = match contained.walks_processes() {
        true => reg.running_tasks().iter().filter_map(|t| t.pid()).filter(|p| *p != child.id()).collect(),
        false => Vec::new(),
    };
    let (mut usage, note) = contained.finish(rusage, Some(child.id()), &others);
    // Killed by the agent on the group's OOM signal, maybe before the kernel killed any.
    usage.oom_killed |= oom_killed;
    if let Some(note) = note {
        log::info!("task {}: {note}", task.id);
    }
    outcome.usage = Some(usage);
    if !task.wait_readers(READER_GRACE) {
        log::warn!(
            "task {}: its output pipes are still open {} ms after it exited (a process outside its group holds them); later output is dropped",
            task.id,
            READER_GRACE.as_millis()
        );
    }
    finish(reg, task, outcome);
    // Its control group goes once the end is out (see `Contained::finish`).
    drop(contained);
}

/// Until the main process exits: when the task's v1 memory group signals OOM, kills the
/// whole group (v2's `memory.oom.group`, which v1 lacks). Returns at the exit (or if the
/// process cannot be watched; the caller's `waitid` then waits): whether it killed the task.
fn watch_oom(task: &Task, pid: Pid, oom: &std::os::fd::OwnedFd, contained: &Contained) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let Ok(exit) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else { return false };
    let mut killed = false;
    loop {
        let mut fds = [PollFd::new(&exit, PollFlags::IN), PollFd::new(oom, PollFlags::IN)];
        if crate::eintr::poll(&mut fds, None).is_err() || !fds[0].revents().is_empty() {
            return killed;
        }
        if !fds[1].revents().is_empty() {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(oom, &mut count);
            if !killed {
                log::info!("task {}: out of memory in its group: killing the whole task", task.id);
            }
            contained.kill();
            killed = true;
        }
    }
}

/// Reader threads could not start: kill the group, reap, end the task.
fn abandon(reg: &Arc<Registry>, task: &Arc<Task>, mut child: Child, contained: Contained, error: String) {
    log::error!("task {}: {error}; killing it", task.id);
    task.leader_exited();
    contained.kill();
    let _ = child.wait();
    drop(contained);
    finish(reg, task, Outcome { error: Some(error), ..Outcome::default() });
}

/// Ends a task exactly once: frees its slot, settles its status, persists it, and emits
/// `failed` (spawn failures only) and then `completed`, last.
pub fn finish(reg: &Arc<Registry>, task: &Arc<Task>, outcome: Outcome) {
    // Free the slot first: whoever sees the end may submit the next task at once.
    reg.release(task);
    let timeout_text = || timeout_of(reg, task).map_or(0, |d| d.as_millis()).to_string();
    let Some(Settled {
        status,
        exit_code,
        signal,
        duration,
        completed_at,
        timed_out,
        log_whole,
        job_started,
        error,
        usage,
    }) = task.settle(&outcome, timeout_text)
    else {
        return; // ended already: `settled` was counted then
    };
    if let (Some(job), true) = (&task.job, job_started) {
        let end = job::JobEnd { status, exit_code, completed_at, duration, error: error.as_deref() };
        job::finish(&job.dir, &end);
    }
    count_end(&reg.metrics, status, timed_out, duration);
    if let Some(u) = &usage {
        reg.metrics.observe_usage(u);
    }
    task.notify();
    if !log_whole {
        log::warn!("task {}: its output log is incomplete; its output tails stay in memory", task.id);
    }
    // Not synced: an agent crash (rather than the machine's) loses nothing in the page cache,
    // and a per-task fsync would cost more than the task.
    persist(reg, task);
    if outcome.spawn_failed {
        let error = outcome.error.as_deref().unwrap_or("could not start");
        task.emit(EventKind::Failed, "failed", serde_json::json!({ "error": error }));
    }
    task.emit(
        EventKind::Completed,
        "completed",
        CompletedData { status, exit_code, signal: signal.as_deref(), duration, usage },
    );
    // Replies waiting for the end (`?wait=true`) go out before the log line: they wait on it.
    task.run_on_end();
    log::info!(
        "task {} {}: exit code {}, signal {}, {} ms",
        task.id,
        status.as_str(),
        exit_code.map_or("none".to_string(), |c| c.to_string()),
        signal.as_deref().unwrap_or("none"),
        duration
    );
    reg.settled(task);
    reg.compact_if_needed();
}

/// A task's end in the `/metrics` counters.
fn count_end(m: &crate::metrics::Metrics, status: TaskStatus, timed_out: bool, duration: u64) {
    crate::metrics::inc(match status {
        TaskStatus::Completed => &m.tasks_completed,
        TaskStatus::Cancelled => &m.tasks_cancelled,
        _ => &m.tasks_failed,
    });
    if timed_out {
        crate::metrics::inc(&m.tasks_timed_out);
    }
    m.observe_duration(duration);
}

/// Writes the task's record; a failure is logged and the in-memory record stays.
fn persist(reg: &Registry, task: &Task) {
    let rec = task.record();
    if let Err(e) = reg.store.append(&rec) {
        log::warn!("task {}: cannot write its record: {e}", task.id);
    }
}
