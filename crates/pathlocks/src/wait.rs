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

impl<T: Timer> std::fmt::Debug for LockFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture")
            .field("owner", &self.owner)
            .field("paths", &self.paths)
            .field("backoff", &self.backoff)
            .field("delay", &self.delay)
            .field("sleeping", &self.sleep.is_some())
            .finish_non_exhaustive()
    }
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::executor::{LocalPool, block_on};
    use futures::task::LocalSpawnExt;

    use super::*;
    use crate::test_support::{
        foreign_can_lock, foreign_lock, no_timer, open_descriptors, thread_sleep, yield_now,
    };
    use crate::{snapshot, try_lock};

    /// Spawns `future` on `pool`; the returned cell gets its output.
    fn spawn<F: Future + 'static>(pool: &LocalPool, future: F) -> Rc<RefCell<Option<F::Output>>> {
        let output = Rc::new(RefCell::new(None));
        let slot = Rc::clone(&output);
        pool.spawner()
            .spawn_local(async move {
                *slot.borrow_mut() = Some(future.await);
            })
            .unwrap();
        output
    }

    #[test]
    fn a_release_in_this_process_wakes_the_waiter_without_a_timer() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = ["a", "b"].map(|name| dir.path().join(name));
        let (holder, waiter) = (Owner::fresh(), Owner::fresh());
        let guard = try_lock(holder, [&b]).unwrap();
        let mut pool = LocalPool::new();
        let acquired = spawn(&pool, lock(waiter, [&a, &b], no_timer));
        pool.run_until_stalled();
        assert!(acquired.borrow().is_none());
        // It holds nothing while it waits, not even `a`, which was free.
        assert!(foreign_can_lock(&a));
        let seen = snapshot();
        assert_eq!(seen.held_by(waiter).count(), 0);
        let waiting = seen.waiting.iter().find(|w| w.owner == waiter).unwrap();
        assert_eq!(waiting.paths, [a.clone(), b.clone()]);
        assert_eq!(
            waiting.blocked_on,
            [Blocker::InProcess {
                path: b.clone(),
                holder
            }]
        );
        assert_eq!(
            waiting.to_string(),
            format!("waiting for lock on '{}'", b.display())
        );
        drop(guard);
        pool.run_until_stalled();
        let guard = acquired.borrow_mut().take().unwrap().unwrap();
        assert_eq!(guard.paths().collect::<Vec<_>>(), [&a, &b]);
        assert!(snapshot().waiting.iter().all(|w| w.owner != waiter));
        assert_eq!(open_descriptors(&b), 1);
    }

    #[test]
    fn waiters_in_this_process_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let counter = Rc::new(RefCell::new(0));
        let mut pool = LocalPool::new();
        let mut outputs = Vec::new();
        for _ in 0..5 {
            let counter = Rc::clone(&counter);
            let path = path.clone();
            outputs.push(spawn(&pool, async move {
                for _ in 0..20 {
                    let guard = lock(Owner::fresh(), [&path], no_timer).await.unwrap();
                    let seen = *counter.borrow();
                    // Let the others run (and find the path busy).
                    yield_now().await;
                    *counter.borrow_mut() = seen + 1;
                    drop(guard);
                }
            }));
        }
        pool.run();
        assert_eq!(*counter.borrow(), 100);
        assert!(outputs.iter().all(|output| output.borrow().is_some()));
    }

    #[test]
    fn another_process_is_retried_on_the_callers_timer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let other_process = foreign_lock(&path);
        let sleeps = Arc::new(AtomicUsize::new(0));
        let timer = {
            let sleeps = Arc::clone(&sleeps);
            move |duration: Duration| {
                sleeps.fetch_add(1, Ordering::Relaxed);
                thread_sleep(duration)
            }
        };
        let owner = Owner::fresh();
        let waiting = std::thread::spawn({
            let path = path.clone();
            move || block_on(lock(owner, [&path], timer))
        });
        while sleeps.load(Ordering::Relaxed) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = snapshot();
        let waiter = seen.waiting.iter().find(|w| w.owner == owner).unwrap();
        assert_eq!(
            waiter.blocked_on,
            [Blocker::OtherProcess { path: path.clone() }]
        );
        assert_eq!(seen.holder_of(&path), None);
        drop(other_process);
        let guard = waiting.join().unwrap().unwrap();
        assert!(!foreign_can_lock(&path));
        drop(guard);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        };
        let delays: Vec<_> =
            std::iter::successors(Some(backoff.initial), |d| Some(backoff.next(*d)))
                .take(5)
                .map(|d| d.as_millis())
                .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_cancelled_wait_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|name| dir.path().join(name));
        let holder = Owner::fresh();
        let guard = try_lock(holder, [&b]).unwrap();
        let other_process = foreign_lock(&c);
        let (in_process, cross_process) = (Owner::fresh(), Owner::fresh());
        let mut pool = LocalPool::new();
        let mut first = Box::pin(lock(in_process, [&a, &b], no_timer));
        let mut second = Box::pin(lock(cross_process, [&a, &c], thread_sleep));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            snapshot()
                .waiting
                .iter()
                .filter(|w| w.owner == in_process || w.owner == cross_process)
                .count(),
            2
        );
        drop(first);
        drop(second);
        let seen = snapshot();
        assert!(
            seen.waiting
                .iter()
                .all(|w| w.owner != in_process && w.owner != cross_process)
        );
        assert_eq!(
            seen.held_by(in_process).count() + seen.held_by(cross_process).count(),
            0
        );
        assert!(foreign_can_lock(&a));
        // Releasing wakes nobody stale, and the paths go to the next asker.
        drop(guard);
        drop(other_process);
        let output = spawn(&pool, lock(Owner::fresh(), [&a, &b, &c], no_timer));
        pool.run_until_stalled();
        assert!(output.borrow().as_ref().unwrap().is_ok());
    }

    #[test]
    fn waiting_for_a_path_the_owner_holds_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let owner = Owner::fresh();
        let _guard = try_lock(owner, [&path]).unwrap();
        let result = block_on(lock(owner, [&path], no_timer));
        assert!(matches!(result, Err(Error::WouldDeadlock { .. })));
    }

    #[test]
    fn a_wait_cycle_between_owners_shows_in_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let [p, q] = ["p", "q"].map(|name| dir.path().join(name));
        let (first, second) = (Owner::fresh(), Owner::fresh());
        let _p = try_lock(first, [&p]).unwrap();
        let _q = try_lock(second, [&q]).unwrap();
        let mut pool = LocalPool::new();
        let _a = spawn(&pool, lock(first, [&q], no_timer));
        pool.run_until_stalled();
        assert!(
            snapshot()
                .find_cycle()
                .is_none_or(|cycle| cycle.iter().all(|e| e.waiter != first))
        );
        let _b = spawn(&pool, lock(second, [&p], no_timer));
        pool.run_until_stalled();
        let cycle = snapshot().find_cycle().unwrap();
        let mut edges: Vec<_> = cycle
            .iter()
            .map(|e| (e.waiter, e.holder, e.path.clone()))
            .collect();
        edges.sort();
        let mut expected = vec![(first, second, q.clone()), (second, first, p.clone())];
        expected.sort();
        assert_eq!(edges, expected);
    }
}
