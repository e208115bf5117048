//! The `http-N` worker threads: each takes requests from the tiny_http server, routes,
//! authenticates and answers them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tiny_http::Request;

use crate::http::error::ApiError;
use crate::http::handlers;
use crate::http::reply::{respond, Body, Reply, SMALL_REPLY};
use crate::http::router::{self, Route};
use crate::http::upgrade;
use crate::http::{auth, query, Ctx};
use crate::tasks::task::Task;
use crate::worker::Worker;

/// Worker threads taking requests.
pub const WORKERS: usize = 4;
/// Requests with a thread of their own (`?follow=true`, large uploads, replies larger than
/// [`SMALL_REPLY`]) open at once; more get 503.
pub const MAX_LONG_REQUESTS: usize = 256;

/// The `http-N` workers (see [`HttpServer::start`]).
pub struct HttpServer;

/// Limits of the patched tiny_http: body size, slow and idle clients, connections.
pub fn limits() -> tiny_http::Limits {
    tiny_http::Limits { max_body_bytes: handlers::MAX_BODY, ..tiny_http::Limits::default() }
}

impl HttpServer {
    /// Binds `BIND_ADDRESS:CLUSTER_PORT` and starts the workers; returns the port bound.
    /// Stopping the worker stops taking requests (tiny_http's threads end with the server).
    pub fn start(ctx: Arc<Ctx>) -> Result<(u16, Worker), String> {
        let addr = (ctx.cfg.bind_address, ctx.cfg.cluster_port);
        let tls = match &ctx.cfg.tls {
            Some(files) => {
                Some(Arc::new(crate::tls::Reloading::new(files.clone())?) as Arc<dyn tiny_http::TlsConfigSource>)
            }
            None => None,
        };
        let server = std::net::TcpListener::bind(addr)
            .map_err(|e| e.into())
            .and_then(|l| tiny_http::Server::from_listener_with_tls(l, limits(), tls))
            .map_err(|e| format!("cannot listen on {}:{}: {e}", addr.0, addr.1))?;
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(ctx.cfg.cluster_port);
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let (server, ctx, stopping) = (Arc::clone(&server), Arc::clone(&ctx), Arc::clone(&stopping));
            let handle = std::thread::Builder::new()
                .name(format!("http-{i}"))
                .stack_size(2 << 20)
                .spawn(move || worker(&server, &ctx, &stopping))
                .map_err(|e| format!("cannot start HTTP worker: {e}"))?;
            workers.push(handle);
        }
        let n = workers.len();
        let stop = move || {
            stopping.store(true, Ordering::SeqCst);
            for _ in 0..n {
                server.unblock();
            }
        };
        Ok((port, Worker::new("http", stop, workers)))
    }
}

fn worker(server: &tiny_http::Server, ctx: &Arc<Ctx>, stopping: &AtomicBool) {
    loop {
        let rq = match server.recv() {
            Ok(rq) => rq,
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                log::debug!("http: {e}");
                continue;
            }
        };
        if lasts(&rq) {
            let ctx2 = Arc::clone(ctx);
            on_long_thread(ctx, rq, move |rq| handle_guarded(&ctx2, rq, Thread::OwnAlready));
        } else {
            handle_guarded(ctx, rq, Thread::Shared);
        }
    }
}

/// Runs `work(rq)` on an `http-long` thread. Bounded, so many slow uploads, followers or
/// downloads cannot pile up threads without limit (a follower notices within a second that
/// its client left; a stalled download ends at the write timeout): past the bound, 503.
fn on_long_thread(ctx: &Arc<Ctx>, rq: Request, work: impl FnOnce(Request) + Send + 'static) {
    if !ctx.long_requests.try_add(MAX_LONG_REQUESTS) {
        log::warn!("refused a long request: {MAX_LONG_REQUESTS} already open");
        respond(rq, Reply::unavailable("Too many streaming requests", 5));
        return;
    }
    let ctx2 = Arc::clone(ctx);
    let spawned = std::thread::Builder::new().name("http-long".into()).stack_size(2 << 20).spawn(move || {
        work(rq);
        ctx2.long_requests.done();
    });
    if let Err(e) = spawned {
        // The request went down with the closure: tiny_http answers a dropped request 500.
        ctx.long_requests.done();
        log::error!("cannot start a thread for a long request: {e}");
    }
}

/// [`handle`], with a panic (a bug) confined to its request: tiny_http answers a dropped
/// request 500, and the worker goes on taking requests.
fn handle_guarded(ctx: &Arc<Ctx>, rq: Request, thread: Thread) {
    // The path only: a query may hold the secret (`?secret=` on a WebSocket upgrade).
    let url = rq.url().split('?').next().unwrap_or("").chars().take(200).collect::<String>();
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(ctx, rq, thread))).is_err() {
        log::error!("the handler of {url} panicked (a bug; the panic message is above); answered 500");
    }
}

/// Bodies up to this size are read by tiny_http before the request reaches a worker.
const PREREAD_BODY: usize = 64 * 1024;

/// Whether a request may take long: it then gets its own thread, so the workers stay free.
/// That is following output, and bodies tiny_http has not read yet (a slow upload).
/// (`?wait=true` needs none: the task's own thread answers it.)
fn lasts(rq: &Request) -> bool {
    let (path, q) = query::split_url(rq.url());
    (path.ends_with("/output") && query::flag(&q, "follow"))
        || (!rq.body_too_large() && rq.body_length().is_none_or(|n| n > PREREAD_BODY) && rq.method().as_str() == "POST")
}

/// Answers one request.
pub fn handle(ctx: &Arc<Ctx>, mut rq: Request, thread: Thread) {
    ctx.monitor.touch();
    if upgrade::is_upgrade(&rq) {
        upgrade::accept(ctx, &ctx.hub, rq);
        return;
    }
    let method = rq.method().as_str().to_ascii_uppercase();
    let url = rq.url().to_string();
    let (path, q) = query::split_url(&url);
    let from = rq.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());

    let routed = router::route(&method, path);
    let public = matches!(routed, Ok(r) if r.is_public(ctx.cfg.metrics_require_secret));
    let reply = if !public && !auth::is_authorized(&ctx.cfg, rq.remote_addr(), auth::presented(rq.headers())) {
        crate::metrics::inc(&ctx.metrics.refused_requests);
        log::warn!("refused {method} {path} from {from}: invalid or missing cluster secret");
        Err(ApiError::Forbidden)
    } else {
        routed.and_then(|route| dispatch(ctx, route, &mut rq, &q, &from))
    };
    let reply = reply.unwrap_or_else(|e| {
        if let ApiError::Internal(m) = &e {
            log::error!("{method} {path}: {m}");
        }
        Reply::error(&e)
    });
    answer(ctx, rq, reply, thread);
}

/// The thread a reply is being answered on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// An `http-N` worker, or a task's thread (`?wait=true`): a long reply gets its own.
    Shared,
    /// An `http-long` thread already: it writes any reply itself.
    OwnAlready,
}

/// Sends `reply`: a small one on this thread, a large one or a stream on a thread of its own
/// (see [`SMALL_REPLY`]), a `?wait=true` one when its task ends.
fn answer(ctx: &Arc<Ctx>, rq: Request, reply: Reply, thread: Thread) {
    let small = match &reply.body {
        Body::Bytes(b) => b.len() <= SMALL_REPLY,
        Body::Stream(_) => false,
        Body::WhenDone(task) => {
            let (ctx, task) = (Arc::clone(ctx), Arc::clone(task));
            let done =
                Box::new(move |t: &Task| answer(&ctx, rq, Reply::raw_json(200, t.to_json_bytes(true)), Thread::Shared));
            task.on_end(done);
            return;
        }
    };
    if small || thread == Thread::OwnAlready {
        respond(rq, reply);
    } else {
        on_long_thread(ctx, rq, move |rq| respond(rq, reply));
    }
}

fn dispatch(ctx: &Ctx, route: Route, rq: &mut Request, q: &handlers::Query, from: &str) -> Result<Reply, ApiError> {
    match route {
        Route::Health => handlers::health(ctx),
        Route::Stats => handlers::stats(ctx),
        Route::Metrics => handlers::metrics(ctx),
        Route::Execute => {
            let body = handlers::read_body(rq)?;
            crate::alloc::after_large(body.len(), || handlers::execute(ctx, &body, q))
        }
        Route::ExecuteJob => {
            let body = handlers::read_body(rq)?;
            crate::alloc::after_large(body.len(), || handlers::execute_job(ctx, &body, q))
        }
        Route::Tasks => handlers::tasks(ctx, q),
        Route::Task(id) => handlers::task(ctx, id),
        Route::TaskOutput(id) => handlers::output(ctx, id, q, rq.peer_socket()),
        Route::CancelTask(id) => handlers::cancel(ctx, id, from),
    }
}
