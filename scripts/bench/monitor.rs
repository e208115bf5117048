//! What a main server sees: one WebSocket client attached to an agent for a whole phase,
//! reading every message on its own thread as soon as it comes and parsing it whole (as a
//! main server's `JSON.parse` does), counting `task_update` events per kind.
//!
//! An agent builds no events while no client is connected, so a figure measured without
//! one measures less work than production does; the figures that stand for production keep
//! a `Monitor` attached and check with `Delivery` that it got every task's events.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

use crate::client::{is_retry, ws_connect, Http, Ws};
use crate::proc::{Agent, SECRET};

/// What the attached client has read so far.
#[derive(Clone, Default)]
pub struct Counts {
    /// `task_update` messages, all kinds.
    pub events: u64,
    pub started: u64,
    /// `completed` events, repeats included.
    pub completed: u64,
    /// Events of a task that came after its `completed` (a repeated `completed` included).
    pub after_completed: u64,
    /// Bytes of `output` and `error` data (as decoded strings).
    pub output_bytes: u64,
    /// Other messages (not JSON, other types).
    pub other: u64,
    /// Why the connection ended before `stop` (a close from the agent, an error).
    pub ended: Option<String>,
}

#[derive(Default)]
struct State {
    counts: Counts,
    done: HashSet<u64>,
}

/// A WebSocket client reading every event on a thread of its own until stopped.
pub struct Monitor {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the reader looks at its stop flag while no message comes.
const POLL: Duration = Duration::from_millis(50);

impl Monitor {
    /// Connects (the agent counts the client before its handshake answer, so every task
    /// started after this returns produces events) and starts the reader.
    pub fn attach(addr: SocketAddr, secret: &str) -> Result<Monitor, String> {
        let ws = ws_connect(addr, secret)?;
        ws.get_ref().set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("bench-ws-monitor".into())
            .spawn(move || read_all(ws, &st, &sp))
            .map_err(|e| format!("cannot start the monitor thread: {e}"))?;
        Ok(Monitor { state, stop, thread: Some(thread) })
    }

    pub fn counts(&self) -> Counts {
        self.state.lock().expect("monitor state lock").counts.clone()
    }

    /// Waits until `completed` events reach `n` (events may trail a `?wait=true` reply by a
    /// moment), the connection ended, or `within` passed; returns the counts then.
    pub fn wait_completed(&self, n: u64, within: Duration) -> Counts {
        let deadline = Instant::now() + within;
        loop {
            let c = self.counts();
            if c.completed >= n || c.ended.is_some() || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Closes the connection and joins the reader; returns the final counts. Safe twice.
    pub fn stop(&mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The reader: every message until the stop flag, then a close handshake (bounded).
fn read_all(mut ws: Ws, state: &Mutex<State>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(Message::Text(t)) => count(state, t.as_str()),
            Ok(Message::Close(frame)) => {
                let why = frame.map_or("no reason".to_string(), |f| format!("code {} {}", f.code, f.reason));
                state.lock().expect("monitor state lock").counts.ended = Some(format!("closed by the agent: {why}"));
            }
            Ok(_) => {}
            Err(e) if is_retry(&e) => {}
            Err(e) => {
                let mut s = state.lock().expect("monitor state lock");
                s.counts.ended.get_or_insert_with(|| format!("connection ended: {e}"));
                return;
            }
        }
    }
    let _ = ws.close(None);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if is_retry(&e) => {}
            Err(_) => break,
        }
    }
}

fn count(state: &Mutex<State>, text: &str) {
    let v: Option<Value> = serde_json::from_str(text).ok();
    let mut s = state.lock().expect("monitor state lock");
    let Some(v) = v.filter(|v| v.get("type").and_then(Value::as_str) == Some("task_update")) else {
        s.counts.other += 1;
        return;
    };
    let id = v.get("taskId").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let event = v.get("event").and_then(Value::as_str).unwrap_or("");
    s.counts.events += 1;
    if s.done.contains(&id) {
        s.counts.after_completed += 1;
    }
    match event {
        "started" => s.counts.started += 1,
        "completed" => {
            s.counts.completed += 1;
            s.done.insert(id);
        }
        "output" | "error" => {
            s.counts.output_bytes += v.get("data").and_then(Value::as_str).map_or(0, |d| d.len() as u64);
        }
        _ => {}
    }
}

/// One phase as the attached client saw it, against what the agent ran in it.
#[derive(Clone)]
pub struct Delivery {
    /// Tasks the agent started in the phase (its `codara_tasks_started_total`).
    pub tasks_run: u64,
    /// Events each task gives at least (`started` + `completed`, + 1 per expected output).
    pub per_task: u64,
    /// Output bytes each task writes, when checked.
    pub bytes_per_task: Option<u64>,
    pub counts: Counts,
    /// When not all came: the agent's last log lines about WebSocket clients leaving.
    pub agent_log: Vec<String>,
}

impl Delivery {
    /// Every task's `started` and `completed` arrived once, `completed` last, with all
    /// its output bytes, and the connection held.
    pub fn ok(&self) -> bool {
        let c = &self.counts;
        c.completed == self.tasks_run
            && c.started == self.tasks_run
            && c.after_completed == 0
            && c.events >= self.per_task * self.tasks_run
            && self.bytes_per_task.is_none_or(|b| c.output_bytes == b * self.tasks_run)
            && c.ended.is_none()
    }

    /// `completed` events missing (0 when all came).
    pub fn lost(&self) -> u64 {
        self.tasks_run.saturating_sub(self.counts.completed)
    }

    /// "events 14736/14736": delivered / expected (at least).
    pub fn short(&self) -> String {
        format!("WS events {}/{}", self.counts.events, self.per_task * self.tasks_run)
    }

    pub fn text(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "events delivered {} / expected ≥ {}: started {}, completed {} of {} tasks run",
            c.events,
            self.per_task * self.tasks_run,
            c.started,
            c.completed,
            self.tasks_run
        );
        if let Some(b) = self.bytes_per_task {
            s.push_str(&format!("; output bytes {} / {}", c.output_bytes, b * self.tasks_run));
        }
        if c.after_completed > 0 {
            s.push_str(&format!("; {} event(s) after their task's completed", c.after_completed));
        }
        if c.other > 0 {
            s.push_str(&format!("; {} other message(s)", c.other));
        }
        if let Some(e) = &c.ended {
            s.push_str(&format!("; {e}"));
        }
        if !self.agent_log.is_empty() {
            s.push_str(&format!("; the agent's log: {}", self.agent_log.join(" / ")));
        }
        s.push_str(if self.ok() { " (all delivered)" } else { " (NOT all delivered)" });
        s
    }
}

/// Counts of a phase: `after` minus `before` (the reader keeps counting across phases).
pub fn since(before: &Counts, after: &Counts) -> Counts {
    Counts {
        events: after.events - before.events,
        started: after.started - before.started,
        completed: after.completed - before.completed,
        after_completed: after.after_completed - before.after_completed,
        output_bytes: after.output_bytes - before.output_bytes,
        other: after.other - before.other,
        ended: after.ended.clone(),
    }
}

impl Delivery {
    /// Adds another phase's delivery (same events per task).
    pub fn add(&mut self, o: &Delivery) {
        self.tasks_run += o.tasks_run;
        let (c, d) = (&mut self.counts, &o.counts);
        c.events += d.events;
        c.started += d.started;
        c.completed += d.completed;
        c.after_completed += d.after_completed;
        c.output_bytes += d.output_bytes;
        c.other += d.other;
        if c.ended.is_none() {
            c.ended.clone_from(&d.ended);
        }
        self.agent_log.extend(o.agent_log.iter().cloned());
    }
}

/// A `Monitor` attached to an agent, and where a phase began: the agent's count of started
/// tasks and the client's counts.
pub struct Watch {
    pub monitor: Monitor,
    addr: SocketAddr,
    log: PathBuf,
    started0: u64,
    counts0: Counts,
}

impl Watch {
    /// Attaches a client and begins a phase.
    pub fn begin(a: &Agent) -> Result<Watch, String> {
        let monitor = Monitor::attach(a.addr, SECRET)?;
        let mut w = Watch { monitor, addr: a.addr, log: a.log.clone(), started0: 0, counts0: Counts::default() };
        w.mark()?;
        Ok(w)
    }

    /// Begins a new phase on the same connection.
    pub fn mark(&mut self) -> Result<(), String> {
        self.started0 = tasks_started(self.addr)?;
        self.counts0 = self.monitor.counts();
        Ok(())
    }

    /// The phase so far, once the client has had up to 5 s to read the last tasks' events.
    /// `per_task`: events each task gives at least; `bytes_per_task`: output, when checked.
    pub fn delivery(&self, per_task: u64, bytes_per_task: Option<u64>) -> Result<Delivery, String> {
        let tasks_run = tasks_started(self.addr)? - self.started0;
        let c = self.monitor.wait_completed(self.counts0.completed + tasks_run, Duration::from_secs(5));
        let mut d =
            Delivery { tasks_run, per_task, bytes_per_task, counts: since(&self.counts0, &c), agent_log: vec![] };
        if !d.ok() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("websocket client") && !l.contains(" connected from "))
                .map(str::to_string)
                .collect();
            d.agent_log = lines[lines.len().saturating_sub(3)..].to_vec();
        }
        Ok(d)
    }
}

/// The agent's `codara_tasks_started_total` (`GET /metrics`).
fn tasks_started(addr: SocketAddr) -> Result<u64, String> {
    metric(addr, "codara_tasks_started_total").map(|v| v as u64)
}

/// One sample of `GET /metrics` (a metric without labels).
pub fn metric(addr: SocketAddr, name: &str) -> Result<f64, String> {
    let r = Http::new(addr, SECRET).get("/metrics").map_err(|e| format!("GET /metrics: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET /metrics: status {}", r.status));
    }
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("GET /metrics: no {name}"))
}

/// Waits (up to 2 s) until the agent counts no WebSocket client, so a phase meant to run
/// without one does not run with a client that is still leaving.
pub fn await_no_clients(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = metric(addr, "codara_websocket_clients")?;
        if n == 0.0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the agent still counts {n} WebSocket client(s) after 2 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
