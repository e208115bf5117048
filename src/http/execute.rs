//! Turning a `POST /execute` body into a [`TaskSpec`], with a clear 400 for anything off.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{MAX_CPUS, MAX_MEMORY_LIMIT, MAX_PIDS_LIMIT, MIN_CPUS, MIN_MEMORY_LIMIT};
use crate::http::error::ApiError;
use crate::protocol::TaskLimits;
use crate::tasks::mask;
use crate::tasks::task::TaskSpec;

/// Largest per-task `timeout`: 30 days in ms.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Parses a JSON object body. An empty body is `{}` (as Express's JSON parser gives).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("Request body must be a JSON object")),
        Err(e) => Err(bad(format!("Invalid JSON body: {e}"))),
    }
}

/// A string without NUL bytes (they cannot be passed to a process).
fn text<'a>(v: &'a Value, what: &str) -> Result<&'a str, ApiError> {
    let s = v.as_str().ok_or_else(|| bad(format!("{what} must be a string")))?;
    if s.contains('\0') {
        return Err(bad(format!("{what} must not contain NUL bytes")));
    }
    Ok(s)
}

/// The `POST /execute` body as a task. `default_cwd` is the agent's working directory.
pub fn parse_execute(body: &Map<String, Value>, default_cwd: &str) -> Result<TaskSpec, ApiError> {
    let command = match body.get("command") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(bad("Command is required")),
    };
    if command.contains('\0') {
        return Err(bad("command must not contain NUL bytes"));
    }
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| text(v, &format!("args[{i}]")).map(str::to_string))
            .collect::<Result<_, _>>()
            .map_err(|e| match e {
                ApiError::BadRequest(m) if m.ends_with("must be a string") => bad("args must be an array of strings"),
                other => other,
            })?,
        Some(_) => return Err(bad("args must be an array of strings")),
    };
    // An empty cwd is the agent's own, as the old agent's `cwd || process.cwd()` had it.
    let cwd = match body.get("cwd") {
        None | Some(Value::Null) => default_cwd.to_string(),
        Some(v) => match text(v, "cwd")? {
            "" => default_cwd.to_string(),
            s => s.to_string(),
        },
    };
    let env = parse_env(body.get("env"))?;
    let timeout_ms = parse_timeout(body.get("timeout"))?;
    let limits = parse_limits(body.get("limits"))?;
    let (secret_env, secret_names) = (BTreeMap::new(), Vec::new());
    Ok(TaskSpec { command, args, cwd, env, timeout_ms, job: None, limits, secret_env, secret_names })
}

/// `limits`: `{"memoryBytes": N, "cpus": F, "pids": N}`, each optional, 0 = none (over a
/// `TASK_*_LIMIT` default). Not yet merged with the defaults nor checked against the mode.
pub fn parse_limits(v: Option<&Value>) -> Result<TaskLimits, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(TaskLimits::default()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad("limits must be an object: {\"memoryBytes\": N, \"cpus\": F, \"pids\": N}")),
    };
    let mut l = TaskLimits::default();
    for (k, v) in obj {
        let off = |what: &str| bad(format!("limits.{k} must be {what} (0 = no limit)"));
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("memoryBytes", v) => {
                let n = v.as_u64().filter(|n| *n == 0 || (MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(n));
                l.memory_bytes =
                    Some(n.ok_or_else(|| off(&format!("a whole number of bytes, at least {MIN_MEMORY_LIMIT}")))?);
            }
            ("cpus", v) => {
                let n = v.as_f64().filter(|n| *n == 0.0 || (MIN_CPUS..=MAX_CPUS).contains(n));
                l.cpus = Some(n.ok_or_else(|| off(&format!("a number of CPUs from {MIN_CPUS} to {MAX_CPUS}")))?);
            }
            ("pids", v) => {
                let n = v.as_u64().filter(|n| *n <= MAX_PIDS_LIMIT);
                l.pids = Some(n.ok_or_else(|| off(&format!("a whole number of processes up to {MAX_PIDS_LIMIT}")))?);
            }
            _ => return Err(bad(format!("limits.{k} is not a limit (memoryBytes, cpus, pids)"))),
        }
    }
    Ok(l)
}

/// `secretEnv` of the body, and the `env` values `REDACT_VARS` (`redact`) names secret, into
/// the spec's secret variables. A value that cannot be masked (under 6 bytes, only
/// whitespace) is a 400 naming the variable. A name in `secretEnv` leaves `env`.
pub fn parse_secrets(body: &Map<String, Value>, spec: &mut TaskSpec, redact: &[String]) -> Result<(), ApiError> {
    let secret = parse_named_env(body.get("secretEnv"), "secretEnv")?;
    for (name, value) in &secret {
        mask::check_value(value).map_err(|why| bad(format!("secretEnv value of {name} {why}")))?;
    }
    let from_env = mask::split_env(&mut spec.env, redact).map_err(bad)?;
    for name in secret.keys() {
        spec.env.remove(name);
    }
    spec.secret_names = secret.keys().cloned().collect();
    spec.secret_env = from_env;
    spec.secret_env.extend(secret);
    Ok(())
}

/// The optional per-task `timeout` in ms (`0` = no limit).
pub fn parse_timeout(v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(ms) if ms <= MAX_TIMEOUT_MS => Ok(Some(ms)),
            _ => Err(bad(format!(
                "timeout must be a whole number of milliseconds from 0 to {MAX_TIMEOUT_MS} (0 = no limit)"
            ))),
        },
    }
}

/// `env`: an object of strings; names non-empty, without `=` or NUL.
pub fn parse_env(v: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    parse_named_env(v, "env")
}

/// An environment field (`env`, `secretEnv`) called `what` in messages.
fn parse_named_env(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad(format!("{what} must be an object of string values"))),
    };
    let mut env = BTreeMap::new();
    for (k, v) in obj {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(format!("{what} name {k:?} is not valid (empty, or contains '=' or NUL)")));
        }
        let Value::String(s) = v else {
            return Err(bad(format!("{what} must be an object of string values")));
        };
        if s.contains('\0') {
            return Err(bad(format!("{what} value of {k} must not contain NUL bytes")));
        }
        env.insert(k.clone(), s.clone());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<TaskSpec, ApiError> {
        parse_execute(v.as_object().unwrap(), "/here")
    }

    #[test]
    fn minimal_and_full() {
        let s = spec(json!({"command": "echo"})).unwrap();
        assert_eq!((s.command.as_str(), s.cwd.as_str(), s.args.len()), ("echo", "/here", 0));
        let s =
            spec(json!({"command": "echo", "args": ["a"], "cwd": "/tmp", "env": {"A": "1"}, "timeout": 5})).unwrap();
        assert_eq!(s.args, vec!["a"]);
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.timeout_ms, Some(5));
    }

    #[test]
    fn command_is_required() {
        for v in [json!({}), json!({"command": ""}), json!({"command": 5}), json!({"command": null})] {
            assert_eq!(spec(v), Err(ApiError::BadRequest("Command is required".into())));
        }
    }

    #[test]
    fn wrong_types() {
        for v in [
            json!({"command": "x", "args": "a"}),
            json!({"command": "x", "args": [1]}),
            json!({"command": "x", "env": []}),
            json!({"command": "x", "env": {"A": 1}}),
            json!({"command": "x", "env": {"A=B": "1"}}),
            json!({"command": "x", "cwd": 3}),
            json!({"command": "x", "timeout": -1}),
            json!({"command": "x", "timeout": "5"}),
            json!({"command": "x\u{0}"}),
            json!({"command": "x", "args": ["a\u{0}"]}),
            json!({"command": "x", "limits": 5}),
            json!({"command": "x", "limits": {"memoryBytes": "64M"}}),
            json!({"command": "x", "limits": {"memoryBytes": 100}}),
            json!({"command": "x", "limits": {"memoryBytes": -1}}),
            json!({"command": "x", "limits": {"cpus": "1"}}),
            json!({"command": "x", "limits": {"cpus": 0.001}}),
            json!({"command": "x", "limits": {"pids": 1.5}}),
            json!({"command": "x", "limits": {"pids": true}}),
            json!({"command": "x", "limits": {"disk": 1}}),
        ] {
            assert!(matches!(spec(v.clone()), Err(ApiError::BadRequest(_))), "{v}");
        }
    }

    #[test]
    fn limits_parse_and_merge_over_the_defaults() {
        let s = spec(json!({"command": "x", "limits": {"memoryBytes": 67108864, "cpus": 0.5, "pids": 0}})).unwrap();
        assert_eq!(s.limits, TaskLimits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(0) });
        let defaults = TaskLimits { memory_bytes: Some(1 << 30), cpus: None, pids: Some(100) };
        assert_eq!(s.limits.over(defaults), TaskLimits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: None });
        let none = spec(json!({"command": "x", "limits": {"cpus": null}})).unwrap();
        assert_eq!(none.limits.over(defaults), defaults);
    }

    #[test]
    fn bodies() {
        assert!(parse_object(b"").unwrap().is_empty());
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{").is_err());
        assert!(parse_object(b"\xff\xfe").is_err());
        let deep = "[".repeat(100_000);
        assert!(parse_object(deep.as_bytes()).is_err());
    }
}
