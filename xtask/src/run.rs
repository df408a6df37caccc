//! Running commands and finding the workspace.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Changes into the workspace root, so every task can use relative paths.
pub(crate) fn to_workspace_root() -> Result<()> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .context("xtask lives one level below the workspace root")?;
    std::env::set_current_dir(root).with_context(|| format!("entering {}", root.display()))
}

/// Runs a command to completion, echoing it first; fails on a non-zero exit.
pub(crate) fn exec(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", render(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", render(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", render(cmd));
    }
    Ok(())
}

/// Runs a command and returns its standard output; fails on a non-zero exit.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", render(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}\n{}",
            render(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("output of {}", render(cmd)))
}

/// Whether a program can be started (`prog args...` exits successfully).
pub(crate) fn available(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A shell-like rendering of a command, for messages.
pub(crate) fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// `cargo`, as the one running xtask.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}
