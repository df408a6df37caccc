//! The real [`Backend`]: derivations and validity from a
//! [`LocalStore`], builds by the builder crate's lifecycle with any
//! [`DerivationBuilder`] (the generic one, or a sandbox).
//!
//! The worker speaks in logical store paths (`/nix/store/...`); this module
//! parses them at its edge and hands the builder [`StorePath`]s. The lock
//! proof the builder wants before it installs outputs is made here from the
//! worker's pathlocks guards.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use larder_builder::{
    BuildError, BuildRequest, BuildSettings, DerivationBuilder, FailureKind, RunningBuild,
};
use larder_local_store::{BuildLogWriter, LocalStore, LogCompression};
use larder_pathlocks::PathLocks;
use larder_store_core::{Derivation, StorePath};

use crate::backend::{Backend, Plan, StartedBuild, UnpreparedBuild};
use crate::result::{BuildStatus, Failure};

/// Makes the builder of one build: the generic builder, or a sandbox.
pub type BuilderFactory = dyn Fn(&Derivation) -> Result<Box<dyn DerivationBuilder>, Failure>;

/// A [`Backend`] over a local store and the builder crate.
pub struct StoreBackend {
    store: Arc<LocalStore>,
    settings: BuildSettings,
    new_builder: Box<BuilderFactory>,
    keep_logs: bool,
    /// Derivations read by [`Backend::plan`], taken again by
    /// [`Backend::start`] so that each `.drv` is parsed once.
    derivations: RefCell<HashMap<PathBuf, Derivation>>,
}

impl StoreBackend {
    /// A backend building in `store` with `settings`, each build with a
    /// builder from `new_builder`. Build logs are kept in the store.
    pub fn new(
        store: Arc<LocalStore>,
        settings: BuildSettings,
        new_builder: Box<BuilderFactory>,
    ) -> Self {
        Self {
            store,
            settings,
            new_builder,
            keep_logs: true,
            derivations: RefCell::new(HashMap::new()),
        }
    }

    /// Whether build logs are written to the store (on by default).
    #[must_use]
    pub fn keep_logs(mut self, keep: bool) -> Self {
        self.keep_logs = keep;
        self
    }

    /// The store.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    fn parse(&self, path: &Path) -> Result<StorePath, Failure> {
        let text = path
            .to_str()
            .ok_or_else(|| Failure::misc(format!("'{}' is not a store path", path.display())))?;
        self.store
            .parse_path(text)
            .map_err(|e| Failure::misc(format!("'{text}': {e}")))
    }

    fn logical(&self, path: &StorePath) -> PathBuf {
        PathBuf::from(self.store.print_path(path))
    }

    fn read(&self, drv: &Path) -> Result<Derivation, Failure> {
        if let Some(d) = self.derivations.borrow().get(drv) {
            return Ok(d.clone());
        }
        let path = self.parse(drv)?;
        self.store.read_derivation(&path).map_err(store_failure)
    }
}

impl Backend for StoreBackend {
    fn plan(&self, drv: &Path) -> Result<Plan, Failure> {
        let derivation = self.read(drv)?;
        let store_dir = self.store.store_dir();
        let plan = Plan {
            name: derivation.name().to_owned(),
            input_drvs: derivation
                .input_drvs
                .keys()
                .map(|p| self.logical(p))
                .collect(),
            outputs: derivation
                .output_paths(store_dir)
                .into_iter()
                .map(|(name, path)| (name, path.map(|p| self.logical(&p))))
                .collect(),
        };
        self.derivations
            .borrow_mut()
            .insert(drv.to_path_buf(), derivation);
        Ok(plan)
    }

    fn is_valid(&self, path: &Path) -> Result<bool, Failure> {
        let path = self.parse(path)?;
        self.store.is_valid(&path).map_err(store_failure)
    }

    fn delete_invalid(&self, path: &Path) -> Result<(), Failure> {
        let path = self.parse(path)?;
        self.store
            .delete_invalid_path(&path)
            .map(drop)
            .map_err(store_failure)
    }

    fn lock_path(&self, path: &Path) -> PathBuf {
        match self.parse(path) {
            Ok(path) => self.store.layout().real_path(&path),
            // Every path the worker locks comes from a parsed derivation;
            // should one not parse, it still gets a distinct lock under
            // the root rather than a panic.
            Err(_) => self
                .store
                .layout()
                .root()
                .join(path.strip_prefix("/").unwrap_or(path)),
        }
    }

    fn start(
        &self,
        drv: &Path,
        _plan: &Plan,
        check: bool,
    ) -> Result<Box<dyn StartedBuild>, Failure> {
        let drv_path = self.parse(drv)?;
        let derivation = match self.derivations.borrow_mut().remove(drv) {
            Some(d) => d,
            None => self
                .store
                .read_derivation(&drv_path)
                .map_err(store_failure)?,
        };
        let builder = (self.new_builder)(&derivation)?;
        let request = BuildRequest {
            drv_path,
            drv: derivation,
            check,
            settings: self.settings.clone(),
        };
        let running = larder_builder::prepare(&self.store, request, builder)
            .and_then(larder_builder::PreparedBuild::start)
            .map_err(build_failure)?;
        let dup = |fd: Option<BorrowedFd<'_>>, what: &str| -> Result<OwnedFd, Failure> {
            fd.ok_or_else(|| {
                Failure::misc(format!("the builder of '{}' has no {what}", drv.display()))
            })?
            .try_clone_to_owned()
            .map_err(|e| Failure::misc(format!("watching the builder of '{}': {e}", drv.display())))
        };
        let log = dup(running.log_fd(), "log pipe")?;
        let exit = dup(running.exit_fd(), "pidfd (a kernel before Linux 5.3?)")?;
        Ok(Box::new(Started {
            running,
            log,
            exit,
            store: Arc::clone(&self.store),
        }))
    }

    fn open_log(&self, drv: &Path) -> io::Result<Option<Box<dyn io::Write>>> {
        if !self.keep_logs {
            return Ok(None);
        }
        let path = self.parse(drv).map_err(|f| io::Error::other(f.message))?;
        let writer = self
            .store
            .build_log_writer(&path, LogCompression::None)
            .map_err(io::Error::other)?;
        Ok(Some(Box::new(LogFile(Some(writer)))))
    }
}

/// A build log that is moved to its final name when the build is done
/// with it, whether the build succeeded or not (Nix keeps both).
struct LogFile(Option<BuildLogWriter>);

impl io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for StoreBackend {
    fn drop(&mut self) {
        // Builds stage their outputs in this process's folder, which holds
        // nothing once the worker is done but the sandboxes' spare folders;
        // deleting those and then the folder (only if empty) spares the
        // store a leftover that would wait for the next sweep.
        larder_builder::release_spare_build_dirs();
        let _ = std::fs::remove_dir(larder_builder::staging_dir(&self.store));
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Err(e) = writer.finish()
        {
            tracing::warn!("keeping the build log: {e}");
        }
    }
}

/// A running build: the builder crate's [`RunningBuild`] and duplicates of
/// its descriptors, which the worker duplicates again to poll.
struct Started {
    running: RunningBuild,
    log: OwnedFd,
    exit: OwnedFd,
    store: Arc<LocalStore>,
}

impl StartedBuild for Started {
    fn pid(&self) -> u32 {
        self.running.pid().as_raw_nonzero().get().unsigned_abs()
    }

    fn log_fd(&self) -> BorrowedFd<'_> {
        self.log.as_fd()
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.exit.as_fd()
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        Ok(self.running.try_wait()?.map(|status| match status {
            larder_builder::ExitStatus::Code(code) => ExitStatus::from_raw((code & 0xff) << 8),
            larder_builder::ExitStatus::Signal(signal) => ExitStatus::from_raw(signal & 0x7f),
        }))
    }

    fn kill(&mut self) -> io::Result<()> {
        self.running.kill()
    }

    fn unprepare(self: Box<Self>) -> Result<Box<dyn UnpreparedBuild>, Failure> {
        let Started { running, store, .. } = *self;
        let unprepared = running.unprepare(&store).map_err(build_failure)?;
        Ok(Box::new(Unprepared { unprepared, store }))
    }
}

/// A build whose outputs wait for registration.
struct Unprepared {
    unprepared: larder_builder::UnpreparedBuild,
    store: Arc<LocalStore>,
}

impl Unprepared {
    fn logical(&self, paths: BTreeSet<StorePath>) -> BTreeSet<PathBuf> {
        paths
            .iter()
            .map(|p| PathBuf::from(self.store.print_path(p)))
            .collect()
    }
}

impl UnpreparedBuild for Unprepared {
    fn paths_needing_locks(&self) -> BTreeSet<PathBuf> {
        self.logical(self.unprepared.locks_needed())
    }

    fn paths_not_registered(&self) -> BTreeSet<PathBuf> {
        self.logical(self.unprepared.declared_paths_not_registered())
    }

    fn register_outputs(
        self: Box<Self>,
        locks: &[PathLocks],
        _already_valid: &BTreeSet<PathBuf>,
    ) -> Result<BTreeMap<String, PathBuf>, Failure> {
        // The builder checks validity again itself, under the same locks,
        // and reuses a path that turned valid (rule 7); `_already_valid`
        // is the worker's view of the same.
        let Unprepared { unprepared, store } = *self;
        let proof = unprepared
            .locks_held(&store, &locks)
            .map_err(|e| Failure::misc(e.to_string()))?;
        let outputs = unprepared
            .register_outputs(&store, proof)
            .map_err(build_failure)?;
        Ok(outputs
            .outputs
            .into_iter()
            .map(|(name, output)| (name, PathBuf::from(store.print_path(&output.path))))
            .collect())
    }
}

fn store_failure(error: larder_local_store::Error) -> Failure {
    Failure::misc(error.to_string())
}

/// The worker's status for a builder crate failure.
fn build_failure(error: BuildError) -> Failure {
    let status = match error.kind {
        FailureKind::PermanentFailure => BuildStatus::PermanentFailure,
        FailureKind::TransientFailure => BuildStatus::TransientFailure,
        FailureKind::TimedOut | FailureKind::SilenceTimedOut => BuildStatus::TimedOut,
        FailureKind::LogLimitExceeded => BuildStatus::LogLimitExceeded,
        FailureKind::OutputRejected => BuildStatus::OutputRejected,
        FailureKind::HashMismatch => BuildStatus::HashMismatch,
        FailureKind::NotDeterministic => BuildStatus::NotDeterministic,
        FailureKind::MiscFailure => BuildStatus::MiscFailure,
    };
    Failure::new(status, error.message)
}
