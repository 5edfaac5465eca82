//! Which addresses subscriber requests may go to. Pure.
//!
//! Only globally routable unicast addresses are allowed: loopback, private,
//! link-local, CGNAT, multicast, unspecified, documentation, benchmarking,
//! reserved and translation ranges are refused, IPv4 and IPv6 alike
//! (IPv4-mapped and -compatible IPv6 addresses are judged as the IPv4 address
//! they carry), unless inside an allow-listed CIDR. The check runs on the
//! addresses the resolver hands to the connector, so the address connected
//! to is the address checked (no DNS rebinding window).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::domain::host::Cidr;

/// Whether `ip` is a globally routable unicast address.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // 0.0.0.0/8 "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..=127).contains(&b)) // 100.64.0.0/10 CGNAT
        || (a == 169 && b == 254)              // link-local
        || (a == 172 && (16..=31).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // 192.0.0.0/24 IETF assignments
        || (a == 192 && b == 0 && c == 2)      // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (b == 18 || b == 19))  // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100)   // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)    // TEST-NET-3
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xff00) == 0xff00            // multicast
        || (s[0] & 0xffc0) == 0xfe80            // link-local
        || (s[0] & 0xffc0) == 0xfec0            // site-local (deprecated)
        || (s[0] & 0xfe00) == 0xfc00            // unique local
        || (s[0] == 0x2001 && s[1] == 0x0db8)   // documentation
        || (s[0] & 0xfff0) == 0x3ff0            // 3fff::/20 documentation
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
        || s[0] == 0x2002                       // 6to4
        || (s[0] == 0x0064 && s[1] == 0xff9b)   // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        || s[0] == 0x5f00                       // 5f00::/16 SRv6
        || (s[0] == 0x2001 && s[1] < 0x0200)) // 2001::/23 IETF protocol assignments (Teredo, ...)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or
/// IPv4-compatible (`::a.b.c.d`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[..6].iter().all(|x| *x == 0) && !(s[6] == 0 && s[7] <= 1) {
        let [_, _, _, _, _, _, hi, lo] = s;
        return Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8));
    }
    None
}

/// Global addresses, plus the configured exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// Global addresses plus the allow-listed networks.
    pub fn new(allow: &[Cidr]) -> Self {
        AddressPolicy { allow: allow.iter().map(Cidr::net).collect() }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        is_global(canonical) || self.allow.iter().any(|net| net.contains(&canonical) || net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn refused_ranges() {
        for s in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "2002:c000:0204::1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "5f00::1",
            "2001::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(!is_global(ip(s)), "{s} must be refused");
            assert!(!AddressPolicy::default().permits(ip(s)), "{s}");
        }
    }

    #[test]
    fn global_addresses_pass() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_global(ip(s)), "{s} is global");
        }
    }

    #[test]
    fn allow_list() {
        let p = AddressPolicy::new(&[
            "127.0.0.1/32".parse().expect("cidr"),
            "10.0.0.0/8".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
        ]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")), "the mapped form of an allowed address");
        assert!(p.permits(ip("10.9.9.9")));
        assert!(p.permits(ip("fd00::5")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("192.168.0.1")));
        assert!(p.permits(ip("8.8.8.8")));
    }
}
