//! The references of the valid paths a store handle has read or registered,
//! kept as a graph over small integers, and closures as sets of them
//! ([`ClosureSet`]).
//!
//! A build's input closure is computed once per build. In a deep DAG it
//! holds thousands of paths, and a walk that hashed, compared and copied
//! store path names for each of them made every build cost time in the
//! size of the DAG. Here each path is interned once, by its hash part; a
//! walk visits integers and marks them in a bit set, and names are looked
//! at only for the members a caller asks about (a build's references are
//! the few hash parts its outputs mention).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use larder_store_core::StorePath;
use larder_store_core::store_path::HASH_PART_LEN;

/// A hash part as bytes: the key of the graph.
type HashPart = [u8; HASH_PART_LEN];

/// The closure of some valid paths, as a set of the numbers a store handle
/// gave them. Made by [`LocalStore::query_closure_set`]; its queries lock
/// the handle's reference cache briefly.
///
/// [`LocalStore::query_closure_set`]: crate::store::LocalStore::query_closure_set
#[derive(Clone)]
pub struct ClosureSet {
    graph: SharedGraph,
    members: BitSet,
    len: usize,
}

impl ClosureSet {
    /// How many paths the closure holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the closure is empty (it has no roots).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `path` is in the closure.
    #[must_use]
    pub fn contains(&self, path: &StorePath) -> bool {
        self.member_by_hash_part(path.hash_part())
            .is_some_and(|member| member == *path)
    }

    /// The member whose hash part is `hash_part`, if any (a store holds at
    /// most one valid path per hash part).
    #[must_use]
    pub fn member_by_hash_part(&self, hash_part: &str) -> Option<StorePath> {
        let key: &HashPart = hash_part.as_bytes().try_into().ok()?;
        let graph = self.graph.lock();
        let &id = graph.ids.get(key)?;
        self.members
            .contains(id)
            .then(|| graph.nodes[id].path.clone())
    }

    /// Every member, in no particular order.
    #[must_use]
    pub fn paths(&self) -> Vec<StorePath> {
        let graph = self.graph.lock();
        self.members
            .iter()
            .map(|id| graph.nodes[id].path.clone())
            .collect()
    }
}

impl std::fmt::Debug for ClosureSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosureSet")
            .field("len", &self.len)
            .finish()
    }
}

/// A store handle's [`ReferenceGraph`], shared with the closures made from
/// it (node numbers never change while the graph lives).
#[derive(Clone, Default)]
pub(crate) struct SharedGraph(Arc<Mutex<ReferenceGraph>>);

impl SharedGraph {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ReferenceGraph> {
        // A panic mid-walk leaves a consistent graph: a node's references
        // are set in one assignment, after a complete database answer.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The closure of `roots` as a set; `load` reads the references of a
    /// path the graph does not know yet (callers check the roots'
    /// validity; what a valid path refers to is valid too).
    pub(crate) fn closure<'r, E>(
        &self,
        roots: impl IntoIterator<Item = &'r StorePath>,
        load: impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
    ) -> Result<ClosureSet, E> {
        let (members, len) = self.lock().closure(roots, load)?;
        Ok(ClosureSet {
            graph: self.clone(),
            members,
            len,
        })
    }
}

/// Interned store paths and, once read, their references.
#[derive(Default)]
pub(crate) struct ReferenceGraph {
    ids: foldhash::HashMap<HashPart, usize>,
    nodes: Vec<Node>,
    /// The references of every node, each node's in one range.
    edges: Vec<usize>,
}

struct Node {
    path: StorePath,
    /// The range of `edges` holding the path's references; `None` until
    /// read from the database and again after [`ReferenceGraph::forget`].
    references: Option<Range<usize>>,
}

impl ReferenceGraph {
    /// Drops what is known of `path`'s references: its registration
    /// changed. The path keeps its number.
    pub(crate) fn forget(&mut self, path: &StorePath) {
        if let Some(id) = self.id_of(path) {
            self.nodes[id].references = None;
        }
    }

    /// The members of the closure of `roots` and their count.
    fn closure<'r, E>(
        &mut self,
        roots: impl IntoIterator<Item = &'r StorePath>,
        mut load: impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
    ) -> Result<(BitSet, usize), E> {
        let mut stack: Vec<usize> = roots.into_iter().map(|root| self.intern(root)).collect();
        let mut members = BitSet::with_capacity(self.nodes.len());
        let mut len = 0;
        while let Some(id) = stack.pop() {
            if !members.insert(id) {
                continue;
            }
            len += 1;
            let range = match &self.nodes[id].references {
                Some(range) => range.clone(),
                None => {
                    let loaded = load(&self.nodes[id].path)?;
                    let ids: Vec<usize> = loaded.iter().map(|path| self.intern(path)).collect();
                    let start = self.edges.len();
                    self.edges.extend(ids);
                    let range = start..self.edges.len();
                    self.nodes[id].references = Some(range.clone());
                    range
                }
            };
            stack.extend(
                self.edges[range]
                    .iter()
                    .copied()
                    .filter(|&r| !members.contains(r)),
            );
        }
        Ok((members, len))
    }

    fn id_of(&self, path: &StorePath) -> Option<usize> {
        let key: &HashPart = path.hash_part().as_bytes().try_into().ok()?;
        let &id = self.ids.get(key)?;
        (self.nodes[id].path == *path).then_some(id)
    }

    fn intern(&mut self, path: &StorePath) -> usize {
        let mut key = [0; HASH_PART_LEN];
        // A StorePath's hash part is HASH_PART_LEN ASCII digits by
        // construction, so this copies all of it.
        let hash_part = path.hash_part().as_bytes();
        let n = hash_part.len().min(HASH_PART_LEN);
        key[..n].copy_from_slice(&hash_part[..n]);
        if let Some(&id) = self.ids.get(&key) {
            if self.nodes[id].path != *path {
                // Another name under a hash part the graph knows: the old
                // path was invalidated and this one registered. The number
                // now stands for the new path, with its references unread.
                self.nodes[id] = Node {
                    path: path.clone(),
                    references: None,
                };
            }
            return id;
        }
        let id = self.nodes.len();
        self.ids.insert(key, id);
        self.nodes.push(Node {
            path: path.clone(),
            references: None,
        });
        id
    }
}

/// A set of node numbers that grows as a walk interns new paths.
#[derive(Clone)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn with_capacity(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn contains(&self, bit: usize) -> bool {
        self.words
            .get(bit / 64)
            .is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }

    /// Adds `bit`; false when it was there already.
    fn insert(&mut self, bit: usize) -> bool {
        let index = bit / 64;
        if index >= self.words.len() {
            self.words.resize(index + 1, 0);
        }
        let mask = 1 << (bit % 64);
        let fresh = self.words[index] & mask == 0;
        self.words[index] |= mask;
        fresh
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| index * 64 + bit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::convert::Infallible;

    fn path(i: usize) -> StorePath {
        StorePath::from_base_name(&format!("{:032}-p{i}", i).replace('0', "a")).expect("valid")
    }

    /// A layered DAG like the bench's: node `i` of layer `l` refers to
    /// nodes `i` and `i + 1` (mod width) of layer `l - 1`.
    fn dag(layers: usize, width: usize) -> BTreeMap<StorePath, Vec<StorePath>> {
        let node = |l: usize, i: usize| path(l * width + i % width);
        let mut graph = BTreeMap::new();
        for l in 0..layers {
            for i in 0..width {
                let refs = if l == 0 {
                    vec![]
                } else {
                    vec![node(l - 1, i), node(l - 1, i + 1)]
                };
                graph.insert(node(l, i), refs);
            }
        }
        graph
    }

    fn naive(
        graph: &BTreeMap<StorePath, Vec<StorePath>>,
        roots: &[StorePath],
    ) -> BTreeSet<StorePath> {
        let mut closure = BTreeSet::new();
        let mut stack = roots.to_vec();
        while let Some(p) = stack.pop() {
            if closure.insert(p.clone()) {
                stack.extend(graph[&p].iter().cloned());
            }
        }
        closure
    }

    #[test]
    fn closures_agree_with_a_naive_walk_and_load_each_path_once() {
        let graph = dag(30, 7);
        let shared = SharedGraph::default();
        let mut loads = BTreeMap::<StorePath, usize>::new();
        for roots in [
            vec![path(0)],
            vec![path(29 * 7 + 3)],
            vec![path(10 * 7), path(20 * 7 + 6)],
            vec![path(29 * 7), path(29 * 7)],
        ] {
            let closure = shared
                .closure(&roots, |p| {
                    *loads.entry(p.clone()).or_default() += 1;
                    Ok::<_, Infallible>(graph[p].clone())
                })
                .expect("no load fails");
            let expected = naive(&graph, &roots);
            let paths = closure.paths();
            assert_eq!(paths.len(), closure.len(), "each path once");
            assert_eq!(paths.into_iter().collect::<BTreeSet<_>>(), expected);
            for p in graph.keys() {
                assert_eq!(closure.contains(p), expected.contains(p), "{p}");
                assert_eq!(
                    closure.member_by_hash_part(p.hash_part()).as_ref(),
                    expected.get(p),
                    "{p}"
                );
            }
        }
        assert!(loads.values().all(|&n| n == 1), "{loads:?}");
        let empty = shared
            .closure([], |_| Ok::<_, Infallible>(vec![]))
            .expect("walk");
        assert!(empty.is_empty() && empty.paths().is_empty());
    }

    #[test]
    fn unknown_hash_parts_and_other_names_are_not_members() {
        let shared = SharedGraph::default();
        let (a, b) = (path(1), path(2));
        let closure = shared
            .closure([&a], |_| Ok::<_, Infallible>(vec![]))
            .expect("walk");
        assert!(closure.member_by_hash_part(b.hash_part()).is_none());
        assert!(closure.member_by_hash_part("short").is_none());
        let same_hash = StorePath::from_base_name(&format!("{}-other", a.hash_part())).unwrap();
        assert!(!closure.contains(&same_hash));
    }

    #[test]
    fn forgotten_references_are_read_again() {
        let shared = SharedGraph::default();
        let (a, b, c) = (path(1), path(2), path(3));
        let first = shared
            .closure([&a], |p| {
                Ok::<_, Infallible>(if *p == a { vec![b.clone()] } else { vec![] })
            })
            .expect("walk");
        assert_eq!(first.len(), 2);
        shared.lock().forget(&a);
        let second = shared
            .closure([&a], |p| {
                Ok::<_, Infallible>(if *p == a {
                    vec![b.clone(), c.clone()]
                } else {
                    vec![]
                })
            })
            .expect("walk");
        assert_eq!(second.len(), 3);
        assert!(
            first.contains(&b) && !first.contains(&c),
            "an older set keeps its members"
        );
    }

    #[test]
    fn a_failing_load_is_returned() {
        let shared = SharedGraph::default();
        let err = shared
            .closure([&path(1)], |_| Err::<Vec<StorePath>, _>("database gone"))
            .unwrap_err();
        assert_eq!(err, "database gone");
    }
}
