//! [`ChildSetup`]: a child of `clone_vm` that may still be setting up, the
//! memory it runs on until then, and its answer.
//!
//! A child made without `CLONE_VFORK` reads its plan and runs on its stack,
//! both in this process's memory, until it has executed its program or
//! exited, while this process goes on. The child's error pipe is
//! close-on-exec and the child holds its only write end, so EOF on the read
//! end says exactly that: the kernel closes a process's descriptors only
//! after it has dropped its memory, at `execve` as at exit. Before EOF the
//! child may have written one failure record, which its plan
//! ([`SetupRecords`]) turns into a message.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use rustix::process::{Pid, Signal};

use crate::SandboxError;
use crate::clone_vm::ChildStack;
use crate::spawn::read_full;

/// What the failure records of a child mean: implemented by the plan the
/// child reads.
pub(crate) trait SetupRecords: Send {
    /// The length of one record.
    fn record_bytes(&self) -> usize;

    /// The failed step a record names, with its paths, and the errno;
    /// `None` for bytes that are no record.
    fn describe(&self, record: &[u8]) -> Option<(String, i32)>;
}

/// The longest record any child writes.
const MAX_RECORD_BYTES: usize = 16;

/// A child of `clone_vm` that may still be setting up: what it reads and
/// runs on (its plan and its stack) until it has executed its program or
/// exited, and how to tell which it did: the read end of its close-on-exec
/// error pipe.
///
/// Dropping it before that is known kills the child if it is still setting
/// up, and waits until it is gone: the memory it uses is freed only then.
pub struct ChildSetup {
    error: OwnedFd,
    pid: Pid,
    /// The setup's outcome, once read: the failed step and errno.
    outcome: Option<Result<(), (String, i32)>>,
    // Read by the child until `outcome` is known: freed only after
    // `Drop::drop` made sure the child is gone.
    plan: Box<dyn SetupRecords>,
    _stack: ChildStack,
}

impl fmt::Debug for ChildSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSetup")
            .field("pid", &self.pid)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl ChildSetup {
    /// The setup of the child `pid`, which reads `plan`, runs on `stack`
    /// and holds the only write end of the pipe `error` reads.
    pub(crate) fn new(
        pid: Pid,
        error: OwnedFd,
        plan: Box<dyn SetupRecords>,
        stack: ChildStack,
    ) -> ChildSetup {
        ChildSetup {
            error,
            pid,
            outcome: None,
            plan,
            _stack: stack,
        }
    }

    /// Waits until the child has executed its program (`Ok`) or reported a
    /// failed setup step and exited (the error names the step). Returns at
    /// once after the child was reaped. Idempotent.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Child`] with the failed step, or a failure to read
    /// the error pipe.
    pub fn wait(&mut self) -> Result<(), SandboxError> {
        let outcome = match &self.outcome {
            Some(outcome) => outcome.clone(),
            None => {
                let outcome = self.read_outcome()?;
                self.outcome = Some(outcome.clone());
                outcome
            }
        };
        outcome.map_err(|(step, errno)| SandboxError::Child {
            step,
            source: io::Error::from_raw_os_error(errno),
        })
    }

    /// Reads the error pipe until EOF; a record before it is a failure.
    fn read_outcome(&self) -> Result<Result<(), (String, i32)>, SandboxError> {
        let mut record = [0u8; MAX_RECORD_BYTES];
        let record = &mut record[..self.plan.record_bytes().min(MAX_RECORD_BYTES)];
        let read = read_full(&self.error, record).map_err(unreadable)?;
        // Whatever came after a record (nothing, from a well-behaved child)
        // is read too: EOF is what says the child is gone.
        let mut rest = [0u8; 64];
        while read_full(&self.error, &mut rest).map_err(unreadable)? > 0 {}
        if read == 0 {
            return Ok(Ok(()));
        }
        let failure = (read == record.len())
            .then(|| self.plan.describe(record))
            .flatten();
        match failure {
            Some(failure) => Ok(Err(failure)),
            None => Err(unreadable(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated or unknown failure record",
            ))),
        }
    }

    /// Whether the child still holds the error pipe's write end, that is,
    /// has neither executed its program nor exited.
    fn child_holds_the_pipe(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.error, PollFlags::IN)];
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(0) => true,
            // Readable: a record or EOF. Only EOF says the writer is gone.
            Ok(_) => !fds[0].revents().contains(PollFlags::HUP),
            Err(_) => true,
        }
    }
}

impl Drop for ChildSetup {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        if self.child_holds_the_pipe() {
            // Still setting up, so not a zombie either: its pid cannot have
            // been reused, and killing it is what ends its use of `plan` and
            // `_stack`.
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        }
        // EOF comes when the child has left this memory; an error of the
        // read (none is expected on a pipe) leaves nothing else to wait on.
        let mut rest = [0u8; 64];
        while let Ok(1..) = read_full(&self.error, &mut rest) {}
    }
}

fn unreadable(source: io::Error) -> SandboxError {
    SandboxError::Spawn {
        step: "reading the builder's setup result",
        source,
    }
}
