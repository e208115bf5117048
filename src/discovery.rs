//! The `discovery` thread: announces the node over UDP (CONTRACT.md §4) and answers probes.
//!
//! One socket, bound to `DISCOVERY_PORT` with address and port reuse (a main server may share
//! the host), broadcast on, multicast TTL 1. The thread sleeps in `poll` until the next packet
//! is due, a datagram arrives, or it is told to stop, so an idle agent wakes only to announce.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{resolve_master, Config};
use crate::metrics::Metrics;
use crate::protocol::{self, Announce, Leave, Stats, StatsPacket};

/// Probe replies allowed per second, whatever arrives.
pub const PROBE_REPLIES_PER_SEC: u32 = 5;
/// How often `MASTER_SERVER` is resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a failed lookup of `MASTER_SERVER` is tried again.
pub const RESOLVE_RETRY: Duration = Duration::from_secs(10);
/// First announcement after start.
pub const FIRST_ANNOUNCE: Duration = Duration::from_millis(50);

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
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let every = if st.failing { RESOLVE_RETRY } else { RESOLVE_INTERVAL };
        if !st.in_flight && st.looked_up_at.is_none_or(|t| t.elapsed() >= every) {
            st.in_flight = true;
            let (name, port, state) = (self.name.clone(), self.default_port, Arc::clone(&self.state));
            let spawned =
                std::thread::Builder::new().name("resolve-master".into()).stack_size(256 * 1024).spawn(move || {
                    let found = resolve_master(&name, port).into_iter().find(SocketAddr::is_ipv4);
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
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
}

impl Sender {
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

/// Handle to stop the thread; stopping sends `cluster_leave`.
pub struct Discovery {
    /// Closing it wakes the thread (its read end polls as hung up).
    wake: OwnedFd,
    handle: JoinHandle<()>,
}

impl Discovery {
    /// Binds the socket and starts the thread. Never fatal: a port that cannot be shared is
    /// logged, and the agent still announces from another socket (it only cannot hear probes).
    pub fn start(cfg: &Config, node: NodeInfo, metrics: Arc<Metrics>) -> std::io::Result<Discovery> {
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
        };
        // The first lookup starts now, so its answer is likely there for the first announce.
        if let Some(m) = &sender.master {
            m.addr();
        }
        // CLOEXEC: a task inheriting the write end would keep the pipe from ever hanging up.
        let (wake_rx, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        sender.socket.set_nonblocking(true)?;
        let (announce_every, stats_every) = (cfg.announce_interval, cfg.stats_interval);
        let node = Arc::new(node);
        let handle = std::thread::Builder::new()
            .name("discovery".into())
            .stack_size(256 * 1024)
            .spawn(move || run(sender, &node, listening, announce_every, stats_every, &wake_rx))?;
        Ok(Discovery { wake, handle })
    }

    /// Sends `cluster_leave` and stops the thread.
    pub fn stop(self) {
        drop(self.wake);
        let _ = self.handle.join();
    }
}

fn to_json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("discovery packets serialise: plain fields")
}

fn run(
    mut sender: Sender,
    node: &NodeInfo,
    listening: bool,
    announce_every: Duration,
    stats_every: Duration,
    wake: &OwnedFd,
) {
    let start = Instant::now();
    let mut next_announce = start + FIRST_ANNOUNCE;
    let mut next_stats = start + stats_every;
    let mut window = Instant::now();
    let mut replies = 0u32;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= next_announce {
            sender.send(&to_json(&node.announce(false)));
            next_announce = now + announce_every;
        }
        if now >= next_stats {
            let packet = StatsPacket {
                kind: protocol::STATS.into(),
                hostname: node.hostname.clone(),
                port: node.port,
                stats: (node.stats)(),
                timestamp: protocol::now_ms(),
            };
            sender.send(&to_json(&packet));
            next_stats = now + stats_every;
        }
        // Sleep until the next packet is due, a datagram arrives, or the stop pipe closes:
        // an idle agent wakes only to announce.
        let wait =
            next_announce.min(next_stats).saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
        if listening {
            fds.push(PollFd::new(&sender.socket, PollFlags::IN));
        }
        match crate::eintr::poll(&mut fds, Some(wait)) {
            Ok(_) => {}
            Err(e) => {
                log::warn!("discovery: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if !fds[0].revents().is_empty() {
            break;
        }
        if fds.get(1).is_none_or(|f| f.revents().is_empty()) {
            continue;
        }
        drop(fds);
        loop {
            let (n, from) = match sender.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("discovery: receive failed: {e}");
                    break;
                }
            };
            if protocol::packet_type(&buf[..n]).as_deref() != Some(protocol::PROBE) {
                continue;
            }
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                replies = 0;
            }
            if replies < PROBE_REPLIES_PER_SEC {
                replies += 1;
                sender.send_to(&to_json(&node.announce(true)), from);
            }
        }
    }
    let leave = Leave {
        kind: protocol::LEAVE.into(),
        hostname: node.hostname.clone(),
        port: node.port,
        timestamp: protocol::now_ms(),
    };
    sender.send(&to_json(&leave));
}
