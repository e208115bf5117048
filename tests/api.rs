//! CONTRACT.md §1 (configuration) and §2 (HTTP API), seen from outside: the real binary,
//! plain HTTP/1.1 on loopback.

mod common;

use common::{Agent, TempDir, SECRET};
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

const JSON_CT: (&str, &str) = ("Content-Type", "application/json");

fn auth() -> (&'static str, &'static str) {
    ("X-Cluster-Secret", SECRET)
}

/// POST a raw body with the secret.
fn post_bytes(a: &Agent, path: &str, body: &[u8]) -> common::Resp {
    a.request("POST", path, &[auth(), JSON_CT], body)
}

#[track_caller]
fn assert_error(r: &common::Resp, status: u16, msg: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"], msg, "body: {v}");
    assert!(
        r.header("content-type").is_some_and(|c| c.starts_with("application/json")),
        "content-type {:?}",
        r.header("content-type")
    );
}

/// 400 with a non-empty `error` string.
#[track_caller]
fn assert_400(r: &common::Resp, what: &str) {
    assert_eq!(r.status, 400, "{what}: body {}", r.text());
    let v = r.json();
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{what}: {v}");
}

fn cancel(a: &Agent, id: u64) -> common::Resp {
    a.request("POST", &format!("/task/{id}/cancel"), &[auth()], b"")
}

// ---------------------------------------------------------------------------
// /health and /stats
// ---------------------------------------------------------------------------

/// The host's uptime in seconds, from /proc/uptime.
fn host_uptime() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    s.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("odd /proc/uptime: {s:?}"))
}

#[test]
fn health_without_secret_has_exact_fields() {
    let spawned = Instant::now();
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.request("GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["agentUptime", "hostname", "isolation", "isolationLimits", "status", "uptime", "version"],
        "the README's /health fields: {v}"
    );
    let modes = ["cgroup-v2", "cgroup-hybrid", "cgroup-v1", "process"];
    assert!(v["isolation"].as_str().is_some_and(|m| modes.contains(&m)), "{v}");
    assert!(v["isolationLimits"].is_array(), "{v}");
    assert_eq!(v["status"], "healthy", "{v}");
    assert!(v["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
    assert!(v["uptime"].is_number(), "{v}");
    let host = host_uptime();
    let uptime = v["uptime"].as_f64().unwrap();
    assert!(uptime > 0.0, "host uptime must be positive: {v}");
    assert!((uptime - host).abs() < 60.0, "uptime {uptime} is not the host's uptime ({host} s in /proc/uptime): {v}");
    // `version` is the crate's version; `agentUptime` the agent's own age in whole seconds.
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    let age =
        |v: &serde_json::Value| v["agentUptime"].as_u64().unwrap_or_else(|| panic!("agentUptime not whole s: {v}"));
    assert!(age(&v) <= spawned.elapsed().as_secs() + 1, "agentUptime older than the agent: {v}");
    // It counts: wait (bounded) until it reaches 2 s, while the host's uptime stays the host's.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = a.request("GET", "/health", &[], b"").json();
        if age(&v) >= 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "agentUptime stuck below 2 s after 30 s: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(age(&v) <= spawned.elapsed().as_secs() + 1, "agentUptime older than the agent: {v}");
    assert!(v["uptime"].as_f64().unwrap() >= uptime, "host uptime went down: {v}");
    // A wrong secret does not matter on /health either.
    let r = a.request("GET", "/health", &[("X-Cluster-Secret", "wrong-wrong-wrong-wrong")], b"");
    assert_eq!(r.status, 200);
    a.assert_alive();
}

#[test]
fn stats_without_secret_has_fields_and_types() {
    let mut a = common::agent().env("MAX_CONCURRENT_TASKS", "3").start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.request("GET", "/stats", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for k in ["cpu", "memoryUsed", "memoryFree", "memoryTotal", "memoryUsagePercent", "uptime", "cpuPercent"] {
        assert!(v[k].is_number(), "{k} not a number: {v}");
    }
    for k in ["runningTasks", "maxTasks", "availableSlots"] {
        assert!(v[k].is_u64(), "{k} not an integer: {v}");
    }
    for k in ["memoryUsed", "memoryFree", "memoryTotal"] {
        assert!(v[k].is_u64(), "{k} not an integer byte count: {v}");
    }
    assert_eq!(v["maxTasks"], 3, "{v}");
    assert_eq!(v["runningTasks"], 0, "{v}");
    assert_eq!(v["availableSlots"], 3, "{v}");
    assert!(v["memoryTotal"].as_u64().unwrap() > 0);
    assert!(v["memoryUsed"].as_u64().unwrap() <= v["memoryTotal"].as_u64().unwrap(), "{v}");
    let mp = v["memoryUsagePercent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&mp), "{v}");
    let cp = v["cpuPercent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cp), "cpuPercent out of 0-100: {v}");
    let la = v["loadAverage"].as_array().unwrap_or_else(|| panic!("loadAverage not an array: {v}"));
    assert_eq!(la.len(), 3, "{v}");
    assert!(la.iter().all(|x| x.is_number() && x.as_f64().unwrap() >= 0.0), "{v}");
    // `cpu` is the 1-minute load average (compat), the same figure as loadAverage[0].
    let cpu = v["cpu"].as_f64().unwrap();
    assert!((cpu - la[0].as_f64().unwrap()).abs() < 0.5, "cpu should be the 1-min load average: {v}");
    // With a running task the counts move.
    let id = a.run("sleep", &["3201"]);
    let v = a.request("GET", "/stats", &[], b"").json();
    assert_eq!(v["runningTasks"], 1, "{v}");
    assert_eq!(v["availableSlots"], 2, "{v}");
    assert_eq!(cancel(&a, id).status, 200);
    a.wait_task(id);
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/execute"),
    ("POST", "/execute?wait=true"),
    ("POST", "/execute-job"),
    ("GET", "/tasks"),
    ("GET", "/tasks?status=running"),
    ("GET", "/task/1"),
    ("GET", "/task/abc"),
    ("POST", "/task/1/cancel"),
    ("GET", "/task/1/output"),
    ("GET", "/task/1/output?follow=true"),
    ("GET", "/nope"),
    ("POST", "/nope"),
    ("GET", "/"),
    ("DELETE", "/task/1"),
];

#[test]
fn missing_or_wrong_secret_is_403_on_every_protected_path() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let body = json!({"command": "echo", "args": ["x"]}).to_string();
    let wrong_same_len: String = SECRET.chars().rev().collect();
    let prefix = &SECRET[..SECRET.len() - 1];
    let longer = format!("{SECRET}x");
    let basic = format!("Basic {SECRET}");
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("X-Cluster-Secret", "wrong")],
        vec![("X-Cluster-Secret", "")],
        vec![("X-Cluster-Secret", &wrong_same_len)],
        vec![("X-Cluster-Secret", prefix)],
        vec![("X-Cluster-Secret", &longer)],
        vec![("Authorization", "Bearer wrong-wrong-wrong-wrong")],
        vec![("Authorization", "Bearer")],
        vec![("Authorization", SECRET)], // no "Bearer " scheme
        vec![("Authorization", &basic)],
    ];
    for (method, path) in PROTECTED {
        for hs in &variants {
            let mut h = hs.clone();
            h.push(JSON_CT);
            let b = if *method == "POST" { body.as_bytes() } else { b"" };
            let r = a.request(method, path, &h, b);
            assert_eq!(r.status, 403, "{method} {path} with {hs:?}: {}", r.text());
            assert_eq!(r.json(), json!({"error": "Invalid cluster secret"}), "{method} {path} with {hs:?}");
        }
    }
    // Nothing was started by any of those.
    let t = a.get("/tasks").json();
    assert_eq!(t["tasks"].as_array().map(Vec::len), Some(0), "{t}");
    a.assert_alive();
}

#[test]
fn wrong_method_on_public_path_without_secret_is_403() {
    // "Every path except GET /health, GET /stats needs the secret".
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for (m, p) in [("POST", "/health"), ("DELETE", "/stats"), ("PUT", "/health")] {
        let r = a.request(m, p, &[], b"");
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text());
        assert_eq!(r.json()["error"], "Invalid cluster secret");
    }
    a.assert_alive();
}

#[test]
fn both_secret_headers_are_accepted() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.request("GET", "/tasks", &[("X-Cluster-Secret", SECRET)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = format!("Bearer {SECRET}");
    let r = a.request("GET", "/tasks", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.request(
        "POST",
        "/execute?wait=true",
        &[("Authorization", &bearer), JSON_CT],
        json!({"command": "echo", "args": ["bearer"]}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "bearer\n");
    // Header names are case-insensitive in HTTP.
    let r = a.request("GET", "/tasks", &[("x-cluster-secret", SECRET)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    a.assert_alive();
}

#[test]
fn refusal_is_logged_at_warn_with_address_never_the_secret() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let tried = "tried-secret-Zq8vX1-do-not-log";
    let tried2 = "tried-bearer-Kp3wY7-do-not-log";
    let r = a.request("GET", "/tasks", &[("X-Cluster-Secret", tried)], b"");
    assert_eq!(r.status, 403);
    let r = a.request("POST", "/execute", &[("Authorization", &format!("Bearer {tried2}"))], b"{}");
    assert_eq!(r.status, 403);
    let r = a.request("GET", "/nope", &[], b"");
    assert_eq!(r.status, 403);
    // Logs arrive asynchronously; wait (bounded) for three WARN lines naming 127.0.0.1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = a.log_text();
        let warns: Vec<&str> = logs.lines().filter(|l| l.contains("WARN") && l.contains("127.0.0.1")).collect();
        if warns.len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "expected 3 WARN refusal lines with the remote address; logs:\n{logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = a.log_text();
    assert!(!logs.contains(tried), "tried secret leaked into logs:\n{logs}");
    assert!(!logs.contains(tried2), "tried secret leaked into logs:\n{logs}");
    assert!(!logs.contains(SECRET), "real secret in logs:\n{logs}");
    // Remote address includes the port (ip:port) in the refusal lines.
    assert!(
        logs.lines().any(|l| l.contains("WARN") && l.contains("127.0.0.1:")),
        "remote address (ip:port) not in WARN lines:\n{logs}"
    );
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// POST /execute
// ---------------------------------------------------------------------------

#[test]
fn execute_returns_task_id_and_started() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.post("/execute", &json!({"command": "echo", "args": ["hello"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    assert!(v["taskId"].is_u64(), "taskId must be an integer: {v}");
    assert_eq!(v["status"], "started", "{v}");
    let id = v["taskId"].as_u64().unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "completed");
    assert_eq!(t["stdout"], "hello\n");
    // A second task gets a larger id.
    let id2 = a.run("true", &[]);
    assert!(id2 > id, "{id2} <= {id}");
    a.wait_task(id2);
    a.assert_alive();
}

#[test]
fn execute_without_valid_command_is_400_command_is_required() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for body in [
        json!({}),
        json!({"args": ["x"]}),
        json!({"command": ""}),
        json!({"command": null}),
        json!({"command": 5}),
        json!({"command": true}),
        json!({"command": ["echo"]}),
        json!({"command": {"x": 1}}),
    ] {
        let r = a.post("/execute", &body);
        assert_error(&r, 400, "Command is required");
    }
    // The same for ?wait=true.
    let r = a.post("/execute?wait=true", &json!({"command": ""}));
    assert_error(&r, 400, "Command is required");
    let t = a.get("/tasks").json();
    assert_eq!(t["tasks"].as_array().map(Vec::len), Some(0), "nothing may have started: {t}");
    a.assert_alive();
}

#[test]
fn execute_bad_inputs_are_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"command\": \"echo\"".to_vec()),
        ("not JSON", b"command=echo".to_vec()),
        ("empty body", b"".to_vec()),
        ("JSON array", b"[\"echo\"]".to_vec()),
        ("JSON string", b"\"echo\"".to_vec()),
        ("trailing garbage", b"{\"command\":\"echo\"} xx".to_vec()),
        ("invalid UTF-8", b"{\"command\":\"ec\xff\xfeho\"}".to_vec()),
    ];
    for (what, body) in raw_cases {
        let r = post_bytes(&a, "/execute", &body);
        assert_400(&r, what);
    }
    let cases = vec![
        ("args is a string", json!({"command": "echo", "args": "x"})),
        ("args has a number", json!({"command": "echo", "args": ["x", 1]})),
        ("args has null", json!({"command": "echo", "args": [null]})),
        ("args is an object", json!({"command": "echo", "args": {"a": "b"}})),
        ("env is an array", json!({"command": "echo", "env": ["A=1"]})),
        ("env is a string", json!({"command": "echo", "env": "A=1"})),
        ("env value is a number", json!({"command": "echo", "env": {"A": 1}})),
        ("env value is null", json!({"command": "echo", "env": {"A": null}})),
        ("env value is an object", json!({"command": "echo", "env": {"A": {"b": "c"}}})),
        ("cwd is a number", json!({"command": "echo", "cwd": 5})),
        ("timeout negative", json!({"command": "echo", "timeout": -1})),
        ("timeout a string", json!({"command": "echo", "timeout": "100"})),
        ("timeout an object", json!({"command": "echo", "timeout": {}})),
        ("NUL in command", json!({"command": "ec\u{0}ho"})),
        ("NUL in args", json!({"command": "echo", "args": ["a\u{0}b"]})),
        ("NUL in env key", json!({"command": "echo", "env": {"A\u{0}B": "1"}})),
        ("NUL in env value", json!({"command": "echo", "env": {"A": "1\u{0}2"}})),
        ("NUL in cwd", json!({"command": "echo", "cwd": "/tmp\u{0}x"})),
    ];
    for (what, body) in cases {
        let r = a.post("/execute", &body);
        assert_400(&r, what);
        a.assert_alive();
    }
    let t = a.get("/tasks").json();
    assert_eq!(t["tasks"].as_array().map(Vec::len), Some(0), "nothing may have started: {t}");
    a.assert_alive();
}

#[test]
fn execute_nonexistent_program_is_started_then_failed() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.post("/execute", &json!({"command": "/no/such/program-xyz", "args": ["a"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "started");
    let id = r.json()["taskId"].as_u64().unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    assert!(t["exitCode"].is_null(), "{t}");
    assert!(t.get("exitCode").is_some(), "exitCode must be present (null): {t}");
    assert!(t["completedAt"].is_u64(), "{t}");
    // Not on PATH either.
    let t = a.run_wait(json!({"command": "no-such-program-xyz-123"}));
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    assert!(t["exitCode"].is_null(), "{t}");
    a.assert_alive();
}

#[test]
fn execute_nonexistent_cwd_is_started_then_failed() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.post("/execute", &json!({"command": "echo", "args": ["x"], "cwd": "/no/such/dir-xyz"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "started");
    let id = r.json()["taskId"].as_u64().unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");
    assert!(t.get("exitCode").is_some() && t["exitCode"].is_null(), "{t}");
    assert_eq!(t["stdout"], "", "{t}");
    a.assert_alive();
}

#[test]
fn execute_cwd_is_used() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let d = TempDir::new("cwd");
    let t = a.run_wait(json!({"command": "pwd", "cwd": d.path().to_str().unwrap()}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"].as_str().unwrap().trim_end(), std::fs::canonicalize(d.path()).unwrap().to_str().unwrap());
    assert_eq!(t["cwd"], d.path().to_str().unwrap());
    a.assert_alive();
}

#[test]
fn execute_wait_returns_final_task_object() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]}));
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["exitCode"], 3, "{t}");
    assert_eq!(t["stdout"], "out\n", "{t}");
    assert_eq!(t["stderr"], "err\n", "{t}");
    assert!(t["id"].is_u64());
    assert!(t["signal"].is_null(), "{t}");
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "sleep 0.5; echo late"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["exitCode"], 0, "{t}");
    assert_eq!(t["stdout"], "late\n", "{t}");
    // Same object as GET /task/:id afterwards.
    let g = a.get(&format!("/task/{}", t["id"])).json();
    assert_eq!(g["status"], t["status"]);
    assert_eq!(g["stdout"], t["stdout"]);
    assert_eq!(g["completedAt"], t["completedAt"]);
    // wait=false behaves as without it.
    let r = a.post("/execute?wait=false", &json!({"command": "true"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "started");
    a.wait_task(r.json()["taskId"].as_u64().unwrap());
    a.assert_alive();
}

#[test]
fn task_killed_by_signal_is_failed_with_signal_name() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "kill -KILL $$"]}));
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["signal"], "SIGKILL", "{t}");
    assert!(t["exitCode"].is_null(), "{t}");
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// GET /task/:id, GET /tasks
// ---------------------------------------------------------------------------

#[test]
fn task_object_fields_while_running_and_after() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let d = TempDir::new("taskcwd");
    let body = json!({
        "command": "sh",
        "args": ["-c", "echo go; echo warn >&2; sleep 2; echo end"],
        "cwd": d.path().to_str().unwrap(),
        "env": {"FOO": "bar"},
    });
    let r = a.post("/execute", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    let t = a.get(&format!("/task/{id}")).json();
    assert_eq!(t["id"], id, "{t}");
    assert_eq!(t["command"], "sh", "{t}");
    assert_eq!(t["args"], body["args"], "{t}");
    assert_eq!(t["cwd"], d.path().to_str().unwrap(), "{t}");
    assert_eq!(t["env"], json!({"FOO": "bar"}), "{t}");
    assert_eq!(t["status"], "running", "{t}");
    assert!(t["startedAt"].is_u64(), "{t}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let started = t["startedAt"].as_u64().unwrap();
    assert!(started <= now_ms && now_ms - started < 120_000, "startedAt not ms since epoch: {t}");
    assert!(t["pid"].is_u64(), "{t}");
    let t = a.wait_task(id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["exitCode"], 0, "{t}");
    assert!(t.get("signal").is_some() && t["signal"].is_null(), "{t}");
    assert_eq!(t["stdout"], "go\nend\n", "{t}");
    assert_eq!(t["stderr"], "warn\n", "{t}");
    assert!(t["completedAt"].is_u64(), "{t}");
    assert!(t["duration"].is_u64(), "{t}");
    let (s, c, dur) =
        (t["startedAt"].as_u64().unwrap(), t["completedAt"].as_u64().unwrap(), t["duration"].as_u64().unwrap());
    assert!(c >= s, "{t}");
    assert!(dur >= 1000, "task slept 2 s, duration {dur}: {t}");
    assert!(dur.abs_diff(c - s) <= 1000, "duration far from completedAt - startedAt: {t}");
    assert_eq!(t["timedOut"], false, "{t}");
    assert_eq!(t["stdoutTruncated"], false, "{t}");
    assert_eq!(t["stderrTruncated"], false, "{t}");
    assert!(t["pid"].is_u64(), "{t}");
    assert!(t.get("error").is_none() || t["error"].is_null(), "no error on a normal run: {t}");
    a.assert_alive();
}

#[test]
fn unknown_or_non_numeric_task_is_404() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for p in [
        "/task/999999",
        "/task/0",
        "/task/abc",
        "/task/-1",
        "/task/1.5",
        "/task/99999999999999999999999999",
        "/task/%00",
        "/task/999999/output",
        "/task/abc/output",
    ] {
        let r = a.get(p);
        assert_eq!(r.status, 404, "{p}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "Task not found"}), "{p}");
    }
    a.assert_alive();
}

#[test]
fn tasks_list_newest_first_without_output() {
    let mut a = common::agent().env("MAX_CONCURRENT_TASKS", "5").start();
    let _logs_a = common::logs_on_panic(&a);
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = a.run_wait(json!({"command": "echo", "args": [format!("n{i}")]}));
        ids.push(t["id"].as_u64().unwrap());
    }
    let r = a.get("/tasks");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["running"], 0, "{v}");
    assert_eq!(v["capacity"], 5, "capacity should be MAX_CONCURRENT_TASKS: {v}");
    let tasks = v["tasks"].as_array().unwrap_or_else(|| panic!("{v}"));
    let got: Vec<u64> = tasks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(got, want, "newest first");
    for t in tasks {
        assert!(t.get("stdout").is_none(), "list item has stdout: {t}");
        assert!(t.get("stderr").is_none(), "list item has stderr: {t}");
        for k in ["id", "command", "args", "cwd", "env", "status", "startedAt", "exitCode", "completedAt", "duration"] {
            assert!(t.get(k).is_some(), "list item lacks {k}: {t}");
        }
        assert_eq!(t["status"], "completed");
    }
    a.assert_alive();
}

#[test]
fn tasks_filter_by_status_and_limit() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let done1 = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    let done2 = a.run_wait(json!({"command": "false"}))["id"].as_u64().unwrap();
    let run1 = a.run("sleep", &["3202"]);
    let run2 = a.run("sleep", &["3203"]);
    let done3 = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();

    let v = a.get("/tasks").json();
    assert_eq!(v["running"], 2, "{v}");
    assert_eq!(v["capacity"], 4, "{v}");
    let all: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(all, vec![done3, run2, run1, done2, done1], "{v}");

    let v = a.get("/tasks?status=running").json();
    let got: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![run2, run1], "{v}");
    assert!(v["tasks"].as_array().unwrap().iter().all(|t| t["status"] == "running"));
    assert_eq!(v["running"], 2, "{v}");

    let v = a.get("/tasks?status=failed").json();
    let got: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![done2], "{v}");

    let v = a.get("/tasks?limit=2").json();
    let got: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![done3, run2], "{v}");

    let v = a.get("/tasks?status=completed&limit=1").json();
    let got: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![done3], "{v}");

    // A limit larger than the history is fine.
    let v = a.get("/tasks?limit=1000").json();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 5, "{v}");

    for id in [run1, run2] {
        assert_eq!(cancel(&a, id).status, 200);
        a.wait_task(id);
    }
    a.assert_alive();
}

#[test]
fn tasks_bad_filter_values_are_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let done = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    const LIMIT: &str = "limit must be a non-negative integer";
    const STATUS: &str = "status must be one of running, completed, failed, cancelled";
    for (q, msg) in [
        ("?limit=abc", LIMIT),
        ("?limit=-1", LIMIT),
        ("?limit=1.5", LIMIT),
        ("?limit=99999999999999999999999", LIMIT),
        ("?status=bogus", STATUS),
        ("?status=RUNNING", STATUS),
    ] {
        assert_error(&a.get(&format!("/tasks{q}")), 400, msg);
    }
    // Empty values are no filter; limit=0 is an empty list.
    for (q, want) in [("?limit=", vec![done]), ("?status=", vec![done]), ("?limit=0", vec![])] {
        let v = a.get(&format!("/tasks{q}")).json();
        let ids: Vec<u64> = v["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, want, "{q}: {v}");
    }
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// POST /task/:id/cancel
// ---------------------------------------------------------------------------

#[test]
fn cancel_running_task_then_cannot_cancel_again() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3204"]);
    let r = cancel(&a, id);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "Task cancelled"}));
    let t = a.wait_task(id);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert!(t["completedAt"].is_u64(), "{t}");
    assert!(t["duration"].is_u64(), "{t}");
    // It stays cancelled once its process is gone (the old agent overwrote it with `failed`
    // when the exit came in).
    assert!(common::wait_gone("sleep 3204", Duration::from_secs(10)), "the cancelled task's process lives on");
    let t = a.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "cancelled", "{t}");
    let listed = a.get("/tasks").json();
    assert_eq!(listed["tasks"][0]["status"], "cancelled", "{listed}");
    // Again: it has ended.
    let r = cancel(&a, id);
    assert_error(&r, 400, "Task cannot be cancelled");
    // A completed task cannot be cancelled either.
    let done = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert_error(&cancel(&a, done), 400, "Task cannot be cancelled");
    assert_eq!(a.get(&format!("/task/{done}")).json()["status"], "completed");
    // Unknown and non-numeric ids.
    assert_error(&cancel(&a, 999_999), 404, "Task not found");
    let r = a.request("POST", "/task/abc/cancel", &[auth()], b"");
    assert_error(&r, 404, "Task not found");
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// GET /task/:id/output
// ---------------------------------------------------------------------------

#[test]
fn output_is_text_interleaved_and_per_stream() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({
        "command": "sh",
        "args": ["-c", "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c; sleep 0.3; echo d >&2"],
    }));
    assert_eq!(t["status"], "completed", "{t}");
    let id = t["id"].as_u64().unwrap();
    let r = a.get(&format!("/task/{id}/output"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.headers);
    assert_eq!(r.text(), "a\nb\nc\nd\n");
    let r = a.get(&format!("/task/{id}/output?stream=stdout"));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    assert_eq!(r.text(), "a\nc\n");
    let r = a.get(&format!("/task/{id}/output?stream=stderr"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b\nd\n");
    // Binary-ish and empty output.
    let t = a.run_wait(json!({"command": "true"}));
    let r = a.get(&format!("/task/{}/output", t["id"]));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "");
    a.assert_alive();
}

#[test]
fn output_follow_streams_live_and_ends_with_task() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "echo first; sleep 3; echo second"]);
    let mut s = common::raw_connect(&a, Duration::from_secs(30));
    let req = format!(
        "GET /task/{id}/output?follow=true HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read incrementally until "first" shows up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while !String::from_utf8_lossy(&raw).contains("first\n") {
        assert!(Instant::now() < deadline, "no live output; got {:?}", String::from_utf8_lossy(&raw));
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed before output: {:?}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let seen_first_at = Instant::now();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&raw));
    // At that moment the task is still running: the line came live, not at the end.
    let t = a.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "running", "first line should arrive while the task runs: {t}");
    assert!(!String::from_utf8_lossy(&raw).contains("second"));
    // Then the response ends when the task ends.
    let (rest, closed) = common::read_until_close(&mut s, Duration::from_secs(30));
    raw.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let chunked = text.to_ascii_lowercase().contains("transfer-encoding: chunked");
    assert!(closed || (chunked && text.ends_with("0\r\n\r\n")), "response did not end: {text:?}");
    assert!(seen_first_at.elapsed() < Duration::from_secs(30));
    let r = common::read_response(&mut BufReader::new(std::io::Cursor::new(raw)));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.headers);
    assert_eq!(r.text(), "first\nsecond\n");
    let t = a.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "completed", "{t}");
    // follow on an ended task returns the whole output and ends at once.
    let r = a.get(&format!("/task/{id}/output?follow=true"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first\nsecond\n");
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Routing errors and body limit
// ---------------------------------------------------------------------------

#[test]
fn unknown_path_with_secret_is_404_not_found() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for (m, p) in [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/task"),
        ("GET", "/task/1/nope"),
        ("GET", "/tasks/x"),
        ("GET", "/"),
    ] {
        let r = a.request(m, p, &[auth()], b"");
        assert_eq!(r.status, 404, "{m} {p}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "Not found"}), "{m} {p}");
    }
    a.assert_alive();
}

#[test]
fn known_path_wrong_method_is_405() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    let cases = [
        ("GET", "/execute".to_string(), "POST"),
        ("PUT", "/execute".to_string(), "POST"),
        ("DELETE", format!("/task/{id}"), "GET"),
        ("POST", format!("/task/{id}"), "GET"),
        ("GET", format!("/task/{id}/cancel"), "POST"),
        ("POST", format!("/task/{id}/output"), "GET"),
        ("POST", "/tasks".to_string(), "GET"),
        ("POST", "/health".to_string(), "GET"),
        ("POST", "/stats".to_string(), "GET"),
    ];
    for (m, p, allow) in cases {
        let r = a.request(m, &p, &[auth()], b"");
        assert_eq!(r.status, 405, "{m} {p}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "Method not allowed", "allow": allow}), "{m} {p}");
        assert_eq!(r.header("allow"), Some(allow), "{m} {p}: {:?}", r.headers);
    }
    // DELETE did not delete anything.
    assert_eq!(a.get(&format!("/task/{id}")).status, 200);
    a.assert_alive();
}

#[test]
fn body_over_one_mib_is_413() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let big = format!("{{\"command\":\"echo\",\"args\":[\"{}\"]}}", "x".repeat(2 * 1024 * 1024));
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let (r, raw) = common::send_raw(&a, head.as_bytes(), big.into_bytes(), Duration::from_secs(30));
    let r = r.unwrap_or_else(|| panic!("no response to a 2 MiB body: {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(r.status, 413, "{}", r.text());
    let body = json!({"error": "Request body too large (limit 1048576 bytes)", "limit": 1048576});
    assert_eq!(r.json(), body, "413 body");
    let t = a.get("/tasks").json();
    assert_eq!(t["tasks"].as_array().map(Vec::len), Some(0), "{t}");
    // Just under 1 MiB is accepted.
    let ok = json!({"command": "true", "args": ["y".repeat(1024 * 1024 - 100)]}).to_string();
    assert!(ok.len() <= 1024 * 1024);
    let r = post_bytes(&a, "/execute?wait=true", ok.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Admission: 503s
// ---------------------------------------------------------------------------

#[test]
fn max_concurrent_tasks_is_503_with_retry_after() {
    let mut a = common::agent().env("MAX_CONCURRENT_TASKS", "1").start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3205"]);
    let r = a.post("/execute", &json!({"command": "echo", "args": ["x"]}));
    let slots = json!({"error": "Max concurrent tasks reached", "reason": "slots", "runningTasks": 1, "maxTasks": 1});
    assert_error_503(&r, &slots, "1");
    // ?wait=true is refused the same way.
    let r = a.post("/execute?wait=true", &json!({"command": "true"}));
    assert_error_503(&r, &slots, "1");
    assert_eq!(a.get("/tasks").json()["tasks"].as_array().unwrap().len(), 1);
    // After cancelling, a slot is free again.
    assert_eq!(cancel(&a, id).status, 200);
    a.wait_task(id);
    let t = a.run_wait(json!({"command": "echo", "args": ["again"]}));
    assert_eq!(t["stdout"], "again\n");
    a.assert_alive();
}

/// A 503 with exactly this body and this `Retry-After`.
#[track_caller]
fn assert_error_503(r: &common::Resp, body: &serde_json::Value, retry_after: &str) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(&r.json(), body, "503 body");
    assert_eq!(r.header("retry-after"), Some(retry_after), "Retry-After of {body}: {:?}", r.headers);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
}

/// An "Insufficient resources" refusal for `resource` (`cpu` or `memory`) with `limit`: the
/// README's `resource`, `usage` and `limit` fields (and `reason`), `Retry-After: 5`.
#[track_caller]
fn assert_insufficient(r: &common::Resp, resource: &str, limit: u64) -> f64 {
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    let usage = v["usage"].as_f64().unwrap_or_else(|| panic!("no numeric usage: {v}"));
    assert!(usage > limit as f64 && usage <= 100.0, "usage {usage} should be over the limit {limit}: {v}");
    let want = json!({"error": "Insufficient resources", "reason": resource, "resource": resource, "usage": usage, "limit": limit});
    assert_error_503(r, &want, "5");
    usage
}

#[test]
fn memory_over_limit_is_503_insufficient_resources() {
    let mut a = common::agent().env("MAX_MEMORY_PERCENT", "1").start();
    let _logs_a = common::logs_on_panic(&a);
    let st = a.request("GET", "/stats", &[], b"").json();
    let in_use = st["memoryUsagePercent"].as_f64().unwrap();
    assert!(in_use > 1.0, "precondition: memory in use > 1%: {st}");
    let r = a.post("/execute", &json!({"command": "echo", "args": ["x"]}));
    let usage = assert_insufficient(&r, "memory", 1);
    // The figure is the one /stats reports (give or take a resample).
    assert!((usage - in_use).abs() < 10.0, "usage {usage} vs memoryUsagePercent {in_use}");
    let r = a.post("/execute?wait=true", &json!({"command": "true"}));
    assert_insufficient(&r, "memory", 1);
    assert_eq!(a.get("/tasks").json()["tasks"].as_array().unwrap().len(), 0);
    let log = a.wait_log("is over MAX_MEMORY_PERCENT=1", Duration::from_secs(10));
    assert!(log.contains("refused a task: memory usage"), "no log line for the refusal:\n{log}");
    a.assert_alive();
}

/// Spawns busy loops on every core (killed on drop, by pid).
struct Burners(Vec<std::process::Child>);

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `n` busy loops (killed on drop).
fn burners(n: usize) -> Burners {
    Burners(
        (0..n)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    )
}

/// Posts `true` until the agent refuses it (20 s at most); the refusal. Tasks admitted
/// meanwhile are waited for, so they cannot hold a slot.
#[track_caller]
fn first_refusal(a: &Agent, what: &str) -> common::Resp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = a.post("/execute?wait=true", &json!({"command": "true"}));
        if r.status == 503 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 within 20 s with {what}; last: {} {}; stats {}",
            r.status,
            r.text(),
            a.request("GET", "/stats", &[], b"").text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn cpu_over_limit_is_503_insufficient_resources() {
    let mut a = common::agent().env("MAX_CPU_PERCENT", "50").start();
    let _logs_a = common::logs_on_panic(&a);
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let busy = burners(n);
    // CPU usage is sampled; allow (bounded) time for it to climb above 50%.
    let r = first_refusal(&a, "all cores busy and MAX_CPU_PERCENT=50");
    assert_insufficient(&r, "cpu", 50);
    drop(busy);
    a.assert_alive();
}

/// MAX_CPU_PERCENT=1: one busy loop is over 1% of any machine with fewer than 100 cores. The
/// exact body, and the log line.
#[test]
fn cpu_over_one_percent_is_refused_with_the_figure() {
    let mut a = common::agent().env("MAX_CPU_PERCENT", "1").start();
    let _logs_a = common::logs_on_panic(&a);
    let busy = burners(1);
    let r = first_refusal(&a, "a busy loop and MAX_CPU_PERCENT=1");
    let usage = assert_insufficient(&r, "cpu", 1);
    let log = a.wait_log("is over MAX_CPU_PERCENT=1", Duration::from_secs(10));
    assert!(log.contains("refused a task: CPU usage"), "no log line for the refusal (usage {usage}):\n{log}");
    drop(busy);
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Output cap, timeouts
// ---------------------------------------------------------------------------

#[test]
fn max_output_bytes_keeps_the_tail() {
    let mut a = common::agent().env("MAX_OUTPUT_BYTES", "100").start();
    let _logs_a = common::logs_on_panic(&a);
    // 100 lines of 10 bytes: "000000000\n" … "000000099\n".
    let script = "i=0; while [ $i -lt 100 ]; do printf '%09d\\n' $i; i=$((i+1)); done";
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script]}));
    assert_eq!(t["status"], "completed", "{t}");
    let want: String = (90..100).map(|i| format!("{i:09}\n")).collect();
    assert_eq!(t["stdout"], want, "{t}");
    assert_eq!(t["stdoutTruncated"], true, "{t}");
    assert_eq!(t["stderrTruncated"], false, "{t}");
    // The log keeps the whole output.
    let r = a.get(&format!("/task/{}/output?stream=stdout", t["id"]));
    let all: String = (0..100).map(|i| format!("{i:09}\n")).collect();
    assert_eq!(r.text(), all);
    // Exactly at the cap: not truncated.
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "printf '%0100d' 0"]}));
    assert_eq!(t["stdout"].as_str().unwrap().len(), 100, "{t}");
    assert_eq!(t["stdoutTruncated"], false, "{t}");
    a.assert_alive();
}

#[test]
fn per_task_timeout_kills_with_sigterm() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let r = a.post("/execute", &json!({"command": "sleep", "args": ["3206"], "timeout": 300}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["timedOut"], true, "{t}");
    assert_eq!(t["signal"], "SIGTERM", "{t}");
    assert!(t["exitCode"].is_null(), "{t}");
    assert!(common::wait_gone("sleep 3206", Duration::from_secs(10)));
    // A task that ends in time is not marked.
    let t = a.run_wait(json!({"command": "true", "timeout": 60000}));
    assert_eq!(t["status"], "completed");
    assert_eq!(t["timedOut"], false);
    a.assert_alive();
}

#[test]
fn task_timeout_env_kills_with_sigterm() {
    let mut a = common::agent().env("TASK_TIMEOUT", "300").start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3207"]);
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["timedOut"], true, "{t}");
    assert_eq!(t["signal"], "SIGTERM", "{t}");
    assert!(common::wait_gone("sleep 3207", Duration::from_secs(10)));
    // The per-task timeout overrides it (here: longer).
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "sleep 1; echo ok"], "timeout": 60000}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "ok\n");
    a.assert_alive();
}

#[test]
fn task_timeout_zero_means_no_limit() {
    let mut a = common::agent().env("TASK_TIMEOUT", "0").start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "sleep 1; echo ok"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["timedOut"], false, "{t}");
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[test]
fn task_ids_grow_across_restart_and_history_survives() {
    let data = TempDir::new("restart");
    let mut a = common::agent().data_dir(data.path()).start();
    let _logs_a = common::logs_on_panic(&a);
    let t1 = a.run_wait(json!({"command": "echo", "args": ["one"]}));
    let t2 = a.run_wait(json!({"command": "sh", "args": ["-c", "echo two; exit 2"]}));
    let (id1, id2) = (t1["id"].as_u64().unwrap(), t2["id"].as_u64().unwrap());
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(30)).expect("agent exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}; logs:\n{}", a.log_text());
    drop(a);

    let mut b = common::agent().data_dir(data.path()).start();

    let _logs_b = common::logs_on_panic(&b);
    let t = b.get(&format!("/task/{id1}")).json();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "one\n", "{t}");
    let t = b.get(&format!("/task/{id2}")).json();
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["exitCode"], 2, "{t}");
    let r = b.get(&format!("/task/{id1}/output"));
    assert_eq!(r.text(), "one\n");
    let list: Vec<u64> =
        b.get("/tasks").json()["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(list, vec![id2, id1]);
    let id3 = b.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert!(id3 > id2, "id reused or went down after restart: {id3} <= {id2}");
    b.assert_alive();
}

#[test]
fn task_ids_never_reused_after_agent_is_killed() {
    let data = TempDir::new("restart-kill");
    let mut a = common::agent().data_dir(data.path()).start();
    let _logs_a = common::logs_on_panic(&a);
    let id1 = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    let id2 = a.run("sh", &["-c", "echo started; sleep 3208"]);
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).expect("agent killed");
    drop(a);
    common::kill_matching("sleep 3208");

    let mut b = common::agent().data_dir(data.path()).start();

    let _logs_b = common::logs_on_panic(&b);
    let id3 = b.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert!(id3 > id2 && id2 > id1, "ids {id1} {id2} {id3}");
    assert_eq!(b.get(&format!("/task/{id1}")).status, 200);
    b.assert_alive();
}

// ---------------------------------------------------------------------------
// Configuration (§1): the binary run directly
// ---------------------------------------------------------------------------

#[test]
fn bad_config_values_exit_nonzero_naming_the_variable() {
    let cases: &[(&str, &str, bool)] = &[
        // (variable, value, the value must appear in the line)
        ("MAX_CPU_PERCENT", "abc", true),
        ("MAX_CPU_PERCENT", "0", true),
        ("MAX_CPU_PERCENT", "101", true),
        ("MAX_MEMORY_PERCENT", "abc", true),
        ("MAX_MEMORY_PERCENT", "150", true),
        ("CLUSTER_PORT", "70000", true),
        ("CLUSTER_PORT", "http", true),
        ("DISCOVERY_PORT", "-5", true),
        ("MAX_CONCURRENT_TASKS", "many", true),
        ("TASK_TIMEOUT", "-1", true),
        ("TASK_TIMEOUT", "10s", true),
        ("KILL_GRACE", "x", true),
        ("MAX_OUTPUT_BYTES", "lots", true),
        ("DISCOVERY_ENABLED", "maybe", true),
        ("BIND_ADDRESS", "not-an-ip", true),
        // Secrets: the value need not be echoed.
        ("CLUSTER_SECRET", "short", false),
        ("CLUSTER_SECRET", "your-cluster-secret-key", false),
    ];
    let mut failures = Vec::new();
    for (var, val, need_val) in cases {
        let dir = TempDir::new("badcfg");
        let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
        cmd.env(var, val);
        let out = common::run_binary(cmd, Duration::from_secs(20));
        let Some(st) = out.status else {
            failures.push(format!("{var}={val}: still running after 20 s (started anyway?); stdout {:?}", out.stdout));
            continue;
        };
        if st.code() != Some(2) {
            failures.push(format!("{var}={val}: exit {st:?}, want exit code 2; stderr {:?}", out.stderr));
            continue;
        }
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != 1 {
            failures.push(format!("{var}={val}: want one line on stderr, got {:?}", out.stderr));
            continue;
        }
        if !lines[0].contains(var) || (*need_val && !lines[0].contains(val)) {
            failures.push(format!("{var}={val}: line does not name the variable/value: {:?}", lines[0]));
        }
        if out.stdout.contains("listening on") {
            failures.push(format!("{var}={val}: the agent started listening: {:?}", out.stdout));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A setting whose value is not UTF-8 is an error naming it, never a silent default (for
/// DISCOVERY_ENABLED the default would be broadcasting; for CLUSTER_SECRET a generated one).
#[test]
fn non_utf8_setting_exits_2_naming_the_variable() {
    use std::os::unix::ffi::OsStrExt;
    for var in ["DISCOVERY_ENABLED", "CLUSTER_SECRET", "CLUSTER_PORT", "DATA_DIR"] {
        let dir = TempDir::new("nonutf8");
        let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
        cmd.env(var, std::ffi::OsStr::from_bytes(b"false\xa0-0123456789abcdef"));
        let out = common::run_binary(cmd, Duration::from_secs(20));
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{var}: {out:?}");
        assert!(out.stderr.contains(var) && out.stderr.contains("not valid UTF-8"), "{var}: {out:?}");
        assert!(!out.stdout.contains("listening on"), "{var}: {out:?}");
    }
    // A variable the agent does not read may hold any bytes.
    let dir = TempDir::new("nonutf8-other");
    let data = dir.path().join("data");
    let mut cmd = common::base_command(dir.path(), &data);
    cmd.env("SOME_OTHER_VARIABLE", std::ffi::OsStr::from_bytes(b"\xff\xfe"));
    let a = common::spawn_agent(cmd, dir, data);
    assert!(a.health_ok());
}

#[test]
fn secret_is_generated_stored_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("gensecret");
    let data = dir.path().join("data");
    let cwd = TempDir::new("gensecret-cwd");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.env_remove("CLUSTER_SECRET");
    let mut a = common::spawn_agent(cmd, cwd, data.clone());
    let _logs_a = common::logs_on_panic(&a);
    let file = data.join("cluster-secret");
    let meta = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{} missing ({e}); logs:\n{}", file.display(), a.log_text()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode {:o}", meta.permissions().mode());
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(secret.len() >= 32, "secret too short: {} chars", secret.len());
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "secret not hex");
    // It works for auth; the test secret does not.
    let r = a.request("GET", "/tasks", &[("X-Cluster-Secret", &secret)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.request("GET", "/tasks", &[("X-Cluster-Secret", SECRET)], b"");
    assert_eq!(r.status, 403);
    // The log names the file, never the secret.
    let logs = a.wait_log(&format!("generated and stored in {}", file.display()), Duration::from_secs(10));
    assert!(
        logs.contains(&format!("cluster secret: generated and stored in {} (mode 0600)", file.display())),
        "full path of the secret file not logged:\n{logs}"
    );
    assert!(!logs.contains(&secret), "secret in logs:\n{logs}");
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(30)).expect("exit on TERM");
    drop(a);

    // Restart on the same DATA_DIR: the same secret.
    let cwd = TempDir::new("gensecret-cwd2");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.env_remove("CLUSTER_SECRET");
    let mut b = common::spawn_agent(cmd, cwd, data.clone());
    let _logs_b = common::logs_on_panic(&b);
    let again = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(again, secret, "secret changed across restart");
    let r = b.request("GET", "/tasks", &[("Authorization", &format!("Bearer {secret}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let logs = b.wait_log(&format!("cluster secret: read from {}", file.display()), Duration::from_secs(10));
    assert!(logs.contains(&format!("cluster secret: read from {}", file.display())), "{logs}");
    assert!(!logs.contains(&secret), "secret in logs:\n{logs}");
    // Still 0600.
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    b.assert_alive();
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "--version"] {
        let dir = TempDir::new("help");
        let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
        cmd.arg(flag);
        let out = common::run_binary(cmd, Duration::from_secs(20));
        let st = out.status.unwrap_or_else(|| panic!("{flag}: did not exit; stdout {:?}", out.stdout));
        assert!(st.success(), "{flag}: {st:?}; stderr {:?}", out.stderr);
        assert!(!out.stdout.trim().is_empty(), "{flag}: nothing printed");
        assert!(!out.stdout.contains("listening on"), "{flag} started the server");
        if flag == "--version" {
            assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{:?}", out.stdout);
        }
    }
    // An unknown option is an error.
    let dir = TempDir::new("help");
    let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
    cmd.arg("--no-such-flag");
    let out = common::run_binary(cmd, Duration::from_secs(20));
    let st = out.status.expect("unknown flag: did not exit");
    assert_eq!(st.code(), Some(2), "an unknown flag is a usage error: {out:?}");
    assert!(out.stderr.contains("--no-such-flag"), "{out:?}");
}

fn max_tasks_of(a: &Agent) -> u64 {
    a.request("GET", "/stats", &[], b"").json()["maxTasks"].as_u64().unwrap()
}

#[test]
fn dotenv_in_working_directory_is_read_and_real_env_wins() {
    // .env alone.
    let cwd = TempDir::new("dotenv");
    std::fs::write(cwd.path().join(".env"), "# comment\nMAX_CONCURRENT_TASKS=7\nTASK_HISTORY=50\n").unwrap();
    let data = cwd.path().join("data");
    let cmd = common::base_command(cwd.path(), &data);
    let mut a = common::spawn_agent(cmd, cwd, data);
    let _logs_a = common::logs_on_panic(&a);
    assert_eq!(max_tasks_of(&a), 7, "MAX_CONCURRENT_TASKS from .env not applied");
    a.assert_alive();
    drop(a);

    // The real environment wins over .env.
    let cwd = TempDir::new("dotenv2");
    std::fs::write(cwd.path().join(".env"), "MAX_CONCURRENT_TASKS=7\n").unwrap();
    let data = cwd.path().join("data");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.env("MAX_CONCURRENT_TASKS", "3");
    let mut a = common::spawn_agent(cmd, cwd, data);
    let _logs_a = common::logs_on_panic(&a);
    assert_eq!(max_tasks_of(&a), 3, "real environment must win over .env");
    a.assert_alive();
    drop(a);

    // The secret can come from .env.
    let cwd = TempDir::new("dotenv3");
    let dsecret = "dotenv-secret-0123456789abcdef";
    std::fs::write(cwd.path().join(".env"), format!("CLUSTER_SECRET={dsecret}\n")).unwrap();
    let data = cwd.path().join("data");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.env_remove("CLUSTER_SECRET");
    let mut a = common::spawn_agent(cmd, cwd, data);
    let _logs_a = common::logs_on_panic(&a);
    assert_eq!(a.request("GET", "/tasks", &[("X-Cluster-Secret", dsecret)], b"").status, 200);
    assert_eq!(a.request("GET", "/tasks", &[("X-Cluster-Secret", SECRET)], b"").status, 403);
    a.assert_alive();
}

#[test]
fn bad_value_in_dotenv_stops_the_agent() {
    let cwd = TempDir::new("dotenv-bad");
    std::fs::write(cwd.path().join(".env"), "MAX_MEMORY_PERCENT=lots\n").unwrap();
    let mut cmd = common::base_command(cwd.path(), &cwd.path().join("data"));
    cmd.env_remove("MAX_MEMORY_PERCENT");
    let out = common::run_binary(cmd, Duration::from_secs(20));
    let st = out.status.expect("did not exit");
    assert_eq!(st.code(), Some(2), "a bad value in .env: {out:?}");
    assert!(out.stderr.contains("MAX_MEMORY_PERCENT") && out.stderr.contains("lots"), "{:?}", out.stderr);
    assert!(!out.stdout.contains("listening on"), "{out:?}");
}

#[test]
fn env_file_option_is_read() {
    let cwd = TempDir::new("envfile");
    let other = TempDir::new("envfile-src");
    let file = other.path().join("agent.env");
    std::fs::write(&file, "MAX_CONCURRENT_TASKS=5\n").unwrap();
    // A ./.env that must NOT be used when --env-file is given.
    std::fs::write(cwd.path().join(".env"), "MAX_CONCURRENT_TASKS=9\n").unwrap();
    let data = cwd.path().join("data");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.arg("--env-file").arg(&file);
    let mut a = common::spawn_agent(cmd, cwd, data);
    let _logs_a = common::logs_on_panic(&a);
    assert_eq!(max_tasks_of(&a), 5, "--env-file not applied");
    a.assert_alive();
    drop(a);

    // A missing --env-file is an error, not silently ignored.
    let cwd = TempDir::new("envfile-missing");
    let mut cmd = common::base_command(cwd.path(), &cwd.path().join("data"));
    cmd.arg("--env-file").arg(cwd.path().join("no-such.env"));
    let out = common::run_binary(cmd, Duration::from_secs(20));
    let st = out.status.expect("did not exit");
    assert_eq!(st.code(), Some(2), "missing --env-file: {out:?}");
    assert!(out.stderr.contains("no-such.env"), "error line should name the file: {:?}", out.stderr);
}
