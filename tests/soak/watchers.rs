//! The WebSocket clients that read the agent's events: two that watch every task for the whole
//! run, one that subscribes to running tasks from an offset, one that connects and disconnects
//! in a loop. (The one that stops reading is in `staller.rs`.)

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Agent;
use crate::events::{self, From, Served, LIVE};
use crate::run::Run;
use crate::tasks::Kind;
use crate::ws::{self, Got, Ws};

/// The clients connected before the run, and the task that showed each is served.
pub struct Connected {
    /// Answers pings (tungstenite does, as Node's `ws` does) and sends nothing else.
    pub pong_only: Ws,
    /// Sends no frame at all, not even a pong.
    pub silent: Ws,
    pub staller: Ws,
    /// When the silent one connected.
    pub silent_at: Instant,
    /// A `true` task run once all three were connected; each got its `completed`.
    pub sync_id: u64,
}

impl Connected {
    pub fn connect(agent: &Agent) -> Connected {
        let open = |what: &str, small: bool| {
            ws::connect(agent, small).unwrap_or_else(|e| panic!("{what}: cannot connect: {e}\n{}", agent.log_text()))
        };
        let pong_only = open("pong-only watcher", false);
        let silent = open("silent watcher", false);
        silent.get_ref().mute();
        let silent_at = Instant::now();
        let staller = open("staller", true);
        let sync_id = agent.run("true", &[]);
        let mut c = Connected { pong_only, silent, staller, silent_at, sync_id };
        for (what, ws) in [("pong-only", &mut c.pong_only), ("silent", &mut c.silent), ("staller", &mut c.staller)] {
            let until = Instant::now() + Duration::from_secs(30);
            let got = read_until(ws, until, |m| m["taskId"].as_u64() == Some(sync_id) && m["event"] == "completed");
            assert!(got.is_ok(), "{what} client: no `completed` of the set-up task {sync_id}: {got:?}");
        }
        c
    }
}

/// Reads until a message matches `stop`; the messages read, or why it stopped early.
fn read_until(ws: &mut Ws, until: Instant, stop: impl Fn(&Value) -> bool) -> Result<Vec<Value>, String> {
    let mut msgs = Vec::new();
    while Instant::now() < until {
        match ws::read(ws) {
            Got::Msg(m) => {
                let done = stop(&m);
                msgs.push(m);
                if done {
                    return Ok(msgs);
                }
            }
            Got::Closed(code, why) => return Err(format!("closed by the agent ({code:?}, {why})")),
            Got::Ping | Got::Idle => {}
        }
    }
    Err(format!("nothing matching within the time ({} messages)", msgs.len()))
}

/// What a watcher saw.
#[derive(Debug, Default)]
pub struct Watched {
    pub name: &'static str,
    /// Tasks whose `completed` it got.
    pub completed: BTreeSet<u64>,
    pub messages: u64,
    /// Events of ended tasks checked against the agent's HTTP answers.
    pub events_checked: u64,
    pub pings: u64,
    /// When (since the run's start) and how the agent ended its connection, if it did.
    pub closed: Option<(Duration, Option<u16>, String)>,
}

/// Watches every task until the run is over and every task it started has come to its
/// `completed`; each task's events are checked (on a thread of their own, so reading never
/// waits for HTTP) as soon as it ends.
pub fn watch(run: &Run, name: &'static str, mut ws: Ws) -> Watched {
    let (tx, rx) = mpsc::channel::<(u64, Vec<Value>)>();
    std::thread::scope(|s| {
        let checker = s.spawn(move || check_each(run, name, rx));
        let mut w = Watched { name, ..Watched::default() };
        read_all(run, &mut ws, &mut w, tx);
        w.events_checked = checker.join().expect("a watcher's checker panicked");
        w
    })
}

fn read_all(run: &Run, ws: &mut Ws, w: &mut Watched, done: mpsc::Sender<(u64, Vec<Value>)>) {
    let mut open: HashMap<u64, Vec<Value>> = HashMap::new();
    let mut next_look = Instant::now();
    while Instant::now() < run.hard_deadline() {
        if Instant::now() >= next_look {
            // Once no task can be added any more: done when every task started has ended here.
            if run.load_ended() && run.ledger.ids().is_subset(&w.completed) {
                return;
            }
            next_look = Instant::now() + Duration::from_millis(250);
        }
        let m = match ws::read(ws) {
            Got::Msg(m) => m,
            Got::Ping => {
                w.pings += 1;
                continue;
            }
            Got::Idle => continue,
            Got::Closed(code, why) => {
                w.closed = Some((run.t0.elapsed(), code, why));
                return;
            }
        };
        w.messages += 1;
        let Some(id) = m["taskId"].as_u64().filter(|_| m["type"] == "task_update") else {
            run.problems.add("events", format!("{}: a message that is not a task_update: {}", w.name, ws::brief(&m)));
            continue;
        };
        if id <= run.sync_id {
            continue; // the set-up's
        }
        if w.completed.contains(&id) {
            let what = format!("{}: task {id}: `{}` after its `completed`", w.name, m["event"]);
            run.problems.add("events", what);
            continue;
        }
        let is_end = m["event"] == "completed";
        open.entry(id).or_default().push(m);
        if is_end {
            w.completed.insert(id);
            let _ = done.send((id, open.remove(&id).expect("just pushed")));
        }
    }
}

/// Checks each ended task's events; how many events it checked.
fn check_each(run: &Run, name: &str, rx: mpsc::Receiver<(u64, Vec<Value>)>) -> u64 {
    let mut checked = 0;
    for (id, evs) in rx {
        match events::verify(id, &evs, &Served::fetch(run, id), LIVE) {
            Ok(()) => checked += evs.len() as u64,
            Err(e) => run.problems.add("events", format!("{name}: {e}")),
        }
    }
    checked
}

/// What the subscriber did.
#[derive(Debug, Default)]
pub struct Subscribed {
    pub tasks: u64,
    pub events_checked: u64,
}

/// Again and again until the run is over: takes a task that is running, subscribes to it
/// from where its output has got to, and checks the replay and the live rest.
pub fn subscribe_loop(run: &Run) -> Subscribed {
    let mut done = Subscribed::default();
    let mut last = 0;
    while run.loading() {
        let Some(id) = run.ledger.newest_running(&[Kind::Follow, Kind::Cancel]).filter(|id| *id != last) else {
            run.nap(Duration::from_millis(100));
            continue;
        };
        last = id;
        match subscribe_once(run, id) {
            Ok(n) => {
                done.tasks += 1;
                done.events_checked += n;
            }
            Err(e) => run.problems.add("subscriber", format!("task {id} ({}): {e}", run.at())),
        }
    }
    done
}

/// Subscribes a new connection to task `id` from the line its output has reached.
fn subscribe_once(run: &Run, id: u64) -> Result<u64, String> {
    let past_last_line = |b: &[u8]| b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i as u64 + 1);
    let stdout = run.get(&format!("/task/{id}/output?stream=stdout")).body;
    let stderr = run.get(&format!("/task/{id}/output?stream=stderr")).body;
    let from = From { stdout: past_last_line(&stdout), stderr: past_last_line(&stderr), live: false };
    let mut ws = ws::connect(run.agent, false)?;
    let until = Instant::now() + Duration::from_secs(60);
    // Narrowed first, to a task that has ended (and printed little): until its replay's
    // `completed`, events of other tasks may come; after it, only of the tasks subscribed to.
    let sync = run.ledger.newest_ended(&[Kind::Exit3, Kind::Timeout, Kind::Orphan]).unwrap_or(run.sync_id);
    ws::send(&mut ws, &json!({"type": "subscribe", "taskId": sync}))?;
    read_until(&mut ws, until, |m| m["taskId"] == sync && m["event"] == "completed")
        .map_err(|e| format!("narrowing to task {sync}: {e}"))?;
    let sub = json!({"type": "subscribe", "taskId": id, "offset": from.stdout, "errorOffset": from.stderr});
    ws::send(&mut ws, &sub)?;
    let evs = read_until(&mut ws, until, |m| m["taskId"] == id && m["event"] == "completed")
        .map_err(|e| format!("after {sub}: {e}"))?;
    ws::close(&mut ws, Duration::from_secs(5));
    if let Some(other) = evs.iter().find(|m| m["taskId"] != id) {
        return Err(format!("subscribed to task {id} only, got {}", ws::brief(other)));
    }
    events::verify(id, &evs, &Served::fetch(run, id), from).map_err(|e| format!("after {sub}: {e}"))?;
    Ok(evs.len() as u64)
}

/// What the flapping client did.
#[derive(Debug, Default)]
pub struct Flapped {
    pub connections: u64,
    pub messages: u64,
}

/// Connects, reads for a moment, closes, again, until the run is over.
pub fn flap(run: &Run) -> Flapped {
    let mut f = Flapped::default();
    while run.loading() {
        let mut ws = match ws::connect(run.agent, false) {
            Ok(ws) => ws,
            Err(e) => {
                run.problems.add("closed clients", format!("flapper: cannot connect ({}): {e}", run.at()));
                run.nap(Duration::from_secs(1));
                continue;
            }
        };
        f.connections += 1;
        let until = Instant::now() + Duration::from_millis(100 + (f.connections * 137) % 600);
        while Instant::now() < until {
            match ws::read(&mut ws) {
                Got::Msg(m) if m["type"] == "task_update" => f.messages += 1,
                Got::Msg(m) => run.problems.add("events", format!("flapper: not a task_update: {}", ws::brief(&m))),
                Got::Closed(code, why) => {
                    let n = f.connections;
                    let what = format!("flapper: connection {n} closed by the agent ({code:?}, {why}) at {}", run.at());
                    run.problems.add("closed clients", what);
                    break;
                }
                Got::Ping | Got::Idle => {}
            }
        }
        ws::close(&mut ws, Duration::from_secs(5));
        run.nap(Duration::from_millis(50));
    }
    f
}
