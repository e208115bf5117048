//! Tasks: admission and history ([`registry`]), the process and its group ([`runner`]), the
//! pipes ([`reader`]), the output log ([`output_log`]), and deadlines ([`timer`]). A task
//! comes in through [`launch`] only, and is stopped from outside through [`stop`]. The
//! services a task's life needs (store, timer, thread pool, events, monitor, metrics) are
//! the registry's own, private to this module: the layers above hold a `Registry` and call it.

pub mod job;
pub mod log_health;
pub mod mask;
pub mod output_log;
pub mod pool;
pub mod reader;
pub mod recovery;
pub mod registry;
pub mod runner;
pub mod task;
pub mod timer;

use std::sync::Arc;

use rustix::process::Signal;

use crate::tasks::registry::{Registry, Rejection};
use crate::tasks::task::{AlreadyEnded, Task, TaskSpec};

/// Admits a task (a free slot, the node's load, not shutting down) and starts it: the one way
/// in for a task. A refusal is counted and logged; a task that cannot start still ends
/// `failed` (it is admitted, so it has an id and a record).
pub fn launch(reg: &Arc<Registry>, spec: TaskSpec) -> Result<Arc<Task>, Rejection> {
    let task = reg.admit(spec).inspect_err(|r| refused(reg, r))?;
    runner::start(reg, &task);
    Ok(task)
}

/// Who stops a running task, and how.
pub enum Stop {
    /// `POST /task/:id/cancel`: it ends `cancelled`.
    Cancel,
    /// The agent shuts down: it ends `failed` with `why`; `hurry` (a second signal) sends
    /// SIGKILL at once instead of SIGTERM and SIGKILL after `KILL_GRACE`.
    Shutdown { why: String, hurry: bool },
}

/// Stops a running task's process group: SIGTERM now, SIGKILL after the grace (or SIGKILL
/// now, hurried). `Err` when it has already ended or is ending.
pub fn stop(reg: &Registry, task: &Arc<Task>, how: Stop) -> Result<(), AlreadyEnded> {
    match how {
        Stop::Cancel => {
            task.request_stop(true, None)?;
            reg.timer.kill_after_grace(task);
        }
        Stop::Shutdown { why, hurry } => {
            task.request_stop(false, Some(why))?;
            if hurry {
                task.signal_group(Signal::KILL);
            } else {
                reg.timer.kill_after_grace(task);
            }
        }
    }
    Ok(())
}

fn refused(reg: &Registry, r: &Rejection) {
    let m = &reg.metrics;
    crate::metrics::inc(match r {
        Rejection::ShuttingDown => &m.rejected_shutdown,
        Rejection::MaxTasks { .. } => &m.rejected_slots,
        Rejection::Cpu { .. } => &m.rejected_cpu,
        Rejection::Memory { .. } => &m.rejected_memory,
    });
    match r {
        Rejection::ShuttingDown => log::info!("refused a task: the agent is shutting down"),
        Rejection::MaxTasks { running, max } => {
            log::info!("refused a task: max concurrent tasks reached ({running}/{max})")
        }
        Rejection::Cpu { usage, limit } => {
            log::info!("refused a task: CPU usage {usage:.1}% is over MAX_CPU_PERCENT={limit}")
        }
        Rejection::Memory { usage, limit } => {
            log::info!("refused a task: memory usage {usage:.1}% is over MAX_MEMORY_PERCENT={limit}")
        }
    }
}
