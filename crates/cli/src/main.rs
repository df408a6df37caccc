//! The `larder` command: Nix's build core, rewritten to be deadlock-free.
//!
//! Each subcommand lives in its own module under [`cmd`]; this file only
//! parses the command line, sets up diagnostics and turns errors into one
//! line on standard error and an exit status.

#![allow(clippy::print_stderr)]

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Nix's build core, deadlock-free: store paths, NAR, derivations and builds.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.run() {
        Ok(code) => code,
        Err(error) => {
            // One line, the outermost context first, as Nix prints its errors.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
