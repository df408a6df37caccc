//! `larder nar dump|restore`: the equivalents of `nix-store --dump` and
//! `nix-store --restore`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufWriter, Write as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use larder_store_core::nar::{self, Dumper};
use rustix::fs::{CWD, RenameFlags, renameat_with};

#[derive(Debug, Subcommand)]
pub(crate) enum NarCommand {
    /// Write the NAR serialisation of PATH to standard output.
    Dump {
        /// The file, directory or symlink to serialise.
        path: PathBuf,
    },
    /// Read a NAR from standard input and unpack it at DEST, which must not
    /// exist yet.
    Restore {
        /// Where to unpack.
        dest: PathBuf,
    },
}

impl NarCommand {
    pub(crate) fn run(self) -> Result<()> {
        match self {
            Self::Dump { path } => {
                let mut out = BufWriter::with_capacity(1 << 17, io::stdout().lock());
                Dumper::new()
                    .dump(&path, &mut out)
                    .with_context(|| format!("dumping '{}'", path.display()))?;
                out.flush()?;
            }
            Self::Restore { dest } => {
                restore(&dest)
                    .with_context(|| format!("restoring a NAR to '{}'", dest.display()))?;
            }
        }
        Ok(())
    }
}

/// Unpacks the NAR on standard input at `dest`, all or nothing: it is
/// unpacked in a fresh folder beside `dest` and renamed into place only
/// once the whole NAR has parsed, so that a malformed or truncated NAR
/// leaves nothing at `dest` (and at worst a `.larder-restore-*` folder if
/// the process is killed).
fn restore(dest: &Path) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        bail!("'{}' already exists", dest.display());
    }
    let file_name = dest
        .file_name()
        .with_context(|| format!("'{}' names no file", dest.display()))?;
    let parent = super::derivation::folder_of(dest.parent().unwrap_or(Path::new(".")));
    let mut scratch_name = OsString::from(".larder-restore-");
    scratch_name.push(std::process::id().to_string());
    scratch_name.push("-");
    scratch_name.push(file_name);
    let scratch = parent.join(scratch_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .with_context(|| format!("creating '{}'", scratch.display()))?;
    let staged = scratch.join("root");
    let outcome = nar::restore(&mut io::stdin().lock(), &staged)
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            // Without RENAME_NOREPLACE a rename would replace a file or an
            // empty folder that appeared at `dest` meanwhile.
            renameat_with(CWD, &staged, CWD, dest, RenameFlags::NOREPLACE)
                .with_context(|| format!("moving the restored tree to '{}'", dest.display()))
        });
    let cleanup =
        fs::remove_dir_all(&scratch).with_context(|| format!("removing '{}'", scratch.display()));
    outcome?;
    cleanup
}
