//! The server's open-file limit. Every live session holds a few descriptors in the server
//! (its kernel's socket, its init's pidfd, a command's or a context's pipes) and every client
//! connection one more, so the soft `RLIMIT_NOFILE` that shells and systemd give a process by
//! default (1,024) runs out at about 300 sessions. The server raises its soft limit to the
//! hard one at start, says when even that is short of what its caps need, and a create that
//! still runs out of descriptors answers 503 `capacity_exhausted`, not an internal error.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors a live session may hold in the server at once (measured: ~4 for an idle
/// session; a running command or a second context adds a few).
pub const PER_SESSION: u64 = 8;
/// Descriptors the server needs besides sessions and connections (listeners, the zygotes'
/// control sockets, the data directory, logs, the egress proxy's own).
pub const BASE: u64 = 256;
/// Never ask for more than this (the kernel's `fs.nr_open` default).
const CEILING: u64 = 1 << 20;

/// The soft limit before and after [`raise`], and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process was started with.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20).
pub fn raise() -> std::io::Result<OpenFiles> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = hard.min(CEILING).max(was);
    if want > was {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles { was, soft, hard })
}

/// Descriptors the server may need with these caps: every session and pooled sandbox at
/// [`PER_SESSION`], every allowed connection one.
pub fn needed(max_sessions: usize, pool_max_idle: usize, max_connections: usize) -> u64 {
    (max_sessions as u64 + pool_max_idle as u64) * PER_SESSION + max_connections as u64 + BASE
}

/// What to tell the operator when `limit` is short of `need`, if it is.
pub fn shortfall(limit: u64, need: u64) -> Option<String> {
    (limit < need).then(|| {
        format!(
            "the server may open {limit} files but its caps (PYXIS_MAX_SESSIONS, PYXIS_POOL_MAX_IDLE, \
             PYXIS_MAX_CONNECTIONS) may need about {need}: raise the hard limit (LimitNOFILE= in \
             systemd, `ulimit -Hn` in a shell, --ulimit nofile= in a container) or lower the caps; \
             creates past the limit answer 503 capacity_exhausted"
        )
    })
}

/// Whether an error (or one of its sources) is running out of file descriptors, in this
/// process (`EMFILE`) or the system (`ENFILE`).
pub fn is_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                return true;
            }
        }
        if let Some(errno) = err.downcast_ref::<nix::errno::Errno>() {
            if matches!(
                *errno,
                nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    // Errors carried as text (from the zygote's worker thread, from the sandbox library)
    // keep the OS's wording.
    let text = e.to_string();
    text.contains("Too many open files")
        || text.contains("os error 24")
        || text.contains("os error 23")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_never_lowers() {
        let got = raise().unwrap();
        assert!(got.soft >= got.was);
        assert_eq!(got.soft, got.hard.min(CEILING).max(got.was));
        // A second call changes nothing.
        let again = raise().unwrap();
        assert_eq!(again.soft, got.soft);
        assert_eq!(again.was, got.soft);
    }

    #[test]
    fn the_need_grows_with_the_caps_and_a_short_limit_is_named() {
        let small = needed(64, 4, 4096);
        assert_eq!(small, (64 + 4) * PER_SESSION + 4096 + BASE);
        assert!(needed(2000, 4, 4096) > small);
        assert!(shortfall(1024, small).unwrap().contains("LimitNOFILE"));
        assert_eq!(shortfall(small, small), None);
    }

    #[test]
    fn exhaustion_is_found_in_sources_and_in_text() {
        let io = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_exhaustion(&io));
        let wrapped =
            anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENFILE)).context("dup");
        assert!(is_exhaustion(wrapped.as_ref()));
        let text = std::io::Error::other(
            "the interpreter zygote is unavailable: dup: Too many open files (os error 24)",
        );
        assert!(is_exhaustion(&text));
        let other = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(!is_exhaustion(&other));
    }
}
