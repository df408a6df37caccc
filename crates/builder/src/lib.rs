//! The generic derivation builder, with separate *unprepare* and *register*
//! phases (the design of Nix PR #15859).
//!
//! A build goes through a chain of types, each consuming the last, so a
//! step cannot be skipped or repeated:
//!
//! 1. [`prepare`] → [`PreparedBuild`]: the build directory, the scratch
//!    output paths, the environment exactly as Nix sets it (`passAsFile`,
//!    structured attributes), the input closure.
//! 2. [`PreparedBuild::start`] → [`RunningBuild`]: the builder in its own
//!    process group, stdout and stderr on one non-blocking pipe, a pidfd
//!    for its exit. The caller's event loop drains the log and enforces the
//!    limits through it; nothing here blocks.
//! 3. [`RunningBuild::unprepare`] → [`UnpreparedBuild`]: the exit status,
//!    the outputs checked, staged, canonicalised, scanned for references
//!    and content-addressed; [`UnpreparedBuild::locks_needed`] says which
//!    final paths still need locks. Nothing is moved to its final path.
//! 4. [`UnpreparedBuild::register_outputs`] → [`BuildOutputs`], given a
//!    [`LocksHeld`] proof obtained from the lock guards: moves the outputs
//!    into the store, applies the output checks, and registers them in one
//!    transaction.
//!
//! Any error, and dropping any stage, cleans up. The steps a sandbox
//! changes are the [`DerivationBuilder`] trait; [`GenericBuilder`] builds
//! without one.
//!
//! - [`builder`]: [`DerivationBuilder`] and [`GenericBuilder`].
//! - [`build_dir_pool`]: build directories reused instead of deleted;
//!   [`release_spare_build_dirs`] (or a [`SpareBuildDirs`] guard) deletes
//!   the spares when the process is done building.
//! - [`lifecycle`]: the stage types and [`prepare`].
//! - [`process`]: spawning in a process group, the log pipe, exit status.
//! - [`env`](mod@env): the builder's environment; [`structured_attrs`]: `.attrs.json`
//!   and `.attrs.sh`; [`rewrite`]: placeholders and string rewriting.
//! - [`checks`]: the output checks.
//! - [`settings`]: [`BuildSettings`] and [`Limits`].
//! - [`error`]: [`BuildError`] and [`FailureKind`].
//! - `test_support` (feature `test-support`): a blocking driver for tests.

pub mod build_dir_pool;
pub mod builder;
pub mod checks;
pub mod env;
pub mod error;
pub mod lifecycle;
pub mod process;
pub mod rewrite;
pub mod settings;
pub mod structured_attrs;
#[cfg(feature = "test-support")]
pub mod test_support;

mod fsops;

pub use build_dir_pool::{
    MAX_SPARES_PER_PARENT, SpareBuildDirs, give_back_dir, release_spare_build_dirs, take_dir,
};
pub use builder::{DerivationBuilder, GenericBuilder};
pub use error::{BuildError, FailureKind};
pub use lifecycle::{
    BuildContext, BuildOutputs, BuildRequest, BuiltOutput, HoldsLocks, LimitExceeded, LocksHeld,
    MissingLock, OutputSummary, PreparedBuild, RunningBuild, UnpreparedBuild, create_staging_dir,
    prepare, staging_dir,
};
pub use process::{BuilderCommand, ExitStatus, LogRead, SpawnedBuilder};
pub use settings::{BuildSettings, Limits};
