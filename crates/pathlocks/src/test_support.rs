//! Helpers for the unit tests: a thread-based timer (test code only; the
//! crate itself never spawns threads), and a stand-in for another process.

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::lock_file_path;

/// A sleep future completed by a helper thread.
pub(crate) struct ThreadSleep {
    state: Arc<Mutex<(bool, Option<Waker>)>>,
}

pub(crate) fn thread_sleep(duration: Duration) -> ThreadSleep {
    let state = Arc::new(Mutex::new((false, None::<Waker>)));
    let shared = Arc::clone(&state);
    std::thread::spawn(move || {
        std::thread::sleep(duration);
        let mut state = shared.lock().unwrap();
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
        let mut state = self.state.lock().unwrap();
        if state.0 {
            Poll::Ready(())
        } else {
            state.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A timer that must never be asked for: for waits that only a release in
/// this process may end.
pub(crate) fn no_timer(_: Duration) -> std::future::Ready<()> {
    panic!("an in-process wait must not poll");
}

/// Locks `path`'s lock file through an open file description of its own,
/// outside the lock table: to this process's locks it looks exactly like
/// another process holding the lock.
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
pub(crate) fn open_descriptors(path: &Path) -> usize {
    let lock_path = lock_file_path(path);
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| *target == lock_path)
        .count()
}
