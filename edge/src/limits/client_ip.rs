//! The client's address behind trusted proxies: `X-Forwarded-For` is read
//! only when the socket's peer is one of `trusted_proxies`, and then from the
//! right, skipping the trusted hops; the first address that is not trusted is
//! the client. A peer that is not trusted is the client, whatever it claims,
//! so a client cannot pick the address its connections are counted under.

use std::net::IpAddr;

/// An address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0..={max}")),
            },
        };
        Ok(Self {
            addr: canonical(addr),
            prefix,
        })
    }
}

impl IpNet {
    /// Whether `ip` is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: `peer`, or, when `peer` is a trusted proxy, the right-most address
/// of `forwarded_for` that is not trusted (a malformed entry stops the walk at the last
/// address read).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let (Some(list), true) = (forwarded_for, is_trusted(peer)) else {
        return peer;
    };
    let mut client = peer;
    for entry in list.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("valid")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_parse_and_match() {
        let n: IpNet = "10.1.0.0/16".parse().expect("cidr");
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")), "mapped v4");
        let one: IpNet = "127.0.0.1".parse().expect("single");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let odd: IpNet = "192.168.0.0/23".parse().expect("cidr");
        assert!(odd.contains(ip("192.168.1.255")) && !odd.contains(ip("192.168.2.0")));
        let v6: IpNet = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0".parse::<IpNet>().expect("all").contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "::/129", "x", "10.0.0.0/", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = Some("1.2.3.4, 10.0.0.7");
        assert_eq!(client_ip(ip("10.0.0.2"), xff, &trusted), ip("1.2.3.4"), "walks past trusted hops");
        assert_eq!(
            client_ip(ip("5.6.7.8"), xff, &trusted),
            ip("5.6.7.8"),
            "an untrusted peer is the client"
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff, &[]),
            ip("10.0.0.2"),
            "no trusted proxies: header ignored"
        );
        // a client's own forged entries sit left of the address the proxy saw, and are not read
        let forged = Some("9.9.9.9, 1.2.3.4");
        assert_eq!(client_ip(ip("10.0.0.2"), forged, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("junk"), &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4, junk, 10.0.0.1"), &trusted),
            ip("10.0.0.1"),
            "stops at junk"
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("10.0.0.3"), &trusted),
            ip("10.0.0.3"),
            "all trusted: the last read"
        );
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), Some("2001:db8::1"), &trusted), ip("2001:db8::1"));
    }
}
