//! Project automation, in the cargo-xtask style: `cargo xtask <task>`.
//!
//! - `cargo xtask ci`: formatting, lints, every test, doc tests and docs, as
//!   CI runs them.
//! - `cargo xtask bench`: the figures the project claims, each beside a peer
//!   measured in the same run.

#![allow(clippy::print_stderr)]

mod bench;
mod ci;
mod run;

use std::process::ExitCode;

use anyhow::{Result, bail};

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        bail!("no task given");
    };
    run::to_workspace_root()?;
    match task.as_str() {
        "ci" => ci::run(rest),
        "bench" => bench::run(rest),
        "-h" | "--help" | "help" => {
            eprintln!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("{USAGE}");
            bail!("unknown task '{other}'")
        }
    }
}

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci      cargo fmt --check, clippy -D warnings, tests (nextest when installed),
          doc tests, cargo doc with warnings denied
  bench   NAR hashing, reference scanning, lock handoff, the sandbox and trivial
          builds (up to 10,000), each against a peer measured in the same run
          (options: --quick)";
