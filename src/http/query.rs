//! The query string of a request URL, percent-decoded.

/// Splits `/path?query` into the path and its decoded `key=value` pairs.
pub fn split_url(url: &str) -> (&str, Vec<(String, String)>) {
    match url.split_once('?') {
        Some((path, q)) => (path, parse(q)),
        None => (url, Vec::new()),
    }
}

pub fn parse(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `key`.
pub fn get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every value of `key`, in order (`?subscribe=1&subscribe=2`).
pub fn get_all<'a>(q: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    q.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `true`/`1`/`yes` (or the bare key) are true; anything else false.
pub fn flag(q: &[(String, String)], key: &str) -> bool {
    matches!(get(q, key), Some("" | "true" | "1" | "yes"))
}

/// Percent-decoding of a path (where `+` is a plus).
pub fn decode_path(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    decode(&s.replace('+', "%2B"))
}

/// Percent-decoding (and `+` as space); invalid escapes are kept as they are.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        let (p, q) = split_url("/tasks?status=running&limit=5&secret=a%2Fb+c&x");
        assert_eq!(p, "/tasks");
        assert_eq!(get(&q, "status"), Some("running"));
        assert_eq!(get(&q, "secret"), Some("a/b c"));
        assert!(flag(&q, "x"));
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%41"), "A");
    }
}
