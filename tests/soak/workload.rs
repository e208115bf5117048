//! The workload: submitters that each run one task at a time, as a main server does with a
//! node: `POST /execute` (some with `?wait=true`), retrying after a short sleep on 503 when all
//! slots are taken, then seeing the task to its end the way its kind asks (polling, following
//! its output, cancelling it) and checking how it ended and what it printed.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, SECRET};
use crate::run::Run;
use crate::tasks::{Kind, MIX};

/// Runs the submitters until the workload's time is up; each finishes the task it is on.
pub fn run(run: &Run) {
    std::thread::scope(|s| {
        for n in 0..run.settings.submitters {
            std::thread::Builder::new()
                .name(format!("submitter-{n}"))
                .spawn_scoped(s, move || submitter(run, n))
                .expect("spawn a submitter");
        }
    });
}

fn submitter(run: &Run, n: usize) {
    let mut round = 0;
    while run.loading() {
        let kind = MIX[(n * 5 + round) % MIX.len()];
        // Every other task of the kinds that are only waited for holds the reply until the end.
        let wait = round % 2 == 1;
        run_task(run, kind, wait);
        round += 1;
    }
}

/// Starts a task of `kind`, sees it to its end and checks it. Returns its id, or None when the
/// workload ended before a slot came free.
pub fn run_task(run: &Run, kind: Kind, wait: bool) -> Option<u64> {
    let wait = wait && matches!(kind, Kind::Lines | Kind::Burst | Kind::BurstErr | Kind::Partial | Kind::Exit3);
    let (id, ended) = submit(run, kind, wait)?;
    see_through(run, kind, id, ended);
    Some(id)
}

/// Sees a started task to its end the way its kind asks (`ended`: the final object a
/// `?wait=true` got), then checks how it ended and what it printed.
pub fn see_through(run: &Run, kind: Kind, id: u64, ended: Option<Value>) {
    let mut cancel_answer = None;
    let end = match (kind, ended) {
        (_, Some(t)) => Some(t),
        (Kind::Follow, None) => follow(run, id),
        (Kind::Cancel, None) => {
            cancel_answer = cancel(run, id);
            wait_end(run, id)
        }
        (_, None) => wait_end(run, id),
    };
    let Some(end) = end else {
        run.problems.add("tasks", format!("task {id} ({kind:?}) did not end by the run's deadline ({})", run.at()));
        return;
    };
    run.ledger.ended(id, &end);
    if let Err(e) = kind.check_end(&end, cancel_answer) {
        run.problems.add("tasks", format!("task {id}: {e}"));
    }
    check_output(run, kind, id);
}

/// `POST /execute` until a slot is free; the task's id, and its final object for `?wait=true`.
pub fn submit(run: &Run, kind: Kind, wait: bool) -> Option<(u64, Option<Value>)> {
    let path = if wait { "/execute?wait=true" } else { "/execute" };
    let body = kind.body(&run.token);
    loop {
        let r = run.post(path, &body);
        match r.status {
            200 => {
                let v = r.json();
                let id = v[if wait { "id" } else { "taskId" }].as_u64().expect("a started task has an id");
                run.ledger.started(id, kind);
                return Some((id, wait.then_some(v)));
            }
            503 => {
                let v = r.json();
                if v["error"] == "Max concurrent tasks reached" {
                    run.ledger.rejected_slots.fetch_add(1, Ordering::Relaxed);
                } else {
                    run.ledger.rejected_other.fetch_add(1, Ordering::Relaxed);
                }
                if r.header("retry-after").is_none() {
                    run.problems.add("api", format!("503 without Retry-After: {v}"));
                }
            }
            _ => {
                run.problems.add("api", format!("POST {path} ({kind:?}) answered {}: {}", r.status, r.text()));
                return None;
            }
        }
        if !run.loading() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the task until it has ended (or the run's hard deadline).
fn wait_end(run: &Run, id: u64) -> Option<Value> {
    while Instant::now() < run.hard_deadline() {
        let t = run.get(&format!("/task/{id}")).json();
        if t["status"] != "running" {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Cancels the task once it has printed something; the status `POST /cancel` answered.
fn cancel(run: &Run, id: u64) -> Option<u16> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let t = run.get(&format!("/task/{id}")).json();
        if t["stdoutBytes"].as_u64().unwrap_or(0) > 0 || t["status"] != "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = run.post(&format!("/task/{id}/cancel"), &serde_json::json!({}));
    run.ledger.cancels.fetch_add(1, Ordering::Relaxed);
    let expected = match r.status {
        200 => "{\"message\":\"Task cancelled\"}",
        400 => "{\"error\":\"Task cannot be cancelled\"}",
        _ => "",
    };
    if r.json() != serde_json::from_str::<Value>(expected).unwrap_or(Value::Null) {
        run.problems.add("api", format!("POST /task/{id}/cancel answered {}: {}", r.status, r.text()));
    }
    Some(r.status)
}

/// Follows the task's output (`?follow=true`) to its end, and checks the stream is the
/// whole output once the task has ended.
fn follow(run: &Run, id: u64) -> Option<Value> {
    run.ledger.follows.fetch_add(1, Ordering::Relaxed);
    let mut s = common::raw_connect(run.agent, Duration::from_secs(60));
    let req = format!(
        "GET /task/{id}/output?follow=true HTTP/1.1\r\nHost: x\r\nX-Cluster-Secret: {SECRET}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send a follow request");
    let (raw, closed) = common::read_until_close(&mut s, Duration::from_secs(60));
    let end = wait_end(run, id);
    if !closed {
        run.problems.add("follow", format!("task {id}: ?follow=true still open 60 s after it started"));
        return end;
    }
    let followed = common::read_response(&mut BufReader::new(std::io::Cursor::new(raw)));
    let whole = run.get(&format!("/task/{id}/output"));
    if followed.status != 200 || followed.body != whole.body {
        run.problems.add(
            "follow",
            format!(
                "task {id}: ?follow=true gave {} with {} bytes, GET /output afterwards {} bytes (they must be equal)",
                followed.status,
                followed.body.len(),
                whole.body.len()
            ),
        );
    }
    end
}

/// What `GET /task/:id/output?stream=…` returns must be exactly what the task printed.
fn check_output(run: &Run, kind: Kind, id: u64) {
    let out = run.get(&format!("/task/{id}/output?stream=stdout")).body;
    let err = run.get(&format!("/task/{id}/output?stream=stderr")).body;
    let ok = match kind.expected_output() {
        Some((want_out, want_err)) => out == want_out && err == want_err,
        None => Kind::cancel_output_is_a_prefix(&out, &err),
    };
    if !ok {
        run.problems.add(
            "tasks",
            format!(
                "task {id} ({kind:?}): GET /output is not what it printed ({} stdout and {} stderr bytes; \
                 stdout starts {:?}, stderr starts {:?})",
                out.len(),
                err.len(),
                String::from_utf8_lossy(&out[..out.len().min(80)]),
                String::from_utf8_lossy(&err[..err.len().min(80)])
            ),
        );
    }
}
