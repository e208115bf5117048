//! Black-box tests of the WebSocket side of the agent (CONTRACT.md §3), against the real
//! binary started by `tests/common`. Clients are `tungstenite` over a std `TcpStream`, or
//! raw bytes on a `TcpStream` where the test needs to misbehave. One test runs the
//! independent Python client `tests/ws_independent.py` (package `websockets`).
//!
//! Network: loopback only. Every loop is bounded in count and in time; bounds are generous
//! (a 2-core CI box, debug builds) and no test asserts speed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Agent, SECRET};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

// ---------------------------------------------------------------------------
// Helpers (local to this file).
// ---------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// How a client presents the secret.
#[derive(Clone, Copy, Debug)]
enum Auth<'a> {
    Header(&'a str),
    Bearer(&'a str),
    Query(&'a str),
    Nothing,
}

/// Connects a tungstenite client. `Err((Some(status), ..))` when the server answered the
/// handshake with an HTTP status other than 101.
fn try_connect(a: &Agent, auth: Auth) -> Result<Ws, (Option<u16>, String)> {
    let path = match auth {
        Auth::Query(s) => format!("/?secret={s}"),
        _ => "/".to_string(),
    };
    let mut req = format!("ws://127.0.0.1:{}{}", a.port, path).into_client_request().unwrap();
    match auth {
        Auth::Header(s) => {
            req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(s).unwrap());
        }
        Auth::Bearer(s) => {
            req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {s}")).unwrap());
        }
        _ => {}
    }
    let stream = TcpStream::connect(a.addr()).map_err(|e| (None, format!("connect: {e}")))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.set_nodelay(true);
    match tungstenite::client::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            let body = r.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((Some(r.status().as_u16()), body))
        }
        Err(e) => Err((None, e.to_string())),
    }
}

/// A client whose socket has a small receive buffer (set before connecting, which turns
/// off the kernel's autotuning), so a client that stops reading backs up into the agent
/// quickly, whatever the host's TCP buffer settings.
#[track_caller]
fn connect_small_rcvbuf(a: &Agent) -> Ws {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = a.addr().parse().unwrap();
    sock.connect(&SockAddr::from(addr)).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("ws://127.0.0.1:{}/", a.port).into_client_request().unwrap();
    req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(SECRET).unwrap());
    tungstenite::client::client(req, stream).map(|(ws, _)| ws).unwrap_or_else(|e| panic!("connect: {e}"))
}

#[track_caller]
fn connect(a: &Agent) -> Ws {
    try_connect(a, Auth::Header(SECRET))
        .unwrap_or_else(|e| panic!("WebSocket connect with the secret failed: {e:?}\nagent log:\n{}", a.log_text()))
}

fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send to the agent");
}

fn subscribe(ws: &mut Ws, task: u64, offset: u64, error_offset: u64) {
    send_json(ws, json!({"type": "subscribe", "taskId": task, "offset": offset, "errorOffset": error_offset}));
}

/// What one read produced.
#[derive(Debug)]
enum Got {
    Msg(Value),
    /// A close frame (with its code) or the end of the connection (None).
    Closed(Option<u16>, String),
    Timeout,
}

fn read_one(ws: &mut Ws, deadline: Instant) -> Got {
    for _ in 0..1_000_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Got::Timeout;
        }
        ws.get_ref().set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent a text message that is not JSON ({e}): {t}"));
                return Got::Msg(v);
            }
            Ok(Message::Close(f)) => {
                let (code, why) =
                    f.map(|f| (Some(u16::from(f.code)), f.reason.to_string())).unwrap_or((None, String::new()));
                return Got::Closed(code, format!("close frame {why}"));
            }
            Ok(Message::Binary(b)) => {
                panic!("server sent a binary message ({} bytes); only JSON text is expected", b.len())
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) =>
            {
                continue
            }
            Err(e) => return Got::Closed(None, format!("connection ended: {e}")),
        }
    }
    Got::Timeout
}

fn summary(msgs: &[Value]) -> String {
    let mut s = format!("{} messages; last ones:\n", msgs.len());
    for m in msgs.iter().rev().take(8).rev() {
        let mut t = m.to_string();
        if t.len() > 300 {
            let mut cut = 300;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
            t.push_str("...");
        }
        s.push_str(&format!("  {t}\n"));
    }
    s
}

/// Reads messages until `stop` holds for one (included), for `timeout` at most.
#[track_caller]
fn collect_until(ws: &mut Ws, timeout: Duration, what: &str, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut msgs = Vec::new();
    loop {
        match read_one(ws, deadline) {
            Got::Msg(v) => {
                let done = stop(&v);
                msgs.push(v);
                if done {
                    return msgs;
                }
            }
            Got::Closed(code, why) => {
                panic!("connection closed ({code:?}, {why}) while waiting for {what}; {}", summary(&msgs))
            }
            Got::Timeout => panic!("no {what} within {timeout:?}; {}", summary(&msgs)),
        }
    }
}

fn is_completed_of(v: &Value, id: u64) -> bool {
    v["taskId"].as_u64() == Some(id) && v["event"] == "completed"
}

#[track_caller]
fn until_completed(ws: &mut Ws, id: u64, timeout: Duration) -> Vec<Value> {
    collect_until(ws, timeout, &format!("`completed` of task {id}"), |v| is_completed_of(v, id))
}

/// Reads for `dur` and returns what arrived (the connection must stay open).
#[track_caller]
fn read_for(ws: &mut Ws, dur: Duration) -> Vec<Value> {
    let deadline = Instant::now() + dur;
    let mut msgs = Vec::new();
    loop {
        match read_one(ws, deadline) {
            Got::Msg(v) => msgs.push(v),
            Got::Timeout => return msgs,
            Got::Closed(code, why) => panic!("connection closed unexpectedly ({code:?}, {why}); {}", summary(&msgs)),
        }
    }
}

/// Checks the compat shape of one `task_update` message (CONTRACT.md §3).
#[track_caller]
fn check_shape(m: &Value, t0: u64) {
    assert_eq!(m["type"], "task_update", "type must be \"task_update\": {m}");
    let id = m["taskId"].as_u64().unwrap_or_else(|| panic!("taskId must be an integer: {m}"));
    let ev = m["event"].as_str().unwrap_or_else(|| panic!("event must be a string: {m}"));
    let ts = m["timestamp"].as_u64().unwrap_or_else(|| panic!("timestamp must be an integer (ms): {m}"));
    assert!(
        ts + 5_000 >= t0 && ts <= now_ms() + 5_000,
        "timestamp {ts} is not ms since the epoch, near now ({t0}): {m}"
    );
    let d = &m["data"];
    match ev {
        "started" => {
            assert!(d.is_object(), "started data must be the task object: {m}");
            assert_eq!(d["id"].as_u64(), Some(id), "started data.id must be the taskId: {m}");
            assert_eq!(d["status"], "running", "task object at start has status running: {m}");
            assert!(d["command"].is_string(), "task object has command: {m}");
            assert!(d["args"].is_array(), "task object has args: {m}");
            assert!(d["cwd"].is_string(), "task object has cwd: {m}");
            assert!(d["env"].is_object(), "task object has env: {m}");
            let st = d["startedAt"].as_u64().unwrap_or_else(|| panic!("task object has startedAt (ms): {m}"));
            assert!(st + 5_000 >= t0 && st <= now_ms() + 5_000, "startedAt {st} not ms near now: {m}");
        }
        "output" => {
            assert!(d.is_string(), "output data must be a string: {m}");
            assert!(m["offset"].is_u64(), "output messages carry an integer offset: {m}");
        }
        "error" => {
            assert!(d.is_string(), "error data must be a string (a stderr chunk): {m}");
            assert!(m.get("offset").is_none() || m["offset"].is_u64(), "offset must be an integer: {m}");
        }
        "failed" => {
            let e = d["error"].as_str().unwrap_or_else(|| panic!("failed data must be {{\"error\": str}}: {m}"));
            assert!(!e.is_empty(), "failed error must say why: {m}");
        }
        "completed" => {
            let o = d.as_object().unwrap_or_else(|| panic!("completed data must be an object: {m}"));
            for k in ["status", "exitCode", "signal", "duration"] {
                assert!(o.contains_key(k), "completed data lacks {k}: {m}");
            }
            assert!(
                ["completed", "failed", "cancelled"].contains(&d["status"].as_str().unwrap_or("")),
                "completed status must be completed|failed|cancelled: {m}"
            );
            assert!(d["exitCode"].is_null() || d["exitCode"].is_i64(), "exitCode int or null: {m}");
            assert!(d["signal"].is_null() || d["signal"].is_string(), "signal string or null: {m}");
            assert!(d["duration"].is_u64(), "duration integer ms: {m}");
        }
        other => panic!("unknown event {other:?}: {m}"),
    }
}

/// A task's events as one client saw them, after the per-task checks.
struct Seen {
    stdout: String,
    stderr: String,
    /// `(offset, chunk)` of each `output` message.
    out_chunks: Vec<(u64, String)>,
    err_chunks: Vec<(u64, String)>,
    completed: Value,
    failed: Option<Value>,
    events: Vec<String>,
}

/// Checks task `id`'s messages in `msgs`: shapes; `started` first (when `live`); exactly one
/// `completed`, last; `failed` only right before it; offsets of each stream equal to the
/// bytes of that stream before the chunk, starting at `from` (stdout, stderr).
#[track_caller]
fn check_task(msgs: &[Value], id: u64, t0: u64, live: bool, from: (u64, u64)) -> Seen {
    let mine: Vec<&Value> = msgs.iter().filter(|m| m["taskId"].as_u64() == Some(id)).collect();
    assert!(!mine.is_empty(), "no message for task {id}");
    let events: Vec<String> = mine.iter().map(|m| m["event"].as_str().unwrap_or("?").to_string()).collect();
    for m in &mine {
        check_shape(m, t0);
    }
    let n_completed = events.iter().filter(|e| *e == "completed").count();
    assert_eq!(n_completed, 1, "task {id}: `completed` must come exactly once; events: {events:?}");
    assert_eq!(events.last().unwrap(), "completed", "task {id}: `completed` must be last; events: {events:?}");
    if live {
        assert_eq!(events[0], "started", "task {id}: `started` must come first; events: {events:?}");
        assert_eq!(events.iter().filter(|e| *e == "started").count(), 1, "task {id}: one `started`; {events:?}");
    } else {
        assert!(!events.iter().any(|e| e == "started"), "task {id}: replay sent `started` again? {events:?}");
    }
    let n_failed = events.iter().filter(|e| *e == "failed").count();
    assert!(n_failed <= 1, "task {id}: `failed` more than once: {events:?}");
    if n_failed == 1 {
        assert_eq!(
            events[events.len() - 2],
            "failed",
            "task {id}: `failed` must be right before `completed`: {events:?}"
        );
    }
    let (mut out_pos, mut err_pos) = from;
    let mut seen = Seen {
        stdout: String::new(),
        stderr: String::new(),
        out_chunks: Vec::new(),
        err_chunks: Vec::new(),
        completed: Value::Null,
        failed: None,
        events: events.clone(),
    };
    for m in &mine {
        match m["event"].as_str().unwrap() {
            "output" => {
                let d = m["data"].as_str().unwrap();
                let off = m["offset"].as_u64().unwrap();
                assert_eq!(off, out_pos, "task {id}: output offset {off} but {out_pos} stdout bytes came before it");
                assert!(!d.is_empty(), "task {id}: empty output chunk: {m}");
                out_pos += d.len() as u64;
                seen.stdout.push_str(d);
                seen.out_chunks.push((off, d.to_string()));
            }
            "error" => {
                let d = m["data"].as_str().unwrap();
                if let Some(off) = m["offset"].as_u64() {
                    assert_eq!(off, err_pos, "task {id}: error offset {off} but {err_pos} stderr bytes came before it");
                }
                err_pos += d.len() as u64;
                seen.stderr.push_str(d);
                seen.err_chunks.push((m["offset"].as_u64().unwrap_or(u64::MAX), d.to_string()));
            }
            "completed" => seen.completed = m["data"].clone(),
            "failed" => seen.failed = Some(m["data"].clone()),
            _ => {}
        }
    }
    seen
}

/// Every chunk but the last ends at a line end (CONTRACT.md §3).
#[track_caller]
fn check_line_chunks(chunks: &[(u64, String)], what: &str) {
    for (i, (off, c)) in chunks.iter().enumerate() {
        if i + 1 < chunks.len() {
            assert!(
                c.ends_with('\n'),
                "{what}: chunk {i} at offset {off} does not end at a line end: ...{:?}",
                &c[c.len().saturating_sub(40)..]
            );
        }
    }
}

fn seq_text(from: u64, to: u64) -> String {
    let mut s = String::with_capacity(((to - from + 1) * 7) as usize);
    for i in from..=to {
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s
}

/// Does a raw WebSocket handshake on a new connection and returns the stream, positioned
/// right after the 101 response.
#[track_caller]
fn raw_ws(a: &Agent) -> TcpStream {
    let mut s = common::raw_connect(a, Duration::from_secs(20));
    let req = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Cluster-Secret: {SECRET}\r\n\r\n",
        a.port
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "raw handshake not answered with 101: {head:?}");
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "wrong or missing Sec-WebSocket-Accept: {head:?}"
    );
    s
}

/// Reads an HTTP response head byte by byte (so no frame after it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends a raw upgrade request with `extra` headers on `path`; returns the HTTP status.
fn raw_upgrade_status(a: &Agent, path: &str, extra: &str) -> (Option<u16>, String) {
    let mut s = common::raw_connect(a, Duration::from_secs(20));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        a.port
    );
    s.write_all(req.as_bytes()).unwrap();
    let (bytes, _) = common::read_until_close(&mut s, Duration::from_secs(10));
    (common::raw_status(&bytes), String::from_utf8_lossy(&bytes).into_owned())
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Message shapes.
// ---------------------------------------------------------------------------

#[test]
fn message_shapes_follow_the_compat_format() {
    let a = common::agent().start();
    let t0 = now_ms();
    let mut ws = connect_synced(&a);
    let id = a.run("sh", &["-c", "echo out1; echo err1 >&2; echo out2"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let seen = check_task(&msgs, id, t0, true, (0, 0));
    let started = msgs.iter().find(|m| m["taskId"].as_u64() == Some(id) && m["event"] == "started").unwrap();
    assert_eq!(started["data"]["command"], "sh", "{started}");
    assert_eq!(started["data"]["args"], json!(["-c", "echo out1; echo err1 >&2; echo out2"]), "{started}");
    assert_eq!(seen.stdout, "out1\nout2\n", "concatenated output chunks");
    assert_eq!(seen.stderr, "err1\n", "concatenated error chunks (stderr)");
    assert_eq!(seen.completed["status"], "completed", "{}", seen.completed);
    assert_eq!(seen.completed["exitCode"], 0, "{}", seen.completed);
    assert!(seen.completed["signal"].is_null(), "{}", seen.completed);
    assert!(seen.failed.is_none(), "no `failed` for a program that started");
    let t = a.wait_task(id);
    assert_eq!(t["stdout"], seen.stdout.as_str());
    assert_eq!(t["stderr"], seen.stderr.as_str());
    assert_eq!(t["status"], seen.completed["status"]);
    assert_eq!(t["duration"], seen.completed["duration"], "completed.duration is the task's duration");

    // Non-zero exit: status failed, its exit code.
    let id = a.run("sh", &["-c", "exit 3"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let seen = check_task(&msgs, id, t0, true, (0, 0));
    assert_eq!(seen.completed["status"], "failed", "{}", seen.completed);
    assert_eq!(seen.completed["exitCode"], 3, "{}", seen.completed);
    assert!(seen.completed["signal"].is_null(), "{}", seen.completed);
    assert!(seen.failed.is_none(), "`failed` event is only for spawn failures: {:?}", seen.events);

    // Death by signal: exitCode null, signal named.
    let id = a.run("sh", &["-c", "kill -TERM $$"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let seen = check_task(&msgs, id, t0, true, (0, 0));
    assert_eq!(seen.completed["status"], "failed", "{}", seen.completed);
    assert!(seen.completed["exitCode"].is_null(), "{}", seen.completed);
    assert_eq!(seen.completed["signal"], "SIGTERM", "{}", seen.completed);
}

#[test]
fn spawn_failure_sends_failed_then_completed() {
    let a = common::agent().start();
    let t0 = now_ms();
    let mut ws = connect_synced(&a);
    let id = a.run("/nonexistent/codara-no-such-program-7781", &["x"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let seen = check_task(&msgs, id, t0, has_started(&msgs, id), (0, 0));
    let f =
        seen.failed.unwrap_or_else(|| panic!("no `failed` event for a program that does not exist: {:?}", seen.events));
    assert!(f["error"].as_str().unwrap().len() > 3, "{f}");
    assert_eq!(seen.completed["status"], "failed", "{}", seen.completed);
    let ev = &seen.events;
    assert_eq!(&ev[ev.len() - 2..], ["failed", "completed"], "{ev:?}");
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed");
    assert!(t["error"].is_string(), "{t}");

    // A cwd that does not exist: same.
    let r = a.post("/execute", &json!({"command": "true", "cwd": "/nonexistent/codara-no-such-dir-7781"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let seen = check_task(&msgs, id, t0, has_started(&msgs, id), (0, 0));
    assert!(seen.failed.is_some(), "no `failed` event for a cwd that does not exist: {:?}", seen.events);
    assert_eq!(seen.completed["status"], "failed", "{}", seen.completed);
    // Nothing more about either task afterwards (completed is the last, exactly once).
    let more = read_for(&mut ws, Duration::from_millis(700));
    assert!(more.is_empty(), "messages after `completed`: {}", summary(&more));
}

/// Whether `started` of task `id` is among `msgs` (optional before a spawn failure, or when a
/// client subscribed after the start; if it is there, it must be first).
fn has_started(msgs: &[Value], id: u64) -> bool {
    msgs.iter().any(|m| m["taskId"].as_u64() == Some(id) && m["event"] == "started")
}

// ---------------------------------------------------------------------------
// Authentication.
// ---------------------------------------------------------------------------

#[test]
fn upgrade_refused_without_or_with_a_wrong_secret() {
    let a = common::agent().start();
    let wrong = "wrong-secret-0123456789abcdef";
    for (path, extra, what) in [
        ("/", String::new(), "no secret"),
        ("/", format!("X-Cluster-Secret: {wrong}\r\n"), "wrong X-Cluster-Secret"),
        ("/", format!("Authorization: Bearer {wrong}\r\n"), "wrong bearer token"),
        (&*format!("/?secret={wrong}"), String::new(), "wrong ?secret="),
        ("/", format!("Authorization: Basic {SECRET}\r\n"), "secret under another scheme than Bearer"),
        ("/", "X-Cluster-Secret: \r\n".to_string(), "empty X-Cluster-Secret"),
    ] {
        let (status, text) = raw_upgrade_status(&a, path, &extra);
        assert_eq!(status, Some(403), "{what}: expected HTTP 403 before the upgrade, got {status:?}: {text:?}");
        let r = common::read_response(&mut std::io::BufReader::new(text.as_bytes()));
        assert_eq!(r.json(), json!({"error": "Invalid cluster secret"}), "{what}: {text:?}");
    }
    for auth in [Auth::Nothing, Auth::Header(wrong), Auth::Bearer(wrong), Auth::Query(wrong)] {
        match try_connect(&a, auth) {
            Ok(_) => panic!("{auth:?}: the agent accepted a WebSocket client without the right secret"),
            Err((status, body)) => assert_eq!(status, Some(403), "{auth:?}: {body}"),
        }
    }
    let mut a = a;
    a.assert_alive();
}

#[test]
fn upgrade_accepted_with_each_way_of_presenting_the_secret() {
    let a = common::agent().start();
    let mut clients: Vec<(String, Ws)> = Vec::new();
    for auth in [Auth::Header(SECRET), Auth::Bearer(SECRET), Auth::Query(SECRET)] {
        let ws = try_connect(&a, auth).unwrap_or_else(|e| panic!("{auth:?} refused: {e:?}"));
        clients.push((format!("{auth:?}"), ws));
    }
    // Any path accepts an upgrade.
    let mut req = format!("ws://127.0.0.1:{}/some/other/path", a.port).into_client_request().unwrap();
    req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(SECRET).unwrap());
    let s = TcpStream::connect(a.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (ws, _) = tungstenite::client::client(req, s).expect("upgrade on another path");
    clients.push(("other path".into(), ws));
    // All are known to the broadcaster once each got a task's `completed`.
    let sync = a.run("true", &[]);
    for (_, ws) in clients.iter_mut() {
        until_completed(ws, sync, Duration::from_secs(30));
    }

    let t0 = now_ms();
    let id = a.run("echo", &["authenticated"]);
    for (what, ws) in clients.iter_mut() {
        let msgs = until_completed(ws, id, Duration::from_secs(30));
        let seen = check_task(&msgs, id, t0, true, (0, 0));
        assert_eq!(seen.stdout, "authenticated\n", "{what}");
    }
}

#[test]
fn anonymous_clients_accepted_only_when_allowed_with_a_warning() {
    let a = common::agent().env("WS_ALLOW_ANONYMOUS", "true").start();
    let log = a.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("anonymous")),
        "WS_ALLOW_ANONYMOUS=true must log a warning at start; log:\n{log}"
    );
    let t0 = now_ms();
    let mut anon = try_connect(&a, Auth::Nothing).unwrap_or_else(|e| panic!("anonymous client refused: {e:?}"));
    let mut with = connect(&a);
    // Both are known to the broadcaster once each got a task's `completed`.
    let sync = a.run("true", &[]);
    for ws in [&mut anon, &mut with] {
        until_completed(ws, sync, Duration::from_secs(30));
    }
    let id = a.run("echo", &["anon"]);
    for ws in [&mut anon, &mut with] {
        let msgs = until_completed(ws, id, Duration::from_secs(30));
        assert_eq!(check_task(&msgs, id, t0, true, (0, 0)).stdout, "anon\n");
    }
    // HTTP still needs the secret.
    let r = a.request("GET", "/tasks", &[], b"");
    assert_eq!(r.status, 403, "WS_ALLOW_ANONYMOUS must not open the HTTP API: {}", r.text());

    // Without the setting: no warning, and anonymous clients are refused.
    let b = common::agent().start();
    assert!(
        !b.log_text().lines().any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("anonymous")),
        "warning about anonymous clients without WS_ALLOW_ANONYMOUS:\n{}",
        b.log_text()
    );
    let Err(e) = try_connect(&b, Auth::Nothing) else { panic!("anonymous client accepted by default") };
    assert_eq!(e.0, Some(403), "{e:?}");
}

// ---------------------------------------------------------------------------
// A client sees every event of a task started after its handshake.
// ---------------------------------------------------------------------------

/// Connects, then waits until the broadcaster demonstrably knows the client: a `true`
/// task's `completed` reaches it. Tests whose subject is not the connect-time race use this,
/// so a failure points at one bug; `events_of_tasks_started_after_the_handshake_all_arrive`
/// tests that race itself.
#[track_caller]
fn connect_synced(a: &Agent) -> Ws {
    let mut ws = connect(a);
    sync_client(a, &mut ws);
    ws
}

#[track_caller]
fn sync_client(a: &Agent, ws: &mut Ws) {
    let id = a.run("true", &[]);
    until_completed(ws, id, Duration::from_secs(30));
}

#[test]
fn events_of_tasks_started_after_the_handshake_all_arrive() {
    let a = common::agent().start();
    let t0 = now_ms();
    // Some CPU pressure from the test process (bounded in time), as on a busy CI box.
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut failures = Vec::new();
    for i in 0..100 {
        // The handshake is complete once `connect` returns: a task started now is "after".
        let mut ws = connect(&a);
        let id = a.run("echo", &[&format!("race {i}")]);
        let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
        let events: Vec<&str> = msgs
            .iter()
            .filter(|m| m["taskId"].as_u64() == Some(id))
            .map(|m| m["event"].as_str().unwrap_or("?"))
            .collect();
        if events.first() != Some(&"started") {
            failures.push(format!("round {i}: task {id} events {events:?}"));
        } else {
            let seen = check_task(&msgs, id, t0, true, (0, 0));
            assert_eq!(seen.stdout, format!("race {i}\n"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    assert!(
        failures.is_empty(),
        "a client connected (101 received) before a task started missed the task's first events in {} of 100 \
         rounds (CONTRACT §3: without a subscribe a connection gets every task's events):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Order, reassembly, chunking.
// ---------------------------------------------------------------------------

#[test]
fn concurrent_tasks_each_in_order_with_completed_last_once() {
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "6").start();
    let t0 = now_ms();
    let mut ws = connect_synced(&a);
    let mut ids = Vec::new();
    for k in 0..6 {
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do echo \"t{k} out $i\"; echo \"t{k} err $i\" >&2; i=$((i+1)); done; echo \"t{k} end\""
        );
        ids.push((k, a.run("sh", &["-c", &script])));
    }
    let mut pending: Vec<u64> = ids.iter().map(|(_, id)| *id).collect();
    let msgs = collect_until(&mut ws, Duration::from_secs(90), "`completed` of all 6 tasks", |v| {
        if v["event"] == "completed" {
            pending.retain(|id| v["taskId"].as_u64() != Some(*id));
        }
        pending.is_empty()
    });
    for (k, id) in &ids {
        let seen = check_task(&msgs, *id, t0, true, (0, 0));
        let mut out = String::new();
        let mut err = String::new();
        for i in 0..300 {
            out.push_str(&format!("t{k} out {i}\n"));
            err.push_str(&format!("t{k} err {i}\n"));
        }
        out.push_str(&format!("t{k} end\n"));
        assert_eq!(seen.stdout, out, "task {id}: stdout reassembled from `output` chunks");
        assert_eq!(seen.stderr, err, "task {id}: stderr reassembled from `error` chunks");
        check_line_chunks(&seen.out_chunks, &format!("task {id} stdout"));
        check_line_chunks(&seen.err_chunks, &format!("task {id} stderr"));
        assert_eq!(seen.completed["status"], "completed");
    }
    let more = read_for(&mut ws, Duration::from_millis(700));
    assert!(more.is_empty(), "messages after every task completed: {}", summary(&more));
}

#[test]
fn seq_300000_reassembled_exactly_in_line_chunks_few_messages() {
    let a = common::agent().start();
    let t0 = now_ms();
    let mut ws = connect_synced(&a);
    let id = a.run("seq", &["1", "300000"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(120));
    let seen = check_task(&msgs, id, t0, true, (0, 0));
    let expected = seq_text(1, 300000);
    assert_eq!(seen.stdout.len(), expected.len(), "reassembled stdout length");
    assert!(seen.stdout == expected, "reassembled stdout differs from `seq 1 300000`");
    assert_eq!(seen.stderr, "");
    check_line_chunks(&seen.out_chunks, "seq stdout");
    let n = seen.out_chunks.len();
    assert!(n < 30_000, "{n} output messages for 300000 lines: many lines must travel in one message under load");
    assert_eq!(seen.completed["status"], "completed");
    assert_eq!(seen.completed["exitCode"], 0);
}

#[test]
fn replay_after_the_task_ended_from_zero_and_from_a_chunk_boundary() {
    let a = common::agent().start();
    let t0 = now_ms();
    let mut live = connect_synced(&a);
    let id = a.run("sh", &["-c", "seq 1 150000; seq 150001 250000 >&2"]);
    let msgs = until_completed(&mut live, id, Duration::from_secs(120));
    let seen = check_task(&msgs, id, t0, true, (0, 0));
    let out = seq_text(1, 150000);
    let err = seq_text(150001, 250000);
    assert!(seen.stdout == out, "live stdout differs");
    assert!(seen.stderr == err, "live stderr differs");
    a.wait_task(id);

    // From the start.
    let mut ws = connect(&a);
    subscribe(&mut ws, id, 0, 0);
    let r = until_completed(&mut ws, id, Duration::from_secs(60));
    let rs = check_task(&r, id, t0, false, (0, 0));
    assert!(rs.stdout == out, "replay from 0: stdout differs (len {} vs {})", rs.stdout.len(), out.len());
    assert!(rs.stderr == err, "replay from 0: stderr differs (len {} vs {})", rs.stderr.len(), err.len());
    assert_eq!(rs.completed, seen.completed, "replayed `completed` equals the live one");
    assert!(r.iter().all(|m| m["taskId"].as_u64() == Some(id)), "replay sent other tasks: {}", summary(&r));
    let more = read_for(&mut ws, Duration::from_millis(700));
    assert!(more.is_empty(), "messages after the replayed `completed`: {}", summary(&more));

    // From a chunk boundary in the middle of each stream.
    let pick = |chunks: &[(u64, String)], what: &str| -> u64 {
        assert!(chunks.len() >= 2, "{what}: only {} chunk(s), no middle boundary to replay from", chunks.len());
        chunks[chunks.len() / 2].0
    };
    let mid_out = pick(&seen.out_chunks, "stdout");
    let mid_err = if seen.err_chunks.len() >= 2 && seen.err_chunks[0].0 != u64::MAX {
        pick(&seen.err_chunks, "stderr")
    } else {
        0
    };
    let mut ws = connect(&a);
    subscribe(&mut ws, id, mid_out, mid_err);
    let r = until_completed(&mut ws, id, Duration::from_secs(60));
    let rs = check_task(&r, id, t0, false, (mid_out, mid_err));
    assert!(rs.stdout == out[mid_out as usize..], "replay from {mid_out}: not exactly the rest of stdout");
    assert!(rs.stderr == err[mid_err as usize..], "replay from errorOffset {mid_err}: not exactly the rest of stderr");
    assert_eq!(rs.out_chunks.first().map(|c| c.0), Some(mid_out), "first replayed chunk starts at the offset");
    let more = read_for(&mut ws, Duration::from_millis(700));
    assert!(more.is_empty(), "messages after the replayed `completed`: {}", summary(&more));

    // From the end: nothing but `completed`.
    let mut ws = connect(&a);
    subscribe(&mut ws, id, out.len() as u64, err.len() as u64);
    let r = until_completed(&mut ws, id, Duration::from_secs(60));
    let rs = check_task(&r, id, t0, false, (out.len() as u64, err.len() as u64));
    assert_eq!(rs.events, ["completed"], "replay from the end");

    // A spawn failure replays `failed` then `completed`.
    let bad = a.run("/nonexistent/codara-no-such-program-7782", &[]);
    a.wait_task(bad);
    let mut ws = connect(&a);
    subscribe(&mut ws, bad, 0, 0);
    let r = until_completed(&mut ws, bad, Duration::from_secs(60));
    let rs = check_task(&r, bad, t0, false, (0, 0));
    assert_eq!(rs.events, ["failed", "completed"], "replay of a spawn failure");
}

// ---------------------------------------------------------------------------
// Subscribe / unsubscribe.
// ---------------------------------------------------------------------------

#[test]
fn subscribe_narrows_the_connection_to_named_tasks() {
    let a = common::agent().start();
    let t0 = now_ms();
    let mut all = connect_synced(&a);
    // The first subscribe narrows the connection (to a task that has already ended; the
    // connection is made after it ended, so its only `completed` is the replayed one).
    let tx = a.run("true", &[]);
    a.wait_task(tx);
    until_completed(&mut all, tx, Duration::from_secs(30));
    let mut narrow = connect(&a);
    subscribe(&mut narrow, tx, 0, 0);
    until_completed(&mut narrow, tx, Duration::from_secs(30));
    let ta = a.run("sh", &["-c", "echo a1; sleep 3; echo a2"]);
    // Subscribing while A runs: its output from 0 (replayed), then live.
    subscribe(&mut narrow, ta, 0, 0);
    let tb = a.run("sh", &["-c", "echo b1; echo b2 >&2"]);
    let tb_end = a.wait_task(tb);
    assert_eq!(tb_end["status"], "completed");
    let got = until_completed(&mut narrow, ta, Duration::from_secs(60));
    assert!(
        !got.iter().any(|m| m["taskId"].as_u64() == Some(tb)),
        "subscribed to task {ta} only, but got task {tb}'s events: {}",
        summary(&got)
    );
    let seen = check_task(&got, ta, t0, has_started(&got, ta), (0, 0));
    assert_eq!(seen.stdout, "a1\na2\n", "subscribed task's output, replayed then live");
    // The unsubscribed connection got both (compat: every task).
    let all_msgs = until_completed(&mut all, ta, Duration::from_secs(60));
    assert_eq!(check_task(&all_msgs, tb, t0, true, (0, 0)).stdout, "b1\n");
    assert_eq!(check_task(&all_msgs, ta, t0, true, (0, 0)).stdout, "a1\na2\n");
    // A later task is not sent to the narrowed connection either.
    let tc = a.run("echo", &["c"]);
    a.wait_task(tc);
    until_completed(&mut all, tc, Duration::from_secs(30));
    let more = read_for(&mut narrow, Duration::from_millis(1000));
    assert!(more.is_empty(), "narrowed connection got events of unsubscribed tasks: {}", summary(&more));
}

#[test]
fn unsubscribe_stops_a_tasks_events() {
    let a = common::agent().start();
    let t0 = now_ms();
    // Narrow the connection first (to a task that has ended before it connected), so A's
    // events come only through its subscription.
    let tx = a.run("true", &[]);
    a.wait_task(tx);
    let mut ws = connect(&a);
    subscribe(&mut ws, tx, 0, 0);
    until_completed(&mut ws, tx, Duration::from_secs(30));
    let ta = a.run("sh", &["-c", "echo a-start; sleep 3; echo a-end"]);
    subscribe(&mut ws, ta, 0, 0);
    let got = collect_until(&mut ws, Duration::from_secs(30), "task A's first output", |v| {
        v["taskId"].as_u64() == Some(ta) && v["event"] == "output"
    });
    assert!(got.iter().all(|m| m["taskId"].as_u64() == Some(ta)));
    send_json(&mut ws, json!({"type": "unsubscribe", "taskId": ta}));
    // D ends well after A; subscribe to it to keep the connection narrowed to something.
    let td = a.run("sh", &["-c", "sleep 5; echo d-end"]);
    subscribe(&mut ws, td, 0, 0);
    let end_a = a.wait_task(ta);
    assert_eq!(end_a["stdout"], "a-start\na-end\n");
    let rest = until_completed(&mut ws, td, Duration::from_secs(60));
    let of_a: Vec<&Value> = rest.iter().filter(|m| m["taskId"].as_u64() == Some(ta)).collect();
    assert!(of_a.is_empty(), "events of task {ta} after unsubscribing from it: {of_a:?}");
    assert_eq!(check_task(&rest, td, t0, has_started(&rest, td), (0, 0)).stdout, "d-end\n");
}

#[test]
fn subscribe_to_an_unknown_task_gets_an_error() {
    let a = common::agent().start();
    let mut ws = connect(&a);
    subscribe(&mut ws, 987654, 0, 0);
    let got = collect_until(&mut ws, Duration::from_secs(30), "an error message", |v| v["type"] == "error");
    let e = got.last().unwrap();
    assert_eq!(e, &json!({"type": "error", "error": "Task not found", "taskId": 987654}));
}

// ---------------------------------------------------------------------------
// Slow clients, many clients, hostile clients, ping.
// ---------------------------------------------------------------------------

#[test]
fn stalled_client_does_not_slow_the_task_or_other_clients_and_is_closed() {
    let mut a = common::agent().start();
    let pid = a.pid();
    // A: never reads, never subscribes (gets every task's events).
    let mut stalled_all = connect_small_rcvbuf(&a);
    // B: reads everything, as fast as it can, doing little per message.
    let mut reader = connect(&a);
    let task_id = Arc::new(AtomicU64::new(0));
    let reader_thread = {
        let task_id = Arc::clone(&task_id);
        std::thread::spawn(move || -> Result<(Duration, u64, u64), String> {
            let start = Instant::now();
            let deadline = start + Duration::from_secs(120);
            let (mut bytes, mut n) = (0u64, 0u64);
            loop {
                if Instant::now() >= deadline {
                    return Err(format!("no `completed` within 120 s ({n} messages, {bytes} bytes)"));
                }
                reader.get_ref().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                match reader.read() {
                    Ok(Message::Text(t)) => {
                        n += 1;
                        bytes += t.len() as u64;
                        if t.len() < 4096 && t.contains("\"completed\"") {
                            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                            let id = task_id.load(Ordering::Acquire);
                            if id != 0 && is_completed_of(&v, id) {
                                return Ok((start.elapsed(), n, bytes));
                            }
                        }
                    }
                    Ok(Message::Close(f)) => {
                        return Err(format!("reading client was closed: {f:?} after {n} messages"))
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(format!("reading client's connection ended: {e} after {n} messages")),
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut max = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(300) {
                if let Some(k) = vm_rss_kib(pid) {
                    max = max.max(k);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            max
        })
    };
    let baseline = vm_rss_kib(pid).unwrap_or(0);
    let started = Instant::now();
    let id = a.run("sh", &["-c", "yes aaaaaaaa | head -c 67108864"]);
    task_id.store(id, Ordering::Release);
    // C: subscribes to the big task, then never reads.
    let mut stalled_sub = connect_small_rcvbuf(&a);
    subscribe(&mut stalled_sub, id, 0, 0);

    // The task itself is not held back by the stalled clients.
    let deadline = started + Duration::from_secs(60);
    let t = loop {
        let t = a.get(&format!("/task/{id}")).json();
        if t["status"] != "running" {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "64 MiB task still running after 60 s with stalled WebSocket clients: {t}\nlog:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(t["status"], "completed", "{t}");
    let task_time = started.elapsed();

    // The reading client gets `completed`.
    let r = reader_thread.join().unwrap();
    let (reader_time, n, bytes) =
        r.unwrap_or_else(|e| panic!("reading client: {e}\n(task took {task_time:?})\nlog:\n{}", a.log_text()));
    assert!(bytes >= 67_108_864, "reading client got only {bytes} bytes of messages for 64 MiB of output");
    assert!(
        reader_time < Duration::from_secs(90),
        "reading client got `completed` only after {reader_time:?} ({n} messages)"
    );
    stop.store(true, Ordering::Release);
    let max_rss = sampler.join().unwrap();
    eprintln!(
        "stalled-client test: task {task_time:?}, reader {reader_time:?} ({n} messages), RSS baseline {baseline} KiB, max {max_rss} KiB"
    );
    // Budget: 3 clients (2 stalled, 1 reading) × 8 MiB of queue, plus 24 MiB for pipes,
    // log writes, channels and allocator slack, over the baseline. 64 MiB of output held
    // for a stalled client (an unbounded queue) would go over it.
    let bound = baseline + (3 * 8 + 24) * 1024;
    assert!(
        max_rss < bound,
        "agent RSS reached {max_rss} KiB (baseline {baseline} KiB, bound {bound} KiB) with stalled clients: \
         queues are not bounded by the 8 MiB per-client budget"
    );

    // The stalled clients were closed: after reading what was buffered, a close frame with
    // code 1008 or the end of the connection.
    for (what, ws) in
        [("stalled client (all tasks)", &mut stalled_all), ("stalled client (subscribed)", &mut stalled_sub)]
    {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut n = 0u64;
        let mut saw_completed = false;
        let end = loop {
            match read_one(ws, deadline) {
                Got::Msg(v) => {
                    n += 1;
                    saw_completed |= is_completed_of(&v, id);
                }
                Got::Closed(code, why) => break (code, why),
                Got::Timeout => panic!(
                    "{what}: still open 90 s after resuming ({n} messages read, `completed` seen: {saw_completed}); it fell far behind and must be closed"
                ),
            }
        };
        if let Some(code) = end.0 {
            assert_eq!(code, 1008, "{what}: closed with code {code} ({}); expected 1008", end.1);
        }
        eprintln!("{what}: {n} messages then {end:?}");
    }
    let log = a.wait_log("behind", Duration::from_secs(10));
    assert!(
        log.lines().any(|l| l.to_ascii_lowercase().contains("behind")),
        "no log line saying a WebSocket client fell behind; log:\n{log}"
    );
    a.assert_alive();
}

#[test]
fn two_hundred_clients_all_get_completed() {
    let a = common::agent().start();
    let mut clients = Vec::new();
    for i in 0..200 {
        let ws = try_connect(&a, Auth::Header(SECRET))
            .unwrap_or_else(|e| panic!("client {i} could not connect: {e:?}\nlog:\n{}", a.log_text()));
        clients.push(ws);
    }
    // All are known to the broadcaster once each got a task's `completed`.
    let sync = a.run("true", &[]);
    for ws in clients.iter_mut() {
        until_completed(ws, sync, Duration::from_secs(60));
    }
    let t0 = now_ms();
    let id = a.run("sh", &["-c", "echo many; echo clients"]);
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut msgs = Vec::new();
                loop {
                    match read_one(&mut ws, deadline) {
                        Got::Msg(v) => {
                            let done = is_completed_of(&v, id);
                            msgs.push(v);
                            if done {
                                return Ok(msgs);
                            }
                        }
                        other => return Err(format!("client {i}: {other:?} before `completed`; {}", summary(&msgs))),
                    }
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(msgs) => {
                let seen = check_task(&msgs, id, t0, true, (0, 0));
                assert_eq!(seen.stdout, "many\nclients\n");
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 clients did not get `completed`: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn garbage_frames_close_only_the_client_that_sent_them() {
    let mut a = common::agent().start();
    let t0 = now_ms();
    let mut good = connect_synced(&a);
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        // A client frame must be masked.
        ("unmasked text frame", b"\x81\x05hello".to_vec()),
        // Opcode 3 is reserved.
        ("reserved opcode 0x3", vec![0x83, 0x80 | 4, 1, 2, 3, 4, b'x' ^ 1, b'y' ^ 2, b'z' ^ 3, b'!' ^ 4]),
        // RSV bits set without an extension.
        ("random bytes", vec![0x7f, 0xe3, 0x19, 0xa4, 0x00, 0xff, 0x5c, 0x33, 0x91, 0x02, 0x6e, 0xd8, 0x47]),
        // A frame claiming 1 TiB.
        ("huge length", vec![0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 9, 9, 9, 9]),
        // A text frame that is not UTF-8.
        ("invalid UTF-8 text", vec![0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28]),
    ];
    for (what, bytes) in &garbage {
        let mut s = raw_ws(&a);
        s.write_all(bytes).unwrap();
        let (_, closed) = common::read_until_close(&mut s, Duration::from_secs(30));
        assert!(closed, "{what}: the agent did not close the connection that sent it within 30 s");
    }
    // Garbage, then the socket left open without more: the others are unaffected.
    let mut lingering = raw_ws(&a);
    lingering.write_all(b"\x81\x05hello").unwrap();
    a.assert_alive();
    let id = a.run("echo", &["still here"]);
    let msgs = until_completed(&mut good, id, Duration::from_secs(30));
    assert_eq!(check_task(&msgs, id, t0, true, (0, 0)).stdout, "still here\n");
    // And new clients are still accepted.
    let mut late = connect_synced(&a);
    let id = a.run("echo", &["again"]);
    for ws in [&mut good, &mut late] {
        let msgs = until_completed(ws, id, Duration::from_secs(30));
        assert_eq!(check_task(&msgs, id, t0, true, (0, 0)).stdout, "again\n");
    }
    drop(lingering);
    a.assert_alive();
}

#[test]
fn server_answers_ping_with_pong() {
    let a = common::agent().start();
    let mut ws = connect(&a);
    for payload in [&b"codara-ping-1"[..], &b""[..], &[0u8, 255, 1, 2][..]] {
        ws.send(Message::Ping(tungstenite::Bytes::copy_from_slice(payload))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = None;
        for _ in 0..1000 {
            if Instant::now() >= deadline {
                break;
            }
            ws.get_ref().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            match ws.read() {
                Ok(Message::Pong(p)) => {
                    got = Some(p);
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("connection ended while waiting for a pong: {e}"),
            }
        }
        let p = got.expect("no pong within 20 s");
        assert_eq!(&p[..], payload, "pong must echo the ping's payload");
    }
    // A clean close is answered with a close frame.
    ws.close(None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    match read_one(&mut ws, deadline) {
        Got::Closed(..) => {}
        other => panic!("no close answer: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The independent client (Python `websockets`).
// ---------------------------------------------------------------------------

#[test]
fn independent_python_websockets_client() {
    let a = common::agent().start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_independent.py");
    let probe = Command::new("python3")
        .args(["-c", "import websockets, sys; sys.stdout.write(websockets.__version__)"])
        .output();
    match probe {
        Err(e) => panic!(
            "python3 is needed for this test and could not be run ({e}); install python3 and `pip install websockets`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "the Python package `websockets` is missing: run `pip install websockets` (python3 said: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
    let mut child = Command::new("python3")
        .arg(script)
        .arg(a.port.to_string())
        .arg(SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (to.join().unwrap(), te.join().unwrap());
    let status = status
        .unwrap_or_else(|| panic!("ws_independent.py did not finish in 300 s\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    if status.code() == Some(3) {
        panic!("ws_independent.py: the Python package `websockets` is missing: run `pip install websockets`\n{stdout}{stderr}");
    }
    assert!(
        status.success(),
        "ws_independent.py failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}\nagent log:\n{}",
        a.log_text()
    );
    for check in ["OK handshake", "OK shapes", "OK seq", "OK order", "OK replay", "ALL OK"] {
        assert!(
            stdout.contains(check),
            "ws_independent.py did not report {check:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Output a running task produced while no client was connected (the agent then builds no
/// events at all) is replayed from its log on subscribe, and the live rest follows with no gap
/// and no repeat: offsets run on from 0 and the text is exactly the task's stdout.
#[test]
fn subscribe_to_a_running_task_replays_what_came_before_the_client() {
    let a = common::agent().start();
    let script = "for i in $(seq 1 40); do echo line-$i; sleep 0.05; done";
    let id = a.run("sh", &["-c", script]);
    // Some lines are out before any client exists.
    wait_task_bytes(&a, id, |t| t["stdout"].as_str().is_some_and(|o| o.contains("line-10\n")), "line-10");
    let mut ws = connect(&a);
    subscribe(&mut ws, id, 0, 0);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let mut text = String::new();
    for m in msgs.iter().filter(|m| m["taskId"].as_u64() == Some(id) && m["event"] == "output") {
        assert_eq!(m["offset"].as_u64(), Some(text.len() as u64), "offsets must run on without gap or repeat: {m}");
        text.push_str(m["data"].as_str().unwrap());
    }
    let expected: String = (1..=40).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(text, expected, "{}", summary(&msgs));
    let completed = msgs.iter().filter(|m| is_completed_of(m, id)).count();
    assert_eq!(completed, 1, "{}", summary(&msgs));
}

/// Polls `GET /task/:id` (20 s at most) until `ready` holds for the task object.
#[track_caller]
fn wait_task_bytes(a: &Agent, id: u64, ready: impl Fn(&Value) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = a.get(&format!("/task/{id}")).json();
        if ready(&t) {
            return;
        }
        assert!(Instant::now() < deadline, "task {id}: no {what} within 20 s: {t}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An idle client is pinged (every 30 s), and a pong keeps it connected.
#[test]
fn idle_clients_are_pinged() {
    let a = common::agent().start();
    let mut ws = connect(&a);
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut pinged = false;
    while Instant::now() < deadline && !pinged {
        ws.get_ref().set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match ws.read() {
            Ok(Message::Ping(_)) => pinged = true,
            Ok(other) => panic!("unexpected message while idle: {other:?}"),
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection ended while idle: {e}"),
        }
    }
    assert!(pinged, "no ping within 45 s of idleness");
    // tungstenite answered the ping; the client is still served.
    let id = a.run("echo", &["after-ping"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(20));
    assert!(msgs.iter().any(|m| m["event"] == "output" && m["data"] == "after-ping\n"), "{}", summary(&msgs));
}

/// subscribe, unsubscribe, subscribe: the first replay is cancelled, the second delivers the
/// output once, in order, with one `completed`.
#[test]
fn resubscribing_replays_once() {
    let a = common::agent().start();
    let t = a.run_wait(json!({"command": "seq", "args": ["1", "400000"]}));
    let id = t["id"].as_u64().unwrap();
    let mut ws = connect(&a);
    subscribe(&mut ws, id, 0, 0);
    send_json(&mut ws, json!({"type": "unsubscribe", "taskId": id}));
    subscribe(&mut ws, id, 0, 0);
    // Whatever the cancelled replay had queued comes first; then the second replay from 0.
    let msgs = until_completed(&mut ws, id, Duration::from_secs(60));
    let outputs: Vec<&Value> = msgs.iter().filter(|m| m["event"] == "output").collect();
    let restart = outputs.iter().rposition(|m| m["offset"] == 0).expect("a replay from offset 0");
    let mut text = String::new();
    for m in &outputs[restart..] {
        assert_eq!(m["offset"].as_u64(), Some(text.len() as u64), "offsets of the second replay must run on");
        text.push_str(m["data"].as_str().unwrap());
    }
    assert_eq!(text, seq_text(1, 400000), "the second replay delivers the output once");
    // Nothing more: a single completed, no second copy trailing.
    let more = read_for(&mut ws, Duration::from_millis(1500));
    assert!(more.iter().all(|m| m["taskId"].as_u64() != Some(id)), "{}", summary(&more));
    assert_eq!(msgs.iter().filter(|m| is_completed_of(m, id)).count(), 1);
}

/// `?subscribe=N` in the URL narrows the connection from its first event: the task's output
/// comes from offset 0, in order and once, although the task was already writing fast on
/// both streams before the client connected.
#[test]
fn subscribing_in_the_url_gives_ordered_output_from_the_start() {
    let a = common::agent().start();
    let script = "i=0; while [ $i -lt 3000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; sleep 0.5; echo end";
    let id = a.run("sh", &["-c", script]);
    wait_task_bytes(&a, id, |t| t["stdoutBytes"].as_u64() > Some(0) && t["stderrBytes"].as_u64() > Some(0), "output");
    let query = format!("{SECRET}&subscribe={id}");
    let mut ws = try_connect(&a, Auth::Query(&query)).expect("connect with ?subscribe=");
    let msgs = until_completed(&mut ws, id, Duration::from_secs(60));
    let (mut out, mut err) = (String::new(), String::new());
    for m in &msgs {
        assert_eq!(m["taskId"].as_u64(), Some(id), "only the subscribed task: {m}");
        let (buf, ev) = match m["event"].as_str() {
            Some("output") => (&mut out, "output"),
            Some("error") => (&mut err, "error"),
            _ => continue,
        };
        assert_eq!(m["offset"].as_u64(), Some(buf.len() as u64), "{ev} offsets must run on from 0: {m}");
        buf.push_str(m["data"].as_str().unwrap());
    }
    let want_out: String = (0..3000).map(|i| format!("out-{i}\n")).collect::<String>() + "end\n";
    let want_err: String = (0..3000).map(|i| format!("err-{i}\n")).collect();
    assert_eq!(out, want_out);
    assert_eq!(err, want_err);
}

// ---------------------------------------------------------------------------
// Clients attached the way a main server attaches: for a long time, listening only, while
// tasks run concurrently (issue: EINTR ended clients; listening clients were cut at 90 s).
// ---------------------------------------------------------------------------

/// Reads for `dur`, counting the server's pings, and returns the text messages (the
/// connection must stay open). tungstenite answers each ping when it next reads.
#[track_caller]
fn read_counting_pings(ws: &mut Ws, dur: Duration, mut stop: impl FnMut(&Value) -> bool) -> (Vec<Value>, u32) {
    let deadline = Instant::now() + dur;
    let (mut msgs, mut pings) = (Vec::new(), 0u32);
    while Instant::now() < deadline {
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON event");
                let done = stop(&v);
                msgs.push(v);
                if done {
                    break;
                }
            }
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(f)) => panic!("the agent closed a client that keeps up: {f:?}; {}", summary(&msgs)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => panic!("the connection of a client that keeps up ended: {e}; {}", summary(&msgs)),
        }
    }
    (msgs, pings)
}

/// SIGSTOP then SIGCONT makes every blocking socket call with a timeout return EINTR: no
/// client may take that for the end of its connection.
#[test]
fn stop_and_continue_of_the_agent_closes_no_client() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let mut clients: Vec<Ws> = (0..3).map(|_| connect_synced(&a)).collect();
    for round in 0..3 {
        a.signal("STOP");
        std::thread::sleep(Duration::from_millis(300));
        a.signal("CONT");
        std::thread::sleep(Duration::from_millis(300));
        let id = a.run("echo", &[&format!("after-continue-{round}")]);
        for (i, ws) in clients.iter_mut().enumerate() {
            let msgs = until_completed(ws, id, Duration::from_secs(30));
            assert!(
                msgs.iter().any(|m| m["taskId"] == id && m["data"] == format!("after-continue-{round}\n")),
                "client {i} lost the output after stop/continue {round}: {}",
                summary(&msgs)
            );
        }
    }
    assert!(!a.log_text().contains("disconnected"), "a client was dropped:\n{}", a.log_text());
}

/// Tasks started four at a time: the SIGCHLDs of their ends interrupt socket reads of other
/// threads. A client attached the whole time stays connected and gets every `completed`.
#[test]
fn a_client_attached_while_tasks_spawn_concurrently_is_never_dropped() {
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "4").start();
    let _g = common::logs_on_panic(&a);
    let mut ws = connect_synced(&a);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let addr = a.addr();
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let (stop, started, addr) = (Arc::clone(&stop), Arc::clone(&started), addr.clone());
            std::thread::spawn(move || {
                let body = br#"{"command":"/bin/true"}"#;
                while !stop.load(Ordering::Acquire) {
                    if let Some(id) = post_execute(&addr, body) {
                        started.lock().unwrap().push(id);
                    } else {
                        std::thread::sleep(Duration::from_millis(5)); // 503 while full
                    }
                }
            })
        })
        .collect();
    let watch = std::thread::spawn(move || {
        let (msgs, _) = read_counting_pings(&mut ws, Duration::from_secs(20), |_| false);
        (ws, msgs)
    });
    std::thread::sleep(Duration::from_secs(15));
    stop.store(true, Ordering::Release);
    for s in submitters {
        s.join().unwrap();
    }
    let (mut ws, mut msgs) = watch.join().unwrap();
    let ids = started.lock().unwrap().clone();
    assert!(ids.len() >= 50, "too few tasks ran to show anything: {}", ids.len());
    let mut completed: std::collections::HashSet<u64> =
        msgs.iter().filter(|m| m["event"] == "completed").filter_map(|m| m["taskId"].as_u64()).collect();
    // The last tasks' events may still be on their way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| !completed.contains(id)) && Instant::now() < deadline {
        if let Got::Msg(m) = read_one(&mut ws, deadline) {
            if m["event"] == "completed" {
                completed.extend(m["taskId"].as_u64());
            }
            msgs.push(m);
        }
    }
    let missing: Vec<_> = ids.iter().filter(|id| !completed.contains(id)).collect();
    assert!(missing.is_empty(), "{} of {} tasks without `completed`: {missing:?}", missing.len(), ids.len());
}

/// `POST /execute` on a new connection; the task id, or None when refused.
fn post_execute(addr: &str, body: &[u8]) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Cluster-Secret: {SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let r = common::read_response(&mut std::io::BufReader::new(s));
    (r.status == 200).then(|| r.json()["taskId"].as_u64()).flatten()
}

/// Pings follow their schedule while events flow: a client that only listens is pinged, so
/// its pongs show it is alive.
#[test]
fn pings_keep_their_schedule_while_events_flow() {
    let a = common::agent().env("WS_PING_INTERVAL", "300").start();
    let _g = common::logs_on_panic(&a);
    let mut ws = connect_synced(&a);
    // A line every 50 ms for about 4 s: the client is never without events for long.
    let id = a.run("sh", &["-c", "for i in $(seq 1 80); do echo line-$i; sleep 0.05; done"]);
    let (msgs, pings) = read_counting_pings(&mut ws, Duration::from_secs(60), |v| is_completed_of(v, id));
    assert!(msgs.iter().any(|m| is_completed_of(m, id)), "no `completed`: {}", summary(&msgs));
    let out: String = msgs.iter().filter(|m| m["event"] == "output").filter_map(|m| m["data"].as_str()).collect();
    assert_eq!(out, (1..=80).map(|i| format!("line-{i}\n")).collect::<String>());
    // About 13 at 300 ms; at least 5 whatever the machine's load.
    assert!(pings >= 5, "only {pings} pings in the ~4 s of steady output");
}

/// A client that answers no ping (it never sends a frame) is closed after three intervals
/// with 1001, and the log says why.
#[test]
fn a_client_that_answers_no_ping_is_closed() {
    let a = common::agent().env("WS_PING_INTERVAL", "200").start();
    let _g = common::logs_on_panic(&a);
    let mut s = raw_ws(&a);
    let (bytes, closed) = common::read_until_close(&mut s, Duration::from_secs(20));
    assert!(closed, "a client that answers no ping was never closed");
    // Frames: pings (0x89 0x00), then a close (0x88) with 1001.
    let close_at = bytes.iter().position(|&b| b == 0x88).expect("a close frame");
    assert!(bytes[..close_at].chunks(2).all(|f| f == [0x89, 0x00]), "before the close: {bytes:?}");
    assert!(close_at >= 4, "closed before two pings went unanswered: {bytes:?}");
    assert_eq!(&bytes[close_at + 2..close_at + 4], &1001u16.to_be_bytes(), "close code: {bytes:?}");
    let log = a.wait_log("answered no ping", Duration::from_secs(10));
    assert!(log.contains("answered no ping for 600 ms; closing"), "{log}");
}

/// The old main server's way, with the default settings: one client, attached, never sending
/// anything but the pongs its library answers, while a task prints a line every second for
/// 100 s, past the 90 s after which a silent client is closed.
#[test]
fn a_listening_client_gets_every_line_past_the_silence_timeout() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let mut ws = connect_synced(&a);
    let id = a.run("sh", &["-c", "for i in $(seq 1 100); do echo tick-$i; sleep 1; done"]);
    let (msgs, pings) = read_counting_pings(&mut ws, Duration::from_secs(240), |v| is_completed_of(v, id));
    let out: String = msgs.iter().filter(|m| m["event"] == "output").filter_map(|m| m["data"].as_str()).collect();
    assert_eq!(out, (1..=100).map(|i| format!("tick-{i}\n")).collect::<String>(), "lines lost");
    assert!(msgs.iter().any(|m| is_completed_of(m, id)), "no `completed`: {}", summary(&msgs));
    assert!(pings >= 2, "{pings} pings in 100 s at the default 30 s interval");
}

/// A pause inside a UTF-8 character: the quiet-time flush holds its first bytes back, so the
/// event stream has the character whole, as the task object does.
#[test]
fn a_character_cut_by_a_pause_arrives_whole() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let mut ws = connect_synced(&a);
    let id = a.run("sh", &["-c", r"printf 'caf\303'; sleep 0.3; printf '\251 ok\n'"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    let out: String = msgs.iter().filter(|m| m["event"] == "output").filter_map(|m| m["data"].as_str()).collect();
    assert_eq!(out, "caf\u{e9} ok\n", "{}", summary(&msgs));
    assert_eq!(a.wait_task(id)["stdout"], "caf\u{e9} ok\n");
}

/// A masked client frame with a zero mask (`opcode` with FIN set, payload ≤ 125 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// A client that pings as fast as it can and never reads: only the latest ping needs an
/// answer, so the agent holds one pong for it, not one per ping.
#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let pid = a.agent_pid();
    let before = vm_rss_kib(pid).expect("agent RSS");
    let mut s = raw_ws(&a);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let burst: Vec<u8> = (0..512).flat_map(|_| client_frame(0x9, &[b'p'; 125])).collect();
    let (deadline, mut peak, mut sent) = (Instant::now() + Duration::from_secs(6), before, 0usize);
    while Instant::now() < deadline {
        if s.write_all(&burst).is_err() {
            break; // the agent may close a client it cannot write to: that bounds it too
        }
        sent += burst.len();
        peak = peak.max(vm_rss_kib(pid).unwrap_or(0));
    }
    assert!(sent > 10 << 20, "the flood was too small to show anything: {sent} bytes");
    assert!(peak < before + 32 * 1024, "RSS grew from {before} KiB to {peak} KiB under a ping flood of {sent} bytes");
    drop(s);
    let mut ws = connect_synced(&a);
    let id = a.run("echo", &["after the flood"]);
    until_completed(&mut ws, id, Duration::from_secs(30));
}

/// Close codes a client may not send (RFC 6455 §7.4) are answered with 1002; a valid one, or
/// none, with 1000.
#[test]
fn invalid_close_codes_are_answered_with_1002() {
    let a = common::agent().start();
    for (code, want) in
        [(Some(999u16), 1002u16), (Some(1005), 1002), (Some(5000), 1002), (Some(1000), 1000), (None, 1000)]
    {
        let mut s = raw_ws(&a);
        let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
        s.write_all(&client_frame(0x8, &payload)).unwrap();
        let (bytes, _) = common::read_until_close(&mut s, Duration::from_secs(20));
        let at = bytes.iter().position(|&b| b == 0x88).unwrap_or_else(|| panic!("{code:?}: no close frame: {bytes:?}"));
        assert_eq!(&bytes[at + 2..at + 4], &want.to_be_bytes(), "close code {code:?} answered with {bytes:?}");
    }
}

/// On a connection that gets every task, an unsubscribe stops only the task it names: one
/// from a task that never existed (or has ended) changes nothing.
#[test]
fn unsubscribe_on_an_all_tasks_connection_removes_only_what_it_names() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let mut ws = connect_synced(&a);
    send_json(&mut ws, json!({"type": "unsubscribe", "taskId": 999_999}));
    let quiet = a.run("sh", &["-c", "sleep 1; echo quiet-one"]);
    send_json(&mut ws, json!({"type": "unsubscribe", "taskId": quiet}));
    let loud = a.run("echo", &["still-served"]);
    let msgs = until_completed(&mut ws, loud, Duration::from_secs(30));
    assert!(msgs.iter().any(|m| m["data"] == "still-served\n"), "{}", summary(&msgs));
    a.wait_task(quiet);
    let after = a.run("echo", &["later"]);
    let rest = until_completed(&mut ws, after, Duration::from_secs(30));
    let all: Vec<&Value> = msgs.iter().chain(&rest).collect();
    let of_quiet: Vec<_> = all.iter().filter(|m| m["taskId"] == quiet && m["event"] != "started").collect();
    assert!(of_quiet.is_empty(), "events of the unsubscribed task {quiet}: {of_quiet:?}");
}

/// `?subscribe=` names at most 16 tasks: more is refused before the upgrade, not cut
/// silently; `subscribe=A&subscribe=B` narrows to both.
#[test]
fn url_subscriptions_repeat_and_are_capped_explicitly() {
    let a = common::agent().start();
    let ids: Vec<String> = (1..=17).map(|i| i.to_string()).collect();
    let (status, body) =
        raw_upgrade_status(&a, &format!("/?subscribe={}", ids.join(",")), &format!("X-Cluster-Secret: {SECRET}\r\n"));
    assert_eq!(status, Some(400), "{body}");
    assert!(body.contains("subscribe names more than 16 tasks"), "{body}");
    let one = a.run("echo", &["first"]);
    let two = a.run("echo", &["second"]);
    a.wait_task(one);
    a.wait_task(two);
    let query = format!("{SECRET}&subscribe={one}&subscribe={two}");
    let mut ws = try_connect(&a, Auth::Query(&query)).expect("connect with two subscribe parameters");
    let mut seen = std::collections::HashSet::new();
    let msgs = collect_until(&mut ws, Duration::from_secs(30), "both tasks' completed", |v| {
        if v["event"] == "completed" {
            seen.extend(v["taskId"].as_u64());
        }
        seen.len() == 2
    });
    // The two replays run side by side: either may come first.
    let mut out: Vec<&str> =
        msgs.iter().filter(|m| m["event"] == "output").filter_map(|m| m["data"].as_str()).collect();
    out.sort();
    assert_eq!(out, ["first\n", "second\n"], "{}", summary(&msgs));
}

// ---------------------------------------------------------------------------
// Bounds of one client (README "Bounds"): 64 KiB per message, 16 replays; and the URL's
// subscriptions with offsets.
// ---------------------------------------------------------------------------

/// A masked client frame (zero mask) of any length; `fin` false for a fragment.
fn client_frame_long(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Reads a raw connection to its end; the code of the close frame the agent sent, if any.
/// Frames before it (pings, events) are skipped by their lengths.
fn close_code_of(s: &mut TcpStream, what: &str) -> Option<u16> {
    let (bytes, closed) = common::read_until_close(s, Duration::from_secs(30));
    assert!(closed, "{what}: the connection was not closed within 30 s");
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let (op, len7) = (bytes[i] & 0x0f, (bytes[i + 1] & 0x7f) as usize);
        let (len, head) = match len7 {
            126 => (u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[i + 2..i + 10].try_into().unwrap()) as usize, 10),
            n => (n, 2),
        };
        if op == 0x8 {
            return (len >= 2).then(|| u16::from_be_bytes([bytes[i + head], bytes[i + head + 1]]));
        }
        i += head + len;
    }
    None
}

/// 70 KiB client messages: as one frame, and as two fragments that are each under 64 KiB.
fn oversized_messages() -> Vec<(&'static str, Vec<u8>)> {
    let text = format!("{{\"type\":\"subscribe\",\"taskId\":1,\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let (first, second) = text.as_bytes().split_at(text.len() / 2);
    vec![
        ("one 70 KiB frame", client_frame_long(0x1, true, text.as_bytes())),
        ("two 35 KiB fragments", [client_frame_long(0x1, false, first), client_frame_long(0x0, true, second)].concat()),
    ]
}

/// A client message over 64 KiB closes that client (with a close frame), as one frame or as
/// fragments that are each small enough; a message just under the limit is served, and so
/// are other clients.
#[test]
fn a_client_message_over_64_kib_closes_only_that_client() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let mut good = connect_synced(&a);
    for (what, bytes) in oversized_messages() {
        let mut s = raw_ws(&a);
        let _ = s.write_all(&bytes);
        assert!(close_code_of(&mut s, what).is_some(), "{what}: closed without a close frame");
    }
    // Just under the limit is a message like any other (here: a subscribe with padding).
    let mut s = raw_ws(&a);
    let ok = format!("{{\"type\":\"subscribe\",\"taskId\":999999,\"pad\":\"{}\"}}", "x".repeat(60 * 1024));
    s.write_all(&client_frame_long(0x1, true, ok.as_bytes())).unwrap();
    let mut ws = WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    let got =
        collect_until(&mut ws, Duration::from_secs(30), "an answer to a 60 KiB subscribe", |v| v["type"] == "error");
    assert_eq!(got.last().unwrap(), &json!({"type": "error", "error": "Task not found", "taskId": 999999}));
    let id = a.run("echo", &["after the big messages"]);
    let msgs = until_completed(&mut good, id, Duration::from_secs(30));
    assert!(msgs.iter().any(|m| m["data"] == "after the big messages\n"), "{}", summary(&msgs));
}

/// The README's close code for a client message over 64 KiB is 1009 (message too big).
#[test]
fn a_client_message_over_64_kib_is_closed_with_1009() {
    let a = common::agent().start();
    for (what, bytes) in oversized_messages() {
        let mut s = raw_ws(&a);
        let _ = s.write_all(&bytes);
        assert_eq!(close_code_of(&mut s, what), Some(1009), "{what}: close code");
    }
}

/// `?subscribe=A,B&offset=O&errorOffset=E`: both tasks, each replayed from byte O of its
/// stdout and byte E of its stderr, each with one `completed`, and nothing of other tasks.
#[test]
fn url_subscribe_list_with_offsets_replays_each_task_from_them() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let script = |tag: &str| format!("echo {tag}-out-1; echo {tag}-err-1 >&2; echo {tag}-out-2; echo {tag}-err-2 >&2");
    let one = a.run_wait(json!({"command": "sh", "args": ["-c", script("one")]}));
    let other = a.run_wait(json!({"command": "true"}));
    let two = a.run_wait(json!({"command": "sh", "args": ["-c", script("two")]}));
    let (o, e) = ("one-out-1\n".len(), "one-err-1\n".len());
    let query = format!("{SECRET}&subscribe={},{}&offset={o}&errorOffset={e}", one["id"], two["id"]);
    let mut ws = try_connect(&a, Auth::Query(&query)).expect("connect with ?subscribe=A,B&offset=&errorOffset=");
    let mut ended = std::collections::HashSet::new();
    let msgs = collect_until(&mut ws, Duration::from_secs(30), "both tasks' completed", |v| {
        if v["event"] == "completed" {
            ended.extend(v["taskId"].as_u64());
        }
        ended.len() == 2
    });
    for t in [&one, &two] {
        let id = t["id"].as_u64().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        for m in msgs.iter().filter(|m| m["taskId"] == id) {
            let (buf, from) = match m["event"].as_str() {
                Some("output") => (&mut out, o),
                Some("error") => (&mut err, e),
                Some("completed") => continue,
                _ => panic!("task {id}: unexpected event in a replay of an ended task: {m}"),
            };
            assert_eq!(m["offset"].as_u64(), Some((from + buf.len()) as u64), "offsets run on from {from}: {m}");
            buf.push_str(m["data"].as_str().unwrap());
        }
        assert_eq!(out, t["stdout"].as_str().unwrap()[o..], "task {id}: stdout from offset {o}");
        assert_eq!(err, t["stderr"].as_str().unwrap()[e..], "task {id}: stderr from errorOffset {e}");
        let completed: Vec<&Value> = msgs.iter().filter(|m| is_completed_of(m, id)).collect();
        assert_eq!(completed.len(), 1, "{}", summary(&msgs));
        assert_eq!(completed[0]["data"]["status"], "completed", "{}", completed[0]);
    }
    assert!(msgs.iter().all(|m| m["taskId"] != other["id"]), "a task not named came: {}", summary(&msgs));
}

/// At most 16 replays per connection: with 16 under way (the client reads nothing yet, and
/// each task has far more output than its queue and socket hold, so none can finish), a 17th
/// subscribe is answered `Too many replays under way`. The agent is unharmed.
#[test]
fn a_seventeenth_replay_under_way_is_refused() {
    const REPLAYS: usize = 16;
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "16").start();
    let _g = common::logs_on_panic(&a);
    // 3 MiB of NUL bytes each: 18 MiB as JSON ("\u0000"), more than the 8 MiB queue plus
    // the socket buffers (at most 4 MiB for the agent's send buffer on Linux by default).
    let big: Vec<u64> = (0..=REPLAYS)
        .map(|_| {
            let t = a.run_wait(json!({"command": "head", "args": ["-c", "3145728", "/dev/zero"]}));
            assert_eq!(t["stdoutBytes"], 3145728, "{}", t["status"]);
            t["id"].as_u64().unwrap()
        })
        .collect();
    let mut ws = connect_small_rcvbuf(&a);
    // All 17 subscribes in one write, before reading anything.
    let frames: Vec<u8> = big
        .iter()
        .flat_map(|id| {
            let msg = json!({"type": "subscribe", "taskId": id, "offset": 0, "errorOffset": 0}).to_string();
            client_frame_long(0x1, true, msg.as_bytes())
        })
        .collect();
    ws.get_mut().write_all(&frames).unwrap();
    let refused = big[REPLAYS];
    let want = json!({"type": "error", "error": "Too many replays under way", "taskId": refused});
    let mut seen = 0usize;
    let msgs = collect_until(&mut ws, Duration::from_secs(60), "the refusal of the 17th subscribe", |v| {
        seen += 1;
        *v == want || v["type"] == "error"
    });
    assert_eq!(msgs.last().unwrap(), &want, "after {seen} messages: {}", summary(&msgs));
    drop(ws);
    let mut ws = connect_synced(&a);
    let id = a.run("echo", &["after 17 subscribes"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    assert!(msgs.iter().any(|m| m["data"] == "after 17 subscribes\n"), "{}", summary(&msgs));
}

/// Raises this process's open-file limit (inherited by the agents it starts) to at least
/// `want`: the hard limit too when allowed (root), else the soft one up to the hard. The
/// soft limit reached.
fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if hard < want && setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: Some(want) }).is_ok() {
        return want;
    }
    let soft = want.min(hard);
    if lim.current.is_some_and(|c| c < soft) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(soft), maximum: lim.maximum });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The agent's `codara_websocket_clients` gauge.
fn ws_clients_gauge(a: &Agent) -> u64 {
    let text = a.request("GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("codara_websocket_clients "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no codara_websocket_clients in /metrics:\n{text}"))
}

/// At most 4,096 WebSocket clients: the 4,097th upgrade gets 503 `Too many WebSocket
/// clients` with `Retry-After: 5`; when one leaves, a new client gets in; when all leave,
/// the count is back to 0. The heaviest test here: 4,096 loopback connections, opened in
/// turn (a few seconds), which cost the agent two small threads and three descriptors each;
/// the test raises its open-file limit first (root may raise the hard limit).
#[test]
fn the_4097th_websocket_client_gets_503() {
    const CAP: usize = 4096;
    // The test's sockets, and the agent's (it raises its soft limit to the hard one).
    let nofile = raise_nofile(32 * 1024);
    if nofile < 4 * CAP as u64 {
        common::skip_or_fail(
            "the_4097th_websocket_client_gets_503",
            &format!(
                "the open-file limit is {nofile}; 4,096 clients need about 16,384 (run as root, or raise `ulimit -Hn`)"
            ),
        );
        return;
    }
    // No pings while the clients are opened: they never answer.
    let a = common::agent().env("WS_PING_INTERVAL", "3600000").start();
    let _g = common::logs_on_panic(&a);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CAP);
    for i in 0..CAP {
        assert!(started.elapsed() < Duration::from_secs(300), "only {i} clients connected in 300 s");
        clients.push(raw_ws(&a));
    }
    assert_eq!(ws_clients_gauge(&a), CAP as u64, "codara_websocket_clients with {CAP} connected");
    let (status, answer) = raw_upgrade_status(&a, "/", &format!("X-Cluster-Secret: {SECRET}\r\n"));
    assert_eq!(status, Some(503), "client {}: {answer}", CAP + 1);
    let r = common::read_response(&mut std::io::BufReader::new(answer.as_bytes()));
    assert_eq!(r.json(), json!({"error": "Too many WebSocket clients"}), "{answer}");
    assert_eq!(r.header("retry-after"), Some("5"), "{answer}");
    let log = a.wait_log("clients already connected", Duration::from_secs(10));
    assert!(log.contains(&format!("{CAP} clients already connected")), "no warning for the refusal");
    // One leaves: a new client gets its place (once the agent has seen it go).
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    let replacement = loop {
        if let Ok(ws) = try_connect(&a, Auth::Header(SECRET)) {
            break ws;
        }
        assert!(Instant::now() < deadline, "no place for a new client 30 s after one left");
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(replacement);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ws_clients_gauge(&a) > 0 {
        assert!(Instant::now() < deadline, "{} clients still counted 60 s after all left", ws_clients_gauge(&a));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ws = connect_synced(&a);
    let id = a.run("echo", &["after 4096 clients"]);
    let msgs = until_completed(&mut ws, id, Duration::from_secs(30));
    assert!(msgs.iter().any(|m| m["data"] == "after 4096 clients\n"), "{}", summary(&msgs));
}

/// The server frames in `bytes` (unmasked), as (opcode, payload); a cut last frame is left out.
fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (mut out, mut at) = (Vec::new(), 0usize);
    while at + 2 <= bytes.len() {
        let (op, len7) = (bytes[at] & 0x0f, (bytes[at + 1] & 0x7f) as usize);
        let (len, head) = match len7 {
            126 if at + 4 <= bytes.len() => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
            127 if at + 10 <= bytes.len() => {
                (u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize, 10)
            }
            126 | 127 => break,
            n => (n, 2),
        };
        if at + head + len > bytes.len() {
            break;
        }
        out.push((op, bytes[at + head..at + head + len].to_vec()));
        at += head + len;
    }
    out
}

/// A slow client that is closed for falling behind, then catches up (answering the pings it
/// finds, as Node's `ws` does), gets the 1008 close frame, not a reset.
#[test]
fn a_slow_client_that_catches_up_gets_its_1008_close_frame() {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    // Pings every 2 s: a few are queued behind the flood (3 intervals of silence would close
    // the client as idle before it falls behind).
    let a = common::agent().env("WS_PING_INTERVAL", "2000").start();
    let _g = common::logs_on_panic(&a);
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&SockAddr::from(a.addr().parse::<std::net::SocketAddr>().unwrap())).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Cluster-Secret: {SECRET}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    let flood = "for i in $(seq 20); do yes 0123456789abcdef | head -c 1048576; sleep 0.1; done";
    a.run("sh", &["-c", flood]);
    let kicked = |a: &Agent| a.get("/metrics").text().contains("codara_websocket_clients_closed_slow_total 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kicked(&a) {
        assert!(Instant::now() < deadline, "the client was never closed as too slow");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A pong, as a client's library answers the pings it finds on catching up.
    s.write_all(&[0x8A, 0x80, 1, 2, 3, 4]).unwrap();
    let (bytes, closed) = common::read_until_close(&mut s, Duration::from_secs(30));
    assert!(closed, "the connection was not closed");
    let frames = server_frames(&bytes);
    let last = frames.last().expect("frames");
    assert_eq!(last.0, 0x8, "the last frame is a close ({} frames, {} bytes)", frames.len(), bytes.len());
    assert_eq!(&last.1[..2], &1008u16.to_be_bytes(), "close code");
}
