//! Starting and stopping agents (loopback only, private discovery port, temporary dirs),
//! reading /proc, and small statistics helpers.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-secret-0123456789abcdef0123";

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "codara-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_tcp_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free TCP port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A free UDP port (for a private `DISCOVERY_PORT`).
pub fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("cannot find a free UDP port: {e}"))?;
    s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A running agent. Dropping it stops it (SIGTERM, then SIGKILL) and removes its dir.
pub struct Agent {
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub dir: TempDir,
    pub started: Instant,
}

/// Builds the environment and spawns the binary; does not wait for it.
pub fn spawn_agent(bin: &Path, tag: &str, port: u16, extra: &[(&str, &str)]) -> Result<Agent, String> {
    let dir = TempDir::new(tag)?;
    let log = dir.path().join("agent.log");
    let out = File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let disco = free_udp_port()?;
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", dir.path())
        .env("CLUSTER_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("DISCOVERY_PORT", disco.to_string())
        .env("DATA_DIR", dir.path().join("data"))
        .env("JOBS_BASE_PATH", dir.path().join("jobs"))
        .env("CLUSTER_SECRET", SECRET)
        .env("MAX_CPU_PERCENT", "100")
        .env("MAX_MEMORY_PERCENT", "100");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    // For experiments: `BENCH_AGENT_ENV="MALLOC_ARENA_MAX=2 RUST_LOG=warn"` is added to
    // every agent's environment (the loopback and discovery settings below still win).
    if let Ok(more) = std::env::var("BENCH_AGENT_ENV") {
        for kv in more.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    // Never the default discovery addresses, whatever `extra` says.
    cmd.env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("DISCOVERY_PORT", disco.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("CLUSTER_PORT", port.to_string())
        .env_remove("MASTER_SERVER");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    Ok(Agent { child: Some(child), pid, port, addr: SocketAddr::from(([127, 0, 0, 1], port)), log, dir, started })
}

/// Starts an agent on a port of its choosing and waits for its `listening on` line.
pub fn start_agent(bin: &Path, tag: &str, extra: &[(&str, &str)]) -> Result<Agent, String> {
    let mut a = spawn_agent(bin, tag, 0, extra)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&a.log).unwrap_or_default();
        if let Some(port) = parse_port(&text) {
            a.port = port;
            a.addr = SocketAddr::from(([127, 0, 0, 1], port));
            return Ok(a);
        }
        if let Some(child) = a.child.as_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("agent exited at start ({st}); log:\n{}", tail(&text, 15)));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("agent did not log its port within 10 s; log:\n{}", tail(&text, 15)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn parse_port(log: &str) -> Option<u16> {
    let i = log.find("listening on http")?;
    let rest = log[i..].split_once("://127.0.0.1:")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Agent {
    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// Lines of its log that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// utime + stime of the whole process, in clock ticks (dead threads included).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ... utime(14) stime(15) → indexes 11, 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Nanoseconds on CPU summed over the live threads (first field of each schedstat), and
/// the thread ids seen.
pub fn sched_ns(pid: u32) -> Option<(u64, Vec<u64>)> {
    let mut total = 0u64;
    let mut tids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(tid) = name.parse::<u64>() else { continue };
        if let Ok(s) = fs::read_to_string(entry.path().join("schedstat")) {
            if let Some(ns) = s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()) {
                total += ns;
                tids.push(tid);
            }
        }
    }
    tids.sort_unstable();
    Some((total, tids))
}

/// Per-thread (name, ns on CPU) of a process.
pub fn sched_by_thread(pid: u32) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for entry in rd.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else { continue };
        let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
        let ns = fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0);
        out.push((tid, name, ns));
    }
    out.sort_unstable();
    out
}

/// Output of a command (trimmed), or "?" when it cannot run.
pub fn command_text(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Nearest-rank percentile of unsorted samples (`p` in 0..=100).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (utime + stime of the process, cutime + cstime of its waited-for children), in ticks.
pub fn cpu_ticks_all(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(4).filter_map(|x| x.parse().ok()).collect();
    if f.len() < 4 {
        return None;
    }
    Some((f[0] + f[1], f[2] + f[3]))
}
