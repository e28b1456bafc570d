//! The seccomp policy: data in `policy.json`, compiled once with seccompiler.
//!
//! The policy is a deny list (default allow): a code interpreter runs arbitrary programs
//! (compilers, `pip`, numpy's threads), so an allow list would break them; what it denies is
//! the kernel surface an unprivileged process with no capabilities could still reach and that
//! a sandbox never needs (namespaces, mounts, ptrace, bpf, io_uring, keyrings, …). Each JSON
//! filter has one errno as its match action; all of them are installed, and since every
//! syscall matches at most one filter, each denied call gets the errno of its filter.

use std::sync::OnceLock;

use seccompiler::{sock_filter, BpfProgram, TargetArch};

type Result<T> = std::result::Result<T, SeccompError>;

/// The policy, as seccompiler JSON.
const POLICY_JSON: &str = include_str!("policy.json");

/// Compiled filters, shared by every `spawn` of this process (and its forks).
static FILTERS: OnceLock<Vec<BpfProgram>> = OnceLock::new();

/// A failure to compile or install the seccomp policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// This architecture has no policy.
    #[error("seccomp: unsupported architecture {0}")]
    UnsupportedArch(&'static str),
    /// `policy.json` does not compile.
    #[error("seccomp: compile policy: {0}")]
    Compile(String),
    /// The kernel refused a filter.
    #[error("seccomp: install filter: {0}")]
    Install(String),
}

/// Compiles the policy (once per process) and returns the filters to install.
pub fn filters() -> Result<&'static [BpfProgram]> {
    if let Some(filters) = FILTERS.get() {
        return Ok(filters);
    }
    let compiled = compile()?;
    Ok(FILTERS.get_or_init(|| compiled))
}

fn compile() -> Result<Vec<BpfProgram>> {
    let arch_name = std::env::consts::ARCH;
    let arch =
        TargetArch::try_from(arch_name).map_err(|_| SeccompError::UnsupportedArch(arch_name))?;
    let mut map = seccompiler::compile_from_json(POLICY_JSON.as_bytes(), arch)
        .map_err(|err| SeccompError::Compile(err.to_string()))?;
    let mut names: Vec<String> = map.keys().cloned().collect();
    names.sort();
    let mut filters: Vec<BpfProgram> = names.iter().filter_map(|name| map.remove(name)).collect();
    if arch_name == "x86_64" {
        filters.push(x32_guard());
    }
    Ok(filters)
}

/// Installs every filter on the calling thread (this sets `no_new_privs` too). Call it last
/// in the setup: after it, `mount`, `unshare` and friends fail.
pub fn install(filters: &[BpfProgram]) -> Result<()> {
    for filter in filters {
        seccompiler::apply_filter(filter).map_err(|err| SeccompError::Install(err.to_string()))?;
    }
    Ok(())
}

/// `AUDIT_ARCH_X86_64` from `linux/audit.h`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT` from `asm/unistd.h`: x32 syscalls are x86_64 syscalls with this bit,
/// so a default-allow list keyed on x86_64 numbers would let them all through.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets of `nr` and `arch` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// Classic BPF opcodes from `linux/bpf_common.h`.
/// `BPF_LD | BPF_W | BPF_ABS` (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
/// Actions from `linux/seccomp.h`.
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// A filter failing every x32 syscall with `ENOSYS`.
fn x32_guard() -> BpfProgram {
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JMP_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_for_supported_arches() {
        for arch in ["x86_64", "aarch64"] {
            let arch = TargetArch::try_from(arch).expect("known arch");
            let map = seccompiler::compile_from_json(POLICY_JSON.as_bytes(), arch)
                .expect("policy.json compiles");
            assert_eq!(map.len(), 4);
            assert!(map.values().all(|prog| !prog.is_empty()));
        }
        let first = filters().expect("filters compile on this host");
        assert!(!first.is_empty());
        // Cached: the same slice comes back.
        let again = filters().map(|f| f.as_ptr()).ok();
        assert_eq!(again, Some(first.as_ptr()));
    }

    #[test]
    fn policy_denies_the_design_list() {
        let policy: serde_json::Value =
            serde_json::from_str(POLICY_JSON).expect("policy.json is JSON");
        let denied: Vec<&str> = policy["deny_eperm"]["filter"]
            .as_array()
            .expect("a filter list")
            .iter()
            .filter_map(|rule| rule["syscall"].as_str())
            .collect();
        for name in [
            "unshare",
            "setns",
            "mount",
            "pivot_root",
            "ptrace",
            "bpf",
            "userfaultfd",
            "io_uring_setup",
            "keyctl",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "syslog",
            "clone",
            "fanotify_init",
        ] {
            assert!(denied.contains(&name), "{name} is not denied");
        }
        let enosys: Vec<&str> = policy["deny_enosys"]["filter"]
            .as_array()
            .expect("a filter list")
            .iter()
            .filter_map(|rule| rule["syscall"].as_str())
            .collect();
        assert!(enosys.contains(&"io_setup"), "io_setup is not denied");
        // Buffer sizes are ignored (errno 0: the call succeeds and changes nothing).
        let ignored = &policy["ignore_buffer_sizes"];
        assert_eq!(ignored["match_action"]["errno"], 0);
        let optnames: Vec<u64> = ignored["filter"]
            .as_array()
            .expect("a filter list")
            .iter()
            .filter_map(|rule| rule["args"][1]["val"].as_u64())
            .collect();
        assert_eq!(optnames, [7, 8], "SO_SNDBUF and SO_RCVBUF");
    }
}
