//! Checks one task's events, as one client received them, against what the agent serves over
//! HTTP once the task has ended (CONTRACT.md §3): `started` first, exactly one `completed`,
//! last, agreeing with the task object; `failed` only right before it; and each stream's
//! chunks, by their `offset`s, exactly the task's bytes (invalid UTF-8 replaced).

use serde_json::Value;

use crate::run::Run;

/// What the agent serves about an ended task.
pub struct Served {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub task: Value,
}

impl Served {
    pub fn fetch(run: &Run, id: u64) -> Served {
        Served {
            stdout: run.get(&format!("/task/{id}/output?stream=stdout")).body,
            stderr: run.get(&format!("/task/{id}/output?stream=stderr")).body,
            task: run.get(&format!("/task/{id}")).json(),
        }
    }
}

/// Where a client's view of a task begins: a client connected before the task started sees it
/// live from `started` on; a subscriber sees it replayed from its offsets.
#[derive(Clone, Copy)]
pub struct From {
    pub stdout: u64,
    pub stderr: u64,
    pub live: bool,
}

pub const LIVE: From = From { stdout: 0, stderr: 0, live: true };

/// Checks task `id`'s `events` (in the order received); Err says what is wrong.
pub fn verify(id: u64, events: &[Value], served: &Served, from: From) -> Result<(), String> {
    let names: Vec<&str> = events.iter().map(|m| m["event"].as_str().unwrap_or("?")).collect();
    let short = || summary(&names);
    for m in events {
        if m["type"] != "task_update" || m["taskId"].as_u64() != Some(id) || !m["timestamp"].is_u64() {
            return Err(format!("task {id}: malformed message {}", crate::ws::brief(m)));
        }
    }
    let completed = names.iter().filter(|e| **e == "completed").count();
    if completed != 1 || names.last() != Some(&"completed") {
        return Err(format!("task {id}: {completed} `completed`, expected exactly one, last: {}", short()));
    }
    let started = names.iter().filter(|e| **e == "started").count();
    if started > 1 || (started == 1 && names[0] != "started") || (from.live && started == 0) {
        return Err(format!("task {id}: `started` must come first, once: {}", short()));
    }
    if let Some(i) = names.iter().position(|e| *e == "failed") {
        if i + 2 != names.len() || served.task["pid"].is_u64() {
            return Err(format!(
                "task {id}: `failed` must be right before `completed`, for a spawn failure: {}",
                short()
            ));
        }
    }
    let done = &events[events.len() - 1]["data"];
    for field in ["status", "exitCode", "signal", "duration"] {
        let got = &done[field];
        if *got != served.task[field] {
            return Err(format!("task {id}: `completed` says {field} {got}, the task object {}", served.task[field]));
        }
    }
    verify_stream(id, events, "output", &served.stdout, from.stdout)?;
    verify_stream(id, events, "error", &served.stderr, from.stderr)
}

/// The `event` chunks (`output` = stdout, `error` = stderr) must tile `raw` from `from` to its
/// end: chunk i is the lossy text of the bytes from its offset to the next chunk's; and all
/// of them together are the lossy text of the whole stream (the contract's wording).
fn verify_stream(id: u64, events: &[Value], event: &str, raw: &[u8], from: u64) -> Result<(), String> {
    let stream = if event == "output" { "stdout" } else { "stderr" };
    let mut chunks = Vec::new();
    for m in events.iter().filter(|m| m["event"] == event) {
        let (Some(off), Some(data)) = (m["offset"].as_u64(), m["data"].as_str()) else {
            return Err(format!(
                "task {id}: `{event}` without an integer offset and string data: {}",
                crate::ws::brief(m)
            ));
        };
        chunks.push((off, data));
    }
    let mut at = from;
    for (i, (off, data)) in chunks.iter().enumerate() {
        let end = chunks.get(i + 1).map_or(raw.len() as u64, |c| c.0);
        if *off != at || end <= *off || end > raw.len() as u64 {
            return Err(format!(
                "task {id}: {stream} chunk {i} has offset {off} after {at} bytes (next at {end}, the stream has {}): \
                 offsets must be contiguous",
                raw.len()
            ));
        }
        let want = String::from_utf8_lossy(&raw[*off as usize..end as usize]);
        if *data != want {
            return Err(format!(
                "task {id}: {stream} chunk {i} at offset {off} differs from bytes {off}..{end} of GET /output?stream={stream}: \
                 got {:?}, want {:?}",
                clip(data),
                clip(&want)
            ));
        }
        at = end;
    }
    if at < raw.len() as u64 {
        return Err(format!("task {id}: {stream} events end at byte {at}, the stream has {}", raw.len()));
    }
    let joined: String = chunks.iter().map(|c| c.1).collect();
    let whole = String::from_utf8_lossy(&raw[(from as usize).min(raw.len())..]);
    if joined != whole {
        return Err(format!(
            "task {id}: the `{event}` chunks put together ({} bytes) are not GET /output?stream={stream} from {from} \
             with invalid UTF-8 replaced ({} bytes)",
            joined.len(),
            whole.len()
        ));
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

/// The event names, the first and last few when there are many.
fn summary(names: &[&str]) -> String {
    if names.len() <= 12 {
        return format!("{names:?}");
    }
    format!("{:?} … {:?} ({} events)", &names[..6], &names[names.len() - 6..], names.len())
}
