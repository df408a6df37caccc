//! Nix archives (NAR): the canonical serialisation of a file-system object,
//! byte-identical with Nix's.
//!
//! A NAR holds a regular file (its contents and executable bit), a symlink
//! (its target) or a directory (its entries, sorted by name), and nothing
//! else of the metadata, so equal trees give equal bytes and equal hashes.
//!
//! - [`wire`]: the string encoding, the magic, the format's limits.
//! - [`mod@write`]: [`Dumper`] and [`dump_path`] stream a path's NAR to any
//!   writer; [`dump_bytes`] is the NAR of one byte string.
//! - [`mod@hash`]: the NAR hash and size of a path ([`hash_path`]), in several
//!   algorithms at once, and the flat hash of a file.
//! - [`mod@parse`]: the streaming parser driving a [`NarSink`].
//! - [`mod@restore`]: unpacking a NAR to a path, and copying one while checking it.

pub mod hash;
pub mod parse;
pub mod restore;
pub mod wire;
pub mod write;

pub use hash::{MultiHasher, NarHash, hash_file_flat, hash_path};
pub use parse::{NarSink, NullSink, ParseError, parse, parse_reader, validate};
pub use restore::{RestoreSink, copy, restore};
pub use write::{DumpError, Dumper, dump_bytes, dump_path};
