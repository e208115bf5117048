//! `codara-agent`: parse the command line, load the configuration, run; errors printed once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use codara_agent::config::{Config, ConfigError, Source, SETTINGS};

const USAGE: &str = "\
Usage: codara-agent [serve] [--env-file PATH]      run the agent (the default)
       codara-agent check-config [--env-file PATH]  validate the settings, print them (secret masked)
       codara-agent discover [--timeout SECONDS] [--json] [--require-signed] [--env-file PATH]
                                                    list the agents heard on the discovery port
       codara-agent --help | --version

The agent serves an HTTP API and WebSocket on CLUSTER_PORT and announces itself over UDP on
DISCOVERY_PORT. Settings come from the environment, then from .env in the working directory
(or the file given by --env-file); the environment wins.

Options:
  --env-file PATH   read settings from PATH instead of ./.env
  --timeout SECONDS discover: how long to listen (default 3)
  --json            discover: print JSON instead of a table
  --require-signed  discover: list only agents whose packets carry a valid signature
                    (DISCOVERY_SIGN; needs the cluster secret: CLUSTER_SECRET or DATA_DIR's)
  -h, --help        print this help
  -V, --version     print the version

Exit codes: 0 ok, 1 runtime failure, 2 bad command line or configuration.
";

/// A command-line error: the message and the exit code.
struct Fail(String, u8);

#[derive(PartialEq)]
enum Cmd {
    Serve,
    CheckConfig,
    Discover,
}

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let result = match args {
        Ok(args) => run(args),
        Err(bad) => Err(Fail(format!("argument {bad:?} is not valid UTF-8"), 2)),
    };
    // The last log lines ("stopped"), unless stdout is stalled.
    codara_agent::logsink::flush(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("codara-agent: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), Fail> {
    let mut cmd = Cmd::Serve;
    let mut env_file: Option<PathBuf> = None;
    let mut timeout = Duration::from_secs(3);
    let mut json = false;
    let mut require_signed = false;
    let mut it = args.into_iter().peekable();
    match it.peek().map(String::as_str) {
        Some("serve") => {
            it.next();
        }
        Some("check-config") => {
            cmd = Cmd::CheckConfig;
            it.next();
        }
        Some("discover") => {
            cmd = Cmd::Discover;
            it.next();
        }
        _ => {}
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print_help();
                return Ok(());
            }
            "-V" | "--version" => {
                println!("codara-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            "--env-file" => {
                let path = it.next().ok_or_else(|| Fail("--env-file needs a path".into(), 2))?;
                env_file = Some(PathBuf::from(path));
            }
            s if s.starts_with("--env-file=") => env_file = Some(PathBuf::from(&s["--env-file=".len()..])),
            "--timeout" if cmd == Cmd::Discover => {
                let v = it.next().ok_or_else(|| Fail("--timeout needs a number of seconds".into(), 2))?;
                timeout = parse_seconds(&v)?;
            }
            "--json" if cmd == Cmd::Discover => json = true,
            "--require-signed" if cmd == Cmd::Discover => require_signed = true,
            other => return Err(Fail(format!("unknown argument {other:?} (see --help)"), 2)),
        }
    }

    let src = Source::from_process(env_file.as_deref()).map_err(config_fail)?;
    match cmd {
        Cmd::Serve => {
            init_logging(src.get("RUST_LOG"));
            let cfg = Config::load(&src).map_err(config_fail)?;
            codara_agent::agent::run(cfg).map_err(|e| Fail(e.to_string(), e.exit_code()))
        }
        Cmd::CheckConfig => {
            let mut cfg = Config::from_source(&src).map_err(config_fail)?;
            cfg.check_without_side_effects().map_err(config_fail)?;
            if let Some(f) = &cfg.env_file {
                println!("# settings read from {} and the environment", f.display());
            }
            for (name, value) in cfg.effective_values() {
                println!("{name}={value}");
            }
            println!("# configuration is valid");
            Ok(())
        }
        Cmd::Discover => {
            let cfg = Config::from_source(&src).map_err(config_fail)?;
            run_discover(&cfg, timeout, json, require_signed)
        }
    }
}

/// `codara-agent discover`: listens, checks signatures when it has the secret, prints.
fn run_discover(cfg: &Config, timeout: Duration, json: bool, require_signed: bool) -> Result<(), Fail> {
    use codara_agent::cli_discover;
    let key = cli_discover::verify_key(cfg);
    if require_signed && key.is_none() {
        return Err(Fail(
            "--require-signed needs the cluster secret (CLUSTER_SECRET, or DATA_DIR/cluster-secret)".into(),
            2,
        ));
    }
    let mut heard = cli_discover::discover(cfg, timeout, key.as_ref()).map_err(|e| Fail(e, 1))?;
    if require_signed {
        heard.retain(|h| h.signature == cli_discover::VERIFIED);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&heard).expect("plain data serialises"));
    } else if heard.is_empty() {
        println!(
            "no agents heard in {} s on UDP port {} (probed {})",
            timeout.as_secs_f64(),
            cfg.discovery_port,
            cfg.discovery_addresses.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(", ")
        );
    } else {
        print!("{}", cli_discover::table(&heard));
    }
    Ok(())
}

/// A configuration error, printed as it is, with its own exit code.
fn config_fail(e: ConfigError) -> Fail {
    Fail(e.to_string(), e.exit_code())
}

fn parse_seconds(v: &str) -> Result<Duration, Fail> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(Fail(format!("--timeout {v:?}: expected seconds from 0 to 3600"), 2)),
    }
}

fn print_help() {
    print!("{USAGE}\nSettings (environment or .env), with defaults:\n");
    for s in SETTINGS {
        println!("  {:<22} {:<27} {}", s.name, s.default, s.help);
    }
}

/// Logs to stdout, one event a line, with a timestamp and level; `RUST_LOG` (environment or
/// `.env`) sets the level.
/// Logs to stdout through the `log-writer` thread ([`codara_agent::logsink`]), so a stalled
/// stdout never blocks the agent.
fn init_logging(filter: Option<&str>) {
    let target = match codara_agent::logsink::start(std::io::stdout()) {
        Ok(sink) => env_logger::Target::Pipe(Box::new(sink)),
        Err(e) => {
            eprintln!("codara-agent: cannot start the log writer thread ({e}); logging to stdout directly");
            env_logger::Target::Stdout
        }
    };
    env_logger::Builder::new()
        .parse_filters(filter.filter(|f| !f.trim().is_empty()).unwrap_or("info"))
        .target(target)
        .format_timestamp_millis()
        .init();
}
