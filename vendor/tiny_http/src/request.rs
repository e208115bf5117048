use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::convert::TryFrom;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::mpsc::Sender;

use crate::connection::Connection;
use crate::util::BodyReader;
use crate::{HTTPVersion, Header, Method, Response};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # One request at a time per connection
///
/// A connection only produces its next `Request` once the previous one is finished (answered
/// and dropped). Pipelined requests are therefore handled one after the other.
///
/// # Body and connection reuse
///
/// After the response, the connection is kept alive only if the request body was fully read,
/// or if its unread remainder has a known size of at most 64 KiB (it is then discarded by the
/// server). Otherwise (body too large, unread chunked body, read error, `Connection: close`,
/// HTTP/1.0...) the response carries `Connection: close` and the connection is closed.
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Body,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // true if the connection must be closed after this request
    close_after: bool,

    // tells the connection thread that this request is finished
    done: Option<Sender<Finish>>,
}

/// Sent by a finished `Request` to the thread handling its connection.
pub(crate) enum Finish {
    /// The request was answered; `body` gives back the connection's read side.
    Done {
        body: Option<BodyReader>,
        close: bool,
    },
    /// The connection was handed to the application by `upgrade_tcp`/`upgrade`.
    Upgraded,
}

/// Request body: either from a real connection, or any reader (`TestRequest`).
enum Body {
    Conn(BodyReader),
    Other(Box<dyn Read + Send + 'static>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Conn(b) => b.read(buf),
            Body::Other(r) => r.read(buf),
        }
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,

    /// Error while reading data from the socket during the creation of the `Request`.
    #[allow(dead_code)]
    CreationIoError(IoError),
}

impl From<IoError> for RequestCreationError {
    fn from(err: IoError) -> RequestCreationError {
        RequestCreationError::CreationIoError(err)
    }
}

/// Builds a request that is not attached to a connection (used by `TestRequest`).
///
/// The body is `source_data`, limited to the `Content-Length` header if there is a valid one.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    source_data: R,
    writer: W,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let content_length: Option<u64> = headers
        .iter()
        .find(|h: &&Header| h.field.equiv("Content-Length"))
        .and_then(|h| u64::from_str(h.value.as_str().trim()).ok());

    let expects_continue = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Expect"))
            .map(|h| h.value.as_str())
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            _ => return Err(RequestCreationError::ExpectationFailed),
        }
    };

    let reader: Box<dyn Read + Send + 'static> = match content_length {
        Some(l) => Box::new(source_data.take(l)),
        None => Box::new(source_data),
    };

    Ok(Request {
        data_reader: Body::Other(reader),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        must_send_continue: expects_continue,
        close_after: false,
        done: None,
    })
}

/// A connection taken over after [`Request::upgrade_stream`]: plain TCP or TLS. Clones share
/// the connection; one thread may read while another writes.
#[derive(Debug)]
pub struct NetStream(Connection);

impl NetStream {
    /// A second handle on the same connection.
    pub fn try_clone(&self) -> io::Result<NetStream> {
        self.0.try_clone().map(NetStream)
    }
    /// The socket's read timeout (for TLS too: it bounds each socket read).
    pub fn set_read_timeout(&self, dur: Option<std::time::Duration>) -> io::Result<()> {
        self.0.set_read_timeout(dur)
    }
    /// The socket's read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<std::time::Duration>> {
        self.0.tcp().map_or(Ok(None), |s| s.read_timeout())
    }
    /// The socket's write timeout.
    pub fn set_write_timeout(&self, dur: Option<std::time::Duration>) -> io::Result<()> {
        self.0.set_write_timeout(dur)
    }
    /// Shuts the socket down; over TLS, a close_notify goes out first when the write side
    /// is closed (unless another thread is busy writing).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }
    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

impl Read for &NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.0 {
            Connection::Tcp(s) => (&*s).read(buf),
            Connection::Tls(s) => s.read(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Connection::Tcp(s) => (&*s).write(buf),
            Connection::Tls(s) => s.write(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream returned by `Request::upgrade`: bytes already buffered by the server, then the
/// connection.
struct UpgradedStream {
    leftover: Cursor<Vec<u8>>,
    conn: Connection,
}

impl Read for UpgradedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.leftover.position() as usize) < self.leftover.get_ref().len() {
            return self.leftover.read(buf);
        }
        self.conn.read(buf)
    }
}

impl Write for UpgradedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// Returned by `Request::upgrade` when the upgrade failed: every operation errors.
struct BrokenStream(ErrorKind);

impl Read for BrokenStream {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(self.0, "upgrade failed"))
    }
}

impl Write for BrokenStream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(self.0, "upgrade failed"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::new(self.0, "upgrade failed"))
    }
}

/// Writer returned by `into_writer`: tells the connection thread when it is dropped.
struct FinishOnDrop {
    inner: Box<dyn Write + Send + 'static>,
    body: Option<BodyReader>,
    close: bool,
    done: Option<Sender<Finish>>,
}

impl Write for FinishOnDrop {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        if r.is_err() {
            self.close = true;
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        if r.is_err() {
            self.close = true;
        }
        r
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if self.inner.flush().is_err() {
            self.close = true;
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(Finish::Done {
                body: self.body.take(),
                close: self.close,
            });
        }
    }
}

impl Request {
    /// Builds a request read from a connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_connection(
        method: Method,
        path: String,
        version: HTTPVersion,
        headers: Vec<Header>,
        remote_addr: Option<SocketAddr>,
        body: BodyReader,
        body_length: Option<usize>,
        writer: Connection,
        expects_continue: bool,
        close_after: bool,
        done: Sender<Finish>,
    ) -> Request {
        Request {
            secure: writer.is_tls(),
            data_reader: Body::Conn(body),
            response_writer: Some(Box::new(io::BufWriter::with_capacity(8 * 1024, writer))),
            remote_addr,
            method,
            path,
            http_version: version,
            headers,
            body_length,
            must_send_continue: expects_continue,
            close_after,
            done: Some(done),
        }
    }

    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes, as declared by `Content-Length`
    /// (saturated to `usize::MAX`), even if it is above the limit.
    ///
    /// Returns `None` if the length is unknown (chunked body) or there is no body header.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// A second handle on the client's TCP socket, for watching whether the client has gone
    /// away while a long response waits for data (e.g. with `poll` for `POLLRDHUP`). The
    /// server keeps using its own handle; don't read, write or change flags through this one.
    /// `None` for Unix sockets and requests not attached to a connection.
    pub fn peer_socket(&self) -> Option<std::net::TcpStream> {
        match &self.data_reader {
            Body::Conn(b) => b.try_clone_tcp(),
            Body::Other(_) => None,
        }
    }

    /// True if the body is larger than `Limits::max_body_bytes`: either the declared
    /// `Content-Length` is above it (the body is never read: `as_reader()` yields EOF
    /// right away), or a chunked body grew past it while being read (the reader then returned
    /// an error). The application should answer `413`; the connection is closed after the
    /// response in any case.
    pub fn body_too_large(&self) -> bool {
        match &self.data_reader {
            Body::Conn(b) => b.too_large(),
            Body::Other(_) => false,
        }
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// True if the connection must be closed once this request is finished.
    fn must_close(&self) -> bool {
        if self.close_after {
            return true;
        }
        match &self.data_reader {
            Body::Conn(b) => {
                b.remaining_for_reuse().is_none()
                    // the client may or may not send the body it announced: ambiguous
                    || (self.must_send_continue && b.has_unread_wire_body())
            }
            Body::Other(_) => false,
        }
    }

    /// Writes the upgrade response and takes the connection away from the server.
    fn upgrade_conn<R: Read>(
        &mut self,
        protocol: &str,
        response: Response<R>,
    ) -> io::Result<(Connection, Vec<u8>)> {
        if !matches!(self.data_reader, Body::Conn(_)) {
            return Err(io::Error::other(
                "this request is not attached to a connection",
            ));
        }
        let mut writer = self
            .response_writer
            .take()
            .ok_or_else(|| io::Error::other("request already answered"))?;
        let res = response
            .print_internal(
                writer.by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
                false,
            )
            .and_then(|_| writer.flush());
        drop(writer);
        if let Err(e) = res {
            self.close_after = true;
            return Err(e);
        }

        let body = std::mem::replace(&mut self.data_reader, Body::Other(Box::new(io::empty())));
        match body {
            Body::Conn(b) => {
                let (conn, leftover) = b.into_parts();
                let _ = conn.set_read_timeout(None);
                let _ = conn.set_write_timeout(None);
                if let Some(done) = self.done.take() {
                    let _ = done.send(Finish::Upgraded);
                }
                Ok((conn, leftover))
            }
            Body::Other(_) => Err(io::Error::other("no connection")),
        }
    }

    /// Sends a `101 Switching Protocols`-style response (the given response, plus
    /// `Upgrade: <protocol>` and `Connection: upgrade`), flushes it, and hands the connection
    /// over to the caller.
    ///
    /// Returns the underlying `TcpStream` and every byte the server had already received from
    /// the client after the request head (and not consumed through `as_reader()`): the client
    /// may have sent its first frames right after the head, they must be processed before
    /// reading from the stream.
    ///
    /// The read and write timeouts of the returned stream are cleared (`None`, blocking
    /// forever): set your own. The server no longer touches the socket, and the connection no
    /// longer counts against `Limits::max_connections`.
    ///
    /// Fails (the request then gets a `500` answer when dropped, if nothing was written yet) if
    /// the request does not come from a TCP connection or if writing the response fails.
    pub fn upgrade_tcp<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
        let is_tcp = match &self.data_reader {
            Body::Conn(b) => b.is_tcp(),
            Body::Other(_) => false,
        };
        if !is_tcp {
            return Err(io::Error::other(
                "upgrade_tcp: the request does not come from a TCP connection",
            ));
        }
        match self.upgrade_conn(protocol, response)? {
            (Connection::Tcp(s), leftover) => Ok((s, leftover)),
            _ => Err(io::Error::other("not plain TCP")),
        }
    }

    /// Like [`Request::upgrade_tcp`], for a plain or a TLS connection: the returned
    /// [`NetStream`] can be cloned, and its clones read and written by different threads at
    /// once (over TLS too: see PATCHES.md item 14).
    pub fn upgrade_stream<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> io::Result<(NetStream, Vec<u8>)> {
        let is_net = match &self.data_reader {
            Body::Conn(b) => b.is_net(),
            Body::Other(_) => false,
        };
        if !is_net {
            return Err(io::Error::other(
                "upgrade_stream: the request does not come from a TCP connection",
            ));
        }
        let (conn, leftover) = self.upgrade_conn(protocol, response)?;
        Ok((NetStream(conn), leftover))
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// Bytes the server already buffered are returned first by the stream. The socket timeouts
    /// are cleared. On error, the returned stream fails every operation. Prefer `upgrade_tcp`.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        match self.upgrade_conn(protocol, response) {
            Ok((conn, leftover)) => Box::new(UpgradedStream {
                leftover: Cursor::new(leftover),
                conn,
            }),
            Err(e) => Box::new(BrokenStream(e.kind())),
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # extern crate tiny_http;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response (unless the body is too large).
    ///
    /// The reader yields nothing if `body_too_large()` is true for a declared length. It
    /// returns an error if the client is too slow (no data for `Limits::request_timeout`), if
    /// the connection breaks, if the chunked encoding is malformed, or if a chunked body grows
    /// past `Limits::max_body_bytes`.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            self.must_send_continue = false;
            let send = match &self.data_reader {
                Body::Conn(b) => !b.too_large() && b.has_unread_wire_body(),
                Body::Other(_) => true,
            };
            if send {
                if let Some(w) = self.response_writer.as_mut() {
                    let ok = w
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .and_then(|_| w.flush())
                        .is_ok();
                    if !ok {
                        self.close_after = true;
                    }
                }
            } else {
                // the client may still be waiting for a `100 Continue` that never comes:
                // the body state is ambiguous, close after the response
                self.close_after = true;
            }
        }

        &mut self.data_reader
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events: the connection only goes on with its next request once it is dropped.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let close = self.must_close();
        let inner = match self.response_writer.take() {
            Some(w) => w,
            None => Box::new(io::sink()),
        };
        let body =
            match std::mem::replace(&mut self.data_reader, Body::Other(Box::new(io::empty()))) {
                Body::Conn(b) => Some(b),
                Body::Other(_) => None,
            };
        Box::new(FinishOnDrop {
            inner,
            body,
            close,
            done: self.done.take(),
        })
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        self.respond_impl(response)
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self
            .response_writer
            .take()
            .ok_or_else(|| io::Error::other("request already answered"))?;

        let do_not_send_body = self.method == Method::Head;
        let force_close = self.must_close();

        let res = response
            .print_internal(
                writer.by_ref(),
                self.http_version.clone(),
                &self.headers,
                do_not_send_body,
                None,
                force_close,
            )
            .and_then(|close| writer.flush().map(|_| close));
        match res {
            Ok(close) => {
                if close {
                    self.close_after = true;
                }
                Ok(())
            }
            Err(e) => {
                self.close_after = true;
                Self::ignore_client_closing_errors(Err(e))
            }
        }
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }

    /// Tells the connection thread that this request is finished.
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let close = self.must_close();
            let body = match std::mem::replace(
                &mut self.data_reader,
                Body::Other(Box::new(io::empty())),
            ) {
                Body::Conn(b) => Some(b),
                Body::Other(_) => None,
            };
            let _ = done.send(Finish::Done { body, close });
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
        }
        self.finish();
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
