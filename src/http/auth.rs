//! Who may use the API: a peer in `TRUSTED_ADDRESSES`, or a request that presents the cluster
//! secret as `X-Cluster-Secret: S` (compat) or `Authorization: Bearer S`, compared in constant
//! time. HTTP requests and WebSocket upgrades both ask [`is_authorized`].

use std::net::SocketAddr;

use crate::cidr;
use crate::config::Config;
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

/// Whether a request from `peer` (its TCP source address) that presents `presented` may go
/// on. A trusted peer is let in whatever it presents, a wrong secret included: its address
/// is its credential (old main servers send no secret at all).
pub fn is_authorized(cfg: &Config, peer: Option<&SocketAddr>, presented: Option<&str>) -> bool {
    peer.is_some_and(|p| cidr::any_contains(&cfg.trusted_addresses, p.ip())) || is_valid(presented, &cfg.secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    const SECRET: &str = "0123456789abcdef";

    fn cfg(trusted: &str) -> Config {
        let env = [("CLUSTER_SECRET", SECRET), ("TRUSTED_ADDRESSES", trusted)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_source(&Source::from_maps(env, Default::default())).expect("test configuration")
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("test address"))
    }

    #[test]
    fn trusted_peers_need_no_secret() {
        let c = cfg("10.0.0.0/8,::1");
        for p in ["10.1.2.3:5000", "[::ffff:10.1.2.3]:5000", "[::1]:80"] {
            assert!(is_authorized(&c, peer(p).as_ref(), None), "{p} without a secret");
            assert!(is_authorized(&c, peer(p).as_ref(), Some("wrong-secret")), "{p} with a wrong one");
        }
        for p in ["11.0.0.1:5000", "[::ffff:11.0.0.1]:5000", "127.0.0.1:80", "[::2]:80"] {
            assert!(!is_authorized(&c, peer(p).as_ref(), None), "{p} is not trusted");
            assert!(!is_authorized(&c, peer(p).as_ref(), Some("wrong-secret")), "{p} is not trusted");
            assert!(is_authorized(&c, peer(p).as_ref(), Some(SECRET)), "{p} with the secret");
        }
        assert!(!is_authorized(&c, None, None), "an unknown peer is not trusted");
        assert!(is_authorized(&c, None, Some(SECRET)));
    }

    #[test]
    fn no_trusted_addresses_means_the_secret_everywhere() {
        let c = cfg("");
        assert!(!is_authorized(&c, peer("127.0.0.1:1").as_ref(), None));
        assert!(is_authorized(&c, peer("127.0.0.1:1").as_ref(), Some(SECRET)));
    }
}
