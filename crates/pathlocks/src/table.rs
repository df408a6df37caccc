//! The in-process lock table: which paths this process holds, and who
//! waits for them.
//!
//! There is exactly one table per process ([`TABLE`]). Every acquisition
//! reserves its paths here before it opens a lock file, so a path is never
//! opened twice by this process: a second owner finds the reservation and
//! is told the path is busy (or waits on the table) without asking the
//! kernel. Every release ends here too, after the lock files are closed,
//! and wakes whoever waits for the released paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::{self, ThreadId};
use std::time::Instant;

use crate::error::Error;
use crate::owner::Owner;
use crate::snapshot::{Blocker, HeldPath, LockSnapshot, Waiter};

/// The lock table of this process.
pub(crate) static TABLE: Table = Table::new();

/// Identifies one pending acquisition (a future or a blocking call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitId(u64);

/// The outcome of [`Table::try_reserve`].
#[derive(Debug)]
pub(crate) enum Reservation {
    /// Every path is now reserved for the owner.
    Reserved,
    /// Some paths are held in this process; nothing was reserved. Lists
    /// every such path with its holder, in lock order.
    Busy(Vec<(PathBuf, Owner)>),
}

pub(crate) struct Table {
    state: Mutex<State>,
    /// Signalled whenever paths are released, for blocking waiters.
    released: Condvar,
}

struct State {
    held: BTreeMap<PathBuf, Entry>,
    waits: BTreeMap<WaitId, WaitRecord>,
}

struct Entry {
    owner: Owner,
    /// The thread that reserved the path: a blocking lock taken on this
    /// thread could never see it released.
    thread: ThreadId,
    /// Futures to wake when the path is released.
    waiters: Vec<(WaitId, Waker)>,
}

struct WaitRecord {
    owner: Owner,
    paths: Vec<PathBuf>,
    blocked_on: Vec<Blocker>,
    since: Instant,
}

impl Table {
    const fn new() -> Self {
        Table {
            state: Mutex::new(State {
                held: BTreeMap::new(),
                waits: BTreeMap::new(),
            }),
            released: Condvar::new(),
        }
    }

    /// The state. A panic elsewhere while the mutex was held cannot leave it
    /// half-updated (every update is a single insert or remove), so a
    /// poisoned mutex is used as it is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn new_wait_id(&self) -> WaitId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        WaitId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Reserves all of `paths` for `owner`, or none of them. When some are
    /// held in this process and `waiter` is given, its waker is registered
    /// on each of them, to be woken when that path is released.
    pub(crate) fn try_reserve(
        &self,
        owner: Owner,
        paths: &[PathBuf],
        waiter: Option<(WaitId, &Waker)>,
    ) -> Result<Reservation, Error> {
        let mut state = self.state();
        let mut busy = Vec::new();
        for path in paths {
            if let Some(entry) = state.held.get(path) {
                if entry.owner == owner {
                    return Err(Error::WouldDeadlock {
                        path: path.clone(),
                        owner,
                        holder: entry.owner,
                    });
                }
                busy.push((path.clone(), entry.owner));
            }
        }
        if busy.is_empty() {
            let thread = thread::current().id();
            for path in paths {
                state.held.insert(
                    path.clone(),
                    Entry {
                        owner,
                        thread,
                        waiters: Vec::new(),
                    },
                );
            }
            return Ok(Reservation::Reserved);
        }
        if let Some((id, waker)) = waiter {
            for (path, _) in &busy {
                if let Some(entry) = state.held.get_mut(path) {
                    match entry.waiters.iter_mut().find(|(other, _)| *other == id) {
                        Some((_, registered)) => registered.clone_from(waker),
                        None => entry.waiters.push((id, waker.clone())),
                    }
                }
            }
        }
        Ok(Reservation::Busy(busy))
    }

    /// Reserves `path` for `owner`, blocking the calling thread while
    /// another owner in this process holds it. Refuses to wait for the owner
    /// itself or for a path reserved on this very thread, which could never
    /// be released while this thread sleeps.
    pub(crate) fn reserve_blocking(
        &self,
        owner: Owner,
        path: &Path,
        wait: WaitId,
        all_paths: &[PathBuf],
    ) -> Result<(), Error> {
        let current = thread::current().id();
        let mut state = self.state();
        let mut announced = false;
        loop {
            let Some(entry) = state.held.get(path) else {
                state.held.insert(
                    path.to_owned(),
                    Entry {
                        owner,
                        thread: current,
                        waiters: Vec::new(),
                    },
                );
                return Ok(());
            };
            if entry.owner == owner || entry.thread == current {
                return Err(Error::WouldDeadlock {
                    path: path.to_owned(),
                    owner,
                    holder: entry.owner,
                });
            }
            let holder = entry.owner;
            if !announced {
                announced = true;
                tracing::info!(%owner, %holder, path = %path.display(), "waiting for lock held in this process");
            }
            let blocked_on = vec![Blocker::InProcess {
                path: path.to_owned(),
                holder,
            }];
            state.set_wait(wait, owner, all_paths, blocked_on);
            state = self
                .released
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Removes `paths` from the table and wakes everyone waiting for them.
    /// Call only after their lock files are closed, so a woken waiter finds
    /// the `flock` free.
    pub(crate) fn release<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) {
        let mut wakers = Vec::new();
        {
            let mut state = self.state();
            for path in paths {
                if let Some(entry) = state.held.remove(path) {
                    wakers.extend(entry.waiters.into_iter().map(|(_, waker)| waker));
                }
            }
        }
        self.released.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Records (or updates) what a pending acquisition waits for.
    pub(crate) fn set_wait(
        &self,
        wait: WaitId,
        owner: Owner,
        paths: &[PathBuf],
        blocked_on: Vec<Blocker>,
    ) {
        self.state().set_wait(wait, owner, paths, blocked_on);
    }

    /// Forgets a pending acquisition: its record and its registered wakers.
    pub(crate) fn clear_wait(&self, wait: WaitId, paths: &[PathBuf]) {
        let mut state = self.state();
        state.waits.remove(&wait);
        for path in paths {
            if let Some(entry) = state.held.get_mut(path) {
                entry.waiters.retain(|(other, _)| *other != wait);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> LockSnapshot {
        let state = self.state();
        LockSnapshot {
            held: state
                .held
                .iter()
                .map(|(path, entry)| HeldPath {
                    path: path.clone(),
                    owner: entry.owner,
                })
                .collect(),
            waiting: state
                .waits
                .values()
                .map(|record| Waiter {
                    owner: record.owner,
                    paths: record.paths.clone(),
                    blocked_on: record.blocked_on.clone(),
                    since: record.since,
                })
                .collect(),
        }
    }
}

impl State {
    fn set_wait(
        &mut self,
        wait: WaitId,
        owner: Owner,
        paths: &[PathBuf],
        blocked_on: Vec<Blocker>,
    ) {
        match self.waits.get_mut(&wait) {
            Some(record) => record.blocked_on = blocked_on,
            None => {
                self.waits.insert(
                    wait,
                    WaitRecord {
                        owner,
                        paths: paths.to_vec(),
                        blocked_on,
                        since: Instant::now(),
                    },
                );
            }
        }
    }
}
