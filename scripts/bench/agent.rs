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
//! Knobs for investigating a figure (none is needed for the report):
//! - `--only 1,3,7` (after `--`): run those figures only; the floors always run.
//! - `BENCH_AGENT_ENV="MALLOC_ARENA_MAX=1 TASK_HISTORY=100"`: extra variables for every agent
//!   (loopback, discovery and port settings still win).
//! - `BENCH_ATTACH_WAIT=SECONDS`: print each agent's pid and wait, to attach strace/perf.
//! - `BENCH_HOLD=SECONDS`: keep figure 6's agent alive after its tasks (smaps, gdb).
//! - `BENCH_BIN=PATH`: benchmark another binary instead of target/release/codara-agent.

#[allow(dead_code)]
#[path = "client.rs"]
mod client;
#[path = "proc.rs"]
mod proc;
#[path = "report.rs"]
mod report;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{is_retry, read_event, ws_connect, Http, Ws};
use proc::{median, ms, percentile, Agent, SECRET};
use report::{table, Notes, Row};

/// The whole bench must end well within 5 minutes.
const BUDGET: Duration = Duration::from_secs(270);

const TRUE_BODY: &str = r#"{"command":"/bin/true"}"#;
const SEQ_BYTES: usize = 6_888_896;

struct Bench {
    bin: PathBuf,
    /// `--only 1,3,7`: the figures to run (all when None).
    only: Option<Vec<u32>>,
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

/// Figure 1: `POST /execute?wait=true` round trips on one keep-alive connection.
/// Figure 1, with a raw spawn between round trips: both see the same machine at the same time
/// (this box is shared and noisy), so their ratio holds. Returns (round trips, raw spawns,
/// connections).
fn wait_round_trips(a: &Agent, n: usize, cap: Duration) -> Result<(Vec<f64>, Vec<f64>, u32), String> {
    let mut h = Http::new(a.addr, SECRET);
    for _ in 0..50 {
        let r = h.post_json("/execute?wait=true", TRUE_BODY).map_err(|e| e.to_string())?;
        check_completed(&r)?;
    }
    let t0 = Instant::now();
    let mut v = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    while v.len() < n && t0.elapsed() < cap {
        let t = Instant::now();
        let r = h.post_json("/execute?wait=true", TRUE_BODY).map_err(|e| e.to_string())?;
        let d = t.elapsed();
        check_completed(&r)?;
        v.push(ms(d));
        raw.push(ms(raw_spawn_once().map_err(|e| e.to_string())?));
    }
    Ok((v, raw, h.connects))
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

/// Figure 2: `POST /execute`, then its `completed` on the WebSocket.
/// Returns (round trips, raw spawns interleaved with them), as for figure 1.
fn ws_round_trips(a: &Agent, n: usize, cap: Duration) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut ws = ws_connect(a.addr, SECRET)?;
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut h = Http::new(a.addr, SECRET);
    let once = |h: &mut Http, ws: &mut Ws| -> Result<f64, String> {
        let t = Instant::now();
        let r = h.post_json("/execute", TRUE_BODY).map_err(|e| e.to_string())?;
        let id = task_id(&r)?;
        let data = await_completed(ws, id, Instant::now() + Duration::from_secs(10))?;
        let d = t.elapsed();
        if data.get("status").and_then(|s| s.as_str()) != Some("completed") {
            return Err(format!("task {id} ended {data}"));
        }
        Ok(ms(d))
    };
    for _ in 0..50 {
        once(&mut h, &mut ws)?;
    }
    let t0 = Instant::now();
    let mut v = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    while v.len() < n && t0.elapsed() < cap {
        v.push(once(&mut h, &mut ws)?);
        raw.push(ms(raw_spawn_once().map_err(|e| e.to_string())?));
    }
    Ok((v, raw))
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
fn seq_over_ws(a: &Agent, expected: &[u8]) -> Result<(f64, usize), String> {
    let mut ws = ws_connect(a.addr, SECRET)?;
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut h = Http::new(a.addr, SECRET);
    let body = r#"{"command":"seq","args":["1","1000000"]}"#;
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
    let spawn_p50 = match raw_sequential(2000, Duration::from_secs(12)) {
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
    let rate = raw_parallel(2, Duration::from_secs(3));
    b.notes.add(format!("floor (b) raw two-thread spawn rate over 3 s: {rate:.0} tasks/s"));
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
        // 1
        let name1 = "seq. round trip POST /execute?wait=true (/bin/true), p50";
        let cpu0 = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0)).0;
        match wait_round_trips(&a, 1000, Duration::from_secs(15)) {
            Ok((v, raw, connects)) => {
                let cpu = proc::cpu_ticks_all(a.pid).unwrap_or((0, 0)).0.saturating_sub(cpu0);
                b.notes.add(format!(
                    "fig 1: {} round trips on {} connection(s): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms; agent CPU {:.3} ms/task; interleaved raw spawns p50 {:.3} ms (start-of-run floor {:.3} ms)",
                    v.len(),
                    connects,
                    percentile(&v, 50.0),
                    percentile(&v, 90.0),
                    percentile(&v, 99.0),
                    cpu as f64 * tick_ms() / (v.len() + 50) as f64,
                    percentile(&raw, 50.0),
                    fl.spawn_p50.unwrap_or(f64::NAN)
                ));
                b.rows.push(ratio_row(
                    "1",
                    name1,
                    percentile(&v, 50.0),
                    "ms",
                    Some(percentile(&raw, 50.0)),
                    1.15,
                    false,
                ));
            }
            Err(e) => b.rows.push(Row::error("1", name1, "≤ 1.15× floor", &e)),
        }
    }
    if b.want(&[2]) {
        // 2
        let name2 = "seq. round trip POST /execute → WS completed, p50";
        match ws_round_trips(&a, 1000, Duration::from_secs(15)) {
            Ok((v, raw)) => {
                b.notes.add(format!(
                    "fig 2: {} round trips: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms; interleaved raw spawns p50 {:.3} ms",
                    v.len(),
                    percentile(&v, 50.0),
                    percentile(&v, 90.0),
                    percentile(&v, 99.0),
                    percentile(&raw, 50.0)
                ));
                b.rows.push(ratio_row(
                    "2",
                    name2,
                    percentile(&v, 50.0),
                    "ms",
                    Some(percentile(&raw, 50.0)),
                    1.25,
                    false,
                ));
            }
            Err(e) => b.rows.push(Row::error("2", name2, "≤ 1.25× floor", &e)),
        }
    }
    if b.want(&[3]) {
        // 3
        let name3 = "throughput, 4 clients ?wait=true, MAX_CONCURRENT_TASKS=4";
        // Agent and raw floor in alternating blocks, so both see the same (shared, noisy)
        // machine; the ratio is of their totals.
        let mut r = Bulk::default();
        let mut raw_rates = Vec::new();
        for _ in 0..3 {
            raw_rates.push(raw_parallel(2, Duration::from_millis(1500)));
            let part = bulk(&a, TRUE_BODY, 4, u64::MAX, Duration::from_millis(1700), None);
            r.ok += part.ok;
            r.busy_503 += part.busy_503;
            r.errors += part.errors;
            r.first_error = r.first_error.or(part.first_error);
            r.elapsed += part.elapsed;
            r.connects += part.connects;
            r.agent_ticks += part.agent_ticks;
            r.child_ticks += part.child_ticks;
        }
        let interleaved_floor = raw_rates.iter().sum::<f64>() / raw_rates.len() as f64;
        b.notes.add(format!(
            "fig 3: raw two-thread rate in the blocks between: {} tasks/s (start-of-run floor {:.0})",
            raw_rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
            fl.two_thread_rate.unwrap_or(f64::NAN)
        ));
        let rate = r.ok as f64 / r.elapsed.as_secs_f64();
        b.notes.add(format!(
        "fig 3: {} tasks in {:.2} s = {rate:.0} tasks/s; 503 retried: {}; errors: {}{}; connections opened: {}; agent CPU {:.3} ms/task, children CPU {:.3} ms/task (ticks of {} ms)",
        r.ok,
        r.elapsed.as_secs_f64(),
        r.busy_503,
        r.errors,
        r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        r.connects,
        r.agent_ticks as f64 * tick_ms() / r.ok.max(1) as f64,
        r.child_ticks as f64 * tick_ms() / r.ok.max(1) as f64,
        tick_ms()
    ));
        if r.ok == 0 {
            b.rows.push(Row::error(
                "3",
                name3,
                "≥ 0.85× floor",
                r.first_error.as_deref().unwrap_or("no task completed"),
            ));
        } else {
            let mut row = ratio_row("3", name3, rate, "tasks/s", Some(interleaved_floor), 0.85, true);
            row.value = format!("{rate:.0} tasks/s ({} × 503)", r.busy_503);
            row.floor = format!("{interleaved_floor:.0} tasks/s");
            b.rows.push(row);
        }
    }
    if b.want(&[4]) {
        // 4
        let name4 = "seq 1 1000000 byte-exact to 1 WS client, POST → completed (median of 3)";
        let expected = expected_seq();
        assert_eq!(expected.len(), SEQ_BYTES);
        let mut times = Vec::new();
        let mut err = None;
        for _ in 0..3 {
            match seq_over_ws(&a, &expected) {
                Ok((t, chunks)) => {
                    times.push(t);
                    b.notes.add(format!(
                        "fig 4: run {}: {t:.1} ms, {chunks} output events, {} bytes byte-exact",
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
            Some(e) => b.rows.push(Row::error("4", name4, "≤ 4× floor", &e)),
            None => b.rows.push(ratio_row("4", name4, median(&times), "ms", fl.seq_cat, 4.0, false)),
        }
    }
    let warns = a.log_count(" WARN ");
    if warns > 0 {
        b.notes.add(format!("figures 1-4 agent logged {warns} warning line(s); last lines:\n{}", a.log_tail(5)));
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

    let window = Duration::from_secs(30);
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

/// Figure 6: RSS after 10,000 tasks of 10 KB output, and after 10,000 more.
fn memory_after_tasks(b: &mut Bench) {
    println!("\n[figure 6] RSS after 2 × 10,000 tasks of 10 KiB output");
    let name_a = "RSS after 10,000 tasks of 10 KiB output (TASK_HISTORY=1000)";
    let name_b = "RSS added by a second 10,000 tasks";
    let a = match b.start_agent("memory", &[("MAX_CONCURRENT_TASKS", "4")]) {
        Ok(a) => a,
        Err(e) => {
            b.rows.push(Row::error("6a", name_a, "≤ 16 MiB", &e));
            b.rows.push(Row::error("6b", name_b, "≤ 1 MiB", &e));
            return;
        }
    };
    // 10,240 bytes of text: 160 lines of 64 bytes.
    let file = a.dir.path().join("10k.txt");
    let mut text = Vec::with_capacity(10240);
    for i in 0..160 {
        let line = format!("{i:05} abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 01234567");
        text.extend_from_slice(&line.as_bytes()[..63]);
        text.push(b'\n');
    }
    assert_eq!(text.len(), 10240);
    if let Err(e) = std::fs::write(&file, &text) {
        b.rows.push(Row::error("6a", name_a, "≤ 16 MiB", &e.to_string()));
        return;
    }
    let body = serde_json::json!({"command": "cat", "args": [file.to_string_lossy()]}).to_string();
    // The reply's "stdout" must end with the file's last line (newline JSON-escaped).
    let mut check = text[text.len() - 64..text.len() - 1].to_vec();
    check.extend_from_slice(b"\\n\"");
    let rss0 = proc::rss_kib(a.pid).unwrap_or(0);
    let mut rss = Vec::new();
    for round in 1..=2 {
        let cap = b.left().saturating_sub(Duration::from_secs(100)).min(Duration::from_secs(80));
        if cap < Duration::from_secs(5) {
            b.notes.add(format!("fig 6: round {round} skipped (time budget)"));
            break;
        }
        let r = bulk(&a, &body, 4, 10_000, cap, Some(&check));
        std::thread::sleep(Duration::from_millis(1000));
        let kib = proc::rss_kib(a.pid).unwrap_or(0);
        b.notes.add(format!(
            "fig 6: round {round}: {} tasks in {:.1} s ({:.0}/s), 503 retried {}, errors {}{}; VmRSS {kib} KiB, {} threads; agent CPU {:.3} ms/task",
            r.ok,
            r.elapsed.as_secs_f64(),
            r.ok as f64 / r.elapsed.as_secs_f64(),
            r.busy_503,
            r.errors,
            r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            proc::threads(a.pid).unwrap_or(0),
            r.agent_ticks as f64 * tick_ms() / r.ok.max(1) as f64,
        ));
        if r.ok < 10_000 {
            b.notes.add(format!("fig 6: round {round} ran {} of 10,000 tasks within its time cap", r.ok));
        }
        rss.push((kib, r.ok));
    }
    b.notes.add(format!("fig 6: VmRSS before the tasks: {rss0} KiB"));
    hold(&a);
    match rss.first() {
        Some(&(kib, n)) => {
            let mut r = Row::new("6a", name_a);
            r.value =
                format!("{:.2} MiB{}", mib(kib), if n < 10_000 { format!(" (only {n} tasks)") } else { String::new() });
            r.target = "≤ 16 MiB".into();
            r.met = Some(kib <= 16 * 1024);
            b.rows.push(r);
        }
        None => b.rows.push(Row::error("6a", name_a, "≤ 16 MiB", "skipped (time budget)")),
    }
    match (rss.first(), rss.get(1)) {
        (Some(&(k1, _)), Some(&(k2, n))) => {
            let d = k2 as i64 - k1 as i64;
            let mut r = Row::new("6b", name_b);
            r.value = format!(
                "{:+.2} MiB{}",
                d as f64 / 1024.0,
                if n < 10_000 { format!(" (only {n} tasks)") } else { String::new() }
            );
            r.target = "≤ 1 MiB".into();
            r.met = Some(d <= 1024);
            b.rows.push(r);
        }
        _ => b.rows.push(Row::error("6b", name_b, "≤ 1 MiB", "skipped (time budget)")),
    }
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
    std::thread::sleep(Duration::from_millis(1000));
    let rss0 = proc::rss_kib(a.pid).unwrap_or(0);
    let th0 = proc::threads(a.pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut clients: Vec<Ws> = Vec::with_capacity(1000);
    let mut errors = 0;
    let mut first_error = None;
    while clients.len() < 1000 && errors < 50 && t0.elapsed() < Duration::from_secs(30) {
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
    r.met = Some(clients.len() == 1000 && rss1.saturating_sub(rss0) <= 64 * 1024);
    b.rows.push(r);

    let n = clients.len();
    let mut h = Http::new(a.addr, SECRET);
    let t = Instant::now();
    let id = match h.post_json("/execute", TRUE_BODY).map_err(|e| e.to_string()).and_then(|r| task_id(&r)) {
        Ok(id) => id,
        Err(e) => {
            b.rows.push(Row::error("8b", name_b, "1000/1000", &e));
            return;
        }
    };
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
    let mut kept = Vec::new();
    for h in hs {
        if let Ok(g) = h.join() {
            kept.push(g);
        }
    }
    let got = got.load(Ordering::Relaxed);
    b.notes.add(format!(
        "fig 8: {got}/{n} clients got task {id}'s completed; last one {:.1} ms after the POST",
        *last_ms.lock().unwrap()
    ));
    let mut r = Row::new("8b", name_b);
    r.value = format!("{got}/{n}");
    r.target = "1000/1000".into();
    r.met = Some(got == 1000);
    b.rows.push(r);
    drop(kept);
}

/// Figure 9: `GET /tasks?limit=50` with 10,000 tasks in history.
fn list_tasks(b: &mut Bench) {
    println!("\n[figure 9] GET /tasks?limit=50 with 10,000 tasks in history");
    let name = "GET /tasks?limit=50 with 10,000 tasks in history, p50";
    let a = match b.start_agent("history", &[("TASK_HISTORY", "10000"), ("MAX_CONCURRENT_TASKS", "4")]) {
        Ok(a) => a,
        Err(e) => {
            b.rows.push(Row::error("9", name, "≤ 2 ms", &e));
            return;
        }
    };
    let cap = b.left().saturating_sub(Duration::from_secs(30)).min(Duration::from_secs(80));
    let r = bulk(&a, TRUE_BODY, 4, 10_000, cap, None);
    b.notes.add(format!(
        "fig 9: loaded {} tasks in {:.1} s ({:.0}/s), 503 retried {}, errors {}",
        r.ok,
        r.elapsed.as_secs_f64(),
        r.ok as f64 / r.elapsed.as_secs_f64(),
        r.busy_503,
        r.errors
    ));
    let mut h = Http::new(a.addr, SECRET);
    let mut v = Vec::new();
    let mut err = None;
    let mut items = 0;
    let mut bytes = 0;
    let t0 = Instant::now();
    for i in 0..520 {
        if t0.elapsed() > Duration::from_secs(15) {
            break;
        }
        let t = Instant::now();
        match h.get("/tasks?limit=50") {
            Ok(resp) if resp.status == 200 => {
                let d = ms(t.elapsed());
                if i == 0 {
                    bytes = resp.body.len();
                    items = resp
                        .json()
                        .ok()
                        .and_then(|j| j.get("tasks").and_then(|t| t.as_array()).map(Vec::len))
                        .unwrap_or(0);
                }
                if i >= 20 {
                    v.push(d);
                }
            }
            Ok(resp) => {
                err = Some(format!("status {}: {}", resp.status, resp.text(200)));
                break;
            }
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(e) = err {
        b.rows.push(Row::error("9", name, "≤ 2 ms", &e));
        return;
    }
    let p50 = percentile(&v, 50.0);
    b.notes.add(format!(
        "fig 9: {} requests: p50 {p50:.3} ms, p90 {:.3} ms, p99 {:.3} ms; {items} tasks, {bytes} bytes per reply",
        v.len(),
        percentile(&v, 90.0),
        percentile(&v, 99.0)
    ));
    let mut row = Row::new("9", name);
    row.value = format!("{p50:.3} ms{}", if r.ok < 10_000 { format!(" (only {} tasks)", r.ok) } else { String::new() });
    row.target = "≤ 2 ms".into();
    row.met = Some(p50 <= 2.0 && items == 50);
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

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let start = Instant::now();
    let bin = match locate_binary(&root) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let (model, cpus) = cpu_model();
    let header = format!(
        "codara-agent benchmark\n  date:    {}\n  system:  {}\n  CPU:     {model}, {cpus} core(s) (available parallelism {})\n  load:    {} (1/5/15 min load average at start)\n  commit:  {}{}\n  binary:  {}\n  limits:  open files {} (bench process)",
        proc::command_text("date", &["+%Y-%m-%d %H:%M:%S %Z"]),
        proc::command_text("uname", &["-srm"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        proc::command_text("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]),
        if proc::command_text("git", &["-C", &root.to_string_lossy(), "status", "--porcelain", "--", "src", "vendor", "Cargo.toml"]) != "?" {
            " (+ uncommitted changes in src/vendor/Cargo.toml)"
        } else {
            ""
        },
        bin.display(),
        proc::command_text("sh", &["-c", "ulimit -n"]),
    );
    println!("{header}");
    // `--only 1,3,7` runs those figures alone (the floors always run: they are the ratios' base).
    let args: Vec<String> = std::env::args().collect();
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let mut b = Bench { bin, only, start, notes: Notes::default(), rows: Vec::new() };

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
            b.rows.push(Row::error(
                "9",
                "GET /tasks?limit=50 with 10,000 tasks in history, p50",
                "≤ 2 ms",
                "skipped (time budget)",
            ));
        }
    }
    if b.want(&[10]) {
        startup(&mut b);
    }
    if b.want(&[11]) {
        binary_size(&mut b);
    }

    let mut order: Vec<Row> = std::mem::take(&mut b.rows);
    let key = |f: &str| -> (u32, String) {
        let n: String = f.chars().take_while(char::is_ascii_digit).collect();
        (n.parse().unwrap_or(99), f.to_string())
    };
    order.sort_by_key(|r| key(&r.fig));
    let (text, md) = table(&order);
    let missed = order.iter().filter(|r| r.met == Some(false)).count();
    let unmeasured = order.iter().filter(|r| r.met.is_none()).count();
    let took = start.elapsed().as_secs_f64();
    let summary = format!(
        "{} of {} targets met, {missed} missed, {unmeasured} not measured; bench run time {took:.1} s; load average at the end {}",
        order.iter().filter(|r| r.met == Some(true)).count(),
        order.len(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("\n{header}\n\n{text}\n{summary}\n");
    let notes = b.notes.0.lock().unwrap().clone();
    let report = format!(
        "# codara-agent benchmark\n\n```\n{header}\n```\n\n{md}\n{summary}\n\nDetails:\n\n{}\n",
        notes.iter().map(|n| format!("- {}", n.replace('\n', "\n  "))).collect::<Vec<_>>().join("\n")
    );
    println!("Markdown:\n\n{md}");
    let path = root.join("target/bench-report.md");
    match std::fs::write(&path, report) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}
