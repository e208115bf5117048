//! Per-connection loop: reads request heads (with deadlines and size caps), builds `Request`s,
//! hands them to the application and waits until each one is finished before reading the next.

use std::cmp;
use std::collections::HashMap;
use std::convert::TryFrom;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method};
use crate::connection::Connection;
use crate::request::{Finish, Request};
use crate::tls::{HandshakeError, TlsStream};
use crate::util::{
    drain_deadline, fill_deadline, read_exact_deadline, BodyKind, BodyReader, ChunkedDecoder,
    MessagesQueue,
};
use crate::{Limits, Message, Response, StatusCode, MAX_HEADERS};

/// Bodies up to this size (and within `max_body_bytes`, without `Expect: 100-continue`) are read
/// by the connection thread, under the request deadline, before the request is handed to the
/// application: a slow client cannot pin an application thread with a small body.
const PREREAD_LIMIT: u64 = 64 * 1024;

/// Max time spent reading (and discarding) what the client still sends after we decided to close
/// the connection, so that it gets our response instead of a TCP reset.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: u64 = 256 * 1024;

/// State shared by all the connection threads of a server.
pub(crate) struct ConnShared {
    pub(crate) limits: Limits,
    pub(crate) tls: Option<Arc<dyn crate::tls::TlsConfigSource>>,
    pub(crate) close: Arc<AtomicBool>,
    pub(crate) messages: Arc<MessagesQueue<Message>>,
}

/// Holds one slot of the connection cap; released when dropped.
/// Open connections per client address.
pub(crate) type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub(crate) struct ConnGuard {
    total: Arc<AtomicUsize>,
    per_ip: Option<(PerIp, IpAddr)>,
}

impl ConnGuard {
    /// `counter` must already have been incremented for this connection.
    pub(crate) fn new(counter: Arc<AtomicUsize>) -> Self {
        ConnGuard {
            total: counter,
            per_ip: None,
        }
    }

    /// Counts this connection against `ip`'s share; false (and nothing counted) when `ip`
    /// already has `max` open.
    pub(crate) fn reserve_for(&mut self, per_ip: &PerIp, ip: IpAddr, max: usize) -> bool {
        let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.per_ip = Some((Arc::clone(per_ip), ip));
        true
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.total.fetch_sub(1, SeqCst);
        if let Some((per_ip, ip)) = self.per_ip.take() {
            let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Why reading a request head stopped.
#[derive(Debug)]
enum HeadError {
    /// EOF, idle timeout or error before the first byte of a request: close silently.
    Idle,
    /// The head was not complete before its deadline: 408.
    TimedOut,
    /// Error status to send before closing (400, 414, 431...).
    Status(u16),
    /// I/O error in the middle of a head: close.
    Io,
}

/// Reads a request head up to and including the empty line. Leading empty lines are skipped.
fn read_head(
    src: &mut BufReader<Connection>,
    first_byte_deadline: Instant,
    request_timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, HeadError> {
    let mut head: Vec<u8> = Vec::with_capacity(cmp::min(max_bytes, 1024));
    let mut deadline = first_byte_deadline;
    let mut started = false;
    let mut skipped = 0usize;
    loop {
        let buf = match fill_deadline(src, deadline) {
            Ok(b) => b,
            Err(_) if !started => return Err(HeadError::Idle),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(HeadError::TimedOut),
            Err(_) => return Err(HeadError::Io),
        };
        if buf.is_empty() {
            return Err(if started || !head.is_empty() {
                HeadError::Io
            } else {
                HeadError::Idle
            });
        }
        if !started {
            started = true;
            // once a request starts, it has `request_timeout` to complete its head
            deadline = cmp::min(deadline, Instant::now() + request_timeout);
        }

        let mut consumed = 0;
        let mut complete = false;
        for &b in buf {
            consumed += 1;
            if head.is_empty() && (b == b'\r' || b == b'\n') {
                // RFC 7230 3.5: ignore empty lines before the request line
                skipped += 1;
                if skipped > max_bytes {
                    return Err(HeadError::Status(400));
                }
                continue;
            }
            head.push(b);
            if head.len() > max_bytes {
                let request_line_done = head.contains(&b'\n');
                return Err(HeadError::Status(if request_line_done { 431 } else { 414 }));
            }
            if b == b'\n' && (head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n")) {
                complete = true;
                break;
            }
        }
        src.consume(consumed);
        if complete {
            return Ok(head);
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head. Errors are HTTP status codes to answer with (then close).
fn parse_head(head: &[u8], max_headers: usize) -> Result<Head, u16> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| match l.last() {
        Some(b'\r') => &l[..l.len() - 1],
        _ => l,
    });

    // request line: method SP target SP version
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(400),
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(400);
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(400);
    }
    let version = match version {
        b"HTTP/1.1" => HTTPVersion(1, 1),
        b"HTTP/1.0" => HTTPVersion(1, 0),
        [b'H', b'T', b'T', b'P', b'/', maj, b'.', min]
            if maj.is_ascii_digit() && min.is_ascii_digit() =>
        {
            // syntactically valid, but not a version we speak (0.9, 2.0, ...)
            return Err(505);
        }
        _ => return Err(400),
    };
    let method: Method = std::str::from_utf8(method)
        .ok()
        .and_then(|m| m.parse().ok())
        .ok_or(400u16)?;
    let path = String::from_utf8(target.to_vec()).map_err(|_| 400u16)?;

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            // end of head (the head always ends with an empty line, then possibly nothing)
            break;
        }
        if headers.len() >= max_headers {
            return Err(431);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obsolete line folding
            return Err(400);
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(400u16)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(400);
        }
        let start = value
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(start, |p| p + 1);
        let value = if start < end {
            &value[start..end]
        } else {
            &[][..]
        };
        if !value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(400);
        }
        let field = HeaderField::from_bytes(name.to_vec()).map_err(|_| 400u16)?;
        let value = AsciiString::from_ascii(value.to_vec()).map_err(|_| 400u16)?;
        headers.push(Header { field, value });
    }

    Ok(Head {
        method,
        path,
        version,
        headers,
    })
}

/// How the request body is framed according to the headers.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Strict `Content-Length` value: 1 to 19 digits (fits in u64), nothing else.
fn parse_content_length(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Decides the body framing. Ambiguous or invalid framing (smuggling vectors) is a 400, and
/// so is `Transfer-Encoding` on HTTP/1.0, which has none (RFC 9112 §6.1: faulty framing).
fn body_framing(headers: &[Header], version: &HTTPVersion) -> Result<Framing, u16> {
    let mut te = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"));
    let cls: Vec<&Header> = headers
        .iter()
        .filter(|h| h.field.equiv("Content-Length"))
        .collect();

    if let Some(t) = te.next() {
        if te.next().is_some() || !cls.is_empty() || *version == HTTPVersion(1, 0) {
            return Err(400);
        }
        if !t.value.as_str().trim().eq_ignore_ascii_case("chunked") {
            // other codings (or lists of them) are not supported
            return Err(400);
        }
        return Ok(Framing::Chunked);
    }

    let mut length = None;
    for h in cls {
        let v = parse_content_length(h.value.as_str().trim()).ok_or(400u16)?;
        match length {
            Some(l) if l != v => return Err(400),
            _ => length = Some(v),
        }
    }
    Ok(match length {
        Some(l) => Framing::Length(l),
        None => Framing::None,
    })
}

/// Lists the comma-separated tokens of all the `Connection` headers, lowercased.
fn connection_tokens(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .flat_map(|h| {
            h.value
                .as_str()
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Writes a bodiless error response (with `Connection: close`).
fn send_error(writer: &mut Connection, code: u16) {
    let mut out = Vec::with_capacity(256);
    let _ = Response::empty(StatusCode(code)).print_internal(
        &mut out,
        HTTPVersion(1, 1),
        &[],
        false,
        None,
        true,
    );
    let _ = writer.write_all(&out);
    let _ = writer.flush();
}

/// Closes the connection: FIN first, then discards what the client keeps sending for a short
/// while so that it reads our response instead of getting a reset.
fn close_gracefully(src: Option<BufReader<Connection>>, writer: &Connection) {
    let _ = writer.shutdown(Shutdown::Write);
    if let Some(mut src) = src {
        let deadline = Instant::now() + LINGER_TIME;
        let mut total = 0u64;
        while total < LINGER_BYTES {
            match fill_deadline(&mut src, deadline) {
                Ok(b) if !b.is_empty() => {
                    let n = b.len();
                    total += n as u64;
                    src.consume(n);
                }
                _ => break,
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// A failed handshake is the client's business (a scanner, a client that does not trust our
/// certificate, a missing client certificate): logged at info level, one line.
fn log_handshake_error(remote_addr: Option<SocketAddr>, e: &HandshakeError) {
    let from = remote_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    match e {
        HandshakeError::Io(_) => log::debug!("TLS handshake with {}: {}", from, e),
        _ => log::info!("TLS handshake with {} failed: {}", from, e),
    }
}

/// Serves one connection until it is closed (or upgraded).
pub(crate) fn serve(
    conn: Connection,
    remote_addr: Option<SocketAddr>,
    shared: Arc<ConnShared>,
    guard: ConnGuard,
) {
    let limits = &shared.limits;
    let _ = conn.set_write_timeout(Some(cmp::max(
        limits.write_timeout,
        Duration::from_millis(1),
    )));
    conn.set_nodelay();
    let request_timeout = cmp::max(limits.request_timeout, Duration::from_millis(1));
    let conn = match (&shared.tls, conn) {
        (Some(tls), Connection::Tcp(sock)) => {
            let deadline = Instant::now() + request_timeout;
            match TlsStream::accept(sock, tls.server_config(), deadline) {
                Ok(s) => Connection::Tls(s),
                Err(e) => {
                    log_handshake_error(remote_addr, &e);
                    return;
                }
            }
        }
        (_, conn) => conn,
    };
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("tiny_http: cannot clone socket: {}", e);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
    };
    let idle_timeout = cmp::max(limits.idle_timeout, Duration::from_millis(1));

    let mut src = BufReader::with_capacity(8 * 1024, conn);
    let mut first = true;

    loop {
        if shared.close.load(SeqCst) {
            break;
        }
        let wait = if first { request_timeout } else { idle_timeout };
        let head = match read_head(
            &mut src,
            Instant::now() + wait,
            request_timeout,
            limits.max_header_bytes,
        ) {
            Ok(h) => h,
            Err(HeadError::Idle) | Err(HeadError::Io) => break,
            Err(HeadError::TimedOut) => {
                send_error(&mut writer, 408);
                break;
            }
            Err(HeadError::Status(code)) => {
                send_error(&mut writer, code);
                close_gracefully(Some(src), &writer);
                return;
            }
        };
        first = false;
        let body_deadline = Instant::now() + request_timeout;

        let head = match parse_head(&head, MAX_HEADERS) {
            Ok(h) => h,
            Err(code) => {
                send_error(&mut writer, code);
                close_gracefully(Some(src), &writer);
                return;
            }
        };
        let framing = match body_framing(&head.headers, &head.version) {
            Ok(f) => f,
            Err(code) => {
                send_error(&mut writer, code);
                close_gracefully(Some(src), &writer);
                return;
            }
        };
        let is_11 = head.version == HTTPVersion(1, 1);

        // Expect
        let mut expects_continue = false;
        if let Some(e) = head.headers.iter().find(|h| h.field.equiv("Expect")) {
            if e.value.as_str().trim().eq_ignore_ascii_case("100-continue") {
                expects_continue = is_11;
            } else {
                send_error(&mut writer, 417);
                close_gracefully(Some(src), &writer);
                return;
            }
        }

        // keep-alive
        let tokens = connection_tokens(&head.headers);
        let close_after =
            !is_11 || tokens.iter().any(|t| t == "close") || tokens.iter().any(|t| t == "upgrade");

        // body
        let max_body = limits.max_body_bytes;
        let kind = match framing {
            Framing::None | Framing::Length(0) => BodyKind::Empty,
            Framing::Length(n) if n > max_body => BodyKind::TooLarge,
            Framing::Length(n) if n <= PREREAD_LIMIT && !expects_continue => {
                match read_exact_deadline(&mut src, n as usize, body_deadline) {
                    Ok(data) => BodyKind::Buffered(std::io::Cursor::new(data)),
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            send_error(&mut writer, 408);
                        }
                        break;
                    }
                }
            }
            Framing::Length(n) => BodyKind::Length(n),
            Framing::Chunked => BodyKind::Chunked(ChunkedDecoder::new(max_body)),
        };
        let body_length = match framing {
            Framing::Length(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => None,
        };

        // from now on, each body read by the application may block at most request_timeout
        if src
            .get_ref()
            .set_read_timeout(Some(request_timeout))
            .is_err()
        {
            break;
        }
        let response_writer = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => {
                log::warn!("tiny_http: cannot clone socket: {}", e);
                break;
            }
        };

        let (done_tx, done_rx) = mpsc::channel();
        let request = Request::from_connection(
            head.method,
            head.path,
            head.version,
            head.headers,
            remote_addr,
            BodyReader::new(src, kind),
            body_length,
            response_writer,
            expects_continue,
            close_after,
            done_tx,
        );
        if shared.close.load(SeqCst) {
            // nobody will ever receive it; dropping it answers 500
            drop(request);
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        shared.messages.push(request.into());

        // wait until the application is done with the request
        let finish = loop {
            match done_rx.recv_timeout(Duration::from_millis(500)) {
                Ok(f) => break Some(f),
                Err(RecvTimeoutError::Timeout) => {
                    if shared.close.load(SeqCst) {
                        break None;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break None,
            }
        };

        match finish {
            None => {
                // server closing: the request (if still alive) owns the socket
                return;
            }
            Some(Finish::Upgraded) => {
                // the application owns the socket now: do not touch it, release the slot
                drop(guard);
                return;
            }
            Some(Finish::Done { body, close }) => {
                let body = match body {
                    Some(b) => b,
                    None => break,
                };
                let reuse = if close {
                    None
                } else {
                    body.remaining_for_reuse()
                };
                src = body.into_source();
                match reuse {
                    None => {
                        close_gracefully(Some(src), &writer);
                        return;
                    }
                    Some(0) => {}
                    Some(n) => {
                        let deadline = Instant::now() + request_timeout;
                        if drain_deadline(&mut src, n, deadline).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    let _ = writer.shutdown(Shutdown::Both);
    drop(guard);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn test_parse_request_line() {
        let h = parse_head(b"GET /hello HTTP/1.1\r\n\r\n", 100).unwrap();
        assert!(h.method == Method::Get);
        assert!(h.path == "/hello");
        assert!(h.version == HTTPVersion(1, 1));

        assert_eq!(parse_head(b"GET /hello\r\n\r\n", 100).unwrap_err(), 400);
        assert_eq!(parse_head(b"qsd qsd qsd\r\n\r\n", 100).unwrap_err(), 400);
        assert_eq!(parse_head(b"GET / HTTP/0.9\r\n\r\n", 100).unwrap_err(), 505);
        assert_eq!(parse_head(b"GET / HTTP/2.0\r\n\r\n", 100).unwrap_err(), 505);
        assert_eq!(
            parse_head(b"GET  / HTTP/1.1\r\n\r\n", 100).unwrap_err(),
            400
        );
        assert_eq!(
            parse_head(b"GET /\0 HTTP/1.1\r\n\r\n", 100).unwrap_err(),
            400
        );
        assert_eq!(
            parse_head(b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 100).unwrap_err(),
            400
        );
        assert_eq!(
            parse_head(b"G\xffT / HTTP/1.1\r\n\r\n", 100).unwrap_err(),
            400
        );
    }

    #[test]
    fn test_parse_headers() {
        let h = parse_head(
            b"GET / HTTP/1.1\r\nA: b \r\nC:d\r\nTime: 20: 34\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(h.headers.len(), 3);
        assert_eq!(h.headers[0].value.as_str(), "b");
        assert_eq!(h.headers[1].value.as_str(), "d");
        assert_eq!(h.headers[2].value.as_str(), "20: 34");
        for bad in [
            &b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
            b"GET / HTTP/1.1\r\n: c\r\n\r\n",
            b"GET / HTTP/1.1\r\nA : c\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: c\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: c\0d\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \xc3\xa9\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad, 100).unwrap_err(), 400);
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..101 {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many, 100).unwrap_err(), 431);
    }

    fn framing(raw: &[u8]) -> Result<Framing, u16> {
        let h = parse_head(raw, 100).unwrap();
        body_framing(&h.headers, &h.version)
    }

    #[test]
    fn test_framing() {
        assert_eq!(framing(b"GET / HTTP/1.1\r\n\r\n"), Ok(Framing::None));
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n"),
            Ok(Framing::Length(1_000_000_000_000_000))
        );
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(framing(bad), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn random_heads_never_panic() {
        let base: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..(rnd() % 8 + 1) {
                let pos = (rnd() as usize) % m.len();
                let byte = match rnd() % 4 {
                    0 => b"\r\n: \t,;0f-"[(rnd() % 10) as usize],
                    _ => rnd() as u8,
                };
                match rnd() % 3 {
                    0 => m[pos] = byte,
                    1 => {
                        m.remove(pos);
                    }
                    _ => m.insert(pos, byte),
                }
            }
            if i % 2 == 0 {
                m.truncate((rnd() as usize) % (m.len() + 1));
            }
            if let Ok(h) = parse_head(&m, 100) {
                let _ = body_framing(&h.headers, &h.version);
                let _ = connection_tokens(&h.headers);
            }
        }
    }
}
