//! Signed discovery packets (`DISCOVERY_SIGN=true`, issue 14): the agent's packets carry
//! `sig` in the documented format (checked here with ring's HMAC directly, from the README's
//! description, not with the agent's code), compat fields unchanged; `codara-agent discover`
//! marks a signed agent `verified`, and forged, replayed and unsigned packets for what they
//! are; `--require-signed` hides all but the verified.
//!
//! Network safety: everything goes to 127.0.0.1 / 127.255.255.255 on a private port.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::hmac;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_codara-agent");

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

use common::bind_shared;

/// The README's format: K = HMAC-SHA256(secret, "codara-discovery-v1"); the packet is the
/// unsigned JSON with its `}` replaced by `,"sig":"<hex HMAC-SHA256(K, unsigned)>"}`.
fn sign(secret: &str, unsigned: &[u8]) -> Vec<u8> {
    let k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), b"codara-discovery-v1");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), unsigned);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut out = unsigned[..unsigned.len() - 1].to_vec();
    out.extend_from_slice(format!(r#","sig":"{hex}"}}"#).as_bytes());
    out
}

/// Checks `packet` against the format with `secret`: the unsigned bytes it covers.
fn verify(secret: &str, packet: &[u8]) -> bool {
    let n = packet.len();
    if n < 75 || !packet[n - 74..].starts_with(br#","sig":""#) {
        return false;
    }
    let mut unsigned = packet[..n - 74].to_vec();
    unsigned.push(b'}');
    sign(secret, &unsigned) == packet
}

fn announce(host: &str, port: u16, timestamp: u64) -> Vec<u8> {
    let v = json!({"type": "cluster_announce", "hostname": host, "platform": "linux", "arch": "x64",
                   "cpus": 2, "totalMemory": 1u64 << 30, "port": port, "timestamp": timestamp});
    serde_json::to_vec(&v).unwrap()
}

fn discover(disc_port: u16, secret: Option<&str>, args: &[&str]) -> common::RunOutput {
    let cwd = common::TempDir::new("discover-sign");
    let mut cmd = Command::new(BIN);
    cmd.arg("discover")
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        .env("DATA_DIR", cwd.path().join("data"))
        .env("DISCOVERY_PORT", disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = secret {
        cmd.env("CLUSTER_SECRET", s);
    }
    common::run_binary(cmd, Duration::from_secs(60))
}

fn entries(out: &common::RunOutput) -> Vec<Value> {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", out.stdout, out.stderr));
    v.as_array().cloned().unwrap_or_default()
}

/// An agent that signs its packets, announcing on loopback to a port of its own; the socket
/// holding that port (bound shared, so the test hears the agent's broadcasts on it).
fn signing_agent() -> (UdpSocket, u16, common::Agent) {
    let reserve = bind_shared(0);
    let disc_port = reserve.local_addr().unwrap().port();
    let a = common::agent()
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_SIGN", "true")
        .env("DISCOVERY_PORT", &disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("ANNOUNCE_INTERVAL", "200")
        .env("STATS_INTERVAL", "300")
        .start();
    (reserve, disc_port, a)
}

fn find<'a>(list: &'a [Value], host: &str, sig: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["hostname"] == host && e["signature"] == sig)
}

#[test]
fn signed_packets_verify_and_discover_tells_forged_and_replayed_ones() {
    let (reserve, disc_port, a) = signing_agent();
    // The agent's own packets, as sent: every one signed, verifiable, compat fields kept.
    reserve.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = vec![0u8; 65536];
    let (mut kinds, deadline) = (std::collections::BTreeSet::new(), Instant::now() + Duration::from_secs(20));
    while kinds.len() < 2 && Instant::now() < deadline {
        let Ok((n, _)) = reserve.recv_from(&mut buf) else { continue };
        let v: Value = serde_json::from_slice(&buf[..n]).expect("a discovery packet is JSON");
        if v["port"] != a.port {
            continue;
        }
        assert!(verify(common::SECRET, &buf[..n]), "does not verify: {}", String::from_utf8_lossy(&buf[..n]));
        assert!(!verify("another-secret-0123456789", &buf[..n]));
        let ts = v["timestamp"].as_u64().unwrap();
        assert!(ts.abs_diff(now_ms()) < 30_000, "{v}");
        if v["type"] == "cluster_announce" {
            for f in ["type", "hostname", "platform", "arch", "cpus", "totalMemory", "port", "timestamp"] {
                assert!(v.get(f).is_some(), "announce lacks {f}: {v}");
            }
        }
        kinds.insert(v["type"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds.len(), 2, "no signed announce and stats heard: {kinds:?}\n{}", a.log_text());
    drop(reserve);

    // Meanwhile, on the same port: an impostor signing with another secret, a replay of a
    // correctly signed announce two minutes old, and an old unsigned agent.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_broadcast(true).unwrap();
            let to = SocketAddr::from(([127, 255, 255, 255], disc_port));
            while !stop.load(Ordering::SeqCst) {
                let now = now_ms();
                let _ = s.send_to(&sign("another-secret-0123456789", &announce("impostor", 1111, now)), to);
                let _ = s.send_to(&sign(common::SECRET, &announce("replayed", 2222, now - 120_000)), to);
                let _ = s.send_to(&announce("old-agent", 3333, now), to);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let host = a.get("/health").json()["hostname"].as_str().unwrap().to_string();
    let out = discover(disc_port, Some(common::SECRET), &["--timeout", "2", "--json"]);
    let all = entries(&out);
    let real = find(&all, &host, "verified").unwrap_or_else(|| panic!("the signed agent is not verified: {all:#?}"));
    assert_eq!(real["address"], format!("127.0.0.1:{}", a.port));
    let forged = find(&all, "impostor", "BAD SIGNATURE").unwrap_or_else(|| panic!("forged: {all:#?}"));
    assert!(forged["signatureProblem"].as_str().unwrap().contains("does not match"), "{forged}");
    let replayed = find(&all, "replayed", "BAD SIGNATURE").unwrap_or_else(|| panic!("replayed: {all:#?}"));
    assert!(replayed["signatureProblem"].as_str().unwrap().contains("replayed"), "{replayed}");
    assert!(find(&all, "old-agent", "unsigned").is_some(), "unsigned: {all:#?}");
    assert!(all.iter().all(|e| e["hostname"] == host || e["signature"] != "verified"), "{all:#?}");

    // The table says it too; --require-signed keeps the verified agent only.
    let table = discover(disc_port, Some(common::SECRET), &["--timeout", "2"]).stdout;
    let row = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
    assert!(row("impostor").contains("BAD SIGNATURE"), "{table}");
    assert!(row("old-agent").contains("unsigned"), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&host) && l.contains("verified")), "{table}");
    let only = entries(&discover(disc_port, Some(common::SECRET), &["--timeout", "2", "--json", "--require-signed"]));
    assert!(
        !only.is_empty() && only.iter().all(|e| e["signature"] == "verified" && e["hostname"] == host),
        "{only:#?}"
    );

    // Without the secret: nothing verified, and --require-signed is refused.
    let blind = entries(&discover(disc_port, None, &["--timeout", "2", "--json"]));
    assert!(find(&blind, &host, "signed (not checked)").is_some(), "{blind:#?}");
    let refused = discover(disc_port, None, &["--timeout", "1", "--require-signed"]);
    assert_eq!(refused.status.and_then(|s| s.code()), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("needs the cluster secret"), "{refused:?}");
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
}

/// Off by default: packets are exactly as before, with no `sig`.
#[test]
fn packets_are_unsigned_by_default() {
    let listen = bind_shared(0);
    let disc_port = listen.local_addr().unwrap().port();
    let a = common::agent()
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", &disc_port.to_string())
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("ANNOUNCE_INTERVAL", "200")
        .start();
    listen.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no announce heard:\n{}", a.log_text());
        let Ok((n, _)) = listen.recv_from(&mut buf) else { continue };
        let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
        if v["port"] == a.port {
            assert!(v.get("sig").is_none(), "{v}");
            break;
        }
    }
}

/// A signature covers the packet, not the address it came from: a host on the LAN that
/// captures a fresh signed announce and sends it again from its own address (within the
/// window) must not take over the real agent's `verified` row (its address is what a main
/// server would send builds and the secret to); it shows on a row of its own beside it.
#[test]
fn a_fresh_packet_replayed_from_another_address_does_not_take_over_the_agents_row() {
    let (reserve, disc_port, a) = signing_agent();
    let stop = Arc::new(AtomicBool::new(false));
    // The attacker: takes each fresh packet of the agent and sends it again from 127.0.0.2.
    let relay = {
        let stop = Arc::clone(&stop);
        let port = a.port;
        std::thread::spawn(move || {
            reserve.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let out = UdpSocket::bind("127.0.0.2:0").unwrap();
            out.set_broadcast(true).unwrap();
            let to = SocketAddr::from(([127, 255, 255, 255], disc_port));
            let mut buf = vec![0u8; 65536];
            let mut relayed = 0;
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, from)) = reserve.recv_from(&mut buf) else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&buf[..n]) else { continue };
                if v["port"] == port && from.ip() != Ipv4Addr::new(127, 0, 0, 2) {
                    let _ = out.send_to(&buf[..n], to);
                    relayed += 1;
                }
            }
            relayed
        })
    };
    let host = a.get("/health").json()["hostname"].as_str().unwrap().to_string();
    let out = discover(disc_port, Some(common::SECRET), &["--timeout", "2", "--json"]);
    stop.store(true, Ordering::SeqCst);
    assert!(relay.join().unwrap() > 0, "nothing relayed");
    let all = entries(&out);
    let rows: Vec<&Value> = all.iter().filter(|e| e["hostname"] == host).collect();
    let real = format!("127.0.0.1:{}", a.port);
    let fake = format!("127.0.0.2:{}", a.port);
    assert!(rows.iter().any(|e| e["address"] == real), "the agent's own row is gone: {all:#?}");
    assert!(rows.iter().any(|e| e["address"] == fake), "the relayed packets are not shown apart: {all:#?}");
    assert!(rows.iter().all(|e| e["address"] == real || e["address"] == fake), "{all:#?}");
}
