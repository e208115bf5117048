//! The soak's knobs, from the environment (`scripts/soak.sh` sets them for long runs).

use std::fmt;
use std::time::Duration;

pub struct Settings {
    /// `SOAK_SECONDS`: how long the workload runs (the drain and the checks come after).
    pub duration: Duration,
    /// `SOAK_SUBMITTERS`: threads submitting tasks, each one task at a time.
    pub submitters: usize,
    /// `SOAK_MAX_TASKS`: the agent's `MAX_CONCURRENT_TASKS`; fewer than the submitters, so the
    /// agent is kept full and answers some submissions with 503.
    pub max_tasks: usize,
    /// `SOAK_PING_MS`: the agent's `WS_PING_INTERVAL`. Short by default, so even a short run
    /// crosses many ping intervals.
    pub ping_ms: u64,
    /// `SOAK_PAUSE_MS`: how long the agent is stopped (SIGSTOP, then SIGCONT) once, at 40% of
    /// the run; 0 = never.
    pub pause: Duration,
    /// `SOAK_RSS_MIB`: the agent's resident memory must stay under this all along.
    pub rss_bound_mib: u64,
}

/// The bound on the agent's RSS. Its own baseline is a few MiB; the stalled client may hold
/// its 8 MiB queue, each client that keeps up at most a few 1 MiB messages in flight, and
/// the tasks' pipes and log writes some more: 64 MiB leaves room for all that, and not for
/// one task's whole output held in memory per client.
const RSS_BOUND_MIB: u64 = 64;

fn var(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
    let Ok(v) = std::env::var(name) else { return default };
    let n: u64 = v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"));
    assert!(range.contains(&n), "{name}={n} is out of range {range:?}");
    n
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            duration: Duration::from_secs(var("SOAK_SECONDS", 60, 30..=7 * 24 * 3600)),
            submitters: var("SOAK_SUBMITTERS", 5, 1..=8) as usize,
            max_tasks: var("SOAK_MAX_TASKS", 4, 1..=8) as usize,
            ping_ms: var("SOAK_PING_MS", 2000, 100..=3_600_000),
            pause: Duration::from_millis(var("SOAK_PAUSE_MS", 500, 0..=10_000)),
            rss_bound_mib: var("SOAK_RSS_MIB", RSS_BOUND_MIB, 8..=4096),
        }
    }

    pub fn ping(&self) -> Duration {
        Duration::from_millis(self.ping_ms)
    }

    /// Whether a client that answers no ping can stay for the whole run: the agent closes one
    /// after 3 ping intervals without a frame, so only when those outlast the run and its drain.
    pub fn silent_client_survives(&self) -> bool {
        self.ping() * 3 > self.duration + crate::run::DRAIN + Duration::from_secs(30)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} s, {} submitters, MAX_CONCURRENT_TASKS={}, WS_PING_INTERVAL={} ms, pause {} ms, RSS bound {} MiB",
            self.duration.as_secs(),
            self.submitters,
            self.max_tasks,
            self.ping_ms,
            self.pause.as_millis(),
            self.rss_bound_mib
        )
    }
}
