//! Egress: the operator's settings (`PYXIS_EGRESS_*`, `PYXIS_PACKAGE_INDEX`,
//! `PYXIS_AUTO_INSTALL`), the server's one [`Proxy`] built from them, a client's
//! `network: {egress, allow}` validated into a session's [`EgressPolicy`], and the proxy's
//! counters as Prometheus metrics.
//!
//! Each sandbox's init listens on `127.0.0.1:`[`EGRESS_PORT`] in the sandbox's own network
//! namespace and passes every connection to the server over a socket pair made at spawn
//! (see `crate::sandboxes`); the server serves it with the session's [`SessionEgress`]
//! (policy, limits, counters), which lives as long as the sandbox. Pooled sandboxes start
//! with policy `none`; a session's policy is put in force when the session takes one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pyxis_egress::{
    AddressRules, EgressConfig, EgressLimits, EgressMode, EgressPolicy, Mirror, MirrorConfig,
    OperatorAllow, Requirement,
};
use serde::Serialize;

use crate::config::Config;
use crate::services::error::{Result, ServiceError};

pub use pyxis_egress::{Proxy, SessionEgress};

/// The port of the egress listener inside every sandbox.
pub const EGRESS_PORT: u16 = 3128;
/// The package index when `PYXIS_PACKAGE_INDEX` names none.
pub const DEFAULT_PACKAGE_INDEX: &str = "https://pypi.org/simple/";

/// The raw settings, as flags, environment or the TOML file gave them.
#[derive(Debug, Default, Clone)]
pub struct EgressInput {
    /// `PYXIS_EGRESS_MAX`.
    pub max: Option<String>,
    /// `PYXIS_EGRESS_DEFAULT`.
    pub default: Option<String>,
    /// `PYXIS_EGRESS_ALLOW`.
    pub allow: Option<String>,
    /// `PYXIS_EGRESS_MAX_MB`.
    pub max_mb: Option<u64>,
    /// `PYXIS_EGRESS_MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
    /// `PYXIS_EGRESS_RATE`.
    pub rate: Option<u32>,
    /// `PYXIS_PACKAGE_INDEX`.
    pub package_index: Option<String>,
    /// `PYXIS_PACKAGE_MAX_MB`.
    pub package_max_mb: Option<u64>,
    /// `PYXIS_INSTALL_TIMEOUT_S`.
    pub install_timeout_s: Option<f64>,
    /// `PYXIS_AUTO_INSTALL`.
    pub auto_install: Option<String>,
    /// `PYXIS_RUNNER_PACKAGES`.
    pub runner_packages: Option<bool>,
}

/// The validated egress settings (part of [`Config`]).
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// The most a client may ask for.
    pub max: EgressMode,
    /// A session's policy when its request names none.
    pub default: EgressPolicy,
    /// Non-public networks, addresses and `host:port`s the proxy may connect to anyway.
    pub allow: Vec<OperatorAllow>,
    /// Each session's limits.
    pub limits: EgressLimits,
    /// The upstream PEP 503 index the sandbox's `http://pyxis-index/simple/` mirrors.
    pub package_index: url::Url,
    /// Largest file the mirror downloads.
    pub package_max_bytes: u64,
    /// Time limit of one install.
    pub install_timeout: Duration,
    /// `import name → requirement` of `PYXIS_AUTO_INSTALL` (empty: off).
    pub auto_install: Vec<(String, String)>,
    /// Whether `/api/pypkg/install` may change the function runner's package set.
    pub runner_packages: bool,
}

impl Serialize for EgressSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("EgressSettings", 10)?;
        out.serialize_field("max", &self.max)?;
        out.serialize_field("default", &policy_text(&self.default))?;
        let allow: Vec<String> = self.allow.iter().map(operator_text).collect();
        out.serialize_field("allow", &allow)?;
        out.serialize_field("max_bytes", &self.limits.max_bytes)?;
        out.serialize_field("max_connections", &self.limits.max_open)?;
        out.serialize_field("rate_per_s", &self.limits.per_second)?;
        out.serialize_field("package_index", self.package_index.as_str())?;
        out.serialize_field("install_timeout_s", &self.install_timeout.as_secs_f64())?;
        out.serialize_field("auto_install", &self.auto_install)?;
        out.serialize_field("runner_packages", &self.runner_packages)?;
        out.end()
    }
}

fn operator_text(entry: &OperatorAllow) -> String {
    match entry {
        OperatorAllow::Network(cidr) => cidr.to_string(),
        OperatorAllow::Socket(addr) => addr.to_string(),
        OperatorAllow::Host { name, port } => format!("{name}:{port}"),
    }
}

fn policy_text(policy: &EgressPolicy) -> String {
    match policy.mode() {
        EgressMode::Allow => format!("allow:{}", policy.allow_list().join(",")),
        mode => mode.as_str().to_owned(),
    }
}

/// Parses `none`, `public` or `allow:host,*.suffix,10.0.0.0/8,host:port`.
fn parse_policy_text(text: &str) -> anyhow::Result<EgressPolicy> {
    let text = text.trim();
    let (mode, list) = match text.split_once(':') {
        Some((mode, list)) => (mode, list),
        None => (text, ""),
    };
    let mode = EgressMode::parse(mode)?;
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    Ok(EgressPolicy::new(mode, &entries)?)
}

/// Parses `PYXIS_AUTO_INSTALL`: `import=requirement` or a bare name (the same for both),
/// comma-separated.
fn parse_auto_install(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (module, requirement) = item.split_once('=').unwrap_or((item, item));
        let (module, requirement) = (module.trim(), requirement.trim());
        let module_ok = !module.is_empty()
            && !module.starts_with(|c: char| c.is_ascii_digit())
            && module.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        anyhow::ensure!(module_ok, "auto_install: {module:?} is not an import name");
        Requirement::parse(requirement)
            .map_err(|e| anyhow::anyhow!("auto_install: {module}: {e}"))?;
        out.push((module.to_owned(), requirement.to_owned()));
    }
    Ok(out)
}

impl EgressSettings {
    /// Validates the raw settings.
    pub fn parse(input: EgressInput) -> anyhow::Result<EgressSettings> {
        let max =
            EgressMode::parse(input.max.as_deref().unwrap_or("allow")).context("egress_max")?;
        let default = parse_policy_text(input.default.as_deref().unwrap_or("none"))
            .context("egress_default")?
            .within(max)
            .context("egress_default")?;
        let allow = OperatorAllow::parse_list(input.allow.as_deref().unwrap_or(""))
            .context("egress_allow")?;
        let defaults = EgressLimits::default();
        let max_open = input.max_connections.unwrap_or(defaults.max_open);
        anyhow::ensure!(
            (1..=10_000).contains(&max_open),
            "egress_max_connections must be between 1 and 10000"
        );
        let per_second = input.rate.unwrap_or(defaults.per_second);
        anyhow::ensure!(
            (1..=100_000).contains(&per_second),
            "egress_rate must be between 1 and 100000"
        );
        let max_bytes = match input.max_mb {
            Some(0) => anyhow::bail!("egress_max_mb must be at least 1"),
            Some(mb) => mb.saturating_mul(1 << 20),
            None => defaults.max_bytes,
        };
        let limits = EgressLimits {
            max_bytes,
            max_open,
            per_second,
            burst: per_second.saturating_mul(5),
        };
        let index_text = input
            .package_index
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_PACKAGE_INDEX);
        let mut package_index = url::Url::parse(index_text)
            .with_context(|| format!("package_index {index_text:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(package_index.scheme(), "http" | "https")
                && package_index.host_str().is_some()
                && package_index.username().is_empty()
                && package_index.password().is_none(),
            "package_index must be an http(s) URL with a host and no credentials"
        );
        if !package_index.path().ends_with('/') {
            let path = format!("{}/", package_index.path());
            package_index.set_path(&path);
        }
        let package_max_bytes = input.package_max_mb.unwrap_or(1024).max(1) << 20;
        let install_timeout_s = input.install_timeout_s.unwrap_or(300.0);
        anyhow::ensure!(
            install_timeout_s.is_finite() && install_timeout_s > 0.0 && install_timeout_s <= 3600.0,
            "install_timeout_s must be a number of seconds in (0, 3600]"
        );
        Ok(EgressSettings {
            max,
            default,
            allow,
            limits,
            package_index,
            package_max_bytes,
            install_timeout: Duration::from_secs_f64(install_timeout_s),
            auto_install: parse_auto_install(input.auto_install.as_deref().unwrap_or(""))?,
            runner_packages: input.runner_packages.unwrap_or(false),
        })
    }
}

/// The server's proxy: the operator's address rules (the server's own listen addresses
/// refused whatever any list says), each session's limits, and the package index mirror
/// with its wheel cache in `<data_dir>/package-cache`.
pub fn build_proxy(cfg: &Config) -> anyhow::Result<Proxy> {
    let settings = &cfg.egress;
    let mut forbidden = vec![cfg.listen];
    forbidden.extend(cfg.metrics_listen);
    let config = EgressConfig {
        rules: AddressRules {
            allow: settings.allow.clone(),
            forbidden,
        },
        limits: settings.limits,
        ..EgressConfig::default()
    };
    let mirror = Mirror::new(MirrorConfig {
        index: settings.package_index.clone(),
        cache_dir: cfg.data_dir.join("package-cache"),
        max_file_bytes: settings.package_max_bytes,
        timeout: settings.install_timeout,
    })
    .context("creating the package cache")?;
    let proxy = Proxy::with_mirror(config, Some(Arc::new(mirror)));
    let _ = SERVER_PROXY.set(proxy.clone());
    Ok(proxy)
}

/// The server's proxy, for `/metrics` (which has no state of its own).
static SERVER_PROXY: std::sync::OnceLock<Proxy> = std::sync::OnceLock::new();

/// Records the server's proxy counters (at each scrape), if it has built one.
pub fn record_server_metrics() {
    if let Some(proxy) = SERVER_PROXY.get() {
        record_metrics(proxy);
    }
}

/// A session's `network` as a client asks for it.
#[derive(Debug, Clone, Default)]
pub struct NetworkRequest {
    /// `none`, `allow` or `public`.
    pub egress: Option<String>,
    /// Host names, `*.suffix` wildcards, networks and `host:port`s (with `allow`).
    pub allow: Vec<String>,
}

/// Validates a client's `network` into a policy within `PYXIS_EGRESS_MAX`; no `network`
/// gives the operator's default.
pub fn session_policy(cfg: &Config, req: Option<NetworkRequest>) -> Result<EgressPolicy> {
    let Some(req) = req else {
        return Ok(cfg.egress.default.clone());
    };
    let mode = match req.egress.as_deref() {
        Some(text) => EgressMode::parse(text).map_err(invalid)?,
        None if req.allow.is_empty() => return Ok(cfg.egress.default.clone()),
        None => EgressMode::Allow,
    };
    EgressPolicy::new(mode, &req.allow)
        .and_then(|policy| policy.within(cfg.egress.max))
        .map_err(invalid)
}

fn invalid(err: pyxis_egress::PolicyError) -> ServiceError {
    ServiceError::Invalid(format!("network: {err}"))
}

/// A session's network, as its JSON shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NetworkView {
    /// `none`, `allow` or `public`.
    pub egress: String,
    /// The allow-list, normalized.
    pub allow: Vec<String>,
}

impl NetworkView {
    /// The view of `policy`.
    pub fn of(policy: &EgressPolicy) -> NetworkView {
        NetworkView {
            egress: policy.mode().as_str().to_owned(),
            allow: policy.allow_list(),
        }
    }
}

/// Puts the proxy's and the mirror's counters into the Prometheus registry (at each
/// scrape: they are the proxy's own atomics).
pub fn record_metrics(proxy: &Proxy) {
    use metrics::counter;
    let snap = proxy.metrics().snapshot();
    counter!("pyxis_egress_connections_total").absolute(snap.connections);
    counter!("pyxis_egress_requests_total").absolute(snap.requests);
    counter!("pyxis_egress_tunnels_total").absolute(snap.tunnels);
    counter!("pyxis_egress_bytes_total", "direction" => "sent").absolute(snap.bytes_sent);
    counter!("pyxis_egress_bytes_total", "direction" => "received").absolute(snap.bytes_received);
    for (code, n) in snap.refused {
        counter!("pyxis_egress_refused_total", "reason" => code).absolute(n);
    }
    if let Some(mirror) = proxy.mirror() {
        let c = mirror.counters();
        counter!("pyxis_package_cache_total", "result" => "download").absolute(c.downloads);
        counter!("pyxis_package_cache_total", "result" => "hit").absolute(c.hits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse_what_is_wrong() {
        let s = EgressSettings::parse(EgressInput::default()).expect("defaults");
        assert_eq!(s.max, EgressMode::Allow);
        assert_eq!(s.default, EgressPolicy::none());
        assert_eq!(s.package_index.as_str(), DEFAULT_PACKAGE_INDEX);
        assert!(s.auto_install.is_empty());
        let s = EgressSettings::parse(EgressInput {
            max: Some("public".into()),
            default: Some("allow: pypi.org, *.pythonhosted.org".into()),
            allow: Some("127.0.0.1:3141, 10.0.0.0/8".into()),
            package_index: Some("http://127.0.0.1:3141/simple".into()),
            auto_install: Some("yaml=PyYAML,pyxis_tiny=pyxis-tiny==1.0,tqdm".into()),
            ..Default::default()
        })
        .expect("parses");
        assert_eq!(s.default.allow_list().len(), 2);
        assert_eq!(s.allow.len(), 2);
        assert_eq!(s.package_index.as_str(), "http://127.0.0.1:3141/simple/");
        assert_eq!(s.auto_install[0], ("yaml".into(), "PyYAML".into()));
        assert_eq!(s.auto_install[2], ("tqdm".into(), "tqdm".into()));
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["default"], "allow:pypi.org,*.pythonhosted.org");
        for bad in [
            EgressInput {
                max: Some("all".into()),
                ..Default::default()
            },
            EgressInput {
                default: Some("public".into()),
                ..Default::default()
            },
            EgressInput {
                allow: Some("not an address".into()),
                ..Default::default()
            },
            EgressInput {
                package_index: Some("ftp://x/".into()),
                ..Default::default()
            },
            EgressInput {
                package_index: Some("https://u:p@x/simple/".into()),
                ..Default::default()
            },
            EgressInput {
                auto_install: Some("yaml=--index-url http://evil".into()),
                ..Default::default()
            },
            EgressInput {
                max_connections: Some(0),
                ..Default::default()
            },
            EgressInput {
                install_timeout_s: Some(-1.0),
                ..Default::default()
            },
        ] {
            assert!(EgressSettings::parse(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
