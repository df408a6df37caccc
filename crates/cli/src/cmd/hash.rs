//! `larder hash path|file`: the equivalents of `nix hash path|file`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use larder_store_core::hash::HashEncoding;
use larder_store_core::nar::Dumper;
use larder_store_core::{Hash, HashAlgo};

#[derive(Debug, Subcommand)]
pub(crate) enum HashCommand {
    /// Hash the NAR serialisation of each path (as `nix hash path`).
    Path(HashArgs),
    /// Hash the contents of each regular file (as `nix hash file`).
    File(HashArgs),
}

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// Hash algorithm: md5, sha1, sha256 or sha512.
    #[arg(long = "type", default_value = "sha256", value_parser = parse_algo)]
    algo: HashAlgo,
    /// Print in base-16.
    #[arg(long, group = "encoding")]
    base16: bool,
    /// Print in Nix's base-32.
    #[arg(long, group = "encoding")]
    base32: bool,
    /// Print in base-64.
    #[arg(long, group = "encoding")]
    base64: bool,
    /// Print in SRI form, `algo-base64` (the default).
    #[arg(long, group = "encoding")]
    sri: bool,
    /// The paths to hash.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

impl HashCommand {
    pub(crate) fn run(self) -> Result<()> {
        let (args, nar) = match self {
            Self::Path(args) => (args, true),
            Self::File(args) => (args, false),
        };
        let encoding = args.encoding();
        for path in &args.paths {
            let hash = if nar {
                hash_path(path, args.algo)?
            } else {
                hash_file(path, args.algo)?
            };
            super::emit(&hash.encode(encoding, encoding == HashEncoding::Sri))?;
        }
        Ok(())
    }
}

impl HashArgs {
    fn encoding(&self) -> HashEncoding {
        if self.base16 {
            HashEncoding::Base16
        } else if self.base32 {
            HashEncoding::Nix32
        } else if self.base64 {
            HashEncoding::Base64
        } else {
            HashEncoding::Sri
        }
    }
}

pub(crate) fn parse_algo(s: &str) -> Result<HashAlgo, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The flat hash of a regular file's contents.
pub(crate) fn hash_file(path: &Path, algo: HashAlgo) -> Result<Hash> {
    larder_store_core::nar::hash_file_flat(path, algo)
        .with_context(|| format!("hashing file '{}'", path.display()))
}

/// The hash of a path's NAR serialisation.
pub(crate) fn hash_path(path: &Path, algo: HashAlgo) -> Result<Hash> {
    let nar = Dumper::new()
        .hash_path(path, algo)
        .with_context(|| format!("hashing '{}'", path.display()))?;
    Ok(nar.hash)
}
