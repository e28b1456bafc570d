//! Workspace files as a service: parse paths, read, write (streamed, atomic, under the
//! quota), delete, list, and import from URLs. Every door calls these with typed values.
//!
//! Every path is validated and then resolved by the kernel beneath the workspace root
//! without following any symlink (see `workspace_fs`), so user code that plants or swaps
//! symlinks can never make the server read or write outside the workspace. Bodies are
//! streamed to and from disk, never held in memory.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::metrics;
use crate::services::error::{Result, ServiceError};
use crate::services::sessions::Session;
use crate::services::url_import::{ImportError, ImportPolicy};
use crate::services::workspace_fs::{EntryKind, RelPath, WorkspaceFsError};

/// Most URLs in one import request.
pub const MAX_IMPORTS: usize = 64;

/// One URL to import.
#[derive(Debug, Clone)]
pub struct ImportItem {
    /// An `http` or `https` URL.
    pub url: String,
    /// Where to write it (default: the last segment of the URL's path).
    pub path: Option<String>,
}

/// A file written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// One entry of a listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File name.
    pub name: String,
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
}

/// A directory listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The directory, relative to the workspace (`""`: the root).
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<Entry>,
    /// More entries exist than were listed.
    pub truncated: bool,
}

/// Run blocking file-system work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, WorkspaceFsError> + Send + 'static,
) -> std::result::Result<T, WorkspaceFsError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(WorkspaceFsError::Io {
            op: "spawn_blocking",
            source: std::io::Error::other(e),
        })
    })
}

/// The file service.
pub struct Files {
    cfg: Arc<Config>,
}

impl Files {
    /// The service over the server's configuration.
    pub fn new(cfg: Arc<Config>) -> Self {
        Self { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The workspace quota in bytes.
    pub fn quota(&self) -> u64 {
        self.cfg.disk_bytes
    }

    /// Validate a workspace path (`allow_root`: `""` names the workspace itself).
    pub fn parse(&self, raw: &str, allow_root: bool) -> Result<RelPath> {
        RelPath::parse(raw, allow_root).map_err(|e| ServiceError::from_fs(e, raw, 0))
    }

    /// Open a regular file for reading: the file, its size and its path.
    pub async fn open_read(
        &self,
        session: &Arc<Session>,
        raw: &str,
    ) -> Result<(std::fs::File, u64, RelPath)> {
        let rel = self.parse(raw, false)?;
        session.touch();
        let (s, r) = (session.clone(), rel.clone());
        let (file, size) = blocking(move || s.workspace()?.open_read(&r))
            .await
            .map_err(|e| ServiceError::from_fs(e, raw, 0))?;
        metrics::file_out(size);
        Ok((file, size, rel))
    }

    /// Read a whole file of at most `max` bytes.
    pub async fn read_all(&self, session: &Arc<Session>, raw: &str, max: u64) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let (file, size, _) = self.open_read(session, raw).await?;
        if size > max {
            return Err(ServiceError::TooLarge(format!(
                "{raw:?} is {size} bytes, more than {max}"
            )));
        }
        let mut out = Vec::with_capacity(size as usize);
        tokio::fs::File::from_std(file)
            .take(size)
            .read_to_end(&mut out)
            .await
            .map_err(|e| ServiceError::from_fs(WorkspaceFsError::from_io("read", e), raw, 0))?;
        Ok(out)
    }

    /// Stream `body` into the workspace file `rel`: a temporary file beside it, renamed over
    /// it once complete. On any error (the client went away, the quota is full) the
    /// temporary file is removed and the old file stays.
    pub async fn write_stream<S, E>(
        &self,
        session: &Arc<Session>,
        rel: &RelPath,
        body: S,
        limit: u64,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let quota = self.quota();
        let fs_err = |e| match e {
            WorkspaceFsError::NotADirectory => ServiceError::Conflict {
                code: "not_a_directory",
                message: format!("a parent of {:?} is not a directory", rel.as_str()),
            },
            e => ServiceError::from_fs(e, rel.as_str(), quota),
        };
        let (s, r) = (session.clone(), rel.clone());
        let mut pending = blocking(move || s.workspace()?.begin_write(&r))
            .await
            .map_err(fs_err)?;
        let std_file = pending
            .take_file()
            .ok_or_else(|| ServiceError::internal("upload without a file"))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut written = 0u64;
        futures_util::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ServiceError::Invalid(format!("the upload of {:?} was cut off: {e}", rel.as_str()))
            })?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(ServiceError::QuotaExceeded(limit));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| fs_err(WorkspaceFsError::from_io("write", e)))?;
        }
        // tokio writes in the background: flush to see the last write's error.
        file.flush()
            .await
            .map_err(|e| fs_err(WorkspaceFsError::from_io("write", e)))?;
        drop(file);
        blocking(move || pending.commit()).await.map_err(fs_err)?;
        session.forget_scan();
        session.touch();
        metrics::file_in(written);
        Ok(written)
    }

    /// Write `bytes` as the file `raw`.
    pub async fn write_bytes(
        &self,
        session: &Arc<Session>,
        raw: &str,
        bytes: Bytes,
    ) -> Result<Written> {
        let rel = self.parse(raw, false)?;
        let once =
            futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) });
        let size = self.write_stream(session, &rel, once, self.quota()).await?;
        Ok(Written {
            path: rel.as_str().to_string(),
            size,
        })
    }

    /// Delete a file, a symlink (the link itself) or an empty directory.
    pub async fn remove(&self, session: &Arc<Session>, raw: &str) -> Result<()> {
        let rel = self.parse(raw, false)?;
        session.touch();
        let s = session.clone();
        blocking(move || s.workspace()?.remove(&rel))
            .await
            .map_err(|e| ServiceError::from_fs(e, raw, 0))?;
        session.forget_scan();
        Ok(())
    }

    /// Make a directory and its missing parents; false when it existed already.
    pub async fn make_dir(&self, session: &Arc<Session>, raw: &str) -> Result<bool> {
        let rel = self.parse(raw, false)?;
        session.touch();
        let s = session.clone();
        let made = blocking(move || s.workspace()?.make_dir(&rel))
            .await
            .map_err(|e| match e {
                WorkspaceFsError::NotADirectory => ServiceError::Conflict {
                    code: "exists",
                    message: format!("{raw:?} exists and is not a directory"),
                },
                e => ServiceError::from_fs(e, raw, 0),
            })?;
        session.forget_scan();
        Ok(made)
    }

    /// Move (rename) a file, directory or symlink; a file at the destination is replaced.
    pub async fn rename(&self, session: &Arc<Session>, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.parse(from, false)?, self.parse(to, false)?);
        session.touch();
        let s = session.clone();
        blocking(move || s.workspace()?.rename(&src, &dst))
            .await
            .map_err(|e| ServiceError::from_fs(e, from, 0))?;
        session.forget_scan();
        Ok(())
    }

    /// Describe one entry (`""`: the root); a symlink as itself.
    pub async fn stat(&self, session: &Arc<Session>, raw: &str) -> Result<Entry> {
        let rel = self.parse(raw, true)?;
        session.touch();
        let (s, r) = (session.clone(), rel.clone());
        let e = blocking(move || s.workspace()?.stat(&r))
            .await
            .map_err(|e| ServiceError::from_fs(e, raw, 0))?;
        Ok(Entry {
            name: e.name,
            path: rel.as_str().to_string(),
            size: e.size,
            modified: e.modified,
            kind: e.kind,
            mode: e.mode,
        })
    }

    /// List a directory (`""`: the root). Symlinks are listed as such and never followed.
    pub async fn list(&self, session: &Arc<Session>, raw: &str) -> Result<Listing> {
        let rel = self.parse(raw, true)?;
        session.touch();
        let max = self.cfg.files_list_max_entries;
        let (s, r) = (session.clone(), rel.clone());
        let (entries, truncated) = blocking(move || s.workspace()?.list(&r, max))
            .await
            .map_err(|e| match e {
                WorkspaceFsError::NotADirectory => ServiceError::Conflict {
                    code: "not_a_directory",
                    message: format!("{raw:?} is not a directory"),
                },
                e => ServiceError::from_fs(e, raw, 0),
            })?;
        let entries = entries
            .into_iter()
            .map(|e| Entry {
                path: if rel.is_root() {
                    e.name.clone()
                } else {
                    format!("{}/{}", rel.as_str(), e.name)
                },
                name: e.name,
                size: e.size,
                modified: e.modified,
                kind: e.kind,
                mode: e.mode,
            })
            .collect();
        Ok(Listing {
            path: rel.as_str().to_string(),
            entries,
            truncated,
        })
    }

    /// Fetch `items` into the session's workspace, in order. Only `http`/`https`; hosts
    /// that resolve to non-public addresses are refused unless `PYXIS_IMPORT_ALLOW` lists
    /// them; every redirect is checked the same way. Each file is written like an upload,
    /// limited by `PYXIS_IMPORT_MAX_MB`, the quota and `PYXIS_IMPORT_TIMEOUT_S`.
    pub async fn import(
        &self,
        session: &Arc<Session>,
        items: Vec<ImportItem>,
    ) -> Result<Vec<Written>> {
        let targets = self.import_targets(&items)?;
        session.touch();
        let cap = self.cfg.import_max_bytes.min(self.cfg.disk_bytes);
        let policy = ImportPolicy {
            allow: self.cfg.import_allow.clone(),
            timeout: self.cfg.import_timeout,
        };
        let mut files = Vec::new();
        for (item, rel) in items.into_iter().zip(targets) {
            let written = self
                .import_one(session, &policy, &item.url, &rel, cap)
                .await;
            metrics::import_done(written.is_ok());
            files.push(Written {
                path: rel.as_str().to_string(),
                size: written?,
            });
        }
        Ok(files)
    }

    async fn import_one(
        &self,
        session: &Arc<Session>,
        policy: &ImportPolicy,
        url: &str,
        rel: &RelPath,
        cap: u64,
    ) -> Result<u64> {
        // One time limit for the whole import: request, redirects and body.
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let (_, resp) = policy.fetch(url).await?;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(ServiceError::TooLarge(format!(
                "{url:?} is larger than the import limit of {} MiB",
                cap / (1024 * 1024)
            )));
        }
        let stream = futures_util::stream::unfold(resp, move |mut resp| async move {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), resp)),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(e.to_string()), resp)),
                Err(_) => Some((Err("the import time limit was reached".to_string()), resp)),
            }
        });
        self.write_stream(session, rel, stream, cap).await
    }

    /// Where each imported URL is written: its `path`, or else the last segment of its URL
    /// in the workspace root. A name taken by another file of the same request gets `-1`,
    /// `-2`, … before its extension (`data.csv`, `data-1.csv`); a `path` given twice is
    /// refused.
    pub fn import_targets(&self, items: &[ImportItem]) -> Result<Vec<RelPath>> {
        import_targets(items)
    }
}

/// See [`Files::import_targets`].
pub fn import_targets(items: &[ImportItem]) -> Result<Vec<RelPath>> {
    let parse =
        |raw: &str| RelPath::parse(raw, false).map_err(|e| ServiceError::from_fs(e, raw, 0));
    if items.len() > MAX_IMPORTS {
        return Err(ServiceError::Invalid(format!(
            "give at most {MAX_IMPORTS} files"
        )));
    }
    for item in items {
        let invalid = |m: String| ServiceError::Import(ImportError::InvalidUrl(m));
        let u = url::Url::parse(&item.url).map_err(|e| invalid(format!("{:?}: {e}", item.url)))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "only http and https URLs are supported, not {:?}",
                u.scheme()
            )));
        }
    }
    let mut taken = std::collections::HashSet::new();
    for item in items {
        if let Some(p) = &item.path {
            let rel = parse(p)?;
            if !taken.insert(rel.as_str().to_string()) {
                return Err(ServiceError::InvalidPath(format!("{p:?} is given twice")));
            }
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(p) = &item.path {
            out.push(parse(p)?);
            continue;
        }
        let name = url::Url::parse(&item.url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_string))
            })
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ServiceError::InvalidPath(format!(
                    "cannot name the file of {:?}; give a path",
                    item.url
                ))
            })?;
        let rel = parse(&name)?;
        let mut candidate = rel.as_str().to_string();
        let (stem, ext) = match candidate.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), format!(".{ext}")),
            _ => (candidate.clone(), String::new()),
        };
        let mut n = 1;
        while taken.contains(&candidate) {
            candidate = format!("{stem}-{n}{ext}");
            n += 1;
        }
        taken.insert(candidate.clone());
        out.push(parse(&candidate)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(url: &str, path: Option<&str>) -> ImportItem {
        ImportItem {
            url: url.into(),
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn default_names_that_clash_are_renamed() {
        let got = import_targets(&[
            item("http://a/x/data.csv", None),
            item("http://b/data.csv?v=2", None),
            item("http://c/y", Some("data-1.csv")),
            item("http://d/data.csv", None),
            item("http://e/README", None),
            item("http://f/README", None),
            item("http://g/.env", None),
            item("http://h/.env", None),
        ])
        .unwrap();
        let got: Vec<&str> = got.iter().map(RelPath::as_str).collect();
        assert_eq!(
            got,
            [
                "data.csv",
                "data-2.csv",
                "data-1.csv",
                "data-3.csv",
                "README",
                "README-1",
                ".env",
                ".env-1"
            ]
        );
        assert!(import_targets(&[item("http://a/", None)]).is_err());
        assert!(
            import_targets(&[item("http://a/x", Some("p")), item("http://b/y", Some("p"))])
                .is_err()
        );
        assert!(import_targets(&[item("file:///etc/passwd", Some("p"))]).is_err());
        assert!(import_targets(&[item("http://a/x", Some("../p"))]).is_err());
    }
}
