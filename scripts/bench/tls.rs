//! Figures 12 and 13: the cost of TLS (issue 14). A plain agent and a TLS agent
//! (`TLS_CERT`/`TLS_KEY`: the self-signed localhost certificate of the vendored tiny_http's
//! tests) run side by side and are measured in alternating blocks, so a noisy machine
//! weighs on both:
//!
//! - 12: `POST /execute?wait=true` (`/bin/true`) round trips on one reused connection,
//!   HTTPS against plain HTTP (p50);
//! - 13: `seq 1 1000000` byte-exact to one `wss://` client against `ws://` (median of 3).
//!
//! Informational: the target is to state the cost, not to meet a ratio.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::client::IntoClientRequest;

use crate::client::IO_TIMEOUT;
use crate::proc::{median, ms, percentile, Agent, SECRET};

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// The certificate the TLS agent serves (self-signed, for localhost and 127.0.0.1).
pub fn cert_files(root: &Path) -> (String, String) {
    let dir = root.join("vendor/tiny_http/tests/tls");
    (dir.join("cert.pem").display().to_string(), dir.join("key.pem").display().to_string())
}

fn client_config(root: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let cert =
        CertificateDer::from_pem_file(root.join("vendor/tiny_http/tests/tls/cert.pem")).map_err(|e| e.to_string())?;
    roots.add(cert).map_err(|e| e.to_string())?;
    #[allow(deprecated)] // ring: see src/tls.rs
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A TCP connection, TLS on top when `tls` is given.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Conn {
    pub fn open(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Result<Conn, String> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        let Some(cfg) = tls else { return Ok(Conn::Plain(s)) };
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(Arc::clone(cfg), name).map_err(|e| e.to_string())?;
        Ok(Conn::Tls(Box::new(StreamOwned::new(conn, s))))
    }

    fn set_read_timeout(&self, d: Duration) {
        let s = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        };
        let _ = s.set_read_timeout(Some(d));
    }
}

/// One keep-alive connection: `POST path` with a JSON body, the reply's status and body
/// (replies framed by `Content-Length`: the small ones measured here).
fn post(c: &mut BufReader<Conn>, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-Cluster-Secret: {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.get_mut().write_all(req.as_bytes()).and_then(|_| c.get_mut().flush()).map_err(|e| e.to_string())?;
    let (mut status, mut len) = (0u16, None);
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status == 0 {
            status = l.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut out = vec![0u8; len.ok_or("reply without Content-Length")?];
    c.read_exact(&mut out).map_err(|e| e.to_string())?;
    Ok((status, out))
}

/// `n` round trips of `POST /execute?wait=true` on one connection; their times (ms).
fn round_trips(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>, n: usize) -> Result<Vec<f64>, String> {
    let mut c = BufReader::with_capacity(64 * 1024, Conn::open(addr, tls)?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = post(&mut c, "/execute?wait=true", r#"{"command":"/bin/true"}"#)?;
        out.push(ms(t.elapsed()));
        if status != 200 || !String::from_utf8_lossy(&body).contains("\"completed\"") {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    Ok(out)
}

/// Figure 12: p50 over HTTPS and over plain HTTP, blocks alternating P T T P (×`rounds`).
pub fn round_trip_cost(
    plain: &Agent,
    tls: &Agent,
    root: &Path,
    per: usize,
    rounds: usize,
) -> Result<(f64, f64), String> {
    let cfg = client_config(root)?;
    let (mut p, mut t) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        p.extend(round_trips(plain.addr, None, per)?);
        t.extend(round_trips(tls.addr, Some(&cfg), per)?);
        t.extend(round_trips(tls.addr, Some(&cfg), per)?);
        p.extend(round_trips(plain.addr, None, per)?);
    }
    Ok((percentile(&t, 50.0), percentile(&p, 50.0)))
}

/// `seq 1 1000000` to one WebSocket client (`wss://` with `tls`); ms from POST to `completed`.
fn seq_once(a: &Agent, tls: Option<&Arc<ClientConfig>>, expected: &[u8]) -> Result<f64, String> {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut rq = format!("{scheme}://localhost:{}/", a.port).into_client_request().map_err(|e| e.to_string())?;
    rq.headers_mut().insert("X-Cluster-Secret", SECRET.parse().map_err(|_| "secret header")?);
    let (mut ws, _) = tungstenite::client::client(rq, Conn::open(a.addr, tls)?).map_err(|e| e.to_string())?;
    ws.get_ref().set_read_timeout(Duration::from_secs(30));
    let mut http = BufReader::new(Conn::open(a.addr, tls)?);
    let t = Instant::now();
    let (_, body) = post(&mut http, "/execute", r#"{"command":"seq","args":["1","1000000"]}"#)?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let id = v["taskId"].as_u64().ok_or("no taskId")?;
    let mut got = Vec::with_capacity(expected.len());
    loop {
        let msg = ws.read().map_err(|e| format!("{scheme}: {e}"))?;
        let Ok(text) = msg.to_text() else { continue };
        let e: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if e["taskId"].as_u64() != Some(id) {
            continue;
        }
        match e["event"].as_str() {
            Some("output") => got.extend_from_slice(e["data"].as_str().unwrap_or("").as_bytes()),
            Some("completed") => break,
            _ => {}
        }
    }
    let d = ms(t.elapsed());
    if got != expected {
        return Err(format!("{scheme}: {} bytes received, {} expected (or different)", got.len(), expected.len()));
    }
    Ok(d)
}

/// Figure 13: median ms over `wss://` and over `ws://`, alternating (3 each).
pub fn seq_cost(plain: &Agent, tls: &Agent, root: &Path, expected: &[u8]) -> Result<(f64, f64), String> {
    let cfg = client_config(root)?;
    let (mut p, mut t) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        p.push(seq_once(plain, None, expected)?);
        t.push(seq_once(tls, Some(&cfg), expected)?);
    }
    Ok((median(&t), median(&p)))
}
