//! The subcommands, one module each.

mod derivation;
mod hash;
mod nar;
mod store;

use std::io::{self, Write as _};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

/// Every subcommand of `larder`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
}

impl Command {
    pub(crate) fn run(self) -> Result<ExitCode> {
        match self {
            Self::Derivation(cmd) => cmd.run(),
            Self::Hash(cmd) => cmd.run(),
            Self::Nar(cmd) => cmd.run(),
            Self::Store(cmd) => cmd.run(),
        }?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Prints one line on standard output. Failures, such as a closed pipe,
/// are errors the caller returns rather than panics.
pub(crate) fn emit(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
