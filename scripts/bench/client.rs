//! The bench's own clients: a small HTTP/1.1 keep-alive client over `TcpStream`, and a
//! WebSocket client (tungstenite over `TcpStream`) that presents `X-Cluster-Secret`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// One HTTP response.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("bad JSON reply ({e}): {}", self.text(200)))
    }

    pub fn text(&self, max: usize) -> String {
        let s = String::from_utf8_lossy(&self.body);
        s.chars().take(max).collect()
    }
}

/// A keep-alive HTTP/1.1 connection to the agent; reconnects when the server closed it.
pub struct Http {
    addr: SocketAddr,
    secret: String,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened (1 = keep-alive held throughout).
    pub connects: u32,
    out: Vec<u8>,
}

/// Read/write timeout of a bench connection: generous, but bounded.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Http {
    pub fn new(addr: SocketAddr, secret: &str) -> Http {
        Http { addr, secret: secret.to_string(), conn: None, connects: 0, out: Vec::with_capacity(512) }
    }

    fn connect(&mut self) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        self.conn = Some(BufReader::with_capacity(64 * 1024, s));
        self.connects += 1;
        Ok(())
    }

    /// Sends a request and reads its response. A request on a reused connection that the
    /// server had closed (EOF or reset before the status line) is retried once on a new one.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Resp> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, body) {
            Err(e) if reused && e.kind() != io::ErrorKind::TimedOut && e.kind() != io::ErrorKind::WouldBlock => {
                self.conn = None;
                self.try_request(method, path, body)
            }
            other => other,
        }
    }

    pub fn get(&mut self, path: &str) -> io::Result<Resp> {
        self.request("GET", path, None)
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> io::Result<Resp> {
        self.request("POST", path, Some(body.as_bytes()))
    }

    fn try_request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Resp> {
        if self.conn.is_none() {
            self.connect()?;
        }
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Cluster-Secret: {}\r\nAccept: */*\r\n",
            self.addr, self.secret
        )?;
        if let Some(b) = body {
            write!(self.out, "Content-Type: application/json\r\nContent-Length: {}\r\n", b.len())?;
        }
        self.out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            self.out.extend_from_slice(b);
        }
        let result = {
            let conn = self.conn.as_mut().expect("connected above");
            conn.get_mut().write_all(&self.out).and_then(|_| read_response(conn))
        };
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one response; the flag says whether the connection can be reused.
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(Resp, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the status line"));
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    for _ in 0..200 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let mut keep = version == "HTTP/1.1" && !find("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let chunked = find("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                for _ in 0..100 {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = find("Content-Length") {
        let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if status != 204 && status != 304 && status >= 200 {
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((Resp { status, headers, body }, keep))
}

/// A WebSocket client connection.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket to the agent with the secret in `X-Cluster-Secret`.
pub fn ws_connect(addr: SocketAddr, secret: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut req = format!("ws://{addr}/").into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("X-Cluster-Secret", secret.parse().map_err(|_| "bad secret header".to_string())?);
    let (ws, _resp) = tungstenite::client(req, stream).map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}

/// One `task_update` event.
pub struct Event {
    pub task_id: u64,
    pub event: String,
    pub data: Value,
    pub offset: Option<u64>,
}

/// Reads the next `task_update` event; `Ok(None)` for other messages (pings, other types).
/// Errors are tungstenite's (a read timeout shows as an I/O error).
pub fn read_event(ws: &mut Ws) -> Result<Option<Event>, tungstenite::Error> {
    match ws.read()? {
        Message::Text(t) => {
            let Ok(mut v) = serde_json::from_str::<Value>(t.as_str()) else { return Ok(None) };
            if v.get("type").and_then(Value::as_str) != Some("task_update") {
                return Ok(None);
            }
            let task_id = v.get("taskId").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let event = v.get("event").and_then(Value::as_str).unwrap_or("").to_string();
            let offset = v.get("offset").and_then(Value::as_u64);
            let data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
            Ok(Some(Event { task_id, event, data, offset }))
        }
        _ => Ok(None),
    }
}

/// Whether a tungstenite error leaves the connection as it was, to be read again: a read
/// timeout, or an interrupted read (EINTR: seen here on a socket with a read timeout while
/// the bench spawns raw processes, though it installs no signal handler).
pub fn is_retry(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted))
}
