//! Waiting for path locks on the event loop, with the debug wait-for
//! cycle check.
//!
//! [`acquire`] wraps `larder_pathlocks::lock`: an all-or-nothing attempt
//! per wake-up, woken at once by a release in this process and retried on
//! the loop's timer (capped backoff) for a holder in another process. The
//! future holds no lock while it waits. When cycle checks are on (debug
//! builds by default), every time the wait is found pending the in-process
//! wait-for graph is searched, and a cycle through this owner ends the wait
//! with an error naming the goals and paths instead of hanging.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::Poll;

use larder_pathlocks::{Backoff, Owner, PathLocks, WaitEdge};

use crate::runtime::Handle;

/// Why [`acquire`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum LockWaitError {
    /// The wait would never end: a cycle of in-process waits.
    #[error("{0}")]
    Cycle(String),
    /// Locking failed (a lock file could not be opened or locked).
    #[error(transparent)]
    Lock(#[from] larder_pathlocks::Error),
}

/// How [`acquire`] waits.
pub struct LockWait<'a> {
    /// The loop whose timer paces retries against other processes.
    pub handle: &'a Handle,
    /// The retry delays for paths another process holds.
    pub backoff: Backoff,
    /// Whether to search the wait-for graph while waiting.
    pub check_cycles: bool,
    /// Names an owner in messages (a goal's derivation).
    pub describe: &'a dyn Fn(Owner) -> String,
}

/// Locks every path of `paths` for `owner`, suspending (never blocking)
/// while any is busy. `on_wait` is called once, the first time the set is
/// found busy, with the paths asked for.
pub async fn acquire(
    wait: &LockWait<'_>,
    owner: Owner,
    paths: &[PathBuf],
    mut on_wait: impl FnMut(&[PathBuf]),
) -> Result<PathLocks, LockWaitError> {
    let handle = wait.handle.clone();
    let timer = move |d| handle.sleep(d);
    let mut future = pin!(larder_pathlocks::lock(owner, paths, timer).with_backoff(wait.backoff));
    let mut announced = false;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result.map_err(LockWaitError::from)),
        Poll::Pending => {
            if !announced {
                announced = true;
                on_wait(paths);
            }
            if wait.check_cycles
                && let Some(cycle) = larder_pathlocks::snapshot().find_cycle()
                && cycle.iter().any(|edge| edge.waiter == owner)
            {
                return Poll::Ready(Err(LockWaitError::Cycle(describe_cycle(
                    &cycle,
                    wait.describe,
                ))));
            }
            Poll::Pending
        }
    })
    .await
}

/// The default for [`LockWait::check_cycles`]: on in debug builds.
pub const CHECK_CYCLES_DEFAULT: bool = cfg!(debug_assertions);

fn describe_cycle(cycle: &[WaitEdge], describe: &dyn Fn(Owner) -> String) -> String {
    let mut message =
        String::from("deadlock averted: a cycle of goals waiting for each other's locks:");
    for edge in cycle {
        let _ = write!(
            message,
            "\n  {} waits for the lock on '{}', held by {}",
            describe(edge.waiter),
            edge.path.display(),
            describe(edge.holder)
        );
    }
    message
}
