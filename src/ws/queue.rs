//! One WebSocket client's outgoing queue, shared by the broadcaster, the replay threads and
//! the client's reader; its writer drains it. Bounded in bytes ([`CLIENT_BUFFER_BYTES`]):
//! the broadcaster closes a client that falls further behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::sync::Recover;

/// Bytes of messages a client may have queued before it is closed as too slow.
pub const CLIENT_BUFFER_BYTES: usize = 8 << 20;
/// After the agent's close frame, how long the client may take to answer it (its reads go on
/// meanwhile, so what it sends does not turn the close into a reset).
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// A single write to a client may block this long before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close code for a client that fell too far behind (RFC 6455: policy violation).
pub const CLOSE_TOO_SLOW: u16 = 1008;
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client message over the size limit (RFC 6455: message too big).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// What a writer sends.
#[derive(Debug)]
pub enum Out {
    Text(Arc<str>),
    /// Answer the latest ping (in [`Queue::pong`]).
    PongDue,
    Close(u16, &'static str),
}

impl Out {
    pub fn cost(&self) -> usize {
        match self {
            Out::Text(s) => s.len(),
            Out::PongDue | Out::Close(..) => 0,
        }
    }
}

/// The sending side of a client's queue, shared by the hub, the replay threads and the
/// client's reader.
#[derive(Clone)]
pub struct Queue {
    pub tx: Sender<Out>,
    pub budget: Arc<Budget>,
    pub kicked: Arc<AtomicBool>,
    /// The writer has sent a close frame: the connection is in its closing handshake, and
    /// the reader only waits (briefly) for the client's answer.
    pub closing: Arc<AtomicBool>,
    /// The payload of the latest ping not yet answered. Only the latest needs an answer, so
    /// a client that pings without reading holds one pong (≤ 125 bytes) at most.
    pong: PongSlot,
}

impl Queue {
    pub fn new(tx: Sender<Out>) -> Queue {
        Queue {
            tx,
            budget: Arc::new(Budget::default()),
            kicked: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(AtomicBool::new(false)),
            pong: PongSlot::default(),
        }
    }

    /// Queues the answer to a ping, replacing an unanswered earlier one.
    pub fn pong(&self, payload: Vec<u8>) {
        let was_empty = self.pong.0.lock().recover().replace(payload).is_none();
        if was_empty {
            let _ = self.tx.send(Out::PongDue);
        }
    }

    /// Queues `out` unless it would take the client over its budget; false then.
    pub fn push(&self, out: Out) -> bool {
        let cost = out.cost();
        let before = self.budget.add(cost);
        if before + cost > CLIENT_BUFFER_BYTES {
            self.budget.release(cost);
            return false;
        }
        if self.tx.send(out).is_err() {
            self.budget.release(cost);
        }
        true
    }

    /// Queues a message whatever the budget: a close frame (one per client), and messages
    /// held back during a replay, which were counted when they were held.
    pub fn push_control(&self, out: Out) {
        let cost = out.cost();
        self.budget.add(cost);
        if self.tx.send(out).is_err() {
            self.budget.release(cost);
        }
    }

    /// Queues `{"type":"error","error":…,"taskId":…}` (within the budget).
    pub fn push_error(&self, error: &str, task_id: Option<u64>) {
        let msg = match task_id {
            Some(t) => serde_json::json!({ "type": "error", "error": error, "taskId": t }),
            None => serde_json::json!({ "type": "error", "error": error }),
        };
        self.push(Out::Text(msg.to_string().into()));
    }

    /// The pong slot, for the writer (which holds no sender: it ends when the last one goes).
    pub fn pong_slot(&self) -> PongSlot {
        self.pong.clone()
    }
}

/// The bytes a client has queued, and the replays waiting for room in its queue: the writer
/// wakes them as it drains it, the hub when it cancels a replay or kicks the client. A
/// release costs one atomic load unless a replay is waiting.
#[derive(Default)]
pub struct Budget {
    queued: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

impl Budget {
    /// Counts `cost` more bytes queued; returns the count before.
    pub fn add(&self, cost: usize) -> usize {
        self.queued.fetch_add(cost, Ordering::SeqCst)
    }

    /// `cost` bytes left the queue (written, or dropped unsent).
    pub fn release(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the waiting replays (to look again at the room, or at why they should stop).
    pub fn wake(&self) {
        // SeqCst on both sides (the stop flags are stored SeqCst too): either this load sees
        // a waiter that came, or that waiter's first look sees what was done before this call.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().recover();
            self.room.notify_all();
        }
    }

    /// Whether `extra` more bytes would take the client over its budget.
    pub fn is_over(&self, extra: usize) -> bool {
        self.queued.load(Ordering::SeqCst) + extra > CLIENT_BUFFER_BYTES
    }

    /// Waits until `extra` more bytes fit, or `stop` says to give up, or nothing leaves the
    /// queue for `stall`; true when they fit.
    pub fn wait_for_room(&self, extra: usize, stall: Duration, stop: impl Fn() -> bool) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut held = self.lock.lock().recover();
        let fits = loop {
            if stop() {
                break false;
            }
            let before = self.queued.load(Ordering::SeqCst);
            if !self.is_over(extra) {
                break true;
            }
            let (next, waited) = self.room.wait_timeout(held, stall).recover();
            held = next;
            if waited.timed_out() && self.queued.load(Ordering::SeqCst) >= before {
                break false;
            }
        };
        drop(held);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        fits
    }
}

/// Where the answer to the latest ping waits for the writer.
#[derive(Clone, Default)]
pub struct PongSlot(Arc<Mutex<Option<Vec<u8>>>>);

impl PongSlot {
    pub fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().recover().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_are_coalesced() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let q = Queue::new(tx);
        for i in 0..10_000u32 {
            q.pong(i.to_be_bytes().to_vec());
        }
        assert_eq!(rx.len(), 1, "one wake-up for the writer, however many pings");
        assert_eq!(q.pong_slot().take(), Some(9_999u32.to_be_bytes().to_vec()));
        q.pong(vec![1]);
        assert_eq!(rx.len(), 2, "a ping after the answer was taken wakes the writer again");
    }

    #[test]
    fn the_budget_holds() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let q = Queue::new(tx);
        let big: Arc<str> = "x".repeat(CLIENT_BUFFER_BYTES / 2).into();
        assert!(q.push(Out::Text(Arc::clone(&big))));
        assert!(q.push(Out::Text(Arc::clone(&big))));
        assert!(!q.push(Out::Text("y".into())), "one byte over the budget is refused");
        assert!(q.budget.is_over(1));
    }

    #[test]
    fn a_waiting_replay_is_woken_by_the_writer_not_by_its_stall_timeout() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let q = Queue::new(tx);
        let full: Arc<str> = "x".repeat(CLIENT_BUFFER_BYTES).into();
        assert!(q.push(Out::Text(Arc::clone(&full))));
        let budget = Arc::clone(&q.budget);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            budget.release(CLIENT_BUFFER_BYTES);
        });
        let t0 = std::time::Instant::now();
        // Without the writer's wake the wait would end at its stall timeout, with false.
        assert!(q.budget.wait_for_room(100, Duration::from_secs(30), || false));
        assert!(t0.elapsed() < Duration::from_secs(20));
        writer.join().unwrap();
    }

    #[test]
    fn a_waiting_replay_gives_up_when_told_to_stop_or_when_nothing_drains() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let q = Queue::new(tx);
        assert!(q.push(Out::Text("x".repeat(CLIENT_BUFFER_BYTES).into())));
        let stop = Arc::new(AtomicBool::new(false));
        let (budget, flag) = (Arc::clone(&q.budget), Arc::clone(&stop));
        let hub = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
            budget.wake();
        });
        let t0 = std::time::Instant::now();
        assert!(!q.budget.wait_for_room(1, Duration::from_secs(30), || stop.load(Ordering::SeqCst)));
        assert!(t0.elapsed() < Duration::from_secs(20), "the hub's wake ended the wait, not the stall timeout");
        hub.join().unwrap();
        // Nothing drains and nobody wakes it: the stall timeout ends the wait.
        assert!(!q.budget.wait_for_room(1, Duration::from_millis(50), || false));
    }
}
