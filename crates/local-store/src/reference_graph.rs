//! The references of the valid paths a store handle has read or registered,
//! kept as a graph over small integers.
//!
//! A build's input closure is walked once per build. In a deep DAG it holds
//! thousands of paths, and a walk that hashed, compared and copied store
//! path names for each of them made every build cost time in the size of
//! the DAG. Here each path is interned once; a walk then visits integers,
//! marks them in a bit set and only names the paths it returns.

use larder_store_core::StorePath;

/// Interned store paths and, once read, their references.
#[derive(Default)]
pub(crate) struct ReferenceGraph {
    ids: foldhash::HashMap<StorePath, usize>,
    nodes: Vec<Node>,
}

struct Node {
    path: StorePath,
    /// The path's references, `None` until read from the database and
    /// again after [`ReferenceGraph::forget`].
    references: Option<Box<[usize]>>,
}

impl ReferenceGraph {
    /// The closure of `roots` in no particular order, each path once.
    /// `load` reads the references of a path the graph does not know yet
    /// (callers check the roots' validity; what a valid path refers to is
    /// valid too).
    ///
    /// # Errors
    ///
    /// What `load` returns.
    pub(crate) fn closure<'r, E>(
        &mut self,
        roots: impl IntoIterator<Item = &'r StorePath>,
        mut load: impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
    ) -> Result<Vec<StorePath>, E> {
        let mut stack: Vec<usize> = roots.into_iter().map(|root| self.intern(root)).collect();
        let mut seen = BitSet::with_capacity(self.nodes.len());
        let mut closure = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if self.nodes[id].references.is_none() {
                let loaded = load(&self.nodes[id].path)?;
                let ids = loaded.iter().map(|path| self.intern(path)).collect();
                self.nodes[id].references = Some(ids);
            }
            let node = &self.nodes[id];
            closure.push(node.path.clone());
            stack.extend(
                node.references
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|&r| !seen.contains(r)),
            );
        }
        Ok(closure)
    }

    /// Drops what is known of `path`'s references: its registration
    /// changed. The path keeps its number.
    pub(crate) fn forget(&mut self, path: &StorePath) {
        if let Some(&id) = self.ids.get(path) {
            self.nodes[id].references = None;
        }
    }

    fn intern(&mut self, path: &StorePath) -> usize {
        if let Some(&id) = self.ids.get(path) {
            return id;
        }
        let id = self.nodes.len();
        self.ids.insert(path.clone(), id);
        self.nodes.push(Node {
            path: path.clone(),
            references: None,
        });
        id
    }
}

/// A set of node numbers that grows as the walk interns new paths.
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
    fn walks_agree_with_a_naive_closure_and_load_each_path_once() {
        let graph = dag(30, 7);
        let mut refs = ReferenceGraph::default();
        let mut loads = BTreeMap::<StorePath, usize>::new();
        for roots in [
            vec![path(0)],
            vec![path(29 * 7 + 3)],
            vec![path(10 * 7), path(20 * 7 + 6)],
            vec![path(29 * 7), path(29 * 7)],
        ] {
            let closure = refs
                .closure(&roots, |p| {
                    *loads.entry(p.clone()).or_default() += 1;
                    Ok::<_, Infallible>(graph[p].clone())
                })
                .expect("no load fails");
            let unique: BTreeSet<StorePath> = closure.iter().cloned().collect();
            assert_eq!(unique.len(), closure.len(), "each path once");
            assert_eq!(unique, naive(&graph, &roots));
        }
        assert!(loads.values().all(|&n| n == 1), "{loads:?}");
    }

    #[test]
    fn forgotten_references_are_read_again() {
        let mut refs = ReferenceGraph::default();
        let (a, b, c) = (path(1), path(2), path(3));
        let first = refs
            .closure([&a], |p| {
                Ok::<_, Infallible>(if *p == a { vec![b.clone()] } else { vec![] })
            })
            .expect("walk");
        assert_eq!(first.len(), 2);
        refs.forget(&a);
        let second = refs
            .closure([&a], |p| {
                Ok::<_, Infallible>(if *p == a {
                    vec![b.clone(), c.clone()]
                } else {
                    vec![]
                })
            })
            .expect("walk");
        assert_eq!(second.len(), 3);
    }

    #[test]
    fn a_failing_load_is_returned() {
        let mut refs = ReferenceGraph::default();
        let err = refs
            .closure([&path(1)], |_| Err::<Vec<StorePath>, _>("database gone"))
            .unwrap_err();
        assert_eq!(err, "database gone");
    }
}
