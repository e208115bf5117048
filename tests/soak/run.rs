//! What every part of the soak shares: the agent, the clock, the ledger of tasks started,
//! and the problems found so far.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Agent, Resp};
use crate::settings::Settings;
use crate::tasks::Kind;

/// How long, after the workload stops, tasks and clients get to wind up.
pub const DRAIN: Duration = Duration::from_secs(60);

pub struct Run<'a> {
    pub agent: &'a Agent,
    pub settings: &'a Settings,
    pub t0: Instant,
    /// Set in the environment of every task: finds their processes, grandchildren included.
    pub token: String,
    /// Tasks up to this id belong to the set-up, not to the run.
    pub sync_id: u64,
    pub disc_port: u16,
    pub ledger: Ledger,
    pub problems: Problems,
    /// `/metrics` before the workload, to compare the run's counters with.
    pub metrics_before: Metrics,
    load_ended: AtomicBool,
    sampling_ended: AtomicBool,
}

impl<'a> Run<'a> {
    pub fn new(agent: &'a Agent, settings: &'a Settings, sync_id: u64, disc_port: u16) -> Run<'a> {
        Run {
            agent,
            settings,
            t0: Instant::now(),
            token: format!("soak-{}-{}", std::process::id(), crate::ws::now_ms()),
            sync_id,
            disc_port,
            ledger: Ledger::default(),
            problems: Problems::default(),
            metrics_before: Metrics::fetch(agent),
            load_ended: AtomicBool::new(false),
            sampling_ended: AtomicBool::new(false),
        }
    }

    /// Whether the workload goes on: its time has not run out, and it was not ended.
    pub fn loading(&self) -> bool {
        !self.load_ended.load(Ordering::Acquire) && self.t0.elapsed() < self.settings.duration
    }

    /// Called once every part that starts tasks has returned: no task is added after it.
    pub fn end_load(&self) {
        self.load_ended.store(true, Ordering::Release);
    }

    /// Whether [`Run::end_load`] was called: the ledger is complete.
    pub fn load_ended(&self) -> bool {
        self.load_ended.load(Ordering::Acquire)
    }

    /// The last moment anything of the run may still be waiting for.
    pub fn hard_deadline(&self) -> Instant {
        self.t0 + self.settings.duration + DRAIN
    }

    pub fn sampling(&self) -> bool {
        !self.sampling_ended.load(Ordering::Acquire) && Instant::now() < self.hard_deadline() + DRAIN
    }

    pub fn end_sampling(&self) {
        self.sampling_ended.store(true, Ordering::Release);
    }

    /// Seconds since the start, for messages.
    pub fn at(&self) -> String {
        format!("t={:.1}s", self.t0.elapsed().as_secs_f64())
    }

    pub fn get(&self, path: &str) -> Resp {
        self.agent.get(path)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.agent.post(path, body)
    }

    /// Sleeps `d`, or less if the workload ends meanwhile.
    pub fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while self.loading() && Instant::now() < until {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

/// Problems found while the run goes on, by area; each becomes one assertion at the end.
#[derive(Default)]
pub struct Problems(Mutex<BTreeMap<&'static str, Vec<String>>>);

impl Problems {
    pub fn add(&self, area: &'static str, what: String) {
        eprintln!("soak problem [{area}]: {what}");
        self.0.lock().unwrap().entry(area).or_default().push(what);
    }

    pub fn of(&self, area: &str) -> Vec<String> {
        self.0.lock().unwrap().get(area).cloned().unwrap_or_default()
    }

    pub fn areas(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().keys().copied().collect()
    }
}

/// One task the run started.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    /// Its final task object's `status` and `timedOut`, once its submitter saw it end.
    pub status: Option<String>,
    pub timed_out: bool,
}

/// Every task the run started, and the 503s it was answered with.
#[derive(Default)]
pub struct Ledger {
    tasks: Mutex<BTreeMap<u64, Entry>>,
    pub rejected_slots: AtomicU64,
    pub rejected_other: AtomicU64,
    pub follows: AtomicU64,
    pub cancels: AtomicU64,
}

impl Ledger {
    pub fn started(&self, id: u64, kind: Kind) {
        self.tasks.lock().unwrap().insert(id, Entry { kind, status: None, timed_out: false });
    }

    pub fn ended(&self, id: u64, task: &Value) {
        if let Some(e) = self.tasks.lock().unwrap().get_mut(&id) {
            e.status = task["status"].as_str().map(str::to_string);
            e.timed_out = task["timedOut"] == true;
        }
    }

    pub fn ids(&self) -> BTreeSet<u64> {
        self.tasks.lock().unwrap().keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.tasks.lock().unwrap().len()
    }

    /// The newest task of one of `kinds` whose end its submitter has not seen yet.
    pub fn newest_running(&self, kinds: &[Kind]) -> Option<u64> {
        let tasks = self.tasks.lock().unwrap();
        tasks.iter().rev().find(|(_, e)| e.status.is_none() && kinds.contains(&e.kind)).map(|(id, _)| *id)
    }

    /// The newest task of one of `kinds` whose end its submitter has seen: still in the
    /// agent's history (`TASK_HISTORY` keeps the last 1000).
    pub fn newest_ended(&self, kinds: &[Kind]) -> Option<u64> {
        let tasks = self.tasks.lock().unwrap();
        tasks.iter().rev().find(|(_, e)| e.status.is_some() && kinds.contains(&e.kind)).map(|(id, _)| *id)
    }

    /// How many tasks ended with `status` (and, for `timed_out`, timed out).
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> u64 {
        self.tasks.lock().unwrap().values().filter(|e| f(e)).count() as u64
    }
}

/// The samples of one `/metrics` answer, by series name with labels (`name{labels}`).
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn fetch(agent: &Agent) -> Metrics {
        let r = agent.request("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        Metrics::parse(&r.text())
    }

    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect();
        Metrics(samples)
    }

    /// The value of a series (0 when the agent does not export it).
    pub fn get(&self, series: &str) -> u64 {
        self.0.get(series).copied().unwrap_or(0.0) as u64
    }

    /// How much a counter grew since `before`.
    pub fn delta(&self, before: &Metrics, series: &str) -> u64 {
        self.get(series).saturating_sub(before.get(series))
    }
}
