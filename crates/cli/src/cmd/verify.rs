//! `larder verify [--check-contents]`: as `nix-store --verify`.

#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Also recompute each path's NAR hash and compare it with the
    /// registered one (reads the whole store).
    #[arg(long)]
    check_contents: bool,
}

pub(crate) fn run(args: &VerifyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let store = global.open_store()?;
    let report = store.verify(args.check_contents)?;
    for path in &report.removed {
        eprintln!(
            "path '{}' disappeared, removed it from the database",
            store.print_path(path)
        );
    }
    for problem in &report.problems {
        eprintln!("error: {problem}");
    }
    if report.is_ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} of {} valid paths have problems",
            report.problems.len(),
            report.checked
        );
        Ok(ExitCode::FAILURE)
    }
}
