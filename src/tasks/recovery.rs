//! At start: the history, and what an agent that died (kill -9, OOM, power cut) left behind.
//! A task recorded as running was running when it died: its process group is killed, whatever
//! became of its main process; a job's `job.json` is finished; the task is recorded `failed`.
//!
//! The group is found by scanning `/proc/*/stat` for the task's group id (its pid, since each
//! task leads a group of its own). A group id is a pid, and pids are reused, so a process is
//! killed only under this guard:
//! - the task started during this boot (`startedAt` after the boot time): after a reboot
//!   nothing of it can be alive, and its group id may be anyone's;
//! - if a process with the group's id exists (alive or a zombie), it started within
//!   [`SAME_PROCESS_WITHIN_MS`] of the task's `startedAt`: else the id was given to a newer
//!   process, which Linux does only once no process is left in the old group;
//! - each process killed started no earlier than the task (field 22, in clock ticks since
//!   boot, against `startedAt` less the same tolerance);
//! - it is checked again through a pidfd just before the signal, so a pid reused between the
//!   scan and the kill is not hit.
//!
//! What the guard cannot tell: a group whose main process has also died, its id reused after
//! the pids wrapped around, and a new group of that id made by a process that has died since
//! too. Its members started after the task did and pass. That takes `pid_max` new processes
//! between the task's start and the next start of the agent.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::procfs::{self, ProcInfo};
use crate::protocol::{TaskEnd, TaskRecord, TaskStatus};
use crate::store::Store;
use crate::tasks::job;
use crate::tasks::mask;
use crate::tasks::output_log;
use crate::tasks::registry::Registry;

/// How far a process's start may be from its task's `startedAt` and still be its: `btime`
/// has whole seconds, ticks are 10 ms.
pub const SAME_PROCESS_WITHIN_MS: u64 = 2000;

/// Why a task that was running when the agent died has ended.
pub const DIED: &str = "the agent stopped while the task was running";

/// Loads history; ends the tasks the dead agent left running; deletes files of tasks not in
/// the history; rewrites the journal.
pub fn recover(reg: &Arc<Registry>, store: &Store, jobs_base: &Path) {
    let mut records = store.load_all();
    scrub_secrets(&mut records, store, reg.redact_vars());
    for rec in records.iter_mut().filter(|r| r.status == TaskStatus::Running) {
        let killed = kill_leftovers(rec);
        if !killed.is_empty() {
            log::warn!(
                "task {}: killed process group {} left running by an earlier agent: {} process(es), pids {killed:?}",
                rec.id,
                rec.pid.unwrap_or(0),
                killed.len()
            );
        }
        end_interrupted(rec, store);
        finish_job(rec, store, jobs_base);
    }
    let count = records.len();
    reg.load_history(records);
    // Files of tasks whose journal lines were lost would otherwise stay forever.
    let (removed, highest) = store.remove_orphans(|id| reg.knows(id));
    if let Some(id) = highest.filter(|&id| id <= crate::store::MAX_TASK_ID) {
        reg.given_out(id);
    }
    if removed > 0 {
        log::info!("deleted {removed} file(s) of tasks that are not in the history (their journal lines were lost)");
    }
    // Start from a clean journal: one line per kept task, no line cut short by a crash.
    reg.compact();
    // Reading a journal of an older agent (whole requests in its lines) freed a lot.
    crate::alloc::give_back();
    if count > 0 {
        log::info!("loaded {count} task(s) from history; next task id {}", reg.next_id());
    }
}

/// History written by an agent before `REDACT_VARS` kept `env` values whose names it now
/// calls secret in clear: they become `[REDACTED]` in the records (the journal is rewritten
/// from them at start) and in the request files of large requests.
fn scrub_secrets(records: &mut [TaskRecord], store: &Store, patterns: &[String]) {
    let mut scrubbed = 0;
    for rec in records.iter_mut() {
        let mut changed = mask::redact_names(&mut rec.env, patterns);
        let path = store.paths(rec.id).request;
        if rec.request_truncated {
            if let Ok(mut req) = crate::task_files::read_request(&path) {
                if mask::redact_names(&mut req.env, patterns) {
                    changed = true;
                    if let Err(e) = crate::task_files::write_request(&path, &req) {
                        log::warn!("task {}: cannot rewrite {} without its secrets: {e}", rec.id, path.display());
                    }
                }
            }
        }
        scrubbed += usize::from(changed);
    }
    if scrubbed > 0 {
        log::info!("history: env values named by REDACT_VARS of {scrubbed} earlier task(s) replaced by [REDACTED]");
    }
}

/// Records the end of a task its agent did not see end.
fn end_interrupted(rec: &mut TaskRecord, store: &Store) {
    // Its byte counts were last written at its start: take them from its log, up to any
    // damage (a damaged length must never size a buffer: the agent would abort at every
    // start).
    let path = store.log_path(rec.id);
    let scan = output_log::scan(&path, true).unwrap_or_else(|e| {
        log::warn!("task {}: cannot read output log {}: {e}", rec.id, path.display());
        Default::default()
    });
    if let Some(d) = scan.damage {
        log::warn!("task {}: output log {} is {d}; the output before it is kept", rec.id, path.display());
    }
    if let Some(at) = scan.cut {
        log::warn!("task {}: output log {} ends inside a record at byte {at}", rec.id, path.display());
    }
    [rec.stdout_bytes, rec.stderr_bytes] = scan.sizes;
    let now = crate::protocol::now_ms();
    rec.status = TaskStatus::Failed;
    rec.error = Some(DIED.into());
    rec.end = Some(TaskEnd {
        exit_code: None,
        signal: None,
        completed_at: now,
        duration: now.saturating_sub(rec.started_at),
    });
}

/// A job's `job.json` still says `running`: it gets the end the task got.
fn finish_job(rec: &TaskRecord, store: &Store, jobs_base: &Path) {
    let Some(job_id) = &rec.job_id else { return };
    // The job's folder is the task's `cwd` (whole in the request file when the record holds a
    // summary); it must still resolve inside JOBS_BASE_PATH.
    let cwd = if rec.request_truncated {
        match crate::task_files::read_request(&store.paths(rec.id).request) {
            Ok(req) => req.cwd,
            Err(e) => {
                log::warn!("task {}: cannot read its request: {e}; its job.json is left as it is", rec.id);
                return;
            }
        }
    } else {
        rec.cwd.clone()
    };
    let Ok(dir) = job::resolve(jobs_base, job_id, Some(&cwd)) else { return };
    let end = rec.end.as_ref().expect("ended just before");
    let job_end = job::JobEnd {
        status: rec.status,
        exit_code: None,
        completed_at: end.completed_at,
        duration: end.duration,
        error: Some(DIED),
    };
    if job::finish_if_running(&dir, &job_end) {
        log::warn!("task {}: job {job_id}: job.json recorded failed ({DIED})", rec.id);
    }
}

/// What may be killed of a task's group: its id, and the earliest start (in clock ticks since
/// boot) a process of it can have. `None` when nothing of it can be alive.
fn guard(rec: &TaskRecord, boot_ms: u64, hz: u64) -> Option<(i32, u64)> {
    let pgid = i32::try_from(rec.pid?).ok().filter(|&p| p > 1)?;
    let earliest_ms = rec.started_at.checked_sub(SAME_PROCESS_WITHIN_MS)?;
    // Started before this boot: nothing survived the reboot.
    let since_boot = earliest_ms.checked_sub(boot_ms)?;
    Some((pgid, since_boot * hz / 1000))
}

/// The processes of group `pgid` that started at `min_ticks` or later, or none at all when
/// the group's id was reused (see the module's guard). Zombies are dead already.
fn members(procs: &[ProcInfo], pgid: i32, min_ticks: u64, leader_ok: impl Fn(&ProcInfo) -> bool) -> Vec<ProcInfo> {
    if procs.iter().any(|p| i64::from(p.pid) == i64::from(pgid) && !leader_ok(p)) {
        return Vec::new();
    }
    let own = std::process::id();
    procs
        .iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z' && p.start_ticks >= min_ticks && p.pid != own)
        .copied()
        .collect()
}

/// Kills what is left of the task's process group (see the module's guard); the pids killed.
pub fn kill_leftovers(rec: &TaskRecord) -> Vec<u32> {
    let Some(boot_ms) = procfs::boot_time().map(|s| s * 1000) else { return Vec::new() };
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let Some((pgid, min_ticks)) = guard(rec, boot_ms, hz) else { return Vec::new() };
    let leader_ok =
        |p: &ProcInfo| (boot_ms + p.start_ticks * 1000 / hz).abs_diff(rec.started_at) <= SAME_PROCESS_WITHIN_MS;
    let mut killed = Vec::new();
    // Again until none is left: a member may fork while the others are being killed.
    for _ in 0..50 {
        let found = members(&procfs::processes(), pgid, min_ticks, leader_ok);
        if found.is_empty() {
            break;
        }
        killed.extend(found.iter().filter(|p| kill_checked(p)).map(|p| p.pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.sort_unstable();
    killed.dedup();
    killed
}

/// SIGKILL to `p` if it is still the process the scan saw (same group, same start), checked
/// through a pidfd so the pid cannot be reused between the check and the signal.
#[cfg(target_os = "linux")]
fn kill_checked(p: &ProcInfo) -> bool {
    use rustix::process::{kill_process, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Some(pid) = i32::try_from(p.pid).ok().and_then(Pid::from_raw) else { return false };
    let same = || {
        procfs::Stat::read(p.pid)
            .and_then(|s| s.info())
            .is_some_and(|now| now.pgrp == p.pgrp && now.start_ticks == p.start_ticks)
    };
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => same() && pidfd_send_signal(&fd, Signal::KILL).is_ok(),
        // A kernel before 5.3: the plain signal, right after the check.
        Err(rustix::io::Errno::NOSYS) => same() && kill_process(pid, Signal::KILL).is_ok(),
        Err(_) => false,
    }
}

/// Without /proc there is nothing to check a process against: nothing is killed.
#[cfg(not(target_os = "linux"))]
fn kill_checked(_: &ProcInfo) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: Option<u32>, started_at: u64) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": 1, "command": "x", "args": [], "cwd": "/", "env": {}, "status": "running",
            "startedAt": started_at, "pid": pid
        }))
        .unwrap()
    }

    fn p(pid: u32, pgrp: i32, start_ticks: u64, state: char) -> ProcInfo {
        ProcInfo { pid, state, pgrp, start_ticks }
    }

    #[test]
    fn nothing_of_a_task_from_before_the_boot_is_touched() {
        let boot_ms = 1_000_000_000;
        assert_eq!(guard(&rec(Some(500), boot_ms - 60_000), boot_ms, 100), None);
        assert_eq!(guard(&rec(None, boot_ms + 60_000), boot_ms, 100), None);
        assert_eq!(guard(&rec(Some(1), boot_ms + 60_000), boot_ms, 100), None);
        // 60 s after boot, less the 2 s tolerance, at 100 ticks a second.
        assert_eq!(guard(&rec(Some(500), boot_ms + 60_000), boot_ms, 100), Some((500, 5800)));
    }

    #[test]
    fn members_are_of_the_group_newer_than_the_task_and_alive() {
        let procs = [
            p(500, 500, 6000, 'Z'),
            p(501, 500, 6100, 'S'),
            p(502, 500, 100, 'S'),
            p(503, 77, 6200, 'R'),
            p(504, 500, 6300, 'Z'),
        ];
        let found = members(&procs, 500, 5800, |_| true);
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![501]);
        // The group's id belongs to a process that started at another time: not this group.
        assert!(members(&procs, 500, 5800, |_| false).is_empty());
        // No process of that id (the main process was reaped): the members alone decide.
        assert_eq!(members(&procs[1..], 500, 5800, |_| false).len(), 1);
    }
}
