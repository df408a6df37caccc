//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file under `vectors/`.
pub fn vector(path: &str) -> PathBuf {
    repo_root().join("vectors").join(path)
}

/// A `larder` command, with diagnostics quiet and no store from the
/// environment leaking in.
pub fn larder() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.env_remove("LARDER_STORE").env("RUST_LOG", "warn");
    cmd
}

/// Runs a command and returns its output, whatever its exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the command starts")
}

/// Runs a command that must succeed and returns its standard output.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
