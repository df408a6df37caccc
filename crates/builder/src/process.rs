//! The builder process: spawned in its own process group with stdout and
//! stderr on one pipe, watched without blocking, killed as a group.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

/// What to run: the builder program, its arguments and environment, and
/// the directory it starts in. Values are final (rewrites applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderCommand {
    /// The program, as the derivation's `builder`.
    pub program: PathBuf,
    /// `argv[0]`: the program's base name, as Nix passes it.
    pub arg0: String,
    /// The arguments after `argv[0]`.
    pub args: Vec<String>,
    /// The whole environment, in the order Nix sets it; later entries win.
    pub env: Vec<(String, String)>,
    /// The working directory (the build directory as the builder sees it).
    pub cwd: PathBuf,
}

/// A started builder process, as a [`DerivationBuilder`](crate::DerivationBuilder)
/// hands it back: the leader of its own process group, the read end of its
/// log pipe and, where the kernel has them, a pidfd.
#[derive(Debug)]
pub struct SpawnedBuilder {
    /// The process id, which is also its process group id.
    pub pid: Pid,
    /// The read end of the pipe its stdout and stderr write to.
    pub log: OwnedFd,
    /// A pidfd that turns readable when the process exits (`None` on
    /// kernels without `pidfd_open`; the worker then polls [`try_reap`]).
    pub exit_fd: Option<OwnedFd>,
}

/// How a builder process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    #[must_use]
    pub const fn success(self) -> bool {
        matches!(self, Self::Code(0))
    }

    fn from_wait(status: rustix::process::WaitStatus) -> Self {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            // waitpid without WUNTRACED/WCONTINUED only reports terminated
            // children, so this is a raw status we cannot decode.
            (None, None) => Self::Code(status.as_raw()),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// Nix's `statusToString`, after "builder for '…' ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "failed with exit code {code}"),
            Self::Signal(signal) => {
                write!(
                    f,
                    "failed due to signal {signal} ({})",
                    signal_name(*signal)
                )
            }
        }
    }
}

/// `strsignal` for the signals a builder is likely to die of.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "Hangup",
        2 => "Interrupt",
        3 => "Quit",
        4 => "Illegal instruction",
        6 => "Aborted",
        7 => "Bus error",
        8 => "Floating point exception",
        9 => "Killed",
        11 => "Segmentation fault",
        13 => "Broken pipe",
        14 => "Alarm clock",
        15 => "Terminated",
        _ => "Unknown signal",
    }
}

/// Spawns `command` the generic way: `std::process::Command` with a clean
/// environment, stdin from `/dev/null`, stdout and stderr on one new pipe,
/// and the child made the leader of a new process group.
///
/// `wrapper`, when given, is a program and arguments that are run instead,
/// with the builder program and its arguments appended; it must `exec` the
/// builder in the same process (the pid and group stay the builder's).
///
/// # Errors
///
/// When the pipe cannot be made or the program cannot be started.
pub fn spawn_process_group(
    command: &BuilderCommand,
    wrapper: Option<&[OsString]>,
) -> io::Result<SpawnedBuilder> {
    let (reader, writer) = io::pipe()?;
    let writer_for_stderr = writer.try_clone()?;
    let mut cmd = match wrapper {
        Some([program, wrapper_args @ ..]) => {
            let mut cmd = Command::new(program);
            cmd.args(wrapper_args).arg(&command.program);
            cmd
        }
        _ => {
            let mut cmd = Command::new(&command.program);
            cmd.arg0(&command.arg0);
            cmd
        }
    };
    cmd.args(&command.args)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&command.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_for_stderr))
        .process_group(0);
    let child = cmd.spawn()?;
    // `Command` dropped its copies of the write end when `spawn` returned,
    // so the pipe reaches end-of-file once every builder process has exited
    // or closed it.
    drop(cmd);
    let pid = Pid::from_child(&child);
    // The `Child` holds no pipes; dropping it neither kills nor reaps the
    // process, which this crate waits for by pid.
    drop(child);
    let log = OwnedFd::from(reader);
    set_nonblocking(log.as_fd())?;
    let exit_fd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::NOSYS | Errno::PERM) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(SpawnedBuilder { pid, log, exit_fd })
}

/// Puts a descriptor in non-blocking mode.
///
/// # Errors
///
/// When `fcntl` fails.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// Sends SIGKILL to the builder `pid`, which must not have been reaped yet,
/// and to the process group it leads. A process or group that is already
/// gone is not an error.
///
/// The builder itself is killed, not only its group, because it may not
/// lead its group yet: a child that is still setting up when the builder
/// is handed back (the sandbox's, which starts its session only once its
/// namespaces are made) would be missed by the group's kill and go on to
/// run the builder.
///
/// # Errors
///
/// When `kill` fails for another reason.
pub fn kill_builder(pid: Pid) -> io::Result<()> {
    match rustix::process::kill_process(pid, Signal::KILL) {
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => return Err(e.into()),
    }
    kill_process_group(pid)
}

/// Sends SIGKILL to the process group `pid` leads. A group that is already
/// gone is not an error. Safe after `pid` was reaped: the kernel does not
/// reuse a process id while a group of that id has members.
///
/// # Errors
///
/// When `kill` fails for another reason.
pub fn kill_process_group(pid: Pid) -> io::Result<()> {
    match rustix::process::kill_process_group(pid, Signal::KILL) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the process if it has exited, without blocking.
///
/// # Errors
///
/// When `waitpid` fails (for instance, the process was reaped already).
pub fn try_reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => return Ok(Some(ExitStatus::from_wait(status))),
            Ok(None) => return Ok(None),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Kills the process group and reaps its leader. The wait is bounded: a
/// process sent SIGKILL exits as soon as the kernel schedules it.
///
/// # Errors
///
/// When `kill` or `waitpid` fails.
pub(crate) fn kill_and_reap(pid: Pid) -> io::Result<ExitStatus> {
    kill_builder(pid)?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_wait(status)),
            Ok(None) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The result of one non-blocking read of the log pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRead {
    /// This many bytes were read into the buffer.
    Data(usize),
    /// Nothing to read now; poll the descriptor again.
    WouldBlock,
    /// Every writer closed the pipe.
    Eof,
}

/// Reads what the pipe holds now, without blocking.
pub(crate) fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<LogRead> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return Ok(LogRead::Eof),
            Ok(n) => return Ok(LogRead::Data(n)),
            Err(Errno::AGAIN) => return Ok(LogRead::WouldBlock),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_builder_that_leads_no_group_yet_is_killed_too() {
        // A child in this test's own process group, as a sandbox child is
        // before its `setsid`: the group named by its pid does not exist.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid")).expect("a pid");
        kill_builder(pid).expect("kill");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "SIGKILL: {status}");
    }
}
