//! Live task output over WebSocket on the HTTP port (CONTRACT.md §3).
//!
//! Flow: task reader threads → events channel → `broadcaster` ([`hub`]) → one byte-bounded
//! queue per client → its `ws-N-tx` writer ([`client`]). Subscribes replay from the log
//! ([`replay`]).

pub mod client;
pub mod ctl;
pub mod hub;
pub mod queue;
pub mod replay;
