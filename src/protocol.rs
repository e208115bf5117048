//! Wire types: the JSON of the HTTP API, the WebSocket events and the discovery packets.
//! No I/O here; field names are the compat names of CONTRACT.md.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "running" => TaskStatus::Running,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }
}

/// How a task ended; present only once it has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEnd {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub completed_at: u64,
    pub duration: u64,
}

/// A task as stored under `DATA_DIR` and, plus its output, as shown by the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: u64,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub status: TaskStatus,
    pub started_at: u64,
    /// The task's own limit in ms, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(flatten, default)]
    pub end: Option<TaskEnd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes each stream has produced in all (the task object carries only their tails).
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    /// `command`, `args`, `cwd` and `env` above are a summary of a large request (new): the
    /// whole one is in the task's request file, and `GET /task/:id` shows it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub request_truncated: bool,
    /// The names of the task's `secretEnv` (new); their values are never kept or shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The API's task object: the record plus, except in lists, the tails of its output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView<'a> {
    #[serde(flatten)]
    pub record: &'a TaskRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_truncated: Option<bool>,
    /// The output log has an unreadable record at byte `outputDamagedAt`: the output shown
    /// ends there. Present (true) only then, once the log has been read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_damaged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_damaged_at: Option<u64>,
    /// The output log holds fewer bytes than the task wrote (`stdoutBytes` + `stderrBytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_incomplete: Option<bool>,
}

/// The stats object of `GET /stats` and of `cluster_stats` packets.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// 1-minute load average (compat: main servers score nodes with it).
    pub cpu: f64,
    pub memory_used: u64,
    pub memory_free: u64,
    pub memory_total: u64,
    pub memory_usage_percent: f64,
    /// Host uptime in seconds.
    pub uptime: u64,
    pub running_tasks: usize,
    pub max_tasks: usize,
    pub available_slots: usize,
    /// CPU usage of all cores, 0-100.
    pub cpu_percent: f64,
    pub load_average: [f64; 3],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health<'a> {
    pub status: &'static str,
    pub hostname: &'a str,
    pub uptime: u64,
    pub version: &'static str,
    pub agent_uptime: u64,
}

/// `data` of a `completed` event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedData<'a> {
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<&'a str>,
    pub duration: u64,
}

/// One WebSocket message: `{"type":"task_update","taskId","event","data","timestamp"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskUpdate<'a, D: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub task_id: u64,
    pub event: &'a str,
    pub data: D,
    pub timestamp: u64,
    /// Byte offset of an output chunk in its stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Serialises a `task_update` message.
pub fn task_update<D: Serialize>(task_id: u64, event: &str, data: D, offset: Option<u64>) -> String {
    let msg = TaskUpdate { kind: "task_update", task_id, event, data, timestamp: now_ms(), offset };
    serde_json::to_string(&msg).expect("task_update serialises: plain strings and numbers")
}

/// Node's `process.platform` name for this OS.
pub fn node_platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    }
}

/// Node's `process.arch` name for this CPU.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

/// The name of signal `n` as Node reports it (`"SIGTERM"`), or `"SIG<n>"`.
pub fn signal_name(n: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(n).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() && cfg!(target_os = "linux") => name.to_string(),
        _ => format!("SIG{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TaskRecord {
        TaskRecord {
            id: 7,
            command: "echo".into(),
            args: vec!["hi".into()],
            cwd: "/tmp".into(),
            env: BTreeMap::new(),
            status: TaskStatus::Running,
            started_at: 1,
            timeout: None,
            pid: Some(42),
            timed_out: false,
            job_id: None,
            end: None,
            error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            request_truncated: false,
            secret_env: Vec::new(),
        }
    }

    #[test]
    fn running_task_has_no_end_fields() {
        let v = serde_json::to_value(record()).unwrap();
        assert_eq!(v["status"], "running");
        assert!(v.get("exitCode").is_none() && v.get("completedAt").is_none());
    }

    #[test]
    fn ended_task_round_trips_with_nulls() {
        let mut r = record();
        r.status = TaskStatus::Failed;
        r.end = Some(TaskEnd { exit_code: None, signal: Some("SIGTERM".into()), completed_at: 5, duration: 4 });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["exitCode"], serde_json::Value::Null);
        assert_eq!(v["signal"], "SIGTERM");
        let back: TaskRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.end, r.end);
        let running: TaskRecord = serde_json::from_value(serde_json::to_value(record()).unwrap()).unwrap();
        assert_eq!(running.end, None);
    }

    #[test]
    fn update_shape() {
        let s = task_update(3, "output", "a\n", Some(0));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "task_update");
        assert_eq!(v["taskId"], 3);
        assert_eq!(v["event"], "output");
        assert_eq!(v["data"], "a\n");
        assert_eq!(v["offset"], 0);
        assert!(v["timestamp"].as_u64().unwrap() > 0);
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(64), "SIG64");
    }
}

/// `cluster_announce` (compat field set; `version`, `id` and, in probe replies, `stats` are new).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Announce {
    #[serde(rename = "type")]
    pub kind: String,
    pub hostname: String,
    pub platform: String,
    pub arch: String,
    pub cpus: usize,
    pub total_memory: u64,
    pub port: u16,
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

/// `cluster_stats` (compat).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsPacket {
    #[serde(rename = "type")]
    pub kind: String,
    pub hostname: String,
    pub port: u16,
    pub stats: Stats,
    pub timestamp: u64,
}

/// `cluster_leave` (new): sent when the agent stops.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Leave {
    #[serde(rename = "type")]
    pub kind: String,
    pub hostname: String,
    pub port: u16,
    pub timestamp: u64,
}

pub const ANNOUNCE: &str = "cluster_announce";
pub const STATS: &str = "cluster_stats";
pub const PROBE: &str = "cluster_probe";
pub const LEAVE: &str = "cluster_leave";

/// The `type` of a discovery packet, if it is a JSON object with a string `type`.
///
/// Cheap whatever the packet holds: only the object's keys and its `type` are read; every
/// other value is skipped by serde_json's skipper, which keeps no tree and does not recurse
/// (deep nesting costs no stack), so the work is one pass over the bytes. The whole packet is
/// still checked to be one JSON object: `{"type":"x"}xyz` and `["x"]` have no type.
pub fn packet_type(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<TypeOnly>(bytes).ok()?.0
}

/// A JSON object reduced to its `type`, when that is a string.
struct TypeOnly(Option<String>);

impl<'de> Deserialize<'de> for TypeOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Maps only: a derived struct would also accept a sequence (`["cluster_probe"]`).
        d.deserialize_map(TypeOnlyVisitor)
    }
}

struct TypeOnlyVisitor;

impl<'de> serde::de::Visitor<'de> for TypeOnlyVisitor {
    type Value = TypeOnly;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TypeOnly, A::Error> {
        let mut kind = None;
        while let Some(IsType(is_type)) = map.next_key()? {
            if is_type {
                // A `type` that is not a string fails the parse: no type.
                kind = Some(map.next_value::<String>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(TypeOnly(kind))
    }
}

/// Whether a key is `type`, without keeping the key.
struct IsType(bool);

impl<'de> Deserialize<'de> for IsType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsType;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsType, E> {
                Ok(IsType(key == "type"))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod packet_tests {
    use super::packet_type;

    #[test]
    fn only_objects_have_a_type() {
        assert_eq!(packet_type(br#"{"type":"cluster_probe"}"#).as_deref(), Some("cluster_probe"));
        for bad in [&br#"["cluster_probe"]"#[..], br#""cluster_probe""#, br#"{"type":1}"#, b"", b"\xff", br#"{"type":"#]
        {
            assert_eq!(packet_type(bad), None);
        }
    }

    #[test]
    fn other_fields_and_escapes_do_not_hide_the_type() {
        let p = br#" {"from":{"a":[1,2.5e3,null,true]}, "type" : "cluster_\u0070robe", "x":"\"}"} "#;
        assert_eq!(packet_type(p).as_deref(), Some("cluster_probe"));
        assert_eq!(packet_type(br#"{"ty\u0070e":"cluster_probe"}"#).as_deref(), Some("cluster_probe"));
        assert_eq!(packet_type(br#"{"a":1}"#), None);
        assert_eq!(packet_type(br#"{"type":"cluster_probe","type":2}"#), None);
        assert_eq!(packet_type(br#"{"type":{"type":"cluster_probe"}}"#), None);
    }

    /// Nesting far deeper than a recursive parser allows is skipped in one pass: a datagram's
    /// worth takes well under a millisecond even in a debug build, and no stack.
    #[test]
    fn deep_nesting_is_cheap_and_does_not_recurse() {
        let depth = 30_000;
        let mut p = String::from(r#"{"pad":"#);
        p.push_str(&"[".repeat(depth));
        p.push_str(&"]".repeat(depth));
        p.push_str(r#","type":"cluster_probe"}"#);
        // A thread with a small stack: recursion per level would overflow it.
        let t = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let start = std::time::Instant::now();
            let kind = packet_type(p.as_bytes());
            (kind, start.elapsed())
        });
        let (kind, took) = t.unwrap().join().unwrap();
        assert_eq!(kind.as_deref(), Some("cluster_probe"));
        assert!(took < std::time::Duration::from_millis(100), "{took:?}");
        let unclosed = "[".repeat(depth);
        assert_eq!(packet_type(format!(r#"{{"type":"cluster_probe","x":{unclosed}}}"#).as_bytes()), None);
    }
}
