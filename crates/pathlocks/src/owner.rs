//! Who holds a lock inside this process.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The identity of a lock holder inside this process.
///
/// The scheduler uses its goal ids ([`Owner::new`]); other code asks for a
/// [`fresh`](Owner::fresh) one. The lock table uses owners to report who
/// holds what and to refuse a wait that could never end (an owner waiting
/// for a path it holds itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(u64);

/// Fresh owners count down from the top of the range, so they never meet
/// the small, dense ids a scheduler hands out with [`Owner::new`].
static NEXT_FRESH: AtomicU64 = AtomicU64::new(u64::MAX);

impl Owner {
    /// The owner with this id (for example a goal id).
    pub const fn new(id: u64) -> Self {
        Owner(id)
    }

    /// An owner no other call to `fresh` returns in this process.
    pub fn fresh() -> Self {
        Owner(NEXT_FRESH.fetch_sub(1, Ordering::Relaxed))
    }

    /// The id.
    pub const fn id(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "owner {}", self.0)
    }
}
