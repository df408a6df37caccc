//! Waiting for a set of locks without blocking: [`lock`] and its future.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::acquire::{lock_order, lock_reserved};
use crate::error::Error;
use crate::guard::PathLocks;
use crate::owner::Owner;
use crate::snapshot::Blocker;
use crate::table::{Reservation, TABLE, WaitId};

/// The caller's timer: makes a future that completes after `duration`.
///
/// This crate owns no event loop and no timer thread; the worker passes a
/// timer of its own loop, so the retries against other processes run on
/// that loop. Any `FnMut(Duration) -> impl Future<Output = ()>` is a timer.
pub trait Timer {
    /// The future [`sleep`](Timer::sleep) returns.
    type Sleep: Future<Output = ()>;

    /// A future that completes once `duration` has passed.
    fn sleep(&mut self, duration: Duration) -> Self::Sleep;
}

impl<F, S> Timer for F
where
    F: FnMut(Duration) -> S,
    S: Future<Output = ()>,
{
    type Sleep = S;

    fn sleep(&mut self, duration: Duration) -> S {
        self(duration)
    }
}

/// How long to wait before trying again a path that another process holds:
/// `initial`, doubled after each busy attempt, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 ms, doubling up to 20 ms: a retry costs an `open`, a failed
    /// `flock` and a `close`, so even the capped rate (50 a second per
    /// waiter) is cheap, and a handoff from another process is seen within
    /// 20 ms instead of Nix's 5 s poll interval.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(20),
        }
    }
}

impl Backoff {
    fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max)
    }
}

/// Locks every path of `paths` for `owner`: the returned future resolves
/// once all of them are held, never blocking the thread that polls it.
///
/// Each attempt is all-or-nothing, so the future holds nothing while it
/// waits, and dropping it gives up cleanly. A path held in this process is
/// waited for on the lock table: the holder's release wakes the future at
/// once. A path held by another process is tried again after a delay from
/// `timer`, growing as [`Backoff`] says. An owner asking for a path it
/// already holds resolves to [`Error::WouldDeadlock`] instead of waiting
/// forever.
pub fn lock<P: AsRef<Path>, T: Timer>(
    owner: Owner,
    paths: impl IntoIterator<Item = P>,
    timer: T,
) -> LockFuture<T> {
    let backoff = Backoff::default();
    let (paths, error) = match lock_order(paths) {
        Ok(paths) => (paths, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    LockFuture {
        owner,
        paths,
        error,
        timer,
        backoff,
        delay: backoff.initial,
        sleep: None,
        wait: None,
        announced: false,
    }
}

/// The future [`lock`] returns.
#[must_use = "futures do nothing unless polled"]
pub struct LockFuture<T: Timer> {
    owner: Owner,
    /// In lock order.
    paths: Vec<PathBuf>,
    /// A bad path, reported on the first poll.
    error: Option<Error>,
    timer: T,
    backoff: Backoff,
    delay: Duration,
    /// The backoff delay running while another process holds a path.
    sleep: Option<Pin<Box<T::Sleep>>>,
    /// Set once the table knows of this wait (a waker or a record).
    wait: Option<WaitId>,
    announced: bool,
}

impl<T: Timer> LockFuture<T> {
    /// Uses `backoff` instead of [`Backoff::default`].
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self.delay = backoff.initial;
        self
    }

    /// The owner waiting.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The paths asked for, in lock order.
    pub fn paths(&self) -> impl ExactSizeIterator<Item = &Path> {
        self.paths.iter().map(PathBuf::as_path)
    }

    fn note_wait(&mut self, wait: WaitId, blocked_on: Vec<Blocker>) {
        if !self.announced {
            self.announced = true;
            let paths: Vec<_> = blocked_on
                .iter()
                .map(|blocker| match blocker {
                    Blocker::InProcess { path, .. } | Blocker::OtherProcess { path } => {
                        path.display().to_string()
                    }
                })
                .collect();
            tracing::info!(owner = %self.owner, ?paths, "waiting for lock");
        }
        TABLE.set_wait(wait, self.owner, &self.paths, blocked_on);
    }

    fn forget_wait(&mut self) {
        if let Some(wait) = self.wait.take() {
            TABLE.clear_wait(wait, &self.paths);
        }
    }
}

impl<T: Timer + Unpin> Future for LockFuture<T> {
    type Output = Result<PathLocks, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        loop {
            if let Some(sleep) = &mut this.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            let wait = *this.wait.get_or_insert_with(|| TABLE.new_wait_id());
            match TABLE.try_reserve(this.owner, &this.paths, Some((wait, cx.waker()))) {
                Err(error) => {
                    this.forget_wait();
                    return Poll::Ready(Err(error));
                }
                Ok(Reservation::Busy(busy)) => {
                    // The holders' releases wake this task; no timer needed.
                    let blocked_on = busy
                        .into_iter()
                        .map(|(path, holder)| Blocker::InProcess { path, holder })
                        .collect();
                    this.note_wait(wait, blocked_on);
                    return Poll::Pending;
                }
                Ok(Reservation::Reserved) => {}
            }
            match lock_reserved(this.owner, &this.paths) {
                Ok(Ok(guard)) => {
                    this.forget_wait();
                    return Poll::Ready(Ok(guard));
                }
                Err(error) => {
                    this.forget_wait();
                    return Poll::Ready(Err(error));
                }
                Ok(Err(path)) => {
                    this.note_wait(wait, vec![Blocker::OtherProcess { path }]);
                    this.sleep = Some(Box::pin(this.timer.sleep(this.delay)));
                    this.delay = this.backoff.next(this.delay);
                }
            }
        }
    }
}

impl<T: Timer> Drop for LockFuture<T> {
    fn drop(&mut self) {
        // Between polls the future holds no lock and no reservation; only
        // its wait record and registered wakers remain to be forgotten.
        self.forget_wait();
    }
}
