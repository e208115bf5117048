//! Messages to the broadcaster ([`super::hub`]) from clients, replays and the agent, and
//! the parsing of a client's request into one.

use crate::ws::queue::Queue;

/// Messages to the broadcaster from clients, replays and the agent.
pub enum Ctl {
    /// Sent before the handshake's answer, so the client misses no event of a task started
    /// right after it.
    Join {
        id: u64,
        queue: Queue,
        peer: String,
        /// `?subscribe=N,M&offset=O&errorOffset=E` from the URL: (task, offset, errorOffset).
        subscribe: Vec<(u64, u64, u64)>,
    },
    Leave {
        id: u64,
    },
    /// Narrow the client to this task, first replaying its output from these offsets.
    Subscribe {
        id: u64,
        task_id: u64,
        offset: u64,
        error_offset: u64,
    },
    Unsubscribe {
        id: u64,
        task_id: u64,
    },
    /// A replay has queued the task's output up to `cut` (stdout, stderr bytes), and its end
    /// when `ended`; held-back live events before that are dropped, the rest sent.
    ReplayDone {
        id: u64,
        task_id: u64,
        /// Which subscribe it answers: a later one (after an unsubscribe) has its own.
        generation: u64,
        cut: [u64; 2],
        ended: bool,
        /// The replay sent `started` itself.
        started: bool,
    },
    Stop,
}

/// Parses a client's text message into a [`Ctl`] for that client.
pub fn parse_request(text: &str) -> Result<Box<dyn FnOnce(u64) -> Ctl + Send>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let task_id =
        || v.get("taskId").and_then(|t| t.as_u64()).ok_or_else(|| "taskId must be a non-negative integer".to_string());
    match v.get("type").and_then(|t| t.as_str()) {
        Some("subscribe") => {
            let (task_id, offset) = (task_id()?, offset_or("offset", &v)?);
            let error_offset = offset_or("errorOffset", &v)?;
            Ok(Box::new(move |id| Ctl::Subscribe { id, task_id, offset, error_offset }))
        }
        Some("unsubscribe") => {
            let task_id = task_id()?;
            Ok(Box::new(move |id| Ctl::Unsubscribe { id, task_id }))
        }
        _ => Err("unknown message: expected {\"type\":\"subscribe\"|\"unsubscribe\",\"taskId\":N}".into()),
    }
}

fn offset_or(k: &str, v: &serde_json::Value) -> Result<u64, String> {
    match v.get(k) {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(o) => o.as_u64().ok_or_else(|| format!("{k} must be a non-negative integer")),
    }
}
