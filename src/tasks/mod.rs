//! Tasks: admission and history ([`registry`]), the process and its group ([`runner`]), the
//! pipes ([`reader`]), the output log ([`output_log`]), and deadlines ([`timer`]).

pub mod job;
pub mod log_health;
pub mod output_log;
pub mod pool;
pub mod reader;
pub mod recovery;
pub mod registry;
pub mod runner;
pub mod task;
pub mod timer;
