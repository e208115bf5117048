//! Black-box tests of UDP discovery (CONTRACT.md §4, settings of §1) and of the
//! `codara-agent discover` command.
//!
//! Network safety: every agent and every `discover` run started here sends only to loopback
//! (`127.255.255.255[:port]`, `127.0.0.1:port`) or, in the network-namespace test, to the
//! broadcast address of a private subnet that exists only inside namespaces the test creates.
//! Each test uses its own UDP ports (kernel-chosen ephemeral ports), so tests running in
//! parallel do not hear each other.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_codara-agent");

const ANNOUNCE_FIELDS: [&str; 8] = ["type", "hostname", "platform", "arch", "cpus", "totalMemory", "port", "timestamp"];
const ANNOUNCE_OPTIONAL: [&str; 2] = ["version", "id"];
const STATS_FIELDS: [&str; 11] = [
    "cpu",
    "memoryUsed",
    "memoryFree",
    "memoryTotal",
    "memoryUsagePercent",
    "uptime",
    "runningTasks",
    "maxTasks",
    "availableSlots",
    "cpuPercent",
    "loadAverage",
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Node's `process.arch` for the machine the tests run on.
fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        "arm" => "arm",
        other => other,
    }
}

/// A UDP port that is free right now (bound and released at once).
fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap().local_addr().unwrap().port()
}

use common::bind_shared;

/// An ephemeral socket that may send to broadcast addresses (a prober).
fn prober() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    s.set_broadcast(true).unwrap();
    s
}

fn bcast(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 255, 255, 255), port))
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// One datagram received by a `Listener`.
#[derive(Clone, Debug)]
struct Pkt {
    at: Instant,
    from: SocketAddr,
    len: usize,
    json: Option<Value>,
}

impl Pkt {
    fn kind(&self) -> Option<&str> {
        self.json.as_ref()?.get("type")?.as_str()
    }

    fn port(&self) -> Option<u64> {
        self.json.as_ref()?.get("port")?.as_u64()
    }

    /// A packet of type `kind` whose `port` is `port` (the agent's HTTP port).
    fn is(&self, kind: &str, port: u16) -> bool {
        self.kind() == Some(kind) && self.port() == Some(port as u64)
    }

    fn j(&self) -> &Value {
        self.json.as_ref().unwrap()
    }
}

/// Receives datagrams on a socket in a background thread and keeps them all.
struct Listener {
    port: u16,
    pkts: Arc<Mutex<Vec<Pkt>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Listener {
    fn new(sock: UdpSocket) -> Listener {
        let port = sock.local_addr().unwrap().port();
        let pkts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&pkts), Arc::clone(&stop));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let json = serde_json::from_slice::<Value>(&buf[..n]).ok();
                        p.lock().unwrap().push(Pkt { at: Instant::now(), from, len: n, json });
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Listener { port, pkts, stop, handle: Some(handle) }
    }

    /// Listens on `0.0.0.0:port` with address and port reuse (port 0: a new ephemeral port).
    fn shared(port: u16) -> Listener {
        Listener::new(bind_shared(port))
    }

    /// A plain socket (no reuse) on `addr`.
    fn plain(addr: SocketAddr) -> Listener {
        Listener::new(UdpSocket::bind(addr).unwrap())
    }

    fn all(&self) -> Vec<Pkt> {
        self.pkts.lock().unwrap().clone()
    }

    fn count(&self, pred: impl Fn(&Pkt) -> bool) -> usize {
        self.pkts.lock().unwrap().iter().filter(|p| pred(p)).count()
    }

    /// The first packet (since the listener started) matching `pred`, waiting up to `timeout`.
    fn wait(&self, timeout: Duration, pred: impl Fn(&Pkt) -> bool) -> Option<Pkt> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.pkts.lock().unwrap().iter().find(|p| pred(p)) {
                return Some(p.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` until at least `n` packets match `pred`; returns how many did.
    fn wait_n(&self, n: usize, timeout: Duration, pred: impl Fn(&Pkt) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count(&pred);
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn summary(&self) -> String {
        self.all()
            .iter()
            .map(|p| match &p.json {
                Some(v) => format!("{} {}", p.from, v),
                None => format!("{} <{} bytes, not JSON>", p.from, p.len),
            })
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads every datagram arriving on `sock` until `until` (and those already queued then).
fn recv_until(sock: &UdpSocket, until: Instant) -> Vec<Pkt> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                out.push(Pkt { at: Instant::now(), from, len: n, json: serde_json::from_slice(&buf[..n]).ok() })
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if Instant::now() >= until {
                    return out;
                }
            }
            Err(e) => panic!("recv_from failed: {e}"),
        }
    }
}

/// An agent with discovery on, on `disc_port`, sending to `addresses`, with short intervals.
fn disc_agent(disc_port: u16, addresses: &str) -> common::AgentBuilder {
    common::agent()
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", &disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", addresses)
        .env("ANNOUNCE_INTERVAL", "300")
        .env("STATS_INTERVAL", "400")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

/// Checks the fields and types of a `cluster_announce` packet from the agent on `http_port`.
/// `extra` lists the fields allowed besides the compat ones and `version`/`id`.
#[track_caller]
fn check_announce(v: &Value, http_port: u16, extra: &[&str]) {
    assert_eq!(v["type"], "cluster_announce", "{v}");
    let k = keys(v);
    for f in ANNOUNCE_FIELDS {
        assert!(k.contains(f), "announce lacks {f:?}: {v}");
    }
    for f in &k {
        assert!(
            ANNOUNCE_FIELDS.contains(&f.as_str())
                || ANNOUNCE_OPTIONAL.contains(&f.as_str())
                || extra.contains(&f.as_str()),
            "announce has unexpected field {f:?}: {v}"
        );
    }
    let host = v["hostname"].as_str().unwrap_or_else(|| panic!("hostname not a string: {v}"));
    assert!(!host.is_empty(), "empty hostname: {v}");
    assert_eq!(v["platform"], "linux", "{v}");
    assert_eq!(v["arch"], node_arch(), "{v}");
    let cpus = v["cpus"].as_u64().unwrap_or_else(|| panic!("cpus not an integer: {v}"));
    assert!(cpus >= 1, "{v}");
    let mem = v["totalMemory"].as_u64().unwrap_or_else(|| panic!("totalMemory not an integer: {v}"));
    assert!(mem > 0, "{v}");
    if let Some(kb) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        let host_bytes = kb * 1024;
        let diff = host_bytes.abs_diff(mem);
        assert!(diff <= host_bytes / 50, "totalMemory {mem} far from MemTotal {host_bytes}: {v}");
    }
    assert!(v["port"].is_u64(), "port not a number: {v}");
    assert_eq!(v["port"].as_u64(), Some(http_port as u64), "port is not the HTTP port: {v}");
    let ts = v["timestamp"].as_u64().unwrap_or_else(|| panic!("timestamp not an integer: {v}"));
    assert!(ts.abs_diff(now_ms()) < 30_000, "timestamp {ts} is not ms since epoch close to now: {v}");
    if let Some(ver) = v.get("version") {
        assert!(ver.is_string(), "version not a string: {v}");
    }
    if let Some(id) = v.get("id") {
        assert!(id.as_str().is_some_and(|s| !s.is_empty()), "id not a non-empty string: {v}");
    }
}

/// Checks a stats object: the compat and new fields, their types, and the same field set as
/// `GET /stats` answered (`http_keys`).
#[track_caller]
fn check_stats(s: &Value, http_keys: &BTreeSet<String>) {
    let k = keys(s);
    for f in STATS_FIELDS {
        assert!(k.contains(f), "stats lack {f:?}: {s}");
    }
    assert_eq!(&k, http_keys, "stats field set differs from GET /stats: {s}");
    for f in ["cpu", "memoryUsagePercent", "cpuPercent"] {
        assert!(s[f].is_number(), "{f} not a number: {s}");
    }
    for f in ["memoryUsed", "memoryFree", "memoryTotal", "uptime", "runningTasks", "maxTasks", "availableSlots"] {
        assert!(s[f].is_u64(), "{f} not a non-negative integer: {s}");
    }
    let la = s["loadAverage"].as_array().unwrap_or_else(|| panic!("loadAverage not an array: {s}"));
    assert_eq!(la.len(), 3, "{s}");
    assert!(la.iter().all(Value::is_number), "{s}");
    let pct = s["memoryUsagePercent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct), "{s}");
    let cpu_pct = s["cpuPercent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu_pct), "{s}");
}

fn http_stats_keys(a: &common::Agent) -> BTreeSet<String> {
    let r = a.get("/stats");
    assert_eq!(r.status, 200, "{}", r.text());
    keys(&r.json())
}

// ---------------------------------------------------------------------------
// Announcements and stats
// ---------------------------------------------------------------------------

#[test]
fn first_announce_soon_after_start_with_exact_fields() {
    let l = Listener::shared(0);
    let started = Instant::now();
    let mut a = common::agent()
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", &l.port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .start();
    let port = a.port;
    let p = l
        .wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; got:\n{}\nlogs:\n{}", l.summary(), a.log_text()));
    let after = p.at.duration_since(started);
    assert!(
        after <= Duration::from_secs(1),
        "first announce came {after:?} after the agent was started (spec: 200 ms)"
    );
    check_announce(p.j(), port, &[]);
    let health = a.get("/health").json();
    assert_eq!(p.j()["hostname"], health["hostname"], "announce hostname differs from /health");
    // Broadcast to the loopback network: it comes from a loopback address.
    assert!(p.from.ip().is_loopback(), "{}", p.from);
    a.assert_alive();
}

#[test]
fn repeated_announces_and_stats_at_short_intervals() {
    let l = Listener::shared(0);
    let mut a = disc_agent(l.port, "127.255.255.255").start();
    let port = a.port;
    let first = l
        .wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; got:\n{}\nlogs:\n{}", l.summary(), a.log_text()));
    // ANNOUNCE_INTERVAL=300, STATS_INTERVAL=400: ~10 and ~7 in 3 s; the defaults (5 s / 10 s)
    // would give 1 and 0.
    std::thread::sleep(Duration::from_secs(3));
    let window_end = first.at + Duration::from_millis(3200);
    let pkts: Vec<Pkt> = l.all().into_iter().filter(|p| p.at <= window_end).collect();
    let announces: Vec<&Pkt> = pkts.iter().filter(|p| p.is("cluster_announce", port)).collect();
    let stats: Vec<&Pkt> = pkts.iter().filter(|p| p.is("cluster_stats", port)).collect();
    assert!(announces.len() >= 4, "{} announces in ~3 s with ANNOUNCE_INTERVAL=300:\n{}", announces.len(), l.summary());
    assert!(stats.len() >= 3, "{} stats packets in ~3 s with STATS_INTERVAL=400:\n{}", stats.len(), l.summary());
    for p in &announces {
        check_announce(p.j(), port, &[]);
    }
    let http_keys = http_stats_keys(&a);
    let host = first.j()["hostname"].clone();
    for p in &stats {
        let v = p.j();
        let k = keys(v);
        for f in ["type", "hostname", "port", "stats", "timestamp"] {
            assert!(k.contains(f), "cluster_stats lacks {f:?}: {v}");
        }
        assert_eq!(v["hostname"], host, "{v}");
        assert!(v["port"].is_u64(), "{v}");
        let ts = v["timestamp"].as_u64().unwrap_or_else(|| panic!("timestamp not an integer: {v}"));
        assert!(ts.abs_diff(now_ms()) < 30_000, "{v}");
        check_stats(&v["stats"], &http_keys);
    }
    // Timestamps move forward.
    let ts: Vec<u64> = announces.iter().map(|p| p.j()["timestamp"].as_u64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    assert!(ts.last() > ts.first(), "{ts:?}");
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

#[test]
fn probe_is_answered_by_unicast_to_the_prober() {
    let l = Listener::shared(0);
    let mut a = disc_agent(l.port, "127.255.255.255").start();
    let port = a.port;
    l.wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
    let probe = prober();
    let mut reply = None;
    let mut sent_at = Instant::now();
    for _ in 0..5 {
        sent_at = Instant::now();
        probe.send_to(br#"{"type":"cluster_probe"}"#, bcast(l.port)).unwrap();
        let got = recv_until(&probe, Instant::now() + Duration::from_secs(2));
        if let Some(p) = got.into_iter().find(|p| p.is("cluster_announce", port)) {
            reply = Some(p);
            break;
        }
    }
    let reply = reply.unwrap_or_else(|| panic!("no probe reply on the prober's socket; logs:\n{}", a.log_text()));
    assert!(reply.from.ip().is_loopback(), "{}", reply.from);
    check_announce(reply.j(), port, &["stats"]);
    let stats = reply.j().get("stats").unwrap_or_else(|| panic!("probe reply without stats: {}", reply.j()));
    check_stats(stats, &http_stats_keys(&a));
    // The reply went to the prober only: nobody on the discovery port saw an announce with
    // stats (the periodic announces carry none).
    std::thread::sleep(Duration::from_millis(500));
    let leaked: Vec<Pkt> = l
        .all()
        .into_iter()
        .filter(|p| p.at >= sent_at && p.is("cluster_announce", port) && p.j().get("stats").is_some())
        .collect();
    assert!(leaked.is_empty(), "the probe reply was also sent to the discovery port: {leaked:?}");
    a.assert_alive();
}

#[test]
fn probe_replies_are_rate_limited() {
    let l = Listener::shared(0);
    let mut a = disc_agent(l.port, "127.255.255.255").start();
    let port = a.port;
    l.wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
    std::thread::sleep(Duration::from_millis(1200));
    let probe = prober();
    for round in 0..2 {
        let t0 = Instant::now();
        for _ in 0..50 {
            probe.send_to(br#"{"type":"cluster_probe"}"#, bcast(l.port)).unwrap();
        }
        let got = recv_until(&probe, t0 + Duration::from_millis(1000));
        let replies = got.iter().filter(|p| p.is("cluster_announce", port)).count();
        assert!(replies >= 1, "round {round}: no reply at all to 50 probes; logs:\n{}", a.log_text());
        assert!(replies <= 6, "round {round}: {replies} replies to 50 probes within 1 s (at most 5 a second)");
        // Drain the rest, then leave the limiter a fresh second before the next burst.
        let _ = recv_until(&probe, t0 + Duration::from_millis(2500));
    }
    a.assert_alive();
}

// ---------------------------------------------------------------------------
// Targets: MASTER_SERVER, explicit address:port, disabled
// ---------------------------------------------------------------------------

#[test]
fn master_server_receives_packets_by_unicast() {
    let master = Listener::plain(lo(0));
    // Broadcasts go to another port, held by a listener of this test.
    let elsewhere = Listener::shared(0);
    let disc_port = free_udp_port();
    let mut a = disc_agent(disc_port, &format!("127.255.255.255:{}", elsewhere.port))
        .env("MASTER_SERVER", &format!("127.0.0.1:{}", master.port))
        .start();
    let port = a.port;
    let p = master
        .wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("MASTER_SERVER got no announce: {}\nlogs:\n{}", master.summary(), a.log_text()));
    check_announce(p.j(), port, &[]);
    let n = master.wait_n(1, Duration::from_secs(10), |p| p.is("cluster_stats", port));
    assert!(n >= 1, "MASTER_SERVER got no cluster_stats: {}", master.summary());
    let n = master.wait_n(3, Duration::from_secs(10), |p| p.is("cluster_announce", port));
    assert!(n >= 3, "MASTER_SERVER got {n} announces: {}", master.summary());
    // The broadcast target is still used too.
    assert!(
        elsewhere.wait(Duration::from_secs(5), |p| p.is("cluster_announce", port)).is_some(),
        "DISCOVERY_ADDRESSES target got nothing: {}",
        elsewhere.summary()
    );
    a.assert_alive();
}

#[test]
fn explicit_address_and_port_targets_are_used() {
    // Two explicit targets, neither on the discovery port.
    let unicast = Listener::plain(lo(0));
    let broadcast = Listener::shared(0);
    let on_disc_port = Listener::shared(0);
    let mut a =
        disc_agent(on_disc_port.port, &format!("127.0.0.1:{},127.255.255.255:{}", unicast.port, broadcast.port))
            .start();
    let port = a.port;
    for (name, l) in [("127.0.0.1:port", &unicast), ("127.255.255.255:port", &broadcast)] {
        let n = l.wait_n(2, Duration::from_secs(10), |p| p.is("cluster_announce", port));
        assert!(n >= 2, "target {name} got {n} announces: {}\nlogs:\n{}", l.summary(), a.log_text());
        let p = l.wait(Duration::ZERO, |p| p.is("cluster_announce", port)).unwrap();
        check_announce(p.j(), port, &[]);
    }
    // The port given in the entry wins: nothing is sent to DISCOVERY_PORT itself.
    let stray = on_disc_port.count(|p| p.port() == Some(port as u64));
    assert_eq!(
        stray,
        0,
        "packets sent to DISCOVERY_PORT although the targets name other ports: {}",
        on_disc_port.summary()
    );
    a.assert_alive();
}

#[test]
fn discovery_disabled_sends_nothing_and_answers_no_probe() {
    let l = Listener::shared(0);
    let mut a = common::agent()
        .env("DISCOVERY_ENABLED", "false")
        .env("DISCOVERY_PORT", &l.port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("ANNOUNCE_INTERVAL", "300")
        .env("STATS_INTERVAL", "400")
        .start();
    let probe = prober();
    probe.send_to(br#"{"type":"cluster_probe"}"#, bcast(l.port)).unwrap();
    let replies = recv_until(&probe, Instant::now() + Duration::from_millis(2000));
    std::thread::sleep(Duration::from_millis(200));
    let from_agent: Vec<Pkt> = l.all().into_iter().filter(|p| p.kind() != Some("cluster_probe")).collect();
    assert!(from_agent.is_empty(), "DISCOVERY_ENABLED=false but packets arrived: {from_agent:?}");
    assert!(replies.is_empty(), "DISCOVERY_ENABLED=false but the probe was answered: {replies:?}");
    a.assert_alive();
    let r = a.get("/stats");
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// Two agents on one discovery port
// ---------------------------------------------------------------------------

#[test]
fn two_agents_share_one_discovery_port() {
    let l = Listener::shared(0);
    let mut a1 = disc_agent(l.port, "127.255.255.255").start();
    let mut a2 = disc_agent(l.port, "127.255.255.255").start();
    assert_ne!(a1.port, a2.port);
    for a in [&a1, &a2] {
        let n = l.wait_n(2, Duration::from_secs(10), |p| p.is("cluster_announce", a.port));
        assert!(n >= 2, "agent on {} announced {n} times: {}\nlogs:\n{}", a.port, l.summary(), a.log_text());
    }
    for a in [&a1, &a2] {
        assert!(
            !a.log_text().contains("cannot bind UDP port"),
            "agent on {} could not share the discovery port:\n{}",
            a.port,
            a.log_text()
        );
    }
    // One broadcast probe: both answer.
    let probe = prober();
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        probe.send_to(br#"{"type":"cluster_probe"}"#, bcast(l.port)).unwrap();
        for p in recv_until(&probe, Instant::now() + Duration::from_millis(1500)) {
            if p.kind() == Some("cluster_announce") {
                if let Some(port) = p.port() {
                    answered.insert(port as u16);
                }
            }
        }
        if answered.contains(&a1.port) && answered.contains(&a2.port) {
            break;
        }
    }
    assert!(answered.contains(&a1.port), "agent on {} did not answer the probe; answered: {answered:?}", a1.port);
    assert!(answered.contains(&a2.port), "agent on {} did not answer the probe; answered: {answered:?}", a2.port);
    a1.assert_alive();
    a2.assert_alive();
}

// ---------------------------------------------------------------------------
// Leave on shutdown
// ---------------------------------------------------------------------------

#[test]
fn cluster_leave_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let l = Listener::shared(0);
        let mut a = disc_agent(l.port, "127.255.255.255").start();
        let port = a.port;
        let ann = l
            .wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
            .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
        a.signal(sig);
        let st = a.wait_exit(Duration::from_secs(40));
        let st = st.unwrap_or_else(|| panic!("agent did not exit after SIG{sig}; logs:\n{}", a.log_text()));
        assert_eq!(st.code(), Some(0), "exit status after SIG{sig}: {st:?}; logs:\n{}", a.log_text());
        let leave = l
            .wait(Duration::from_secs(3), |p| p.is("cluster_leave", port))
            .unwrap_or_else(|| panic!("no cluster_leave after SIG{sig}: {}\nlogs:\n{}", l.summary(), a.log_text()));
        let v = leave.j();
        assert_eq!(v["hostname"], ann.j()["hostname"], "{v}");
        assert!(v["hostname"].is_string(), "{v}");
        assert!(v["port"].is_u64(), "{v}");
        let ts = v["timestamp"].as_u64().unwrap_or_else(|| panic!("timestamp not an integer: {v}"));
        assert!(ts.abs_diff(now_ms()) < 30_000, "{v}");
        // Nothing after the leave.
        std::thread::sleep(Duration::from_millis(700));
        let after = l.count(|p| p.at > leave.at && p.port() == Some(port as u64));
        assert_eq!(after, 0, "packets after cluster_leave: {}", l.summary());
    }
}

// ---------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------

/// A small deterministic generator for random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn garbage(i: usize, rng: &mut Rng) -> Vec<u8> {
    match i % 14 {
        0 => {
            let n = (rng.next() % 1400) as usize;
            rng.bytes(n)
        }
        1 => br#"{"type":"cluster_probe""#.to_vec(),
        2 => br#"{"type":"cluster_probe"#.to_vec(),
        3 => b"{not json at all".to_vec(),
        4 => br#"{"type":"cluster_announce","hostname":"intruder","platform":"linux","arch":"x64","cpus":1,"totalMemory":1,"port":1,"timestamp":0}"#.to_vec(),
        5 => br#"{"type":"cluster_stats","hostname":"intruder","port":1,"stats":{},"timestamp":0}"#.to_vec(),
        6 => br#"{"type":"cluster_leave","hostname":"intruder","port":1}"#.to_vec(),
        7 => br#"{"type":12345}"#.to_vec(),
        8 => br#"["cluster_probe"]"#.to_vec(),
        9 => {
            // 60 KB of random bytes.
            rng.bytes(60 * 1024)
        }
        10 => {
            // 60 KB of valid JSON of another type.
            let mut s = String::from(r#"{"type":"something_else","pad":""#);
            s.push_str(&"x".repeat(60 * 1024));
            s.push_str(r#""}"#);
            s.into_bytes()
        }
        11 => {
            // Deeply nested JSON.
            let mut s = "[".repeat(20_000);
            s.push_str(&"]".repeat(20_000));
            s.into_bytes()
        }
        12 => Vec::new(),
        _ => vec![0xff, 0xfe, b'{', b'"', 0x80, 0x00, b'}'],
    }
}

#[test]
fn garbage_packets_leave_the_agent_announcing() {
    // The agent is alone on its discovery port (so unicast garbage reaches it); its
    // announces go to another port, where this test listens.
    let l = Listener::shared(0);
    let disc_port = free_udp_port();
    let mut a = disc_agent(disc_port, &format!("127.255.255.255:{}", l.port)).start();
    let port = a.port;
    l.wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
    assert!(!a.log_text().contains("cannot bind UDP port"), "agent could not bind {disc_port}:\n{}", a.log_text());

    let sender = prober();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let mut errors = 0usize;
    for i in 0..2000 {
        let pkt = garbage(i, &mut rng);
        if sender.send_to(&pkt, lo(disc_port)).is_err() {
            errors += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(errors < 2000, "no garbage packet could be sent");
    // (Whether garbage is answered is checked shape by shape in `only_real_probes_are_answered`.)
    let _ = recv_until(&sender, Instant::now() + Duration::from_millis(300));

    let after = Instant::now();
    let n = l.wait_n(3, Duration::from_secs(10), |p| p.at > after && p.is("cluster_announce", port));
    assert!(n >= 3, "{n} announces after the garbage; logs:\n{}", a.log_text());
    let p = l.wait(Duration::ZERO, |p| p.at > after && p.is("cluster_announce", port)).unwrap();
    check_announce(p.j(), port, &[]);
    a.assert_alive();

    // It still hears and answers a real probe.
    std::thread::sleep(Duration::from_millis(1100));
    let probe = prober();
    let mut answered = false;
    for _ in 0..3 {
        probe.send_to(br#"{"type":"cluster_probe"}"#, lo(disc_port)).unwrap();
        if recv_until(&probe, Instant::now() + Duration::from_millis(1500))
            .iter()
            .any(|p| p.is("cluster_announce", port))
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "no probe reply after the garbage; logs:\n{}", a.log_text());
    a.assert_alive();
}

/// Packets that are not `{"type":"cluster_probe"}` (as a JSON object) get no reply.
#[test]
fn only_real_probes_are_answered() {
    let l = Listener::shared(0);
    let disc_port = free_udp_port();
    let mut a = disc_agent(disc_port, &format!("127.255.255.255:{}", l.port)).start();
    let port = a.port;
    l.wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
    let shapes: [&[u8]; 16] = [
        br#"{"type":"cluster_probe""#,
        br#"{"type":"cluster_probe"#,
        br#"{"type":"cluster_probe"}xyz"#,
        br#"["cluster_probe"]"#,
        br#""cluster_probe""#,
        b"cluster_probe",
        br#"{"type":"CLUSTER_PROBE"}"#,
        br#"{"type":"cluster_probe "}"#,
        br#"{"type":["cluster_probe"]}"#,
        br#"{"kind":"cluster_probe"}"#,
        br#"{"type":null}"#,
        br#"{"type":12345}"#,
        br#"{"type":"cluster_announce","hostname":"x","port":1}"#,
        br#"{"type":"cluster_leave","hostname":"x","port":1}"#,
        b"",
        b"\xff\xfe{\"type\":\"cluster_probe\"}",
    ];
    // Each shape from its own socket, so a reply tells which shape was taken for a probe.
    // 16 shapes: at most 5 replies a second would still show that some were answered.
    std::thread::sleep(Duration::from_millis(1100));
    let socks: Vec<UdpSocket> = shapes.iter().map(|_| prober()).collect();
    for (s, shape) in socks.iter().zip(shapes) {
        s.send_to(shape, lo(disc_port)).unwrap();
    }
    let until = Instant::now() + Duration::from_millis(1500);
    let mut answered = Vec::new();
    for (s, shape) in socks.iter().zip(shapes) {
        if recv_until(s, until).iter().any(|p| p.kind() == Some("cluster_announce")) {
            answered.push(String::from_utf8_lossy(shape).into_owned());
        }
    }
    // The real probe is answered (so silence above means the shapes were ignored).
    std::thread::sleep(Duration::from_millis(1100));
    let real = prober();
    let mut ok = false;
    for _ in 0..3 {
        real.send_to(br#"{"type":"cluster_probe"}"#, lo(disc_port)).unwrap();
        if recv_until(&real, Instant::now() + Duration::from_millis(1500))
            .iter()
            .any(|p| p.is("cluster_announce", port))
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the real probe was not answered; logs:\n{}", a.log_text());
    assert!(answered.is_empty(), "packets that are not a cluster_probe object were answered as probes: {answered:?}");
    a.assert_alive();
}

/// ~60 KB of valid, nested JSON: what a parse into a tree of values pays for by the byte.
fn nested_json(len: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"type":"cluster_probe","pad":["#);
    let item = r#"{"a":[1,{"b":[true,null,{"c":[2.5,"d",{"e":[]}]}]}]},"#;
    while s.len() + item.len() + 2 < len {
        s.push_str(item);
    }
    s.pop();
    s.push_str("]}");
    s.into_bytes()
}

/// CPU time the process `pid` has used so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields 14 and 15 (utime, stime), counted past the command name's closing parenthesis.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Sends to `127.0.0.1:port`, from its own thread, ~500 large datagrams a second and, from
/// `prober`, one real probe after every 25th; stops when told, after `max` at the latest.
struct Flood {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(usize, usize)>>,
}

impl Flood {
    fn start(port: u16, prober: UdpSocket, max: Duration) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let (big, sender, until) = (nested_json(60_000), prober.try_clone().unwrap(), Instant::now() + max);
            let flood = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let (mut sent, start) = (0u32, Instant::now());
            while !s.load(Ordering::SeqCst) && Instant::now() < until && sent < 50_000 {
                let _ = flood.send_to(&big, lo(port));
                sent += 1;
                if sent % 25 == 0 {
                    let _ = sender.send_to(br#"{"type":"cluster_probe"}"#, lo(port));
                }
                // 500 a second, on a schedule (a late send is not made up for by a burst).
                let next = start + Duration::from_millis(2) * sent;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let sent = sent as usize;
            // Replies to the large datagrams (which claim to be probes).
            let answered = recv_until(&flood, Instant::now() + Duration::from_millis(600)).len();
            (sent, answered)
        });
        Flood { stop, handle: Some(handle) }
    }

    /// Stops the flood; how many large datagrams it sent, and how many replies they got.
    fn stop(&mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().map_or((0, 0), |h| h.join().unwrap())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A flood of large nested-JSON datagrams (with real probes among them) costs the agent
/// little CPU, does not starve its announcements, is answered at no more than 5 replies a
/// second, and does not hold up a SIGTERM.
#[test]
fn a_flood_of_large_datagrams_neither_starves_announces_nor_delays_shutdown() {
    // The agent alone on its discovery port (so the unicast flood reaches it); its announces
    // go to another port, where this test listens.
    let l = Listener::shared(0);
    let disc_port = free_udp_port();
    let mut a = disc_agent(disc_port, &format!("127.255.255.255:{}", l.port)).env("ANNOUNCE_INTERVAL", "200").start();
    let port = a.port;
    l.wait(Duration::from_secs(10), |p| p.is("cluster_announce", port))
        .unwrap_or_else(|| panic!("no announce heard; logs:\n{}", a.log_text()));
    let pid = a.agent_pid();
    let prober = prober();
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    let mut flood = Flood::start(disc_port, prober.try_clone().unwrap(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(10));
    let (cpu, t1) = (cpu_time(pid) - cpu0, Instant::now());
    let rss_kib = common::proc_status_value(pid, "VmRSS").unwrap_or(0);
    let announces = l.count(|p| p.at > t0 && p.at <= t1 && p.is("cluster_announce", port));
    let expected = (t1 - t0).as_millis() as usize / 200;
    // SIGTERM while the flood goes on.
    let stopping = Instant::now();
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(30));
    let took = stopping.elapsed();
    let (sent, answered_big) = flood.stop();
    let replies = recv_until(&prober, Instant::now() + Duration::from_millis(600))
        .iter()
        .filter(|p| p.is("cluster_announce", port))
        .count();
    let secs = t0.elapsed().as_secs() as usize + 1;
    let figures = format!(
        "{announces} announces ({expected} due) and CPU {cpu:?} in {:?} of flood, {replies} replies \
         to {} probes, exit {took:?} after SIGTERM ({sent} datagrams of 60 KB in all)",
        t1 - t0,
        sent / 25
    );
    eprintln!("flood: {figures}");
    let st = st.unwrap_or_else(|| panic!("no exit within 30 s of SIGTERM: {figures}; logs:\n{}", a.log_text()));
    assert_eq!(st.code(), Some(0), "{st:?}; logs:\n{}", a.log_text());
    assert!(announces >= expected / 2, "announces starved: {figures}; logs:\n{}", a.log_text());
    // A full core would be all of the flood's time.
    assert!(cpu < (t1 - t0) / 2, "too much CPU: {figures}");
    assert!(took <= Duration::from_secs(5), "slow to stop: {figures}");
    assert!(rss_kib < 64 * 1024, "agent RSS {rss_kib} KiB after 10 s of flood (bound: 64 MiB)");
    // The real probes were answered, at most 5 a second in all.
    assert!(replies >= 1, "no probe among the flood was answered: {figures}; logs:\n{}", a.log_text());
    assert!(replies <= 5 * secs, "over 5 probe replies a second: {figures}");
    assert_eq!(answered_big, 0, "datagrams of 60 KB were answered as probes (a probe is tiny)");
}

// ---------------------------------------------------------------------------
// `codara-agent discover`
// ---------------------------------------------------------------------------

fn discover_cmd(disc_port: u16, cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("discover")
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        .env("DISCOVERY_PORT", disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Two agents on one fresh discovery port (default intervals: they are found by probing).
fn two_agents(disc_port: u16) -> (common::Agent, common::Agent) {
    let mk = || {
        common::agent()
            .env("DISCOVERY_ENABLED", "true")
            .env("DISCOVERY_PORT", &disc_port.to_string())
            .env("DISCOVERY_ADDRESSES", "127.255.255.255")
            .start()
    };
    (mk(), mk())
}

#[test]
fn discover_json_lists_two_agents() {
    let reserve = Listener::shared(0);
    let disc_port = reserve.port;
    let (mut a1, mut a2) = two_agents(disc_port);
    let cwd = common::TempDir::new("discover-json");
    let out =
        common::run_binary(discover_cmd(disc_port, cwd.path(), &["--timeout", "2", "--json"]), Duration::from_secs(60));
    let st =
        out.status.unwrap_or_else(|| panic!("discover did not exit; stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr));
    assert!(st.success(), "discover failed: {st:?}\nstdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", out.stdout, out.stderr));
    let list = v.as_array().unwrap_or_else(|| panic!("not a JSON array: {v}"));
    assert_eq!(list.len(), 2, "expected exactly the two agents: {v:#}");
    let host = a1.get("/health").json()["hostname"].clone();
    for a in [&a1, &a2] {
        let e = list
            .iter()
            .find(|e| e["address"].as_str().is_some_and(|s| s.ends_with(&format!(":{}", a.port))))
            .unwrap_or_else(|| panic!("agent on HTTP port {} not listed: {v:#}", a.port));
        for f in
            ["hostname", "address", "platform", "arch", "cpus", "stats", "answeredProbe", "left", "secondsSinceSeen"]
        {
            assert!(e.get(f).is_some(), "entry lacks {f:?}: {e}");
        }
        let addr: SocketAddr = e["address"].as_str().unwrap().parse().unwrap_or_else(|_| panic!("address: {e}"));
        assert!(addr.ip().is_loopback(), "{e}");
        assert_eq!(addr.port(), a.port, "{e}");
        assert_eq!(e["hostname"], host, "{e}");
        assert_eq!(e["platform"], "linux", "{e}");
        assert_eq!(e["arch"], node_arch(), "{e}");
        assert!(e["cpus"].as_u64().is_some_and(|c| c >= 1), "{e}");
        assert_eq!(e["answeredProbe"], true, "{e}");
        assert_eq!(e["left"], false, "{e}");
        assert!(e["secondsSinceSeen"].as_f64().is_some_and(|s| (0.0..=60.0).contains(&s)), "{e}");
        let stats = &e["stats"];
        assert!(stats.is_object(), "no stats although the probe reply carries them: {e}");
        for f in STATS_FIELDS {
            assert!(stats.get(f).is_some(), "stats lack {f:?}: {e}");
        }
    }
    a1.assert_alive();
    a2.assert_alive();
    drop(reserve);
}

#[test]
fn discover_table_lists_two_agents() {
    let reserve = Listener::shared(0);
    let disc_port = reserve.port;
    let (mut a1, mut a2) = two_agents(disc_port);
    let cwd = common::TempDir::new("discover-table");
    let out = common::run_binary(discover_cmd(disc_port, cwd.path(), &["--timeout", "2"]), Duration::from_secs(60));
    let st =
        out.status.unwrap_or_else(|| panic!("discover did not exit; stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr));
    assert!(st.success(), "discover failed: {st:?}\nstdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "expected a header and two rows:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let header = lines[0];
    for col in ["HOST", "ADDRESS"] {
        assert!(header.contains(col), "header lacks {col}: {header:?}");
    }
    for a in [&a1, &a2] {
        let want = format!("127.0.0.1:{}", a.port);
        let rows: Vec<&&str> = lines[1..].iter().filter(|l| l.split_whitespace().any(|w| w == want)).collect();
        assert_eq!(rows.len(), 1, "expected one row with {want}:\n{}", out.stdout);
        assert!(rows[0].contains("linux"), "row lacks the platform: {:?}", rows[0]);
    }
    a1.assert_alive();
    a2.assert_alive();
    drop(reserve);
}

/// Many agents on one discovery port answer one probe together: `discover --timeout 1`
/// lists every one of them.
#[test]
fn discover_lists_a_fleet_of_40_agents_on_one_port() {
    let reserve = Listener::shared(0);
    let disc_port = reserve.port;
    let agents: Vec<common::Agent> = (0..40)
        .map(|_| {
            common::agent()
                .env("DISCOVERY_ENABLED", "true")
                .env("DISCOVERY_PORT", &disc_port.to_string())
                .env("DISCOVERY_ADDRESSES", "127.255.255.255")
                // Found by the probe, not by what they broadcast anyway.
                .env("ANNOUNCE_INTERVAL", "3600000")
                .env("STATS_INTERVAL", "3600000")
                .env("MAX_CONCURRENT_TASKS", "1")
                .start()
        })
        .collect();
    // Let the start-up announcements (each heard by all 40) settle.
    std::thread::sleep(Duration::from_secs(1));
    let cwd = common::TempDir::new("discover-fleet");
    let out =
        common::run_binary(discover_cmd(disc_port, cwd.path(), &["--timeout", "1", "--json"]), Duration::from_secs(60));
    let st =
        out.status.unwrap_or_else(|| panic!("discover did not exit; stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr));
    assert!(st.success(), "discover failed: {st:?}\nstdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", out.stdout, out.stderr));
    let answered: BTreeSet<u16> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"))
        .iter()
        .filter(|e| e["answeredProbe"] == true)
        .filter_map(|e| e["address"].as_str()?.parse::<SocketAddr>().ok().map(|a| a.port()))
        .collect();
    let missing: Vec<u16> = agents.iter().map(|a| a.port).filter(|p| !answered.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} agents did not answer within 1 s: {missing:?}\nstderr:\n{}",
        missing.len(),
        agents.len(),
        out.stderr
    );
    drop(reserve);
}

// ---------------------------------------------------------------------------
// Across two network namespaces joined by a veth pair
// ---------------------------------------------------------------------------

/// Deletes the namespaces it holds (which also removes the veth pair inside them).
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `ip ARGS`; the error text when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    match Command::new("ip").args(args).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            Err(format!("`ip {}` failed ({}): {}", args.join(" "), o.status, String::from_utf8_lossy(&o.stderr).trim()))
        }
        Err(e) => Err(format!("cannot run `ip {}`: {e}", args.join(" "))),
    }
}

#[test]
fn announce_crosses_a_veth_pair_between_namespaces() {
    const TEST: &str = "announce_crosses_a_veth_pair_between_namespaces";
    static N: AtomicUsize = AtomicUsize::new(0);
    let tag = format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let (ns_a, ns_b) = (format!("cdr-a-{tag}"), format!("cdr-b-{tag}"));
    let mut guard = Netns(Vec::new());
    if let Err(e) = ip(&["netns", "add", &ns_a]) {
        common::skip_or_fail(TEST, &format!("network namespaces unavailable: {e}"));
        return;
    }
    guard.0.push(ns_a.clone());
    if let Err(e) = ip(&["netns", "add", &ns_b]) {
        common::skip_or_fail(TEST, &format!("cannot add a second network namespace: {e}"));
        return;
    }
    guard.0.push(ns_b.clone());
    let x = 20 + std::process::id() % 200;
    let (addr_a, addr_b, brd) = (format!("10.213.{x}.1"), format!("10.213.{x}.2"), format!("10.213.{x}.255"));
    // Everything below happens inside the two new namespaces only.
    let setup = [
        vec!["-n", &ns_a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &ns_b],
        vec!["-n", &ns_a, "link", "set", "lo", "up"],
        vec!["-n", &ns_b, "link", "set", "lo", "up"],
    ];
    for args in &setup {
        if let Err(e) = ip(args) {
            common::skip_or_fail(TEST, &format!("cannot create a veth pair: {e}"));
            return;
        }
    }
    let cidr_a = format!("{addr_a}/24");
    let cidr_b = format!("{addr_b}/24");
    ip(&["-n", &ns_a, "addr", "add", &cidr_a, "broadcast", &brd, "dev", "veth-a"]).unwrap();
    ip(&["-n", &ns_b, "addr", "add", &cidr_b, "broadcast", &brd, "dev", "veth-b"]).unwrap();
    ip(&["-n", &ns_a, "link", "set", "veth-a", "up"]).unwrap();
    ip(&["-n", &ns_b, "link", "set", "veth-b", "up"]).unwrap();

    let disc_port = 40000 + (std::process::id() % 1000) as u16 * 10 + 7;
    // The agent in A, broadcasting on the private subnet only.
    let dir = common::TempDir::new("netns-agent");
    let data = dir.path().join("data");
    let mut ip_exec = Command::new("ip");
    ip_exec.args(["netns", "exec", &ns_a, BIN]);
    let mut cmd = common::wrapped_command(ip_exec, dir.path(), &data);
    // Discovery on, to the private subnet's broadcast address only.
    cmd.env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", &brd)
        .env("ANNOUNCE_INTERVAL", "300")
        .env("STATS_INTERVAL", "400");
    // Dropped before `guard` (declared later): the agent is killed, then the namespaces go.
    let mut agent = common::spawn_agent(cmd, dir, data);
    let http_port = agent.port;

    let cwd = common::TempDir::new("netns-discover");
    let run_in_b = |targets: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns_b, BIN, "discover", "--timeout", "3", "--json"])
            .current_dir(cwd.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
            .env("DISCOVERY_PORT", disc_port.to_string())
            .env("DISCOVERY_ADDRESSES", targets)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = common::run_binary(c, Duration::from_secs(60));
        let st = out.status.unwrap_or_else(|| panic!("discover in B did not exit: {}\n{}", out.stdout, out.stderr));
        assert!(st.success(), "discover in B failed: {st:?}\n{}\n{}", out.stdout, out.stderr);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", out.stdout, out.stderr));
        v
    };
    let want = format!("{addr_a}:{http_port}");
    // 1. Passive: B's probes stay on B's own loopback, so the agent is heard only through the
    //    announces it broadcast from A across the veth pair.
    let v = run_in_b(&format!("127.0.0.1:{}", disc_port + 1));
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    let e = list.iter().find(|e| e["address"] == want.as_str()).unwrap_or_else(|| {
        panic!("announce from {want} not heard in the other namespace: {v:#}\nagent logs:\n{}", agent.log_text())
    });
    assert_eq!(e["platform"], "linux", "{e}");
    assert_eq!(e["answeredProbe"], false, "{e}");
    // 2. A broadcast probe from B crosses too, and A answers it.
    let v = run_in_b(&brd);
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    let e = list
        .iter()
        .find(|e| e["address"] == want.as_str())
        .unwrap_or_else(|| panic!("{want} not heard when probing {brd}: {v:#}"));
    assert_eq!(e["answeredProbe"], true, "{e}");
    assert!(agent.child.try_wait().unwrap().is_none(), "agent in A exited: {}", agent.log_text());
    agent.signal("TERM");
    let _ = agent.wait_exit(Duration::from_secs(30));
    drop(agent);
    drop(guard);
}

/// A MASTER_SERVER whose name lookup hangs (DNS that never answers) must not delay the
/// announcements to the other targets, nor the shutdown. Runs in a network and mount
/// namespace of its own: only loopback, and /etc/resolv.conf pointing at a local UDP socket
/// that swallows every query.
#[test]
fn a_hanging_master_server_lookup_delays_neither_announces_nor_shutdown() {
    if !common::unshare_works(
        "a_hanging_master_server_lookup_delays_neither_announces_nor_shutdown",
        &["--net", "--mount", "true"],
    ) {
        return;
    }
    let dir = common::TempDir::new("dns-hang");
    let script = r#"
set -e
ip link set lo up
printf 'nameserver 127.0.0.1\noptions timeout:5 attempts:4\n' > "$DIR/resolv.conf"
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 53))
s.settimeout(30)
try:
    while True: s.recvfrom(4096)
except Exception: pass
' &
HOLE=$!
python3 -c '
import socket, sys, time, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 4731)); s.settimeout(12)
t0 = time.time()
try:
    while True:
        d, a = s.recvfrom(65536)
        print("%s %.2f" % (json.loads(d).get("type"), time.time() - t0), flush=True)
except Exception: pass
' &
LISTEN=$!
sleep 0.3
"$BIN" > "$DIR/agent.log" 2>&1 &
AGENT=$!
sleep 3
T0=$(date +%s%N)
kill -TERM $AGENT
set +e
wait $AGENT
RC=$?
T1=$(date +%s%N)
echo "exit $RC after $(( (T1 - T0) / 1000000 )) ms"
kill $HOLE $LISTEN 2>/dev/null
"#;
    let out = Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DIR", dir.path())
        .env("BIN", BIN)
        .env("CLUSTER_SECRET", common::SECRET)
        .env("CLUSTER_PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DATA_DIR", dir.path().join("data"))
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", "4731")
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("MASTER_SERVER", "master.invalid:4731")
        .env("ANNOUNCE_INTERVAL", "1000")
        .env("SHUTDOWN_TIMEOUT", "1000")
        .env("KILL_GRACE", "1000")
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let ctx = format!("stdout:\n{text}\nstderr:\n{}\nagent log:\n{log}", String::from_utf8_lossy(&out.stderr));
    // The first announcement comes at once, and more follow while the lookup hangs.
    let announces: Vec<f64> =
        text.lines().filter_map(|l| l.strip_prefix("cluster_announce ").and_then(|t| t.parse().ok())).collect();
    assert!(announces.first().is_some_and(|t| *t < 2.0), "no announcement within 2 s: {ctx}");
    assert!(announces.len() >= 2, "announcements stopped while MASTER_SERVER was being looked up: {ctx}");
    assert!(text.lines().any(|l| l.starts_with("cluster_leave ")), "no cluster_leave: {ctx}");
    let stop_ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("exit 0 after ").and_then(|r| r.strip_suffix(" ms")).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no clean exit: {ctx}"));
    assert!(stop_ms < 8000, "stopping took {stop_ms} ms with SHUTDOWN_TIMEOUT=1000: {ctx}");
}
