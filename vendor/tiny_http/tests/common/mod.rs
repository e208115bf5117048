#![allow(dead_code)]
//! Test helpers: a server bound to 127.0.0.1 with a few application threads, and a tiny raw
//! HTTP client. Everything has timeouts so a broken test fails instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tiny_http::{Limits, Request, Server};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with `app_threads` threads calling `recv` concurrently
    /// and passing each request to `handler`.
    pub fn start<F>(limits: Limits, app_threads: usize, handler: F) -> TestServer
    where
        F: Fn(Request) + Send + Sync + 'static,
    {
        let server = Arc::new(Server::http_with_limits("127.0.0.1:0", limits).unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let threads = (0..app_threads)
            .map(|_| {
                let server = server.clone();
                let stop = stop.clone();
                let handler = handler.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(rq)) = server.recv_timeout(Duration::from_millis(50)) {
                            handler(rq);
                        }
                    }
                })
            })
            .collect();
        TestServer {
            server,
            addr,
            stop,
            threads,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, CLIENT_TIMEOUT).unwrap();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s
    }

    /// `GET /health` on a fresh connection; returns the status.
    pub fn health(&self) -> u16 {
        let mut s = self.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        read_response(&mut r).unwrap().status
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn closes(&self) -> bool {
        self.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

pub fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(&['\r', '\n'][..]).to_owned())
}

/// Reads one response (status line, headers, body by Content-Length or chunked).
/// `100 Continue` interim responses are returned as such.
pub fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<RawResponse> {
    let status_line = read_line(r)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", status_line)))?;
    let mut headers = Vec::new();
    loop {
        let l = read_line(r)?;
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 || status == 101 {
        return Ok(resp);
    }
    if let Some(l) = resp.header("Content-Length") {
        let l: usize = l.parse().unwrap();
        let mut body = vec![0; l];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let size = usize::from_str_radix(&read_line(r)?, 16).unwrap();
            if size == 0 {
                read_line(r)?;
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            read_line(r)?;
        }
    }
    Ok(resp)
}

/// True if the peer closed the connection (EOF or reset) within the socket's read timeout.
pub fn is_closed<R: Read>(r: &mut R) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // discard (e.g. an error response)
            Err(e) => {
                return e.kind() == std::io::ErrorKind::ConnectionReset
                    || e.kind() == std::io::ErrorKind::ConnectionAborted
            }
        }
    }
}

/// Limits with short timeouts for tests.
pub fn fast_limits() -> Limits {
    Limits {
        request_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(1500),
        write_timeout: Duration::from_millis(800),
        ..Limits::default()
    }
}

/// A handler that reads the whole body and answers like the application would.
pub fn echo_handler(mut rq: Request) {
    use tiny_http::{Header, Response};
    if rq.url() == "/health" {
        let _ = rq.respond(Response::from_string("ok"));
        return;
    }
    if rq.body_too_large() {
        let _ = rq.respond(
            Response::from_string("{\"error\":\"too large\"}")
                .with_status_code(413)
                .with_header(
                    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap(),
                ),
        );
        return;
    }
    let mut body = Vec::new();
    match rq.as_reader().read_to_end(&mut body) {
        Ok(_) => {
            let _ = rq.respond(Response::from_string(format!("len={}", body.len())));
        }
        Err(_) => {
            let code = if rq.body_too_large() { 413 } else { 400 };
            let _ =
                rq.respond(Response::from_string("{\"error\":\"body\"}").with_status_code(code));
        }
    }
}
