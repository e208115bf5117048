//! Integration tests for the hardening patches (see PATCHES.md). Loopback only, bounded.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tiny_http::{Limits, Response};

// ---------------------------------------------------------------- goal 2 + 3: body sizes

#[test]
fn huge_content_length_is_not_read_and_connection_closes() {
    let srv = TestServer::start(Limits::default(), 2, echo_handler);
    for expect in [false, true] {
        let mut s = srv.connect();
        let extra = if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n{}\r\n",
            extra
        )
        .unwrap();
        // the client keeps sending a bit of body, which must not matter
        let _ = s.write_all(&[b'x'; 4096]);
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, 413, "a 100 Continue must not be sent");
        assert_eq!(resp.body, b"{\"error\":\"too large\"}");
        assert!(resp.closes());
        assert!(is_closed(&mut r));
    }
    assert_eq!(srv.health(), 200);
}

#[test]
fn body_too_large_flag_and_empty_reader() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let limits = Limits {
        max_body_bytes: 1000,
        ..Limits::default()
    };
    let srv = TestServer::start(limits, 1, move |mut rq| {
        let mut body = Vec::new();
        let too_large = rq.body_too_large();
        let n = rq.as_reader().read_to_end(&mut body).unwrap();
        tx.lock()
            .unwrap()
            .send((too_large, n, rq.body_length()))
            .unwrap();
        let _ = rq.respond(Response::from_string("x").with_status_code(413));
    });
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
        .unwrap();
    s.write_all(&[b'a'; 1001]).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 413);
    assert_eq!(
        rx.recv_timeout(CLIENT_TIMEOUT).unwrap(),
        (true, 0, Some(1001))
    );
    assert!(is_closed(&mut r));

    // at the limit: read normally, keep-alive
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'a'; 1000]).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    read_response(&mut r).unwrap();
    assert_eq!(
        rx.recv_timeout(CLIENT_TIMEOUT).unwrap(),
        (false, 1000, Some(1000))
    );
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut r).unwrap();
    assert_eq!(rx.recv_timeout(CLIENT_TIMEOUT).unwrap(), (false, 0, None));
}

#[test]
fn chunked_body_growing_past_limit_errors() {
    let limits = Limits {
        max_body_bytes: 1000,
        ..fast_limits()
    };
    let srv = TestServer::start(limits, 1, echo_handler);
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // 600 + 600 > 1000; the client would go on forever
    let writer = {
        let mut s = s.try_clone().unwrap();
        thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                let mut chunk = b"258\r\n".to_vec();
                chunk.extend_from_slice(&[b'z'; 600]);
                chunk.extend_from_slice(b"\r\n");
                if s.write_all(&chunk).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 413);
    assert!(resp.closes());
    assert!(is_closed(&mut r));
    writer.join().unwrap();

    // a chunked body within the limit works and the connection is reused
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().body, b"len=5");
    s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
}

#[test]
fn unread_large_body_closes_instead_of_draining_and_small_one_is_drained() {
    // the app never reads bodies
    let srv = TestServer::start(fast_limits(), 1, |rq| {
        let _ = rq.respond(Response::from_string("ignored"));
    });
    // 900 KB declared (under the 1 MiB limit), not read: connection closed, not drained
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 900000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'a'; 70000]).unwrap();
    let start = Instant::now();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
    assert!(is_closed(&mut r));
    assert!(start.elapsed() < Duration::from_secs(3));

    // small body (pre-read) not read by the app: connection kept alive
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let a = read_response(&mut r).unwrap();
    assert!(!a.closes());
    let b = read_response(&mut r).unwrap();
    assert_eq!(b.status, 200);

    // Expect: 100-continue body never asked for: no 100, close
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let a = read_response(&mut r).unwrap();
    assert_eq!(a.status, 200);
    assert!(a.closes());
}

#[test]
fn expect_continue_within_limit_works() {
    let srv = TestServer::start(fast_limits(), 1, echo_handler);
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().status, 100);
    s.write_all(b"hello").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"len=5");
}

// ---------------------------------------------------------------- goal 4: timeouts

#[test]
fn slowloris_cannot_starve_and_is_cut_off() {
    let limits = Limits {
        request_timeout: Duration::from_millis(1000),
        ..Limits::default()
    };
    let srv = TestServer::start(limits, 2, echo_handler);
    let n = 150;
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    // trickle one byte per connection every 200 ms from one thread
    let mut trickle = Vec::new();
    for s in &conns {
        trickle.push(s.try_clone().unwrap());
    }
    let trickler = thread::spawn(move || {
        let begin = Instant::now();
        while begin.elapsed() < Duration::from_millis(2500) {
            for s in trickle.iter_mut() {
                let _ = s.write_all(b"X");
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(srv.health(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // every slowloris connection gets a 408 and is closed around the deadline
    for s in conns.iter_mut() {
        let mut r = BufReader::new(s.try_clone().unwrap());
        if let Ok(resp) = read_response(&mut r) {
            assert_eq!(resp.status, 408);
        }
        assert!(is_closed(&mut r));
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{:?}", elapsed);
    assert!(elapsed < Duration::from_millis(2500), "{:?}", elapsed);
    trickler.join().unwrap();
    assert_eq!(srv.health(), 200);
}

#[test]
fn idle_keepalive_connection_is_closed() {
    let srv = TestServer::start(fast_limits(), 1, echo_handler);
    let mut s = srv.connect();
    s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert!(!resp.closes());
    let t = Instant::now();
    assert!(is_closed(&mut r));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(1300) && e < Duration::from_millis(3000),
        "{:?}",
        e
    );
    // a connection that never sends anything is closed after request_timeout
    let mut s = srv.connect();
    let t = Instant::now();
    assert!(is_closed(&mut s));
    assert!(t.elapsed() < Duration::from_millis(1500));
}

#[test]
fn slow_body_read_times_out() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let srv = TestServer::start(fast_limits(), 1, move |mut rq| {
        let t = Instant::now();
        let mut body = Vec::new();
        let res = rq.as_reader().read_to_end(&mut body);
        tx.lock()
            .unwrap()
            .send((res.map_err(|e| e.kind()), t.elapsed()))
            .unwrap();
    });
    // larger than the pre-read threshold: read by the app thread
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\nabc")
        .unwrap();
    let (res, took) = rx.recv_timeout(CLIENT_TIMEOUT).unwrap();
    assert_eq!(res, Err(std::io::ErrorKind::TimedOut));
    assert!(took < Duration::from_millis(2000), "{:?}", took);
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r).unwrap().status, 500);
    assert!(is_closed(&mut r));

    // small body trickled: 408 from the connection thread, the app never sees it
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r).unwrap().status, 408);
    assert!(rx.try_recv().is_err());
}

#[test]
fn write_timeout_unblocks_responder() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let srv = TestServer::start(fast_limits(), 1, move |rq| {
        let t = Instant::now();
        // 64 MiB that the client never reads
        let data = std::io::repeat(b'x').take(64 << 20);
        let res = rq.respond(Response::new(
            200.into(),
            vec![],
            data,
            Some(64 << 20),
            None,
        ));
        tx.lock()
            .unwrap()
            .send((res.is_err(), t.elapsed()))
            .unwrap();
    });
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (is_err, took) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(is_err);
    assert!(took < Duration::from_secs(5), "{:?}", took);
    drop(s);
    assert_eq!(srv.health(), 200);
}

#[test]
fn head_size_caps() {
    let limits = Limits {
        max_header_bytes: 4096,
        ..fast_limits()
    };
    let srv = TestServer::start(limits, 1, echo_handler);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000)).into_bytes(),
            414,
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(5000)).into_bytes(),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(101)).into_bytes(),
            431,
        ),
    ];
    for (raw, code) in cases {
        let mut s = srv.connect();
        let _ = s.write_all(&raw);
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, code);
        assert!(resp.closes());
        assert!(is_closed(&mut r));
    }
    // 100 headers is fine
    let mut s = srv.connect();
    write!(s, "GET /health HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(99)).unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 200);
}

// ---------------------------------------------------------------- goal 6: connection cap

#[test]
fn connection_cap_closes_new_connections() {
    let limits = Limits {
        max_connections: 5,
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let srv = TestServer::start(limits, 1, echo_handler);
    let idle: Vec<TcpStream> = (0..5).map(|_| srv.connect()).collect();
    let t = Instant::now();
    while srv.server.num_connections() < 5 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.server.num_connections(), 5);
    let mut extra = srv.connect();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\n\r\n");
    let t = Instant::now();
    assert!(is_closed(&mut extra));
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(idle);
    let t = Instant::now();
    while srv.server.num_connections() > 0 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.server.num_connections(), 0);
    assert_eq!(srv.health(), 200);
}

/// One address cannot take every slot: past `max_connections_per_ip` its new connections are
/// closed, while another address is still served.
#[test]
fn per_address_cap_leaves_room_for_other_hosts() {
    let limits = Limits {
        max_connections: 20,
        max_connections_per_ip: 4,
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let srv = TestServer::start(limits, 1, echo_handler);
    // From 127.0.0.2 (the server listens on 127.0.0.1; all of 127/8 is loopback).
    let from_other = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
        s.bind(&local.into()).unwrap();
        s.connect_timeout(&srv.addr.into(), CLIENT_TIMEOUT).unwrap();
        TcpStream::from(s)
    };
    let idle: Vec<TcpStream> = (0..4).map(|_| from_other()).collect();
    let t = Instant::now();
    while srv.server.num_connections() < 4 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    let mut extra = from_other();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\n\r\n");
    assert!(
        is_closed(&mut extra),
        "a fifth connection from one address must be closed"
    );
    assert_eq!(srv.health(), 200, "another address is still served");
    drop(idle);
    let t = Instant::now();
    while srv.server.num_connections() > 0 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    let mut again = from_other();
    let _ = again.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = again.read_to_string(&mut buf);
    assert!(
        buf.starts_with("HTTP/1.1 200"),
        "the address's slots come back: {:?}",
        buf
    );
}

// ---------------------------------------------------------------- goal 7: streaming

struct SlowReader {
    step: usize,
    produced_b: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step += 1;
        match self.step {
            1 => {
                buf[..2].copy_from_slice(b"a\n");
                Ok(2)
            }
            2 => {
                thread::sleep(Duration::from_millis(300));
                *self.produced_b.lock().unwrap() = Some(Instant::now());
                buf[..2].copy_from_slice(b"b\n");
                Ok(2)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn chunked_response_is_flushed_chunk_by_chunk() {
    let produced_b = std::sync::Arc::new(std::sync::Mutex::new(None));
    let pb = produced_b.clone();
    let srv = TestServer::start(fast_limits(), 1, move |rq| {
        let reader = SlowReader {
            step: 0,
            produced_b: pb.clone(),
        };
        let _ = rq.respond(Response::new(200.into(), vec![], reader, None, None));
    });
    let mut s = srv.connect();
    s.write_all(b"GET /output?follow=true HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let status = read_line(&mut r).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"));
    let mut chunked = false;
    loop {
        let l = read_line(&mut r).unwrap();
        if l.is_empty() {
            break;
        }
        if l.eq_ignore_ascii_case("transfer-encoding: chunked") {
            chunked = true;
        }
    }
    assert!(chunked);
    assert_eq!(read_line(&mut r).unwrap(), "2");
    assert_eq!(read_line(&mut r).unwrap(), "a");
    read_line(&mut r).unwrap();
    let first_seen = Instant::now();
    assert!(
        produced_b.lock().unwrap().is_none(),
        "first chunk arrived only after the second was produced"
    );
    assert_eq!(read_line(&mut r).unwrap(), "2");
    assert_eq!(read_line(&mut r).unwrap(), "b");
    read_line(&mut r).unwrap();
    assert_eq!(read_line(&mut r).unwrap(), "0");
    let b_at = produced_b.lock().unwrap().unwrap();
    assert!(b_at > first_seen);
}

#[test]
fn http10_streaming_is_close_delimited() {
    let srv = TestServer::start(fast_limits(), 1, move |rq| {
        let reader = SlowReader {
            step: 0,
            produced_b: Default::default(),
        };
        let _ = rq.respond(Response::new(200.into(), vec![], reader, None, None));
    });
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("Connection: close"), "{}", out);
    assert!(!out.contains("Content-Length"), "{}", out);
    assert!(out.ends_with("\r\n\r\na\nb\n"), "{}", out);
}

// ---------------------------------------------------------------- goal 8: upgrade

#[test]
fn upgrade_tcp_hands_over_socket_and_buffered_bytes() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let srv = TestServer::start(fast_limits(), 1, move |rq| {
        if rq.url() == "/health" {
            let _ = rq.respond(Response::from_string("ok"));
            return;
        }
        let resp = Response::empty(101);
        let (stream, leftover) = rq.upgrade_tcp("websocket", resp).unwrap();
        tx.lock().unwrap().send((stream, leftover)).unwrap();
    });
    let mut c = srv.connect();
    // head and first "frame" in the same packet
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME1",
    )
    .unwrap();
    let (stream, leftover) = rx.recv_timeout(CLIENT_TIMEOUT).unwrap();
    assert_eq!(leftover, b"FRAME1");
    assert_eq!(stream.read_timeout().unwrap(), None);
    assert_eq!(stream.write_timeout().unwrap(), None);

    let mut r = BufReader::new(c.try_clone().unwrap());
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("Upgrade"), Some("websocket"));
    assert_eq!(resp.header("Connection"), Some("upgrade"));
    // the upgraded connection does not count anymore
    let t = Instant::now();
    while srv.server.num_connections() > 0 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.server.num_connections(), 0);

    // raw bytes both ways, split into reader/writer halves; wait longer than the server's
    // timeouts to check that it does not touch the socket anymore
    let mut srv_reader = stream.try_clone().unwrap();
    let mut srv_writer = stream;
    thread::sleep(Duration::from_millis(1800));
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    srv_reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    srv_writer.write_all(b"pong\x00\xff").unwrap();
    let mut buf = [0u8; 6];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong\x00\xff");
    drop(srv_writer);
    drop(srv_reader);
    assert!(is_closed(&mut r));
    assert_eq!(srv.health(), 200);
}

#[test]
fn old_upgrade_api_still_works() {
    let srv = TestServer::start(fast_limits(), 1, move |rq| {
        let mut s = rq.upgrade("echo", Response::empty(101));
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        s.flush().unwrap();
    });
    let mut c = srv.connect();
    c.write_all(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhel")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().status, 101);
    c.write_all(b"lo").unwrap();
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

// ---------------------------------------------------------------- misc

#[test]
fn keep_alive_and_pipelining_still_work() {
    let srv = TestServer::start(fast_limits(), 4, echo_handler);
    let mut s = srv.connect();
    s.write_all(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /health HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r).unwrap().body, b"len=3");
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
    assert_eq!(read_response(&mut r).unwrap().body, b"len=1");
}

#[test]
fn concurrent_recv_threads() {
    let srv = TestServer::start(fast_limits(), 4, |rq| {
        thread::sleep(Duration::from_millis(200));
        let _ = rq.respond(Response::from_string("ok"));
    });
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let addr = srv.addr;
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                read_response(&mut BufReader::new(s)).unwrap().status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------- goal 9: hostile input

fn nasty_inputs() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"POST / HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\nabc".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc"
            .to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            .to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(),
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nX-Bad: \xc3\x28\xff\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nX-\xff: a\r\n\r\n".to_vec(),
        b"GET /\0 HTTP/1.1\r\n\r\n".to_vec(),
        b"G\0T / HTTP/1.1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(),
        b"\0\0\0\0\0\0\0\0\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n".to_vec(),
        b"GET /\r\n\r\n".to_vec(),
        b"GET / HTTP/0.9\r\n\r\n".to_vec(),
        b"GET / HTTP/2.0\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1.1\r\n\r\n".to_vec(),
        b"GET / http/1.1\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1000000000000000\r\n\r\n"
            .to_vec(),
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nContent-Length: 1000000000000\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
        b"GET / HTTP/1.1\r\nX:    \r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nTE: chunked;q=nan, gzip;q=\xff\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nTE: ;;;,,,q=\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nConnection: keep-alive, close, , ,\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"".to_vec(),
    ];
    v.push(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20)).into_bytes());
    v.push(format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(1000)).into_bytes());
    v.push("\r\n".repeat(20000).into_bytes());
    let mut long_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    long_chunk.extend(std::iter::repeat_n(b'1', 100_000));
    v.push(long_chunk);
    let mut trailers = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
    for _ in 0..5000 {
        trailers.extend_from_slice(b"X-T: yyyyyyyyyyyy\r\n");
    }
    v.push(trailers);
    // deterministic pseudo-random mutations of a valid request
    let base = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..60 {
        let mut m = base.to_vec();
        for _ in 0..(rnd() % 6 + 1) {
            let pos = (rnd() as usize) % m.len();
            match rnd() % 3 {
                0 => m[pos] = rnd() as u8,
                1 => {
                    m.remove(pos);
                }
                _ => m.insert(pos, rnd() as u8),
            }
        }
        v.push(m);
    }
    v
}

static SERVER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn nasty_inputs_never_kill_the_server() {
    // count panics in the server's own threads (they would be caught by the pool, so the
    // server would survive them, but they must not happen at all)
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = thread::current().name().map(|n| n.to_owned());
        if matches!(name.as_deref(), Some("http-conn") | Some("http-accept")) {
            SERVER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        prev(info);
    }));
    let srv = TestServer::start(fast_limits(), 4, echo_handler);
    let inputs = nasty_inputs();
    let n = inputs.len();
    let addr = srv.addr;
    // 8 client threads, each input on its own connection; the client half-closes after
    // sending so that nothing waits for a timeout
    let chunks: Vec<Vec<Vec<u8>>> = {
        let mut c: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 8];
        for (i, input) in inputs.into_iter().enumerate() {
            c[i % 8].push(input);
        }
        c
    };
    let start = Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|inputs| {
            thread::spawn(move || {
                let mut statuses = Vec::new();
                for input in inputs {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                    s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                    let _ = s.write_all(&input);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                    statuses.push(String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned());
                }
                statuses
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("client thread").len();
    }
    assert_eq!(total, n);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(SERVER_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(srv.health(), 200);
    // still accepting many keep-alive requests afterwards
    let mut s = srv.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..10 {
        s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r).unwrap().status, 200);
    }
}

#[test]
fn nasty_inputs_get_sensible_statuses() {
    let srv = TestServer::start(fast_limits(), 2, echo_handler);
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/0.9\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n", 417),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
            413,
        ),
    ];
    for (raw, code) in cases {
        let mut s = srv.connect();
        s.write_all(raw).unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, *code, "{:?}", String::from_utf8_lossy(raw));
        assert!(is_closed(&mut r));
    }
}

#[cfg(unix)]
#[test]
fn unix_socket_server_still_works() {
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("tiny_http_test_{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let server = tiny_http::Server::http_unix(&path).unwrap();
    let t = thread::spawn(move || {
        for _ in 0..2 {
            if let Ok(Some(rq)) = server.recv_timeout(CLIENT_TIMEOUT) {
                if rq.url() == "/up" {
                    // not TCP: refused, the request then answers 500 when dropped
                    assert!(rq.upgrade_tcp("x", Response::empty(101)).is_err());
                } else {
                    let _ = rq.respond(Response::from_string("unix"));
                }
            }
        }
    });
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\nGET /up HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r).unwrap().body, b"unix");
    assert_eq!(read_response(&mut r).unwrap().status, 500);
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
