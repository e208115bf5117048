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

use crate::cidr::{self, Cidr};

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
}

impl ConfigError {
    /// The process exit code: every configuration error is a bad setting, 2 (as `--help` says).
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Invalid { .. }
            | ConfigError::NotUtf8 { .. }
            | ConfigError::EnvFileUnreadable { .. }
            | ConfigError::EnvFileSyntax { .. }
            | ConfigError::Secret { .. }
            | ConfigError::SecretFile { .. }
            | ConfigError::DataDir { .. } => 2,
        }
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
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid { var, value: value.to_string(), expected: expected.to_string() }
}

/// Every variable the agent reads, with its default (as text) and a one-line meaning.
/// Used by `--help`, and kept in the order of CONTRACT.md §1.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("CLUSTER_PORT", "4000", "TCP port of the HTTP API and WebSocket; 0 = pick a free port"),
    ("BIND_ADDRESS", "0.0.0.0", "address the HTTP server binds"),
    ("DISCOVERY_PORT", "4001", "UDP port for discovery"),
    (
        "CLUSTER_SECRET",
        "(generated)",
        "shared secret, at least 16 bytes; generated into DATA_DIR/cluster-secret when unset",
    ),
    ("MAX_CONCURRENT_TASKS", "4", "running tasks at most"),
    ("MAX_CPU_PERCENT", "80", "1-100; refuse tasks while CPU usage is above this"),
    ("MAX_MEMORY_PERCENT", "80", "1-100; refuse tasks while memory in use is above this"),
    ("TASK_TIMEOUT", "300000", "ms a task may run before it is killed; 0 = no limit"),
    ("KILL_GRACE", "5000", "ms between SIGTERM and SIGKILL"),
    ("SHUTDOWN_TIMEOUT", "30000", "ms running tasks may go on after SIGTERM to the agent"),
    ("JOBS_BASE_PATH", "./jobs", "root of job folders for /execute-job"),
    ("MASTER_SERVER", "", "host or host:port of the main server, also sent discovery packets by unicast"),
    (
        "DISCOVERY_ADDRESSES",
        "255.255.255.255,224.0.0.1",
        "where announcements go: address or address:port, comma-separated",
    ),
    ("DISCOVERY_ENABLED", "true", "false turns UDP discovery off"),
    ("ANNOUNCE_INTERVAL", "5000", "ms between announcements"),
    ("STATS_INTERVAL", "10000", "ms between stats packets"),
    ("DATA_DIR", "./data", "task history, output logs, generated secret ($STATE_DIRECTORY under systemd)"),
    ("TASK_HISTORY", "1000", "finished tasks kept"),
    ("MAX_OUTPUT_BYTES", "1048576", "bytes of each stream's tail returned in the task object"),
    ("WS_ALLOW_ANONYMOUS", "false", "let WebSocket clients connect without the secret"),
    (
        "WS_PING_INTERVAL",
        "30000",
        "ms between pings to each WebSocket client; one silent for 3 intervals is closed (>= 100)",
    ),
    ("METRICS_REQUIRE_SECRET", "false", "true: GET /metrics needs the secret like the task endpoints"),
    ("TRUSTED_ADDRESSES", "", "CIDRs whose requests need no secret, comma-separated; a bare address is /32 or /128"),
    ("RUST_LOG", "info", "log level"),
];

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

/// Whether `name` is read by the agent (see [`VARIABLES`]).
fn is_setting(name: &str) -> bool {
    VARIABLES.iter().any(|(n, _, _)| *n == name) || matches!(name, "RUST_LOG" | "STATE_DIRECTORY")
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

fn parse_int<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    src: &Source,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match src.get(var) {
        None => Ok(default),
        Some(raw) => {
            let v = raw.trim();
            match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(invalid(var, raw, &format!("an integer from {min} to {max}"))),
            }
        }
    }
}

fn parse_ms(src: &Source, var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
    // Upper bound: 30 days, far beyond any sane value, and safe for Instant arithmetic.
    parse_int(src, var, default, min, 30 * 24 * 3600 * 1000).map(Duration::from_millis)
}

fn parse_bool(src: &Source, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match src.get(var) {
        None => Ok(default),
        Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(var, raw, "true or false")),
        },
    }
}

fn parse_path(src: &Source, var: &'static str, default: &str) -> Result<PathBuf, ConfigError> {
    let raw = src.get(var).unwrap_or(default);
    if raw.trim().is_empty() {
        return Err(invalid(var, raw, "a path"));
    }
    if raw.contains('\0') {
        return Err(invalid(var, raw, "a path without NUL bytes"));
    }
    Ok(PathBuf::from(raw))
}

/// Parses `a,b:port,...`; each entry an IP address, optionally with a port.
fn parse_targets(
    src: &Source,
    var: &'static str,
    default: &str,
    port: u16,
) -> Result<Vec<DiscoveryTarget>, ConfigError> {
    let raw = src.get(var).unwrap_or(default);
    let mut out = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let addr = parse_host_port(entry, port)
            .ok_or_else(|| invalid(var, raw, "IP addresses, each optionally with :port, comma-separated"))?;
        out.push(DiscoveryTarget { addr });
    }
    Ok(out)
}

/// `TRUSTED_ADDRESSES`: comma-separated CIDRs or bare addresses; empty by default.
fn parse_trusted(src: &Source) -> Result<Vec<Cidr>, ConfigError> {
    let raw = src.get("TRUSTED_ADDRESSES").unwrap_or("");
    cidr::parse_list(raw).map_err(|why| {
        invalid("TRUSTED_ADDRESSES", raw, &format!("IP addresses or CIDRs (address/prefix), comma-separated ({why})"))
    })
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
fn parse_master(src: &Source, default_port: u16) -> Result<Option<String>, ConfigError> {
    let Some(raw) = src.get("MASTER_SERVER") else {
        return Ok(None);
    };
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("MASTER_SERVER", raw, "host or host:port");
    if parse_host_port(v, default_port).is_some() {
        return Ok(Some(v.to_string()));
    }
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (v, None),
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
    Ok(Some(v.to_string()))
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
        let cluster_port = parse_int(src, "CLUSTER_PORT", 4000u16, 0, 65535)?;
        let bind_raw = src.get("BIND_ADDRESS").unwrap_or("0.0.0.0");
        let bind_address =
            bind_raw.trim().parse::<IpAddr>().map_err(|_| invalid("BIND_ADDRESS", bind_raw, "an IP address"))?;
        let discovery_port = parse_int(src, "DISCOVERY_PORT", 4001u16, 1, 65535)?;
        let max_concurrent_tasks = parse_int(src, "MAX_CONCURRENT_TASKS", 4usize, 1, 4096)?;
        let max_cpu_percent = parse_int(src, "MAX_CPU_PERCENT", 80u8, 1, 100)?;
        let max_memory_percent = parse_int(src, "MAX_MEMORY_PERCENT", 80u8, 1, 100)?;
        let task_timeout = parse_ms(src, "TASK_TIMEOUT", 300_000, 0)?;
        let task_timeout = (!task_timeout.is_zero()).then_some(task_timeout);
        let kill_grace = parse_ms(src, "KILL_GRACE", 5000, 0)?;
        let shutdown_timeout = parse_ms(src, "SHUTDOWN_TIMEOUT", 30_000, 0)?;
        let jobs_base_path = parse_path(src, "JOBS_BASE_PATH", "./jobs")?;
        let master_server = parse_master(src, discovery_port)?;
        let discovery_addresses =
            parse_targets(src, "DISCOVERY_ADDRESSES", "255.255.255.255,224.0.0.1", discovery_port)?;
        let discovery_enabled = parse_bool(src, "DISCOVERY_ENABLED", true)?;
        let announce_interval = parse_ms(src, "ANNOUNCE_INTERVAL", 5000, 100)?;
        let stats_interval = parse_ms(src, "STATS_INTERVAL", 10_000, 100)?;
        let data_default = src.get("STATE_DIRECTORY").filter(|s| !s.is_empty()).unwrap_or("./data");
        // systemd may list several state directories separated by ':'; the first is ours.
        let data_default = data_default.split(':').next().unwrap_or("./data").to_string();
        let data_dir = parse_path(src, "DATA_DIR", &data_default)?;
        let task_history = parse_int(src, "TASK_HISTORY", 1000usize, 1, 1_000_000)?;
        let max_output_bytes = parse_int(src, "MAX_OUTPUT_BYTES", 1_048_576usize, 0, 1 << 30)?;
        let ws_allow_anonymous = parse_bool(src, "WS_ALLOW_ANONYMOUS", false)?;
        let metrics_require_secret = parse_bool(src, "METRICS_REQUIRE_SECRET", false)?;
        let ws_ping_interval = parse_ms(src, "WS_PING_INTERVAL", 30_000, 100)?;
        let trusted_addresses = parse_trusted(src)?;

        let (secret, secret_source) = match src.get("CLUSTER_SECRET") {
            Some(s) => {
                check_secret(s).map_err(|why| ConfigError::Secret { why })?;
                (s.to_string(), SecretSource::Environment)
            }
            None => (String::new(), SecretSource::File { path: data_dir.join(SECRET_FILE), generated: false }),
        };

        Ok(Config {
            cluster_port,
            bind_address,
            discovery_port,
            secret,
            secret_source,
            max_concurrent_tasks,
            max_cpu_percent,
            max_memory_percent,
            task_timeout,
            kill_grace,
            shutdown_timeout,
            jobs_base_path,
            master_server,
            discovery_addresses,
            discovery_enabled,
            announce_interval,
            stats_interval,
            data_dir,
            task_history,
            max_output_bytes,
            ws_allow_anonymous,
            ws_ping_interval,
            metrics_require_secret,
            trusted_addresses,
            env_file: src.env_file.clone(),
        })
    }

    /// Reads the configuration, prepares `DATA_DIR`, and reads or generates the secret.
    pub fn load(src: &Source) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_source(src)?;
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
        let ms = |d: Duration| d.as_millis().to_string();
        let secret = match &self.secret_source {
            SecretSource::Environment => format!("******** ({} bytes, from CLUSTER_SECRET)", self.secret.len()),
            SecretSource::File { path, .. } if self.secret.is_empty() => {
                format!("(unset: generated at first start into {})", path.display())
            }
            SecretSource::File { path, .. } => {
                format!("******** ({} bytes, from {})", self.secret.len(), path.display())
            }
        };
        vec![
            ("CLUSTER_PORT", self.cluster_port.to_string()),
            ("BIND_ADDRESS", self.bind_address.to_string()),
            ("DISCOVERY_PORT", self.discovery_port.to_string()),
            ("CLUSTER_SECRET", secret),
            ("MAX_CONCURRENT_TASKS", self.max_concurrent_tasks.to_string()),
            ("MAX_CPU_PERCENT", self.max_cpu_percent.to_string()),
            ("MAX_MEMORY_PERCENT", self.max_memory_percent.to_string()),
            ("TASK_TIMEOUT", self.task_timeout.map_or("0".into(), ms)),
            ("KILL_GRACE", ms(self.kill_grace)),
            ("SHUTDOWN_TIMEOUT", ms(self.shutdown_timeout)),
            ("JOBS_BASE_PATH", self.jobs_base_path.display().to_string()),
            ("MASTER_SERVER", self.master_server.clone().unwrap_or_default()),
            (
                "DISCOVERY_ADDRESSES",
                self.discovery_addresses.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(","),
            ),
            ("DISCOVERY_ENABLED", self.discovery_enabled.to_string()),
            ("ANNOUNCE_INTERVAL", ms(self.announce_interval)),
            ("STATS_INTERVAL", ms(self.stats_interval)),
            ("DATA_DIR", self.data_dir.display().to_string()),
            ("TASK_HISTORY", self.task_history.to_string()),
            ("MAX_OUTPUT_BYTES", self.max_output_bytes.to_string()),
            ("WS_ALLOW_ANONYMOUS", self.ws_allow_anonymous.to_string()),
            ("WS_PING_INTERVAL", ms(self.ws_ping_interval)),
            ("METRICS_REQUIRE_SECRET", self.metrics_require_secret.to_string()),
            ("TRUSTED_ADDRESSES", self.trusted_list()),
        ]
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
    fn targets_with_ports() {
        let c = Config::from_source(&src(&[("DISCOVERY_ADDRESSES", "127.255.255.255, 127.0.0.1:9999")])).unwrap();
        assert_eq!(c.discovery_addresses[0].addr, "127.255.255.255:4001".parse().unwrap());
        assert_eq!(c.discovery_addresses[1].addr, "127.0.0.1:9999".parse().unwrap());
    }
}
