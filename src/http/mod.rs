//! The HTTP API and the WebSocket upgrade, on one tiny_http server.
//!
//! A request goes: `server` (worker threads on `recv()`) → `router::route` → auth →
//! `handlers::*` → `Reply` → tiny_http response. `?follow=true`, uploads tiny_http has not
//! pre-read, and replies over `reply::SMALL_REPLY` get a thread of their own (at most
//! `server::MAX_LONG_REQUESTS`); `?wait=true`
//! holds none (the task's waiter answers it); a WebSocket upgrade is answered on the worker,
//! which then hands the socket to `ws::client`'s two threads.

pub mod auth;
pub mod error;
pub mod execute;
pub mod handlers;
pub mod output;
pub mod query;
pub mod reply;
pub mod router;
pub mod server;
pub mod task_list;
pub mod upgrade;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::protocol::Stats;
use crate::sync::Gauge;
use crate::tasks::registry::Registry;
use crate::ws::hub::HubHandle;

/// What every request handler may use.
pub struct Ctx {
    pub cfg: Arc<Config>,
    /// The tasks: admission, history, the running count.
    pub reg: Arc<Registry>,
    /// The node's CPU and memory figures (`/health`, `/stats`, admission reads them too).
    pub monitor: Arc<Monitor>,
    /// The `/metrics` counters.
    pub metrics: Arc<Metrics>,
    pub hub: HubHandle,
    pub started: Instant,
    /// Requests being served on a thread of their own (see `server::MAX_LONG_REQUESTS`).
    pub long_requests: Gauge,
}

impl Ctx {
    /// The stats object of `GET /stats` (and of `cluster_stats` packets).
    pub fn stats(&self) -> Stats {
        self.monitor.snapshot().to_stats(self.reg.running(), self.reg.max_tasks())
    }
}
