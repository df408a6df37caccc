//! Helpers for tests and examples (feature `test-support`): a timer for
//! [`lock`](crate::lock) made of a helper thread (test code only: the crate
//! itself never spawns threads; a worker passes a timer of its own event
//! loop), and a way to let other tasks run. The crate's unit tests also get
//! a stand-in for another process.

#[cfg(test)]
use std::fs::File;
use std::future::Future;
#[cfg(test)]
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[cfg(test)]
use crate::lock_file_path;

/// A sleep future completed by a helper thread: see [`thread_sleep`].
#[derive(Debug)]
pub struct ThreadSleep {
    /// Whether the time is up, and the waker to call when it is.
    state: Arc<Mutex<(bool, Option<Waker>)>>,
}

/// A future ready once `duration` has passed, measured by a thread of its
/// own: a timer for [`lock`](crate::lock) outside an event loop.
pub fn thread_sleep(duration: Duration) -> ThreadSleep {
    let state = Arc::new(Mutex::new((false, None::<Waker>)));
    let shared = Arc::clone(&state);
    std::thread::spawn(move || {
        std::thread::sleep(duration);
        let mut state = lock_state(&shared);
        state.0 = true;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    });
    ThreadSleep { state }
}

impl Future for ThreadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock_state(&self.state);
        if state.0 {
            Poll::Ready(())
        } else {
            state.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Lets the other tasks of the executor run once: pending once, with a
/// wake-up, then ready.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// The sleep's state. A panic while it was locked cannot leave it
/// inconsistent (a flag and an optional waker, each written whole), so a
/// poisoned lock is used as it is.
fn lock_state(state: &Mutex<(bool, Option<Waker>)>) -> MutexGuard<'_, (bool, Option<Waker>)> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A timer that must never be asked for: for waits that only a release in
/// this process may end.
#[cfg(test)]
pub(crate) fn no_timer(_: Duration) -> std::future::Ready<()> {
    panic!("an in-process wait must not poll");
}

/// Locks `path`'s lock file through an open file description of its own,
/// outside the lock table: to this process's locks it looks exactly like
/// another process holding the lock.
#[cfg(test)]
pub(crate) fn foreign_lock(path: &Path) -> File {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_file_path(path))
        .unwrap();
    file.try_lock().unwrap();
    file
}

/// Whether `path` could be locked right now by another process.
#[cfg(test)]
pub(crate) fn foreign_can_lock(path: &Path) -> bool {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_file_path(path))
        .unwrap();
    file.try_lock().is_ok()
}

/// How many descriptors of this process refer to `path`'s lock file.
#[cfg(test)]
pub(crate) fn open_descriptors(path: &Path) -> usize {
    let lock_path = lock_file_path(path);
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| *target == lock_path)
        .count()
}
