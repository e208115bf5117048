//! The client that stops reading. It keeps up at first; then, once a flood of 1 MiB bursts is
//! running, it reads nothing more, so the agent's queue for it grows past the 8 MiB budget:
//! it alone must be closed, with close code 1008, and nobody else must notice. For long runs
//! this happens again every few minutes, each time with a new connection.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::run::{Metrics, Run};
use crate::tasks::Kind;
use crate::workload;
use crate::ws::{self, Got, Ws};

const CLOSED_SLOW: &str = "codara_websocket_clients_closed_slow_total";
/// Time between two episodes, in a long run.
const EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Stalled {
    pub episodes: u64,
    /// Episodes that ended as they must: a close frame with code 1008.
    pub closed_1008: u64,
}

/// Runs an episode at a quarter of the run, then every [`EVERY`] while 10 s of the run are left.
pub fn stall_loop(run: &Run, first: Ws) -> Stalled {
    let mut out = Stalled::default();
    let mut ws = Some(first);
    let mut at = run.settings.duration / 4;
    while run.loading() && at + Duration::from_secs(10) < run.settings.duration {
        let client = match ws.take().map_or_else(|| ws::connect(run.agent, true), Ok) {
            Ok(c) => c,
            Err(e) => {
                run.problems.add("staller", format!("cannot connect ({}): {e}", run.at()));
                break;
            }
        };
        match episode(run, client, at) {
            Ok(true) => {
                out.episodes += 1;
                out.closed_1008 += 1;
            }
            Ok(false) => {} // the run ended before the flood could start
            Err(e) => {
                out.episodes += 1;
                run.problems.add("staller", format!("episode {} ({}): {e}", out.episodes, run.at()));
            }
        }
        at += EVERY;
    }
    out
}

/// Keeps up until `stall_at` and until a flood has started, then stops reading until the
/// agent has closed it. Ok(false) when the run ended first.
fn episode(run: &Run, mut ws: Ws, stall_at: Duration) -> Result<bool, String> {
    keep_up(run, &mut ws, || run.t0.elapsed() >= stall_at)?;
    let before = Metrics::fetch(run.agent).get(CLOSED_SLOW);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || flood(run, tx));
        let mut flood_id = None;
        keep_up(run, &mut ws, || match rx.try_recv() {
            Ok(id) => {
                flood_id = Some(id);
                true
            }
            Err(mpsc::TryRecvError::Disconnected) => true,
            Err(mpsc::TryRecvError::Empty) => false,
        })?;
        // From here on it reads nothing, and tungstenite writes nothing (its pongs would
        // never be read: see `wait_closed_slow`). The flood backs up into the agent's queue.
        let Some(id) = flood_id else { return Ok(false) };
        ws.get_ref().mute();
        wait_closed_slow(run, &ws, before, id)?;
        expect_close_1008(&mut ws).map_err(|e| format!("{e}; the agent's log about it: {:?}", log_about(run, &ws)))?;
        Ok(true)
    })
}

/// Runs the flood task, telling `started` its id as soon as it has one.
fn flood(run: &Run, started: mpsc::Sender<u64>) {
    if let Some((id, _)) = workload::submit(run, Kind::Flood, false) {
        let _ = started.send(id);
        workload::see_through(run, Kind::Flood, id, None);
    }
}

/// Reads and drops what comes (tungstenite answering pings) until `stop()` or the end of the
/// workload.
fn keep_up(run: &Run, ws: &mut Ws, mut stop: impl FnMut() -> bool) -> Result<(), String> {
    while run.loading() && !stop() {
        if let Got::Closed(code, why) = ws::read(ws) {
            return Err(format!("closed by the agent while it kept up ({code:?}, {why})"));
        }
    }
    Ok(())
}

/// Waits, reading nothing, until the agent counts a client closed for falling behind. A
/// heartbeat (an unsolicited pong, written past tungstenite) at the start and then every 2.5
/// ping intervals keeps the agent from taking it for gone (3 intervals without a frame): it
/// stopped reading, it did not leave. As few as that, and none once the agent has closed it:
/// the agent stops reading a client it closes for falling behind, and bytes it has not read
/// when it closes the socket make the kernel reset the connection: the 1008 close frame, still
/// in the agent's send buffer, would be lost.
fn wait_closed_slow(run: &Run, ws: &Ws, before: u64, flood: u64) -> Result<(), String> {
    let beat = run.settings.ping() * 5 / 2;
    ws::heartbeat(&ws.get_ref().tcp);
    let mut last_beat = Instant::now();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if Metrics::fetch(run.agent).get(CLOSED_SLOW) > before {
            return Ok(());
        }
        if last_beat.elapsed() >= beat {
            ws::heartbeat(&ws.get_ref().tcp);
            last_beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "it stopped reading while task {flood} printed 20 MiB, but within 60 s the agent did not close it for \
         falling behind ({CLOSED_SLOW} stayed at {before})"
    ))
}

/// Reads again: the rest of the frame the agent was writing, then its close frame, 1008.
fn expect_close_1008(ws: &mut Ws) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        match ws::read(ws) {
            Got::Closed(Some(1008), _) => return Ok(()),
            Got::Closed(code, why) => return Err(format!("closed with {code:?} ({why}); expected close code 1008")),
            Got::Msg(_) | Got::Ping | Got::Idle => {}
        }
    }
    Err("the agent counted it closed for falling behind, but no close frame came within 30 s".into())
}

/// The agent's log lines that name this client's address.
fn log_about(run: &Run, ws: &Ws) -> Vec<String> {
    let Ok(addr) = ws.get_ref().tcp.local_addr() else { return Vec::new() };
    let addr = format!("({addr})");
    run.agent.logs.lock().unwrap().iter().filter(|l| l.contains(&addr)).cloned().collect()
}
