//! Address ranges of `TRUSTED_ADDRESSES`: `10.0.0.0/8`, `fd00::/8`, or a bare address (`/32`,
//! `/128`). Pure parsing and matching, no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A network: an address whose bits past `prefix` are zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address` or `address/prefix`. Refused, with the reason: an address that does
    /// not parse, a prefix that is not a number from 0 to 32 (IPv4) or 128 (IPv6), and an
    /// address with bits set past its prefix (`10.0.0.5/8`): that is likely a typo for a
    /// single host, and widening it silently would trust far more than was meant.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = max_prefix(network);
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{p:?} is not a prefix length from 0 to {max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            let net = Cidr { network: cidr.masked(network), prefix };
            return Err(format!("{s} has bits set past its prefix; write {net} for the network, or {network} alone"));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network. An IPv4 address also matches in its IPv4-mapped IPv6
    /// form (`::ffff:10.0.0.5`) and the other way round, as a dual-stack socket reports IPv4
    /// peers mapped.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let other_form = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        };
        self.contains_exact(ip) || other_form.is_some_and(|o| self.contains_exact(o))
    }

    fn contains_exact(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }

    /// `ip` with the bits past this prefix cleared (`ip` of this network's family).
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix).min(32)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix).min(128)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses a comma-separated list (blanks around entries and empty entries are ignored).
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(Cidr::parse).collect()
}

/// Whether `ip` is in any of `list`.
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ipv4_ranges() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")) && c.contains(ip("10.255.255.255")) && c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.0")) && !c.contains(ip("9.255.255.255")));
        let c = cidr("192.168.4.0/22");
        assert!(c.contains(ip("192.168.7.255")) && !c.contains(ip("192.168.8.0")) && !c.contains(ip("192.168.3.1")));
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::1")), "an IPv4 range never holds a plain IPv6 address");
    }

    #[test]
    fn a_bare_address_is_one_host() {
        let c = cidr("192.168.1.5");
        assert_eq!(c.to_string(), "192.168.1.5/32");
        assert!(c.contains(ip("192.168.1.5")) && !c.contains(ip("192.168.1.4")) && !c.contains(ip("192.168.1.6")));
        let c = cidr("::1");
        assert_eq!(c.to_string(), "::1/128");
        assert!(c.contains(ip("::1")) && !c.contains(ip("::2")) && !c.contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv6_ranges() {
        let c = cidr("::1/128");
        assert!(c.contains(ip("::1")) && !c.contains(ip("::")));
        let c = cidr("fd00::/8");
        assert!(c.contains(ip("fd12:3456::1")) && c.contains(ip("fdff:ffff::ffff")));
        assert!(!c.contains(ip("fe80::1")) && !c.contains(ip("fc00::1")));
        let c = cidr("2001:db8:abcd:12::/64");
        assert!(c.contains(ip("2001:db8:abcd:12:ffff:ffff:ffff:ffff")) && !c.contains(ip("2001:db8:abcd:13::")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("fd00::/8").contains(ip("10.0.0.1")));
    }

    #[test]
    fn mapped_peers_match_ipv4_ranges_and_back() {
        // A dual-stack socket (BIND_ADDRESS=::) reports an IPv4 peer as ::ffff:a.b.c.d.
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("::ffff:10.0.0.5")));
        assert!(!c.contains(ip("::ffff:11.0.0.5")));
        assert!(cidr("10.0.0.5").contains(ip("::ffff:10.0.0.5")));
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        // Only mapped addresses: the deprecated compatible form ::a.b.c.d, and ::1, are not.
        assert!(!c.contains(ip("::10.0.0.5")));
        assert!(!cidr("0.0.0.1").contains(ip("::1")));
        // A mapped range written in IPv6 holds the IPv4 peers it maps.
        let m = cidr("::ffff:10.0.0.0/104");
        assert!(m.contains(ip("10.9.8.7")) && m.contains(ip("::ffff:10.9.8.7")) && !m.contains(ip("11.0.0.1")));
        assert!(cidr("::/0").contains(ip("192.0.2.1")), "::/0 holds every address, mapped IPv4 ones too");
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "::/200",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "10.0.0/8",
            "300.1.1.1",
            "garbage",
            "fe80::1%eth0",
            "localhost",
            "10.0.0.1/8",
            "fd00::1/8",
            "",
            "/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} was accepted as {:?}", Cidr::parse(bad));
        }
        let e = Cidr::parse("10.0.0.5/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8") && e.contains("10.0.0.5"), "{e}");
    }

    #[test]
    fn lists() {
        let l = parse_list(" 10.0.0.0/8, ,192.168.1.5 ,::1/128,").unwrap();
        let shown: Vec<String> = l.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.5/32", "::1/128"]);
        assert!(any_contains(&l, ip("10.2.3.4")) && any_contains(&l, ip("::1")) && any_contains(&l, ip("192.168.1.5")));
        assert!(!any_contains(&l, ip("192.168.1.6")) && !any_contains(&l, ip("127.0.0.1")));
        assert!(parse_list("").unwrap().is_empty());
        assert!(!any_contains(&[], ip("127.0.0.1")), "an empty list trusts no one");
        assert!(parse_list("10.0.0.0/8,bogus").is_err());
    }
}
