//! The system calls a child of `clone` makes that rustix does not offer,
//! made through the kernel directly.
//!
//! A child of [`clone_vm`](crate::clone_vm) runs in its parent's memory, on
//! the thread-local storage of the thread that cloned it, until `execve`.
//! The C library's wrappers write `errno` in that storage when a call fails,
//! which the parent's thread may be using at the same moment. These
//! wrappers (over the `syscalls` crate) return the error instead and touch
//! no memory but their arguments: with them and rustix, whose Linux backend
//! makes raw system calls too, a child writes nothing but its own stack.

use std::ffi::{CStr, c_char};

use rustix::io::Errno;
use syscalls::Sysno;

#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
compile_error!("rt_sigaction takes a restorer argument on SPARC, which `raw` does not pass");

/// The size of the kernel's signal set, which `rt_sigaction` and
/// `rt_sigprocmask` check: 64 signals, 128 on MIPS.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
const SIGSET_BYTES: usize = 8;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const SIGSET_BYTES: usize = 16;

/// The word of the kernel's `struct sigaction` that holds the handler: the
/// first, but on MIPS, where the flags come first.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
const HANDLER_WORD: usize = 0;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const HANDLER_WORD: usize = 1;

/// Room for the kernel's `struct sigaction` of any architecture (a handler,
/// flags, perhaps a restorer, and a signal set of up to 16 bytes), as
/// words. All zero is the default action, no flags and an empty mask.
type SigactionWords = [usize; 8];

/// The highest signal number.
const LAST_SIGNAL: usize = SIGSET_BYTES * 8;

/// `execve(2)`. Returns only on failure.
///
/// # Safety
///
/// `argv` and `envp` must be null-terminated arrays of pointers to C
/// strings, all valid for the call.
pub(crate) unsafe fn execve(
    program: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Errno {
    // SAFETY: the pointers are valid by the caller's promise; `execve`
    // reads them and replaces this process's memory, or fails.
    let result = unsafe {
        syscalls::syscall3(
            Sysno::execve,
            program.as_ptr() as usize,
            argv as usize,
            envp as usize,
        )
    };
    match result {
        Ok(_) => Errno::INVAL,
        Err(errno) => errno_of(errno),
    }
}

/// `exit_group(2)`: leaves without running any of the parent's destructors
/// or `atexit` handlers, which belong to the parent.
pub(crate) fn exit(status: i32) -> ! {
    loop {
        // SAFETY: `exit_group` takes no pointers and does not return.
        let _ = unsafe { syscalls::syscall1(Sysno::exit_group, status as usize) };
    }
}

/// Unblocks every signal in the calling thread.
pub(crate) fn unblock_all_signals() -> Result<(), Errno> {
    let empty = [0u8; SIGSET_BYTES];
    // SAFETY: `rt_sigprocmask` reads the set on this frame and writes
    // nothing (no old set is asked for).
    unsafe {
        syscalls::syscall4(
            Sysno::rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            empty.as_ptr() as usize,
            0,
            SIGSET_BYTES,
        )
    }
    .map(drop)
    .map_err(errno_of)
}

/// Sets `signal`'s action to the default one.
pub(crate) fn set_default_action(signal: libc::c_int) -> Result<(), Errno> {
    let default: SigactionWords = [0; 8];
    // SAFETY: `rt_sigaction` reads the structure on this frame, which is at
    // least as large as the kernel's, and writes nothing.
    unsafe {
        syscalls::syscall4(
            Sysno::rt_sigaction,
            signal as usize,
            default.as_ptr() as usize,
            0,
            SIGSET_BYTES,
        )
    }
    .map(drop)
    .map_err(errno_of)
}

/// Resets to its default action every signal whose disposition is a
/// handler, as `posix_spawn` does in its child: a child sharing its
/// parent's memory must never run a handler of the parent. Ignored signals
/// stay ignored (`execve` keeps them ignored as well). Signals the kernel
/// does not let a process change (`SIGKILL`, `SIGSTOP`) are skipped by the
/// kernel's refusal.
pub(crate) fn reset_handled_signals() {
    for signal in 1..=LAST_SIGNAL {
        let mut current: SigactionWords = [0; 8];
        // SAFETY: `rt_sigaction` writes the kernel's structure into the
        // words on this frame, which are at least as large, and reads
        // nothing (no new action).
        let asked = unsafe {
            syscalls::syscall4(
                Sysno::rt_sigaction,
                signal,
                0,
                current.as_mut_ptr() as usize,
                SIGSET_BYTES,
            )
        };
        let handler = current[HANDLER_WORD];
        if asked.is_ok() && handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            // A valid signal whose action could be read can be reset.
            let _ = set_default_action(signal as libc::c_int);
        }
    }
}

/// Marks every descriptor from `first` on close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`).
pub(crate) fn mark_cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: `close_range` takes no pointers.
    unsafe {
        syscalls::syscall3(
            Sysno::close_range,
            first as usize,
            u32::MAX as usize,
            libc::CLOSE_RANGE_CLOEXEC as usize,
        )
    }
    .map(drop)
    .map_err(errno_of)
}

fn errno_of(errno: syscalls::Errno) -> Errno {
    Errno::from_raw_os_error(errno.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_execve_returns_its_error() {
        let argv = [std::ptr::null()];
        // SAFETY: both arrays are null-terminated and live on this frame.
        let errno = unsafe { execve(c"/nonexistent/program", argv.as_ptr(), argv.as_ptr()) };
        assert_eq!(errno, Errno::NOENT);
    }

    #[test]
    fn descriptors_from_the_first_on_are_marked_close_on_exec() {
        use std::os::fd::AsRawFd;
        let (read, write) = rustix::pipe::pipe().expect("a pipe without close-on-exec");
        let first = read.as_raw_fd().min(write.as_raw_fd());
        let flags = |fd| rustix::io::fcntl_getfd(fd).expect("getfd");
        assert!(!flags(&read).contains(rustix::io::FdFlags::CLOEXEC));
        mark_cloexec_from(u32::try_from(first).expect("a descriptor")).expect("close_range");
        assert!(flags(&read).contains(rustix::io::FdFlags::CLOEXEC));
        assert!(flags(&write).contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn the_kernel_s_sigaction_fits_and_sigkill_cannot_be_changed() {
        assert_eq!(set_default_action(libc::SIGKILL), Err(Errno::INVAL));
        // SIGURG's default action is to do nothing: setting it changes
        // nothing for this test process.
        assert_eq!(set_default_action(libc::SIGURG), Ok(()));
    }
}
