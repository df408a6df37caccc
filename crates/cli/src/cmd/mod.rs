//! The subcommands, one module each.

mod hash;
mod store;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

/// Every subcommand of `larder`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the hash of a file or of a path's NAR serialisation.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Work with the store.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

impl Command {
    pub(crate) fn run(self) -> Result<ExitCode> {
        match self {
            Self::Hash(cmd) => cmd.run(),
            Self::Store(cmd) => cmd.run(),
        }?;
        Ok(ExitCode::SUCCESS)
    }
}
