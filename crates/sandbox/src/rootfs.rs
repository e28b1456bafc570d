//! The sandbox's root filesystem: a fresh tmpfs with an allow-list of read-only binds, a
//! generated `/etc`, `/workspace`, private `/tmp` and `/dev/shm`, a minimal `/dev` and a fresh
//! `/proc`, entered with `pivot_root` and then made read-only.
//!
//! Runs in process B (pid 1 of the new pid namespace, still root, in the new mount
//! namespace), so the host never sees any of these mounts.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::spec::SandboxSpec;
use crate::sys;

type Result<T> = std::result::Result<T, RootfsError>;

/// A failure while building the root filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootfsError {
    /// Making `/` private recursively failed.
    #[error("make mounts private: {0}")]
    MakePrivate(#[source] io::Error),
    /// Mounting a tmpfs failed.
    #[error("mount tmpfs on {path}: {source}")]
    MountTmpfs {
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Mounting proc failed.
    #[error("mount proc on {path}: {source}")]
    MountProc {
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A bind mount failed.
    #[error("bind {src} on {path}: {source}")]
    MountBind {
        /// Source path.
        src: PathBuf,
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Changing a mount's flags failed.
    #[error("remount {path}: {source}")]
    Remount {
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading a host path failed.
    #[error("inspect host path {path}: {source}")]
    InspectHostPath {
        /// Host path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Creating a directory, file or symlink in the new root failed.
    #[error("create {path}: {source}")]
    Create {
        /// Path in the new root (seen from the host's mount namespace).
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `pivot_root` failed.
    #[error("pivot_root into {path}: {source}")]
    PivotRoot {
        /// The new root.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Detaching or removing the old root failed.
    #[error("unmount old root {path}: {source}")]
    UmountOldRoot {
        /// Where the old root was.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `chdir` failed.
    #[error("chdir {path}: {source}")]
    Chdir {
        /// Target directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Size of the root tmpfs, which only holds `/etc` and mount points.
const ROOT_TMPFS_OPTIONS: &str = "mode=0755,size=4m,nr_inodes=4096";
/// Size of `/dev`, which only holds empty files, symlinks and directories.
const DEV_TMPFS_OPTIONS: &str = "mode=0755,size=64k,nr_inodes=64";
/// Device nodes bound from the host's `/dev`.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
/// Where the old root hangs between `pivot_root` and its detach.
const OLD_ROOT: &str = ".old_root";
/// Flags of every read-only bind.
const RO_ATTRS: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// Builds the root on `spec.root_mountpoint`, pivots into it, detaches the host's root,
/// changes to `/workspace` and makes `/` read-only.
pub fn build(spec: &SandboxSpec) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| RootfsError::MakePrivate(e.into()))?;

    let root = spec.root_mountpoint.as_path();
    mount_tmpfs(
        root,
        ROOT_TMPFS_OPTIONS,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;

    write_etc(root, spec)?;
    for host_path in &spec.ro_binds {
        bind_host_path(root, host_path)?;
    }

    let workspace = mkdir_in(root, Path::new("/workspace"))?;
    // A made the workspace fd a detached copy of its mount tree (see `process`).
    sys::attach_tree(spec.workspace_fd, &workspace).map_err(|source| RootfsError::MountBind {
        src: PathBuf::from(format!("fd {}", spec.workspace_fd)),
        path: workspace.clone(),
        source,
    })?;
    remount_bind(&workspace, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    for alias in &spec.workspace_aliases {
        let parent = alias.parent().unwrap_or(Path::new("/"));
        mkdir_in(root, parent)?;
        let link = join_in(root, alias);
        symlink("/workspace", &link)
            .map_err(|source| RootfsError::Create { path: link, source })?;
    }

    let tmp_options = format!("mode=1777,size={}", spec.tmp_bytes);
    let tmp = mkdir_in(root, Path::new("/tmp"))?;
    mount_tmpfs(&tmp, &tmp_options, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    build_dev(root, &tmp_options)?;

    let proc = mkdir_in(root, Path::new("/proc"))?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| RootfsError::MountProc {
        path: proc.clone(),
        source: e.into(),
    })?;

    pivot(root)?;
    let workspace = Path::new("/workspace");
    nix::unistd::chdir(workspace).map_err(|e| RootfsError::Chdir {
        path: workspace.into(),
        source: e.into(),
    })?;
    remount_bind(
        Path::new("/"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
}

/// `/etc/passwd`, `group`, `hosts`, `hostname`, `nsswitch.conf` and an empty `resolv.conf`
/// (there is no network to resolve names on).
fn write_etc(root: &Path, spec: &SandboxSpec) -> Result<()> {
    let etc = mkdir_in(root, Path::new("/etc"))?;
    let (uid, gid, host) = (spec.uid, spec.gid, &spec.hostname);
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
                 sandbox:x:{uid}:{gid}:sandbox:/workspace:/bin/sh\n"
            ),
        ),
        ("group", format!("root:x:0:\nsandbox:x:{gid}:\n")),
        (
            "hosts",
            format!("127.0.0.1\tlocalhost {host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ),
        ("hostname", format!("{host}\n")),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n\
             networks: files\nprotocols: files\nservices: files\n"
                .to_owned(),
        ),
        ("resolv.conf", String::new()),
    ];
    for (name, content) in files {
        let path = etc.join(name);
        fs::write(&path, content).map_err(|source| RootfsError::Create { path, source })?;
    }
    Ok(())
}

/// Recreates one allow-listed host path in the new root.
fn bind_host_path(root: &Path, host_path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(host_path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RootfsError::InspectHostPath {
                path: host_path.into(),
                source,
            })
        }
    };
    // Resolve the parent on the host, so that e.g. /lib/x86_64-linux-gnu (with /lib a
    // symlink) lands where the symlink points and no path in the new root crosses a symlink.
    let (Some(parent), Some(name)) = (host_path.parent(), host_path.file_name()) else {
        return Ok(());
    };
    let parent = fs::canonicalize(parent).map_err(|source| RootfsError::InspectHostPath {
        path: parent.into(),
        source,
    })?;
    let dst_parent = mkdir_in(root, &parent)?;
    let dst = dst_parent.join(name);
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(host_path).map_err(|source| RootfsError::InspectHostPath {
            path: host_path.into(),
            source,
        })?;
        return symlink(&target, &dst).map_err(|source| RootfsError::Create { path: dst, source });
    }
    if file_type.is_dir() {
        mkdir_at(&dst)?;
        bind(host_path, &dst, MsFlags::MS_REC)?;
    } else {
        create_empty_file(&dst)?;
        bind(host_path, &dst, MsFlags::empty())?;
    }
    make_read_only(&dst)
}

/// `/dev`: a tmpfs with the harmless device nodes bound from the host, the usual symlinks
/// and a private `/dev/shm`; read-only afterwards.
fn build_dev(root: &Path, shm_options: &str) -> Result<()> {
    let dev = mkdir_in(root, Path::new("/dev"))?;
    mount_tmpfs(
        &dev,
        DEV_TMPFS_OPTIONS,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for name in DEVICES {
        let dst = dev.join(name);
        create_empty_file(&dst)?;
        bind(&Path::new("/dev").join(name), &dst, MsFlags::empty())?;
        // Device nodes need dev; they keep the host /dev's other flags plus nosuid, noexec.
        remount_bind(&dst, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    }
    let links = [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let path = dev.join(name);
        symlink(target, &path).map_err(|source| RootfsError::Create { path, source })?;
    }
    let shm = dev.join("shm");
    mkdir_at(&shm)?;
    mount_tmpfs(&shm, shm_options, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    remount_bind(
        &dev,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

/// `pivot_root` into `root`, then detach and remove the old root.
fn pivot(root: &Path) -> Result<()> {
    let chdir_err = |source: nix::Error| RootfsError::Chdir {
        path: root.into(),
        source: source.into(),
    };
    nix::unistd::chdir(root).map_err(chdir_err)?;
    mkdir_at(Path::new(OLD_ROOT))?;
    nix::unistd::pivot_root(".", OLD_ROOT).map_err(|e| RootfsError::PivotRoot {
        path: root.into(),
        source: e.into(),
    })?;
    nix::unistd::chdir("/").map_err(chdir_err)?;
    let old = Path::new("/").join(OLD_ROOT);
    let old_err = |source: io::Error| RootfsError::UmountOldRoot {
        path: old.clone(),
        source,
    };
    umount2(&old, MntFlags::MNT_DETACH).map_err(|e| old_err(e.into()))?;
    fs::remove_dir(&old).map_err(old_err)
}

fn mount_tmpfs(path: &Path, options: &str, flags: MsFlags) -> Result<()> {
    mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(options)).map_err(|e| {
        RootfsError::MountTmpfs {
            path: path.into(),
            source: e.into(),
        }
    })
}

fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<()> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(|e| RootfsError::MountBind {
        src: src.into(),
        path: dst.into(),
        source: e.into(),
    })
}

/// Sets the per-mount flags of the bind mount at `path` to exactly `flags`.
fn remount_bind(path: &Path, flags: MsFlags) -> Result<()> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(|e| RootfsError::Remount {
        path: path.into(),
        source: e.into(),
    })
}

/// Read-only, nosuid, nodev on the whole subtree at `path` (`mount_setattr`), or on its top
/// mount on kernels older than 5.12.
fn make_read_only(path: &Path) -> Result<()> {
    match sys::mount_setattr_recursive(path, RO_ATTRS) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => remount_bind(
            path,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        Err(source) => Err(RootfsError::Remount {
            path: path.into(),
            source,
        }),
    }
}

/// `root` + `path` (an absolute, normalized path).
fn join_in(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    out.extend(
        path.components()
            .filter(|c| matches!(c, Component::Normal(_))),
    );
    out
}

/// `mkdir -p` of `path` under `root`, refusing to cross a symlink (which, before
/// `pivot_root`, could point into the host).
fn mkdir_in(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut current = root.to_path_buf();
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(RootfsError::Create {
                    path: current,
                    source: io::Error::from_raw_os_error(libc::ENOTDIR),
                })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => mkdir_at(&current)?,
            Err(source) => {
                return Err(RootfsError::Create {
                    path: current,
                    source,
                })
            }
        }
    }
    Ok(current)
}

fn mkdir_at(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(RootfsError::Create {
            path: path.into(),
            source,
        }),
    }
}

fn create_empty_file(path: &Path) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(drop)
        .map_err(|source| RootfsError::Create {
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_in_stays_under_root() {
        assert_eq!(
            join_in(Path::new("/r"), Path::new("/etc/ld.so.cache")),
            PathBuf::from("/r/etc/ld.so.cache")
        );
    }

    #[test]
    fn mkdir_in_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = mkdir_in(dir.path(), Path::new("/a/b")).expect("mkdir -p");
        assert!(made.is_dir());
        symlink("/", dir.path().join("link")).expect("symlink");
        assert!(mkdir_in(dir.path(), Path::new("/link/x")).is_err());
    }
}
