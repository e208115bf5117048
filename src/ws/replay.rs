//! A `ws-replay` thread per subscribe: sends a task's output from the client's offsets up to
//! a cut taken under the task's lock (the bytes it has produced so far; all of them, and
//! `completed`, when it has ended), reading the task's log. The broadcaster holds the task's
//! live events meanwhile and, told the cut, drops those the replay covered. It waits for a
//! slow client instead of overfilling its queue.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::protocol::{self, CompletedData, TaskStatus};
use crate::sync::GaugeGuard;
use crate::tasks::output_log::{LogReader, Next};
use crate::tasks::registry::Registry;
use crate::ws::ctl::Ctl;
use crate::ws::queue::{Out, Queue, WRITE_TIMEOUT};

pub struct Replay {
    pub reg: Arc<Registry>,
    pub client: u64,
    pub task_id: u64,
    pub generation: u64,
    /// Set when the client unsubscribes: stop queueing.
    pub cancel: Arc<AtomicBool>,
    /// Offsets in stdout and stderr to replay from.
    pub from: (u64, u64),
    pub queue: Queue,
    pub done: Sender<Ctl>,
}

/// Starts the replay's thread; `alive` is held for as long as it runs.
pub fn spawn(job: Replay, alive: GaugeGuard) -> std::io::Result<()> {
    std::thread::Builder::new().name("ws-replay".into()).stack_size(128 * 1024).spawn(move || {
        let _alive = alive;
        let (done, client, task_id, generation) = (job.done.clone(), job.client, job.task_id, job.generation);
        let (cut, ended, started) = run(&job);
        let _ = done.send(Ctl::ReplayDone { id: client, task_id, generation, cut, ended, started });
    })?;
    Ok(())
}

/// Queues `json`, waiting while the client is over its budget; false if it stops draining
/// (nothing written for twice the write timeout), is kicked, or unsubscribed.
fn push(job: &Replay, json: String) -> bool {
    let queue = &job.queue;
    let stop = || job.cancel.load(Ordering::SeqCst) || queue.kicked.load(Ordering::SeqCst);
    queue.budget.wait_for_room(json.len(), 2 * WRITE_TIMEOUT, stop) && queue.push(Out::Text(json.into()))
}

/// Replays; returns the cut (stdout, stderr bytes covered), whether the end was sent, and
/// whether `started` was.
fn run(job: &Replay) -> ([u64; 2], bool, bool) {
    let Some(task) = job.reg.get(job.task_id) else {
        // Unknown (or not yet created): whatever comes live is new.
        job.queue.push_error("Task not found", Some(job.task_id));
        return ([0, 0], false, false);
    };
    // Under the task's lock, its byte counts and its log agree: the log holds exactly the
    // chunks below the counts, and every later chunk comes live.
    let (record, started_sent) = task.record_and_started();
    let ended = record.status != TaskStatus::Running;
    let cut = [record.stdout_bytes, record.stderr_bytes];
    let from = [job.from.0, job.from.1];
    // A running task replayed from its start: `started` first, as live. Its live one, sent
    // with `started_sent` under the task's lock, is already on its way, and the broadcaster
    // drops it as covered; had it not been sent yet, `started_sent` would be false.
    let started = !ended && started_sent && from == [0, 0];
    if started && !push(job, protocol::task_update(job.task_id, "started", task.to_json(false), None)) {
        return (cut, ended, started);
    }
    if from[0] < cut[0] || from[1] < cut[1] {
        if let Ok(f) = File::open(job.reg.log_path(job.task_id)) {
            let mut reader = LogReader::new(f);
            let mut pos = [0u64; 2];
            let mut buf = Vec::new();
            while pos[0] < cut[0] || pos[1] < cut[1] {
                // Up to the cut, the log is whole unless damaged: anything but a record ends it.
                let Ok(Next::Record(stream)) = reader.next(&mut buf, ended) else { break };
                let s = stream.index();
                let start = pos[s];
                let end = start + buf.len() as u64;
                pos[s] = end;
                let lo = start.max(from[s]);
                let hi = end.min(cut[s]);
                if lo < hi {
                    let text = String::from_utf8_lossy(&buf[(lo - start) as usize..(hi - start) as usize]);
                    if !push(job, protocol::task_update(job.task_id, stream.event(), &*text, Some(lo))) {
                        return (cut, ended, started);
                    }
                }
            }
        }
    }
    if ended {
        if record.pid.is_none() {
            if let Some(error) = &record.error {
                push(job, protocol::task_update(job.task_id, "failed", serde_json::json!({ "error": error }), None));
            }
        }
        let end = record.end.clone().unwrap_or(protocol::TaskEnd {
            exit_code: None,
            signal: None,
            completed_at: 0,
            duration: 0,
        });
        let data = CompletedData {
            status: record.status,
            exit_code: end.exit_code,
            signal: end.signal.as_deref(),
            duration: end.duration,
            usage: record.usage,
        };
        push(job, protocol::task_update(job.task_id, "completed", data, None));
    }
    (cut, ended, started)
}
