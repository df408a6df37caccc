//! The build lifecycle as a chain of types, each consuming the last:
//! [`prepare`] gives a [`PreparedBuild`], [`PreparedBuild::start`] a
//! [`RunningBuild`], [`RunningBuild::unprepare`] an [`UnpreparedBuild`], and
//! [`UnpreparedBuild::register_outputs`] (with a [`LocksHeld`] proof) the
//! [`BuildOutputs`]. Dropping any of them, or any error, cleans up: the
//! process group is killed, the build directory is emptied and kept for
//! reuse (see [`crate::build_dir_pool`]) or deleted, and the scratch
//! outputs and the staged outputs are deleted. Nothing here blocks while the
//! builder runs; the caller polls [`RunningBuild::log_fd`] and
//! [`RunningBuild::exit_fd`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder_local_store::{ClosureSet, LocalStore, PathInfo};
use larder_store_core::canonicalise::{self, CanonicaliseError, Canonicaliser, PolicyError};
use larder_store_core::derivation::{Derivation, DerivationKind, DerivationOutput};
use larder_store_core::nar::Dumper;
use larder_store_core::references::RefScanner;
use larder_store_core::store_path::{StoreReferences, output_path_name};
use larder_store_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath,
};
use larder_store_core::{nar, references};
use rustix::process::Pid;

use crate::build_dir_pool;
use crate::builder::DerivationBuilder;
use crate::checks::{CheckedPath, OutputChecks, check_outputs, parse_output_checks};
use crate::env::{BuilderEnv, EnvInputs, structured_attrs};
use crate::error::{BuildError, FailureKind, IoContext, Result};
use crate::fsops;
use crate::process::{self, BuilderCommand, ExitStatus, LogRead, SpawnedBuilder};
use crate::rewrite::{Rewrites, hash_placeholder};
use crate::settings::BuildSettings;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The derivation's store path.
    pub drv_path: StorePath,
    /// The derivation.
    pub drv: Derivation,
    /// Rebuild outputs that are valid and compare (`--check`).
    pub check: bool,
    /// The settings.
    pub settings: BuildSettings,
}

/// Everything known about a build once it is prepared; what the
/// [`DerivationBuilder`] steps read.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The derivation's store path.
    pub drv_path: StorePath,
    /// The derivation.
    pub drv: Derivation,
    /// Its kind.
    pub kind: DerivationKind,
    /// The logical store directory.
    pub store_dir: StoreDir,
    /// Where the store directory really is on this machine.
    pub real_store_dir: PathBuf,
    /// The build directory (real path), created mode 0700.
    pub build_dir: PathBuf,
    /// The build directory as the builder sees it.
    pub build_dir_in_sandbox: PathBuf,
    /// Each output's path if known before building (input-addressed and
    /// fixed outputs).
    pub known_outputs: BTreeMap<String, Option<StorePath>>,
    /// Where each output is built: its known path, or a scratch path when
    /// that is valid already (check mode) or not known (floating).
    pub scratch_outputs: BTreeMap<String, StorePath>,
    /// The closure of the inputs: every path the builder may refer to. A
    /// set of the store's interned paths, since a deep DAG's closures hold
    /// thousands of paths that listing by name made cost time in each
    /// build; [`ClosureSet::paths`] lists them where a builder needs them.
    pub input_closure: ClosureSet,
    /// Placeholders and known paths rewritten to scratch paths.
    pub input_rewrites: Rewrites,
    /// The builder's environment and the files written for it.
    pub env: BuilderEnv,
    /// Rebuilding to compare.
    pub check: bool,
    /// The settings.
    pub settings: BuildSettings,
}

impl BuildContext {
    /// The `.drv` path in full, for messages.
    #[must_use]
    pub fn drv_display(&self) -> String {
        self.store_dir.display(&self.drv_path)
    }

    /// The command that runs the builder, with rewrites applied.
    #[must_use]
    pub fn builder_command(&self) -> BuilderCommand {
        let program = self.input_rewrites.apply(&self.drv.builder);
        let arg0 = Path::new(&program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        BuilderCommand {
            program: PathBuf::from(program),
            arg0,
            args: self
                .drv
                .args
                .iter()
                .map(|a| self.input_rewrites.apply(a))
                .collect(),
            env: self
                .env
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: self.build_dir_in_sandbox.clone(),
        }
    }

    /// Nix 2.8's name for the goal, used in limit messages.
    fn goal_name(&self) -> String {
        format!("building of '{}!*' from .drv file", self.drv_display())
    }
}

/// Prepares a build: checks the derivation, computes the input closure,
/// creates the build directory, chooses scratch paths (deleting invalid
/// leftovers there), computes the environment and writes its files, and
/// lets the builder set up its sandbox.
///
/// The caller holds the locks on the known output paths.
///
/// # Errors
///
/// When the derivation cannot be built (deferred outputs, a missing input)
/// or the file system or store fails; nothing is left behind.
pub fn prepare(
    store: &LocalStore,
    request: BuildRequest,
    builder: Box<dyn DerivationBuilder>,
) -> Result<PreparedBuild> {
    let BuildRequest {
        drv_path,
        drv,
        check,
        settings,
    } = request;
    let store_dir = store.store_dir().clone();
    let drv_display = store_dir.display(&drv_path);
    let kind = drv
        .kind()
        .map_err(|e| BuildError::misc(format!("derivation '{drv_display}': {e}")))?;
    if kind == (DerivationKind::InputAddressed { deferred: true }) {
        return Err(BuildError::misc(format!(
            "derivation '{drv_display}' has deferred outputs and must be resolved before it is built"
        )));
    }
    let input_closure = input_closure(store, &drv_path, &drv)?;
    let known_outputs = drv.output_paths(&store_dir);
    let real_store_dir = store.layout().real_store_dir();
    let build_dir = create_build_dir(&settings, &drv_path)?;
    let mut state = BuildState {
        ctx: BuildContext {
            drv_path,
            drv,
            kind,
            store_dir,
            real_store_dir,
            build_dir_in_sandbox: build_dir.clone(),
            build_dir,
            known_outputs,
            scratch_outputs: BTreeMap::new(),
            input_closure,
            input_rewrites: Rewrites::new(),
            env: BuilderEnv::default(),
            check,
            settings,
        },
        builder,
        owned_paths: Vec::new(),
        staged: Vec::new(),
        finished: false,
    };
    state.choose_scratch_paths(store)?;
    state.ctx.build_dir_in_sandbox = state.builder.build_dir_in_sandbox(&state.ctx);
    let ctx = &state.ctx;
    let sandbox_dir = ctx.build_dir_in_sandbox.to_string_lossy().into_owned();
    let inputs = EnvInputs {
        drv: &ctx.drv,
        kind: ctx.kind,
        store_dir: ctx.store_dir.as_str(),
        build_dir_in_sandbox: &sandbox_dir,
        cores: ctx.settings.effective_cores(),
        rewrites: &ctx.input_rewrites,
    };
    let impure = |name: &str| std::env::var(name).ok();
    let closure_text = |path: &str| registration_text(store, ctx, path);
    let env = BuilderEnv::compute(&inputs, &impure, &closure_text)?;
    for (name, contents) in &env.files {
        let file = ctx.build_dir.join(name);
        fs::write(&file, contents).at("writing", &file)?;
    }
    state.ctx.env = env;
    let BuildState { ctx, builder, .. } = &mut state;
    builder.prepare_sandbox(ctx)?;
    Ok(PreparedBuild { state })
}

/// A prepared build, ready to start.
#[derive(Debug)]
pub struct PreparedBuild {
    state: BuildState,
}

impl PreparedBuild {
    /// What the build knows.
    #[must_use]
    pub fn context(&self) -> &BuildContext {
        &self.state.ctx
    }

    /// Starts the builder process. Returns at once; the process runs in
    /// its own process group, its output on the pipe behind
    /// [`RunningBuild::log_fd`].
    ///
    /// # Errors
    ///
    /// When the process cannot be started; the build is cleaned up.
    pub fn start(mut self) -> Result<RunningBuild> {
        let command = self.state.ctx.builder_command();
        let BuildState { ctx, builder, .. } = &mut self.state;
        let SpawnedBuilder { pid, log, exit_fd } = builder.start_child(ctx, &command)?;
        let now = Instant::now();
        Ok(RunningBuild {
            child: Child { pid, reaped: None },
            log: Some(log),
            exit_fd,
            started: now,
            last_output: now,
            log_bytes: 0,
            tail: LogTail::new(self.state.ctx.settings.log_lines),
            killed_for: None,
            state: self.state,
        })
    }
}

/// A limit the builder broke; it has been killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// It ran longer than the build timeout.
    Timeout(Duration),
    /// It was silent longer than the maximum silent time.
    Silence(Duration),
    /// It wrote more log bytes than allowed.
    LogSize(u64),
}

/// A running builder. The caller (the worker's event loop) polls
/// [`log_fd`](Self::log_fd) for reading and [`exit_fd`](Self::exit_fd)
/// for the exit, calls [`read_log`](Self::read_log) when the log is
/// readable, [`check_limits`](Self::check_limits) on its timer (at
/// [`next_deadline`](Self::next_deadline) at the latest), and
/// [`unprepare`](Self::unprepare) once [`try_wait`](Self::try_wait) reports
/// the exit and the log reached end-of-file (or a limit killed it).
#[derive(Debug)]
pub struct RunningBuild {
    // Dropped first: the builder is killed before its build directory is
    // emptied for reuse (fields drop in declaration order).
    child: Child,
    state: BuildState,
    log: Option<OwnedFd>,
    exit_fd: Option<OwnedFd>,
    started: Instant,
    last_output: Instant,
    log_bytes: u64,
    tail: LogTail,
    killed_for: Option<LimitExceeded>,
}

impl RunningBuild {
    /// What the build knows.
    #[must_use]
    pub fn context(&self) -> &BuildContext {
        &self.state.ctx
    }

    /// The builder's process id (also its process group id).
    #[must_use]
    pub fn pid(&self) -> Pid {
        self.child.pid
    }

    /// The non-blocking read end of the log pipe; `None` after end-of-file.
    #[must_use]
    pub fn log_fd(&self) -> Option<BorrowedFd<'_>> {
        self.log.as_ref().map(AsFd::as_fd)
    }

    /// A pidfd that turns readable when the builder exits (`None` on
    /// kernels without pidfds: poll [`try_wait`](Self::try_wait) on a timer).
    #[must_use]
    pub fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.exit_fd.as_ref().map(AsFd::as_fd)
    }

    /// Reads what the log pipe holds now into `buf`, without blocking, and
    /// counts it for the limits and the log tail. On end-of-file the pipe
    /// is closed.
    ///
    /// # Errors
    ///
    /// When reading fails.
    pub fn read_log(&mut self, buf: &mut [u8]) -> io::Result<LogRead> {
        let Some(fd) = &self.log else {
            return Ok(LogRead::Eof);
        };
        let read = process::read_nonblocking(fd.as_fd(), buf)?;
        match read {
            LogRead::Data(n) => {
                self.last_output = Instant::now();
                self.log_bytes = self.log_bytes.saturating_add(n as u64);
                self.tail.push(&buf[..n]);
            }
            LogRead::Eof => {
                self.log = None;
                self.tail.finish();
            }
            LogRead::WouldBlock => {}
        }
        Ok(read)
    }

    /// How many log bytes were read so far.
    #[must_use]
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// When the next time-based limit falls due, if any is set.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let limits = &self.state.ctx.settings.limits;
        let timeout = limits.timeout.map(|t| self.started + t);
        let silence = limits.max_silent_time.map(|t| self.last_output + t);
        match (timeout, silence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks the limits at `now`; when one is broken, kills the process
    /// group, remembers why, and returns it. The build then fails with
    /// that kind when unprepared.
    ///
    /// # Errors
    ///
    /// When the process group cannot be killed.
    pub fn check_limits(&mut self, now: Instant) -> io::Result<Option<LimitExceeded>> {
        if self.killed_for.is_some() || self.child.reaped.is_some() {
            return Ok(self.killed_for);
        }
        let limits = self.state.ctx.settings.limits;
        let broken = if let Some(max) = limits.max_log_size
            && self.log_bytes > max
        {
            Some(LimitExceeded::LogSize(max))
        } else if let Some(t) = limits.max_silent_time
            && now.saturating_duration_since(self.last_output) >= t
        {
            Some(LimitExceeded::Silence(t))
        } else if let Some(t) = limits.timeout
            && now.saturating_duration_since(self.started) >= t
        {
            Some(LimitExceeded::Timeout(t))
        } else {
            None
        };
        if let Some(limit) = broken {
            self.killed_for = Some(limit);
            self.kill()?;
        }
        Ok(broken)
    }

    /// Sends SIGKILL to the builder and its process group.
    ///
    /// # Errors
    ///
    /// When `kill` fails.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.child.reaped.is_none() {
            process::kill_builder(self.child.pid)?;
        }
        Ok(())
    }

    /// Reaps the builder if it has exited, without blocking.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.child.reaped {
            return Ok(Some(status));
        }
        let status = process::try_reap(self.child.pid)?;
        self.child.reaped = status;
        Ok(status)
    }

    /// The last lines of the log (for messages and progress displays).
    pub fn log_tail(&self) -> impl Iterator<Item = &str> {
        self.tail.lines()
    }

    /// Tears the build down and examines the outputs: kills what is left of
    /// the process group (reaping the builder if the caller has not),
    /// checks the exit status and the limits, checks that every output
    /// exists, moves the outputs into a private staging directory (out of
    /// the paths other builds lock; nothing goes to its final path),
    /// canonicalises them, scans their references, and computes their
    /// final paths and content addresses.
    ///
    /// The result says which final paths the pre-build locks do not cover
    /// ([`UnpreparedBuild::locks_needed`]).
    ///
    /// # Errors
    ///
    /// The build's failure (non-zero exit, a limit, a missing or malformed
    /// output, a fixed output with references); everything is cleaned up.
    pub fn unprepare(mut self, store: &LocalStore) -> Result<UnpreparedBuild> {
        let ctx_name = self.state.ctx.drv_display();
        {
            let BuildState { ctx, builder, .. } = &mut self.state;
            builder.before_unprepare(ctx);
        }
        let status = match self.child.reaped {
            Some(status) => {
                // Whatever the builder left in its group goes too.
                process::kill_process_group(self.child.pid).map_err(|e| {
                    BuildError::misc(format!("killing the builder of '{ctx_name}': {e}"))
                })?;
                status
            }
            None => {
                let status = process::kill_and_reap(self.child.pid).map_err(|e| {
                    BuildError::misc(format!("killing the builder of '{ctx_name}': {e}"))
                })?;
                self.child.reaped = Some(status);
                status
            }
        };
        // Read what is left in the pipe, for the log tail; the group is
        // dead, so this ends.
        let mut buf = [0u8; 4096];
        while let Ok(LogRead::Data(_)) = self.read_log(&mut buf) {}
        self.log = None;
        self.exit_fd = None;
        self.tail.finish();
        {
            let BuildState { ctx, builder, .. } = &mut self.state;
            builder.kill_sandbox(ctx)?;
        }
        let ctx = &self.state.ctx;
        if let Some(limit) = self.killed_for {
            let name = ctx.goal_name();
            return Err(match limit {
                LimitExceeded::Timeout(t) => BuildError::new(
                    FailureKind::TimedOut,
                    format!("{name} timed out after {} seconds", t.as_secs()),
                ),
                LimitExceeded::Silence(t) => BuildError::new(
                    FailureKind::SilenceTimedOut,
                    format!("{name} timed out after {} seconds of silence", t.as_secs()),
                ),
                LimitExceeded::LogSize(max) => BuildError::new(
                    FailureKind::LogLimitExceeded,
                    format!("{name} killed after writing more than {max} bytes of log output"),
                ),
            });
        }
        if !status.success() {
            let disk_full = disk_looks_full(&ctx.real_store_dir) || disk_looks_full(&ctx.build_dir);
            let kind = if ctx.kind == DerivationKind::Fixed || disk_full {
                FailureKind::TransientFailure
            } else {
                FailureKind::PermanentFailure
            };
            let mut message = format!("builder for '{}' {status}", ctx.drv_display());
            let tail: Vec<&str> = self.tail.lines().collect();
            if !tail.is_empty() {
                message.push_str(&format!(";\nlast {} log lines:\n", tail.len()));
                for line in tail {
                    message.push_str("> ");
                    message.push_str(line);
                    message.push('\n');
                }
                message.push_str(&format!(
                    "For full logs, run 'larder log {}'.",
                    ctx.drv_display()
                ));
            }
            if disk_full {
                message.push_str(
                    "\nnote: build failure may have been caused by lack of free disk space",
                );
            }
            return Err(BuildError::new(kind, message));
        }
        let outputs = self.state.take_outputs(store)?;
        Ok(outputs)
    }
}

/// A build whose builder has finished and whose outputs are staged, hashed
/// and named, waiting for [`register_outputs`](Self::register_outputs).
#[derive(Debug)]
pub struct UnpreparedBuild {
    state: BuildState,
    id: u64,
    outputs: Vec<StagedOutput>,
    already_valid: BTreeMap<String, StorePath>,
    mismatch: Option<(Hash, Hash)>,
}

/// One output as unprepare left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSummary {
    /// The output's name.
    pub name: String,
    /// Its final store path.
    pub path: StorePath,
    /// The path the derivation declared for it, if any (for a fixed output
    /// whose hash did not match, this differs from `path`).
    pub declared: Option<StorePath>,
    /// The SHA-256 of its NAR.
    pub nar_hash: Hash,
    /// The NAR's size.
    pub nar_size: u64,
    /// Its references (itself included when it refers to itself).
    pub references: BTreeSet<StorePath>,
    /// Its content address, for fixed and floating outputs.
    pub ca: Option<ContentAddress>,
}

#[derive(Debug)]
struct StagedOutput {
    summary: OutputSummary,
    staged: PathBuf,
}

impl UnpreparedBuild {
    /// What the build knows.
    #[must_use]
    pub fn context(&self) -> &BuildContext {
        &self.state.ctx
    }

    /// The outputs as they will be registered, dependencies first.
    pub fn outputs(&self) -> impl Iterator<Item = &OutputSummary> {
        self.outputs.iter().map(|o| &o.summary)
    }

    /// Outputs that were valid already and were not rebuilt.
    #[must_use]
    pub fn already_valid(&self) -> &BTreeMap<String, StorePath> {
        &self.already_valid
    }

    /// The final paths the pre-build locks do not cover, which the caller
    /// must lock before [`register_outputs`](Self::register_outputs): the
    /// final paths of floating content-addressed outputs, and the actual
    /// path of a fixed output whose hash did not match. Empty for
    /// input-addressed outputs, a matching fixed output, and check mode.
    #[must_use]
    pub fn locks_needed(&self) -> BTreeSet<StorePath> {
        if self.state.ctx.check {
            return BTreeSet::new();
        }
        self.outputs
            .iter()
            .filter(|o| o.summary.declared.as_ref() != Some(&o.summary.path))
            .map(|o| o.summary.path.clone())
            .collect()
    }

    /// Declared paths that will not be registered (the declared path of a
    /// fixed output whose hash did not match): the caller releases their
    /// locks before waiting for [`locks_needed`](Self::locks_needed). The
    /// outputs were moved away from them, so another build may use them.
    #[must_use]
    pub fn declared_paths_not_registered(&self) -> BTreeSet<StorePath> {
        self.outputs
            .iter()
            .filter_map(|o| {
                o.summary
                    .declared
                    .clone()
                    .filter(|declared| *declared != o.summary.path)
            })
            .collect()
    }

    /// Every path [`register_outputs`](Self::register_outputs) will write:
    /// the final paths of the outputs (none in check mode). The lock proof
    /// must cover all of them.
    #[must_use]
    pub fn paths_to_install(&self) -> BTreeSet<StorePath> {
        if self.state.ctx.check {
            return BTreeSet::new();
        }
        self.outputs
            .iter()
            .map(|o| o.summary.path.clone())
            .collect()
    }

    /// Proves that `locks` covers every path to install, borrowing it for
    /// as long as the proof lives.
    ///
    /// # Errors
    ///
    /// The first path (as its real path) `locks` does not hold.
    pub fn locks_held<'a>(
        &self,
        store: &LocalStore,
        locks: &'a dyn HoldsLocks,
    ) -> Result<LocksHeld<'a>, MissingLock> {
        for path in self.paths_to_install() {
            let real = store.layout().real_path(&path);
            if !locks.holds_lock(&real) {
                return Err(MissingLock { path: real });
            }
        }
        Ok(LocksHeld {
            build: self.id,
            _locks: locks,
        })
    }

    /// Moves the outputs into the store and registers them, all in one
    /// transaction, after the output checks. A final path that became
    /// valid meanwhile (the same content-addressed content built elsewhere)
    /// is reused, not overwritten. In check mode, compares with the
    /// registered outputs instead; a difference keeps the new output beside
    /// the old one as `<path>.check`.
    ///
    /// # Errors
    ///
    /// A fixed-output hash mismatch (after registering the actual path,
    /// with Nix's message), an output check, a check-mode difference, a
    /// proof from another build, or a store failure. Unregistered outputs
    /// are deleted.
    pub fn register_outputs(
        mut self,
        store: &LocalStore,
        proof: LocksHeld<'_>,
    ) -> Result<BuildOutputs> {
        if proof.build != self.id {
            return Err(BuildError::misc(
                "register_outputs was given the lock proof of another build",
            ));
        }
        let ctx_check = self.state.ctx.check;
        let drv_display = self.state.ctx.drv_display();
        let mut results = BTreeMap::new();
        for (name, path) in &self.already_valid {
            let info = store
                .query_path_info(path)
                .map_err(|e| BuildError::misc(e.to_string()))?
                .ok_or_else(|| BuildError::misc(format!("output '{name}' is no longer valid")))?;
            results.insert(name.clone(), BuiltOutput::from_info(&info, true));
        }
        let mut new_infos = Vec::new();
        let outputs = std::mem::take(&mut self.outputs);
        for output in &outputs {
            let summary = &output.summary;
            let real = store.layout().real_path(&summary.path);
            if ctx_check {
                let registered = store
                    .query_path_info(&summary.path)
                    .map_err(|e| BuildError::misc(e.to_string()))?;
                if let Some(info) = registered
                    && info.nar_hash != summary.nar_hash
                {
                    let mut check_path = real.clone().into_os_string();
                    check_path.push(".check");
                    let check_path = PathBuf::from(check_path);
                    fsops::delete_path(&check_path)?;
                    move_tree(&output.staged, &check_path)?;
                    let shown = store.store_dir().display(&summary.path);
                    return Err(BuildError::new(
                        FailureKind::NotDeterministic,
                        format!(
                            "derivation '{drv_display}' may not be deterministic: output '{shown}' differs from '{shown}.check'"
                        ),
                    ));
                }
                results.insert(
                    summary.name.clone(),
                    BuiltOutput::from_summary(summary, false),
                );
                continue;
            }
            if store
                .is_valid(&summary.path)
                .map_err(|e| BuildError::misc(e.to_string()))?
            {
                fsops::delete_path(&output.staged)?;
                results.insert(
                    summary.name.clone(),
                    BuiltOutput::from_summary(summary, true),
                );
                continue;
            }
            // An invalid leftover; the caller holds the lock on this path.
            fsops::delete_path(&real)?;
            self.state.owned_paths.push(real.clone());
            move_tree(&output.staged, &real)?;
            let mut info = PathInfo::new(summary.path.clone(), summary.nar_hash, summary.nar_size);
            info.references = summary.references.clone();
            info.deriver = Some(self.state.ctx.drv_path.clone());
            info.ca = summary.ca;
            info.ultimate = true;
            new_infos.push(info);
            results.insert(
                summary.name.clone(),
                BuiltOutput::from_summary(summary, false),
            );
        }
        if let Some((specified, got)) = self.mismatch {
            if !ctx_check {
                // The actual path is valid content under its own address:
                // register it, so a corrected hash finds it.
                store
                    .register_paths(&new_infos)
                    .map_err(|e| BuildError::misc(e.to_string()))?;
                self.state.owned_paths.clear();
            }
            return Err(BuildError::new(
                FailureKind::HashMismatch,
                format!(
                    "hash mismatch in fixed-output derivation '{drv_display}':\n  specified: {}\n     got:    {}",
                    specified.to_sri(),
                    got.to_sri()
                ),
            ));
        }
        let checks = self.output_checks()?;
        let new: BTreeMap<String, (StorePath, CheckedPath)> = results
            .iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    (
                        o.path.clone(),
                        CheckedPath {
                            nar_size: o.nar_size,
                            references: o.references.clone(),
                        },
                    ),
                )
            })
            .collect();
        let query = |path: &StorePath| -> Result<CheckedPath> {
            let info = store
                .query_path_info(path)
                .map_err(|e| BuildError::misc(e.to_string()))?
                .ok_or_else(|| {
                    BuildError::misc(format!(
                        "path '{}' is not valid",
                        store.store_dir().display(path)
                    ))
                })?;
            Ok(CheckedPath {
                nar_size: info.nar_size,
                references: info.references,
            })
        };
        check_outputs(store.store_dir(), &checks, &new, &query)?;
        if !ctx_check {
            store
                .register_paths(&new_infos)
                .map_err(|e| BuildError::misc(e.to_string()))?;
        }
        self.state.owned_paths.clear();
        self.state.finish(true);
        Ok(BuildOutputs { outputs: results })
    }

    fn output_checks(&self) -> Result<BTreeMap<String, OutputChecks>> {
        let ctx = &self.state.ctx;
        let structured = structured_attrs(&ctx.drv)?;
        parse_output_checks(
            &ctx.drv_display(),
            ctx.drv.outputs().keys().cloned(),
            &ctx.drv.env,
            structured.as_ref(),
        )
    }
}

/// Something that can say whether this process holds the lock on a path
/// (its real path, without `.lock`): a pathlocks guard, or several.
pub trait HoldsLocks {
    /// Whether the lock on `path` is held.
    fn holds_lock(&self, path: &Path) -> bool;
}

impl HoldsLocks for larder_pathlocks::PathLocks {
    fn holds_lock(&self, path: &Path) -> bool {
        self.contains(path)
    }
}

impl<T: HoldsLocks + ?Sized> HoldsLocks for &T {
    fn holds_lock(&self, path: &Path) -> bool {
        (**self).holds_lock(path)
    }
}

impl<T: HoldsLocks> HoldsLocks for [T] {
    fn holds_lock(&self, path: &Path) -> bool {
        self.iter().any(|l| l.holds_lock(path))
    }
}

impl<T: HoldsLocks, const N: usize> HoldsLocks for [T; N] {
    fn holds_lock(&self, path: &Path) -> bool {
        self.iter().any(|l| l.holds_lock(path))
    }
}

impl<T: HoldsLocks> HoldsLocks for Vec<T> {
    fn holds_lock(&self, path: &Path) -> bool {
        self.iter().any(|l| l.holds_lock(path))
    }
}

/// Holds nothing: enough when there is nothing to install (check mode).
impl HoldsLocks for () {
    fn holds_lock(&self, _path: &Path) -> bool {
        false
    }
}

/// Proof, from [`UnpreparedBuild::locks_held`], that the locks on every
/// path the build installs are held; it borrows the lock holder, so the
/// locks cannot be released while it lives.
#[derive(Clone, Copy)]
pub struct LocksHeld<'a> {
    build: u64,
    _locks: &'a dyn HoldsLocks,
}

impl std::fmt::Debug for LocksHeld<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocksHeld")
            .field("build", &self.build)
            .finish()
    }
}

/// A path whose lock [`UnpreparedBuild::locks_held`] did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lock on '{}' is not held", path.display())]
pub struct MissingLock {
    /// The real path.
    pub path: PathBuf,
}

/// The result of a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutputs {
    /// Each output by name.
    pub outputs: BTreeMap<String, BuiltOutput>,
}

/// One output of a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltOutput {
    /// Its store path.
    pub path: StorePath,
    /// The SHA-256 of its NAR.
    pub nar_hash: Hash,
    /// The NAR's size.
    pub nar_size: u64,
    /// Its references.
    pub references: BTreeSet<StorePath>,
    /// Its content address.
    pub ca: Option<ContentAddress>,
    /// Whether the path was valid already, and this build's copy discarded.
    pub reused: bool,
}

impl BuiltOutput {
    fn from_summary(summary: &OutputSummary, reused: bool) -> Self {
        Self {
            path: summary.path.clone(),
            nar_hash: summary.nar_hash,
            nar_size: summary.nar_size,
            references: summary.references.clone(),
            ca: summary.ca,
            reused,
        }
    }

    fn from_info(info: &PathInfo, reused: bool) -> Self {
        Self {
            path: info.path.clone(),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            ca: info.ca,
            reused,
        }
    }
}

/// The builder's process.
#[derive(Debug)]
struct Child {
    pid: Pid,
    reaped: Option<ExitStatus>,
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // A build dropped while running: kill it and reap it, so no
            // process or zombie outlives the build.
            if let Ok(status) = process::kill_and_reap(self.pid) {
                self.reaped = Some(status);
            }
        }
    }
}

/// The state every lifecycle stage carries, cleaned up on drop unless the
/// build finished.
#[derive(Debug)]
struct BuildState {
    ctx: BuildContext,
    builder: Box<dyn DerivationBuilder>,
    /// Real paths this build wrote and deletes if it fails.
    owned_paths: Vec<PathBuf>,
    /// The outputs moved to the staging directory, until they are moved
    /// into the store (deleted if the build fails).
    staged: Vec<PathBuf>,
    finished: bool,
}

impl Drop for BuildState {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(false);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

impl BuildState {
    /// Cleans up, once: owned paths (failure only), staging, the build
    /// directory (kept on failure with `keep_failed`), the sandbox.
    fn finish(&mut self, success: bool) {
        self.finished = true;
        for path in std::mem::take(&mut self.owned_paths) {
            if let Err(e) = fsops::delete_path(&path) {
                tracing::warn!("cleaning up after '{}': {e}", self.ctx.drv_display());
            }
        }
        for staged in std::mem::take(&mut self.staged) {
            if let Err(e) = fsops::delete_path(&staged) {
                tracing::warn!("cleaning up after '{}': {e}", self.ctx.drv_display());
            }
        }
        if success || !self.ctx.settings.keep_failed {
            if let Err(e) = build_dir_pool::give_back(&self.ctx.build_dir) {
                tracing::warn!("cleaning up after '{}': {e}", self.ctx.drv_display());
            }
        } else {
            tracing::info!(
                "note: keeping build directory '{}'",
                self.ctx.build_dir.display()
            );
        }
        let BuildState { ctx, builder, .. } = self;
        builder.cleanup_sandbox(ctx, success);
    }

    /// Nix's scratch paths and input rewrites.
    fn choose_scratch_paths(&mut self, store: &LocalStore) -> Result<()> {
        let ctx = &mut self.ctx;
        let rewrite = self.builder.needs_hash_rewrite();
        let drv_base = ctx.drv_path.as_str().to_owned();
        for (name, known) in &ctx.known_outputs {
            let scratch = match known {
                None => fallback_path(
                    &ctx.store_dir,
                    &format!("rewrite:{drv_base}:name:{name}"),
                    &output_path_name(ctx.drv.name(), name),
                )?,
                Some(known) if !rewrite => known.clone(),
                Some(known)
                    if !store
                        .is_valid(known)
                        .map_err(|e| BuildError::misc(e.to_string()))? =>
                {
                    known.clone()
                }
                Some(known) => fallback_path(
                    &ctx.store_dir,
                    &format!("rewrite:{drv_base}:{}", known.as_str()),
                    known.name(),
                )?,
            };
            ctx.input_rewrites
                .insert(hash_placeholder(name), ctx.store_dir.display(&scratch));
            if let Some(known) = known
                && *known != scratch
            {
                ctx.input_rewrites
                    .insert(known.hash_part(), scratch.hash_part());
            }
            let real = self.builder.real_path_in_host(ctx, &scratch);
            // Not valid (or a scratch path): a leftover of an interrupted
            // build, which the caller's lock lets us delete.
            fsops::delete_path(&real)?;
            self.owned_paths.push(real);
            ctx.scratch_outputs.insert(name.clone(), scratch);
        }
        Ok(())
    }

    /// The body of [`RunningBuild::unprepare`] after a successful exit.
    fn take_outputs(mut self, store: &LocalStore) -> Result<UnpreparedBuild> {
        let staging = create_staging_dir(store)?;
        let build_id = next_id();
        // Nothing needs the build directory any more, and a hard link the
        // builder left there must not count as one outside the outputs.
        if !self.ctx.settings.keep_failed {
            build_dir_pool::give_back(&self.ctx.build_dir)?;
        }
        let ctx = &self.ctx;
        let drv_display = ctx.drv_display();
        let mut already_valid = BTreeMap::new();
        let mut staged: BTreeMap<String, PathBuf> = BTreeMap::new();
        let rules = self.builder.canonicalisation_rules(ctx);
        for (name, scratch) in &ctx.scratch_outputs {
            if !ctx.check
                && let Some(Some(known)) = ctx.known_outputs.get(name)
                && store
                    .is_valid(known)
                    .map_err(|e| BuildError::misc(e.to_string()))?
            {
                already_valid.insert(name.clone(), known.clone());
                continue;
            }
            let actual = self.builder.real_path_in_host(ctx, scratch);
            match canonicalise::check_output_root(&actual, &rules) {
                Ok(()) => {}
                Err(CanonicaliseError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    return Err(BuildError::rejected(format!(
                        "builder for '{drv_display}' failed to produce output path for output '{name}' at '{}'",
                        ctx.store_dir.display(scratch)
                    )));
                }
                Err(CanonicaliseError::Policy {
                    source: PolicyError::SuspiciousOutput { .. },
                    ..
                }) => {
                    return Err(BuildError::rejected(format!(
                        "suspicious ownership or permission on '{}' for output '{name}'; rejecting this build output",
                        actual.display()
                    )));
                }
                Err(e) => return Err(fsops::canonicalise_failure(e)),
            }
            let dest = staging.join(format!("{build_id}-{name}"));
            self.staged.push(dest.clone());
            move_tree(&actual, &dest)?;
            staged.insert(name.clone(), dest);
        }
        // All outputs at once: under the rules' confined hard links, a
        // file the builder linked from elsewhere is refused before any
        // metadata changes, so it is never touched.
        Canonicaliser::new(rules)
            .canonicalise_all(staged.values())
            .map_err(|e| {
                // The staging folder means nothing to the user: name the
                // derivation and the output's path in the store instead.
                let logical = |name: &String| {
                    ctx.known_outputs
                        .get(name)
                        .cloned()
                        .flatten()
                        .or_else(|| ctx.scratch_outputs.get(name).cloned())
                        .map(|path| ctx.store_dir.display(&path))
                };
                let message = staged.iter().fold(e.to_string(), |message, (name, dest)| {
                    match logical(name) {
                        Some(path) => message.replace(&dest.display().to_string(), &path),
                        None => message,
                    }
                });
                let mut failure = fsops::canonicalise_failure(e);
                failure.message = format!("output of '{drv_display}' rejected: {message}");
                failure
            })?;
        // The scratch locations are empty now; the staging directory owns
        // the outputs.
        self.owned_paths.clear();

        // References: the input closure and every output.
        let discard = discarded_references(ctx)?;
        let mut refs: BTreeMap<String, BTreeSet<StorePath>> = BTreeMap::new();
        for (name, path) in &staged {
            let found = if discard.contains(name) {
                BTreeSet::new()
            } else {
                scan_references(ctx, path)?
            };
            refs.insert(name.clone(), found);
        }
        let order = topo_order(ctx, &staged, &refs)?;

        let mut output_rewrites: BTreeMap<String, String> = BTreeMap::new();
        let mut finals: BTreeMap<StorePath, StorePath> = BTreeMap::new();
        let mut outputs = Vec::new();
        let mut mismatch = None;
        for name in order {
            let scratch = &ctx.scratch_outputs[&name];
            let staged_path = &staged[&name];
            let raw_refs = &refs[&name];
            let self_ref = raw_refs.contains(scratch);
            let others: BTreeSet<StorePath> = raw_refs
                .iter()
                .filter(|r| *r != scratch)
                .map(|r| finals.get(r).cloned().unwrap_or_else(|| r.clone()))
                .collect();
            let declared = ctx.known_outputs.get(&name).cloned().flatten();
            let (final_path, ca) = match ctx.drv.outputs().get(&name) {
                Some(DerivationOutput::InputAddressed(path)) => {
                    if path != scratch {
                        output_rewrites
                            .insert(scratch.hash_part().to_owned(), path.hash_part().to_owned());
                    }
                    fsops::rewrite_tree(staged_path, &output_rewrites)?;
                    (path.clone(), None)
                }
                Some(DerivationOutput::Fixed(wanted)) => {
                    let wanted = *wanted;
                    if !others.is_empty() || self_ref {
                        return Err(BuildError::new(
                            FailureKind::HashMismatch,
                            format!(
                                "illegal path references in fixed-output derivation '{drv_display}'"
                            ),
                        ));
                    }
                    let (path, ca) = content_address_output(
                        ctx,
                        &name,
                        staged_path,
                        scratch,
                        wanted.method,
                        wanted.hash.algo(),
                        &output_rewrites,
                        &StoreReferences::default(),
                    )?;
                    if ca.hash != wanted.hash || ca.method != wanted.method {
                        mismatch = Some((wanted.hash, ca.hash));
                    }
                    (path, Some(ca))
                }
                Some(DerivationOutput::Floating { method, algo }) => {
                    let references = StoreReferences {
                        others: others.clone(),
                        self_ref,
                    };
                    let (path, ca) = content_address_output(
                        ctx,
                        &name,
                        staged_path,
                        scratch,
                        *method,
                        *algo,
                        &output_rewrites,
                        &references,
                    )?;
                    (path, Some(ca))
                }
                Some(DerivationOutput::Deferred) | None => {
                    return Err(BuildError::misc(format!(
                        "derivation '{drv_display}': output '{name}' cannot be built"
                    )));
                }
            };
            output_rewrites.insert(
                scratch.hash_part().to_owned(),
                final_path.hash_part().to_owned(),
            );
            finals.insert(scratch.clone(), final_path.clone());
            // A rewritten output is a canonical copy; the others were
            // canonicalised above.
            let nar::NarHash {
                hash: nar_hash,
                size: nar_size,
            } = fsops::nar_hash(staged_path)?;
            let mut references = others;
            if self_ref {
                references.insert(final_path.clone());
            }
            outputs.push(StagedOutput {
                summary: OutputSummary {
                    name: name.clone(),
                    path: final_path,
                    declared,
                    nar_hash,
                    nar_size,
                    references,
                    ca,
                },
                staged: staged_path.clone(),
            });
        }
        Ok(UnpreparedBuild {
            state: self,
            id: next_id(),
            outputs,
            already_valid,
            mismatch,
        })
    }
}

/// Hashes a content-addressed output modulo its scratch hash part, computes
/// its final path, and rewrites its self-references to that path.
#[allow(clippy::too_many_arguments)]
fn content_address_output(
    ctx: &BuildContext,
    name: &str,
    staged: &Path,
    scratch: &StorePath,
    method: ContentAddressMethod,
    algo: HashAlgo,
    output_rewrites: &BTreeMap<String, String>,
    references: &StoreReferences,
) -> Result<(StorePath, ContentAddress)> {
    let flat = matches!(
        method,
        ContentAddressMethod::Flat | ContentAddressMethod::Text
    );
    if flat {
        let meta = fs::symlink_metadata(staged).at("getting status of", staged)?;
        if !meta.is_file() || meta.permissions().mode() & 0o100 != 0 {
            return Err(BuildError::rejected(format!(
                "output path '{}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)",
                ctx.store_dir.display(scratch)
            )));
        }
    }
    fsops::rewrite_tree(staged, output_rewrites)?;
    let hash = fsops::hash_modulo_path(algo, staged, flat, scratch.hash_part())?;
    let ca = ContentAddress { method, hash };
    let path_name = output_path_name(ctx.drv.name(), name);
    let path = ctx
        .store_dir
        .make_content_addressed_path(&path_name, &ca, references)
        .map_err(|e| {
            BuildError::rejected(format!(
                "output '{name}' of '{}' has no valid content-addressed path: {e}",
                ctx.drv_display()
            ))
        })?;
    if path != *scratch {
        let fix = BTreeMap::from([(scratch.hash_part().to_owned(), path.hash_part().to_owned())]);
        fsops::rewrite_tree(staged, &fix)?;
    }
    Ok((path, ca))
}

/// Outputs ordered so that each comes after the outputs it refers to.
fn topo_order(
    ctx: &BuildContext,
    staged: &BTreeMap<String, PathBuf>,
    refs: &BTreeMap<String, BTreeSet<StorePath>>,
) -> Result<Vec<String>> {
    let by_scratch: BTreeMap<&StorePath, &String> = ctx
        .scratch_outputs
        .iter()
        .filter(|(name, _)| staged.contains_key(*name))
        .map(|(name, path)| (path, name))
        .collect();
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut visiting = Vec::new();
    fn visit(
        ctx: &BuildContext,
        name: &String,
        by_scratch: &BTreeMap<&StorePath, &String>,
        refs: &BTreeMap<String, BTreeSet<StorePath>>,
        done: &mut BTreeSet<String>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(parent) = visiting.last()
            && visiting.contains(name)
        {
            return Err(BuildError::rejected(format!(
                "cycle detected in build of '{}' in the references of output '{name}' from output '{parent}'",
                ctx.drv_display()
            )));
        }
        visiting.push(name.clone());
        let own = &ctx.scratch_outputs[name];
        for reference in &refs[name] {
            if reference == own {
                continue;
            }
            if let Some(dep) = by_scratch.get(reference) {
                visit(ctx, dep, by_scratch, refs, done, visiting, order)?;
            }
        }
        visiting.pop();
        done.insert(name.clone());
        order.push(name.clone());
        Ok(())
    }
    for name in staged.keys() {
        visit(
            ctx,
            name,
            &by_scratch,
            refs,
            &mut done,
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(order)
}

/// Outputs whose references are not scanned (structured attribute
/// `unsafeDiscardReferences.<output> = true`).
fn discarded_references(ctx: &BuildContext) -> Result<BTreeSet<String>> {
    let Some(attrs) = structured_attrs(&ctx.drv)? else {
        return Ok(BTreeSet::new());
    };
    Ok(attrs
        .get("unsafeDiscardReferences")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default())
}

/// Nix's `makeFallbackPath`: a store path of type `rewrite:…` over the
/// all-zero SHA-256.
fn fallback_path(store_dir: &StoreDir, path_type: &str, name: &str) -> Result<StorePath> {
    store_dir
        .make_store_path(path_type, &Hash::sha256([0; 32]), name)
        .map_err(|e| BuildError::misc(format!("scratch path for '{name}': {e}")))
}

/// The closure of the derivation's inputs: its input sources and the
/// outputs it uses of its input derivations, with everything they refer to.
fn input_closure(store: &LocalStore, drv_path: &StorePath, drv: &Derivation) -> Result<ClosureSet> {
    let store_dir = store.store_dir();
    let drv_display = store_dir.display(drv_path);
    let misc = |e: larder_local_store::Error| BuildError::misc(e.to_string());
    let mut roots: BTreeSet<StorePath> = drv.input_srcs.clone();
    for (input, wanted) in &drv.input_drvs {
        let mut outputs = store.query_derivation_outputs(input).map_err(misc)?;
        if outputs.is_empty() {
            let real = store.layout().real_path(input);
            let bytes = fs::read(&real).at("reading derivation", &real)?;
            let name = input.name().strip_suffix(".drv").unwrap_or(input.name());
            let input_drv = Derivation::parse_aterm(&bytes, name, store_dir).map_err(|e| {
                BuildError::misc(format!("reading derivation '{}': {e}", real.display()))
            })?;
            outputs = input_drv
                .output_paths(store_dir)
                .into_iter()
                .filter_map(|(name, path)| path.map(|p| (name, p)))
                .collect();
        }
        for output in wanted {
            let path = outputs.get(output).ok_or_else(|| {
                BuildError::misc(format!(
                    "output '{output}' of input derivation '{}' of '{drv_display}' has no known path",
                    store_dir.display(input)
                ))
            })?;
            roots.insert(path.clone());
        }
    }
    store.query_closure_set(&roots).map_err(|e| match e {
        larder_local_store::Error::NotValid(path) => BuildError::misc(format!(
            "dependency '{path}' of '{drv_display}' is not valid"
        )),
        other => misc(other),
    })
}

/// Distinct runs of digits an output may hold before its references are
/// found by listing every candidate instead (far beyond what real outputs
/// hold; the bound keeps a pathological output from costing memory).
const COLLECTED_HASH_PARTS: usize = 1 << 16;

/// The references of the output staged at `path`: the paths of the input
/// closure and the outputs whose hash part its NAR holds, as Nix's scan
/// finds them. The hash parts the output mentions are collected first and
/// then looked up, so the cost does not grow with the size of the closure.
fn scan_references(ctx: &BuildContext, path: &Path) -> Result<BTreeSet<StorePath>> {
    let scan_error =
        |e| BuildError::misc(format!("scanning '{}' for references: {e}", path.display()));
    let mut collector = RefScanner::collecting(COLLECTED_HASH_PARTS);
    Dumper::new()
        .dump(path, &mut collector)
        .map_err(scan_error)?;
    if collector.overflowed() {
        let inputs = ctx.input_closure.paths();
        return references::scan_path(path, inputs.iter().chain(ctx.scratch_outputs.values()))
            .map_err(scan_error);
    }
    let mut found = BTreeSet::new();
    for hash_part in collector.found() {
        found.extend(
            ctx.scratch_outputs
                .values()
                .filter(|output| output.hash_part() == hash_part)
                .cloned(),
        );
        found.extend(ctx.input_closure.member_by_hash_part(hash_part));
    }
    Ok(found)
}

/// Nix's `makeValidityRegistration` without derivers or hashes, for
/// `exportReferencesGraph`: the closure of `path`, each path followed by
/// an empty deriver line, its reference count and its references.
fn registration_text(store: &LocalStore, ctx: &BuildContext, path: &str) -> Result<String> {
    let store_dir = store.store_dir();
    let start = store_dir
        .parse_inside(path)
        .map(|(p, _)| p)
        .map_err(|e| BuildError::misc(format!("exportReferencesGraph: '{path}': {e}")))?;
    if !ctx.input_closure.contains(&start) {
        return Err(BuildError::misc(format!(
            "exportReferencesGraph: '{path}' is not an input of '{}'",
            ctx.drv_display()
        )));
    }
    let mut closure: BTreeMap<StorePath, BTreeSet<StorePath>> = BTreeMap::new();
    let mut queue = vec![start];
    while let Some(p) = queue.pop() {
        if closure.contains_key(&p) {
            continue;
        }
        let info = store
            .query_path_info(&p)
            .map_err(|e| BuildError::misc(e.to_string()))?
            .ok_or_else(|| {
                BuildError::misc(format!("path '{}' is not valid", store_dir.display(&p)))
            })?;
        queue.extend(info.references.iter().cloned());
        closure.insert(p, info.references);
    }
    let mut text = String::new();
    for (p, refs) in &closure {
        text.push_str(&store_dir.display(p));
        text.push_str("\n\n");
        text.push_str(&format!("{}\n", refs.len()));
        for r in refs {
            text.push_str(&store_dir.display(r));
            text.push('\n');
        }
    }
    Ok(text)
}

/// Makes `<build dir>/nix-build-<drv name>-<pid>-<n>`, empty, mode 0700:
/// a spare directory of an earlier build renamed, or a new one.
fn create_build_dir(settings: &BuildSettings, drv_path: &StorePath) -> Result<PathBuf> {
    let parent = settings
        .build_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&parent).at("creating", &parent)?;
    let pid = std::process::id();
    build_dir_pool::take(&parent, || {
        format!("nix-build-{}-{pid}-{}", drv_path.name(), next_id())
    })
}

/// This process's private directory (mode 0700) in the store's scratch
/// area, `<scratch>/<pid>-builds`, where builds stage their outputs as
/// `<build id>-<output>` and a sandbox may keep its per-build folders. It
/// is made by the first build and kept, so that a build costs the file
/// system no directory of its own (creating and deleting one per build was
/// a measurable part of a trivial build). The store sweeps it once this
/// process is gone, as it sweeps every `<pid>-...` entry of a dead process.
/// [`create_staging_dir`] makes it.
#[must_use]
pub fn staging_dir(store: &LocalStore) -> PathBuf {
    store
        .layout()
        .scratch_dir()
        .join(format!("{}-builds", std::process::id()))
}

/// Makes [`staging_dir`] if it does not exist yet, and returns it.
///
/// # Errors
///
/// When the directory or the scratch area cannot be created.
pub fn create_staging_dir(store: &LocalStore) -> Result<PathBuf> {
    let dir = staging_dir(store);
    let create = |dir: &Path| match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    match create(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = store.layout().scratch_dir();
            fs::create_dir_all(&parent).at("creating", &parent)?;
            create(&dir).map_err(|e| BuildError::io("creating staging directory", &dir, &e))?;
            Ok(dir)
        }
        Err(e) => Err(BuildError::io("creating staging directory", &dir, &e)),
    }
}

/// Renames a tree; across file systems, copies it through its NAR (a
/// canonical copy) and deletes the original.
///
/// Moving a directory to another parent rewrites its `..` entry, which
/// needs write permission on the directory itself unless the caller is
/// privileged; a canonical (0555) or builder-made read-only directory gets
/// its owner's write bit for the rename and its mode back after.
fn move_tree(from: &Path, to: &Path) -> Result<()> {
    let read_only_dir = fs::symlink_metadata(from)
        .ok()
        .filter(|m| m.is_dir() && m.permissions().mode() & 0o200 == 0)
        .map(|m| m.permissions().mode() & 0o7777);
    if let Some(mode) = read_only_dir {
        fs::set_permissions(from, fs::Permissions::from_mode(mode | 0o200))
            .at("changing permissions of", from)?;
    }
    let moved = move_tree_as_is(from, to);
    if let Some(mode) = read_only_dir {
        let now = if moved.is_ok() { to } else { from };
        if now.exists() {
            fs::set_permissions(now, fs::Permissions::from_mode(mode))
                .at("changing permissions of", now)?;
        }
    }
    moved
}

fn move_tree_as_is(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            fsops::copy_tree_canonical(from, to)?;
            fsops::delete_path(from)
        }
        Err(e) => Err(BuildError::misc(format!(
            "moving '{}' to '{}': {e}",
            from.display(),
            to.display()
        ))),
    }
}

/// Nix's guess that a build failed for lack of space: under 8 MiB free.
fn disk_looks_full(path: &Path) -> bool {
    rustix::fs::statvfs(path).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_bsize) < 8 << 20)
}

/// The last lines of the log, as Nix keeps them for failure messages: a
/// carriage return restarts the current line.
#[derive(Debug)]
struct LogTail {
    max: usize,
    lines: std::collections::VecDeque<String>,
    current: Vec<u8>,
}

impl LogTail {
    fn new(max: usize) -> Self {
        Self {
            max,
            lines: std::collections::VecDeque::new(),
            current: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        for &b in data {
            match b {
                b'\n' => self.flush(),
                b'\r' => self.current.clear(),
                _ => self.current.push(b),
            }
        }
    }

    fn flush(&mut self) {
        let line = String::from_utf8_lossy(&self.current).into_owned();
        self.current.clear();
        if self.max == 0 {
            return;
        }
        if self.lines.len() == self.max {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn finish(&mut self) {
        if !self.current.is_empty() {
            self.flush();
        }
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_builds_staging_folder_survives_another_open_of_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path()).expect("store");
        let staging = create_staging_dir(&store).expect("staging");
        // Another process (here: another handle) opening the store sweeps
        // the scratch folders of dead processes only.
        let _again = LocalStore::open(dir.path()).expect("store again");
        assert!(staging.is_dir(), "'{}' was swept", staging.display());
        fsops::delete_path(&staging).expect("cleanup");
    }

    #[test]
    fn read_only_folders_move_to_a_new_parent_and_keep_their_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("a/out");
        fs::create_dir_all(from.join("sub")).expect("mkdir");
        fs::create_dir(dir.path().join("b")).expect("mkdir");
        fs::set_permissions(&from, fs::Permissions::from_mode(0o555)).expect("chmod");
        let to = dir.path().join("b/out");
        move_tree(&from, &to).expect("moving");
        let mode = fs::metadata(&to).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o555);
        assert!(to.join("sub").is_dir());
        fsops::delete_path(&to).expect("cleanup");
    }
}
