//! Adding files, trees and texts to the store as content-addressed paths.
//!
//! Adding has two steps, so that a caller with its own lock discipline (the
//! build scheduler, which never blocks on a lock) can take the lock in
//! between:
//!
//! 1. [`LocalStore::stage_path`] / [`LocalStore::stage_text`] copy the
//!    contents into a private scratch folder inside the store, hash the copy (so a source changing meanwhile cannot make
//!    contents and hash disagree) and compute the store path. Nothing is
//!    locked and nothing visible is written.
//! 2. [`LocalStore::commit_staged`], under the path's lock, re-checks
//!    validity, removes an invalid leftover, renames the copy into place,
//!    makes its metadata canonical (modes 0444/0555, mtime 1, no xattrs),
//!    syncs it and registers it in one transaction.
//!
//! [`LocalStore::add_path`] and [`LocalStore::add_text`] do both with a
//! blocking lock, for tools. A crash at any point leaves either nothing, a
//! scratch folder (removed when the store is next opened), or an invalid
//! path that the next add replaces; never a valid path with partial
//! contents.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use larder_pathlocks::{Owner, PathLocks};
use larder_store_core::nar::Dumper;
use larder_store_core::store_path::StoreReferences;
use larder_store_core::{ContentAddress, ContentAddressMethod, HashAlgo, StorePath};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::ingest;
use crate::path_info::PathInfo;
use crate::store::{LocalStore, ScratchEntry};

/// How to add a file or tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOptions {
    /// How the contents are hashed: flat (one file's bytes), NAR
    /// (recursive, any tree) or text (one file, SHA-256, may name
    /// references).
    pub method: ContentAddressMethod,
    /// The content hash's algorithm; text always uses SHA-256.
    pub hash_algo: HashAlgo,
    /// The store path's name; the source's file name when absent.
    pub name: Option<String>,
    /// Store paths the contents refer to (text, or NAR with SHA-256).
    pub references: BTreeSet<StorePath>,
    /// The path the caller expects; adding fails when the contents give
    /// another.
    pub expected_path: Option<StorePath>,
}

impl AddOptions {
    /// SHA-256 with the given method, the source's name, no references.
    #[must_use]
    pub fn new(method: ContentAddressMethod) -> Self {
        Self {
            method,
            hash_algo: HashAlgo::Sha256,
            name: None,
            references: BTreeSet::new(),
            expected_path: None,
        }
    }
}

/// Contents copied and hashed, ready to be committed under the lock of
/// their path; see [`LocalStore::commit_staged`]. Dropping it removes the
/// copy.
#[derive(Debug)]
pub struct StagedPath {
    info: PathInfo,
    // Removed on drop unless committed.
    copy: ScratchEntry,
}

impl StagedPath {
    /// The store path the contents give.
    #[must_use]
    pub fn path(&self) -> &StorePath {
        &self.info.path
    }

    /// The path info that committing registers.
    #[must_use]
    pub fn info(&self) -> &PathInfo {
        &self.info
    }
}

impl LocalStore {
    /// Copies and hashes `src` and computes its store path, writing nothing
    /// visible. See the [module documentation](self).
    ///
    /// # Errors
    ///
    /// When the source cannot be read or has an unsupported file type,
    /// flat or text ingestion gets something other than a regular file, the
    /// name is invalid, references are not allowed for the method, or the
    /// computed path differs from [`AddOptions::expected_path`].
    pub fn stage_path(&self, src: &Path, options: &AddOptions) -> Result<StagedPath> {
        let name = match &options.name {
            Some(name) => name.clone(),
            None => src
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Io {
                    action: "taking the name of",
                    path: src.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "no valid file name; give a name",
                    ),
                })?
                .to_owned(),
        };
        larder_store_core::store_path::validate_name(&name)?;
        if options.method == ContentAddressMethod::Text {
            let contents = fs::read(src).io_context("reading", src)?;
            if !fs::metadata(src)
                .io_context("getting status of", src)?
                .is_file()
            {
                return Err(Error::NotRegularFile {
                    path: src.to_owned(),
                    method: "text",
                });
            }
            return self.stage(
                &name,
                options,
                |copy| ingest::write_flat(copy, &contents),
                Some(&contents),
            );
        }
        self.stage(
            &name,
            options,
            |copy| match options.method {
                ContentAddressMethod::Flat => ingest::copy_flat(src, copy, "flat"),
                _ => ingest::copy_tree(src, copy),
            },
            None,
        )
    }

    /// Stages a text (such as a `.drv` file) with its references.
    ///
    /// # Errors
    ///
    /// When the name is invalid or writing the copy fails.
    pub fn stage_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StagedPath> {
        larder_store_core::store_path::validate_name(name)?;
        let mut options = AddOptions::new(ContentAddressMethod::Text);
        options.references = references.clone();
        self.stage(
            name,
            &options,
            |copy| ingest::write_flat(copy, contents),
            Some(contents),
        )
    }

    /// Moves staged contents into the store and registers them, under
    /// `locks`, which must hold the path's lock. A path that became valid
    /// meanwhile is kept and its info returned.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] without the lock, [`Error::MissingReference`]
    /// when a reference is not valid, or when moving, syncing or the
    /// database fails; the path then stays invalid.
    pub fn commit_staged(&self, staged: StagedPath, locks: &PathLocks) -> Result<PathInfo> {
        let path = staged.info.path.clone();
        let real = self.layout().real_path(&path);
        if !locks.contains(&real) {
            return Err(Error::NotLocked(self.print_path(&path)));
        }
        if let Some(info) = self.query_path_info(&path)? {
            return Ok(info);
        }
        self.check_references(&staged.info)?;
        fsutil::delete_path(&real)?;
        fs::rename(&staged.copy.path, &real).io_context("moving into the store", &real)?;
        larder_store_core::canonicalise::canonicalise_path(&real)?;
        self.register_paths(std::slice::from_ref(&staged.info))?;
        self.path_info(&path)
    }

    /// Adds a file or tree, taking the path's lock by blocking (for tools;
    /// the scheduler stages, try-locks and commits instead).
    ///
    /// # Errors
    ///
    /// As [`LocalStore::stage_path`] and [`LocalStore::commit_staged`].
    pub fn add_path(&self, src: &Path, options: &AddOptions) -> Result<PathInfo> {
        let staged = self.stage_path(src, options)?;
        self.commit_with_blocking_lock(staged)
    }

    /// Adds a text with references, taking the path's lock by blocking.
    ///
    /// # Errors
    ///
    /// As [`LocalStore::stage_text`] and [`LocalStore::commit_staged`].
    pub fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<PathInfo> {
        let staged = self.stage_text(name, contents, references)?;
        self.commit_with_blocking_lock(staged)
    }

    fn commit_with_blocking_lock(&self, staged: StagedPath) -> Result<PathInfo> {
        if let Some(info) = self.query_path_info(staged.path())? {
            return Ok(info);
        }
        self.check_references(&staged.info)?;
        let real = self.layout().real_path(staged.path());
        let mut locks = larder_pathlocks::lock_blocking(Owner::fresh(), [&real])?;
        // The lock file goes whatever happens: a later locker finds the
        // path valid, or finds an invalid path and locks afresh (Nix's
        // stale-file check makes deleting always safe). It goes when this
        // handle does, with the others it added.
        locks.delete_later(&self.deferred_deletions);
        self.commit_staged(staged, &locks)
    }

    fn check_references(&self, info: &PathInfo) -> Result<()> {
        for reference in &info.references {
            if *reference != info.path && !self.is_valid(reference)? {
                return Err(Error::MissingReference {
                    path: self.print_path(&info.path),
                    reference: self.print_path(reference),
                });
            }
        }
        Ok(())
    }

    fn stage(
        &self,
        name: &str,
        options: &AddOptions,
        write_copy: impl FnOnce(&Path) -> Result<()>,
        text: Option<&[u8]>,
    ) -> Result<StagedPath> {
        let scratch = self.new_scratch_entry()?;
        let copy = &scratch.path;
        write_copy(copy)?;
        let mut dumper = Dumper::new();
        let (ca_hash, nar) = match (options.method, text) {
            (ContentAddressMethod::Text, Some(contents)) => (
                HashAlgo::Sha256.digest(contents),
                dumper.hash_path(copy, HashAlgo::Sha256)?,
            ),
            (ContentAddressMethod::Flat, _) => (
                dumper.hash_file_flat(copy, options.hash_algo)?,
                dumper.hash_path(copy, HashAlgo::Sha256)?,
            ),
            _ if options.hash_algo == HashAlgo::Sha256 => {
                let nar = dumper.hash_path(copy, HashAlgo::Sha256)?;
                (nar.hash, nar)
            }
            _ => {
                let (hashes, size) =
                    dumper.hash_path_multi(copy, &[HashAlgo::Sha256, options.hash_algo])?;
                let nar = larder_store_core::nar::NarHash {
                    hash: hashes[0],
                    size,
                };
                (hashes[1], nar)
            }
        };
        let ca = ContentAddress {
            method: options.method,
            hash: ca_hash,
        };
        let references = StoreReferences {
            others: options.references.clone(),
            self_ref: false,
        };
        let path = self
            .store_dir()
            .make_content_addressed_path(name, &ca, &references)?;
        if let Some(expected) = options.expected_path.as_ref().filter(|e| **e != path) {
            return Err(Error::PathMismatch {
                expected: self.print_path(expected),
                computed: self.print_path(&path),
            });
        }
        let mut info = PathInfo::new(path, nar.hash, nar.size);
        info.references = options.references.clone();
        info.ca = Some(ca);
        Ok(StagedPath {
            info,
            copy: scratch,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::Value;

    use super::*;
    use crate::test_util::temp_store;

    const STORE_PATHS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../vectors/nix-2.8/store-paths.jsonl"
    );
    const NARS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../vectors/nix-2.8/nar.jsonl"
    );

    fn contents(case: &Value) -> Option<Vec<u8>> {
        if let Some(s) = case["content_utf8"].as_str() {
            return Some(s.as_bytes().to_vec());
        }
        case["content_base64"].as_str().map(|b| {
            data_encoding::BASE64
                .decode(b.as_bytes())
                .expect("valid base64")
        })
    }

    /// Builds a tree described as in `nar.jsonl`.
    fn build_tree(tree: &Value, at: &Path) {
        match tree["type"].as_str().expect("type") {
            "regular" => {
                fs::write(
                    at,
                    contents(&serde_json::json!({
                        "content_utf8": tree["contents_utf8"],
                        "content_base64": tree["contents_base64"],
                    }))
                    .expect("contents"),
                )
                .expect("write");
                let mode = if tree["executable"] == true {
                    0o755
                } else {
                    0o644
                };
                fs::set_permissions(at, fs::Permissions::from_mode(mode)).expect("chmod");
            }
            "symlink" => std::os::unix::fs::symlink(tree["target"].as_str().expect("target"), at)
                .expect("symlink"),
            "directory" => {
                fs::create_dir(at).expect("mkdir");
                for (name, entry) in tree["entries"].as_object().expect("entries") {
                    build_tree(entry, &at.join(name));
                }
            }
            other => panic!("unknown type {other}"),
        }
    }

    #[test]
    fn added_paths_match_nix_2_8() {
        let (dir, store) = temp_store();
        let nars: Vec<Value> = fs::read_to_string(NARS)
            .expect("vectors")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let mut checked = 0;
        for line in fs::read_to_string(STORE_PATHS).expect("vectors").lines() {
            let case: Value = serde_json::from_str(line).expect("json");
            let id = case["id"].as_str().expect("id");
            let name = case["name"].as_str().expect("name");
            let src = dir.path().join(format!("src-{checked}"));
            let info = match case["kind"].as_str().expect("kind") {
                "text" => {
                    let references: BTreeSet<StorePath> = case["references"]
                        .as_array()
                        .expect("refs")
                        .iter()
                        .map(|r| store.parse_path(r.as_str().expect("ref")).expect("path"))
                        .collect();
                    // References must be valid: stand-ins do.
                    for reference in &references {
                        if !store.is_valid(reference).expect("query") {
                            let real = store.layout().real_path(reference);
                            fs::write(&real, b"stand-in").expect("write");
                            let nar = larder_store_core::nar::hash_path(&real).expect("hash");
                            store
                                .register_paths(&[PathInfo::new(
                                    reference.clone(),
                                    nar.hash,
                                    nar.size,
                                )])
                                .expect("registers");
                        }
                    }
                    store
                        .add_text(name, &contents(&case).expect("contents"), &references)
                        .unwrap_or_else(|e| panic!("{id}: {e}"))
                }
                "fixed" => {
                    if let Some(nar_case) = case["nar_case"].as_str() {
                        let tree = nars.iter().find(|n| n["id"] == nar_case).expect("nar case");
                        build_tree(&tree["tree"], &src);
                    } else {
                        fs::write(&src, contents(&case).expect("contents")).expect("write");
                    }
                    let mut options = AddOptions::new(match case["method"].as_str() {
                        Some("flat") => ContentAddressMethod::Flat,
                        _ => ContentAddressMethod::Nar,
                    });
                    options.hash_algo = case["algo"].as_str().expect("algo").parse().expect("algo");
                    options.name = Some(name.to_owned());
                    store
                        .add_path(&src, &options)
                        .unwrap_or_else(|e| panic!("{id}: {e}"))
                }
                _ => continue,
            };
            assert_eq!(
                store.print_path(&info.path),
                case["store_path"].as_str().expect("store path"),
                "{id}"
            );
            if let Some(sri) = case["nar_hash_sri"].as_str() {
                assert_eq!(info.nar_hash.to_sri(), sri, "{id}");
                assert_eq!(
                    info.nar_size,
                    case["nar_size"].as_u64().expect("size"),
                    "{id}"
                );
            }
            if let Some(ca) = case["ca"].as_str() {
                assert_eq!(info.ca.map(|c| c.render()).as_deref(), Some(ca), "{id}");
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} cases");
        let report = store.verify(true).expect("verifies");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(
            report.checked,
            store.query_all_valid_paths().expect("all").len()
        );
    }

    #[test]
    fn added_contents_are_canonical_and_adding_again_is_a_no_op() {
        let (dir, store) = temp_store();
        let src = dir.path().join("tree");
        fs::create_dir_all(src.join("sub")).expect("mkdir");
        fs::write(src.join("sub/run"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(src.join("sub/run"), fs::Permissions::from_mode(0o4775))
            .expect("chmod");
        fs::write(src.join("data"), b"data").expect("write");
        std::os::unix::fs::symlink("data", src.join("link")).expect("symlink");
        let info = store
            .add_path(&src, &AddOptions::new(ContentAddressMethod::Nar))
            .expect("adds");
        let real = store.layout().real_path(&info.path);
        let mode = |p: &Path| fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777;
        let mtime = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::symlink_metadata(p).expect("stat").mtime()
        };
        assert_eq!(mode(&real), 0o555);
        assert_eq!(mode(&real.join("sub")), 0o555);
        assert_eq!(mode(&real.join("sub/run")), 0o555);
        assert_eq!(mode(&real.join("data")), 0o444);
        for p in [
            &real,
            &real.join("sub"),
            &real.join("sub/run"),
            &real.join("data"),
            &real.join("link"),
        ] {
            assert_eq!(mtime(p), 1, "{}", p.display());
        }
        let lock = store.layout().lock_path(&info.path);
        assert_eq!(
            fs::metadata(&lock).map(|m| m.len()).ok(),
            Some(0),
            "the lock file is kept, unmarked, while the handle lives"
        );
        let again = store
            .add_path(&src, &AddOptions::new(ContentAddressMethod::Nar))
            .expect("adds again");
        assert_eq!(again, info);
        assert_eq!(scratch_entries(&store), 0, "no scratch left");
        store.delete_kept_lock_files();
        assert!(!lock.exists(), "lock file removed when asked");
        let scratch = store.layout().scratch_dir();
        drop(store);
        assert_eq!(fs::read_dir(scratch).expect("ls").count(), 0);
    }

    /// What the scratch folders of `store` hold.
    fn scratch_entries(store: &LocalStore) -> usize {
        fs::read_dir(store.layout().scratch_dir())
            .expect("ls")
            .map(|folder| {
                fs::read_dir(folder.expect("entry").path())
                    .expect("ls")
                    .count()
            })
            .sum()
    }

    #[test]
    fn bad_input_writes_nothing() {
        let (dir, store) = temp_store();
        let src = dir.path().join("f");
        fs::write(&src, b"x").expect("write");
        let mut options = AddOptions::new(ContentAddressMethod::Flat);
        options.expected_path =
            Some(StorePath::from_base_name("00000000000000000000000000000000-f").expect("path"));
        let err = store.add_path(&src, &options).unwrap_err();
        assert!(matches!(err, Error::PathMismatch { .. }), "{err}");

        let err = store
            .add_path(dir.path(), &AddOptions::new(ContentAddressMethod::Flat))
            .unwrap_err();
        assert!(matches!(err, Error::NotRegularFile { .. }), "{err}");

        let mut with_refs = AddOptions::new(ContentAddressMethod::Flat);
        with_refs.references =
            [StorePath::from_base_name("00000000000000000000000000000000-r").expect("path")].into();
        assert!(store.add_path(&src, &with_refs).is_err());

        let missing_ref =
            StorePath::from_base_name("00000000000000000000000000000000-r").expect("path");
        let err = store
            .add_text("t", b"refers to r", &[missing_ref].into())
            .unwrap_err();
        assert!(matches!(err, Error::MissingReference { .. }), "{err}");

        let mut bad_name = AddOptions::new(ContentAddressMethod::Flat);
        bad_name.name = Some("a b".to_owned());
        assert!(matches!(
            store.add_path(&src, &bad_name),
            Err(Error::StorePath(_))
        ));

        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).expect("mkdir");
        fs::rename(&fifo, tree.join("fifo")).expect("mv");
        let err = store
            .add_path(&tree, &AddOptions::new(ContentAddressMethod::Nar))
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedFileType { .. }), "{err}");

        assert!(store.query_all_valid_paths().expect("all").is_empty());
        let leftovers: Vec<_> = fs::read_dir(store.layout().real_store_dir())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != ".links" && n != ".larder-tmp")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(scratch_entries(&store), 0);
    }

    #[test]
    fn staged_commit_needs_the_lock_and_replaces_leftovers() {
        let (_dir, store) = temp_store();
        let staged = store
            .stage_text("t", b"text", &BTreeSet::new())
            .expect("stages");
        let path = staged.path().clone();
        let real = store.layout().real_path(&path);
        // A leftover of an interrupted add.
        fs::write(&real, b"half").expect("write");
        let other = larder_pathlocks::try_lock(
            Owner::fresh(),
            [store.layout().real_store_dir().join("other")],
        )
        .expect("locks");
        let staged_again = store
            .stage_text("t", b"text", &BTreeSet::new())
            .expect("stages");
        assert!(matches!(
            store.commit_staged(staged, &other),
            Err(Error::NotLocked(_))
        ));
        drop(other);
        let locks = larder_pathlocks::try_lock(Owner::fresh(), [&real]).expect("locks");
        let info = store.commit_staged(staged_again, &locks).expect("commits");
        assert_eq!(fs::read(&real).expect("read"), b"text");
        assert_eq!(info.path, path);
    }
}
