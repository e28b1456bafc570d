//! The C ABI used by the Python zygote through ctypes.
//!
//! ```c
//! int pyxis_sandbox_prepare(const char *init_program, char *err, size_t errlen);
//! int pyxis_sandbox_spawn(const char *spec_json, size_t len, const int *fds, size_t nfds,
//!                         int parent_pidfd, char *err, size_t errlen);
//! ```
//!
//! Both return -1 on error, with a NUL-terminated (truncated) message in `err`.
//! `pyxis_sandbox_prepare` (see [`crate::prepare`]) returns 0 on success.
//! `pyxis_sandbox_spawn` (see [`crate::spawn`]) returns the host pid of the sandbox's kernel
//! process in the caller, and 0 in that kernel process, the only other process in which it
//! returns. Panics are caught and never unwind into C.

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::SandboxError;
use crate::process::{Handover, Spawned};
use crate::spec::SandboxSpec;
use crate::sys;

/// Opens the init program and compiles the seccomp policy (call in the zygote, before
/// spawning).
///
/// # Safety
///
/// `init_program` must be a NUL-terminated string; `err` must be NULL or valid for writes of
/// `errlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn pyxis_sandbox_prepare(
    init_program: *const c_char,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: the caller guarantees a NUL-terminated string.
    let path = unsafe { sys::path_from_c(init_program) };
    let result = catch_unwind(|| crate::prepare(&path));
    // SAFETY: the caller guarantees `err`/`errlen`.
    unsafe { finish(result.map_err(|_| ()), err, errlen) }
}

/// Parses the JSON spec and calls [`crate::spawn`]. `fds` are the [`Handover`] descriptors;
/// `parent_pidfd` is a pidfd of the caller, or -1. The caller still owns the `fds`.
///
/// # Safety
///
/// `spec_json` must be valid for reads of `len` bytes, `fds` for reads of `nfds` ints (or
/// NULL with `nfds` 0); `err` must be NULL or valid for writes of `errlen` bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn pyxis_sandbox_spawn(
    spec_json: *const c_char,
    len: usize,
    fds: *const c_int,
    nfds: usize,
    parent_pidfd: c_int,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: the caller guarantees `len` readable bytes at `spec_json`.
    let json = unsafe { sys::bytes_from_raw(spec_json, len) };
    // SAFETY: the caller guarantees `nfds` readable ints at `fds`.
    let fds = unsafe { sys::ints_from_raw(fds, nfds) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let spec = SandboxSpec::from_json(json)?;
        let handover = Handover {
            fds: fds.to_vec(),
            parent_pidfd: (parent_pidfd >= 0).then_some(parent_pidfd),
        };
        crate::spawn(&spec, &handover)
    }));
    match result {
        Ok(Ok(Spawned::Caller { kernel, .. })) => kernel,
        Ok(Ok(Spawned::Kernel)) => 0,
        // SAFETY: the caller guarantees `err`/`errlen`.
        failed => unsafe { finish(failed.map(|r| r.map(drop)).map_err(drop), err, errlen) },
    }
}

/// Turns a caught result into the C return value and message.
///
/// # Safety
///
/// `err` must be NULL or valid for writes of `errlen` bytes.
unsafe fn finish(
    result: Result<Result<(), SandboxError>, ()>,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    let message = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(error)) => error.to_string(),
        Err(()) => "panic in pyxis sandbox".to_owned(),
    };
    // SAFETY: guaranteed by the caller.
    unsafe { sys::write_c_message(err, errlen, &message) };
    -1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn spawn_rejects_bad_json_with_a_message() {
        let json = b"{\"uid\": 0}";
        let mut buf = [0 as c_char; 128];
        // SAFETY: valid pointers and lengths.
        let rc = unsafe {
            pyxis_sandbox_spawn(
                json.as_ptr().cast(),
                json.len(),
                std::ptr::null(),
                0,
                -1,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert_eq!(rc, -1);
        // SAFETY: the message is NUL-terminated within `buf`.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert!(msg.to_string_lossy().contains("parse sandbox spec"));
    }

    #[test]
    fn prepare_reports_a_missing_init_program() {
        let mut buf = [0 as c_char; 128];
        // SAFETY: a NUL-terminated path; valid pointer and length.
        let rc = unsafe {
            pyxis_sandbox_prepare(c"/nonexistent/init".as_ptr(), buf.as_mut_ptr(), buf.len())
        };
        assert_eq!(rc, -1);
        // SAFETY: the message is NUL-terminated within `buf`.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert!(
            msg.to_string_lossy().contains("/nonexistent/init"),
            "{msg:?}"
        );
    }
}
