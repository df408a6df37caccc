//! `larder store ...`: adding paths to the store.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use larder_store_core::content_address::ContentAddressMethod;
use larder_store_core::store_path::{StoreReferences, validate_name};
use larder_store_core::{HashAlgo, StoreDir};

use larder_local_store::AddOptions;

use super::GlobalArgs;
use super::hash::{hash_file, hash_path};

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Add a file or tree to the store and print its store path.
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// How the contents are hashed: `nar` (a tree, "recursive"), `flat`
    /// (one regular file) or `text` (a text file without references).
    #[arg(long, value_enum, default_value_t = Mode::Nar)]
    mode: Mode,
    /// The name of the store path (default: the file's base name).
    #[arg(long)]
    name: Option<String>,
    /// Only compute and print the store path; add nothing.
    #[arg(long)]
    dry_run: bool,
    /// The file or directory to add.
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    Flat,
    Nar,
    Text,
}

impl StoreCommand {
    pub(crate) fn run(self, global: &GlobalArgs) -> Result<()> {
        match self {
            Self::Add(args) => add(&args, global),
        }
    }
}

fn add(args: &AddArgs, global: &GlobalArgs) -> Result<()> {
    let name = store_path_name(args)?;
    check_source(args)?;
    if !args.dry_run {
        return add_to_store(args, global);
    }
    let (method, hash) = match args.mode {
        Mode::Flat => (
            ContentAddressMethod::Flat,
            hash_file(&args.path, HashAlgo::Sha256)?,
        ),
        Mode::Text => (
            ContentAddressMethod::Text,
            hash_file(&args.path, HashAlgo::Sha256)?,
        ),
        Mode::Nar => (
            ContentAddressMethod::Nar,
            hash_path(&args.path, HashAlgo::Sha256)?,
        ),
    };
    let store_dir = StoreDir::default();
    let path =
        store_dir.make_fixed_output_path(&name, method, &hash, &StoreReferences::default())?;
    super::emit(&store_dir.display(&path))?;
    Ok(())
}

/// The name the store path gets: `--name`, else the file's base name;
/// checked, so that a bad one is refused before the store is opened.
fn store_path_name(args: &AddArgs) -> Result<String> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| {
                format!(
                    "cannot take a store path name from '{}'; use --name",
                    args.path.display()
                )
            })?
            .to_owned(),
    };
    validate_name(&name).with_context(|| format!("'{name}' is not a valid store path name"))?;
    Ok(name)
}

/// Checks that the source exists and suits the mode, before the store is
/// opened: a missing file must not create a store.
fn check_source(args: &AddArgs) -> Result<()> {
    let meta = std::fs::symlink_metadata(&args.path)
        .with_context(|| format!("reading '{}'", args.path.display()))?;
    if matches!(args.mode, Mode::Flat | Mode::Text) && !meta.is_file() {
        bail!(
            "'{}' is not a regular file, which --mode {} needs",
            args.path.display(),
            match args.mode {
                Mode::Flat => "flat",
                _ => "text",
            }
        );
    }
    Ok(())
}

/// Adds the path for real: copied, hashed, moved in under its lock and
/// registered.
fn add_to_store(args: &AddArgs, global: &GlobalArgs) -> Result<()> {
    let store = global.open_store()?;
    let mut options = AddOptions::new(match args.mode {
        Mode::Flat => ContentAddressMethod::Flat,
        Mode::Nar => ContentAddressMethod::Nar,
        Mode::Text => ContentAddressMethod::Text,
    });
    options.name.clone_from(&args.name);
    let info = store
        .add_path(&args.path, &options)
        .with_context(|| format!("adding '{}' to the store", args.path.display()))?;
    super::emit(&store.print_path(&info.path))?;
    Ok(())
}
