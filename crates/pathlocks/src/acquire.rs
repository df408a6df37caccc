//! Taking a set of locks now: [`try_lock`] and [`lock_blocking`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Busy, Error, Holder, TryLockError};
use crate::guard::PathLocks;
use crate::lock_file::{self, LockFile};
use crate::owner::Owner;
use crate::snapshot::Blocker;
use crate::table::{Reservation, TABLE};

/// Locks every path of `paths` for `owner`, or none, without ever
/// blocking.
///
/// The lock table is asked first: a path held in this process is busy
/// ([`Holder::Owner`]) without any file being opened. Then the lock files
/// are locked in sorted order with `LOCK_NB`; a path locked by another
/// process is busy ([`Holder::OtherProcess`]) and the locks taken so far are
/// released. An owner asking for a path it already holds gets
/// [`Error::WouldDeadlock`].
pub fn try_lock<P: AsRef<Path>>(
    owner: Owner,
    paths: impl IntoIterator<Item = P>,
) -> Result<PathLocks, TryLockError> {
    let paths = lock_order(paths)?;
    match TABLE.try_reserve(owner, &paths, None)? {
        Reservation::Reserved => {}
        Reservation::Busy(busy) => {
            // `try_reserve` reports `Busy` only with at least one busy path.
            let (path, holder) = busy.into_iter().next().expect("a busy path");
            return Err(TryLockError::Busy(Busy {
                path,
                holder: Holder::Owner(holder),
            }));
        }
    }
    match lock_reserved(owner, &paths)? {
        Ok(guard) => Ok(guard),
        Err(path) => Err(TryLockError::Busy(Busy {
            path,
            holder: Holder::OtherProcess,
        })),
    }
}

/// Locks every path of `paths` for `owner`, blocking the calling thread
/// until all are held. For tools without an event loop; the worker never
/// calls it.
///
/// Paths are taken one by one in sorted order (as Nix does, so two
/// blocking lockers cannot deadlock). A path held in this process by
/// another thread is waited for on the lock table; one held by another
/// process with a blocking `flock` that is retried when a signal interrupts
/// it. Waiting for a path that the same owner, or a guard taken on this
/// thread, holds would never end and fails with [`Error::WouldDeadlock`].
pub fn lock_blocking<P: AsRef<Path>>(
    owner: Owner,
    paths: impl IntoIterator<Item = P>,
) -> Result<PathLocks, Error> {
    let paths = lock_order(paths)?;
    let wait = TABLE.new_wait_id();
    let mut guard = PathLocks::new(owner);
    let result = (|| {
        for path in &paths {
            TABLE.reserve_blocking(owner, path, wait, &paths)?;
            let acquired = lock_file::acquire_blocking(path, || {
                tracing::info!(%owner, path = %path.display(), "waiting for lock held by another process");
                let blocked_on = vec![Blocker::OtherProcess { path: path.clone() }];
                TABLE.set_wait(wait, owner, &paths, blocked_on);
            });
            match acquired {
                Ok(file) => guard.push(path.clone(), file),
                Err(error) => {
                    TABLE.release([path.as_path()]);
                    return Err(error);
                }
            }
        }
        Ok(())
    })();
    TABLE.clear_wait(wait, &paths);
    // On error, dropping the guard releases what was taken.
    result.map(|()| guard)
}

/// The set to lock: absolute, without duplicates, in lock order (Nix's
/// order: component-wise, which `Path`'s `Ord` is).
pub(crate) fn lock_order<P: AsRef<Path>>(
    paths: impl IntoIterator<Item = P>,
) -> Result<Vec<PathBuf>, Error> {
    let mut set = BTreeSet::new();
    for path in paths {
        let path = path.as_ref();
        let absolute = std::path::absolute(path).map_err(|source| Error::InvalidPath {
            path: path.to_owned(),
            source,
        })?;
        set.insert(absolute);
    }
    Ok(set.into_iter().collect())
}

/// Locks the lock files of `paths`, which the table has reserved for
/// `owner`, without blocking. `Ok(Err(path))`: `path` is locked by another
/// process. On any outcome but success the reservations are released and
/// nothing is held.
pub(crate) fn lock_reserved(
    owner: Owner,
    paths: &[PathBuf],
) -> Result<Result<PathLocks, PathBuf>, Error> {
    let mut files: Vec<LockFile> = Vec::with_capacity(paths.len());
    for path in paths {
        let failure = match lock_file::try_acquire(path) {
            Ok(Some(file)) => {
                files.push(file);
                continue;
            }
            Ok(None) => Ok(Err(path.clone())),
            Err(error) => Err(error),
        };
        // Close the files before the table lets anyone else in.
        drop(files);
        TABLE.release(paths.iter().map(PathBuf::as_path));
        return failure;
    }
    let mut guard = PathLocks::new(owner);
    for (path, file) in paths.iter().zip(files) {
        guard.push(path.clone(), file);
    }
    Ok(Ok(guard))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::lock_file::{EINTR_RETRIES, lock_file_path};
    use crate::test_support::{foreign_can_lock, foreign_lock, open_descriptors};
    use crate::{Blocker, snapshot};

    const A: Owner = Owner::new(1);
    const B: Owner = Owner::new(2);

    /// Waits (bounded) until `owner` is recorded as blocked on `path` by
    /// another process.
    fn wait_until_blocked_by_other_process(owner: Owner, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let blocked = snapshot().waiting.iter().any(|waiter| {
                waiter.owner == owner
                    && waiter.blocked_on.contains(&Blocker::OtherProcess {
                        path: path.to_owned(),
                    })
            });
            if blocked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{owner} never waited for {path:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn same_path_twice_in_one_process_is_busy_without_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let guard = try_lock(A, [&path]).unwrap();
        assert_eq!(open_descriptors(&path), 1);
        match try_lock(B, [&path]) {
            Err(TryLockError::Busy(busy)) => {
                assert_eq!(
                    busy,
                    Busy {
                        path: path.clone(),
                        holder: Holder::Owner(A)
                    }
                );
            }
            other => panic!("expected busy, got {other:?}"),
        }
        // The table answered: the lock file was not opened again.
        assert_eq!(open_descriptors(&path), 1);
        drop(guard);
        assert_eq!(open_descriptors(&path), 0);
        let guard = try_lock(B, [&path]).unwrap();
        assert_eq!(guard.owner(), B);
    }

    #[test]
    fn an_owner_asking_for_a_path_it_holds_would_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let _guard = try_lock(A, [&path]).unwrap();
        assert!(matches!(
            try_lock(A, [&path]),
            Err(TryLockError::Failed(Error::WouldDeadlock {
                owner: A,
                holder: A,
                ..
            }))
        ));
        assert!(matches!(
            lock_blocking(A, [&path]),
            Err(Error::WouldDeadlock { .. })
        ));
        // Another owner on the same thread could never see it released.
        assert!(matches!(
            lock_blocking(B, [&path]),
            Err(Error::WouldDeadlock {
                owner: B,
                holder: A,
                ..
            })
        ));
    }

    #[test]
    fn try_lock_takes_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|name| dir.path().join(name));
        let other_process = foreign_lock(&b);
        match try_lock(A, [&c, &a, &b]) {
            Err(TryLockError::Busy(busy)) => {
                assert_eq!(
                    busy,
                    Busy {
                        path: b.clone(),
                        holder: Holder::OtherProcess
                    }
                );
            }
            other => panic!("expected busy, got {other:?}"),
        }
        // `a` was locked first (sorted order), then released again.
        assert!(foreign_can_lock(&a));
        assert!(foreign_can_lock(&c));
        assert!(
            snapshot()
                .held
                .iter()
                .all(|held| held.path.parent() != Some(dir.path()))
        );
        drop(other_process);
        let guard = try_lock(A, [&c, &a, &b, &a]).unwrap();
        assert_eq!(guard.paths().collect::<Vec<_>>(), [&a, &b, &c]);
    }

    #[test]
    fn dropping_the_guard_releases_and_keeps_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = ["a", "b"].map(|name| dir.path().join(name));
        let guard = try_lock(A, [&a, &b]).unwrap();
        assert!(!foreign_can_lock(&a) && !foreign_can_lock(&b));
        assert_eq!(snapshot().holder_of(&a), Some(A));
        drop(guard);
        assert!(foreign_can_lock(&a) && foreign_can_lock(&b));
        assert_eq!(snapshot().holder_of(&a), None);
        assert!(lock_file_path(&a).exists() && lock_file_path(&b).exists());
    }

    #[test]
    fn releasing_one_path_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = ["a", "b"].map(|name| dir.path().join(name));
        let mut guard = try_lock(A, [&a, &b]).unwrap();
        assert!(guard.release(&a));
        assert!(!guard.release(&a));
        assert!(foreign_can_lock(&a));
        assert!(!foreign_can_lock(&b));
        assert_eq!(guard.paths().collect::<Vec<_>>(), [&b]);
        let _a = try_lock(B, [&a]).unwrap();
    }

    #[test]
    fn delete_on_release_removes_the_lock_files_with_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut guard = try_lock(A, [&path]).unwrap();
        guard.set_delete_on_release(true);
        // Another process waiting on the old file.
        let waiter = std::fs::File::options()
            .read(true)
            .write(true)
            .open(lock_file_path(&path))
            .unwrap();
        drop(guard);
        assert!(!lock_file_path(&path).exists());
        assert_eq!(waiter.metadata().unwrap().len(), 1);
        assert_eq!(
            std::fs::read(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&waiter)
            ))
            .unwrap(),
            b"d"
        );
        // The next locker creates a fresh, empty file.
        let _guard = try_lock(B, [&path]).unwrap();
        assert_eq!(std::fs::metadata(lock_file_path(&path)).unwrap().len(), 0);
    }

    /// A blocking waiter that opened the lock file before its holder
    /// deleted it must not keep the lock on the deleted file.
    fn stale_file_is_reopened(write_marker: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut holder = foreign_lock(&path);
        let owner = Owner::fresh();
        let waiting = {
            let path = path.clone();
            thread::spawn(move || lock_blocking(owner, [&path]))
        };
        wait_until_blocked_by_other_process(owner, &path);
        std::fs::remove_file(lock_file_path(&path)).unwrap();
        if write_marker {
            holder.write_all(b"d").unwrap();
        }
        drop(holder);
        let guard = waiting.join().unwrap().unwrap();
        // The lock is on the file now at the path, not on the deleted one.
        assert!(!foreign_can_lock(&path));
        drop(guard);
        assert!(foreign_can_lock(&path));
    }

    #[test]
    fn stale_file_with_marker_is_reopened() {
        stale_file_is_reopened(true);
    }

    #[test]
    fn stale_file_unlinked_without_marker_is_reopened() {
        stale_file_is_reopened(false);
    }

    #[test]
    fn blocking_lock_waits_for_another_thread_of_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let guard = try_lock(A, [&path]).unwrap();
        let owner = Owner::fresh();
        let waiting = {
            let path = path.clone();
            thread::spawn(move || lock_blocking(owner, [&path]))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !snapshot().waiting.iter().any(|waiter| {
            waiter.owner == owner
                && waiter.blocked_on
                    == [Blocker::InProcess {
                        path: path.clone(),
                        holder: A,
                    }]
        }) {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(open_descriptors(&path), 1);
        drop(guard);
        let guard = waiting.join().unwrap().unwrap();
        assert_eq!(snapshot().holder_of(&path), Some(owner));
        assert!(
            snapshot()
                .waiting
                .iter()
                .all(|waiter| waiter.owner != owner)
        );
        drop(guard);
    }

    /// `flock` fails with `EINTR` when a signal whose handler was installed
    /// without `SA_RESTART` arrives while it blocks. Nix 2.8 then goes on as
    /// if it held the lock; `lock_blocking` must keep waiting.
    #[test]
    #[allow(unsafe_code)]
    fn blocking_lock_retries_after_eintr() {
        extern "C" fn do_nothing(_: libc::c_int) {}
        // SAFETY: the handler does nothing, which is async-signal-safe; the
        // `sigaction` struct is fully initialised (zeroed, then the handler,
        // an empty mask and no flags, so no SA_RESTART); nothing else in
        // this test binary uses SIGUSR1.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let holder = foreign_lock(&path);
        let before = EINTR_RETRIES.load(Ordering::Relaxed);
        let owner = Owner::fresh();
        let waiting = {
            let path = path.clone();
            thread::spawn(move || lock_blocking(owner, [&path]))
        };
        wait_until_blocked_by_other_process(owner, &path);
        let thread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&waiting);
        let deadline = Instant::now() + Duration::from_secs(10);
        while EINTR_RETRIES.load(Ordering::Relaxed) == before {
            assert!(Instant::now() < deadline, "flock was never interrupted");
            // SAFETY: `thread` is not joined yet, so its id is valid even
            // if it had ended.
            unsafe {
                libc::pthread_kill(thread, libc::SIGUSR1);
            }
            thread::sleep(Duration::from_millis(5));
        }
        // Interrupted, yet still waiting: the lock is not taken.
        thread::sleep(Duration::from_millis(20));
        assert!(!waiting.is_finished());
        assert_eq!(snapshot().holder_of(&path), Some(owner));
        drop(holder);
        let guard = waiting.join().unwrap().unwrap();
        assert!(!foreign_can_lock(&path));
        drop(guard);
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&cwd).unwrap();
        let absolute = dir.path().join("p");
        let relative = absolute.strip_prefix(&cwd).unwrap();
        let guard = try_lock(A, [relative]).unwrap();
        assert_eq!(guard.paths().collect::<Vec<_>>(), [&absolute]);
        let spelled_with_dot = dir.path().join(".").join("p");
        assert!(matches!(
            try_lock(B, [&spelled_with_dot]),
            Err(TryLockError::Busy(Busy {
                holder: Holder::Owner(A),
                ..
            }))
        ));
        assert!(matches!(
            try_lock(B, [""]),
            Err(TryLockError::Failed(Error::InvalidPath { .. }))
        ));
    }
}
