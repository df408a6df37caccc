//! What the worker asks of the store and the builder: the [`Backend`]
//! trait, with the build's phases as [`StartedBuild`] and
//! [`UnpreparedBuild`].
//!
//! The phases are the ones DESIGN.md names: start (prepare + spawn),
//! `unprepare` (tear down, check, canonicalise, compute content-addressed
//! paths, say which paths still need locks) and `register_outputs`. The
//! worker takes the locks in between, on its event loop. The calls
//! themselves do file system work but never wait for anything: no lock,
//! no child.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use larder_pathlocks::PathLocks;

use crate::result::Failure;

/// What the worker needs to know of a derivation before building it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The derivation's name (for messages and progress).
    pub name: String,
    /// The input derivations, whose goals run first.
    pub input_drvs: Vec<PathBuf>,
    /// Each output and its store path when known in advance
    /// (input-addressed and fixed-output); `None` for a floating
    /// content-addressed output, whose path is known only after the build.
    pub outputs: BTreeMap<String, Option<PathBuf>>,
}

impl Plan {
    /// The output paths known in advance: what the pre-build locks cover.
    pub fn declared_paths(&self) -> BTreeSet<PathBuf> {
        self.outputs.values().flatten().cloned().collect()
    }

    /// True when every output has a path known in advance.
    pub fn all_declared(&self) -> bool {
        self.outputs.values().all(Option::is_some)
    }
}

/// The store and builder the worker drives. Store paths are the logical
/// ones (`/nix/store/...`); [`Backend::lock_path`] maps them to the file
/// whose `.lock` sibling is locked.
pub trait Backend {
    /// Reads the derivation at `drv` (a store path of a `.drv`).
    fn plan(&self, drv: &Path) -> Result<Plan, Failure>;

    /// Whether `path` is a valid (registered) store path.
    fn is_valid(&self, path: &Path) -> Result<bool, Failure>;

    /// Deletes whatever is at `path` if it is not valid: the leftovers of
    /// an interrupted build. Called under the path's lock.
    fn delete_invalid(&self, path: &Path) -> Result<(), Failure>;

    /// The real file system path of `path` (under the store's root); its
    /// lock file is this plus `.lock`.
    fn lock_path(&self, path: &Path) -> PathBuf;

    /// Prepares the build of `drv` (build directory, environment, sandbox)
    /// and starts the builder process. `check` rebuilds valid outputs to
    /// compare them.
    fn start(&self, drv: &Path, plan: &Plan, check: bool)
    -> Result<Box<dyn StartedBuild>, Failure>;

    /// Opens the file that keeps `drv`'s build log, if logs are kept.
    fn open_log(&self, drv: &Path) -> io::Result<Option<Box<dyn io::Write>>> {
        let _ = drv;
        Ok(None)
    }
}

/// A running builder, as the builder crate's `RunningBuild` is: it owns
/// its process (and reaps it), its log pipe and its exit descriptor; the
/// worker only polls the descriptors on its loop.
///
/// Dropping it before `unprepare` must kill the builder and clean up its
/// build directory: that is how a cancelled goal stops.
pub trait StartedBuild {
    /// The builder process's pid, for messages.
    fn pid(&self) -> u32;

    /// The read end of the builder's log pipe (stdout and stderr). The
    /// worker reads a duplicate of it, non-blocking.
    fn log_fd(&self) -> BorrowedFd<'_>;

    /// A descriptor that turns readable when the builder exits (a pidfd).
    /// The worker polls a duplicate of it and never reaps through it.
    fn exit_fd(&self) -> BorrowedFd<'_>;

    /// Reaps the builder if it has exited, without waiting.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;

    /// Kills the builder and whatever it started (its process group, or
    /// its PID namespace).
    fn kill(&mut self) -> io::Result<()>;

    /// Tears the build down after the builder was reaped: checks the exit
    /// status, canonicalises the outputs, computes content-addressed paths.
    fn unprepare(self: Box<Self>) -> Result<Box<dyn UnpreparedBuild>, Failure>;
}

/// A build whose outputs are checked but not yet in the store.
pub trait UnpreparedBuild {
    /// Output paths the pre-build locks do not cover and that must be
    /// locked before registration: floating content-addressed outputs, and
    /// the actual path of a fixed output whose hash differs.
    fn paths_needing_locks(&self) -> BTreeSet<PathBuf>;

    /// Declared output paths that will not be registered (the declared
    /// path of a fixed output whose hash differs). Their locks are released
    /// before any wait for the dynamic ones.
    fn paths_not_registered(&self) -> BTreeSet<PathBuf>;

    /// Moves the outputs into the store and registers them, under every
    /// lock: `locks` are the guards the goal holds (pre-build and dynamic),
    /// from which the backend proves that each path it installs is locked.
    /// A path in `already_valid` became valid while this goal waited for
    /// its lock; it is reused, never overwritten. Returns the output paths
    /// by output name, or the build's failure (output checks, hash
    /// mismatch, a check-mode difference).
    fn register_outputs(
        self: Box<Self>,
        locks: &[PathLocks],
        already_valid: &BTreeSet<PathBuf>,
    ) -> Result<BTreeMap<String, PathBuf>, Failure>;
}
