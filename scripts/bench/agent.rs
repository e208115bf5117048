//! Performance benchmark of codara-agent (`cargo bench --bench agent`, or `scripts/bench.sh`).
//!
//! Starts the release binary on loopback (private discovery port, broadcasts to
//! 127.255.255.255 only, temporary DATA_DIR and cwd), drives it with its own HTTP/1.1
//! keep-alive client and a tungstenite WebSocket client, and measures in the same run the
//! raw floors (spawning /bin/true directly, `seq | cat`), so each target is a ratio where it
//! can be. Prints one table (text and Markdown) and writes `target/bench-report.md`. Always
//! exits 0 when the bench could run: missed targets are marked, not fatal.
//!
//! Every loop is bounded in count and time; the whole run has a budget (`BUDGET`) and
//! skips what no longer fits.
//!
//! Figures 1, 3, 6 and 9 run with a WebSocket client attached that reads every event on its
//! own thread, as a main server does (`monitor.rs`); an agent with no client builds no
//! events, so figure 3 is also reported without one (informational). The raw floor of figures
//! 1-3 is measured in blocks while the agent is idle (the clean floor, the targets' base),
//! alternating with the agent's blocks; figures 1-2 also report the ratio against raw spawns
//! interleaved with the agent's round trips (informational).
//!
//! Options (after `--`):
//! - `--runs N` (1-10): run the whole bench N times and print the spread (min, median, max)
//!   of figures 1, 2, 3, 3b and 7; each run has its own budget, so N runs take up to N × `BUDGET`.
//! - `--only 1,3,7`: run those figures only; the floors always run.
//! - `--quick`: reduced counts and windows, to check the bench itself (figures not comparable
//!   with the targets; the report says so).
//!
//! Knobs for investigating a figure (none is needed for the report):
//! - `BENCH_AGENT_ENV="MALLOC_ARENA_MAX=1 TASK_HISTORY=100"`: extra variables for every agent
//!   (loopback, discovery and port settings still win).
//! - `BENCH_ATTACH_WAIT=SECONDS`: print each agent's pid and wait, to attach strace/perf.
//! - `BENCH_HOLD=SECONDS`: keep figure 6's agent alive after its tasks (smaps, gdb).
//! - `BENCH_BIN=PATH`: benchmark another binary instead of target/release/codara-agent.

#[allow(dead_code)]
#[path = "client.rs"]
mod client;
#[path = "monitor.rs"]
mod monitor;
#[path = "proc.rs"]
mod proc;
#[path = "report.rs"]
mod report;
#[path = "tls.rs"]
mod tls;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{is_retry, read_event, ws_connect, Http, Ws};
use monitor::{Delivery, Watch};
use proc::{median, ms, percentile, Agent, SECRET};
use report::{Notes, Row};

/// Each run of the bench must end well within 5 minutes (`--runs N`: N times this).
const BUDGET: Duration = Duration::from_secs(270);

/// Pause before a block of raw spawns, so the agent has finished its last task (log lines,
/// journal) and the floor is measured on an idle agent.
const SETTLE: Duration = Duration::from_millis(20);

const TRUE_BODY: &str = r#"{"command":"/bin/true"}"#;
const SEQ_BYTES: usize = 6_888_896;

/// Command-line options (after `--`); others (cargo passes `--bench`) are ignored.
struct Opts {
    /// `--only 1,3,7`: the figures to run (all when None).
    only: Option<Vec<u32>>,
    /// `--runs N`: whole runs, for the spread.
    runs: usize,
    /// `--quick`: reduced counts.
    quick: bool,
}

impl Opts {
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        let only = value("--only").map(|list| list.split(',').filter_map(|x| x.trim().parse().ok()).collect());
        let runs = value("--runs").and_then(|n| n.parse().ok()).unwrap_or(1).clamp(1, 10);
        Opts { only, runs, quick: args.iter().any(|a| a == "--quick") }
    }
}

struct Bench {
    bin: PathBuf,
    /// `--only 1,3,7`: the figures to run (all when None).
    only: Option<Vec<u32>>,
    quick: bool,
    start: Instant,
    notes: Notes,
    rows: Vec<Row>,
}

impl Bench {
    fn left(&self) -> Duration {
        BUDGET.saturating_sub(self.start.elapsed())
    }

    /// Whether a phase expected to take `need` still fits in the budget.
    fn fits(&self, fig: &str, name: &str, need: Duration) -> bool {
        if self.left() >= need {
            return true;
        }
        println!("  skipped {fig} {name}: {:.0} s left, needs ~{:.0} s", self.left().as_secs_f64(), need.as_secs_f64());
        false
    }

    /// `full` normally; `quick` with `--quick`.
    fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    fn want(&self, figs: &[u32]) -> bool {
        self.only.as_ref().is_none_or(|o| figs.iter().any(|f| o.contains(f)))
    }

    /// Starts an agent. For profiling, `BENCH_ATTACH_WAIT=SECONDS` (at most 60) prints its pid
    /// and waits that long before using it, so strace/perf can attach.
    fn start_agent(&self, tag: &str, extra: &[(&str, &str)]) -> Result<Agent, String> {
        let a = proc::start_agent(&self.bin, tag, extra)?;
        let secs: u64 = std::env::var("BENCH_ATTACH_WAIT").ok().and_then(|s| s.parse().ok()).unwrap_or(0).min(60);
        if secs > 0 {
            println!("    attach: agent pid {} ({tag}); waiting {secs} s", a.pid);
            std::thread::sleep(Duration::from_secs(secs));
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------------------
// Raw floors

/// `/bin/true` with stdout and stderr piped, both read to EOF, then waited for.
fn raw_spawn_once() -> io::Result<Duration> {
    let t0 = Instant::now();
    let mut child =
        Command::new("/bin/true").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut buf = Vec::new();
    child.stdout.take().expect("piped").read_to_end(&mut buf)?;
    child.stderr.take().expect("piped").read_to_end(&mut buf)?;
    child.wait()?;
    Ok(t0.elapsed())
}

fn raw_sequential(n: usize, cap: Duration) -> Result<Vec<f64>, String> {
    for _ in 0..50 {
        raw_spawn_once().map_err(|e| e.to_string())?;
    }
    let t0 = Instant::now();
    let mut v = Vec::with_capacity(n);
    while v.len() < n && t0.elapsed() < cap {
        v.push(ms(raw_spawn_once().map_err(|e| e.to_string())?));
    }
    Ok(v)
}

fn raw_parallel(threads: usize, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                while t0.elapsed() < dur {
                    if raw_spawn_once().is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn raw_seq_cat() -> Result<f64, String> {
    let mut v = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let st = Command::new("sh")
            .args(["-c", "seq 1 1000000 | cat > /dev/null"])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("seq | cat: {st}"));
        }
        v.push(ms(t0.elapsed()));
    }
    Ok(median(&v))
}

// ---------------------------------------------------------------------------------------
// Agent drivers

fn check_completed(r: &client::Resp) -> Result<(), String> {
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.text(200)));
    }
    let b = &r.body;
    if !contains(b, br#""status":"completed""#) {
        return Err(format!("task did not complete: {}", r.text(300)));
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An agent's sequential round trips against raw spawns of /bin/true.
#[derive(Default)]
struct Paired {
    /// The agent's round trips, back to back (as a main server sends tasks), in blocks.
    agent: Vec<f64>,
    /// Raw spawns in blocks between the agent's, each after a pause in which the agent
    /// settles: the clean floor.
    clean: Vec<f64>,
    /// A round trip, then a raw spawn, and so on: these raw spawns run while the agent still
    /// finishes the task before (log line, journal), which slows them.
    inter_agent: Vec<f64>,
    inter_raw: Vec<f64>,
}

impl Paired {
    fn p50(&self) -> f64 {
        percentile(&self.agent, 50.0)
    }

    fn clean_floor(&self) -> f64 {
        percentile(&self.clean, 50.0)
    }

    fn interleaved_ratio(&self) -> f64 {
        percentile(&self.inter_agent, 50.0) / percentile(&self.inter_raw, 50.0)
    }

    fn text(&self) -> String {
        let p = |v: &[f64], q| percentile(v, q);
        format!(
            "{} round trips: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms; clean floor ({} raw spawns, agent idle): p50 {:.3} ms, p90 {:.3} ms; interleaved ({} pairs): round trip p50 {:.3} ms, raw spawn p50 {:.3} ms = {:.2}×",
            self.agent.len(),
            p(&self.agent, 50.0),
            p(&self.agent, 90.0),
            p(&self.agent, 99.0),
            self.clean.len(),
            p(&self.clean, 50.0),
            p(&self.clean, 90.0),
            self.inter_agent.len(),
            p(&self.inter_agent, 50.0),
            p(&self.inter_raw, 50.0),
            self.interleaved_ratio()
        )
    }
}

/// Runs `once` (one round trip, in ms) after 50 warm-ups: 4 blocks of `per` back to back and
/// 4 blocks of `per` raw spawns with the agent idle, in the order R A A R R A A R (a machine
/// drifting through the run weighs on both alike), then `2 × per` interleaved pairs. Each
/// block stops at `cap / 10`.
fn paired(per: usize, cap: Duration, mut once: impl FnMut() -> Result<f64, String>) -> Result<Paired, String> {
    let raw = || raw_spawn_once().map(ms).map_err(|e| e.to_string());
    for _ in 0..50 {
        once()?;
    }
    let block_cap = cap / 10;
    let mut p = Paired::default();
    for k in 0..8 {
        let t = Instant::now();
        if k % 4 == 0 || k % 4 == 3 {
            std::thread::sleep(SETTLE);
            for _ in 0..per {
                if t.elapsed() >= block_cap {
                    break;
                }
                p.clean.push(raw()?);
            }
        } else {
            for _ in 0..per {
                if t.elapsed() >= block_cap {
                    break;
                }
                p.agent.push(once()?);
            }
        }
    }
    let t = Instant::now();
    for _ in 0..2 * per {
        if t.elapsed() >= 2 * block_cap {
            break;
        }
        p.inter_agent.push(once()?);
        p.inter_raw.push(raw()?);
    }
    Ok(p)
}

fn task_id(r: &client::Resp) -> Result<u64, String> {
    if r.status != 200 {
        return Err(format!("POST /execute: status {}: {}", r.status, r.text(200)));
    }
    r.json()?.get("taskId").and_then(|v| v.as_u64()).ok_or_else(|| format!("no taskId in {}", r.text(200)))
}

/// Reads events until `completed` of `id`; returns its data.
fn await_completed(ws: &mut Ws, id: u64, deadline: Instant) -> Result<serde_json::Value, String> {
    while Instant::now() < deadline {
        match read_event(ws) {
            Ok(Some(e)) if e.task_id == id && e.event == "completed" => return Ok(e.data),
            Ok(_) => {}
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(format!("WebSocket: {e}")),
        }
    }
    Err(format!("no completed event for task {id} in time"))
}

/// Figure 2: `POST /execute`, then its `completed` on the WebSocket, as `paired` measures it.
fn ws_round_trips(a: &Agent, per: usize, cap: Duration) -> Result<Paired, String> {
    let mut ws = ws_connect(a.addr, SECRET)?;
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut h = Http::new(a.addr, SECRET);
    paired(per, cap, || {
        let t = Instant::now();
        let r = h.post_json("/execute", TRUE_BODY).map_err(|e| e.to_string())?;
        let id = task_id(&r)?;
        let data = await_completed(&mut ws, id, Instant::now() + Duration::from_secs(10))?;
        let d = t.elapsed();
        if data.get("status").and_then(|s| s.as_str()) != Some("completed") {
            return Err(format!("task {id} ended {data}"));
        }
        Ok(ms(d))
    })
}

#[derive(Default)]
struct Bulk {
    ok: u64,
    busy_503: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    connects: u32,
    /// Agent CPU (its own threads, dead ones included) and its children's, in ticks.
    agent_ticks: u64,
    child_ticks: u64,
}

impl Bulk {
    /// Adds another block's figures.
    fn add(&mut self, part: Bulk) {
        self.ok += part.ok;
        self.busy_503 += part.busy_503;
        self.errors += part.errors;
        self.first_error = self.first_error.take().or(part.first_error);
        self.elapsed += part.elapsed;
        self.connects += part.connects;
        self.agent_ticks += part.agent_ticks;
        self.child_ticks += part.child_ticks;
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// "N tasks in S s = R tasks/s; 503 retried …; agent CPU …".
    fn text(&self) -> String {
        format!(
            "{} tasks in {:.2} s = {:.0} tasks/s; 503 retried: {}; errors: {}{}; connections opened: {}; agent CPU {:.3} ms/task, children CPU {:.3} ms/task (ticks of {} ms)",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.busy_503,
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            self.connects,
            self.agent_ticks as f64 * tick_ms() / self.ok.max(1) as f64,
            self.child_ticks as f64 * tick_ms() / self.ok.max(1) as f64,
            tick_ms()
        )
    }
}

/// Runs `body` with `?wait=true` from `conns` keep-alive connections until `max` tasks have
/// completed or `cap` has passed. A 503 is counted and retried.
fn bulk(a: &Agent, body: &str, conns: usize, max: u64, cap: Duration, check: Option<&[u8]>) -> Bulk {
    let check: Option<Arc<Vec<u8>>> = check.map(|c| Arc::new(c.to_vec()));
    let claimed = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let connects = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (t_before, c_before) = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..conns)
        .map(|_| {
            let (claimed, ok, busy, errors, first_error, connects, stop) = (
                Arc::clone(&claimed),
                Arc::clone(&ok),
                Arc::clone(&busy),
                Arc::clone(&errors),
                Arc::clone(&first_error),
                Arc::clone(&connects),
                Arc::clone(&stop),
            );
            let (addr, body, check) = (a.addr, body.to_string(), check.clone());
            std::thread::spawn(move || {
                let mut h = Http::new(addr, SECRET);
                let fail = |msg: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(msg);
                };
                'tasks: while claimed.fetch_add(1, Ordering::Relaxed) < max {
                    // One claimed task: retried on 503 until it runs, within the cap.
                    loop {
                        if t0.elapsed() >= cap || stop.load(Ordering::Relaxed) {
                            break 'tasks;
                        }
                        match h.post_json("/execute?wait=true", &body) {
                            Ok(r) if r.status == 503 => {
                                busy.fetch_add(1, Ordering::Relaxed);
                                std::thread::yield_now();
                            }
                            Ok(r) => {
                                match check_completed(&r) {
                                    Ok(()) => match &check {
                                        Some(needle) if !contains(&r.body, needle) => {
                                            fail(format!("output missing from the reply: {}", r.text(300)))
                                        }
                                        _ => {
                                            ok.fetch_add(1, Ordering::Relaxed);
                                        }
                                    },
                                    Err(e) => fail(e),
                                }
                                break;
                            }
                            Err(e) => {
                                fail(e.to_string());
                                if errors.load(Ordering::Relaxed) > 100 {
                                    stop.store(true, Ordering::Relaxed);
                                }
                                std::thread::sleep(Duration::from_millis(10));
                                break;
                            }
                        }
                    }
                }
                connects.fetch_add(h.connects as usize, Ordering::Relaxed);
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    let elapsed = t0.elapsed();
    let (t_after, c_after) = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0));
    let fe = first_error.lock().unwrap().take();
    Bulk {
        ok: ok.load(Ordering::Relaxed),
        busy_503: busy.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error: fe,
        elapsed,
        connects: connects.load(Ordering::Relaxed) as u32,
        agent_ticks: t_after.saturating_sub(t_before),
        child_ticks: c_after.saturating_sub(c_before),
    }
}

fn expected_seq() -> Vec<u8> {
    let mut v = Vec::with_capacity(SEQ_BYTES);
    for i in 1..=1_000_000u32 {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

/// Figure 4: `seq 1 1000000` through one WebSocket client; ms from POST to `completed`.
/// `body` is the request (figure 4s adds a secret variable, so every read is masked).
fn seq_over_ws(a: &Agent, expected: &[u8], body: &str) -> Result<(f64, usize), String> {
    let mut ws = ws_connect(a.addr, SECRET)?;
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut h = Http::new(a.addr, SECRET);
    let t = Instant::now();
    let id = task_id(&h.post_json("/execute", body).map_err(|e| e.to_string())?)?;
    // Events of this task may come before the POST's reply: keep every task's output.
    let mut out: HashMap<u64, (Vec<u8>, usize, Option<String>)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut completed = None;
    while Instant::now() < deadline {
        match read_event(&mut ws) {
            Ok(Some(e)) => {
                let entry = out.entry(e.task_id).or_default();
                match e.event.as_str() {
                    "output" => {
                        if let Some(s) = e.data.as_str() {
                            if let Some(off) = e.offset {
                                if off != entry.0.len() as u64 && entry.2.is_none() {
                                    entry.2 = Some(format!("chunk offset {off} but {} bytes so far", entry.0.len()));
                                }
                            }
                            entry.0.extend_from_slice(s.as_bytes());
                            entry.1 += 1;
                        }
                    }
                    "completed" if e.task_id == id => {
                        completed = Some((t.elapsed(), e.data));
                        break;
                    }
                    _ => {}
                }
            }
            Ok(None) => {}
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(format!("WebSocket: {e}")),
        }
    }
    let (d, data) = completed.ok_or("no completed event within 30 s")?;
    let (got, chunks, offset_err) = out.remove(&id).unwrap_or_default();
    if let Some(e) = offset_err {
        return Err(e);
    }
    if data.get("exitCode").and_then(|c| c.as_i64()) != Some(0) {
        return Err(format!("seq ended {data}"));
    }
    if got != expected {
        let first_diff = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        return Err(format!(
            "output differs: {} bytes received, {} expected, first difference at byte {first_diff}",
            got.len(),
            expected.len()
        ));
    }
    Ok((ms(d), chunks))
}

// ---------------------------------------------------------------------------------------
// Figures

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Floors {
    spawn_p50: Option<f64>,
    two_thread_rate: Option<f64>,
    seq_cat: Option<f64>,
}

fn floors(b: &mut Bench) -> Floors {
    println!("\n[floors] raw spawns of /bin/true, seq | cat");
    // Start-of-run references, before any agent runs; figures 1-3 take their floors from
    // blocks measured next to their own (the machine is shared and drifts).
    let spawn_p50 = match raw_sequential(b.pick(2000, 300), Duration::from_secs(12)) {
        Ok(v) => {
            b.notes.add(format!(
                "floor (a) raw sequential spawn of /bin/true (piped, read to EOF, waited): {} runs, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
                v.len(),
                percentile(&v, 50.0),
                percentile(&v, 90.0),
                percentile(&v, 99.0)
            ));
            Some(percentile(&v, 50.0))
        }
        Err(e) => {
            b.notes.add(format!("floor (a) failed: {e}"));
            None
        }
    };
    let secs = b.pick(3, 1);
    let rate = raw_parallel(2, Duration::from_secs(secs));
    b.notes.add(format!("floor (b) raw two-thread spawn rate over {secs} s: {rate:.0} tasks/s"));
    let seq_cat = match raw_seq_cat() {
        Ok(v) => {
            b.notes.add(format!("floor (c) `seq 1 1000000 | cat > /dev/null` via sh -c: median of 3 = {v:.1} ms"));
            Some(v)
        }
        Err(e) => {
            b.notes.add(format!("floor (c) failed: {e}"));
            None
        }
    };
    Floors { spawn_p50, two_thread_rate: Some(rate).filter(|r| *r > 0.0), seq_cat }
}

fn ratio_row(
    fig: &str,
    name: &str,
    value: f64,
    unit: &str,
    floor: Option<f64>,
    max_ratio: f64,
    higher_is_better: bool,
) -> Row {
    let mut r = Row::new(fig, name);
    let prec = if value < 10.0 { 3 } else { 1 };
    r.value = format!("{value:.prec$} {unit}");
    r.target = if higher_is_better { format!("≥ {max_ratio}× floor") } else { format!("≤ {max_ratio}× floor") };
    if let Some(f) = floor {
        let fp = if f < 10.0 { 3 } else { 1 };
        r.floor = format!("{f:.fp$} {unit}");
        let ratio = value / f;
        r.ratio = Some(ratio);
        r.met = Some(if higher_is_better { ratio >= max_ratio } else { ratio <= max_ratio });
    }
    r
}

/// Figures 1–4 on one agent with MAX_CONCURRENT_TASKS=4.
fn latency_figures(b: &mut Bench, fl: &Floors) {
    println!("\n[figures 1-4] round trips, throughput, seq over WebSocket");
    let a = match b.start_agent("latency", &[("MAX_CONCURRENT_TASKS", "4")]) {
        Ok(a) => a,
        Err(e) => {
            for (f, n) in [
                ("1", "wait=true round trip"),
                ("2", "POST + WS completed"),
                ("3", "throughput, 4 clients"),
                ("4", "seq 1 1000000 over WS"),
            ] {
                b.rows.push(Row::error(f, n, "-", &e));
            }
            return;
        }
    };
    if b.want(&[1]) {
        round_trip_wait(b, &a, fl);
    }
    if b.want(&[2]) {
        round_trip_ws(b, &a, fl);
    }
    if b.want(&[3]) {
        throughput(b, &a, fl);
    }
    if b.want(&[4]) {
        seq_figure(b, &a, fl);
    }
    let warns = a.log_count(" WARN ");
    if warns > 0 {
        b.notes.add(format!("figures 1-4 agent logged {warns} warning line(s); last lines:\n{}", a.log_tail(5)));
    }
}

/// Marks a figure measured with a WebSocket client attached as missed unless the client got
/// every task's events; the details go to the notes.
fn judge_delivery(b: &Bench, row: &mut Row, d: Result<Delivery, String>) {
    match d {
        Ok(d) => {
            b.notes.add(format!("fig {}: WS client attached: {}", row.fig, d.text()));
            if !d.ok() {
                row.met = Some(false);
                let lost = d.lost();
                row.value.push_str(&if lost > 0 {
                    format!(" ({lost} completed lost)")
                } else {
                    " (WS events incomplete)".to_string()
                });
            }
        }
        Err(e) => {
            b.notes.add(format!("fig {}: WS client attached: cannot check its events: {e}", row.fig));
            row.met = Some(false);
            row.value.push_str(" (WS events not checked)");
        }
    }
}

/// Figure 1: `POST /execute?wait=true` round trips on one keep-alive connection, a WebSocket
/// client attached, against the clean floor (and, informational, the interleaved one).
fn round_trip_wait(b: &mut Bench, a: &Agent, fl: &Floors) {
    let name = "seq. round trip POST /execute?wait=true (/bin/true), WS client attached, p50";
    let target = "≤ 1.15× floor";
    let watch = match Watch::begin(a) {
        Ok(w) => w,
        Err(e) => {
            b.rows.push(Row::error("1", name, target, &e));
            return;
        }
    };
    let mut h = Http::new(a.addr, SECRET);
    let cpu0 = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0)).0;
    let res = paired(b.pick(250, 50), Duration::from_secs(20), || {
        let t = Instant::now();
        let r = h.post_json("/execute?wait=true", TRUE_BODY).map_err(|e| e.to_string())?;
        let d = t.elapsed();
        check_completed(&r)?;
        Ok(ms(d))
    });
    let p = match res {
        Ok(p) => p,
        Err(e) => {
            b.rows.push(Row::error("1", name, target, &e));
            return;
        }
    };
    let cpu = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0)).0.saturating_sub(cpu0);
    let tasks = 50 + p.agent.len() + p.inter_agent.len();
    b.notes.add(format!(
        "fig 1: {}; {} connection(s); agent CPU {:.3} ms/task; start-of-run floor {:.3} ms",
        p.text(),
        h.connects,
        cpu as f64 * tick_ms() / tasks as f64,
        fl.spawn_p50.unwrap_or(f64::NAN)
    ));
    let mut row = ratio_row("1", name, p.p50(), "ms", Some(p.clean_floor()), 1.15, false);
    row.interleaved = Some(p.interleaved_ratio());
    judge_delivery(b, &mut row, watch.delivery(2, None));
    b.rows.push(row);
}

/// Figure 2: `POST /execute`, then its `completed` on the bench's own WebSocket client.
fn round_trip_ws(b: &mut Bench, a: &Agent, fl: &Floors) {
    let name = "seq. round trip POST /execute → WS completed, p50";
    match ws_round_trips(a, b.pick(250, 50), Duration::from_secs(20)) {
        Ok(p) => {
            b.notes.add(format!("fig 2: {}; start-of-run floor {:.3} ms", p.text(), fl.spawn_p50.unwrap_or(f64::NAN)));
            let mut row = ratio_row("2", name, p.p50(), "ms", Some(p.clean_floor()), 1.25, false);
            row.interleaved = Some(p.interleaved_ratio());
            b.rows.push(row);
        }
        Err(e) => b.rows.push(Row::error("2", name, "≤ 1.25× floor", &e)),
    }
}

/// Figure 3's blocks, and what the attached client got in the blocks that had one.
#[derive(Default)]
struct Throughput {
    with_client: Bulk,
    without_client: Bulk,
    /// Raw two-thread spawn rates, each block after a pause (agent idle).
    raw_rates: Vec<f64>,
    delivery: Option<Delivery>,
    error: Option<String>,
}

#[derive(Clone, Copy)]
enum Block {
    Raw,
    WithClient,
    WithoutClient,
}

/// Three rounds of three blocks: raw spawns with the agent idle, the agent with a WebSocket
/// client attached, the agent without one; the middle round in reverse order, so a machine
/// drifting through the run weighs on all three alike.
fn throughput_blocks(b: &Bench, a: &Agent) -> Throughput {
    let raw_len = Duration::from_millis(b.pick(1500, 400));
    let agent_len = Duration::from_millis(b.pick(1700, 500));
    let mut t = Throughput::default();
    for round in 0..3 {
        let order = [Block::Raw, Block::WithClient, Block::WithoutClient];
        for k in 0..3 {
            match order[if round % 2 == 0 { k } else { 2 - k }] {
                Block::Raw => {
                    std::thread::sleep(SETTLE);
                    t.raw_rates.push(raw_parallel(2, raw_len));
                }
                Block::WithClient => match Watch::begin(a) {
                    Ok(w) => {
                        t.with_client.add(bulk(a, TRUE_BODY, 4, u64::MAX, agent_len, None));
                        match (w.delivery(2, None), &mut t.delivery) {
                            (Ok(d), Some(all)) => all.add(&d),
                            (Ok(d), None) => t.delivery = Some(d),
                            (Err(e), _) => t.error = Some(e),
                        }
                    }
                    Err(e) => t.error = Some(e),
                },
                Block::WithoutClient => {
                    if let Err(e) = monitor::await_no_clients(a.addr) {
                        t.error.get_or_insert(e);
                    }
                    t.without_client.add(bulk(a, TRUE_BODY, 4, u64::MAX, agent_len, None));
                }
            }
        }
    }
    t
}

/// Figure 3 (a WebSocket client attached) and 3b (none, informational): throughput of 4
/// clients against 2 threads spawning raw.
fn throughput(b: &mut Bench, a: &Agent, fl: &Floors) {
    let name = "throughput, 4 clients ?wait=true, MAX_CONCURRENT_TASKS=4, WS client attached";
    let name_b = "throughput as 3, no WS client (so no events built)";
    let target = "≥ 0.85× floor";
    let t = throughput_blocks(b, a);
    let floor = t.raw_rates.iter().sum::<f64>() / t.raw_rates.len().max(1) as f64;
    b.notes.add(format!(
        "fig 3: raw two-thread rate in blocks with the agent idle: {} tasks/s (start-of-run floor {:.0})",
        t.raw_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        fl.two_thread_rate.unwrap_or(f64::NAN)
    ));
    b.notes.add(format!("fig 3, WS client attached: {}", t.with_client.text()));
    b.notes.add(format!("fig 3b, no WS client: {}", t.without_client.text()));
    let delivery = match (t.error, t.delivery) {
        (Some(e), _) => Err(e),
        (None, Some(d)) => Ok(d),
        (None, None) => Err("no block with a client ran".to_string()),
    };
    for (fig, name, r) in [("3", name, &t.with_client), ("3b", name_b, &t.without_client)] {
        if r.ok == 0 {
            let why = r.first_error.as_deref().unwrap_or("no task completed");
            b.rows.push(Row::error(fig, name, if fig == "3" { target } else { "-" }, why));
            continue;
        }
        let mut row = ratio_row(fig, name, r.rate(), "tasks/s", Some(floor), 0.85, true);
        row.floor = format!("{floor:.0} tasks/s");
        if fig == "3" {
            let events = delivery.as_ref().map_or("WS events unknown".to_string(), Delivery::short);
            row.value = format!("{:.0} tasks/s ({} × 503, {events})", r.rate(), r.busy_503);
            judge_delivery(b, &mut row, delivery.clone());
        } else {
            row.value = format!("{:.0} tasks/s ({} × 503)", r.rate(), r.busy_503);
            row.target = "-".into();
            row.info = true;
        }
        b.rows.push(row);
    }
}

/// Figure 4: `seq 1 1000000` to one WebSocket client, byte-exact (median of 3); 4s the
/// same with one `secretEnv` value registered, so every read goes through the masker (the
/// value does not occur in the output, which must still arrive byte-exact).
fn seq_figure(b: &mut Bench, a: &Agent, fl: &Floors) {
    let expected = expected_seq();
    assert_eq!(expected.len(), SEQ_BYTES);
    let plain = r#"{"command":"seq","args":["1","1000000"]}"#;
    let secret =
        r#"{"command":"seq","args":["1","1000000"],"secretEnv":{"BENCH_TOKEN":"bench-secret-0123456789abcdef"}}"#;
    for (fig, name, body) in [
        ("4", "seq 1 1000000 byte-exact to 1 WS client, POST → completed (median of 3)", plain),
        ("4s", "as 4, one secretEnv value registered (output masked)", secret),
    ] {
        let mut times = Vec::new();
        let mut err = None;
        for _ in 0..3 {
            match seq_over_ws(a, &expected, body) {
                Ok((t, chunks)) => {
                    times.push(t);
                    b.notes.add(format!(
                        "fig {fig}: run {}: {t:.1} ms, {chunks} output events, {} bytes byte-exact",
                        times.len(),
                        expected.len()
                    ));
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(e) => b.rows.push(Row::error(fig, name, "≤ 4× floor", &e)),
            None => b.rows.push(ratio_row(fig, name, median(&times), "ms", fl.seq_cat, 4.0, false)),
        }
    }
}

/// For profiling: `BENCH_HOLD=SECONDS` keeps an agent alive that long (at most 600 s) before
/// it is stopped, with its pid printed, so it can be inspected (smaps, gdb, perf).
fn hold(a: &Agent) {
    let secs: u64 = std::env::var("BENCH_HOLD").ok().and_then(|s| s.parse().ok()).unwrap_or(0).min(600);
    if secs > 0 {
        println!("    holding agent pid {} on port {} for {secs} s", a.pid, a.port);
        std::thread::sleep(Duration::from_secs(secs));
    }
}

fn tick_ms() -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        let hz: f64 = proc::command_text("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0);
        1000.0 / hz
    })
}

/// Figures 5 and 7: idle RSS, idle CPU over 30 s with discovery announcing.
fn idle_figures(b: &mut Bench) {
    println!("\n[figures 5, 7] idle RSS and idle CPU (30 s)");
    let name5 = "idle RSS (2 s after start)";
    let name7 = "idle CPU over 30 s, announcing (schedstat)";
    let a = match b.start_agent("idle", &[]) {
        Ok(a) => a,
        Err(e) => {
            b.rows.push(Row::error("5", name5, "≤ 4 MiB", &e));
            b.rows.push(Row::error("7", name7, "≤ 0.02% of a core", &e));
            return;
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    let rss = proc::rss_kib(a.pid);
    let mut r5 = Row::new("5", name5);
    r5.target = "≤ 4 MiB".into();
    if let Some(kib) = rss {
        r5.value = format!("{:.2} MiB", mib(kib));
        r5.met = Some(kib <= 4 * 1024);
        b.notes.add(format!("fig 5: VmRSS {kib} KiB, {} threads", proc::threads(a.pid).unwrap_or(0)));
    }
    b.rows.push(r5);

    let window = Duration::from_secs(b.pick(30, 5));
    if !b.fits("7", name7, window + Duration::from_secs(2)) {
        b.rows.push(Row::error("7", name7, "≤ 0.02% of a core", "skipped (time budget)"));
        return;
    }
    let ticks0 = proc::cpu_ticks(a.pid);
    let (ns0, tids0) = proc::sched_ns(a.pid).unwrap_or_default();
    let per0 = proc::sched_by_thread(a.pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let ticks1 = proc::cpu_ticks(a.pid);
    let (ns1, tids1) = proc::sched_ns(a.pid).unwrap_or_default();
    let per1 = proc::sched_by_thread(a.pid);
    let wall = t0.elapsed();
    let pct = (ns1.saturating_sub(ns0)) as f64 / wall.as_nanos() as f64 * 100.0;
    let tick_pct = match (ticks0, ticks1) {
        (Some(x), Some(y)) => format!("{} ticks = {:.4}%", y - x, (y - x) as f64 * tick_ms() / ms(wall) * 100.0),
        _ => "?".into(),
    };
    let mut r7 = Row::new("7", name7);
    r7.value = format!("{pct:.4}% of a core");
    r7.target = "≤ 0.02% of a core".into();
    r7.met = Some(pct <= 0.02);
    r7.num = Some((pct, "%"));
    b.rows.push(r7);
    let mut by_thread: Vec<String> = Vec::new();
    for (tid, name, ns) in &per1 {
        let before = per0.iter().find(|(t, _, _)| t == tid).map_or(0, |x| x.2);
        let d = ns - before.min(*ns);
        if d > 0 {
            by_thread.push(format!("{name}({tid}) {:.3} ms", d as f64 / 1e6));
        }
    }
    b.notes.add(format!(
        "fig 7: {:.1} s window: {:.3} ms on CPU (schedstat, all threads), utime+stime {tick_pct}; threads {} → {}{}; by thread: {}; RSS after: {} KiB",
        wall.as_secs_f64(),
        (ns1.saturating_sub(ns0)) as f64 / 1e6,
        tids0.len(),
        tids1.len(),
        if tids0 != tids1 { " (thread set changed: figure is a lower bound)" } else { "" },
        by_thread.join(", "),
        proc::rss_kib(a.pid).unwrap_or(0)
    ));
}

/// 10,240 bytes of text: 160 lines of 64 bytes.
fn ten_kib_text() -> Vec<u8> {
    let mut text = Vec::with_capacity(10240);
    for i in 0..160 {
        let line = format!("{i:05} abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 01234567");
        text.extend_from_slice(&line.as_bytes()[..63]);
        text.push(b'\n');
    }
    assert_eq!(text.len(), 10240);
    text
}

/// One round of figure 6: tasks run, VmRSS a second after, what the attached client got.
struct MemoryRound {
    tasks: u64,
    kib: u64,
    delivery: Result<Delivery, String>,
}

/// Figure 6's two rounds of `n` tasks that `cat` a 10 KiB file, with a WebSocket client
/// attached throughout (each task: `started`, its output, `completed`).
fn memory_rounds(b: &Bench, a: &Agent, n: u64, watch: &mut Watch) -> Result<Vec<MemoryRound>, String> {
    let text = ten_kib_text();
    let file = a.dir.path().join("10k.txt");
    std::fs::write(&file, &text).map_err(|e| e.to_string())?;
    let body = serde_json::json!({"command": "cat", "args": [file.to_string_lossy()]}).to_string();
    // The reply's "stdout" must end with the file's last line (newline JSON-escaped).
    let mut check = text[text.len() - 64..text.len() - 1].to_vec();
    check.extend_from_slice(b"\\n\"");
    let mut rounds = Vec::new();
    for round in 1..=2 {
        let cap = b.left().saturating_sub(Duration::from_secs(100)).min(Duration::from_secs(80));
        if cap < Duration::from_secs(5) {
            b.notes.add(format!("fig 6: round {round} skipped (time budget)"));
            break;
        }
        watch.mark()?;
        let r = bulk(a, &body, 4, n, cap, Some(&check));
        let delivery = watch.delivery(3, Some(text.len() as u64));
        std::thread::sleep(Duration::from_millis(1000));
        let kib = proc::rss_kib(a.pid).unwrap_or(0);
        b.notes.add(format!(
            "fig 6: round {round}: {}; VmRSS {kib} KiB, {} threads",
            r.text(),
            proc::threads(a.pid).unwrap_or(0)
        ));
        if r.ok < n {
            b.notes.add(format!("fig 6: round {round} ran {} of {n} tasks within its time cap", r.ok));
        }
        rounds.push(MemoryRound { tasks: r.ok, kib, delivery });
    }
    Ok(rounds)
}

/// Figure 6: RSS after 10,000 tasks of 10 KiB output, and after 10,000 more, with a
/// WebSocket client attached.
fn memory_after_tasks(b: &mut Bench) {
    println!("\n[figure 6] RSS after 2 × 10,000 tasks of 10 KiB output, WS client attached");
    let name_a = "RSS after 10,000 tasks of 10 KiB output (TASK_HISTORY=1000), WS client attached";
    let name_b = "RSS added by a second 10,000 tasks";
    let n = b.pick(10_000, 1_000);
    let only = |t: u64| if t < 10_000 { format!(" (only {t} tasks)") } else { String::new() };
    let started = b.start_agent("memory", &[("MAX_CONCURRENT_TASKS", "4")]).and_then(|a| {
        let rss0 = proc::rss_kib(a.pid).unwrap_or(0);
        let mut watch = Watch::begin(&a)?;
        let rounds = memory_rounds(b, &a, n, &mut watch)?;
        b.notes.add(format!("fig 6: VmRSS before the tasks (no client): {rss0} KiB"));
        hold(&a);
        Ok(rounds)
    });
    let rounds = match started {
        Ok(r) => r,
        Err(e) => {
            b.rows.push(Row::error("6a", name_a, "≤ 16 MiB", &e));
            b.rows.push(Row::error("6b", name_b, "≤ 1 MiB", &e));
            return;
        }
    };
    let mut rounds = rounds.into_iter();
    let Some(first) = rounds.next() else {
        b.rows.push(Row::error("6a", name_a, "≤ 16 MiB", "skipped (time budget)"));
        b.rows.push(Row::error("6b", name_b, "≤ 1 MiB", "skipped (time budget)"));
        return;
    };
    let mut r = Row::new("6a", name_a);
    r.value = format!("{:.2} MiB{}", mib(first.kib), only(first.tasks));
    r.target = "≤ 16 MiB".into();
    r.met = Some(first.kib <= 16 * 1024);
    judge_delivery(b, &mut r, first.delivery);
    b.rows.push(r);
    let Some(second) = rounds.next() else {
        b.rows.push(Row::error("6b", name_b, "≤ 1 MiB", "skipped (time budget)"));
        return;
    };
    let d = second.kib as i64 - first.kib as i64;
    let mut r = Row::new("6b", name_b);
    r.value = format!("{:+.2} MiB{}", d as f64 / 1024.0, only(second.tasks));
    r.target = "≤ 1 MiB".into();
    r.met = Some(d <= 1024);
    judge_delivery(b, &mut r, second.delivery);
    b.rows.push(r);
}

/// Figure 8: 1,000 idle WebSocket clients: RSS added, and all get a task's `completed`.
fn many_clients(b: &mut Bench) {
    println!("\n[figure 8] 1,000 idle WebSocket clients");
    let name_a = "RSS added by 1,000 idle WS clients";
    let name_b = "1,000 WS clients all get the task's completed";
    let a = match b.start_agent("clients", &[]) {
        Ok(a) => a,
        Err(e) => {
            b.rows.push(Row::error("8a", name_a, "≤ 64 MiB", &e));
            b.rows.push(Row::error("8b", name_b, "1000/1000", &e));
            return;
        }
    };
    let want = b.pick(1000, 100);
    std::thread::sleep(Duration::from_millis(1000));
    let rss0 = proc::rss_kib(a.pid).unwrap_or(0);
    let th0 = proc::threads(a.pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut clients: Vec<Ws> = Vec::with_capacity(want);
    let mut errors = 0;
    let mut first_error = None;
    while clients.len() < want && errors < 50 && t0.elapsed() < Duration::from_secs(30) {
        match ws_connect(a.addr, SECRET) {
            Ok(ws) => clients.push(ws),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let rss1 = proc::rss_kib(a.pid).unwrap_or(0);
    let th1 = proc::threads(a.pid).unwrap_or(0);
    b.notes.add(format!(
        "fig 8: {} clients connected in {:.2} s ({errors} failures{}); VmRSS {rss0} → {rss1} KiB ({:.1} KiB per client); threads {th0} → {th1}",
        clients.len(),
        connect_time.as_secs_f64(),
        first_error.as_deref().map(|e| format!(", first: {e}")).unwrap_or_default(),
        (rss1 as f64 - rss0 as f64) / clients.len().max(1) as f64
    ));
    let mut r = Row::new("8a", name_a);
    r.value = format!("{:+.2} MiB ({} clients)", (rss1 as f64 - rss0 as f64) / 1024.0, clients.len());
    r.target = "≤ 64 MiB".into();
    r.met = Some(clients.len() == want && rss1.saturating_sub(rss0) <= 64 * 1024);
    b.rows.push(r);

    let n = clients.len();
    match all_get_completed(&a, clients) {
        Ok((got, id, last_ms)) => {
            b.notes.add(format!(
                "fig 8: {got}/{n} clients got task {id}'s completed; last one {last_ms:.1} ms after the POST"
            ));
            let mut r = Row::new("8b", name_b);
            r.value = format!("{got}/{n}");
            r.target = format!("{want}/{want}");
            r.met = Some(got == want);
            b.rows.push(r);
        }
        Err(e) => b.rows.push(Row::error("8b", name_b, "1000/1000", &e)),
    }
}

/// Figure 8b: starts a task and has 4 threads read the clients until each got its
/// `completed` (20 s at most). Returns (clients that got it, the task id, ms from the POST to
/// the last one).
fn all_get_completed(a: &Agent, clients: Vec<Ws>) -> Result<(usize, u64, f64), String> {
    let mut h = Http::new(a.addr, SECRET);
    let t = Instant::now();
    let id = task_id(&h.post_json("/execute", TRUE_BODY).map_err(|e| e.to_string())?)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = Arc::new(AtomicUsize::new(0));
    let last_ms = Arc::new(Mutex::new(0f64));
    let mut groups: Vec<Vec<Ws>> = (0..4).map(|_| Vec::new()).collect();
    for (i, ws) in clients.into_iter().enumerate() {
        groups[i % 4].push(ws);
    }
    let hs: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            let (got, last_ms) = (Arc::clone(&got), Arc::clone(&last_ms));
            std::thread::spawn(move || {
                for ws in group.iter_mut() {
                    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                    let _ = ws.get_ref().set_read_timeout(Some(left));
                    if await_completed(ws, id, deadline).is_ok() {
                        got.fetch_add(1, Ordering::Relaxed);
                        let mut l = last_ms.lock().unwrap();
                        *l = l.max(ms(t.elapsed()));
                    }
                }
                group
            })
        })
        .collect();
    // The clients stay connected until every thread is done, then close together.
    let kept: Vec<Vec<Ws>> = hs.into_iter().filter_map(|h| h.join().ok()).collect();
    drop(kept);
    let last = *last_ms.lock().unwrap();
    Ok((got.load(Ordering::Relaxed), id, last))
}

/// 520 `GET /tasks?limit=50` (within 15 s); the times of all but the first 20, and the
/// first reply's item count and size.
fn list_times(a: &Agent) -> Result<(Vec<f64>, usize, usize), String> {
    let mut h = Http::new(a.addr, SECRET);
    let mut v = Vec::new();
    let (mut items, mut bytes) = (0, 0);
    let t0 = Instant::now();
    for i in 0..520 {
        if t0.elapsed() > Duration::from_secs(15) {
            break;
        }
        let t = Instant::now();
        let resp = h.get("/tasks?limit=50").map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("status {}: {}", resp.status, resp.text(200)));
        }
        let d = ms(t.elapsed());
        if i == 0 {
            bytes = resp.body.len();
            items = resp.json().ok().and_then(|j| j.get("tasks").and_then(|t| t.as_array()).map(Vec::len)).unwrap_or(0);
        }
        if i >= 20 {
            v.push(d);
        }
    }
    Ok((v, items, bytes))
}

/// Figure 9: `GET /tasks?limit=50` with 10,000 tasks in history, a WebSocket client attached
/// (while the tasks are loaded and while the list is read).
fn list_tasks(b: &mut Bench) {
    println!("\n[figure 9] GET /tasks?limit=50 with 10,000 tasks in history, WS client attached");
    let name = "GET /tasks?limit=50 with 10,000 tasks in history, WS client attached, p50";
    let n = b.pick(10_000, 1_000);
    let measured =
        b.start_agent("history", &[("TASK_HISTORY", "10000"), ("MAX_CONCURRENT_TASKS", "4")]).and_then(|a| {
            let watch = Watch::begin(&a)?;
            let cap = b.left().saturating_sub(Duration::from_secs(30)).min(Duration::from_secs(80));
            let r = bulk(&a, TRUE_BODY, 4, n, cap, None);
            b.notes.add(format!("fig 9: loaded {}", r.text()));
            let delivery = watch.delivery(2, None);
            let (v, items, bytes) = list_times(&a)?;
            Ok((r.ok, delivery, v, items, bytes))
        });
    let (tasks, delivery, v, items, bytes) = match measured {
        Ok(m) => m,
        Err(e) => {
            b.rows.push(Row::error("9", name, "≤ 2 ms", &e));
            return;
        }
    };
    let p50 = percentile(&v, 50.0);
    b.notes.add(format!(
        "fig 9: {} requests: p50 {p50:.3} ms, p90 {:.3} ms, p99 {:.3} ms; {items} tasks, {bytes} bytes per reply",
        v.len(),
        percentile(&v, 90.0),
        percentile(&v, 99.0)
    ));
    let mut row = Row::new("9", name);
    row.value = format!("{p50:.3} ms{}", if tasks < 10_000 { format!(" (only {tasks} tasks)") } else { String::new() });
    row.target = "≤ 2 ms".into();
    row.met = Some(p50 <= 2.0 && items == 50);
    judge_delivery(b, &mut row, delivery);
    b.rows.push(row);
}

/// Figure 10: from spawning the binary to `/health` answering (median of 5).
fn startup(b: &mut Bench) {
    println!("\n[figure 10] start to /health answering");
    let name = "start to /health answering (median of 5)";
    let mut v = Vec::new();
    for _ in 0..5 {
        let port = match proc::free_tcp_port() {
            Ok(p) => p,
            Err(e) => {
                b.rows.push(Row::error("10", name, "≤ 50 ms", &e));
                return;
            }
        };
        let mut a = match proc::spawn_agent(&b.bin, "start", port, &[]) {
            Ok(a) => a,
            Err(e) => {
                b.rows.push(Row::error("10", name, "≤ 50 ms", &e));
                return;
            }
        };
        let mut h = Http::new(a.addr, SECRET);
        let mut done = None;
        while a.started.elapsed() < Duration::from_secs(5) {
            if let Ok(r) = h.get("/health") {
                if r.status == 200 {
                    done = Some(a.started.elapsed());
                    break;
                }
            }
            if !a.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match done {
            Some(d) => v.push(ms(d)),
            None => {
                let e = format!("/health did not answer within 5 s; log: {}", a.log_tail(3));
                b.rows.push(Row::error("10", name, "≤ 50 ms", &e));
                return;
            }
        }
        a.stop();
    }
    let m = median(&v);
    b.notes.add(format!("fig 10: {}", v.iter().map(|x| format!("{x:.1} ms")).collect::<Vec<_>>().join(", ")));
    let mut row = Row::new("10", name);
    row.value = format!("{m:.1} ms");
    row.target = "≤ 50 ms".into();
    row.met = Some(m <= 50.0);
    b.rows.push(row);
}

/// Figure 11: size of the release binary.
fn binary_size(b: &mut Bench) {
    let name = "release binary size";
    match std::fs::read(&b.bin) {
        Ok(bytes) => {
            let stripped = !contains(&bytes, b".symtab");
            let mut row = Row::new("11", name);
            row.value = format!(
                "{:.2} MiB{}",
                bytes.len() as f64 / 1048576.0,
                if stripped { " (stripped)" } else { " (NOT stripped)" }
            );
            row.target = "≤ 3 MiB".into();
            row.met = Some(bytes.len() <= 3 * 1024 * 1024);
            b.notes.add(format!("fig 11: {} = {} bytes", b.bin.display(), bytes.len()));
            b.rows.push(row);
        }
        Err(e) => b.rows.push(Row::error("11", name, "≤ 3 MiB", &e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------
// Binary, header, table

fn newest_mtime(path: &Path, depth: u32) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest_mtime(&e.path(), depth - 1)).max()
}

fn locate_binary(root: &Path) -> Result<PathBuf, String> {
    // For profiling: a wrapper (e.g. a script that execs the agent under strace or perf).
    if let Some(b) = std::env::var_os("BENCH_BIN") {
        return Ok(PathBuf::from(b));
    }
    let bin = option_env!("CARGO_BIN_EXE_codara-agent")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/codara-agent"));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = ["src", "vendor/tiny_http/src", "Cargo.toml", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p), 6))
        .max();
    let stale = match (built, sources) {
        (None, _) => true,
        (Some(b), Some(s)) => s > b,
        _ => false,
    };
    if stale {
        println!("building the release binary (missing or older than the sources)…");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "codara-agent"])
            .current_dir(root)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() && !bin.exists() {
            return Err(format!("cargo build --release failed ({st})"));
        }
        if !st.success() {
            println!("WARNING: cargo build --release failed; benchmarking the existing (older) binary");
        }
    }
    let release = root.join("target/release/codara-agent");
    if bin.exists() {
        Ok(bin)
    } else if release.exists() {
        Ok(release)
    } else {
        Err(format!("{} not found", bin.display()))
    }
}

fn cpu_model() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?".to_string(), |(_, v)| v.trim().to_string());
    let n = info.lines().filter(|l| l.starts_with("processor")).count();
    (model, n)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `git rev-parse --short HEAD`, with "+dirty" when the work tree has changes (the figures
/// are then of code no commit holds).
fn commit(root: &Path) -> String {
    let dir = root.to_string_lossy();
    let head = proc::command_text("git", &["-C", &dir, "rev-parse", "--short", "HEAD"]);
    let dirty = proc::command_text("git", &["-C", &dir, "status", "--porcelain"]) != "?";
    format!("{head}{}", if dirty { "+dirty" } else { "" })
}

/// Where and when a run measured: the report's header and the README's line.
struct Machine {
    date: String,
    day: String,
    system: String,
    cpu: String,
    load: String,
    commit: String,
    /// What else the README's line must say: another binary, reduced counts.
    caveats: String,
}

impl Machine {
    fn now(root: &Path, bin: &Path, quick: bool) -> Machine {
        let mut caveats = String::new();
        if std::env::var_os("BENCH_BIN").is_some() {
            caveats.push_str(&format!("; binary {} (BENCH_BIN)", bin.display()));
        }
        if quick {
            caveats.push_str("; --quick: reduced counts, NOT comparable with the targets");
        }
        let (model, cpus) = cpu_model();
        Machine {
            date: proc::command_text("date", &["+%Y-%m-%d %H:%M:%S %Z"]),
            day: proc::command_text("date", &["+%Y-%m-%d"]),
            system: proc::command_text("uname", &["-srm"]),
            cpu: format!("{cpus}-core {model}"),
            load: loadavg(),
            commit: commit(root),
            caveats,
        }
    }

    fn header(&self, bin: &Path, quick: bool) -> String {
        format!(
            "codara-agent benchmark{}\n  date:    {}\n  system:  {}\n  CPU:     {} (available parallelism {})\n  load:    {} (1/5/15 min load average at start)\n  commit:  {}\n  binary:  {}\n  limits:  open files {} (bench process)",
            if quick { " (--quick: reduced counts, figures NOT comparable with the targets)" } else { "" },
            self.date,
            self.system,
            self.cpu,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.load,
            self.commit,
            bin.display(),
            proc::command_text("sh", &["-c", "ulimit -n"]),
        )
    }

    /// The line above the table in the README.
    fn readme_line(&self) -> String {
        format!(
            "A run on {} of commit `{}` ({}, {}; load average {} at the start{})",
            self.day, self.commit, self.system, self.cpu, self.load, self.caveats
        )
    }
}

/// One whole run of the bench.
struct Run {
    machine: Machine,
    header: String,
    rows: Vec<Row>,
    notes: Vec<String>,
    summary: String,
}

/// Runs every wanted figure once, within `BUDGET`.
/// An informational row: `value` against `base` (the same without TLS), as a ratio.
fn cost_row(fig: &str, name: &str, value: f64, base: f64, unit: &str) -> Row {
    let mut r = Row::new(fig, name);
    r.value = format!("{value:.3} {unit}");
    r.floor = format!("{base:.3} {unit} (plain)");
    r.ratio = Some(value / base);
    r.target = "- (the cost of TLS)".into();
    r.info = true;
    r
}

/// Figures 12 and 13 (see tls.rs): the cost of TLS, a plain and a TLS agent side by side.
fn tls_figures(b: &mut Bench) {
    println!("\n[figures 12, 13] the cost of TLS");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (cert, key) = tls::cert_files(&root);
    let n12 = "seq. round trip POST /execute?wait=true (/bin/true), HTTPS vs HTTP, reused connection, p50";
    let n13 = "seq 1 1000000 byte-exact to 1 wss:// client vs ws://, POST → completed (median of 3)";
    let agents = b.start_agent("plain", &[("MAX_CONCURRENT_TASKS", "4")]).and_then(|p| {
        let t = b.start_agent("tls", &[("MAX_CONCURRENT_TASKS", "4"), ("TLS_CERT", &cert), ("TLS_KEY", &key)])?;
        Ok((p, t))
    });
    let (plain, tls_agent) = match agents {
        Ok(x) => x,
        Err(e) => {
            b.rows.push(Row::error("12", n12, "-", &e));
            b.rows.push(Row::error("13", n13, "-", &e));
            return;
        }
    };
    if b.want(&[12]) && b.fits("12", n12, Duration::from_secs(10)) {
        match tls::round_trip_cost(&plain, &tls_agent, &root, b.pick(100, 20), 2) {
            Ok((t, p)) => b.rows.push(cost_row("12", n12, t, p, "ms")),
            Err(e) => b.rows.push(Row::error("12", n12, "-", &e)),
        }
    }
    if b.want(&[13]) && b.fits("13", n13, Duration::from_secs(15)) {
        match tls::seq_cost(&plain, &tls_agent, &root, &expected_seq()) {
            Ok((t, p)) => b.rows.push(cost_row("13", n13, t, p, "ms")),
            Err(e) => b.rows.push(Row::error("13", n13, "-", &e)),
        }
    }
}

fn run_once(root: &Path, bin: &Path, opts: &Opts) -> Run {
    let machine = Machine::now(root, bin, opts.quick);
    let header = machine.header(bin, opts.quick);
    println!("{header}");
    let mut b = Bench {
        bin: bin.to_path_buf(),
        only: opts.only.clone(),
        quick: opts.quick,
        start: Instant::now(),
        notes: Notes::default(),
        rows: Vec::new(),
    };
    let fl = floors(&mut b);
    if b.want(&[1, 2, 3, 4]) {
        latency_figures(&mut b, &fl);
    }
    if b.want(&[5, 7]) {
        idle_figures(&mut b);
    }
    if b.want(&[6]) {
        memory_after_tasks(&mut b);
    }
    if b.want(&[8]) {
        many_clients(&mut b);
    }
    if b.want(&[9]) {
        if b.left() > Duration::from_secs(25) {
            list_tasks(&mut b);
        } else {
            let name = "GET /tasks?limit=50 with 10,000 tasks in history, p50";
            b.rows.push(Row::error("9", name, "≤ 2 ms", "skipped (time budget)"));
        }
    }
    if b.want(&[10]) {
        startup(&mut b);
    }
    if b.want(&[11]) {
        binary_size(&mut b);
    }
    if b.want(&[12, 13]) {
        tls_figures(&mut b);
    }
    let mut rows = std::mem::take(&mut b.rows);
    report::sort(&mut rows);
    let summary = format!(
        "{}; bench run time {:.1} s; load average at the end {}",
        report::counts(&rows),
        b.start.elapsed().as_secs_f64(),
        loadavg()
    );
    let notes = b.notes.0.lock().expect("notes lock").clone();
    Run { machine, header, rows, notes, summary }
}

/// Figures whose spread over runs is reported (`--runs N`).
const SPREAD: [&str; 5] = ["1", "2", "3", "3b", "7"];

/// The README's part of the report: the last run's table and, with several runs, the
/// spread of `SPREAD` over them.
fn readme_text(runs: &[Run]) -> String {
    let last = runs.last().expect("at least one run");
    let n = runs.len();
    let of = if n > 1 { format!(", run {n} of {n}") } else { String::new() };
    let mut out = format!("{}{of}:\n\n{}\n{}\n", last.machine.readme_line(), report::table(&last.rows).1, last.summary);
    let rows: Vec<&[Row]> = runs.iter().map(|r| r.rows.as_slice()).collect();
    if let Some((_, md)) = report::spread(&rows, &SPREAD).filter(|_| n > 1) {
        out.push_str(&format!(
            "\nSpread over {n} runs of commit `{}` (each run's figure, then min, median and max):\n\n{md}",
            last.machine.commit
        ));
    }
    out
}

/// The Markdown report: the README's part, then each run's header, table, summary, notes.
fn report_text(runs: &[Run], quick: bool) -> String {
    let n = runs.len();
    let mut out = String::from("# codara-agent benchmark\n\n");
    if quick {
        out.push_str("**--quick: reduced counts; these figures are NOT comparable with the targets.**\n\n");
    }
    out.push_str(&format!("## For the README\n\n{}", readme_text(runs)));
    for (k, run) in runs.iter().enumerate() {
        out.push_str(&format!(
            "\n## Run {} of {n}\n\n```\n{}\n```\n\n{}\n{}\n\nDetails:\n\n{}\n",
            k + 1,
            run.header,
            report::table(&run.rows).1,
            run.summary,
            run.notes.iter().map(|n| format!("- {}", n.replace('\n', "\n  "))).collect::<Vec<_>>().join("\n")
        ));
    }
    out
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let opts = Opts::parse();
    let bin = match locate_binary(&root) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let mut runs = Vec::new();
    for k in 1..=opts.runs {
        if opts.runs > 1 {
            println!("\n===== run {k} of {} =====", opts.runs);
        }
        let run = run_once(&root, &bin, &opts);
        println!("\n{}\n\n{}\n{}\n", run.header, report::table(&run.rows).0, run.summary);
        runs.push(run);
    }
    let rows: Vec<&[Row]> = runs.iter().map(|r| r.rows.as_slice()).collect();
    if let Some((text, _)) = report::spread(&rows, &SPREAD).filter(|_| runs.len() > 1) {
        println!("Spread over {} runs:\n\n{text}", runs.len());
    }
    println!("Markdown for the README:\n\n{}", readme_text(&runs));
    let report = report_text(&runs, opts.quick);
    let path = root.join("target/bench-report.md");
    match std::fs::write(&path, report) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}
