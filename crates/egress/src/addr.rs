//! Address classification: which IP addresses count as public, IP networks, and the
//! operator's exceptions. The single owner of these rules in Pyxis (URL imports use them
//! too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

type Result<T> = std::result::Result<T, AddressError>;

/// A network, address or `host:port` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Not an IP address or network.
    #[error("{0:?} is not an IP address or network")]
    NotAnAddress(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("{0:?} has a bad prefix length")]
    BadPrefix(String),
    /// Not a `host:port`, network or address.
    #[error("{0:?} is not a network, an address or a host:port")]
    BadEntry(String),
}

/// An IP network (`addr/prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(s: &str) -> Result<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| AddressError::NotAnAddress(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| AddressError::BadPrefix(s.to_owned()))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    /// `addr/prefix`, or the bare address for a single one (`127.0.0.1`, not `127.0.0.1/32`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let single = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == single {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::from(net)),
        prefix,
    }
    .contains(IpAddr::V4(ip))
}

/// Whether an IPv4 address is globally routable (not loopback, private, link-local and
/// cloud metadata, CGNAT, multicast, reserved, …; IANA IPv4 Special-Purpose Address
/// Registry).
fn is_public_v4(ip: Ipv4Addr) -> bool {
    const NOT_PUBLIC: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT (shared address space)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata 169.254.169.254
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !NOT_PUBLIC
        .iter()
        .any(|(net, prefix)| v4_in(ip, *net, *prefix))
}

/// Whether an IPv6 address is globally routable. Addresses that embed an IPv4 address
/// (mapped, compatible, NAT64, 6to4, Teredo) are refused outright: they can reach IPv4 hosts
/// the IPv4 check would refuse.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    const NOT_PUBLIC: &[(u128, u8)] = &[
        (0, 96),                      // ::, ::1, IPv4-compatible
        (0xffff_0000_0000, 96),       // IPv4-mapped ::ffff:0:0/96
        (0x0064_ff9b << 96, 96),      // NAT64 64:ff9b::/96
        (0x0064_ff9b_0001 << 80, 48), // local NAT64 64:ff9b:1::/48
        (0x0100 << 112, 64),          // discard 100::/64
        (0x2001 << 112, 32),          // Teredo 2001::/32
        (0x2001_0db8 << 96, 32),      // documentation
        (0x2002 << 112, 16),          // 6to4
        (0xfc00 << 112, 7),           // unique local (incl. fd00:ec2::254)
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
    ];
    !NOT_PUBLIC.iter().any(|(net, prefix)| {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::from(*net)),
            prefix: *prefix,
        }
        .contains(IpAddr::V6(ip))
    })
}

/// Whether `ip` is globally routable: not loopback, private, link-local, CGNAT, metadata,
/// multicast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// One entry of the operator's exceptions (`PYXIS_EGRESS_ALLOW`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAllow {
    /// Every port of a network: `10.0.0.0/8`, `fd00::/8`, `127.0.0.1`.
    Network(Cidr),
    /// One port of one address: `127.0.0.1:8080`, `[::1]:8080`.
    Socket(SocketAddr),
    /// One port of a host name, whatever it resolves to: `index.internal:443`. The operator
    /// vouches for the name.
    Host {
        /// The name, lowercase.
        name: String,
        /// The port.
        port: u16,
    },
}

impl OperatorAllow {
    /// Parses a network, an address, `addr:port`, `[v6]:port` or `host:port`.
    pub fn parse(s: &str) -> Result<OperatorAllow> {
        let s = s.trim();
        if let Ok(socket) = s.parse::<SocketAddr>() {
            return Ok(OperatorAllow::Socket(socket));
        }
        if let Ok(cidr) = Cidr::parse(s) {
            return Ok(OperatorAllow::Network(cidr));
        }
        let bad = || AddressError::BadEntry(s.to_owned());
        let (name, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        let name = crate::policy::normalize_host(name).ok_or_else(bad)?;
        Ok(OperatorAllow::Host { name, port })
    }

    /// Parses a comma- or whitespace-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<OperatorAllow>> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(OperatorAllow::parse)
            .collect()
    }
}

/// Which addresses the proxy may connect to, whatever a session's policy says: public
/// addresses, the operator's exceptions, and never the server's own listen addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressRules {
    /// The operator's exceptions.
    pub allow: Vec<OperatorAllow>,
    /// The server's listen addresses, refused whatever any list says. An unspecified address
    /// (`0.0.0.0:8080`) refuses its port on every address.
    pub forbidden: Vec<SocketAddr>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressVerdict {
    /// May be connected to.
    Allowed,
    /// Loopback, private, link-local, CGNAT, metadata or otherwise not public.
    NotPublic,
    /// One of the server's own addresses.
    Server,
}

impl AddressRules {
    /// The verdict on connecting to `addr`, reached by the name `host` (as asked, lowercase).
    pub fn verdict(&self, host: &str, addr: SocketAddr) -> AddressVerdict {
        let server = self.forbidden.iter().any(|own| {
            own.port() == addr.port() && (own.ip().is_unspecified() || own.ip() == addr.ip())
        });
        if server {
            return AddressVerdict::Server;
        }
        if is_public(addr.ip()) {
            return AddressVerdict::Allowed;
        }
        let excepted = self.allow.iter().any(|entry| match entry {
            OperatorAllow::Network(cidr) => cidr.contains(addr.ip()),
            OperatorAllow::Socket(socket) => *socket == addr,
            OperatorAllow::Host { name, port } => name == host && *port == addr.port(),
        });
        if excepted {
            AddressVerdict::Allowed
        } else {
            AddressVerdict::NotPublic
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn non_public_addresses_are_recognized() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip(bad)), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(is_public(ip(good)), "{good}");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Cidr::parse("10.1.2.0/24").expect("parses");
        assert!(net.contains(ip("10.1.2.255")));
        assert!(!net.contains(ip("10.1.3.0")));
        assert!(!net.contains(ip("::ffff:10.1.2.1")), "families never mix");
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("parses")
            .contains(ip("1.2.3.4")));
        assert_eq!(
            Cidr::parse("10.0.0.0/33"),
            Err(AddressError::BadPrefix("10.0.0.0/33".into()))
        );
        assert!(Cidr::parse("example.com").is_err());
        assert!(Cidr::parse("fd00::/129").is_err());
        assert_eq!(Cidr::parse("::1").expect("parses").to_string(), "::1");
        assert_eq!(
            Cidr::parse("fd00::/8").expect("parses").to_string(),
            "fd00::/8"
        );
    }

    #[test]
    fn operator_entries_parse() {
        let list =
            OperatorAllow::parse_list("127.0.0.1:8080, 10.0.0.0/8 [::1]:9 Index.Internal:443")
                .expect("parses");
        assert_eq!(
            list,
            vec![
                OperatorAllow::Socket("127.0.0.1:8080".parse().expect("addr")),
                OperatorAllow::Network(Cidr::parse("10.0.0.0/8").expect("net")),
                OperatorAllow::Socket("[::1]:9".parse().expect("addr")),
                OperatorAllow::Host {
                    name: "index.internal".into(),
                    port: 443
                },
            ]
        );
        for bad in [
            "example.com",
            "host:0",
            "host:99999",
            "a b:1x",
            "*.x.org:80",
        ] {
            assert!(OperatorAllow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verdicts() {
        let rules = AddressRules {
            allow: OperatorAllow::parse_list("127.0.0.1:8080,10.1.0.0/16,mirror.lan:3141")
                .expect("parses"),
            forbidden: vec![
                "127.0.0.1:8000".parse().expect("addr"),
                "0.0.0.0:9000".parse().expect("addr"),
            ],
        };
        let v = |host: &str, addr: &str| rules.verdict(host, addr.parse().expect("addr"));
        assert_eq!(v("x", "8.8.8.8:443"), AddressVerdict::Allowed);
        assert_eq!(v("x", "127.0.0.1:8080"), AddressVerdict::Allowed);
        assert_eq!(v("x", "127.0.0.1:8081"), AddressVerdict::NotPublic);
        assert_eq!(v("x", "10.1.9.9:22"), AddressVerdict::Allowed);
        assert_eq!(v("x", "10.2.0.1:22"), AddressVerdict::NotPublic);
        assert_eq!(v("mirror.lan", "192.168.1.5:3141"), AddressVerdict::Allowed);
        assert_eq!(
            v("other.lan", "192.168.1.5:3141"),
            AddressVerdict::NotPublic
        );
        assert_eq!(v("x", "169.254.169.254:80"), AddressVerdict::NotPublic);
        // The server itself, whatever the lists say; an unspecified listen address takes
        // its port everywhere.
        assert_eq!(v("x", "127.0.0.1:8000"), AddressVerdict::Server);
        assert_eq!(v("x", "8.8.8.8:9000"), AddressVerdict::Server);
        assert_eq!(v("x", "10.1.0.1:9000"), AddressVerdict::Server);
    }
}
