//! Build directories reused across builds: what the builder sees, what a
//! failed build with `keep_failed` keeps, and what the release deletes.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{TestStore, sh_drv};
use larder_builder::{SpareBuildDirs, release_spare_build_dirs};

/// The release empties the whole process's pool, so the tests that count
/// on a spare staying in it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

/// The one entry of `dir`, and its name.
fn only_entry(dir: &Path) -> (PathBuf, String) {
    let left = entries(dir);
    assert_eq!(left.len(), 1, "{left:?}");
    let name = left[0].file_name().unwrap().to_string_lossy().into_owned();
    (left[0].clone(), name)
}

/// What a builder prints about its build directory: inode, mode, path,
/// number of entries.
const REPORT: &str = "echo \"dir $(stat -c '%i %a' .) $(pwd) $(ls -A | wc -l)\"";

fn report(log: &str) -> Vec<String> {
    log.lines()
        .find_map(|l| l.strip_prefix("dir "))
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_second_build_reuses_the_first_ones_directory() {
    let _serial = serial();
    let t = TestStore::new();
    // The first build leaves files, an unreadable folder, and a mode of
    // its own in its directory.
    let first = sh_drv(
        t.store_dir(),
        "first",
        &format!(
            "{REPORT}; mkdir -p a/b && echo x > a/b/f && echo y > .h && chmod 0 a && chmod 2755 . && echo 1 > $out"
        ),
        &["out"],
    );
    let (log, result) = t.build(&first);
    result.unwrap();
    let before = report(&log);
    let second = sh_drv(
        t.store_dir(),
        "second",
        &format!("{REPORT}; echo 2 > $out"),
        &["out"],
    );
    let (log, result) = t.build(&second);
    result.unwrap();
    let after = report(&log);
    assert_eq!(after[0], before[0], "not the same directory: {after:?}");
    assert_eq!(after[1], "700");
    assert_ne!(after[2], before[2], "not renamed");
    assert!(after[2].contains("nix-build-second.drv-"), "{after:?}");
    assert_eq!(after[3], "0", "not empty");
    // What is left is one empty spare.
    let (_, name) = only_entry(&t.dir.path().join("builds"));
    assert!(name.starts_with(&format!(".larder-spare-{}-", std::process::id())));
    release_spare_build_dirs();
    assert!(entries(&t.dir.path().join("builds")).is_empty());
}

#[test]
fn a_failed_build_kept_for_inspection_is_not_pooled() {
    let _serial = serial();
    let t = TestStore::new();
    let mut settings = t.settings();
    settings.keep_failed = true;
    let drv = sh_drv(t.store_dir(), "fails", "echo kept > f; exit 1", &["out"]);
    let (_, result) = t.unprepare_with(&drv, false, settings);
    assert!(result.is_err());
    let (kept, name) = only_entry(&t.dir.path().join("builds"));
    assert!(name.starts_with("nix-build-fails.drv-"), "{name}");
    assert_eq!(std::fs::read_to_string(kept.join("f")).unwrap(), "kept\n");
}

#[test]
fn dropping_the_guard_deletes_the_spares() {
    let _serial = serial();
    let t = TestStore::new();
    let guard = SpareBuildDirs::new();
    let drv = sh_drv(t.store_dir(), "once", "echo > $out", &["out"]);
    t.build(&drv).1.unwrap();
    assert_eq!(entries(&t.dir.path().join("builds")).len(), 1);
    drop(guard);
    assert!(entries(&t.dir.path().join("builds")).is_empty());
}
