//! Validating what a client asks for into [`SessionOptions`] and time limits: the same
//! rules for every door.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::services::error::{Result, ServiceError};
use crate::services::sessions::SessionOptions;

const MAX_ENV_VARS: usize = 256;
const MAX_ENV_BYTES: usize = 64 * 1024;

/// A new session as a client asks for it (before validation).
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// The first context's language (`python` by default; see `contexts::Language`).
    pub language: Option<String>,
    /// Environment variables of the interpreter.
    pub env: BTreeMap<String, String>,
    /// Default time limit of the session's cells, in seconds.
    pub timeout_s: Option<f64>,
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Free-form client data.
    pub metadata: Option<serde_json::Value>,
    /// `network: {egress, allow}` (none: the operator's default).
    pub network: Option<crate::services::egress::NetworkRequest>,
}

/// Check client-given environment variables.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(ServiceError::Invalid(format!(
            "at most {MAX_ENV_VARS} environment variables"
        )));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(ServiceError::Invalid("environment too large".into()));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(ServiceError::Invalid(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(ServiceError::Invalid(format!(
                "environment variable {k} contains NUL"
            )));
        }
    }
    Ok(())
}

/// Validate a client-given time limit against the server's maximum.
pub fn timeout_from(given: Option<f64>, default: Duration, max: Duration) -> Result<Duration> {
    match given {
        None => Ok(default.min(max)),
        Some(t) if t.is_finite() && t > 0.0 && t <= max.as_secs_f64() => {
            Ok(Duration::from_secs_f64(t))
        }
        Some(_) => Err(ServiceError::Invalid(format!(
            "timeout_s must be a number of seconds in (0, {}]",
            max.as_secs_f64()
        ))),
    }
}

/// Validate a creation request into session options.
pub fn session_options(cfg: &Config, req: NewSession) -> Result<SessionOptions> {
    let language = match &req.language {
        Some(lang) => crate::services::contexts::Language::parse(lang)?,
        None => crate::services::contexts::Language::Python,
    };
    validate_env(&req.env)?;
    let network = crate::services::egress::session_policy(cfg, req.network)?;
    let timeout = timeout_from(req.timeout_s, cfg.exec_timeout, cfg.max_exec_timeout)?;
    let mut limits = cfg.default_limits();
    if let Some(mb) = req.memory_mb {
        let bytes = mb.saturating_mul(1024 * 1024);
        if mb < 64 || bytes > cfg.memory_bytes {
            return Err(ServiceError::Invalid(format!(
                "limits.memory_mb must be between 64 and {}",
                cfg.memory_bytes / (1024 * 1024)
            )));
        }
        limits.memory_bytes = bytes;
    }
    if let Some(p) = req.pids {
        if !(8..=cfg.pids).contains(&p) {
            return Err(ServiceError::Invalid(format!(
                "limits.pids must be between 8 and {}",
                cfg.pids
            )));
        }
        limits.pids = p;
    }
    if let Some(c) = req.cpus {
        let max = cfg.cpu_millicores as f64 / 1000.0;
        if !(c.is_finite() && c >= 0.01 && c <= max) {
            return Err(ServiceError::Invalid(format!(
                "limits.cpus must be between 0.01 and {max}"
            )));
        }
        limits.cpu_millicores = (c * 1000.0).round() as u64;
    }
    Ok(SessionOptions {
        env: req.env,
        timeout,
        limits,
        metadata: req.metadata,
        network,
        language,
    })
}
