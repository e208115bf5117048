//! Accept loop survives EMFILE (goal 5). Own test binary: it lowers RLIMIT_NOFILE of the whole
//! process for a few hundred milliseconds, which must not disturb other tests.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

static ACCEPT_ERRORS: AtomicUsize = AtomicUsize::new(0);

struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if format!("{}", record.args()).contains("Error accepting new client") {
            ACCEPT_ERRORS.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

static LOGGER: CountingLogger = CountingLogger;

fn set_nofile(soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: plain syscall with a valid pointer to a local struct
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit failed");
}

fn get_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer to a local struct
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0);
    (lim.rlim_cur, lim.rlim_max)
}

#[test]
fn accept_loop_survives_emfile() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Debug);

    let srv = TestServer::start(fast_limits(), 2, echo_handler);
    assert_eq!(srv.health(), 200);
    // wait until the server released the descriptors of that connection
    let t = std::time::Instant::now();
    while srv.server.num_connections() > 0 && t.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(50));

    // client sockets are created before the limit is lowered; connecting them needs no new fd
    let clients: Vec<socket2::Socket> = (0..3)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();

    let (soft, hard) = get_nofile();
    // The first client socket got the lowest free descriptor number when it was created, so
    // every number below it is in use: with the limit set to it, no new descriptor can be
    // created anywhere in the process (holes that appear above it are unusable).
    let lowest_free = clients.iter().map(|c| c.as_raw_fd()).min().unwrap() as u64;
    set_nofile(lowest_free, hard);
    assert!(
        std::fs::File::open("/dev/null").is_err(),
        "limit not effective"
    );

    for c in &clients {
        c.connect(&srv.addr.into()).unwrap();
    }
    thread::sleep(Duration::from_millis(400));
    let errors = ACCEPT_ERRORS.load(Ordering::SeqCst);
    set_nofile(soft, hard);

    assert!(
        errors >= 1,
        "accept never failed: test did not exercise EMFILE"
    );
    // 50 ms back-off: about 8 attempts in 400 ms, certainly not a busy loop
    assert!(
        errors <= 20,
        "accept loop spins: {} errors in 400 ms",
        errors
    );

    // The connections still queued are served once descriptors are available again. (A
    // connection accepted while descriptors were exhausted may have been closed by the server
    // because it could not clone the socket: that is fine, it just must not hurt the server.)
    let mut served = 0;
    for c in clients {
        let mut s: TcpStream = c.into();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        if s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        if let Ok(resp) = read_response(&mut BufReader::new(s)) {
            assert_eq!(resp.status, 200);
            served += 1;
        }
    }
    assert!(served >= 1, "no queued connection was served after EMFILE");
    assert_eq!(srv.health(), 200);
}
