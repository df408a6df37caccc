//! What the lock table shows: who holds what, who waits for what.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::owner::Owner;

/// A consistent picture of this process's lock table, taken by
/// [`snapshot`](crate::snapshot).
#[derive(Debug, Clone, Default)]
pub struct LockSnapshot {
    /// Every path held (or being acquired) in this process, in lock order.
    pub held: Vec<HeldPath>,
    /// Every acquisition that is waiting, in the order they started.
    pub waiting: Vec<Waiter>,
}

/// A path held in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPath {
    /// The locked path (not its `.lock` file).
    pub path: PathBuf,
    /// Who holds it.
    pub owner: Owner,
}

/// An acquisition that is waiting for paths.
#[derive(Debug, Clone)]
pub struct Waiter {
    /// Who waits.
    pub owner: Owner,
    /// The whole set it asked for, in lock order.
    pub paths: Vec<PathBuf>,
    /// What it found busy at its last attempt.
    pub blocked_on: Vec<Blocker>,
    /// When it first found a path busy.
    pub since: Instant,
}

/// Why a waiter is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// The path is held by an owner in this process.
    InProcess {
        /// The busy path.
        path: PathBuf,
        /// Its holder.
        holder: Owner,
    },
    /// The path's `flock` is held by another process.
    OtherProcess {
        /// The busy path.
        path: PathBuf,
    },
}

/// One edge of the wait-for graph: `waiter` waits for `path`, which
/// `holder` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitEdge {
    /// The owner that waits.
    pub waiter: Owner,
    /// The owner it waits for.
    pub holder: Owner,
    /// The path between them.
    pub path: PathBuf,
}

impl LockSnapshot {
    /// Who in this process holds `path`, if anyone.
    pub fn holder_of(&self, path: &Path) -> Option<Owner> {
        self.held
            .iter()
            .find(|held| held.path == path)
            .map(|held| held.owner)
    }

    /// The paths `owner` holds.
    pub fn held_by(&self, owner: Owner) -> impl Iterator<Item = &Path> {
        self.held
            .iter()
            .filter(move |held| held.owner == owner)
            .map(|held| held.path.as_path())
    }

    /// The edges of the in-process wait-for graph.
    pub fn wait_for_edges(&self) -> impl Iterator<Item = WaitEdge> + '_ {
        self.waiting.iter().flat_map(|waiter| {
            waiter
                .blocked_on
                .iter()
                .filter_map(move |blocker| match blocker {
                    Blocker::InProcess { path, holder } => Some(WaitEdge {
                        waiter: waiter.owner,
                        holder: *holder,
                        path: path.clone(),
                    }),
                    Blocker::OtherProcess { .. } => None,
                })
        })
    }

    /// A cycle in the wait-for graph, if there is one: owners each waiting
    /// for a path the next one holds, the last waiting for the first. Such
    /// waits never end. A waiter needs every path it waits for, so any
    /// cycle through any of its blockers is a deadlock.
    pub fn find_cycle(&self) -> Option<Vec<WaitEdge>> {
        let mut graph: BTreeMap<Owner, Vec<WaitEdge>> = BTreeMap::new();
        for edge in self.wait_for_edges() {
            graph.entry(edge.waiter).or_default().push(edge);
        }
        let mut done = BTreeSet::new();
        for &start in graph.keys() {
            let mut path = Vec::new();
            if let Some(cycle) = find_cycle_from(&graph, start, &mut path, &mut done) {
                return Some(cycle);
            }
        }
        None
    }
}

/// Depth-first search from `node`; `stack` holds the edges walked so far.
/// Owners in `done` were fully explored and lie on no cycle.
fn find_cycle_from(
    graph: &BTreeMap<Owner, Vec<WaitEdge>>,
    node: Owner,
    stack: &mut Vec<WaitEdge>,
    done: &mut BTreeSet<Owner>,
) -> Option<Vec<WaitEdge>> {
    if done.contains(&node) {
        return None;
    }
    if let Some(start) = stack.iter().position(|edge| edge.waiter == node) {
        return Some(stack[start..].to_vec());
    }
    for edge in graph.get(&node).into_iter().flatten() {
        stack.push(edge.clone());
        if let Some(cycle) = find_cycle_from(graph, edge.holder, stack, done) {
            return Some(cycle);
        }
        stack.pop();
    }
    done.insert(node);
    None
}

impl fmt::Display for Waiter {
    /// Nix's message: `waiting for lock on '/a', '/b'`, naming the paths
    /// found busy (or the whole set when none is known).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let busy: Vec<&Path> = self
            .blocked_on
            .iter()
            .map(|blocker| match blocker {
                Blocker::InProcess { path, .. } | Blocker::OtherProcess { path } => path.as_path(),
            })
            .collect();
        let paths: Vec<&Path> = if busy.is_empty() {
            self.paths.iter().map(PathBuf::as_path).collect()
        } else {
            busy
        };
        f.write_str("waiting for lock on ")?;
        for (i, path) in paths.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "'{}'", path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(owner: u64, blocked_on: Vec<Blocker>) -> Waiter {
        Waiter {
            owner: Owner::new(owner),
            paths: blocked_on
                .iter()
                .map(|b| match b {
                    Blocker::InProcess { path, .. } | Blocker::OtherProcess { path } => {
                        path.clone()
                    }
                })
                .collect(),
            blocked_on,
            since: Instant::now(),
        }
    }

    fn held_by(path: &str, holder: u64) -> Blocker {
        Blocker::InProcess {
            path: PathBuf::from(path),
            holder: Owner::new(holder),
        }
    }

    #[test]
    fn a_chain_is_no_cycle() {
        let snapshot = LockSnapshot {
            held: Vec::new(),
            waiting: vec![
                waiter(1, vec![held_by("/p", 2)]),
                waiter(
                    2,
                    vec![
                        held_by("/q", 3),
                        Blocker::OtherProcess { path: "/r".into() },
                    ],
                ),
            ],
        };
        assert_eq!(snapshot.wait_for_edges().count(), 2);
        assert_eq!(snapshot.find_cycle(), None);
    }

    #[test]
    fn a_cycle_through_any_blocker_is_found() {
        let snapshot = LockSnapshot {
            held: Vec::new(),
            waiting: vec![
                waiter(1, vec![held_by("/a", 4), held_by("/p", 2)]),
                waiter(2, vec![held_by("/q", 3)]),
                waiter(3, vec![held_by("/r", 1)]),
            ],
        };
        let cycle = snapshot.find_cycle().unwrap();
        let owners: Vec<u64> = cycle.iter().map(|edge| edge.waiter.id()).collect();
        assert_eq!(owners, [1, 2, 3]);
        assert_eq!(cycle[2].holder, Owner::new(1));
        assert_eq!(cycle[2].path, Path::new("/r"));
    }

    #[test]
    fn the_wait_message_names_the_busy_paths_as_nix_does() {
        let waiting = waiter(
            1,
            vec![
                held_by("/nix/store/a-x", 2),
                Blocker::OtherProcess {
                    path: "/nix/store/b-y".into(),
                },
            ],
        );
        assert_eq!(
            waiting.to_string(),
            "waiting for lock on '/nix/store/a-x', '/nix/store/b-y'"
        );
    }
}
