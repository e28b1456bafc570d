//! API keys and tenants: who a request is, and what it may see and use.
//!
//! A *tenant* is a named client of the server with its own limits. Requests prove which one
//! they are with a secret: the single `PYXIS_TOKEN` (the tenant `default`, the simple case)
//! or a key of the optional keys file (`PYXIS_KEYS_FILE`), which lists keys by name with the
//! SHA-256 of their secret, never the secret itself:
//!
//! ```toml
//! [[key]]
//! name = "alice"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! max_sessions = 4        # live sessions (one-shot sandboxes count while they run)
//! cells_per_minute = 600  # a bucket of this many cells, refilled over a minute
//! memory_mb = 512         # most memory per session (also its default)
//! ```
//!
//! (or the same as JSON, `{"key": [{"name": …}]}`, in a file whose name ends in `.json`).
//! `pyxis key new --name alice` makes a secret and prints it once with its entry. The file is
//! reloaded when it changes (polled every second) and on SIGHUP; a file that does not parse
//! or validate leaves the last good keys in force, and the log says why.
//!
//! How ownership is enforced without every door knowing: the auth middleware resolves the
//! tenant and runs the rest of the request inside a tokio task-local scope holding it (and
//! puts it in the request's extensions, for doors that hand work to other tasks). The
//! session service reads the scope ([`access`]) in `get`, `list`, `delete` and `create`: a
//! session belongs to the tenant that made it, and any other tenant is told it does not exist.
//! Outside any scope (the server's own tasks) everything is visible while there is a single
//! tenant; once a keys file is in use, a lookup outside a scope sees nothing, so a door that
//! forgets to carry the scope into a task of its own fails closed, not open.
//!
//! Why a plain SHA-256: the secrets are 256 random bits made by `pyxis key new`, so there is
//! nothing to brute-force and a slow password hash (bcrypt, argon2) would only add tens of
//! milliseconds to every request. The file holding the hashes does not let anyone
//! authenticate. Keys are looked up by the hash of what the client sent; the lookup's timing
//! can only tell about hashes of the client's own guesses.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The tenant of `PYXIS_TOKEN` (and of the server's own work while there is one tenant).
pub const DEFAULT_TENANT: &str = "default";
/// The tenant of requests to routes that need no token.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// How often the keys file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

tokio::task_local! {
    static CURRENT: Arc<Tenant>;
}

/// Set once a keys file is in use: from then on, work outside a tenant scope sees nothing.
static MULTI: AtomicBool = AtomicBool::new(false);

/// A named client with its limits. One object per name for the life of the server: a
/// reload updates its limits in place, so its sessions and counters carry over.
#[derive(Debug)]
pub struct Tenant {
    name: Arc<str>,
    /// Most live sessions (0: no limit of its own).
    max_sessions: AtomicUsize,
    /// Cells per minute (0: no limit).
    cells_per_minute: AtomicU64,
    /// Most memory per session in bytes (0: no limit).
    memory_bytes: AtomicU64,
    live: AtomicUsize,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a tenant may not do something now.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitError {
    /// What is limited: `sessions`, `cells_per_minute`, `memory`.
    pub limit: &'static str,
    /// For the client.
    pub message: String,
    /// Seconds after which a retry may succeed (none for limits time does not lift).
    pub retry_after: Option<u64>,
}

impl Tenant {
    fn new(name: &str, limits: &KeyLimits) -> Arc<Self> {
        let t = Arc::new(Self {
            name: name.into(),
            max_sessions: AtomicUsize::new(0),
            cells_per_minute: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            bucket: Mutex::new(Bucket {
                tokens: limits.cells_per_minute.unwrap_or(0) as f64,
                at: Instant::now(),
            }),
        });
        t.set_limits(limits);
        t
    }

    fn set_limits(&self, l: &KeyLimits) {
        self.max_sessions
            .store(l.max_sessions.unwrap_or(0), Ordering::Relaxed);
        self.cells_per_minute
            .store(l.cells_per_minute.unwrap_or(0), Ordering::Relaxed);
        self.memory_bytes
            .store(l.memory_mb.unwrap_or(0) * 1024 * 1024, Ordering::Relaxed);
    }

    /// Its name (in metrics labels and logs; never a secret).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its name, shared.
    pub fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// The most memory a session of this tenant may have, if it has such a limit.
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.memory_bytes.load(Ordering::Relaxed)).filter(|&m| m > 0)
    }

    /// Its live sessions (and running one-shots).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Take a place for one more live session; released when the slot is dropped.
    pub fn admit_session(self: &Arc<Self>) -> Result<LiveSlot, LimitError> {
        let max = self.max_sessions.load(Ordering::Relaxed);
        let n = self.live.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && n > max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::tenant_limited(&self.name, "sessions");
            return Err(LimitError {
                limit: "sessions",
                message: format!(
                    "the key {:?} has {max} live sessions, its limit; delete one and retry",
                    &*self.name
                ),
                retry_after: Some(1),
            });
        }
        crate::metrics::tenant_sessions_live(&self.name, n);
        Ok(LiveSlot(self.clone(), AtomicBool::new(false)))
    }

    /// Count one cell against the tenant's rate.
    pub fn charge_cell(&self) -> Result<(), LimitError> {
        let per_minute = self.cells_per_minute.load(Ordering::Relaxed);
        if per_minute > 0 {
            let rate = per_minute as f64 / 60.0;
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate).min(per_minute as f64);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
                drop(b);
                crate::metrics::tenant_limited(&self.name, "cells_per_minute");
                return Err(LimitError {
                    limit: "cells_per_minute",
                    message: format!(
                        "the key {:?} ran {per_minute} cells in the last minute, its limit; \
                         retry in {wait} s",
                        &*self.name
                    ),
                    retry_after: Some(wait),
                });
            }
            b.tokens -= 1.0;
        }
        crate::metrics::tenant_cell(&self.name);
        Ok(())
    }

    /// Check a session's memory against the tenant's limit: `Ok(memory)` to use.
    /// `explicit` is whether the client asked for this amount (else it is the default,
    /// which the tenant's limit lowers).
    pub fn session_memory(&self, asked: u64, explicit: bool) -> Result<u64, LimitError> {
        match self.memory_limit() {
            Some(max) if asked > max && explicit => {
                crate::metrics::tenant_limited(&self.name, "memory");
                Err(LimitError {
                    limit: "memory",
                    message: format!(
                        "the key {:?} may give a session at most {} MiB of memory; {} MiB \
                         were asked for",
                        &*self.name,
                        max / (1024 * 1024),
                        asked / (1024 * 1024)
                    ),
                    retry_after: None,
                })
            }
            Some(max) => Ok(asked.min(max)),
            None => Ok(asked),
        }
    }
}

/// A live session's place in its tenant's count, given back by [`LiveSlot::release`] (at
/// teardown) or when dropped.
#[derive(Debug)]
pub struct LiveSlot(Arc<Tenant>, AtomicBool);

impl LiveSlot {
    /// The tenant it counts for.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.0
    }

    /// Give the place back (once).
    pub fn release(&self) {
        if !self.1.swap(true, Ordering::AcqRel) {
            let n = self.0.live.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
            crate::metrics::tenant_sessions_live(&self.0.name, n);
        }
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Admit one more session (or one-shot sandbox) for the current tenant: its count of live
/// sessions, and its memory limit, which lowers the default `memory` or refuses more asked.
pub fn admit_new(
    memory: &mut u64,
    default_memory: u64,
) -> Result<LiveSlot, crate::services::ServiceError> {
    let Some(tenant) = owner_for_new() else {
        return Err(crate::services::ServiceError::internal(
            "a session was to be made outside any tenant scope",
        ));
    };
    *memory = tenant.session_memory(*memory, *memory != default_memory)?;
    Ok(tenant.admit_session()?)
}

/// The tenant of the request being served, if any.
pub fn current() -> Option<Arc<Tenant>> {
    CURRENT.try_with(|t| t.clone()).ok()
}

/// Run `f` as `tenant`.
pub async fn scope<F: Future>(tenant: Arc<Tenant>, f: F) -> F::Output {
    CURRENT.scope(tenant, f).await
}

/// `f` with the current tenant (if any) carried along: for work a door hands to a task of
/// its own (`tokio::spawn(tenants::propagate(fut))`), which would otherwise run outside it.
pub fn propagate<F: Future>(f: F) -> impl Future<Output = F::Output> {
    within(current(), f)
}

/// Run `f` as `tenant` if there is one (a tenant taken with [`current`] earlier).
pub async fn within<F: Future>(tenant: Option<Arc<Tenant>>, f: F) -> F::Output {
    match tenant {
        Some(t) => CURRENT.scope(t, f).await,
        None => f.await,
    }
}

/// What the running code may see of sessions.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every session: the server's own work while there is one tenant.
    All,
    /// The sessions of this tenant.
    Only(Arc<Tenant>),
    /// None: work outside any tenant scope while a keys file is in use.
    Nothing,
}

impl Access {
    /// Whether a session of `owner` is visible.
    pub fn sees(&self, owner: &str) -> bool {
        match self {
            Access::All => true,
            Access::Only(t) => *t.name == *owner,
            Access::Nothing => false,
        }
    }
}

/// What the running code may see (see the module's notes).
pub fn access() -> Access {
    match current() {
        Some(t) => Access::Only(t),
        None if MULTI.load(Ordering::Relaxed) => {
            tracing::warn!("a session lookup outside any tenant scope was refused");
            Access::Nothing
        }
        None => Access::All,
    }
}

/// The tenant new work is charged to: the current one, else (one tenant only) `default`.
pub fn owner_for_new() -> Option<Arc<Tenant>> {
    current().or_else(|| {
        (!MULTI.load(Ordering::Relaxed)).then(|| {
            static LOCAL: std::sync::OnceLock<Arc<Tenant>> = std::sync::OnceLock::new();
            LOCAL
                .get_or_init(|| Tenant::new(DEFAULT_TENANT, &KeyLimits::default()))
                .clone()
        })
    })
}

/// A key's limits as the keys file gives them (absent: no limit of its own; the server's
/// limits apply to everyone).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Most live sessions.
    pub max_sessions: Option<usize>,
    /// Most cells per minute.
    pub cells_per_minute: Option<u64>,
    /// Most memory per session in MiB.
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    #[serde(flatten)]
    limits: KeyLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default, alias = "keys")]
    key: Vec<KeyEntry>,
}

/// A keys file, parsed and validated: `(name, sha256, limits)` of each key.
#[derive(Debug, PartialEq)]
pub struct KeySet(Vec<(String, [u8; 32], KeyLimits)>);

/// Why a keys file is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysFileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML or JSON of the expected shape.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// An entry is not acceptable.
    #[error("{path}: key {index} ({name:?}): {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Position of the entry, from 1.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl KeySet {
    /// Parse `text` (JSON if `json`, else TOML) and validate every entry.
    pub fn parse(text: &str, json: bool, path: &str) -> Result<KeySet, KeysFileError> {
        let file: KeysFile = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        }
        .map_err(|message| KeysFileError::Parse {
            path: path.into(),
            message,
        })?;
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        let mut keys = Vec::with_capacity(file.key.len());
        for (i, k) in file.key.into_iter().enumerate() {
            let invalid = |message: String| KeysFileError::Invalid {
                path: path.into(),
                index: i + 1,
                name: k.name.clone(),
                message,
            };
            if !valid_name(&k.name) {
                return Err(invalid(
                    "a name is 1 to 64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)"
                        .into(),
                ));
            }
            if k.name == DEFAULT_TENANT || k.name == ANONYMOUS_TENANT {
                return Err(invalid(format!(
                    "the names {DEFAULT_TENANT:?} and {ANONYMOUS_TENANT:?} are reserved"
                )));
            }
            if !names.insert(k.name.clone()) {
                return Err(invalid("the name is used twice".into()));
            }
            let hash = parse_hash(&k.sha256).ok_or_else(|| {
                invalid("sha256 must be 64 hex digits (the SHA-256 of the secret)".into())
            })?;
            if !hashes.insert(hash) {
                return Err(invalid("the same secret hash is used twice".into()));
            }
            let l = k.limits;
            if l.max_sessions == Some(0) || l.cells_per_minute == Some(0) {
                return Err(invalid(
                    "max_sessions and cells_per_minute must be at least 1 (remove the key to \
                     disable it)"
                        .into(),
                ));
            }
            if l.memory_mb.is_some_and(|m| m < 64) {
                return Err(invalid("memory_mb must be at least 64".into()));
            }
            keys.push((k.name, hash, l));
        }
        Ok(KeySet(keys))
    }

    /// Read and parse the file at `path` (JSON when its name ends in `.json`).
    pub fn load(path: &Path) -> Result<KeySet, KeysFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::parse(&text, json, &shown)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a secret, as the keys file holds it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh secret and its keys-file entry, for `pyxis key new`.
pub fn new_key(name: &str) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(
        valid_name(name) && name != DEFAULT_TENANT && name != ANONYMOUS_TENANT,
        "a key name is 1 to 64 of A-Z a-z 0-9 _ . - (starting with a letter or digit), and \
         not {DEFAULT_TENANT:?} or {ANONYMOUS_TENANT:?}"
    );
    let secret = format!("pyx_{}", crate::ids::new_token());
    let hash = crate::ids::hex(&hash_secret(&secret));
    let entry = format!("[[key]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n");
    Ok((secret, entry))
}

/// The server's tenants: the token's, the keys file's, and the anonymous one.
pub struct Tenants {
    token: Option<(String, Arc<Tenant>)>,
    anonymous: Arc<Tenant>,
    path: Option<PathBuf>,
    /// The keys in force, by the hash of their secret.
    keys: RwLock<HashMap<[u8; 32], Arc<Tenant>>>,
    /// Every tenant ever named, by name (kept across reloads).
    named: Mutex<HashMap<String, Arc<Tenant>>>,
    stamp: Mutex<Option<Stamp>>,
}

/// What tells a changed keys file: size, time and inode (an editor replaces the file).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        ino: m.ino(),
    })
}

impl Tenants {
    /// One tenant: `default`, whose secret is `token`.
    pub fn single(token: String) -> Arc<Self> {
        Arc::new(Self::bare(Some(token), None))
    }

    fn bare(token: Option<String>, path: Option<PathBuf>) -> Self {
        let default = Tenant::new(DEFAULT_TENANT, &KeyLimits::default());
        let mut named = HashMap::new();
        named.insert(DEFAULT_TENANT.to_string(), default.clone());
        Self {
            token: token.filter(|t| !t.is_empty()).map(|t| (t, default)),
            anonymous: Tenant::new(ANONYMOUS_TENANT, &KeyLimits::default()),
            path,
            keys: RwLock::new(HashMap::new()),
            named: Mutex::new(named),
            stamp: Mutex::new(None),
        }
    }

    /// The token's tenant (if a token is set) and the keys of the file at `path`, which
    /// must load now; it is then watched (see [`Tenants::watch`]).
    ///
    /// From then on work outside a tenant scope sees no session (see the module's notes).
    pub fn with_keys_file(token: Option<String>, path: PathBuf) -> anyhow::Result<Arc<Self>> {
        let me = Self::from_keys_file(token, path)?;
        MULTI.store(true, Ordering::Relaxed);
        Ok(me)
    }

    fn from_keys_file(token: Option<String>, path: PathBuf) -> anyhow::Result<Arc<Self>> {
        let keys = KeySet::load(&path)?;
        let me = Self::bare(token, Some(path.clone()));
        *me.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&path);
        me.install(keys);
        Ok(Arc::new(me))
    }

    fn install(&self, set: KeySet) {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = HashMap::with_capacity(set.0.len());
        for (name, hash, limits) in set.0 {
            let t = named
                .entry(name.clone())
                .or_insert_with(|| Tenant::new(&name, &limits))
                .clone();
            t.set_limits(&limits);
            keys.insert(hash, t);
        }
        drop(named);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Reload the keys file now. On failure the keys in force stay, and the log says why.
    pub fn reload(&self) -> Result<usize, KeysFileError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let before = stamp(path);
        match KeySet::load(path) {
            Ok(set) => {
                let n = set.len();
                self.install(set);
                *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = before;
                crate::metrics::keys_reloaded(true);
                tracing::info!(path = %path.display(), keys = n, "keys file reloaded");
                Ok(n)
            }
            Err(e) => {
                // Not retried until the file changes again.
                *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = before;
                crate::metrics::keys_reloaded(false);
                tracing::error!(error = %e, "keys file not reloaded; the last good keys stay in force");
                Err(e)
            }
        }
    }

    /// Reload on SIGHUP and whenever the file changes, for as long as the server runs.
    pub fn watch(self: &Arc<Self>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; the keys file is only polled");
                    None
                }
            };
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let forced = tokio::select! {
                    _ = hup_recv => true,
                    _ = tick.tick() => false,
                };
                let changed = {
                    let now = stamp(&path);
                    let last = me.stamp.lock().unwrap_or_else(|e| e.into_inner());
                    now != *last
                };
                if forced || changed {
                    let _ = me.reload();
                }
            }
        });
    }

    /// The tenant whose secret is `given`, if any.
    pub fn authenticate(&self, given: &str) -> Option<Arc<Tenant>> {
        let given = given.trim();
        if let Some((token, tenant)) = &self.token {
            if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                return Some(tenant.clone());
            }
        }
        // Without a keys file there is nothing more to hash for.
        self.path.as_ref()?;
        let hash = hash_secret(given);
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .cloned()
    }

    /// The tenant of routes that need no token.
    pub fn anonymous(&self) -> Arc<Tenant> {
        self.anonymous.clone()
    }

    /// Whether a keys file is in use.
    pub fn has_keys_file(&self) -> bool {
        self.path.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn toml_and_json_keys_files_parse_alike() {
        let toml = format!(
            "[[key]]\nname = \"alice\"\nsha256 = \"{HASH}\"\nmax_sessions = 2\n\
             cells_per_minute = 60\nmemory_mb = 256\n"
        );
        let json = format!(
            r#"{{"key": [{{"name": "alice", "sha256": "{HASH}", "max_sessions": 2,
                "cells_per_minute": 60, "memory_mb": 256}}]}}"#
        );
        let a = KeySet::parse(&toml, false, "k.toml").unwrap();
        let b = KeySet::parse(&json, true, "k.json").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0[0].1, hash_secret("test"));
        assert_eq!(
            a.0[0].2,
            KeyLimits {
                max_sessions: Some(2),
                cells_per_minute: Some(60),
                memory_mb: Some(256)
            }
        );
    }

    #[test]
    fn bad_entries_are_refused_with_their_reason() {
        let cases = [
            ("name = \"a b\"\nsha256 = \"HASH\"", "a name is"),
            ("name = \"default\"\nsha256 = \"HASH\"", "reserved"),
            ("name = \"a\"\nsha256 = \"abc\"", "64 hex digits"),
            (
                "name = \"a\"\nsha256 = \"HASH\"\nmax_sessions = 0",
                "at least 1",
            ),
            (
                "name = \"a\"\nsha256 = \"HASH\"\nmemory_mb = 1",
                "at least 64",
            ),
            (
                "name = \"a\"\nsha256 = \"HASH\"\nsecret = \"x\"",
                "unknown field",
            ),
        ];
        for (entry, why) in cases {
            let text = format!("[[key]]\n{}\n", entry.replace("HASH", HASH));
            let err = KeySet::parse(&text, false, "k.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
        let twice = format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{HASH}\"\n[[key]]\nname = \"b\"\nsha256 = \"{HASH}\"\n"
        );
        let err = KeySet::parse(&twice, false, "k").unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");
        assert!(KeySet::parse("{not json", true, "k.json").is_err());
    }

    #[test]
    fn a_new_key_authenticates_and_its_secret_is_not_in_its_entry() {
        let (secret, entry) = new_key("bob").unwrap();
        assert!(!entry.contains(&secret));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, &entry).unwrap();
        // Not `with_keys_file`: that would turn the other unit tests' unscoped calls off.
        let tenants = Tenants::from_keys_file(Some("tok".into()), path).unwrap();
        assert_eq!(tenants.authenticate(&secret).unwrap().name(), "bob");
        assert_eq!(tenants.authenticate("tok").unwrap().name(), DEFAULT_TENANT);
        assert!(tenants.authenticate("pyx_wrong").is_none());
        assert!(new_key("default").is_err());
        assert!(new_key("").is_err());
    }

    #[test]
    fn the_cell_bucket_refuses_past_its_rate_and_says_when_to_retry() {
        let t = Tenant::new(
            "c",
            &KeyLimits {
                cells_per_minute: Some(3),
                ..Default::default()
            },
        );
        for _ in 0..3 {
            t.charge_cell().unwrap();
        }
        let e = t.charge_cell().unwrap_err();
        assert_eq!(e.limit, "cells_per_minute");
        assert!(e.retry_after.unwrap() >= 1);
    }

    #[test]
    fn live_sessions_are_counted_until_their_slot_drops() {
        let t = Tenant::new(
            "s",
            &KeyLimits {
                max_sessions: Some(1),
                ..Default::default()
            },
        );
        let slot = t.admit_session().unwrap();
        assert_eq!(t.admit_session().unwrap_err().limit, "sessions");
        drop(slot);
        assert!(t.admit_session().is_ok());
    }

    #[test]
    fn memory_asked_above_the_limit_is_refused_and_the_default_lowered() {
        let t = Tenant::new(
            "m",
            &KeyLimits {
                memory_mb: Some(128),
                ..Default::default()
            },
        );
        let mib = 1024 * 1024;
        assert_eq!(t.session_memory(1024 * mib, false).unwrap(), 128 * mib);
        assert_eq!(t.session_memory(100 * mib, true).unwrap(), 100 * mib);
        assert_eq!(
            t.session_memory(256 * mib, true).unwrap_err().limit,
            "memory"
        );
    }
}
