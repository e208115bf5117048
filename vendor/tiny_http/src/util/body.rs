//! Request body readers with bounded memory use and deadlines.
//!
//! Everything in here treats the bytes coming from the network as hostile: no allocation is
//! sized from a value sent by the client (other than bounded small ones), all arithmetic on
//! lengths is checked, and every malformed input turns into an `io::Error`, never a panic.

use std::cmp;
use std::io::{self, BufRead, BufReader, Cursor, ErrorKind, Read};
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// A request whose remaining (unread) body is at most this many bytes is drained after the
/// response so that the connection can be kept alive. Bigger (or unknown) remainders make the
/// server close the connection instead.
pub(crate) const DRAIN_LIMIT: u64 = 64 * 1024;

/// Max length of a chunk-size line (size + extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Max total size of the trailer section of a chunked body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Max number of trailer lines of a chunked body.
const MAX_TRAILER_LINES: usize = 100;

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "timed out reading from client")
}

/// Socket read timeouts surface as `WouldBlock` on unix; report them as `TimedOut`.
fn map_timeout(e: io::Error) -> io::Error {
    if e.kind() == ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

/// Makes sure the buffer of `src` is non-empty (or EOF is reached, in which case an empty
/// slice is returned) without blocking past `deadline`: the socket read timeout is set to the
/// time left before each actual socket read, so a client trickling bytes cannot extend it.
pub(crate) fn fill_deadline(
    src: &mut BufReader<Connection>,
    deadline: Instant,
) -> io::Result<&[u8]> {
    loop {
        if src.buffer().is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            let left = cmp::max(deadline - now, Duration::from_millis(1));
            src.get_ref().set_read_timeout(Some(left))?;
        }
        match src.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_timeout(e)),
        }
    }
    Ok(src.buffer())
}

/// Reads exactly `len` bytes (`len` must be small: it is allocated up front) before `deadline`.
pub(crate) fn read_exact_deadline(
    src: &mut BufReader<Connection>,
    len: usize,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let buf = fill_deadline(src, deadline)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the end of the body",
            ));
        }
        let n = cmp::min(buf.len(), len - out.len());
        out.extend_from_slice(&buf[..n]);
        src.consume(n);
    }
    Ok(out)
}

/// Reads and discards exactly `len` bytes before `deadline`.
pub(crate) fn drain_deadline(
    src: &mut BufReader<Connection>,
    mut len: u64,
    deadline: Instant,
) -> io::Result<()> {
    while len > 0 {
        let buf = fill_deadline(src, deadline)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the end of the body",
            ));
        }
        let n = cmp::min(buf.len() as u64, len) as usize;
        src.consume(n);
        len -= n as u64;
    }
    Ok(())
}

/// Reads one line (terminated by `\n`, an optional preceding `\r` is stripped) of at most
/// `max` bytes (terminator excluded).
fn read_line_bounded<R: BufRead>(src: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = match src.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_timeout(e)),
        };
        if buf.is_empty() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed inside a chunked body",
            ));
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                if line.len() + pos > max + 1 {
                    return Err(invalid("line too long in chunked body"));
                }
                line.extend_from_slice(&buf[..pos]);
                src.consume(pos + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Err(invalid("line too long in chunked body"));
                }
                return Ok(line);
            }
            None => {
                let n = buf.len();
                if line.len() + n > max + 1 {
                    return Err(invalid("line too long in chunked body"));
                }
                line.extend_from_slice(buf);
                src.consume(n);
            }
        }
    }
}

/// Parses a chunk-size line: `1*HEXDIG [ BWS ";" ext ]`. Returns `None` on any error,
/// including a size that does not fit in a `u64`.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let mut size: u64 = 0;
    let mut digits = 0;
    for &b in line {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        size = size.checked_mul(16)?.checked_add(u64::from(d))?;
        digits += 1;
        if digits > 16 {
            // 16 hex digits hold any u64; more are refused even when they are leading zeros
            return None;
        }
    }
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    let rest_start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let rest = &rest[rest_start..];
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    Some(size)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Last chunk and trailers were read.
    Done,
}

/// Decoder for `Transfer-Encoding: chunked` bodies that never yields more than `limit` bytes
/// of decoded data (it errors instead, setting `overflowed`).
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    received: u64,
    limit: u64,
    pub(crate) overflowed: bool,
}

impl ChunkedDecoder {
    pub(crate) fn new(limit: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            received: 0,
            limit,
            overflowed: false,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub(crate) fn read<R: BufRead>(&mut self, src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let line = read_line_bounded(src, MAX_CHUNK_LINE)?;
                    let size = parse_chunk_size(&line).ok_or_else(|| invalid("bad chunk size"))?;
                    if size == 0 {
                        let mut total = 0usize;
                        let mut lines = 0usize;
                        loop {
                            let t = read_line_bounded(src, MAX_TRAILER_BYTES)?;
                            if t.is_empty() {
                                break;
                            }
                            total += t.len();
                            lines += 1;
                            if total > MAX_TRAILER_BYTES || lines > MAX_TRAILER_LINES {
                                return Err(invalid("chunked trailer section too large"));
                            }
                        }
                        self.state = ChunkState::Done;
                        return Ok(0);
                    }
                    if self.received.saturating_add(size) > self.limit {
                        self.overflowed = true;
                        return Err(invalid("request body exceeds max_body_bytes"));
                    }
                    self.state = ChunkState::Data(size);
                }
                ChunkState::Data(remaining) => {
                    let want = cmp::min(buf.len() as u64, remaining) as usize;
                    let n = loop {
                        match src.read(&mut buf[..want]) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(e) => return Err(map_timeout(e)),
                        }
                    };
                    if n == 0 {
                        return Err(io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "connection closed inside a chunked body",
                        ));
                    }
                    let n64 = n as u64;
                    self.received += n64;
                    self.state = if n64 >= remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - n64)
                    };
                    return Ok(n);
                }
                ChunkState::DataEnd => {
                    let line = read_line_bounded(src, 1)?;
                    if !line.is_empty() {
                        return Err(invalid("missing CRLF after chunk data"));
                    }
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

/// How the body of a request is delimited / what is left of it.
pub(crate) enum BodyKind {
    /// No body.
    Empty,
    /// Small body that was read up front by the connection thread.
    Buffered(Cursor<Vec<u8>>),
    /// `Content-Length` body with this many bytes left to read.
    Length(u64),
    /// `Transfer-Encoding: chunked` body.
    Chunked(ChunkedDecoder),
    /// Declared `Content-Length` above `max_body_bytes`: never read.
    TooLarge,
    /// A read error happened (timeout, malformed chunk, EOF...): the body is unusable and the
    /// connection must be closed.
    Failed,
}

/// The body of a request coming from a real connection. Owns the connection's read side.
pub(crate) struct BodyReader {
    src: BufReader<Connection>,
    kind: BodyKind,
    overflowed: bool,
}

impl BodyReader {
    pub(crate) fn new(src: BufReader<Connection>, kind: BodyKind) -> Self {
        BodyReader {
            src,
            kind,
            overflowed: false,
        }
    }

    /// True if the declared body is above the limit, or a chunked body grew past it.
    pub(crate) fn too_large(&self) -> bool {
        self.overflowed || matches!(self.kind, BodyKind::TooLarge)
    }

    /// True if there may still be body bytes on the wire that the client wants to send.
    pub(crate) fn has_unread_wire_body(&self) -> bool {
        match &self.kind {
            BodyKind::Length(r) => *r > 0,
            BodyKind::Chunked(d) => !d.is_done(),
            _ => false,
        }
    }

    /// `Some(n)`: the connection can be reused after discarding `n` more bytes.
    /// `None`: the connection must be closed.
    pub(crate) fn remaining_for_reuse(&self) -> Option<u64> {
        match &self.kind {
            BodyKind::Empty | BodyKind::Buffered(_) => Some(0),
            BodyKind::Length(r) if *r <= DRAIN_LIMIT => Some(*r),
            BodyKind::Length(_) => None,
            BodyKind::Chunked(d) if d.is_done() => Some(0),
            BodyKind::Chunked(_) | BodyKind::TooLarge | BodyKind::Failed => None,
        }
    }

    /// A second handle on the TCP socket (`None` for Unix sockets or if `dup` fails).
    pub(crate) fn try_clone_tcp(&self) -> Option<std::net::TcpStream> {
        self.src.get_ref().tcp().and_then(|s| s.try_clone().ok())
    }

    /// True if the underlying connection is a plain TCP socket (not TLS).
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.src.get_ref(), Connection::Tcp(_))
    }

    /// True if the underlying connection is a TCP socket, plain or TLS.
    pub(crate) fn is_net(&self) -> bool {
        self.src.get_ref().tcp().is_some()
    }

    /// Gives back the connection's buffered reader.
    pub(crate) fn into_source(self) -> BufReader<Connection> {
        self.src
    }

    /// Splits into the raw connection and every byte already received from the client but not
    /// yet consumed (unread part of a pre-read body, then the reader's buffer).
    pub(crate) fn into_parts(self) -> (Connection, Vec<u8>) {
        let mut leftover = Vec::new();
        if let BodyKind::Buffered(c) = &self.kind {
            let pos = cmp::min(c.position(), c.get_ref().len() as u64) as usize;
            leftover.extend_from_slice(&c.get_ref()[pos..]);
        }
        leftover.extend_from_slice(self.src.buffer());
        (self.src.into_inner(), leftover)
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let res = match &mut self.kind {
            BodyKind::Empty | BodyKind::TooLarge => return Ok(0),
            BodyKind::Failed => {
                return Err(io::Error::other(
                    "request body unavailable after a previous error",
                ))
            }
            BodyKind::Buffered(c) => return c.read(buf),
            BodyKind::Length(remaining) => {
                if *remaining == 0 {
                    return Ok(0);
                }
                let want = cmp::min(buf.len() as u64, *remaining) as usize;
                match self.src.read(&mut buf[..want]) {
                    Ok(0) => Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed before the end of the body",
                    )),
                    Ok(n) => {
                        *remaining -= n as u64;
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
            BodyKind::Chunked(d) => {
                let r = d.read(&mut self.src, buf);
                if d.overflowed {
                    self.overflowed = true;
                }
                r
            }
        };
        match res {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.kind = BodyKind::Failed;
                Err(map_timeout(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_chunk_size, ChunkedDecoder};
    use std::io::Read;

    fn decode(input: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
        let mut src = input;
        let mut d = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = d.read(&mut src, &mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"A ; ext=1"), Some(10));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_chunk_size(b"ffffffffffffffffffff"), None);
        assert_eq!(
            parse_chunk_size(b"0000000000000000f"),
            None,
            "17 digits, leading zeros"
        );
        assert_eq!(parse_chunk_size(b"000000000000000f"), Some(15));
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"-1"), None);
        assert_eq!(parse_chunk_size(b"+1"), None);
        assert_eq!(parse_chunk_size(b"1 x"), None);
        assert_eq!(parse_chunk_size(b"1\0"), None);
    }

    #[test]
    fn decode_ok_and_trailers() {
        let out = decode(b"3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\nX-T: 1\r\n\r\n", 100).unwrap();
        assert_eq!(out, b"hello world!!!");
        let out = decode(b"3\nhel\n0\n\n", 100).unwrap();
        assert_eq!(out, b"hel");
    }

    #[test]
    fn decode_errors() {
        assert!(decode(b"ffffffffffffffffffff\r\n", u64::MAX).is_err());
        assert!(decode(b"ffffffffffffffff\r\nabc", 1 << 20).is_err());
        assert!(decode(b"5\r\nabc", 100).is_err());
        assert!(decode(b"3\r\nabcX\r\n0\r\n\r\n", 100).is_err());
        assert!(decode(b"zz\r\n", 100).is_err());
        assert!(decode(&[b'1'; 5000], 100).is_err());
        // over the limit, split across chunks
        let r = decode(b"5\r\nabcde\r\n5\r\nabcde\r\n0\r\n\r\n", 8);
        assert!(r.is_err());
        // endless trailers
        let mut v = b"0\r\n".to_vec();
        for _ in 0..200 {
            v.extend_from_slice(b"X: y\r\n");
        }
        assert!(decode(&v, 100).is_err());
    }

    #[test]
    fn reader_trait_usable() {
        let mut src: &[u8] = b"2\r\nok\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new(10);
        let mut s = Vec::new();
        let mut buf = [0u8; 16];
        let n = d.read(&mut src, &mut buf).unwrap();
        s.extend_from_slice(&buf[..n]);
        assert_eq!(d.read(&mut src, &mut buf).unwrap(), 0);
        assert!(d.is_done());
        assert_eq!(s, b"ok");
        let mut empty: &[u8] = b"";
        assert_eq!(empty.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn random_chunked_never_panics() {
        let base: &[u8] = b"5\r\nhello\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nT: x\r\n\r\n";
        let mut seed: u64 = 0x0123_4567_89ab_cdef;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..(rnd() % 6 + 1) {
                let pos = (rnd() as usize) % m.len();
                let byte = match rnd() % 3 {
                    0 => b"\r\n;0fF "[(rnd() % 7) as usize],
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
            let _ = decode(&m, 20 + rnd() % 20);
        }
    }
}
