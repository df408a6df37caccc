//! What can go wrong while locking paths.

use std::io;
use std::path::PathBuf;

use crate::owner::Owner;

/// A failure to lock or unlock paths. Busy paths are not errors: see
/// [`TryLockError::Busy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path cannot be made absolute (it is empty, or the current
    /// directory is gone).
    #[error("invalid path to lock '{path}': {source}")]
    InvalidPath {
        /// The path as the caller gave it.
        path: PathBuf,
        /// Why it could not be made absolute.
        source: io::Error,
    },
    /// The lock file could not be opened or created.
    #[error("opening lock file '{lock_path}': {source}")]
    Open {
        /// The `.lock` file.
        lock_path: PathBuf,
        /// The error from `open(2)`.
        source: io::Error,
    },
    /// `flock(2)` failed for a reason other than the lock being busy.
    #[error("acquiring lock on '{lock_path}': {source}")]
    Lock {
        /// The `.lock` file.
        lock_path: PathBuf,
        /// The error from `flock(2)`.
        source: io::Error,
    },
    /// `fstat(2)` of a freshly locked lock file failed.
    #[error("checking lock file '{lock_path}': {source}")]
    Stat {
        /// The `.lock` file.
        lock_path: PathBuf,
        /// The error from `fstat(2)`.
        source: io::Error,
    },
    /// Waiting would never end: the path is held in this process by the
    /// owner asking for it, or (for a blocking lock) by a guard taken on the
    /// calling thread.
    #[error(
        "{owner} would wait for itself: '{path}' is already locked in this process by {holder}"
    )]
    WouldDeadlock {
        /// The path asked for.
        path: PathBuf,
        /// The owner that asked.
        owner: Owner,
        /// The owner holding the path.
        holder: Owner,
    },
}

/// Why [`try_lock`](crate::try_lock) did not take the locks.
#[derive(Debug, thiserror::Error)]
pub enum TryLockError {
    /// Some path of the set is locked by someone else; nothing is held.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// Locking failed; nothing is held.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// A path that is locked by someone else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{path}' is locked by {holder}")]
pub struct Busy {
    /// The first busy path of the set (in lock order).
    pub path: PathBuf,
    /// Who holds it.
    pub holder: Holder,
}

/// Who holds a busy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An owner in this process (seen in the lock table, no syscall made).
    Owner(Owner),
    /// Another process (or an open file description this process did not
    /// make through this crate) holds the `flock`.
    OtherProcess,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Owner(owner) => write!(f, "{owner} in this process"),
            Holder::OtherProcess => f.write_str("another process"),
        }
    }
}
