//! Hostile and malformed input: each case is followed by `assert_alive()`.

mod common;

use common::{Agent, TempDir, SECRET};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn post_raw(a: &Agent, body: &[u8]) -> common::Resp {
    a.request("POST", "/execute", &[("X-Cluster-Secret", SECRET), ("Content-Type", "application/json")], body)
}

#[track_caller]
fn assert_400(r: &common::Resp, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    assert!(r.json()["error"].as_str().is_some_and(|s| !s.is_empty()), "{what}: {}", r.text());
}

fn no_tasks(a: &Agent) -> bool {
    a.get("/tasks").json()["tasks"].as_array().is_some_and(|t| t.is_empty())
}

/// The status of the answer on `s`, or None when the agent closed without one; panics if it
/// neither answered nor closed within `timeout`.
#[track_caller]
fn answer_or_close(s: &mut TcpStream, timeout: Duration, what: &str) -> Option<u16> {
    let (bytes, closed) = common::read_until_close(s, timeout);
    match common::raw_status(&bytes) {
        Some(st) => Some(st),
        None => {
            assert!(
                closed,
                "{what}: no answer and not closed within {timeout:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            None
        }
    }
}

#[test]
fn huge_content_length_is_413_or_closed() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let mut s = common::raw_connect(&a, Duration::from_secs(20));
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: 1000000000000000\r\n\r\n{{\"command\":"
    );
    let _ = s.write_all(head.as_bytes());
    let st = answer_or_close(&mut s, Duration::from_secs(20), "Content-Length 1e15");
    assert!(st.is_none() || st == Some(413), "status {st:?}");
    drop(s);
    // Also a Content-Length that does not fit in u64.
    let mut s = common::raw_connect(&a, Duration::from_secs(20));
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Length: 99999999999999999999999999\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    let st = answer_or_close(&mut s, Duration::from_secs(20), "Content-Length overflow");
    assert!(st.is_none() || matches!(st, Some(400) | Some(413)), "status {st:?}");
    drop(s);
    // And a negative one.
    let mut s = common::raw_connect(&a, Duration::from_secs(20));
    let head = format!("POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Length: -5\r\n\r\n");
    let _ = s.write_all(head.as_bytes());
    let st = answer_or_close(&mut s, Duration::from_secs(20), "Content-Length -5");
    assert!(st.is_none() || matches!(st, Some(400) | Some(413)), "status {st:?}");
    drop(s);
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn two_mib_body_is_413() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let body = vec![b'a'; 2 * 1024 * 1024];
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (r, raw) = common::send_raw(&a, head.as_bytes(), body, Duration::from_secs(30));
    let r = r.unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(r.status, 413, "{}", r.text());
    a.assert_alive();
}

#[test]
fn chunked_body_over_one_mib_is_413() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut body = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (r, raw) = common::send_raw(&a, head.as_bytes(), body, Duration::from_secs(30));
    match r {
        Some(r) => assert_eq!(r.status, 413, "{}", r.text()),
        None => panic!("closed without an answer to a 2 MiB chunked body: {:?}", String::from_utf8_lossy(&raw)),
    }
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn malformed_json_is_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for body in [
        &b"{"[..],
        b"}",
        b"{\"command\":",
        b"nul",
        b"{'command':'echo'}",
        b"\xef\xbb\xbf{\"command\":1",
        b"{\"command\":\"echo\",}",
    ] {
        let r = post_raw(&a, body);
        assert_400(&r, &String::from_utf8_lossy(body));
        a.assert_alive();
    }
    assert!(no_tasks(&a));
}

#[test]
fn invalid_utf8_body_is_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for body in
        [&b"\xff\xfe\xfd"[..], b"{\"command\":\"\xc3\x28\"}", b"{\"command\":\"echo\",\"args\":[\"\xed\xa0\x80\"]}"]
    {
        let r = post_raw(&a, body);
        assert_400(&r, "invalid UTF-8");
        a.assert_alive();
    }
    // A lone surrogate escape is not a valid string either.
    let r = post_raw(&a, br#"{"command":"echo","args":["\ud800"]}"#);
    assert_400(&r, "lone surrogate");
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn deeply_nested_json_is_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let deep = "[".repeat(100_000);
    let r = post_raw(&a, deep.as_bytes());
    assert_400(&r, "100,000 [");
    a.assert_alive();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = post_raw(&a, deep.as_bytes());
    assert_400(&r, "100,000 balanced []");
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn deeply_nested_json_inside_a_field_is_400() {
    let cases = [
        ("args", format!("{{\"command\":\"echo\",\"args\":{}", "[".repeat(100_000))),
        ("env value arrays", format!("{{\"command\":\"echo\",\"env\":{{\"a\":{}", "[".repeat(100_000))),
        ("env value objects", format!("{{\"command\":\"echo\",\"env\":{}}}", "{\"a\":".repeat(50_000))),
        ("unknown field arrays", format!("{{\"command\":\"echo\",\"x\":{}", "[".repeat(100_000))),
        (
            "unknown field balanced",
            format!("{{\"command\":\"echo\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
    ];
    let mut failures = Vec::new();
    let mut a = common::agent().start();
    for (what, body) in cases {
        if a.child.try_wait().unwrap().is_some() {
            a = common::agent().start(); // the previous case killed it: go on with a new one
        }
        let Ok(mut s) = TcpStream::connect(a.addr()) else {
            failures.push(format!("{what}: cannot connect: the agent is gone"));
            continue;
        };
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
        let (bytes, _) = common::read_until_close(&mut s, Duration::from_secs(20));
        let st = common::raw_status(&bytes);
        if st != Some(400) {
            failures
                .push(format!("{what}: status {st:?}, {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])));
        }
        if !a.health_ok() || a.child.try_wait().unwrap().is_some() {
            failures.push(format!(
                "{what}: the agent died or stopped answering; log: {}",
                a.log_text().lines().filter(|l| l.starts_with("stderr")).collect::<Vec<_>>().join(" | ")
            ));
            let _ = a.wait_exit(Duration::from_secs(5));
            continue;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn nul_bytes_are_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for body in [
        json!({"command": "echo\u{0}"}),
        json!({"command": "\u{0}"}),
        json!({"command": "echo", "args": ["\u{0}"]}),
        json!({"command": "echo", "args": ["ok", "x\u{0}y"]}),
        json!({"command": "echo", "env": {"K\u{0}": "v"}}),
        json!({"command": "echo", "env": {"K": "v\u{0}"}}),
        json!({"command": "echo", "cwd": "/\u{0}"}),
    ] {
        let r = a.post("/execute", &body);
        assert_400(&r, &body.to_string());
        a.assert_alive();
    }
    // A raw NUL byte in the body (not escaped) is malformed JSON.
    let r = post_raw(&a, b"{\"command\":\"ec\0ho\"}");
    assert_400(&r, "raw NUL");
    assert!(no_tasks(&a));
    a.assert_alive();
}

#[test]
fn wrong_types_are_400() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    for body in [
        json!({"command": 1}),
        json!({"command": "echo", "args": "x"}),
        json!({"command": "echo", "args": [1, 2]}),
        json!({"command": "echo", "args": [["x"]]}),
        json!({"command": "echo", "env": []}),
        json!({"command": "echo", "env": {"A": 1}}),
        json!({"command": "echo", "env": {"A": ["x"]}}),
        json!({"command": "echo", "env": {"A": true}}),
        json!({"command": "echo", "cwd": []}),
        json!({"command": "echo", "cwd": null, "args": 3}),
        json!({"command": "echo", "timeout": "5"}),
        json!({"command": "echo", "timeout": -100}),
        json!({"command": "echo", "timeout": [1]}),
        json!(null),
        json!(42),
        json!([{"command": "echo"}]),
    ] {
        let r = a.post("/execute", &body);
        assert_400(&r, &body.to_string());
        a.assert_alive();
    }
    assert!(no_tasks(&a));
}

/// What a `?wait=true` submission of `body` must come to.
enum Outcome {
    /// 400 with exactly this error.
    Refused(String),
    /// Ran and ended `completed` with this stdout.
    Completed(String),
    /// Started, then `failed` to start: its `error` contains these.
    CannotStart(&'static [&'static str]),
}

#[test]
fn odd_but_typed_inputs_get_one_exact_outcome_each() {
    use Outcome::*;
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let bad_env = |name: &str| Refused(format!("env name {name:?} is not valid (empty, or contains '=' or NUL)"));
    let timeout =
        || Refused("timeout must be a whole number of milliseconds from 0 to 2592000000 (0 = no limit)".into());
    let agent_cwd = std::fs::canonicalize(a.dir.path()).unwrap().display().to_string();
    let cases: Vec<(serde_json::Value, Outcome)> = vec![
        (json!({"command": "echo", "env": {"A=B": "1"}}), bad_env("A=B")),
        (json!({"command": "echo", "env": {"": "1"}}), bad_env("")),
        (json!({"command": "echo", "timeout": 1.5}), timeout()),
        (json!({"command": "echo", "timeout": 1e300}), timeout()),
        (json!({"command": "echo", "timeout": 18446744073709551615u64}), timeout()),
        // An empty cwd is the agent's own, as when it is left out.
        (json!({"command": "pwd", "cwd": ""}), Completed(format!("{agent_cwd}\n"))),
        (json!({"command": "echo", "unknownField": {"deep": [1, 2, 3]}}), Completed("\n".into())),
        // One argument over the kernel's 128 KiB limit for a single string.
        (json!({"command": "echo", "args": ["x".repeat(200_000)]}), CannotStart(&["Argument list too long"])),
        (json!({"command": "/", "args": []}), CannotStart(&["cannot start \"/\"", "Permission denied"])),
        (json!({"command": ".", "args": []}), CannotStart(&["cannot start \".\"", "Permission denied"])),
        // The task's own PATH is the one searched.
        (json!({"command": "echo", "env": {"PATH": ""}}), CannotStart(&["cannot start \"echo\"", "No such file"])),
    ];
    for (body, want) in cases {
        let r = a.post("/execute?wait=true", &body);
        let what = &body.to_string()[..body.to_string().len().min(120)];
        match want {
            Refused(msg) => {
                assert_eq!(r.status, 400, "{what}: {}", r.text());
                assert_eq!(r.json(), json!({"error": msg}), "{what}");
            }
            Completed(stdout) => {
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                let t = r.json();
                assert_eq!(t["status"], "completed", "{what}: {t}");
                assert_eq!(t["stdout"], stdout.as_str(), "{what}: {t}");
            }
            CannotStart(parts) => {
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                let t = r.json();
                assert_eq!(t["status"], "failed", "{what}: {t}");
                assert!(t["exitCode"].is_null() && t["pid"].is_null(), "{what}: never started, so no pid: {t}");
                let err = t["error"].as_str().unwrap_or_else(|| panic!("{what}: no error: {t}"));
                for p in parts {
                    assert!(err.contains(p), "{what}: error {err:?} lacks {p:?}");
                }
            }
        }
        a.assert_alive();
    }
}

#[test]
fn garbage_instead_of_http_is_refused() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let garbage: Vec<Vec<u8>> = vec![
        (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // a TLS ClientHello start
        b"\r\n\r\n\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.0\r\n".to_vec(),
        b"\0\0\0\0\0\0\0\0\r\n\r\n".to_vec(),
    ];
    for g in garbage {
        let mut s = common::raw_connect(&a, Duration::from_secs(20));
        let _ = s.write_all(&g);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let st = answer_or_close(&mut s, Duration::from_secs(20), "garbage");
        assert!(st.is_none() || st.is_some_and(|c| (400..600).contains(&c)), "status {st:?}");
        a.assert_alive();
    }
    assert!(no_tasks(&a));
}

#[test]
fn request_line_of_100_kb_is_refused() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let mut s = common::raw_connect(&a, Duration::from_secs(20));
    let req = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let _ = w.write_all(req.as_bytes());
    });
    let st = answer_or_close(&mut s, Duration::from_secs(20), "100 KB request line");
    assert!(st.is_none() || st.is_some_and(|c| (400..500).contains(&c)), "status {st:?}");
    drop(s);
    let _ = writer.join();
    a.assert_alive();
    // A 100 KB header value.
    let mut s = common::raw_connect(&a, Duration::from_secs(20));
    let req =
        format!("GET /tasks HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(100 * 1024));
    let w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let _ = w.write_all(req.as_bytes());
    });
    let st = answer_or_close(&mut s, Duration::from_secs(20), "100 KB header");
    assert!(st.is_none() || st.is_some_and(|c| (400..500).contains(&c)), "status {st:?}");
    drop(s);
    let _ = writer.join();
    a.assert_alive();
}

#[test]
fn invalid_utf8_in_headers_is_refused() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let cases: Vec<Vec<u8>> = vec![
        b"GET /tasks HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: \xff\xfe\xfd\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xc3\x28\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /health HTTP/1.1\r\nHost: \xff\r\nX-\xfe: \xff\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /t\xffsk/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        [
            b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: ".as_slice(),
            SECRET.as_bytes(),
            b"\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        ]
        .concat(),
    ];
    for (i, req) in cases.into_iter().enumerate() {
        let mut s = common::raw_connect(&a, Duration::from_secs(20));
        let _ = s.write_all(&req);
        let st = answer_or_close(&mut s, Duration::from_secs(20), "invalid UTF-8 header");
        // A secret that is not the secret is refused; nothing else is admitted by accident.
        if i != 2 {
            assert!(st.is_none() || matches!(st, Some(400) | Some(403) | Some(404)), "case {i}: status {st:?}");
        }
        a.assert_alive();
    }
    assert!(no_tasks(&a));
}

#[test]
fn slowloris_does_not_starve_other_clients() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let test_start = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..150 {
        let Ok(mut s) = TcpStream::connect(a.addr()) else { break };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"POST /execute HTTP/1.1\r\nHost: x\r\n");
        conns.push(s);
    }
    assert!(conns.len() >= 100, "could only open {} connections", conns.len());
    let mut worst = Duration::ZERO;
    // ~10 s: one header byte a second on every connection, /health checked each round.
    for round in 0..10 {
        let b = b"X-Slow-Header: aaaaaaaaaaaa"[round % 27];
        for s in &mut conns {
            let _ = s.write_all(&[b]);
        }
        let t = Instant::now();
        assert!(
            a.health_ok(),
            "round {round}: /health does not answer with {} slow clients; logs:\n{}",
            conns.len(),
            a.log_text()
        );
        let took = t.elapsed();
        worst = worst.max(took);
        assert!(took < Duration::from_secs(10), "round {round}: /health took {took:?}");
        // An authenticated request too.
        if round % 3 == 0 {
            let r = a.get("/tasks");
            assert_eq!(r.status, 200);
        }
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(took));
        if test_start.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    let t = a.run_wait(json!({"command": "echo", "args": ["still"]}));
    assert_eq!(t["stdout"], "still\n");
    drop(conns);
    a.assert_alive();
    eprintln!("slowloris: worst /health latency {worst:?}");
}

#[test]
fn half_body_then_stall_does_not_block_others() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = common::raw_connect(&a, Duration::from_secs(20));
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"command\":\"ec"
        );
        s.write_all(head.as_bytes()).unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let t = Instant::now();
        assert!(a.health_ok(), "/health blocked by stalled bodies");
        assert!(t.elapsed() < Duration::from_secs(10));
        let t = a.run_wait(json!({"command": "echo", "args": ["other"]}));
        assert_eq!(t["stdout"], "other\n");
    }
    // None of the half bodies was taken as a task.
    let tasks = a.get("/tasks").json();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 5, "{tasks}");
    drop(stalled);
    a.assert_alive();
}

#[test]
fn many_connections_closed_abruptly() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    assert!(a.health_ok());
    std::thread::sleep(Duration::from_millis(300));
    let base = a.fd_count();
    for i in 0..300 {
        let Ok(mut s) = TcpStream::connect(a.addr()) else { continue };
        match i % 5 {
            0 => {}
            1 => {
                let _ = s.write_all(b"GET /heal");
            }
            2 => {
                let _ = s.write_all(
                    format!("POST /execute HTTP/1.1\r\nX-Cluster-Secret: {SECRET}\r\nContent-Length: 50\r\n\r\n{{")
                        .as_bytes(),
                );
            }
            3 => {
                // A full request whose answer is never read.
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
            }
            _ => {
                let _ = s.write_all(format!("GET /tasks HTTP/1.1\r\nX-Cluster-Secret: {SECRET}\r\n\r\n").as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        drop(s);
    }
    a.assert_alive();
    // The agent lets go of them (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = a.fd_count();
    while now > base + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = a.fd_count();
    }
    assert!(now <= base + 10, "fds: {base} before, {now} after 300 abrupt connections");
    assert!(no_tasks(&a));
    a.assert_alive();
}

/// Threads of the agent whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
                .count()
        })
        .unwrap_or(0)
}

/// `?follow=true` clients that disconnect while their task prints nothing release their
/// threads: the follower watches the client's socket instead of waiting for output.
#[test]
fn followers_that_leave_a_silent_task_release_their_threads() {
    let mut a = common::agent().start();
    let r = a.post("/execute", &serde_json::json!({"command": "sleep", "args": ["30"], "timeout": 0}));
    let id = r.json()["taskId"].as_u64().unwrap();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = common::raw_connect(&a, Duration::from_secs(10));
        let req = format!(
            "GET /task/{id}/output?follow=true HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {}\r\n\r\n",
            common::SECRET
        );
        s.write_all(req.as_bytes()).unwrap();
        conns.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named(a.pid(), "http-long") < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(threads_named(a.pid(), "http-long"), 20, "one thread per follower");
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named(a.pid(), "http-long") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(threads_named(a.pid(), "http-long"), 0, "followers of a silent task outlived their clients");
    let _ = a.post(&format!("/task/{id}/cancel"), &serde_json::json!({}));
    a.assert_alive();
}

/// Waits (bounded) until the agent has `want` threads named `prefix`; the last count seen.
fn wait_threads(a: &Agent, prefix: &str, want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = threads_named(a.pid(), prefix);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// At most 256 long requests (follow streams, large uploads and downloads) at once: with 256
/// followers on a silent task, the 257th gets 503 `Too many streaming requests` with
/// `Retry-After: 5`, and other requests are served as usual. Once the followers leave, a
/// follow stream is served again.
#[test]
fn the_257th_follow_stream_gets_503_too_many_streaming_requests() {
    const LONG: usize = 256;
    let mut a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3043"]);
    let follow = format!("GET /task/{id}/output?follow=true HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\n\r\n");
    let mut followers = Vec::with_capacity(LONG);
    for _ in 0..LONG {
        let mut s = common::raw_connect(&a, Duration::from_secs(30));
        s.write_all(follow.as_bytes()).unwrap();
        followers.push(s);
    }
    let n = wait_threads(&a, "http-long", LONG, Duration::from_secs(60));
    assert_eq!(n, LONG, "one http-long thread per follower");
    let r = a.get(&format!("/task/{id}/output?follow=true"));
    assert_eq!(r.status, 503, "follower {}: {}", LONG + 1, r.text());
    assert_eq!(r.json(), json!({"error": "Too many streaming requests"}));
    assert_eq!(r.header("retry-after"), Some("5"), "{:?}", r.headers);
    // Short requests still go through the workers.
    assert_eq!(a.get(&format!("/task/{id}")).json()["status"], "running");
    let log = a.wait_log("refused a long request", Duration::from_secs(10));
    assert!(log.contains(&format!("refused a long request: {LONG} already open")), "{log}");
    drop(followers);
    let n = wait_threads(&a, "http-long", 0, Duration::from_secs(30));
    assert_eq!(n, 0, "followers of a silent task outlived their clients");
    assert_eq!(a.post(&format!("/task/{id}/cancel"), &json!({})).status, 200);
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    let r = a.get(&format!("/task/{id}/output?follow=true"));
    assert_eq!((r.status, r.text()), (200, String::new()), "a follow stream once the others left");
    a.assert_alive();
}

/// Nobody reads the agent's stdout (a paused pager, a stuck log collector): its log lines
/// pile up, but tasks, requests and the shutdown go on.
#[test]
fn a_stalled_stdout_blocks_nothing() {
    use std::io::BufRead;
    let dir = TempDir::new("stalled-stdout");
    let data = dir.path().join("data");
    let mut cmd = common::base_command(dir.path(), &data);
    cmd.stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Read up to the line giving the port, then never again.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut port = 0u16;
    let mut line = String::new();
    while port == 0 && stdout.read_line(&mut line).unwrap_or(0) > 0 {
        port = common::port_in_log_line(&line).unwrap_or(0);
        line.clear();
    }
    assert!(port != 0, "no port in the agent's output");
    let a = Agent { child, port, dir, data_dir: data, logs: Default::default() };
    // Each task logs two lines: 1,000 of them are far more than a pipe holds.
    for i in 0..1000 {
        let t = a.run_wait(json!({"command": "true"}));
        assert_eq!(t["status"], "completed", "task {i}: {t}");
    }
    let mut a = a;
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(30)).expect("no exit within 30 s of SIGTERM with stdout stalled");
    assert!(st.success(), "{st:?}");
    // What was logged is there, in order, once someone reads it.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(rest.contains("task 1 started"), "{}", &rest[..rest.len().min(500)]);
}

/// A client that reads a response at 2 KiB a second: its socket has a small receive buffer,
/// so the agent's writes keep waiting on it.
fn trickle_download(addr: String, path: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::Read;
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&SockAddr::from(addr.parse::<std::net::SocketAddr>().unwrap())).expect("connect");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let (mut got, mut buf) = (0usize, [0u8; 2048]);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    got
}

/// Six clients downloading large responses slowly (a task's output log, the task object with
/// its tails) hold no request worker: /health, /execute and upgrades are answered meanwhile.
#[test]
fn slow_downloads_do_not_stop_the_api() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let big = a.run_wait(json!({"command": "seq", "args": ["1", "1500000"]}));
    let id = big["id"].as_u64().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paths = [format!("/task/{id}/output"), format!("/task/{id}/output?stream=stdout")];
    let downloads: Vec<_> = (0..6)
        .map(|i| {
            let (addr, path, stop) = (a.addr(), paths[i % 2].clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || trickle_download(addr, path, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // the downloads are under way
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut answered = 0;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        assert!(a.health_ok(), "/health not answered while downloads trickle; log:\n{}", a.log_text());
        let r = a.post("/execute", &json!({"command": "true"}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t0.elapsed() < Duration::from_secs(8), "an API round trip took {:?}", t0.elapsed());
        let rss = common::proc_status_value(a.agent_pid(), "VmRSS").unwrap_or(0);
        assert!(rss < 64 * 1024, "agent RSS {rss} KiB while downloads trickle (bound: 64 MiB)");
        answered += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let got: Vec<usize> = downloads.into_iter().map(|d| d.join().unwrap()).collect();
    assert!(got.iter().all(|&g| g > 0), "every download made progress: {got:?}");
    assert!(answered >= 10, "only {answered} round trips in 12 s");
}
