//! `TRUSTED_ADDRESSES`: peers in the listed ranges need no secret, on the HTTP API and the
//! WebSocket; every other peer still does. The agent binds 127.0.0.1 and the tests connect
//! from 127.0.0.1, so `127.0.0.0/8` trusts them and `10.0.0.0/8` does not. (IPv6 ranges and
//! IPv4-mapped peers are covered by the unit tests of `src/cidr.rs` and `src/http/auth.rs`.)
//!
//! Network: loopback only (tests/common). Every wait is bounded and generous.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Agent, Resp, TempDir, SECRET};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

const WARNING: &str = "need no cluster secret";

/// A request with the given headers only (no secret unless one is among them).
fn request(a: &Agent, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    a.request(method, path, &all, &body)
}

/// A WebSocket handshake presenting `secret` (if any) in `X-Cluster-Secret`: the client, or
/// the status the agent answered instead of 101.
fn ws_connect(a: &Agent, secret: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://127.0.0.1:{}/", a.port).into_client_request().expect("ws URL");
    if let Some(s) = secret {
        req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(s).expect("header value"));
    }
    let stream = TcpStream::connect(a.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed without a status: {e}"),
    }
}

/// The events of `task` up to its `completed` (60 s at most), in order.
fn events_of(ws: &mut Ws, task: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("events are JSON");
                if v["type"] == "task_update" && v["taskId"] == task {
                    let done = v["event"] == "completed";
                    got.push(v);
                    if done {
                        return got;
                    }
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("WebSocket read failed: {e}; got {got:?}"),
        }
    }
    panic!("no completed event for task {task} within 60 s; got {got:?}")
}

/// The start-up warning line, once logged (10 s at most).
fn warning_line(a: &Agent) -> Option<String> {
    a.wait_log(WARNING, Duration::from_secs(10)).lines().find(|l| l.contains(WARNING)).map(str::to_string)
}

#[test]
fn a_trusted_peer_needs_no_secret() {
    let a = common::agent().env("TRUSTED_ADDRESSES", "127.0.0.0/8").start();
    let _g = common::logs_on_panic(&a);
    let line = warning_line(&a).expect("no start-up warning about TRUSTED_ADDRESSES");
    assert!(line.contains("WARN") && line.contains("requests from 127.0.0.0/8 need no cluster secret"), "{line}");

    // The WebSocket first, so it sees the task from its start.
    let mut ws = ws_connect(&a, None).expect("a WebSocket upgrade from a trusted peer without a secret");
    let r = request(&a, "POST", "/execute", &[], &json!({"command": "sh", "args": ["-c", "echo trusted-hello"]}));
    assert_eq!(r.status, 200, "POST /execute without a secret from a trusted peer: {}", r.text());
    assert_eq!(r.json()["status"], "started");
    let id = r.json()["taskId"].as_u64().expect("taskId");

    let events = events_of(&mut ws, id);
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{events:?}");
    let out: String = events.iter().filter(|e| e["event"] == "output").filter_map(|e| e["data"].as_str()).collect();
    assert_eq!(out, "trusted-hello\n", "{events:?}");

    let r = request(&a, "GET", &format!("/task/{id}"), &[], &Value::Null);
    assert_eq!(r.status, 200, "GET /task/{id} without a secret from a trusted peer: {}", r.text());
    let t = r.json();
    assert_eq!(
        (t["id"].as_u64(), t["status"].as_str(), t["stdout"].as_str()),
        (Some(id), Some("completed"), Some("trusted-hello\n"))
    );

    // A trusted peer is let in whatever it presents.
    let r =
        request(&a, "GET", &format!("/task/{id}"), &[("X-Cluster-Secret", "wrong-secret-0123456789")], &Value::Null);
    assert_eq!(r.status, 200, "a wrong secret from a trusted peer: {}", r.text());
    assert!(ws_connect(&a, Some("wrong-secret-0123456789")).is_ok(), "WebSocket with a wrong secret, trusted peer");
    assert!(!a.log_text().contains("refused"), "a trusted peer's request was refused:\n{}", a.log_text());
}

#[test]
fn a_peer_outside_the_ranges_still_needs_the_secret() {
    let a = common::agent().env("TRUSTED_ADDRESSES", "10.0.0.0/8").start();
    let _g = common::logs_on_panic(&a);
    let line = warning_line(&a).expect("no start-up warning about TRUSTED_ADDRESSES");
    assert!(line.contains("requests from 10.0.0.0/8 need no cluster secret"), "{line}");

    let body = json!({"command": "true"});
    let r = request(&a, "POST", "/execute", &[], &body);
    assert_eq!((r.status, r.json()), (403, json!({"error": "Invalid cluster secret"})), "POST /execute");
    let r = request(&a, "POST", "/execute", &[("X-Cluster-Secret", "wrong-secret-0123456789")], &body);
    assert_eq!((r.status, r.json()), (403, json!({"error": "Invalid cluster secret"})), "a wrong secret");

    // With the secret it works, and the task it made is still refused without it.
    let r = request(&a, "POST", "/execute", &[("X-Cluster-Secret", SECRET)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().expect("taskId");
    let r = request(&a, "GET", &format!("/task/{id}"), &[], &Value::Null);
    assert_eq!((r.status, r.json()), (403, json!({"error": "Invalid cluster secret"})), "GET /task/{id}");
    assert_eq!(a.get(&format!("/task/{id}")).status, 200);

    assert_eq!(ws_connect(&a, None).err(), Some(403), "a WebSocket upgrade without a secret");
    assert!(ws_connect(&a, Some(SECRET)).is_ok(), "a WebSocket upgrade with the secret");
    let log = a.wait_log("refused WebSocket upgrade from 127.0.0.1", Duration::from_secs(10));
    assert!(log.contains("refused POST /execute from 127.0.0.1"), "{log}");
    assert!(log.contains("refused WebSocket upgrade from 127.0.0.1"), "{log}");
}

#[test]
fn without_trusted_addresses_nothing_is_trusted_or_warned() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let r = request(&a, "POST", "/execute", &[], &json!({"command": "true"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!a.wait_log("refused POST", Duration::from_secs(10)).contains(WARNING), "{}", a.log_text());
}

#[test]
fn a_malformed_value_stops_the_agent_naming_it() {
    for value in ["10.0.0.0/33", "::1/129", "garbage", "10.0.0.0/8,300.1.1.1", "10.0.0.5/8", "10.0.0.0/"] {
        for args in [&[][..], &["check-config"]] {
            let dir = TempDir::new("trusted-bad");
            let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
            cmd.env("TRUSTED_ADDRESSES", value).args(args);
            let out = common::run_binary(cmd, Duration::from_secs(30));
            let all = format!("--- stdout ---\n{}\n--- stderr ---\n{}", out.stdout, out.stderr);
            assert_eq!(out.status.and_then(|s| s.code()), Some(2), "TRUSTED_ADDRESSES={value} {args:?}:\n{all}");
            let naming: Vec<&str> =
                out.stderr.lines().filter(|l| l.contains("TRUSTED_ADDRESSES") && l.contains(value)).collect();
            assert_eq!(naming.len(), 1, "one line naming TRUSTED_ADDRESSES={value}:\n{all}");
            assert!(!out.stdout.contains("listening on"), "the agent started:\n{all}");
        }
    }
}
