//! Creating a child that shares this process's memory until it executes
//! its program, as `posix_spawn` does.
//!
//! A `clone` without `CLONE_VM` behaves as `fork`: the kernel copies the
//! parent's page tables into the child, tears them down again at the
//! child's `execve`, and the parent then takes a copy-on-write fault on
//! every page it writes. That cost grows with the parent's resident memory,
//! so a worker that holds a large build graph would pay more per builder
//! the larger the graph. With `CLONE_VM` the child runs in the parent's
//! memory, on a stack of its own ([`ChildStack`]), until its `execve` gives
//! it a memory of its own.
//!
//! Sharing memory adds three obligations to those of any child of `clone`
//! (no allocation, no locks: see `child.rs`):
//!
//! - The child must never run on the parent's stack: it gets a mapping of
//!   its own, which must stay mapped until the child has executed its
//!   program or exited. Its entry point is a trampoline that `libc::clone`
//!   calls on that stack; it never returns into the parent's frames.
//! - No handler of the parent may ever run in the child, where it would
//!   work on the parent's memory. Signals are blocked in the calling thread
//!   around the `clone` ([`SignalsBlocked`]), so the child starts with all of
//!   them blocked; its first act is to reset every handled signal to its
//!   default action, and only its program's setup unblocks them.
//! - The child runs on the calling thread's thread-local storage, `errno`
//!   among it, so it must not touch either: it makes raw system calls only
//!   (rustix's, and [`crate::raw`]'s where rustix has none), which return
//!   their errors instead of writing `errno`. Then the parent's threads,
//!   the calling one included, may run on meanwhile as they like, as long
//!   as what the child reads stays alive and unchanged.
//!
//! With `CLONE_VFORK` ([`spawn_vfork`]) the calling thread is suspended
//! until the child has executed its program or exited, which keeps what the
//! child reads alive without further ado; without it ([`clone_vm`]) the
//! caller keeps it alive until it sees the child executed or gone.

use std::ffi::c_void;
use std::io;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use rustix::process::Pid;

use crate::child;

/// The usable size of a child's stack. The children's code is a few frames
/// of system call wrappers; this leaves ample room, and only the pages the
/// child touches are ever backed by memory.
const STACK_BYTES: usize = 256 * 1024;

/// A stack for a child that shares the parent's memory: an anonymous
/// mapping with an inaccessible guard page at its low end (stacks grow
/// down), so that an overflow faults instead of writing over whatever is
/// mapped below. Unmapped on drop.
pub(crate) struct ChildStack {
    base: NonNull<c_void>,
    len: usize,
}

// SAFETY: the stack is a mapping of this process, usable from any thread;
// the value only unmaps it on drop.
unsafe impl Send for ChildStack {}

impl ChildStack {
    /// Maps a new stack.
    pub(crate) fn new() -> io::Result<ChildStack> {
        let guard = rustix::param::page_size();
        let len = STACK_BYTES + guard;
        // SAFETY: a new private anonymous mapping at an address the kernel
        // chooses overlaps no memory this process uses.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::STACK,
            )
        }?;
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // From here on, `Drop` unmaps the stack if the guard page fails.
        let stack = ChildStack { base, len };
        // SAFETY: the first page lies in the mapping just made, which
        // nothing uses yet.
        unsafe { rustix::mm::mprotect(base.as_ptr(), guard, MprotectFlags::empty()) }?;
        Ok(stack)
    }

    /// One past the highest byte of the stack, page-aligned.
    fn top(&mut self) -> *mut u8 {
        // SAFETY: `base + len` is one past the end of the mapping, which
        // `add` allows.
        unsafe { self.base.as_ptr().cast::<u8>().add(self.len) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own, and its users (children
        // made with it) are gone by the contracts of `clone_vm` and
        // `spawn_vfork`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.len) };
    }
}

/// Every signal blocked in the calling thread, until dropped, which
/// restores the thread's previous mask.
///
/// (glibc's `pthread_sigmask` leaves its two internal signals unblocked;
/// their handlers return at once unless the process sent the signal to
/// itself, which a child of [`clone_vm`] never does.)
pub(crate) struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    /// Blocks every signal in the calling thread.
    pub(crate) fn new() -> io::Result<SignalsBlocked> {
        // SAFETY: `sigfillset` writes the set it is given, and
        // `pthread_sigmask` reads one set and writes the other, all on this
        // frame. `pthread_sigmask` returns its error rather than setting
        // `errno`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut previous: libc::sigset_t = std::mem::zeroed();
            match libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous) {
                0 => Ok(SignalsBlocked { previous }),
                error => Err(io::Error::from_raw_os_error(error)),
            }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `pthread_sigmask` reads the saved set and writes nothing.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

/// Runs `in_child` in a child made with `clone(CLONE_VM | CLONE_VFORK |
/// flags)` (and `SIGCHLD` as its exit signal) on `stack`, with the calling
/// thread's signals blocked around the `clone` and its mask restored after.
/// Returns once the child has executed its program or exited: from then on
/// nothing of this process is used by the child, and `stack` may be reused
/// or dropped.
///
/// # Safety
///
/// `in_child` runs in this process's memory while the calling thread is
/// suspended (other threads run on). It must not return (the child then
/// exits with status 127), allocate, take a lock, touch thread-local
/// storage (`errno` among it: raw system calls only), or write any memory
/// but its own stack; it must not change what belongs to the memory as a
/// whole either (mappings, or its credentials: a change of those marks the
/// memory undumpable, the parent's `/proc` files with it). It must end with
/// `execve` or `exit_group`. Nothing it does may wait for the calling
/// thread, which is suspended until it ends.
pub(crate) unsafe fn spawn_vfork<F: Fn() + Copy>(
    flags: libc::c_int,
    stack: &mut ChildStack,
    in_child: F,
) -> io::Result<Pid> {
    let blocked = SignalsBlocked::new()?;
    // SAFETY: signals are blocked in this thread (`blocked`). With
    // CLONE_VFORK, `clone` returns only after the child executed its program
    // or exited, so `stack` and everything `in_child` reads are no longer
    // used when this returns. The rest is the caller's promise.
    let pid = unsafe { clone_vm(flags | libc::CLONE_VFORK, stack, &blocked, in_child) };
    drop(blocked);
    pid
}

/// Clones a child with `flags | CLONE_VM` (and `SIGCHLD` as its exit
/// signal) that runs on `stack`: it first resets every signal that has a
/// handler to its default action, then runs `in_child`. The caller's
/// signals must be blocked (`_blocked`), so that the child starts with all
/// of them blocked and no handler of the parent runs in it before the
/// reset; they may be unblocked as soon as this returns.
///
/// # Safety
///
/// `in_child` must keep the contract of [`spawn_vfork`]'s, except that
/// without `CLONE_VFORK` in `flags` the calling thread runs on while the
/// child runs, and the child may wait for it. Then (with `CLONE_VFORK`,
/// `clone` returns only once the child has executed its program or
/// exited) the caller must keep `stack` mapped, and everything `in_child`
/// reads alive and unchanged, until the child has executed its program or
/// exited.
pub(crate) unsafe fn clone_vm<F: Fn() + Copy>(
    flags: libc::c_int,
    stack: &mut ChildStack,
    _blocked: &SignalsBlocked,
    in_child: F,
) -> io::Result<Pid> {
    let start = Start { in_child };
    // The child's argument goes at the top of its own stack, below which it
    // runs: it stays valid as long as the stack, whatever becomes of this
    // frame. `Start<F>` is a few words (a closure of references and
    // descriptors), far below the stack's size.
    let align = std::mem::align_of::<Start<F>>().max(16);
    let arg = stack
        .top()
        .map_addr(|top| (top - std::mem::size_of::<Start<F>>()) & !(align - 1))
        .cast::<Start<F>>();
    // SAFETY: `arg` lies in the stack's writable part (the stack is far
    // larger than `Start<F>` plus alignment), is aligned for `Start<F>`,
    // and no child uses this stack now (`&mut`).
    unsafe { arg.write(start) };
    // SAFETY: the child runs `trampoline::<F>` on its own stack, below `arg`,
    // with `arg` as its argument; `libc::clone` never returns in the child.
    // The child writes only its stack (the contract of `in_child`, and
    // `raw::reset_handled_signals` writes nothing else); the rest is the
    // caller's promise.
    let ret = unsafe {
        libc::clone(
            trampoline::<F>,
            arg.cast::<c_void>(),
            flags | libc::CLONE_VM | libc::SIGCHLD,
            arg.cast::<c_void>(),
        )
    };
    if ret < 0 {
        // No child exists, so `errno` is this thread's alone.
        return Err(io::Error::last_os_error());
    }
    Pid::from_raw(ret).ok_or_else(|| io::Error::other(format!("clone returned {ret}")))
}

/// What the child's trampoline reads: its program.
#[derive(Clone, Copy)]
struct Start<F> {
    in_child: F,
}

/// The child's entry point, on its own stack.
extern "C" fn trampoline<F: Fn() + Copy>(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Start<F>` that `clone_vm` wrote at the top of
    // this stack, which stays mapped while the child runs.
    let start = unsafe { arg.cast::<Start<F>>().read() };
    crate::raw::reset_handled_signals();
    (start.in_child)();
    // Only reached if `in_child` broke its contract and returned.
    child::exit(127)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustix::pipe::PipeFlags;
    use rustix::process::WaitOptions;

    use crate::plan::null_terminated;

    fn wait(pid: Pid) -> rustix::process::WaitStatus {
        loop {
            match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
                Ok(Some((_, status))) => return status,
                Ok(None) => unreachable!("waitpid without WNOHANG"),
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => panic!("waitpid: {errno}"),
            }
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut out).expect("read");
        out
    }

    /// The mask of a `Sig...:` line of `/proc/.../status`.
    pub(crate) fn status_mask(status: &str, key: &str) -> u64 {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex mask")
    }

    /// This process's ignored signals, without SIGPIPE: what a builder
    /// should start with (the children reset SIGPIPE to its default).
    pub(crate) fn ignored_but_sigpipe() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status_mask(&status, "SigIgn:") & !(1 << (libc::SIGPIPE - 1))
    }

    /// The calling thread's signal mask.
    pub(crate) fn current_mask() -> libc::sigset_t {
        // SAFETY: reads the mask into a set on this frame.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask),
                0
            );
            mask
        }
    }

    pub(crate) fn is_member(mask: &libc::sigset_t, signal: libc::c_int) -> bool {
        // SAFETY: reads a set on the caller's frame.
        unsafe { libc::sigismember(mask, signal) == 1 }
    }

    /// The children of the calling thread that exist (running or zombies),
    /// as the kernel lists them.
    pub(crate) fn children_of_this_thread() -> String {
        let tid = rustix::thread::gettid().as_raw_nonzero();
        std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
            .expect("reading the thread's children")
            .trim()
            .to_owned()
    }

    static USR1_HANDLED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count_usr1(_: libc::c_int) {
        USR1_HANDLED.fetch_add(1, Ordering::SeqCst);
    }

    /// Installs a SIGUSR1 handler in this process (as pathlocks does).
    pub(crate) fn install_usr1_handler() {
        // SAFETY: the handler only touches an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_usr1 as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
    }

    /// Blocks `signals` in the calling thread; returns the old mask.
    pub(crate) fn block(signals: &[libc::c_int]) -> libc::sigset_t {
        // SAFETY: sets on this frame.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old), 0);
            old
        }
    }

    /// 200 MiB of touched heap: a parent whose page tables a fork-style
    /// child would copy. [`assert_heap_intact`] checks it after the spawns.
    pub(crate) fn big_heap() -> Vec<u8> {
        vec![1u8; 200 << 20]
    }

    /// The children shared the heap of [`big_heap`] and changed nothing.
    pub(crate) fn assert_heap_intact(heap: &[u8]) {
        let sum: usize = heap.iter().step_by(4096).map(|&b| usize::from(b)).sum();
        assert_eq!(sum, 200 << 8);
    }

    /// The calling thread's mask is `blocked` again after a spawn.
    pub(crate) fn assert_mask_is(blocked: &libc::sigset_t) {
        let after = current_mask();
        for signal in 1..=64 {
            assert_eq!(
                is_member(&after, signal),
                is_member(blocked, signal),
                "signal {signal}: the spawning thread's mask was not restored"
            );
        }
    }

    /// Checks that the mask `block(&[blocked])` set survived a spawn, then
    /// restores `old`.
    pub(crate) fn restore_mask_checking(old: &libc::sigset_t, blocked: libc::c_int) {
        let mask = current_mask();
        set_mask(old);
        assert!(is_member(&mask, blocked), "the mask was not restored");
        assert!(!is_member(&mask, libc::SIGHUP), "the mask was not restored");
    }

    pub(crate) fn set_mask(mask: &libc::sigset_t) {
        // SAFETY: reads a set on the caller's frame.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
    }

    /// Exec's `/bin/sh -c SCRIPT` with stdout on a pipe; returns its
    /// output and status.
    fn vfork_sh(script: &str) -> (String, rustix::process::WaitStatus) {
        let program = CString::new("/bin/sh").expect("cstring");
        let strings = [
            CString::new("sh").expect("cstring"),
            CString::new("-c").expect("cstring"),
            CString::new(script).expect("cstring"),
        ];
        let argv = null_terminated(&strings);
        let envp = [std::ptr::null::<libc::c_char>()];
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let out = write.as_raw_fd();
        let (program, argv, envp) = (&program, &argv, &envp);
        let mut stack = ChildStack::new().expect("stack");
        // SAFETY: the child only makes system calls on data prepared here
        // and execs or exits.
        let pid = unsafe {
            spawn_vfork(0, &mut stack, move || {
                // SAFETY: `out` is open until `spawn_vfork` returns.
                let out = BorrowedFd::borrow_raw(out);
                if rustix::stdio::dup2_stdout(out).is_err() || child::reset_signals().is_err() {
                    child::exit(2);
                }
                crate::raw::execve(program, argv.as_ptr(), envp.as_ptr());
                child::exit(3)
            })
        }
        .expect("spawn");
        drop(write);
        let output = read_all(read);
        (output, wait(pid))
    }

    #[test]
    fn children_of_a_big_parent_start_with_a_clean_signal_state() {
        install_usr1_handler();
        let old = block(&[libc::SIGUSR1, libc::SIGTERM, libc::SIGINT]);
        // A parent with 200 MiB resident: the children share it rather
        // than copy its page tables.
        let heap = big_heap();
        for _ in 0..20 {
            let (status_text, status) = vfork_sh("cat /proc/self/status");
            assert_eq!(status.exit_status(), Some(0), "{status_text}");
            assert_eq!(status_mask(&status_text, "SigBlk:"), 0, "{status_text}");
            assert_eq!(status_mask(&status_text, "SigCgt:"), 0, "{status_text}");
            let ignored = status_mask(&status_text, "SigIgn:");
            assert_eq!(ignored, ignored_but_sigpipe(), "{status_text}");
        }
        assert_heap_intact(&heap);
        restore_mask_checking(&old, libc::SIGUSR1);
    }

    #[test]
    fn a_parent_handler_never_runs_in_the_child() {
        install_usr1_handler();
        let before = USR1_HANDLED.load(Ordering::SeqCst);
        let mut stack = ChildStack::new().expect("stack");
        // The child unblocks its signals and sends itself SIGUSR1: with the
        // parent's handler still installed, the handler would run in the
        // shared memory (counting in the parent) and the child would exit
        // 0; reset to its default, SIGUSR1 ends the child.
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe {
            spawn_vfork(0, &mut stack, || {
                if child::reset_signals().is_err() {
                    child::exit(2);
                }
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::USR1,
                );
                child::exit(0)
            })
        }
        .expect("spawn");
        let status = wait(pid);
        assert_eq!(
            status.terminating_signal(),
            Some(libc::SIGUSR1),
            "{status:?}"
        );
        assert_eq!(USR1_HANDLED.load(Ordering::SeqCst), before);
    }

    #[test]
    fn a_failed_exec_reports_its_errno() {
        let program = CString::new("/nonexistent/program").expect("cstring");
        let argv = [program.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let out = write.as_raw_fd();
        let (program, argv, envp) = (&program, &argv, &envp);
        let mut stack = ChildStack::new().expect("stack");
        // SAFETY: the child only makes system calls on data prepared here
        // and execs or exits.
        let pid = unsafe {
            spawn_vfork(0, &mut stack, move || {
                let errno = crate::raw::execve(program, argv.as_ptr(), envp.as_ptr());
                let errno = errno.raw_os_error().to_ne_bytes();
                let _ = rustix::io::write(BorrowedFd::borrow_raw(out), &errno);
                child::exit(1)
            })
        }
        .expect("spawn");
        drop(write);
        let mut errno = [0u8; 4];
        assert_eq!(crate::spawn::read_full(&read, &mut errno).expect("read"), 4);
        assert_eq!(i32::from_ne_bytes(errno), libc::ENOENT);
        assert_eq!(wait(pid).exit_status(), Some(1));
        assert_eq!(children_of_this_thread(), "", "a child was left behind");
    }

    #[test]
    fn a_failing_child_leaves_the_parent_thread_s_errno_alone() {
        let program = CString::new("/nonexistent/program").expect("cstring");
        let argv = [program.as_ptr(), std::ptr::null()];
        let (program, argv) = (&program, &argv);
        let mut stack = ChildStack::new().expect("stack");
        let blocked = SignalsBlocked::new().expect("blocking signals");
        // SAFETY: `errno` of this thread, which only this thread uses.
        let errno = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        unsafe { errno.write(12345) };
        // SAFETY: the child only makes raw system calls that fail, on data
        // that outlives it (this frame waits for it), and exits.
        let pid = unsafe {
            clone_vm(0, &mut stack, &blocked, move || {
                let _ = crate::raw::execve(program, argv.as_ptr(), argv.as_ptr());
                let _ = crate::raw::set_default_action(libc::SIGKILL);
                let _ = crate::raw::mark_cloexec_from(u32::MAX);
                let _ = rustix::fs::open(c"/nonexistent", rustix::fs::OFlags::RDONLY, 0.into());
                child::exit(4)
            })
        }
        .expect("clone");
        drop(blocked);
        let status = wait(pid);
        assert_eq!(status.exit_status(), Some(4));
        // SAFETY: as above.
        assert_eq!(unsafe { errno.read() }, 12345, "the child wrote errno");
    }

    #[test]
    fn stacks_are_usable_and_guarded() {
        let mut stack = ChildStack::new().expect("stack");
        let top = stack.top();
        // SAFETY: the last byte below the top is in the writable part.
        unsafe { top.sub(1).write(7) };
        let page = rustix::param::page_size();
        let base = stack.base.as_ptr().cast::<u8>();
        // The guard page is the lowest page; the next one is writable.
        // SAFETY: as above.
        unsafe { base.add(page).write(1) };
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let guard = format!("{:x}-{:x} ---p", base as usize, base as usize + page);
        assert!(maps.contains(&guard), "no guard page {guard} in\n{maps}");
    }
}
