//! What a task was asked to run (`command`, `args`, `cwd`, `env`: compat fields of the task
//! object) and its bounded summary. No I/O here.
//!
//! A request may be as large as the body limit (1 MiB), and as 200,000 one-byte `args` it
//! costs about 11 MB as a `Vec<String>` (24 bytes a `String` plus a 32-byte allocation). A task
//! the agent keeps must cost a few KiB whatever it asked, so a request over [`INLINE_BYTES`]
//! or [`INLINE_ITEMS`] is kept whole on disk only (`DATA_DIR/tasks/<id>.request.json`, read
//! back for `GET /task/:id`), and in memory, in the journal and in `/tasks` as its summary
//! ([`Request::summary`]), marked `requestTruncated: true`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request up to this many bytes of JSON (the four fields) is kept as it is.
pub const INLINE_BYTES: usize = 2048;
/// ... and up to this many `args` and `env` entries together.
pub const INLINE_ITEMS: usize = 64;
/// A summary's four fields take at most this many bytes of JSON ...
pub const SUMMARY_BYTES: usize = 1024;
/// ... keep at most this many `args`, and as many `env` entries ...
pub const SUMMARY_ITEMS: usize = 16;
/// ... and cut each string to this many bytes of JSON.
pub const SUMMARY_STRING: usize = 200;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
}

/// Bytes of `c` in a JSON string (an upper bound: every control character as `\u00XX`).
fn escaped(c: char) -> usize {
    match c {
        '"' | '\\' => 2,
        '\0'..='\u{1f}' => 6,
        c => c.len_utf8(),
    }
}

/// Bytes of `s` as a JSON string, quotes included (an upper bound).
pub fn json_len(s: &str) -> usize {
    2 + s.chars().map(escaped).sum::<usize>()
}

/// `s`, or its longest beginning that takes at most `budget` bytes as a JSON string with "…"
/// added to say it was cut.
pub fn cut(s: &str, budget: usize) -> String {
    if json_len(s) <= budget {
        return s.to_string();
    }
    let mut used = 2 + '…'.len_utf8();
    let end = s
        .char_indices()
        .find(|&(_, c)| {
            used += escaped(c);
            used > budget
        })
        .map_or(s.len(), |(i, _)| i);
    format!("{}…", &s[..end])
}

impl Request {
    /// Bytes of the four fields as JSON (an upper bound).
    pub fn json_len(&self) -> usize {
        let args: usize = self.args.iter().map(|a| json_len(a) + 1).sum();
        let env: usize = self.env.iter().map(|(k, v)| json_len(k) + json_len(v) + 2).sum();
        json_len(&self.command) + json_len(&self.cwd) + args + env + 40
    }

    /// Whether it is small enough to keep as it is, in memory and in the journal.
    pub fn fits_inline(&self) -> bool {
        self.args.len() + self.env.len() <= INLINE_ITEMS && self.json_len() <= INLINE_BYTES
    }

    /// Its beginning, within [`SUMMARY_BYTES`]: the command and `cwd` cut to
    /// [`SUMMARY_STRING`], then the first `args` and `env` entries, each cut, while they fit.
    pub fn summary(&self) -> Request {
        let command = cut(&self.command, SUMMARY_STRING);
        let cwd = cut(&self.cwd, SUMMARY_STRING);
        let mut budget = SUMMARY_BYTES.saturating_sub(json_len(&command) + json_len(&cwd) + 40);
        let mut args = Vec::new();
        for a in self.args.iter().take(SUMMARY_ITEMS) {
            let a = cut(a, SUMMARY_STRING.min(budget.saturating_sub(1)));
            let Some(left) = budget.checked_sub(json_len(&a) + 1) else { break };
            budget = left;
            args.push(a);
        }
        let mut env = BTreeMap::new();
        for (k, v) in self.env.iter().take(SUMMARY_ITEMS) {
            let k = cut(k, SUMMARY_STRING / 2);
            let v = cut(v, SUMMARY_STRING / 2);
            let Some(left) = budget.checked_sub(json_len(&k) + json_len(&v) + 2) else { break };
            budget = left;
            env.insert(k, v);
        }
        Request { command, args, cwd, env }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_characters_whole_and_within_the_budget() {
        assert_eq!(cut("short", 100), "short");
        let s = "é".repeat(100);
        let c = cut(&s, 21);
        assert!(c.ends_with('…') && json_len(&c) <= 21, "{c}");
        assert!(json_len(&cut(&"\u{1}".repeat(50), 40)) <= 40);
        assert_eq!(cut("abcdef", 4), "…");
    }

    #[test]
    fn a_large_request_has_a_small_summary() {
        let tiny_args = Request { command: "true".into(), args: vec!["a".into(); 200_000], ..Request::default() };
        let long_arg = Request { command: "x".repeat(100_000), args: vec!["y".repeat(1 << 20)], ..Request::default() };
        let env: BTreeMap<String, String> = (0..1000).map(|i| (format!("K{i}"), "v".repeat(3000))).collect();
        let big_env = Request { command: "make".into(), env, cwd: "\\".repeat(5000), ..Request::default() };
        for r in [tiny_args, long_arg, big_env] {
            assert!(!r.fits_inline());
            let s = r.summary();
            assert!(s.json_len() <= SUMMARY_BYTES, "{}", s.json_len());
            assert!(s.args.len() <= SUMMARY_ITEMS && s.env.len() <= SUMMARY_ITEMS);
            assert!(s.fits_inline());
        }
        let small = Request { command: "echo".into(), args: vec!["hi".into()], cwd: "/".into(), ..Request::default() };
        assert!(small.fits_inline());
        assert_eq!(small.summary(), small);
    }
}
