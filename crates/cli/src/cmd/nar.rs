//! `larder nar dump|restore`: the equivalents of `nix-store --dump` and
//! `nix-store --restore`.

use std::io::{self, BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use larder_store_core::nar::{self, Dumper};

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
                let mut input = io::stdin().lock();
                nar::restore(&mut input, &dest)
                    .with_context(|| format!("restoring a NAR to '{}'", dest.display()))?;
            }
        }
        Ok(())
    }
}
