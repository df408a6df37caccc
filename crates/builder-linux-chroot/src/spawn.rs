//! Starting a process in the sandbox, and the handle to it.
//!
//! The parent prepares everything (`ChildPlan`), creates the child with a
//! `clone` in new user, mount, PID, IPC, UTS and cgroup namespaces (and a
//! network namespace unless the build keeps the host's network: a new one,
//! or one kept from an earlier build, see [`crate::network`]) that shares
//! its memory until `execve` (`clone_vm`: no copy of the parent's page
//! tables, whose cost grows with the parent's size), writes the child's uid
//! and gid maps as Nix does (`setgroups` denied), saves its mount and user
//! namespaces, and only then lets it go on. The child reports a failed setup
//! step over a close-on-exec pipe; EOF on that pipe means the builder was
//! executed. [`spawn()`] waits for that; [`start()`] does not, and leaves
//! the answer to the caller in a [`ChildSetup`].

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

use crate::SandboxError;
use crate::child::{self, ChildFds};
use crate::chroot::Chroot;
use crate::clone_vm::{ChildStack, SignalsBlocked, clone_vm, spawn_vfork};
use crate::namespaces::SavedNamespaces;
use crate::network::{Entered, LoopbackNamespace, NetworkNamespaces};
use crate::plan::ChildPlan;
use crate::setup::ChildSetup;
use crate::spec::{Command, Network, SANDBOX_GID, SANDBOX_UID};

/// A process running in the sandbox.
///
/// Dropping the handle kills and reaps the process if it was not waited for;
/// killing PID 1 of the sandbox's PID namespace kills every process in it.
#[derive(Debug)]
pub struct SandboxChild {
    pid: Pid,
    pidfd: OwnedFd,
    log: Option<OwnedFd>,
    namespaces: SavedNamespaces,
    network: Option<LoopbackNamespace>,
    status: Option<ExitStatus>,
    handed_over: bool,
    /// Declared last: dropped after `Drop::drop` killed and reaped the
    /// child, when the memory it used is free.
    setup: Option<ChildSetup>,
}

/// A sandboxed process handed over to a caller that supervises it itself
/// (the generic builder's lifecycle kills its process group and reaps it).
#[derive(Debug)]
pub struct SandboxParts {
    /// The process id on the host; also its process group and session id
    /// (the child calls `setsid`).
    pub pid: Pid,
    /// A pidfd of the process.
    pub pidfd: OwnedFd,
    /// The log pipe's read end, unless it was taken before.
    pub log: Option<OwnedFd>,
    /// The saved namespaces, which the new owner resets at teardown.
    pub namespaces: SavedNamespaces,
    /// The loopback namespace the process runs in, when it came from a
    /// [`NetworkNamespaces`] pool: the new owner gives it back once the
    /// process is reaped.
    pub network: Option<LoopbackNamespace>,
    /// The child's setup, which may still be going on: the new owner keeps
    /// it until the process is reaped, and asks it then whether the setup
    /// failed.
    pub setup: Option<ChildSetup>,
}

impl SandboxChild {
    /// Hands the process over: after this, nothing here kills or reaps it.
    ///
    /// # Errors
    ///
    /// When the pidfd cannot be duplicated for the new owner.
    pub fn into_parts(mut self) -> io::Result<SandboxParts> {
        let pidfd = rustix::io::fcntl_dupfd_cloexec(&self.pidfd, 0)?;
        self.handed_over = true;
        Ok(SandboxParts {
            pid: self.pid,
            pidfd,
            log: self.log.take(),
            namespaces: std::mem::take(&mut self.namespaces),
            network: self.network.take(),
            setup: self.setup.take(),
        })
    }

    /// Waits until the child has executed the builder, or has failed to set
    /// the sandbox up and exits. Returns at once when that is known.
    ///
    /// # Errors
    ///
    /// The setup step that failed, with its paths and errno.
    pub fn wait_for_setup(&mut self) -> Result<(), SandboxError> {
        match &mut self.setup {
            Some(setup) => setup.wait(),
            None => Ok(()),
        }
    }

    /// The builder's process id, as the host sees it.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// A pidfd of the builder, readable when it exits (for an event loop).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The read end of the pipe the builder's stdout and stderr go to, until
    /// taken.
    pub fn log(&self) -> Option<BorrowedFd<'_>> {
        self.log.as_ref().map(AsFd::as_fd)
    }

    /// Takes the log pipe's read end, for the caller to drain.
    pub fn take_log(&mut self) -> Option<OwnedFd> {
        self.log.take()
    }

    /// The saved mount and user namespaces.
    pub fn namespaces(&self) -> &SavedNamespaces {
        &self.namespaces
    }

    /// The saved namespaces, to reset them.
    pub fn namespaces_mut(&mut self) -> &mut SavedNamespaces {
        &mut self.namespaces
    }

    /// Sends SIGKILL to the builder, which takes its whole PID namespace
    /// with it. Killing a process that already exited is not an error.
    pub fn kill(&self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Reaps the builder if it has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(WaitOptions::NOHANG)
    }

    /// Waits for the builder to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.reap(WaitOptions::empty())? {
                return Ok(status);
            }
        }
    }

    fn reap(&mut self, options: WaitOptions) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        loop {
            match rustix::process::waitpid(Some(self.pid), options) {
                Ok(Some((_, status))) => {
                    let status = ExitStatus::from_raw(status.as_raw());
                    self.status = Some(status);
                    return Ok(Some(status));
                }
                Ok(None) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if self.status.is_none() && !self.handed_over {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

/// Starts `command` in the sandbox whose file system is `chroot`.
///
/// Returns once the builder has been executed; a failure of any setup step,
/// in the parent or in the child, is an error that names the step and its
/// paths. Where the kernel refuses the namespaces, the error is
/// [`SandboxError::Unavailable`].
pub fn spawn(chroot: &Chroot, command: &Command) -> Result<SandboxChild, SandboxError> {
    let mut child = start_child(chroot, command, None)?;
    match child.wait_for_setup() {
        Ok(()) => Ok(child),
        Err(error) => {
            // The child reported the failure and exits.
            let _ = child.wait();
            Err(error)
        }
    }
}

/// Starts `command` in the sandbox whose file system is `chroot` without
/// waiting for the child to set the sandbox up: returns as soon as the
/// child has its namespaces and id maps, so that the caller can go on
/// while it mounts, pivots and executes the builder. A build with a private
/// network gets a loopback namespace from `networks` (a spare one, or a new
/// one that is kept) instead of one made and torn down for it alone; the
/// handle holds it ([`SandboxParts::network`]) until it is given back.
///
/// A failure of the child's setup shows once it has exited: its status is
/// 1, and [`SandboxChild::wait_for_setup`] (or [`ChildSetup::wait`]) names
/// the step.
///
/// # Errors
///
/// A failure in this process: creating the pipes, the namespaces (then
/// [`SandboxError::Unavailable`]), writing the id maps, saving the
/// namespaces, or returning this thread to its network namespace.
pub fn start(
    chroot: &Chroot,
    command: &Command,
    networks: &NetworkNamespaces,
) -> Result<SandboxChild, SandboxError> {
    start_child(chroot, command, Some(networks))
}

fn start_child(
    chroot: &Chroot,
    command: &Command,
    networks: Option<&NetworkNamespaces>,
) -> Result<SandboxChild, SandboxError> {
    // On the heap, where it stays put for the child to read while the box
    // moves into the handle.
    let mut plan = Box::new(ChildPlan::new(chroot, command)?);
    let pipe = || {
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|errno| SandboxError::Spawn {
            step: "creating a pipe",
            source: errno.into(),
        })
    };
    let (log_read, log_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    let stdin = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|errno| SandboxError::Spawn {
            step: "opening /dev/null",
            source: errno.into(),
        })?;
    let fds = ChildFds {
        sync_read: sync_read.as_raw_fd(),
        error_write: error_write.as_raw_fd(),
        log_write: log_write.as_raw_fd(),
        stdin: stdin.as_raw_fd(),
    };

    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    // The child shares this process's memory until it executes the builder
    // (see `clone_vm`), and runs side by side with this thread: it waits for
    // the id maps, and this function returns without waiting for its setup.
    // Why that is sound:
    //
    // - What the child reads is the plan, on the heap, and the chroot's ops,
    //   which the plan shares; `fds` is copied onto the child's stack. The
    //   plan and the stack move into the returned `ChildSetup`, which frees
    //   them only once EOF on the error pipe says the child has executed the
    //   builder or exited (the kernel closes a process's descriptors only
    //   after it has dropped its memory, at `execve` as at exit), killing it
    //   first if it is still setting up. An early return before the handle
    //   is built drops `handle`, declared after `plan` and `stack` and so
    //   dropped before them, which kills and reaps the child.
    // - The child writes nothing of this process's but its stack: it makes
    //   raw system calls only, which touch neither `errno` nor anything else
    //   of this thread's (see `child.rs`). So this thread, and any other,
    //   may go on as they like.
    // - Signals are blocked in this thread around the clone (`blocked`), so
    //   the child starts with them all blocked and resets the handlers
    //   before anything unblocks one.
    let mut stack = ChildStack::new().map_err(|source| SandboxError::Spawn {
        step: "mapping a stack for the builder's child",
        source,
    })?;
    let blocked = SignalsBlocked::new().map_err(|source| SandboxError::Spawn {
        step: "blocking signals around the clone",
        source,
    })?;
    // Last before the clone, so that nothing can fail between it and
    // `leave`: the child starts in the namespace this thread is in.
    let entered = match networks {
        Some(networks) if chroot.network() == Network::Loopback => networks.enter()?,
        _ => None,
    };
    if chroot.network() == Network::Loopback && entered.is_none() {
        flags |= libc::CLONE_NEWNET;
    } else {
        plan.bring_loopback_up = false;
    }
    let child_plan: &ChildPlan = &plan;
    // SAFETY: `child::run` allocates nothing, takes no lock, writes only its
    // stack, makes raw system calls only, and ends with `execve` or
    // `exit_group`; signals are blocked; the argument above covers the
    // stack and the plan until the child is gone.
    let pid = unsafe {
        clone_vm(flags, &mut stack, &blocked, move || {
            child::run(child_plan, fds)
        })
    };
    let network = entered.map(Entered::leave).transpose();
    drop(blocked);
    let pid = pid.map_err(refused)?;
    // The parent's copies of the child's ends: closing them is what lets EOF
    // on the log and error pipes mean that every writer is gone.
    drop((log_write, sync_read, error_write, stdin));
    let handle = Started {
        pid,
        sync_write: Some(sync_write),
    };
    let network = network?;

    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|errno| {
        SandboxError::Spawn {
            step: "opening a pidfd for the builder",
            source: errno.into(),
        }
    })?;
    write_id_maps(pid)?;
    let namespaces =
        SavedNamespaces::new(open_namespace(pid, "mnt")?, open_namespace(pid, "user")?);
    if let Err(errno) = handle.release() {
        return Err(SandboxError::Spawn {
            step: "releasing the builder",
            source: errno.into(),
        });
    }
    let pid = handle.disarm();
    Ok(SandboxChild {
        pid,
        pidfd,
        log: Some(log_read),
        namespaces,
        network,
        status: None,
        handed_over: false,
        setup: Some(ChildSetup::new(pid, error_read, plan, stack)),
    })
}

/// Creates the sandbox's namespaces once for a child that exits at once.
pub(crate) fn probe() -> Result<(), SandboxError> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    let mut stack = ChildStack::new().map_err(|source| SandboxError::Spawn {
        step: "mapping a stack for the probe's child",
        source,
    })?;
    // SAFETY: the child only calls `_exit`.
    let pid = unsafe { spawn_vfork(flags, &mut stack, || child::exit(0)) }.map_err(refused)?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return Ok(()),
        }
    }
}

/// The error of a `clone` into new namespaces: an errno is the kernel
/// refusing them.
fn refused(error: io::Error) -> SandboxError {
    match error.raw_os_error() {
        Some(_) => SandboxError::Unavailable {
            cause: format!(
                "the kernel refused to create the namespaces ({error}); check \
                 /proc/sys/user/max_user_namespaces and, where it exists, \
                 /proc/sys/kernel/unprivileged_userns_clone"
            ),
        },
        None => SandboxError::Spawn {
            step: "cloning the builder",
            source: error,
        },
    }
}

/// A child between `clone` and its release: killed and reaped if the parent
/// fails before handing it over.
struct Started {
    pid: Pid,
    sync_write: Option<OwnedFd>,
}

impl Started {
    /// Tells the child the id maps are written. The byte stays readable
    /// after `disarm` closes the pipe, so the child reads it whenever it
    /// gets there.
    fn release(&self) -> rustix::io::Result<()> {
        match &self.sync_write {
            Some(sync) => rustix::io::write(sync, b"1").map(drop),
            None => Ok(()),
        }
    }

    /// Hands the child over; it is no longer killed on drop.
    fn disarm(mut self) -> Pid {
        let pid = self.pid;
        self.sync_write = None;
        std::mem::forget(self);
        pid
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        while let Err(Errno::INTR) = rustix::process::waitpid(Some(self.pid), WaitOptions::empty())
        {
        }
    }
}

/// Maps the sandbox's uid 1000 and gid 100 to this process's ids, denying
/// `setgroups` first (required to write a gid map without privileges, and
/// what Nix does without build users).
fn write_id_maps(pid: Pid) -> Result<(), SandboxError> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let proc = format!("/proc/{}", pid.as_raw_nonzero());
    let files = [
        ("uid_map", format!("{SANDBOX_UID} {uid} 1")),
        ("setgroups", "deny".to_owned()),
        ("gid_map", format!("{SANDBOX_GID} {gid} 1")),
    ];
    for (file, contents) in files {
        let path = format!("{proc}/{file}");
        fs::write(&path, contents).map_err(|source| SandboxError::Unavailable {
            cause: format!("writing {path} failed: {source}"),
        })?;
    }
    Ok(())
}

fn open_namespace(pid: Pid, kind: &str) -> Result<OwnedFd, SandboxError> {
    let path = format!("/proc/{}/ns/{kind}", pid.as_raw_nonzero());
    rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| SandboxError::Spawn {
        step: if kind == "mnt" {
            "saving the mount namespace"
        } else {
            "saving the user namespace"
        },
        source: errno.into(),
    })
}

/// Reads until `buffer` is full or EOF; returns the bytes read.
pub(crate) fn read_full(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match rustix::io::read(fd, &mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone_vm::tests::{
        assert_heap_intact, assert_mask_is, big_heap, block, children_of_this_thread, current_mask,
        ignored_but_sigpipe, install_usr1_handler, restore_mask_checking, set_mask, status_mask,
    };
    use crate::spec::{ChrootSpec, default_sandbox_paths};
    use std::io::Read;

    /// The sandbox's prerequisites, or the reason this test skips.
    fn prerequisites() -> Option<Vec<crate::BindMount>> {
        if let Err(error) = crate::check_support() {
            eprintln!("skipped: needs root or user namespaces: {error}");
            return None;
        }
        match default_sandbox_paths() {
            Ok(paths) => Some(paths),
            Err(error) => {
                eprintln!("skipped: {error}");
                None
            }
        }
    }

    fn run(script: &str) -> Option<(ExitStatus, String)> {
        let paths = prerequisites()?;
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(temp.path().join("build")).expect("mkdir");
        let mut spec = ChrootSpec::new(temp.path().join("x.chroot"), temp.path().join("build"));
        spec.sandbox_paths = paths;
        let chroot = Chroot::create(&spec).expect("chroot");
        let command = Command::new("/bin/sh").arg("-c").arg(script);
        let mut child = spawn(&chroot, &command).expect("spawn");
        let mut log = String::new();
        let log_fd = child.take_log().expect("log");
        std::fs::File::from(log_fd)
            .read_to_string(&mut log)
            .expect("reading the log");
        let status = child.wait().expect("wait");
        Some((status, log))
    }

    #[test]
    fn a_script_runs_as_nixbld_pid_1_on_localhost() {
        let Some((status, log)) = run("id -u; id -g; hostname; echo $$; pwd; exit 3") else {
            return;
        };
        assert_eq!(status.code(), Some(3), "{log}");
        assert_eq!(log, "1000\n100\nlocalhost\n1\n/build\n");
    }

    #[test]
    fn the_builder_does_not_inherit_an_ignored_sigpipe() {
        // Bit 12 of SigIgn is SIGPIPE, which this (Rust) process ignores.
        let script =
            "while read k v; do case $k in SigIgn:) echo $v;; esac; done < /proc/self/status";
        let Some((status, log)) = run(script) else {
            return;
        };
        assert!(status.success(), "{log}");
        let mask = u64::from_str_radix(log.trim(), 16).expect("a hex mask");
        assert_eq!(mask & (1 << 12), 0, "SIGPIPE is ignored: {mask:x}");
    }

    #[test]
    fn a_handed_over_child_is_left_to_its_new_owner() {
        let Some(paths) = prerequisites() else {
            return;
        };
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(temp.path().join("build")).expect("mkdir");
        let mut spec = ChrootSpec::new(temp.path().join("x.chroot"), temp.path().join("build"));
        spec.sandbox_paths = paths;
        let chroot = Chroot::create(&spec).expect("chroot");
        let child =
            spawn(&chroot, &Command::new("/bin/sh").arg("-c").arg("exit 7")).expect("spawn");
        let mut parts = child.into_parts().expect("handing over");
        assert!(parts.namespaces.is_open());
        let mut log = String::new();
        std::fs::File::from(parts.log.take().expect("log"))
            .read_to_string(&mut log)
            .expect("log");
        // Still unreaped: the new owner reaps it.
        let (_, status) = rustix::process::waitpid(Some(parts.pid), WaitOptions::empty())
            .expect("waitpid")
            .expect("a status");
        assert_eq!(status.exit_status(), Some(7));
        parts.namespaces.reset();
    }

    #[test]
    fn a_missing_program_is_reported_with_its_step() {
        if prerequisites().is_none() {
            return;
        }
        let old = block(&[libc::SIGUSR2]);
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(temp.path().join("build")).expect("mkdir");
        let spec = ChrootSpec::new(temp.path().join("x.chroot"), temp.path().join("build"));
        let chroot = Chroot::create(&spec).expect("chroot");
        let error = spawn(&chroot, &Command::new("/bin/nothing")).expect_err("no program");
        let message = error.to_string();
        assert!(message.contains("executing /bin/nothing"), "{message}");
        assert!(message.contains("No such file"), "{message}");
        assert_eq!(children_of_this_thread(), "", "a child was left behind");
        restore_mask_checking(&old, libc::SIGUSR2);
    }

    #[test]
    fn children_of_a_big_parent_start_with_a_clean_signal_state() {
        if prerequisites().is_none() {
            return;
        }
        install_usr1_handler();
        let old = block(&[libc::SIGUSR1, libc::SIGINT, libc::SIGTERM]);
        let blocked = current_mask();
        // 200 MiB resident, which the children share instead of copying
        // its page tables.
        let heap = big_heap();
        let script =
            "while read k v; do case $k in Sig*) echo $k $v;; esac; done < /proc/self/status";
        for _ in 0..5 {
            let Some((status, log)) = run(script) else {
                return;
            };
            assert!(status.success(), "{log}");
            // The shell (busybox ash, PID 1) catches SIGINT and SIGCHLD and
            // ignores SIGQUIT itself; nothing else may come from the parent.
            assert_eq!(status_mask(&log, "SigBlk:"), 0, "{log}");
            let shell_caught = (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGCHLD - 1));
            assert_eq!(status_mask(&log, "SigCgt:") & !shell_caught, 0, "{log}");
            let shell_ignored = 1 << (libc::SIGQUIT - 1);
            let ignored = status_mask(&log, "SigIgn:") & !shell_ignored;
            assert_eq!(ignored, ignored_but_sigpipe() & !shell_ignored, "{log}");
            assert_mask_is(&blocked);
        }
        assert_heap_intact(&heap);
        set_mask(&old);
    }
}
