//! Signed discovery packets (`DISCOVERY_SIGN=true`): the `sig` member, made and checked.
//!
//! The format, exactly (README, "Signed discovery packets", has a test vector):
//!
//! - key: `K = HMAC-SHA256(key = the cluster secret's UTF-8 bytes, message = "codara-discovery-v1")`
//!   (32 bytes), so the secret itself never keys anything on the wire.
//! - the sender serialises the packet without `sig`: a JSON object, `U` (bytes, as sent,
//!   ending with `}`);
//! - `sig = lowercase hex of HMAC-SHA256(K, U)` (64 characters);
//! - the packet sent is `U` without its last byte (`}`), then `,"sig":"`, the 64 hex
//!   characters, and `"}`. So `sig` is the last member, and a verifier recovers `U` exactly
//!   by cutting the last 74 bytes (`,"sig":"` + 64 + `"}`) and putting back `}`: no JSON
//!   canonicalisation, in any language.
//! - a packet is accepted if the HMAC matches (compared in constant time) and its
//!   `timestamp` (ms since the epoch) is within [`WINDOW_MS`] of the verifier's clock, so a
//!   captured packet cannot be replayed later than that.

use ring::hmac;

/// What the key is derived with (version 1 of this format).
pub const KEY_CONTEXT: &[u8] = b"codara-discovery-v1";
/// How far a signed packet's `timestamp` may be from the verifier's clock.
pub const WINDOW_MS: u64 = 30_000;
const PREFIX: &[u8] = br#","sig":""#;
/// `,"sig":"` + 64 hex digits + `"}`.
pub const SUFFIX_LEN: usize = 8 + 64 + 2;

/// The key derived from the cluster secret.
pub struct SigningKey(hmac::Key);

impl SigningKey {
    pub fn from_secret(secret: &str) -> SigningKey {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), KEY_CONTEXT);
        SigningKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// `unsigned` (a serialised JSON object with at least one member) with `sig` appended.
    pub fn sign(&self, unsigned: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.0, unsigned);
        let body = unsigned.strip_suffix(b"}").unwrap_or(unsigned);
        let mut out = Vec::with_capacity(body.len() + SUFFIX_LEN);
        out.extend_from_slice(body);
        out.extend_from_slice(PREFIX);
        for b in tag.as_ref() {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.extend_from_slice(b"\"}");
        out
    }
}

/// What a verifier makes of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Signed with our key, within the window.
    Verified,
    /// No `sig` member.
    Unsigned,
    /// Signed, but there is no key to check it with.
    Unchecked,
    /// Forged, altered, replayed (outside the window) or malformed; why.
    Bad(String),
}

fn hex32(s: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *out.get_mut(i)? = digit(pair[0])? << 4 | digit(*pair.get(1)?)?;
    }
    (s.len() == 64).then_some(out)
}

/// Checks `packet` (as received) against `key` at `now_ms`. `has_sig` is whether the parsed
/// packet has a `sig` member at all (one that is not where the format puts it is bad).
pub fn verify(key: Option<&SigningKey>, packet: &[u8], has_sig: bool, timestamp: Option<u64>, now_ms: u64) -> Verdict {
    let n = packet.len();
    let framed = n > SUFFIX_LEN + 1 && packet[n - SUFFIX_LEN..].starts_with(PREFIX) && packet.ends_with(b"\"}");
    let tag = framed.then(|| hex32(&packet[n - 66..n - 2])).flatten();
    let Some(tag) = tag else {
        return if has_sig {
            Verdict::Bad("sig is not a last member of 64 lowercase hex digits".into())
        } else {
            Verdict::Unsigned
        };
    };
    let Some(key) = key else { return Verdict::Unchecked };
    let mut unsigned = packet[..n - SUFFIX_LEN].to_vec();
    unsigned.push(b'}');
    if hmac::verify(&key.0, &unsigned, &tag).is_err() {
        return Verdict::Bad("the signature does not match (another secret, or forged or altered)".into());
    }
    match timestamp {
        None => Verdict::Bad("no timestamp".into()),
        Some(t) if t.abs_diff(now_ms) > WINDOW_MS => Verdict::Bad(format!(
            "timestamp {} s {} the clock, outside the {} s window (replayed?)",
            t.abs_diff(now_ms) / 1000,
            if t < now_ms { "behind" } else { "ahead of" },
            WINDOW_MS / 1000
        )),
        Some(_) => Verdict::Verified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789abcdef";
    const UNSIGNED: &[u8] = br#"{"type":"cluster_leave","hostname":"build-01","port":4000,"timestamp":1796400000000}"#;
    /// Computed independently (Python's hmac module); the README's test vector.
    const SIGNED: &[u8] = br#"{"type":"cluster_leave","hostname":"build-01","port":4000,"timestamp":1796400000000,"sig":"fa779f405292bbb0b586454d828d12bcf739c8ae72d99fbdc1acc0fca64ea07a"}"#;
    const T: u64 = 1_796_400_000_000;

    #[test]
    fn the_readme_test_vector() {
        let key = SigningKey::from_secret(SECRET);
        assert_eq!(key.sign(UNSIGNED), SIGNED);
        let v: serde_json::Value = serde_json::from_slice(SIGNED).unwrap();
        assert_eq!(v["port"], 4000);
        assert_eq!(verify(Some(&key), SIGNED, true, Some(T), T + 29_000), Verdict::Verified);
    }

    #[test]
    fn forged_altered_replayed_and_unsigned() {
        let key = SigningKey::from_secret(SECRET);
        let other = SigningKey::from_secret("another-secret-0123456789");
        let forged = other.sign(UNSIGNED);
        assert!(matches!(verify(Some(&key), &forged, true, Some(T), T), Verdict::Bad(_)));
        let altered = String::from_utf8(SIGNED.to_vec()).unwrap().replace("4000", "4001");
        assert!(matches!(verify(Some(&key), altered.as_bytes(), true, Some(T), T), Verdict::Bad(_)));
        match verify(Some(&key), SIGNED, true, Some(T), T + 31_000) {
            Verdict::Bad(why) => assert!(why.contains("replayed"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert!(matches!(verify(Some(&key), SIGNED, true, Some(T), T - 31_000), Verdict::Bad(_)));
        assert_eq!(verify(Some(&key), UNSIGNED, false, Some(T), T), Verdict::Unsigned);
        assert_eq!(verify(None, SIGNED, true, Some(T), T), Verdict::Unchecked);
        let upper = String::from_utf8(SIGNED.to_vec()).unwrap().replace("fa779f", "FA779F");
        assert!(matches!(verify(Some(&key), upper.as_bytes(), true, Some(T), T), Verdict::Bad(_)));
        let moved =
            br#"{"sig":"fa779f405292bbb0b586454d828d12bcf739c8ae72d99fbdc1acc0fca64ea07a","type":"cluster_leave"}"#;
        assert!(matches!(verify(Some(&key), moved, true, Some(T), T), Verdict::Bad(_)));
        for junk in [&b""[..], b"}", b"\"}", &SIGNED[SIGNED.len() - SUFFIX_LEN..]] {
            let _ = verify(Some(&key), junk, true, None, T);
        }
    }
}
