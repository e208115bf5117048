//! `codara-agent discover`: probes the discovery addresses, listens, and lists the agents heard.
//! Agents answer the probe by unicast; announcements and stats broadcast on `DISCOVERY_PORT`
//! are heard too (so agents that do not answer probes, like the old Node agent, show up).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::discovery::bind_shared;
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
    #[serde(skip)]
    seen: Option<Instant>,
}

/// Listens for `timeout`, probing every second; returns the agents heard, by host and port.
pub fn discover(cfg: &Config, timeout: Duration) -> Result<Vec<Heard>, String> {
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
    let mut heard: BTreeMap<(String, u16), Heard> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    let mut next_probe = Instant::now();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if Instant::now() >= next_probe {
            for t in &targets {
                if let Err(e) = probe.send_to(br#"{"type":"cluster_probe"}"#, t) {
                    eprintln!("note: cannot send a probe to {t}: {e}");
                }
            }
            next_probe = Instant::now() + Duration::from_secs(1);
        }
        for (sock, is_probe) in [(Some(&probe), true), (passive.as_ref(), false)] {
            let Some(sock) = sock else { continue };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => take(&mut heard, &buf[..n], from, is_probe),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => return Err(format!("receive failed: {e}")),
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

fn take(heard: &mut BTreeMap<(String, u16), Heard>, bytes: &[u8], from: SocketAddr, is_probe_reply: bool) {
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
    let h = heard.entry((hostname.clone(), port)).or_insert_with(|| Heard {
        hostname,
        address: SocketAddr::new(from.ip(), port).to_string(),
        platform: None,
        arch: None,
        cpus: None,
        stats: None,
        answered_probe: false,
        left: false,
        seconds_since_seen: 0.0,
        seen: None,
    });
    h.address = SocketAddr::new(from.ip(), port).to_string();
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

/// The agents heard as an aligned table.
pub fn table(heard: &[Heard]) -> String {
    let mut rows =
        vec![["HOST", "ADDRESS", "PLATFORM", "CPUS", "MEM%", "LOAD", "FREE SLOTS", "SEEN"].map(String::from)];
    for h in heard {
        let dash = || "-".to_string();
        rows.push([
            h.hostname.clone(),
            h.address.clone(),
            match (&h.platform, &h.arch) {
                (Some(p), Some(a)) => format!("{p}/{a}"),
                _ => dash(),
            },
            h.cpus.map_or_else(dash, |c| c.to_string()),
            h.stats.as_ref().map_or_else(dash, |s| format!("{:.1}", s.memory_usage_percent)),
            h.stats.as_ref().map_or_else(dash, |s| format!("{:.2}", s.cpu)),
            h.stats.as_ref().map_or_else(dash, |s| format!("{}/{}", s.available_slots, s.max_tasks)),
            if h.left { "left".to_string() } else { format!("{:.1}s ago", h.seconds_since_seen) },
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
