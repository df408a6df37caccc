//! What can go wrong in the local store, with the path or file it concerns.

use std::io;
use std::path::PathBuf;

use larder_store_core::content_address::ContentAddressError;
use larder_store_core::hash::HashError;
use larder_store_core::store_path::StorePathError;
use thiserror::Error;

/// A local-store error.
#[derive(Debug, Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{action} '{}': {source}", path.display())]
    Io {
        /// What was being done, such as "creating directory".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// SQLite refused an operation (a corrupt or unreadable database, most
    /// likely).
    #[error("SQLite database '{}': {source}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The `schema` file names a version this program does not know.
    #[error("current Nix store schema is version {found}, but larder only supports {supported}")]
    SchemaTooNew {
        /// The version found.
        found: u32,
        /// The version larder writes.
        supported: u32,
    },
    /// The `schema` file names an older version that needs an upgrade.
    #[error(
        "the Nix store at '{}' has schema version {found}; open it once with Nix 2.8 to upgrade it to {supported}",
        root.display()
    )]
    SchemaTooOld {
        /// The store root.
        root: PathBuf,
        /// The version found.
        found: u32,
        /// The version larder needs.
        supported: u32,
    },
    /// The `schema` file holds no number.
    #[error("'{}' is corrupt: expected a schema version number, found {content:?}", path.display())]
    SchemaCorrupt {
        /// The schema file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// A row of the database does not parse.
    #[error("invalid database entry for '{path}': {reason}")]
    CorruptEntry {
        /// The path of the row, as stored.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path that must be valid is not.
    #[error("path '{0}' is not valid")]
    NotValid(String),
    /// A path to register has no contents on disk.
    #[error("cannot register path '{path}': it does not exist at '{}'", real_path.display())]
    MissingOnDisk {
        /// The store path.
        path: String,
        /// Where its contents should be.
        real_path: PathBuf,
    },
    /// A path to register refers to a path that is neither valid nor in the
    /// same registration.
    #[error("cannot register path '{path}': its reference '{reference}' is not valid")]
    MissingReference {
        /// The store path being registered.
        path: String,
        /// The reference that is missing.
        reference: String,
    },
    /// The paths of one registration refer to each other in a cycle.
    #[error("cycle detected in the references of '{path}' from '{parent}'")]
    ReferenceCycle {
        /// A path on the cycle.
        path: String,
        /// The path that refers to it.
        parent: String,
    },
    /// The same path appears twice in one registration.
    #[error("path '{0}' is listed twice in one registration")]
    DuplicatePath(String),
    /// A NAR hash that is not SHA-256, which Nix requires in the database.
    #[error("cannot register path '{path}': its NAR hash must be sha256, not {algo}")]
    NarHashNotSha256 {
        /// The store path.
        path: String,
        /// The algorithm given.
        algo: String,
    },
    /// A path info claims a content address its path does not follow from.
    #[error(
        "cannot add path '{path}' to the Nix store because it claims to be content-addressed but isn't (its content address gives '{computed}')"
    )]
    NotContentAddressed {
        /// The path claimed.
        path: String,
        /// The path its content address gives.
        computed: String,
    },
    /// The caller named a store path that differs from the one the contents
    /// give.
    #[error("path mismatch: expected '{expected}', but the contents give '{computed}'")]
    PathMismatch {
        /// The path the caller claimed.
        expected: String,
        /// The path computed from the contents.
        computed: String,
    },
    /// A path still has referrers, so it cannot be invalidated.
    #[error("cannot delete path '{path}' because it is in use by {}", referrers.join(", "))]
    PathInUse {
        /// The path.
        path: String,
        /// Its valid referrers.
        referrers: Vec<String>,
    },
    /// A valid path cannot be deleted as if it were a leftover.
    #[error("cannot delete path '{0}': it is valid")]
    DeleteValid(String),
    /// A file of a type the store cannot hold (a fifo, socket or device).
    #[error("file '{}' has an unsupported type", path.display())]
    UnsupportedFileType {
        /// The file.
        path: PathBuf,
    },
    /// Flat and text ingestion need a single regular file.
    #[error("'{}' is not a regular file, which {method} ingestion requires", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// The ingestion method.
        method: &'static str,
    },
    /// A log is not a derivation's.
    #[error("'{0}' is not a derivation, so it has no build log")]
    NotDerivation(String),
    /// Committing a staged path needs its lock, which the guard lacks.
    #[error("cannot add path '{0}': the caller does not hold its lock")]
    NotLocked(String),
    /// Archiving or hashing a path failed.
    #[error(transparent)]
    Nar(#[from] larder_store_core::nar::DumpError),
    /// Making a path's metadata canonical failed.
    #[error(transparent)]
    Canonicalise(#[from] larder_store_core::canonicalise::CanonicaliseError),
    /// Locking a path failed.
    #[error(transparent)]
    Lock(#[from] larder_pathlocks::Error),
    /// A derivation is malformed or inconsistent.
    #[error("derivation '{path}': {source}")]
    BadDerivation {
        /// The `.drv` path (or where the derivation came from).
        path: String,
        /// What is wrong.
        source: larder_store_core::derivation::DerivationError,
    },
    /// A store path does not parse.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// A hash does not parse.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// A content address does not parse.
    #[error(transparent)]
    ContentAddress(#[from] ContentAddressError),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path and an action to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_context(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_context(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
