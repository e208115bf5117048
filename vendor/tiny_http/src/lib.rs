//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::{ConnGuard, ConnShared};
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{NetStream, ReadWrite, Request};
pub use response::{Response, ResponseBox};
/// The rustls this crate is built with (for building a [`TlsConfigSource`]'s configuration).
pub use rustls;
pub use test::TestRequest;
pub use tls::TlsConfigSource;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod test;
mod tls;
mod util;

/// Resource limits applied by the server to every connection.
///
/// See [`Server::http_with_limits`]. `Limits::default()` is what [`Server::http`] uses.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Max accepted request body, in bytes (default 1 MiB).
    ///
    /// A request whose declared `Content-Length` is above this is still handed to the
    /// application, with [`Request::body_too_large`] returning `true` and an empty body (the
    /// body is never read, the connection is closed after the response). A chunked body that
    /// grows past the limit makes the body reader return an error (and `body_too_large()`
    /// becomes `true`).
    pub max_body_bytes: u64,
    /// Time allowed to receive a complete request head (request line + headers) once its
    /// first byte arrived (or, on a new connection, once the connection was accepted); also
    /// the max time a single read of the request body may block, and the time allowed to
    /// read small bodies (<= 64 KiB) that the server reads up front. Default 10 s.
    pub request_timeout: Duration,
    /// Time a keep-alive connection may stay idle waiting for its next request. Default 30 s.
    pub idle_timeout: Duration,
    /// Socket write timeout (each write call). Default 10 s.
    pub write_timeout: Duration,
    /// Max size of the request head (request line + headers). Default 16 KiB. Bigger heads
    /// are answered with `431` (or `414` if the request line alone is too long) and closed.
    pub max_header_bytes: usize,
    /// Max number of simultaneously open connections (not counting upgraded ones). Past it,
    /// new connections are closed immediately. Default 4096.
    pub max_connections: usize,
    /// Max number of open connections from one client address (not counting upgraded
    /// ones), so one host cannot take every slot of `max_connections`. Default 1024.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
            max_connections_per_ip: 1024,
        }
    }
}

/// Max number of header lines in a request head (above: `431`).
pub const MAX_HEADERS: usize = 100;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // number of open (not upgraded) connections
    connections: Arc<AtomicUsize>,
}

enum Message {
    NewRequest(Request),
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
#[allow(dead_code)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// SSL is not supported by this build: must be `None`.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL. SSL is not supported by this build (kept only so that
/// `ServerConfig` keeps its shape); passing one is an error.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address, with default [`Limits`].
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::http_with_limits(addr, Limits::default())
    }

    /// Like [`Server::http`], with limits.
    pub fn http_with_limits<A>(
        addr: A,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new_with_limits(
            ServerConfig {
                addr: ConfigListenAddr::from_socket_addrs(addr)?,
                ssl: None,
            },
            limits,
        )
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::new_with_limits(config, Limits::default())
    }

    /// Builds a new server that listens on the specified address, with limits.
    pub fn new_with_limits(
        config: ServerConfig,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        if config.ssl.is_some() {
            return Err("SSL is not supported by this build of tiny-http".into());
        }
        let listener = config.addr.bind()?;
        Self::from_listener_with_limits(listener, limits)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        if ssl_config.is_some() {
            return Err("SSL is not supported by this build of tiny-http".into());
        }
        Self::from_listener_with_limits(listener, Limits::default())
    }

    /// Builds a new server using the specified listener, with limits.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_tls(listener, limits, None)
    }

    /// Like [`Server::from_listener_with_limits`]; with `tls`, every TCP connection is TLS
    /// (rustls): its handshake must be complete within `limits.request_timeout` of the
    /// accept (like a request head), and a connection whose first byte is not a TLS
    /// handshake record (plain HTTP) gets a plain `400` saying the port speaks TLS, and is
    /// closed. `tls` is asked for a configuration at each connection (see
    /// [`TlsConfigSource`]). See PATCHES.md item 14.
    pub fn from_listener_with_tls<L: Into<Listener>>(
        listener: L,
        limits: Limits,
        tls: Option<Arc<dyn TlsConfigSource>>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        let local_addr = listener.local_addr()?;
        log::debug!("Server listening on {}", local_addr);

        // creating a task where server.accept() is continuously called
        // and connections are dispatched to the threads of a pool
        let messages = MessagesQueue::with_capacity(8);
        let connections = Arc::new(AtomicUsize::new(0));

        let shared = Arc::new(ConnShared {
            limits,
            tls,
            close: close_trigger.clone(),
            messages: messages.clone(),
        });
        let inside_connections = connections.clone();
        thread::Builder::new()
            .name("http-accept".to_owned())
            .spawn(move || accept_loop(listener, shared, inside_connections))?;

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            connections,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server (upgraded connections
    /// are not counted).
    pub fn num_connections(&self) -> usize {
        self.connections.load(SeqCst)
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::other("thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// Accepts connections until the server is closed. Accept errors (e.g. `EMFILE`) are logged
/// and retried after a short pause; they never stop the loop.
fn accept_loop(listener: Listener, shared: Arc<ConnShared>, connections: Arc<AtomicUsize>) {
    // a tasks pool is used to dispatch the connections into threads
    let tasks_pool = util::TaskPool::new();
    let max_connections = shared.limits.max_connections;
    let max_per_ip = shared.limits.max_connections_per_ip;
    let per_ip: client::PerIp = Arc::default();

    log::debug!("Running accept thread");
    while !shared.close.load(SeqCst) {
        let (sock, remote_addr) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                if shared.close.load(SeqCst) {
                    break;
                }
                match e.kind() {
                    IoErrorKind::Interrupted
                    | IoErrorKind::ConnectionAborted
                    | IoErrorKind::ConnectionReset => {
                        log::debug!("Error accepting new client: {}", e);
                    }
                    _ => {
                        // EMFILE, ENFILE, ENOBUFS, ENOMEM...: back off instead of spinning
                        log::error!("Error accepting new client: {}", e);
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                continue;
            }
        };
        if shared.close.load(SeqCst) {
            break;
        }

        // connection cap: reserve a slot or drop the connection right away
        let reserved = connections
            .fetch_update(SeqCst, SeqCst, |n| {
                if n < max_connections {
                    Some(n + 1)
                } else {
                    None
                }
            })
            .is_ok();
        if !reserved {
            log::warn!(
                "Too many connections ({}), closing new connection from {:?}",
                max_connections,
                remote_addr
            );
            let _ = sock.shutdown(Shutdown::Both);
            continue;
        }
        let mut guard = ConnGuard::new(connections.clone());
        if let Some(ip) = remote_addr.map(|a| a.ip()) {
            if !guard.reserve_for(&per_ip, ip, max_per_ip) {
                log::warn!(
                    "Too many connections from {} ({}), closing the new one",
                    ip,
                    max_per_ip
                );
                let _ = sock.shutdown(Shutdown::Both);
                continue;
            }
        }

        let shared = shared.clone();
        let res = tasks_pool.spawn(Box::new(move || {
            client::serve(sock, remote_addr, shared, guard);
        }));
        if res.is_err() {
            // the task (socket + guard) was dropped: connection closed, slot released
            thread::sleep(Duration::from_millis(50));
        }
    }
    log::debug!("Terminating accept thread");
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, SeqCst);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => {
                let mut addr = *addr;
                if addr.ip().is_unspecified() {
                    match addr {
                        std::net::SocketAddr::V4(_) => {
                            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into())
                        }
                        std::net::SocketAddr::V6(_) => {
                            addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into())
                        }
                    }
                }
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(Connection::from)
            }
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                match addr.as_pathname() {
                    Some(path) => {
                        std::os::unix::net::UnixStream::connect(path).map(Connection::from)
                    }
                    None => Err(IoError::other("unnamed unix socket")),
                }
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
