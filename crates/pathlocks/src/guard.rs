//! [`PathLocks`]: a held set of path locks, released on drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::deferred::DeferredDeletions;

use crate::lock_file::LockFile;
use crate::owner::Owner;
use crate::table::TABLE;

/// A set of paths this process holds locked for one owner. Dropping it
/// releases them all: each lock file is closed (and, when asked, deleted
/// first), then the paths leave the lock table and their waiters are woken.
#[derive(Debug)]
#[must_use = "the locks are released as soon as the guard is dropped"]
pub struct PathLocks {
    owner: Owner,
    /// In lock order.
    locks: Vec<(PathBuf, LockFile)>,
    deletion: Deletion,
}

/// What a release does with the lock files.
#[derive(Debug)]
enum Deletion {
    Keep,
    Now,
    Later(Arc<DeferredDeletions>),
}

impl PathLocks {
    /// The owner holding these locks.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The locked paths, in lock order.
    pub fn paths(&self) -> impl ExactSizeIterator<Item = &Path> {
        self.locks.iter().map(|(path, _)| path.as_path())
    }

    /// Whether `path` is one of the locked paths. A relative `path` is
    /// taken from the current folder, as the paths were when locked (they
    /// are held absolute).
    pub fn contains(&self, path: &Path) -> bool {
        let Ok(path) = std::path::absolute(path) else {
            return false;
        };
        self.locks.iter().any(|(held, _)| *held == path)
    }

    /// How many paths are locked.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// Whether no path is locked.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Whether releasing deletes the lock files (off by default). Set it
    /// once every later locker will find the paths valid, as Nix does after
    /// a successful build, so the store is not littered with `.lock` files.
    pub fn set_delete_on_release(&mut self, delete: bool) {
        self.deletion = if delete {
            Deletion::Now
        } else {
            Deletion::Keep
        };
    }

    /// As [`PathLocks::set_delete_on_release`], but releasing keeps the
    /// lock files and leaves their deletion to `later` (see
    /// [`DeferredDeletions`] for why).
    pub fn delete_later(&mut self, later: &Arc<DeferredDeletions>) {
        self.deletion = Deletion::Later(Arc::clone(later));
    }

    /// Releases one path now, keeping the others. `false` if it was not
    /// held by this guard. The path is compared as given; it is made
    /// absolute the same way acquisition does when it is relative.
    pub fn release(&mut self, path: &Path) -> bool {
        let Ok(path) = std::path::absolute(path) else {
            return false;
        };
        let Some(index) = self.locks.iter().position(|(held, _)| *held == path) else {
            return false;
        };
        let released = self.locks.remove(index);
        self.release_all(vec![released]);
        true
    }

    pub(crate) fn new(owner: Owner) -> Self {
        PathLocks {
            owner,
            locks: Vec::new(),
            deletion: Deletion::Keep,
        }
    }

    /// Adds a path whose table reservation and lock file this guard now
    /// owns.
    pub(crate) fn push(&mut self, path: PathBuf, file: LockFile) {
        self.locks.push((path, file));
    }

    fn release_all(&self, locks: Vec<(PathBuf, LockFile)>) {
        let mut paths = Vec::with_capacity(locks.len());
        for (path, file) in locks {
            match &self.deletion {
                Deletion::Keep => {}
                Deletion::Now => file.delete(),
                Deletion::Later(later) => later.keep(&path),
            }
            tracing::debug!(lock_path = %file.lock_path().display(), owner = %self.owner, "lock released");
            // Closing the only descriptor of the open file description
            // releases the flock; it must happen before the table wakes
            // waiters, or they would find the file still locked.
            drop(file);
            paths.push(path);
        }
        TABLE.release(paths.iter().map(PathBuf::as_path));
    }
}

impl Drop for PathLocks {
    fn drop(&mut self) {
        let locks = std::mem::take(&mut self.locks);
        if !locks.is_empty() {
            self.release_all(locks);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Owner, lock_blocking};

    #[test]
    fn contains_takes_relative_paths_from_the_current_folder() {
        // A folder named relative to the current one, as `--store ROOT`
        // may be given.
        let dir = tempfile::tempdir_in(".").expect("temp folder");
        let cwd = std::env::current_dir().expect("current folder");
        let relative = dir
            .path()
            .strip_prefix(&cwd)
            .expect("under the current folder");
        let path = relative.join("p");
        let locks = lock_blocking(Owner::fresh(), [&path]).expect("lock");
        assert!(locks.contains(&path));
        assert!(locks.contains(&std::path::absolute(&path).expect("absolute")));
        assert!(!locks.contains(&relative.join("q")));
    }
}
