//! Containing tasks (README, "Containing tasks"): nothing a task started outlives it, in a
//! control group and in the fallback; per-task limits; what each task used.
//!
//! The control group tests need root and a writable hierarchy (CI: root on cgroup v1 with a
//! v2 mount without controllers); without them they fail, or are skipped with
//! `CODARA_TEST_ALLOW_SKIP=1`. Every group an agent makes is removed when it stops; a guard
//! removes what a failed test leaves (`common::remove_agent_cgroups` on the agent's drop).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{agent, pids_matching, Agent};
use serde_json::json;

/// An agent whose tasks run in control groups, or `None` (test skipped) when this machine
/// gives none.
#[track_caller]
fn cgroup_agent(test: &str) -> Option<Agent> {
    cgroup_agent_with(test, ("TASK_ISOLATION", "cgroup"))
}

/// [`cgroup_agent`] with one more setting.
#[track_caller]
fn cgroup_agent_with(test: &str, (k, v): (&str, &str)) -> Option<Agent> {
    if !rustix::process::geteuid().is_root() {
        common::skip_or_fail(test, "control groups need root here");
        return None;
    }
    let a = agent().env("TASK_ISOLATION", "cgroup").env(k, v).start();
    let mode = a.get("/health").json()["isolation"].as_str().unwrap_or("").to_string();
    assert!(mode.starts_with("cgroup-"), "isolation {mode}; log:\n{}", a.log_text());
    Some(a)
}

/// A number unique to this call in this run, for `sleep <it>…`: the task's processes are
/// found by their command line.
fn marker(_tag: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("3{:06}{n:02}", std::process::id() % 1_000_000)
}

/// Asserts that within a second nothing whose command line has `needle` is alive.
#[track_caller]
fn gone_within_a_second(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !pids_matching(needle).is_empty() {
        if Instant::now() > deadline {
            let left = pids_matching(needle);
            common::kill_matching(needle);
            panic!("processes of the task still alive 1 s after its end: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command: a background child and a `setsid` one, then the main process ends.
/// Run twice: as is (the `setsid` may not have happened yet when the shell exits) and with a
/// pause, so the escape has certainly happened.
fn escapees_die_with_their_task(a: &Agent, tag: &str) {
    let _g = common::logs_on_panic(a);
    for (i, pause) in ["", "sleep 0.3; "].iter().enumerate() {
        let m = format!("{}{i}", marker(tag));
        let script = format!("sleep {m}1 & setsid sleep {m}2 & {pause}echo started");
        let t = a.run_wait(json!({"command": "sh", "args": ["-c", script]}));
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["stdout"], "started\n");
        gone_within_a_second(&format!("sleep {m}"));
    }
}

#[test]
fn a_setsid_escapee_dies_with_its_task_in_a_control_group() {
    let Some(a) = cgroup_agent("a_setsid_escapee_dies_with_its_task_in_a_control_group") else { return };
    escapees_die_with_their_task(&a, "cg");
    // The task groups are gone with their tasks (removed just after the end is reported).
    for dir in common::agent_cgroups(&a.log_text()) {
        let groups = || -> Vec<PathBuf> {
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("task-")))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !groups().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(groups().is_empty(), "task groups left: {:?}", groups());
    }
}

#[test]
fn a_setsid_escapee_dies_with_its_task_in_the_process_fallback() {
    let a = agent().env("TASK_ISOLATION", "process").start();
    assert_eq!(a.get("/health").json()["isolation"], "process");
    escapees_die_with_their_task(&a, "fallback");
    assert!(a.log_text().contains("a child subreaper"), "{}", a.log_text());
}

/// In a PID namespace whose session leader is outside it (a container started without an
/// init, a CI sandbox) the agent's own session and group read as 0; getsid(2) returns 0 there,
/// which once panicked the thread ending every task in the fallback.
#[test]
fn the_process_fallback_works_where_the_agents_session_is_outside_its_pid_namespace() {
    let test = "the_process_fallback_works_where_the_agents_session_is_outside_its_pid_namespace";
    if !common::unshare_works(test, &["--pid", "--fork", "--mount-proc", "true"]) {
        return;
    }
    let dir = common::TempDir::new("nssession");
    let data = dir.path().join("data");
    let mut unshare = std::process::Command::new("unshare");
    unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child", env!("CARGO_BIN_EXE_codara-agent")]);
    let mut cmd = common::wrapped_command(unshare, dir.path(), &data);
    cmd.env("TASK_ISOLATION", "process");
    let a = common::spawn_agent(cmd, dir, data);
    let _g = common::logs_on_panic(&a);
    // NSpgid and NSsid: the ids as each PID namespace sees them, the agent's own last.
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.agent_pid())).unwrap();
    let inner = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().last());
    assert_eq!((inner("NSpgid:"), inner("NSsid:")), (Some("0"), Some("0")), "{status}");
    assert_eq!(a.get("/health").json()["isolation"], "process");
    escapees_die_with_their_task(&a, "nssession");
    let id = a.run("sh", &["-c", "setsid sleep 3377 & sleep 3378"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.post(&format!("/task/{id}/cancel"), &json!({})).status, 200);
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    gone_within_a_second("sleep 337");
    assert!(a.health_ok());
}

/// The fallback chosen by `auto` for an agent that cannot write any hierarchy: run as
/// `nobody` (with `setpriv`, as root).
#[test]
fn an_unprivileged_agent_falls_back_and_still_kills_escapees() {
    let test = "an_unprivileged_agent_falls_back_and_still_kills_escapees";
    if !rustix::process::geteuid().is_root() {
        return common::skip_or_fail(test, "switching to the user nobody needs root");
    }
    let dir = common::TempDir::new("nobody");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let chown = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(dir.path()).status();
    assert!(chown.is_ok_and(|s| s.success()));
    let setpriv = std::process::Command::new("setpriv");
    let mut cmd = common::wrapped_command(setpriv, dir.path(), &data);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(env!("CARGO_BIN_EXE_codara-agent"));
    let a = common::spawn_agent(cmd, dir, data);
    assert_eq!(a.get("/health").json()["isolation"], "process", "{}", a.log_text());
    let refused = a.post("/execute", &json!({"command": "true", "limits": {"pids": 10}}));
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("limits.pids"), "{}", refused.text());
    escapees_die_with_their_task(&a, "nobody");
}

#[test]
fn over_its_memory_limit_a_task_is_killed_and_nothing_else() {
    let Some(a) = cgroup_agent("over_its_memory_limit_a_task_is_killed_and_nothing_else") else { return };
    let _g = common::logs_on_panic(&a);
    let other = a.post("/execute", &json!({"command": "sh", "args": ["-c", "sleep 1.5; echo still here"]}));
    let other = other.json()["taskId"].as_u64().unwrap();
    let t = a.run_wait(json!({
        "command": "perl",
        "args": ["-e", "$x = 'a' x (200 * 1024 * 1024); print length $x"],
        "limits": {"memoryBytes": 64 << 20}
    }));
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["usage"]["oomKilled"], true, "{t}");
    assert_eq!(t["limits"]["memoryBytes"], 64 << 20);
    assert!(t["error"].as_str().unwrap().contains("memory limit"), "{t}");
    let peak = t["usage"]["memoryPeakBytes"].as_u64().unwrap();
    assert!(peak > 32 << 20 && peak <= (64 << 20) + (1 << 20), "peak {peak}");
    let o = a.wait_task(other);
    assert_eq!((o["status"].as_str(), o["stdout"].as_str()), (Some("completed"), Some("still here\n")), "{o}");
    assert_eq!(o["usage"]["oomKilled"], false);
    assert!(a.health_ok());
    let metrics = a.get("/metrics").text();
    assert!(metrics.contains("codara_tasks_oom_killed_total 1"), "{metrics}");
}

/// Over its memory limit the whole task goes, not only the process that allocated (v2's
/// `memory.oom.group`; on v1 the agent kills the group when the kernel signals the OOM).
#[test]
fn over_its_memory_limit_the_whole_task_is_killed() {
    let Some(a) = cgroup_agent("over_its_memory_limit_the_whole_task_is_killed") else { return };
    let _g = common::logs_on_panic(&a);
    let t0 = Instant::now();
    let script = "perl -e '$x = \"a\" x (200 * 1024 * 1024)'; sleep 30; echo survived";
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script], "limits": {"memoryBytes": 64 << 20}}));
    assert_eq!((t["status"].as_str(), t["usage"]["oomKilled"].as_bool()), (Some("failed"), Some(true)), "{t}");
    assert!(!t["stdout"].as_str().unwrap().contains("survived"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(20), "the shell outlived the OOM kill: {t}");
}

#[test]
fn forks_past_the_pids_limit_fail_and_are_reported() {
    let Some(a) = cgroup_agent("forks_past_the_pids_limit_fail_and_are_reported") else { return };
    let _g = common::logs_on_panic(&a);
    let t = a.run_wait(json!({
        "command": "sh",
        "args": ["-c", "for i in $(seq 40); do sleep 1 & done; wait"],
        "limits": {"pids": 20}
    }));
    let refused = t["usage"]["forksRefused"].as_u64().unwrap_or(0);
    assert!(refused >= 1, "{t}");
    assert!(t["stderr"].as_str().unwrap().contains("fork"), "{t}");
    // Without the limit the same script forks all 40.
    let free = a.run_wait(json!({"command": "sh", "args": ["-c", "for i in $(seq 40); do sleep 0.2 & done; wait"]}));
    assert_eq!(free["status"], "completed", "{free}");
    assert!(free["usage"].get("forksRefused").is_none(), "{free}");
}

/// A CPU-bound second, in user mode: `cpuUserMs` within ±20 % of 1000, from the group.
#[test]
fn a_busy_second_is_counted() {
    let Some(a) = cgroup_agent("a_busy_second_is_counted") else { return };
    busy_second(&a);
}

/// The same from `wait4` without a group.
#[test]
fn a_busy_second_is_counted_without_a_group() {
    busy_second(&agent().env("TASK_ISOLATION", "process").start());
}

fn busy_second(a: &Agent) {
    let _g = common::logs_on_panic(a);
    let t = a.run_wait(json!({"command": "perl", "args": ["-e", "until (times() >= 1.0) { for (1 .. 100000) {} }"]}));
    assert_eq!(t["status"], "completed", "{t}");
    let user = t["usage"]["cpuUserMs"].as_u64().unwrap();
    assert!((800..=1200).contains(&user), "cpuUserMs {user}: {t}");
    assert!(t["usage"]["cpuSystemMs"].as_u64().unwrap() < 500, "{t}");
    assert!(t["usage"]["memoryPeakBytes"].as_u64().unwrap() > 0, "{t}");
    let listed = a.get("/tasks").json();
    assert_eq!(listed["tasks"][0]["usage"], t["usage"], "{listed}");
    let metrics = a.get("/metrics").text();
    let line = metrics.lines().find(|l| l.starts_with("codara_task_cpu_seconds_total{mode=\"user\"}")).unwrap();
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs >= 0.8, "{line}");
}

#[test]
fn limits_are_checked() {
    let a = agent().env("TASK_ISOLATION", "process").start();
    for (body, needle) in [
        (json!({"command": "true", "limits": {"memoryBytes": 64 << 20}}), "limits.memoryBytes cannot be applied"),
        (json!({"command": "true", "limits": {"cpus": 1}}), "limits.cpus cannot be applied"),
        (json!({"command": "true", "limits": {"memoryBytes": "64M"}}), "limits.memoryBytes must be"),
        (json!({"command": "true", "limits": {"pids": -1}}), "limits.pids must be"),
        (json!({"command": "true", "limits": [1]}), "limits must be an object"),
        (json!({"command": "true", "limits": {"disk": 1}}), "limits.disk is not a limit"),
    ] {
        let r = a.post("/execute", &body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    // 0 is no limit, which every mode can apply.
    let t = a.run_wait(json!({"command": "true", "limits": {"memoryBytes": 0}}));
    assert_eq!(t["status"], "completed");
    assert!(t.get("limits").is_none(), "{t}");
}

#[test]
fn a_default_limit_the_mode_cannot_apply_is_fatal() {
    let dir = common::TempDir::new("fatal-limit");
    let data = dir.path().join("data");
    let mut cmd = common::base_command(dir.path(), &data);
    cmd.env("TASK_ISOLATION", "process").env("TASK_MEMORY_LIMIT", "67108864");
    let out = common::run_binary(cmd, Duration::from_secs(20));
    assert!(out.status.is_some_and(|s| !s.success()), "{out:?}");
    assert!(format!("{}{}", out.stdout, out.stderr).contains("TASK_MEMORY_LIMIT cannot be applied"), "{out:?}");
}

/// A default limit applies to every task, and a request's 0 lifts it.
#[test]
fn default_limits_apply_and_can_be_lifted() {
    if !rustix::process::geteuid().is_root() {
        return common::skip_or_fail("default_limits_apply_and_can_be_lifted", "control groups need root here");
    }
    let a = agent().env("TASK_PIDS_LIMIT", "5").env("TASK_MEMORY_LIMIT", "268435456").start();
    let t = a.run_wait(json!({"command": "true"}));
    assert_eq!(t["limits"], json!({"memoryBytes": 268435456, "pids": 5}), "{t}");
    let t = a.run_wait(json!({"command": "true", "limits": {"pids": 0}}));
    assert_eq!(t["limits"], json!({"memoryBytes": 268435456}), "{t}");
}

/// Under a unit's `OOMScoreAdjust`, tasks get the normal score 0 back. The unit's is low
/// (-500), which takes `CAP_SYS_RESOURCE` to set; this test raises the agent's instead
/// (`choom -n 300`, no privilege needed): the same reset in the child.
#[test]
fn tasks_get_a_normal_oom_score() {
    for isolation in ["auto", "process"] {
        let dir = common::TempDir::new("choom");
        let data = dir.path().join("data");
        let mut cmd = common::wrapped_command(std::process::Command::new("choom"), dir.path(), &data);
        cmd.args(["-n", "300", "--"]).arg(env!("CARGO_BIN_EXE_codara-agent")).env("TASK_ISOLATION", isolation);
        let a = common::spawn_agent(cmd, dir, data);
        let own = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", a.agent_pid())).unwrap();
        assert_eq!(own.trim(), "300");
        let t = a.run_wait(json!({"command": "cat", "args": ["/proc/self/oom_score_adj"]}));
        assert_eq!(t["stdout"], "0\n", "{isolation}: {t}");
        assert!(a.log_text().contains("tasks reset their OOM score to 0"));
    }
}

/// An agent killed with its tasks running: at the next start their groups are killed and
/// removed, escapees included.
#[test]
fn groups_left_by_a_killed_agent_are_swept_at_start() {
    let Some(mut a) = cgroup_agent("groups_left_by_a_killed_agent_are_swept_at_start") else { return };
    let m = format!("{}9", marker("sweep"));
    let script = format!("setsid sleep {m}1 & sleep {m}2");
    let id = a.run("sh", &["-c", &script]);
    assert!(common::wait_running(&format!("sleep {m}1"), Duration::from_secs(5)));
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(!pids_matching(&format!("sleep {m}1")).is_empty(), "the escapee outlived the agent");
    let b = agent().env("TASK_ISOLATION", "cgroup").data_dir(&a.data_dir).start();
    let log = b.wait_log(&format!("the group of task {id} was left by an earlier run"), Duration::from_secs(5));
    assert!(log.contains(&format!("the group of task {id} was left")), "{log}");
    gone_within_a_second(&format!("sleep {m}"));
}

/// In the fallback, the end of a task kills the whole process group of each marked process
/// that left for a session of its own (which only the task's processes can be in): at once,
/// so a fork bomb there cannot outrun a kill of its processes one by one (one such took the
/// agent minutes, starved of CPU, and left a survivor), and with the members that carry no
/// mark (started with an empty environment).
#[test]
fn the_fallback_kills_an_escaped_session_s_whole_process_group() {
    let a = agent().env("TASK_ISOLATION", "process").start();
    let _l = common::logs_on_panic(&a);
    let m = marker("session");
    let script = format!("setsid sh -c 'env -i sleep {m}2 & sleep {m}1' & sleep 0.3; echo started");
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script]}));
    assert_eq!(t["stdout"], "started\n", "{t}");
    gone_within_a_second(&m);
}

/// A main process that left its own process group (`setpgid` into the agent's, which its
/// session allows) gets neither the SIGTERM nor the SIGKILL of a timeout, both sent to the
/// process group: with a control group, the SIGKILL after the grace goes to the group too.
#[test]
fn a_timeout_stops_a_main_process_that_left_its_process_group() {
    let Some(a) =
        cgroup_agent_with("a_timeout_stops_a_main_process_that_left_its_process_group", ("KILL_GRACE", "200"))
    else {
        return;
    };
    let _l = common::logs_on_panic(&a);
    let script = "setpgrp(0, getpgrp(getppid())) or die qq(setpgrp: $!); sleep 8; print qq(ran out)";
    let started = Instant::now();
    let t = a.run_wait(json!({"command": "perl", "args": ["-e", script], "timeout": 300}));
    assert_eq!(t["timedOut"], true, "{t}");
    assert_eq!(t["stdout"], "", "{t}");
    assert!(started.elapsed() < Duration::from_secs(4), "it ran {:?}: {t}", started.elapsed());
}
