//! Shared test helper: starts the real binary on a free port in a temporary `DATA_DIR`,
//! with discovery on loopback only, and talks plain HTTP/1.1 to it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "codara-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct AgentBuilder {
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
}

impl AgentBuilder {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Use this `DATA_DIR` (to restart an agent on the same history).
    pub fn data_dir(mut self, p: &Path) -> Self {
        self.data_dir = Some(p.to_path_buf());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts the agent and waits until it listens.
    #[track_caller]
    pub fn start(self) -> Agent {
        let dir = TempDir::new("agent");
        let data = self.data_dir.clone().unwrap_or_else(|| dir.path().join("data"));
        let mut cmd = base_command(dir.path(), &data);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        spawn_agent(cmd, dir, data)
    }
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn agent() -> AgentBuilder {
    AgentBuilder { env: Vec::new(), data_dir: None, args: Vec::new() }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

impl Agent {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A request with the secret in `X-Cluster-Secret`.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[("X-Cluster-Secret", SECRET)], b"")
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.request(
            "POST",
            path,
            &[("X-Cluster-Secret", SECRET), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Sends one request on a new connection and reads the whole response.
    #[track_caller]
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_response(&mut BufReader::new(s))
    }

    /// Starts a task and returns its id.
    #[track_caller]
    pub fn run(&self, command: &str, args: &[&str]) -> u64 {
        let r = self.post("/execute", &serde_json::json!({"command": command, "args": args}));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["taskId"].as_u64().expect("taskId")
    }

    /// Runs a task to its end (`?wait=true`) and returns the final task object.
    #[track_caller]
    pub fn run_wait(&self, body: serde_json::Value) -> serde_json::Value {
        let r = self.post("/execute?wait=true", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Polls `GET /task/:id` until the task has ended (60 s at most).
    #[track_caller]
    pub fn wait_task(&self, id: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self.get(&format!("/task/{id}")).json();
            if t["status"] != "running" {
                return t;
            }
            assert!(Instant::now() < deadline, "task {id} still running: {t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn health_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr()) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") && buf.contains("\"healthy\"")
    }

    /// Asserts the agent is alive and answers `/health`.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "agent exited; logs:\n{}", self.log_text());
        assert!(self.health_ok(), "agent does not answer /health; logs:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The log once it contains `needle`, or after `timeout` (log lines reach stdout through
    /// the agent's log-writer thread, a moment after the event).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if text.contains(needle) || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the agent.
    /// Sends `sig` to the agent itself, also when it was started through a wrapper (`unshare`
    /// and `script` do not pass signals on).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.agent_pid().to_string()).status();
    }

    /// The agent's pid: the started process, or its first descendant named `codara-agent`
    /// when a wrapper started it.
    pub fn agent_pid(&self) -> u32 {
        let is_agent =
            |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "codara-agent");
        let mut todo = vec![self.pid()];
        while let Some(p) = todo.pop() {
            if is_agent(p) {
                return p;
            }
            let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        self.pid()
    }

    /// Waits for the agent to exit; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Open file descriptors of the agent process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Agent {
    /// Stops the agent the way an operator would, so its tasks die with it even when a test
    /// failed half-way: SIGTERM twice (the second skips the drain), SIGKILL as a last resort.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("TERM");
            std::thread::sleep(Duration::from_millis(50));
            self.signal("TERM");
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        remove_agent_cgroups(&self.log_text());
    }
}

/// The control group subtrees an agent logged at start (`isolation: task groups under …`).
pub fn agent_cgroups(log: &str) -> Vec<PathBuf> {
    log.lines().filter_map(|l| l.split("isolation: task groups under ").nth(1)).map(PathBuf::from).collect()
}

/// Removes what an agent that did not stop cleanly (killed, or a failed test) left of its
/// control group subtrees: its task groups that no process is in any more, and the subtree.
/// Nothing is killed here: the same `DATA_DIR` may be in use by a later agent of the test.
pub fn remove_agent_cgroups(log: &str) {
    for dir in agent_cgroups(log) {
        if let Ok(list) = std::fs::read_dir(&dir) {
            for g in list.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("task-")) {
                let procs = std::fs::read_to_string(g.path().join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    let _ = std::fs::remove_dir(g.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or to EOF).
pub fn read_response<R: BufRead>(r: &mut R) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 =
        line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).expect("chunk size");
            if n == 0 {
                let mut crlf = String::new();
                let _ = r.read_line(&mut crlf);
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).expect("chunk end");
        }
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).expect("body");
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Resp { status, headers, body }
}

/// Whether any process's command line contains `marker` (e.g. `sleep 3001`).
pub fn process_running(marker: &str) -> bool {
    let Ok(out) = Command::new("ps").args(["-eo", "stat=,args="]).output() else { return false };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Zombies (Z) are dead: only their parent has not reaped them yet.
        .any(|l| l.contains(marker) && !l.trim_start().starts_with('Z'))
}

/// Waits up to `timeout` for no process to match `marker`; true if none is left.
pub fn wait_gone(marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_running(marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_running(marker)
}

// ---------------------------------------------------------------------------
// Helpers appended for api.rs / process.rs / hostile.rs.
// ---------------------------------------------------------------------------

/// A `Command` for the agent binary with the same safe settings as `agent()` (loopback only,
/// discovery off, port 0, the test secret), running in `cwd` with `DATA_DIR=data`.
/// Tests may then remove or override variables before `spawn_agent`/`run_binary`.
pub fn base_command(cwd: &Path, data: &Path) -> Command {
    wrapped_command(Command::new(env!("CARGO_BIN_EXE_codara-agent")), cwd, data)
}

/// `base_command` for a command that starts the agent through a wrapper (`unshare`, `script`):
/// the wrapper gets the same environment, working directory and pipes.
pub fn wrapped_command(mut cmd: Command, cwd: &Path, data: &Path) -> Command {
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        .env("HOME", cwd)
        .env("CLUSTER_PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("CLUSTER_SECRET", SECRET)
        .env("DATA_DIR", data)
        .env("JOBS_BASE_PATH", cwd.join("jobs"))
        .env("DISCOVERY_ENABLED", "false")
        .env("DISCOVERY_ADDRESSES", "127.255.255.255")
        .env("MAX_CPU_PERCENT", "100")
        .env("MAX_MEMORY_PERCENT", "100")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The variable that lets a test whose precondition is missing (namespaces, root, a cgroup)
/// pass as skipped: `CODARA_TEST_ALLOW_SKIP=1`. Without it such a test fails, so CI never
/// reports as passed a test that did not run.
pub const ALLOW_SKIP: &str = "CODARA_TEST_ALLOW_SKIP";

/// `test` cannot run here because `why`. Panics (the test fails, naming what is missing)
/// unless `CODARA_TEST_ALLOW_SKIP=1` is set; then prints `SKIPPED` and returns, and the
/// caller returns at once.
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: {why} ({ALLOW_SKIP}=1)");
        return;
    }
    panic!("{test} cannot run here: {why}. Run it as root with namespaces and cgroups (as CI does), or set {ALLOW_SKIP}=1 to skip it");
}

/// Whether `unshare ARGS` runs here (namespaces need privileges). When it does not, `test`
/// fails, or is skipped with `CODARA_TEST_ALLOW_SKIP=1` (see [`skip_or_fail`]); the caller
/// returns on `false`.
#[track_caller]
pub fn unshare_works(test: &str, args: &[&str]) -> bool {
    let probe = Command::new("unshare").args(args).output();
    let ok = probe.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        skip_or_fail(test, &format!("`unshare {}` does not work: {probe:?}", args.join(" ")));
    }
    ok
}

/// The HTTP port in the agent's "listening on http://ADDR:PORT" (or https://) start-up line.
pub fn port_in_log_line(line: &str) -> Option<u16> {
    let rest = line.split("listening on http").nth(1)?.split("://").nth(1)?;
    rest.split(':').nth(1)?.split(' ').next()?.parse().ok()
}

/// Starts an agent from a prepared command (see `base_command`) and waits until it listens.
/// `dir` is kept alive with the agent (it is usually the command's working directory).
#[track_caller]
pub fn spawn_agent(mut cmd: Command, dir: TempDir, data: PathBuf) -> Agent {
    let mut child = cmd.spawn().expect("start codara-agent");
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let l = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on http") {
                let _ = port_tx.send(port_in_log_line(&line).unwrap_or(0));
            }
            l.lock().unwrap().push(line);
        }
    });
    let l = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push(format!("stderr: {line}"));
        }
    });
    let port = match port_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(p) if p != 0 => p,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!("agent did not start; output:\n{}", logs.lock().unwrap().join("\n"));
        }
    };
    Agent { child, port, dir, data_dir: data, logs }
}

/// Output of a run of the binary that is expected to exit by itself.
#[derive(Debug)]
pub struct RunOutput {
    /// None if it did not exit within the timeout (it is then killed).
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to its end (killing it after `timeout`) and collects its output.
pub fn run_binary(mut cmd: Command, timeout: Duration) -> RunOutput {
    let mut child = cmd.spawn().expect("start codara-agent");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut status = None;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    // Reaps it in every case (a no-op when try_wait already did).
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&to.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    RunOutput { status, stdout, stderr }
}

/// A raw connection to the agent with read/write timeouts.
pub fn raw_connect(a: &Agent, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(a.addr()).expect("connect");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

/// Reads from `s` until EOF, an error, or `timeout`. Returns the bytes and whether the
/// connection was closed (EOF or reset) rather than timed out.
pub fn read_until_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (buf, false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (buf, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (buf, true),
        }
    }
}

/// The status code of a raw HTTP response, if it starts with a status line.
pub fn raw_status(bytes: &[u8]) -> Option<u16> {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
    if !s.starts_with("HTTP/1.") {
        return None;
    }
    s.split(' ').nth(1).and_then(|c| c.parse().ok())
}

/// Sends `head` then `body` on a new connection (the body from another thread, ignoring
/// write errors, so an early answer + close is still read), and reads the answer.
/// Returns the parsed response, or None if the connection closed without a status line.
pub fn send_raw(a: &Agent, head: &[u8], body: Vec<u8>, timeout: Duration) -> (Option<Resp>, Vec<u8>) {
    let mut s = raw_connect(a, timeout);
    let _ = s.write_all(head);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for c in body.chunks(64 * 1024) {
            if w.write_all(c).is_err() {
                break;
            }
        }
    });
    let (bytes, _closed) = read_until_close(&mut s, timeout);
    drop(s);
    let _ = writer.join();
    if raw_status(&bytes).is_some() {
        let r = read_response(&mut BufReader::new(std::io::Cursor::new(bytes.clone())));
        (Some(r), bytes)
    } else {
        (None, bytes)
    }
}

/// Pids of the live (non-zombie) processes whose command line contains `marker`.
pub fn pids_matching(marker: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ps").args(["-eo", "pid=,stat=,args="]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pid: u32 = it.next()?.parse().ok()?;
            let stat = it.next()?;
            let args: Vec<&str> = it.collect();
            (args.join(" ").contains(marker) && !stat.starts_with('Z')).then_some(pid)
        })
        .filter(|p| *p != std::process::id())
        .collect()
}

/// Kills (SIGKILL, by pid) the processes whose command line contains `marker`: cleanup
/// of what a test deliberately left behind (e.g. a `setsid` grandchild).
pub fn kill_matching(marker: &str) {
    for pid in pids_matching(marker) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// Waits up to `timeout` until `marker` shows in the process list; true if it did.
pub fn wait_running(marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process_running(marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process_running(marker)
}

/// Prints the agent's log lines to stderr if the test panics while the guard lives
/// (`let _g = common::logs_on_panic(&a);`).
pub struct LogsOnPanic(Arc<Mutex<Vec<String>>>, u32);

pub fn logs_on_panic(a: &Agent) -> LogsOnPanic {
    LogsOnPanic(Arc::clone(&a.logs), a.pid())
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.0.lock().map(|l| l.join("\n")).unwrap_or_default();
            eprintln!("---- agent (pid {}) log ----\n{logs}\n---- end of agent log ----", self.1);
        }
    }
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS` in KiB, `Threads`, ...).
pub fn proc_status_value(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Live (non-zombie) processes whose environment has `var=value`, with their command lines:
/// every process a task started, its children and a `setsid` grandchild included (they
/// inherit the environment), wherever they were reparented.
pub fn processes_with_env(var: &str, value: &str) -> Vec<(u32, String)> {
    let wanted = format!("{var}={value}").into_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
            !zombie && env.split(|b| *b == 0).any(|kv| kv == wanted.as_slice())
        })
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            (pid, cmd.join(" ").trim().to_string())
        })
        .collect()
}

/// The names of a process's threads (`/proc/<pid>/task/*/comm`), counted, for messages; empty
/// when they cannot be read.
pub fn thread_names(pid: u32) -> Vec<(String, usize)> {
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    for t in dir.flatten() {
        if let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) {
            *names.entry(comm.trim().to_string()).or_default() += 1;
        }
    }
    names.into_iter().collect()
}

/// A UDP socket bound like the agent's discovery socket: `0.0.0.0:port` with SO_REUSEADDR +
/// SO_REUSEPORT and broadcast allowed (so a test hears what the agent hears on its port).
pub fn bind_shared(port: u16) -> std::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into()).unwrap();
    s.into()
}
