//! Workspaces: one tmpfs per sandbox, whose size is the byte quota.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

type Result<T> = std::result::Result<T, WorkspaceError>;

/// A failing workspace operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    /// Creating the directory failed.
    #[error("create workspace dir {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Mounting the tmpfs failed.
    #[error("mount workspace tmpfs on {path}: {source}")]
    MountTmpfs {
        /// The mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `statvfs` failed.
    #[error("statvfs {path}: {source}")]
    Statvfs {
        /// The workspace.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmount {path}: {source}")]
    Umount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Removing the directory failed.
    #[error("remove {path}: {source}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading the mount table failed.
    #[error("read {path}: {source}")]
    ReadMountInfo {
        /// The mount table file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The mount table of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A sandbox's workspace: a directory with a tmpfs of `quota_bytes` mounted on it.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    quota_bytes: u64,
}

impl Workspace {
    /// Creates `path` and mounts a tmpfs of `quota_bytes` and `max_inodes` on it, owned by
    /// `uid`:`gid` with mode 0700, nosuid and nodev.
    pub fn create(
        path: &Path,
        uid: u32,
        gid: u32,
        quota_bytes: u64,
        max_inodes: u64,
    ) -> Result<Workspace> {
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(source) => {
                return Err(WorkspaceError::CreateDir {
                    path: path.into(),
                    source,
                })
            }
        }
        let options =
            format!("size={quota_bytes},nr_inodes={max_inodes},mode=0700,uid={uid},gid={gid}");
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| WorkspaceError::MountTmpfs {
            path: path.into(),
            source: e.into(),
        })?;
        Ok(Workspace {
            path: path.into(),
            quota_bytes,
        })
    }

    /// The workspace directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(bytes used, quota)`.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let stat = nix::sys::statvfs::statvfs(&self.path).map_err(|e| WorkspaceError::Statvfs {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let block = stat.fragment_size();
        let used = (stat.blocks() - stat.blocks_free()) * block;
        Ok((used, self.quota_bytes))
    }

    /// Unmounts (lazily) and removes the workspace.
    pub fn remove(&self) -> Result<()> {
        unmount_and_remove(&self.path)
    }

    /// Unmounts and removes every directory under `parent` (workspaces left by an earlier
    /// run). Returns how many were removed.
    pub fn cleanup_leftovers(parent: &Path) -> Result<usize> {
        let mountinfo =
            std::fs::read_to_string(MOUNTINFO).map_err(|source| WorkspaceError::ReadMountInfo {
                path: MOUNTINFO.into(),
                source,
            })?;
        let mut mounts: Vec<PathBuf> = mount_points(&mountinfo)
            .into_iter()
            .filter(|m| m.starts_with(parent) && m != parent)
            .collect();
        // Deepest first, so nested mounts go before their parents.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount_point in &mounts {
            umount(mount_point)?;
        }
        let entries = match std::fs::read_dir(parent) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(WorkspaceError::RemoveDir {
                    path: parent.into(),
                    source,
                })
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&path)
                    .map_err(|source| WorkspaceError::RemoveDir { path, source })?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn umount(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (any more).
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(WorkspaceError::Umount {
            path: path.into(),
            source: e.into(),
        }),
    }
}

fn unmount_and_remove(path: &Path) -> Result<()> {
    umount(path)?;
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WorkspaceError::RemoveDir {
            path: path.into(),
            source,
        }),
    }
}

/// Mount points (field 5) of a `mountinfo` text, with octal escapes (`\040`) decoded.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let value = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(value) = value {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - tmpfs tmpfs rw\n\
                    37 35 98:0 / /srv rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mount_points(text),
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/srv")]
        );
    }
}
