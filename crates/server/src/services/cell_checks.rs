//! What the server looks at around every cell, kept cheap: the OOM killer's count of the
//! sandbox (read only when it can have moved something, see [`OomBaseline`]) and whether
//! the workspace is still empty (one `fstatfs` on a descriptor held for the session, see
//! [`WorkspaceRoot`]).
//!
//! Both used to cost a file read or a path lookup per cell: at thousands of cells a second
//! they were 3.9% (the cgroup v1 `memory.oom_control` read, a seq_file formatted on every
//! read) and 4.4% (`statfs` of the workspace path, two thirds of it the path lookup) of the
//! server's CPU.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// How long a read of the OOM count serves as the "before" of later cells.
///
/// The count is compared only when a kernel is lost: then it is read again, and a count
/// above the one before the cell reports `OutOfMemory`. A count that moved without a loss
/// (the OOM killer took a subprocess, or another context's kernel) is taken in at the next
/// read, which is at most this old; a kernel lost for another reason within that time after
/// such a kill would be reported as out of memory. At a cell a second or fewer, every cell
/// still reads the count, as before.
pub const OOM_COUNT_FRESH: Duration = Duration::from_secs(1);

/// The OOM killer's count of a sandbox as last read, and when.
#[derive(Debug, Default)]
pub struct OomBaseline(Mutex<Option<(Instant, u64)>>);

impl OomBaseline {
    /// The count before a cell: the last one read if it is fresh (see [`OOM_COUNT_FRESH`]),
    /// else `read()` now.
    pub fn before_cell(&self, read: impl FnOnce() -> u64) -> u64 {
        let now = Instant::now();
        if let Some((at, count)) = *self.lock() {
            if now.duration_since(at) < OOM_COUNT_FRESH {
                return count;
            }
        }
        let count = read();
        *self.lock() = Some((now, count));
        count
    }

    /// Note a count just read (after a kernel was lost, or a context failed to start).
    pub fn note(&self, count: u64) {
        *self.lock() = Some((Instant::now(), count));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A descriptor of the workspace's root (`O_PATH`), opened at the first look and closed at
/// teardown, so that the per-cell emptiness check is an `fstatfs` without a path lookup.
#[derive(Debug, Default)]
pub struct WorkspaceRoot(Mutex<RootFd>);

#[derive(Debug, Default)]
enum RootFd {
    #[default]
    Unopened,
    Open(OwnedFd),
    /// Could not be opened (checks fall back to the path), or the session is gone.
    Unavailable,
}

impl WorkspaceRoot {
    /// Whether the workspace at `path` holds nothing but its root: its own tmpfs has one
    /// inode in use. False when that cannot be told (the caller then walks it).
    pub fn is_empty(&self, path: &Path) -> bool {
        let mut fd = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*fd, RootFd::Unopened) {
            *fd = match open_root(path) {
                Some(root) => RootFd::Open(root),
                None => RootFd::Unavailable,
            };
        }
        let stats = match &*fd {
            RootFd::Open(root) => nix::sys::statvfs::fstatvfs(root.as_fd()),
            _ => nix::sys::statvfs::statvfs(path),
        };
        stats
            .map(|v| v.files().saturating_sub(v.files_free()) <= 1)
            .unwrap_or(false)
    }

    /// Let the descriptor go (teardown): the workspace's tmpfs, already detached, is freed
    /// once nothing holds it.
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = RootFd::Unavailable;
    }
}

fn open_root(path: &Path) -> Option<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_fresh_count_is_reused_and_a_noted_one_replaces_it() {
        let base = OomBaseline::default();
        let reads = Cell::new(0);
        let read = |n: u64| {
            reads.set(reads.get() + 1);
            n
        };
        assert_eq!(base.before_cell(|| read(3)), 3);
        // Within the freshness window the count is not read again.
        assert_eq!(base.before_cell(|| read(7)), 3);
        assert_eq!(reads.get(), 1);
        base.note(5);
        assert_eq!(base.before_cell(|| read(9)), 5);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_stale_count_is_read_again() {
        let base = OomBaseline::default();
        *base.lock() = Some((Instant::now() - OOM_COUNT_FRESH * 2, 1));
        assert_eq!(base.before_cell(|| 4), 4);
        assert_eq!(base.before_cell(|| 8), 4);
    }

    #[test]
    fn emptiness_follows_the_directory_and_survives_close() {
        // A plain directory of the host's filesystem is never "empty" in this sense (many
        // inodes are in use): the check must say false, with or without the descriptor.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = WorkspaceRoot::default();
        assert!(!root.is_empty(dir.path()));
        assert!(matches!(*root.0.lock().unwrap(), RootFd::Open(_)));
        root.close();
        assert!(!root.is_empty(dir.path()));
        assert!(matches!(*root.0.lock().unwrap(), RootFd::Unavailable));
        // A path that does not exist cannot be told empty.
        let gone = WorkspaceRoot::default();
        assert!(!gone.is_empty(&dir.path().join("missing")));
    }

    /// A tmpfs mounted for the test, detached when dropped.
    struct Tmpfs(tempfile::TempDir);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_workspace_tmpfs_is_empty_until_a_file_is_made_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = mounted {
            // Workspaces are tmpfs mounts the server (root) makes; without root there is
            // none to look at.
            eprintln!("skipped: cannot mount a tmpfs here ({e})");
            return;
        }
        let fs = Tmpfs(dir);
        let path = fs.0.path();
        let root = WorkspaceRoot::default();
        assert!(root.is_empty(path));
        std::fs::create_dir(path.join("sub")).expect("mkdir");
        assert!(!root.is_empty(path), "a directory is an entry");
        std::fs::write(path.join("sub/a"), b"x").expect("write");
        std::fs::remove_dir_all(path.join("sub")).expect("rm");
        assert!(root.is_empty(path));
        root.close();
    }
}
