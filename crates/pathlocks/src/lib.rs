//! Nix-compatible path locks that can never make their own process wait
//! for itself.
//!
//! A lock on a path `P` is an exclusive `flock(2)` on the file `P.lock`,
//! exactly as Nix takes it, so larder and Nix processes sharing a store
//! exclude each other. This crate knows nothing of derivations: it locks
//! sets of paths for an [`Owner`] (the scheduler uses goal ids).
//!
//! - [`try_lock`]: all of a set or none, never blocking.
//! - [`lock`]: a future that resolves when the whole set is held, for the
//!   worker's event loop ([`Timer`] and [`Backoff`] drive retries).
//! - [`lock_blocking`]: for tools without an event loop.
//! - [`PathLocks`]: the guard; dropping it releases the set.
//! - [`DeferredDeletions`]: lock files a release kept, deleted together
//!   later (a worker's thousands of deletions slow file creation down).
//! - [`snapshot`]: who holds what and who waits for what ([`LockSnapshot`]),
//!   for wait-for-graph cycle checks and "waiting for lock" messages.
//! - [`lock_file_path`]: the lock file Nix uses for a path.
//! - `test_support` (feature `test-support`): a thread-based timer and
//!   `yield_now`, for tests and examples.
//!
//! # Invariants
//!
//! 1. **Nix's lock files.** `P.lock` is opened `O_RDWR | O_CREAT |
//!    O_CLOEXEC` with mode 0600 and locked with `LOCK_EX`. A set is locked
//!    in sorted (component-wise) order. After locking, a file that is
//!    unlinked (`st_nlink == 0`) or not empty (`st_size != 0`, the `d`
//!    marker) was deleted by its previous holder; it is closed and the path
//!    reopened. Deleting on release unlinks the file, then writes `d`
//!    through the still-locked descriptor, as Nix does.
//! 2. **One open file description per path per process.** `flock` locks
//!    belong to open file descriptions, so two opens of one file in one
//!    process conflict like two processes. The process-wide lock table is
//!    asked before any lock file is opened: a path reserved or held in this
//!    process is busy, and no second description is made. Descriptors are
//!    never duplicated, and close-on-exec keeps builders from inheriting
//!    them.
//! 3. **Never a blocking `flock` outside [`lock_blocking`].** [`try_lock`]
//!    and [`lock`] use `LOCK_NB` only. The future holds nothing between
//!    polls (each attempt is all-or-nothing), so dropping it releases
//!    nothing because there is nothing to release, and no waiter holds a
//!    lock of the set it waits for.
//! 4. **Wake-ups.** A release closes the lock files first, then leaves the
//!    table and wakes every future waiting for those paths at once. A path
//!    held by another process is retried on the caller's timer with a
//!    capped exponential [`Backoff`] (1 ms up to 20 ms by default); this
//!    crate spawns no thread and owns no event loop.
//! 5. **No self-waits.** An owner asking for a path it holds, or a
//!    blocking lock asking for a path reserved on its own thread, fails
//!    with [`Error::WouldDeadlock`]. Longer cycles between owners are the
//!    scheduler's to find, with [`LockSnapshot::find_cycle`].
//! 6. **`EINTR`.** An interrupted `flock` holds nothing and is made again
//!    (Nix 2.8 takes an interrupted blocking `flock` for success).
//!
//! Paths are made absolute (without resolving symlinks) and compared as
//! written; callers lock canonical paths, as store paths are. A descriptor
//! that a child inherits between `fork` and `exec` keeps the lock until
//! the `exec`; a waiter woken meanwhile finds the file busy and falls back
//! to its timer, so it is late, never wrong.

mod acquire;
mod deferred;
mod error;
mod guard;
mod lock_file;
mod owner;
mod snapshot;
mod table;
mod wait;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use acquire::{lock_blocking, try_lock};
pub use deferred::DeferredDeletions;
pub use error::{Busy, Error, Holder, TryLockError};
pub use guard::PathLocks;
pub use lock_file::lock_file_path;
pub use owner::Owner;
pub use snapshot::{Blocker, HeldPath, LockSnapshot, WaitEdge, Waiter};
pub use wait::{Backoff, LockFuture, Timer, lock};

/// A snapshot of this process's lock table: every path held and every
/// waiting acquisition.
pub fn snapshot() -> LockSnapshot {
    table::TABLE.snapshot()
}
