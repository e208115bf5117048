//! WebSocket clients of the agent (tungstenite over a std `TcpStream`), including one whose
//! writes can be switched off: wrapped in it, a client sends no frame at all, not even the
//! pongs tungstenite answers pings with.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

use crate::common::{Agent, SECRET};

pub type Ws = WebSocket<Gate>;

/// How long one read waits before it reports [`Got::Idle`].
pub const READ_SLICE: Duration = Duration::from_millis(200);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis() as u64
}

/// A socket whose writes can be switched off (then they are dropped, reported as done).
pub struct Gate {
    pub tcp: TcpStream,
    open: Arc<AtomicBool>,
}

impl Gate {
    /// Stops all writes: from now on the client sends nothing.
    pub fn mute(&self) {
        self.open.store(false, Ordering::Release);
    }
}

impl Read for Gate {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.open.load(Ordering::Acquire) {
            self.tcp.write(buf)
        } else {
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A client with the secret in `X-Cluster-Secret`. With `small_rcvbuf`, its socket's
/// receive buffer is 64 KiB, set before connecting (which turns off the kernel's autotuning),
/// so once it stops reading it backs up into the agent at once.
pub fn connect(agent: &Agent, small_rcvbuf: bool) -> Result<Ws, String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    if small_rcvbuf {
        sock.set_recv_buffer_size(64 * 1024).map_err(|e| e.to_string())?;
    }
    let addr: std::net::SocketAddr = agent.addr().parse().expect("the agent's address parses");
    sock.connect(&SockAddr::from(addr)).map_err(|e| format!("connect: {e}"))?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut req = format!("ws://{}/", agent.addr()).into_client_request().expect("a valid URL");
    req.headers_mut().insert("X-Cluster-Secret", HeaderValue::from_static(SECRET));
    let gate = Gate { tcp, open: Arc::new(AtomicBool::new(true)) };
    let (ws, _) = tungstenite::client::client(req, gate).map_err(|e| format!("handshake: {e}"))?;
    ws.get_ref().tcp.set_read_timeout(Some(READ_SLICE)).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What one read gave.
#[derive(Debug)]
pub enum Got {
    Msg(Value),
    Ping,
    /// A close frame (its code and reason) or the end of the connection (no code).
    Closed(Option<u16>, String),
    /// Nothing within [`READ_SLICE`].
    Idle,
}

/// Reads one message (answering a ping, unless the client is muted).
pub fn read(ws: &mut Ws) -> Got {
    match ws.read() {
        Ok(Message::Text(t)) => match serde_json::from_str(t.as_str()) {
            Ok(v) => Got::Msg(v),
            Err(e) => {
                let start: String = t.as_str().chars().take(200).collect();
                Got::Closed(None, format!("the agent sent a text message that is not JSON ({e}): {start}"))
            }
        },
        Ok(Message::Ping(_)) => Got::Ping,
        Ok(Message::Close(f)) => match f {
            Some(f) => Got::Closed(Some(u16::from(f.code)), f.reason.to_string()),
            None => Got::Closed(None, "close frame without a code".into()),
        },
        Ok(Message::Binary(b)) => Got::Closed(None, format!("the agent sent a binary message ({} bytes)", b.len())),
        Ok(_) => Got::Idle,
        Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Got::Idle,
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => Got::Idle,
        Err(e) => Got::Closed(None, format!("connection ended: {e}")),
    }
}

/// Sends a JSON text message.
pub fn send(ws: &mut Ws, v: &Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string())).map_err(|e| format!("send {v}: {e}"))
}

/// Sends an unsolicited pong straight on the socket, past tungstenite: a heartbeat (RFC 6455
/// 5.5.3) from a client that is not reading, so the agent does not take it for gone.
pub fn heartbeat(tcp: &TcpStream) {
    let frame = [0x8A, 0x80, 0x12, 0x34, 0x56, 0x78];
    let _ = (&*tcp).write_all(&frame);
}

/// Closes the connection from the client's side and reads until the agent's answer (or the
/// end of the connection), for `timeout` at most.
pub fn close(ws: &mut Ws, timeout: Duration) {
    let _ = ws.close(None);
    let until = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < until {
        if let Got::Closed(..) = read(ws) {
            return;
        }
    }
}

/// A message, cut to a length that fits in a line of a report.
pub fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 300 {
        return s;
    }
    let cut: String = s.chars().take(300).collect();
    format!("{cut}…")
}
