//! The cluster secret on a request: `X-Cluster-Secret: S` (compat) or
//! `Authorization: Bearer S`, compared in constant time.

use crate::secret::constant_time_eq;

/// The secret a request presents in its headers, if any.
pub fn presented(headers: &[tiny_http::Header]) -> Option<&str> {
    for h in headers {
        if h.field.equiv("X-Cluster-Secret") {
            return Some(h.value.as_str().trim());
        }
    }
    headers.iter().find(|h| h.field.equiv("Authorization")).and_then(|h| {
        let v = h.value.as_str().trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

pub fn is_valid(presented: Option<&str>, secret: &str) -> bool {
    presented.is_some_and(|p| constant_time_eq(p.as_bytes(), secret.as_bytes()))
}
