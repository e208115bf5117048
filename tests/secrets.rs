//! Black-box tests of secret variables (`secretEnv`, `REDACT_VARS`): a secret value printed
//! by a task is `[REDACTED]` in every channel (WebSocket events and replay, `/output`, a
//! follow stream, the task object's tails, the output log, a job's `logs/output.log`), also
//! when it is cut by a pause or spans lines, and it is never written anywhere under
//! `DATA_DIR` (nor is it after a restart).
//!
//! Network: loopback only. Bounded loops, generous time bounds, no timing asserted.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, SECRET};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

const TOK: &str = "tok-0123456789abcdef";
const KEY: &str = "-----BEGIN KEY-----\nline-one\nline-two\n-----END KEY-----";
const API: &str = "api-token-value-42";

fn ws_connect(a: &Agent) -> Ws {
    let mut req = format!("ws://127.0.0.1:{}/", a.port).into_client_request().unwrap();
    req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_str(SECRET).unwrap());
    let stream = TcpStream::connect(a.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tungstenite::client::client(req, stream).map(|(ws, _)| ws).unwrap_or_else(|e| panic!("ws connect: {e}"))
}

/// Every text message of `task` until its `completed` (bounded), and every message seen.
fn ws_until_completed(ws: &mut Ws, task: u64) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut got, mut all) = (Vec::new(), String::new());
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => {
                all.push_str(t.as_str());
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["taskId"] == task {
                    let done = v["event"] == "completed";
                    got.push(v);
                    if done {
                        return (got, all);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => panic!("WebSocket read failed: {e}; got {got:?}"),
        }
    }
    panic!("no completed for task {task}: {got:?}")
}

/// The chunks of `event` put together, checking that their offsets tile the stream.
fn stream_of(events: &[Value], event: &str) -> String {
    let mut out = String::new();
    for e in events.iter().filter(|e| e["event"] == event) {
        assert_eq!(e["offset"].as_u64(), Some(out.len() as u64), "offsets count masked bytes: {e}");
        out.push_str(e["data"].as_str().unwrap());
    }
    out
}

/// Asserts that no file under `dir` holds any of `values`.
#[track_caller]
fn assert_nowhere_under(dir: &Path, values: &[&str]) {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for v in values {
            let found = bytes.windows(v.len()).any(|w| w == v.as_bytes());
            assert!(!found, "{} holds the secret value {v:?}", f.display());
        }
    }
}

#[track_caller]
fn assert_no_value(text: &str, what: &str) {
    for v in [TOK, KEY, API, SECRET, "line-one", &TOK[..8], &TOK[8..]] {
        assert!(!text.contains(v), "{what} shows {v:?}: {text}");
    }
}

/// The task prints each secret: whole, cut by a pause longer than the quiet time, across
/// lines, on stderr, as an `env` value `REDACT_VARS` names, and the cluster secret.
const SCRIPT: &str = r#"sleep 0.5
printf 'one %s\n' "$TOK"
printf 'split:%s' "$(printf %s "$TOK" | cut -c1-8)"; sleep 0.4; printf '%s:end\n' "$(printf %s "$TOK" | cut -c9-)"
printf '%s\n' "$KEY"
printf 'err %s\n' "$TOK" >&2
echo "api $API_TOKEN"
echo "cluster test-secret-0123456789abcdef"
[ "$TOK" = tok-0123456789abcdef ] && [ "$API_TOKEN" = api-token-value-42 ] && echo real-values-given
"#;

const WANT_OUT: &str =
    "one [REDACTED]\nsplit:[REDACTED]:end\n[REDACTED]\napi [REDACTED]\ncluster [REDACTED]\nreal-values-given\n";
const WANT_ERR: &str = "err [REDACTED]\n";

#[test]
fn a_secret_printed_is_redacted_in_every_channel_and_kept_nowhere() {
    let keep = common::TempDir::new("secrets");
    let data = keep.path().join("data");
    let a = common::agent().data_dir(&data).start();
    let _g = common::logs_on_panic(&a);
    let mut ws = ws_connect(&a);
    let body = json!({"command": "sh", "args": ["-c", SCRIPT], "env": {"API_TOKEN": API, "CI": "1"},
        "secretEnv": {"TOK": TOK, "KEY": KEY}});
    let r = a.post("/execute", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    let follow = {
        let addr = a.addr();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let req = format!(
                "GET /task/{id}/output?follow=true HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nConnection: close\r\n\r\n"
            );
            std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
            common::read_response(&mut std::io::BufReader::new(s)).text()
        })
    };
    // WebSocket events: the chunks, their offsets, the `started` task object.
    let (events, all) = ws_until_completed(&mut ws, id);
    assert_no_value(&all, "the WebSocket");
    assert_eq!(stream_of(&events, "output"), WANT_OUT);
    assert_eq!(stream_of(&events, "error"), WANT_ERR);
    let started = &events.iter().find(|e| e["event"] == "started").expect("started")["data"];
    assert_eq!(started["env"], json!({"API_TOKEN": "[REDACTED]", "CI": "1"}));
    assert_eq!(started["secretEnv"], json!(["KEY", "TOK"]));
    // The follow stream, /output, the task object and its tails.
    let followed = follow.join().unwrap();
    assert_no_value(&followed, "the follow stream");
    // (stdout and stderr may interleave anywhere: two pipes read by two threads)
    assert_eq!(followed.len(), WANT_OUT.len() + WANT_ERR.len(), "{followed}");
    assert_eq!(a.get(&format!("/task/{id}/output")).text(), followed);
    assert_eq!(a.get(&format!("/task/{id}/output?stream=stdout")).text(), WANT_OUT);
    assert_eq!(a.get(&format!("/task/{id}/output?stream=stderr")).text(), WANT_ERR);
    let t = a.get(&format!("/task/{id}"));
    assert_no_value(&t.text(), "GET /task/:id");
    let t = t.json();
    assert_eq!(
        (t["status"].as_str(), t["stdout"].as_str(), t["stderr"].as_str()),
        (Some("completed"), Some(WANT_OUT), Some(WANT_ERR))
    );
    assert_eq!(t["stdoutBytes"], WANT_OUT.len());
    assert_eq!(t["env"]["API_TOKEN"], "[REDACTED]");
    assert_eq!(t["secretEnv"], json!(["KEY", "TOK"]));
    assert!(t["args"][1].as_str().unwrap().contains("echo \"cluster [REDACTED]\""), "{t}");
    assert_no_value(&a.get("/tasks").text(), "GET /tasks");
    // A replay from the log, from an offset counted in masked bytes.
    let mut late = ws_connect(&a);
    late.send(Message::text(json!({"type": "subscribe", "taskId": id, "offset": 4, "errorOffset": 0}).to_string()))
        .unwrap();
    let (replayed, all) = ws_until_completed(&mut late, id);
    assert_no_value(&all, "the replay");
    let first = replayed.iter().find(|e| e["event"] == "output").expect("replayed output");
    assert_eq!(first["offset"], 4);
    let text: String =
        replayed.iter().filter(|e| e["event"] == "output").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(text, WANT_OUT[4..]);
    // Nothing on disk, before and after a restart.
    assert_nowhere_under(&data, &[TOK, KEY, API, SECRET, "line-one"]);
    drop((ws, late));
    drop(a);
    assert_nowhere_under(&data, &[TOK, KEY, API, SECRET, "line-one"]);
    let b = common::agent().data_dir(&data).start();
    let t = b.get(&format!("/task/{id}"));
    assert_no_value(&t.text(), "GET /task/:id after a restart");
    let t = t.json();
    assert_eq!((t["stdout"].as_str(), t["secretEnv"].clone()), (Some(WANT_OUT), json!(["KEY", "TOK"])));
    assert_eq!(t["env"]["API_TOKEN"], "[REDACTED]");
}

/// A request large enough to be kept in its own file: the file holds no secret value.
#[test]
fn a_large_request_file_holds_no_secret() {
    let a = common::agent().start();
    let args: Vec<String> = (0..100).map(|i| format!("arg-{i}-{TOK}")).collect();
    let t = a.run_wait(json!({"command": "echo", "args": args, "env": {"GH_TOKEN": API}, "secretEnv": {"TOK": TOK}}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_no_value(&t.to_string(), "the task object");
    assert_eq!(t["args"][0], "arg-0-[REDACTED]");
    assert!(t["stdout"].as_str().unwrap().starts_with("arg-0-[REDACTED] arg-1-[REDACTED]"), "{t}");
    let id = t["id"].as_u64().unwrap();
    assert!(a.data_dir.join(format!("tasks/{id}.request.json")).exists(), "kept in its own file");
    assert_nowhere_under(&a.data_dir, &[TOK, API]);
}

#[test]
fn values_that_cannot_be_masked_are_refused() {
    let a = common::agent().start();
    for (body, says) in [
        (json!({"command": "true", "secretEnv": {"A": "abc12"}}), "secretEnv value of A must be at least 6 bytes"),
        (
            json!({"command": "true", "secretEnv": {"A": "        "}}),
            "secretEnv value of A must not be empty or only whitespace",
        ),
        (json!({"command": "true", "secretEnv": {"A": ""}}), "secretEnv value of A must not be empty"),
        (json!({"command": "true", "secretEnv": {"A": 5}}), "secretEnv must be an object of string values"),
        (json!({"command": "true", "secretEnv": ["A"]}), "secretEnv must be an object of string values"),
        (json!({"command": "true", "secretEnv": {"A=B": "abcdefgh"}}), "secretEnv name \"A=B\" is not valid"),
        (
            json!({"command": "true", "env": {"API_TOKEN": "abc"}}),
            "env value of API_TOKEN (a secret: the name matches REDACT_VARS pattern *_TOKEN) must be at least 6 bytes",
        ),
        (json!({"command": "true", "env": {"db_password": "\t \n"}}), "env value of db_password"),
        (json!({"jobId": "j", "secretEnv": {"A": "abc"}}), "secretEnv value of A must be at least 6 bytes"),
    ] {
        let path = if body.get("jobId").is_some() { "/execute-job" } else { "/execute" };
        let r = a.post(path, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with(says), "{body}: {msg}");
    }
    // An empty value of a secret name is nothing to mask: accepted, shown as it is.
    let t = a.run_wait(json!({"command": "true", "env": {"API_TOKEN": ""}}));
    assert_eq!((t["status"].as_str(), t["env"]["API_TOKEN"].as_str()), (Some("completed"), Some("")));
    assert_eq!(a.get("/tasks").json()["tasks"].as_array().unwrap().len(), 1, "nothing else was started");
}

/// A value with whitespace around it (a token read from a file with its final newline, a
/// pasted one with a space) is masked also where it is printed without that whitespace: the
/// shell's `$(...)` drops a final newline, `set -x` quotes the value.
#[test]
fn a_value_with_whitespace_around_it_is_masked_without_it() {
    let a = common::agent().start();
    let t = a.run_wait(json!({"command": "bash", "args": ["-c",
        "echo \"x$(printenv T)y\"; echo \"[$(printenv API_TOKEN)]\"; set -x; : \"Bearer $(printenv T)\""],
        "env": {"API_TOKEN": "  api-token-pasted  "}, "secretEnv": {"T": "tok-read-from-a-file\n"}}));
    let all = format!("{}{}", t["stdout"], t["stderr"]);
    assert!(!all.contains("tok-read-from") && !all.contains("api-token-pasted"), "{t}");
    assert_eq!(t["stdout"], "x[REDACTED]y\n[[REDACTED]]\n", "{t}");
    // The value without its whitespace must be long enough to be masked too.
    for (body, says) in [
        (
            json!({"command": "true", "secretEnv": {"A": "abc\n\n\n\n"}}),
            "secretEnv value of A must be at least 6 bytes",
        ),
        (json!({"command": "true", "env": {"A_TOKEN": "  abcde  "}}), "env value of A_TOKEN"),
    ] {
        let r = a.post("/execute", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with(says), "{body}: {msg}");
    }
}

/// A value in a long `command` or `cwd` that cannot be used: the error quotes them cut to
/// a bounded size, and the cut must not leave the value's first bytes (it is masked first).
#[test]
fn an_error_that_quotes_a_long_command_or_cwd_holds_no_part_of_a_value() {
    let a = common::agent().start();
    let long = format!("/no-such-dir/{}{TOK}/more", "x".repeat(270));
    for body in [
        json!({"command": long, "secretEnv": {"TOK": TOK}}),
        json!({"command": "true", "cwd": long, "secretEnv": {"TOK": TOK}}),
    ] {
        let t = a.run_wait(body);
        assert_eq!(t["status"], "failed", "{t}");
        let error = t["error"].as_str().unwrap();
        assert!(error.contains("[REDACTED]") && !error.contains("tok-0"), "{error}");
        assert!(!a.log_text().contains("tok-0"), "{}", a.log_text());
    }
}

#[test]
fn redact_vars_replaces_the_default_list() {
    let a = common::agent().env("REDACT_VARS", "MY_*, other").start();
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo $MY_THING $OTHER $API_TOKEN"],
        "env": {"MY_THING": "my-thing-value", "OTHER": "other-value", "API_TOKEN": "not-a-secret-here"}}));
    assert_eq!(t["stdout"], "[REDACTED] [REDACTED] not-a-secret-here\n");
    assert_eq!(t["env"], json!({"MY_THING": "[REDACTED]", "OTHER": "[REDACTED]", "API_TOKEN": "not-a-secret-here"}));
}

/// A job: `secretEnv` of the request and a `job.json` `env` value `REDACT_VARS` names are
/// masked in `logs/output.log` too, and `job.json` gets no secret written into it.
#[test]
fn job_output_log_is_masked() {
    let a = common::agent().start();
    let dir = a.dir.path().join("jobs/sec");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("run.sh"), "echo \"deploy $DEPLOY_TOKEN\"\necho \"tok $TOK\" >&2\necho \"other $PLAIN\"\n")
        .unwrap();
    std::fs::write(
        dir.join("job.json"),
        json!({"env": {"DEPLOY_TOKEN": "deploy-token-xyz", "PLAIN": "p"}}).to_string(),
    )
    .unwrap();
    let r = a.post("/execute-job?wait=true", &json!({"jobId": "sec", "secretEnv": {"TOK": TOK}}));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["env"], json!({"DEPLOY_TOKEN": "[REDACTED]", "PLAIN": "p"}));
    let log = std::fs::read_to_string(dir.join("logs/output.log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["[STDERR] tok [REDACTED]", "deploy [REDACTED]", "other p"], "{log}");
    let job = std::fs::read_to_string(dir.join("job.json")).unwrap();
    assert!(!job.contains(TOK), "{job}");
    assert_nowhere_under(&a.data_dir, &[TOK, "deploy-token-xyz"]);
    // A job.json secret too short to mask ends the task failed, saying which.
    std::fs::write(dir.join("job.json"), json!({"env": {"X_SECRET": "abc"}}).to_string()).unwrap();
    let t = a.post("/execute-job?wait=true", &json!({"jobId": "sec"})).json();
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().unwrap().starts_with("job.json: env value of X_SECRET"), "{t}");
    assert_eq!(std::fs::read_to_string(dir.join("job.json")).map(|j| j.contains("\"failed\"")).ok(), Some(true));
}

/// Every task's output is watched for the cluster secret (`test-secret-…`). A partial line
/// ending in its first byte still goes out when the task pauses, as any partial line does;
/// one ending in its first 3 bytes waits for what follows (here, the rest of the secret).
#[test]
fn a_partial_line_ending_like_a_secret_still_shows_when_the_task_pauses() {
    let a = common::agent().start();
    let mut ws = ws_connect(&a);
    let script = "printf 'prompt'; sleep 0.6; printf ' done\\ntes'; sleep 0.6; printf 't-secret-0123456789abcdef\\n'";
    let id = a.run("sh", &["-c", script]);
    let (events, _) = ws_until_completed(&mut ws, id);
    let chunks: Vec<&str> =
        events.iter().filter(|e| e["event"] == "output").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(chunks, ["prompt", " done\n", "[REDACTED]\n"], "{events:?}");
}

/// History an older agent wrote keeps `env` values in clear: at start they become
/// `[REDACTED]` in the journal (rewritten at start) and in a large request's file.
#[test]
fn history_kept_in_clear_by_an_older_agent_is_scrubbed_at_start() {
    let keep = common::TempDir::new("secrets-history");
    let data = keep.path().join("data");
    let tasks = data.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let t = 1_790_000_000_000u64;
    let record = |id: u64, env: Value, truncated: bool| {
        json!({"id": id, "command": "make", "args": [], "cwd": "/", "env": env, "status": "completed",
               "startedAt": t, "exitCode": 0, "signal": null, "completedAt": t + 100, "duration": 100,
               "stdoutBytes": 0, "stderrBytes": 0, "requestTruncated": truncated})
    };
    let journal = format!(
        "{}\n{}\n",
        record(1, json!({"API_TOKEN": "old-token-in-clear", "CI": "1"}), false),
        record(2, json!({"CI": "1"}), true)
    );
    std::fs::write(tasks.join("journal.jsonl"), journal).unwrap();
    let whole = json!({"command": "make", "args": ["all"], "cwd": "/", "env": {"DB_PASSWORD": "old-password-in-clear", "CI": "1"}});
    std::fs::write(tasks.join("2.request.json"), whole.to_string()).unwrap();
    let a = common::agent().data_dir(&data).start();
    assert_eq!(a.get("/task/1").json()["env"], json!({"API_TOKEN": "[REDACTED]", "CI": "1"}));
    assert_eq!(a.get("/task/2").json()["env"], json!({"DB_PASSWORD": "[REDACTED]", "CI": "1"}));
    assert_nowhere_under(&data, &["old-token-in-clear", "old-password-in-clear"]);
}
