//! [`LocalStore`]: opening a store, querying and registering valid paths.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use larder_pathlocks::DeferredDeletions;
use larder_store_core::{StoreDir, StorePath};

use crate::db::{Db, DrvOutputs};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock};
use crate::layout::StoreLayout;
use crate::path_info::PathInfo;
use crate::reference_graph::{ClosureSet, SharedGraph};
use crate::schema::SCHEMA_VERSION;

/// How careful the store is about durability.
///
/// A killed process needs none of these: what it wrote is in the page
/// cache, which the kernel keeps. They are for crashes of the machine
/// (power loss, kernel panic), where unsynced writes may be lost in any
/// order.
///
/// Nix 2.8 syncs only its database (`fsync-metadata`), never the contents
/// of store paths (a later Nix added `fsync-store-paths`, off by default),
/// so after a power loss Nix 2.8 can hold a valid path whose files are
/// empty: with `synchronous = normal` in WAL mode, a commit is not synced
/// at once, but nothing stops the kernel from writing the WAL before the
/// contents. larder keeps its invariant that contents are durable before
/// the transaction that makes them valid (`fsync_store_paths`, on by
/// default), at the least cost that gives it: one pass over the files and
/// folders of a registration's new paths, then one sync of the store
/// directory for their entries, right before the one transaction. A
/// trivial build (one output file) costs two `fsync`s, about 0.3 ms on
/// this project's test machine; `fsync_store_paths: false` is Nix 2.8's
/// behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Let SQLite sync its files (`pragma synchronous = normal`; `off`
    /// otherwise), Nix's `fsync-metadata`.
    pub fsync_metadata: bool,
    /// Sync each path's files and folders (and then the store directory,
    /// once) before its registration commits, so a crash never leaves a
    /// valid path with lost contents. Nix 2.8 does not.
    pub fsync_store_paths: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            fsync_metadata: true,
            fsync_store_paths: true,
        }
    }
}

/// A local store on disk, laid out as Nix's `local?root=ROOT`.
///
/// Opening creates a missing store. Every open store holds `big-lock`
/// shared, as Nix does, so a schema upgrade never runs under it. One
/// [`LocalStore`] may be shared between threads; several processes may open
/// the same store at once.
pub struct LocalStore {
    layout: StoreLayout,
    settings: StoreSettings,
    db: Mutex<Db>,
    /// Hash modulo of the derivations checked so far, by `.drv` path.
    /// Sound for the store's lifetime, since a `.drv` path is a hash of its
    /// contents; without it, checking each derivation of a deep DAG would
    /// hash its whole input closure again (quadratic in the DAG's size).
    hash_cache: Mutex<larder_store_core::derivation::HashModuloCache>,
    /// References of valid paths read or registered by this handle, as
    /// Nix's path info cache keeps them: a build's input closure is then
    /// walked in memory, where one query over the whole closure per build
    /// made each build of a deep DAG cost time in the size of the DAG.
    /// An entry is dropped when this handle registers or invalidates its
    /// path (references only grow while a path stays valid).
    references: SharedGraph,
    /// Lock files of paths this handle added, deleted when it is dropped
    /// rather than one by one (see `DeferredDeletions`).
    pub(crate) deferred_deletions: Arc<DeferredDeletions>,
    /// This handle's scratch folder (see [`LocalStore::new_scratch_entry`]).
    scratch_folder: OnceLock<ScratchDir>,
    // Held for the store's lifetime: the shared big lock.
    _big_lock: FileLock,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("layout", &self.layout)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Opens (creating on first use) the store rooted at `root`, with the
    /// logical store directory `/nix/store` and default settings.
    ///
    /// # Errors
    ///
    /// When folders cannot be created, the schema version is not Nix 2.8's,
    /// or the database cannot be opened.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(StoreLayout::new(root), StoreSettings::default())
    }

    /// Opens (creating on first use) a store with this layout and settings.
    ///
    /// # Errors
    ///
    /// As [`LocalStore::open`].
    pub fn open_with(layout: StoreLayout, settings: StoreSettings) -> Result<Self> {
        let real_store_dir = layout.real_store_dir();
        for dir in [
            real_store_dir.clone(),
            real_store_dir.join(".links"),
            layout.db_dir(),
            layout.state_dir().join("temproots"),
            layout.drv_log_dir(),
        ] {
            fsutil::create_dirs(&dir)?;
        }
        let big_lock = FileLock::open(&layout.big_lock_path())?;
        big_lock.lock(true, "waiting for the big Nix store lock...")?;

        let schema_path = layout.schema_path();
        let mut version = read_schema_version(&schema_path)?;
        if version == 0 {
            // A new store. Creating it holds the big lock exclusively, so
            // that processes opening the same new store at once create the
            // database one after the other (SQLite would refuse concurrent
            // schema and journal-mode changes as "database is locked").
            // Converting the lock drops the shared one first, so two such
            // processes cannot wait for each other.
            big_lock.lock(false, "waiting for exclusive access to the Nix store...")?;
            version = read_schema_version(&schema_path)?;
            if version == 0 {
                drop(Db::open(
                    &layout.db_path(),
                    true,
                    settings.fsync_metadata,
                    layout.store_dir().clone(),
                )?);
                fsutil::write_file_atomic(&schema_path, SCHEMA_VERSION.to_string().as_bytes())?;
                version = SCHEMA_VERSION;
            }
            big_lock.lock(true, "waiting for the big Nix store lock...")?;
        }
        let db = match version {
            SCHEMA_VERSION => Db::open(
                &layout.db_path(),
                false,
                settings.fsync_metadata,
                layout.store_dir().clone(),
            )?,
            found if found > SCHEMA_VERSION => {
                return Err(Error::SchemaTooNew {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            found => {
                return Err(Error::SchemaTooOld {
                    root: layout.root().to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        };
        let hash_cache =
            larder_store_core::derivation::HashModuloCache::new(layout.store_dir().clone());
        let store = Self {
            layout,
            settings,
            db: Mutex::new(db),
            hash_cache: Mutex::new(hash_cache),
            references: SharedGraph::default(),
            deferred_deletions: Arc::new(DeferredDeletions::new()),
            scratch_folder: OnceLock::new(),
            _big_lock: big_lock,
        };
        store.sweep_scratch();
        Ok(store)
    }

    /// The store's file layout.
    #[must_use]
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The logical store directory, `/nix/store` by default.
    #[must_use]
    pub fn store_dir(&self) -> &StoreDir {
        self.layout.store_dir()
    }

    /// The settings the store was opened with.
    #[must_use]
    pub fn settings(&self) -> StoreSettings {
        self.settings
    }

    /// Parses a full store path (`/nix/store/<hash>-<name>`) or a base name.
    ///
    /// # Errors
    ///
    /// When it is neither.
    pub fn parse_path(&self, s: &str) -> Result<StorePath> {
        if s.starts_with('/') {
            Ok(self.store_dir().parse(s)?)
        } else {
            Ok(StorePath::from_base_name(s)?)
        }
    }

    /// The full printed form of a store path.
    #[must_use]
    pub fn print_path(&self, path: &StorePath) -> String {
        self.store_dir().display(path)
    }

    /// Whether a path is registered as valid.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool> {
        self.db().is_valid(path)
    }

    /// A valid path's metadata, or `None` when it is not valid.
    ///
    /// # Errors
    ///
    /// When the database fails or its row does not parse.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        self.db().path_info(path)
    }

    /// The closure of `roots`: them and every path they refer to, directly
    /// or not (Nix's `computeFSClosure`).
    ///
    /// # Errors
    ///
    /// [`Error::NotValid`] naming a root that is not valid, or when the
    /// database fails.
    pub fn query_closure(&self, roots: &BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
        Ok(self.query_closure_set(roots)?.paths().into_iter().collect())
    }

    /// As [`LocalStore::query_closure`], as a [`ClosureSet`]: cheap to
    /// make and to query by hash part, for a build's input closure, which
    /// may hold thousands of paths of which its outputs mention a few.
    ///
    /// # Errors
    ///
    /// As [`LocalStore::query_closure`].
    pub fn query_closure_set<'r>(
        &self,
        roots: impl IntoIterator<Item = &'r StorePath> + Clone,
    ) -> Result<ClosureSet> {
        let db = self.db();
        // Roots are checked in the database every time; what a valid path
        // refers to is valid too, so the rest of the walk may trust the
        // cache.
        for root in roots.clone() {
            if !db.is_valid(root)? {
                return Err(Error::NotValid(self.print_path(root)));
            }
        }
        self.references
            .closure(roots, |path| Ok(db.references(path)?.into_iter().collect()))
    }

    /// A valid path's metadata.
    ///
    /// # Errors
    ///
    /// [`Error::NotValid`] when the path is not valid, or as
    /// [`LocalStore::query_path_info`].
    pub fn path_info(&self, path: &StorePath) -> Result<PathInfo> {
        self.query_path_info(path)?
            .ok_or_else(|| Error::NotValid(self.print_path(path)))
    }

    /// The valid paths that refer to `path` (itself included when it refers
    /// to itself).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db().referrers(path)
    }

    /// Every valid path.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>> {
        self.db().all_valid_paths()
    }

    /// The valid derivations that list `path` as an output.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db().valid_derivers(path)
    }

    /// A valid derivation's outputs, by name, from `DerivationOutputs`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        self.db().derivation_outputs(drv)
    }

    /// The valid path with this hash part, if any.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        self.db().path_from_hash_part(hash_part)
    }

    /// Registers paths whose contents are already in place, in one
    /// transaction. References may point at valid paths or at paths of the
    /// same set; content-addressed infos must match their path; contents are
    /// synced to disk before the transaction commits. Paths already valid
    /// get their info updated. New `.drv` paths get their outputs recorded
    /// when they can be read (see [`LocalStore::register_paths_with_outputs`]).
    ///
    /// # Errors
    ///
    /// When a path is missing on disk, a reference is missing, the set
    /// holds a reference cycle or a duplicate, a NAR hash is not SHA-256, a
    /// content address does not give its path, or the database fails. On
    /// error nothing is registered.
    pub fn register_paths(&self, infos: &[PathInfo]) -> Result<()> {
        self.register_paths_with_outputs(infos, &DrvOutputs::new())
    }

    /// As [`LocalStore::register_paths`], with the outputs of derivations
    /// among `infos` given for `DerivationOutputs`.
    ///
    /// # Errors
    ///
    /// As [`LocalStore::register_paths`].
    pub fn register_paths_with_outputs(
        &self,
        infos: &[PathInfo],
        drv_outputs: &BTreeMap<StorePath, BTreeMap<String, StorePath>>,
    ) -> Result<()> {
        self.check_registration(infos)?;
        if self.settings.fsync_store_paths {
            for info in infos {
                fsutil::sync_tree(&self.layout.real_path(&info.path))?;
            }
            fsutil::sync_dir(&self.layout.real_store_dir())?;
        }
        let drv_outputs = self.read_drv_outputs(infos, drv_outputs)?;
        let registered = self.db().register(infos, &drv_outputs);
        self.forget_references(infos.iter().map(|info| &info.path));
        registered
    }

    /// Removes a valid path from the database (not from disk). Refuses
    /// when other valid paths refer to it. Returns whether it was valid.
    ///
    /// # Errors
    ///
    /// [`Error::PathInUse`] when it has referrers, or when the database fails.
    pub fn invalidate_path(&self, path: &StorePath) -> Result<bool> {
        let invalidated = self.db().invalidate_checked(path);
        self.forget_references([path]);
        invalidated
    }

    /// Deletes the leftover contents of a path that is not valid (an
    /// interrupted build or add). The caller should hold the path's lock.
    /// Returns whether anything was there.
    ///
    /// # Errors
    ///
    /// [`Error::DeleteValid`] when the path is valid, or when deleting fails.
    pub fn delete_invalid_path(&self, path: &StorePath) -> Result<bool> {
        if self.is_valid(path)? {
            return Err(Error::DeleteValid(self.print_path(path)));
        }
        let real = self.layout.real_path(path);
        let existed = fs::symlink_metadata(&real).is_ok();
        fsutil::delete_path(&real)?;
        Ok(existed)
    }

    /// The hash modulo cache of the derivations this store has checked.
    pub(crate) fn hash_cache(
        &self,
    ) -> MutexGuard<'_, larder_store_core::derivation::HashModuloCache> {
        // A panic mid-computation leaves only complete entries behind: an
        // entry is inserted once its hash is known.
        self.hash_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the lock files of the paths this handle added, which it
    /// keeps until it is dropped (see `DeferredDeletions`): for a
    /// long-lived handle, between batches of work.
    pub fn delete_kept_lock_files(&self) {
        self.deferred_deletions.delete_now();
    }

    /// Drops the cached references of `paths`, whose registration changed.
    fn forget_references<'p>(&self, paths: impl IntoIterator<Item = &'p StorePath>) {
        let mut graph = self.references.lock();
        for path in paths {
            graph.forget(path);
        }
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while the lock was held leaves no half-done transaction:
        // rusqlite rolls back a dropped transaction.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The checks that need no transaction: NAR hash type, duplicates,
    /// presence on disk, content addresses, cycles inside the set.
    fn check_registration(&self, infos: &[PathInfo]) -> Result<()> {
        let mut by_path = BTreeMap::new();
        for info in infos {
            if by_path.insert(&info.path, info).is_some() {
                return Err(Error::DuplicatePath(self.print_path(&info.path)));
            }
            if !info.nar_hash_is_sha256() {
                return Err(Error::NarHashNotSha256 {
                    path: self.print_path(&info.path),
                    algo: info.nar_hash.algo().to_string(),
                });
            }
            let real_path = self.layout.real_path(&info.path);
            if fs::symlink_metadata(&real_path).is_err() {
                return Err(Error::MissingOnDisk {
                    path: self.print_path(&info.path),
                    real_path,
                });
            }
            if let Some(computed) = info
                .content_addressed_path(self.store_dir())?
                .filter(|computed| *computed != info.path)
            {
                return Err(Error::NotContentAddressed {
                    path: self.print_path(&info.path),
                    computed: self.print_path(&computed),
                });
            }
        }
        check_acyclic(&by_path, self.store_dir())
    }

    /// Removes scratch folders left by processes that no longer run.
    fn sweep_scratch(&self) {
        let scratch = self.layout.scratch_dir();
        let Ok(entries) = fs::read_dir(&scratch) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owner_alive = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|pid| {
                    !matches!(
                        rustix::process::test_kill_process(pid),
                        Err(rustix::io::Errno::SRCH)
                    )
                });
            if owner_alive {
                continue;
            }
            if let Err(e) = fsutil::delete_path(&entry.path()) {
                tracing::warn!("could not remove stale scratch folder: {e}");
            }
        }
    }

    /// A fresh name in this handle's scratch folder, which is made on
    /// first use and kept until the handle is dropped: a folder made and
    /// deleted for every added path was a measurable part of adding a
    /// `.drv` file (each deleted inode slows later file creation down on
    /// ext4 without a journal).
    pub(crate) fn new_scratch_entry(&self) -> Result<ScratchEntry> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if self.scratch_folder.get().is_none() {
            let base = self.layout.scratch_dir();
            fsutil::create_dirs(&base)?;
            let made = loop {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = base.join(format!("{}-{n}", std::process::id()));
                match fs::create_dir(&dir) {
                    Ok(()) => break ScratchDir { path: dir },
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // A leftover of an earlier process with our pid.
                        fsutil::delete_path(&dir)?;
                    }
                    Err(e) => return Err(e).io_context("creating directory", &dir),
                }
            };
            // A thread that raced us set its own; ours is dropped (deleted).
            let _ = self.scratch_folder.set(made);
        }
        let folder = self
            .scratch_folder
            .get()
            .expect("set above, by this thread or another");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(ScratchEntry {
            path: folder.path.join(n.to_string()),
        })
    }
}

/// A name in a store handle's scratch folder; whatever is there is deleted
/// when it is dropped (nothing, once its contents moved into the store).
#[derive(Debug)]
pub(crate) struct ScratchEntry {
    pub(crate) path: PathBuf,
}

impl Drop for ScratchEntry {
    fn drop(&mut self) {
        if let Err(e) = fsutil::delete_path(&self.path) {
            tracing::warn!("could not remove scratch file: {e}");
        }
    }
}

/// A scratch folder, deleted with its contents when dropped.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    pub(crate) path: PathBuf,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fsutil::delete_path(&self.path) {
            tracing::warn!("could not remove scratch folder: {e}");
        }
    }
}

fn read_schema_version(path: &std::path::Path) -> Result<u32> {
    match fs::read_to_string(path) {
        Ok(content) => content.trim().parse().map_err(|_| Error::SchemaCorrupt {
            path: path.to_owned(),
            content,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).io_context("reading", path),
    }
}

/// Fails when the references among the paths of one registration form a
/// cycle (self-references aside), naming a path on it and its referrer.
fn check_acyclic(by_path: &BTreeMap<&StorePath, &PathInfo>, store_dir: &StoreDir) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&StorePath, Mark> = BTreeMap::new();
    for &start in by_path.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative depth-first search: (path, index of the next reference).
        let mut stack: Vec<(&StorePath, Vec<&StorePath>, usize)> = Vec::new();
        let children = |p: &StorePath| -> Vec<&StorePath> {
            by_path
                .get(p)
                .map(|info| {
                    info.references
                        .iter()
                        .filter(|r| *r != p && by_path.contains_key(*r))
                        .collect()
                })
                .unwrap_or_default()
        };
        marks.insert(start, Mark::Visiting);
        stack.push((start, children(start), 0));
        while let Some((node, refs, next)) = stack.last_mut() {
            if let Some(&child) = refs.get(*next) {
                *next += 1;
                let node = *node;
                match marks.get(child) {
                    Some(Mark::Visiting) => {
                        return Err(Error::ReferenceCycle {
                            path: store_dir.display(child),
                            parent: store_dir.display(node),
                        });
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child, Mark::Visiting);
                        let grandchildren = children(child);
                        stack.push((child, grandchildren, 0));
                    }
                }
            } else {
                marks.insert(*node, Mark::Done);
                stack.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{put_file, temp_store};

    #[test]
    fn creates_nix_layout_and_schema() {
        let (_dir, store) = temp_store();
        let layout = store.layout();
        assert_eq!(
            fs::read_to_string(layout.schema_path()).expect("schema file"),
            "10"
        );
        assert!(layout.big_lock_path().exists());
        assert!(layout.real_store_dir().join(".links").is_dir());
        let conn = rusqlite::Connection::open(layout.db_path()).expect("opens");
        let mode: String = conn
            .query_row("pragma journal_mode", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
        let mut names: Vec<String> = conn
            .prepare("select name from sqlite_master where sql is not null order by name")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        names.sort();
        assert_eq!(
            names,
            [
                "DeleteSelfRefs",
                "DerivationOutputs",
                "IndexDerivationOutputs",
                "IndexReference",
                "IndexReferrer",
                "Refs",
                "ValidPaths",
                "sqlite_sequence"
            ]
        );
        // Reopening, also while the first handle is open, works.
        let again = LocalStore::open(layout.root()).expect("reopens");
        assert!(again.query_all_valid_paths().expect("query").is_empty());
    }

    #[test]
    fn closures_follow_registration_and_invalidation() {
        let (_dir, store) = temp_store();
        let a = put_file(&store, "a", b"a");
        let mut b = put_file(&store, "b", b"b");
        let c = put_file(&store, "c", b"c");
        store
            .register_paths(&[a.clone(), c.clone()])
            .expect("registers");
        b.references = [a.path.clone()].into();
        store.register_paths(&[b.clone()]).expect("registers");
        let roots: BTreeSet<StorePath> = [b.path.clone()].into();
        let first = store.query_closure(&roots).expect("closure");
        assert_eq!(first, [a.path.clone(), b.path.clone()].into());
        // Again from the cache, then after `b` is registered anew with one
        // more reference, and after it is invalidated.
        assert_eq!(store.query_closure(&roots).expect("closure"), first);
        b.references.insert(c.path.clone());
        store.register_paths(&[b.clone()]).expect("registers again");
        assert_eq!(
            store.query_closure(&roots).expect("closure"),
            [a.path.clone(), b.path.clone(), c.path.clone()].into()
        );
        assert!(store.invalidate_path(&b.path).expect("invalidates"));
        assert!(matches!(
            store.query_closure(&roots),
            Err(Error::NotValid(_))
        ));
    }

    #[test]
    fn register_and_query_with_references_inside_the_set() {
        let (_dir, store) = temp_store();
        let a = put_file(&store, "a", b"a");
        let mut b = put_file(&store, "b", b"b");
        b.references = [a.path.clone(), b.path.clone()].into();
        b.deriver = Some(
            StorePath::from_base_name("00000000000000000000000000000000-b.drv").expect("path"),
        );
        b.ultimate = true;
        b.sigs = ["k:sig1".to_owned(), "k:sig2".to_owned()].into();
        b.registration_time = 1234;
        store
            .register_paths(&[b.clone(), a.clone()])
            .expect("registers");

        assert!(store.is_valid(&a.path).expect("query"));
        let got = store.path_info(&b.path).expect("info");
        assert_eq!(got, b);
        let got_a = store.path_info(&a.path).expect("info");
        assert!(got_a.registration_time > 0);
        assert_eq!(
            store.query_referrers(&a.path).expect("referrers"),
            [b.path.clone()].into()
        );
        assert_eq!(
            store
                .query_path_from_hash_part(b.path.hash_part())
                .expect("query"),
            Some(b.path.clone())
        );
        assert_eq!(
            store
                .query_path_from_hash_part(&"0".repeat(32))
                .expect("query"),
            None
        );
        // Invalidation refuses while referred to; self-references do not count.
        assert!(matches!(
            store.invalidate_path(&a.path),
            Err(Error::PathInUse { .. })
        ));
        assert!(store.invalidate_path(&b.path).expect("invalidates"));
        assert!(store.invalidate_path(&a.path).expect("invalidates"));
        assert!(store.query_all_valid_paths().expect("all").is_empty());
    }

    #[test]
    fn bad_registrations_write_nothing() {
        let (_dir, store) = temp_store();
        let a = put_file(&store, "a", b"a");
        let mut b = put_file(&store, "b", b"b");
        let missing = put_file(&store, "missing", b"m");
        b.references = [missing.path.clone()].into();
        let err = store.register_paths(&[a.clone(), b.clone()]).unwrap_err();
        assert!(matches!(err, Error::MissingReference { .. }), "{err}");
        assert!(!store.is_valid(&a.path).expect("query"), "rolled back");

        let mut gone = put_file(&store, "gone", b"g");
        fs::remove_file(store.layout().real_path(&gone.path)).expect("rm");
        let err = store.register_paths(&[gone.clone()]).unwrap_err();
        assert!(matches!(err, Error::MissingOnDisk { .. }), "{err}");

        let mut x = put_file(&store, "x", b"x");
        let mut y = put_file(&store, "y", b"y");
        x.references = [y.path.clone()].into();
        y.references = [x.path.clone()].into();
        let err = store.register_paths(&[x, y]).unwrap_err();
        assert!(matches!(err, Error::ReferenceCycle { .. }), "{err}");

        gone.path = a.path.clone();
        let err = store.register_paths(&[a.clone(), gone]).unwrap_err();
        assert!(matches!(err, Error::DuplicatePath(_)), "{err}");

        let mut sha1 = a.clone();
        sha1.nar_hash = larder_store_core::HashAlgo::Sha1.digest(b"a");
        let err = store.register_paths(&[sha1]).unwrap_err();
        assert!(matches!(err, Error::NarHashNotSha256 { .. }), "{err}");

        let mut fake_ca = a.clone();
        fake_ca.ca = Some(larder_store_core::ContentAddress {
            method: larder_store_core::ContentAddressMethod::Text,
            hash: fake_ca.nar_hash,
        });
        let err = store.register_paths(&[fake_ca]).unwrap_err();
        assert!(matches!(err, Error::NotContentAddressed { .. }), "{err}");
        assert!(store.query_all_valid_paths().expect("all").is_empty());
    }

    #[test]
    fn registering_again_updates() {
        let (_dir, store) = temp_store();
        let mut a = put_file(&store, "a", b"a");
        store
            .register_paths(std::slice::from_ref(&a))
            .expect("registers");
        a.ultimate = true;
        store.register_paths(&[a.clone()]).expect("registers again");
        assert!(store.path_info(&a.path).expect("info").ultimate);
    }

    #[test]
    fn delete_invalid_path_refuses_valid_ones() {
        let (_dir, store) = temp_store();
        let a = put_file(&store, "a", b"a");
        let b = put_file(&store, "b", b"b");
        store
            .register_paths(std::slice::from_ref(&a))
            .expect("registers");
        assert!(matches!(
            store.delete_invalid_path(&a.path),
            Err(Error::DeleteValid(_))
        ));
        assert!(store.delete_invalid_path(&b.path).expect("deletes"));
        assert!(!store.layout().real_path(&b.path).exists());
        assert!(!store.delete_invalid_path(&b.path).expect("nothing there"));
    }

    #[test]
    fn schema_versions_are_checked() {
        let (dir, store) = temp_store();
        let layout = store.layout().clone();
        drop(store);
        fs::write(layout.schema_path(), "11").expect("write");
        assert!(matches!(
            LocalStore::open(layout.root()),
            Err(Error::SchemaTooNew { found: 11, .. })
        ));
        fs::write(layout.schema_path(), "7").expect("write");
        assert!(matches!(
            LocalStore::open(layout.root()),
            Err(Error::SchemaTooOld { found: 7, .. })
        ));
        fs::write(layout.schema_path(), "ten").expect("write");
        assert!(matches!(
            LocalStore::open(layout.root()),
            Err(Error::SchemaCorrupt { .. })
        ));
        fs::write(layout.schema_path(), "10").expect("write");
        fs::write(layout.db_path(), b"this is not a database, just some bytes that are long enough to be read as a header........").expect("write");
        for wal in ["db.sqlite-wal", "db.sqlite-shm"] {
            let _ = fs::remove_file(layout.db_dir().join(wal));
        }
        let err = LocalStore::open(layout.root()).unwrap_err();
        assert!(matches!(err, Error::Database { .. }), "{err}");
        assert!(err.to_string().contains("db.sqlite"), "{err}");
        drop(dir);
    }

    #[test]
    fn stale_scratch_folders_are_swept() {
        let (_dir, store) = temp_store();
        let stale = store.layout().scratch_dir().join("999999999-0");
        fs::create_dir_all(stale.join("x")).expect("mkdir");
        let mine = store.new_scratch_entry().expect("scratch");
        fs::write(&mine.path, "staged").expect("write");
        let reopened = LocalStore::open(store.layout().root()).expect("reopens");
        assert!(!stale.exists());
        assert!(mine.path.exists(), "a live process's folder stays");
        drop(mine);
        let folder = fs::read_dir(store.layout().scratch_dir())
            .expect("ls")
            .count();
        assert_eq!(folder, 1, "the handle's folder stays, empty");
        drop(store);
        let left = fs::read_dir(reopened.layout().scratch_dir())
            .expect("ls")
            .count();
        assert_eq!(left, 0, "a dropped handle's folder goes");
        drop(reopened);
    }
}
