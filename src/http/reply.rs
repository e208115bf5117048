//! A reply to an HTTP request, and its sending through tiny_http. Handlers build a
//! [`Reply`]; [`respond`] is the one place it meets the socket.

use std::io::{Cursor, Read};
use std::sync::Arc;

use tiny_http::{Header, Request, Response, StatusCode};

use crate::http::error::ApiError;
use crate::tasks::task::Task;

/// A reply up to this size is written by the worker: it fits in a socket's send buffer, so a
/// slow client cannot hold the worker. A larger one (an output log, a task with its tails) is
/// written on a thread of its own, so four slow downloads cannot stop the API.
pub const SMALL_REPLY: usize = 16 * 1024;

pub enum Body {
    /// A body of known length (JSON, metrics text, an output tail).
    Bytes(Vec<u8>),
    /// A body of unknown length, sent chunked and flushed chunk by chunk.
    Stream(Box<dyn Read + Send>),
    /// `?wait=true`: the final task object, sent by the task's own thread when it has
    /// ended, so no thread waits for it.
    WhenDone(Arc<Task>),
}

pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, v: &impl serde::Serialize) -> Reply {
        let body = serde_json::to_vec(v).expect("replies serialise: plain JSON values");
        Reply { status, content_type: "application/json", body: Body::Bytes(body), headers: Vec::new() }
    }

    /// A body already serialised as JSON.
    pub fn raw_json(status: u16, body: Vec<u8>) -> Reply {
        Reply { status, content_type: "application/json", body: Body::Bytes(body), headers: Vec::new() }
    }

    pub fn when_done(task: Arc<Task>) -> Reply {
        Reply { status: 200, content_type: "application/json", body: Body::WhenDone(task), headers: Vec::new() }
    }

    /// 503 with `Retry-After` (whole seconds): a limit reached that frees up by itself.
    pub fn unavailable(error: &str, retry_after_secs: u32) -> Reply {
        let mut r = Reply::json(503, &serde_json::json!({ "error": error }));
        r.headers.push(("Retry-After", retry_after_secs.to_string()));
        r
    }

    pub fn error(e: &ApiError) -> Reply {
        let mut r = Reply::json(e.status(), &e.body());
        r.headers = e.headers();
        r
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

pub fn respond(rq: Request, reply: Reply) {
    let mut headers: Vec<Header> = Vec::with_capacity(reply.headers.len() + 1);
    headers.extend(header("Content-Type", reply.content_type));
    for (k, v) in &reply.headers {
        headers.extend(header(k, v));
    }
    let status = StatusCode(reply.status);
    let result = match reply.body {
        Body::Bytes(bytes) => {
            let len = bytes.len();
            let sent = rq.respond(Response::new(status, headers, Cursor::new(bytes), Some(len), None));
            crate::alloc::after_large(len, || sent)
        }
        Body::Stream(reader) => rq.respond(Response::new(status, headers, reader, None, None)),
        Body::WhenDone(task) => {
            task.on_end(Box::new(move |t: &Task| respond(rq, Reply::raw_json(200, t.to_json_bytes(true)))));
            return;
        }
    };
    if let Err(e) = result {
        log::debug!("http: could not send a response: {e}");
    }
}
