//! Derivations: build recipes, byte-compatible with Nix.
//!
//! A [`Derivation`] is what a `.drv` file holds: outputs, input derivations
//! and sources, the system, the builder with its arguments, and the
//! environment. Its name is not in the file but in the `.drv` path.
//!
//! - [`output`]: [`DerivationOutput`] (input-addressed, fixed, floating,
//!   deferred) and [`DerivationKind`].
//! - [`aterm`]: the `.drv` format, [`Derivation::parse_aterm`] and
//!   [`Derivation::to_aterm`].
//! - [`json`]: Nix's derivation JSON, version 4 (written and read), and the
//!   Nix 2.8 `nix show-derivation` shape (read).
//! - [`hash_modulo`]: Nix 2.8's hash modulo over input derivations, with a
//!   [`HashModuloCache`] a long-running process can keep, and the
//!   input-addressed output paths it gives: filling them in and checking them.
//! - [`error`]: the [`DerivationError`] type.
//!
//! Strings are UTF-8: a `.drv` holding other bytes is rejected with the
//! byte offset of the first one. Structured attributes stay in the
//! environment as the raw `__json` entry, so `.drv` files round-trip byte for
//! byte; [`Derivation::structured_attrs`] parses them. Impure outputs and
//! dynamic derivation inputs (Nix experimental features) are rejected with
//! an error that says so.

pub mod aterm;
pub mod error;
pub mod hash_modulo;
pub mod json;
pub mod output;

use std::collections::{BTreeMap, BTreeSet};

use crate::content_address::ContentAddress;
use crate::hash::HashAlgo;
use crate::store_path::{StoreDir, StorePath, validate_name};

pub use error::DerivationError;
pub use hash_modulo::{DerivationSource, DrvHash, DrvHashKind, HashModuloCache};
pub use output::{DerivationKind, DerivationOutput, check_output_name};

/// The environment variable that holds structured attributes as JSON.
pub const STRUCTURED_ATTRS_VAR: &str = "__json";

/// A derivation, as a `.drv` file holds it, plus its name.
///
/// The name and the outputs carry invariants (valid names, output paths
/// that can be computed) and are reached through methods; the other fields
/// are plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    name: String,
    outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and the outputs of each that are used. Every set
    /// must be non-empty to be written as Nix reads it.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources: store paths that are not outputs of derivations.
    pub input_srcs: BTreeSet<StorePath>,
    /// The system type, such as `x86_64-linux` (Nix's `platform`).
    pub system: String,
    /// The program to run.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment, including `__json` for structured attributes.
    pub env: BTreeMap<String, String>,
}

impl Derivation {
    /// An empty derivation: no outputs, inputs, arguments or environment.
    ///
    /// # Errors
    ///
    /// When `name` is not a valid store path name, or `<name>.drv` is too long.
    pub fn new(name: &str) -> Result<Self, DerivationError> {
        let bad = |source| DerivationError::BadName {
            name: name.to_owned(),
            source,
        };
        validate_name(name).map_err(bad)?;
        validate_name(&format!("{name}.drv")).map_err(bad)?;
        Ok(Self {
            name: name.to_owned(),
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            system: String::new(),
            builder: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
        })
    }

    /// The name, as in the `.drv` path without `.drv`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The outputs by name.
    #[must_use]
    pub fn outputs(&self) -> &BTreeMap<String, DerivationOutput> {
        &self.outputs
    }

    /// Adds or replaces an output, returning the one it replaced.
    ///
    /// # Errors
    ///
    /// When the output name is invalid ([`check_output_name`]), the output's
    /// path name (`<name>-<output>`) is too long, or a fixed output is a text
    /// content address that is not SHA-256.
    pub fn insert_output(
        &mut self,
        name: &str,
        output: DerivationOutput,
    ) -> Result<Option<DerivationOutput>, DerivationError> {
        check_output_name(name)?;
        output::check_output_path_name(&self.name, name)?;
        if let DerivationOutput::Fixed(ca) = &output {
            output::check_fixed(name, ca)?;
        }
        Ok(self.outputs.insert(name.to_owned(), output))
    }

    /// Removes an output.
    pub fn remove_output(&mut self, name: &str) -> Option<DerivationOutput> {
        self.outputs.remove(name)
    }

    /// What kind of derivation the outputs make (Nix's `DerivationType`).
    ///
    /// # Errors
    ///
    /// When there are no outputs, or the outputs mix kinds: Nix allows only
    /// all input-addressed, all deferred, a single fixed output named `out`,
    /// or floating outputs that share one hash algorithm.
    pub fn kind(&self) -> Result<DerivationKind, DerivationError> {
        let mix = |reason| DerivationError::BadOutputMix {
            name: self.name.clone(),
            reason,
        };
        let (mut input_addressed, mut deferred, mut fixed) = (0, 0, 0);
        let mut floating: Option<HashAlgo> = None;
        let mut floating_count = 0;
        for output in self.outputs.values() {
            match output {
                DerivationOutput::InputAddressed(_) => input_addressed += 1,
                DerivationOutput::Deferred => deferred += 1,
                DerivationOutput::Fixed(_) => fixed += 1,
                DerivationOutput::Floating { algo, .. } => {
                    floating_count += 1;
                    if floating.is_some_and(|a| a != *algo) {
                        return Err(mix("all floating outputs must use the same hash algorithm"));
                    }
                    floating = Some(*algo);
                }
            }
        }
        let total = self.outputs.len();
        if total == 0 {
            return Err(mix("a derivation must have at least one output"));
        }
        if input_addressed == total {
            Ok(DerivationKind::InputAddressed { deferred: false })
        } else if deferred == total {
            Ok(DerivationKind::InputAddressed { deferred: true })
        } else if fixed == total {
            if total != 1 || !self.outputs.contains_key("out") {
                return Err(mix(
                    "a fixed-output derivation must have one output, named 'out'",
                ));
            }
            Ok(DerivationKind::Fixed)
        } else if floating_count == total {
            Ok(DerivationKind::Floating)
        } else {
            Err(mix(
                "its outputs mix input-addressed, deferred, fixed and floating kinds",
            ))
        }
    }

    /// Every output with its store path: `None` for floating and deferred
    /// outputs, whose paths are not known before building.
    #[must_use]
    pub fn output_paths(&self, store_dir: &StoreDir) -> BTreeMap<String, Option<StorePath>> {
        self.outputs
            .iter()
            .map(|(name, output)| {
                let path = match output {
                    DerivationOutput::InputAddressed(path) => Some(path.clone()),
                    DerivationOutput::Fixed(ca) => {
                        Some(self.fixed_output_path(store_dir, name, ca))
                    }
                    DerivationOutput::Floating { .. } | DerivationOutput::Deferred => None,
                };
                (name.clone(), path)
            })
            .collect()
    }

    /// The store paths the `.drv` file refers to: input sources and input
    /// derivations (outputs are not references).
    #[must_use]
    pub fn references(&self) -> BTreeSet<StorePath> {
        self.input_srcs
            .iter()
            .chain(self.input_drvs.keys())
            .cloned()
            .collect()
    }

    /// The `.drv` file's store path: the text path of its ATerm, named
    /// `<name>.drv`, whose references are the input sources and derivations.
    #[must_use]
    pub fn drv_path(&self, store_dir: &StoreDir) -> StorePath {
        let hash = HashAlgo::Sha256.digest(self.to_aterm(store_dir));
        store_dir
            .make_text_path(&format!("{}.drv", self.name), &hash, &self.references())
            // The hash is SHA-256 and `new` checked that `<name>.drv` is a
            // valid name, which are the only ways a text path can fail.
            .expect("SHA-256 text path with a checked name")
    }

    /// The structured attributes, parsed from the `__json` environment
    /// variable; `None` when the derivation has none.
    ///
    /// # Errors
    ///
    /// When `__json` is not a JSON object.
    pub fn structured_attrs(
        &self,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, DerivationError> {
        self.env
            .get(STRUCTURED_ATTRS_VAR)
            .map(|json| serde_json::from_str(json).map_err(DerivationError::Json))
            .transpose()
    }

    /// The path of a fixed output of this derivation.
    fn fixed_output_path(
        &self,
        store_dir: &StoreDir,
        output: &str,
        ca: &ContentAddress,
    ) -> StorePath {
        DerivationOutput::Fixed(*ca)
            .path(store_dir, &self.name, output)
            .ok()
            .flatten()
            // `insert_output` checked that the output's path name is valid and
            // that a text content address is SHA-256; a fixed path without
            // references cannot fail otherwise.
            .expect("fixed output path of a checked output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_address::ContentAddressMethod;

    #[test]
    fn kinds() {
        let mut drv = Derivation::new("x").unwrap();
        assert!(drv.kind().is_err());
        drv.insert_output("out", DerivationOutput::Deferred)
            .unwrap();
        assert_eq!(
            drv.kind().unwrap(),
            DerivationKind::InputAddressed { deferred: true }
        );
        let ca = ContentAddress {
            method: ContentAddressMethod::Nar,
            hash: HashAlgo::Sha256.digest("x"),
        };
        drv.insert_output("dev", DerivationOutput::Fixed(ca))
            .unwrap();
        assert!(drv.kind().is_err());
        drv.remove_output("out");
        assert!(drv.kind().is_err(), "a single fixed output must be 'out'");
        drv.remove_output("dev");
        drv.insert_output("out", DerivationOutput::Fixed(ca))
            .unwrap();
        assert_eq!(drv.kind().unwrap(), DerivationKind::Fixed);
    }

    #[test]
    fn bad_names() {
        assert!(Derivation::new("").is_err());
        assert!(Derivation::new("a b").is_err());
        assert!(Derivation::new(&"a".repeat(208)).is_err());
        assert!(Derivation::new(&"a".repeat(207)).is_ok());
    }
}
