//! Tasks: admission and history ([`registry`]), the process and its group ([`runner`]), the
//! pipes ([`reader`]), the output log ([`output_log`]), and deadlines ([`timer`]). A task
//! comes in through [`launch`] only.

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

use crate::tasks::registry::{Registry, Rejection};
use crate::tasks::task::{Task, TaskSpec};

/// Admits a task (a free slot, the node's load, not shutting down) and starts it: the one way
/// in for a task. A refusal is counted and logged; a task that cannot start still ends
/// `failed` (it is admitted, so it has an id and a record).
pub fn launch(reg: &Arc<Registry>, spec: TaskSpec) -> Result<Arc<Task>, Rejection> {
    let task = reg.admit(spec).inspect_err(|r| refused(reg, r))?;
    runner::start(reg, &task);
    Ok(task)
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
