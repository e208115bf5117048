//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: incrementing
//! one costs nothing on the hot path, and rendering reads them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::Stats;

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

    /// The whole exposition, with the gauges of the moment.
    pub fn render(&self, stats: &Stats, ws_clients: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
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

        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("codara_running_tasks", "Tasks running now.", stats.running_tasks as f64);
        gauge("codara_max_tasks", "MAX_CONCURRENT_TASKS.", stats.max_tasks as f64);
        gauge("codara_websocket_clients", "Connected WebSocket clients.", ws_clients as f64);
        gauge("codara_cpu_usage_percent", "CPU usage of all cores, 0-100.", stats.cpu_percent);
        gauge("codara_memory_usage_percent", "Memory in use (total - available), percent.", stats.memory_usage_percent);
        gauge("codara_load_average_1m", "1-minute load average.", stats.load_average[0]);

        let name = "codara_task_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Duration of ended tasks.\n# TYPE {name} histogram");
        for (bound, bucket) in DURATION_BUCKETS.iter().zip(&self.duration_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.duration_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.duration_sum_ms) as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count {count}");
        out
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
        let text = m.render(&stats, 0);
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("codara_task_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("codara_task_duration_seconds_count 2\n"));
    }
}
