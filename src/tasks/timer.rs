//! The `task-timer` thread: one thread for every deadline of every task (the timeout's
//! SIGTERM, the SIGKILL after `KILL_GRACE`), so a task costs no thread to time it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::protocol::TaskStatus;
use crate::sync::Recover;
use crate::tasks::task::Task;
use crate::worker::Worker;

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

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// The heap is swept of ended tasks when it reaches this size.
    purge_at: usize,
    stop: bool,
}

/// Handle to the timer thread; cheap to clone.
#[derive(Clone)]
pub struct Timer {
    shared: Arc<Shared>,
    grace: Duration,
}

impl Timer {
    /// Starts the thread. `grace` is `KILL_GRACE`.
    pub fn spawn(grace: Duration) -> std::io::Result<(Timer, Worker)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { heap: BinaryHeap::new(), seq: 0, purge_at: 64, stop: false }),
            wake: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("task-timer".into())
            .stack_size(128 * 1024)
            .spawn(move || run(&s, grace))?;
        let timer = Timer { shared, grace };
        let t = timer.clone();
        Ok((timer, Worker::new("task-timer", move || t.stop(), vec![handle])))
    }

    /// Adds a deadline. The thread is woken only when it becomes the earliest, so the usual
    /// timeout of a short task costs no context switch.
    pub fn schedule(&self, at: Instant, task: &Arc<Task>, action: Action) {
        let mut st = self.shared.state.lock().recover();
        let earliest = st.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse(Entry { at, seq, task: Arc::downgrade(task), action }));
        // Short tasks leave their timeouts behind; sweep them out now and then so the heap
        // tracks running tasks, not every task of the last TASK_TIMEOUT.
        if st.heap.len() >= st.purge_at {
            st.heap.retain(|Reverse(e)| e.task.upgrade().is_some_and(|t| t.status() == TaskStatus::Running));
            st.purge_at = (st.heap.len() * 2).max(64);
        }
        drop(st);
        if earliest {
            self.shared.wake.notify_one();
        }
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
        self.shared.state.lock().recover().stop = true;
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, grace: Duration) {
    let mut st = shared.state.lock().recover();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        let Some(Reverse(next)) = st.heap.peek() else {
            st = shared.wake.wait(st).recover();
            continue;
        };
        if next.at > now {
            let wait = next.at - now;
            st = shared.wake.wait_timeout(st, wait).recover().0;
            continue;
        }
        let Reverse(e) = st.heap.pop().expect("peeked");
        // Signal without holding the timer's lock: a task's lock is taken below.
        drop(st);
        if let Some(kill_at) = fire(e.task.upgrade(), e.action, now, grace) {
            let mut s = shared.state.lock().recover();
            s.seq += 1;
            let seq = s.seq;
            s.heap.push(Reverse(Entry { at: kill_at, seq, task: e.task, action: Action::Kill }));
            st = s;
        } else {
            st = shared.state.lock().recover();
        }
    }
}

/// Acts on one deadline; returns when to send SIGKILL, for a timeout with a grace.
fn fire(task: Option<Arc<Task>>, action: Action, now: Instant, grace: Duration) -> Option<Instant> {
    let task = task?;
    match action {
        Action::Timeout => {
            let stopping = task.time_out();
            if !stopping {
                return None;
            }
            log::warn!("task {} timed out; sending SIGTERM to its process group", task.id);
            task.signal_group(Signal::TERM);
            if grace.is_zero() {
                task.signal_group(Signal::KILL);
                None
            } else {
                Some(now + grace)
            }
        }
        Action::Kill => {
            if task.signal_group(Signal::KILL) {
                log::warn!("task {} still running after the grace; sent SIGKILL to its process group", task.id);
            }
            None
        }
    }
}
