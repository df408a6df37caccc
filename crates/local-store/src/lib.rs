//! The local Nix store on disk, compatible with Nix 2.8.
//!
//! A store lives under a root folder like Nix's `local?root=ROOT`: objects in
//! `ROOT/nix/store` (named for the logical `/nix/store`), the database
//! `ROOT/nix/var/nix/db/db.sqlite` in Nix 2.8's schema, and build logs in
//! `ROOT/nix/var/log/nix/drvs`. Nix can open, read and verify a store larder
//! wrote, and larder reads one Nix wrote.
//!
//! - [`layout`]: [`StoreLayout`], where each file of a store is.
//! - [`schema`]: the database schema and its version.
//! - [`store`]: [`LocalStore`]: open, query, register, invalidate.
//! - [`path_info`]: [`PathInfo`], a valid path's metadata, and its JSON.
//! - [`reference_graph`]: [`ClosureSet`], closures as sets of interned paths.
//! - [`add`]: adding files, trees and texts ([`AddOptions`], [`StagedPath`]).
//! - [`derivations`]: writing and reading `.drv` files.
//! - [`verify`]: checking the store against its database ([`VerifyReport`]).
//! - [`logs`]: storing and reading build logs.
//! - [`error`]: the crate's [`Error`] type.

pub mod add;
pub mod derivations;
pub mod error;
pub mod layout;
pub mod logs;
pub mod path_info;
pub mod reference_graph;
pub mod schema;
pub mod store;
pub mod verify;

mod db;
mod fsutil;
mod ingest;
#[cfg(test)]
mod test_util;

pub use add::{AddOptions, StagedPath};
pub use error::{Error, Result};
pub use layout::StoreLayout;
pub use logs::{BuildLogWriter, LogCompression};
pub use path_info::{PathInfo, PathInfoJson};
pub use reference_graph::ClosureSet;
pub use schema::SCHEMA_VERSION;
pub use store::{LocalStore, StoreSettings};
pub use verify::{VerifyProblem, VerifyReport};
