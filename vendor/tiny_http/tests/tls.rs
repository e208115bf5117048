//! TLS connections (PATCHES.md item 14): a reader is never held by a writer blocked on a
//! client that does not read; plain HTTP is answered; a stalled handshake is cut off.
//! `tests/tls/{cert,key}.pem`: a self-signed certificate for localhost (test only).

use std::convert::TryFrom;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::rustls::pki_types::pem::PemObject;
use tiny_http::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tiny_http::rustls::{
    self, ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned,
};
use tiny_http::{Limits, Response, Server, TlsConfigSource};

const CERT: &[u8] = include_bytes!("tls/cert.pem");
const KEY: &[u8] = include_bytes!("tls/key.pem");

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Fixed(Arc<ServerConfig>);

impl TlsConfigSource for Fixed {
    fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.0)
    }
}

fn server(limits: Limits) -> (Server, u16) {
    let cert = CertificateDer::from_pem_slice(CERT).unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s =
        Server::from_listener_with_tls(l, limits, Some(Arc::new(Fixed(Arc::new(cfg))))).unwrap();
    (s, port)
}

fn client(port: u16) -> StreamOwned<ClientConnection, TcpStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CERT).unwrap())
        .unwrap();
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    StreamOwned::new(conn, sock)
}

#[test]
fn plain_request_over_tls_is_answered() {
    let (server, port) = server(Limits::default());
    let t = std::thread::spawn(move || {
        let rq = server.recv().unwrap();
        assert!(rq.secure());
        rq.respond(Response::from_string("over tls")).unwrap();
    });
    let mut c = client(port);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("over tls"),
        "{:?}",
        got
    );
    t.join().unwrap();
}

/// The writer fills the socket of a client that does not read and blocks in its write; the
/// reader must still get what the client sends. (A TLS connection serialised behind one
/// lock held during I/O would hold the reader until the writer's timeout, 20 s here.)
#[test]
fn a_reader_is_not_held_by_a_writer_blocked_on_a_client_that_does_not_read() {
    let (server, port) = server(Limits::default());
    let written = Arc::new(AtomicU64::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let (w2, d2, d3) = (
        Arc::clone(&written),
        Arc::clone(&writer_done),
        Arc::clone(&writer_done),
    );
    let srv = std::thread::spawn(move || {
        let rq = server.recv().unwrap();
        let (stream, leftover) = rq.upgrade_stream("test", Response::empty(101)).unwrap();
        assert!(leftover.is_empty() && stream.is_tls());
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let out = stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            while (&out).write_all(&chunk).is_ok() {
                w2.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            d2.store(true, Ordering::SeqCst);
        });
        let mut buf = [0u8; 5];
        let start = Instant::now();
        let r = (&stream).read_exact(&mut buf);
        let took = start.elapsed();
        // the writer is still inside its blocked write (the client has read nothing)
        let writer_blocked = !d3.load(Ordering::SeqCst);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        (r.map(|_| buf), took, writer_blocked)
    });
    let mut c = client(port);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    // wait until the writer is stuck: nothing more written for 500 ms
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "the writer never blocked");
    }
    // sealed and written without reading anything (StreamOwned's write would also read)
    c.conn.writer().write_all(b"hello").unwrap();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut c.sock).unwrap();
    }
    let (got, took, writer_blocked) = srv.join().unwrap();
    assert_eq!(&got.expect("the reader got nothing"), b"hello");
    assert!(
        took < Duration::from_secs(10),
        "the reader waited {:?}",
        took
    );
    assert!(
        writer_blocked,
        "the writer was not blocked while the reader read"
    );
    drop(c);
}

fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, start.elapsed())
}

#[test]
fn plain_http_gets_a_400_and_a_stalled_handshake_is_cut_off() {
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (_server, port) = server(limits);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (got, _) = read_until_close(&mut s, Duration::from_secs(10));
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 400 ") && got.contains("speaks TLS"),
        "{:?}",
        got
    );
    let n = got.split_once("\r\n\r\n").map_or(0, |(_, body)| body.len());
    assert!(
        got.contains(&format!("Content-Length: {}\r\n", n)),
        "{:?}",
        got
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let (_, took) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "stalled handshake held for {:?}",
        took
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0x16; 300]).unwrap();
    let (_, took) = read_until_close(&mut s, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "garbage held for {:?}", took);
}

/// A record trickled a byte at a time cannot stretch the head deadline: one read of the TLS
/// connection blocks at most the socket's timeout in all, as on a plain socket.
#[test]
fn a_trickled_record_does_not_stretch_the_head_deadline() {
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (_server, port) = server(limits);
    let mut c = client(port);
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).unwrap();
    }
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    c.conn.writer().write_all(head.as_bytes()).unwrap();
    let mut record = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut record).unwrap();
    }
    let mut sock = c.sock.try_clone().unwrap();
    let start = Instant::now();
    let trickle = std::thread::spawn(move || {
        for b in record {
            if sock.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // the server closes long before the ~20 s the trickle would take
    let mut raw = c.sock;
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match raw.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "a trickled record held the connection {:?}",
        took
    );
    let _ = raw.shutdown(std::net::Shutdown::Both);
    let _ = trickle.join();
}

/// A record read in pieces leaves the socket's read timeout as it was (the bound of one
/// read sets it only for the time of that read).
#[test]
fn a_record_in_pieces_leaves_the_read_timeout_as_it_was() {
    let (server, port) = server(Limits::default());
    let srv = std::thread::spawn(move || {
        let rq = server.recv().unwrap();
        let (stream, _) = rq.upgrade_stream("test", Response::empty(101)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(7)))
            .unwrap();
        let mut buf = [0u8; 5];
        (&stream).read_exact(&mut buf).unwrap();
        (buf, stream.read_timeout().unwrap())
    });
    let mut c = client(port);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    c.conn.writer().write_all(b"hello").unwrap();
    let mut record = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut record).unwrap();
    }
    // three pieces: the third socket read of one call runs with what is left of the 7 s
    for piece in [&record[..3], &record[3..6], &record[6..]] {
        c.sock.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let (got, timeout) = srv.join().unwrap();
    assert_eq!(&got, b"hello");
    let t = timeout.expect("a read timeout");
    assert!(
        t > Duration::from_millis(6900) && t < Duration::from_millis(7100),
        "{:?}",
        t
    );
}

/// Closing a connection whose client reads nothing: once a write has timed out, shutting the
/// stream down must not wait a whole write timeout again to send close_notify into the full
/// socket (a slow WebSocket client, closed by its writer, held its threads and socket twice
/// as long over TLS as over plain TCP).
#[test]
fn shutting_down_after_a_timed_out_write_does_not_block_again() {
    let (server, port) = server(Limits::default());
    let srv = std::thread::spawn(move || {
        let rq = server.recv().unwrap();
        let (stream, _) = rq.upgrade_stream("test", Response::empty(101)).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let start = Instant::now();
        while (&stream).write_all(&chunk).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(60), "never blocked");
        }
        let start = Instant::now();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        start.elapsed()
    });
    let mut c = client(port);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    // then nothing is read
    let took = srv.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "shutdown took {:?} (the write timeout is 3 s)",
        took
    );
    drop(c);
}
