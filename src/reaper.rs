//! The `reaper` thread, started only when orphans come to the agent: when it is PID 1 (a
//! container run without an init, such as `docker run` without `--init`), or a child
//! subreaper (isolation `process`). Then it inherits the orphans of its tasks: a daemon a task
//! started with `setsid`, a grandchild killed with its group after the task's main process
//! ended. Nobody else reaps them, so without this thread they would stay zombies for as long
//! as the agent lives.
//!
//! Every two seconds (every 200 ms while it keeps finding some) it lists the zombies whose parent is the agent and reaps those that are
//! not a task's main process: those belong to their task's waiter ([`crate::tasks::runner`]),
//! which keeps the zombie on purpose until it has killed the group. The registry's spawn gate
//! (held by each spawn until its pid is recorded) makes the list of tasks' pids complete, so
//! a task that exits at once is never taken from its waiter.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rustix::process::{waitpid, Pid, WaitOptions};

use crate::procfs::Stat;
use crate::tasks::registry::Registry;
use crate::worker::Worker;

const EVERY: Duration = Duration::from_secs(2);
/// The next round after one that found orphans.
const SOON: Duration = Duration::from_millis(200);

/// The `reaper` thread (see [`Reaper::start_if_orphans_come`]).
pub struct Reaper;

impl Reaper {
    /// Starts the thread if this process is PID 1, or a child subreaper; otherwise orphans go
    /// to the real init. Stopping it reaps once more (orphans of the last tasks) and ends the
    /// thread.
    pub fn start_if_orphans_come(reg: Arc<Registry>) -> std::io::Result<Option<Worker>> {
        let what = if rustix::process::getpid().is_init() {
            "running as PID 1"
        } else if reg.isolation().is_subreaper() {
            "a child subreaper"
        } else {
            return Ok(None);
        };
        log::info!("{what}: orphaned processes left by tasks are reaped every {} s", EVERY.as_secs());
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&reg, &stop_rx))?;
        Ok(Some(Worker::new(
            "reaper",
            move || {
                let _ = stop.send(());
            },
            vec![thread],
        )))
    }
}

fn run(reg: &Registry, stop: &Receiver<()>) {
    let mut wait = EVERY;
    loop {
        let stopping = !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout));
        let n = reap_orphans(reg);
        // Tasks that orphan processes keep doing so: look again soon while they do.
        wait = if n > 0 { SOON } else { EVERY };
        if n > 0 {
            log::debug!("reaped {n} orphaned process(es)");
        }
        if stopping {
            return;
        }
    }
}

/// Reaps the orphaned zombies whose parent is this process; returns how many.
fn reap_orphans(reg: &Registry) -> usize {
    let me = std::process::id();
    // Zombies first, tasks second: a task's child seen here was spawned before the scan, so
    // once the spawn gate is ours (no spawn between fork and its pid being recorded), its
    // pid is among the tasks'.
    let zombies = zombie_children(me);
    if zombies.is_empty() {
        return 0;
    }
    let tasks: HashSet<u32> = {
        let _paused = reg.pause_spawns();
        reg.running_tasks().iter().filter_map(|t| t.pid()).collect()
    };
    let mut reaped = 0;
    for pid in zombies.into_iter().filter(|p| !tasks.contains(p)) {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else { continue };
        if let Ok(Some(_)) = waitpid(Some(pid), WaitOptions::NOHANG) {
            reaped += 1;
        }
    }
    reaped
}

/// Pids in `/proc` whose state is zombie and whose parent is `parent`.
fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parent = parent.to_string();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Stat::read(pid).is_some_and(|s| s.field(3) == Some("Z") && s.field(4) == Some(&parent)))
        .collect()
}
