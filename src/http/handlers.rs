//! One function per endpoint of CONTRACT.md §2. Each takes the request's parts and returns a
//! [`Reply`] or an [`ApiError`]; sockets stay in `http::server`.

use std::io::Read;
use std::sync::Arc;

use serde_json::json;

use crate::events::Stream;
use crate::http::error::ApiError;
use crate::http::execute;
use crate::http::output::OutputStream;
use crate::http::query;
use crate::http::reply::{Body, Reply};
use crate::http::task_list::TaskList;
use crate::http::Ctx;
use crate::protocol::{Health, TaskStatus};
use crate::tasks::output_log;
use crate::tasks::task::{JobSpec, Task};
use crate::tasks::{self, job, Stop};

/// Largest request body read (CONTRACT.md §2: over it is 413).
pub const MAX_BODY: u64 = 1 << 20;

pub type Query = [(String, String)];

pub fn health(ctx: &Ctx) -> Result<Reply, ApiError> {
    let snap = ctx.monitor.snapshot();
    Ok(Reply::json(
        200,
        &Health {
            status: "healthy",
            hostname: &ctx.monitor.host.hostname,
            uptime: snap.uptime,
            version: env!("CARGO_PKG_VERSION"),
            agent_uptime: ctx.started.elapsed().as_secs(),
        },
    ))
}

pub fn stats(ctx: &Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &ctx.stats()))
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(ctx: &Ctx) -> Result<Reply, ApiError> {
    let clients = ctx.hub.clients.load(std::sync::atomic::Ordering::Acquire);
    let text = ctx.metrics.render(&ctx.stats(), clients, &crate::procfs::SelfUsage::read());
    Ok(Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: Body::Bytes(text.into_bytes()),
        headers: Vec::new(),
    })
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub fn read_body(rq: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
    if rq.body_too_large() || rq.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        return Err(ApiError::TooLarge { limit: MAX_BODY });
    }
    let mut body = Vec::new();
    if let Err(e) = rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
        // A chunked body that grows past the limit ends in an error, then says so.
        if rq.body_too_large() {
            return Err(ApiError::TooLarge { limit: MAX_BODY });
        }
        return Err(ApiError::BadRequest(format!("Could not read the request body: {e}")));
    }
    if body.len() as u64 > MAX_BODY {
        return Err(ApiError::TooLarge { limit: MAX_BODY });
    }
    Ok(body)
}

pub fn execute(ctx: &Ctx, body: &[u8], q: &Query) -> Result<Reply, ApiError> {
    let obj = execute::parse_object(body)?;
    let mut spec = execute::parse_execute(&obj, ctx.reg.default_cwd())?;
    execute::parse_secrets(&obj, &mut spec, ctx.reg.redact_vars())?;
    launch(ctx, spec, q, |id| json!({ "taskId": id, "status": "started" }))
}

/// Admits and starts a task; answers `started` (the body `started` makes from its id) or, with
/// `?wait=true`, the final task object once it has ended.
fn launch(
    ctx: &Ctx,
    spec: crate::tasks::task::TaskSpec,
    q: &Query,
    started: impl FnOnce(u64) -> serde_json::Value,
) -> Result<Reply, ApiError> {
    let task = crate::tasks::launch(&ctx.reg, spec).map_err(ApiError::Rejected)?;
    if query::flag(q, "wait") {
        return Ok(Reply::when_done(task));
    }
    Ok(Reply::json(200, &started(task.id)))
}

fn find(ctx: &Ctx, id: u64) -> Result<Arc<Task>, ApiError> {
    ctx.reg.get(id).ok_or(ApiError::NotFound("Task not found"))
}

pub fn task(ctx: &Ctx, id: u64) -> Result<Reply, ApiError> {
    Ok(Reply::raw_json(200, find(ctx, id)?.to_json_bytes(true)))
}

pub fn tasks(ctx: &Ctx, q: &Query) -> Result<Reply, ApiError> {
    let status = match query::get(q, "status") {
        None | Some("") => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest("status must be one of running, completed, failed, cancelled".into())
        })?),
    };
    let limit = match query::get(q, "limit") {
        None | Some("") => None,
        Some(s) => {
            Some(s.parse::<usize>().map_err(|_| ApiError::BadRequest("limit must be a non-negative integer".into()))?)
        }
    };
    let list = TaskList::new(ctx.reg.list(status, limit), ctx.reg.running(), ctx.reg.max_tasks());
    let body = match list.small(crate::http::reply::SMALL_REPLY) {
        Ok(bytes) => Body::Bytes(bytes),
        Err(stream) => Body::Stream(stream),
    };
    Ok(Reply { status: 200, content_type: "application/json", body, headers: Vec::new() })
}

pub fn cancel(ctx: &Ctx, id: u64, from: &str) -> Result<Reply, ApiError> {
    let task = find(ctx, id)?;
    tasks::stop(&ctx.reg, &task, Stop::Cancel).map_err(|_| ApiError::BadRequest("Task cannot be cancelled".into()))?;
    log::info!("task {id}: cancelled by {from}; SIGTERM sent to its process group");
    Ok(Reply::json(200, &json!({ "message": "Task cancelled" })))
}

pub fn output(ctx: &Ctx, id: u64, q: &Query, peer: Option<std::net::TcpStream>) -> Result<Reply, ApiError> {
    let task = find(ctx, id)?;
    let only = match query::get(q, "stream") {
        None | Some("" | "all" | "both") => None,
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some(_) => return Err(ApiError::BadRequest("stream must be stdout or stderr".into())),
    };
    let follow = query::flag(q, "follow");
    if let Some((stdout, stderr)) = task.tails_if_log_broken() {
        // The log could not be written (a full disk): what the agent still holds is the tail
        // of each stream, without their interleaving. Said so in a header.
        let text = match only {
            Some(Stream::Stdout) => stdout,
            Some(Stream::Stderr) => stderr,
            None => stdout + &stderr,
        };
        return Ok(Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: Body::Bytes(text.into_bytes()),
            headers: vec![
                ("Cache-Control", "no-cache".into()),
                ("X-Content-Type-Options", "nosniff".into()),
                (
                    "X-Codara-Output",
                    "incomplete: the output log could not be written; in-memory tails, stdout then stderr".into(),
                ),
            ],
        });
    }
    let path = ctx.reg.log_path(id);
    let mut headers = vec![("Cache-Control", "no-cache".into()), ("X-Content-Type-Options", "nosniff".into())];
    // A walk through the headers of the log first (no data is read): damage, or a log that
    // holds less than the task wrote, must be said before the body.
    let ended = task.status() != TaskStatus::Running;
    match output_log::scan(&path, ended) {
        Ok(scan) => headers.extend(task.note_log(&scan).header().map(|h| ("X-Codara-Output", h))),
        Err(e) => log::warn!("task {id}: cannot read output log {}: {e}", path.display()),
    }
    let stream = OutputStream::new(Arc::clone(&task), path, only, follow, peer.filter(|_| follow));
    Ok(Reply { status: 200, content_type: "text/plain; charset=utf-8", body: Body::Stream(Box::new(stream)), headers })
}

/// `POST /execute-job`: runs `run.sh` of a job folder inside `JOBS_BASE_PATH`.
pub fn execute_job(ctx: &Ctx, body: &[u8], q: &Query) -> Result<Reply, ApiError> {
    let obj = execute::parse_object(body)?;
    let job_id = match obj.get("jobId") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ApiError::BadRequest("jobId is required".into())),
    };
    let job_path = match obj.get("jobPath") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::BadRequest("jobPath must be a string".into())),
    };
    let dir = job::resolve(&ctx.cfg.jobs_base_path, &job_id, job_path).map_err(ApiError::BadRequest)?;
    let mut spec = crate::tasks::task::TaskSpec {
        command: "/bin/bash".into(),
        args: vec!["run.sh".into()],
        cwd: dir.display().to_string(),
        env: Default::default(), // from job.json, read when the task starts
        timeout_ms: execute::parse_timeout(obj.get("timeout"))?,
        job: Some(JobSpec { id: job_id.clone(), dir }),
        secret_env: Default::default(),
        secret_names: Vec::new(),
    };
    execute::parse_secrets(&obj, &mut spec, ctx.reg.redact_vars())?;
    launch(ctx, spec, q, |id| json!({ "taskId": id, "jobId": job_id, "status": "started" }))
}
