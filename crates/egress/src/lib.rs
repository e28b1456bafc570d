//! Egress for Pyxis sandboxes: an HTTP proxy owned by the server, per-session policies, and
//! the address rules that keep it from reaching what it must not.
//!
//! A sandbox has no network interface but `lo`. Its init listens on `127.0.0.1:<port>` in the
//! sandbox's network namespace and passes each accepted connection, as a descriptor, to the
//! server ([`SessionEgress::serve_channel`]). The server serves it here as an HTTP/1.1 proxy
//! connection: `CONNECT host:port` tunnels (TLS is never intercepted) and absolute-form
//! `http://` requests are forwarded. Each target is checked against the session's
//! [`EgressPolicy`] before its name is resolved (a name outside the policy never reaches a
//! resolver: no DNS exfiltration), then every address it resolves to against the
//! [`AddressRules`] (public only, unless the operator allows a network or `host:port`; never
//! the server's own listen addresses), and the connection goes to exactly the address checked.
//! Each refusal is an HTTP answer with a reason ([`Refusal`]), counted ([`EgressMetrics`]) and
//! logged with the session id; [`EgressLimits`] bound bytes, open connections and the
//! connection rate.
//!
//! # Example
//!
//! ```no_run
//! use pyxis_egress::{EgressConfig, EgressMode, EgressPolicy, Proxy};
//! # async fn run(channel: std::os::fd::OwnedFd) -> std::io::Result<()> {
//! let proxy = Proxy::new(EgressConfig::default());
//! let policy = EgressPolicy::new(EgressMode::Allow, &["pypi.org", "*.pythonhosted.org"])
//!     .expect("a valid allow-list");
//! let session = proxy.session("session-1", policy);
//! // `channel` is the server's end of the socket pair whose other end the init holds.
//! tokio::spawn(session.clone().serve_channel(channel));
//! // ... later, when the session ends:
//! session.close();
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod addr;
mod limits;
mod metrics;
mod mirror;
mod packages;
mod policy;
mod proxy;
mod resolve;
mod splice;

pub use addr::{is_public, AddressError, AddressRules, AddressVerdict, Cidr, OperatorAllow};
pub use limits::{EgressLimits, LimitHit, OpenGuard, Usage};
pub use metrics::{EgressCounters, EgressMetrics, RefusalKind};
pub use mirror::{normalize_project, Mirror, MirrorConfig, MirrorCounters, MIRROR_HOST};
pub use packages::{sandbox_env, site_packages, Requirement, PACKAGES_PREFIX};
pub use policy::{AllowRule, EgressMode, EgressPolicy, PolicyError, Target, TargetHost, MAX_RULES};
pub use proxy::{EgressConfig, Proxy, Refusal, SessionEgress};
pub use resolve::{Resolver, Resolving, StaticResolver, SystemResolver};
