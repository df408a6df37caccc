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
