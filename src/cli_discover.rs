//! `codara-agent discover`: probes the discovery addresses, listens, and lists the agents heard.
//! Agents answer the probe by unicast, to the port it was sent from: a port of discover's own,
//! so the replies do not land in the sockets of agents sharing `DISCOVERY_PORT` on this host.
//! Announcements and stats broadcast on `DISCOVERY_PORT` are heard too (so agents that do not
//! answer probes, like the old Node agent, show up).
//!
//! A fleet answers one probe together (spread over up to 0.5 s, see `discovery::REPLY_SPREAD`):
//! both sockets get a receive buffer of `RECV_BUFFER` and are read in a tight loop as soon as
//! `poll` says so, so a thousand replies fit and are taken as fast as they come.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use serde::Serialize;

use crate::config::{Config, SecretSource};
use crate::discovery::bind_shared;
use crate::discovery_sig::{self, SigningKey, Verdict};
use crate::protocol::{self, Announce, Stats, StatsPacket};

/// One agent heard.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Heard {
    pub hostname: String,
    /// Address the packets came from, with the agent's HTTP port.
    pub address: String,
    pub platform: Option<String>,
    pub arch: Option<String>,
    pub cpus: Option<usize>,
    pub stats: Option<Stats>,
    pub answered_probe: bool,
    pub left: bool,
    pub seconds_since_seen: f64,
    /// `verified`, `unsigned`, `BAD SIGNATURE`, or `signed (not checked)` without the secret.
    /// Packets of one agent with different verdicts or source addresses are listed apart (an
    /// impostor sending in a real agent's name shows as its own `BAD SIGNATURE` row).
    pub signature: &'static str,
    /// Why the signature is bad (the latest reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_problem: Option<String>,
    #[serde(skip)]
    seen: Option<Instant>,
}

pub const VERIFIED: &str = "verified";
pub const UNSIGNED: &str = "unsigned";
pub const BAD: &str = "BAD SIGNATURE";
pub const UNCHECKED: &str = "signed (not checked)";

/// The key to check signatures with: from `CLUSTER_SECRET`, else from the secret file in
/// `DATA_DIR` when there is one (discover run on an agent's host). `None`: no secret here.
pub fn verify_key(cfg: &Config) -> Option<SigningKey> {
    if !cfg.secret.is_empty() {
        return Some(SigningKey::from_secret(&cfg.secret));
    }
    let SecretSource::File { path, .. } = &cfg.secret_source else { return None };
    let secret = std::fs::read_to_string(path).ok()?;
    let secret = secret.trim();
    crate::secret::check_secret(secret).ok()?;
    Some(SigningKey::from_secret(secret))
}

/// Receive buffer asked for on both sockets. A reply (~700 bytes) takes 1-2 KiB of the
/// kernel's accounting, so this holds the replies of a few thousand agents even if discover
/// falls behind for a moment. Beyond `net.core.rmem_max` only as root (SO_RCVBUFFORCE).
pub const RECV_BUFFER: usize = 4 << 20;
/// Datagrams read from one socket before the loop looks at the clock and the other socket.
const DRAIN: usize = 256;
/// Probes are sent again this often while discover listens (a probe or its reply may be lost).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// By host name, port, signature verdict and source address: a signature covers a packet,
/// not the address it came from, so a fresh signed packet sent again by another host (within
/// the window) shows as a row of its own instead of moving the agent's row to that host.
type HeardMap = BTreeMap<(String, u16, &'static str, IpAddr), Heard>;

/// Listens for `timeout`, probing every second; returns the agents heard, by host and port
/// (and signature verdict and source address), checking signatures with `key`.
pub fn discover(cfg: &Config, timeout: Duration, key: Option<&SigningKey>) -> Result<Vec<Heard>, String> {
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    probe.set_broadcast(true).map_err(|e| format!("cannot enable broadcast: {e}"))?;
    let passive = match bind_shared(cfg.discovery_port) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("note: cannot listen on UDP port {} ({e}); relying on probe replies", cfg.discovery_port);
            None
        }
    };
    let targets: Vec<SocketAddr> = cfg.discovery_addresses.iter().map(|t| t.addr).collect();
    if targets.is_empty() {
        return Err("DISCOVERY_ADDRESSES is empty: nowhere to send a probe".into());
    }
    // (socket, whether what it receives answers our probe)
    let sockets: Vec<(UdpSocket, bool)> = std::iter::once((probe, true)).chain(passive.map(|s| (s, false))).collect();
    for (s, _) in &sockets {
        grow_recv_buffer(s);
        s.set_nonblocking(true).map_err(|e| format!("cannot make a UDP socket non-blocking: {e}"))?;
    }
    let mut heard = HeardMap::new();
    let deadline = Instant::now() + timeout;
    let mut next_probe = Instant::now();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if Instant::now() >= next_probe {
            send_probe(&sockets[0].0, &targets);
            next_probe = Instant::now() + PROBE_EVERY;
        }
        let wait = deadline.min(next_probe).saturating_duration_since(Instant::now());
        for (i, ready) in readable(&sockets, wait)?.into_iter().enumerate() {
            if ready {
                let (sock, is_probe) = &sockets[i];
                drain(sock, &mut buf, &mut heard, *is_probe, key)?;
            }
        }
    }
    Ok(heard
        .into_values()
        .map(|mut h| {
            h.seconds_since_seen = h.seen.map_or(0.0, |s| (s.elapsed().as_millis() as f64 / 100.0).round() / 10.0);
            h
        })
        .collect())
}

/// Asks for `RECV_BUFFER`: past `net.core.rmem_max` when allowed (root), else as much as
/// the kernel grants. Not fatal: a small fleet fits in the default buffer.
fn grow_recv_buffer(s: &UdpSocket) {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, RECV_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, RECV_BUFFER);
    }
}

fn send_probe(probe: &UdpSocket, targets: &[SocketAddr]) {
    for t in targets {
        if let Err(e) = probe.send_to(br#"{"type":"cluster_probe"}"#, t) {
            eprintln!("note: cannot send a probe to {t}: {e}");
        }
    }
}

/// Waits up to `wait` for any of `sockets` to have a datagram; which ones do.
fn readable(sockets: &[(UdpSocket, bool)], wait: Duration) -> Result<Vec<bool>, String> {
    let mut fds: Vec<PollFd> = sockets.iter().map(|(s, _)| PollFd::new(s, PollFlags::IN)).collect();
    crate::eintr::poll(&mut fds, Some(wait)).map_err(|e| format!("poll failed: {e}"))?;
    Ok(fds.iter().map(|f| !f.revents().is_empty()).collect())
}

/// Reads what `sock` holds, up to `DRAIN` datagrams.
fn drain(
    sock: &UdpSocket,
    buf: &mut [u8],
    heard: &mut HeardMap,
    is_probe_reply: bool,
    key: Option<&SigningKey>,
) -> Result<(), String> {
    for _ in 0..DRAIN {
        match crate::eintr::retry(|| sock.recv_from(buf)) {
            Ok((n, from)) => take(heard, &buf[..n], from, is_probe_reply, key),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("receive failed: {e}")),
        }
    }
    Ok(())
}

/// What the signature check reads of a packet besides its bytes.
#[derive(serde::Deserialize)]
struct SigFields {
    sig: Option<serde::de::IgnoredAny>,
    timestamp: Option<u64>,
}

/// The packet's signature verdict, as a label and a reason.
fn signature(key: Option<&SigningKey>, bytes: &[u8]) -> (&'static str, Option<String>) {
    let Ok(f) = serde_json::from_slice::<SigFields>(bytes) else { return (BAD, Some("not a JSON object".into())) };
    match discovery_sig::verify(key, bytes, f.sig.is_some(), f.timestamp, protocol::now_ms()) {
        Verdict::Verified => (VERIFIED, None),
        Verdict::Unsigned => (UNSIGNED, None),
        Verdict::Unchecked => (UNCHECKED, None),
        Verdict::Bad(why) => (BAD, Some(why)),
    }
}

fn take(heard: &mut HeardMap, bytes: &[u8], from: SocketAddr, is_probe_reply: bool, key: Option<&SigningKey>) {
    let Some(kind) = protocol::packet_type(bytes) else { return };
    let (hostname, port, announce, stats, left) = match kind.as_str() {
        protocol::ANNOUNCE => match serde_json::from_slice::<Announce>(bytes) {
            Ok(a) => (a.hostname.clone(), a.port, Some(a.clone()), a.stats, false),
            Err(_) => return,
        },
        protocol::STATS => match serde_json::from_slice::<StatsPacket>(bytes) {
            Ok(s) => (s.hostname, s.port, None, Some(s.stats), false),
            Err(_) => return,
        },
        protocol::LEAVE => match serde_json::from_slice::<protocol::Leave>(bytes) {
            Ok(l) => (l.hostname, l.port, None, None, true),
            Err(_) => return,
        },
        _ => return,
    };
    let (sig, problem) = signature(key, bytes);
    let h = heard.entry((hostname.clone(), port, sig, from.ip())).or_insert_with(|| Heard {
        hostname,
        address: SocketAddr::new(from.ip(), port).to_string(),
        platform: None,
        arch: None,
        cpus: None,
        stats: None,
        answered_probe: false,
        left: false,
        seconds_since_seen: 0.0,
        signature: sig,
        signature_problem: None,
        seen: None,
    });
    if problem.is_some() {
        h.signature_problem = problem;
    }
    if let Some(a) = announce {
        h.platform = Some(a.platform);
        h.arch = Some(a.arch);
        h.cpus = Some(a.cpus);
    }
    if stats.is_some() {
        h.stats = stats;
    }
    h.answered_probe |= is_probe_reply;
    h.left = left;
    h.seen = Some(Instant::now());
}

/// `s` with control characters and bidirectional-text controls escaped (`\u{1b}`): host
/// names and platforms come from anyone on the network, and must not be able to draw rows of
/// their own, hide a `BAD SIGNATURE` or drive the terminal.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The agents heard as an aligned table.
pub fn table(heard: &[Heard]) -> String {
    let mut rows =
        vec![["HOST", "ADDRESS", "PLATFORM", "CPUS", "MEM%", "LOAD", "FREE SLOTS", "SEEN", "SIGNATURE"]
            .map(String::from)];
    for h in heard {
        let dash = || "-".to_string();
        rows.push([
            printable(&h.hostname),
            h.address.clone(),
            match (&h.platform, &h.arch) {
                (Some(p), Some(a)) => printable(&format!("{p}/{a}")),
                _ => dash(),
            },
            h.cpus.map_or_else(dash, |c| c.to_string()),
            h.stats.as_ref().map_or_else(dash, |s| format!("{:.1}", s.memory_usage_percent)),
            h.stats.as_ref().map_or_else(dash, |s| format!("{:.2}", s.cpu)),
            h.stats.as_ref().map_or_else(dash, |s| format!("{}/{}", s.available_slots, s.max_tasks)),
            if h.left { "left".to_string() } else { format!("{:.1}s ago", h.seconds_since_seen) },
            match &h.signature_problem {
                Some(why) if h.signature == BAD => format!("{BAD}: {why}"),
                _ => h.signature.to_string(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..9).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(hostname: &str, signature: &'static str, problem: Option<&str>) -> Heard {
        Heard {
            hostname: hostname.to_string(),
            address: "127.0.0.1:4000".into(),
            platform: Some("linux".into()),
            arch: Some("x64".into()),
            cpus: Some(2),
            stats: None,
            answered_probe: false,
            left: false,
            seconds_since_seen: 0.5,
            signature,
            signature_problem: problem.map(String::from),
            seen: None,
        }
    }

    /// Names come from anyone on the network: a forged packet must not be able to draw a
    /// `verified` row of its own (a newline), hide its `BAD SIGNATURE` (an escape sequence
    /// concealing the rest of the line, or a carriage return) or drive the terminal.
    #[test]
    fn names_from_the_network_cannot_forge_rows_or_drive_the_terminal() {
        let fake = "evil\r\nbuild-01  10.0.0.66:4000  linux/x64  2  verified\u{1b}[8m\u{9b}2J\u{7}";
        let out = table(&[heard("build-01", VERIFIED, None), heard(fake, BAD, Some("the signature does not match"))]);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        let bad = out.lines().find(|l| l.starts_with("evil")).unwrap_or_else(|| panic!("{out}"));
        assert!(bad.ends_with("BAD SIGNATURE: the signature does not match"), "{bad}");
        assert!(out.lines().filter(|l| l.ends_with("verified")).count() == 1, "{out}");
    }
}
