//! The `task-timer` thread: one thread for every deadline of every task (the timeout's
//! SIGTERM, the SIGKILL after `KILL_GRACE`), so a task costs no thread to time it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::process::Signal;

use crate::protocol::TaskStatus;
use crate::tasks::task::Task;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The task ran out of time: SIGTERM, then SIGKILL after the grace.
    Timeout,
    /// The grace is over: SIGKILL.
    Kill,
}

struct Entry {
    at: Instant,
    seq: u64,
    task: Weak<Task>,
    action: Action,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

enum Msg {
    Schedule(Instant, Weak<Task>, Action),
    Stop,
}

/// Handle to the timer thread; cheap to clone.
#[derive(Clone)]
pub struct Timer {
    tx: Sender<Msg>,
    grace: Duration,
}

impl Timer {
    /// Starts the thread. `grace` is `KILL_GRACE`.
    pub fn spawn(grace: Duration) -> std::io::Result<(Timer, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = std::thread::Builder::new()
            .name("task-timer".into())
            .stack_size(128 * 1024)
            .spawn(move || run(rx, grace))?;
        Ok((Timer { tx, grace }, handle))
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn schedule(&self, at: Instant, task: &Arc<Task>, action: Action) {
        let _ = self.tx.send(Msg::Schedule(at, Arc::downgrade(task), action));
    }

    /// SIGKILL for `task`'s group once the grace has passed.
    pub fn kill_after_grace(&self, task: &Arc<Task>) {
        if self.grace.is_zero() {
            task.signal_group(Signal::KILL);
        } else {
            self.schedule(Instant::now() + self.grace, task, Action::Kill);
        }
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

fn run(rx: Receiver<Msg>, grace: Duration) {
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut purge_at = 64;
    loop {
        let msg = match heap.peek() {
            Some(Reverse(next)) => rx.recv_deadline(next.at),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Schedule(at, task, action)) => {
                seq += 1;
                heap.push(Reverse(Entry { at, seq, task, action }));
                // Short tasks leave their timeouts behind; sweep them out now and then so
                // the heap tracks running tasks, not every task of the last TASK_TIMEOUT.
                if heap.len() >= purge_at {
                    heap.retain(|Reverse(e)| e.task.upgrade().is_some_and(|t| t.status() == TaskStatus::Running));
                    purge_at = (heap.len() * 2).max(64);
                }
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Reverse(e) = heap.pop().expect("peeked");
            let Some(task) = e.task.upgrade() else {
                continue;
            };
            match e.action {
                Action::Timeout => {
                    let stopping = {
                        let mut st = task.lock();
                        if st.record.status == TaskStatus::Running && st.pgid.is_some() {
                            st.record.timed_out = true;
                            true
                        } else {
                            false
                        }
                    };
                    if stopping {
                        log::warn!("task {} timed out; sending SIGTERM to its process group", task.id);
                        task.signal_group(Signal::TERM);
                        if grace.is_zero() {
                            task.signal_group(Signal::KILL);
                        } else {
                            seq += 1;
                            heap.push(Reverse(Entry { at: now + grace, seq, task: e.task, action: Action::Kill }));
                        }
                    }
                }
                Action::Kill => {
                    if task.signal_group(Signal::KILL) {
                        log::warn!("task {} still running after the grace; sent SIGKILL to its process group", task.id);
                    }
                }
            }
        }
    }
}
