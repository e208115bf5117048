//! Black-box tests of job folders (`POST /execute-job`, CONTRACT.md §7 and §2), against the
//! real binary started by `tests/common` (`JOBS_BASE_PATH=<agent dir>/jobs`).
//!
//! Network: loopback only. Every loop is bounded; time bounds are generous (2-core CI box,
//! debug build) and no test asserts speed. Process markers used here: `sleep 3013`,
//! `sleep 3016`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, TempDir, SECRET};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------------------
// Helpers (local to this file).
// ---------------------------------------------------------------------------

fn cleanup(marker: &str) {
    let _ = Command::new("pkill").arg("-f").arg(marker).status();
}

fn base(a: &Agent) -> PathBuf {
    let b = a.dir.path().join("jobs");
    std::fs::create_dir_all(&b).unwrap();
    b
}

/// Creates `dir` with `run.sh` = `script` and, if given, `job.json`.
fn make_job(dir: &Path, script: &str, job_json: Option<&Value>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("run.sh"), script).unwrap();
    if let Some(j) = job_json {
        std::fs::write(dir.join("job.json"), serde_json::to_vec_pretty(j).unwrap()).unwrap();
    }
}

fn read_job_json(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join("job.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Polls `job.json` until its status is `completed` or `failed` (bounded).
#[track_caller]
fn wait_job_json_final(dir: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = read_job_json(dir);
        if let Some(j) = &j {
            if j["status"] == "completed" || j["status"] == "failed" {
                return j.clone();
            }
        }
        assert!(Instant::now() < deadline, "job.json in {} never got a final status: {j:?}", dir.display());
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// `POST /execute-job`, asserting 200 `{taskId, jobId, status:"started"}`; returns the id.
#[track_caller]
fn start_job(a: &Agent, body: Value) -> u64 {
    let r = a.post("/execute-job", &body);
    assert_eq!(r.status, 200, "POST /execute-job {body}: {}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "started", "{v}");
    assert_eq!(v["jobId"], body["jobId"], "{v}");
    v["taskId"].as_u64().unwrap_or_else(|| panic!("taskId: {v}"))
}

fn hostname(a: &Agent) -> String {
    a.get("/health").json()["hostname"].as_str().unwrap().to_string()
}

fn task_count(a: &Agent) -> usize {
    a.get("/tasks").json()["tasks"].as_array().unwrap().len()
}

/// Splits `logs/output.log` into (stdout lines, stderr lines with the prefix removed).
fn split_output_log(log: &str) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for line in log.split_inclusive('\n') {
        match line.strip_prefix("[STDERR] ") {
            Some(rest) => err.push_str(rest),
            None => out.push_str(line),
        }
    }
    (out, err)
}

type Ws = WebSocket<TcpStream>;

fn ws_connect(a: &Agent) -> Ws {
    let mut req = format!("ws://127.0.0.1:{}/", a.port).into_client_request().unwrap();
    req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(SECRET).unwrap());
    let stream = TcpStream::connect(a.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    tungstenite::client::client(req, stream).map(|(ws, _)| ws).unwrap_or_else(|e| panic!("ws connect: {e}"))
}

/// Reads events of `task` until its `completed` (bounded); returns them in order.
fn ws_events_of(ws: &mut Ws, task: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    for _ in 0..100_000 {
        assert!(Instant::now() < deadline, "no completed event for task {task}; got {got:?}");
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "task_update" && v["taskId"] == task {
                    let done = v["event"] == "completed";
                    got.push(v);
                    if done {
                        return got;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => panic!("WebSocket read failed: {e}; got {got:?}"),
        }
    }
    panic!("too many messages; got {got:?}")
}

// ---------------------------------------------------------------------------
// Running a job.
// ---------------------------------------------------------------------------

const SCRIPT_J1: &str = r#"echo "out line 1"
echo "err line 1" >&2
echo "FOO=$FOO"
echo "SECRET=${CLUSTER_SECRET:-unset}"
printf 'err a\nerr b\n' >&2
echo "cwd=$(pwd)"
exit 0
"#;

#[test]
fn job_runs_with_env_logs_and_job_json() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let dir = base(&a).join("j1");
    make_job(&dir, SCRIPT_J1, Some(&json!({"env": {"FOO": "bar"}, "keep": "me"})));

    let r = a.post("/execute-job", &json!({"jobId": "j1"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["jobId", "status", "taskId"], "reply {v}");
    assert_eq!(v["jobId"], "j1");
    assert_eq!(v["status"], "started");
    let id = v["taskId"].as_u64().expect("integer taskId");

    let t = a.wait_task(id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["exitCode"], 0, "{t}");
    assert_eq!(t["jobId"], "j1", "{t}");
    let stdout = t["stdout"].as_str().unwrap().to_string();
    let stderr = t["stderr"].as_str().unwrap().to_string();
    assert!(stdout.contains("FOO=bar\n"), "FOO from job.json not seen: {stdout:?}");
    assert!(stdout.contains("SECRET=unset\n"), "the job saw CLUSTER_SECRET: {stdout:?}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "secret leaked: {t}");
    let real_dir = std::fs::canonicalize(&dir).unwrap();
    assert!(stdout.contains(&format!("cwd={}\n", real_dir.display())), "not run in the folder: {stdout:?}");
    assert_eq!(stderr, "err line 1\nerr a\nerr b\n", "{t}");

    let j = wait_job_json_final(&dir);
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["exitCode"], 0, "{j}");
    assert!(j["completedAt"].is_u64(), "completedAt: {j}");
    assert!(j["duration"].is_u64(), "duration: {j}");
    assert_eq!(j["clusterId"], hostname(&a).as_str(), "{j}");
    assert_eq!(j["keep"], "me", "{j}");
    assert_eq!(j["env"], json!({"FOO": "bar"}), "{j}");

    let log = std::fs::read_to_string(dir.join("logs/output.log")).expect("logs/output.log");
    let (out, err) = split_output_log(&log);
    assert_eq!(out, stdout, "stdout part of output.log:\n{log}");
    assert_eq!(err, stderr, "[STDERR] lines of output.log:\n{log}");
    for l in ["[STDERR] err line 1\n", "[STDERR] err a\n", "[STDERR] err b\n", "out line 1\n", "FOO=bar\n"] {
        assert!(log.contains(l), "output.log lacks {l:?}:\n{log}");
    }
    assert!(!std::fs::read_dir(&dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn job_json_running_then_failed_with_exit_code() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let dir = base(&a).join("j2");
    make_job(&dir, "sleep 2\necho done\nexit 3\n", Some(&json!({"name": "second"})));
    let id = start_job(&a, json!({"jobId": "j2"}));

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some(j) = read_job_json(&dir) {
            if j["status"] == "running" {
                seen = Some(j);
                break;
            }
            if j["status"] == "failed" || j["status"] == "completed" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let running_task = a.get(&format!("/task/{id}")).json();
    let j = seen.unwrap_or_else(|| panic!("job.json never said running: {:?}", read_job_json(&dir)));
    assert_eq!(running_task["status"], "running", "the task (sleeps 2 s) should still run: {running_task}");
    assert_eq!(j["clusterId"], hostname(&a).as_str(), "{j}");
    assert_eq!(j["name"], "second", "{j}");

    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["exitCode"], 3, "{t}");
    let j = wait_job_json_final(&dir);
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["exitCode"], 3, "{j}");
    assert!(j["completedAt"].is_u64() && j["duration"].is_u64(), "{j}");
    assert_eq!(j["name"], "second", "{j}");
}

#[test]
fn logs_dir_created_and_output_log_appended() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let dir = base(&a).join("j3");
    make_job(&dir, "n=$(cat count 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > count\necho \"run $n\"\n", None);
    assert!(!dir.join("logs").exists());

    let id1 = start_job(&a, json!({"jobId": "j3"}));
    assert_eq!(a.wait_task(id1)["status"], "completed");
    assert!(dir.join("logs").is_dir(), "logs/ not created");
    let id2 = start_job(&a, json!({"jobId": "j3"}));
    assert_eq!(a.wait_task(id2)["status"], "completed");
    assert!(id2 > id1);
    let log = std::fs::read_to_string(dir.join("logs/output.log")).unwrap();
    assert_eq!(log, "run 1\nrun 2\n", "output.log after two runs");
}

#[test]
fn job_without_job_json_gets_agent_env() {
    let a = common::agent().env("JOBTEST_AGENT_VAR", "from-agent").start();
    let _g = common::logs_on_panic(&a);
    let dir = base(&a).join("plain");
    make_job(&dir, "echo \"v=$JOBTEST_AGENT_VAR\"\necho \"s=${CLUSTER_SECRET:-unset}\"\n", None);
    let id = start_job(&a, json!({"jobId": "plain"}));
    let t = a.wait_task(id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "v=from-agent\ns=unset\n", "{t}");
    assert_eq!(t["jobId"], "plain");
    let log = std::fs::read_to_string(dir.join("logs/output.log")).unwrap();
    assert_eq!(log, "v=from-agent\ns=unset\n");
}

#[test]
fn missing_folder_or_run_sh_fails_the_task() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let b = base(&a);

    let id = start_job(&a, json!({"jobId": "nope"}));
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["jobId"], "nope", "{t}");
    let err = t["error"].as_str().unwrap_or_else(|| panic!("no error: {t}"));
    assert!(err.contains("folder") || err.contains("director"), "error should mention the folder: {err:?}");
    assert!(err.contains("nope"), "error should name the folder: {err:?}");
    assert!(!b.join("nope").exists(), "the missing folder was created");

    std::fs::create_dir_all(b.join("empty")).unwrap();
    let id = start_job(&a, json!({"jobId": "empty"}));
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_else(|| panic!("no error: {t}"));
    assert!(err.contains("run.sh"), "error should mention run.sh: {err:?}");

    a.get("/health");
    let running = a.get("/tasks").json()["running"].clone();
    assert_eq!(running, 0, "running count after two failed jobs");
}

/// A `job.json` that is a FIFO (the read would block the task's start for ever) or larger
/// than 1 MiB (held in memory whole) fails the task with a clear error; the agent goes on.
#[test]
fn a_fifo_or_huge_job_json_fails_the_task_not_the_agent() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let fifo_dir = base(&a).join("fifo");
    make_job(&fifo_dir, "echo should-not-run\n", None);
    let st = std::process::Command::new("mkfifo").arg(fifo_dir.join("job.json")).status().unwrap();
    assert!(st.success());
    let huge_dir = base(&a).join("huge");
    make_job(&huge_dir, "echo should-not-run\n", None);
    let big = format!("{{\"env\": {{\"PAD\": \"{}\"}}}}", "x".repeat(2 << 20));
    std::fs::write(huge_dir.join("job.json"), &big).unwrap();

    // And a FIFO where the run's output.log goes: opening it for writing would wait too.
    let log_dir = base(&a).join("fifolog");
    make_job(&log_dir, "echo should-not-run\n", None);
    std::fs::create_dir_all(log_dir.join("logs")).unwrap();
    let st = std::process::Command::new("mkfifo").arg(log_dir.join("logs/output.log")).status().unwrap();
    assert!(st.success());

    for (job, file, why) in [
        ("fifo", "job.json", "not a regular file"),
        ("huge", "job.json", "over 1024 KiB"),
        ("fifolog", "output.log", "No such device"),
    ] {
        let id = start_job(&a, json!({"jobId": job}));
        let t = a.wait_task(id);
        assert_eq!(t["status"], "failed", "{t}");
        let err = t["error"].as_str().unwrap_or_else(|| panic!("no error: {t}"));
        assert!(err.contains(file) && err.contains(why), "{job}: {err:?}");
        assert_eq!(t["stdout"], "", "{t}");
    }
    // The large job.json is the user's: left as it was, not rewritten with the run's end.
    assert_eq!(std::fs::metadata(huge_dir.join("job.json")).unwrap().len(), big.len() as u64);
    let id = a.run_wait(json!({"command": "echo", "args": ["still here"]}))["id"].as_u64().unwrap();
    assert_eq!(a.wait_task(id)["stdout"], "still here\n");
}

#[test]
fn job_id_and_job_path_must_stay_inside_base() {
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let b = base(&a);
    // A folder outside the base with a run.sh that leaves a trace if it ever runs.
    let outside = TempDir::new("jobs-outside");
    let trace = outside.path().join("ran");
    let script = format!("touch '{}'\n", trace.display());
    make_job(outside.path(), &script, None);
    let sibling = a.dir.path().join("outside");
    make_job(&sibling, &script, None);
    make_job(&a.dir.path().join("x"), &script, None);
    make_job(&b.join("a").join("b"), &script, None);
    std::os::unix::fs::symlink(outside.path(), b.join("link")).unwrap();

    let before = task_count(&a);
    for bad in ["../x", "a/b", "..", "a\\b", "../jobs/a", "x/..", "/etc", "a..b"] {
        let r = a.post("/execute-job", &json!({ "jobId": bad }));
        assert_eq!(r.status, 400, "jobId {bad:?}: {} {}", r.status, r.text());
        assert_eq!(r.json(), json!({"error": "jobId must be a plain name (no '/', '\\' or '..')"}), "jobId {bad:?}");
    }
    for body in [json!({"jobId": ""}), json!({}), json!({"jobId": 5}), json!({"jobId": null}), json!({"jobId": ["x"]})]
    {
        let r = a.post("/execute-job", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "jobId is required"}), "{body}");
    }
    const OUTSIDE: &str = "jobPath must be inside JOBS_BASE_PATH";
    let bad_paths = [
        "/etc".to_string(),
        format!("{}/../outside", b.display()),
        outside.path().display().to_string(),
        b.join("link").display().to_string(),
    ];
    for p in &bad_paths {
        let r = a.post("/execute-job", &json!({"jobId": "ok", "jobPath": p}));
        assert_eq!(r.status, 400, "jobPath {p:?}: {} {}", r.status, r.text());
        assert_eq!(r.json(), json!({"error": OUTSIDE}), "jobPath {p:?}");
    }
    // A plain jobId that is a symlink leading out of the base does not escape either.
    let r = a.post("/execute-job", &json!({"jobId": "link"}));
    assert_eq!(r.status, 400, "jobId through a symlink outside the base: {} {}", r.status, r.text());
    assert_eq!(r.json(), json!({"error": OUTSIDE}), "jobId through a symlink");

    assert_eq!(task_count(&a), before, "a refused request started a task");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!trace.exists(), "a run.sh outside JOBS_BASE_PATH ran");

    // jobPath inside the base is fine.
    let inner = b.join("inner");
    make_job(&inner, "echo inner-ran\n", None);
    let id = start_job(&a, json!({"jobId": "inner-job", "jobPath": inner.display().to_string()}));
    let t = a.wait_task(id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "inner-ran\n", "{t}");
    assert_eq!(std::fs::read_to_string(inner.join("logs/output.log")).unwrap(), "inner-ran\n");
    assert!(!trace.exists(), "a run.sh outside JOBS_BASE_PATH ran");
}

#[test]
fn job_task_is_listed_streamed_and_cancellable() {
    const M: &str = "sleep 3013";
    let a = common::agent().env("KILL_GRACE", "2000").start();
    let _g = common::logs_on_panic(&a);
    let b = base(&a);
    make_job(&b.join("jw"), "echo hello-ws\necho err-ws >&2\nexit 0\n", None);

    let mut ws = ws_connect(&a);
    // Give the hub a moment to register the client; then make sure it does by a round trip
    // of a task of its own.
    let probe = a.run("true", &[]);
    let _ = ws_events_of(&mut ws, probe);

    let id = start_job(&a, json!({"jobId": "jw"}));
    let evs = ws_events_of(&mut ws, id);
    assert_eq!(evs.first().unwrap()["event"], "started", "{evs:?}");
    assert_eq!(evs.first().unwrap()["data"]["id"], id, "{evs:?}");
    let last = evs.last().unwrap();
    assert_eq!(last["data"]["status"], "completed", "{last}");
    assert_eq!(last["data"]["exitCode"], 0, "{last}");
    let out: String = evs.iter().filter(|e| e["event"] == "output").map(|e| e["data"].as_str().unwrap()).collect();
    let err: String = evs.iter().filter(|e| e["event"] == "error").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(out, "hello-ws\n");
    assert_eq!(err, "err-ws\n");
    assert_eq!(evs.iter().filter(|e| e["event"] == "completed").count(), 1);

    let list = a.get("/tasks").json();
    let item = list["tasks"].as_array().unwrap().iter().find(|t| t["id"] == id).cloned();
    let item = item.unwrap_or_else(|| panic!("job task {id} not in /tasks: {list}"));
    assert_eq!(item["jobId"], "jw", "{item}");
    assert_eq!(item["status"], "completed", "{item}");

    // Cancel a long-running job.
    let dir = b.join("long");
    make_job(&dir, "echo started\nsleep 3013\n", Some(&json!({"keep": 1})));
    let id = start_job(&a, json!({"jobId": "long"}));
    assert!(common::wait_running(M, Duration::from_secs(20)), "{M} did not start");
    let r = a.post(&format!("/task/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "Task cancelled"}));
    let t = a.wait_task(id);
    let gone = common::wait_gone(M, Duration::from_secs(10));
    cleanup(M);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(t["jobId"], "long", "{t}");
    assert!(gone, "'{M}' still running after the cancel");
    let j = wait_job_json_final(&dir);
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["keep"], 1, "{j}");
    let log = std::fs::read_to_string(dir.join("logs/output.log")).unwrap();
    assert!(log.starts_with("started\n"), "{log:?}");
}

#[test]
fn execute_job_503_at_capacity() {
    const M: &str = "sleep 3016";
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "1").env("KILL_GRACE", "1000").start();
    let _g = common::logs_on_panic(&a);
    let b = base(&a);
    make_job(&b.join("busy"), "sleep 3016\n", None);
    make_job(&b.join("other"), "echo other\n", None);
    let id = start_job(&a, json!({"jobId": "busy"}));
    let running = common::wait_running(M, Duration::from_secs(20));

    let r = a.post("/execute-job", &json!({"jobId": "other"}));
    let e = a.post("/execute", &json!({"command": "true"}));
    let c = a.post(&format!("/task/{id}/cancel"), &json!({}));
    let t = a.wait_task(id);
    let gone = common::wait_gone(M, Duration::from_secs(10));
    cleanup(M);

    assert!(running, "{M} did not start");
    assert_eq!(r.status, 503, "POST /execute-job at capacity: {}", r.text());
    let slots = json!({"error": "Max concurrent tasks reached", "reason": "slots", "runningTasks": 1, "maxTasks": 1});
    assert_eq!(r.json(), slots, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
    assert_eq!(e.status, 503, "POST /execute at capacity: {}", e.text());
    assert_eq!(e.json(), slots, "{}", e.text());
    assert_eq!(c.json(), json!({"message": "Task cancelled"}), "{}", c.text());
    assert_eq!(t["status"], "cancelled");
    assert!(gone, "'{M}' left running");
    assert!(std::fs::read_dir(b.join("other")).unwrap().all(|e| e.unwrap().file_name() != "logs"), "refused job ran");

    // A slot is free again: the job runs.
    let id = start_job(&a, json!({"jobId": "other"}));
    assert_eq!(a.wait_task(id)["stdout"], "other\n");
}

/// Runs of one job folder at once each start, and job.json stays valid with its other keys.
#[test]
fn concurrent_runs_of_one_job_keep_job_json_whole() {
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "8").start();
    let dir = base(&a).join("same");
    make_job(&dir, "echo hi\n", Some(&json!({"env": {"A": "1"}, "keep": "me"})));
    let a = std::sync::Arc::new(a);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let a = std::sync::Arc::clone(&a);
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| {
                        let r = a.post("/execute-job?wait=true", &json!({"jobId": "same"}));
                        assert_eq!(r.status, 200, "{}", r.text());
                        r.json()
                    })
                    .collect::<Vec<Value>>()
            })
        })
        .collect();
    for w in workers {
        for t in w.join().unwrap() {
            assert_eq!(t["status"], "completed", "{t}");
            assert_eq!(t["stdout"], "hi\n", "{t}");
        }
    }
    let meta = read_job_json(&dir).expect("job.json readable");
    assert_eq!(meta["keep"], "me", "{meta}");
    assert_eq!(meta["env"]["A"], "1", "{meta}");
    assert_eq!(meta["status"], "completed", "{meta}");
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
