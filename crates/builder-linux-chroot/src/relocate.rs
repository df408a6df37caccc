//! [`RelocatingBuilder`]: the generic builder without a sandbox, for a store
//! whose real directory is not its logical one (`larder --store ROOT
//! build --no-sandbox`).
//!
//! The builder must see and write `/nix/store/...` paths, so it runs in a
//! private mount namespace where the real store directory is bind-mounted
//! on the logical one. The generic builder gets there through `unshare(1)`,
//! `sh` and `mount(8)`: three programs executed before the builder, which
//! cost more than the trivial build itself. Here the child this process
//! clones makes the namespace and the mount itself and executes the builder
//! directly, as the sandbox's child does; nothing else changes (same
//! process group, environment, working directory and log pipe as the
//! generic builder).
//!
//! Without root, the namespace comes with a user namespace that maps the
//! caller's uid and gid to 0, as `unshare --map-root-user` does; the child
//! writes its own maps, which the kernel allows for exactly those ids.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use larder_builder::process::set_nonblocking;
use larder_builder::{
    BuildContext, BuildError, BuilderCommand, DerivationBuilder, GenericBuilder, SpawnedBuilder,
};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

use crate::SandboxError;
use crate::child;
use crate::clone_vm::{ChildStack, SignalsBlocked, clone_vm};
use crate::plan::null_terminated;
use crate::setup::{ChildSetup, SetupRecords};

/// The generic builder, with the store relocated by a mount namespace the
/// child makes itself instead of through `unshare(1)` (see the module
/// documentation). Where the real store directory is the logical one, it
/// spawns exactly as [`GenericBuilder`] does.
///
/// The worker goes on while the child makes its namespace and mount
/// ([`start_relocated`]); a failed step shows when the builder is reaped.
#[derive(Debug, Default)]
pub struct RelocatingBuilder {
    /// The child's setup, from `start_child` until the builder is reaped.
    setup: Option<ChildSetup>,
    /// The builder program, for the message of a failed setup.
    program: PathBuf,
}

impl RelocatingBuilder {
    /// A builder for one build.
    pub fn new() -> Self {
        RelocatingBuilder::default()
    }
}

impl DerivationBuilder for RelocatingBuilder {
    fn start_child(
        &mut self,
        ctx: &BuildContext,
        command: &BuilderCommand,
    ) -> larder_builder::error::Result<SpawnedBuilder> {
        let logical = Path::new(ctx.store_dir.as_str());
        if ctx.real_store_dir == logical {
            return GenericBuilder.start_child(ctx, command);
        }
        let (spawned, setup) =
            start_relocated(&ctx.real_store_dir, logical, command).map_err(|e| {
                BuildError::misc(format!(
                    "starting builder '{}' for '{}': {e}",
                    command.program.display(),
                    ctx.drv_display()
                ))
            })?;
        self.setup = Some(setup);
        self.program.clone_from(&command.program);
        Ok(spawned)
    }

    /// The builder was reaped, so the child's answer is there: it executed
    /// the builder, or it failed a step and exited.
    fn kill_sandbox(&mut self, ctx: &BuildContext) -> larder_builder::error::Result<()> {
        match self.setup.take().map(|mut setup| setup.wait()) {
            Some(Err(e)) => Err(BuildError::misc(format!(
                "starting builder '{}' for '{}': {e}",
                self.program.display(),
                ctx.drv_display()
            ))),
            _ => Ok(()),
        }
    }

    fn cleanup_sandbox(&mut self, _ctx: &BuildContext, _success: bool) {
        // A setup still going on (the build was dropped) is ended.
        self.setup = None;
    }
}

/// Starts `command` in its own process group, in a new mount namespace
/// where `real_store` is bind-mounted on `logical_store`, with stdin from
/// `/dev/null` and stdout and stderr on a new pipe. Returns once the
/// builder has been executed.
///
/// # Errors
///
/// When a pipe cannot be made, the kernel refuses the namespace, or a step
/// in the child fails (the error names the step and its paths).
pub fn spawn_relocated(
    real_store: &Path,
    logical_store: &Path,
    command: &BuilderCommand,
) -> io::Result<SpawnedBuilder> {
    let (spawned, mut setup) = start_relocated(real_store, logical_store, command)?;
    let mut child = Reaper(Some(spawned.pid));
    match setup.wait() {
        Ok(()) => {
            child.0 = None;
            Ok(spawned)
        }
        Err(SandboxError::Child { step, source }) => {
            child.reap();
            Err(io::Error::new(source.kind(), format!("{step}: {source}")))
        }
        Err(other) => {
            child.reap();
            Err(io::Error::other(other.to_string()))
        }
    }
}

/// As [`spawn_relocated`], but returns as soon as the child exists, with
/// its [`ChildSetup`]: the caller goes on while the child makes its
/// namespace and mount, and asks the setup once the builder is reaped (a
/// failed step makes the child exit with status 1). The setup must be kept
/// until then; dropping it earlier kills a child still setting up.
///
/// # Errors
///
/// When a pipe cannot be made or the kernel refuses the namespace.
pub fn start_relocated(
    real_store: &Path,
    logical_store: &Path,
    command: &BuilderCommand,
) -> io::Result<(SpawnedBuilder, ChildSetup)> {
    // On the heap, where it stays put for the child to read while the box
    // moves into the setup.
    let plan = Box::new(Plan::new(real_store, logical_store, command)?);
    let (log_read, log_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let (error_read, error_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let stdin = rustix::fs::open(
        c"/dev/null",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fds = Fds {
        error_write: error_write.as_raw_fd(),
        log_write: log_write.as_raw_fd(),
        stdin: stdin.as_raw_fd(),
    };
    let mut flags = libc::CLONE_NEWNS;
    if plan.id_maps.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    let mut stack = ChildStack::new().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mapping a stack for the builder's child: {e}"),
        )
    })?;
    let blocked = SignalsBlocked::new()?;
    let child_plan: &Plan = &plan;
    // The child shares this process's memory and runs side by side with it.
    // It reads the plan (on the heap) and runs on `stack`, both of which
    // move into the returned `ChildSetup`, which frees them only once the
    // child has executed the builder or exited (killing it first if it is
    // still setting up); an early return before that reaps the child first
    // (`Reaper`, declared after them). It writes nothing of this process's
    // but its stack: raw system calls only, so no `errno` either.
    // SAFETY: `run` allocates nothing, takes no lock, writes only its stack,
    // makes raw system calls only, and ends with `execve` or `exit_group`;
    // signals are blocked around the clone; the plan and the stack outlive
    // the child's use of them as argued above.
    let pid = unsafe { clone_vm(flags, &mut stack, &blocked, move || run(child_plan, fds)) };
    drop(blocked);
    let pid = pid.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("creating a mount namespace to relocate the store: {e}"),
        )
    })?;
    // Closing the parent's copies of the child's ends is what makes EOF on
    // the error pipe mean `execve` or exit, and EOF on the log mean every
    // writer is gone.
    drop((log_write, error_write, stdin));
    let mut child = Reaper(Some(pid));
    set_nonblocking(log_read.as_fd())?;
    let exit_fd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::NOSYS | Errno::PERM) => None,
        Err(e) => return Err(e.into()),
    };
    child.0 = None;
    let spawned = SpawnedBuilder {
        pid,
        log: log_read,
        exit_fd,
    };
    Ok((spawned, ChildSetup::new(pid, error_read, plan, stack)))
}

/// Kills and reaps the child unless it was handed over.
struct Reaper(Option<Pid>);

impl Reaper {
    fn reap(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            while let Err(Errno::INTR) = rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Everything the child needs, as C strings made before `clone`.
struct Plan {
    real_store: CString,
    logical_store: CString,
    working_dir: CString,
    program: CString,
    /// `setgroups`, `uid_map` and `gid_map` contents when a user namespace
    /// is needed (not root).
    id_maps: Option<[CString; 3]>,
    // The pointer arrays point into these; they live as long as the plan.
    _argv_strings: Vec<CString>,
    _env_strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Plan {
    fn new(real_store: &Path, logical_store: &Path, command: &BuilderCommand) -> io::Result<Plan> {
        let mut argv_strings = vec![cstring(command.arg0.as_bytes())?];
        for arg in &command.args {
            argv_strings.push(cstring(arg.as_bytes())?);
        }
        let mut env_strings = Vec::with_capacity(command.env.len());
        for (name, value) in &command.env {
            let mut pair = name.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env_strings.push(cstring(&pair)?);
        }
        let id_maps = if rustix::process::geteuid().is_root() {
            None
        } else {
            let uid = rustix::process::geteuid().as_raw();
            let gid = rustix::process::getegid().as_raw();
            Some([
                cstring(b"deny")?,
                cstring(format!("0 {uid} 1").as_bytes())?,
                cstring(format!("0 {gid} 1").as_bytes())?,
            ])
        };
        let argv = null_terminated(&argv_strings);
        let envp = null_terminated(&env_strings);
        Ok(Plan {
            real_store: cstring(real_store.as_os_str().as_bytes())?,
            logical_store: cstring(logical_store.as_os_str().as_bytes())?,
            working_dir: cstring(command.cwd.as_os_str().as_bytes())?,
            program: cstring(command.program.as_os_str().as_bytes())?,
            id_maps,
            _argv_strings: argv_strings,
            _env_strings: env_strings,
            argv,
            envp,
        })
    }
}

// SAFETY: the pointer arrays point into strings the plan owns on the heap,
// which are valid and unchanged wherever the plan is, on any thread.
unsafe impl Send for Plan {}

impl SetupRecords for Plan {
    fn record_bytes(&self) -> usize {
        RECORD_BYTES
    }

    fn describe(&self, record: &[u8]) -> Option<(String, i32)> {
        let (step, errno) = decode(record.try_into().ok()?)?;
        Some((step.describe(self), errno.raw_os_error()))
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                OsStr::from_bytes(bytes).to_string_lossy()
            ),
        )
    })
}

/// The child's descriptors, valid in its copy of the descriptor table.
#[derive(Clone, Copy)]
struct Fds {
    error_write: RawFd,
    log_write: RawFd,
    stdin: RawFd,
}

/// The steps of the child, named in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    IdMaps = 1,
    PrivateRoot,
    BindStore,
    ProcessGroup,
    Signals,
    Stdio,
    WorkingDir,
    CloseFds,
    Exec,
}

impl Step {
    const ALL: [Step; 9] = [
        Step::IdMaps,
        Step::PrivateRoot,
        Step::BindStore,
        Step::ProcessGroup,
        Step::Signals,
        Step::Stdio,
        Step::WorkingDir,
        Step::CloseFds,
        Step::Exec,
    ];

    fn describe(self, plan: &Plan) -> String {
        let show = |s: &CString| s.to_string_lossy().into_owned();
        match self {
            Step::IdMaps => "writing the user namespace's id maps".to_owned(),
            Step::PrivateRoot => "making / a private mount".to_owned(),
            Step::BindStore => format!(
                "bind-mounting {} on {}",
                show(&plan.real_store),
                show(&plan.logical_store)
            ),
            Step::ProcessGroup => "starting a new process group".to_owned(),
            Step::Signals => "resetting signal handling".to_owned(),
            Step::Stdio => "redirecting standard input and output".to_owned(),
            Step::WorkingDir => {
                format!(
                    "changing to the working directory {}",
                    show(&plan.working_dir)
                )
            }
            Step::CloseFds => "closing inherited file descriptors".to_owned(),
            Step::Exec => format!("executing {}", show(&plan.program)),
        }
    }
}

/// A failure record on the error pipe: the step and the errno.
const RECORD_BYTES: usize = 8;

fn encode(step: Step, errno: Errno) -> [u8; RECORD_BYTES] {
    let mut record = [0; RECORD_BYTES];
    record[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    record[4..].copy_from_slice(&errno.raw_os_error().to_ne_bytes());
    record
}

fn decode(record: &[u8; RECORD_BYTES]) -> Option<(Step, Errno)> {
    let mut word = [0; 4];
    word.copy_from_slice(&record[..4]);
    let code = u32::from_ne_bytes(word);
    let step = Step::ALL.into_iter().find(|s| *s as u32 == code)?;
    word.copy_from_slice(&record[4..]);
    Some((step, Errno::from_raw_os_error(i32::from_ne_bytes(word))))
}

/// Runs in the child right after `clone`. As in the sandbox's child
/// (`child.rs`), nothing here allocates or takes a lock: every call is a
/// system call on data the plan prepared.
fn run(plan: &Plan, fds: Fds) -> ! {
    let (step, errno) = match setup_and_exec(plan, fds) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    // SAFETY: `error_write` is open in the child: the `clone` gave it a copy
    // of the parent's descriptor table, which had it open then, and the
    // child closes nothing (the copy is its own).
    let error_pipe = unsafe { BorrowedFd::borrow_raw(fds.error_write) };
    let _ = rustix::io::write(error_pipe, &encode(step, errno));
    child::exit(1)
}

enum Never {}

fn at(step: Step) -> impl Fn(Errno) -> (Step, Errno) {
    move |errno| (step, errno)
}

fn setup_and_exec(plan: &Plan, fds: Fds) -> Result<Never, (Step, Errno)> {
    if let Some([setgroups, uid_map, gid_map]) = &plan.id_maps {
        for (file, contents) in [
            (c"/proc/self/setgroups", setgroups),
            (c"/proc/self/uid_map", uid_map),
            (c"/proc/self/gid_map", gid_map),
        ] {
            let fd = rustix::fs::open(file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(at(Step::IdMaps))?;
            rustix::io::write(&fd, contents.as_bytes()).map_err(at(Step::IdMaps))?;
        }
    }
    // Nothing mounted here may reach the host's namespace.
    child::make_mounts_private().map_err(at(Step::PrivateRoot))?;
    rustix::mount::mount_bind(plan.real_store.as_c_str(), plan.logical_store.as_c_str())
        .map_err(at(Step::BindStore))?;

    // The generic builder's process group, so that the lifecycle kills the
    // builder and whatever it started as one group.
    rustix::process::setpgid(None, None).map_err(at(Step::ProcessGroup))?;

    child::reset_signals().map_err(at(Step::Signals))?;

    // SAFETY: both descriptors are open in the child, whose copy of the
    // parent's descriptor table had them open at the `clone`.
    unsafe { child::redirect_stdio(fds.stdin, fds.log_write) }.map_err(at(Step::Stdio))?;
    rustix::process::chdir(plan.working_dir.as_c_str()).map_err(at(Step::WorkingDir))?;

    child::mark_inherited_fds_cloexec().map_err(at(Step::CloseFds))?;

    // SAFETY: `argv` and `envp` are null-terminated arrays of pointers into
    // C strings the plan owns, which outlive this call.
    let errno =
        unsafe { crate::raw::execve(&plan.program, plan.argv.as_ptr(), plan.envp.as_ptr()) };
    Err((Step::Exec, errno))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone_vm::tests::{
        assert_heap_intact, assert_mask_is, big_heap, block, children_of_this_thread, current_mask,
        ignored_but_sigpipe, install_usr1_handler, restore_mask_checking, set_mask, status_mask,
    };
    use std::io::Read;
    use std::path::PathBuf;

    /// Whether this host can make the child's namespaces, or `false` with
    /// the reason printed.
    fn can_relocate() -> bool {
        match crate::check_support() {
            Ok(()) => true,
            Err(error) => {
                eprintln!("skipped: needs root or user namespaces: {error}");
                false
            }
        }
    }

    fn sh(script: &str) -> BuilderCommand {
        BuilderCommand {
            program: PathBuf::from("/bin/sh"),
            arg0: "sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            cwd: PathBuf::from("/"),
        }
    }

    /// Spawns `command` with a store relocated from one temporary folder to
    /// another.
    fn spawn_in_temp(command: &BuilderCommand) -> io::Result<SpawnedBuilder> {
        let temp = tempfile::tempdir().expect("tempdir");
        let (real, logical) = (temp.path().join("real"), temp.path().join("logical"));
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::create_dir(&logical).expect("mkdir");
        spawn_relocated(&real, &logical, command)
    }

    /// The builder's whole log and exit code.
    fn finish(spawned: SpawnedBuilder) -> (String, Option<i32>) {
        rustix::fs::fcntl_setfl(&spawned.log, OFlags::empty()).expect("blocking log");
        let mut log = String::new();
        std::fs::File::from(spawned.log)
            .read_to_string(&mut log)
            .expect("reading the log");
        let status = loop {
            match rustix::process::waitpid(Some(spawned.pid), WaitOptions::empty()) {
                Ok(Some((_, status))) => break status,
                Err(Errno::INTR) => {}
                other => panic!("waitpid: {other:?}"),
            }
        };
        (log, status.exit_status())
    }

    #[test]
    fn children_of_a_big_parent_start_with_a_clean_signal_state() {
        if !can_relocate() {
            return;
        }
        // The parent as the CLI has it: handlers installed (pathlocks'
        // SIGUSR1), and here some signals blocked in the spawning thread.
        install_usr1_handler();
        let old = block(&[libc::SIGUSR1, libc::SIGINT, libc::SIGTERM]);
        let blocked = current_mask();
        // 200 MiB resident, which the children share instead of copying
        // its page tables.
        let heap = big_heap();
        for _ in 0..20 {
            let spawned = spawn_in_temp(&sh("cat /proc/self/status")).expect("spawn");
            let (log, code) = finish(spawned);
            assert_eq!(code, Some(0), "{log}");
            assert_eq!(status_mask(&log, "SigBlk:"), 0, "{log}");
            assert_eq!(status_mask(&log, "SigCgt:"), 0, "{log}");
            assert_eq!(status_mask(&log, "SigIgn:"), ignored_but_sigpipe(), "{log}");
            assert_mask_is(&blocked);
        }
        assert_heap_intact(&heap);
        set_mask(&old);
    }

    #[test]
    fn a_missing_program_is_reported_with_its_step_and_errno_and_reaped() {
        if !can_relocate() {
            return;
        }
        let old = block(&[libc::SIGUSR2]);
        let mut command = sh("");
        command.program = PathBuf::from("/nonexistent/builder");
        let error = spawn_in_temp(&command).expect_err("no program");
        let message = error.to_string();
        assert!(
            message.contains("executing /nonexistent/builder"),
            "{message}"
        );
        assert_eq!(error.raw_os_error(), None, "{message}");
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{message}");
        assert!(message.contains("No such file"), "{message}");
        assert_eq!(children_of_this_thread(), "", "a child was left behind");
        restore_mask_checking(&old, libc::SIGUSR2);
    }

    #[test]
    fn failure_records_round_trip_and_garbage_is_refused() {
        for step in Step::ALL {
            let record = encode(step, Errno::ACCESS);
            assert_eq!(decode(&record), Some((step, Errno::ACCESS)));
        }
        assert_eq!(decode(&[0xff; RECORD_BYTES]), None);
    }
}
