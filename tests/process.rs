//! CONTRACT.md §5 (processes), seen from outside. Each test uses its own `sleep 30NN` marker so
//! leftover processes can be told apart (`common::process_running` / `wait_gone`).

mod common;

use common::{TempDir, SECRET};
use serde_json::json;
use std::time::{Duration, Instant};

fn cancel(a: &common::Agent, id: u64) -> common::Resp {
    a.request("POST", &format!("/task/{id}/cancel"), &[("X-Cluster-Secret", SECRET)], b"")
}

/// Kills what a test left behind (by pid) when it goes out of scope, even on panic.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        common::kill_matching(self.0);
    }
}

#[test]
fn no_shell_arguments_are_literal() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "echo", "args": ["$HOME", "a;b", "|", "`id`", "$(id)", "*", "'q'"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "$HOME a;b | `id` $(id) * 'q'\n", "{t}");
    // A command with a space is a program name, not a shell line.
    let t = a.run_wait(json!({"command": "echo hi"}));
    assert_eq!(t["status"], "failed", "a shell ran `echo hi`: {t}");
    assert!(t["error"].is_string(), "{t}");
    a.assert_alive();
}

#[test]
fn env_is_merged_over_the_agents_environment() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({
        "command": "sh",
        "args": ["-c", "echo \"foo=$FOO\"; echo \"path=$PATH\"; echo \"home=$HOME\"; echo \"sp=$SP\""],
        "env": {"FOO": "bar", "HOME": "/overridden", "SP": "a b=c"},
    }));
    assert_eq!(t["status"], "completed", "{t}");
    let out = t["stdout"].as_str().unwrap();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    assert!(out.contains("foo=bar\n"), "{out}");
    assert!(out.contains(&format!("path={path}\n")), "PATH not inherited from the agent: {out}");
    assert!(out.contains("home=/overridden\n"), "request env must win over the agent's: {out}");
    assert!(out.contains("sp=a b=c\n"), "{out}");
    // Without env, the agent's own variables (e.g. RUST_LOG from the harness) are inherited.
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo \"[$RUST_LOG]\""]}));
    assert_eq!(t["stdout"], "[info]\n", "{t}");
    a.assert_alive();
}

#[test]
fn cluster_secret_is_invisible_to_tasks() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo \"[$CLUSTER_SECRET]\""]}));
    assert_eq!(t["stdout"], "[]\n", "{t}");
    let t = a.run_wait(json!({"command": "env"}));
    assert_eq!(t["status"], "completed", "{t}");
    let out = t["stdout"].as_str().unwrap();
    assert!(!out.contains(SECRET), "secret visible in task env:\n{out}");
    assert!(!out.contains("CLUSTER_SECRET"), "CLUSTER_SECRET in task env:\n{out}");
    assert!(out.contains("PATH="), "{out}");
    // Also when the task's own env is given.
    let t = a.run_wait(json!({"command": "env", "env": {"X": "1"}}));
    assert!(!t["stdout"].as_str().unwrap().contains(SECRET), "{t}");
    // Nor through /proc of its parent... the agent's environ is the agent's business; but the
    // task's own /proc/self/environ must not have it.
    let t = a.run_wait(json!({"command": "cat", "args": ["/proc/self/environ"]}));
    assert!(!t["stdout"].as_str().unwrap().contains(SECRET), "{t}");
    a.assert_alive();
}

#[test]
fn cluster_secret_from_dotenv_is_invisible_to_tasks() {
    let cwd = TempDir::new("proc-dotenv");
    let dsecret = "dotenv-secret-fedcba9876543210";
    std::fs::write(cwd.path().join(".env"), format!("CLUSTER_SECRET={dsecret}\n")).unwrap();
    let data = cwd.path().join("data");
    let mut cmd = common::base_command(cwd.path(), &data);
    cmd.env_remove("CLUSTER_SECRET");
    let mut a = common::spawn_agent(cmd, cwd, data);
    let _logs_a = common::logs_on_panic(&a);
    let r = a.request(
        "POST",
        "/execute?wait=true",
        &[("X-Cluster-Secret", dsecret), ("Content-Type", "application/json")],
        json!({"command": "env"}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json()["stdout"].as_str().unwrap().to_string();
    assert!(!out.contains(dsecret), "secret from .env visible to the task:\n{out}");
    assert!(!out.contains("CLUSTER_SECRET"), "{out}");
    a.assert_alive();
}

#[test]
fn stdin_is_dev_null() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "cat", "timeout": 60000}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "", "{t}");
    assert_eq!(t["timedOut"], false, "{t}");
    let t = a.run_wait(json!({"command": "readlink", "args": ["/proc/self/fd/0"]}));
    assert_eq!(t["stdout"], "/dev/null\n", "{t}");
    a.assert_alive();
}

#[test]
fn chatty_task_on_both_streams_completes_with_right_byte_counts() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    // Both streams at once, far more than any pipe buffer.
    let script = "(yes e | head -c 3000000 >&2) & yes | head -c 5000000; wait";
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script], "timeout": 120000}));
    assert_eq!(t["status"], "completed", "{}", {
        let mut t = t.clone();
        t["stdout"] = json!("…");
        t["stderr"] = json!("…");
        t
    });
    assert_eq!(t["stdoutBytes"], 5_000_000, "stdoutBytes");
    assert_eq!(t["stderrBytes"], 3_000_000, "stderrBytes");
    // Default MAX_OUTPUT_BYTES = 1 MiB: the tail of each is kept.
    let so = t["stdout"].as_str().unwrap();
    let se = t["stderr"].as_str().unwrap();
    assert_eq!(so.len(), 1_048_576);
    assert_eq!(se.len(), 1_048_576);
    assert!(so.ends_with("y\ny\n") && so.bytes().all(|b| b == b'y' || b == b'\n'));
    assert!(se.bytes().all(|b| b == b'e' || b == b'\n'));
    assert_eq!(t["stdoutTruncated"], true);
    assert_eq!(t["stderrTruncated"], true);
    // The log holds everything.
    let r = a.get(&format!("/task/{}/output?stream=stdout", t["id"]));
    assert_eq!(r.body.len(), 5_000_000);
    let r = a.get(&format!("/task/{}/output?stream=stderr", t["id"]));
    assert_eq!(r.body.len(), 3_000_000);
    a.assert_alive();
}

#[test]
fn cancel_kills_the_whole_group() {
    let _c = Cleanup("sleep 3001");
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "sleep 3001 & sleep 3001; wait"]);
    assert!(common::wait_running("sleep 3001", Duration::from_secs(10)));
    // Both sleeps are up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::pids_matching("sleep 3001").len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = cancel(&a, id);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        common::wait_gone("sleep 3001", Duration::from_secs(10)),
        "group not killed: {:?}",
        common::pids_matching("sleep 3001")
    );
    let t = a.wait_task(id);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(a.request("GET", "/stats", &[], b"").json()["runningTasks"], 0);
    a.assert_alive();
}

#[test]
fn task_ignoring_term_is_killed_after_grace() {
    let _c = Cleanup("sleep 3002");
    let mut a = common::agent().env("KILL_GRACE", "1000").start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "trap '' TERM; sleep 3002 & wait; sleep 3002"]);
    // `sleep 3002` runs after the trap is set.
    assert!(common::wait_running("sleep 3002", Duration::from_secs(10)));
    let r = cancel(&a, id);
    assert_eq!(r.status, 200, "{}", r.text());
    // TERM is ignored; KILL after 1 s must take everything.
    assert!(
        common::wait_gone("sleep 3002", Duration::from_secs(10)),
        "not killed after the grace: {:?}",
        common::pids_matching("sleep 3002")
    );
    let t = a.wait_task(id);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert!(t["completedAt"].is_u64(), "end not recorded: {t}");
    assert!(t["duration"].as_u64().is_some_and(|d| d >= 900), "killed before the grace: {t}");
    assert_eq!(t["signal"], "SIGKILL", "{t}");
    assert_eq!(a.request("GET", "/stats", &[], b"").json()["runningTasks"], 0);
    a.assert_alive();
}

#[test]
fn timeout_kills_the_whole_group() {
    let _c = Cleanup("sleep 3003");
    let mut a = common::agent().env("KILL_GRACE", "1000").start();
    let _logs_a = common::logs_on_panic(&a);
    let r =
        a.post("/execute", &json!({"command": "sh", "args": ["-c", "sleep 3003 & sleep 3003; wait"], "timeout": 500}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["taskId"].as_u64().unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["timedOut"], true, "{t}");
    assert!(
        common::wait_gone("sleep 3003", Duration::from_secs(10)),
        "group survived the timeout: {:?}",
        common::pids_matching("sleep 3003")
    );
    a.assert_alive();
}

#[test]
fn leftovers_in_the_group_are_killed_when_main_process_exits() {
    let _c = Cleanup("sleep 3004");
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "sleep 3004 & echo started"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let t = loop {
        let t = a.get(&format!("/task/{id}")).json();
        if t["status"] != "running" {
            break t;
        }
        assert!(Instant::now() < deadline, "task still running with a background child holding stdout: {t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "started\n", "{t}");
    assert!(
        common::wait_gone("sleep 3004", Duration::from_secs(10)),
        "leftover in the group: {:?}",
        common::pids_matching("sleep 3004")
    );
    assert_eq!(a.request("GET", "/stats", &[], b"").json()["runningTasks"], 0);
    a.assert_alive();
}

#[test]
fn escaped_grandchild_holding_pipes_cannot_hang_the_task() {
    let _c = Cleanup("sleep 3005");
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "setsid sleep 3005 & echo done"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let t = loop {
        let t = a.get(&format!("/task/{id}")).json();
        if t["status"] != "running" {
            break t;
        }
        assert!(Instant::now() < deadline, "task hung by a grandchild that holds the pipes: {t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["stdout"].as_str().unwrap().contains("done"), "{t}");
    assert_eq!(a.request("GET", "/stats", &[], b"").json()["runningTasks"], 0);
    // The slot is free: another task runs.
    let t2 = a.run_wait(json!({"command": "echo", "args": ["next"]}));
    assert_eq!(t2["stdout"], "next\n");
    a.assert_alive();
    common::kill_matching("sleep 3005");
}

#[test]
fn spawn_failure_is_counted_once() {
    let _c = Cleanup("sleep 3006");
    let mut a = common::agent().env("MAX_CONCURRENT_TASKS", "2").start();
    let _logs_a = common::logs_on_panic(&a);
    let d = TempDir::new("noexec");
    let noexec = d.path().join("script.sh");
    std::fs::write(&noexec, "#!/bin/sh\necho hi\n").unwrap(); // mode 0644: no permission
    for i in 0..20 {
        let body = match i % 4 {
            0 | 1 => json!({"command": format!("/no/such/program-{i}")}),
            2 => json!({"command": "echo", "cwd": "/no/such/dir"}),
            _ => json!({"command": noexec.to_str().unwrap()}),
        };
        let r = a.post("/execute?wait=true", &body);
        assert_eq!(r.status, 200, "run {i}: {}", r.text());
        let t = r.json();
        assert_eq!(t["status"], "failed", "{t}");
        assert!(t["error"].is_string(), "{t}");
    }
    // Plus some without ?wait, fired back to back (may be refused when both slots are
    // momentarily taken by not-yet-failed tasks: that is allowed, a crash is not).
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = a.post("/execute", &json!({"command": format!("/no/such/quick-{i}")}));
        if r.status == 503 {
            assert_eq!(r.json()["error"], "Max concurrent tasks reached", "{}", r.text());
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            ids.push(r.json()["taskId"].as_u64().unwrap());
        }
    }
    let admitted = 20 + ids.len();
    for id in ids {
        assert_eq!(a.wait_task(id)["status"], "failed");
    }
    let st = a.request("GET", "/stats", &[], b"").json();
    assert_eq!(st["runningTasks"], 0, "{st}");
    assert_eq!(st["availableSlots"], 2, "{st}");
    let l = a.get("/tasks").json();
    assert_eq!(l["running"], 0, "{l}");
    // Exactly one record per spawn failure, each failed once.
    assert_eq!(l["tasks"].as_array().unwrap().len(), admitted, "one record per admitted task: {l}");
    assert!(l["tasks"].as_array().unwrap().iter().all(|t| t["status"] == "failed"), "{l}");
    // Both slots admit running tasks, and a third is refused.
    let s1 = a.run("sleep", &["3006"]);
    let s2 = a.run("sleep", &["3006"]);
    let r = a.post("/execute", &json!({"command": "sleep", "args": ["3006"]}));
    assert_eq!(r.status, 503, "{}", r.text());
    for id in [s1, s2] {
        assert_eq!(cancel(&a, id).status, 200);
        assert_eq!(a.wait_task(id)["status"], "cancelled");
    }
    assert!(common::wait_gone("sleep 3006", Duration::from_secs(10)));
    assert_eq!(a.request("GET", "/stats", &[], b"").json()["runningTasks"], 0);
    a.assert_alive();
}

#[test]
fn a_thousand_sequential_tasks_leak_no_fds() {
    let mut a = common::agent().start();
    let _logs_a = common::logs_on_panic(&a);
    // Warm up (log files, thread pools, history file) before the baseline.
    for _ in 0..20 {
        let t = a.run_wait(json!({"command": "/bin/true"}));
        assert_eq!(t["status"], "completed");
    }
    std::thread::sleep(Duration::from_millis(500));
    let base = a.fd_count();
    assert!(base > 0);
    let started = Instant::now();
    for i in 0..1000 {
        let t = a.run_wait(json!({"command": "/bin/true"}));
        assert_eq!(t["status"], "completed", "task {i}: {t}");
        assert!(started.elapsed() < Duration::from_secs(600), "bounded: stopped after {i} tasks");
    }
    // Allow a little time for closed connections to be dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = a.fd_count();
    while now > base + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = a.fd_count();
    }
    assert!(now <= base + 4, "fd count grew from {base} to {now}");
    let st = a.request("GET", "/stats", &[], b"").json();
    assert_eq!(st["runningTasks"], 0, "{st}");
    a.assert_alive();
}

/// A partial line (a prompt) shows while the task waits, not only at its end.
#[test]
fn a_prompt_without_newline_shows_while_the_task_waits() {
    let a = common::agent().start();
    let id = a.run("sh", &["-c", "printf 'Username: '; sleep 3"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = a.get(&format!("/task/{id}")).json();
        if t["stdout"] == "Username: " {
            assert_eq!(t["status"], "running", "the prompt should show before the task ends: {t}");
            assert_eq!(t["stdoutBytes"], 10, "{t}");
            break;
        }
        assert!(t["status"] == "running" && Instant::now() < deadline, "prompt never shown while running: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.wait_task(id);
}

/// A daemon that escaped the task's group and holds its pipes neither hangs the task nor
/// keeps the agent's reader threads and pipe ends once the task has ended. Only the fallback
/// isolation lets one escape (a control group kills it with its task): one that also drops
/// the environment mark (`env -i`, see README, "Containing tasks").
#[test]
fn an_escaped_daemon_holds_no_fd_of_the_agent() {
    const M: &str = "sleep 3019";
    let a = common::agent().env("TASK_ISOLATION", "process").start();
    // Settle the pool and tiny_http's threads before counting.
    a.run_wait(json!({"command": "true"}));
    std::thread::sleep(Duration::from_millis(300));
    let before = a.fd_count();
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "setsid env -i sleep 3019 & sleep 0.3; echo started"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["duration"].as_u64().unwrap() < 1000, "duration runs to the main process's exit: {t}");
    assert!(common::process_running(M), "the escaped daemon should still run");
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.fd_count() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = a.fd_count();
    common::kill_matching(M);
    assert!(after <= before, "fds {before} before, {after} with the daemon still holding the task's pipes");
}

/// Started by hand in a terminal, the agent gives it up: a task opening /dev/tty fails at once
/// instead of prompting there or stopping until its timeout.
#[test]
fn tasks_have_no_controlling_terminal() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux / bsdutils) is needed to give the agent a terminal; install it");
    }
    let dir = TempDir::new("tty");
    let data = dir.path().join("data");
    let marker = dir.path().join("tty-marker.env");
    std::fs::write(&marker, "").unwrap();
    // `script` runs the agent on a new pseudo-terminal, as an operator's shell would.
    let inner = format!("{} --env-file {}", env!("CARGO_BIN_EXE_codara-agent"), marker.display());
    let mut script = std::process::Command::new("script");
    script.args(["-qfec", &inner, "/dev/null"]);
    let mut script = common::wrapped_command(script, dir.path(), &data);
    script.stdin(std::process::Stdio::piped());
    let a = common::spawn_agent(script, dir, data);
    let marker_text = marker.display().to_string();
    let t = a.run_wait(json!({
        "command": "sh",
        "args": ["-c", "echo to-tty > /dev/tty; read x < /dev/tty"],
        "timeout": 20000
    }));
    for pid in common::pids_matching(&marker_text) {
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    }
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["timedOut"], false, "the task should fail at once, not wait on the terminal: {t}");
    assert!(t["stderr"].as_str().unwrap().contains("/dev/tty"), "{t}");
    assert!(a.log_text().contains("gave up the controlling terminal"), "{}", a.log_text());
}

/// In a container or a CI runner the agent often lives in a PID namespace whose session leader
/// is outside it, where getsid(2) answers 0. It must start there and manage task groups as
/// anywhere else. (`unshare` gives it such a namespace: `sh` is its pid 1, the agent pid 2.)
#[test]
fn agent_runs_in_a_pid_namespace_whose_session_leader_is_outside() {
    if !common::unshare_works(
        "agent_runs_in_a_pid_namespace_whose_session_leader_is_outside",
        &["--pid", "--fork", "--mount-proc", "true"],
    ) {
        return;
    }
    let dir = TempDir::new("pidns");
    let data = dir.path().join("data");
    let mut unshare = std::process::Command::new("unshare");
    unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", "\"$0\"; exit $?"]);
    unshare.arg(env!("CARGO_BIN_EXE_codara-agent"));
    let cmd = common::wrapped_command(unshare, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", "echo in-ns"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "in-ns\n", "{t}");
    // A cancel reaches the whole group, a background child included.
    let id = a.run("sh", &["-c", "sleep 3217 & sleep 3218; wait"]);
    assert!(common::wait_running("sleep 3218", Duration::from_secs(10)));
    let r = a.request("POST", &format!("/task/{id}/cancel"), &[("X-Cluster-Secret", SECRET)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    assert!(common::wait_gone("sleep 3217", Duration::from_secs(10)), "the background child outlived the cancel");
    assert!(a.health_ok());
}

/// Run as PID 1 (a container without an init), the agent inherits what tasks orphan: a
/// `setsid` daemon, a background child killed with its group. It reaps them, so none stays
/// a zombie.
#[test]
fn as_pid_1_it_reaps_what_tasks_orphan() {
    if !common::unshare_works("as_pid_1_it_reaps_what_tasks_orphan", &["--pid", "--fork", "--mount-proc", "true"]) {
        return;
    }
    let dir = TempDir::new("pid1");
    let data = dir.path().join("data");
    let mut unshare = std::process::Command::new("unshare");
    unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child", env!("CARGO_BIN_EXE_codara-agent")]);
    let cmd = common::wrapped_command(unshare, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    assert!(a.log_text().contains("running as PID 1"), "{}", a.log_text());
    // The agent's pid as this test sees it: unshare's only child.
    let agent_pid = a.agent_pid().to_string();
    assert_ne!(agent_pid, a.pid().to_string(), "unshare --fork should have started the agent as its child");
    let zombies = || {
        let out = std::process::Command::new("ps").args(["-eo", "ppid=,stat="]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                let mut f = l.split_whitespace();
                f.next() == Some(agent_pid.as_str()) && f.next().is_some_and(|s| s.starts_with('Z'))
            })
            .count()
    };
    for _ in 0..3 {
        // `setsid sleep 0.5` outlives the task's group and exits on its own; `sleep 3222` in a
        // subshell is orphaned at once and killed with the group when `sh` exits.
        let t = a.run_wait(json!({"command": "sh", "args": ["-c", "setsid sleep 0.5 & (sleep 3222 &); exit 0"]}));
        assert_eq!(t["status"], "completed", "{t}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while zombies() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(zombies(), 0, "orphans left as zombies of the agent (PID 1)");
    assert!(common::wait_gone("sleep 3222", Duration::from_secs(5)));
    // Tasks still end normally: the reaper never takes a task's own exit status.
    for i in 0..20 {
        let t = a.run_wait(json!({"command": "sh", "args": ["-c", format!("exit {}", i % 3)]}));
        assert_eq!(t["exitCode"], i % 3, "{t}");
    }
    assert!(a.health_ok());
}

/// A task that stopped itself (or was stopped reading a terminal) still gets to run its
/// SIGTERM handler on cancel: the SIGTERM comes with a SIGCONT.
#[test]
fn a_stopped_task_is_continued_to_see_its_sigterm() {
    let a = common::agent().env("KILL_GRACE", "60000").start();
    let _g = common::logs_on_panic(&a);
    let id = a.run("sh", &["-c", "trap 'echo cleaned-up; exit 0' TERM; echo stopping; kill -STOP $$; sleep 3019"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.get(&format!("/task/{id}")).json()["stdout"].as_str().unwrap_or("").contains("stopping") {
        assert!(Instant::now() < deadline, "the task never printed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then it stops itself: state T in /proc/<pid>/stat (the field after the parenthesised name).
    let pid = a.get(&format!("/task/{id}")).json()["pid"].as_u64().expect("pid");
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    };
    while state() != Some('T') {
        assert!(Instant::now() < deadline, "the task never stopped itself: state {:?}", state());
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let r = a.request("POST", &format!("/task/{id}/cancel"), &[("X-Cluster-Secret", SECRET)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let t = a.wait_task(id);
    assert!(t0.elapsed() < Duration::from_secs(30), "it waited for the SIGKILL after the grace");
    assert_eq!(t["status"], "cancelled", "{t}");
    assert!(t["stdout"].as_str().unwrap().contains("cleaned-up"), "its TERM handler did not run: {t}");
}

/// A descriptor the agent inherited without close-on-exec (from a CI runner, a shell) does
/// not reach tasks, so a daemon a task leaves cannot hold it open.
#[test]
fn inherited_descriptors_do_not_reach_tasks() {
    let dir = TempDir::new("inherited-fd");
    let data = dir.path().join("data");
    let marker = dir.path().join("inherited-fd-marker");
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "exec 7>\"$1\"; exec \"$0\"", env!("CARGO_BIN_EXE_codara-agent")]).arg(&marker);
    let cmd = common::wrapped_command(sh, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    // The agent does hold it.
    let agent_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", a.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(agent_fds.iter().any(|p| p.contains("inherited-fd-marker")), "{agent_fds:?}");
    let t = a.run_wait(json!({"command": "ls", "args": ["-l", "/proc/self/fd/"]}));
    assert_eq!(t["status"], "completed", "{t}");
    assert!(!t["stdout"].as_str().unwrap().contains("inherited-fd-marker"), "the task inherited it: {t}");
}

/// Started with a low soft open-file limit (a shell's 1024, here 256), the agent raises it
/// within the hard limit, as the systemd unit's LimitNOFILE would.
#[test]
fn a_low_open_file_limit_is_raised() {
    let dir = TempDir::new("nofile");
    let data = dir.path().join("data");
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "ulimit -Sn 256 && exec \"$0\"", env!("CARGO_BIN_EXE_codara-agent")]);
    let cmd = common::wrapped_command(sh, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", a.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let soft: u64 = nums[0].parse().unwrap();
    let hard: u64 = nums[1].parse().unwrap_or(u64::MAX);
    assert_eq!(soft, hard.min(65536), "{line}");
}

/// A host name of the full 64 bytes Linux allows is reported whole (sysinfo's lookup lost
/// it, and the node then announced itself as `localhost`).
#[test]
fn a_64_byte_hostname_is_reported_whole() {
    let name = "h".repeat(64);
    if !common::unshare_works("a_64_byte_hostname_is_reported_whole", &["--uts", "hostname", &name]) {
        return;
    }
    let dir = TempDir::new("hostname");
    let data = dir.path().join("data");
    let mut unshare = std::process::Command::new("unshare");
    unshare.args(["--uts", "sh", "-c", "hostname \"$1\" && exec \"$0\"", env!("CARGO_BIN_EXE_codara-agent"), &name]);
    let cmd = common::wrapped_command(unshare, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    assert_eq!(a.get("/health").json()["hostname"], name.as_str());
}

/// In a control group limited to 256 MiB, the agent reports and admits against that limit,
/// not the host's RAM: a task that would not fit gets 503 instead of the kernel's OOM killer.
#[test]
fn a_memory_limited_control_group_is_what_stats_and_admission_use() {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // A child group of our own: v1 memory controller if there is one, else v2.
    let v1 = own.lines().find_map(|l| l.split(':').nth(1).filter(|c| c.split(',').any(|c| c == "memory")).map(|_| l));
    let name = format!("codara-test-{}", std::process::id());
    let (dir, limit_file) = match v1 {
        Some(line) => {
            let path = line.splitn(3, ':').nth(2).unwrap().trim_start_matches('/');
            (std::path::Path::new("/sys/fs/cgroup/memory").join(path).join(&name), "memory.limit_in_bytes")
        }
        None => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/');
            (std::path::Path::new("/sys/fs/cgroup").join(path).join(&name), "memory.max")
        }
    };
    // A process must be able to join it, too (a short-lived `sh` tries).
    let joinable = |d: &std::path::Path| {
        std::process::Command::new("sh")
            .args(["-c", "echo $$ > \"$1/cgroup.procs\"", "sh"])
            .arg(d)
            .status()
            .is_ok_and(|s| s.success())
    };
    if std::fs::create_dir(&dir).is_err()
        || std::fs::write(dir.join(limit_file), "268435456").is_err()
        || !joinable(&dir)
    {
        let _ = std::fs::remove_dir(&dir);
        common::skip_or_fail(
            "a_memory_limited_control_group_is_what_stats_and_admission_use",
            &format!("cannot make a memory-limited cgroup at {} (needs root and a memory controller)", dir.display()),
        );
        return;
    }
    let tmp = TempDir::new("cgroup");
    let data = tmp.path().join("data");
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "echo $$ > \"$1/cgroup.procs\" && exec \"$0\"", env!("CARGO_BIN_EXE_codara-agent")]).arg(&dir);
    let mut cmd = common::wrapped_command(sh, tmp.path(), &data);
    cmd.env("MAX_MEMORY_PERCENT", "80");
    let mut a = common::spawn_agent(cmd, tmp, data);
    let stats = a.get("/stats").json();
    // Fill the group past 80% from a task, then ask for another.
    let hog = a.run(
        "python3",
        &["-c", "import time; b = bytearray(230 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(3021)"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = None;
    while Instant::now() < deadline {
        let r = a.request(
            "POST",
            "/execute",
            &[("X-Cluster-Secret", SECRET), ("Content-Type", "application/json")],
            br#"{"command":"true"}"#,
        );
        if r.status == 503 {
            refused = Some(r.json());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = a.request("POST", &format!("/task/{hog}/cancel"), &[("X-Cluster-Secret", SECRET)], b"");
    let hog_task = a.wait_task(hog);
    a.signal("TERM");
    let _ = a.wait_exit(Duration::from_secs(30));
    common::kill_matching("time.sleep(3021)");
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(stats["memoryTotal"], 268435456u64, "{stats}");
    assert!(stats["memoryFree"].as_u64().unwrap() <= 268435456, "{stats}");
    assert_ne!(hog_task["signal"], "SIGKILL", "the OOM killer took the hog: {hog_task}");
    let refused = refused.unwrap_or_else(|| panic!("no 503 with the group 90% full; hog: {hog_task}"));
    assert_eq!(refused["error"], "Insufficient resources", "{refused}");
}

/// A hundred cancels at once send SIGTERM once: the task's cleanup trap runs once, and each
/// cancel is answered: 200 while the task runs (its trap waits until all are answered), 400
/// once it has ended.
#[test]
fn concurrent_cancels_send_sigterm_once() {
    let a = common::agent().env("KILL_GRACE", "120000").start();
    let _g = common::logs_on_panic(&a);
    let done = TempDir::new("cancels");
    let release = done.path().join("answered");
    let script = format!(
        "trap 'echo trapped; while [ ! -e {} ]; do sleep 0.05; done; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        release.display()
    );
    let id = a.run("sh", &["-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.get(&format!("/task/{id}")).json()["stdout"].as_str().unwrap_or("").contains("ready") {
        assert!(Instant::now() < deadline, "the task never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = a.addr();
    let statuses: Vec<u16> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let head = format!(
                    "POST /task/{id}/cancel HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Cluster-Secret: {}\r\nContent-Length: 0\r\n\r\n",
                    common::SECRET
                );
                std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
                common::read_response(&mut std::io::BufReader::new(s)).status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(a.get(&format!("/task/{id}")).json()["status"], "running", "the trap holds the task");
    assert!(statuses.iter().all(|s| *s == 200), "every cancel while the task runs gets 200: {statuses:?}");
    std::fs::write(&release, "").unwrap();
    let t = a.wait_task(id);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(t["stdout"], "ready\ntrapped\n", "the trap must run once: {t}");
    let r = a.request("POST", &format!("/task/{id}/cancel"), &[("X-Cluster-Secret", SECRET)], b"");
    assert_eq!((r.status, r.json()), (400, json!({"error": "Task cannot be cancelled"})), "a cancel after the end");
}

/// The agent marks itself non-dumpable (README "Security"): a task, which runs as the agent's
/// user, cannot read the agent's `/proc/<pid>/environ` (which holds CLUSTER_SECRET), though
/// it reads that of another process of that user. Root reads everything, so the agent runs as
/// `nobody` here (started with `setpriv` by the test, which must be root to do so).
#[test]
fn a_task_cannot_read_the_agents_environment() {
    const TEST: &str = "a_task_cannot_read_the_agents_environment";
    if !rustix::process::geteuid().is_root() {
        common::skip_or_fail(TEST, "only root can start the agent as another user");
        return;
    }
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        panic!("`setpriv` (util-linux) is needed to start the agent as another user; install it");
    }
    const NOBODY: u32 = 65534;
    let dir = TempDir::new("dumpable");
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let data = dir.path().join("data");
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_codara-agent")]);
    let cmd = common::wrapped_command(setpriv, dir.path(), &data);
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    let pid = a.agent_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Uid:\t65534\t65534\t65534\t65534"), "the agent is not nobody:\n{status}");
    // The kernel gives a non-dumpable process's /proc files to root.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!("/proc/{pid}/environ")).unwrap());
    assert_eq!(owner, 0, "/proc/{pid}/environ belongs to uid {owner}: the agent is dumpable");
    let script = "echo uid=$(id -u) ppid=$PPID; sleep 3061 & \
                  cat /proc/$!/environ >/dev/null && echo own-process-readable; kill $!; \
                  exec cat /proc/$PPID/environ";
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script]}));
    assert_eq!(t["stdout"], format!("uid=65534 ppid={pid}\nown-process-readable\n"), "{t}");
    let stderr = t["stderr"].as_str().unwrap();
    assert!(stderr.contains(&format!("/proc/{pid}/environ")) && stderr.contains("Permission denied"), "{t}");
    assert_eq!(t["exitCode"], 1, "{t}");
    assert!(!t.to_string().contains(SECRET), "the secret reached the task: {t}");
}
