//! Build results, as Nix reports them: [`BuildStatus`], [`Failure`],
//! [`BuildResult`], and the exit status of `nix-store --realise`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// How a goal ended (Nix's `BuildResult::Status`, plus larder's own
/// distinction of a hash mismatch and a cancelled goal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// The outputs were built and registered.
    Built,
    /// The outputs were valid already (or became valid under the lock).
    AlreadyValid,
    /// The builder failed in a way that will fail again.
    PermanentFailure,
    /// The builder failed in a way that may pass another time.
    TransientFailure,
    /// An output is missing or violates a check.
    OutputRejected,
    /// A fixed output's hash is not the declared one.
    HashMismatch,
    /// The build ran past its timeout or was silent past the limit.
    TimedOut,
    /// The builder wrote more log than allowed.
    LogLimitExceeded,
    /// A `--check` rebuild produced different outputs.
    NotDeterministic,
    /// An input derivation failed.
    DependencyFailed,
    /// The goal could not be set up (bad derivation, store error, lock
    /// error, a wait-for cycle).
    MiscFailure,
    /// The goal was stopped because another build failed.
    Cancelled,
}

impl BuildStatus {
    /// True for the two successful statuses.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Built | Self::AlreadyValid)
    }

    /// Nix's name of the status (as in `nix build --json` and the daemon
    /// protocol; a hash mismatch is Nix's `OutputRejected`).
    pub fn nix_name(self) -> &'static str {
        match self {
            Self::Built => "Built",
            Self::AlreadyValid => "AlreadyValid",
            Self::PermanentFailure => "PermanentFailure",
            Self::TransientFailure => "TransientFailure",
            Self::OutputRejected | Self::HashMismatch => "OutputRejected",
            Self::TimedOut => "TimedOut",
            Self::LogLimitExceeded => "LogLimitExceeded",
            Self::NotDeterministic => "NotDeterministic",
            Self::DependencyFailed => "DependencyFailed",
            Self::MiscFailure | Self::Cancelled => "MiscFailure",
        }
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => "HashMismatch",
            Self::Cancelled => "Cancelled",
            other => other.nix_name(),
        })
    }
}

/// A failed goal: its status and Nix's message (without `error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What kind of failure.
    pub status: BuildStatus,
    /// What went wrong, in Nix's words where Nix has them.
    pub message: String,
}

impl Failure {
    /// A failure with the given status.
    pub fn new(status: BuildStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A [`BuildStatus::MiscFailure`].
    pub fn misc(message: impl Into<String>) -> Self {
        Self::new(BuildStatus::MiscFailure, message)
    }
}

/// The outcome of one goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// The derivation.
    pub drv: PathBuf,
    /// How it ended.
    pub status: BuildStatus,
    /// The error message of a failure.
    pub error: Option<String>,
    /// The output paths by output name (for a success).
    pub outputs: BTreeMap<String, PathBuf>,
    /// When the goal started building (`None` if it never built).
    pub start_time: Option<SystemTime>,
    /// When it finished building.
    pub stop_time: Option<SystemTime>,
}

impl BuildResult {
    /// True for a built or already valid derivation.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

/// The exit status `nix-store --realise` gives for these results: 0 when
/// all succeeded; otherwise 100 for failed builds, plus 1 if one timed out,
/// plus 2 for a hash mismatch, plus 4 for a check mismatch (104 alone for
/// a check mismatch); 1 for failures of another kind only.
pub fn exit_status<'a>(results: impl IntoIterator<Item = &'a BuildResult>) -> i32 {
    let (mut failed, mut build_failure, mut timed_out, mut hash_mismatch, mut check_mismatch) =
        (false, false, false, false, false);
    for result in results {
        match result.status {
            BuildStatus::Built | BuildStatus::AlreadyValid => continue,
            BuildStatus::PermanentFailure => build_failure = true,
            BuildStatus::TimedOut => timed_out = true,
            BuildStatus::HashMismatch => hash_mismatch = true,
            BuildStatus::NotDeterministic => check_mismatch = true,
            _ => {}
        }
        failed = true;
    }
    if !failed {
        return 0;
    }
    // Nix's Worker::failingExitStatus: bit 2 (100) for any build failure,
    // bits 0, 1, 3 for timeouts, hash mismatches, check mismatches, and
    // 0x60 on top whenever one of them is set.
    let mut mask = 0;
    if build_failure || timed_out || hash_mismatch {
        mask |= 0x04;
    }
    if timed_out {
        mask |= 0x01;
    }
    if hash_mismatch {
        mask |= 0x02;
    }
    if check_mismatch {
        mask |= 0x08;
    }
    if mask == 0 { 1 } else { mask | 0x60 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: BuildStatus) -> BuildResult {
        BuildResult {
            drv: PathBuf::from("/nix/store/x.drv"),
            status,
            error: None,
            outputs: BTreeMap::new(),
            start_time: None,
            stop_time: None,
        }
    }

    #[test]
    fn exit_statuses_are_nix_store_realise_ones() {
        use BuildStatus::*;
        let cases: &[(&[BuildStatus], i32)] = &[
            (&[], 0),
            (&[Built, AlreadyValid], 0),
            (&[PermanentFailure], 100),
            (&[TimedOut], 101),
            (&[HashMismatch], 102),
            (&[HashMismatch, HashMismatch, Built], 102),
            (&[TimedOut, HashMismatch], 103),
            (&[NotDeterministic], 104),
            (&[MiscFailure], 1),
            (&[DependencyFailed, LogLimitExceeded], 1),
            (&[PermanentFailure, DependencyFailed], 100),
        ];
        for (statuses, want) in cases {
            let results: Vec<_> = statuses.iter().map(|s| result(*s)).collect();
            assert_eq!(exit_status(&results), *want, "{statuses:?}");
        }
    }
}
