//! Fetching URLs into a workspace without becoming a proxy into the host's
//! network (SSRF).
//!
//! Only `http` and `https`. Each host is resolved once, *every* address it
//! resolves to must be public (or in the allow-list), and the connection goes
//! to the address that was checked (the client's DNS is overridden with it),
//! so a second, different DNS answer cannot redirect it. Redirects are not
//! followed by the client: each one is parsed, resolved and checked like the
//! first URL. Proxies from the environment are ignored. Time and size are
//! capped.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Most redirects followed.
pub const MAX_REDIRECTS: usize = 5;

/// Why a URL could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not a URL, or not http/https.
    #[error("{0}")]
    InvalidUrl(String),
    /// The host resolves to an address that is not allowed.
    #[error("{host} resolves to {addr}, a loopback, private, link-local or otherwise non-public address")]
    Forbidden {
        /// The host of the URL.
        host: String,
        /// The address refused.
        addr: IpAddr,
    },
    /// The fetch failed (DNS, connection, HTTP status, too many redirects,
    /// time limit).
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, ImportError>;

// The address rules have one owner, the egress crate: URL imports and the egress proxy
// refuse the same addresses.
pub use pyxis_egress::{is_public, Cidr};

/// What may be fetched.
#[derive(Debug, Clone)]
pub struct ImportPolicy {
    /// Networks allowed even though they are not public.
    pub allow: Vec<Cidr>,
    /// Time limit of one fetch, redirects included.
    pub timeout: Duration,
}

impl ImportPolicy {
    fn allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|c| c.contains(ip))
    }

    /// Resolve `url`'s host and check every address; returns the one to
    /// connect to.
    async fn check(&self, url: &Url) -> Result<SocketAddr> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ImportError::InvalidUrl(format!(
                "only http and https URLs are supported, not {:?}",
                url.scheme()
            )));
        }
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ImportError::InvalidUrl("the URL has no port".into()))?;
        let (host, addrs): (String, Vec<IpAddr>) = match url.host() {
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), vec![IpAddr::V4(ip)]),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), vec![IpAddr::V6(ip)]),
            Some(url::Host::Domain(d)) => {
                let found = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|_| ImportError::Failed(format!("cannot resolve {d:?}")))?;
                (d.to_string(), found.map(|a| a.ip()).collect())
            }
            None => return Err(ImportError::InvalidUrl("the URL has no host".into())),
        };
        if let Some(bad) = addrs.iter().find(|ip| !self.allowed(**ip)) {
            return Err(ImportError::Forbidden { host, addr: *bad });
        }
        let first = addrs
            .first()
            .ok_or_else(|| ImportError::Failed(format!("{host:?} has no address")))?;
        Ok(SocketAddr::new(*first, port))
    }

    /// Check `url` (scheme, every address its host resolves to) and build a
    /// client that connects only to the address checked: no proxy, no
    /// redirects followed, the policy's time limit.
    pub async fn pinned_client(&self, url: &Url) -> Result<reqwest::Client> {
        let addr = self.check(url).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if let Some(url::Host::Domain(d)) = url.host() {
            // Connect to the address that was checked, nothing else.
            builder = builder.resolve(d, addr);
        }
        builder
            .build()
            .map_err(|e| ImportError::Failed(format!("client: {e}")))
    }

    /// GET `raw`, following redirects one checked hop at a time; the
    /// response of the final hop (a success status).
    pub async fn fetch(&self, raw: &str) -> Result<(Url, reqwest::Response)> {
        tokio::time::timeout(self.timeout, self.fetch_inner(raw))
            .await
            .unwrap_or_else(|_| {
                Err(ImportError::Failed(format!(
                    "the fetch took longer than {} s",
                    self.timeout.as_secs_f64()
                )))
            })
    }

    async fn fetch_inner(&self, raw: &str) -> Result<(Url, reqwest::Response)> {
        let mut url =
            Url::parse(raw).map_err(|e| ImportError::InvalidUrl(format!("{raw:?}: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            let client = self.pinned_client(&url).await?;
            let resp =
                client.get(url.clone()).send().await.map_err(|e| {
                    ImportError::Failed(format!("fetching {url}: {}", without_url(&e)))
                })?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        ImportError::Failed(format!("{url} redirects without a Location"))
                    })?;
                url = url.join(location).map_err(|e| {
                    ImportError::InvalidUrl(format!("redirect to {location:?}: {e}"))
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(ImportError::Failed(format!("{url} answered {status}")));
            }
            return Ok((url, resp));
        }
        Err(ImportError::Failed(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// A reqwest error's text without the URL (which may carry credentials, such
/// as a presigned URL's signature).
/// A URL as logs may show it: scheme, host, port and path; never userinfo, query or
/// fragment (credentials and presigned signatures live there).
pub fn redacted(url: &Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?…");
    }
    out
}

/// The text of a reqwest error, without the URL it carries.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(&format!(" ({u})"), "");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_no_credentials_or_signatures() {
        let u = Url::parse("https://user:secret@example.com:8443/cb/x?X-Amz-Signature=abc#frag")
            .unwrap();
        let r = redacted(&u);
        assert_eq!(r, "https://example.com:8443/cb/x?…");
        for leak in ["user", "secret", "Signature", "abc", "frag"] {
            assert!(!r.contains(leak), "{r}");
        }
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
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn the_allow_list_admits_its_networks_only() {
        let policy = ImportPolicy {
            allow: vec![
                Cidr::parse("127.0.0.1/32").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
            ],
            timeout: Duration::from_secs(1),
        };
        assert!(policy.allowed("127.0.0.1".parse().unwrap()));
        assert!(!policy.allowed("127.0.0.2".parse().unwrap()));
        assert!(policy.allowed("fd12::1".parse().unwrap()));
        assert!(!policy.allowed("169.254.169.254".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[tokio::test]
    async fn schemes_other_than_http_are_refused() {
        let policy = ImportPolicy {
            allow: vec![],
            timeout: Duration::from_secs(1),
        };
        for url in ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"] {
            assert!(matches!(
                policy.fetch(url).await,
                Err(ImportError::InvalidUrl(_))
            ));
        }
        assert!(matches!(
            policy.fetch("http://127.0.0.1:1/").await,
            Err(ImportError::Forbidden { .. })
        ));
        assert!(matches!(
            policy.fetch("http://[::ffff:169.254.169.254]/").await,
            Err(ImportError::Forbidden { .. })
        ));
    }
}
