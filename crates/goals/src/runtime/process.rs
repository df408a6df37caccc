//! [`Process`]: a child process whose exit the reactor watches through a
//! pidfd, and which is killed (with its process group) when dropped before
//! it was reaped.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::rc::Rc;
use std::task::Poll;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use super::Handle;
use super::reactor::IoKey;

/// What a kill reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillScope {
    /// The process only (for example the init of a PID namespace, whose
    /// death kills the whole namespace).
    Process,
    /// The process and its process group, whose id is the child's pid: the
    /// child must have been started as a group leader
    /// (`CommandExt::process_group(0)` or `setsid`).
    Group,
}

/// A child of this process, watched through its pidfd.
///
/// Dropping a `Process` that was not reaped sends `SIGKILL` (to its group,
/// with [`KillScope::Group`]) and hands the pidfd to the reactor, which
/// reaps the child when it is gone. So cancelling a goal, which drops its
/// future, kills its builder without ever blocking the worker thread.
pub struct Process {
    handle: Handle,
    pid: Pid,
    pidfd: Option<Rc<OwnedFd>>,
    key: IoKey,
    scope: KillScope,
    status: Option<ExitStatus>,
}

impl Process {
    /// Watches the child `pid`. It must be a child of this process that is
    /// not reaped yet (so the pid cannot have been reused).
    pub fn from_pid(handle: &Handle, pid: u32, scope: KillScope) -> io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let pidfd = Rc::new(rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK)?);
        let key = handle.reactor().register(Rc::clone(&pidfd));
        Ok(Self {
            handle: handle.clone(),
            pid,
            pidfd: Some(pidfd),
            key,
            scope,
            status: None,
        })
    }

    /// Watches a child spawned with `std::process::Command`. The standard
    /// library's `Child` neither waits nor kills on drop, so it is simply
    /// consumed; take its pipes out before.
    pub fn from_child(
        handle: &Handle,
        child: std::process::Child,
        scope: KillScope,
    ) -> io::Result<Self> {
        Self::from_pid(handle, child.id(), scope)
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// The pidfd, until the child is reaped.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// The exit status if the child has exited (reaping it), without
    /// waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(pidfd) = &self.pidfd else {
            return Ok(self.status);
        };
        let found = match rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(found) => found,
            // A non-blocking pidfd may say EAGAIN for "still running".
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(found.map(|status| {
            let status = exit_status(&status);
            self.status = Some(status);
            self.release_pidfd();
            status
        }))
    }

    /// Waits for the child to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let key = self.key;
            let handle = self.handle.clone();
            std::future::poll_fn(|cx| {
                if handle.reactor().poll_ready(key, cx.waker()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Waits until the child has exited, without reaping it: its pid (and
    /// process group id) stays reserved, so [`Process::kill`] can still
    /// reach processes it left behind.
    pub async fn exited(&self) {
        if self.pidfd.is_none() {
            return;
        }
        let key = self.key;
        std::future::poll_fn(|cx| {
            if self.handle.reactor().poll_ready(key, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Sends `SIGKILL` (to the group with [`KillScope::Group`]). Does
    /// nothing once the child is reaped, so a recycled pid is never hit.
    pub fn kill(&mut self) -> io::Result<()> {
        let Some(pidfd) = &self.pidfd else {
            return Ok(());
        };
        if self.scope == KillScope::Group {
            // The group outlives a dead but unreaped leader, so this also
            // reaches grandchildren that kept running. ESRCH: already gone.
            match rustix::process::kill_process_group(self.pid, Signal::KILL) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::process::pidfd_send_signal(pidfd.as_fd(), Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn release_pidfd(&mut self) {
        self.handle.reactor().deregister(self.key);
        self.pidfd = None;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.pidfd.is_none() {
            return;
        }
        if let Err(e) = self.kill() {
            tracing::warn!(pid = self.id(), "could not kill child: {e}");
        }
        self.handle.reactor().deregister(self.key);
        if let Some(pidfd) = self.pidfd.take() {
            match Rc::try_unwrap(pidfd) {
                Ok(pidfd) => self.handle.reactor().add_zombie(pidfd),
                // The reactor held the last other reference and has just
                // dropped it, so this cannot happen; if it did, the child
                // would stay a zombie until this process exits.
                Err(_) => tracing::warn!(pid = self.id(), "pidfd still shared; not reaped"),
            }
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish()
    }
}

/// Turns `waitid`'s answer into the standard library's status, through the
/// raw `wait(2)` encoding: exit code in bits 8..16, signal in bits 0..7,
/// core-dump flag 0x80.
fn exit_status(status: &WaitIdStatus) -> ExitStatus {
    let raw = if let Some(code) = status.exit_status() {
        (code & 0xff) << 8
    } else if let Some(signal) = status.terminating_signal() {
        (signal & 0x7f) | if status.dumped() { 0x80 } else { 0 }
    } else {
        0
    };
    ExitStatus::from_raw(raw)
}
