//! Masking secret values in a task's output: every occurrence of a value (a `secretEnv`
//! value, an `env` value whose name matches `REDACT_VARS`, the cluster secret) becomes
//! `[REDACTED]` before the output reaches the log, the tails, the events or a job's
//! `output.log`, so every channel and every offset sees the masked bytes.
//!
//! The output comes in pieces (pipe reads), and a value may be cut between two of them, or
//! span lines. A [`Masker`] holds back the end of a piece only while it could be the start of
//! a value: the longest end that is a proper prefix of some value (at most the longest value
//! less one byte), and passes on everything else at once. When the task goes quiet
//! ([`Masker::quiet`]), an end of one or two bytes goes out like a partial line (so a prompt
//! or a progress figure that happens to end with a value's first byte is not held up), and
//! is still watched: should the value go on, the rest of it is masked. An end of
//! [`QUIET_HOLD`] bytes or more waits for the next piece or the end of the pipe: a task that
//! prints the first part of a token, pauses, then prints the rest shows none of it.
//!
//! Values may overlap (`abcdef`, `cdefgh`): the bytes covered by any occurrence of any value
//! are masked, and a run of overlapping or adjacent occurrences becomes one `[REDACTED]`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a masked value is replaced by.
pub const REDACTED: &str = "[REDACTED]";
/// A value shorter than this cannot be a secret: masking it would destroy ordinary output.
pub const MIN_VALUE: usize = 6;
/// A held-back end this long or longer is not passed on when the task goes quiet: by then
/// it is most likely a value being printed.
pub const QUIET_HOLD: usize = 3;
/// The longest value masked (a PEM private key or a kubeconfig fits); longer ones are refused.
pub const MAX_VALUE: usize = 64 * 1024;
/// Values of at most this many bytes in all are found with a DFA (the fastest scan); more with
/// a contiguous NFA, about 12 bytes per byte of value: a DFA costs a transition table per
/// byte of value (32 MiB for one 64 KiB key, 480 MiB for a body full of them, built while
/// the task is admitted).
const DFA_MAX_BYTES: usize = 1024;

/// Why `value` cannot be a secret, or `Ok`.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty or only whitespace".into());
    }
    // The value is masked without the whitespace around it too (see [`Secrets::new`]).
    let core = value.trim_ascii();
    if core.len() < MIN_VALUE {
        let without = if core.len() < value.len() { " without the whitespace around it" } else { "" };
        return Err(format!(
            "must be at least {MIN_VALUE} bytes (it is {}{without}): a shorter value cannot be masked in the output without garbling it",
            core.len()
        ));
    }
    if value.len() > MAX_VALUE {
        return Err(format!("must be at most {MAX_VALUE} bytes (it is {})", value.len()));
    }
    Ok(())
}

/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one), ignoring
/// ASCII case (`api_token` is as secret as `API_TOKEN`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it stands for so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Moves the entries of `env` whose names match a pattern of `REDACT_VARS` out of it: each
/// stays in `env` as `[REDACTED]` (what is shown and kept), and its value is returned (what
/// the process gets). An empty value stays as it is (nothing to mask). A value that cannot
/// be a secret ([`check_value`]) is an error naming the variable.
pub fn split_env(env: &mut BTreeMap<String, String>, patterns: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut secret = BTreeMap::new();
    for (name, value) in env.iter_mut() {
        let Some(pattern) = patterns.iter().find(|p| glob_match(p, name)) else { continue };
        if value.is_empty() {
            continue;
        }
        check_value(value).map_err(|why| {
            format!("env value of {name} (a secret: the name matches REDACT_VARS pattern {pattern}) {why}")
        })?;
        secret.insert(name.clone(), std::mem::replace(value, REDACTED.to_string()));
    }
    Ok(secret)
}

/// Replaces the values of `env` whose names match a pattern by `[REDACTED]` (empty ones and
/// ones replaced already stay); whether any was replaced. For history kept in clear.
pub fn redact_names(env: &mut BTreeMap<String, String>, patterns: &[String]) -> bool {
    let mut changed = false;
    for (name, value) in env.iter_mut() {
        if !value.is_empty() && value != REDACTED && patterns.iter().any(|p| glob_match(p, name)) {
            *value = REDACTED.to_string();
            changed = true;
        }
    }
    changed
}

/// The KMP prefix function of `v`: `out[i]` is the length of the longest proper prefix of
/// `v[..=i]` that is also its suffix.
fn prefix_function(v: &[u8]) -> Vec<u32> {
    let mut out = vec![0u32; v.len()];
    let mut k = 0usize;
    for i in 1..v.len() {
        while k > 0 && v[i] != v[k] {
            k = out[k - 1] as usize;
        }
        if v[i] == v[k] {
            k += 1;
        }
        out[i] = k as u32;
    }
    out
}

/// A set of secret values and the automaton that finds them.
pub struct Secrets {
    finder: AhoCorasick,
    values: Vec<Vec<u8>>,
    /// Each value's prefix function (KMP): for its first `i + 1` bytes, the length of the
    /// longest proper prefix that is also a suffix. Finds a read's held-back end in one pass.
    borders: Vec<Vec<u32>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        write!(f, "Secrets({} values)", self.values.len())
    }
}

impl Secrets {
    /// The set of `values` (empty ones are left out; duplicates are kept once). A value with
    /// whitespace around it (a token read from a file with its final newline, a pasted one
    /// with a space) is also masked without it, where that leaves [`MIN_VALUE`] bytes or more:
    /// `$(...)` drops a final newline, and `set -x` or a tool's message quote the value.
    pub fn new<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Secrets {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .flat_map(|v| {
                let v = v.as_ref();
                let core = v.trim_ascii();
                let also = (core.len() < v.len() && core.len() >= MIN_VALUE).then(|| core.to_vec());
                std::iter::once(v.to_vec()).chain(also)
            })
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_unstable();
        values.dedup();
        let borders = values.iter().map(|v| prefix_function(v)).collect();
        let total: usize = values.iter().map(Vec::len).sum();
        let kind = (total > DFA_MAX_BYTES).then_some(AhoCorasickKind::ContiguousNFA);
        // Standard semantics: overlapping search needs them, and overlaps are masked too.
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(kind)
            .build(&values)
            .expect("a few literal values of bounded length always build");
        Secrets { finder, values, borders }
    }

    /// Shared and ready for a task's readers.
    pub fn shared<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Arc<Secrets> {
        Arc::new(Secrets::new(values))
    }

    /// `base` and `more` together; `base` itself when `more` adds nothing.
    pub fn with<'a>(base: &Arc<Secrets>, more: impl IntoIterator<Item = &'a String>) -> Arc<Secrets> {
        let more: Vec<&[u8]> = more.into_iter().map(|v| v.as_bytes()).filter(|v| !v.is_empty()).collect();
        if more.is_empty() {
            return Arc::clone(base);
        }
        Secrets::shared(base.values.iter().map(Vec::as_slice).chain(more))
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The ranges of `buf` covered by occurrences of any value, merged where they overlap or
    /// touch, in order.
    fn covered(&self, buf: &[u8]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        // No `is_match` first: the overlapping search is the same one pass, and returns
        // nothing without allocating when nothing matches.
        if self.values.is_empty() {
            return out;
        }
        let mut found: Vec<(usize, usize)> =
            self.finder.find_overlapping_iter(buf).map(|m| (m.start(), m.end())).collect();
        found.sort_unstable();
        for (a, b) in found {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        out
    }

    /// Where the end of `buf` that could still become a value starts: the smallest `s` such
    /// that `buf[s..]` is a proper prefix of a value; `buf.len()` when there is none. One
    /// KMP pass per value over at most its length less one byte: linear, whatever the value
    /// (a value that repeats a byte no longer makes each read quadratic).
    fn pending_start(&self, buf: &[u8]) -> usize {
        let mut held = 0;
        for (v, border) in self.values.iter().zip(&self.borders) {
            let from = buf.len().saturating_sub(v.len() - 1);
            if buf.len() - from <= held {
                continue;
            }
            let mut q = 0;
            for &b in &buf[from..] {
                while q > 0 && v[q] != b {
                    q = border[q - 1] as usize;
                }
                if v[q] == b {
                    q += 1;
                }
                if q == v.len() {
                    q = border[q - 1] as usize;
                }
            }
            held = held.max(q);
        }
        buf.len() - held
    }

    /// `s` with every occurrence masked (for the task's own fields: a value in its `args`).
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let ranges = self.covered(s.as_bytes());
        if ranges.is_empty() {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len());
        let mut at = 0;
        for (a, b) in ranges {
            out.push_str(&s[at..a]);
            out.push_str(REDACTED);
            at = b;
        }
        out.push_str(&s[at..]);
        Cow::Owned(out)
    }
}

/// Masks one stream, piece by piece (see the module).
pub struct Masker {
    secrets: Arc<Secrets>,
    /// The end of what came so far that could still become a value.
    held: Vec<u8>,
    /// How many leading bytes of `held` were passed on already, inside the `[REDACTED]` that
    /// was the last thing passed on (a value that overlaps a longer one still coming).
    shown: usize,
    /// What was passed on so far ends with a `[REDACTED]`: a value right after it joins it.
    open: bool,
    out: Vec<u8>,
}

impl Masker {
    pub fn new(secrets: Arc<Secrets>) -> Masker {
        Masker { secrets, held: Vec::new(), shown: 0, open: false, out: Vec::new() }
    }

    /// How many bytes are held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the next piece; returns what can be passed on now, masked.
    pub fn feed<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        if self.held.is_empty() && !self.secrets.finder.is_match(data) {
            // The common case: nothing to mask, and no copy.
            let keep = self.secrets.pending_start(data);
            self.held.extend_from_slice(&data[keep..]);
            self.shown = 0;
            self.open &= keep == 0;
            return &data[..keep];
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        self.run(buf, false)
    }

    /// The task has gone quiet: passes on what is held if it is shorter than [`QUIET_HOLD`]
    /// (see the module); it stays held for matching, so a value it begins is masked from
    /// where it goes on.
    pub fn quiet(&mut self) -> &[u8] {
        self.out.clear();
        if self.held.len() < QUIET_HOLD && self.shown < self.held.len() {
            self.out.extend_from_slice(&self.held[self.shown..]);
            self.shown = self.held.len();
            self.open = false;
        }
        &self.out
    }

    /// Bytes held back and not yet passed on.
    pub fn unsent(&self) -> usize {
        self.held.len() - self.shown
    }

    /// The end of the stream: passes on what is held, masked.
    pub fn finish(&mut self) -> &[u8] {
        let buf = std::mem::take(&mut self.held);
        self.run(buf, true)
    }

    fn run(&mut self, mut buf: Vec<u8>, last: bool) -> &[u8] {
        self.out.clear();
        let hold = if last { buf.len() } else { self.secrets.pending_start(&buf) };
        let mut cursor = self.shown;
        for (a, b) in self.secrets.covered(&buf) {
            if a >= hold {
                break; // decided with the next piece
            }
            if b <= cursor {
                continue;
            }
            if a < cursor || (a == cursor && self.open) {
                // Begun in bytes passed on already: inside the last `[REDACTED]`, or (after
                // a quiet time) plain, and then the rest of it is masked.
                if !self.open {
                    self.out.extend_from_slice(REDACTED.as_bytes());
                    self.open = true;
                }
                cursor = b;
                continue;
            }
            self.out.extend_from_slice(&buf[cursor..a]);
            self.out.extend_from_slice(REDACTED.as_bytes());
            self.open = true;
            cursor = b;
        }
        if cursor < hold {
            self.out.extend_from_slice(&buf[cursor..hold]);
            self.open = false;
        }
        self.shown = cursor.saturating_sub(hold);
        buf.drain(..hold);
        self.held = buf;
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        Masker::new(Secrets::shared(values.iter().map(|v| v.as_bytes())))
    }

    /// Feeds the pieces, then finishes; the whole masked output.
    fn through(m: &mut Masker, pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(m.feed(p));
            let longest = m.secrets.values.iter().map(Vec::len).max().unwrap_or(0);
            assert!(m.held() < longest.max(1), "held {} bytes", m.held());
        }
        out.extend_from_slice(m.finish());
        String::from_utf8(out).unwrap()
    }

    /// The output cut at every point (and at every pair of points) masks like the whole.
    fn every_split(values: &[&str], text: &str, want: &str) {
        let b = text.as_bytes();
        assert_eq!(through(&mut masker(values), &[b]), want, "whole");
        for i in 0..=b.len() {
            assert_eq!(through(&mut masker(values), &[&b[..i], &b[i..]]), want, "split at {i}");
            for j in i..=b.len() {
                let got = through(&mut masker(values), &[&b[..i], &b[i..j], &b[j..]]);
                assert_eq!(got, want, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(through(&mut masker(values), &bytes), want, "byte by byte");
    }

    #[test]
    fn a_value_cut_anywhere_is_masked() {
        every_split(&["hunter2-token"], "pw=hunter2-token; again hunter2-token\n", "pw=[REDACTED]; again [REDACTED]\n");
        every_split(&["s3cret"], "s3cres3cret s3cret", "s3cre[REDACTED] [REDACTED]");
    }

    #[test]
    fn multi_line_values() {
        let key = "-----BEGIN KEY-----\nabc\ndef\n-----END KEY-----";
        every_split(&[key], &format!("key:\n{key}\ndone\n"), "key:\n[REDACTED]\ndone\n");
    }

    #[test]
    fn overlapping_and_adjacent_values_mask_their_union() {
        every_split(&["abcdef", "cdefghij"], "xxabcdefghijyy", "xx[REDACTED]yy");
        every_split(&["abcdef", "cdefghij"], "xxabcdefgh-", "xx[REDACTED]gh-");
        every_split(&["aaaaaa"], "aaaaaaaa b aaaaa", "[REDACTED] b aaaaa");
        every_split(&["abcdefgh", "bcdefg"], "zabcdefgz", "za[REDACTED]z");
        every_split(&["123456", "654321"], "123456654321!", "[REDACTED]!");
    }

    /// A value whose first half repeats one byte, and output of that byte: a large read and
    /// then a byte at a time (a progress bar). The held-back end is found by one KMP pass per
    /// value; the comparison at every position it replaced cost O(length²) on a large read
    /// (20 ms per 64 KiB read for this value in a debug build). This checks the result, with
    /// a generous bound on the time.
    #[test]
    fn a_repetitive_value_and_output_a_byte_at_a_time() {
        let half = (MAX_VALUE - 1) / 2;
        let value = format!("{}b{}", "a".repeat(half), "a".repeat(half));
        let mut m = masker(&[value.as_str()]);
        let t0 = std::time::Instant::now();
        let mut out = m.feed(&vec![b'a'; 64 * 1024]).len();
        for _ in 0..5000 {
            out += m.feed(b"a").len();
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t0.elapsed());
        // All but the last `half` bytes went out: they could still begin the value.
        assert_eq!(out, 64 * 1024 + 5000 - half);
        assert_eq!(m.feed(format!("b{}", "a".repeat(half)).as_bytes()), b"[REDACTED]");
        assert_eq!(m.finish(), b"");
    }

    #[test]
    fn the_held_end_is_the_longest_suffix_that_begins_a_value() {
        let s = Secrets::new(["abcabd-xyz", "bcab-qqqq"]);
        assert_eq!(s.pending_start(b"..abcab"), 2, "abcab begins the first value");
        assert_eq!(s.pending_start(b"..abcabc"), 5, "abc (after the border) begins it again");
        assert_eq!(s.pending_start(b"..bcab-q"), 2);
        assert_eq!(s.pending_start(b"..abcabd-xyz"), 12, "a whole value is not held");
        assert_eq!(s.pending_start(b"zzz"), 3);
        assert_eq!(s.pending_start(b""), 0);
    }

    #[test]
    fn nothing_is_held_that_cannot_start_a_value() {
        let mut m = masker(&["token-value"]);
        assert_eq!(m.feed(b"progress 45%"), b"progress 45%");
        assert_eq!(m.held(), 0);
        assert_eq!(m.feed(b"the token-v"), b"the ");
        assert_eq!(m.held(), 7);
        assert_eq!(m.feed(b"alue!"), b"[REDACTED]!");
        assert_eq!(m.feed(b"tok"), b"");
        assert_eq!(m.feed(b"en"), b"");
        assert_eq!(m.feed(b"s"), b"tokens");
        assert_eq!(m.finish(), b"");
        // A prefix left at the end of the stream is passed on as it is.
        assert_eq!(m.feed(b"token-valu"), b"");
        assert_eq!(m.finish(), b"token-valu");
    }

    #[test]
    fn a_quiet_time_passes_on_one_or_two_held_bytes_and_keeps_watching_them() {
        let mut m = masker(&["tok-123456"]);
        assert_eq!(m.feed(b"50 t"), b"50 ");
        assert_eq!(m.quiet(), b"t");
        assert_eq!(m.quiet(), b"");
        assert_eq!(m.feed(b"ok-123456 t"), b"[REDACTED] ");
        assert_eq!(m.quiet(), b"t");
        assert_eq!(m.feed(b"here"), b"here");
        // Three bytes or more of a value wait for what comes next.
        assert_eq!(m.feed(b" tok-1"), b" ");
        assert_eq!(m.quiet(), b"");
        assert_eq!(m.unsent(), 5);
        assert_eq!(m.feed(b"23456\n"), b"[REDACTED]\n");
        assert_eq!(m.feed(b"to"), b"");
        assert_eq!(m.quiet(), b"to");
        assert_eq!(m.feed(b"p"), b"p");
        assert_eq!(m.finish(), b"");
    }

    #[test]
    fn no_values_pass_everything() {
        let mut m = Masker::new(Secrets::shared(Vec::<Vec<u8>>::new()));
        assert_eq!(m.feed(b"anything"), b"anything");
        assert_eq!(m.finish(), b"");
    }

    #[test]
    fn a_value_is_masked_without_the_whitespace_around_it() {
        every_split(&["tok-0123456\n"], "a tok-0123456 b tok-0123456\n", "a [REDACTED] b [REDACTED]");
        every_split(&["  tok-0123456 "], "[tok-0123456]", "[[REDACTED]]");
        // Too short without it: only the whole value is masked.
        every_split(&["abc\n\n\n"], "abc abc\n\n\n", "abc [REDACTED]");
    }

    /// A large value (a kubeconfig, a key) costs memory of the order of its size, not a DFA
    /// of 32 MiB per 64 KiB; and it is still found.
    #[test]
    fn large_values_take_little_memory() {
        let value =
            |seed: u8| -> Vec<u8> { (0..MAX_VALUE).map(|i| b'A' + ((i * 7 + usize::from(seed)) % 26) as u8).collect() };
        let one = Secrets::new([value(0)]);
        assert!(one.finder.memory_usage() < 2 << 20, "{} bytes", one.finder.memory_usage());
        let many = Secrets::new((0..15).map(value));
        assert!(many.finder.memory_usage() < 32 << 20, "{} bytes", many.finder.memory_usage());
        let text = [b"x".as_slice(), &value(3), b"y"].concat();
        assert_eq!(String::from_utf8(Masker::new(Arc::new(many)).feed(&text).to_vec()).unwrap(), "x[REDACTED]y");
    }

    #[test]
    fn strings() {
        let s = Secrets::new(["s3cr3t-value"]);
        assert_eq!(s.mask_str("a s3cr3t-value b"), "a [REDACTED] b");
        assert!(matches!(s.mask_str("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn globs() {
        for (p, n) in [
            ("*_TOKEN", "API_TOKEN"),
            ("*_token", "api_Token"),
            ("*", ""),
            ("A?C", "abc"),
            ("*_SECRET_KEY", "AWS_SECRET_KEY"),
        ] {
            assert!(glob_match(p, n), "{p} {n}");
        }
        for (p, n) in [("*_TOKEN", "TOKEN"), ("*_TOKEN", "API_TOKENS"), ("A?C", "AC"), ("X*", "AX")] {
            assert!(!glob_match(p, n), "{p} {n}");
        }
        assert!(glob_match("*a*b*", "xxaxxbxx") && !glob_match("*a*b", "xxbxxa"));
    }

    #[test]
    fn redacted_env_is_split_off() {
        let patterns: Vec<String> = crate::config::DEFAULT_REDACT_VARS.split(',').map(String::from).collect();
        let mut env: BTreeMap<String, String> =
            [("API_TOKEN", "tok-123456"), ("CI", "1"), ("DB_PASSWORD", "")].map(|(k, v)| (k.into(), v.into())).into();
        let secret = split_env(&mut env, &patterns).unwrap();
        assert_eq!(secret.into_iter().collect::<Vec<_>>(), vec![("API_TOKEN".into(), "tok-123456".into())]);
        assert_eq!((env["API_TOKEN"].as_str(), env["CI"].as_str(), env["DB_PASSWORD"].as_str()), (REDACTED, "1", ""));
        let mut short: BTreeMap<String, String> = [("A_SECRET".to_string(), "abc".to_string())].into();
        let e = split_env(&mut short, &patterns).unwrap_err();
        assert!(e.starts_with("env value of A_SECRET (a secret: the name matches REDACT_VARS pattern *_SECRET) must be at least 6 bytes"), "{e}");
    }

    #[test]
    fn values_that_cannot_be_secrets() {
        assert!(check_value("abcdef").is_ok());
        for bad in ["", "abc", "abcde", "      ", "\n\t  \n", "abc\n\n\n\n", "  abcde  "] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
        assert!(check_value(&"x".repeat(MAX_VALUE + 1)).is_err());
    }
}
