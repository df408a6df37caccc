//! Deleting released lock files later, all at once: [`DeferredDeletions`].
//!
//! A build worker releases a lock per output and per added path, and Nix's
//! protocol deletes each lock file on release. On ext4 without a journal
//! the kernel checks every new inode against each one deleted in the last
//! minutes, so a worker that deletes thousands of lock files while it
//! builds makes every later file it creates slower, and its cost per build
//! grows with the size of the run. A guard told to
//! [`PathLocks::delete_later`] keeps its lock files on release (unlocked,
//! still empty, so any process may take them as usual) and leaves their
//! paths to a [`DeferredDeletions`]; that deletes each one under its lock,
//! as a release would have, when asked or dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::acquire::try_lock;
#[cfg(doc)]
use crate::guard::PathLocks;
use crate::owner::Owner;

/// Lock files kept past their release, deleted together by
/// [`DeferredDeletions::delete_now`] or on drop. Shared between the guards
/// that feed it (hence the `Arc` in [`PathLocks::delete_later`]).
#[derive(Debug, Default)]
pub struct DeferredDeletions {
    paths: Mutex<BTreeSet<PathBuf>>,
}

impl DeferredDeletions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many lock files wait for deletion.
    pub fn len(&self) -> usize {
        self.paths().len()
    }

    /// Whether no lock file waits for deletion.
    pub fn is_empty(&self) -> bool {
        self.paths().is_empty()
    }

    /// Deletes each kept lock file as a release does (unlink, then the
    /// `d` marker, under the lock), unless another owner or process holds
    /// it now: that holder's release decides.
    pub fn delete_now(&self) {
        let paths = std::mem::take(&mut *self.paths());
        for path in paths {
            match try_lock(Owner::fresh(), [&path]) {
                Ok(mut locks) => locks.set_delete_on_release(true),
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "kept lock file left to its holder");
                }
            }
        }
    }

    /// Remembers `path`, whose lock file a release kept.
    pub(crate) fn keep(&self, path: &Path) {
        self.paths().insert(path.to_path_buf());
    }

    fn paths(&self) -> MutexGuard<'_, BTreeSet<PathBuf>> {
        // Every update is one insertion or one swap, so a panic elsewhere
        // cannot leave the set half-changed.
        self.paths.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DeferredDeletions {
    fn drop(&mut self) {
        self.delete_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock_file_path;
    use std::sync::Arc;

    #[test]
    fn kept_lock_files_go_when_asked_unless_held() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, held) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("held"),
        );
        let later = Arc::new(DeferredDeletions::new());
        for path in [&a, &b, &held] {
            let mut locks = try_lock(Owner::fresh(), [path]).unwrap();
            locks.delete_later(&later);
        }
        assert_eq!(later.len(), 3);
        for path in [&a, &b, &held] {
            let file = lock_file_path(path);
            assert!(file.exists(), "{} kept", file.display());
            assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "no marker");
        }
        // A kept file is an ordinary free lock meanwhile.
        drop(try_lock(Owner::fresh(), [&a]).unwrap());

        let holder = try_lock(Owner::fresh(), [&held]).unwrap();
        later.delete_now();
        assert!(later.is_empty());
        assert!(!lock_file_path(&a).exists());
        assert!(!lock_file_path(&b).exists());
        assert!(lock_file_path(&held).exists(), "its holder decides");
        drop(holder);
        assert!(
            lock_file_path(&held).exists(),
            "the holder did not ask for deletion"
        );
    }

    #[test]
    fn dropping_the_set_deletes_what_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let later = Arc::new(DeferredDeletions::new());
        let mut locks = try_lock(Owner::fresh(), [&path]).unwrap();
        locks.delete_later(&later);
        drop(locks);
        assert!(lock_file_path(&path).exists());
        drop(later);
        assert!(!lock_file_path(&path).exists());
    }

    #[test]
    fn a_guard_dropped_after_its_set_deletes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let later = Arc::new(DeferredDeletions::new());
        let mut locks = try_lock(Owner::fresh(), [&path]).unwrap();
        locks.delete_later(&later);
        drop(later);
        drop(locks);
        assert!(!lock_file_path(&path).exists(), "no set is left to keep it");
    }
}
