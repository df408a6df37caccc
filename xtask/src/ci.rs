//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run::{available, cargo, exec};

fn run_ci_step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n== {name}");
    exec(cmd)
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments, got '{arg}'");
    }
    run_ci_step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_ci_step(
        "lints",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    if available("cargo", &["nextest", "--version"]) {
        run_ci_step(
            "tests (nextest)",
            cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ]),
        )?;
    } else {
        eprintln!("cargo-nextest is not installed: running the tests with `cargo test`");
        run_ci_step(
            "tests",
            cargo().args(["test", "--workspace", "--locked", "--no-fail-fast"]),
        )?;
    }
    run_ci_step(
        "doc tests",
        cargo().args(["test", "--workspace", "--locked", "--doc"]),
    )?;
    run_ci_step(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("\nci: all checks passed");
    Ok(())
}
