//! codara-agent: the build-node agent of a Codara CI/CD fleet.
//!
//! Threads and what they own (see README, "Architecture"):
//! - `http-N`: take HTTP requests ([`http::server`]); `http-long`: one per following request
//!   or large upload. (`http-accept`, `http-conn`: tiny_http's own.)
//! - `task-N`, `task-N-out`, `task-N-err`: one task's waiter and pipe readers ([`tasks`]),
//!   threads reused from [`tasks::pool`].
//! - `task-timer`: every task deadline ([`tasks::timer`]).
//! - `monitor`: CPU and memory samples ([`monitor`]).
//! - `discovery`: UDP announcements, stats and probe replies ([`discovery`]);
//!   `resolve-master`: a short-lived lookup of `MASTER_SERVER`.
//! - `broadcaster`: fans task events out to WebSocket clients ([`ws::hub`]);
//!   `ws-N-rx` / `ws-N-tx`: one client's reader and writer ([`ws::client`]);
//!   `ws-replay`: one per subscribe with an offset ([`ws::replay`]).
//! - `signals`: SIGTERM/SIGINT/SIGHUP → shutdown ([`agent`]).
//! - `log-writer`: writes log lines to stdout, so a stalled stdout blocks no one ([`logsink`]).
//! - `reaper`: only when the agent is PID 1, reaps orphans left by tasks ([`reaper`]).

pub mod agent;
pub mod alloc;
pub mod cgroup;
pub mod cidr;
pub mod cli_discover;
pub mod config;
pub mod contain;
pub mod discovery;
pub mod discovery_sig;
pub mod eintr;
pub mod events;
pub mod http;
pub mod logsink;
pub mod metrics;
pub mod monitor;
pub mod procfs;
pub mod protocol;
pub mod reaper;
pub mod request;
pub mod secret;
pub mod store;
pub mod sync;
pub mod task_files;
pub mod task_user;
pub mod tasks;
pub mod tls;
pub mod worker;
pub mod ws;
