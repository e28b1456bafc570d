//! The sandbox's init (process B, pid 1 of the pid namespace).
//!
//! It reaps every orphan (double-forked daemons end up here), forwards the interrupt and
//! termination signals to the kernel (C), and exits with the kernel's status when the kernel
//! exits, which ends the pid namespace and kills whatever is left in it.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;

/// Signals init waits for: `SIGCHLD` to reap, the rest to forward to the kernel.
const HANDLED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The set of [`HANDLED`] signals, to block before forking the kernel.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in HANDLED {
        set.add(signal);
    }
    set
}

/// Runs init until `kernel` exits, then exits with its status (128 + signal if killed).
/// `signals` must be blocked already.
pub fn run(kernel: Pid, signals: &SigSet) -> ! {
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(kernel) {
                    sys::exit_now(code);
                }
            }
            Ok(signal) => {
                let _ = kill(kernel, signal);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every zombie; returns the kernel's exit code if it was among them.
fn reap(kernel: Pid) -> Option<i32> {
    let mut kernel_code = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == kernel => kernel_code = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == kernel => {
                kernel_code = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) => return kernel_code,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return kernel_code,
        }
    }
}
