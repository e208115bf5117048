//! One WebSocket client's outgoing queue, shared by the broadcaster, the replay threads and
//! the client's reader; its writer drains it. Bounded in bytes ([`CLIENT_BUFFER_BYTES`]):
//! the broadcaster closes a client that falls further behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    pub queued: Arc<AtomicUsize>,
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
            queued: Arc::new(AtomicUsize::new(0)),
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
        let before = self.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > CLIENT_BUFFER_BYTES {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
        }
        true
    }

    /// Queues a message whatever the budget: a close frame (one per client), and messages
    /// held back during a replay, which were counted when they were held.
    pub fn push_control(&self, out: Out) {
        let cost = out.cost();
        self.queued.fetch_add(cost, Ordering::AcqRel);
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
        }
    }

    pub fn is_over(&self, extra: usize) -> bool {
        self.queued.load(Ordering::Acquire) + extra > CLIENT_BUFFER_BYTES
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
        assert!(q.is_over(1));
    }
}
