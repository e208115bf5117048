//! `codara-agent`: parse the command line, load the configuration, run; errors printed once.

use std::path::PathBuf;
use std::process::ExitCode;

use codara_agent::config::{Config, Source, VARIABLES};

const USAGE: &str = "\
Usage: codara-agent [serve] [--env-file PATH]
       codara-agent --help | --version

Runs the Codara build-node agent: an HTTP API and WebSocket on CLUSTER_PORT, UDP discovery
on DISCOVERY_PORT. Settings come from the environment, then from .env in the working
directory (or the file given by --env-file).

Options:
  --env-file PATH   read settings from PATH instead of ./.env
  -h, --help        print this help
  -V, --version     print the version
";

/// A command-line error: the message and the exit code.
struct Fail(String, u8);

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("codara-agent: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), Fail> {
    let mut env_file: Option<PathBuf> = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "serve" => {}
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
            other => return Err(Fail(format!("unknown argument {other:?} (see --help)"), 2)),
        }
    }

    init_logging();
    let src = Source::from_process(env_file.as_deref()).map_err(|e| Fail(e.to_string(), 2))?;
    let cfg = Config::load(&src).map_err(|e| Fail(e.to_string(), 2))?;
    codara_agent::agent::run(cfg).map_err(|e| Fail(e, 1))
}

fn print_help() {
    print!("{USAGE}\nSettings (environment or .env), with defaults:\n");
    for (name, default, meaning) in VARIABLES {
        println!("  {name:<22} {default:<27} {meaning}");
    }
}

/// Logs to stdout, one event a line, with a timestamp and level; `RUST_LOG` sets the level.
fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    env_logger::Builder::from_env(env).target(env_logger::Target::Stdout).format_timestamp_millis().init();
}
