//! A session's egress policy: `none`, `allow` with a list, or `public`; and the operator's
//! bound on what a client may ask for (`PYXIS_EGRESS_MAX`).

use std::net::IpAddr;

use crate::addr::Cidr;

type Result<T> = std::result::Result<T, PolicyError>;

/// Most entries of one allow-list.
pub const MAX_RULES: usize = 256;
/// Longest host name (RFC 1035).
const MAX_HOST: usize = 253;

/// A policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not `none`, `allow` or `public`.
    #[error("egress must be \"none\", \"allow\" or \"public\", not {0:?}")]
    UnknownMode(String),
    /// An allow-list entry does not parse.
    #[error("allow-list entry {entry:?}: {reason}")]
    BadRule {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_RULES`] entries.
    #[error("at most {MAX_RULES} allow-list entries")]
    TooManyRules,
    /// An allow-list with a mode other than `allow`.
    #[error("an allow-list needs egress \"allow\"")]
    ListWithoutAllow,
    /// More than the operator permits.
    #[error("egress {asked:?} is more than this server permits ({max:?})")]
    AboveMax {
        /// What the client asked for.
        asked: EgressMode,
        /// `PYXIS_EGRESS_MAX`.
        max: EgressMode,
    },
}

/// How much of the network a session may reach, in increasing order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Nothing: every request is refused.
    #[default]
    None,
    /// The hosts, wildcards and networks of the allow-list.
    Allow,
    /// Any public address.
    Public,
}

impl EgressMode {
    /// Parses `none`, `allow` or `public`.
    pub fn parse(s: &str) -> Result<EgressMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(EgressMode::None),
            "allow" => Ok(EgressMode::Allow),
            "public" => Ok(EgressMode::Public),
            _ => Err(PolicyError::UnknownMode(s.to_owned())),
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::None => "none",
            EgressMode::Allow => "allow",
            EgressMode::Public => "public",
        }
    }
}

/// Which names a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Any name ending in `.` and this suffix (not the suffix itself).
    Subdomains(String),
    /// IP literals in this network.
    Network(Cidr),
}

/// One entry of an allow-list: a host name, `*.suffix`, an address or network, each with an
/// optional `:port` (any port without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    host: HostPattern,
    port: Option<u16>,
}

/// Lowercases a host name and checks it is one: LDH labels (and `_`), 1 to 63 characters
/// each, at most 253 in all; a trailing dot is dropped. `None` if it is not a name.
pub(crate) fn normalize_host(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_HOST
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

impl AllowRule {
    /// Parses one entry: `pypi.org`, `*.pythonhosted.org`, `10.1.2.0/24`, `1.2.3.4`,
    /// `host:port`, `[2001:db8::1]:443`, `10.0.0.0/8:5432`.
    pub fn parse(entry: &str) -> Result<AllowRule> {
        let bad = |reason| PolicyError::BadRule {
            entry: entry.to_owned(),
            reason,
        };
        let text = entry.trim();
        if text.is_empty() || text.len() > MAX_HOST + 8 {
            return Err(bad("empty or too long"));
        }
        // A bare IPv6 address or network has colons of its own.
        if let Ok(cidr) = Cidr::parse(text) {
            return Ok(AllowRule {
                host: HostPattern::Network(cidr),
                port: None,
            });
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (inside, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                };
                (inside, port)
            }
            None => match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            },
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1 to 65535"))?,
            ),
        };
        let host = if let Ok(cidr) = Cidr::parse(host) {
            HostPattern::Network(cidr)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = normalize_host(suffix).ok_or_else(|| bad("not a host name"))?;
            if !suffix.contains('.') {
                return Err(bad("a wildcard needs at least two labels (*.example.org)"));
            }
            HostPattern::Subdomains(suffix)
        } else {
            HostPattern::Exact(normalize_host(host).ok_or_else(|| bad("not a host name"))?)
        };
        Ok(AllowRule { host, port })
    }

    fn matches(&self, target: &Target) -> bool {
        if self.port.is_some_and(|p| p != target.port) {
            return false;
        }
        match (&self.host, &target.host) {
            (HostPattern::Exact(name), TargetHost::Name(asked)) => name == asked,
            (HostPattern::Subdomains(suffix), TargetHost::Name(asked)) => asked
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Network(net), TargetHost::Ip(ip)) => net.contains(*ip),
            _ => false,
        }
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Subdomains(suffix) => format!("*.{suffix}"),
            HostPattern::Network(net) => net.to_string(),
        };
        match self.port {
            Some(port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Some(port) => write!(f, "{host}:{port}"),
            None => f.write_str(&host),
        }
    }
}

/// The host part of a request's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A name (lowercase, no trailing dot), resolved by the proxy.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host.
    pub host: TargetHost,
    /// Port.
    pub port: u16,
}

impl Target {
    /// Parses a host (name, IPv4, `[IPv6]`) and port as they come in a request.
    pub fn parse(host: &str, port: u16) -> Option<Target> {
        if port == 0 {
            return None;
        }
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Some(inner) = bracketed {
            return inner.parse::<std::net::Ipv6Addr>().ok().map(|ip| Target {
                host: TargetHost::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Some(Target {
                host: TargetHost::Ip(IpAddr::V4(ip)),
                port,
            });
        }
        // Names made only of digits and dots that are not IPv4 (`0x7f.1`, `2130706433`)
        // are the classic SSRF spellings of loopback: refused as names.
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        normalize_host(host).map(|name| Target {
            host: TargetHost::Name(name),
            port,
        })
    }

    /// The host as text (names as given, IPs bare).
    pub fn host_str(&self) -> String {
        match &self.host {
            TargetHost::Name(name) => name.clone(),
            TargetHost::Ip(ip) => ip.to_string(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host_str(), self.port),
        }
    }
}

/// A session's policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    mode: EgressMode,
    rules: Vec<AllowRule>,
}

impl EgressPolicy {
    /// Nothing reachable.
    pub fn none() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// Any public address.
    pub fn public() -> EgressPolicy {
        EgressPolicy {
            mode: EgressMode::Public,
            rules: Vec::new(),
        }
    }

    /// `egress` with an allow-list (only `allow` takes one; an empty list reaches nothing).
    pub fn new<S: AsRef<str>>(mode: EgressMode, allow: &[S]) -> Result<EgressPolicy> {
        if !allow.is_empty() && mode != EgressMode::Allow {
            return Err(PolicyError::ListWithoutAllow);
        }
        if allow.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
        let rules = allow
            .iter()
            .map(|entry| AllowRule::parse(entry.as_ref()))
            .collect::<Result<_>>()?;
        Ok(EgressPolicy { mode, rules })
    }

    /// Checks the policy against the operator's bound.
    pub fn within(self, max: EgressMode) -> Result<EgressPolicy> {
        if self.mode > max {
            return Err(PolicyError::AboveMax {
                asked: self.mode,
                max,
            });
        }
        Ok(self)
    }

    /// The mode.
    pub fn mode(&self) -> EgressMode {
        self.mode
    }

    /// The allow-list, normalized.
    pub fn allow_list(&self) -> Vec<String> {
        self.rules.iter().map(ToString::to_string).collect()
    }

    /// Whether the policy lets a request go to `target` — decided before any name is
    /// resolved, so that a name outside the policy never reaches a resolver (no DNS
    /// exfiltration). Networks of an allow-list match IP literals only, for the same reason.
    pub fn permits(&self, target: &Target) -> bool {
        match self.mode {
            EgressMode::None => false,
            EgressMode::Public => true,
            EgressMode::Allow => self.rules.iter().any(|rule| rule.matches(target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        let (host, port) = s.rsplit_once(':').expect("host:port");
        Target::parse(host, port.parse().expect("port")).expect("a target")
    }

    #[test]
    fn modes_parse_and_order() {
        assert_eq!(EgressMode::parse("None"), Ok(EgressMode::None));
        assert_eq!(EgressMode::parse("allow"), Ok(EgressMode::Allow));
        assert_eq!(EgressMode::parse(" public "), Ok(EgressMode::Public));
        assert!(EgressMode::parse("all").is_err());
        assert!(EgressMode::None < EgressMode::Allow && EgressMode::Allow < EgressMode::Public);
        assert_eq!(EgressMode::Public.as_str(), "public");
    }

    #[test]
    fn rules_parse() {
        for (entry, shown) in [
            ("PyPI.org", "pypi.org"),
            ("pypi.org.", "pypi.org"),
            ("*.pythonhosted.org", "*.pythonhosted.org"),
            ("10.1.2.0/24", "10.1.2.0/24"),
            ("1.2.3.4", "1.2.3.4"),
            ("host.lan:8080", "host.lan:8080"),
            ("127.0.0.1:3141", "127.0.0.1:3141"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("10.0.0.0/8:5432", "10.0.0.0/8:5432"),
        ] {
            let rule = AllowRule::parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!(rule.to_string(), shown, "{entry}");
        }
        for bad in [
            "",
            "*",
            "*.org",
            "*.*.example.org",
            "exa mple.org",
            "host:0",
            "host:70000",
            "host:x",
            "-bad.org",
            "[::1",
            "[::1]x",
            "a..b",
            "http://pypi.org",
            "pypi.org/simple",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("{}.org", "a".repeat(300));
        assert!(AllowRule::parse(&long).is_err());
    }

    #[test]
    fn policies_check_their_arguments() {
        assert_eq!(
            EgressPolicy::new(EgressMode::Public, &["pypi.org"]),
            Err(PolicyError::ListWithoutAllow)
        );
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("h{i}.org")).collect();
        assert_eq!(
            EgressPolicy::new(EgressMode::Allow, &many),
            Err(PolicyError::TooManyRules)
        );
        assert!(matches!(
            EgressPolicy::new(EgressMode::Allow, &["pypi.org", "bad host"]),
            Err(PolicyError::BadRule { .. })
        ));
        let public = EgressPolicy::public();
        assert_eq!(
            public.clone().within(EgressMode::Allow),
            Err(PolicyError::AboveMax {
                asked: EgressMode::Public,
                max: EgressMode::Allow
            })
        );
        assert_eq!(public.clone().within(EgressMode::Public), Ok(public));
        assert!(EgressPolicy::none().within(EgressMode::None).is_ok());
    }

    #[test]
    fn what_policies_permit() {
        let policy = EgressPolicy::new(
            EgressMode::Allow,
            &[
                "pypi.org",
                "*.pythonhosted.org",
                "10.1.2.0/24",
                "git.lan:22",
                "127.0.0.1:3141",
            ],
        )
        .expect("a policy");
        for ok in [
            "pypi.org:443",
            "PYPI.ORG.:80",
            "files.pythonhosted.org:443",
            "a.b.pythonhosted.org:443",
            "10.1.2.3:5432",
            "git.lan:22",
            "127.0.0.1:3141",
        ] {
            assert!(policy.permits(&target(ok)), "{ok} refused");
        }
        for refused in [
            "pythonhosted.org:443",
            "evilpythonhosted.org:443",
            "pypi.org.evil.com:443",
            "evil-pypi.org:443",
            "10.1.3.1:5432",
            "git.lan:23",
            "127.0.0.1:3142",
            "[::1]:3141",
            // Networks match IP literals, never names (which would need resolving first).
            "host.in.ten.one:80",
        ] {
            assert!(!policy.permits(&target(refused)), "{refused} permitted");
        }
        assert!(!EgressPolicy::none().permits(&target("pypi.org:443")));
        assert!(EgressPolicy::public().permits(&target("example.com:80")));
        assert!(!EgressPolicy::new(EgressMode::Allow, &[] as &[&str])
            .expect("empty allow")
            .permits(&target("pypi.org:443")));
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("[::1]", 80).map(|t| t.to_string()),
            Some("[::1]:80".into())
        );
        assert_eq!(
            Target::parse("Example.COM.", 443).map(|t| t.to_string()),
            Some("example.com:443".into())
        );
        for bad in [
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "",
            "a b",
            "[::1",
            "[1.2.3.4]",
        ] {
            assert_eq!(Target::parse(bad, 80), None, "{bad:?}");
        }
        assert_eq!(Target::parse("example.com", 0), None);
    }
}
