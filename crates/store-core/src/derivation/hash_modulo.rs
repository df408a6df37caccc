//! Hash modulo: the hash input-addressed output paths are made from.
//!
//! As Nix 2.8's `hashDerivationModulo`:
//! - A fixed-output derivation hashes, per output,
//!   `fixed:out:<method><algo>:<hex>:<output path>`, so how it is built does
//!   not matter to what depends on it.
//! - Any other derivation is hashed as its ATerm with each input derivation
//!   path replaced by the hex of that input's own (unmasked) hash for the
//!   outputs used. Inputs that collide after replacement are merged and their
//!   output sets united.
//! - The masked form, used for the derivation's own outputs, blanks output
//!   paths and the environment variables named after outputs (those present
//!   become empty; absent ones stay absent).
//! - A floating content-addressed derivation, or one with such an input,
//!   is [`DrvHashKind::Deferred`]: its hash exists but cannot give paths.
//!
//! Input derivations are read through a [`DerivationSource`] and their
//! hashes kept in a [`HashModuloCache`], which a long-running process can
//! keep between derivations. The walk over inputs uses an explicit stack,
//! so deep dependency chains cannot overflow the call stack.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

use super::aterm::write_aterm;
use super::{Derivation, DerivationError, DerivationKind, DerivationOutput};

/// Whether a hash modulo can give output paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrvHashKind {
    /// The hash gives the output paths.
    Regular,
    /// A floating content-addressed derivation is involved: output paths are
    /// known only after building.
    Deferred,
}

/// A derivation's hash modulo: one hash per output (the same for all
/// outputs unless the derivation is fixed-output) and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvHash {
    /// Per output.
    pub hashes: BTreeMap<String, Hash>,
    /// Whether the hashes give output paths.
    pub kind: DrvHashKind,
}

/// Where input derivations come from: a store, a folder, a map.
///
/// Any `FnMut(&StorePath) -> Result<Derivation, E>` is a source.
pub trait DerivationSource {
    /// Reads the derivation at `drv_path`.
    ///
    /// # Errors
    ///
    /// When it cannot be read; the error is reported with the path.
    fn derivation(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<Derivation, Box<dyn std::error::Error + Send + Sync>>;
}

impl<F, E> DerivationSource for F
where
    F: FnMut(&StorePath) -> Result<Derivation, E>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn derivation(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<Derivation, Box<dyn std::error::Error + Send + Sync>> {
        self(drv_path).map_err(Into::into)
    }
}

/// The unmasked hash modulo of derivations by `.drv` path (Nix's
/// `drvHashes`), so each input is read and hashed once. Hashes depend on
/// the store directory, so a cache belongs to one.
#[derive(Debug, Clone, Default)]
pub struct HashModuloCache {
    store_dir: StoreDir,
    hashes: HashMap<StorePath, DrvHash>,
}

impl HashModuloCache {
    /// An empty cache for derivations in `store_dir`.
    #[must_use]
    pub fn new(store_dir: StoreDir) -> Self {
        Self {
            store_dir,
            hashes: HashMap::new(),
        }
    }

    /// The store directory the hashes are computed for.
    #[must_use]
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// How many derivations are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The cached hash of a `.drv` path.
    #[must_use]
    pub fn get(&self, drv_path: &StorePath) -> Option<&DrvHash> {
        self.hashes.get(drv_path)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.hashes.clear();
    }

    /// The unmasked hash modulo of the derivation at `drv_path` (Nix's
    /// `pathDerivationModulo`): what replaces that path when a derivation
    /// that uses it is hashed. Reads it, and its inputs, from `source`
    /// unless cached.
    ///
    /// # Errors
    ///
    /// When a derivation cannot be read, its outputs mix kinds, an input
    /// lacks an output that is used, or the inputs form a cycle.
    pub fn input_hash(
        &mut self,
        drv_path: &StorePath,
        source: &mut impl DerivationSource,
    ) -> Result<&DrvHash, DerivationError> {
        if !self.hashes.contains_key(drv_path) {
            self.compute_input_hash(drv_path, source)?;
        }
        self.hashes
            .get(drv_path)
            .ok_or_else(|| DerivationError::Cycle(drv_path.clone()))
    }

    /// The hash modulo of `drv`; `mask_outputs` gives the form its own
    /// output paths are made from.
    ///
    /// # Errors
    ///
    /// As [`HashModuloCache::input_hash`].
    pub fn hash_modulo(
        &mut self,
        drv: &Derivation,
        mask_outputs: bool,
        source: &mut impl DerivationSource,
    ) -> Result<DrvHash, DerivationError> {
        if drv.kind()? == DerivationKind::Fixed {
            return Ok(fixed_output_hash(drv, &self.store_dir));
        }
        self.resolve_inputs(drv, source)?;
        self.hash_with_cached_inputs(drv, mask_outputs)
    }

    /// The ATerm that [`HashModuloCache::hash_modulo`] hashes for a
    /// derivation that is not fixed-output: input derivations replaced by
    /// their hashes, and, with `mask_outputs`, outputs blanked. Nix's test
    /// data holds these as `*-modulo.drv`.
    ///
    /// # Errors
    ///
    /// As [`HashModuloCache::input_hash`].
    pub fn modulo_aterm(
        &mut self,
        drv: &Derivation,
        mask_outputs: bool,
        source: &mut impl DerivationSource,
    ) -> Result<(String, DrvHashKind), DerivationError> {
        drv.kind()?;
        self.resolve_inputs(drv, source)?;
        self.modulo_aterm_with_cached_inputs(drv, mask_outputs)
    }

    /// Makes sure every input derivation of `drv` is cached.
    fn resolve_inputs(
        &mut self,
        drv: &Derivation,
        source: &mut impl DerivationSource,
    ) -> Result<(), DerivationError> {
        for input in drv.input_drvs.keys() {
            if !self.hashes.contains_key(input) {
                self.compute_input_hash(input, source)?;
            }
        }
        Ok(())
    }

    /// Hashes `root` and whatever of its closure is not cached yet, inputs
    /// first, with an explicit stack.
    fn compute_input_hash(
        &mut self,
        root: &StorePath,
        source: &mut impl DerivationSource,
    ) -> Result<(), DerivationError> {
        let mut in_progress: HashSet<StorePath> = HashSet::new();
        let mut stack: Vec<(StorePath, Derivation)> = Vec::new();
        stack.push((root.clone(), read(source, root)?));
        in_progress.insert(root.clone());
        while let Some((_, drv)) = stack.last() {
            // Fixed-output derivations hash without their inputs, as in Nix:
            // their inputs are never read.
            let needs_inputs = drv.kind()? != DerivationKind::Fixed;
            let missing = needs_inputs
                .then(|| {
                    drv.input_drvs
                        .keys()
                        .find(|p| !self.hashes.contains_key(*p))
                        .cloned()
                })
                .flatten();
            if let Some(missing) = missing {
                if !in_progress.insert(missing.clone()) {
                    return Err(DerivationError::Cycle(missing));
                }
                let input = read(source, &missing)?;
                stack.push((missing, input));
                continue;
            }
            let Some((path, drv)) = stack.pop() else {
                break;
            };
            let hash = if needs_inputs {
                self.hash_with_cached_inputs(&drv, false)?
            } else {
                fixed_output_hash(&drv, &self.store_dir)
            };
            in_progress.remove(&path);
            if let Entry::Vacant(slot) = self.hashes.entry(path) {
                slot.insert(hash);
            }
        }
        Ok(())
    }

    fn hash_with_cached_inputs(
        &self,
        drv: &Derivation,
        mask_outputs: bool,
    ) -> Result<DrvHash, DerivationError> {
        let (aterm, kind) = self.modulo_aterm_with_cached_inputs(drv, mask_outputs)?;
        let hash = HashAlgo::Sha256.digest(aterm);
        Ok(DrvHash {
            hashes: drv
                .outputs
                .keys()
                .map(|name| (name.clone(), hash))
                .collect(),
            kind,
        })
    }

    fn modulo_aterm_with_cached_inputs(
        &self,
        drv: &Derivation,
        mask_outputs: bool,
    ) -> Result<(String, DrvHashKind), DerivationError> {
        let mut kind = if drv.kind()? == DerivationKind::Floating {
            DrvHashKind::Deferred
        } else {
            DrvHashKind::Regular
        };
        let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (input, outputs) in &drv.input_drvs {
            let Some(input_hash) = self.hashes.get(input) else {
                return Err(DerivationError::Cycle(input.clone()));
            };
            if input_hash.kind == DrvHashKind::Deferred {
                kind = DrvHashKind::Deferred;
            }
            for output in outputs {
                let hash = input_hash.hashes.get(output).ok_or_else(|| {
                    DerivationError::MissingInputOutput {
                        drv: drv.name.clone(),
                        input: input.clone(),
                        output: output.clone(),
                    }
                })?;
                inputs
                    .entry(hash.to_base16())
                    .or_default()
                    .insert(output.clone());
            }
        }
        Ok((
            write_aterm(drv, &self.store_dir, mask_outputs, Some(&inputs)),
            kind,
        ))
    }
}

/// Reads one derivation, naming its path in the error.
fn read(
    source: &mut impl DerivationSource,
    drv_path: &StorePath,
) -> Result<Derivation, DerivationError> {
    source
        .derivation(drv_path)
        .map_err(|source| DerivationError::Resolve {
            drv: drv_path.clone(),
            source,
        })
}

/// A fixed-output derivation's hash: per output, the SHA-256 of
/// `fixed:out:<method><algo>:<hex>:<path>`.
fn fixed_output_hash(drv: &Derivation, store_dir: &StoreDir) -> DrvHash {
    let hashes = drv
        .outputs
        .iter()
        .filter_map(|(name, output)| match output {
            DerivationOutput::Fixed(ca) => {
                let path = drv.fixed_output_path(store_dir, name, ca);
                let fingerprint = format!(
                    "fixed:out:{}:{}:{}",
                    ca.method.render_with_algo(ca.hash.algo()),
                    ca.hash.to_base16(),
                    store_dir.display(&path)
                );
                Some((name.clone(), HashAlgo::Sha256.digest(fingerprint)))
            }
            _ => None,
        })
        .collect();
    DrvHash {
        hashes,
        kind: DrvHashKind::Regular,
    }
}

impl Derivation {
    /// Fills in what a derivation written without output paths lacks (for
    /// `larder derivation add FILE.json`), as Nix's `fillInOutputPaths`:
    /// deferred outputs become input-addressed when no floating
    /// content-addressed input prevents it, and the environment variable
    /// named after each input-addressed or fixed output is set to its path
    /// when missing or empty. A wrong variable of a formerly deferred output
    /// is corrected (Nix warns and corrects it too).
    ///
    /// As in Nix, the masked hash is taken before the environment changes.
    /// Since that hash depends on whether the variables named after outputs
    /// exist, a derivation that lacked them fails
    /// [`Derivation::check_output_paths`] once they are added; derivations
    /// written with those variables present (even empty), as the evaluator
    /// writes them, pass.
    ///
    /// # Errors
    ///
    /// When an output path that is given is wrong, an environment variable
    /// of an output that was not deferred is wrong, or hashing fails.
    pub fn fill_in_output_paths(
        &mut self,
        cache: &mut HashModuloCache,
        source: &mut impl DerivationSource,
    ) -> Result<(), DerivationError> {
        let store_dir = cache.store_dir().clone();
        let expected = self.expected_paths(cache, source)?;
        for (output, expected) in &expected {
            let Some(path) = expected else { continue };
            let value = store_dir.display(path);
            let formerly_deferred = matches!(self.outputs[output], DerivationOutput::Deferred);
            if formerly_deferred {
                self.outputs.insert(
                    output.clone(),
                    DerivationOutput::InputAddressed(path.clone()),
                );
            }
            match self.env.get_mut(output) {
                None => {
                    self.env.insert(output.clone(), value);
                }
                Some(var) if var.is_empty() || formerly_deferred => *var = value,
                Some(_) => {}
            }
        }
        self.check_output_vars(&store_dir, expected)
    }

    /// Checks that the output paths a derivation gives are the ones Nix
    /// computes (Nix's `checkInvariants`): input-addressed paths from the
    /// masked hash modulo, fixed paths from their content address, and the
    /// environment variable named after each such output equal to its path.
    /// An input-addressed path where the path cannot be known yet (a
    /// floating content-addressed input) is an error; a deferred output
    /// whose path could be known is accepted, as Nix only warns.
    ///
    /// # Errors
    ///
    /// Names the first wrong output or variable, or why hashing failed.
    pub fn check_output_paths(
        &self,
        cache: &mut HashModuloCache,
        source: &mut impl DerivationSource,
    ) -> Result<(), DerivationError> {
        let store_dir = cache.store_dir().clone();
        let expected = self.expected_paths(cache, source)?;
        self.check_output_vars(&store_dir, expected)
    }

    /// Checks the environment variable of every output whose path is known.
    fn check_output_vars(
        &self,
        store_dir: &StoreDir,
        expected: Vec<(String, Option<StorePath>)>,
    ) -> Result<(), DerivationError> {
        for (output, expected) in expected {
            if matches!(self.outputs[&output], DerivationOutput::Deferred) {
                continue;
            }
            let Some(expected) = expected else { continue };
            let expected = store_dir.display(&expected);
            match self.env.get(&output) {
                None => {
                    return Err(DerivationError::MissingOutputVar { output, expected });
                }
                Some(actual) if *actual != expected => {
                    return Err(DerivationError::WrongOutputVar {
                        output,
                        expected,
                        actual: actual.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Every output's expected path: `Some` for input-addressed outputs
    /// (checked against the given path here), for deferred outputs that
    /// could be input-addressed, and for fixed outputs; `None` otherwise.
    fn expected_paths(
        &self,
        cache: &mut HashModuloCache,
        source: &mut impl DerivationSource,
    ) -> Result<Vec<(String, Option<StorePath>)>, DerivationError> {
        let store_dir = cache.store_dir().clone();
        let masked = match self.kind()? {
            DerivationKind::InputAddressed { .. } => Some(cache.hash_modulo(self, true, source)?),
            DerivationKind::Fixed | DerivationKind::Floating => None,
        };
        let mut expected = Vec::with_capacity(self.outputs.len());
        for (output, value) in &self.outputs {
            let path = match (value, &masked) {
                (DerivationOutput::Fixed(ca), _) => {
                    Some(self.fixed_output_path(&store_dir, output, ca))
                }
                (
                    DerivationOutput::InputAddressed(_) | DerivationOutput::Deferred,
                    Some(masked),
                ) => match (masked.kind, masked.hashes.get(output)) {
                    (DrvHashKind::Regular, Some(hash)) => {
                        Some(store_dir.make_output_path(output, hash, &self.name)?)
                    }
                    _ => None,
                },
                _ => None,
            };
            if let DerivationOutput::InputAddressed(given) = value {
                match &path {
                    Some(path) if path == given => {}
                    Some(path) => {
                        return Err(DerivationError::WrongOutputPath {
                            path: store_dir.display(given),
                            expected: store_dir.display(path),
                        });
                    }
                    None => {
                        return Err(DerivationError::ShouldBeDeferred {
                            path: store_dir.display(given),
                        });
                    }
                }
            }
            expected.push((output.clone(), path));
        }
        Ok(expected)
    }
}
