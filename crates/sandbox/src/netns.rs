//! Settings of the sandbox's own network namespace, made by its init right after `unshare`.
//!
//! Only what the kernel keeps per network namespace can be set here; the host's own values
//! (and every other namespace's) are untouched. `net.core.rmem_max`/`wmem_max`, `tcp_mem` and
//! `udp_mem` are host-global and stay the host's.

use std::io;
use std::path::PathBuf;

/// A failure to set a sysctl of the sandbox's network namespace.
#[derive(Debug, thiserror::Error)]
#[error("set {path}: {source}")]
pub struct NetSysctlError {
    /// The `/proc/sys` file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// `net.ipv4.tcp_rmem` and `tcp_wmem` (minimum, initial, maximum bytes per socket; IPv6 uses
/// them too). The host defaults start a receive buffer at 128 KiB and let it grow to 32 MiB.
/// Where socket buffers are charged to a limit of their own (cgroup v1's `kmem.tcp`), the
/// kernel still lets every connection queue about its initial window past that limit, so
/// many idle connections multiply it: at 128 KiB that came to about 86 KiB of uncounted
/// memory per connection, at 16 KiB to about 11 KiB (measured on Linux 6.18). Autotuning
/// still grows the buffers of a busy connection (loopback throughput stayed at the default's
/// 1 GiB/s). The maximum is net.core's default `rmem_max`.
pub(crate) const TCP_BUFFERS: &str = "4096 16384 4194304";

/// The sysctls, as (file under `/proc/sys`, value).
const SETTINGS: [(&str, &str); 2] = [
    ("net/ipv4/tcp_rmem", TCP_BUFFERS),
    ("net/ipv4/tcp_wmem", TCP_BUFFERS),
];

/// Writes [`SETTINGS`] through `proc_sys` (the host's `/proc/sys` before `pivot_root`: its
/// `net` directory shows the namespace of the process that opens a file, the new one).
pub(crate) fn bound_socket_buffers(proc_sys: &std::path::Path) -> Result<(), NetSysctlError> {
    for (file, value) in SETTINGS {
        let path = proc_sys.join(file);
        std::fs::write(&path, value).map_err(|source| NetSysctlError { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_setting_under_the_given_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net/ipv4")).expect("mkdir");
        bound_socket_buffers(dir.path()).expect("written");
        for (file, value) in SETTINGS {
            let got = std::fs::read_to_string(dir.path().join(file)).expect("read");
            assert_eq!(got, value);
        }
        let missing = tempfile::tempdir().expect("tempdir");
        let err = bound_socket_buffers(missing.path()).expect_err("no such directory");
        assert!(err.path.ends_with("net/ipv4/tcp_rmem"), "{err}");
    }

    #[test]
    fn tcp_buffers_are_three_ordered_sizes() {
        let sizes: Vec<u64> = TCP_BUFFERS
            .split(' ')
            .map(|s| s.parse().expect("a number"))
            .collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    }
}
