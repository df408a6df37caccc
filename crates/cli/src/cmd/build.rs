//! `larder build`: realises derivations, as `nix-store --realise` does.

mod display;
mod import;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use larder_builder::{BuildSettings, DerivationBuilder};
use larder_builder_linux_chroot::{RelocatingBuilder, SandboxConfig};
use larder_goals::runtime::{Runtime, remote_channel};
use larder_goals::{BuildResult, EventSink, Failure, Limits, Settings, StoreBackend};
use larder_local_store::LocalStore;
use larder_store_core::{Derivation, StoreDir, StorePath};

use display::{Display, Style};
use import::Importer;

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// How many builds run at once.
    #[arg(short = 'j', long = "max-jobs", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_jobs: u16,
    /// Go on with the other builds when one fails.
    #[arg(short = 'k', long)]
    keep_going: bool,
    /// Rebuild outputs that are valid and compare them with the store's.
    #[arg(long)]
    check: bool,
    /// Build without the Linux sandbox (no namespaces, no chroot).
    #[arg(long)]
    no_sandbox: bool,
    /// A folder to take missing input derivations and sources from, by base
    /// name (repeatable); each FILE's folder is searched too. A local Nix's
    /// `/nix/store` works.
    #[arg(long = "import", value_name = "DIR")]
    imports: Vec<PathBuf>,
    /// Print the results as JSON (the shape of `nix build --json`).
    #[arg(long)]
    json: bool,
    /// Print the builders' logs.
    #[arg(short = 'L', long = "print-build-logs")]
    print_build_logs: bool,
    /// Kill a build that runs longer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Kill a build that prints nothing for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    max_silent_time: Option<u64>,
    /// Kill a build whose log grows past this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_log_size: Option<u64>,
    /// The derivations: `.drv` files, derivation JSON, or `.drv` store paths.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Runs `larder build`.
pub(crate) fn run(args: &BuildArgs, global: &super::GlobalArgs) -> Result<ExitCode> {
    // Files are parsed before the store is opened, so that bad input
    // neither creates a store nor touches one.
    let files = read_files(args, &global.store_dir()?)?;
    let store = Arc::new(global.open_store()?);
    // Builds hand their emptied folders back for the next build to reuse;
    // declared before everything that builds, this goes last and deletes
    // the spares whichever way the command ends.
    let _spare_build_dirs = larder_builder::SpareBuildDirs::new();
    // The sandbox is checked before anything is imported, so that a
    // machine without namespaces fails the command with nothing written.
    let new_builder = builder_factory(args.no_sandbox, &store)?;
    let targets = import_targets(&store, args, files)?;
    let backend = StoreBackend::new(Arc::clone(&store), build_settings(), new_builder);

    let terminal = std::io::stderr().is_terminal();
    let settings = Settings {
        max_jobs: usize::from(args.max_jobs),
        keep_going: args.keep_going,
        check: args.check,
        limits: Limits {
            max_silent_time: args.max_silent_time.map(Duration::from_secs),
            timeout: args.timeout.map(Duration::from_secs),
            max_log_size: args.max_log_size,
        },
        forward_logs: args.print_build_logs || terminal,
        ..Settings::default()
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    let display = Display::start(
        receiver,
        Style {
            terminal,
            print_logs: args.print_build_logs,
        },
    )
    .context("starting the progress display")?;

    let runtime = Runtime::new().context("creating the event loop")?;
    let (interrupt_tx, interrupt_rx) = remote_channel::<()>(runtime.handle());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("catching SIGINT")?;
    // Signals are waited for on their own thread, which tells the event
    // loop; the loop then cancels every goal, killing the builders' process
    // groups (which the terminal's Ctrl-C does not reach).
    std::thread::Builder::new()
        .name("larder-signals".to_owned())
        .spawn(move || {
            if signals.forever().next().is_some() {
                interrupt_tx.send(());
            }
        })
        .context("starting the signal thread")?;

    let outcome = larder_goals::build_until(
        &runtime,
        Rc::new(backend),
        settings,
        EventSink::new(sender),
        &targets,
        async move {
            interrupt_rx.recv().await;
        },
    );
    // Dropping the runtime drops every goal still alive, killing and
    // reaping its builder, before the display says anything more.
    drop(runtime);
    let all = display.finish();
    let Some(results) = outcome.context("the event loop failed")? else {
        bail!("interrupted by the user");
    };
    print_results(&results, args.json)?;
    // Nix computes the exit status over every goal: a dependency's hash
    // mismatch makes the status 102 even when only its dependent was asked for.
    let status = larder_goals::exit_status(all.iter().chain(&results));
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}

/// A FILE of the command line, read before the store is opened.
enum FileArg {
    /// A `.drv` store path (`/nix/store/<hash>-<name>.drv`), and the
    /// derivation in the file of that name when there is one.
    StorePath(StorePath, Option<Derivation>),
    /// Any other file: a `.drv` or derivation JSON.
    File(Derivation),
}

/// Parses every FILE, output paths as given.
fn read_files(args: &BuildArgs, store_dir: &StoreDir) -> Result<Vec<FileArg>> {
    args.files
        .iter()
        .map(|file| {
            Ok(match store_drv_path(store_dir, file) {
                Some(path) if !file.exists() => FileArg::StorePath(path, None),
                Some(path) => {
                    let drv = read_derivation_file(file, store_dir)?;
                    FileArg::StorePath(path, Some(drv))
                }
                None => FileArg::File(read_derivation_file(file, store_dir)?),
            })
        })
        .collect()
}

/// Brings each FILE and what it needs into the store, and returns the
/// `.drv` store paths (as the worker names them). Everything is looked up
/// and checked before anything is written, so that a missing or wrong
/// input leaves the store as it was.
fn import_targets(
    store: &LocalStore,
    args: &BuildArgs,
    read: Vec<FileArg>,
) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in &args.files {
        if let Some(parent) = file.parent().map(super::derivation::folder_of)
            && !dirs.contains(&parent)
        {
            dirs.push(parent);
        }
    }
    dirs.extend(args.imports.iter().cloned());
    let mut importer = Importer::new(store, dirs);

    enum Target {
        Path(StorePath),
        File(usize),
    }
    let mut targets = Vec::with_capacity(read.len());
    let mut files = Vec::new();
    for (file, arg) in args.files.iter().zip(read) {
        match arg {
            FileArg::StorePath(path, None) => targets.push(Target::Path(path)),
            // A store path that is valid is built from the store's copy.
            FileArg::StorePath(path, Some(_)) if store.is_valid(&path).unwrap_or(false) => {
                targets.push(Target::Path(path));
            }
            FileArg::StorePath(_, Some(drv)) | FileArg::File(drv) => {
                targets.push(Target::File(files.len()));
                files.push((file.clone(), drv));
            }
        }
    }
    let accepted = importer.accept(files)?;
    for target in &targets {
        match target {
            Target::Path(path) => importer.check_derivation(path)?,
            Target::File(index) => importer.check_inputs(&accepted[*index].1)?,
        }
    }
    let mut paths = Vec::with_capacity(targets.len());
    for target in targets {
        let path = match target {
            Target::Path(path) => {
                importer.ensure_derivation(&path)?;
                path
            }
            Target::File(index) => importer.add_derivation(&accepted[index].1)?,
        };
        paths.push(PathBuf::from(store.print_path(&path)));
    }
    Ok(paths)
}

/// Parses a `.drv` (ATerm) or derivation JSON file, output paths as given.
fn read_derivation_file(file: &Path, store_dir: &StoreDir) -> Result<Derivation> {
    let bytes = std::fs::read(file).with_context(|| format!("reading '{}'", file.display()))?;
    if bytes.starts_with(b"Derive(") || bytes.starts_with(b"DrvWithVersion(") {
        return super::derivation::parse_aterm_file(file, &bytes, store_dir);
    }
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("'{}' is neither a .drv file nor UTF-8 JSON", file.display()))?;
    Derivation::from_json(text, store_dir)
        .with_context(|| format!("reading derivation JSON '{}'", file.display()))
}

/// `file` as a `.drv` store path, when it is spelled as one.
fn store_drv_path(store_dir: &StoreDir, file: &Path) -> Option<StorePath> {
    let path = super::parse_store_path(store_dir, file.to_str()?).ok()?;
    (file.is_absolute() && path.is_derivation()).then_some(path)
}

/// The builder crate's settings: the defaults, builds under the system's
/// temp folder.
fn build_settings() -> BuildSettings {
    BuildSettings::default()
}

/// Chooses the builder of each build: the generic one with `--no-sandbox`
/// (the variant that relocates the store without running `unshare(1)`),
/// else the Linux sandbox, whose support is checked once here (an error
/// that names `--no-sandbox` when namespaces are not available).
fn builder_factory(
    no_sandbox: bool,
    store: &Arc<LocalStore>,
) -> Result<Box<larder_goals::BuilderFactory>> {
    if no_sandbox {
        return Ok(Box::new(
            |_drv| -> Result<Box<dyn DerivationBuilder>, Failure> {
                Ok(Box::new(RelocatingBuilder::new()))
            },
        ));
    }
    let config = SandboxConfig::detect().context("setting up the build sandbox")?;
    let store = Arc::clone(store);
    Ok(Box::new(
        move |_drv| -> Result<Box<dyn DerivationBuilder>, Failure> {
            Ok(Box::new(config.builder(Arc::clone(&store))))
        },
    ))
}

/// Prints each target's output paths (or Nix's `build --json`).
fn print_results(results: &[BuildResult], json: bool) -> Result<()> {
    if json {
        let list: Vec<serde_json::Value> = results
            .iter()
            .filter(|r| r.is_success())
            .map(|r| {
                let outputs: serde_json::Map<String, serde_json::Value> = r
                    .outputs
                    .iter()
                    .map(|(name, path)| (name.clone(), path.display().to_string().into()))
                    .collect();
                serde_json::json!({
                    "drvPath": r.drv.display().to_string(),
                    "outputs": outputs,
                })
            })
            .collect();
        super::emit(&serde_json::to_string(&list)?)?;
        return Ok(());
    }
    for result in results.iter().filter(|r| r.is_success()) {
        for path in result.outputs.values() {
            super::emit(&path.display().to_string())?;
        }
    }
    Ok(())
}
