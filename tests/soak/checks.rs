//! The end of the run: what was gathered, the summary printed, and one assertion per check,
//! each saying what broke.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common;
use crate::probes::{Peak, Probed, Resources, FD_MARGIN, THREAD_MARGIN};
use crate::run::{Metrics, Run};
use crate::staller::Stalled;
use crate::tasks::{Kind, MIX, ORPHAN_ARGS, TOKEN_VAR};
use crate::watchers::{Flapped, Subscribed, Watched};

/// What the parts of the run returned.
pub struct Outcome {
    pub pong_only: Watched,
    pub silent: Watched,
    /// How long before the start of the run the silent watcher connected.
    pub silent_head_start: Duration,
    pub subscribed: Subscribed,
    pub flapped: Flapped,
    pub stalled: Stalled,
    pub polls: u64,
    pub probed: Probed,
    pub paused_at: Option<Duration>,
    pub peak: Peak,
    pub load_time: Duration,
}

/// Everything the checks look at.
pub struct Report {
    pub outcome: Outcome,
    pub baseline: Resources,
    pub after: Resources,
    pub metrics: Metrics,
    /// Processes of tasks still alive once every task had ended, other than the orphans.
    pub leftovers: Vec<(u32, String)>,
    /// `setsid` grandchildren found alive and killed by the test.
    pub orphans_killed: usize,
}

impl Report {
    pub fn gather(run: &Run, outcome: Outcome, baseline: Resources) -> Report {
        let (leftovers, orphans_killed) = task_processes(run);
        let after = Resources::settled(run.agent, &baseline);
        Report { outcome, baseline, after, metrics: Metrics::fetch(run.agent), leftovers, orphans_killed }
    }

    pub fn summary(&self, run: &Run) -> String {
        let o = &self.outcome;
        let ledger = &run.ledger;
        let status = |s: &str| ledger.count(|e| e.status.as_deref() == Some(s));
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "==== soak summary ====\n\
             settings: {}\n\
             load: {:.0} s; tasks run: {} (completed {}, failed {}, of which timed out {}, cancelled {}); \
             503 'Max concurrent tasks reached': {}; other 503s: {}; followed: {}; cancels sent: {}\n\
             events checked: {} (pong-only {}, silent {}, subscriber {} over {} subscriptions)\n\
             clients: pong-only ({} messages, {} pings, closed: {}), silent ({} messages, closed: {}), \
             flapper ({} connections, {} messages), staller ({} episodes, {} closed with 1008)\n\
             API polls: {}; discovery probes: {} sent, {} answered; SIGSTOP/SIGCONT: {}\n\
             agent RSS: {:.1} MiB before, peak {:.1} MiB at t={:.1}s (bound {} MiB), {:.1} MiB after; \
             peak by quarter of the run {}\n\
             fds {} before, peak {}, {} after; threads {} before, peak {}, {} after\n\
             orphaned setsid grandchildren killed by the test: {}; other task processes left: {}\n\
             ======================",
            run.settings,
            o.load_time.as_secs_f64(),
            ledger.len(),
            status("completed"),
            status("failed"),
            ledger.count(|e| e.timed_out),
            status("cancelled"),
            ledger.rejected_slots.load(std::sync::atomic::Ordering::Relaxed),
            ledger.rejected_other.load(std::sync::atomic::Ordering::Relaxed),
            ledger.follows.load(std::sync::atomic::Ordering::Relaxed),
            ledger.cancels.load(std::sync::atomic::Ordering::Relaxed),
            o.pong_only.events_checked + o.silent.events_checked + o.subscribed.events_checked,
            o.pong_only.events_checked,
            o.silent.events_checked,
            o.subscribed.events_checked,
            o.subscribed.tasks,
            o.pong_only.messages,
            o.pong_only.pings,
            describe_close(&o.pong_only.closed),
            o.silent.messages,
            describe_close(&o.silent.closed),
            o.flapped.connections,
            o.flapped.messages,
            o.stalled.episodes,
            o.stalled.closed_1008,
            o.polls,
            o.probed.sent,
            o.probed.answered,
            o.paused_at.map_or("none".into(), |t| format!("at t={:.1}s", t.as_secs_f64())),
            mib(self.baseline.rss_kib),
            mib(o.peak.rss_kib),
            o.peak.rss_at.as_secs_f64(),
            run.settings.rss_bound_mib,
            mib(self.after.rss_kib),
            o.peak.rss_by_quarter.map(|k| format!("{:.1}", mib(k))).join(" / "),
            self.baseline.fds,
            o.peak.fds,
            self.after.fds,
            self.baseline.threads,
            o.peak.threads,
            self.after.threads,
            self.orphans_killed,
            self.leftovers.len(),
        )
    }
}

fn describe_close(c: &Option<(Duration, Option<u16>, String)>) -> String {
    match c {
        None => "no".into(),
        Some((at, code, why)) => format!("at t={:.1}s, code {code:?} {why:?}", at.as_secs_f64()),
    }
}

/// Finds the processes of the run's tasks still alive: none may be, but the `setsid`
/// grandchildren, which the agent does not kill today (it signals a task's process group, and
/// they left it; a control group per task would take them too). Those the test kills itself.
fn task_processes(run: &Run) -> (Vec<(u32, String)>, usize) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let all = common::processes_with_env(TOKEN_VAR, &run.token);
        let (orphans, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, cmd)| cmd == ORPHAN_ARGS);
        // Killed groups take a moment to be gone.
        if others.is_empty() || Instant::now() >= until {
            for (pid, _) in orphans.iter().chain(&others) {
                let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
            return (others, orphans.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Problems found while the run went on, in one area: none may be.
#[track_caller]
fn assert_none(run: &Run, area: &str, what: &str) {
    let found = run.problems.of(area);
    let first: Vec<&String> = found.iter().take(10).collect();
    assert!(found.is_empty(), "{what}: {} problem(s), the first ones:\n{first:#?}", found.len());
}

impl Report {
    /// Every check, the most basic first.
    pub fn assert_all(&self, run: &Run) {
        assert!(run.agent.health_ok(), "the agent does not answer /health after the run");
        self.assert_clients(run);
        assert_none(run, "events", "WebSocket events differ from what the agent serves over HTTP");
        self.assert_every_task_completed(run);
        assert_none(run, "tasks", "tasks ended wrongly or printed something else than GET /output serves");
        assert_none(run, "follow", "GET /task/:id/output?follow=true differs from the task's output");
        assert_none(run, "subscriber", "a subscribe with offsets did not replay and follow the task exactly");
        assert_none(run, "api", "the HTTP API answered wrongly");
        assert_none(run, "staller", "the client that stopped reading was not closed as it must be");
        self.assert_processes();
        self.assert_resources(run);
        self.assert_metrics(run);
        self.assert_probes(run);
        self.assert_coverage(run);
        let unchecked: Vec<&str> = run.problems.areas().into_iter().filter(|a| !AREAS.contains(a)).collect();
        assert!(unchecked.is_empty(), "problems in areas no check looks at: {unchecked:?}");
    }

    fn assert_clients(&self, run: &Run) {
        let o = &self.outcome;
        assert_none(run, "closed clients", "clients that kept up were closed by the agent");
        let paused =
            o.paused_at.map_or(String::new(), |t| format!(" (the agent was paused at t={:.1}s)", t.as_secs_f64()));
        assert!(
            o.pong_only.closed.is_none(),
            "the watcher that answers pings and sends nothing else (a Node `ws` main server) was closed by the agent {}{paused}",
            describe_close(&o.pong_only.closed)
        );
        let ping = run.settings.ping();
        if run.settings.silent_client_survives() {
            assert!(
                o.silent.closed.is_none(),
                "the watcher that sends no frame was closed {} although 3 ping intervals ({} ms) outlast the run{paused}",
                describe_close(&o.silent.closed),
                3 * run.settings.ping_ms
            );
        } else {
            let Some((at, _, _)) = &o.silent.closed else {
                panic!("the watcher that answers no ping was never closed, though WS_PING_INTERVAL={} ms: a client that answers no ping must be closed after 3 intervals", run.settings.ping_ms)
            };
            let after = *at + o.silent_head_start;
            assert!(
                after >= ping * 2 && after <= ping * 4 + Duration::from_secs(10),
                "the watcher that answers no ping was closed {:.1} s after it connected, {}; expected after 3 ping intervals of {} ms",
                after.as_secs_f64(),
                describe_close(&o.silent.closed),
                run.settings.ping_ms
            );
        }
        let expected = (o.load_time.as_millis() as u64 / run.settings.ping_ms) / 2;
        assert!(
            o.pong_only.pings >= expected,
            "the watcher that answers pings got {} pings in {:.0} s with WS_PING_INTERVAL={} ms (expected at least {expected}): \
             the agent must ping on a fixed schedule, whether or not it is sending events",
            o.pong_only.pings,
            o.load_time.as_secs_f64(),
            run.settings.ping_ms
        );
    }

    fn assert_every_task_completed(&self, run: &Run) {
        let ids = run.ledger.ids();
        let mut watchers = vec![&self.outcome.pong_only];
        if run.settings.silent_client_survives() {
            watchers.push(&self.outcome.silent);
        }
        for w in watchers {
            let missing: Vec<&u64> = ids.difference(&w.completed).take(10).collect();
            let extra: BTreeSet<&u64> = w.completed.difference(&ids).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "the {} watcher got no `completed` for {} of the {} tasks (first: {missing:?}), and one for {} task(s) the run did not start ({extra:?})",
                w.name,
                ids.difference(&w.completed).count(),
                ids.len(),
                extra.len()
            );
        }
    }

    fn assert_processes(&self) {
        assert!(
            self.leftovers.is_empty(),
            "processes of the run's tasks still alive after every task ended (killed now): {:?}",
            self.leftovers
        );
    }

    fn assert_resources(&self, run: &Run) {
        let (b, a, peak) = (&self.baseline, &self.after, &self.outcome.peak);
        assert!(
            a.fds <= b.fds + FD_MARGIN,
            "the agent has {} open descriptors after up to 40 s of waiting, {} before the run (margin {FD_MARGIN}): \
             descriptors leak",
            a.fds,
            b.fds
        );
        assert!(
            a.threads <= b.threads + THREAD_MARGIN,
            "the agent has {} threads after up to 40 s of waiting, {} before the run (margin {THREAD_MARGIN}): threads leak; \
             its threads now: {:?}",
            a.threads,
            b.threads,
            common::thread_names(run.agent.pid())
        );
        assert!(
            peak.rss_kib < run.settings.rss_bound_mib * 1024,
            "the agent's RSS reached {:.1} MiB, over the bound of {} MiB",
            peak.rss_kib as f64 / 1024.0,
            run.settings.rss_bound_mib
        );
    }
}

impl Report {
    /// `/metrics` adds up, and agrees with what the run saw.
    fn assert_metrics(&self, run: &Run) {
        let (m, before, ledger) = (&self.metrics, &run.metrics_before, &run.ledger);
        let d = |series: &str| m.delta(before, series);
        let fin = |status: &str| d(&format!("codara_tasks_finished_total{{status=\"{status}\"}}"));
        let (started, running) = (d("codara_tasks_started_total"), m.get("codara_running_tasks"));
        let finished = fin("completed") + fin("failed") + fin("cancelled");
        assert_eq!(
            started,
            finished + running,
            "/metrics: {started} tasks started but {finished} finished + {running} running"
        );
        assert_eq!(running, 0, "/metrics: codara_running_tasks is {running} after every task ended");
        assert_eq!(
            started,
            ledger.len() as u64,
            "/metrics: {started} tasks started in the run, the run started {}",
            ledger.len()
        );
        for status in ["completed", "failed", "cancelled"] {
            let seen = ledger.count(|e| e.status.as_deref() == Some(status));
            assert_eq!(fin(status), seen, "/metrics: {} tasks finished {status}, the run saw {seen}", fin(status));
        }
        let timed_out = ledger.count(|e| e.timed_out);
        let counted = d("codara_tasks_timed_out_total");
        assert_eq!(counted, timed_out, "/metrics: {counted} tasks timed out, the run saw {timed_out}");
        let reason = |r: &str| d(&format!("codara_tasks_rejected_total{{reason=\"{r}\"}}"));
        let slots = ledger.rejected_slots.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            reason("slots"),
            slots,
            "/metrics: {} rejections for slots, the run got {slots} 503s",
            reason("slots")
        );
        let other = ledger.rejected_other.load(std::sync::atomic::Ordering::Relaxed);
        let counted = reason("cpu") + reason("memory") + reason("shutdown");
        assert_eq!(
            counted, other,
            "/metrics: {counted} rejections for cpu/memory/shutdown, the run got {other} such 503s"
        );
        let kicked = d("codara_websocket_clients_closed_slow_total");
        let episodes = self.outcome.stalled.episodes;
        assert_eq!(
            kicked, episodes,
            "/metrics: {kicked} WebSocket clients closed as too slow, expected {episodes} (the staller's episodes)"
        );
        let clients = m.get("codara_websocket_clients");
        assert_eq!(clients, 0, "/metrics: {clients} WebSocket clients still counted after every client left");
    }

    fn assert_probes(&self, run: &Run) {
        let p = &self.outcome.probed;
        assert!(
            p.sent > 0 && p.answered * 2 >= p.sent,
            "discovery: {} of {} probes to 127.0.0.1:{} answered with an announce",
            p.answered,
            p.sent,
            run.disc_port
        );
    }

    /// The run did what it is for: a soak that quietly stopped exercising something would
    /// prove nothing about it.
    fn assert_coverage(&self, run: &Run) {
        let o = &self.outcome;
        for kind in MIX.iter().chain([&Kind::Flood]) {
            let n = run.ledger.count(|e| e.kind == *kind);
            assert!(n > 0, "no task of kind {kind:?} ran");
        }
        let full = run.ledger.rejected_slots.load(std::sync::atomic::Ordering::Relaxed);
        assert!(full > 0, "no submission was answered 503: the agent was never full");
        assert!(o.stalled.episodes > 0, "the staller never stalled: the run ended before its flood could start");
        assert!(o.subscribed.tasks > 0, "the subscriber never found a running task to subscribe to");
        assert!(o.flapped.connections > 1, "the flapping client connected {} time(s)", o.flapped.connections);
        assert!(o.polls > 0, "the API was never polled");
        let pause = &run.settings.pause;
        assert!(pause.is_zero() || o.paused_at.is_some(), "the agent was never paused (SOAK_PAUSE_MS={pause:?})");
    }
}

const AREAS: [&str; 9] =
    ["closed clients", "events", "tasks", "follow", "subscriber", "api", "staller", "metrics", "discovery"];
