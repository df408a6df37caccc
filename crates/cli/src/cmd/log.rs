//! `larder log DRV`: prints a build log, as `nix log`.

use std::io::Write as _;

use anyhow::{Result, bail};
use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// A `.drv` store path, or an output path whose deriver is known.
    #[arg(value_name = "PATH")]
    path: String,
}

pub(crate) fn run(args: &LogArgs, global: &GlobalArgs) -> Result<()> {
    let path = super::parse_store_path(&global.store_dir()?, &args.path)?;
    let store = global.open_store()?;
    match store.read_build_log(&path)? {
        Some(log) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&log)?;
            out.flush()?;
            Ok(())
        }
        None => bail!(
            "build log of '{}' is not available",
            store.print_path(&path)
        ),
    }
}
