//! `larder derivation show`: a derivation as Nix's version 4 JSON.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{Derivation, StoreDir, StorePath};

#[derive(Debug, Subcommand)]
pub(crate) enum DerivationCommand {
    /// Print derivations as version 4 JSON, keyed by their `.drv` path.
    ///
    /// FILE is a `.drv` file (ATerm) or derivation JSON (version 4, or the
    /// `nix show-derivation` shape of Nix 2.8). Output paths missing from
    /// JSON are computed; the input derivations this needs are looked up
    /// by base name next to FILE and in each `--import` folder.
    Show(ShowArgs),
    /// Write a derivation to the store and print its `.drv` path.
    ///
    /// FILE is derivation JSON (version 4, or the `nix show-derivation`
    /// shape of Nix 2.8) or a `.drv` file. Input-addressed output paths
    /// missing from JSON are filled in; input derivations and sources must
    /// already be in the store.
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The derivation file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A folder to look up input derivations in, by base name (repeatable).
    #[arg(long = "import", value_name = "DIR")]
    imports: Vec<PathBuf>,
    /// The derivation files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

impl DerivationCommand {
    pub(crate) fn run(self, global: &super::GlobalArgs) -> Result<()> {
        match self {
            Self::Show(args) => show(&args),
            Self::Add(args) => add(&args, global),
        }
    }
}

fn show(args: &ShowArgs) -> Result<()> {
    let store_dir = StoreDir::default();
    let mut cache = HashModuloCache::new(store_dir.clone());
    let mut shown = serde_json::Map::new();
    for file in &args.files {
        let drv = load(file, &args.imports, &store_dir, &mut cache)?;
        let drv_path = store_dir.display(&drv.drv_path(&store_dir));
        shown.insert(drv_path, drv.to_json());
    }
    super::emit(&serde_json::to_string_pretty(&shown)?)?;
    Ok(())
}

fn add(args: &AddArgs, global: &super::GlobalArgs) -> Result<()> {
    let file = &args.file;
    let bytes = fs::read(file).with_context(|| format!("reading '{}'", file.display()))?;
    // The file is parsed before the store is opened, so that a malformed
    // one neither creates a store nor touches one.
    let store_dir = global.store_dir()?;
    let parsed = if bytes.starts_with(b"Derive(") || bytes.starts_with(b"DrvWithVersion(") {
        Parsed::Aterm(parse_aterm_file(file, &bytes, &store_dir)?)
    } else {
        let text = std::str::from_utf8(&bytes).with_context(|| {
            format!("'{}' is neither a .drv file nor UTF-8 JSON", file.display())
        })?;
        Derivation::from_json(text, &store_dir)
            .with_context(|| format!("reading derivation JSON '{}'", file.display()))?;
        Parsed::Json(text)
    };
    let store = global.open_store()?;
    let info = match parsed {
        Parsed::Aterm(drv) => store.write_derivation(&drv),
        // The store fills in the output paths JSON leaves out, from the
        // input derivations it holds.
        Parsed::Json(text) => store.add_derivation_json(text).map(|(_, info)| info),
    }
    .with_context(|| format!("adding derivation '{}'", file.display()))?;
    super::emit(&store.print_path(&info.path))?;
    Ok(())
}

/// A derivation file for `derivation add`, checked before the store opens.
enum Parsed<'a> {
    Aterm(Derivation),
    Json(&'a str),
}

/// Reads a derivation from a `.drv` or JSON file, and fills in the output
/// paths that JSON may leave out.
pub(crate) fn load(
    file: &Path,
    imports: &[PathBuf],
    store_dir: &StoreDir,
    cache: &mut HashModuloCache,
) -> Result<Derivation> {
    let bytes = fs::read(file).with_context(|| format!("reading '{}'", file.display()))?;
    let mut drv = if bytes.starts_with(b"Derive(") || bytes.starts_with(b"DrvWithVersion(") {
        parse_aterm_file(file, &bytes, store_dir)?
    } else {
        let text = std::str::from_utf8(&bytes).with_context(|| {
            format!("'{}' is neither a .drv file nor UTF-8 JSON", file.display())
        })?;
        Derivation::from_json(text, store_dir)
            .with_context(|| format!("reading derivation JSON '{}'", file.display()))?
    };
    let deferred = drv
        .outputs()
        .values()
        .any(|o| matches!(o, DerivationOutput::Deferred));
    let mut dirs: Vec<PathBuf> = file.parent().map(folder_of).into_iter().collect();
    dirs.extend(imports.iter().cloned());
    let mut source = FolderSource { dirs, store_dir };
    if deferred {
        drv.fill_in_output_paths(cache, &mut source)
            .with_context(|| format!("computing the output paths of '{}'", file.display()))?;
    } else {
        drv.check_output_paths(cache, &mut source)
            .with_context(|| format!("checking the output paths of '{}'", file.display()))?;
    }
    Ok(drv)
}

/// Parses an ATerm `.drv`. The name is not in the ATerm: it comes from the
/// file name when that is a store path (`<hash>-<name>.drv`), else from the
/// `name` variable that every derivation made by Nix carries, else from the
/// file name without `.drv`.
pub(crate) fn parse_aterm_file(
    file: &Path,
    bytes: &[u8],
    store_dir: &StoreDir,
) -> Result<Derivation> {
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = match StorePath::from_base_name(base) {
        Ok(path) => path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(path.name())
            .to_owned(),
        Err(_) => env_name(bytes)
            .unwrap_or_else(|| base.strip_suffix(".drv").unwrap_or(base))
            .to_owned(),
    };
    Derivation::parse_aterm(bytes, &name, store_dir)
        .with_context(|| format!("parsing derivation '{}'", file.display()))
}

/// The value of the `name` environment variable in an ATerm, found without
/// parsing it: the parser needs the name first, to check fixed output paths.
/// Nix prints the variable as `("name","<value>")` and a name needs no
/// escaping, so the value ends at the next quote.
fn env_name(bytes: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"(\"name\",\"";
    let start = bytes.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = bytes[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&bytes[start..start + len]).ok()
}

/// Input derivations looked up by base name in a list of folders.
struct FolderSource<'a> {
    dirs: Vec<PathBuf>,
    store_dir: &'a StoreDir,
}

impl larder_store_core::derivation::DerivationSource for FolderSource<'_> {
    fn derivation(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<Derivation, Box<dyn std::error::Error + Send + Sync>> {
        let Some(file) = self
            .dirs
            .iter()
            .map(|dir| dir.join(drv_path.as_str()))
            .find(|candidate| candidate.is_file())
        else {
            return Err(format!(
                "input derivation '{}' not found in {}",
                self.store_dir.display(drv_path),
                describe_dirs(&self.dirs)
            )
            .into());
        };
        let bytes = fs::read(&file)?;
        let name = drv_path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(drv_path.name());
        let drv = Derivation::parse_aterm(&bytes, name, self.store_dir)?;
        if drv.drv_path(self.store_dir) != *drv_path {
            return Err(format!(
                "'{}' does not hash to the store path '{}'",
                file.display(),
                drv_path
            )
            .into());
        }
        Ok(drv)
    }
}

/// A file's folder as a path to show and search: `.` rather than the empty
/// parent of a bare file name.
pub(crate) fn folder_of(parent: &Path) -> PathBuf {
    if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    }
}

fn describe_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no folder (use --import DIR)".to_owned();
    }
    let names: Vec<String> = dirs.iter().map(|d| format!("'{}'", d.display())).collect();
    names.join(", ")
}
