//! What tasks tell the WebSocket broadcaster: each event already serialised once, plus the
//! little the broadcaster needs to route it (task, stream, offsets).

use std::sync::Arc;

use crate::tasks::log::Stream;

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

/// Where tasks send their events; bounded, drained by the broadcaster thread.
pub type EventTx = crossbeam_channel::Sender<Event>;
pub type EventRx = crossbeam_channel::Receiver<Event>;

/// Capacity of the channel between tasks and the broadcaster. The broadcaster only moves
/// messages into per-client queues, so this fills only if it is starved of CPU.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

pub fn channel() -> (EventTx, EventRx) {
    crossbeam_channel::bounded(EVENT_CHANNEL_CAPACITY)
}
