//! The kinds of task the soak runs: what each asks the agent to run, what it must print, and
//! how it must end. Every task carries [`TOKEN_VAR`] in its environment, so its processes
//! (and their children, which inherit it) can be found at the end.

use serde_json::{json, Value};

/// The environment variable that marks the run's tasks.
pub const TOKEN_VAR: &str = "CODARA_SOAK_TOKEN";

/// The `sleep` a task leaves behind in a session of its own (see [`Kind::Orphan`]).
pub const ORPHAN_ARGS: &str = "sleep 30";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Hundreds of lines on both streams, invalid UTF-8, a last line without a newline.
    Lines,
    /// 1 MiB on stdout at once, then a little on stderr.
    Burst,
    /// 1 MiB on stderr at once.
    BurstErr,
    /// Partial lines with pauses between them (a progress display), on both streams, some
    /// inside a UTF-8 character.
    Partial,
    /// Lines on both streams for about 2 s; its submitter follows `GET /output?follow=true`.
    Follow,
    /// Lines for 10 s; its submitter cancels it once output has come.
    Cancel,
    /// Prints, then sleeps past its own `timeout`.
    Timeout,
    /// Leaves a `setsid` grandchild holding its pipes open.
    Orphan,
    /// Exits 3 after some output.
    Exit3,
    /// A program that does not exist: `failed`, then `completed`.
    NoProgram,
    /// 20 bursts of 1 MiB, 0.1 s apart: a stalled client falls 8 MiB behind within about
    /// 2 s, while one that keeps up (well under 10 MiB/s) has no trouble.
    Flood,
}

/// What submitters run, in turn, each starting from its own place: two bursts in twelve.
pub const MIX: [Kind; 12] = [
    Kind::Lines,
    Kind::Burst,
    Kind::Partial,
    Kind::Follow,
    Kind::Cancel,
    Kind::Timeout,
    Kind::Orphan,
    Kind::Lines,
    Kind::Exit3,
    Kind::BurstErr,
    Kind::NoProgram,
    Kind::Partial,
];

const BURST: usize = 1 << 20;
/// 63 characters and a newline: 1 MiB of it is whole lines.
const FLOOD_LINE: &str = "flood 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRS";
const BURST_LINE: &str = "burst: the quick brown fox jumps over the lazy dog";
const FLOOD_BURSTS: usize = 20;
const SLOW_LINES: usize = 30;
const CANCEL_LINES: usize = 200;

fn lines(n: usize, f: impl Fn(usize) -> String) -> Vec<u8> {
    (0..n).flat_map(|i| f(i).into_bytes()).collect()
}

/// `yes LINE | head -c n`.
fn yes_head(line: &str, n: usize) -> Vec<u8> {
    format!("{line}\n").into_bytes().into_iter().cycle().take(n).collect()
}

fn seq(from: usize, to: usize) -> Vec<u8> {
    (from..=to).flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

impl Kind {
    /// The body of `POST /execute`.
    pub fn body(self, token: &str) -> Value {
        let env = json!({ TOKEN_VAR: token });
        if self == Kind::NoProgram {
            return json!({"command": "/nonexistent/codara-soak-no-such-program", "args": ["x"], "env": env});
        }
        let mut body = json!({"command": "sh", "args": ["-c", self.script()], "env": env});
        if self == Kind::Timeout {
            body["timeout"] = json!(1000);
        }
        body
    }

    fn script(self) -> String {
        match self {
            Kind::Lines => "i=0; while [ $i -lt 200 ]; do echo \"out line $i\"; echo \"err line $i\" >&2; i=$((i+1)); done; \
                 printf 'invalid \\377\\376 utf8\\n'; printf 'tail without newline'"
                .into(),
            Kind::Burst => format!("yes '{BURST_LINE}' | head -c {BURST}; printf '\\n\\377 end of burst\\n'; seq 1 2000 >&2"),
            Kind::BurstErr => format!("seq 1 1000; yes '{BURST_LINE}' | head -c {BURST} >&2; echo done"),
            // The pauses also fall inside a 2-byte and a 3-byte character: a chunk flushed in
            // a pause must not cut one.
            Kind::Partial => "printf 'progress'; for i in 1 2 3; do sleep 0.15; printf ' %d0%%' $i; done; \
                 printf ' caf\\303'; sleep 0.15; printf '\\251 \\342\\202'; sleep 0.15; printf '\\254\\r'; \
                 printf 'err partial' >&2; sleep 0.15; printf ' \\377 more\\n' >&2; printf 'done'"
                .into(),
            Kind::Follow => format!(
                "i=0; while [ $i -lt {SLOW_LINES} ]; do echo \"slow out $i\"; echo \"slow err $i\" >&2; sleep 0.05; i=$((i+1)); done"
            ),
            Kind::Cancel => format!(
                "i=0; while [ $i -lt {CANCEL_LINES} ]; do echo \"cancel me $i\"; echo \"cancel err $i\" >&2; sleep 0.05; i=$((i+1)); done"
            ),
            Kind::Timeout => "echo before the timeout; sleep 5; echo after the timeout".into(),
            Kind::Orphan => format!("setsid {ORPHAN_ARGS} & echo orphan started"),
            Kind::Exit3 => "echo about to fail; echo because >&2; exit 3".into(),
            Kind::Flood => format!(
                "i=0; while [ $i -lt {FLOOD_BURSTS} ]; do yes '{FLOOD_LINE}' | head -c {BURST}; sleep 0.1; i=$((i+1)); done"
            ),
            Kind::NoProgram => unreachable!("runs no script"),
        }
    }

    /// The exact stdout and stderr the task prints, where they are known in advance (all
    /// but a cancelled task, whose output stops wherever the cancel caught it).
    pub fn expected_output(self) -> Option<(Vec<u8>, Vec<u8>)> {
        let burst = || yes_head(BURST_LINE, BURST);
        Some(match self {
            Kind::Lines => {
                let mut out = lines(200, |i| format!("out line {i}\n"));
                out.extend_from_slice(b"invalid \xff\xfe utf8\ntail without newline");
                (out, lines(200, |i| format!("err line {i}\n")))
            }
            Kind::Burst => ([burst(), b"\n\xff end of burst\n".to_vec()].concat(), seq(1, 2000)),
            Kind::BurstErr => ([seq(1, 1000), b"done\n".to_vec()].concat(), burst()),
            Kind::Partial => {
                (b"progress 10% 20% 30% caf\xc3\xa9 \xe2\x82\xac\rdone".to_vec(), b"err partial \xff more\n".to_vec())
            }
            Kind::Follow => {
                (lines(SLOW_LINES, |i| format!("slow out {i}\n")), lines(SLOW_LINES, |i| format!("slow err {i}\n")))
            }
            Kind::Timeout => (b"before the timeout\n".to_vec(), Vec::new()),
            Kind::Orphan => (b"orphan started\n".to_vec(), Vec::new()),
            Kind::Exit3 => (b"about to fail\n".to_vec(), b"because\n".to_vec()),
            Kind::NoProgram => (Vec::new(), Vec::new()),
            Kind::Flood => (yes_head(FLOOD_LINE, BURST * FLOOD_BURSTS), Vec::new()),
            Kind::Cancel => return None,
        })
    }

    /// For a cancelled task: what it printed must be the start of what it would have.
    pub fn cancel_output_is_a_prefix(out: &[u8], err: &[u8]) -> bool {
        let full_out = lines(CANCEL_LINES, |i| format!("cancel me {i}\n"));
        let full_err = lines(CANCEL_LINES, |i| format!("cancel err {i}\n"));
        full_out.starts_with(out) && full_err.starts_with(err)
    }

    /// Checks the final task object; `cancel_answer` is the status `POST /cancel` got.
    pub fn check_end(self, t: &Value, cancel_answer: Option<u16>) -> Result<(), String> {
        let want = |field: &str, v: Value| -> Result<(), String> {
            if t[field] == v {
                Ok(())
            } else {
                Err(format!("{self:?} task: {field} is {}, expected {v}", t[field]))
            }
        };
        match self {
            Kind::Exit3 => {
                want("status", json!("failed"))?;
                want("exitCode", json!(3))
            }
            Kind::Timeout => {
                want("status", json!("failed"))?;
                want("timedOut", json!(true))?;
                want("signal", json!("SIGTERM"))
            }
            Kind::NoProgram => {
                want("status", json!("failed"))?;
                want("exitCode", Value::Null)?;
                match t["error"].as_str() {
                    Some(e) if !e.is_empty() => Ok(()),
                    _ => Err(format!("a task whose program does not exist has no `error`: {t}")),
                }
            }
            Kind::Cancel if cancel_answer == Some(200) => want("status", json!("cancelled")),
            Kind::Cancel => Err(format!("cancel answered {cancel_answer:?} although the task ran for 10 s: {t}")),
            _ => {
                want("status", json!("completed"))?;
                want("exitCode", json!(0))?;
                want("timedOut", json!(false))
            }
        }
    }
}
