//! Which endpoint a method and path name: a pure function, testable without sockets.

use crate::http::error::ApiError;
use crate::http::query;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Stats,
    Metrics,
    Execute,
    ExecuteJob,
    Tasks,
    Task(u64),
    TaskOutput(u64),
    CancelTask(u64),
}

impl Route {
    /// Needs no secret (CONTRACT.md §2): `GET /health`, `GET /stats`, and `GET /metrics`
    /// unless `METRICS_REQUIRE_SECRET` is set.
    pub fn is_public(self, metrics_require_secret: bool) -> bool {
        matches!(self, Route::Health | Route::Stats) || (self == Route::Metrics && !metrics_require_secret)
    }
}

/// Routes a request. `Err` carries 404 (unknown path, or a task id that is not a number)
/// or 405 (known path, other method).
/// Like Express (the old agent), paths match without regard to case, and percent-escapes are
/// decoded first (`/task/%31` is task 1).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let path = query::decode_path(path).to_ascii_lowercase();
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(&path);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let (want, route): (&'static str, Result<Route, ApiError>) = match segs.as_slice() {
        ["health"] => ("GET", Ok(Route::Health)),
        ["stats"] => ("GET", Ok(Route::Stats)),
        ["metrics"] => ("GET", Ok(Route::Metrics)),
        ["execute"] => ("POST", Ok(Route::Execute)),
        ["execute-job"] => ("POST", Ok(Route::ExecuteJob)),
        ["tasks"] => ("GET", Ok(Route::Tasks)),
        ["task", id] => ("GET", task_id(id).map(Route::Task)),
        ["task", id, "output"] => ("GET", task_id(id).map(Route::TaskOutput)),
        ["task", id, "cancel"] => ("POST", task_id(id).map(Route::CancelTask)),
        _ => return Err(ApiError::NotFound("Not found")),
    };
    // HEAD is answered like GET (tiny_http drops the body).
    if method == want || (want == "GET" && method == "HEAD") {
        route
    } else {
        Err(ApiError::MethodNotAllowed { allow: want })
    }
}

fn task_id(s: &str) -> Result<u64, ApiError> {
    // Digits only: "+5", " 5" and "5.0" are not ids.
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::NotFound("Task not found"));
    }
    s.parse().map_err(|_| ApiError::NotFound("Task not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("GET", "/health/"), Ok(Route::Health));
        assert_eq!(route("POST", "/execute"), Ok(Route::Execute));
        assert_eq!(route("GET", "/task/12"), Ok(Route::Task(12)));
        assert_eq!(route("GET", "/task/%31%32"), Ok(Route::Task(12)));
        assert_eq!(route("GET", "/HEALTH"), Ok(Route::Health));
        assert_eq!(route("GET", "/task/12/output"), Ok(Route::TaskOutput(12)));
        assert_eq!(route("POST", "/task/12/cancel"), Ok(Route::CancelTask(12)));
        assert_eq!(route("GET", "/task/abc"), Err(ApiError::NotFound("Task not found")));
        assert_eq!(route("GET", "/task/99999999999999999999"), Err(ApiError::NotFound("Task not found")));
        assert_eq!(route("GET", "/nope"), Err(ApiError::NotFound("Not found")));
        assert_eq!(route("GET", "/"), Err(ApiError::NotFound("Not found")));
        assert_eq!(route("GET", "/execute"), Err(ApiError::MethodNotAllowed { allow: "POST" }));
        assert_eq!(route("DELETE", "/task/1"), Err(ApiError::MethodNotAllowed { allow: "GET" }));
    }
}
