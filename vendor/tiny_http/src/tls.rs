//! TLS (rustls) on a connection that two threads read and write independently
//! (PATCHES.md item 14).
//!
//! A `rustls::ServerConnection` is one state machine for both directions, so it lives behind
//! a mutex; but the mutex is never held during blocking socket I/O:
//!
//! - **reading**: the raw socket is read with no lock held (so a reader waiting for the
//!   client's next frame blocks nobody). Then the lock is taken to hand rustls the bytes
//!   (`read_tls`, `process_new_packets`) and take the plaintext out.
//! - **writing**: the writer takes `write_lock` (which orders the writers of records: TLS
//!   records carry sequence numbers and must reach the socket in the order they were sealed),
//!   then the state lock just long enough to encrypt (`writer().write`) and take the records
//!   (`write_tls`) into a buffer; the buffer is written to the socket after the state lock
//!   is released.
//!
//! So a thread writing a large backlog to a slow client holds only `write_lock`, and the
//! reader goes on reading pings and close frames. Records the reader side makes rustls
//! produce (alerts, key-update answers) are sent by the reader if `write_lock` is free, else
//! by the writer holding it, which re-checks for them before releasing it (`write_lock` is
//! released under the state lock, so no record can be left behind).

use std::cmp;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use crate::connection::retry_eintr;

/// Where a TLS server gets its configuration: asked once per accepted connection, on that
/// connection's thread, so an implementation may reload certificates that changed.
pub trait TlsConfigSource: Send + Sync {
    /// The configuration for a new connection.
    fn server_config(&self) -> Arc<ServerConfig>;
}

/// Plaintext written per `write` call at most (the rest is taken by the next call).
const MAX_WRITE: usize = 64 * 1024;
/// Raw bytes read from the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Raw bytes waiting for rustls at most (it takes a whole record, ~16 KiB, at a time).
const MAX_RAW: usize = 256 * 1024;

/// The answer to a client that speaks plain HTTP to the TLS port.
pub(crate) const NOT_TLS_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 54\r\nConnection: close\r\n\r\n\
This port speaks TLS only: use https:// (or wss://).\r\n";

struct State {
    conn: ServerConnection,
    /// Raw bytes read from the socket that rustls has not taken yet.
    raw: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    /// Held by whoever takes records out of `state` to write them, until they are written.
    write_lock: Mutex<()>,
    /// A socket write failed (a timeout, a reset): part of a record may be on the wire, so
    /// nothing more is sent, not even close_notify (which would wait for the socket again).
    broken: AtomicBool,
}

/// One TLS connection; clones (`try_clone`) share the TLS state and each has its own handle
/// on the socket, so one thread may read while another writes.
#[derive(Clone)]
pub(crate) struct TlsStream {
    sock: Arc<TcpStream>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

/// Takes every record rustls has ready to send.
fn take_records(conn: &mut ServerConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

fn write_raw(sock: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match retry_eintr(|| (&*sock).write(data))? {
            0 => return Err(ErrorKind::WriteZero.into()),
            n => data = &data[n..],
        }
    }
    Ok(())
}

impl State {
    /// Hands rustls what it will take of `raw` and processes it.
    fn pump(&mut self) -> io::Result<()> {
        let mut used = 0;
        while used < self.raw.len() && self.conn.wants_read() {
            let mut rd = &self.raw[used..];
            let n = self.conn.read_tls(&mut rd)?;
            used += n;
            self.conn.process_new_packets().map_err(tls_error)?;
            if n == 0 {
                break;
            }
        }
        self.raw.drain(..used);
        Ok(())
    }

    /// Plaintext into `buf`: `Some(n)` (0 at the client's close_notify), or `None` when more
    /// bytes must come from the socket first.
    fn plaintext(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if self.raw.is_empty() || !self.conn.wants_read() {
                        return Ok(None);
                    }
                    let before = self.raw.len();
                    self.pump()?;
                    if self.raw.len() == before {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives rustls what came from the socket (`data` empty: the end of the stream).
    fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            if self.raw.is_empty() {
                self.conn.read_tls(&mut &[][..])?;
                return Ok(());
            }
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if self.raw.len() + data.len() > MAX_RAW {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "TLS input not consumed",
            ));
        }
        self.raw.extend_from_slice(data);
        self.pump()
    }
}

/// Bounds one `read` call that needs several socket reads (a record arriving in pieces) to
/// the socket's read timeout in all: from the second socket read on, the timeout is set to
/// what is left of it, and put back when the call returns.
struct Stretch<'a> {
    sock: &'a TcpStream,
    entered: Instant,
    /// The socket's own timeout, once changed (`Some(None)`: none).
    original: Option<Option<Duration>>,
    /// The timeout this call set last.
    set: Option<Duration>,
    reads: u32,
}

impl Stretch<'_> {
    fn before_read(&mut self) -> io::Result<()> {
        self.reads += 1;
        if self.reads == 1 {
            return Ok(());
        }
        if self.original.is_none() {
            self.original = Some(self.sock.read_timeout()?);
        }
        if let Some(Some(limit)) = self.original {
            let spent = self.entered.elapsed();
            if spent >= limit {
                return Err(io::Error::new(
                    ErrorKind::WouldBlock,
                    "TLS record not complete within the read timeout",
                ));
            }
            let left = cmp::max(limit - spent, Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left))?;
            self.set = Some(left);
        }
        Ok(())
    }
}

impl Drop for Stretch<'_> {
    fn drop(&mut self) {
        // unless another thread (a writer closing the connection) set its own meanwhile
        if let (Some(original), Some(set)) = (self.original, self.set) {
            // (the kernel keeps the timeout in clock ticks: compare within 20 ms)
            let now = self.sock.read_timeout().ok().flatten();
            let same = now.is_some_and(|d| d.max(set) - d.min(set) <= Duration::from_millis(20));
            if same {
                let _ = self.sock.set_read_timeout(original);
            }
        }
    }
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The first byte was not a TLS handshake record: plain HTTP (answered with a 400).
    NotTls,
    /// Not complete before the deadline.
    TimedOut,
    /// The client closed, or a socket error.
    Io(io::Error),
    /// TLS refused it (bad records, no common cipher, no or a bad client certificate...).
    Tls(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::NotTls => f.write_str("not TLS (plain HTTP on the TLS port?)"),
            HandshakeError::TimedOut => f.write_str("timed out"),
            HandshakeError::Io(e) => write!(f, "{}", e),
            HandshakeError::Tls(e) => write!(f, "{}", e),
        }
    }
}

fn set_deadline(sock: &TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(HandshakeError::TimedOut);
    }
    let left = cmp::max(deadline - now, Duration::from_millis(1));
    sock.set_read_timeout(Some(left))
        .map_err(HandshakeError::Io)
}

fn timeout_or_io(e: io::Error) -> HandshakeError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => HandshakeError::TimedOut,
        _ => HandshakeError::Io(e),
    }
}

/// Looks at the first byte without taking it: a TLS connection starts with a handshake
/// record (0x16). Anything else gets a plain-HTTP 400 saying the port speaks TLS.
fn check_first_byte(sock: &TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
    set_deadline(sock, deadline)?;
    let mut first = [0u8; 1];
    let n = retry_eintr(|| sock.peek(&mut first)).map_err(timeout_or_io)?;
    if n == 0 {
        return Err(HandshakeError::Io(ErrorKind::UnexpectedEof.into()));
    }
    if first[0] != 0x16 {
        let _ = write_raw(sock, NOT_TLS_REPLY);
        linger(sock);
        return Err(HandshakeError::NotTls);
    }
    Ok(())
}

/// After the plain-HTTP refusal: FIN, then what the client sent is read and dropped for a
/// moment (at most 500 ms, 64 KiB), so closing does not reset the connection before the
/// client has read the answer.
fn linger(sock: &TcpStream) {
    let _ = sock.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        let now = Instant::now();
        if now >= until || sock.set_read_timeout(Some(until - now)).is_err() {
            break;
        }
        match retry_eintr(|| (&*sock).read(&mut buf)) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

impl TlsStream {
    /// Runs the server side of the handshake on `sock`, which must be complete before
    /// `deadline` (the socket's write timeout must already be set). On a TLS error, the alert
    /// rustls has for the client is sent before the error is returned.
    pub(crate) fn accept(
        sock: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<TlsStream, HandshakeError> {
        check_first_byte(&sock, deadline)?;
        let conn = ServerConnection::new(config).map_err(|e| HandshakeError::Tls(tls_error(e)))?;
        let mut st = State {
            conn,
            raw: Vec::new(),
        };
        let mut buf = vec![0u8; READ_CHUNK];
        while st.conn.is_handshaking() {
            if st.conn.wants_write() {
                let out = take_records(&mut st.conn).map_err(HandshakeError::Io)?;
                write_raw(&sock, &out).map_err(HandshakeError::Io)?;
                continue;
            }
            set_deadline(&sock, deadline)?;
            let n = retry_eintr(|| (&sock).read(&mut buf)).map_err(timeout_or_io)?;
            if n == 0 {
                return Err(HandshakeError::Io(ErrorKind::UnexpectedEof.into()));
            }
            if let Err(e) = st.feed(&buf[..n]) {
                // the alert (e.g. "certificate required") goes out before the close
                if let Ok(out) = take_records(&mut st.conn) {
                    let _ = write_raw(&sock, &out);
                }
                return Err(HandshakeError::Tls(e));
            }
        }
        // the last flight (and TLS 1.3 session tickets)
        let out = take_records(&mut st.conn).map_err(HandshakeError::Io)?;
        write_raw(&sock, &out).map_err(HandshakeError::Io)?;
        Ok(TlsStream {
            sock: Arc::new(sock),
            shared: Arc::new(Shared {
                state: Mutex::new(st),
                write_lock: Mutex::new(()),
                broken: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    pub(crate) fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            sock: Arc::new(self.sock.try_clone()?),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Reads plaintext; blocks in the socket read (with the socket's read timeout) holding
    /// no lock. Like a plain socket read, one call blocks at most the read timeout in all:
    /// a client trickling a record's bytes cannot stretch it (see [`Stretch`]).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut stretch = Stretch {
            sock: &self.sock,
            entered: Instant::now(),
            original: None,
            set: None,
            reads: 0,
        };
        loop {
            let got = lock(&self.shared.state).plaintext(buf);
            match got {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                Err(e) => {
                    self.send_pending_if_free();
                    return Err(e);
                }
            }
            stretch.before_read()?;
            // Zeroed only when a socket read follows (most reads are answered from rustls's
            // buffer: a record holds up to 16 KiB, callers read 4-8 KiB at a time).
            let mut net = [0u8; READ_CHUNK];
            let n = retry_eintr(|| (&*self.sock).read(&mut net))?;
            let fed = lock(&self.shared.state).feed(&net[..n]);
            // rustls may have something to send now (an alert, a key update's answer)
            self.send_pending_if_free();
            fed?;
        }
    }

    /// Encrypts up to [`MAX_WRITE`] bytes of `buf` and writes the records.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let order = lock(&self.shared.write_lock);
        if self.shared.broken.load(Ordering::Acquire) {
            return Err(ErrorKind::BrokenPipe.into());
        }
        let (n, out) = {
            let mut st = lock(&self.shared.state);
            let n = st
                .conn
                .writer()
                .write(&buf[..cmp::min(buf.len(), MAX_WRITE)])?;
            (n, take_records(&mut st.conn)?)
        };
        self.write_records(&out)?;
        self.send_pending(order)?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        Ok(n)
    }

    /// Writes whatever records are left, then releases `order` (under the state lock, so a
    /// record added meanwhile is either seen here or sent by its producer).
    fn send_pending(&self, order: MutexGuard<'_, ()>) -> io::Result<()> {
        loop {
            let mut st = lock(&self.shared.state);
            if !st.conn.wants_write() {
                drop(order);
                drop(st);
                return Ok(());
            }
            let out = take_records(&mut st.conn)?;
            drop(st);
            self.write_records(&out)?;
        }
    }

    /// Writes records to the socket (the caller holds `write_lock`); after a failure, none.
    fn write_records(&self, out: &[u8]) -> io::Result<()> {
        if self.shared.broken.load(Ordering::Acquire) {
            return Err(ErrorKind::BrokenPipe.into());
        }
        write_raw(&self.sock, out)
            .inspect_err(|_| self.shared.broken.store(true, Ordering::Release))
    }

    /// Sends pending records unless a writer holds `write_lock` (it will send them).
    fn send_pending_if_free(&self) {
        let order = match self.shared.write_lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let _ = self.send_pending(order);
    }

    /// Sends close_notify (best effort: not if a writer is busy, nor after a failed write),
    /// then shuts the socket down.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read && !self.shared.broken.load(Ordering::Acquire) {
            lock(&self.shared.state).conn.send_close_notify();
            self.send_pending_if_free();
        }
        self.sock.shutdown(how)
    }
}
