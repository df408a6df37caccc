//! `larder path-info [--json] PATH...`: as `nix path-info`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use larder_local_store::PathInfoJson;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(crate) struct PathInfoArgs {
    /// Print Nix's `path-info --json` array: NAR hash and size, references,
    /// content address, deriver, registration time, signatures.
    #[arg(long)]
    json: bool,
    /// Store paths (`/nix/store/<hash>-<name>` or the base name).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

pub(crate) fn run(args: &PathInfoArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let store_dir = global.store_dir()?;
    let paths = args
        .paths
        .iter()
        .map(|p| super::parse_store_path(&store_dir, p))
        .collect::<Result<Vec<_>, _>>()?;
    let store = global.open_store()?;
    if args.json {
        // As Nix: an invalid path is an entry with `valid: false`.
        let mut entries = Vec::new();
        for path in &paths {
            entries.push(match store.query_path_info(path)? {
                Some(info) => info.to_json(store.store_dir()),
                None => PathInfoJson::invalid(store.store_dir(), path),
            });
        }
        super::emit(&serde_json::to_string(&entries)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for path in &paths {
        // As Nix: an invalid path is an error.
        let info = store.path_info(path)?;
        super::emit(&store.print_path(&info.path))?;
    }
    Ok(ExitCode::SUCCESS)
}
