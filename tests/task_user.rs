//! Black-box tests of `TASK_USER`: tasks run as another user (created here as root with
//! `useradd`, removed with `userdel -r` by a guard, also when a test fails), cannot read
//! the agent's `.env`, `DATA_DIR` or cluster secret, and are still killed, whole trees, by
//! cancel, timeout and shutdown. Without root these fail, unless `CODARA_TEST_ALLOW_SKIP=1`.
//!
//! Network: loopback only. Bounded loops, generous time bounds. Process markers: `sleep 32xx`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, TempDir, SECRET};
use serde_json::json;

/// A user made for one test; the guard kills what still runs as it and deletes it.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    /// `None` (after failing or skipping the test) when not root.
    #[track_caller]
    fn create(test: &str) -> Option<TestUser> {
        if !is_root() {
            common::skip_or_fail(test, "creating a user for TASK_USER needs root");
            return None;
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("codara-t{}-{n}", std::process::id());
        let st = Command::new("useradd").args(["--create-home", "--user-group", "--shell", "/bin/sh", &name]).status();
        assert!(st.as_ref().is_ok_and(|s| s.success()), "useradd {name}: {st:?}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let user = TestUser { uid: id("-u"), gid: id("-g"), name };
        Some(user)
    }

    fn home(&self) -> String {
        format!("/home/{}", self.name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for pid in pids_of_uid(self.uid) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Live processes whose real uid is `uid`.
fn pids_of_uid(uid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let live = !status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
            let owned =
                status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string()));
            live && owned
        })
        .collect()
}

/// The real uid of the first live process whose command line holds `marker`.
fn uid_of(marker: &str) -> Option<u32> {
    let pid = common::pids_matching(marker).into_iter().next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// An agent running tasks as `user` in `dir` (kept by the caller), with its secret in
/// `DATA_DIR/cluster-secret` (not in its environment) and a `.env` of mode `env_mode`.
fn start(user: &TestUser, dir: &Path, env_mode: u32, extra: &[(&str, &str)]) -> Agent {
    let data = dir.join("data");
    if !data.exists() {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(data.join("cluster-secret"), format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(data.join("cluster-secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env = dir.join(".env");
    std::fs::write(&env, "# the agent's settings\nKILL_GRACE=500\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(env_mode)).unwrap();
    let mut cmd = common::base_command(dir, &data);
    cmd.env_remove("CLUSTER_SECRET").env("TASK_USER", &user.name);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    common::spawn_agent(cmd, TempDir::new("task-user-unused"), data)
}

#[test]
fn tasks_run_as_the_task_user_and_cannot_read_the_agents_files() {
    let Some(user) = TestUser::create("tasks_run_as_the_task_user_and_cannot_read_the_agents_files") else { return };
    // A readable .env is named in a warning at start.
    let dir = TempDir::new("task-user");
    let a = start(&user, dir.path(), 0o644, &[]);
    let env_path = dir.path().join(".env");
    let log = a.wait_log("tasks run as", Duration::from_secs(5));
    assert!(
        log.contains(&format!("TASK_USER {}: the settings file {} is readable", user.name, env_path.display())),
        "{log}"
    );
    assert_eq!(log.matches("is readable by that user").count(), 1, "only .env: {log}");
    assert!(log.contains(&format!("tasks run as {} (uid {}, gid {})", user.name, user.uid, user.gid)), "{log}");
    drop(a);

    // Made unreadable: no warning, and a task can read none of it.
    let a = start(&user, dir.path(), 0o600, &[]);
    let _g = common::logs_on_panic(&a);
    assert!(!a.wait_log("is readable by that user", Duration::from_millis(500)).contains("is readable by that user"));
    let data = a.data_dir.display().to_string();
    let script = format!(
        "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; cat {data}/cluster-secret; ls {data}; cat {data}/tasks/journal.jsonl; cat .env; echo end"
    );
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script], "cwd": dir.path()}));
    let (uid, gid) = (user.uid, user.gid);
    let want = format!("{uid}\n{gid}\n{gid}\n{} {} {}\nend\n", user.home(), user.name, user.name);
    assert_eq!(t["stdout"], want, "{t}");
    let err = t["stderr"].as_str().unwrap();
    assert_eq!(err.matches("Permission denied").count(), 4, "{err}");
    assert!(!t.to_string().contains(SECRET));
    // A cwd the user cannot enter: the task fails saying so.
    let t = a.run_wait(json!({"command": "true", "cwd": a.data_dir}));
    let want = format!("cwd {} cannot be entered by TASK_USER {} (permission denied)", data, user.name);
    assert_eq!((t["status"].as_str(), t["error"].as_str()), (Some("failed"), Some(want.as_str())), "{t}");
    // Without a cwd, a task starts in the user's home (the agent's directory may be closed).
    let t = a.run_wait(json!({"command": "pwd"}));
    assert_eq!(t["stdout"], format!("{}\n", user.home()), "{t}");
    assert_eq!(t["cwd"], user.home());
}

#[test]
fn cancel_timeout_and_shutdown_kill_the_task_users_tree() {
    let Some(user) = TestUser::create("cancel_timeout_and_shutdown_kill_the_task_users_tree") else { return };
    let dir = TempDir::new("task-user-kill");
    let mut a = start(&user, dir.path(), 0o600, &[("SHUTDOWN_TIMEOUT", "200")]);
    let _g = common::logs_on_panic(&a);
    // Children that ignore SIGTERM: the SIGKILL after KILL_GRACE must reach them too.
    let tree = |m1: &str, m2: &str| format!("trap '' TERM; sleep {m1} & sleep {m2} & wait");
    let cwd = dir.path().to_path_buf();

    let id = a.post("/execute", &json!({"command": "sh", "args": ["-c", tree("3201", "3202")], "cwd": cwd})).json()
        ["taskId"]
        .as_u64()
        .unwrap();
    assert!(common::wait_running("sleep 3202", Duration::from_secs(10)));
    assert_eq!(uid_of("sleep 3201"), Some(user.uid), "the task runs as the task user");
    assert_eq!(a.post(&format!("/task/{id}/cancel"), &json!({})).status, 200);
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    assert!(common::wait_gone("sleep 320", Duration::from_secs(10)), "cancel left the tree running");

    let t = a.run_wait(json!({"command": "sh", "args": ["-c", tree("3203", "3204")], "cwd": cwd, "timeout": 500}));
    assert_eq!((t["status"].as_str(), t["timedOut"].as_bool()), (Some("failed"), Some(true)), "{t}");
    assert!(common::wait_gone("sleep 320", Duration::from_secs(10)), "the timeout left the tree running");

    a.post("/execute", &json!({"command": "sh", "args": ["-c", tree("3205", "3206")], "cwd": cwd}));
    assert!(common::wait_running("sleep 3206", Duration::from_secs(10)));
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(20)).expect("the agent exits");
    assert!(st.success(), "{st:?}");
    assert!(common::wait_gone("sleep 320", Duration::from_secs(10)), "shutdown left the tree running");
    assert!(pids_of_uid(user.uid).is_empty(), "processes of the task user left: {:?}", pids_of_uid(user.uid));
}

/// Without root or the capabilities, TASK_USER stops the agent at start (exit 2), naming
/// what is missing; an unknown user or root is a bad setting.
#[test]
fn task_user_without_privilege_or_a_real_user_is_an_error_at_start() {
    let dir = TempDir::new("task-user-bad");
    let data = dir.path().join("data");
    for (user, says) in [("no-such-user-codara", "no user \"no-such-user-codara\""), ("root", "it is root (uid 0)")] {
        let mut cmd = common::base_command(dir.path(), &data);
        cmd.env("TASK_USER", user);
        let out = common::run_binary(cmd, Duration::from_secs(20));
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
        assert!(out.stderr.contains("invalid TASK_USER=") && out.stderr.contains(says), "{out:?}");
    }
    let Some(user) = TestUser::create("task_user_without_privilege_or_a_real_user_is_an_error_at_start") else {
        return;
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = common::base_command(dir.path(), &data);
    cmd.env("TASK_USER", &user.name).uid(user.uid).gid(user.gid);
    let out = common::run_binary(cmd, Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    let want = format!(
        "TASK_USER=\"{}\" cannot be used: running tasks as another user needs root or the capabilities CAP_SETUID, CAP_SETGID and CAP_KILL",
        user.name
    );
    assert!(out.stderr.contains(&want) && out.stderr.contains("missing: CAP_SETUID, CAP_SETGID, CAP_KILL"), "{out:?}");
    assert!(!Path::new(&data).exists(), "nothing was created");
}

/// The agent makes its DATA_DIR 0700 when it creates it.
#[test]
fn a_data_dir_the_agent_creates_is_its_own() {
    let a = common::agent().start();
    let mode = std::fs::metadata(&a.data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// As under the systemd unit: the agent is not root and holds only CAP_SETUID, CAP_SETGID and
/// CAP_KILL as ambient capabilities. Its tasks run as the task user holding no capability at
/// all (a plain setuid between two non-root users would pass the three on), and the agent
/// still kills a cancelled task's whole tree, whose processes ignore SIGTERM.
#[test]
fn an_agent_with_only_the_units_capabilities_runs_tasks_without_any() {
    let test = "an_agent_with_only_the_units_capabilities_runs_tasks_without_any";
    let Some(agent_user) = TestUser::create(test) else { return };
    let Some(user) = TestUser::create(test) else { return };
    let dir = TempDir::new("task-user-caps");
    let owner = format!("{}:{}", agent_user.uid, agent_user.gid);
    assert!(Command::new("chown").args([&owner, dir.path().to_str().unwrap()]).status().unwrap().success());
    let data = dir.path().join("data");
    let mut setpriv = Command::new("setpriv");
    setpriv.args([
        &format!("--reuid={}", agent_user.uid),
        &format!("--regid={}", agent_user.gid),
        "--clear-groups",
        "--inh-caps=+setuid,+setgid,+kill",
        "--ambient-caps=+setuid,+setgid,+kill",
        "--",
        env!("CARGO_BIN_EXE_codara-agent"),
    ]);
    let mut cmd = common::wrapped_command(setpriv, dir.path(), &data);
    cmd.env("TASK_USER", &user.name).env("KILL_GRACE", "500");
    let a = common::spawn_agent(cmd, TempDir::new("task-user-unused"), data);
    let _g = common::logs_on_panic(&a);
    let script = "grep -E '^(Uid|Cap(Inh|Prm|Eff|Amb)):' /proc/self/status | tr -s '\\t ' ' '";
    let t = a.run_wait(json!({"command": "sh", "args": ["-c", script], "cwd": dir.path()}));
    let u = user.uid;
    let want = format!(
        "Uid: {u} {u} {u} {u}\nCapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\nCapAmb: 0000000000000000\n"
    );
    assert_eq!(t["stdout"], want, "{t}");

    let body =
        json!({"command": "sh", "args": ["-c", "trap '' TERM; sleep 3211 & sleep 3212 & wait"], "cwd": dir.path()});
    let id = a.post("/execute", &body).json()["taskId"].as_u64().unwrap();
    assert!(common::wait_running("sleep 3212", Duration::from_secs(10)));
    assert_eq!(uid_of("sleep 3211"), Some(user.uid));
    assert_eq!(a.post(&format!("/task/{id}/cancel"), &json!({})).status, 200);
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    assert!(common::wait_gone("sleep 321", Duration::from_secs(10)), "cancel left the tree running");
}

/// A task can write in its job folder: a link it plants there (`logs/output.log` to the
/// agent's `.env`) must not make the agent, which is root here, append the task's output
/// to that file on the job's next run.
#[test]
fn a_link_planted_in_a_job_folder_does_not_make_the_agent_write_through_it() {
    let Some(user) = TestUser::create("a_link_planted_in_a_job_folder_does_not_make_the_agent_write_through_it") else {
        return;
    };
    let dir = TempDir::new("task-user-job");
    let a = start(&user, dir.path(), 0o600, &[]);
    let _g = common::logs_on_panic(&a);
    let env_path = dir.path().join(".env");
    let before = std::fs::read_to_string(&env_path).unwrap();
    let job = dir.path().join("jobs/evil");
    std::fs::create_dir_all(&job).unwrap();
    let script = format!(
        "mv logs old.$$ 2>/dev/null; mkdir logs; ln -s {} logs/output.log; echo TRUSTED_ADDRESSES=0.0.0.0/0\n",
        env_path.display()
    );
    std::fs::write(job.join("run.sh"), script).unwrap();
    std::os::unix::fs::chown(&job, Some(user.uid), Some(user.gid)).unwrap();
    let run = || a.post("/execute-job?wait=true", &json!({"jobId": "evil"})).json();
    let first = run();
    assert_eq!(first["status"], "completed", "{first}");
    let second = run();
    assert_eq!(std::fs::read_to_string(&env_path).unwrap(), before, "the agent wrote the task's output into its .env");
    assert_eq!(
        (second["status"].as_str(), second["error"].as_str()),
        (Some("failed"), Some("cannot open logs/output.log: it is a symbolic link")),
        "{second}"
    );
}
