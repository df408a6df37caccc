//! The code that runs in the child between `clone` and `execve`.
//!
//! The child runs in the memory of a possibly multi-threaded parent
//! (`clone_vm`), on a stack of its own, until `execve` gives it a memory of
//! its own; the parent's threads run on meanwhile. Another thread may hold
//! the allocator's lock or any other lock, and whatever the child writes
//! the parent sees, so nothing here allocates, locks, writes anything but
//! its own stack, or calls into `std` or the C library beyond plain data
//! access: every call is a rustix system call on a `&CStr` prepared in
//! [`ChildPlan`], or one of the raw calls of [`crate::raw`] (`execve`,
//! `exit_group`, the signal calls, `close_range`), none of which touches
//! `errno`. A failure is written to the error pipe as a fixed-size record
//! ([`Failure`]) and the child exits; the parent turns the record into a
//! message.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{CWD, Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::process::{Resource, Rlimit, Signal};
use rustix::thread::UnshareFlags;

use crate::chroot::Op;
use crate::plan::ChildPlan;
use crate::setup::SetupRecords;
use crate::spec::{SANDBOX_DOMAINNAME, SANDBOX_HOSTNAME};

/// The steps of the child's setup, named in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    DeathSignal = 1,
    Session,
    Stdio,
    Loopback,
    Hostname,
    PrivateRoot,
    Chroot,
    Unshare,
    PivotRoot,
    WorkingDir,
    Limits,
    NoNewPrivileges,
    Signals,
    CloseFds,
    Exec,
}

impl Step {
    const ALL: [Step; 15] = [
        Step::DeathSignal,
        Step::Session,
        Step::Stdio,
        Step::Loopback,
        Step::Hostname,
        Step::PrivateRoot,
        Step::Chroot,
        Step::Unshare,
        Step::PivotRoot,
        Step::WorkingDir,
        Step::Limits,
        Step::NoNewPrivileges,
        Step::Signals,
        Step::CloseFds,
        Step::Exec,
    ];

    fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|step| *step as u32 == code)
    }
}

/// A failed step: which, which mount (for the mount steps), and the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) step: Step,
    pub(crate) index: u32,
    pub(crate) errno: i32,
}

/// The size of a [`Failure`] record on the error pipe.
pub(crate) const FAILURE_BYTES: usize = 12;

impl Failure {
    fn new(step: Step, index: usize, errno: Errno) -> Failure {
        Failure {
            step,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            errno: errno.raw_os_error(),
        }
    }

    fn encode(self) -> [u8; FAILURE_BYTES] {
        let mut record = [0; FAILURE_BYTES];
        record[..4].copy_from_slice(&(self.step as u32).to_ne_bytes());
        record[4..8].copy_from_slice(&self.index.to_ne_bytes());
        record[8..].copy_from_slice(&self.errno.to_ne_bytes());
        record
    }

    /// Reads a record written by [`run`]; `None` for anything else.
    pub(crate) fn decode(record: &[u8; FAILURE_BYTES]) -> Option<Failure> {
        let word = |at: usize| {
            let mut bytes = [0; 4];
            bytes.copy_from_slice(&record[at..at + 4]);
            bytes
        };
        Some(Failure {
            step: Step::from_code(u32::from_ne_bytes(word(0)))?,
            index: u32::from_ne_bytes(word(4)),
            errno: i32::from_ne_bytes(word(8)),
        })
    }

    /// What the step was doing, with its paths, for the parent's message.
    pub(crate) fn describe(&self, plan: &ChildPlan) -> String {
        let root = plan.root.to_string_lossy();
        match self.step {
            Step::DeathSignal => "setting the parent-death signal".to_owned(),
            Step::Session => "starting a new session".to_owned(),
            Step::Stdio => "redirecting standard input and output".to_owned(),
            Step::Loopback => "bringing up the loopback interface".to_owned(),
            Step::Hostname => "setting the host name".to_owned(),
            Step::PrivateRoot => "making / a private mount".to_owned(),
            Step::Chroot => match plan.ops.get(self.index as usize) {
                Some(op) => describe_op(op),
                None => "building the chroot".to_owned(),
            },
            Step::Unshare => "creating the inner mount namespace".to_owned(),
            Step::PivotRoot => format!("pivoting the root to {root}"),
            Step::WorkingDir => format!(
                "changing to the working directory {}",
                plan.working_dir.to_string_lossy()
            ),
            Step::Limits => "setting resource limits".to_owned(),
            Step::NoNewPrivileges => "forbidding new privileges".to_owned(),
            Step::Signals => "resetting signal handling".to_owned(),
            Step::CloseFds => "closing inherited file descriptors".to_owned(),
            Step::Exec => format!("executing {}", plan.program.to_string_lossy()),
        }
    }
}

impl SetupRecords for ChildPlan {
    fn record_bytes(&self) -> usize {
        FAILURE_BYTES
    }

    fn describe(&self, record: &[u8]) -> Option<(String, i32)> {
        let record: &[u8; FAILURE_BYTES] = record.try_into().ok()?;
        let failure = Failure::decode(record)?;
        Some((failure.describe(self), failure.errno))
    }
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Mount {
            fs_type, target, ..
        } => format!(
            "mounting {} on {}",
            fs_type.to_string_lossy(),
            target.to_string_lossy()
        ),
        Op::Mkdir { path, .. } => format!("creating the folder {}", path.to_string_lossy()),
        Op::Touch { path } => format!("creating the mount point {}", path.to_string_lossy()),
        Op::Symlink { path, .. } => format!("creating the symlink {}", path.to_string_lossy()),
        Op::Write { path, .. } => format!("writing {}", path.to_string_lossy()),
        Op::Bind { source, target, .. } => format!(
            "bind-mounting {} on {}",
            source.to_string_lossy(),
            target.to_string_lossy()
        ),
        Op::Share { target } => format!("making {} a shared mount", target.to_string_lossy()),
        Op::CloneTree { source } => {
            format!("taking a copy of the mount {}", source.to_string_lossy())
        }
        Op::AttachTree { target } => {
            format!("attaching the store folder at {}", target.to_string_lossy())
        }
        Op::Chmod { path, .. } => format!("changing the mode of {}", path.to_string_lossy()),
    }
}

/// The raw descriptors the child uses, all valid in its copy of the parent's
/// descriptor table.
#[derive(Clone, Copy)]
pub(crate) struct ChildFds {
    /// The parent writes `1` here once the id maps are written.
    pub(crate) sync_read: RawFd,
    /// Failure records go here; close-on-exec, so EOF means `execve` worked.
    pub(crate) error_write: RawFd,
    /// The builder's stdout and stderr.
    pub(crate) log_write: RawFd,
    /// `/dev/null`, the builder's stdin.
    pub(crate) stdin: RawFd,
}

/// Runs in the child right after `clone`: sets up the sandbox, executes the
/// builder, and on failure reports the step and exits with status 1.
pub(crate) fn run(plan: &ChildPlan, fds: ChildFds) -> ! {
    let failure = match setup_and_exec(plan, fds) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    // SAFETY: `error_write` is open in the child (inherited from the parent,
    // which keeps it open until the child is released).
    let error_pipe = unsafe { BorrowedFd::borrow_raw(fds.error_write) };
    let _ = rustix::io::write(error_pipe, &failure.encode());
    exit(1)
}

/// Leaves at once with `status` ([`crate::raw::exit`]).
pub(crate) fn exit(status: i32) -> ! {
    crate::raw::exit(status)
}

enum Never {}

fn at(step: Step) -> impl Fn(Errno) -> Failure {
    move |errno| Failure::new(step, 0, errno)
}

fn setup_and_exec(plan: &ChildPlan, fds: ChildFds) -> Result<Never, Failure> {
    // Die with the parent rather than build on unsupervised.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(at(Step::DeathSignal))?;

    // Wait until the parent has written the id maps. Anything but `1`
    // (including EOF, when the parent gave up) ends the child quietly: the
    // parent already knows what went wrong.
    let mut go = [0u8; 1];
    // SAFETY: `sync_read` is open in the child, inherited from the parent.
    let sync = unsafe { BorrowedFd::borrow_raw(fds.sync_read) };
    match rustix::io::read(sync, &mut go) {
        Ok(1) if go[0] == b'1' => {}
        _ => exit(1),
    }

    rustix::process::setsid().map_err(at(Step::Session))?;
    // SAFETY: both descriptors are open in the child, inherited from the
    // parent, which keeps its copies open until the child is released.
    unsafe { redirect_stdio(fds.stdin, fds.log_write) }.map_err(at(Step::Stdio))?;

    if plan.bring_loopback_up {
        crate::network::loopback_up().map_err(at(Step::Loopback))?;
    }
    rustix::system::sethostname(SANDBOX_HOSTNAME.as_bytes()).map_err(at(Step::Hostname))?;
    rustix::system::setdomainname(SANDBOX_DOMAINNAME.as_bytes()).map_err(at(Step::Hostname))?;

    // Keep every mount below private, so nothing propagates to the host.
    make_mounts_private().map_err(at(Step::PrivateRoot))?;
    // Modes in the ops are exact.
    rustix::process::umask(Mode::empty());
    let mut tree = None;
    for (index, op) in plan.ops.iter().enumerate() {
        perform(op, &mut tree).map_err(|errno| Failure::new(Step::Chroot, index, errno))?;
    }

    // A second mount namespace: pivot_root changes the root of the current
    // namespace, and the saved one must keep seeing the host.
    // SAFETY: the child is single-threaded, and nothing in it depends on the
    // file system view the unshare changes.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }.map_err(at(Step::Unshare))?;

    // The old root is put on top of the new one and detached from there
    // (pivot_root(2) allows `new_root` and `put_old` to be the same
    // directory): no folder to make and remove in the chroot, whose inode
    // would be one more the file system remembers as recently deleted.
    rustix::process::chdir(plan.root.as_c_str()).map_err(at(Step::PivotRoot))?;
    rustix::process::pivot_root(c".", c".").map_err(at(Step::PivotRoot))?;
    rustix::mount::unmount(c".", UnmountFlags::DETACH).map_err(at(Step::PivotRoot))?;
    rustix::process::chdir(c"/").map_err(at(Step::PivotRoot))?;
    rustix::process::chdir(plan.working_dir.as_c_str()).map_err(at(Step::WorkingDir))?;

    let core = rustix::process::getrlimit(Resource::Core);
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: core.maximum,
        },
    )
    .map_err(at(Step::Limits))?;
    rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::thread::set_no_new_privs(true).map_err(at(Step::NoNewPrivileges))?;

    reset_signals().map_err(at(Step::Signals))?;
    // Descriptors the parent opened without close-on-exec (by other threads,
    // or libraries) must not reach the builder: a directory descriptor is a
    // way out of the chroot.
    mark_inherited_fds_cloexec().map_err(at(Step::CloseFds))?;

    // SAFETY: `argv` and `envp` are null-terminated arrays of pointers into
    // C strings the plan owns, which outlive this call.
    let errno = unsafe { crate::raw::execve(&plan.program, plan.argv(), plan.envp()) };
    Err(Failure::new(Step::Exec, 0, errno))
}

// The steps below are shared with the relocating builder's child
// (`relocate.rs`). Like everything a child of `clone` runs, none of them
// allocates or takes a lock: each is a system call on data prepared before
// the `clone`.

/// Makes stdin `stdin` and both stdout and stderr `log`.
///
/// # Safety
///
/// Both descriptors must be open in the calling process for the whole
/// call.
pub(crate) unsafe fn redirect_stdio(stdin: RawFd, log: RawFd) -> rustix::io::Result<()> {
    // SAFETY: the caller promises that both descriptors are open throughout.
    let (stdin, log) = unsafe { (BorrowedFd::borrow_raw(stdin), BorrowedFd::borrow_raw(log)) };
    rustix::stdio::dup2_stdin(stdin)?;
    rustix::stdio::dup2_stdout(log)?;
    rustix::stdio::dup2_stderr(log)
}

/// Makes every mount of this (new) mount namespace private, so that
/// nothing mounted in it propagates to the host's.
pub(crate) fn make_mounts_private() -> rustix::io::Result<()> {
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
}

/// As `std::process::Command` does, and as a Nix builder starts: no
/// blocked signals, and SIGPIPE back to its default (Rust programs ignore
/// it, and an ignored signal stays ignored across `execve`, so a builder
/// would see EPIPE where a pipeline expects to be killed).
pub(crate) fn reset_signals() -> Result<(), Errno> {
    crate::raw::set_default_action(libc::SIGPIPE)?;
    crate::raw::unblock_all_signals()
}

/// Marks every descriptor above stderr close-on-exec: those opened without
/// it (by other threads, or libraries) must not reach the builder. Marking
/// them, rather than closing them, keeps the error pipe usable until
/// `execve`.
pub(crate) fn mark_inherited_fds_cloexec() -> Result<(), Errno> {
    crate::raw::mark_cloexec_from(3)
}

/// Performs one op of the chroot's layout.
fn perform(op: &Op, tree: &mut Option<OwnedFd>) -> rustix::io::Result<()> {
    match op {
        Op::CloneTree { source } => {
            let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            *tree = Some(rustix::mount::open_tree(CWD, source.as_c_str(), flags)?);
            Ok(())
        }
        Op::AttachTree { target } => {
            let detached = tree.take().ok_or(Errno::BADF)?;
            rustix::mount::move_mount(
                &detached,
                c"",
                CWD,
                target.as_c_str(),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
        }
        Op::Mount {
            fs_type,
            target,
            flags,
            data,
        } => rustix::mount::mount(c"none", target.as_c_str(), *fs_type, *flags, *data),
        Op::Mkdir { path, mode } => rustix::fs::mkdir(path.as_c_str(), Mode::from_raw_mode(*mode)),
        Op::Touch { path } => {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
            rustix::fs::open(path.as_c_str(), flags, Mode::from_raw_mode(0o644)).map(drop)
        }
        Op::Symlink { target, path } => rustix::fs::symlink(target.as_c_str(), path.as_c_str()),
        Op::Write {
            path,
            contents,
            mode,
        } => {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
            let file = rustix::fs::open(path.as_c_str(), flags, Mode::from_raw_mode(*mode))?;
            let mut rest = contents.as_slice();
            while !rest.is_empty() {
                let written = rustix::io::write(&file, rest)?;
                rest = &rest[written..];
            }
            Ok(())
        }
        Op::Bind {
            source,
            target,
            recursive,
            read_only,
        } => {
            if *recursive {
                rustix::mount::mount_bind_recursive(source.as_c_str(), target.as_c_str())?;
            } else {
                rustix::mount::mount_bind(source.as_c_str(), target.as_c_str())?;
            }
            if *read_only {
                remount_read_only(target.as_c_str())?;
            }
            Ok(())
        }
        Op::Share { target } => {
            rustix::mount::mount_change(target.as_c_str(), MountPropagationFlags::SHARED)
        }
        Op::Chmod { path, mode } => rustix::fs::chmod(path.as_c_str(), Mode::from_raw_mode(*mode)),
    }
}

/// Remounts the bind at `target` read-only, keeping the flags the kernel
/// locks on mounts inherited into a user namespace (`nosuid`, `nodev`,
/// `noexec` and the atime flags); dropping one of them would be refused.
fn remount_read_only(target: &std::ffi::CStr) -> rustix::io::Result<()> {
    let current = rustix::fs::statvfs(target)?.f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    let locked = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ];
    for (have, keep) in locked {
        if current.contains(have) {
            flags |= keep;
        }
    }
    rustix::mount::mount_remount(target, flags, c"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_records_round_trip_and_garbage_is_refused() {
        for step in Step::ALL {
            let failure = Failure {
                step,
                index: 7,
                errno: 13,
            };
            assert_eq!(Failure::decode(&failure.encode()), Some(failure));
        }
        assert_eq!(Failure::decode(&[0xff; FAILURE_BYTES]), None);
    }
}
