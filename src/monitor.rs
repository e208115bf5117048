//! The `monitor` thread: samples CPU and memory (never processes: a full refresh costs ~20 ms)
//! into a snapshot that requests read without waiting: once a second while tasks run or
//! requests come, every 5 s when idle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sysinfo::System;

use crate::cgroup::MemoryGroup;
use crate::sync::Recover;
use crate::worker::Worker;

/// How often CPU and memory are sampled while the agent is busy: a task runs, or a request
/// came in the last [`BUSY_FOR`].
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How often while idle: an idle agent should cost nothing.
pub const IDLE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a request keeps the sampler at the busy rate.
pub const BUSY_FOR: Duration = Duration::from_secs(10);

/// The node's load at the last sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// CPU usage of all cores, 0-100.
    pub cpu_percent: f64,
    pub load_average: [f64; 3],
    pub memory_total: u64,
    pub memory_available: u64,
    /// Host uptime in seconds.
    pub uptime: u64,
}

impl Snapshot {
    pub fn memory_used(&self) -> u64 {
        self.memory_total.saturating_sub(self.memory_available)
    }

    /// Memory in use (total - available) as a percent of total.
    pub fn memory_percent(&self) -> f64 {
        if self.memory_total == 0 {
            return 0.0;
        }
        self.memory_used() as f64 * 100.0 / self.memory_total as f64
    }
}

/// Static facts about the host, read once.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: usize,
    pub total_memory: u64,
}

pub struct Monitor {
    snapshot: Mutex<Snapshot>,
    pub host: HostInfo,
    started: Instant,
    /// Milliseconds after `started` of the last request.
    last_request: AtomicU64,
    /// Tasks running (kept by the registry).
    running: AtomicUsize,
}

impl Monitor {
    /// Takes a first sample (so admission has figures from the first request) and starts
    /// the sampler thread.
    pub fn start() -> std::io::Result<(Arc<Monitor>, Worker)> {
        let mut sys =
            System::new().map_err(|e| std::io::Error::other(format!("cannot read system information: {e}")))?;
        sys.refresh_memory();
        sys.refresh_cpu_usage();
        // From uname(2): sysinfo's host_name() loses a name of the full 64 bytes.
        let hostname = rustix::system::uname().nodename().to_str().ok().filter(|h| !h.is_empty()).map(str::to_owned);
        let hostname = hostname.unwrap_or_else(|| "localhost".to_string());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let group = MemoryGroup::find();
        let first = sample(&sys, group.as_ref());
        if first.memory_total < sys.total_memory() {
            log::info!(
                "memory: the agent's control group is limited to {} MiB (of {} MiB on the host); admission and stats use that limit",
                first.memory_total >> 20,
                sys.total_memory() >> 20
            );
        }
        if first.memory_total == 0 {
            log::warn!("cannot read the memory figures (is /proc mounted?): MAX_MEMORY_PERCENT is not enforced, and stats show 0");
        }
        let host = HostInfo { hostname, cpus, total_memory: first.memory_total };
        let monitor = Arc::new(Monitor {
            snapshot: Mutex::new(first),
            host,
            started: Instant::now(),
            last_request: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        });
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let m = Arc::clone(&monitor);
        let handle = std::thread::Builder::new()
            .name("monitor".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&m, sys, group, stopped))?;
        Ok((monitor, Worker::new("monitor", move || drop(stop), vec![handle])))
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.snapshot.lock().recover()
    }

    /// A request came in: sample at the busy rate for a while.
    pub fn touch(&self) {
        self.last_request.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The registry's running count moved by `delta` (+1 or -1).
    pub fn tasks_running(&self, delta: isize) {
        if delta > 0 {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn interval(&self) -> Duration {
        let since =
            self.started.elapsed().saturating_sub(Duration::from_millis(self.last_request.load(Ordering::Relaxed)));
        if self.running.load(Ordering::Relaxed) > 0 || since < BUSY_FOR {
            SAMPLE_INTERVAL
        } else {
            IDLE_SAMPLE_INTERVAL
        }
    }
}

fn run(monitor: &Monitor, mut sys: System, group: Option<MemoryGroup>, stopped: Receiver<()>) {
    loop {
        match stopped.recv_timeout(monitor.interval()) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let s = sample(&sys, group.as_ref());
        *monitor.snapshot.lock().recover() = s;
    }
}

/// CPU and memory now. Memory is the host's, or the agent's control group's when that has a
/// lower limit (see [`crate::cgroup`]).
fn sample(sys: &System, group: Option<&MemoryGroup>) -> Snapshot {
    let load = System::load_average().ok();
    let cpu = sys.global_cpu_usage() as f64;
    let (memory_total, memory_available) = match group.and_then(MemoryGroup::read) {
        Some(g) if g.limit < sys.total_memory() => {
            (g.limit, g.limit.saturating_sub(g.used).min(sys.available_memory()))
        }
        _ => (sys.total_memory(), sys.available_memory()),
    };
    Snapshot {
        cpu_percent: if cpu.is_finite() { cpu.clamp(0.0, 100.0) } else { 0.0 },
        load_average: load.map(|l| [l.one, l.five, l.fifteen]).unwrap_or_default(),
        memory_total,
        memory_available,
        uptime: System::uptime().unwrap_or(0),
    }
}

impl Snapshot {
    /// The stats object (compat) with the task counts filled in.
    pub fn to_stats(&self, running: usize, max_tasks: usize) -> crate::protocol::Stats {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        crate::protocol::Stats {
            cpu: self.load_average[0],
            memory_used: self.memory_used(),
            memory_free: self.memory_available,
            memory_total: self.memory_total,
            memory_usage_percent: round2(self.memory_percent()),
            uptime: self.uptime,
            running_tasks: running,
            max_tasks,
            available_slots: max_tasks.saturating_sub(running),
            cpu_percent: round2(self.cpu_percent),
            load_average: self.load_average,
        }
    }
}
