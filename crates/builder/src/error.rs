//! Why a build failed: a [`FailureKind`] the worker can act on, and Nix's
//! message.

use std::fmt;
use std::io;
use std::path::Path;

/// What kind of failure ended a build, as Nix's `BuildResult` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The builder failed in a way that will fail again (a non-zero exit of
    /// a sandboxed, input-addressed build).
    PermanentFailure,
    /// The builder failed in a way that may pass on retry (a fixed-output
    /// or impure build, or a full disk).
    TransientFailure,
    /// The build ran longer than the build timeout.
    TimedOut,
    /// The builder was silent for longer than the maximum silent time.
    SilenceTimedOut,
    /// The builder wrote more log than allowed.
    LogLimitExceeded,
    /// An output is missing, malformed, or violates an output check.
    OutputRejected,
    /// A fixed output's hash differs from the declared one, or a fixed
    /// output has references.
    HashMismatch,
    /// A check-mode rebuild gave different outputs.
    NotDeterministic,
    /// Anything else: the build could not be set up or torn down (file
    /// system errors, a store error, a bad derivation).
    MiscFailure,
}

impl FailureKind {
    /// The bits this failure adds to `nix-store --realise`'s exit status
    /// 100: 1 for a timeout, 2 for a hash mismatch, 4 for a check mismatch.
    #[must_use]
    pub const fn exit_status_bits(self) -> u8 {
        match self {
            Self::TimedOut | Self::SilenceTimedOut => 1,
            Self::HashMismatch => 2,
            Self::NotDeterministic => 4,
            _ => 0,
        }
    }

    /// Nix's name for the status (`BuildResult::Status`); a silence timeout
    /// is Nix's `TimedOut` and a hash mismatch its `OutputRejected` on the
    /// wire, but both keep their own name here.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PermanentFailure => "PermanentFailure",
            Self::TransientFailure => "TransientFailure",
            Self::TimedOut | Self::SilenceTimedOut => "TimedOut",
            Self::LogLimitExceeded => "LogLimitExceeded",
            Self::OutputRejected => "OutputRejected",
            Self::HashMismatch => "HashMismatch",
            Self::NotDeterministic => "NotDeterministic",
            Self::MiscFailure => "MiscFailure",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed build: its kind and the message Nix would print (without the
/// `error: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// What kind of failure it is.
    pub kind: FailureKind,
    /// The message.
    pub message: String,
}

impl BuildError {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A [`FailureKind::MiscFailure`].
    pub fn misc(message: impl Into<String>) -> Self {
        Self::new(FailureKind::MiscFailure, message)
    }

    /// A [`FailureKind::OutputRejected`].
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(FailureKind::OutputRejected, message)
    }

    /// A file system error while doing `action` on `path`.
    pub fn io(action: &str, path: &Path, source: &io::Error) -> Self {
        Self::misc(format!("{action} '{}': {source}", path.display()))
    }
}

/// Shorthand for results whose error is a [`BuildError`].
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Adds the file system path and action to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error to a [`BuildError::io`].
    fn at(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| BuildError::io(action, path, &e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| BuildError::io(action, path, &io::Error::from(e)))
    }
}
