//! Workspace files as the server sees them, confined to the workspace even
//! while the session's own code rearranges it.
//!
//! The workspace is a directory the sandboxed user owns and can change at any
//! moment: it can plant symlinks to host files, swap a directory for a symlink
//! between two of our system calls, or leave fifos that block a reader. So:
//!
//! - client paths are validated first ([`RelPath`]): relative, no `.`/`..`,
//!   no empty component, no NUL, bounded lengths;
//! - every path is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to
//!   a descriptor of the workspace root, so no symlink is ever followed (not
//!   even one swapped in concurrently) and nothing outside the root is reached;
//! - files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat`
//!   on the open descriptor, so a fifo never blocks and only regular files are
//!   read;
//! - writes go to a temporary file in the target's directory, owned by the
//!   session's uid, and are renamed over the target at the end (`renameat` on
//!   directory descriptors we hold), so a cut-off upload leaves the old file.
//!
//! A hardlink to a host file cannot exist in the workspace: it is its own
//! tmpfs, and links never cross filesystems (`EXDEV`).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use rand::Rng;

/// Longest file name (`NAME_MAX` of Linux, `include/uapi/linux/limits.h`).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path (`PATH_MAX` of Linux, `include/uapi/linux/limits.h`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Prefix of the temporary files of uploads in progress.
pub const UPLOAD_PREFIX: &str = ".pyxis-upload-";
/// How often `openat2` is retried when the kernel reports a concurrent rename
/// (`EAGAIN` with `RESOLVE_BENEATH`, see openat2(2)).
const OPENAT2_RETRIES: usize = 16;

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceFsError {
    /// The client path is not acceptable.
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    /// No such file or directory (or a component is not a directory).
    #[error("no such file or directory")]
    NotFound,
    /// The path goes through a symbolic link or would leave the workspace.
    #[error("the path goes through a symbolic link or leaves the workspace")]
    Forbidden,
    /// Not a regular file (a directory, fifo, socket, symlink, device).
    #[error("not a regular file")]
    NotAFile,
    /// Not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// A directory is in the way.
    #[error("is a directory")]
    IsADirectory,
    /// The directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// The workspace is full.
    #[error("the workspace quota is exhausted")]
    Quota,
    /// Anything else.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, WorkspaceFsError>;

impl WorkspaceFsError {
    fn from_errno(op: &'static str, e: Errno) -> Self {
        match e {
            Errno::ENOENT => Self::NotFound,
            Errno::ENOTDIR => Self::NotADirectory,
            // ELOOP: a symlink on the way (RESOLVE_NO_SYMLINKS, O_NOFOLLOW);
            // EXDEV: the resolution would leave the root (RESOLVE_BENEATH).
            Errno::ELOOP | Errno::EXDEV => Self::Forbidden,
            Errno::EISDIR => Self::IsADirectory,
            Errno::ENOTEMPTY | Errno::EEXIST => Self::NotEmpty,
            Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG => Self::Quota,
            e => Self::Io {
                op,
                source: std::io::Error::from(e),
            },
        }
    }

    /// Classify an `io::Error` of a read or write on an open file.
    pub fn from_io(op: &'static str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Self::from_errno(op, Errno::from_raw(n)),
            None => Self::Io { op, source: e },
        }
    }
}

/// A validated path relative to the workspace root (possibly empty: the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(String);

impl RelPath {
    /// Validate a client path. Empty means the root and is allowed only when
    /// `allow_root`. One trailing `/` is tolerated.
    pub fn parse(raw: &str, allow_root: bool) -> Result<RelPath> {
        let s = raw.strip_suffix('/').unwrap_or(raw);
        if s.len() > MAX_PATH_BYTES {
            return Err(WorkspaceFsError::InvalidPath("longer than 4096 bytes"));
        }
        if s.contains('\0') {
            return Err(WorkspaceFsError::InvalidPath("contains NUL"));
        }
        if s.starts_with('/') {
            return Err(WorkspaceFsError::InvalidPath(
                "absolute paths are not allowed; give a path relative to the workspace",
            ));
        }
        if s.is_empty() {
            return if allow_root {
                Ok(RelPath(String::new()))
            } else {
                Err(WorkspaceFsError::InvalidPath("empty path"))
            };
        }
        for c in s.split('/') {
            match c {
                "" => return Err(WorkspaceFsError::InvalidPath("empty path component")),
                "." | ".." => {
                    return Err(WorkspaceFsError::InvalidPath(
                        "'.' and '..' components are not allowed",
                    ))
                }
                c if c.len() > MAX_NAME_BYTES => {
                    return Err(WorkspaceFsError::InvalidPath(
                        "a path component is longer than 255 bytes",
                    ))
                }
                _ => {}
            }
        }
        Ok(RelPath(s.to_string()))
    }

    /// The path as given (without a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path joined with a validated relative path.
    pub fn join(&self, other: &RelPath) -> Result<RelPath> {
        if self.is_root() {
            return Ok(other.clone());
        }
        if other.is_root() {
            return Ok(self.clone());
        }
        RelPath::parse(&format!("{}/{}", self.0, other.0), false)
    }

    /// Parent directory and final name (`None` for the root).
    fn split(&self) -> Option<(&str, &str)> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", &self.0),
        })
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A fifo, socket or device.
    Other,
}

impl EntryKind {
    fn of(st: &FileStat) -> Self {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Self::File,
            SFlag::S_IFDIR => Self::Dir,
            SFlag::S_IFLNK => Self::Symlink,
            _ => Self::Other,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// File name (lossily decoded when not UTF-8).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// A regular file's identity in a snapshot: modification time, size, inode.
type Stamp = (i64, i64, u64, u64);

/// The regular files of a workspace at one moment (bounded walk).
#[derive(Debug, Default)]
pub struct Snapshot {
    files: HashMap<String, Stamp>,
}

impl Snapshot {
    /// Files that are new or changed (mtime, size or inode) in `after`, with
    /// their sizes, sorted by path.
    pub fn changed(&self, after: &Snapshot) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = after
            .files
            .iter()
            .filter(|(path, stamp)| self.files.get(*path) != Some(stamp))
            .map(|(path, stamp)| (path.clone(), stamp.2))
            .collect();
        out.sort();
        out
    }
}

/// An open workspace: a descriptor of its root and the owner of its files.
pub struct WorkspaceFs {
    root: OwnedFd,
    uid: u32,
    gid: u32,
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// `openat2` beneath `dir` without following any symlink; the result owned.
fn open_beneath(dir: RawFd, path: &CStr, flags: OFlag, mode: Mode) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(resolve_flags());
    let mut tries = 0;
    loop {
        match openat2(dir, path, how) {
            // SAFETY: openat2 just returned this descriptor; nothing else owns it.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EAGAIN | Errno::EINTR) if tries < OPENAT2_RETRIES => tries += 1,
            // O_DIRECTORY | O_NOFOLLOW on a final symlink says ENOTDIR: tell
            // a symlink (refused) from a file (not a directory). User code
            // may be swapping the entry meanwhile: a directory or nothing
            // there now means "try again".
            Err(Errno::ENOTDIR) if flags.contains(OFlag::O_DIRECTORY) => match kind_of(dir, path) {
                Some(EntryKind::Symlink) => return Err(WorkspaceFsError::Forbidden),
                Some(EntryKind::Dir) | None if tries < OPENAT2_RETRIES => tries += 1,
                Some(EntryKind::Dir) => return Err(WorkspaceFsError::Forbidden),
                None => return Err(WorkspaceFsError::NotFound),
                Some(_) => return Err(WorkspaceFsError::NotADirectory),
            },
            Err(e) => return Err(WorkspaceFsError::from_errno("openat2", e)),
        }
    }
}

/// What `path` beneath `dir` is, without following it (`None`: nothing, or
/// not reachable without a symlink).
fn kind_of(dir: RawFd, path: &CStr) -> Option<EntryKind> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(resolve_flags());
    match openat2(dir, path, how) {
        Ok(fd) => {
            // SAFETY: openat2 just returned this descriptor; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            fstat(fd.as_raw_fd()).ok().map(|st| EntryKind::of(&st))
        }
        // A symlink on the way.
        Err(Errno::ELOOP | Errno::EXDEV) => Some(EntryKind::Symlink),
        Err(_) => None,
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| WorkspaceFsError::InvalidPath("contains NUL"))
}

fn mtime(st: &FileStat) -> SystemTime {
    if st.st_mtime >= 0 {
        UNIX_EPOCH + Duration::new(st.st_mtime as u64, st.st_mtime_nsec as u32)
    } else {
        UNIX_EPOCH
    }
}

impl WorkspaceFs {
    /// Open the workspace at `path` (a host path the server controls), whose
    /// files belong to `uid`:`gid`.
    pub fn open(path: &Path, uid: u32, gid: u32) -> Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| WorkspaceFsError::InvalidPath("contains NUL"))?;
        let fd = nix::fcntl::open(
            c.as_c_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| WorkspaceFsError::from_errno("open workspace", e))?;
        Ok(Self {
            // SAFETY: open just returned this descriptor; nothing else owns it.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            uid,
            gid,
        })
    }

    /// Open a directory of the workspace for reading (the root when empty).
    fn open_dir(&self, dir: &str) -> Result<OwnedFd> {
        let path = if dir.is_empty() { "." } else { dir };
        open_beneath(
            self.root.as_raw_fd(),
            &cstring(path)?,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
    }

    /// Open a regular file for reading; returns it and its size.
    pub fn open_read(&self, path: &RelPath) -> Result<(std::fs::File, u64)> {
        if path.is_root() {
            return Err(WorkspaceFsError::NotAFile);
        }
        // O_NONBLOCK: opening a fifo must not wait for a writer.
        let fd = open_beneath(
            self.root.as_raw_fd(),
            &cstring(path.as_str())?,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| WorkspaceFsError::from_errno("fstat", e))?;
        if EntryKind::of(&st) != EntryKind::File {
            return Err(WorkspaceFsError::NotAFile);
        }
        Ok((std::fs::File::from(fd), st.st_size as u64))
    }

    /// Open (creating as needed, owned by the session's uid, mode 0755) every
    /// directory leading to `path`; returns the parent directory's descriptor
    /// and the final name.
    fn make_parents(&self, path: &RelPath) -> Result<(OwnedFd, CString)> {
        let (dir, name) = path.split().ok_or(WorkspaceFsError::IsADirectory)?;
        let mut cur = self.open_dir("")?;
        if !dir.is_empty() {
            for comp in dir.split('/') {
                let c = cstring(comp)?;
                let created = match mkdirat(
                    Some(cur.as_raw_fd()),
                    c.as_c_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) => true,
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(WorkspaceFsError::from_errno("mkdirat", e)),
                };
                let next = open_beneath(
                    cur.as_raw_fd(),
                    &c,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )?;
                if created {
                    // Whatever is there now is inside the workspace: giving it
                    // to the session's user is harmless even if user code
                    // swapped it in after our mkdirat.
                    self.give(&next, 0o755)?;
                }
                cur = next;
            }
        }
        Ok((cur, cstring(name)?))
    }

    /// Make `fd` the session user's, with `mode`.
    fn give(&self, fd: &OwnedFd, mode: u32) -> Result<()> {
        fchown(
            fd.as_raw_fd(),
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )
        .map_err(|e| WorkspaceFsError::from_errno("fchown", e))?;
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| WorkspaceFsError::from_errno("fchmod", e))
    }

    /// Start writing `path`: create its directories and a temporary file
    /// beside it, owned by the session's user with mode 0644.
    pub fn begin_write(&self, path: &RelPath) -> Result<PendingWrite> {
        let (dir, name) = self.make_parents(path)?;
        let suffix: u64 = rand::thread_rng().gen();
        let tmp = cstring(&format!("{UPLOAD_PREFIX}{suffix:016x}"))?;
        let fd = open_beneath(
            dir.as_raw_fd(),
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        )?;
        let pending = PendingWrite {
            dir,
            tmp,
            name,
            file: None,
            done: false,
        };
        self.give(&fd, 0o644)?;
        Ok(pending.with_file(fd))
    }

    /// Delete a file, symlink or empty directory (never following a link).
    pub fn remove(&self, path: &RelPath) -> Result<()> {
        let (dir, name) = path.split().ok_or(WorkspaceFsError::Forbidden)?;
        let dirfd = self.open_dir(dir)?;
        let c = cstring(name)?;
        match unlinkat(
            Some(dirfd.as_raw_fd()),
            c.as_c_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) => unlinkat(
                Some(dirfd.as_raw_fd()),
                c.as_c_str(),
                UnlinkatFlags::RemoveDir,
            )
            .map_err(|e| WorkspaceFsError::from_errno("rmdir", e)),
            Err(e) => Err(WorkspaceFsError::from_errno("unlinkat", e)),
        }
    }

    /// Make the directory `path` and any missing parents (owned by the session's user,
    /// mode 0755). Returns false when a directory was there already.
    pub fn make_dir(&self, path: &RelPath) -> Result<bool> {
        let (dir, name) = self.make_parents(path)?;
        match mkdirat(
            Some(dir.as_raw_fd()),
            name.as_c_str(),
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => {
                let fd = open_beneath(
                    dir.as_raw_fd(),
                    &name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )?;
                self.give(&fd, 0o755)?;
                Ok(true)
            }
            Err(Errno::EEXIST) => match kind_of(dir.as_raw_fd(), &name) {
                Some(EntryKind::Dir) => Ok(false),
                Some(EntryKind::Symlink) => Err(WorkspaceFsError::Forbidden),
                _ => Err(WorkspaceFsError::NotADirectory),
            },
            Err(e) => Err(WorkspaceFsError::from_errno("mkdirat", e)),
        }
    }

    /// Move `from` to `to` (replacing a file there), making `to`'s missing parents. Only
    /// directories reached without a symlink take part; a symlink is moved as itself.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<()> {
        let (src_dir, src_name) = from.split().ok_or(WorkspaceFsError::Forbidden)?;
        if to.is_root() {
            return Err(WorkspaceFsError::Forbidden);
        }
        let src = self.open_dir(src_dir)?;
        let src_name = cstring(src_name)?;
        let (dst, dst_name) = self.make_parents(to)?;
        renameat(
            Some(src.as_raw_fd()),
            src_name.as_c_str(),
            Some(dst.as_raw_fd()),
            dst_name.as_c_str(),
        )
        .map_err(|e| WorkspaceFsError::from_errno("renameat", e))
    }

    /// What is at `path` (a symlink is described as itself, never followed).
    pub fn stat(&self, path: &RelPath) -> Result<DirEntry> {
        let (st, name) = match path.split() {
            None => {
                let fd = self.open_dir("")?;
                let st =
                    fstat(fd.as_raw_fd()).map_err(|e| WorkspaceFsError::from_errno("fstat", e))?;
                (st, String::new())
            }
            Some((dir, name)) => {
                let fd = self.open_dir(dir)?;
                let c = cstring(name)?;
                let st = fstatat(
                    Some(fd.as_raw_fd()),
                    c.as_c_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| WorkspaceFsError::from_errno("fstatat", e))?;
                (st, name.to_string())
            }
        };
        Ok(DirEntry {
            name,
            size: st.st_size as u64,
            modified: mtime(&st),
            kind: EntryKind::of(&st),
            mode: st.st_mode & 0o7777,
        })
    }

    /// List a directory: at most `max` entries sorted by name, and whether
    /// more were left out.
    pub fn list(&self, path: &RelPath, max: usize) -> Result<(Vec<DirEntry>, bool)> {
        let fd = self.open_dir(path.as_str())?;
        let raw = fd.as_raw_fd();
        let mut dir = Dir::from(fd).map_err(|e| WorkspaceFsError::from_errno("fdopendir", e))?;
        let mut out = Vec::new();
        let mut more = false;
        for ent in dir.iter() {
            let ent = ent.map_err(|e| WorkspaceFsError::from_errno("readdir", e))?;
            let name = ent.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if out.len() >= max {
                more = true;
                break;
            }
            // Vanished since readdir: skip it.
            let Ok(st) = fstatat(Some(raw), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            out.push(DirEntry {
                name: OsStr::from_bytes(name.to_bytes())
                    .to_string_lossy()
                    .into_owned(),
                size: st.st_size as u64,
                modified: mtime(&st),
                kind: EntryKind::of(&st),
                mode: st.st_mode & 0o7777,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, more))
    }

    /// The regular files of the workspace, walking at most `max_entries`
    /// entries and `max_depth` levels, never following symlinks, skipping
    /// uploads in progress.
    pub fn snapshot(&self, max_entries: usize, max_depth: usize) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut budget = max_entries;
        if let Ok(fd) = self.open_dir("") {
            walk(fd, "", max_depth, &mut budget, &mut snap);
        }
        snap
    }
}

fn walk(fd: OwnedFd, prefix: &str, depth: usize, budget: &mut usize, snap: &mut Snapshot) {
    let raw = fd.as_raw_fd();
    let Ok(mut dir) = Dir::from(fd) else {
        return;
    };
    let mut subdirs = Vec::new();
    for ent in dir.iter() {
        let Ok(ent) = ent else { break };
        let name = ent.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let Ok(name_str) = name.to_str() else {
            continue;
        };
        let Ok(st) = fstatat(Some(raw), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let path = if prefix.is_empty() {
            name_str.to_string()
        } else {
            format!("{prefix}/{name_str}")
        };
        match EntryKind::of(&st) {
            EntryKind::File if !name_str.starts_with(UPLOAD_PREFIX) => {
                snap.files.insert(
                    path,
                    (st.st_mtime, st.st_mtime_nsec, st.st_size as u64, st.st_ino),
                );
            }
            // The session's installed packages (`/workspace/.pyxis`) are no cell's output.
            EntryKind::Dir if prefix.is_empty() && name_str == ".pyxis" => {}
            EntryKind::Dir if depth > 1 => subdirs.push((name.to_owned(), path)),
            _ => {}
        }
    }
    // `dir` still owns `raw` here.
    for (name, path) in subdirs {
        if *budget == 0 {
            break;
        }
        if let Ok(sub) = open_beneath(
            raw,
            &name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        ) {
            walk(sub, &path, depth - 1, budget, snap);
        }
    }
    drop(dir);
}

/// An upload in progress: a temporary file beside its target. Dropped
/// without [`PendingWrite::commit`], the temporary file is removed and the
/// target is untouched.
pub struct PendingWrite {
    dir: OwnedFd,
    tmp: CString,
    name: CString,
    file: Option<std::fs::File>,
    done: bool,
}

impl PendingWrite {
    fn with_file(mut self, fd: OwnedFd) -> Self {
        self.file = Some(std::fs::File::from(fd));
        self
    }

    /// The temporary file to write to (once).
    pub fn take_file(&mut self) -> Option<std::fs::File> {
        self.file.take()
    }

    /// Rename the temporary file over the target.
    pub fn commit(mut self) -> Result<()> {
        let dir = self.dir.as_raw_fd();
        renameat(
            Some(dir),
            self.tmp.as_c_str(),
            Some(dir),
            self.name.as_c_str(),
        )
        .map_err(|e| WorkspaceFsError::from_errno("renameat", e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.done {
            let _ = unlinkat(
                Some(self.dir.as_raw_fd()),
                self.tmp.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, WorkspaceFs) {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let ws = WorkspaceFs::open(dir.path(), uid, gid).unwrap();
        (dir, ws)
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s, false).unwrap()
    }

    #[test]
    fn client_paths_are_validated() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a\0b",
            "",
        ] {
            assert!(RelPath::parse(bad, false).is_err(), "{bad:?}");
        }
        assert!(RelPath::parse(&"x".repeat(256), false).is_err());
        assert!(RelPath::parse(&"x".repeat(255), false).is_ok());
        assert!(RelPath::parse(&["d"; 2100].join("/"), false).is_err());
        assert_eq!(p("a/b/").as_str(), "a/b");
        assert!(RelPath::parse("", true).unwrap().is_root());
        assert_eq!(p("a").join(&p("b/c")).unwrap().as_str(), "a/b/c");
    }

    #[test]
    fn writes_are_atomic_and_symlinks_are_never_followed() {
        let (dir, ws) = ws();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("s")).unwrap();

        let mut w = ws.begin_write(&p("a/b/c.txt")).unwrap();
        std::io::Write::write_all(&mut w.take_file().unwrap(), b"new").unwrap();
        // Not visible before the commit.
        assert!(ws.open_read(&p("a/b/c.txt")).is_err());
        w.commit().unwrap();
        let (mut f, size) = ws.open_read(&p("a/b/c.txt")).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!((s.as_str(), size), ("new", 3));
        // An abandoned write leaves no trace.
        let w = ws.begin_write(&p("a/b/c.txt")).unwrap();
        drop(w);
        let (list, more) = ws.list(&p("a/b"), 100).unwrap();
        assert!(!more);
        assert_eq!(list.len(), 1);

        for path in ["s", "out/secret", "out"] {
            assert!(
                matches!(ws.open_read(&p(path)), Err(WorkspaceFsError::Forbidden)),
                "read {path}"
            );
        }
        assert!(matches!(
            ws.begin_write(&p("out/new")),
            Err(WorkspaceFsError::Forbidden)
        ));
        assert!(matches!(
            ws.list(&p("out"), 10),
            Err(WorkspaceFsError::Forbidden)
        ));
        assert!(!outside.path().join("new").exists());

        let snap = ws.snapshot(1000, 16);
        assert_eq!(
            Snapshot::default().changed(&snap),
            [("a/b/c.txt".to_string(), 3)]
        );
    }
}
