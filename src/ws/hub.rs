//! The `broadcaster` thread: takes every task event (already serialised) from the tasks'
//! channel and puts it on the queue of each client that wants it. It never blocks on a
//! client and never locks a task (a task's readers may be waiting on this thread's channel
//! while holding their task's lock); a client over its budget is closed instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use crate::events::{Event, EventKind, EventRx};
use crate::metrics::Metrics;
use crate::sync::Gauge;
use crate::tasks::registry::Registry;
use crate::worker::Worker;
use crate::ws::ctl::Ctl;
use crate::ws::queue::{Out, Queue, CLIENT_BUFFER_BYTES, CLOSE_GOING_AWAY, CLOSE_TOO_SLOW};
use crate::ws::replay;

/// Most WebSocket clients at once; more get 503 before the upgrade.
pub const MAX_CLIENTS: usize = 4096;

/// What the agent keeps of the broadcaster: its control channel and client count.
#[derive(Clone)]
pub struct HubHandle {
    pub ctl: Sender<Ctl>,
    pub clients: Arc<AtomicUsize>,
    /// The clients' reader and writer threads and the replay threads alive; shutdown waits
    /// (a little) for them after the broadcaster has closed every client.
    pub threads: Arc<Gauge>,
    next_id: Arc<AtomicU64>,
}

impl HubHandle {
    pub fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn stop(&self) {
        let _ = self.ctl.send(Ctl::Stop);
    }
}

struct Client {
    queue: Queue,
    peer: String,
    /// `None`: every task (compat) but those in `excluded`. `Some`: only these.
    subs: Option<HashSet<u64>>,
    /// Tasks unsubscribed from on a connection that gets every task; a task leaves the set
    /// with its `completed` (its last event), or, when the set is full, the oldest id leaves
    /// (a main server that unsubscribes from tasks already ended never sees them again).
    excluded: BTreeSet<u64>,
    /// Tasks being replayed to this client: their live events wait here until the replay
    /// is done, so nothing is lost, repeated or reordered.
    pending: HashMap<u64, Pending>,
    /// Tasks whose replay is done: what it covered. A live event of the task emitted before
    /// the replay's cut may still be on its way here (the broadcaster takes control messages
    /// first); those are dropped, so the replay is never followed by a repeat.
    covered: HashMap<u64, Covered>,
}

/// What a finished replay sent of one task.
#[derive(Clone, Copy)]
struct Covered {
    cut: [u64; 2],
    ended: bool,
    started: bool,
}

impl Covered {
    /// Whether the replay already sent this event.
    fn covers(&self, kind: &EventKind) -> bool {
        match *kind {
            EventKind::Output { stream, offset, .. } => offset < self.cut[stream.index()],
            EventKind::Started => self.ended || self.started,
            EventKind::Failed | EventKind::Completed => self.ended,
        }
    }
}

/// A replay under way for one client and task.
struct Pending {
    generation: u64,
    /// Set by an unsubscribe: the replay stops queueing.
    cancel: Arc<AtomicBool>,
    events: Vec<Event>,
}

/// Finished replays remembered per client (see `Client::covered`).
const MAX_COVERED: usize = 1024;

/// Tasks a connection that gets every task keeps unsubscribed from at once (see
/// `Client::excluded`).
pub const MAX_EXCLUDED: usize = 1024;

/// Replays one client may have under way at once; more subscribes get an error.
pub const MAX_REPLAYS_PER_CLIENT: usize = 16;

struct Hub {
    reg: Arc<Registry>,
    metrics: Arc<Metrics>,
    ctl_tx: Sender<Ctl>,
    clients: HashMap<u64, Client>,
    /// Connected clients; raised by the upgrade before `Join`, lowered here.
    count: Arc<AtomicUsize>,
    /// Numbers subscribes, so a cancelled replay's end is told from a later one's.
    generation: u64,
    /// Counts the replay threads (see [`HubHandle::threads`]).
    threads: Arc<Gauge>,
}

/// Starts the broadcaster. `count` is the client count the tasks' events are gated on.
pub fn spawn(
    reg: Arc<Registry>,
    metrics: Arc<Metrics>,
    events: EventRx,
    count: Arc<AtomicUsize>,
) -> std::io::Result<(HubHandle, Worker)> {
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let threads = Arc::new(Gauge::default());
    let next_id = Arc::new(AtomicU64::new(1));
    let handle = HubHandle { ctl: ctl_tx.clone(), clients: Arc::clone(&count), threads: Arc::clone(&threads), next_id };
    let hub = Hub { reg, metrics, ctl_tx, clients: HashMap::new(), count, generation: 0, threads };
    let join = std::thread::Builder::new()
        .name("broadcaster".into())
        .stack_size(256 * 1024)
        .spawn(move || hub.run(events, ctl_rx))?;
    let h = handle.clone();
    Ok((handle, Worker::new("broadcaster", move || h.stop(), vec![join])))
}

impl Hub {
    fn run(mut self, events: EventRx, ctl: Receiver<Ctl>) {
        loop {
            select! {
                recv(events) -> ev => match ev {
                    Ok(ev) => {
                        // Joins and subscribes first: a client's Join is sent before its
                        // handshake is answered, so it is queued before any event of a task
                        // the client started; handling it first means the client gets it.
                        while let Ok(msg) = ctl.try_recv() {
                            match msg {
                                Ctl::Stop => return self.close_all(),
                                msg => self.on_ctl(msg),
                            }
                        }
                        self.on_event(ev)
                    }
                    Err(_) => break,
                },
                recv(ctl) -> msg => match msg {
                    Ok(Ctl::Stop) | Err(_) => break,
                    Ok(msg) => self.on_ctl(msg),
                },
            }
        }
        self.close_all();
    }

    /// Closes every client (the agent is stopping).
    fn close_all(&mut self) {
        for (_, c) in self.clients.drain() {
            c.queue.push_control(Out::Close(CLOSE_GOING_AWAY, "agent shutting down"));
        }
        self.count.store(0, Ordering::Release);
    }

    fn on_event(&mut self, ev: Event) {
        if self.clients.is_empty() {
            return;
        }
        let mut kick = Vec::new();
        let last = matches!(ev.kind, EventKind::Completed);
        for (id, c) in self.clients.iter_mut() {
            if c.subs.as_ref().is_some_and(|s| !s.contains(&ev.task_id)) {
                continue;
            }
            if c.subs.is_none() && !c.excluded.is_empty() {
                let skip = if last { c.excluded.remove(&ev.task_id) } else { c.excluded.contains(&ev.task_id) };
                if skip {
                    continue;
                }
            }
            if let Some(cv) = c.covered.get(&ev.task_id) {
                let covered = cv.covers(&ev.kind);
                if matches!(ev.kind, EventKind::Completed) {
                    c.covered.remove(&ev.task_id); // the task's last event
                }
                if covered {
                    continue;
                }
            }
            if let Some(p) = c.pending.get_mut(&ev.task_id) {
                if c.queue.budget.is_over(ev.json.len()) {
                    kick.push(*id);
                } else {
                    c.queue.budget.add(ev.json.len());
                    p.events.push(ev.clone());
                }
                continue;
            }
            if !c.queue.push(Out::Text(Arc::clone(&ev.json))) {
                kick.push(*id);
            }
        }
        for id in kick {
            self.kick(id);
        }
    }

    /// Closes a client that fell more than [`CLIENT_BUFFER_BYTES`] behind.
    fn kick(&mut self, id: u64) {
        if let Some(c) = self.clients.remove(&id) {
            log::warn!(
                "websocket client {id} ({}) fell more than {} MiB behind; closing it with code {CLOSE_TOO_SLOW}",
                c.peer,
                CLIENT_BUFFER_BYTES >> 20
            );
            crate::metrics::inc(&self.metrics.ws_kicked);
            c.queue.kicked.store(true, Ordering::SeqCst);
            c.queue.budget.wake();
            // A client that stopped reading may never take even the close frame: the writer
            // gives up after its write timeout and closes the socket. One that catches up gets
            // it, and its reads go on until it answers (its pongs must not turn into a reset).
            c.queue.push_control(Out::Close(CLOSE_TOO_SLOW, "client too slow"));
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Narrows client `id` to `task_id` (too) and starts a replay of it from the offsets.
    fn subscribe(&mut self, id: u64, task_id: u64, offset: u64, error_offset: u64) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        if c.pending.contains_key(&task_id) {
            return; // a replay of it is already under way
        }
        if c.pending.len() >= MAX_REPLAYS_PER_CLIENT {
            c.queue.push_error("Too many replays under way", Some(task_id));
            return;
        }
        c.subs.get_or_insert_with(HashSet::new).insert(task_id);
        c.excluded.clear(); // narrowed: only the named tasks come now
        c.covered.remove(&task_id); // the new replay decides what is covered
        self.generation += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        c.pending
            .insert(task_id, Pending { generation: self.generation, cancel: Arc::clone(&cancel), events: Vec::new() });
        let job = replay::Replay {
            reg: Arc::clone(&self.reg),
            client: id,
            task_id,
            generation: self.generation,
            cancel,
            from: (offset, error_offset),
            queue: c.queue.clone(),
            done: self.ctl_tx.clone(),
        };
        if let Err(e) = replay::spawn(job, self.threads.enter()) {
            log::warn!("websocket client {id}: cannot start a replay: {e}");
            c.pending.remove(&task_id);
        }
    }

    fn on_ctl(&mut self, msg: Ctl) {
        match msg {
            Ctl::Join { id, queue, peer, subscribe } => {
                log::info!("websocket client {id} connected from {peer}");
                // Subscriptions named in the URL hold from the first event on, so such a client
                // never sees a task's live output ahead of its replay.
                let subs = (!subscribe.is_empty()).then(HashSet::new);
                let (pending, covered, excluded) = (HashMap::new(), HashMap::new(), BTreeSet::new());
                self.clients.insert(id, Client { queue, peer, subs, excluded, pending, covered });
                for (task_id, offset, error_offset) in subscribe {
                    self.subscribe(id, task_id, offset, error_offset);
                }
            }
            Ctl::Leave { id } => {
                if let Some(c) = self.clients.remove(&id) {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    log::info!("websocket client {id} ({}) disconnected", c.peer);
                }
            }
            Ctl::Subscribe { id, task_id, offset, error_offset } => self.subscribe(id, task_id, offset, error_offset),
            Ctl::Unsubscribe { id, task_id } => {
                if let Some(c) = self.clients.get_mut(&id) {
                    match &mut c.subs {
                        Some(subs) => {
                            subs.remove(&task_id);
                        }
                        // Every other task still comes (CONTRACT.md §3).
                        None => {
                            if c.excluded.len() >= MAX_EXCLUDED {
                                c.excluded.pop_first();
                            }
                            c.excluded.insert(task_id);
                        }
                    }
                    c.covered.remove(&task_id);
                    if let Some(p) = c.pending.remove(&task_id) {
                        p.cancel.store(true, Ordering::SeqCst);
                        let bytes: usize = p.events.iter().map(|e| e.json.len()).sum();
                        c.queue.budget.release(bytes);
                    }
                }
            }
            Ctl::ReplayDone { id, task_id, generation, cut, ended, started } => {
                let Some(c) = self.clients.get_mut(&id) else { return };
                if c.pending.get(&task_id).is_none_or(|p| p.generation != generation) {
                    return; // unsubscribed since: that replay was cancelled
                }
                let p = c.pending.remove(&task_id).expect("checked above");
                let cv = Covered { cut, ended, started };
                let mut last_seen = false;
                for ev in p.events {
                    last_seen |= matches!(ev.kind, EventKind::Completed);
                    // Counted in `queued` when it was held back.
                    if cv.covers(&ev.kind) {
                        c.queue.budget.release(ev.json.len());
                    } else {
                        let _ = c.queue.tx.send(Out::Text(ev.json));
                    }
                }
                // Until the task's last event has come by, later ones may still be repeats.
                if !last_seen {
                    if c.covered.len() >= MAX_COVERED {
                        // Ended tasks' live events have long come by: forget those first.
                        c.covered.retain(|_, cv| !cv.ended);
                    }
                    c.covered.insert(task_id, cv);
                }
            }
            Ctl::Stop => {}
        }
    }
}
