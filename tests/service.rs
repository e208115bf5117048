//! "Run it as a service": the systemd unit, the launchd plist, the example `.env`,
//! `scripts/install.sh`, `check-config`, and `GET /metrics` read by a real Prometheus parser.
//!
//! Outside tools: `systemd-analyze` (Debian package `systemd`) and Python 3 with
//! `prometheus_client`; scripts/test.sh installs both. A missing tool FAILS the test with a
//! message naming what to install, rather than skipping silently.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_codara-agent");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).permissions().mode() & 0o7777
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers: a unit file as key/value pairs, a snapshot of a directory tree, the installer.
// ---------------------------------------------------------------------------------------------

/// `[Section]` → key → values (a key may repeat), comments and blank lines dropped.
fn parse_unit(s: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    for line in s.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("unit line without '=': {line:?}"));
        out.entry(section.clone()).or_default().entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    out
}

/// Runs `systemd-analyze verify` on `unit` (a file named `codara-agent.service`); returns
/// the problems it reported about the unit: a non-zero exit, or any line about the unit.
fn systemd_verify(unit: &Path) -> Vec<String> {
    let out = match Command::new("systemd-analyze").arg("verify").arg(unit).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed: the CI script (.ci/run -> scripts/test.sh) must \
             `apt-get install -y systemd` before `cargo test`"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let mut problems = Vec::new();
    if !out.status.success() {
        problems.push(format!("systemd-analyze verify failed: {}", text(&out)));
    }
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for line in all.lines() {
        if line.contains("codara-agent.service") || line.contains(&unit.display().to_string()) {
            problems.push(line.to_string());
        }
    }
    problems
}

/// The unit as shipped, but with ExecStart pointing at the binary just built (systemd-analyze
/// checks that the program exists), written to `dir/codara-agent.service`.
fn unit_for_verify(dir: &Path, unit_text: &str) -> PathBuf {
    assert!(unit_text.contains("ExecStart=/usr/local/bin/codara-agent "), "unexpected ExecStart");
    let p = dir.join("codara-agent.service");
    std::fs::write(&p, unit_text.replace("ExecStart=/usr/local/bin/codara-agent ", &format!("ExecStart={BIN} ")))
        .unwrap();
    p
}

/// Every entry under `root`: relative path → (kind, mode, uid, size, mtime ns, content hash).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let hash = if m.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                format!("{:016x}", h.finish())
            } else {
                "-".into()
            };
            let kind = if m.is_dir() {
                "d"
            } else if m.is_file() {
                "f"
            } else {
                "l"
            };
            out.insert(
                rel,
                format!(
                    "{kind} {:o} uid={} size={} mtime={}.{:09} ctime={}.{:09} {hash}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("removed {k}: {v}")),
            Some(w) if w != v => d.push(format!("changed {k}:\n    before {v}\n    after  {w}")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            d.push(format!("added {k}: {v}"));
        }
    }
    d
}

/// Runs scripts/install.sh with `args`, DESTDIR removed from its environment.
fn install_sh(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .args(args)
        .env_remove("DESTDIR")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/install.sh");
    eprintln!("install.sh {args:?}:\n{}", text(&out));
    out
}

#[track_caller]
fn install_ok(args: &[&str]) -> String {
    let out = install_sh(args);
    assert!(out.status.success(), "install.sh {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `NAME=` in a dotenv text (the last uncommented assignment).
fn env_value(env: &str, name: &str) -> Option<String> {
    env.lines().filter_map(|l| l.trim().strip_prefix(&format!("{name}="))).next_back().map(|v| v.trim().to_string())
}

/// `check-config` run on its own: clean environment (PATH only), in `cwd`.
fn check_config(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config")
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run codara-agent");
    wait_output(child, Duration::from_secs(30))
}

fn wait_output(mut child: std::process::Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {timeout:?}:\n{}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Polls `f` every 100 ms until it returns Some, for at most `timeout`.
fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The settings `--help` lists: name → default.
fn help_defaults() -> Vec<(String, String)> {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let list = s.split("with defaults:").nth(1).expect("a settings list in --help");
    list.lines()
        .filter(|l| l.starts_with("  ") && l.trim_start().chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            // Columns: name padded to 22, default padded to 27 (a longer one pushes the help
            // right); no default has a space in it.
            let default = match l.get(25..) {
                Some(rest) if !rest.starts_with(' ') => rest.split(' ').next().unwrap_or("").to_string(),
                _ => String::new(),
            };
            (name, default)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// (a) The service definitions.
// ---------------------------------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit_text = read(&repo().join("config/codara-agent.service"));
    let dir = TempDir::new("unit");
    let unit = unit_for_verify(dir.path(), &unit_text);
    let problems = systemd_verify(&unit);
    assert!(problems.is_empty(), "systemd-analyze verify complains about the unit:\n{}", problems.join("\n"));

    // The check itself catches mistakes: a misspelt key and a bad value are reported.
    let bad = unit_for_verify(dir.path(), &unit_text.replace("KillMode=mixed", "KilMode=mixed"));
    assert!(!systemd_verify(&bad).is_empty(), "a misspelt key went unnoticed: the verify check is blind");
    let bad = unit_for_verify(dir.path(), &unit_text.replace("KillMode=mixed", "KillMode=sometimes"));
    assert!(!systemd_verify(&bad).is_empty(), "a bad value went unnoticed: the verify check is blind");
}

#[test]
fn systemd_unit_has_the_hardening_and_stop_settings() {
    let unit_text = read(&repo().join("config/codara-agent.service"));
    let u = parse_unit(&unit_text);
    let one = |sec: &str, key: &str| -> String {
        let v = u.get(sec).and_then(|s| s.get(key)).unwrap_or_else(|| panic!("[{sec}] {key}= missing"));
        assert_eq!(v.len(), 1, "[{sec}] {key}= given {} times", v.len());
        v[0].clone()
    };
    let words = |sec: &str, key: &str| -> Vec<String> {
        u.get(sec)
            .and_then(|s| s.get(key))
            .map(|vs| vs.iter().flat_map(|v| v.split_whitespace().map(String::from)).collect())
            .unwrap_or_default()
    };
    let s = "Service";
    assert!(words("Unit", "After").contains(&"network-online.target".to_string()));
    assert!(words("Unit", "Wants").contains(&"network-online.target".to_string()));
    assert_eq!(one(s, "User"), "codara");
    assert_eq!(one(s, "Group"), "codara");
    assert_eq!(one(s, "ExecStart"), "/usr/local/bin/codara-agent serve --env-file /etc/codara-agent/.env");
    let state = words(s, "StateDirectory");
    assert!(state.contains(&"codara-agent".to_string()), "StateDirectory {state:?}");
    assert_eq!(state[0], "codara-agent", "the first StateDirectory is the agent's DATA_DIR");
    assert!(one(s, "WorkingDirectory").starts_with("/var/lib/codara-agent"));
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("Restart", "always"),
        ("RestartSec", "5"),
        ("KillMode", "mixed"),
        ("LimitNOFILE", "65536"),
    ] {
        assert_eq!(one(s, k), v, "{k}");
    }
    let rw = words(s, "ReadWritePaths");
    assert!(!rw.is_empty(), "ReadWritePaths= missing");
    for p in &rw {
        assert!(
            p.trim_start_matches('-').starts_with("/var/lib/codara-agent/")
                || p == "/var/lib/codara-agent"
                || p == "-/var/lib/codara-task",
            "writable path outside the state dir and the task user's home: {p}"
        );
    }
    // TASK_USER: exactly the three capabilities it needs, and no others.
    assert_eq!(one(s, "AmbientCapabilities"), "CAP_SETUID CAP_SETGID CAP_KILL");
    assert_eq!(one(s, "CapabilityBoundingSet"), "CAP_SETUID CAP_SETGID CAP_KILL");
    // HOME must be writable under ProtectHome/ProtectSystem: the unit points it at the state dir.
    let home = words(s, "Environment").into_iter().find_map(|e| e.strip_prefix("HOME=").map(String::from));
    assert!(home.is_some_and(|h| h.starts_with("/var/lib/codara-agent")), "Environment=HOME=<state dir> missing");

    // The stop timeout leaves room for the drain: SHUTDOWN_TIMEOUT + KILL_GRACE + a margin, with
    // the values the example .env ships.
    let stop = one(s, "TimeoutStopSec");
    let secs: u64 =
        stop.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("TimeoutStopSec={stop}: want seconds"));
    let env = read(&repo().join("config/.env.example"));
    let ms = |n: &str| {
        env_value(&env, n).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{n} in .env.example"))
    };
    let drain = (ms("SHUTDOWN_TIMEOUT") + ms("KILL_GRACE")).div_ceil(1000);
    assert!(secs >= drain + 5, "TimeoutStopSec={secs}s is not above the drain ({drain}s) plus a margin");
}

#[test]
fn launchd_plist_is_valid() {
    let path = repo().join("config/com.codara.agent.plist");
    let script = "import json, plistlib, sys\nprint(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let out = match Command::new("python3").args(["-c", script]).arg(&path).output() {
        Ok(o) => o,
        Err(e) => panic!("python3 is needed to parse the plist (install python3): {e}"),
    };
    assert!(out.status.success(), "the plist does not parse:\n{}", text(&out));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["Label"], "com.codara.agent");
    let args: Vec<&str> = p["ProgramArguments"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(args[0].ends_with("/codara-agent"), "{args:?}");
    assert_eq!(args[1..3], ["serve", "--env-file"], "{args:?}");
    assert!(args[3].ends_with("/.env"), "{args:?}");
    assert_eq!(p["RunAtLoad"], true);
    assert_eq!(p["KeepAlive"], true);
    assert_eq!(p["UserName"], "codara");
    assert_eq!(p["WorkingDirectory"], "/usr/local/var/codara-agent");
    assert!(p["ExitTimeOut"].as_u64().unwrap() >= 40, "ExitTimeOut below the drain time");
    for k in ["StandardOutPath", "StandardErrorPath"] {
        assert!(p[k].as_str().is_some_and(|s| s.starts_with('/') && s.ends_with(".log")), "{k}: {}", p[k]);
    }
}

#[test]
fn env_example_lists_every_setting_with_its_default_and_is_accepted() {
    let path = repo().join("config/.env.example");
    let env = read(&path);
    let mut missing = Vec::new();
    for (name, default) in help_defaults() {
        let active = env_value(&env, &name);
        let commented = env.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{name}=")));
        match name.as_str() {
            // Unset on purpose: generated when unset; DATA_DIR falls back to $STATE_DIRECTORY.
            "CLUSTER_SECRET" | "DATA_DIR" => {
                assert!(active.is_none(), "{name} must stay commented out in .env.example");
                assert!(commented, "{name} should appear (commented out) in .env.example");
            }
            _ => match active {
                Some(v) if v == default => {}
                Some(v) => missing.push(format!("{name}={v}, but the default is {default:?}")),
                None => missing.push(format!("{name} missing")),
            },
        }
        // Each setting has a comment line right above it.
        let lines: Vec<&str> = env.lines().collect();
        let i = lines.iter().position(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{name}="))).unwrap();
        assert!(i > 0 && lines[i - 1].starts_with('#'), "{name} has no comment above it");
    }
    assert!(missing.is_empty(), ".env.example vs --help:\n{}", missing.join("\n"));
    assert!(env.contains("16 bytes") && env.contains("your-cluster-secret-key"), "the secret's rules are explained");

    let cwd = TempDir::new("envexample");
    let out = check_config(cwd.path(), &["--env-file", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "check-config rejects config/.env.example:\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("# configuration is valid"), "{}", text(&out));
    assert!(!cwd.path().join("data").exists(), "check-config created DATA_DIR");
}

// ---------------------------------------------------------------------------------------------
// (b) scripts/install.sh
// ---------------------------------------------------------------------------------------------

#[test]
fn install_script_lays_out_files_idempotently_and_uninstalls() {
    let t = TempDir::new("install");
    let root = t.path().join("root");
    let d = root.to_str().unwrap();
    let args = ["--destdir", d, "--prefix", "/usr/local", "--binary", BIN];

    let first = install_ok(&args);
    assert!(first.contains("skipping creation of user"), "no user is created under DESTDIR: {first}");
    let bin = root.join("usr/local/bin/codara-agent");
    let env = root.join("etc/codara-agent/.env");
    let unit = root.join("etc/systemd/system/codara-agent.service");
    assert_eq!(mode(&bin), 0o755, "binary mode");
    assert_eq!(mode(&env), 0o600, ".env mode");
    assert_eq!(mode(&unit), 0o644, "unit mode");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(BIN).unwrap(), "installed binary differs");
    assert_eq!(
        read(&unit),
        read(&repo().join("config/codara-agent.service")),
        "the unit (prefix /usr/local) as shipped"
    );
    let env_text = read(&env);
    let secret = env_value(&env_text, "CLUSTER_SECRET").expect("an active CLUSTER_SECRET= line in the new .env");
    assert!(secret.len() >= 32 && secret.chars().all(|c| c.is_ascii_hexdigit()), "CLUSTER_SECRET={secret:?}");
    assert_eq!(env_text.matches("\nCLUSTER_SECRET=").count(), 1, "exactly one CLUSTER_SECRET line");
    // Everything else is the example as shipped.
    let without: Vec<&str> =
        env_text.lines().filter(|l| !l.starts_with("CLUSTER_SECRET=") && !l.contains("install.sh")).collect();
    let example = read(&repo().join("config/.env.example"));
    let example_without: Vec<&str> =
        example.lines().filter(|l| !l.trim_start_matches(['#', ' ']).starts_with("CLUSTER_SECRET=")).collect();
    assert_eq!(without, example_without, "the new .env is the example plus the secret");
    // The generated file is accepted by the agent, and check-config keeps the secret to itself.
    let out = check_config(t.path(), &["--env-file", env.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains(&secret), "check-config printed the secret:\n{all}");

    // A second run changes nothing at all.
    let before = snapshot(&root);
    std::thread::sleep(Duration::from_millis(1100));
    let second = install_ok(&args);
    assert!(second.contains("already"), "the second run should say it is already installed: {second}");
    let changes = diff(&before, &snapshot(&root));
    assert!(changes.is_empty(), "the second run changed files:\n{}", changes.join("\n"));
    assert_eq!(env_value(&read(&env), "CLUSTER_SECRET").as_deref(), Some(secret.as_str()), "secret changed");

    // An existing .env is never overwritten, even when the binary is reinstalled.
    let mine = "# mine\nCLUSTER_SECRET=operator-chosen-secret-0001\nCLUSTER_PORT=4100\n";
    std::fs::write(&env, mine).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&bin).unwrap();
    install_ok(&args);
    assert_eq!(read(&env), mine, "install.sh overwrote an existing .env");
    assert_eq!(mode(&env), 0o600);
    assert_eq!(mode(&bin), 0o755, "the missing binary is installed again");

    // A wrong mode on the binary is put right without rewriting it.
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700)).unwrap();
    install_ok(&args);
    assert_eq!(mode(&bin), 0o755);

    // Uninstall: binary and unit go, settings stay. Twice is fine.
    install_ok(&["--uninstall", "--destdir", d, "--prefix", "/usr/local"]);
    assert!(!bin.exists(), "binary still there after --uninstall");
    assert!(!unit.exists(), "unit still there after --uninstall");
    assert_eq!(read(&env), mine, "--uninstall must keep /etc/codara-agent/.env");
    install_ok(&["--uninstall", "--destdir", d]);
    // --purge removes the settings too.
    install_ok(&["--uninstall", "--purge", "--destdir", d]);
    assert!(!env.exists(), "--purge keeps the .env");
}

#[test]
fn install_script_options() {
    let t = TempDir::new("install-opts");
    let root = t.path().join("root");
    let d = root.to_str().unwrap();

    let help = install_ok(&["--help"]);
    for opt in ["--prefix", "--destdir", "--binary", "--uninstall", "--purge"] {
        assert!(help.contains(opt), "--help does not mention {opt}");
    }
    for bad in [&["--frobnicate"][..], &["--prefix"], &["--prefix", "relative/dir"], &["--purge"]] {
        let out = install_sh(bad);
        assert_eq!(out.status.code(), Some(2), "install.sh {bad:?} should be a usage error:\n{}", text(&out));
    }
    // A binary that does not exist: an error, and nothing half-installed.
    let out = install_sh(&["--destdir", d, "--binary", "/nonexistent/codara-agent"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!root.join("usr/local/bin/codara-agent").exists());
    assert!(!root.join("etc/codara-agent/.env").exists());

    // Another prefix: the binary goes there and the unit's ExecStart follows. DESTDIR may
    // also come from the environment.
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .args(["--prefix", "/opt/codara", "--binary", BIN])
        .env("DESTDIR", d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&root.join("opt/codara/bin/codara-agent")), 0o755);
    let unit = read(&root.join("etc/systemd/system/codara-agent.service"));
    assert!(
        unit.lines().any(|l| l == "ExecStart=/opt/codara/bin/codara-agent serve --env-file /etc/codara-agent/.env"),
        "ExecStart does not follow --prefix:\n{unit}"
    );
    assert!(!unit.contains("/usr/local/bin/codara-agent"), "a /usr/local path is left in the unit");
    // The rewritten unit still verifies (with ExecStart on the real binary).
    let vdir = TempDir::new("unit-prefix");
    let p = vdir.path().join("codara-agent.service");
    std::fs::write(&p, unit.replace("/opt/codara/bin/codara-agent", BIN)).unwrap();
    let problems = systemd_verify(&p);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What the unit does, done by hand: the agent started as `serve --env-file <installed .env>`
/// in a state directory, with `$STATE_DIRECTORY` set (two entries, as with
/// `StateDirectory=codara-agent codara-agent/jobs`) and no DATA_DIR: the data goes to the first
/// state directory, jobs to ./jobs, and the secret from the file opens the API.
#[test]
fn agent_runs_like_the_unit_runs_it() {
    let t = TempDir::new("as-unit");
    let root = t.path().join("root");
    install_ok(&["--destdir", root.to_str().unwrap(), "--binary", BIN]);
    let env_file = root.join("etc/codara-agent/.env");
    let secret = env_value(&read(&env_file), "CLUSTER_SECRET").unwrap();
    let state = TempDir::new("as-unit-state");
    let jobs = state.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::create_dir_all(jobs.join("hello")).unwrap();
    std::fs::write(jobs.join("hello/run.sh"), "echo job-ran-in-$PWD\n").unwrap();

    let mut cmd = common::base_command(state.path(), &state.path().join("unused"));
    cmd.env_remove("DATA_DIR")
        .env_remove("CLUSTER_SECRET")
        .env_remove("JOBS_BASE_PATH")
        .env("STATE_DIRECTORY", format!("{}:{}", state.path().display(), jobs.display()))
        .args(["serve", "--env-file", env_file.to_str().unwrap()]);

    // check-config first, the way an operator would.
    let mut check = common::base_command(state.path(), &state.path().join("unused"));
    check
        .env_remove("DATA_DIR")
        .env_remove("CLUSTER_SECRET")
        .env_remove("JOBS_BASE_PATH")
        .env("STATE_DIRECTORY", format!("{}:{}", state.path().display(), jobs.display()))
        .args(["check-config", "--env-file", env_file.to_str().unwrap()]);
    let out = common::run_binary(check, Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
    assert!(out.stdout.lines().any(|l| l == format!("DATA_DIR={}", state.path().display())), "{}", out.stdout);
    assert!(!out.stdout.contains(&secret) && !out.stderr.contains(&secret), "secret printed: {out:?}");

    let data = state.path().to_path_buf();
    let state_path = state.path().to_path_buf();
    let mut a = common::spawn_agent(cmd, state, data);
    let _g = common::logs_on_panic(&a);
    assert!(state_path.join("tasks").is_dir(), "task history not under $STATE_DIRECTORY");
    assert!(!state_path.join("cluster-secret").exists(), "a secret was generated although the .env has one");
    let r = a.request("GET", "/tasks", &[("X-Cluster-Secret", &secret)], b"");
    assert_eq!(r.status, 200, "the secret from the installed .env is refused: {}", r.text());
    let r = a.request(
        "POST",
        "/execute-job?wait=true",
        &[("Authorization", &format!("Bearer {secret}")), ("Content-Type", "application/json")],
        br#"{"jobId":"hello"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let log = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(jobs.join("hello/logs/output.log")).ok().filter(|s| s.contains("job-ran-in-"))
    });
    assert!(log.is_some(), "the job under ./jobs did not run: {}", r.text());
    assert!(!a.log_text().contains(&secret), "the agent logged the secret");

    // systemd stops it with SIGTERM to the main process (KillMode=mixed): it exits 0.
    a.signal("TERM");
    let st = a.wait_exit(Duration::from_secs(40)).expect("agent still running 40 s after SIGTERM");
    assert!(st.success(), "exit status after SIGTERM: {st:?}");
}

// ---------------------------------------------------------------------------------------------
// (c) check-config
// ---------------------------------------------------------------------------------------------

#[test]
fn check_config_rejects_bad_values_naming_the_variable() {
    let cwd = TempDir::new("checkcfg-bad");
    for (var, val) in [("MAX_CPU_PERCENT", "abc"), ("CLUSTER_PORT", "70000"), ("KILL_GRACE", "-1")] {
        let out = check_config(cwd.path(), &[], &[(var, val)]);
        assert_eq!(out.status.code(), Some(2), "{var}={val}:\n{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.lines().any(|l| l.contains(var) && l.contains(val)), "{var}={val}: no line naming it:\n{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    }
    // The same from a file.
    let f = cwd.path().join("bad.env");
    std::fs::write(&f, "MAX_MEMORY_PERCENT=0\n").unwrap();
    let out = check_config(cwd.path(), &["--env-file", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAX_MEMORY_PERCENT"), "{}", text(&out));
    // A named env file that does not exist is an error too.
    let out = check_config(cwd.path(), &["--env-file", "/nonexistent/.env"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A short secret is refused without being echoed.
    let out = check_config(cwd.path(), &[], &[("CLUSTER_SECRET", "short-Xq9")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLUSTER_SECRET"), "{}", text(&out));
    assert!(!text(&out).contains("short-Xq9"), "the refused secret was echoed:\n{}", text(&out));
    assert!(!cwd.path().join("data").exists(), "check-config created DATA_DIR");
}

#[test]
fn check_config_masks_the_secret() {
    let cwd = TempDir::new("checkcfg-mask");
    let secret = "Zq7-very-private-value-4f1c9e";
    // From the environment, and from a file (the environment wins over the file).
    let f = cwd.path().join("s.env");
    std::fs::write(&f, format!("CLUSTER_SECRET={secret}\nCLUSTER_PORT=4100\nMAX_CONCURRENT_TASKS=7\n")).unwrap();
    for (args, env) in [
        (vec![], vec![("CLUSTER_SECRET", secret)]),
        (vec!["--env-file", f.to_str().unwrap()], vec![("CLUSTER_PORT", "4200")]),
    ] {
        let out = check_config(cwd.path(), &args, &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let all = text(&out);
        assert!(!all.contains(secret), "the secret appears in check-config's output:\n{all}");
        assert!(!all.contains("Zq7-very"), "part of the secret appears in check-config's output:\n{all}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("CLUSTER_SECRET=")).expect("a CLUSTER_SECRET= line");
        assert!(line.contains('*'), "not visibly masked: {line}");
        assert!(stdout.lines().any(|l| l == "# configuration is valid"), "{stdout}");
        for l in stdout.lines() {
            assert!(l.starts_with('#') || l.split_once('=').is_some_and(|(k, _)| !k.is_empty()), "odd line {l:?}");
        }
        if !args.is_empty() {
            assert!(stdout.lines().any(|l| l == "CLUSTER_PORT=4200"), "the environment must win:\n{stdout}");
            assert!(stdout.lines().any(|l| l == "MAX_CONCURRENT_TASKS=7"), "the file is read:\n{stdout}");
        }
    }
    // Unset: nothing is generated by check-config (no side effects).
    let out = check_config(cwd.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!cwd.path().join("data").exists(), "check-config created DATA_DIR or the secret file");
}

#[test]
fn help_and_version_exit_0() {
    let cwd = TempDir::new("checkcfg-help");
    for args in [&["--help"][..], &["--version"]] {
        let out = check_config(cwd.path(), args, &[]);
        assert_eq!(out.status.code(), Some(0), "check-config {args:?}:\n{}", text(&out));
        assert!(!out.stdout.is_empty(), "check-config {args:?} printed nothing");
    }
    for args in [&["--help"][..], &["--version"], &["-V"], &["-h"]] {
        let out = Command::new(BIN).args(args).current_dir(cwd.path()).env_clear().output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}:\n{}", text(&out));
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("codara-agent ") && v.trim().split(' ').nth(1).is_some_and(|n| n.contains('.')), "{v}");
    let out = Command::new(BIN).arg("--no-such-option").current_dir(cwd.path()).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// RUST_LOG is one of the settings (CONTRACT.md §1) and settings come from the environment or
/// the .env file; under the unit, the .env file is the only place an operator sets it.
/// RUST_LOG=warn there: the agent runs (it answers on its port), logs its start-up warning
/// (WS_ALLOW_ANONYMOUS=true) and no INFO line, and exits 0 on SIGTERM.
#[test]
fn rust_log_from_the_env_file_is_honoured() {
    let cwd = TempDir::new("rustlog");
    let f = cwd.path().join("quiet.env");
    std::fs::write(&f, "RUST_LOG=warn\nWS_ALLOW_ANONYMOUS=true\n").unwrap();
    // At warn level the agent does not log its port: give it one (free a moment ago).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = common::base_command(cwd.path(), &cwd.path().join("data"));
    cmd.env_remove("RUST_LOG").env("CLUSTER_PORT", port.to_string()).args(["serve", "--env-file", f.to_str().unwrap()]);
    let mut child = cmd.spawn().unwrap();
    let health = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let r = common::read_response(&mut std::io::BufReader::new(s));
        (r.status == 200).then(|| r.json())
    };
    let answered = wait_until(Duration::from_secs(20), || {
        if child.try_wait().ok().flatten().is_some() {
            return Some(None); // exited: no point waiting
        }
        health().map(Some)
    })
    .flatten();
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = wait_output(child, Duration::from_secs(40));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = answered.unwrap_or_else(|| panic!("the agent never answered /health on port {port}:\n{}", text(&out)));
    assert_eq!(v["status"], "healthy", "{v}");
    assert_eq!(out.status.code(), Some(0), "exit after SIGTERM:\n{}", text(&out));
    let info: Vec<&str> = stdout.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(
        info.is_empty(),
        "RUST_LOG=warn in --env-file is ignored (the logger reads only the process environment); \
         INFO lines were logged:\n{}",
        info.join("\n")
    );
    assert!(
        stdout.lines().any(|l| l.contains(" WARN ") && l.contains("WS_ALLOW_ANONYMOUS")),
        "no WARN line at warn level (is the logger off?):\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// (d) GET /metrics, parsed by Python's prometheus_client.
// ---------------------------------------------------------------------------------------------

const PARSER: &str = r#"
import json, math, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print("prometheus_client is not installed (%s): the CI script must `pip install prometheus_client`" % e,
          file=sys.stderr)
    sys.exit(3)
text = sys.stdin.read()
families, samples = {}, {}
for fam in text_string_to_metric_families(text):
    if fam.name in families:
        sys.exit("family %s appears twice" % fam.name)
    families[fam.name] = {"type": fam.type, "help": fam.documentation}
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        key = s.name + ("{" + labels + "}" if labels else "")
        if key in samples:
            sys.exit("sample %s appears twice" % key)
        samples[key] = s.value if math.isfinite(s.value) else str(s.value)
print(json.dumps({"families": families, "samples": samples}))
"#;

struct Parsed {
    families: serde_json::Map<String, Value>,
    samples: HashMap<String, f64>,
}

impl Parsed {
    #[track_caller]
    fn get(&self, key: &str) -> f64 {
        *self.samples.get(key).unwrap_or_else(|| {
            let mut keys: Vec<_> = self.samples.keys().collect();
            keys.sort();
            panic!("no sample {key} in /metrics; samples: {keys:?}")
        })
    }
}

/// Parses an exposition with prometheus_client; panics with the parser's complaint.
fn parse_metrics(body: &str) -> Parsed {
    let mut child = match Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "python3 with prometheus_client is needed (apt-get install python3; pip install prometheus_client): {e}"
        ),
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    if out.status.code() == Some(3) {
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(out.status.success(), "prometheus_client cannot parse /metrics:\n{}\n--- body ---\n{body}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = v["families"].as_object().unwrap().clone();
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or_else(|| if v == "inf" { f64::INFINITY } else { f64::NAN })))
        .collect();
    Parsed { families, samples }
}

fn fetch_metrics(a: &common::Agent) -> Parsed {
    let r = a.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "GET /metrics without the secret: {}", r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
    let body = r.text();
    assert!(body.ends_with('\n'), "the exposition must end with a newline");
    parse_metrics(&body)
}

const STARTED: &str = "codara_tasks_started_total";
const COMPLETED: &str = "codara_tasks_finished_total{status=\"completed\"}";
const FAILED: &str = "codara_tasks_finished_total{status=\"failed\"}";
const CANCELLED: &str = "codara_tasks_finished_total{status=\"cancelled\"}";
const REJECTED_SLOTS: &str = "codara_tasks_rejected_total{reason=\"slots\"}";
const REFUSED: &str = "codara_refused_requests_total";
const DURATION_COUNT: &str = "codara_task_duration_seconds_count";

#[test]
fn metrics_parse_and_count_what_happened() {
    let a = common::agent().env("MAX_CONCURRENT_TASKS", "1").start();
    let _g = common::logs_on_panic(&a);
    let m0 = fetch_metrics(&a);
    let ty = |m: &Parsed, f: &str| m.families.get(f).map(|v| v["type"].as_str().unwrap().to_string());
    for (fam, want) in [
        ("codara_tasks_started", "counter"),
        ("codara_tasks_finished", "counter"),
        ("codara_tasks_rejected", "counter"),
        ("codara_refused_requests", "counter"),
        ("codara_running_tasks", "gauge"),
        ("codara_task_duration_seconds", "histogram"),
        ("process_cpu_seconds", "counter"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_threads", "gauge"),
        ("codara_build_info", "gauge"),
    ] {
        assert_eq!(ty(&m0, fam).as_deref(), Some(want), "family {fam}");
    }
    for k in [STARTED, COMPLETED, FAILED, CANCELLED, REJECTED_SLOTS, REFUSED, DURATION_COUNT] {
        assert_eq!(m0.get(k), 0.0, "{k} on a fresh agent");
    }
    assert_eq!(m0.get("codara_max_tasks"), 1.0);

    // One success, one failure.
    assert_eq!(a.run_wait(json!({"command": "true"}))["status"], "completed");
    assert_eq!(a.run_wait(json!({"command": "false"}))["status"], "failed");
    // One that is cancelled, and while it holds the only slot, one that is rejected.
    let id = a.run("sleep", &["30"]);
    let r = a.post("/execute", &json!({"command": "true"}));
    assert_eq!(r.status, 503, "with MAX_CONCURRENT_TASKS=1 busy: {}", r.text());
    let mid = fetch_metrics(&a);
    assert_eq!(mid.get("codara_running_tasks"), 1.0);
    let r = a.post(&format!("/task/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.wait_task(id)["status"], "cancelled");
    // Two refused requests: a wrong secret and none at all.
    assert_eq!(a.request("GET", "/tasks", &[("X-Cluster-Secret", "wrong-secret-0123456789")], b"").status, 403);
    assert_eq!(a.request("GET", "/tasks", &[], b"").status, 403);

    let want = [
        (STARTED, 3.0),
        (COMPLETED, 1.0),
        (FAILED, 1.0),
        (CANCELLED, 1.0),
        (REJECTED_SLOTS, 1.0),
        (REFUSED, 2.0),
        (DURATION_COUNT, 3.0),
        ("codara_running_tasks", 0.0),
    ];
    // The counters of an ending task may land a moment after its status: poll (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let m1 = loop {
        let m = fetch_metrics(&a);
        if want.iter().all(|(k, v)| m.get(k) == *v) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wrong: Vec<String> =
        want.iter().filter(|(k, v)| m1.get(k) != *v).map(|(k, v)| format!("{k} = {}, want {v}", m1.get(k))).collect();
    assert!(wrong.is_empty(), "/metrics after the tasks:\n{}", wrong.join("\n"));
    for k in ["codara_tasks_rejected_total{reason=\"cpu\"}", "codara_tasks_rejected_total{reason=\"memory\"}"] {
        assert_eq!(m1.get(k), 0.0, "{k}");
    }

    // The histogram is consistent: cumulative buckets, +Inf = count, a plausible sum (the
    // sleep ran at least until it was cancelled, the other two were quick).
    let mut buckets: Vec<(f64, f64)> = m1
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("codara_task_duration_seconds_bucket{le=\"")?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(buckets.len() >= 2, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets not cumulative: {buckets:?}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 3.0), "+Inf bucket");
    let sum = m1.get("codara_task_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 60.0, "duration sum {sum}");

    // Counters never go down.
    for (k, v) in &m0.samples {
        if k.ends_with("_total") || k.ends_with("_count") || k.contains("_bucket") {
            assert!(m1.get(k) >= *v, "{k} went down");
        }
    }
}

/// The standard `process_*` series and `codara_build_info`: present, parsed, and plausible
/// for a small agent; `process_open_fds` follows connections held open.
#[test]
fn metrics_report_the_process() {
    let epoch = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let before = epoch();
    let a = common::agent().start();
    let _g = common::logs_on_panic(&a);
    let m = fetch_metrics(&a);
    for fam in ["process_cpu_seconds", "process_open_fds", "process_resident_memory_bytes", "codara_build_info"] {
        let help = m.families.get(fam).and_then(|f| f["help"].as_str()).unwrap_or("");
        assert!(!help.is_empty(), "family {fam} has no # HELP");
    }
    let rss = m.get("process_resident_memory_bytes");
    assert!(rss > (1 << 20) as f64 && rss < (1 << 30) as f64, "resident memory {rss} bytes");
    assert!(m.get("process_virtual_memory_bytes") >= rss, "virtual below resident");
    let cpu = m.get("process_cpu_seconds_total");
    assert!((0.0..600.0).contains(&cpu), "cpu seconds {cpu}");
    let threads = m.get("process_threads");
    assert!(threads > 3.0 && threads < 4096.0, "threads {threads}");
    let fds = m.get("process_open_fds");
    assert!(fds > 3.0 && m.get("process_max_fds") >= fds, "open fds {fds}, max {}", m.get("process_max_fds"));
    // Started between the test's spawn and now (generous: btime has whole seconds and the
    // wall clock may be stepped), and certainly within the last hour.
    let start = m.get("process_start_time_seconds");
    let now = epoch();
    assert!(start > before - 300.0 && start < now + 60.0 && start > now - 3600.0, "start {start}, spawned {before}");
    let version = format!("codara_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m.get(&version), 1.0);
    assert_eq!(m.samples.keys().filter(|k| k.starts_with("codara_build_info")).count(), 1, "one build_info");

    // Each connection held open is one more descriptor in the agent.
    const HELD: usize = 16;
    let held: Vec<std::net::TcpStream> = (0..HELD).map(|_| keep_alive_connection(&a)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (m2, fds2) = loop {
        let m2 = fetch_metrics(&a);
        let fds2 = m2.get("process_open_fds");
        if fds2 >= fds + HELD as f64 || Instant::now() > deadline {
            break (m2, fds2);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(fds2 >= fds + HELD as f64, "open fds {fds} -> {fds2} with {HELD} more connections open");
    // Where the test may look at the agent's descriptors itself, the figure matches (give
    // or take the scrape's own connection and directory handle).
    let seen = a.fd_count() as f64;
    assert!(seen == 0.0 || (fds2 - seen).abs() <= 8.0, "process_open_fds {fds2}, /proc/<pid>/fd has {seen}");
    assert!(m2.get("process_cpu_seconds_total") >= cpu, "the CPU counter went down");
    drop(held);
}

/// A connection that has had one request answered and stays open (keep-alive), so the agent
/// has certainly accepted it.
fn keep_alive_connection(a: &common::Agent) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(a.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = common::read_response(&mut std::io::BufReader::new(&s));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("connection"), Some("close"), "the agent closes a keep-alive connection");
    s
}

#[test]
fn metrics_can_require_the_secret() {
    let open = common::agent().start();
    let r = open.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "public by default: {}", r.text());

    let a = common::agent().env("METRICS_REQUIRE_SECRET", "true").start();
    let _g = common::logs_on_panic(&a);
    let r = a.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 403, "METRICS_REQUIRE_SECRET=true, no secret: {}", r.text());
    assert_eq!(r.json()["error"], "Invalid cluster secret");
    let r = a.request("GET", "/metrics", &[("X-Cluster-Secret", "wrong-secret-0123456789")], b"");
    assert_eq!(r.status, 403, "wrong secret: {}", r.text());
    let r = a.request("GET", "/metrics", &[("X-Cluster-Secret", common::SECRET)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = format!("Bearer {}", common::SECRET);
    let r = a.request("GET", "/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = parse_metrics(&r.text());
    assert_eq!(m.get(REFUSED), 2.0, "the two refused /metrics requests are counted");
    // /health stays public.
    assert!(a.health_ok());
}

// ---------------------------------------------------------------------------------------------
// (e) Every series the README's Metrics section lists, with its type and a value that follows
//     what happened: tasks of each end, each kind of refusal, a client closed as too slow,
//     discovery sends and send errors.
// ---------------------------------------------------------------------------------------------

/// The README's series: family name (as the parser names it) → type.
const README_FAMILIES: &[(&str, &str)] = &[
    ("codara_tasks_started", "counter"),
    ("codara_tasks_finished", "counter"),
    ("codara_tasks_timed_out", "counter"),
    ("codara_tasks_rejected", "counter"),
    ("codara_refused_requests", "counter"),
    ("codara_discovery_packets_sent", "counter"),
    ("codara_discovery_send_errors", "counter"),
    ("codara_websocket_clients_closed_slow", "counter"),
    ("codara_running_tasks", "gauge"),
    ("codara_max_tasks", "gauge"),
    ("codara_websocket_clients", "gauge"),
    ("codara_cpu_usage_percent", "gauge"),
    ("codara_memory_usage_percent", "gauge"),
    ("codara_load_average_1m", "gauge"),
    ("codara_task_duration_seconds", "histogram"),
    ("codara_build_info", "gauge"),
    ("process_cpu_seconds", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_threads", "gauge"),
];

fn rejected(reason: &str) -> String {
    format!("codara_tasks_rejected_total{{reason=\"{reason}\"}}")
}

/// Scrapes until every `(sample, value)` in `want` holds (30 s at most); the last scrape.
#[track_caller]
fn metrics_when(a: &common::Agent, want: &[(&str, f64)]) -> Parsed {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = fetch_metrics(a);
        let wrong: Vec<String> = want
            .iter()
            .filter(|(k, v)| m.samples.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} = {:?}, want {v}", m.samples.get(*k)))
            .collect();
        if wrong.is_empty() {
            return m;
        }
        assert!(Instant::now() < deadline, "/metrics after 30 s:\n{}", wrong.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A WebSocket client that never reads (a 4 KiB receive buffer): it falls behind at once.
fn stalled_ws_client(a: &common::Agent) -> std::net::TcpStream {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::Read;
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&SockAddr::from(a.addr().parse::<std::net::SocketAddr>().unwrap())).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Cluster-Secret: {}\r\n\r\n",
        common::SECRET
    );
    s.write_all(req.as_bytes()).unwrap();
    let (mut head, mut b) = (Vec::new(), [0u8; 1]);
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused: {}", String::from_utf8_lossy(&head));
    s
}

/// A busy loop (killed on drop), to push CPU usage over MAX_CPU_PERCENT=1.
struct Burner(std::process::Child);

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_have_every_readme_series_and_follow_what_happened() {
    // A UDP port this test holds, so the announcements reach no one else's socket; the
    // second target, IPv6 loopback, cannot be sent to from the agent's IPv4 socket: a send
    // error on every packet, and nothing leaves the host.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let mut a = common::agent()
        .env("MAX_CONCURRENT_TASKS", "1")
        .env("SHUTDOWN_TIMEOUT", "60000")
        .env("DISCOVERY_ENABLED", "true")
        .env("DISCOVERY_PORT", &port.to_string())
        .env("DISCOVERY_ADDRESSES", &format!("127.255.255.255,[::1]:{port}"))
        .env("ANNOUNCE_INTERVAL", "100")
        .start();
    let _g = common::logs_on_panic(&a);
    let m0 = fetch_metrics(&a);
    let types: Vec<String> = README_FAMILIES
        .iter()
        .filter(|(f, t)| m0.families.get(*f).and_then(|v| v["type"].as_str()) != Some(*t))
        .map(|(f, t)| format!("{f}: {:?}, want {t}", m0.families.get(*f).map(|v| &v["type"])))
        .collect();
    assert!(types.is_empty(), "README series missing or of the wrong type:\n{}", types.join("\n"));
    for reason in ["slots", "cpu", "memory", "shutdown"] {
        assert_eq!(m0.get(&rejected(reason)), 0.0, "{reason} on a fresh agent");
    }

    // Tasks: completed, failed, timed out (failed too).
    assert_eq!(a.run_wait(json!({"command": "true"}))["status"], "completed");
    assert_eq!(a.run_wait(json!({"command": "false"}))["status"], "failed");
    let t = a.run_wait(json!({"command": "sleep", "args": ["3051"], "timeout": 200}));
    assert_eq!(t["timedOut"], true, "{t}");
    // A client that never reads, while a task writes 3 MiB of NUL bytes (18 MiB as JSON):
    // it is closed as too slow.
    let stalled = stalled_ws_client(&a);
    assert_eq!(a.run_wait(json!({"command": "head", "args": ["-c", "3145728", "/dev/zero"]}))["status"], "completed");
    metrics_when(&a, &[("codara_websocket_clients_closed_slow_total", 1.0), ("codara_websocket_clients", 0.0)]);
    drop(stalled);
    // One refused request, and a task refused for want of a slot.
    assert_eq!(a.request("GET", "/tasks", &[], b"").status, 403);
    let holder = a.run("sleep", &["3052"]);
    assert_eq!(a.post("/execute", &json!({"command": "true"})).status, 503);
    // One refused while draining.
    a.signal("TERM");
    let log = a.wait_log("draining", Duration::from_secs(10));
    assert!(log.contains("draining"), "{log}");
    let r = a.post("/execute", &json!({"command": "true"}));
    assert_eq!(r.json()["reason"], "shutdown", "{}", r.text());

    let m = metrics_when(
        &a,
        &[
            ("codara_tasks_started_total", 5.0),
            ("codara_tasks_finished_total{status=\"completed\"}", 2.0),
            ("codara_tasks_finished_total{status=\"failed\"}", 2.0),
            ("codara_tasks_finished_total{status=\"cancelled\"}", 0.0),
            ("codara_tasks_timed_out_total", 1.0),
            (&rejected("slots"), 1.0),
            (&rejected("shutdown"), 1.0),
            (&rejected("cpu"), 0.0),
            (&rejected("memory"), 0.0),
            ("codara_refused_requests_total", 1.0),
            ("codara_websocket_clients_closed_slow_total", 1.0),
            ("codara_running_tasks", 1.0),
            ("codara_max_tasks", 1.0),
            ("codara_task_duration_seconds_count", 4.0),
        ],
    );
    let sent = m.get("codara_discovery_packets_sent_total");
    let errors = m.get("codara_discovery_send_errors_total");
    assert!(sent >= 1.0 && errors >= 1.0, "discovery: {sent} packets sent, {errors} send errors (one target fails)");
    let log = a.log_text();
    assert!(log.contains("discovery: cannot send to [::1]"), "the failing target is not logged:\n{log}");
    for k in ["codara_cpu_usage_percent", "codara_memory_usage_percent"] {
        let v = m.get(k);
        assert!((0.0..=100.0).contains(&v), "{k} = {v}");
    }
    assert!(m.get("codara_memory_usage_percent") > 0.0, "no memory in use at all?");
    let load: f64 = std::fs::read_to_string("/proc/loadavg").unwrap().split(' ').next().unwrap().parse().unwrap();
    let la = m.get("codara_load_average_1m");
    assert!(la >= 0.0 && (la - load).abs() < load.max(1.0), "load average {la}, /proc/loadavg says {load}");
    assert_eq!(m.get(&format!("codara_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);

    // The drain ends when the last task does.
    assert_eq!(a.post(&format!("/task/{holder}/cancel"), &json!({})).status, 200);
    let st = a.wait_exit(Duration::from_secs(60)).expect("agent exits once its last task ended");
    assert_eq!(st.code(), Some(0), "{st:?}");

    // CPU and memory refusals, each on an agent whose limit is 1%.
    let b = common::agent().env("MAX_MEMORY_PERCENT", "1").start();
    assert_eq!(b.post("/execute", &json!({"command": "true"})).json()["reason"], "memory");
    metrics_when(&b, &[(&rejected("memory"), 1.0), (&rejected("cpu"), 0.0), ("codara_tasks_started_total", 0.0)]);
    let c = common::agent().env("MAX_CPU_PERCENT", "1").start();
    let _busy = Burner(Command::new("sh").args(["-c", "while :; do :; done"]).stdin(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.post("/execute?wait=true", &json!({"command": "true"}));
        if r.status == 503 {
            assert_eq!(r.json()["reason"], "cpu", "{}", r.text());
            break;
        }
        assert!(Instant::now() < deadline, "no CPU refusal in 20 s with a busy loop and MAX_CPU_PERCENT=1");
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = fetch_metrics(&c);
    assert_eq!(m.get(&rejected("cpu")), 1.0);
    assert_eq!(m.get(&rejected("memory")), 0.0);
    drop(udp);
}
