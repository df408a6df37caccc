//! What can be wrong with a derivation, in any of its spellings.

use thiserror::Error;

use crate::content_address::ContentAddressError;
use crate::hash::HashError;
use crate::store_path::{StorePath, StorePathError};

/// Why a derivation could not be read, checked or hashed.
///
/// ATerm errors name the byte offset in the `.drv` text; JSON syntax and type
/// errors carry serde_json's line and column.
#[derive(Debug, Error)]
pub enum DerivationError {
    /// The ATerm text does not follow the grammar.
    #[error("invalid derivation ATerm at byte {offset}: expected {expected}")]
    Syntax {
        /// Byte offset in the `.drv` text.
        offset: usize,
        /// What the parser expected there.
        expected: &'static str,
    },
    /// A string in the ATerm text is not UTF-8. larder keeps derivation
    /// strings as Rust strings, so such a `.drv` is rejected rather than
    /// read lossily.
    #[error("invalid derivation ATerm at byte {offset}: string is not valid UTF-8")]
    NotUtf8 {
        /// Byte offset of the first byte that is not UTF-8.
        offset: usize,
    },
    /// Text after the closing parenthesis.
    #[error("invalid derivation ATerm at byte {offset}: trailing data after the derivation")]
    TrailingData {
        /// Byte offset of the first extra byte.
        offset: usize,
    },
    /// A `DrvWithVersion` form with a version larder does not read.
    #[error(
        "unsupported derivation ATerm format version '{version}' at byte {offset} \
         (larder does not support the 'dynamic-derivations' experimental feature)"
    )]
    UnsupportedVersion {
        /// Byte offset of the version string.
        offset: usize,
        /// The version given.
        version: String,
    },
    /// A well-formed ATerm whose content is wrong; `source` says how.
    #[error("invalid derivation ATerm at byte {offset}: {source}")]
    At {
        /// Byte offset of the offending item.
        offset: usize,
        /// What is wrong with it.
        source: Box<DerivationError>,
    },
    /// The derivation name is not a valid store path name.
    #[error("derivation name '{name}' is not valid: {source}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        source: StorePathError,
    },
    /// An output name that cannot be part of a store path name.
    #[error("derivation output name '{output}' is not valid: {reason}")]
    BadOutputName {
        /// The output name given.
        output: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A store path that does not parse.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// A hash that does not parse.
    #[error("bad hash in output '{output}': {source}")]
    Hash {
        /// The output.
        output: String,
        /// Why the hash is invalid.
        source: HashError,
    },
    /// A content-address method or algorithm that does not parse.
    #[error("bad content address in output '{output}': {source}")]
    ContentAddress {
        /// The output.
        output: String,
        /// Why it is invalid.
        source: ContentAddressError,
    },
    /// The output's fields fit none of the kinds of output.
    #[error("output '{output}' is malformed: {reason}")]
    BadOutput {
        /// The output.
        output: String,
        /// What is wrong.
        reason: String,
    },
    /// An impure output (experimental in Nix, unsupported in larder).
    #[error(
        "output '{output}' is impure; larder does not support the 'impure-derivations' \
         experimental feature"
    )]
    Impure {
        /// The output.
        output: String,
    },
    /// Dynamic derivation inputs (experimental in Nix, unsupported in larder).
    #[error(
        "input derivation '{drv}' has dynamic outputs; larder does not support the \
         'dynamic-derivations' experimental feature"
    )]
    DynamicOutputs {
        /// The input derivation.
        drv: StorePath,
    },
    /// A fixed output whose path is not the one its content address gives.
    #[error(
        "derivation output '{output}' has path '{path}', which does not match its content \
         address (expected '{expected}')"
    )]
    FixedPathMismatch {
        /// The output.
        output: String,
        /// The path the derivation gives.
        path: String,
        /// The path the content address gives.
        expected: String,
    },
    /// An input derivation that names no outputs.
    #[error("input derivation '{0}' names no outputs")]
    NoInputOutputs(StorePath),
    /// The derivation JSON does not parse or has the wrong types.
    #[error("invalid derivation JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON document that is neither version 4 nor the Nix 2.8 shape.
    #[error("invalid derivation JSON: {0}")]
    JsonShape(String),
    /// The outputs mix kinds Nix does not allow together.
    #[error("derivation '{name}': {reason}")]
    BadOutputMix {
        /// The derivation's name.
        name: String,
        /// Which rule is broken.
        reason: &'static str,
    },
    /// The resolver could not provide an input derivation.
    #[error("cannot read input derivation '{drv}': {source}")]
    Resolve {
        /// The input derivation.
        drv: StorePath,
        /// The resolver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Input derivations that depend on each other in a cycle.
    #[error("input derivation '{0}' depends on itself")]
    Cycle(StorePath),
    /// An input derivation lacks an output that is asked for.
    #[error("derivation '{drv}' uses output '{output}' of '{input}', which has no such output")]
    MissingInputOutput {
        /// The derivation's name.
        drv: String,
        /// The input derivation.
        input: StorePath,
        /// The output asked for.
        output: String,
    },
    /// An input-addressed output whose path is not the computed one.
    #[error("derivation has incorrect output '{path}', should be '{expected}'")]
    WrongOutputPath {
        /// The path given.
        path: String,
        /// The path computed from the hash modulo, or `deferred`.
        expected: String,
    },
    /// An output path given where it cannot be known before building.
    #[error("derivation has incorrect output '{path}', should be deferred")]
    ShouldBeDeferred {
        /// The path given.
        path: String,
    },
    /// The environment variable named after an output is missing.
    #[error(
        "derivation has missing environment variable '{output}', should be '{expected}' but is not present"
    )]
    MissingOutputVar {
        /// The output.
        output: String,
        /// The value it should have.
        expected: String,
    },
    /// The environment variable named after an output is wrong.
    #[error(
        "derivation has incorrect environment variable '{output}', should be '{expected}' but is actually '{actual}'"
    )]
    WrongOutputVar {
        /// The output.
        output: String,
        /// The value it should have.
        expected: String,
        /// The value it has.
        actual: String,
    },
}

impl DerivationError {
    /// Attaches an ATerm byte offset to a content error.
    pub(crate) fn at(self, offset: usize) -> Self {
        match self {
            Self::Syntax { .. }
            | Self::NotUtf8 { .. }
            | Self::TrailingData { .. }
            | Self::UnsupportedVersion { .. }
            | Self::At { .. } => self,
            other => Self::At {
                offset,
                source: Box::new(other),
            },
        }
    }
}
