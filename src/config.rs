//! Configuration: every setting of CONTRACT.md §1, its default, and its validation.
//!
//! Values come from the process environment first, then from a `.env` file (the one in the
//! working directory, or the one named by `--env-file`). The `.env` values are read into a map,
//! never copied into the process environment, so tasks do not inherit them.
//! A value that does not parse is fatal at start with a message naming the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::check_secret;
use crate::task_user::TaskUser;

use crate::cidr::{self, Cidr};
use crate::tls::TlsFiles;

/// Name of the generated secret's file inside `DATA_DIR`.
pub const SECRET_FILE: &str = "cluster-secret";

/// A target of discovery packets: an address and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryTarget {
    pub addr: SocketAddr,
}

/// Where the cluster secret came from (logged at start; the secret itself never is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    /// Read from, or generated into, this file.
    File {
        path: PathBuf,
        generated: bool,
    },
}

#[derive(Clone)]
pub struct Config {
    pub cluster_port: u16,
    pub bind_address: IpAddr,
    pub discovery_port: u16,
    pub secret: String,
    pub secret_source: SecretSource,
    pub max_concurrent_tasks: usize,
    pub max_cpu_percent: u8,
    pub max_memory_percent: u8,
    /// `None` = no limit.
    pub task_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub shutdown_timeout: Duration,
    pub jobs_base_path: PathBuf,
    /// `host` or `host:port`, resolved by the discovery thread (again now and then).
    pub master_server: Option<String>,
    pub discovery_addresses: Vec<DiscoveryTarget>,
    pub discovery_enabled: bool,
    pub announce_interval: Duration,
    pub stats_interval: Duration,
    pub data_dir: PathBuf,
    pub task_history: usize,
    pub max_output_bytes: usize,
    pub ws_allow_anonymous: bool,
    /// Time between pings to each WebSocket client; one that sends no frame for three of
    /// them is closed.
    pub ws_ping_interval: Duration,
    /// `GET /metrics` needs the secret too.
    pub metrics_require_secret: bool,
    /// Peers in these ranges need no secret (HTTP and WebSocket).
    pub trusted_addresses: Vec<Cidr>,
    /// Which `.env` file was read, if any (for the start-up summary).
    pub env_file: Option<PathBuf>,
    /// How tasks are contained (`TASK_ISOLATION`).
    pub task_isolation: crate::contain::Choice,
    /// Default limits of every task (`TASK_MEMORY_LIMIT`, `TASK_CPU_LIMIT`, `TASK_PIDS_LIMIT`).
    pub task_limits: crate::protocol::TaskLimits,
    /// `TLS_CERT`, `TLS_KEY`, `TLS_CLIENT_CA` as given (`tls` is built from them).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// HTTPS and `wss://` on `CLUSTER_PORT` (checked loadable at start).
    pub tls: Option<TlsFiles>,
    /// Discovery packets carry `sig` (HMAC-SHA256, see `discovery_sig`).
    pub discovery_sign: bool,
    /// `REDACT_VARS`: glob patterns of `env` names whose values are secret (masked, never kept).
    pub redact_vars: Vec<String>,
    /// `TASK_USER`: the user tasks run as (from `/etc/passwd`); `None` = the agent's own.
    pub task_user: Option<TaskUser>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so the secret can never reach a log line through `{:?}`.
        f.debug_struct("Config")
            .field("cluster_port", &self.cluster_port)
            .field("bind_address", &self.bind_address)
            .field("discovery_port", &self.discovery_port)
            .field("secret", &"<hidden>")
            .field("max_concurrent_tasks", &self.max_concurrent_tasks)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The default of `REDACT_VARS`: names whose values are secrets (as Buildkite's).
pub const DEFAULT_REDACT_VARS: &str = "*_PASSWORD,*_SECRET,*_TOKEN,*_ACCESS_KEY,*_SECRET_KEY";

/// A configuration error: one clear line, naming the variable and the value (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting whose value does not parse or is out of range.
    Invalid { var: &'static str, value: String, expected: String },
    /// A setting of ours whose value in the process environment is not UTF-8.
    NotUtf8 { var: String },
    /// The `.env` file (named, or `./.env`) cannot be opened or read.
    EnvFileUnreadable { path: PathBuf, why: String },
    /// The `.env` file is not dotenv syntax.
    EnvFileSyntax { path: PathBuf, why: String },
    /// `CLUSTER_SECRET` is refused (the secret itself is never part of the message).
    Secret { why: String },
    /// The secret's file cannot be read, created or trusted; `why` names the file.
    SecretFile { why: String },
    /// `DATA_DIR` cannot be created or written.
    DataDir { path: PathBuf, why: String },
    /// The TLS files do not load (`why` names the file).
    Tls { why: String },
    /// `TASK_USER` is set, and the agent may not run tasks as another user.
    TaskUser { user: String, why: String },
}

impl ConfigError {
    /// The process exit code: every configuration error is a bad setting, 2 (as `--help` says).
    pub fn exit_code(&self) -> u8 {
        2
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid { var, value, expected } => write!(f, "invalid {var}={value:?}: expected {expected}"),
            ConfigError::NotUtf8 { var } => write!(f, "{var}: the value is not valid UTF-8"),
            ConfigError::EnvFileUnreadable { path, why } => write!(f, "cannot read env file {}: {why}", path.display()),
            ConfigError::EnvFileSyntax { path, why } => write!(f, "cannot parse env file {}: {why}", path.display()),
            ConfigError::Secret { why } => write!(f, "invalid CLUSTER_SECRET: {why}"),
            ConfigError::SecretFile { why } => f.write_str(why),
            ConfigError::DataDir { path, why } => write!(f, "invalid DATA_DIR={:?}: {why}", path.display().to_string()),
            ConfigError::Tls { why } => write!(f, "invalid TLS configuration: {why}"),
            ConfigError::TaskUser { user, why } => write!(f, "TASK_USER={user:?} cannot be used: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid { var, value: value.to_string(), expected: expected.to_string() }
}

/// One setting of CONTRACT.md §1, declared once: `--help` lists it, [`Config::from_source`]
/// loads it, `check-config` shows its effective value, and `tests/service.rs` checks that
/// `config/.env.example` lists it with its default.
pub struct Setting {
    pub name: &'static str,
    /// The default as shown, and the text that is parsed when the variable is unset.
    pub default: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// Parses the value (or the default) into its field of the config being built.
    load: fn(&Value, &mut Config) -> Result<(), ConfigError>,
    /// The effective value for `check-config`; `None` for a setting not kept in [`Config`].
    show: Option<fn(&Config) -> String>,
}

/// The bounds of a memory limit: less than 1 MiB would kill a task before it could run
/// anything; the largest is far beyond any machine (and safe in the kernel's page arithmetic).
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
pub const MAX_MEMORY_LIMIT: u64 = u64::MAX >> 2;
/// The largest pids limit: the kernel's own ceiling of `pid_max`.
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;
/// The bounds of a CPU limit: 1 ms of CPU per 100 ms period, and far beyond any machine.
pub const MIN_CPUS: f64 = 0.01;
pub const MAX_CPUS: f64 = 4096.0;

/// Upper bound of every duration in ms: 30 days, far beyond any sane value, and safe for
/// `Instant` arithmetic.
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// Every setting, in the order of CONTRACT.md §1. Loading runs in this order, so a setting may
/// use one declared above it (the discovery port of `MASTER_SERVER` and `DISCOVERY_ADDRESSES`).
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "CLUSTER_PORT",
        default: "4000",
        help: "TCP port of the HTTP API and WebSocket; 0 = pick a free port",
        load: |v, c| v.int(0, 65535).map(|x| c.cluster_port = x),
        show: Some(|c| c.cluster_port.to_string()),
    },
    Setting {
        name: "BIND_ADDRESS",
        default: "0.0.0.0",
        help: "address the HTTP server binds",
        load: |v, c| v.raw.trim().parse().map_err(|_| v.invalid("an IP address")).map(|x| c.bind_address = x),
        show: Some(|c| c.bind_address.to_string()),
    },
    Setting {
        name: "DISCOVERY_PORT",
        default: "4001",
        help: "UDP port for discovery",
        load: |v, c| v.int(1, 65535).map(|x| c.discovery_port = x),
        show: Some(|c| c.discovery_port.to_string()),
    },
    Setting {
        name: "CLUSTER_SECRET",
        default: "(generated)",
        help: "shared secret, at least 16 bytes; generated into DATA_DIR/cluster-secret when unset",
        load: load_secret,
        show: Some(show_secret),
    },
    Setting {
        name: "MAX_CONCURRENT_TASKS",
        default: "4",
        help: "running tasks at most",
        load: |v, c| v.int(1, 4096).map(|x| c.max_concurrent_tasks = x),
        show: Some(|c| c.max_concurrent_tasks.to_string()),
    },
    Setting {
        name: "MAX_CPU_PERCENT",
        default: "80",
        help: "1-100; refuse tasks while CPU usage is above this",
        load: |v, c| v.int(1, 100).map(|x| c.max_cpu_percent = x),
        show: Some(|c| c.max_cpu_percent.to_string()),
    },
    Setting {
        name: "MAX_MEMORY_PERCENT",
        default: "80",
        help: "1-100; refuse tasks while memory in use is above this",
        load: |v, c| v.int(1, 100).map(|x| c.max_memory_percent = x),
        show: Some(|c| c.max_memory_percent.to_string()),
    },
    Setting {
        name: "TASK_TIMEOUT",
        default: "300000",
        help: "ms a task may run before it is killed; 0 = no limit",
        load: |v, c| v.ms(0).map(|d| c.task_timeout = Some(d).filter(|d| !d.is_zero())),
        show: Some(|c| c.task_timeout.map_or("0".into(), ms)),
    },
    Setting {
        name: "KILL_GRACE",
        default: "5000",
        help: "ms between SIGTERM and SIGKILL",
        load: |v, c| v.ms(0).map(|x| c.kill_grace = x),
        show: Some(|c| ms(c.kill_grace)),
    },
    Setting {
        name: "SHUTDOWN_TIMEOUT",
        default: "30000",
        help: "ms running tasks may go on after SIGTERM to the agent",
        load: |v, c| v.ms(0).map(|x| c.shutdown_timeout = x),
        show: Some(|c| ms(c.shutdown_timeout)),
    },
    Setting {
        name: "JOBS_BASE_PATH",
        default: "./jobs",
        help: "root of job folders for /execute-job",
        load: |v, c| v.path().map(|x| c.jobs_base_path = x),
        show: Some(|c| c.jobs_base_path.display().to_string()),
    },
    Setting {
        name: "MASTER_SERVER",
        default: "",
        help: "host or host:port of the main server, also sent discovery packets by unicast",
        load: |v, c| parse_master(v, c.discovery_port).map(|x| c.master_server = x),
        show: Some(|c| c.master_server.clone().unwrap_or_default()),
    },
    Setting {
        name: "DISCOVERY_ADDRESSES",
        default: "255.255.255.255,224.0.0.1",
        help: "where announcements go: address or address:port, comma-separated",
        load: |v, c| parse_targets(v, c.discovery_port).map(|x| c.discovery_addresses = x),
        show: Some(|c| c.discovery_addresses.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(",")),
    },
    Setting {
        name: "DISCOVERY_ENABLED",
        default: "true",
        help: "false turns UDP discovery off",
        load: |v, c| v.bool().map(|x| c.discovery_enabled = x),
        show: Some(|c| c.discovery_enabled.to_string()),
    },
    Setting {
        name: "ANNOUNCE_INTERVAL",
        default: "5000",
        help: "ms between announcements",
        load: |v, c| v.ms(100).map(|x| c.announce_interval = x),
        show: Some(|c| ms(c.announce_interval)),
    },
    Setting {
        name: "STATS_INTERVAL",
        default: "10000",
        help: "ms between stats packets",
        load: |v, c| v.ms(100).map(|x| c.stats_interval = x),
        show: Some(|c| ms(c.stats_interval)),
    },
    Setting {
        name: "DATA_DIR",
        default: "./data",
        help: "task history, output logs, generated secret ($STATE_DIRECTORY under systemd)",
        load: |v, c| parse_data_dir(v).map(|x| c.data_dir = x),
        show: Some(|c| c.data_dir.display().to_string()),
    },
    Setting {
        name: "TASK_HISTORY",
        default: "1000",
        help: "finished tasks kept",
        load: |v, c| v.int(1, 1_000_000).map(|x| c.task_history = x),
        show: Some(|c| c.task_history.to_string()),
    },
    Setting {
        name: "MAX_OUTPUT_BYTES",
        default: "1048576",
        help: "bytes of each stream's tail returned in the task object",
        load: |v, c| v.int(0, 1 << 30).map(|x| c.max_output_bytes = x),
        show: Some(|c| c.max_output_bytes.to_string()),
    },
    Setting {
        name: "WS_ALLOW_ANONYMOUS",
        default: "false",
        help: "let WebSocket clients connect without the secret",
        load: |v, c| v.bool().map(|x| c.ws_allow_anonymous = x),
        show: Some(|c| c.ws_allow_anonymous.to_string()),
    },
    Setting {
        name: "WS_PING_INTERVAL",
        default: "30000",
        help: "ms between pings to each WebSocket client; one silent for 3 intervals is closed (>= 100)",
        load: |v, c| v.ms(100).map(|x| c.ws_ping_interval = x),
        show: Some(|c| ms(c.ws_ping_interval)),
    },
    Setting {
        name: "METRICS_REQUIRE_SECRET",
        default: "false",
        help: "true: GET /metrics needs the secret like the task endpoints",
        load: |v, c| v.bool().map(|x| c.metrics_require_secret = x),
        show: Some(|c| c.metrics_require_secret.to_string()),
    },
    Setting {
        name: "TRUSTED_ADDRESSES",
        default: "",
        help: "CIDRs whose requests need no secret, comma-separated; a bare address is /32 or /128",
        load: |v, c| parse_trusted(v).map(|x| c.trusted_addresses = x),
        show: Some(Config::trusted_list),
    },
    Setting {
        name: "TASK_ISOLATION",
        default: "auto",
        help: "how tasks are contained: auto (a control group when one can be made, else process), cgroup (required), process",
        load: |v, c| crate::contain::Choice::parse(v.raw.trim()).ok_or_else(|| v.invalid("auto, cgroup or process")).map(|x| c.task_isolation = x),
        show: Some(|c| c.task_isolation.as_str().to_string()),
    },
    Setting {
        name: "TASK_MEMORY_LIMIT",
        default: "",
        help: "default memory limit of a task in bytes (empty = none); a task's limits.memoryBytes overrides it",
        load: |v, c| v.optional(|v| v.int(MIN_MEMORY_LIMIT, MAX_MEMORY_LIMIT)).map(|x| c.task_limits.memory_bytes = x),
        show: Some(|c| c.task_limits.memory_bytes.map_or(String::new(), |n| n.to_string())),
    },
    Setting {
        name: "TASK_CPU_LIMIT",
        default: "",
        help: "default CPU limit of a task in CPUs, such as 1.5 (empty = none); limits.cpus overrides it",
        load: |v, c| v.optional(Value::cpus).map(|x| c.task_limits.cpus = x),
        show: Some(|c| c.task_limits.cpus.map_or(String::new(), |n| n.to_string())),
    },
    Setting {
        name: "TASK_PIDS_LIMIT",
        default: "",
        help: "default limit of a task's processes and threads (empty = none); limits.pids overrides it",
        load: |v, c| v.optional(|v| v.int(1, MAX_PIDS_LIMIT)).map(|x| c.task_limits.pids = x),
        show: Some(|c| c.task_limits.pids.map_or(String::new(), |n| n.to_string())),
    },
    Setting {
        name: "TLS_CERT",
        default: "",
        help: "PEM certificate chain: with TLS_KEY, HTTPS and wss:// on CLUSTER_PORT (reloaded when changed)",
        load: |v, c| v.optional(Value::path).map(|x| c.tls_cert = x),
        show: Some(|c| show_path(&c.tls_cert)),
    },
    Setting {
        name: "TLS_KEY",
        default: "",
        help: "PEM private key of TLS_CERT (both or neither)",
        load: |v, c| v.optional(Value::path).map(|x| c.tls_key = x),
        show: Some(|c| show_path(&c.tls_key)),
    },
    Setting {
        name: "TLS_CLIENT_CA",
        default: "",
        help: "PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS)",
        load: |v, c| v.optional(Value::path).map(|x| c.tls_client_ca = x),
        show: Some(|c| show_path(&c.tls_client_ca)),
    },
    Setting {
        name: "DISCOVERY_SIGN",
        default: "false",
        help: "true: discovery packets carry sig, an HMAC-SHA256 keyed from the cluster secret",
        load: |v, c| v.bool().map(|x| c.discovery_sign = x),
        show: Some(|c| c.discovery_sign.to_string()),
    },
    Setting {
        name: "REDACT_VARS",
        default: DEFAULT_REDACT_VARS,
        help: "env names (globs, comma-separated, any case) whose values are secret: masked in output, never kept",
        load: |v, c| parse_redact_vars(v).map(|x| c.redact_vars = x),
        show: Some(|c| c.redact_vars.join(",")),
    },
    Setting {
        name: "TASK_USER",
        default: "",
        help:
            "user (name or uid) tasks run as, with its group and HOME; needs root or CAP_SETUID, CAP_SETGID, CAP_KILL",
        load: |v, c| {
            let name = v.raw.trim();
            if name.is_empty() {
                return Ok(());
            }
            let user = crate::task_user::resolve(name)
                .map_err(|why| v.invalid(&format!("a user (name or uid) other than root: {why}")))?;
            c.task_user = Some(user);
            Ok(())
        },
        show: Some(|c| c.task_user.as_ref().map_or(String::new(), |u| u.name.clone())),
    },
    Setting {
        name: "RUST_LOG",
        default: "info",
        help: "log level",
        // Read by main.rs to start logging before the rest is loaded; not kept in `Config`.
        load: |_, _| Ok(()),
        show: None,
    },
];

/// A setting's value: as given in the environment or `.env`, else the setting's default.
#[derive(Clone, Copy)]
struct Value<'a> {
    var: &'static str,
    /// Exactly as given: error messages quote it untrimmed.
    raw: &'a str,
    /// Whether the variable is set at all (an empty value counts as set).
    set: bool,
    src: &'a Source,
}

impl Value<'_> {
    fn invalid(&self, expected: &str) -> ConfigError {
        invalid(self.var, self.raw, expected)
    }

    fn int<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(&self, min: T, max: T) -> Result<T, ConfigError> {
        match self.raw.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.invalid(&format!("an integer from {min} to {max}"))),
        }
    }

    /// `None` for an empty value, else what `parse` makes of it.
    fn optional<T>(&self, parse: impl FnOnce(&Self) -> Result<T, ConfigError>) -> Result<Option<T>, ConfigError> {
        if self.raw.trim().is_empty() {
            return Ok(None);
        }
        parse(self).map(Some)
    }

    /// A number of CPUs, at least 0.01 (a quota of 1 ms per 100 ms period).
    fn cpus(&self) -> Result<f64, ConfigError> {
        match self.raw.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && (MIN_CPUS..=MAX_CPUS).contains(&n) => Ok(n),
            _ => Err(self.invalid(&format!("a number of CPUs from {MIN_CPUS} to {MAX_CPUS}"))),
        }
    }

    fn ms(&self, min: u64) -> Result<Duration, ConfigError> {
        self.int(min, MAX_MS).map(Duration::from_millis)
    }

    fn bool(&self) -> Result<bool, ConfigError> {
        match self.raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(self.invalid("true or false")),
        }
    }

    fn path(&self) -> Result<PathBuf, ConfigError> {
        if self.raw.trim().is_empty() {
            return Err(self.invalid("a path"));
        }
        if self.raw.contains('\0') {
            return Err(self.invalid("a path without NUL bytes"));
        }
        Ok(PathBuf::from(self.raw))
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// `CLUSTER_SECRET`, when set; when unset, [`Config::from_source`] points the secret's source at
/// the file in `DATA_DIR` (read or generated by [`Config::load`]).
fn load_secret(v: &Value, c: &mut Config) -> Result<(), ConfigError> {
    if v.set {
        check_secret(v.raw).map_err(|why| ConfigError::Secret { why })?;
        c.secret = v.raw.to_string();
        c.secret_source = SecretSource::Environment;
    }
    Ok(())
}

/// The secret masked: its length and where it came from.
fn show_secret(c: &Config) -> String {
    match &c.secret_source {
        SecretSource::Environment => format!("******** ({} bytes, from CLUSTER_SECRET)", c.secret.len()),
        SecretSource::File { path, .. } if c.secret.is_empty() => {
            format!("(unset: generated at first start into {})", path.display())
        }
        SecretSource::File { path, .. } => format!("******** ({} bytes, from {})", c.secret.len(), path.display()),
    }
}

fn show_path(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

/// `TLS_CERT` and `TLS_KEY` together (or neither), `TLS_CLIENT_CA` only with them; and the
/// files load (a missing or bad file stops the agent at start, exit 2).
fn tls_files(c: &Config) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, key) = match (&c.tls_cert, &c.tls_key) {
        (None, None) => {
            if let Some(ca) = &c.tls_client_ca {
                return Err(invalid("TLS_CLIENT_CA", &ca.display().to_string(), "TLS_CERT and TLS_KEY set too"));
            }
            return Ok(None);
        }
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (Some(cert), None) => {
            return Err(invalid("TLS_CERT", &cert.display().to_string(), "TLS_KEY set too (both or neither)"))
        }
        (None, Some(key)) => {
            return Err(invalid("TLS_KEY", &key.display().to_string(), "TLS_CERT set too (both or neither)"))
        }
    };
    let files = TlsFiles { cert, key, client_ca: c.tls_client_ca.clone() };
    crate::tls::load(&files).map_err(|why| ConfigError::Tls { why })?;
    Ok(Some(files))
}

/// `DATA_DIR`; when unset, systemd's `$STATE_DIRECTORY` if given, else the default.
fn parse_data_dir(v: &Value) -> Result<PathBuf, ConfigError> {
    if v.set {
        return v.path();
    }
    let state = v.src.get("STATE_DIRECTORY").filter(|s| !s.is_empty()).unwrap_or(v.raw);
    // systemd may list several state directories separated by ':'; the first is ours.
    let first = state.split(':').next().unwrap_or(v.raw);
    Value { raw: first, ..*v }.path()
}

/// Parses `a,b:port,...`; each entry an IP address, optionally with a port.
fn parse_targets(v: &Value, port: u16) -> Result<Vec<DiscoveryTarget>, ConfigError> {
    let mut out = Vec::new();
    for entry in v.raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let addr = parse_host_port(entry, port)
            .ok_or_else(|| v.invalid("IP addresses, each optionally with :port, comma-separated"))?;
        out.push(DiscoveryTarget { addr });
    }
    Ok(out)
}

/// `TRUSTED_ADDRESSES`: comma-separated CIDRs or bare addresses; empty by default.
fn parse_trusted(v: &Value) -> Result<Vec<Cidr>, ConfigError> {
    cidr::parse_list(v.raw)
        .map_err(|why| v.invalid(&format!("IP addresses or CIDRs (address/prefix), comma-separated ({why})")))
}

/// `REDACT_VARS`: comma-separated glob patterns (`*` and `?`), each a variable name otherwise.
fn parse_redact_vars(v: &Value) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for p in v.raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?' | '.' | '-')) {
            return Err(v.invalid("name patterns (letters, digits, _, * and ?), comma-separated"));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// Looks a variable up: the real environment wins over the `.env` file.
pub struct Source {
    env: HashMap<String, String>,
    dotenv: HashMap<String, String>,
    pub env_file: Option<PathBuf>,
}

impl Source {
    /// The process environment plus `env_file` (or `./.env` when it exists).
    /// A named file that is missing or unreadable is an error; a missing `./.env` is not.
    pub fn from_process(env_file: Option<&Path>) -> Result<Source, ConfigError> {
        let mut env = HashMap::new();
        for (k, v) in std::env::vars_os() {
            let Ok(k) = k.into_string() else { continue };
            match v.into_string() {
                Ok(v) => {
                    env.insert(k, v);
                }
                // A setting of ours that cannot be read must not fall back to its default
                // (which might be broadcasting, or a generated secret).
                Err(_) if is_setting(&k) => {
                    return Err(ConfigError::NotUtf8 { var: k });
                }
                Err(_) => {}
            }
        }
        let (dotenv, env_file) = match env_file {
            Some(path) => (read_dotenv(path)?, Some(path.to_path_buf())),
            None => {
                let path = Path::new(".env");
                if path.is_file() {
                    (read_dotenv(path)?, Some(path.to_path_buf()))
                } else {
                    (HashMap::new(), None)
                }
            }
        };
        Ok(Source { env, dotenv, env_file })
    }

    /// A source from explicit maps (tests).
    pub fn from_maps(env: HashMap<String, String>, dotenv: HashMap<String, String>) -> Source {
        Source { env, dotenv, env_file: None }
    }

    /// The value of `name`, or `None` when unset. An empty value counts as set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env.get(name).or_else(|| self.dotenv.get(name)).map(String::as_str)
    }
}

/// Whether `name` is read by the agent (see [`SETTINGS`]).
fn is_setting(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == name) || name == "STATE_DIRECTORY"
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| ConfigError::EnvFileUnreadable { path: path.to_path_buf(), why: e.to_string() })?;
    let mut map = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::EnvFileSyntax { path: path.to_path_buf(), why: e.to_string() })?;
        map.insert(k, v);
    }
    Ok(map)
}

/// `1.2.3.4`, `1.2.3.4:99`, `[::1]:99` or `::1`, as a socket address (no name resolution).
pub fn parse_host_port(entry: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return (sa.port() != 0).then_some(sa);
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    None
}

/// Checks `MASTER_SERVER`'s syntax (`host` or `host:port`); resolution happens later, and again
/// now and then, in the discovery thread.
fn parse_master(v: &Value, default_port: u16) -> Result<Option<String>, ConfigError> {
    let raw = v.raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || v.invalid("host or host:port");
    if parse_host_port(raw, default_port).is_some() {
        return Ok(Some(raw.to_string()));
    }
    let (host, port) = match raw.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (raw, None),
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(bad()),
        }
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok {
        return Err(bad());
    }
    Ok(Some(raw.to_string()))
}

/// Resolves `MASTER_SERVER` to socket addresses (empty when resolution fails).
pub fn resolve_master(master: &str, default_port: u16) -> Vec<SocketAddr> {
    if let Some(sa) = parse_host_port(master, default_port) {
        return vec![sa];
    }
    let with_port = if master.contains(':') { master.to_string() } else { format!("{master}:{default_port}") };
    with_port.to_socket_addrs().map(|it| it.collect()).unwrap_or_default()
}

impl Config {
    /// Reads and validates every setting except the secret's file (see [`Config::load`]).
    pub fn from_source(src: &Source) -> Result<Config, ConfigError> {
        let mut cfg = Config::unfilled(src.env_file.clone());
        for s in SETTINGS {
            let given = src.get(s.name);
            let value = Value { var: s.name, raw: given.unwrap_or(s.default), set: given.is_some(), src };
            (s.load)(&value, &mut cfg)?;
        }
        if let SecretSource::File { path, .. } = &mut cfg.secret_source {
            *path = cfg.data_dir.join(SECRET_FILE);
        }
        cfg.tls = tls_files(&cfg)?;
        Ok(cfg)
    }

    /// The config before [`SETTINGS`] are loaded into it: each field here is overwritten by
    /// its setting (the defaults are in [`SETTINGS`], not here).
    fn unfilled(env_file: Option<PathBuf>) -> Config {
        Config {
            cluster_port: 0,
            bind_address: IpAddr::from([0, 0, 0, 0]),
            discovery_port: 0,
            secret: String::new(),
            secret_source: SecretSource::File { path: PathBuf::new(), generated: false },
            max_concurrent_tasks: 0,
            max_cpu_percent: 0,
            max_memory_percent: 0,
            task_timeout: None,
            kill_grace: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            jobs_base_path: PathBuf::new(),
            master_server: None,
            discovery_addresses: Vec::new(),
            discovery_enabled: false,
            announce_interval: Duration::ZERO,
            stats_interval: Duration::ZERO,
            data_dir: PathBuf::new(),
            task_history: 0,
            max_output_bytes: 0,
            ws_allow_anonymous: false,
            ws_ping_interval: Duration::ZERO,
            metrics_require_secret: false,
            trusted_addresses: Vec::new(),
            env_file,
            task_isolation: crate::contain::Choice::Auto,
            task_limits: crate::protocol::TaskLimits::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls: None,
            discovery_sign: false,
            redact_vars: Vec::new(),
            task_user: None,
        }
    }

    /// Reads the configuration, prepares `DATA_DIR`, and reads or generates the secret.
    pub fn load(src: &Source) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_source(src)?;
        if let Some(user) = &cfg.task_user {
            crate::task_user::check_privilege()
                .map_err(|why| ConfigError::TaskUser { user: user.name.clone(), why })?;
        }
        crate::store::prepare_data_dir(&cfg.data_dir)
            .map_err(|e| ConfigError::DataDir { path: cfg.data_dir.clone(), why: e.to_string() })?;
        if let SecretSource::File { path, .. } = &cfg.secret_source {
            let (secret, generated) =
                crate::secret::load_or_generate(path).map_err(|why| ConfigError::SecretFile { why })?;
            cfg.secret = secret;
            cfg.secret_source = SecretSource::File { path: path.clone(), generated };
        }
        Ok(cfg)
    }
}

impl Config {
    /// Every effective setting as `(variable, value)`, the secret masked.
    pub fn effective_values(&self) -> Vec<(&'static str, String)> {
        SETTINGS.iter().filter_map(|s| Some((s.name, (s.show?)(self)))).collect()
    }

    /// `TRUSTED_ADDRESSES` as `a/n,b/m` (empty when unset).
    pub fn trusted_list(&self) -> String {
        self.trusted_addresses.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",")
    }

    /// Checks what `load` would do, without creating or writing anything: the secret file
    /// (if one exists) is valid, and `DATA_DIR` exists writable or can be created.
    pub fn check_without_side_effects(&mut self) -> Result<(), ConfigError> {
        if let SecretSource::File { path, .. } = &self.secret_source {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::SecretFile {
                    why: format!("cannot read secret file {}: {e}", path.display()),
                })?;
                let s = text.trim().to_string();
                check_secret(&s).map_err(|why| ConfigError::SecretFile {
                    why: format!("invalid secret in {}: {why}", path.display()),
                })?;
                self.secret = s;
            }
        }
        let mut probe = self.data_dir.as_path();
        while !probe.exists() {
            match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => {
                    probe = Path::new(".");
                    break;
                }
            }
        }
        let meta = std::fs::metadata(probe)
            .map_err(|e| ConfigError::DataDir { path: self.data_dir.clone(), why: e.to_string() })?;
        if !meta.is_dir() || meta.permissions().readonly() {
            let why = format!("{} is not a writable directory", probe.display());
            return Err(ConfigError::DataDir { path: self.data_dir.clone(), why });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> Source {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Source::from_maps(env, HashMap::new())
    }

    #[test]
    fn defaults() {
        let c = Config::from_source(&src(&[("CLUSTER_SECRET", "0123456789abcdef")])).unwrap();
        assert_eq!(c.cluster_port, 4000);
        assert_eq!(c.discovery_port, 4001);
        assert_eq!(c.max_concurrent_tasks, 4);
        assert_eq!(c.task_timeout, Some(Duration::from_millis(300_000)));
        assert_eq!(c.discovery_addresses.len(), 2);
        assert_eq!(c.discovery_addresses[0].addr, "255.255.255.255:4001".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("CLUSTER_PORT", "70000"),
            ("MAX_CPU_PERCENT", "0"),
            ("MAX_CPU_PERCENT", "abc"),
            ("TASK_TIMEOUT", "-1"),
            ("DISCOVERY_ENABLED", "maybe"),
            ("DISCOVERY_ADDRESSES", "not-an-ip"),
            ("BIND_ADDRESS", "localhost"),
            ("MASTER_SERVER", "host:notaport"),
            ("TRUSTED_ADDRESSES", "10.0.0.0/33"),
            ("TRUSTED_ADDRESSES", "10.0.0.0/8,::1/129"),
            ("TRUSTED_ADDRESSES", "garbage"),
        ] {
            let e = Config::from_source(&src(&[("CLUSTER_SECRET", "0123456789abcdef"), (k, v)])).unwrap_err();
            let e = e.to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }

    #[test]
    fn secret_rules() {
        assert!(Config::from_source(&src(&[("CLUSTER_SECRET", "short")])).is_err());
        assert!(Config::from_source(&src(&[("CLUSTER_SECRET", crate::secret::PLACEHOLDER_SECRET)])).is_err());
        let c = Config::from_source(&src(&[])).unwrap();
        assert!(matches!(c.secret_source, SecretSource::File { .. }));
    }

    #[test]
    fn env_wins_over_dotenv() {
        let env = [("CLUSTER_PORT".to_string(), "5000".to_string())].into_iter().collect();
        let dot = [("CLUSTER_PORT".to_string(), "6000".to_string()), ("MAX_CONCURRENT_TASKS".into(), "7".into())]
            .into_iter()
            .collect();
        let c = Config::from_source(&Source::from_maps(env, dot)).unwrap();
        assert_eq!(c.cluster_port, 5000);
        assert_eq!(c.max_concurrent_tasks, 7);
    }

    #[test]
    fn trusted_addresses() {
        let c = Config::from_source(&src(&[])).unwrap();
        assert!(c.trusted_addresses.is_empty(), "trusts no one by default");
        let c = Config::from_source(&src(&[("TRUSTED_ADDRESSES", "10.0.0.0/8, 192.168.1.5,::1")])).unwrap();
        assert_eq!(c.trusted_list(), "10.0.0.0/8,192.168.1.5/32,::1/128");
        let shown = c.effective_values().into_iter().find(|(k, _)| *k == "TRUSTED_ADDRESSES").unwrap().1;
        assert_eq!(shown, "10.0.0.0/8,192.168.1.5/32,::1/128");
    }

    #[test]
    fn the_declared_defaults_are_the_ones_loaded() {
        let c = Config::from_source(&src(&[])).unwrap();
        let shown: HashMap<_, _> = c.effective_values().into_iter().collect();
        for s in SETTINGS {
            match s.name {
                "CLUSTER_SECRET" | "RUST_LOG" => {}
                "DISCOVERY_ADDRESSES" => assert_eq!(shown[s.name], "255.255.255.255:4001,224.0.0.1:4001"),
                _ => assert_eq!(shown[s.name], s.default, "{}", s.name),
            }
        }
        assert_eq!(shown["CLUSTER_SECRET"], "(unset: generated at first start into ./data/cluster-secret)");
        assert_eq!(shown.len(), SETTINGS.len() - 1, "every setting but RUST_LOG is shown, once");
    }

    #[test]
    fn data_dir_falls_back_to_the_first_state_directory() {
        let c = Config::from_source(&src(&[("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/a"));
        assert!(matches!(&c.secret_source, SecretSource::File { path, .. } if path.starts_with("/var/lib/a")));
        let c = Config::from_source(&src(&[("STATE_DIRECTORY", "/var/lib/a"), ("DATA_DIR", "/d")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn error_messages_and_exit_codes() {
        let e = Config::from_source(&src(&[("CLUSTER_PORT", "x")])).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid CLUSTER_PORT="x": expected an integer from 0 to 65535"#);
        assert_eq!(e.exit_code(), 2);
        let e = Config::from_source(&src(&[("KILL_GRACE", " -1")])).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid KILL_GRACE=" -1": expected an integer from 0 to 2592000000"#);
        let e = Config::from_source(&src(&[("CLUSTER_SECRET", "short")])).unwrap_err();
        assert_eq!(e.to_string(), "invalid CLUSTER_SECRET: it is 5 bytes long; at least 16 are required");
        assert_eq!(e.exit_code(), 2);
        let e = Config::from_source(&src(&[("MASTER_SERVER", " a b ")])).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid MASTER_SERVER=" a b ": expected host or host:port"#);
        let e = Config::from_source(&src(&[("DATA_DIR", "")])).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid DATA_DIR="": expected a path"#);
        let e = Source::from_process(Some(Path::new("/nonexistent/.env"))).err().unwrap();
        assert!(e.to_string().starts_with("cannot read env file /nonexistent/.env: "), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    /// `config/.env.example` lists every setting with its declared default (CLUSTER_SECRET and
    /// DATA_DIR commented out, so the generated secret and $STATE_DIRECTORY apply).
    #[test]
    fn env_example_lists_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/.env.example");
        let text = std::fs::read_to_string(path).unwrap();
        for s in SETTINGS {
            let line = match s.name {
                "CLUSTER_SECRET" => format!("# {}=", s.name),
                "DATA_DIR" => format!("# {}={}", s.name, s.default),
                _ => format!("{}={}", s.name, s.default),
            };
            assert!(text.lines().any(|l| l == line), "config/.env.example lacks the line {line:?}");
        }
    }

    #[test]
    fn targets_with_ports() {
        let c = Config::from_source(&src(&[("DISCOVERY_ADDRESSES", "127.255.255.255, 127.0.0.1:9999")])).unwrap();
        assert_eq!(c.discovery_addresses[0].addr, "127.255.255.255:4001".parse().unwrap());
        assert_eq!(c.discovery_addresses[1].addr, "127.0.0.1:9999".parse().unwrap());
    }
}
