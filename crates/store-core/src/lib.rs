//! Nix's store model, byte-compatible with Nix.
//!
//! This crate is the pure part of larder: it knows how store paths, hashes,
//! content addresses, derivations and NAR archives are spelled and computed,
//! and nothing about databases, locks or processes. A tool that only
//! computes store paths depends on this crate and nothing else.
//!
//! - [`nixbase32`]: Nix's own base-32 encoding.
//! - [`hash`]: [`Hash`](struct@Hash) and [`HashAlgo`], with every encoding Nix prints.
//! - [`store_path`]: [`StorePath`] (a validated base name) and
//!   [`StoreDir`], which renders, parses and computes store paths.
//! - [`content_address`]: how content-addressed paths are derived.
//! - [`derivation`]: [`Derivation`], its `.drv` (ATerm) and JSON forms, hash
//!   modulo and output paths.
//! - [`nar`]: Nix archives: writing, hashing, parsing and restoring them.
//! - [`references`]: finding which store paths a byte stream mentions.
//! - [`canonicalise`]: the metadata Nix gives a tree before it enters the store.

pub mod canonicalise;
pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod nixbase32;
pub mod references;
pub mod store_path;

pub use content_address::{ContentAddress, ContentAddressMethod};
pub use derivation::Derivation;

pub use hash::{Hash, HashAlgo};
pub use store_path::{StoreDir, StorePath};
