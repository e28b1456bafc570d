//! Packages: a session's own Python packages, installed with uv into its workspace
//! (`/workspace/.pyxis/packages`, on the kernel's `sys.path` ahead of the runtime's), listed
//! and removed.
//!
//! Each call is one cell in the session's kernel that is not stored in its history
//! (`pyxis_runtime.packages.api`): uv runs as a subprocess of the kernel, so an install
//! runs under the session's memory, pids and CPU limits, writes against its workspace
//! quota, and reaches the index only through the egress proxy, by the session's policy (the
//! proxy's mirror at `http://pyxis-index/simple/`, with the server's shared wheel cache).
//! A malicious build backend is just more hostile code in the sandbox. Time is bounded by
//! `PYXIS_INSTALL_TIMEOUT_S`, file size by `PYXIS_PACKAGE_MAX_MB`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyxis_egress::{EgressMode, Requirement};
use serde::{Deserialize, Serialize};

use crate::services::contexts::Language;
use crate::services::error::{Result, ServiceError};
use crate::services::sessions::{CellRequest, Session, Sessions};

/// The answer line's prefix on the cell's stdout (`MARKER` in `pyxis_runtime/packages.py`).
const MARKER: &str = "\u{1e}pyxis-packages ";
/// Most requirements in one install.
pub const MAX_REQUIREMENTS: usize = 32;
/// Time the cell gets beyond uv's own limit (starting uv, listing).
const CELL_SLACK: Duration = Duration::from_secs(30);

/// One package the session added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Package {
    /// Its name, as its metadata spells it.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// What an install, a list or a removal left.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PackagesOutcome {
    /// Every package the session added, by name.
    pub packages: Vec<Package>,
    /// The installer's output (its last 16 KiB), empty for a list.
    pub log: String,
    /// Time taken, in milliseconds.
    pub duration_ms: f64,
}

/// The kernel's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    missing: bool,
    #[serde(default)]
    log: String,
    #[serde(default)]
    packages: Vec<Package>,
}

/// Checks a client's requirement strings (names, extras, version specifiers; no options,
/// URLs or paths).
pub fn requirements(given: &[String]) -> Result<Vec<Requirement>> {
    if given.is_empty() || given.len() > MAX_REQUIREMENTS {
        return Err(ServiceError::Invalid(format!(
            "packages: 1 to {MAX_REQUIREMENTS} requirements"
        )));
    }
    given
        .iter()
        .map(|text| {
            Requirement::parse(text)
                .map_err(|why| ServiceError::Invalid(format!("packages: {why}")))
        })
        .collect()
}

/// Refuses an install the session's policy cannot serve, before the kernel is asked: policy
/// `none`, or an index whose host the policy or the address rules refuse.
async fn check_reach(sessions: &Sessions, session: &Session) -> Result<()> {
    let policy = session.network();
    if policy.mode() == EgressMode::None {
        return Err(ServiceError::Refused {
            code: "egress_refused",
            message: "this session's network policy is \"none\": create it with network \
                      {egress: \"allow\", allow: [the package index's host]} to install packages"
                .into(),
        });
    }
    let Some(proxy) = sessions.launcher().egress_proxy() else {
        return Err(ServiceError::Refused {
            code: "egress_refused",
            message: "this server has no egress proxy".into(),
        });
    };
    let index = &sessions.config().egress.package_index;
    let host = index.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = index.port_or_known_default().unwrap_or(443);
    proxy
        .check(policy, host, port)
        .await
        .map(|_| ())
        .map_err(|refusal| ServiceError::Refused {
            code: "egress_refused",
            message: format!("the package index cannot be reached: {refusal}"),
        })
}

/// Runs one request of `pyxis_runtime.packages.api` in the session's kernel.
/// The session's first Python context: packages are Python's (a JavaScript or bash
/// first context must not be handed Python source).
fn python_context(session: &Session) -> Result<String> {
    session
        .all_contexts()
        .into_iter()
        .find(|c| c.language == Language::Python)
        .map(|c| c.id.clone())
        .ok_or_else(|| ServiceError::Conflict {
            code: "no_python_context",
            message: "this session has no Python context; add one with POST \
                      /v1/sessions/{id}/contexts {\"language\": \"python\"}"
                .into(),
        })
}

async fn ask(
    sessions: &Arc<Sessions>,
    session: &Arc<Session>,
    request: serde_json::Value,
) -> Result<Answer> {
    let timeout = sessions.config().egress.install_timeout;
    let mut request = request;
    request["timeout_s"] = serde_json::json!(timeout.as_secs_f64());
    // A JSON string literal is a Python string literal too.
    let literal = serde_json::to_string(&request.to_string()).map_err(ServiceError::internal)?;
    let code = format!("__import__('pyxis_runtime.packages').packages.api({literal})");
    let mut cell = CellRequest::new(code, timeout + CELL_SLACK);
    cell.store_history = Some(false);
    cell.context = Some(python_context(session)?);
    let outcome = sessions.execute(session, cell)?.collect().await?;
    let line = outcome
        .stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(MARKER));
    match line {
        Some(json) => serde_json::from_str(json).map_err(ServiceError::internal),
        None if outcome.summary.error.is_some() => Err(ServiceError::Failed {
            code: "install_failed",
            message: format!("the package call failed: {}", outcome.error_text()),
        }),
        None => Err(ServiceError::Failed {
            code: "install_failed",
            message: format!(
                "the package call ended without an answer ({:?}); the session's limits may \
                 have stopped it",
                outcome.summary.status
            ),
        }),
    }
}

/// Installs `given` into the session.
pub async fn install(
    sessions: &Arc<Sessions>,
    session: &Arc<Session>,
    given: &[String],
) -> Result<PackagesOutcome> {
    let started = Instant::now();
    let wanted = requirements(given)?;
    check_reach(sessions, session).await?;
    let texts: Vec<&str> = wanted.iter().map(|r| r.text.as_str()).collect();
    let answer = ask(
        sessions,
        session,
        serde_json::json!({"action": "install", "packages": texts}),
    )
    .await;
    let took = started.elapsed();
    record(&answer, took);
    let answer = answer?;
    if !answer.ok {
        return Err(ServiceError::Failed {
            code: "install_failed",
            message: format!("the install failed:\n{}", answer.log.trim()),
        });
    }
    Ok(PackagesOutcome {
        packages: answer.packages,
        log: answer.log,
        duration_ms: took.as_secs_f64() * 1e3,
    })
}

/// The packages the session added.
pub async fn list(sessions: &Arc<Sessions>, session: &Arc<Session>) -> Result<PackagesOutcome> {
    let started = Instant::now();
    let answer = ask(sessions, session, serde_json::json!({"action": "list"})).await?;
    Ok(PackagesOutcome {
        packages: answer.packages,
        log: String::new(),
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Removes one package the session added (404 if it added none of that name).
pub async fn remove(
    sessions: &Arc<Sessions>,
    session: &Arc<Session>,
    name: &str,
) -> Result<PackagesOutcome> {
    let started = Instant::now();
    let project = pyxis_egress::normalize_project(name)
        .filter(|_| name.starts_with(|c: char| c.is_ascii_alphanumeric()))
        .ok_or_else(|| ServiceError::Invalid(format!("{name:?} is not a package name")))?;
    let answer = ask(
        sessions,
        session,
        serde_json::json!({"action": "remove", "name": project}),
    )
    .await?;
    if answer.missing {
        return Err(ServiceError::NotFound {
            code: "package_not_found",
            message: format!("this session has not installed a package {name:?}"),
        });
    }
    if !answer.ok {
        return Err(ServiceError::Failed {
            code: "uninstall_failed",
            message: format!("the removal failed:\n{}", answer.log.trim()),
        });
    }
    Ok(PackagesOutcome {
        packages: answer.packages,
        log: answer.log,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

// ------------------------------------------------------------ the function runner's set

/// The function runner's packages: one set for the server, used by every runner call (each
/// of which runs in a fresh sandbox).
///
/// The set lives in `<data_dir>/runner-packages`: `site.tar`, an archive of a packages
/// prefix made inside a sandbox, and `packages.json`, what it holds. The server never
/// unpacks the archive: an install or a removal runs in a sandbox of its own (a session
/// whose policy reaches only the package index, through the same proxy, mirror and wheel
/// cache as a session's install, under the same limits), which unpacks the current set,
/// runs uv, and packs the result; a runner call copies the archive into its fresh sandbox's
/// workspace and the kernel unpacks it into `/workspace/.pyxis/packages` before the code
/// runs (on `sys.path` already). Changes are serialized; the files are replaced by rename.
pub struct RunnerSet {
    dir: std::path::PathBuf,
}

/// The archive's name inside a workspace while it is copied in or out.
const RUNNER_ARCHIVE: &str = ".pyxis/runner-packages.tar";

/// Changes to the runner's set, one at a time.
static RUNNER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl RunnerSet {
    /// The set of the server whose data directory is `data_dir`.
    pub fn of(sessions: &Sessions) -> RunnerSet {
        RunnerSet {
            dir: sessions.config().data_dir.join("runner-packages"),
        }
    }

    fn archive(&self) -> std::path::PathBuf {
        self.dir.join("site.tar")
    }

    /// What the set holds.
    pub fn list(&self) -> Vec<Package> {
        std::fs::read(self.dir.join("packages.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces the set: the archive first, then its listing (each written beside and renamed).
    fn store(&self, archive: Option<&[u8]>, packages: &[Package]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(ServiceError::internal)?;
        let put = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
            let tmp = self.dir.join(format!(".{name}.new"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, self.dir.join(name))
        };
        match archive {
            Some(bytes) => put("site.tar", bytes).map_err(ServiceError::internal)?,
            None => match std::fs::remove_file(self.archive()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServiceError::internal(e)),
            },
        }
        let listing = serde_json::to_vec(packages).map_err(ServiceError::internal)?;
        put("packages.json", &listing).map_err(ServiceError::internal)
    }

    /// Copies the set into `session` and has its kernel unpack it (nothing when the set is
    /// empty). Used for every runner call, before its code runs.
    pub async fn prepare(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
        session: &Arc<Session>,
    ) -> Result<()> {
        let bytes = match tokio::fs::read(self.archive()).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ServiceError::internal(e)),
        };
        files
            .write_bytes(session, RUNNER_ARCHIVE, bytes.into())
            .await?;
        let answer = ask(
            sessions,
            session,
            serde_json::json!({"action": "unpack", "archive": format!("/workspace/{RUNNER_ARCHIVE}")}),
        )
        .await?;
        if !answer.ok {
            return Err(ServiceError::Failed {
                code: "install_failed",
                message: "the runner's packages could not be unpacked".into(),
            });
        }
        Ok(())
    }

    /// A session for changing the set: policy `allow` for the package index's host (and
    /// `*.pythonhosted.org` when the index is PyPI's, where its files are), within the
    /// operator's `PYXIS_EGRESS_MAX`; the current set unpacked in it.
    async fn workbench(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
    ) -> Result<Arc<Session>> {
        let cfg = sessions.config();
        let index = &cfg.egress.package_index;
        let host = index.host_str().unwrap_or_default().to_owned();
        let mut allow = vec![match index.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        }];
        if host.eq_ignore_ascii_case("pypi.org") {
            allow.push("*.pythonhosted.org".into());
        }
        let network = crate::services::egress::NetworkRequest {
            egress: Some("allow".into()),
            allow,
        };
        let opts = crate::services::session_options(
            cfg,
            crate::services::NewSession {
                network: Some(network),
                ..Default::default()
            },
        )
        .map_err(|e| match e {
            ServiceError::Invalid(m) => ServiceError::Refused {
                code: "egress_refused",
                message: format!("the runner's packages cannot be installed here: {m}"),
            },
            other => other,
        })?;
        let session = sessions.create(opts).await?;
        if let Err(e) = self.prepare(sessions, files, &session).await {
            sessions.delete(&session.id).await;
            return Err(e);
        }
        Ok(session)
    }

    /// Packs `session`'s packages and makes them the set.
    async fn keep(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
        session: &Arc<Session>,
    ) -> Result<Vec<Package>> {
        let answer = ask(
            sessions,
            session,
            serde_json::json!({"action": "pack", "archive": format!("/workspace/{RUNNER_ARCHIVE}")}),
        )
        .await?;
        if !answer.ok {
            return Err(ServiceError::Failed {
                code: "install_failed",
                message: "the runner's packages could not be packed".into(),
            });
        }
        if answer.packages.is_empty() {
            self.store(None, &[])?;
            return Ok(Vec::new());
        }
        let bytes = files
            .read_all(session, RUNNER_ARCHIVE, sessions.config().disk_bytes)
            .await?;
        self.store(Some(&bytes), &answer.packages)?;
        Ok(answer.packages)
    }

    /// Installs `given` into the set.
    pub async fn install(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
        given: &[String],
    ) -> Result<PackagesOutcome> {
        requirements(given)?;
        if !sessions.config().egress.runner_packages {
            return Err(ServiceError::Refused {
                code: "egress_refused",
                message: "installs into the function runner's packages are off on this \
                          server (the operator turns them on with PYXIS_RUNNER_PACKAGES=true)"
                    .into(),
            });
        }
        let _one = RUNNER_LOCK.lock().await;
        self.change(sessions, files, |session| async move {
            install(sessions, &session, given).await
        })
        .await
    }

    /// Removes one package from the set (404 if it holds none of that name).
    pub async fn remove(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
        name: &str,
    ) -> Result<PackagesOutcome> {
        let project = pyxis_egress::normalize_project(name)
            .filter(|_| name.starts_with(|c: char| c.is_ascii_alphanumeric()))
            .ok_or_else(|| ServiceError::Invalid(format!("{name:?} is not a package name")))?;
        let _one = RUNNER_LOCK.lock().await;
        let held = self
            .list()
            .iter()
            .any(|p| pyxis_egress::normalize_project(&p.name).as_deref() == Some(&project));
        if !held {
            return Err(ServiceError::NotFound {
                code: "package_not_found",
                message: format!("the runner has no package {name:?}"),
            });
        }
        let project = &project;
        self.change(sessions, files, |session| async move {
            remove(sessions, &session, project).await
        })
        .await
    }

    /// Runs `op` in a workbench session, makes what it left there the set and removes the
    /// session, whatever the outcome; the answer's log is `op`'s.
    async fn change<F, Fut>(
        &self,
        sessions: &Arc<Sessions>,
        files: &crate::services::Files,
        op: F,
    ) -> Result<PackagesOutcome>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<PackagesOutcome>>,
    {
        let started = Instant::now();
        let session = self.workbench(sessions, files).await?;
        let result = async {
            let outcome = op(session.clone()).await?;
            let packages = self.keep(sessions, files, &session).await?;
            Ok(PackagesOutcome {
                packages,
                log: outcome.log,
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
            })
        }
        .await;
        sessions.delete(&session.id).await;
        result
    }
}

fn record(answer: &Result<Answer>, took: Duration) {
    let result = match answer {
        Ok(a) if a.ok => "ok",
        _ => "failed",
    };
    metrics::counter!("pyxis_package_installs_total", "result" => result).increment(1);
    metrics::histogram!("pyxis_package_install_seconds").record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lists_are_bounded_and_checked() {
        assert!(requirements(&[]).is_err());
        assert!(requirements(&vec!["a".to_owned(); MAX_REQUIREMENTS + 1]).is_err());
        assert!(requirements(&["pandas==2.2.3".into(), "pyxis-tiny".into()]).is_ok());
        for bad in [
            "--index-url=http://x/",
            "x @ http://y/x.whl",
            "-e .",
            "../x",
        ] {
            assert!(requirements(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
