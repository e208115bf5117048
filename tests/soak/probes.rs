//! The rest of a node's life during the run: the API polled as dashboards do, discovery
//! probes, one SIGSTOP/SIGCONT (a debugger, a container pause), and the agent's resources
//! sampled.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Agent};
use crate::run::{Metrics, Run};

/// How far open descriptors and threads may stay above their level before the run.
pub const FD_MARGIN: usize = 3;
pub const THREAD_MARGIN: usize = 2;

/// A UDP port free right now (bound and released at once).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP port on loopback");
    s.local_addr().expect("a bound socket has an address").port()
}

/// The agent's open descriptors, threads and resident memory at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resources {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

impl Resources {
    /// From /proc; or, where the agent's descriptors cannot be listed there (it makes itself
    /// non-dumpable, so only root may), from its `process_*` series in `/metrics`.
    pub fn now(agent: &Agent) -> Resources {
        let pid = agent.pid();
        if std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok() {
            return Resources {
                fds: agent.fd_count(),
                threads: common::proc_status_value(pid, "Threads").unwrap_or(0) as usize,
                rss_kib: common::proc_status_value(pid, "VmRSS").unwrap_or(0),
            };
        }
        let m = Metrics::fetch(agent);
        Resources {
            fds: m.get("process_open_fds") as usize,
            threads: m.get("process_threads") as usize,
            rss_kib: m.get("process_resident_memory_bytes") / 1024,
        }
    }

    /// Waits (40 s at most) until descriptors and threads are back within the margins of
    /// `baseline`; the last reading. Idle threads leave after 5 s (HTTP connections) or 10 s
    /// (tasks); it looks only every 2 s, since a reading through `/metrics` is a request that
    /// keeps an HTTP thread busy.
    pub fn settled(agent: &Agent, baseline: &Resources) -> Resources {
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            let r = Resources::now(agent);
            let back = r.fds <= baseline.fds + FD_MARGIN && r.threads <= baseline.threads + THREAD_MARGIN;
            if back || Instant::now() >= until {
                return r;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// The highest readings while the run went on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub rss_kib: u64,
    /// When the RSS peaked, since the start of the run.
    pub rss_at: Duration,
    /// The highest RSS in each quarter of the workload's time: flat in a run that leaks
    /// nothing.
    pub rss_by_quarter: [u64; 4],
    pub fds: usize,
    pub threads: usize,
    pub samples: u64,
}

/// Samples the agent's resources every 100 ms until sampling ends.
pub fn sample(run: &Run) -> Peak {
    let mut peak = Peak::default();
    while run.sampling() {
        let r = Resources::now(run.agent);
        let quarter = (run.t0.elapsed().as_secs_f64() * 4.0 / run.settings.duration.as_secs_f64()) as usize;
        let q = &mut peak.rss_by_quarter[quarter.min(3)];
        *q = (*q).max(r.rss_kib);
        if r.rss_kib > peak.rss_kib {
            peak.rss_kib = r.rss_kib;
            peak.rss_at = run.t0.elapsed();
        }
        peak.fds = peak.fds.max(r.fds);
        peak.threads = peak.threads.max(r.threads);
        peak.samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    peak
}

/// Polls `/tasks`, `/stats` and `/metrics` three times a second; how many rounds.
pub fn poll_api(run: &Run) -> u64 {
    let max = run.settings.max_tasks as u64;
    let mut rounds = 0;
    while run.loading() {
        let tasks = run.get("/tasks?limit=20");
        let stats = run.agent.request("GET", "/stats", &[], b"");
        let metrics = run.agent.request("GET", "/metrics", &[], b"");
        for (path, r) in [("/tasks", &tasks), ("/stats", &stats), ("/metrics", &metrics)] {
            if r.status != 200 {
                run.problems.add("api", format!("GET {path} answered {} at {}: {}", r.status, run.at(), r.text()));
                return rounds;
            }
        }
        let (t, s) = (tasks.json(), stats.json());
        let listed = t["tasks"].as_array().map_or(usize::MAX, Vec::len);
        let running = s["runningTasks"].as_u64().unwrap_or(u64::MAX);
        let gauge = Metrics::parse(&metrics.text()).get("codara_running_tasks");
        if listed > 20 || t["capacity"] != max || t["running"].as_u64().is_none_or(|n| n > max) {
            run.problems.add("api", format!("GET /tasks?limit=20 at {}: {} tasks, {}", run.at(), listed, brief(&t)));
        }
        if running > max || s["maxTasks"] != max || s["availableSlots"].as_u64() != Some(max.saturating_sub(running)) {
            run.problems.add("api", format!("GET /stats at {}: {s}", run.at()));
        }
        if gauge > max {
            run.problems.add("api", format!("/metrics at {}: codara_running_tasks {gauge} > {max}", run.at()));
        }
        rounds += 1;
        run.nap(Duration::from_millis(300));
    }
    rounds
}

fn brief(v: &Value) -> String {
    let mut v = v.clone();
    v["tasks"] = Value::String("…".into());
    v.to_string()
}

/// Discovery probes sent and answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Probed {
    pub sent: u64,
    pub answered: u64,
}

/// Sends `{"type":"cluster_probe"}` to the agent's discovery port on 127.0.0.1 once a second
/// and counts the announces it answers with (to this socket, by unicast).
pub fn probe_discovery(run: &Run) -> Probed {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP socket on loopback");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("set a read timeout");
    let mut p = Probed::default();
    let mut buf = [0u8; 65536];
    while run.loading() {
        if sock.send_to(br#"{"type":"cluster_probe"}"#, (Ipv4Addr::LOCALHOST, run.disc_port)).is_ok() {
            p.sent += 1;
        }
        let next = Instant::now() + Duration::from_secs(1);
        while Instant::now() < next {
            let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
            let v: Value = serde_json::from_slice(&buf[..n]).unwrap_or(Value::Null);
            if v["type"] == "cluster_announce" && v["port"] == run.agent.port {
                p.answered += 1;
            }
        }
    }
    p
}

/// Stops the agent (SIGSTOP) once, at 40% of the run, and lets it go on (SIGCONT) after
/// `SOAK_PAUSE_MS`; when it did, since the start. Signals interrupt the agent's blocking
/// calls: nothing may take that for the end of a connection.
pub fn pause_once(run: &Run) -> Option<Duration> {
    if run.settings.pause.is_zero() {
        return None;
    }
    run.nap(run.settings.duration * 2 / 5);
    if !run.loading() {
        return None;
    }
    let at = run.t0.elapsed();
    let _cont = Continue(run.agent);
    run.agent.signal("STOP");
    std::thread::sleep(run.settings.pause);
    Some(at)
}

/// Sends SIGCONT when dropped, so the agent is never left stopped.
struct Continue<'a>(&'a Agent);

impl Drop for Continue<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}
