//! The `reaper` thread, started only when the agent is PID 1 (a container run without an init,
//! such as `docker run` without `--init`). PID 1 inherits every orphan in its namespace: a
//! daemon a task started with `setsid`, a grandchild killed with its group after the task's
//! main process ended. Nobody else reaps them, so without this thread they would stay zombies
//! for as long as the container lives.
//!
//! Every two seconds it lists the zombies whose parent is the agent and reaps those that are
//! not a task's main process: those belong to their task's waiter ([`crate::tasks::runner`]),
//! which keeps the zombie on purpose until it has killed the group. While a task is being
//! spawned (its pid not yet recorded) the round is skipped, so a task that exits at once is
//! never taken from its waiter.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::process::{waitpid, Pid, WaitOptions};

use crate::procfs::Stat;
use crate::tasks::registry::Registry;

const EVERY: Duration = Duration::from_secs(2);

pub struct Reaper {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Reaper {
    /// Starts the thread if this process is PID 1; otherwise orphans go to the real init.
    pub fn start_if_pid1(reg: Arc<Registry>) -> std::io::Result<Option<Reaper>> {
        if !rustix::process::getpid().is_init() {
            return Ok(None);
        }
        log::info!("running as PID 1: orphaned processes left by tasks are reaped every {} s", EVERY.as_secs());
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || run(&reg, &stop_rx))?;
        Ok(Some(Reaper { stop, thread }))
    }

    /// Reaps once more (orphans of the last tasks) and ends the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(reg: &Registry, stop: &Receiver<()>) {
    loop {
        let stopping = !matches!(stop.recv_timeout(EVERY), Err(RecvTimeoutError::Timeout));
        let n = reap_orphans(reg);
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
    // Zombies first, tasks second: a task's zombie seen here belongs to a task admitted
    // before the scan, so it is in the list below, with its pid or still spawning.
    let zombies = zombie_children(me);
    if zombies.is_empty() {
        return 0;
    }
    let mut tasks = HashSet::new();
    for task in reg.running_tasks() {
        match task.lock().record.pid {
            Some(pid) => tasks.insert(pid),
            None => return 0, // being spawned: try again next round
        };
    }
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
