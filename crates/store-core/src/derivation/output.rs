//! Derivation outputs: what each output's path is, or how it will be found.

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::HashAlgo;
use crate::store_path::{StoreDir, StorePath, StoreReferences, output_path_name, validate_name};

use super::DerivationError;

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// The path is computed from the derivation's hash modulo before
    /// building (the usual case).
    InputAddressed(StorePath),
    /// A fixed-output derivation: the content address is known in advance,
    /// and the path follows from it, the derivation's name and the output's.
    Fixed(ContentAddress),
    /// A floating content-addressed output: the path is known only after
    /// building, by hashing the result with this method and algorithm.
    Floating {
        /// How the output will be serialised for hashing.
        method: ContentAddressMethod,
        /// The hash algorithm.
        algo: HashAlgo,
    },
    /// An input-addressed output whose path cannot be computed yet, because
    /// an input derivation is floating content-addressed.
    Deferred,
}

impl DerivationOutput {
    /// The output's store path when it is known before building: the given
    /// path of an input-addressed output, the content-addressed path of a
    /// fixed output, `None` for floating and deferred outputs.
    ///
    /// `drv_name` and `output` must have passed [`check_output_name`], as
    /// they have in every [`Derivation`](super::Derivation).
    ///
    /// # Errors
    ///
    /// When a fixed output's path cannot be computed (a text content address
    /// that is not SHA-256, or a name that is too long).
    pub fn path(
        &self,
        store_dir: &StoreDir,
        drv_name: &str,
        output: &str,
    ) -> Result<Option<StorePath>, DerivationError> {
        match self {
            Self::InputAddressed(path) => Ok(Some(path.clone())),
            Self::Fixed(ca) => Ok(Some(store_dir.make_content_addressed_path(
                &output_path_name(drv_name, output),
                ca,
                &StoreReferences::default(),
            )?)),
            Self::Floating { .. } | Self::Deferred => Ok(None),
        }
    }
}

/// What kind of derivation the outputs make, as Nix's `DerivationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationKind {
    /// Every output is input-addressed, or every output is deferred.
    InputAddressed {
        /// Whether the outputs are deferred.
        deferred: bool,
    },
    /// A single fixed output named `out`.
    Fixed,
    /// Floating content-addressed outputs, all with the same algorithm.
    Floating,
}

/// Checks an output name: it must be usable as part of a store path name,
/// and not `.` or `..` (so it can never name a directory).
///
/// # Errors
///
/// When the name is empty, `.` or `..`, or holds a character store path
/// names may not hold (such as `/`).
pub fn check_output_name(output: &str) -> Result<(), DerivationError> {
    let bad = |reason: String| DerivationError::BadOutputName {
        output: output.to_owned(),
        reason,
    };
    if output == "." || output == ".." {
        return Err(bad("it must not be '.' or '..'".to_owned()));
    }
    validate_name(output).map_err(|e| bad(e.to_string()))
}

/// Checks that an output's path name, `<drv name>-<output>`, is a valid
/// store path name (it may be too long even when both parts are valid).
pub(crate) fn check_output_path_name(drv_name: &str, output: &str) -> Result<(), DerivationError> {
    validate_name(&output_path_name(drv_name, output)).map_err(|e| DerivationError::BadOutputName {
        output: output.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks the parts of a fixed output that every reader must check: text
/// content addresses are SHA-256.
pub(crate) fn check_fixed(output: &str, ca: &ContentAddress) -> Result<(), DerivationError> {
    if ca.method == ContentAddressMethod::Text && ca.hash.algo() != HashAlgo::Sha256 {
        return Err(DerivationError::BadOutput {
            output: output.to_owned(),
            reason: "a text content address must use sha256".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        for good in ["out", "dev", "a.b", "x-y", "..."] {
            check_output_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(check_output_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_output_path_name(&"n".repeat(200), "0123456789ab").is_err());
    }
}
