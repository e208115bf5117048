//! The HTTP side of a WebSocket upgrade (CONTRACT.md §3): the secret, the handshake's checks
//! and answer; then the socket goes to [`crate::ws`]: the broadcaster learns of the client
//! before the `101` goes out, and the client's two threads take the socket.

use std::sync::atomic::Ordering;

use tiny_http::{Header, Request, Response};

use crate::http::error::ApiError;
use crate::http::reply::{respond, Reply};
use crate::http::{auth, query, Ctx};
use crate::ws::client;
use crate::ws::ctl::Ctl;
use crate::ws::hub::{self, HubHandle, MAX_CLIENTS};
use crate::ws::queue::Queue;

/// Whether the request asks for a WebSocket upgrade.
pub fn is_upgrade(rq: &Request) -> bool {
    rq.headers().iter().any(|h| h.field.equiv("Upgrade") && h.value.as_str().to_ascii_lowercase().contains("websocket"))
}

fn header<'a>(rq: &'a Request, name: &'static str) -> Option<&'a str> {
    rq.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().trim())
}

/// `?subscribe=7,8&offset=O&errorOffset=E` (or `subscribe=7&subscribe=8`): tasks to narrow
/// the connection to from its start, each replayed from the offsets (default 0). At most
/// [`hub::MAX_REPLAYS_PER_CLIENT`] tasks: more is an error, not a silent cut.
fn url_subscriptions(q: &[(String, String)]) -> Result<Vec<(u64, u64, u64)>, String> {
    let num = |k: &str| match query::get(q, k) {
        None | Some("") => Ok(0),
        Some(v) => v.parse::<u64>().map_err(|_| format!("{k} must be a non-negative integer")),
    };
    let (offset, error_offset) = (num("offset")?, num("errorOffset")?);
    let mut ids: Vec<u64> = Vec::new();
    for t in query::get_all(q, "subscribe").flat_map(|l| l.split(',')).filter(|t| !t.trim().is_empty()) {
        let id = t.trim().parse::<u64>().map_err(|_| "subscribe must be task ids separated by commas".to_string())?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > hub::MAX_REPLAYS_PER_CLIENT {
            return Err(format!("subscribe names more than {} tasks", hub::MAX_REPLAYS_PER_CLIENT));
        }
    }
    Ok(ids.into_iter().map(|id| (id, offset, error_offset)).collect())
}

/// Checks, answers the handshake, and hands the connection to the hub; or answers the refusal.
pub fn accept(ctx: &Ctx, hub: &HubHandle, rq: Request) {
    if let Err((rq, reply)) = upgrade(ctx, hub, rq) {
        respond(rq, reply);
    }
}

#[allow(clippy::result_large_err)] // the error is answered right away, not passed around
fn upgrade(ctx: &Ctx, hub: &HubHandle, rq: Request) -> Result<(), (Request, Reply)> {
    let from = rq.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
    let (_, q) = query::split_url(rq.url());
    let presented = auth::presented(rq.headers()).or_else(|| query::get(&q, "secret"));
    if !ctx.cfg.ws_allow_anonymous && !auth::is_authorized(&ctx.cfg, rq.remote_addr(), presented) {
        crate::metrics::inc(&ctx.metrics.refused_requests);
        log::warn!("refused WebSocket upgrade from {from}: invalid or missing cluster secret");
        return Err((rq, Reply::error(&ApiError::Forbidden)));
    }
    if rq.method().as_str() != "GET" {
        return Err((rq, Reply::error(&ApiError::BadRequest("WebSocket upgrade needs GET".into()))));
    }
    let initial = match url_subscriptions(&q) {
        Ok(s) => s,
        Err(e) => return Err((rq, Reply::error(&ApiError::BadRequest(e)))),
    };
    if header(&rq, "Sec-WebSocket-Version") != Some("13") {
        let mut r = Reply::error(&ApiError::BadRequest("Unsupported WebSocket version (13 required)".into()));
        r.status = 426;
        r.headers.push(("Sec-WebSocket-Version", "13".into()));
        return Err((rq, r));
    }
    let Some(key) = header(&rq, "Sec-WebSocket-Key").filter(|k| !k.is_empty() && k.len() <= 64) else {
        return Err((rq, Reply::error(&ApiError::BadRequest("Missing Sec-WebSocket-Key".into()))));
    };
    if hub.clients.load(Ordering::Acquire) >= MAX_CLIENTS {
        log::warn!("refused WebSocket upgrade from {from}: {MAX_CLIENTS} clients already connected");
        return Err((rq, Reply::unavailable("Too many WebSocket clients", 5)));
    }
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = Response::empty(101).with_header(
        Header::from_bytes("Sec-WebSocket-Accept", accept_key.as_bytes()).expect("base64 is a valid header value"),
    );
    // Join before the 101 goes out: a task the client starts right after it must not run
    // ahead of its registration. Events wait in the queue until the writer starts.
    let id = hub.next_client_id();
    let (tx, rx) = crossbeam_channel::unbounded();
    let queue = Queue::new(tx);
    // Counted first, so tasks start producing events before the client can start a task.
    hub.clients.fetch_add(1, Ordering::AcqRel);
    let _ = hub.ctl.send(Ctl::Join { id, queue: queue.clone(), peer: from.clone(), subscribe: initial });
    let (stream, leftover) = match rq.upgrade_stream("websocket", response) {
        Ok(s) => s,
        Err(e) => {
            log::info!("WebSocket upgrade from {from} failed: {e}");
            let _ = hub.ctl.send(Ctl::Leave { id });
            return Ok(());
        }
    };
    if let Err(e) = client::start(id, stream, leftover, rx, queue, hub, ctx.cfg.ws_ping_interval) {
        log::warn!("websocket client {id} ({from}): cannot start its threads: {e}");
        let _ = hub.ctl.send(Ctl::Leave { id });
    }
    Ok(())
}
