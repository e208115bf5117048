//! Soak test: the agent run the way a fleet runs a node, all at once, for `SOAK_SECONDS`
//! (60 by default; `scripts/soak.sh --minutes N` for long runs, same code):
//!
//! - the workload ([`workload`]): submitters running every kind of task in [`tasks`] with
//!   `MAX_CONCURRENT_TASKS` slots, counting the 503s they get when all are taken;
//! - WebSocket clients ([`watchers`]): two that watch every task for the whole run (one answers
//!   pings and sends nothing else, like a Node `ws` main server; one sends no frame at all),
//!   one that subscribes to running tasks from an offset, one that connects and disconnects in
//!   a loop, and one that stops reading and must be closed with 1008;
//! - the rest of a node's life ([`probes`]): `/tasks`, `/stats`, `/metrics` polled, UDP discovery
//!   probes, one SIGSTOP/SIGCONT of the agent, its RSS, descriptors and threads sampled.
//!
//! What broke is collected while the run goes on and asserted at the end ([`checks`]), after
//! a summary is printed. Everything runs on 127.0.0.1, is bounded in count and time, and
//! stops by itself.

#[path = "soak/checks.rs"]
mod checks;
mod common;
#[path = "soak/events.rs"]
mod events;
#[path = "soak/probes.rs"]
mod probes;
#[path = "soak/run.rs"]
mod run;
#[path = "soak/settings.rs"]
mod settings;
#[path = "soak/staller.rs"]
mod staller;
#[path = "soak/tasks.rs"]
mod tasks;
#[path = "soak/watchers.rs"]
mod watchers;
#[path = "soak/workload.rs"]
mod workload;
#[path = "soak/ws.rs"]
mod ws;

use std::thread::{Scope, ScopedJoinHandle};

use checks::{Outcome, Report};
use probes::Resources;
use run::Run;
use settings::Settings;
use watchers::Connected;

#[test]
fn soak() {
    let settings = Settings::from_env();
    let disc_port = probes::free_udp_port();
    let agent = common::agent()
        .env("MAX_CONCURRENT_TASKS", &settings.max_tasks.to_string())
        .env("WS_PING_INTERVAL", &settings.ping_ms.to_string())
        .env("KILL_GRACE", "2000")
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", &disc_port.to_string())
        .start();
    let _logs = common::logs_on_panic(&agent);
    eprintln!("soak: {settings}; agent pid {}, port {}, discovery port {disc_port}", agent.pid(), agent.port);
    // A first task puts the thread pool, the journal and the log writer in use: the level
    // descriptors and threads must come back to.
    agent.run_wait(serde_json::json!({"command": "true"}));
    let baseline = Resources::now(&agent);
    let clients = Connected::connect(&agent);
    let run = Run::new(&agent, &settings, clients.sync_id, disc_port);
    let silent_head_start = run.t0 - clients.silent_at;
    let outcome = std::thread::scope(|s| {
        let sampler = spawn(s, "sampler", || probes::sample(&run));
        let poller = spawn(s, "poller", || probes::poll_api(&run));
        let prober = spawn(s, "prober", || probes::probe_discovery(&run));
        let pauser = spawn(s, "pauser", || probes::pause_once(&run));
        let pong_only = spawn(s, "pong-only", || watchers::watch(&run, "pong-only", clients.pong_only));
        let silent = spawn(s, "silent", || watchers::watch(&run, "silent", clients.silent));
        let staller = spawn(s, "staller", || staller::stall_loop(&run, clients.staller));
        let subscriber = spawn(s, "subscriber", || watchers::subscribe_loop(&run));
        let flapper = spawn(s, "flapper", || watchers::flap(&run));
        workload::run(&run);
        let stalled = join(staller); // it starts tasks too
        run.end_load();
        let load_time = run.t0.elapsed();
        let outcome = Outcome {
            pong_only: join(pong_only),
            silent: join(silent),
            silent_head_start,
            subscribed: join(subscriber),
            flapped: join(flapper),
            stalled,
            polls: join(poller),
            probed: join(prober),
            paused_at: join(pauser),
            peak: Default::default(),
            load_time,
        };
        run.end_sampling();
        Outcome { peak: join(sampler), ..outcome }
    });
    let report = Report::gather(&run, outcome, baseline);
    eprintln!("{}", report.summary(&run));
    report.assert_all(&run);
}

fn spawn<'scope, T: Send + 'scope>(
    s: &'scope Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new().name(name.into()).spawn_scoped(s, f).expect("spawn a thread of the soak")
}

#[track_caller]
fn join<T>(h: ScopedJoinHandle<'_, T>) -> T {
    let name = h.thread().name().unwrap_or("?").to_string();
    h.join().unwrap_or_else(|_| panic!("the soak's {name} thread panicked"))
}
