//! Where a store keeps its files under a root folder.
//!
//! The layout is Nix's `local?root=ROOT`: the logical store directory stays
//! `/nix/store` (so store paths, and every hash computed from them, match
//! Nix's), while the files live under `ROOT/nix/store`, the database under
//! `ROOT/nix/var/nix/db` and the build logs under `ROOT/nix/var/log/nix`.

use std::path::{Path, PathBuf};

use larder_store_core::{StoreDir, StorePath};

/// The file layout of a local store rooted at a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
    store_dir: StoreDir,
}

/// The name of the folder in the real store directory that holds larder's
/// scratch copies while they are added. It starts with a dot, so it can
/// never be a store path.
pub(crate) const SCRATCH_DIR_NAME: &str = ".larder-tmp";

impl StoreLayout {
    /// The layout of a store whose files live under `root`, with the logical
    /// store directory `/nix/store`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_store_dir(root, StoreDir::default())
    }

    /// The layout under `root` with another logical store directory.
    #[must_use]
    pub fn with_store_dir(root: impl Into<PathBuf>, store_dir: StoreDir) -> Self {
        Self {
            root: root.into(),
            store_dir,
        }
    }

    /// The root folder (`/` for a store at its logical place).
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logical store directory, as written in store paths.
    #[must_use]
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Where the store's objects really are: `ROOT/nix/store`.
    #[must_use]
    pub fn real_store_dir(&self) -> PathBuf {
        self.under_root(self.store_dir.as_str())
    }

    /// Where a store path's contents really are.
    #[must_use]
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.real_store_dir().join(path.as_str())
    }

    /// The lock file Nix and larder use for a store path: `<real path>.lock`.
    #[must_use]
    pub fn lock_path(&self, path: &StorePath) -> PathBuf {
        self.real_store_dir()
            .join(format!("{}.lock", path.as_str()))
    }

    /// Nix's state directory, `ROOT/nix/var/nix`.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.under_root("/nix/var/nix")
    }

    /// The database directory, `ROOT/nix/var/nix/db`.
    #[must_use]
    pub fn db_dir(&self) -> PathBuf {
        self.state_dir().join("db")
    }

    /// The SQLite database, `db/db.sqlite`.
    #[must_use]
    pub fn db_path(&self) -> PathBuf {
        self.db_dir().join("db.sqlite")
    }

    /// The schema version file, `db/schema`.
    #[must_use]
    pub fn schema_path(&self) -> PathBuf {
        self.db_dir().join("schema")
    }

    /// The lock every store user holds shared, and a schema upgrade holds
    /// exclusively: `db/big-lock`.
    #[must_use]
    pub fn big_lock_path(&self) -> PathBuf {
        self.db_dir().join("big-lock")
    }

    /// The garbage collector's lock, `ROOT/nix/var/nix/gc.lock`, held shared
    /// while verifying for a consistent view.
    #[must_use]
    pub fn gc_lock_path(&self) -> PathBuf {
        self.state_dir().join("gc.lock")
    }

    /// Nix's log directory, `ROOT/nix/var/log/nix`.
    #[must_use]
    pub fn log_dir(&self) -> PathBuf {
        self.under_root("/nix/var/log/nix")
    }

    /// The folder of derivation build logs, `ROOT/nix/var/log/nix/drvs`.
    #[must_use]
    pub fn drv_log_dir(&self) -> PathBuf {
        self.log_dir().join("drvs")
    }

    /// The uncompressed log of a derivation:
    /// `drvs/<first 2 characters>/<rest of the base name>`. Nix writes the
    /// same path with `.bz2` appended.
    #[must_use]
    pub fn drv_log_path(&self, drv: &StorePath) -> PathBuf {
        let (head, tail) = drv.as_str().split_at(2);
        self.drv_log_dir().join(head).join(tail)
    }

    /// A temp area for builds, `ROOT/nix/var/larder/builds`: on the same
    /// file system as the store, owned by larder, outside Nix's folders.
    #[must_use]
    pub fn build_temp_dir(&self) -> PathBuf {
        self.under_root("/nix/var/larder/builds")
    }

    /// Where paths being added are assembled before they are moved into
    /// place: a hidden folder inside the real store directory, so the final
    /// move is a rename on one file system.
    #[must_use]
    pub fn scratch_dir(&self) -> PathBuf {
        self.real_store_dir().join(SCRATCH_DIR_NAME)
    }

    fn under_root(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_nix_root_layout() {
        let layout = StoreLayout::new("/tmp/r");
        let drv = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-hello.drv")
            .expect("valid store path");
        assert_eq!(layout.real_store_dir(), Path::new("/tmp/r/nix/store"));
        assert_eq!(
            layout.real_path(&drv),
            Path::new("/tmp/r/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv")
        );
        assert_eq!(
            layout.lock_path(&drv),
            Path::new("/tmp/r/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv.lock")
        );
        assert_eq!(
            layout.db_path(),
            Path::new("/tmp/r/nix/var/nix/db/db.sqlite")
        );
        assert_eq!(
            layout.drv_log_path(&drv),
            Path::new("/tmp/r/nix/var/log/nix/drvs/01/23456789abcdfghijklmnpqrsvwxyz-hello.drv")
        );
        assert_eq!(
            StoreLayout::new("/").real_store_dir(),
            Path::new("/nix/store")
        );
    }
}
