//! The `discovery` thread: announces the node over UDP (CONTRACT.md §4) and answers probes.
//!
//! One socket, bound to `DISCOVERY_PORT` with address and port reuse (a main server may share
//! the host), broadcast on, multicast TTL 1. The thread sleeps in `poll` until the next packet
//! is due, a datagram arrives, or it is told to stop, so an idle agent wakes only to announce.
//! What it receives costs it little whatever arrives: it reads at most `MAX_DATAGRAM` bytes of
//! a datagram and parses only what could be a probe, and reads at most `READ_BUDGET`
//! datagrams per `READ_WINDOW` (so also per wake-up), so a flood neither pins a core nor keeps
//! the thread from its schedule or from stopping.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{resolve_master, Config};
use crate::discovery_sig::SigningKey;
use crate::metrics::Metrics;
use crate::protocol::{self, Announce, Leave, Stats, StatsPacket};
use crate::sync::Recover;
use crate::worker::Worker;

/// Probe replies allowed per second, whatever arrives.
pub const PROBE_REPLIES_PER_SEC: u32 = 5;
/// How often `MASTER_SERVER` is resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a failed lookup of `MASTER_SERVER` is tried again.
pub const RESOLVE_RETRY: Duration = Duration::from_secs(10);
/// First announcement after start.
pub const FIRST_ANNOUNCE: Duration = Duration::from_millis(50);
/// Longest datagram read. A probe is 24 bytes and nothing larger is acted on, so a longer
/// one is dropped unparsed (the kernel copies only this much of it and one byte more).
pub const MAX_DATAGRAM: usize = 1024;
/// Datagrams read per `READ_WINDOW` at most, so also per wake-up: then the thread goes back
/// to its schedule, so a flood holds up neither an announcement nor a stop. Once a window's
/// budget is spent the socket is left alone until the next window (what arrives meanwhile
/// waits in the kernel's queue, or overflows it): a flood of any rate costs at most 3,200
/// datagrams a second. A fleet's own traffic on a shared port (an announce every 5 s and a
/// stats packet every 10 s per agent) stays under that up to some 10,000 agents.
pub const READ_BUDGET: usize = 32;
pub const READ_WINDOW: Duration = Duration::from_millis(10);
/// Probe replies go out after a random delay of up to this, so that a fleet answering one
/// broadcast probe does not fill the prober's receive queue in the same millisecond.
pub const REPLY_SPREAD: Duration = Duration::from_millis(500);

/// What the discovery thread needs to know about the node.
pub struct NodeInfo {
    pub hostname: String,
    pub cpus: usize,
    pub total_memory: u64,
    /// The HTTP port (the one actually bound).
    pub port: u16,
    pub stats: Box<dyn Fn() -> Stats + Send + Sync>,
}

impl NodeInfo {
    pub fn announce(&self, with_stats: bool) -> Announce {
        Announce {
            kind: protocol::ANNOUNCE.into(),
            hostname: self.hostname.clone(),
            platform: protocol::node_platform().into(),
            arch: protocol::node_arch().into(),
            cpus: self.cpus,
            total_memory: self.total_memory,
            port: self.port,
            timestamp: protocol::now_ms(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            id: Some(format!("{}:{}", self.hostname, self.port)),
            stats: with_stats.then(|| (self.stats)()),
        }
    }
}

/// Binds a UDP socket on `port` with address (and port) reuse and broadcast enabled.
pub fn bind_shared(port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true)?;
    s.set_broadcast(true)?;
    s.set_multicast_ttl_v4(1)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// `MASTER_SERVER`'s address, looked up by a short-lived `resolve-master` thread: a name
/// lookup can take as long as the resolver's timeouts (30 s and more when DNS does not
/// answer), and the discovery thread must neither skip announcements nor hold up the
/// shutdown meanwhile. Until the first lookup succeeds, packets go to the other targets only.
struct Master {
    name: String,
    default_port: u16,
    state: Arc<std::sync::Mutex<MasterState>>,
}

#[derive(Default)]
struct MasterState {
    addr: Option<SocketAddr>,
    /// When the last lookup ended; `None` before the first.
    looked_up_at: Option<Instant>,
    in_flight: bool,
    failing: bool,
}

impl Master {
    /// The address to send to now (`None` while unknown); starts a lookup when one is due.
    fn addr(&self) -> Option<SocketAddr> {
        let mut st = self.state.lock().recover();
        let every = if st.failing { RESOLVE_RETRY } else { RESOLVE_INTERVAL };
        if !st.in_flight && st.looked_up_at.is_none_or(|t| t.elapsed() >= every) {
            st.in_flight = true;
            let (name, port, state) = (self.name.clone(), self.default_port, Arc::clone(&self.state));
            let spawned =
                std::thread::Builder::new().name("resolve-master".into()).stack_size(256 * 1024).spawn(move || {
                    let found = resolve_master(&name, port).into_iter().find(SocketAddr::is_ipv4);
                    let mut st = state.lock().recover();
                    match found {
                        Some(a) => {
                            if st.failing || st.addr.is_some_and(|old| old != a) {
                                log::info!("discovery: MASTER_SERVER={name} is {a}");
                            }
                            st.addr = Some(a);
                            st.failing = false;
                        }
                        None => {
                            if !st.failing {
                                log::warn!("discovery: cannot resolve MASTER_SERVER={name}; will try again");
                            }
                            st.failing = true;
                        }
                    }
                    st.looked_up_at = Some(Instant::now());
                    st.in_flight = false;
                });
            if spawned.is_err() {
                st.in_flight = false;
                st.looked_up_at = Some(Instant::now());
            }
        }
        st.addr
    }
}

/// Sends to every target, logging a failing target once until it recovers.
struct Sender {
    socket: UdpSocket,
    targets: Vec<SocketAddr>,
    master: Option<Master>,
    failing: HashMap<SocketAddr, bool>,
    metrics: Arc<Metrics>,
    /// `DISCOVERY_SIGN`: every packet gets `sig` (see [`crate::discovery_sig`]).
    signer: Option<SigningKey>,
}

impl Sender {
    /// The packet as sent: serialised, and signed when `DISCOVERY_SIGN` is on.
    fn packet(&self, v: &impl serde::Serialize) -> Vec<u8> {
        let bytes = to_json(v);
        match &self.signer {
            Some(key) => key.sign(&bytes),
            None => bytes,
        }
    }

    fn all_targets(&mut self) -> Vec<SocketAddr> {
        let master = self.master.as_ref().and_then(Master::addr);
        self.targets.iter().copied().chain(master).collect()
    }

    fn send(&mut self, bytes: &[u8]) {
        for to in self.all_targets() {
            self.send_to(bytes, to);
        }
    }

    fn send_to(&mut self, bytes: &[u8], to: SocketAddr) {
        let result = self.socket.send_to(bytes, to);
        crate::metrics::inc(if result.is_ok() {
            &self.metrics.discovery_sent
        } else {
            &self.metrics.discovery_send_errors
        });
        let was_failing = self.failing.get(&to).copied().unwrap_or(false);
        match result {
            Ok(_) if was_failing => {
                log::info!("discovery: sending to {to} works again");
                self.failing.insert(to, false);
            }
            Ok(_) => {}
            Err(e) if !was_failing => {
                log::warn!("discovery: cannot send to {to}: {e} (logged once until it recovers)");
                self.failing.insert(to, true);
            }
            Err(_) => {}
        }
    }
}

/// The `discovery` thread (see [`Discovery::start`]).
pub struct Discovery;

impl Discovery {
    /// Binds the socket and starts the thread. Never fatal: a port that cannot be shared is
    /// logged, and the agent still announces from another socket (it only cannot hear probes).
    /// Stopping the worker sends `cluster_leave` and ends the thread.
    pub fn start(cfg: &Config, node: NodeInfo, metrics: Arc<Metrics>) -> std::io::Result<Worker> {
        let (socket, listening) = match bind_shared(cfg.discovery_port) {
            Ok(s) => (s, true),
            Err(e) => {
                log::warn!(
                    "discovery: cannot bind UDP port {}: {e}; announcing without answering probes",
                    cfg.discovery_port
                );
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_broadcast(true)?;
                (s, false)
            }
        };
        let targets: Vec<SocketAddr> = cfg.discovery_addresses.iter().map(|t| t.addr).collect();
        log::info!(
            "discovery: UDP port {}, announcing every {} ms to {}{}",
            cfg.discovery_port,
            cfg.announce_interval.as_millis(),
            targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            cfg.master_server.as_ref().map_or(String::new(), |m| format!(" and MASTER_SERVER {m}"))
        );
        let sender = Sender {
            socket,
            targets,
            master: cfg.master_server.clone().map(|name| Master {
                name,
                default_port: cfg.discovery_port,
                state: Arc::default(),
            }),
            failing: HashMap::new(),
            metrics,
            signer: cfg.discovery_sign.then(|| SigningKey::from_secret(&cfg.secret)),
        };
        if cfg.discovery_sign {
            log::info!("discovery: packets signed (sig: HMAC-SHA256 keyed from the cluster secret)");
        }
        // The first lookup starts now, so its answer is likely there for the first announce.
        if let Some(m) = &sender.master {
            m.addr();
        }
        // CLOEXEC: a task inheriting the write end would keep the pipe from ever hanging up.
        let (wake_rx, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        sender.socket.set_nonblocking(true)?;
        let schedule = Schedule::new(Instant::now(), cfg.announce_interval, cfg.stats_interval);
        let node = Arc::new(node);
        let handle = std::thread::Builder::new()
            .name("discovery".into())
            .stack_size(256 * 1024)
            .spawn(move || run(sender, &node, listening, schedule, &wake_rx))?;
        // Closing the pipe's write end wakes the thread (its read end polls as hung up).
        Ok(Worker::new("discovery", move || drop(wake), vec![handle]))
    }
}

fn to_json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("discovery packets serialise: plain fields")
}

/// When the periodic packets are due.
struct Schedule {
    announce_every: Duration,
    stats_every: Duration,
    next_announce: Instant,
    next_stats: Instant,
}

impl Schedule {
    fn new(start: Instant, announce_every: Duration, stats_every: Duration) -> Schedule {
        Schedule { announce_every, stats_every, next_announce: start + FIRST_ANNOUNCE, next_stats: start + stats_every }
    }

    fn next(&self) -> Instant {
        self.next_announce.min(self.next_stats)
    }

    /// Sends the packets due at `now`.
    fn send_due(&mut self, sender: &mut Sender, node: &NodeInfo, now: Instant) {
        if now >= self.next_announce {
            let packet = sender.packet(&node.announce(false));
            sender.send(&packet);
            self.next_announce = now + self.announce_every;
        }
        if now >= self.next_stats {
            let packet = StatsPacket {
                kind: protocol::STATS.into(),
                hostname: node.hostname.clone(),
                port: node.port,
                stats: (node.stats)(),
                timestamp: protocol::now_ms(),
            };
            let packet = sender.packet(&packet);
            sender.send(&packet);
            self.next_stats = now + self.stats_every;
        }
    }
}

/// Probe replies: at most `PROBE_REPLIES_PER_SEC` taken a second, whatever arrives, each sent
/// after a random delay of up to `REPLY_SPREAD`; and at most `PROBE_REPLIES_PER_SEC` sent in
/// any second (the delays could otherwise bunch two seconds' replies into one).
struct Replies {
    window: Instant,
    taken: u32,
    /// When the latest replies went out (at most `PROBE_REPLIES_PER_SEC`).
    sent: std::collections::VecDeque<Instant>,
    /// (when, to whom); at most `PROBE_REPLIES_PER_SEC` per `REPLY_SPREAD`, so a handful.
    pending: Vec<(Instant, SocketAddr)>,
    /// std's hasher keys, drawn from the OS's randomness: agents started together, on one
    /// host or on identical ones, still draw different delays (no extra crate needed).
    random: RandomState,
    drawn: u64,
}

impl Replies {
    fn new(now: Instant) -> Replies {
        let sent = std::collections::VecDeque::new();
        Replies { window: now, taken: 0, sent, pending: Vec::new(), random: RandomState::new(), drawn: 0 }
    }

    /// Takes a probe from `from`; false when this second's replies are used up.
    fn take(&mut self, from: SocketAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.taken = 0;
        }
        if self.taken >= PROBE_REPLIES_PER_SEC {
            return false;
        }
        self.taken += 1;
        self.drawn += 1;
        let spread = REPLY_SPREAD.as_millis() as u64 + 1;
        let delay = Duration::from_millis(self.random.hash_one((self.drawn, from)) % spread);
        self.pending.push((now + delay, from));
        true
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(at, _)| *at).min()
    }

    /// The probers whose reply is due at `now` and may go out, taken off the list (a reply
    /// that would make more than `PROBE_REPLIES_PER_SEC` in a second is dropped).
    fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let (due, later) = self.pending.iter().partition::<Vec<_>, _>(|(at, _)| *at <= now);
        self.pending = later;
        while self.sent.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1)) {
            self.sent.pop_front();
        }
        let room = (PROBE_REPLIES_PER_SEC as usize).saturating_sub(self.sent.len());
        let out: Vec<SocketAddr> = due.into_iter().map(|(_, to)| to).take(room).collect();
        self.sent.extend(std::iter::repeat_n(now, out.len()));
        out
    }
}

/// Why `wait` returned.
enum Woken {
    Stop,
    Readable,
    Timeout,
}

/// Sleeps until `until`, a datagram on `socket` (when given), or the stop pipe closing.
fn wait(wake: &OwnedFd, socket: Option<&UdpSocket>, until: Instant) -> Woken {
    let timeout = until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
    if let Some(s) = socket {
        fds.push(PollFd::new(s, PollFlags::IN));
    }
    if let Err(e) = crate::eintr::poll(&mut fds, Some(timeout)) {
        log::warn!("discovery: poll failed: {e}");
        std::thread::sleep(Duration::from_millis(100));
        return Woken::Timeout;
    }
    if !fds[0].revents().is_empty() {
        Woken::Stop
    } else if fds.get(1).is_some_and(|f| !f.revents().is_empty()) {
        Woken::Readable
    } else {
        Woken::Timeout
    }
}

/// Datagrams read in the current `READ_WINDOW`.
struct Budget {
    window: Instant,
    used: usize,
}

impl Budget {
    /// How many datagrams may still be read now.
    fn left(&mut self, now: Instant) -> usize {
        if now.saturating_duration_since(self.window) >= READ_WINDOW {
            self.window = now;
            self.used = 0;
        }
        READ_BUDGET - self.used
    }

    /// When reading may go on, once this window's budget is spent.
    fn next_window(&self) -> Instant {
        self.window + READ_WINDOW
    }
}

/// Reads up to `max` datagrams and takes the probes among them; returns how many it read.
fn receive(socket: &UdpSocket, buf: &mut [u8; MAX_DATAGRAM + 1], replies: &mut Replies, max: usize) -> usize {
    for read in 0..max {
        let (n, from) = match crate::eintr::retry(|| socket.recv_from(buf)) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return read,
            Err(e) => {
                log::debug!("discovery: receive failed: {e}");
                return read;
            }
        };
        // Longer than MAX_DATAGRAM (truncated to the buffer): not a probe, not worth a parse.
        if n <= MAX_DATAGRAM && protocol::packet_type(&buf[..n]).as_deref() == Some(protocol::PROBE) {
            replies.take(from, Instant::now());
        }
    }
    max
}

fn run(mut sender: Sender, node: &NodeInfo, listening: bool, mut schedule: Schedule, wake: &OwnedFd) {
    let mut replies = Replies::new(Instant::now());
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut budget = Budget { window: Instant::now(), used: 0 };
    loop {
        let now = Instant::now();
        schedule.send_due(&mut sender, node, now);
        for to in replies.due(now) {
            let reply = sender.packet(&node.announce(true));
            sender.send_to(&reply, to);
        }
        // Sleep until the next packet or reply is due, a datagram arrives (unless this
        // window's budget is spent: then until the next window), or the stop pipe closes: an
        // idle agent wakes only to announce.
        let left = if listening { budget.left(now) } else { 0 };
        let resume = (listening && left == 0).then(|| budget.next_window());
        let until = [replies.next_due(), resume].into_iter().flatten().fold(schedule.next(), Instant::min);
        match wait(wake, (left > 0).then_some(&sender.socket), until) {
            Woken::Stop => break,
            Woken::Timeout => {}
            Woken::Readable => budget.used += receive(&sender.socket, &mut buf, &mut replies, left),
        }
    }
    let leave = Leave {
        kind: protocol::LEAVE.into(),
        hostname: node.hostname.clone(),
        port: node.port,
        timestamp: protocol::now_ms(),
    };
    let leave = sender.packet(&leave);
    sender.send(&leave);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober(n: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000 + n))
    }

    #[test]
    fn the_read_budget_refills_each_window() {
        let t0 = Instant::now();
        let mut b = Budget { window: t0, used: 0 };
        assert_eq!(b.left(t0), READ_BUDGET);
        b.used += READ_BUDGET;
        assert_eq!(b.left(t0 + READ_WINDOW / 2), 0);
        assert_eq!(b.next_window(), t0 + READ_WINDOW);
        assert_eq!(b.left(t0 + READ_WINDOW), READ_BUDGET);
    }

    #[test]
    fn at_most_five_replies_a_second() {
        let t0 = Instant::now();
        let mut r = Replies::new(t0);
        let taken = (0..50).filter(|i| r.take(prober(*i), t0 + Duration::from_millis(*i as u64))).count();
        assert_eq!(taken, PROBE_REPLIES_PER_SEC as usize);
        assert!(!r.take(prober(99), t0 + Duration::from_millis(999)));
        assert!(r.take(prober(99), t0 + Duration::from_millis(1000)));
    }

    /// Probes taken at the end of one second and the start of the next may fall due together;
    /// still at most five go out in any second.
    #[test]
    fn at_most_five_replies_are_sent_in_any_second() {
        let t0 = Instant::now();
        let mut r = Replies::new(t0);
        let mut sent = Vec::new();
        for ms in (0..3000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            r.take(prober(ms as u16), now);
            sent.extend(r.due(now).into_iter().map(|_| now));
        }
        assert!(sent.len() >= 10, "replies still go out: {}", sent.len());
        for (i, t) in sent.iter().enumerate() {
            let in_a_second = sent[i..].iter().filter(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
            assert!(in_a_second <= PROBE_REPLIES_PER_SEC as usize, "{in_a_second} replies within 1 s of {t:?}");
        }
    }

    #[test]
    fn replies_are_spread_over_the_window_and_sent_once() {
        let t0 = Instant::now();
        let mut delays = Vec::new();
        // Fresh limiters taking the same probe, as each agent of a fleet would.
        for _ in 0..200 {
            let mut r = Replies::new(t0);
            assert!(r.take(prober(0), t0));
            let at = r.next_due().unwrap();
            assert!(r.due(at - Duration::from_nanos(1)).is_empty());
            assert_eq!(r.due(at), vec![prober(0)]);
            assert!(r.due(at + REPLY_SPREAD).is_empty(), "sent twice");
            delays.push(at - t0);
        }
        assert!(delays.iter().all(|d| *d <= REPLY_SPREAD), "{delays:?}");
        // Spread, not bunched: every tenth of the window gets some.
        let mut tenths = [0; 10];
        for d in &delays {
            tenths[(d.as_millis() * 10 / (REPLY_SPREAD.as_millis() + 1)) as usize] += 1;
        }
        assert!(tenths.iter().all(|n| *n > 0), "{tenths:?}");
    }
}
