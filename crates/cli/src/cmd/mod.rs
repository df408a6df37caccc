//! The subcommands, one module each.

mod build;
mod derivation;
mod hash;
mod log;
mod nar;
mod path_info;
mod store;
mod verify;

use std::io::{self, Write as _};
use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use larder_local_store::{LocalStore, StoreLayout};
use larder_store_core::{StoreDir, StorePath};

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The store's root folder: it holds `nix/store`, `nix/var/nix/db` and
    /// `nix/var/log/nix`, like Nix's `local?root=ROOT` (default:
    /// `$LARDER_STORE`, else `larder` in the user's data folder).
    #[arg(long = "store", value_name = "ROOT", global = true)]
    store: Option<PathBuf>,
}

impl GlobalArgs {
    /// The store root this invocation uses, made absolute: the store's
    /// paths are handed to builders, mounts and locks that do not share
    /// this process's current folder.
    pub(crate) fn store_root(&self) -> Result<PathBuf> {
        let given = self.store.clone().or_else(|| {
            std::env::var_os("LARDER_STORE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(root) = given {
            return std::path::absolute(&root)
                .with_context(|| format!("cannot use '{}' as the store root", root.display()));
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".local/share"))
            })
            .context("no store given: use --store ROOT or set LARDER_STORE (HOME is not set)")?;
        Ok(data.join("larder"))
    }

    /// The logical store directory of the store this invocation uses, known
    /// without opening (or creating) the store: commands parse their input
    /// with it first, so that bad input never creates a store.
    pub(crate) fn store_dir(&self) -> Result<StoreDir> {
        Ok(StoreLayout::new(self.store_root()?).store_dir().clone())
    }

    /// Opens (creating on first use) the store.
    ///
    /// Commands call this only once their command line and input files
    /// have parsed: a well-formed request that then fails against the store
    /// (a path that is not valid, an input that is not found) may leave a
    /// new, empty store behind, as any first use does; bad input leaves none.
    pub(crate) fn open_store(&self) -> Result<LocalStore> {
        let root = self.store_root()?;
        LocalStore::open(&root)
            .with_context(|| format!("opening the store at '{}'", root.display()))
    }
}

/// Every subcommand of `larder`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Build derivations and print their output paths (as `nix-store
    /// --realise`); exit status 100 and up when builds fail.
    Build(build::BuildArgs),
    /// Print the hash of a file or of a path's NAR serialisation.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Inspect derivations.
    #[command(subcommand)]
    Derivation(derivation::DerivationCommand),
    /// Write and read Nix archives (NAR).
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with the store.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Show what the store knows about valid paths (as `nix path-info`).
    PathInfo(path_info::PathInfoArgs),
    /// Check the store against its database (as `nix-store --verify`);
    /// exit status 1 when anything is wrong.
    Verify(verify::VerifyArgs),
    /// Print the build log of a derivation or of an output path.
    Log(log::LogArgs),
}

impl Command {
    pub(crate) fn run(self, global: &GlobalArgs) -> Result<ExitCode> {
        match self {
            Self::Build(args) => return build::run(&args, global),
            Self::Derivation(cmd) => cmd.run(global),
            Self::Hash(cmd) => cmd.run(),
            Self::Nar(cmd) => cmd.run(),
            Self::Store(cmd) => cmd.run(global),
            Self::PathInfo(args) => return path_info::run(&args, global),
            Self::Verify(args) => return verify::run(&args, global),
            Self::Log(args) => log::run(&args, global),
        }?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Parses a store path given on the command line: in full
/// (`/nix/store/<hash>-<name>`) or as a base name, as
/// [`LocalStore::parse_path`] does, but without a store.
pub(crate) fn parse_store_path(store_dir: &StoreDir, s: &str) -> Result<StorePath> {
    let path = if s.starts_with('/') {
        store_dir.parse(s)?
    } else {
        StorePath::from_base_name(s)?
    };
    Ok(path)
}

/// Prints one line on standard output. Failures, such as a closed pipe,
/// are errors the caller returns rather than panics.
pub(crate) fn emit(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
