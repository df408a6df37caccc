//! [`ChrootBuilder`]: the generic builder's steps, overridden to run the
//! build in the sandbox (Nix's `ChrootLinuxDerivationBuilder`), and
//! [`SandboxConfig`], what every sandboxed build of a worker shares.
//!
//! On the host a build's sandbox is one folder, `sandbox-<n>`, in this
//! process's staging directory in the store's scratch area
//! ([`larder_builder::staging_dir`], mode 0700 like the folder Nix puts
//! around its chroot, so other users cannot reach into it): the chroot's
//! store directory, which the builder sees as `/nix/store` and writes its
//! outputs into. When the build is torn down it is renamed to
//! `sandbox-<n>.outputs`, out of reach of any sandbox, and the generic steps
//! take the outputs from there (into the real store, by `rename`, as the
//! folder is on the store's file system). Keeping the outputs apart from the
//! chroot's scratch locations is what lets the cleanup step rescue a failed
//! build's outputs after the generic cleanup has deleted those locations.
//!
//! Nix makes `<real store>/<drv>.chroot` and the chroot's store folder in it
//! for every build; one folder in a directory that already exists costs the
//! file system one directory less to create and delete per build.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use larder_builder::{
    BuildContext, BuildError, BuilderCommand, DerivationBuilder, SpawnedBuilder,
    process::set_nonblocking,
};
use larder_local_store::LocalStore;
use larder_store_core::StorePath;
use larder_store_core::derivation::DerivationKind;

use crate::chroot::Chroot;
use crate::namespaces::SavedNamespaces;
use crate::network::{LoopbackNamespace, NetworkNamespaces};
use crate::rescue::{Rescue, rescue_outputs_from};
use crate::setup::ChildSetup;
use crate::spec::{BindMount, ChrootSpec, Command, Network, SANDBOX_BUILD_DIR};
use crate::{SandboxError, check_support, default_sandbox_paths};

/// What every sandboxed build of a worker shares: the extra sandbox paths,
/// checked once when the worker starts, and the loopback network
/// namespaces kept from one build for the next.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    sandbox_paths: Arc<[BindMount]>,
    networks: Arc<NetworkNamespaces>,
}

impl SandboxConfig {
    /// The default sandbox: checks that this process can create the
    /// sandbox's namespaces and that a static `/bin/sh` is available
    /// ([`default_sandbox_paths`]).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`] when namespaces cannot be created (the
    /// message names the cause and `--no-sandbox`), or
    /// [`SandboxError::NoStaticShell`] with advice.
    pub fn detect() -> Result<SandboxConfig, SandboxError> {
        check_support()?;
        SandboxConfig::with_sandbox_paths(default_sandbox_paths()?)
    }

    /// A sandbox with these extra paths instead of the defaults (Nix's
    /// `sandbox-paths`). Checks that namespaces can be created.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`], as [`SandboxConfig::detect`].
    pub fn with_sandbox_paths(paths: Vec<BindMount>) -> Result<SandboxConfig, SandboxError> {
        check_support()?;
        Ok(SandboxConfig {
            sandbox_paths: paths.into(),
            networks: Arc::new(NetworkNamespaces::new()),
        })
    }

    /// The extra sandbox paths.
    pub fn sandbox_paths(&self) -> &[BindMount] {
        &self.sandbox_paths
    }

    /// The loopback network namespaces this worker's builds share, one
    /// build at a time.
    pub fn networks(&self) -> &NetworkNamespaces {
        &self.networks
    }

    /// A builder for one build, which asks `store` at cleanup whether a
    /// failed build's outputs are valid before rescuing them.
    pub fn builder(&self, store: Arc<LocalStore>) -> ChrootBuilder {
        static SANDBOXES: AtomicU64 = AtomicU64::new(0);
        let dir = larder_builder::staging_dir(&store).join(format!(
            "sandbox-{}",
            SANDBOXES.fetch_add(1, Ordering::Relaxed)
        ));
        ChrootBuilder {
            sandbox_paths: Arc::clone(&self.sandbox_paths),
            networks: Arc::clone(&self.networks),
            network: None,
            setup: None,
            program: PathBuf::new(),
            store,
            dir,
            chroot: None,
            namespaces: SavedNamespaces::default(),
            torn_down: false,
        }
    }
}

/// The sandboxed builder of one build: an override of the generic
/// [`DerivationBuilder`] steps. Box it and hand it to
/// [`larder_builder::prepare`] in place of [`larder_builder::GenericBuilder`].
///
/// - prepare: the chroot, with the input closure bound read-only at its
///   store paths, the build directory at `/build` and the sandbox paths;
///   fixed-output derivations keep the host's network.
/// - start: the builder in its namespaces; the sandbox's mount and user
///   namespaces stay saved while it runs.
/// - unprepare: the saved namespaces are reset first, before the generic
///   teardown; then the chroot's store is moved aside, and the generic steps
///   take the outputs from there.
/// - cleanup after a failure: each output the build left is moved into the
///   real store for inspection only if the store says *now* that it is
///   invalid, and never over an existing path.
pub struct ChrootBuilder {
    sandbox_paths: Arc<[BindMount]>,
    networks: Arc<NetworkNamespaces>,
    /// The build's loopback namespace, from `networks`, until the builder
    /// is reaped.
    network: Option<LoopbackNamespace>,
    /// The sandbox child's setup, which goes on after `start_child`
    /// returned; asked once the builder is reaped.
    setup: Option<ChildSetup>,
    /// The builder program, for the message of a failed setup.
    program: PathBuf,
    store: Arc<LocalStore>,
    /// The chroot's store folder on the host, `<staging>/sandbox-<n>`.
    dir: PathBuf,
    chroot: Option<Chroot>,
    namespaces: SavedNamespaces,
    torn_down: bool,
}

impl fmt::Debug for ChrootBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChrootBuilder")
            .field("chroot", &self.chroot.as_ref().map(Chroot::dir))
            .field("namespaces_open", &self.namespaces.is_open())
            .field("torn_down", &self.torn_down)
            .finish_non_exhaustive()
    }
}

impl ChrootBuilder {
    /// Whether the sandbox's mount and user namespaces are saved (from the
    /// start of the builder until the build is unprepared).
    pub fn namespaces_open(&self) -> bool {
        self.namespaces.is_open()
    }

    /// The folder of this build's sandbox on the host, the chroot's store
    /// directory while the build runs: `sandbox-<n>` in this process's
    /// staging directory.
    pub fn sandbox_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Where the chroot's store is moved when the build is torn down:
    /// `sandbox-<n>.outputs` beside it.
    fn held_outputs(&self) -> PathBuf {
        let mut held = self.dir.clone().into_os_string();
        held.push(".outputs");
        PathBuf::from(held)
    }

    fn chroot_spec(&self, ctx: &BuildContext) -> ChrootSpec {
        let mut spec = ChrootSpec::new(&self.dir, &ctx.build_dir);
        spec.store_dir = PathBuf::from(ctx.store_dir.as_str());
        spec.build_dir_in_sandbox = ctx.build_dir_in_sandbox.clone();
        // The outputs are built in the chroot's store, so an output path
        // that is also an input (a rebuild in check mode) is not bound.
        let outputs: Vec<&StorePath> = ctx.scratch_outputs.values().collect();
        for input in ctx.input_closure.paths() {
            if !outputs.contains(&&input) {
                spec.add_input(ctx.real_store_dir.join(input.as_str()), input.as_str());
            }
        }
        spec.sandbox_paths = self.sandbox_paths.to_vec();
        // As in Nix, only fixed-output derivations (whose result is checked
        // against a declared hash) may reach the network.
        spec.network = match ctx.kind {
            DerivationKind::Fixed => Network::Host,
            DerivationKind::InputAddressed { .. } | DerivationKind::Floating => Network::Loopback,
        };
        spec
    }

    /// After a failed build: moves the outputs it left into the real store
    /// for inspection, as Nix does, but only those the store says are
    /// invalid now and only where nothing exists yet.
    fn rescue(&self, ctx: &BuildContext) {
        let outputs: Vec<StorePath> = ctx.known_outputs.values().flatten().cloned().collect();
        let outcomes = rescue_outputs_from(
            &self.held_outputs(),
            &ctx.real_store_dir,
            &outputs,
            |path| self.store.is_valid(path).map_err(io::Error::other),
        );
        for (path, outcome) in outcomes {
            let shown = ctx.store_dir.display(&path);
            match outcome {
                Rescue::NotBuilt => {}
                Rescue::Moved => tracing::info!("output '{shown}' of a failed build: {outcome}"),
                Rescue::ValidNow | Rescue::Occupied | Rescue::Failed(_) => {
                    tracing::warn!("output '{shown}' of a failed build: {outcome}");
                }
            }
        }
    }
}

impl DerivationBuilder for ChrootBuilder {
    /// The builder writes into the chroot's own store directory, so an
    /// output whose path is valid already can be built at that path.
    fn needs_hash_rewrite(&self) -> bool {
        false
    }

    fn build_dir_in_sandbox(&self, _ctx: &BuildContext) -> PathBuf {
        PathBuf::from(SANDBOX_BUILD_DIR)
    }

    fn prepare_sandbox(&mut self, ctx: &BuildContext) -> larder_builder::error::Result<()> {
        // The staging directory is this process's; a sandbox folder of an
        // interrupted build is in a dead process's one, which the store
        // sweeps.
        larder_builder::create_staging_dir(&self.store)?;
        let chroot = Chroot::create(&self.chroot_spec(ctx)).map_err(|e| {
            BuildError::misc(format!(
                "setting up the sandbox of '{}': {e}",
                ctx.drv_display()
            ))
        })?;
        self.chroot = Some(chroot);
        Ok(())
    }

    fn start_child(
        &mut self,
        ctx: &BuildContext,
        command: &BuilderCommand,
    ) -> larder_builder::error::Result<SpawnedBuilder> {
        let chroot = self.chroot.as_ref().ok_or_else(|| {
            BuildError::misc(format!(
                "the sandbox of '{}' was not prepared",
                ctx.drv_display()
            ))
        })?;
        let sandboxed = Command {
            program: command.program.clone(),
            arg0: command.arg0.clone().into(),
            args: command.args.iter().map(Into::into).collect(),
            env: command
                .env
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            working_dir: command.cwd.clone(),
        };
        let failed = |e: &dyn fmt::Display| {
            BuildError::misc(format!(
                "starting builder '{}' for '{}': {e}",
                command.program.display(),
                ctx.drv_display()
            ))
        };
        // The worker goes on while the child sets the sandbox up; a failed
        // step shows when the builder is reaped (`kill_sandbox`).
        let child = crate::start(chroot, &sandboxed, &self.networks).map_err(|e| failed(&e))?;
        self.program.clone_from(&command.program);
        let parts = child.into_parts().map_err(|e| failed(&e))?;
        let log = parts.log.ok_or_else(|| failed(&"no log pipe"))?;
        set_nonblocking(log.as_fd()).map_err(|e| failed(&e))?;
        self.namespaces = parts.namespaces;
        self.network = parts.network;
        self.setup = parts.setup;
        Ok(SpawnedBuilder {
            pid: parts.pid,
            log,
            exit_fd: Some(parts.pidfd),
        })
    }

    /// The override of unprepare's first step: nothing may add paths to
    /// the sandbox once it is being torn down, so the saved namespaces are
    /// closed before the generic teardown runs (Nix resets them at the start
    /// of `ChrootLinuxDerivationBuilder::unprepareBuild`).
    fn before_unprepare(&mut self, _ctx: &BuildContext) {
        self.namespaces.reset();
    }

    /// The builder was PID 1 of its PID namespace and has been reaped, so
    /// the kernel has killed every other process of the sandbox: its network
    /// namespace can serve the next build. What is left is to move the
    /// chroot's store aside, where the generic steps take the outputs from.
    fn kill_sandbox(&mut self, ctx: &BuildContext) -> larder_builder::error::Result<()> {
        self.namespaces.reset();
        if let Some(network) = self.network.take() {
            self.networks.give_back(network);
        }
        // Reaped, so the answer is there: the builder ran, or the child
        // failed a setup step and exited.
        if let Some(mut setup) = self.setup.take()
            && let Err(e) = setup.wait()
        {
            return Err(BuildError::misc(format!(
                "starting builder '{}' for '{}': {e}",
                self.program.display(),
                ctx.drv_display()
            )));
        }
        if self.chroot.is_none() || self.torn_down {
            return Ok(());
        }
        let to = self.held_outputs();
        std::fs::rename(&self.dir, &to).map_err(|e| BuildError::io("moving", &self.dir, &e))?;
        self.torn_down = true;
        Ok(())
    }

    fn real_path_in_host(&self, _ctx: &BuildContext, path: &StorePath) -> PathBuf {
        if self.torn_down {
            self.held_outputs().join(path.as_str())
        } else {
            self.dir.join(path.as_str())
        }
    }

    /// The cleanup runs while the caller still holds the build's pre-build
    /// locks (the build is finished or dropped before they are released),
    /// so the store's answer in the rescue cannot change before the rename.
    fn cleanup_sandbox(&mut self, ctx: &BuildContext, success: bool) {
        self.namespaces.reset();
        // Not given back where the builder may not have been reaped; a setup
        // still going on is ended.
        self.network = None;
        self.setup = None;
        if !success && !ctx.check && self.torn_down {
            self.rescue(ctx);
        }
        if let Some(chroot) = self.chroot.take()
            && let Err(e) = chroot.remove()
        {
            tracing::warn!("cleaning up after '{}': {e}", ctx.drv_display());
        }
        // Emptied and kept for the next sandbox where it can be (the
        // builder's `give_back_dir`), deleted otherwise.
        for dir in [self.dir.clone(), self.held_outputs()] {
            if let Err(e) = larder_builder::give_back_dir(&dir) {
                tracing::warn!(
                    "cleaning up after '{}': deleting {}: {e}",
                    ctx.drv_display(),
                    dir.display()
                );
            }
        }
    }
}
