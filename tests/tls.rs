//! TLS on the API and WebSocket (issue 14), checked with independent clients: curl
//! (`--cacert`), Python's `ssl` + `websockets` (`tests/tls_clients.py`) and Node's `ws`
//! (`tests/tls_node.js`). Certificates are made here with the `openssl` command; every
//! agent is on 127.0.0.1 with discovery off (tests/common).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, TempDir, SECRET};

/// A test CA, a server certificate for localhost/127.0.0.1 signed by it, a client certificate
/// signed by it, and a client certificate signed by another CA.
struct Pki {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    /// `None` (and the test fails, or is skipped with CODARA_TEST_ALLOW_SKIP=1) without openssl.
    #[track_caller]
    fn new(test: &str) -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            common::skip_or_fail(test, "the `openssl` command is missing (scripts/test.sh installs it)");
            return None;
        }
        if !have(test, "curl") {
            return None;
        }
        let pki = Pki { dir: TempDir::new("pki") };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        pki.leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        Some(pki)
    }

    fn ca(&self, name: &str) {
        let (key, pem, cn) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN=codara test {name}"));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &cn, "-keyout", &key, "-out", &pem];
        args.extend(EC);
        openssl(self.dir.path(), &args);
    }

    /// `name.pem`/`name.key`, signed by `ca`, with the extensions `ext`.
    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        let d = self.dir.path();
        let (key, csr, pem, extf) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(d.join(&extf), format!("basicConstraints=CA:FALSE\n{ext}")).unwrap();
        let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=localhost", "-keyout", &key, "-out", &csr];
        args.extend(EC);
        openssl(d, &args);
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            d,
            &["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-days", "2"]
                .into_iter()
                .chain(["-out", &pem, "-extfile", &extf])
                .collect::<Vec<_>>(),
        );
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn p(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }

    /// SHA-256 of a PEM certificate's DER, lowercase hex without colons.
    fn fingerprint(&self, f: &str) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", &self.p(f)])
            .output()
            .expect("openssl x509");
        let s = String::from_utf8_lossy(&out.stdout);
        s.trim().rsplit('=').next().unwrap_or("").replace(':', "").to_ascii_lowercase()
    }
}

fn tls_agent(pki: &Pki, extra: &[(&str, &str)]) -> Agent {
    let mut b = common::agent().env("TLS_CERT", &pki.p("server.pem")).env("TLS_KEY", &pki.p("server.key"));
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start()
}

/// Whether `program --version` runs; when not, `test` fails (or is skipped with
/// CODARA_TEST_ALLOW_SKIP=1) naming it.
#[track_caller]
fn have(test: &str, program: &str) -> bool {
    let ok = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        common::skip_or_fail(test, &format!("`{program}` is missing (scripts/test.sh installs it)"));
    }
    ok
}

/// Runs a client command to its end within `timeout` (killed after it).
fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn client");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("client output")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `tests/tls_clients.py MODE` against the agent; `None` when Python or `websockets`
/// is missing and the test may be skipped.
#[track_caller]
fn python(test: &str, mode: &str, a: &Agent, pki: &Pki, client: Option<&str>) -> Option<Output> {
    if !have(test, "python3") {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_clients.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, mode, &a.port.to_string(), SECRET, &pki.p("ca.pem")]);
    if let Some(c) = client {
        cmd.args([pki.p(&format!("{c}.pem")), pki.p(&format!("{c}.key"))]);
    }
    let out = run_bounded(cmd, Duration::from_secs(300));
    if out.status.code() == Some(3) {
        common::skip_or_fail(
            test,
            &format!("python3 with `websockets` is needed (scripts/test.sh installs it): {}", text(&out)),
        );
        return None;
    }
    Some(out)
}

fn curl(args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30"]).args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

#[test]
fn a_task_is_submitted_and_streamed_over_tls_to_curl_python_and_node() {
    let test = "a_task_is_submitted_and_streamed_over_tls_to_curl_python_and_node";
    let Some(pki) = Pki::new(test) else { return };
    let a = tls_agent(&pki, &[]);
    let url = format!("https://localhost:{}", a.port);
    // curl, trusting only the test CA
    let out = curl(&["--cacert", &pki.p("ca.pem"), &format!("{url}/health")]);
    assert!(text(&out).contains("\"healthy\""), "curl /health over TLS: {}\n{}", text(&out), a.log_text());
    let out = curl(&[
        "--cacert",
        &pki.p("ca.pem"),
        "-H",
        &format!("X-Cluster-Secret: {SECRET}"),
        "-d",
        r#"{"command":"sh","args":["-c","echo from-curl"]}"#,
        &format!("{url}/execute?wait=true"),
    ]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(t["stdout"], "from-curl\n", "{t}");
    // curl without the CA refuses the certificate: it is really TLS with our certificate
    let out = curl(&[&format!("{url}/health")]);
    assert!(!out.status.success(), "curl trusted an unknown CA: {}", text(&out));
    // Python ssl + websockets
    let Some(out) = python(test, "stream", &a, &pki, None) else { return };
    assert!(out.status.success() && text(&out).contains("OK stream"), "python: {}\n{}", text(&out), a.log_text());
    // Node ws
    if !have(test, "node") {
        return;
    }
    let node_path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-node/node_modules");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", node_path).args([
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_node.js"),
        &a.port.to_string(),
        SECRET,
        &pki.p("ca.pem"),
    ]);
    let out = run_bounded(cmd, Duration::from_secs(90));
    if out.status.code() == Some(3) || out.status.code().is_none() {
        common::skip_or_fail(
            test,
            &format!(
                "node with the `ws` package in {node_path} is needed (scripts/test.sh installs it): {}",
                text(&out)
            ),
        );
        return;
    }
    assert!(out.status.success() && text(&out).contains("OK node"), "node: {}\n{}", text(&out), a.log_text());
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_signed_by_the_ca() {
    let test = "mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_signed_by_the_ca";
    let Some(pki) = Pki::new(test) else { return };
    let a = tls_agent(&pki, &[("TLS_CLIENT_CA", &pki.p("ca.pem"))]);
    let url = format!("https://localhost:{}/health", a.port);
    let out = curl(&["--cacert", &pki.p("ca.pem"), &url]);
    assert!(!out.status.success() && !text(&out).contains("healthy"), "no client certificate: {}", text(&out));
    let (cert, key) = (pki.p("stranger.pem"), pki.p("stranger.key"));
    let out = curl(&["--cacert", &pki.p("ca.pem"), "--cert", &cert, "--key", &key, &url]);
    assert!(!out.status.success() && !text(&out).contains("healthy"), "another CA's client: {}", text(&out));
    let (cert, key) = (pki.p("client.pem"), pki.p("client.key"));
    let out = curl(&["--cacert", &pki.p("ca.pem"), "--cert", &cert, "--key", &key, &url]);
    assert!(text(&out).contains("\"healthy\""), "client signed by the CA: {}\n{}", text(&out), a.log_text());
    let Some(out) = python(test, "nocert", &a, &pki, None) else { return };
    assert!(out.status.success(), "python without a certificate: {}", text(&out));
    let Some(out) = python(test, "withcert", &a, &pki, Some("client")) else { return };
    assert!(out.status.success(), "python with a certificate: {}\n{}", text(&out), a.log_text());
    assert!(a.log_text().contains("TLS handshake with 127.0.0.1"), "refusals are logged:\n{}", a.log_text());
}

/// The served certificate's fingerprint, read by the Python client.
fn served_fingerprint(test: &str, a: &Agent, pki: &Pki) -> Option<String> {
    let out = python(test, "fingerprint", a, pki, None)?;
    assert!(out.status.success(), "fingerprint: {}", text(&out));
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_keeps_the_old() {
    let test = "a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_keeps_the_old";
    let Some(pki) = Pki::new(test) else { return };
    // The agent reads copies, which the test replaces as a renewal would.
    std::fs::copy(pki.path("server.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("server.key"), pki.path("live.key")).unwrap();
    let mut a = common::agent().env("TLS_CERT", &pki.p("live.pem")).env("TLS_KEY", &pki.p("live.key")).start();
    let Some(first) = served_fingerprint(test, &a, &pki) else { return };
    assert_eq!(first, pki.fingerprint("server.pem"));
    pki.leaf("renewed", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    // key first, then certificate, each replaced by a rename (the key alone does not load:
    // it does not match the certificate, and the old pair stays in use meanwhile)
    std::fs::copy(pki.path("renewed.key"), pki.path("tmp.key")).unwrap();
    std::fs::rename(pki.path("tmp.key"), pki.path("live.key")).unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(served_fingerprint(test, &a, &pki).unwrap(), first, "a mismatched pair was loaded");
    std::fs::copy(pki.path("renewed.pem"), pki.path("tmp.pem")).unwrap();
    std::fs::rename(pki.path("tmp.pem"), pki.path("live.pem")).unwrap();
    let want = pki.fingerprint("renewed.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        if served_fingerprint(test, &a, &pki).unwrap() == want {
            break;
        }
        assert!(Instant::now() < deadline, "renewed certificate not served within 20 s:\n{}", a.log_text());
    }
    // a broken file keeps the renewed one, and says why
    std::fs::write(pki.path("live.pem"), "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(served_fingerprint(test, &a, &pki).unwrap(), want);
    let log = a.wait_log("do not load, keeping the ones in use", Duration::from_secs(10));
    assert!(log.contains("live.pem"), "the warning names the file:\n{log}");
    assert!(log.contains("TLS: certificate files changed"), "{log}");
    assert_alive_tls(&mut a, &pki);
}

#[test]
fn a_slow_wss_client_is_closed_while_another_gets_every_event() {
    let test = "a_slow_wss_client_is_closed_while_another_gets_every_event";
    let Some(pki) = Pki::new(test) else { return };
    let a = tls_agent(&pki, &[]);
    let Some(out) = python(test, "slow", &a, &pki, None) else { return };
    assert!(out.status.success() && text(&out).contains("OK slow"), "python: {}\n{}", text(&out), a.log_text());
    a.wait_log("MiB behind; closing it with code 1008", Duration::from_secs(30));
}

fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (got, start.elapsed())
}

#[test]
fn plain_http_on_the_tls_port_is_refused_and_a_stalled_handshake_is_closed() {
    let test = "plain_http_on_the_tls_port_is_refused_and_a_stalled_handshake_is_closed";
    let Some(pki) = Pki::new(test) else { return };
    let mut a = tls_agent(&pki, &[]);
    // plain HTTP: a plain 400 that says why, then the close
    let mut s = TcpStream::connect(a.addr()).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (got, took) = read_to_close(&mut s, Duration::from_secs(30));
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400") && got.contains("speaks TLS"), "{got:?}");
    assert!(took < Duration::from_secs(25), "not closed: {took:?}");
    // curl too gets the answer (not a hang)
    let out = curl(&["-i", &format!("http://127.0.0.1:{}/health", a.port)]);
    assert!(text(&out).contains("400") && text(&out).contains("speaks TLS"), "{}", text(&out));
    // a handshake that starts and stalls: closed within the head timeout (10 s)
    let mut s = TcpStream::connect(a.addr()).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let (_, took) = read_to_close(&mut s, Duration::from_secs(40));
    assert!(took < Duration::from_secs(35), "a stalled handshake held its connection for {took:?}");
    // a connection that sends nothing: the same
    let mut s = TcpStream::connect(a.addr()).unwrap();
    let (_, took) = read_to_close(&mut s, Duration::from_secs(40));
    assert!(took < Duration::from_secs(35), "a silent connection held for {took:?}");
    // garbage records and a huge record length: closed, the agent goes on
    for junk in
        [&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..], &[0x16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &[0x16; 5000][..]]
    {
        let mut s = TcpStream::connect(a.addr()).unwrap();
        let _ = s.write_all(junk);
        let (_, took) = read_to_close(&mut s, Duration::from_secs(40));
        assert!(took < Duration::from_secs(35), "junk {:?}… held for {took:?}", &junk[..5]);
    }
    assert_alive_tls(&mut a, &pki);
}

/// The agent runs and answers `/health` over TLS.
#[track_caller]
fn assert_alive_tls(a: &mut Agent, pki: &Pki) {
    assert!(a.child.try_wait().unwrap().is_none(), "agent exited; logs:\n{}", a.log_text());
    let out = curl(&["--cacert", &pki.p("ca.pem"), &format!("https://localhost:{}/health", a.port)]);
    assert!(text(&out).contains("healthy"), "/health over TLS: {}\n{}", text(&out), a.log_text());
}

#[test]
fn bad_tls_settings_stop_the_agent_at_start_with_exit_2() {
    let test = "bad_tls_settings_stop_the_agent_at_start_with_exit_2";
    let Some(pki) = Pki::new(test) else { return };
    let (cert, key, ca) = (pki.p("server.pem"), pki.p("server.key"), pki.p("ca.pem"));
    let missing = pki.p("missing.pem");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("TLS_CERT", &cert)], "TLS_KEY set too"),
        (vec![("TLS_KEY", &key)], "TLS_CERT set too"),
        (vec![("TLS_CLIENT_CA", &ca)], "TLS_CERT and TLS_KEY set too"),
        (vec![("TLS_CERT", &missing), ("TLS_KEY", &key)], "missing.pem"),
        (vec![("TLS_CERT", &cert), ("TLS_KEY", &ca)], "TLS_KEY"),
        (vec![("TLS_CERT", &key), ("TLS_KEY", &key)], "no PEM certificate"),
        (vec![("TLS_CERT", &cert), ("TLS_KEY", &key), ("TLS_CLIENT_CA", &missing)], "TLS_CLIENT_CA"),
    ];
    for (env, says) in cases {
        let dir = TempDir::new("tlsbad");
        let mut cmd = common::base_command(dir.path(), &dir.path().join("data"));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = common::run_binary(cmd, Duration::from_secs(30));
        let all = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{env:?}: {all}");
        assert!(all.contains(says), "{env:?} should say {says:?}: {all}");
        assert!(!all.contains("listening on"), "{env:?} started: {all}");
    }
}
