//! Dropping privileges: capabilities, groups, ids, `no_new_privs`, rlimits, `PDEATHSIG`.

use std::io;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

use crate::spec::Rlimits;
use crate::sys;

type Result<T> = std::result::Result<T, CredentialsError>;

/// A failure while dropping privileges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Reading `/proc/sys/kernel/cap_last_cap` failed.
    #[error("read {path}: {source}")]
    ReadLastCap {
        /// The file.
        path: &'static str,
        /// The error.
        source: io::Error,
    },
    /// `PR_CAPBSET_DROP` failed.
    #[error("drop capability {cap} from the bounding set: {source}")]
    DropBoundingCap {
        /// Capability number.
        cap: u32,
        /// The error.
        source: io::Error,
    },
    /// Clearing ambient capabilities failed.
    #[error("clear ambient capabilities: {0}")]
    ClearAmbientCaps(#[source] io::Error),
    /// `setrlimit` failed.
    #[error("setrlimit {resource}: {source}")]
    SetRlimit {
        /// The resource.
        resource: &'static str,
        /// The error.
        source: io::Error,
    },
    /// `setgroups` failed.
    #[error("setgroups: {0}")]
    SetGroups(#[source] io::Error),
    /// `setresgid` failed.
    #[error("setresgid {gid}: {source}")]
    SetGid {
        /// Target gid.
        gid: u32,
        /// The error.
        source: io::Error,
    },
    /// `setresuid` failed.
    #[error("setresuid {uid}: {source}")]
    SetUid {
        /// Target uid.
        uid: u32,
        /// The error.
        source: io::Error,
    },
    /// A `prctl` failed.
    #[error("prctl {what}: {source}")]
    Prctl {
        /// Which option.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

/// `RLIMIT_MSGQUEUE`: bytes of POSIX message queues of the sandbox's uid; the kernel's own
/// default (`MQ_BYTES_MAX`), set so that a server started with a higher limit does not pass it on.
const MSGQUEUE_BYTES: u64 = 819_200;
/// `RLIMIT_MEMLOCK`: bytes the sandbox may lock in memory (the kernel's default since 5.16).
/// Locked pages are still charged to the memory cgroup; this keeps them few.
const MEMLOCK_BYTES: u64 = 8 << 20;
/// `RLIMIT_SIGPENDING`: queued signals of the sandbox's uid (the host default is half of
/// `threads-max`).
const SIGPENDING: u64 = 4096;

/// Sets the rlimits (soft = hard; core 0; no real-time priority, no nice value below 0, and
/// the fixed bounds above). Runs while still root, so a limit above the inherited hard limit
/// can be set too. The per-uid ones (`RLIMIT_NPROC`, `RLIMIT_MSGQUEUE`, `RLIMIT_SIGPENDING`)
/// are per sandbox, since each live sandbox has a uid of its own.
pub fn set_rlimits(limits: &Rlimits) -> Result<()> {
    let all = [
        (Resource::RLIMIT_CORE, "core", 0),
        (Resource::RLIMIT_FSIZE, "fsize", limits.fsize_bytes),
        (Resource::RLIMIT_NOFILE, "nofile", limits.nofile),
        (Resource::RLIMIT_NPROC, "nproc", limits.nproc),
        (Resource::RLIMIT_MSGQUEUE, "msgqueue", MSGQUEUE_BYTES),
        (Resource::RLIMIT_MEMLOCK, "memlock", MEMLOCK_BYTES),
        (Resource::RLIMIT_SIGPENDING, "sigpending", SIGPENDING),
        // A SCHED_FIFO busy loop would starve the host's ordinary tasks.
        (Resource::RLIMIT_RTPRIO, "rtprio", 0),
        (Resource::RLIMIT_NICE, "nice", 0),
    ];
    for (resource, name, value) in all {
        let set = setrlimit(resource, value, value).or_else(|e| match e {
            // Raising a hard limit needs CAP_SYS_RESOURCE where the host's limit is lower
            // (a server started with a small `ulimit -Hn`): the inherited hard limit is
            // tighter than the one asked, so it is kept.
            nix::errno::Errno::EPERM => {
                let (_, hard) = nix::sys::resource::getrlimit(resource)?;
                setrlimit(resource, value.min(hard), value.min(hard))
            }
            other => Err(other),
        });
        set.map_err(|e| CredentialsError::SetRlimit {
            resource: name,
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Empties the bounding and ambient capability sets, switches to `uid`/`gid` (which clears
/// the permitted and effective sets), and sets `no_new_privs` and `PDEATHSIG`.
pub fn drop_to(uid: u32, gid: u32) -> Result<()> {
    let last_cap: u32 = std::fs::read_to_string(CAP_LAST_CAP)
        .map_err(|source| CredentialsError::ReadLastCap {
            path: CAP_LAST_CAP,
            source,
        })?
        .trim()
        .parse()
        .map_err(|_| CredentialsError::ReadLastCap {
            path: CAP_LAST_CAP,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    for cap in 0..=last_cap {
        sys::capbset_drop(cap)
            .map_err(|source| CredentialsError::DropBoundingCap { cap, source })?;
    }
    sys::clear_ambient_caps().map_err(CredentialsError::ClearAmbientCaps)?;

    nix::unistd::setgroups(&[]).map_err(|e| CredentialsError::SetGroups(e.into()))?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| CredentialsError::SetGid {
        gid,
        source: e.into(),
    })?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| CredentialsError::SetUid {
        uid,
        source: e.into(),
    })?;

    let prctl = |what: &'static str| {
        move |e: nix::Error| CredentialsError::Prctl {
            what,
            source: e.into(),
        }
    };
    // The uid change made us non-dumpable, which turns /proc/self/* into root-owned files the
    // sandbox could not read (e.g. /proc/self/fd). Nothing privileged is left to protect.
    nix::sys::prctl::set_dumpable(true).map_err(prctl("PR_SET_DUMPABLE"))?;
    nix::sys::prctl::set_no_new_privs().map_err(prctl("PR_SET_NO_NEW_PRIVS"))?;
    // Changing credentials cleared the parent-death signal; set it again.
    set_parent_death_kill().map_err(|source| CredentialsError::Prctl {
        what: "PR_SET_PDEATHSIG",
        source,
    })
}

/// `PR_SET_PDEATHSIG` = `SIGKILL`.
pub fn set_parent_death_kill() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
}
