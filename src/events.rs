//! What tasks tell the WebSocket broadcaster: each event already serialised once, plus the
//! little the broadcaster needs to route it (task, stream, offsets).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which pipe a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// The WebSocket event name of a chunk of this stream (compat: stderr is `error`).
    pub fn event(self) -> &'static str {
        match self {
            Stream::Stdout => "output",
            Stream::Stderr => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Started,
    /// A chunk of `stream` at byte `offset`, `len` bytes long.
    Output {
        stream: Stream,
        offset: u64,
        len: u64,
    },
    Failed,
    /// The last event of a task.
    Completed,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub task_id: u64,
    pub kind: EventKind,
    /// The `task_update` JSON message.
    pub json: Arc<str>,
}

/// Where tasks send their events: a bounded channel drained by the broadcaster thread, and
/// the number of WebSocket clients. With none connected, tasks build and send no events, so
/// a task costs the broadcaster nothing (a subscribe replays from the log, not from events).
#[derive(Clone)]
pub struct EventTx {
    tx: crossbeam_channel::Sender<Event>,
    listeners: Arc<AtomicUsize>,
}

impl EventTx {
    /// Whether any client may want events now.
    pub fn wanted(&self) -> bool {
        self.listeners.load(Ordering::Acquire) > 0
    }

    pub fn send(&self, ev: Event) {
        let _ = self.tx.send(ev);
    }
}

pub type EventRx = crossbeam_channel::Receiver<Event>;

/// Capacity of the channel between tasks and the broadcaster. The broadcaster only moves
/// messages into per-client queues, so this fills only if it is starved of CPU.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// The channel, and the client count it gates on (kept by the WebSocket side: raised before
/// a client's handshake is answered, lowered when the broadcaster drops it).
pub fn channel() -> (EventTx, EventRx, Arc<AtomicUsize>) {
    let (tx, rx) = crossbeam_channel::bounded(EVENT_CHANNEL_CAPACITY);
    let listeners = Arc::new(AtomicUsize::new(0));
    (EventTx { tx, listeners: Arc::clone(&listeners) }, rx, listeners)
}
