//! The C ABI used by the Python zygote through ctypes.
//!
//! ```c
//! int pyxis_sandbox_prepare(char *err, size_t errlen);
//! int pyxis_sandbox_enter(const char *spec_json, size_t len, char *err, size_t errlen);
//! ```
//!
//! Both return 0 on success and -1 on error, with a NUL-terminated (truncated) message in
//! `err`. `pyxis_sandbox_enter` returns 0 only in the sandboxed kernel process. Panics are
//! caught here and never unwind into C.

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::SandboxError;
use crate::spec::SandboxSpec;
use crate::sys;

/// Compiles and caches the seccomp policy (call in the zygote, before forking).
///
/// # Safety
///
/// `err` must be NULL or valid for writes of `errlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn pyxis_sandbox_prepare(err: *mut c_char, errlen: usize) -> c_int {
    let result = catch_unwind(crate::prepare);
    // SAFETY: the caller guarantees `err`/`errlen`.
    unsafe { finish(result.map_err(|_| ()), err, errlen) }
}

/// Parses the JSON spec and calls [`crate::enter`].
///
/// # Safety
///
/// `spec_json` must be valid for reads of `len` bytes; `err` must be NULL or valid for writes
/// of `errlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn pyxis_sandbox_enter(
    spec_json: *const c_char,
    len: usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: the caller guarantees `len` readable bytes at `spec_json`.
    let json = unsafe { sys::bytes_from_raw(spec_json, len) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let spec = SandboxSpec::from_json(json)?;
        crate::enter(&spec)
    }));
    // SAFETY: the caller guarantees `err`/`errlen`.
    unsafe { finish(result.map_err(|_| ()), err, errlen) }
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
    fn enter_rejects_bad_json_with_a_message() {
        let json = b"{\"uid\": 0}";
        let mut buf = [0 as c_char; 128];
        // SAFETY: valid pointers and lengths.
        let rc = unsafe {
            pyxis_sandbox_enter(
                json.as_ptr().cast(),
                json.len(),
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
    fn prepare_succeeds() {
        let mut buf = [0 as c_char; 128];
        // SAFETY: valid pointer and length.
        let rc = unsafe { pyxis_sandbox_prepare(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(rc, 0);
    }
}
