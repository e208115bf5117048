//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: incrementing
//! one costs nothing on the hot path, and rendering reads them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::procfs::SelfUsage;
use crate::protocol::{Stats, TaskUsage};

/// Upper bounds (seconds) of the task duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

#[derive(Default)]
pub struct Metrics {
    pub tasks_started: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub tasks_cancelled: AtomicU64,
    pub tasks_timed_out: AtomicU64,
    pub rejected_slots: AtomicU64,
    pub rejected_cpu: AtomicU64,
    pub rejected_memory: AtomicU64,
    pub rejected_shutdown: AtomicU64,
    pub refused_requests: AtomicU64,
    pub discovery_sent: AtomicU64,
    pub discovery_send_errors: AtomicU64,
    pub ws_kicked: AtomicU64,
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_ms: AtomicU64,
    task_cpu_user_ms: AtomicU64,
    task_cpu_system_ms: AtomicU64,
    tasks_oom_killed: AtomicU64,
    task_forks_refused: AtomicU64,
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn observe_duration(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&self.duration_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// What an ended task used (`usage` of the task object).
    pub fn observe_usage(&self, u: &TaskUsage) {
        self.task_cpu_user_ms.fetch_add(u.cpu_user_ms, Ordering::Relaxed);
        self.task_cpu_system_ms.fetch_add(u.cpu_system_ms, Ordering::Relaxed);
        if u.oom_killed {
            inc(&self.tasks_oom_killed);
        }
        self.task_forks_refused.fetch_add(u.forks_refused.unwrap_or(0), Ordering::Relaxed);
    }

    fn render_usage(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let name = "codara_task_cpu_seconds_total";
        family(out, name, "counter", "CPU time used by ended tasks (all their processes), by mode.");
        let _ = writeln!(out, "{name}{{mode=\"user\"}} {}", get(&self.task_cpu_user_ms) as f64 / 1000.0);
        let _ = writeln!(out, "{name}{{mode=\"system\"}} {}", get(&self.task_cpu_system_ms) as f64 / 1000.0);
        let name = "codara_tasks_oom_killed_total";
        family(out, name, "counter", "Ended tasks a process of which the kernel killed for memory.");
        let _ = writeln!(out, "{name} {}", get(&self.tasks_oom_killed));
        let name = "codara_task_forks_refused_total";
        family(out, name, "counter", "Forks refused to tasks by their pids limit.");
        let _ = writeln!(out, "{name} {}", get(&self.task_forks_refused));
    }

    /// The whole exposition, with the gauges of the moment and this process's `usage`.
    pub fn render(&self, stats: &Stats, ws_clients: usize, usage: &SelfUsage) -> String {
        let mut out = String::with_capacity(6144);
        self.render_counters(&mut out);
        render_gauges(&mut out, stats, ws_clients);
        self.render_histogram(&mut out);
        self.render_usage(&mut out);
        render_process(&mut out, usage);
        family(&mut out, "codara_build_info", "gauge", "The agent's version, as a label; the value is always 1.");
        let _ = writeln!(out, "codara_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }

    fn render_counters(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            family(out, name, "counter", help);
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter("codara_tasks_started_total", "Tasks admitted and started.", &[("", get(&self.tasks_started))]);
        counter(
            "codara_tasks_finished_total",
            "Tasks ended, by final status.",
            &[
                ("{status=\"completed\"}", get(&self.tasks_completed)),
                ("{status=\"failed\"}", get(&self.tasks_failed)),
                ("{status=\"cancelled\"}", get(&self.tasks_cancelled)),
            ],
        );
        counter(
            "codara_tasks_timed_out_total",
            "Tasks killed for running past their timeout.",
            &[("", get(&self.tasks_timed_out))],
        );
        counter(
            "codara_tasks_rejected_total",
            "Tasks refused with 503, by reason.",
            &[
                ("{reason=\"slots\"}", get(&self.rejected_slots)),
                ("{reason=\"cpu\"}", get(&self.rejected_cpu)),
                ("{reason=\"memory\"}", get(&self.rejected_memory)),
                ("{reason=\"shutdown\"}", get(&self.rejected_shutdown)),
            ],
        );
        counter(
            "codara_refused_requests_total",
            "Requests refused for a missing or wrong secret.",
            &[("", get(&self.refused_requests))],
        );
        counter("codara_discovery_packets_sent_total", "Discovery packets sent.", &[("", get(&self.discovery_sent))]);
        counter(
            "codara_discovery_send_errors_total",
            "Discovery packets that could not be sent.",
            &[("", get(&self.discovery_send_errors))],
        );
        counter(
            "codara_websocket_clients_closed_slow_total",
            "WebSocket clients closed for falling behind.",
            &[("", get(&self.ws_kicked))],
        );
    }

    fn render_histogram(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let name = "codara_task_duration_seconds";
        family(out, name, "histogram", "Duration of ended tasks.");
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&self.duration_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.duration_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.duration_sum_ms) as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A sample value as the text format writes it (`+Inf`, not Rust's `inf`; `NaN` is the same).
fn value(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".to_string(),
        f64::NEG_INFINITY => "-Inf".to_string(),
        v => v.to_string(),
    }
}

fn render_gauges(out: &mut String, stats: &Stats, ws_clients: usize) {
    let mut gauge = |name: &str, help: &str, v: f64| {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", value(v));
    };
    gauge("codara_running_tasks", "Tasks running now.", stats.running_tasks as f64);
    gauge("codara_max_tasks", "MAX_CONCURRENT_TASKS.", stats.max_tasks as f64);
    gauge("codara_websocket_clients", "Connected WebSocket clients.", ws_clients as f64);
    gauge("codara_cpu_usage_percent", "CPU usage of all cores, 0-100.", stats.cpu_percent);
    gauge("codara_memory_usage_percent", "Memory in use (total - available), percent.", stats.memory_usage_percent);
    gauge("codara_load_average_1m", "1-minute load average.", stats.load_average[0]);
}

/// The standard `process_*` series (names, help and types as the Prometheus client libraries
/// export them). A figure that could not be read is left out, not reported as 0.
fn render_process(out: &mut String, u: &SelfUsage) {
    let int = |v: Option<u64>| v.map(|n| n as f64);
    let series: [(&str, &str, &str, Option<f64>); 7] = [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", u.cpu_seconds),
        ("process_open_fds", "gauge", "Number of open file descriptors.", int(u.open_fds)),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", u.max_fds),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", int(u.virtual_bytes)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", int(u.resident_bytes)),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            u.start_time_seconds,
        ),
        ("process_threads", "gauge", "Number of OS threads in the process.", int(u.threads)),
    ];
    for (name, kind, help, v) in series {
        if let Some(v) = v {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {}", value(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_duration(5);
        m.observe_duration(2000);
        let stats = crate::monitor::Snapshot::default().to_stats(0, 4);
        let text = m.render(&stats, 0, &SelfUsage::default());
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("codara_task_duration_seconds_count 2\n"));
    }

    #[test]
    fn process_series_and_build_info() {
        let stats = crate::monitor::Snapshot::default().to_stats(0, 4);
        let usage = SelfUsage {
            resident_bytes: Some(4 << 20),
            virtual_bytes: Some(64 << 20),
            cpu_seconds: Some(1.25),
            open_fds: Some(12),
            max_fds: Some(f64::INFINITY),
            start_time_seconds: Some(1_764_800_000.5),
            threads: Some(9),
        };
        let text = Metrics::default().render(&stats, 0, &usage);
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n",
            "# TYPE process_open_fds gauge\nprocess_open_fds 12\n",
            "# TYPE process_max_fds gauge\nprocess_max_fds +Inf\n",
            "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes 67108864\n",
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4194304\n",
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1764800000.5\n",
            "# TYPE process_threads gauge\nprocess_threads 9\n",
            "# TYPE codara_build_info gauge\ncodara_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        // Unknown figures are left out, not reported as 0.
        let text = Metrics::default().render(&stats, 0, &SelfUsage::default());
        assert!(!text.contains("process_"), "{text}");
        assert!(text.ends_with(&format!("codara_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
    }
}
