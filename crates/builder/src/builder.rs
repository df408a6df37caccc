//! [`DerivationBuilder`]: the steps of a build that a sandbox changes, with
//! the generic (unsandboxed) behaviour as default methods, and
//! [`GenericBuilder`], which keeps every default.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use larder_store_core::StorePath;
use larder_store_core::canonicalise::{Canonicaliser, Rules};

use crate::error::{BuildError, Result};
use crate::lifecycle::BuildContext;
use crate::process::{BuilderCommand, SpawnedBuilder, spawn_process_group};

/// The overridable steps of a build, in the order the lifecycle calls them
/// (Nix's `DerivationBuilderImpl` virtuals). Every method has the generic,
/// unsandboxed behaviour as its default; the Linux sandbox overrides the
/// ones it needs.
///
/// The lifecycle ([`prepare`](crate::prepare) →
/// [`PreparedBuild::start`](crate::PreparedBuild::start) →
/// [`RunningBuild::unprepare`](crate::RunningBuild::unprepare) →
/// [`UnpreparedBuild::register_outputs`](crate::UnpreparedBuild::register_outputs))
/// calls:
///
/// 1. [`needs_hash_rewrite`](Self::needs_hash_rewrite) and
///    [`build_dir_in_sandbox`](Self::build_dir_in_sandbox) while preparing,
///    then [`prepare_sandbox`](Self::prepare_sandbox) once the build
///    directory, environment and scratch paths exist;
/// 2. [`start_child`](Self::start_child) to start the builder;
/// 3. [`before_unprepare`](Self::before_unprepare), then
///    [`kill_sandbox`](Self::kill_sandbox) after the process group is
///    killed and reaped, then
///    [`canonicalisation_rules`](Self::canonicalisation_rules) and
///    [`real_path_in_host`](Self::real_path_in_host) for each output;
/// 4. [`cleanup_sandbox`](Self::cleanup_sandbox) exactly once, at the end
///    of a successful registration or on any failure (also when a build is
///    dropped half-way).
pub trait DerivationBuilder: fmt::Debug + Send {
    /// Whether outputs whose paths are already valid (or unknown) are built
    /// at scratch paths and rewritten afterwards. True without a sandbox,
    /// where the builder writes straight into the store; a chroot builder
    /// has its own store directory and returns false.
    fn needs_hash_rewrite(&self) -> bool {
        true
    }

    /// The build directory as the builder sees it (`NIX_BUILD_TOP`); the
    /// real one by default, `/build` in the sandbox.
    fn build_dir_in_sandbox(&self, ctx: &BuildContext) -> PathBuf {
        ctx.build_dir.clone()
    }

    /// Sets up isolation once the build directory, environment files and
    /// scratch paths exist. The generic builder refuses to build when
    /// `/homeless-shelter` exists, as Nix does without a sandbox.
    ///
    /// # Errors
    ///
    /// When the sandbox cannot be set up.
    fn prepare_sandbox(&mut self, ctx: &BuildContext) -> Result<()> {
        let _ = ctx;
        let home = Path::new("/homeless-shelter");
        if home.symlink_metadata().is_ok() {
            return Err(BuildError::misc(
                "home directory '/homeless-shelter' exists; please remove it to assure purity of builds without sandboxing",
            ));
        }
        Ok(())
    }

    /// Starts the builder: its own process group, stdout and stderr on one
    /// pipe. The generic builder runs it directly; when the store is
    /// relocated (its real directory is not its logical one), it runs it
    /// through `unshare(1)` in a private mount namespace where the real
    /// store directory is bind-mounted on the logical one, so the builder
    /// sees and writes `/nix/store` paths.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    fn start_child(
        &mut self,
        ctx: &BuildContext,
        command: &BuilderCommand,
    ) -> Result<SpawnedBuilder> {
        let logical = Path::new(ctx.store_dir.as_str());
        let wrapper = (ctx.real_store_dir != logical).then(|| relocation_wrapper(ctx));
        spawn_process_group(command, wrapper.as_deref()).map_err(|e| {
            BuildError::misc(format!(
                "starting builder '{}' for '{}': {e}",
                command.program.display(),
                ctx.drv_display()
            ))
        })
    }

    /// Called first when the build is torn down, before anything is killed
    /// (the sandbox forgets its saved namespaces here).
    fn before_unprepare(&mut self, ctx: &BuildContext) {
        let _ = ctx;
    }

    /// Kills whatever the build left running outside its process group
    /// (nothing without a sandbox; the sandbox kills its PID namespace).
    ///
    /// # Errors
    ///
    /// When the processes cannot be killed.
    fn kill_sandbox(&mut self, ctx: &BuildContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// The rules the outputs are canonicalised by. By default the builder
    /// ran as the current user, so there are no build users to tell
    /// foreign files by, and hard links are confined to the outputs: a
    /// file linked from elsewhere (a host file, an input) is refused
    /// before anything changes it. A sandbox with build users names their
    /// uid range instead.
    fn canonicalisation_rules(&self, ctx: &BuildContext) -> Rules {
        let _ = ctx;
        Rules {
            confine_hard_links: true,
            ..Canonicaliser::current_user_rules()
        }
    }

    /// Where a store path the builder wrote is on the host: the real store
    /// path by default, inside the chroot for the sandbox.
    fn real_path_in_host(&self, ctx: &BuildContext, path: &StorePath) -> PathBuf {
        ctx.real_store_dir.join(path.as_str())
    }

    /// Removes what the sandbox made (the chroot directory). `success` says
    /// whether the outputs were registered.
    fn cleanup_sandbox(&mut self, ctx: &BuildContext, success: bool) {
        let _ = (ctx, success);
    }
}

/// The generic local builder: no sandbox, every default of
/// [`DerivationBuilder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GenericBuilder;

impl DerivationBuilder for GenericBuilder {}

/// `unshare --mount --propagation private -- /bin/sh -c 'mount --bind REAL
/// LOGICAL && exec "$@"' sh`, followed by the builder and its arguments.
/// Without root, `--map-root-user` gives the namespace the right to mount.
fn relocation_wrapper(ctx: &BuildContext) -> Vec<OsString> {
    let mut wrapper: Vec<OsString> = vec!["/usr/bin/unshare".into(), "--mount".into()];
    if !rustix::process::geteuid().is_root() {
        wrapper.push("--map-root-user".into());
    }
    wrapper.extend([
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        "/bin/mount --bind \"$0\" \"$1\" && shift && exec \"$@\"".into(),
        ctx.real_store_dir.clone().into_os_string(),
        ctx.store_dir.as_str().into(),
    ]);
    wrapper
}
