//! Black-box tests of durability, shutdown and crash recovery (CONTRACT.md §6), against the
//! real binary started by `tests/common`.
//!
//! Network: loopback only. The one test that turns discovery on sends to `127.255.255.255`
//! on a UDP port that the test's own socket holds (bound first, on an ephemeral port).
//! Every loop is bounded; time bounds are generous (2-core CI box, debug build) and no test
//! asserts speed. Process markers used here: `sleep 3007`, `sleep 3011`, `sleep 3012`,
//! `sleep 3014`, `sleep 3015`, `sleep 3016`, `sleep 3017`, `sleep 3018`, `sleep 3021`, `sleep 3022`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, TempDir};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};

// ---------------------------------------------------------------------------
// Helpers (local to this file).
// ---------------------------------------------------------------------------

/// Kills leftovers of a test by marker (cleanup only; the assertions come before).
fn cleanup(marker: &str) {
    let _ = Command::new("pkill").arg("-f").arg(marker).status();
}

/// Sends SIGTERM and asserts the agent exits with code 0.
#[track_caller]
fn stop(a: &mut Agent) {
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(60));
    assert!(st.is_some(), "agent did not exit within 60 s of SIGTERM; logs:\n{}", a.log_text());
    let st = st.unwrap();
    assert_eq!(st.code(), Some(0), "agent exit status after SIGTERM: {st:?}; logs:\n{}", a.log_text());
}

/// Waits (bounded) until the agent has logged that it is draining (the line of the first
/// SIGTERM: "received SIGTERM; draining ..."). The signal is handled on the agent's own
/// thread, so the test must see this before it relies on the drain (or sends a 2nd signal).
fn wait_draining(a: &Agent, timeout: Duration) -> bool {
    let seen =
        |a: &Agent| a.logs.lock().unwrap().iter().any(|l| l.contains("draining") || l.contains("received SIGTERM"));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if seen(a) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen(a)
}

/// Polls `GET /task/:id/output` until it contains `needle` (bounded).
fn wait_output_contains(a: &Agent, id: u64, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = a.get(&format!("/task/{id}/output"));
        let text = r.text();
        if (r.status == 200 && text.contains(needle)) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn task_ids(list: &Value) -> Vec<u64> {
    list["tasks"].as_array().expect("tasks array").iter().map(|t| t["id"].as_u64().expect("id")).collect()
}

/// A UDP socket bound like the agent's (`0.0.0.0:<ephemeral>`, SO_REUSEADDR + SO_REUSEPORT),
/// so the agent can share the port; the socket holds the port for the test's whole life.
fn shared_udp_socket() -> (UdpSocket, u16) {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into()).unwrap();
    let s: UdpSocket = s.into();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// Reads packets from `s` (bounded) until one has `type == ty`; returns it.
fn recv_packet_of_type(s: &UdpSocket, ty: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(250)))).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Ok(v) = serde_json::from_slice::<Value>(&buf[..n]) {
                if v["type"] == ty {
                    return Some(v);
                }
            }
        }
    }
    None
}

fn list_dir(p: &Path) -> BTreeSet<String> {
    std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Restart on the same DATA_DIR.
// ---------------------------------------------------------------------------

#[test]
fn restart_keeps_history_output_and_ids_grow() {
    let data = TempDir::new("dur-restart");
    let data_dir = data.path().join("data");

    let mut a = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&a);
    let t1 = a.run_wait(json!({"command": "sh", "args": ["-c", "echo out-one; echo err-one >&2"]}));
    let t2 = a.run_wait(json!({"command": "sh", "args": ["-c", "echo out-two; exit 4"]}));
    let id1 = t1["id"].as_u64().unwrap();
    let id2 = t2["id"].as_u64().unwrap();
    assert_eq!(t1["status"], "completed", "{t1}");
    assert_eq!(t2["status"], "failed", "{t2}");
    stop(&mut a);
    drop(_g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);

    let r1 = b.get(&format!("/task/{id1}"));
    assert_eq!(r1.status, 200, "task {id1} after restart: {}", r1.text());
    let r1 = r1.json();
    assert_eq!(r1["status"], "completed", "{r1}");
    assert_eq!(r1["exitCode"], 0, "{r1}");
    assert_eq!(r1["stdout"], "out-one\n", "{r1}");
    assert_eq!(r1["stderr"], "err-one\n", "{r1}");
    assert_eq!(r1["command"], "sh", "{r1}");

    let r2 = b.get(&format!("/task/{id2}"));
    assert_eq!(r2.status, 200, "task {id2} after restart: {}", r2.text());
    let r2 = r2.json();
    assert_eq!(r2["status"], "failed", "{r2}");
    assert_eq!(r2["exitCode"], 4, "{r2}");
    assert_eq!(r2["stdout"], "out-two\n", "{r2}");

    let o1 = b.get(&format!("/task/{id1}/output"));
    assert_eq!(o1.status, 200, "{}", o1.text());
    let o1 = o1.text();
    assert!(o1.contains("out-one\n") && o1.contains("err-one\n"), "output of task {id1}: {o1:?}");
    let so = b.get(&format!("/task/{id1}/output?stream=stdout"));
    assert_eq!(so.status, 200);
    assert_eq!(so.text(), "out-one\n");
    let se = b.get(&format!("/task/{id1}/output?stream=stderr"));
    assert_eq!(se.status, 200);
    assert_eq!(se.text(), "err-one\n");

    let list = b.get("/tasks");
    assert_eq!(list.status, 200);
    let ids = task_ids(&list.json());
    assert!(ids.contains(&id1) && ids.contains(&id2), "/tasks after restart: {ids:?}");

    let t3 = b.run_wait(json!({"command": "true"}));
    let id3 = t3["id"].as_u64().unwrap();
    assert!(id3 > id1.max(id2), "new id {id3} must be larger than the earlier {id1}, {id2}");
    let ids = task_ids(&b.get("/tasks").json());
    assert_eq!(ids.first(), Some(&id3), "/tasks newest first: {ids:?}");
}

// ---------------------------------------------------------------------------
// Crash (SIGKILL) recovery.
// ---------------------------------------------------------------------------

#[test]
fn sigkill_crash_marks_running_task_failed_and_kills_leftovers() {
    const M: &str = "sleep 3007";
    let data = TempDir::new("dur-kill");
    let data_dir = data.path().join("data");

    let mut a = common::agent().data_dir(&data_dir).start();
    let g = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "echo before; sleep 3007 & sleep 3007"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");
    let out = wait_output_contains(&a, id, "before", Duration::from_secs(20));
    assert!(out.contains("before"), "output before the crash not logged: {out:?}");
    a.signal("KILL");
    assert!(a.wait_exit(Duration::from_secs(20)).is_some(), "agent did not die on SIGKILL");
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let gone = common::wait_gone(M, Duration::from_secs(10));
    cleanup(M);
    assert!(gone, "'{M}' still running 10 s after the restart");

    let r = b.get(&format!("/task/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_else(|| panic!("no error string: {t}")).to_lowercase();
    assert!(err.contains("agent") && err.contains("stop"), "error should say the agent stopped: {t}");
    assert!(t["completedAt"].is_u64(), "{t}");
    assert!(t["stdout"].as_str().unwrap_or("").contains("before"), "stdout before the crash: {t}");
    let o = b.get(&format!("/task/{id}/output"));
    assert_eq!(o.status, 200);
    assert!(o.text().contains("before"), "output before the crash: {:?}", o.text());

    let list = task_ids(&b.get("/tasks").json());
    assert!(list.contains(&id), "{list:?}");
    assert!(b.get("/tasks?status=running").json()["tasks"].as_array().unwrap().is_empty());
    let next = b.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert!(next > id, "new id {next} after {id}");
}

// ---------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------

#[test]
fn sigterm_drains_then_kills_stubborn_task_sends_leave_and_records_it() {
    const M: &str = "sleep 3011";
    let data = TempDir::new("dur-term");
    let data_dir = data.path().join("data");
    let (udp, udp_port) = shared_udp_socket();

    let mut a = common::agent()
        .data_dir(&data_dir)
        .env("SHUTDOWN_TIMEOUT", "1000")
        .env("KILL_GRACE", "1000")
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("DISCOVERY_PORT", &udp_port.to_string())
        .start();
    let g = common::logs_on_panic(&a);
    let hostname = a.get("/health").json()["hostname"].as_str().unwrap().to_string();
    let id = a.run("sh", &["-c", "trap \"\" TERM; sleep 3011"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");

    let t0 = Instant::now();
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(30));
    let elapsed = t0.elapsed();
    let left_over = !common::wait_gone(M, Duration::from_secs(3));
    cleanup(M);
    let st = st.unwrap_or_else(|| panic!("agent did not exit within 30 s of SIGTERM; logs:\n{}", a.log_text()));
    assert_eq!(st.code(), Some(0), "exit status {st:?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "exit took {elapsed:?}; SHUTDOWN_TIMEOUT 1000 + KILL_GRACE 1000 should end it well within 10 s"
    );
    assert!(
        elapsed >= Duration::from_millis(1500),
        "exit after {elapsed:?}: the running task should have had SHUTDOWN_TIMEOUT (1 s) and KILL_GRACE (1 s)"
    );
    assert!(!left_over, "'{M}' outlived the agent");

    let leave = recv_packet_of_type(&udp, "cluster_leave", Duration::from_secs(5));
    let leave = leave.unwrap_or_else(|| panic!("no cluster_leave on UDP port {udp_port}; logs:\n{}", a.log_text()));
    assert_eq!(leave["port"], a.port, "{leave}");
    assert_eq!(leave["hostname"], hostname.as_str(), "{leave}");
    assert!(leave["timestamp"].is_u64(), "{leave}");
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let t = b.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_else(|| panic!("no error: {t}")).to_lowercase();
    assert!(err.contains("agent") && err.contains("shut"), "error should say the agent shut down: {t}");
}

#[test]
fn during_drain_execute_gets_503_and_health_answers() {
    const M: &str = "sleep 3014";
    let mut a = common::agent().env("SHUTDOWN_TIMEOUT", "3000").env("KILL_GRACE", "1000").start();
    let _g = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3014"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");

    a.signal("TERM");
    // The agent logs when it starts draining; the signal is handled on its own thread.
    let draining = wait_draining(&a, Duration::from_secs(10));
    let r = a.post("/execute", &json!({"command": "echo", "args": ["too late"]}));
    let health = a.get("/health");
    let t = a.get(&format!("/task/{id}"));
    let st = a.wait_exit(Duration::from_secs(30));
    let gone = common::wait_gone(M, Duration::from_secs(5));
    cleanup(M);

    assert!(draining, "no 'draining' log line after SIGTERM");
    assert_eq!(r.status, 503, "POST /execute during the drain: {} {}", r.status, r.text());
    assert_eq!(r.json(), json!({"error": "Agent is shutting down", "reason": "shutdown"}), "the drain's 503 body");
    assert_eq!(r.header("retry-after"), Some("30"), "Retry-After while draining: {:?}", r.headers);
    assert_eq!(health.status, 200, "GET /health during the drain: {}", health.text());
    assert_eq!(health.json()["status"], "healthy");
    assert_eq!(t.status, 200);
    assert_eq!(t.json()["status"], "running", "the task keeps running during the drain");
    let st = st.unwrap_or_else(|| panic!("agent did not exit"));
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(gone, "'{M}' outlived the agent");
}

#[test]
fn task_finishing_within_shutdown_timeout_completes() {
    let data = TempDir::new("dur-finish");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).env("SHUTDOWN_TIMEOUT", "10000").start();
    let g = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "sleep 1; echo finished"]);
    let t0 = Instant::now();
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("agent did not exit"));
    let elapsed = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{st:?}");
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let t = b.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["exitCode"], 0, "{t}");
    assert_eq!(t["stdout"], "finished\n", "{t}");
    assert!(t["error"].is_null(), "{t}");
    // The agent waited for the task (it slept 1 s after the signal was sent at the earliest).
    assert!(elapsed >= Duration::from_millis(500), "agent exited after {elapsed:?}, before the task could end");
}

#[test]
fn second_sigterm_stops_tasks_at_once() {
    const M: &str = "sleep 3012";
    let data = TempDir::new("dur-twice");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).env("SHUTDOWN_TIMEOUT", "60000").env("KILL_GRACE", "60000").start();
    let g = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "trap \"\" TERM; sleep 3012"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");

    a.signal("TERM");
    let draining = wait_draining(&a, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let still_up = a.child.try_wait().unwrap().is_none();
    let still_running = common::process_running(M);
    let t0 = Instant::now();
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(20));
    let elapsed = t0.elapsed();
    let gone = common::wait_gone(M, Duration::from_secs(3));
    cleanup(M);

    assert!(draining, "no 'draining' log line after the first SIGTERM");
    assert!(still_up, "agent exited after the first SIGTERM although SHUTDOWN_TIMEOUT is 60 s");
    assert!(still_running, "task killed after the first SIGTERM although SHUTDOWN_TIMEOUT is 60 s");
    let st = st.unwrap_or_else(|| panic!("agent did not exit within 20 s of the second SIGTERM"));
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(elapsed < Duration::from_secs(10), "exit {elapsed:?} after the second SIGTERM");
    assert!(gone, "'{M}' outlived the agent");
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let t = b.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or("").to_lowercase();
    assert!(err.contains("shut"), "error should say the agent shut down: {t}");
}

// ---------------------------------------------------------------------------
// TASK_HISTORY.
// ---------------------------------------------------------------------------

#[test]
fn task_history_bounds_memory_and_disk() {
    let data = TempDir::new("dur-hist");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "5").start();
    let g = common::logs_on_panic(&a);
    let mut ids = Vec::new();
    for i in 1..=12 {
        let t = a.run_wait(json!({"command": "echo", "args": [format!("task-{i}")]}));
        assert_eq!(t["status"], "completed", "{t}");
        ids.push(t["id"].as_u64().unwrap());
    }
    assert_eq!(ids, (1..=12).collect::<Vec<u64>>(), "ids of a fresh DATA_DIR");

    assert_eq!(settled_list(&a, 5), vec![12, 11, 10, 9, 8], "/tasks with TASK_HISTORY=5");
    let r = a.get("/task/1");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "Task not found");
    let r = a.get("/task/7");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = a.get("/task/8");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stdout"], "task-8\n");

    let tasks_dir = data_dir.join("tasks");
    // Output logs of evicted tasks are deleted at once; records live in one journal, which is
    // rewritten to the kept tasks at start and whenever it grows past a few times the history.
    let mut want: BTreeSet<String> = (8..=12).map(|i| format!("{i}.log")).collect();
    want.insert("journal.jsonl".to_string());
    want.insert("next-id".to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut files = list_dir(&tasks_dir);
    while files != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        files = list_dir(&tasks_dir);
    }
    assert_eq!(files, want, "files in DATA_DIR/tasks with TASK_HISTORY=5");

    stop(&mut a);
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "5").start();
    let _g = common::logs_on_panic(&b);
    let listed = task_ids(&b.get("/tasks").json());
    assert_eq!(listed, vec![12, 11, 10, 9, 8], "/tasks after the restart");
    // The restart rewrote the journal: one record per kept task, nothing of the evicted.
    let journal = std::fs::read_to_string(data_dir.join("tasks/journal.jsonl")).unwrap();
    let ids: Vec<u64> =
        journal.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![8, 9, 10, 11, 12], "journal after the restart");
    assert_eq!(b.get("/task/8").json()["stdout"], "task-8\n");
    let t = b.run_wait(json!({"command": "echo", "args": ["task-13"]}));
    assert_eq!(t["id"], 13, "{t}");
    assert_eq!(settled_list(&b, 5), vec![13, 12, 11, 10, 9], "/tasks after one more task");
}

/// The ids `/tasks` lists once it holds at most `history` tasks (10 s at most): a
/// `?wait=true` reply goes out just before its task joins the history and evicts the oldest,
/// so the listing may hold one more for a moment.
fn settled_list(a: &common::Agent, history: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut listed = task_ids(&a.get("/tasks").json());
    while listed.len() > history && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        listed = task_ids(&a.get("/tasks").json());
    }
    listed
}

// ---------------------------------------------------------------------------
// DATA_DIR problems.
// ---------------------------------------------------------------------------

#[test]
fn unwritable_data_dir_stops_start_with_one_clear_line() {
    let tmp = TempDir::new("dur-baddata");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data = file.join("data");
    let cmd = common::base_command(tmp.path(), &data);
    let out = common::run_binary(cmd, Duration::from_secs(30));
    let st =
        out.status.unwrap_or_else(|| panic!("agent did not exit; stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr));
    assert!(!st.success(), "agent must not start with DATA_DIR under a regular file: {st:?}");
    assert!(!out.stdout.contains("listening on"), "agent listened anyway:\n{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got:\n{}", out.stderr);
    assert!(lines[0].contains("DATA_DIR"), "the line should name DATA_DIR: {:?}", lines[0]);
    assert!(lines[0].contains(&data.display().to_string()), "the line should name the path: {:?}", lines[0]);
}

#[test]
fn write_failure_while_running_keeps_the_agent_going() {
    let mut a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let before = a.run_wait(json!({"command": "echo", "args": ["ok"]}));
    assert_eq!(before["status"], "completed");

    let tasks_dir = a.data_dir.join("tasks");
    std::fs::remove_dir_all(&tasks_dir).unwrap();
    std::fs::write(&tasks_dir, b"in the way").unwrap();
    let log_len = a.logs.lock().unwrap().len();

    let r = a.post("/execute?wait=true", &json!({"command": "sh", "args": ["-c", "echo kept; echo oops >&2; exit 5"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["exitCode"], 5, "{t}");
    assert_eq!(t["stdout"], "kept\n", "{t}");
    assert_eq!(t["stderr"], "oops\n", "{t}");
    let id = t["id"].as_u64().unwrap();

    let g = a.get(&format!("/task/{id}"));
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.json()["stdout"], "kept\n");
    assert_eq!(g.json()["exitCode"], 5);
    // Its output log could not be created: /output serves what is held in memory, and says so.
    let o = a.get(&format!("/task/{id}/output"));
    assert_eq!(o.status, 200, "{}", o.text());
    assert_eq!(o.text(), "kept\noops\n");
    assert!(o.header("X-Codara-Output").is_some_and(|h| h.starts_with("incomplete")), "{:?}", o.headers);
    assert_eq!(a.get(&format!("/task/{id}/output?stream=stderr")).text(), "oops\n");

    let t2 = a.run_wait(json!({"command": "echo", "args": ["again"]}));
    assert_eq!(t2["status"], "completed", "{t2}");
    assert_eq!(t2["stdout"], "again\n", "{t2}");

    a.assert_alive();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.logs.lock().unwrap()[log_len..].iter().any(|l| l.contains("WARN")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let new_lines: Vec<String> = a.logs.lock().unwrap()[log_len..].to_vec();
    assert!(
        new_lines.iter().any(|l| l.contains("WARN") || l.contains("ERROR")),
        "no warning logged for the write failure; new log lines:\n{}",
        new_lines.join("\n")
    );
    assert!(std::fs::metadata(&tasks_dir).unwrap().is_file(), "test setup: tasks is still a file");
}

/// History evicts the tasks that finished longest ago, not the lowest ids: a long task that
/// newer short ones outlive is still there, with its output, once it ends; and ids keep
/// growing after a restart even when the kept tasks don't hold the highest one.
#[test]
fn history_keeps_a_long_task_outlived_by_short_ones() {
    let data = TempDir::new("dur-order");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "3").start();
    let long = a.run("sh", &["-c", "echo long-output; sleep 1"]);
    for i in 0..5 {
        a.run_wait(json!({"command": "echo", "args": [format!("short-{i}")]}));
    }
    let t = a.wait_task(long);
    assert_eq!(t["stdout"], "long-output\n", "{t}");
    let out = a.get(&format!("/task/{long}/output"));
    assert_eq!(out.status, 200);
    assert_eq!(out.text(), "long-output\n");
    stop(&mut a);
}

/// With TASK_HISTORY=1, a short task (id 2) ends before a long one (id 1), which then evicts
/// it: only id 1 is kept, yet after a restart the next id is 3, never 2 again.
#[test]
fn ids_are_never_reused_when_the_highest_was_evicted() {
    let data = TempDir::new("dur-ids");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "1").start();
    let long = a.run("sh", &["-c", "sleep 1"]);
    let short = a.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    a.wait_task(long);
    assert_eq!(task_ids(&a.get("/tasks").json()), vec![long], "only the last to end is kept");
    stop(&mut a);
    drop(a);
    // Twice: the first start rewrites the journal with only the kept task (id 1).
    for _ in 0..2 {
        let mut b = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "1").start();
        assert_eq!(task_ids(&b.get("/tasks").json()), vec![long]);
        stop(&mut b);
    }
    let c = common::agent().data_dir(&data_dir).env("TASK_HISTORY", "1").start();
    let next = c.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert!(next > short, "id {next} after restarts; {short} was already given");
}

/// A second agent started on the same DATA_DIR by mistake refuses to start, and touches
/// nothing: the first one's running task, journal and ids are unharmed.
#[test]
fn a_second_agent_on_the_same_data_dir_refuses_and_harms_nothing() {
    let mut a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let id = a.run("sleep", &["3016"]);
    assert!(common::wait_running("sleep 3016", Duration::from_secs(10)));
    let journal = a.data_dir.join("tasks/journal.jsonl");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&journal).unwrap());

    let cwd = TempDir::new("second-agent");
    let out = common::run_binary(common::base_command(cwd.path(), &a.data_dir), Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("is in use by another codara-agent")
            || out.stdout.contains("is in use by another codara-agent"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!("pid {}", a.pid())) || out.stdout.contains(&format!("pid {}", a.pid())),
        "{out:?}"
    );

    // The first agent's task still runs, its journal is the same file, and ids go on.
    assert_eq!(a.get(&format!("/task/{id}")).json()["status"], "running");
    assert!(common::process_running("sleep 3016"));
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&journal).unwrap()), inode);
    let next = a.run_wait(json!({"command": "true"}));
    assert_eq!(next["id"], id + 1, "{next}");
    cleanup("sleep 3016");
    stop(&mut a);
    // Once the first has stopped, the DATA_DIR is free again.
    let b = common::agent().data_dir(&a.data_dir.clone()).start();
    assert!(b.health_ok());
}

/// A second signal that comes during the kill grace (after SHUTDOWN_TIMEOUT) ends the grace.
#[test]
fn second_signal_during_the_kill_grace_kills_at_once() {
    const M: &str = "sleep 3017";
    let mut a = common::agent().env("SHUTDOWN_TIMEOUT", "300").env("KILL_GRACE", "60000").start();
    let _g = common::logs_on_panic(&a);
    a.run("sh", &["-c", "trap \"\" TERM; sleep 3017; sleep 3017"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");
    a.signal("TERM");
    // Past SHUTDOWN_TIMEOUT: the task has had its SIGTERM, and ignores it.
    assert!(wait_draining(&a, Duration::from_secs(10)));
    let log = a.wait_log("stopping 1 task(s) still running", Duration::from_secs(20));
    assert!(log.contains("stopping 1 task(s) still running"), "SHUTDOWN_TIMEOUT never ran out:\n{log}");
    assert!(a.child.try_wait().unwrap().is_none(), "exited before the grace");
    let t0 = Instant::now();
    a.signal("INT");
    let st = a.wait_exit(Duration::from_secs(30));
    let elapsed = t0.elapsed();
    cleanup(M);
    assert_eq!(st.and_then(|s| s.code()), Some(0), "no clean exit after the second signal");
    assert!(elapsed < Duration::from_secs(15), "exit {elapsed:?} after the second signal; KILL_GRACE is 60 s");
}

/// SIGHUP (the terminal closed) drains like SIGTERM; under `nohup`, which ignores it, it
/// still does nothing.
#[test]
fn sighup_drains_unless_it_was_ignored_at_start() {
    // SIGHUP's default disposition, whatever this test inherited (a CI job run under nohup
    // ignores it, and so would the agent).
    let dir = TempDir::new("hup");
    let data = dir.path().join("data");
    let mut env = Command::new("env");
    env.args(["--default-signal=HUP", env!("CARGO_BIN_EXE_codara-agent")]);
    let mut cmd = common::wrapped_command(env, dir.path(), &data);
    cmd.env("SHUTDOWN_TIMEOUT", "300").env("KILL_GRACE", "300");
    let mut a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    a.run("sleep", &["3018"]);
    assert!(common::wait_running("sleep 3018", Duration::from_secs(20)));
    a.signal("HUP");
    let st = a.wait_exit(Duration::from_secs(30));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "SIGHUP did not drain and exit 0: {}", a.log_text());
    assert!(a.log_text().contains("received SIGHUP"), "{}", a.log_text());
    assert!(common::wait_gone("sleep 3018", Duration::from_secs(5)));

    let dir = TempDir::new("nohup");
    let data = dir.path().join("data");
    let mut nohup = Command::new("nohup");
    nohup.arg(env!("CARGO_BIN_EXE_codara-agent"));
    let cmd = common::wrapped_command(nohup, dir.path(), &data);
    let mut b = common::spawn_agent(cmd, dir, data);
    b.signal("HUP");
    std::thread::sleep(Duration::from_millis(1000));
    b.assert_alive();
}

/// On a full disk an append to the journal can write part of a record. It is cut off again,
/// so the next record does not run into it (both would be lost as one unreadable line, and
/// a finished task would come back `failed` after a restart). A 128 KiB tmpfs is DATA_DIR,
/// in a mount namespace of the agent's own; the test reads it through /proc/<pid>/root.
#[test]
fn a_full_disk_leaves_no_torn_line_in_the_journal() {
    if !common::unshare_works(
        "a_full_disk_leaves_no_torn_line_in_the_journal",
        &["--mount", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
    ) {
        return;
    }
    let dir = TempDir::new("full-disk");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut sh = Command::new("unshare");
    sh.args([
        "--mount",
        "sh",
        "-c",
        "mount -t tmpfs -o size=128k none \"$1\" && exec \"$0\"",
        env!("CARGO_BIN_EXE_codara-agent"),
    ])
    .arg(&data);
    let cmd = common::wrapped_command(sh, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data.clone());
    let _g = common::logs_on_panic(&a);
    let inside = std::path::PathBuf::from(format!("/proc/{}/root{}", a.pid(), data.display()));
    // Fill the disk with one task's output log, then run tasks whose records do not all fit.
    let big =
        a.run_wait(json!({"command": "sh", "args": ["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo end"]}));
    assert_eq!(big["status"], "completed", "{big}");
    let mut ids = Vec::new();
    for i in 0..40 {
        let t = a.run_wait(json!({"command": "echo", "args": [format!("task-{i}-{}", "y".repeat(200))]}));
        ids.push(t["id"].as_u64().unwrap());
    }
    // Make room, and run one more.
    std::fs::remove_file(inside.join(format!("tasks/{}.log", big["id"]))).unwrap();
    let last = a.run_wait(json!({"command": "echo", "args": ["after"]}));
    assert_eq!(last["status"], "completed", "{last}");
    let journal = std::fs::read_to_string(inside.join("tasks/journal.jsonl")).unwrap();
    let torn: Vec<&str> = journal.lines().filter(|l| serde_json::from_str::<Value>(l).is_err()).collect();
    assert!(torn.is_empty(), "torn journal lines: {torn:?}");
    assert!(journal.lines().any(|l| l.contains("\"after\"") && l.contains("completed")), "the last record is missing");
    let log = a.wait_log("No space left on device", Duration::from_secs(10));
    assert!(log.contains("No space left on device"), "the disk never filled: {log}");
}

// ---------------------------------------------------------------------------
// Recovery after a crash: the pid-reuse guard.
// ---------------------------------------------------------------------------

/// A process group leader running `sleep SECONDS`, unrelated to any agent (the test's child).
fn group_leader_sleep(seconds: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new("sleep").arg(seconds).process_group(0).stdin(std::process::Stdio::null()).spawn().expect("start sleep")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A journal records a running task whose pid now belongs to an unrelated process (a group
/// leader, so killing "its group" would kill it). Its start time does not match the
/// record's `startedAt`, so the restarted agent must leave it alone, and still record the
/// task `failed`. A control record whose pid and start time do match shows that the journal
/// was read and that a surviving group is killed: the guard is what spares the other one.
#[test]
fn restart_never_kills_a_process_that_reused_a_recorded_pid() {
    let data = TempDir::new("dur-pid-reuse");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).start();
    let g = common::logs_on_panic(&a);
    let first = a.run_wait(json!({"command": "true"}));
    assert_eq!(first["status"], "completed", "{first}");
    stop(&mut a);
    drop(g);
    drop(a);

    // The start record of task 1 (status running) is the template of the crafted ones.
    let journal = data_dir.join("tasks/journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let template: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["id"] == 1 && r["status"] == "running")
        .unwrap_or_else(|| panic!("no start record of task 1 in the journal:\n{text}"));
    let spawned_at = now_ms();
    let mut unrelated = group_leader_sleep("3333");
    let mut control = group_leader_sleep("3334");
    let control_pid = control.id();
    let record = |id: u64, pid: u32, started_at: u64, arg: &str| {
        let mut r = template.clone();
        r["id"] = json!(id);
        r["command"] = json!("sleep");
        r["args"] = json!([arg]);
        r["pid"] = json!(pid);
        r["startedAt"] = json!(started_at);
        r.to_string()
    };
    // Task 2's process started an hour before `sleep 3333`; task 3's is `sleep 3334` itself.
    let lines = format!(
        "{}\n{}\n",
        record(2, unrelated.id(), spawned_at - 3_600_000, "3333"),
        record(3, control_pid, spawned_at, "3334")
    );
    std::fs::OpenOptions::new().append(true).open(&journal).unwrap().write_all(lines.as_bytes()).unwrap();

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let deadline = Instant::now() + Duration::from_secs(20);
    let control_end = loop {
        if let Some(st) = control.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = control.kill();
    let _ = control.wait();
    let unrelated_alive = unrelated.try_wait().unwrap().is_none();
    let _ = unrelated.kill();
    let _ = unrelated.wait();

    let control_end = control_end.unwrap_or_else(|| {
        panic!("control: the group of a recorded task whose process survived was not killed:\n{}", b.log_text())
    });
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&control_end),
        Some(9),
        "control: not killed with SIGKILL: {control_end:?}"
    );
    assert!(
        unrelated_alive,
        "the restart killed an unrelated process that reused a recorded task's pid:\n{}",
        b.log_text()
    );
    let log = b.log_text();
    assert!(log.contains(&format!("task 3: killed process group {control_pid} left running")), "{log}");
    assert!(!log.contains("task 2: killed"), "{log}");
    for id in [2, 3] {
        let t = b.get(&format!("/task/{id}")).json();
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["error"], "the agent stopped while the task was running", "{t}");
    }
}

// ---------------------------------------------------------------------------
// Damaged output logs (crafted history: journal lines and logs written by the test).
// ---------------------------------------------------------------------------

/// One record of the output log format (src/tasks/output_log.rs): tag, u32 LE length, bytes.
fn log_record(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// A finished task's journal line with these byte counts.
fn finished_record(id: u64, stdout_bytes: u64, stderr_bytes: u64) -> Value {
    let t = now_ms() - 10_000;
    json!({"id": id, "command": "sh", "args": ["-c", "crafted"], "cwd": "/", "env": {}, "status": "completed",
           "startedAt": t, "exitCode": 0, "signal": null, "completedAt": t + 100, "duration": 100,
           "stdoutBytes": stdout_bytes, "stderrBytes": stderr_bytes})
}

/// Writes `DATA_DIR/tasks/journal.jsonl` with `records` and `<id>.log` files.
fn craft_history(data_dir: &Path, records: &[Value], logs: &[(u64, Vec<u8>)]) {
    let tasks = data_dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let journal: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(tasks.join("journal.jsonl"), journal).unwrap();
    for (id, bytes) in logs {
        std::fs::write(tasks.join(format!("{id}.log")), bytes).unwrap();
    }
}

/// The agent started under `ulimit -v` (KiB of address space): an allocation sized by a
/// damaged length (4 GiB) fails there, and the agent aborts.
fn agent_with_ulimit_v(dir: TempDir, data: &Path, kib: u64) -> Agent {
    let mut sh = Command::new("sh");
    sh.args(["-c", &format!("ulimit -v {kib} && exec \"$0\""), env!("CARGO_BIN_EXE_codara-agent")]);
    let cmd = common::wrapped_command(sh, dir.path(), data);
    common::spawn_agent(cmd, dir, data.to_path_buf())
}

/// A length of 0xFFFFFFF0 in a finished task's log: `GET /task/:id` answers at once with
/// what precedes it and says the log is damaged; `/output` says where, in its header.
#[test]
fn a_huge_length_in_a_log_is_reported_as_damage_not_allocated() {
    let dir = TempDir::new("dur-huge-len");
    let data = dir.path().join("data");
    let mut log = log_record(b'o', b"good\n");
    log.extend_from_slice(&[b'o', 0xF0, 0xFF, 0xFF, 0xFF, b'x', b'y', b'z']);
    craft_history(&data, &[finished_record(5, 5, 0)], &[(5, log)]);
    let a = agent_with_ulimit_v(dir, &data, 1_000_000);
    let _g = common::logs_on_panic(&a);

    let r = a.get("/task/5");
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["stdout"], "good\n", "{t}");
    assert_eq!(t["outputDamaged"], true, "{t}");
    assert_eq!(t["outputDamagedAt"], 10, "{t}");
    let o = a.get("/task/5/output");
    assert_eq!(o.status, 200);
    assert_eq!(o.text(), "good\n");
    let h = o.header("X-Codara-Output").unwrap_or_else(|| panic!("no X-Codara-Output: {:?}", o.headers));
    assert!(h.starts_with("damaged at byte 10"), "{h}");
    let log = a.wait_log("damaged at byte 10", Duration::from_secs(10));
    assert!(log.contains("5.log is damaged at byte 10"), "no warning naming the file and offset:\n{log}");
    // Still listed, flagged (the log has been read), and the agent serves the rest.
    let list = a.get("/tasks").json();
    assert_eq!(list["tasks"][0]["outputDamaged"], true, "{list}");
    assert_eq!(a.run_wait(json!({"command": "echo", "args": ["fine"]}))["stdout"], "fine\n");
}

/// The same damage in the log of a task that was running when the agent died: recovery
/// counts its bytes from the log, and used to allocate 4 GiB at every start.
#[test]
fn a_huge_length_in_the_log_of_a_task_running_at_a_crash_does_not_stop_the_start() {
    let dir = TempDir::new("dur-huge-crash");
    let data = dir.path().join("data");
    let running = json!({"id": 6, "command": "sh", "args": [], "cwd": "/", "env": {}, "status": "running",
                         "startedAt": now_ms() - 5000});
    let mut log = log_record(b'e', b"warn\n");
    log.extend_from_slice(&[b'o', 0xF0, 0xFF, 0xFF, 0xFF, b'a', b'b', b'c']);
    craft_history(&data, &[finished_record(4, 0, 0), running], &[(6, log)]);
    let a = agent_with_ulimit_v(dir, &data, 1_000_000);
    let _g = common::logs_on_panic(&a);
    assert!(a.health_ok());
    let t = a.get("/task/6").json();
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["stderr"], "warn\n", "{t}");
    assert_eq!(t["stderrBytes"], 5, "{t}");
    assert_eq!(t["stdoutBytes"], 0, "{t}");
    assert_eq!(t["outputDamagedAt"], 10, "{t}");
    let o = a.get("/task/6/output");
    assert!(o.header("X-Codara-Output").is_some_and(|h| h.starts_with("damaged at byte 10")), "{:?}", o.headers);
    assert_eq!(o.text(), "warn\n");
    assert_eq!(a.get("/task/4").json()["status"], "completed");
}

/// Random bytes over the middle of a log, across a record header: the output stops there,
/// and that is said (it used to end silently, half of it missing, with a 200 and no header).
#[test]
fn random_bytes_in_the_middle_of_a_log_are_reported() {
    let dir = TempDir::new("dur-random");
    let data = dir.path().join("data");
    let mut log = Vec::new();
    for i in 0..10u8 {
        log.extend(log_record(b'o', &[b'a' + i; 100]));
    }
    // Bytes 300..400: the end of the third record's data, the fourth's header (at 315) and
    // part of its data; a fixed pseudo-random sequence whose byte at 315 is no tag.
    let mut x: u32 = 2_463_534_242;
    for b in &mut log[300..400] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = (x >> 24) as u8;
    }
    assert!(log[315] != b'o' && log[315] != b'e', "test setup: pick another seed");
    craft_history(&data, &[finished_record(9, 1000, 0)], &[(9, log.clone())]);
    let a = common::agent().data_dir(&data).start();
    let _g = common::logs_on_panic(&a);
    let o = a.get("/task/9/output");
    assert_eq!(o.status, 200);
    assert_eq!(o.body, log[5..105].iter().chain(&log[110..210]).chain(&log[215..315]).copied().collect::<Vec<u8>>());
    let h = o.header("X-Codara-Output").unwrap_or_else(|| panic!("no X-Codara-Output: {:?}", o.headers));
    assert!(h.starts_with("damaged at byte 315"), "{h}");
    let t = a.get("/task/9").json();
    assert_eq!(t["outputDamaged"], true, "{t}");
    assert_eq!(t["outputDamagedAt"], 315, "{t}");
    assert_eq!(t["outputIncomplete"], true, "{t}");
    assert!(a
        .wait_log("9.log is damaged at byte 315", Duration::from_secs(10))
        .contains("9.log is damaged at byte 315"));
}

// ---------------------------------------------------------------------------
// A full DATA_DIR.
// ---------------------------------------------------------------------------

/// A small tmpfs mounted on a directory of the test (as root), unmounted on drop, also when
/// the test fails (lazily: an agent may still hold files in it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where mounting is not allowed: the test fails, or is skipped with
    /// `CODARA_TEST_ALLOW_SKIP=1` (see `common::skip_or_fail`).
    #[track_caller]
    fn mount(at: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "none"]).arg(at).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            common::skip_or_fail(test, &format!("cannot mount a tmpfs: {out:?}"));
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![b'f'; 4096];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", path.display());
            return;
        }
    }
}

/// With DATA_DIR full the agent used to refuse to start (exit 2), so a service manager
/// restarted it in a loop. It starts, warns, runs tasks with their output in memory (and says
/// so), and writes again once space is back.
#[test]
fn a_full_data_dir_at_start_is_a_warning_not_a_refusal() {
    const TEST: &str = "a_full_data_dir_at_start_is_a_warning_not_a_refusal";
    let dir = TempDir::new("dur-full-start");
    let data = dir.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, "256k", TEST) else { return };
    let mut a = common::agent().data_dir(&data).start();
    let before = a.run_wait(json!({"command": "echo", "args": ["before"]}))["id"].as_u64().unwrap();
    stop(&mut a);
    drop(a);

    fill(&data.join("filler"));
    let a = common::agent().data_dir(&data).start();
    let _g = common::logs_on_panic(&a);
    let log = a.wait_log("is full", Duration::from_secs(10));
    assert!(log.contains("WARN") && log.contains("is full"), "no warning about the full disk:\n{log}");
    assert_eq!(a.get(&format!("/task/{before}")).json()["stdout"], "before\n");
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo out; echo err >&2"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "out\n", "{t}");
    assert_eq!(t["stderr"], "err\n", "{t}");
    assert_eq!(t["outputIncomplete"], true, "{t}");
    let o = a.get(&format!("/task/{}/output", t["id"]));
    assert!(o.header("X-Codara-Output").is_some_and(|h| h.starts_with("incomplete")), "{:?}", o.headers);

    std::fs::remove_file(data.join("filler")).unwrap();
    let t = a.run_wait(json!({"command": "echo", "args": ["after"]}));
    let o = a.get(&format!("/task/{}/output", t["id"]));
    assert_eq!(o.text(), "after\n");
    assert_eq!(o.header("X-Codara-Output"), None, "{:?}", o.headers);
    assert!(t.get("outputIncomplete").is_none(), "{t}");
}

/// A log that holds less than the task wrote (cut by a full disk, or by hand) used to be
/// served as if complete: no header, `stderr` empty though the task wrote to it, and
/// `stdoutBytes` saying more than was served.
#[test]
fn a_log_cut_short_is_reported_incomplete() {
    let data = TempDir::new("dur-cut");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).start();
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; sleep 0.5; echo err-line >&2"]}));
    assert_eq!(t["stderr"], "err-line\n", "{t}");
    let id = t["id"].as_u64().unwrap();
    stop(&mut a);
    drop(a);
    let log = data_dir.join(format!("tasks/{id}.log"));
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(90_000).unwrap();

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let t = b.get(&format!("/task/{id}")).json();
    assert_eq!(t["stdoutBytes"], 300_001, "{t}");
    assert_eq!(t["stderr"], "", "{t}");
    assert_eq!(t["outputIncomplete"], true, "{t}");
    assert!(t.get("outputDamaged").is_none(), "{t}");
    let o = b.get(&format!("/task/{id}/output"));
    assert_eq!(o.status, 200);
    assert!(o.body.len() < 90_000, "{}", o.body.len());
    let h = o.header("X-Codara-Output").unwrap_or_else(|| panic!("no X-Codara-Output: {:?}", o.headers));
    assert!(h.starts_with("incomplete: the output log holds"), "{h}");
    assert!(b.wait_log("bytes the task wrote", Duration::from_secs(10)).contains(&format!("{id}.log is incomplete")));
}

// ---------------------------------------------------------------------------
// Memory and disk bounds of the history, whatever the requests.
// ---------------------------------------------------------------------------

/// The agent's resident memory in MiB (it is non-dumpable: /proc/<pid>/status is root's,
/// and the tests run as root).
fn rss_mib(a: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.agent_pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024
}

/// Asserts the agent's RSS gets under `limit` MiB (it gives memory back after a large reply
/// is written, a moment after the client has it).
#[track_caller]
fn assert_rss_under(a: &Agent, limit: u64, when: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rss = rss_mib(a);
    while rss >= limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        rss = rss_mib(a);
    }
    assert!(rss < limit, "RSS {rss} MiB {when} (bound {limit} MiB); log:\n{}", a.log_text());
    eprintln!("RSS {when}: {rss} MiB");
    rss
}

/// 30 tasks with 1 MB of `args` (240,000 one-letter args, the costliest shape: a `String`
/// each) used to keep ~45 MB each in memory (the request in the task and in its record, and
/// what the allocator kept of the parse), `GET /tasks` built a JSON value of all of them, and
/// a restart loaded the journal into ~11 MB per task. Now a kept task holds a summary; the
/// request is whole in `<id>.request.json` and `GET /task/:id` shows it byte for byte.
#[test]
fn large_requests_keep_memory_and_the_journal_small() {
    const LIMIT_MIB: u64 = 64;
    let data = TempDir::new("dur-big-req");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).start();
    let g = common::logs_on_panic(&a);
    let args: Vec<String> = (0..240_000).map(|i| ((b'a' + (i % 26) as u8) as char).to_string()).collect();
    let body = json!({"command": "true", "args": args, "env": {"BIG": "v".repeat(1000)}});
    assert!(body.to_string().len() < 1 << 20, "test setup: the body must be under the 1 MiB limit");
    let mut ids = Vec::new();
    for _ in 0..30 {
        let r = a.post("/execute?wait=true", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.json();
        assert_eq!(t["args"].as_array().unwrap().len(), 240_000, "the ?wait reply has the whole request");
        ids.push(t["id"].as_u64().unwrap());
    }
    assert_rss_under(&a, LIMIT_MIB, "after 30 tasks with 1 MB of args");

    let list = a.get("/tasks");
    assert_eq!(list.status, 200);
    assert!(list.body.len() < 30 * 2048, "/tasks is {} bytes", list.body.len());
    for t in list.json()["tasks"].as_array().unwrap() {
        assert_eq!(t["requestTruncated"], true, "{t}");
        assert!(t["args"].as_array().unwrap().len() <= 16, "{t}");
    }
    assert_rss_under(&a, LIMIT_MIB, "after GET /tasks");
    let t = a.get(&format!("/task/{}", ids[7])).json();
    assert_eq!(t["args"], json!(args), "GET /task/:id shows the args byte for byte");
    assert_eq!(t["env"]["BIG"], "v".repeat(1000));
    assert!(t.get("requestTruncated").is_none(), "{}", t["requestTruncated"]);
    assert_rss_under(&a, LIMIT_MIB, "after GET /task/:id");

    // Two lines a task, each a few KiB at most (the bound: 4 KiB a line).
    let journal = std::fs::metadata(data_dir.join("tasks/journal.jsonl")).unwrap().len();
    eprintln!("journal: {journal} bytes for 30 tasks");
    assert!(journal < 30 * 2 * 4096, "journal of {journal} bytes");
    stop(&mut a);
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    assert_rss_under(&b, LIMIT_MIB, "after a restart");
    assert_eq!(task_ids(&b.get("/tasks").json()).len(), 30);
    assert_rss_under(&b, LIMIT_MIB, "after GET /tasks after the restart");
    assert_eq!(b.get(&format!("/task/{}", ids[29])).json()["args"], json!(args));
    assert_rss_under(&b, LIMIT_MIB, "after GET /task/:id after the restart");
    let journal = std::fs::metadata(data_dir.join("tasks/journal.jsonl")).unwrap().len();
    eprintln!("journal after the restart: {journal} bytes");
    assert!(journal < 30 * 4096, "journal of {journal} bytes after the restart's rewrite");
}

/// Files of tasks whose journal lines were lost (a crash, a full disk) used to stay forever:
/// at start they are deleted (and counted in the log), and ids go on above theirs.
#[test]
fn files_of_tasks_missing_from_the_history_are_deleted_at_start() {
    let data = TempDir::new("dur-orphans");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).start();
    let kept = a.run_wait(json!({"command": "echo", "args": ["kept"]}))["id"].as_u64().unwrap();
    stop(&mut a);
    drop(a);
    let tasks = data_dir.join("tasks");
    for name in ["99.log", "98.request.json", ".97.request.json.tmp"] {
        std::fs::write(tasks.join(name), b"left over").unwrap();
    }
    std::fs::write(tasks.join("notes.txt"), b"not the agent's").unwrap();

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let files = list_dir(&tasks);
    for name in ["99.log", "98.request.json", ".97.request.json.tmp"] {
        assert!(!files.contains(name), "{name} is still there: {files:?}");
    }
    assert!(files.contains(&format!("{kept}.log")) && files.contains("notes.txt"), "{files:?}");
    assert!(b.log_text().contains("deleted 3 file(s) of tasks that are not in the history"), "{}", b.log_text());
    assert_eq!(b.get(&format!("/task/{kept}")).json()["stdout"], "kept\n");
    let next = b.run_wait(json!({"command": "true"}))["id"].as_u64().unwrap();
    assert_eq!(next, 100, "ids go on above the orphans'");
}

// ---------------------------------------------------------------------------
// What an agent killed with SIGKILL leaves behind.
// ---------------------------------------------------------------------------

/// The task's main process exits after the agent died and is reaped; the process it left in
/// its group survived the restart (recovery killed a group only while its leader lived, and
/// said nothing). It is killed now, and the log names it.
///
/// Who reaps the orphaned main process: the nearest subreaper, else PID 1. Here PID 1
/// (`process_api`) reaps orphans only every few seconds, and another init may never do it:
/// the test makes itself the subreaper (for the rest of this test binary's life: later
/// orphans of other tests are reparented to it too, and left as zombies, which the tests'
/// process checks ignore) and reaps the main process by its pid.
#[test]
fn leftovers_of_a_task_whose_main_process_exited_after_a_crash_are_killed() {
    const M: &str = "sleep 3021";
    use rustix::process::{getpid, set_child_subreaper, waitpid, Pid, WaitOptions};
    set_child_subreaper(Some(getpid())).expect("PR_SET_CHILD_SUBREAPER");
    let data = TempDir::new("dur-leftover");
    let data_dir = data.path().join("data");
    let mut a = common::agent().data_dir(&data_dir).start();
    let g = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "sleep 3021 & exec sleep 2"]);
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");
    let leader = a.get(&format!("/task/{id}")).json()["pid"].as_u64().expect("pid") as i32;
    let left = common::pids_matching(M);
    assert_eq!(left.len(), 1, "{left:?}");
    a.signal("KILL");
    assert!(a.wait_exit(Duration::from_secs(20)).is_some(), "agent did not die on SIGKILL");
    drop(g);
    drop(a);

    // The main process (`sleep 2`) exits, orphaned; reap it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = Pid::from_raw(leader).unwrap();
    while !matches!(waitpid(Some(pid), WaitOptions::NOHANG), Ok(Some(_))) {
        assert!(
            Instant::now() < deadline,
            "main process {leader} not reaped: {:?}",
            waitpid(Some(pid), WaitOptions::NOHANG)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!Path::new(&format!("/proc/{leader}")).exists(), "main process {leader} still there");
    assert!(common::process_running(M), "test setup: {M} should have outlived the crash");

    let b = common::agent().data_dir(&data_dir).start();
    let _g = common::logs_on_panic(&b);
    let gone = common::wait_gone(M, Duration::from_secs(10));
    cleanup(M);
    assert!(gone, "'{M}' still running 10 s after the restart; log:\n{}", b.log_text());
    let log = b.wait_log("killed process group", Duration::from_secs(10));
    assert!(
        log.contains(&format!("task {id}: killed process group {leader} left running"))
            && log.contains(&format!("1 process(es), pids [{}]", left[0])),
        "{log}"
    );
    assert_eq!(b.get(&format!("/task/{id}")).json()["status"], "failed");
}

/// A job running when the agent died kept `"status":"running"` in its job.json forever.
#[test]
fn a_job_running_at_a_crash_is_recorded_failed_in_its_job_json() {
    const M: &str = "sleep 3022";
    let data = TempDir::new("dur-job-crash");
    let data_dir = data.path().join("data");
    let jobs = data.path().join("jobs");
    std::fs::create_dir_all(jobs.join("crashjob")).unwrap();
    std::fs::write(jobs.join("crashjob/run.sh"), "echo started\nsleep 3022\n").unwrap();
    std::fs::write(jobs.join("crashjob/job.json"), r#"{"env":{"X":"1"},"custom":"kept"}"#).unwrap();
    let jobs_env = jobs.display().to_string();
    let mut a = common::agent().data_dir(&data_dir).env("JOBS_BASE_PATH", &jobs_env).start();
    let g = common::logs_on_panic(&a);
    let r = a.post("/execute-job", &json!({"jobId": "crashjob"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");
    let read = || serde_json::from_slice::<Value>(&std::fs::read(jobs.join("crashjob/job.json")).unwrap()).unwrap();
    assert_eq!(read()["status"], "running");
    a.signal("KILL");
    assert!(a.wait_exit(Duration::from_secs(20)).is_some(), "agent did not die on SIGKILL");
    drop(g);
    drop(a);

    let b = common::agent().data_dir(&data_dir).env("JOBS_BASE_PATH", &jobs_env).start();
    let _g = common::logs_on_panic(&b);
    let gone = common::wait_gone(M, Duration::from_secs(10));
    cleanup(M);
    assert!(gone, "'{M}' still running after the restart");
    let j = read();
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().is_some_and(|e| e.contains("agent")), "{j}");
    assert!(j["completedAt"].is_u64() && j["duration"].is_u64(), "{j}");
    assert_eq!(j["exitCode"], Value::Null, "{j}");
    assert_eq!(j["custom"], "kept", "{j}");
    let t = b.get(&format!("/task/{id}")).json();
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["jobId"], "crashjob", "{t}");
}
