//! The API's errors, and the one place they become HTTP statuses and bodies.

use crate::tasks::registry::Rejection;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400 with this message.
    BadRequest(String),
    /// 403 `Invalid cluster secret` (compat).
    Forbidden,
    /// 404 with this message (`Task not found`, `Not found`).
    NotFound(&'static str),
    /// 405: the path exists, the method does not; `allow` lists the methods it takes.
    MethodNotAllowed { allow: &'static str },
    /// 413: the body is over the limit.
    TooLarge { limit: u64 },
    /// 503 with `Retry-After`.
    Rejected(Rejection),
    /// 500: something on this side broke.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::TooLarge { .. } => 413,
            ApiError::Rejected(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The JSON body: `{"error": ...}` plus, for refusals, what was over which limit.
    pub fn body(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ApiError::BadRequest(m) => json!({ "error": m }),
            ApiError::Forbidden => json!({ "error": "Invalid cluster secret" }),
            ApiError::NotFound(m) => json!({ "error": m }),
            ApiError::MethodNotAllowed { allow } => {
                json!({ "error": "Method not allowed", "allow": allow })
            }
            ApiError::TooLarge { limit } => {
                json!({ "error": format!("Request body too large (limit {limit} bytes)"), "limit": limit })
            }
            ApiError::Rejected(r) => match r {
                Rejection::ShuttingDown => {
                    json!({ "error": "Agent is shutting down", "reason": "shutdown" })
                }
                Rejection::MaxTasks { running, max } => json!({
                    "error": "Max concurrent tasks reached", "reason": "slots", "runningTasks": running, "maxTasks": max
                }),
                Rejection::Cpu { usage, limit } => json!({
                    "error": "Insufficient resources", "reason": "cpu", "resource": "cpu",
                    "usage": round2(*usage), "limit": limit
                }),
                Rejection::Memory { usage, limit } => json!({
                    "error": "Insufficient resources", "reason": "memory", "resource": "memory",
                    "usage": round2(*usage), "limit": limit
                }),
            },
            ApiError::Internal(m) => json!({ "error": m }),
        }
    }

    /// Extra headers: `Retry-After` on 503, `Allow` on 405, `Connection: close` on 413 (the
    /// body was not read).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::Rejected(r) => vec![("Retry-After", retry_after(r).to_string())],
            ApiError::MethodNotAllowed { allow } => vec![("Allow", allow.to_string())],
            ApiError::TooLarge { .. } => vec![("Connection", "close".to_string())],
            _ => Vec::new(),
        }
    }
}

/// Seconds a refused client should wait: a slot frees as soon as any task ends; load and
/// memory figures are resampled every second but move slowly; a drain takes a while.
pub fn retry_after(r: &Rejection) -> u32 {
    match r {
        Rejection::MaxTasks { .. } => 1,
        Rejection::Cpu { .. } | Rejection::Memory { .. } => 5,
        Rejection::ShuttingDown => 30,
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
