//! Helpers for this crate's unit tests.

use std::fs;

use larder_store_core::{HashAlgo, StorePath};
use tempfile::TempDir;

use crate::path_info::PathInfo;
use crate::store::LocalStore;

/// A fresh store in a temp folder; the folder goes with the returned guard.
pub(crate) fn temp_store() -> (TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalStore::open(dir.path().join("root")).expect("store opens");
    (dir, store)
}

/// Writes `contents` as the real file of an input-addressed-looking path
/// named `name` and returns its info (NAR hash and size of that file).
pub(crate) fn put_file(store: &LocalStore, name: &str, contents: &[u8]) -> PathInfo {
    let digest = HashAlgo::Sha256.digest(name.as_bytes());
    let mut twenty = [0u8; 20];
    twenty.copy_from_slice(&digest.digest()[..20]);
    let path = StorePath::from_digest(&twenty, name).expect("valid name");
    let real = store.layout().real_path(&path);
    fs::write(&real, contents).expect("write");
    let nar = larder_store_core::nar::hash_path(&real).expect("hash");
    PathInfo::new(path, nar.hash, nar.size)
}
