//! Bad input, through every command that takes it: malformed `.drv` and
//! JSON derivations (the corpus in `tests/data/bad-input/`, every prefix of
//! a real `.drv` and byte flips of it), invalid store paths and names, bad
//! hashes, hostile NARs (Nix's own, in `vectors/nix-upstream`, and damaged
//! ones), derivations naming inputs that are nowhere, a `--store` that is a
//! file, and a store that cannot be written.
//!
//! Each must give one line on standard error starting `error:`, exit status
//! 1, nothing on standard output, and leave the store as it was: the same
//! files under `nix/store`, `nix/var/log` and `nix/var/nix/temproots`, and
//! the same valid paths in the database.
//!
//! A store that does not exist is not created by input that does not parse
//! (a malformed file, store path, name or hash): commands parse their input
//! before opening the store. Input that parses but is wrong only against
//! its inputs (a missing input, a wrong output path, which needs the input
//! derivations to see) is checked with the store open, so it may leave a new
//! empty store, as any first use of `larder` does.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use larder_local_store::LocalStore;

use crate::support::{larder, repo_root, run, stdout_of, vector};

/// A file of the corpus.
fn data(path: &str) -> PathBuf {
    repo_root().join("tests/data/bad-input").join(path)
}

/// The folder of `.drv` files Nix 2.8 wrote, for `--import`.
fn drv_store() -> PathBuf {
    vector("nix-2.8/drv/store")
}

/// Fails the test unless `out` is a rejection: status 1, nothing on
/// standard output, one line on standard error starting `error:`.
fn assert_rejected(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: status; stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: printed on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.starts_with("error: "), "{what}: {stderr}");
    assert!(
        stderr.ends_with('\n') && stderr.lines().count() == 1,
        "{what}: not one line: {stderr:?}"
    );
}

/// What a store holds: its files (path, kind and size) and valid paths.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    files: BTreeSet<(String, &'static str, u64)>,
    valid: BTreeSet<String>,
}

/// A store made for a test, holding one path so that every folder exists.
struct TestStore {
    _dir: tempfile::TempDir,
    root: PathBuf,
    before: Snapshot,
}

impl TestStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let seed = dir.path().join("seed");
        fs::write(&seed, "seed\n").unwrap();
        stdout_of(
            larder()
                .arg("--store")
                .arg(&root)
                .args(["store", "add"])
                .arg(&seed),
        );
        let before = snapshot(&root);
        Self {
            _dir: dir,
            root,
            before,
        }
    }

    fn larder(&self) -> Command {
        let mut cmd = larder();
        cmd.arg("--store").arg(&self.root);
        cmd
    }

    /// Runs `args` on the store; it must be rejected and change nothing.
    fn reject(&self, what: &str, args: &[&OsStr]) {
        let out = run(self.larder().args(args).stdin(Stdio::null()));
        assert_rejected(what, &out);
        self.assert_unchanged(what);
    }

    fn assert_unchanged(&self, what: &str) {
        assert_eq!(
            snapshot(&self.root),
            self.before,
            "{what}: the store changed"
        );
    }
}

fn snapshot(root: &Path) -> Snapshot {
    let mut files = BTreeSet::new();
    for top in ["nix/store", "nix/var/log", "nix/var/nix/temproots"] {
        list(root, &root.join(top), &mut files);
    }
    let store = LocalStore::open(root).unwrap();
    let valid = store
        .query_all_valid_paths()
        .unwrap()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    Snapshot { files, valid }
}

fn list(root: &Path, dir: &Path, into: &mut BTreeSet<(String, &'static str, u64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        if meta.is_dir() {
            into.insert((name, "dir", 0));
            list(root, &path, into);
        } else if meta.is_file() {
            into.insert((name, "file", meta.len()));
        } else {
            into.insert((name, "other", 0));
        }
    }
}

/// A store root that does not exist, in a folder of its own.
fn absent_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("absent");
    (dir, root)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn refs(args: &[OsString]) -> Vec<&OsStr> {
    args.iter().map(OsString::as_os_str).collect()
}

/// Corpus files that parse but are wrong against their inputs: they are
/// checked with the store open (see the module documentation).
const CHECKED_WITH_THE_STORE: &[&str] = &[
    "json/missing-input-drv.json",
    "json/missing-input-src.json",
    "json/missing-input-after-found.json",
    "json/missing-input-output.json",
    "json/legacy-wrong-output-path.json",
    "drv/missing-input-drv.drv",
    "drv/wrong-output-path.drv",
    "drv/newline-in-value.drv",
    // Nix's ATerm takes `\q` as `q`: this parses, to a derivation whose
    // output path is then wrong.
    "drv/bad-escape.drv",
];

/// Corpus files that `derivation show` accepts: it needs no input sources.
const SHOWN: &[&str] = &["json/missing-input-src.json"];

fn corpus() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["json", "drv"] {
        for entry in fs::read_dir(data(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            files.push(format!("{dir}/{name}"));
        }
    }
    files.sort();
    files
}

#[test]
fn malformed_derivations_are_rejected_by_every_command() {
    let store = TestStore::new();
    let files = corpus();
    assert!(files.len() >= 60, "the corpus shrank: {}", files.len());
    for name in &files {
        let file = data(name);
        let show = run(larder().args(["derivation", "show"]).arg(&file));
        if SHOWN.contains(&name.as_str()) {
            assert!(show.status.success(), "{name}: derivation show");
        } else {
            assert_rejected(&format!("derivation show {name}"), &show);
        }
        let add = [
            OsString::from("derivation"),
            "add".into(),
            file.clone().into(),
        ];
        let build = [
            OsString::from("build"),
            "--no-sandbox".into(),
            "--import".into(),
            drv_store().into(),
            file.clone().into(),
        ];
        for args in [&add[..], &build[..]] {
            store.reject(&format!("{args:?}"), &refs(args));
            if !CHECKED_WITH_THE_STORE.contains(&name.as_str()) {
                let (_dir, absent) = absent_root();
                let out = run(larder().arg("--store").arg(&absent).args(args));
                assert_rejected(&format!("{args:?} on a new store"), &out);
                assert!(!absent.exists(), "{name}: {args:?} created a store");
            }
        }
    }
}

/// A tiny deterministic generator, so that failures can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_prefix_of_a_drv_is_rejected() {
    let store = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let drv = fs::read(vector("nix-2.8/drv/simple.drv")).unwrap();
    let file = dir.path().join("x.drv");
    for len in 0..drv.len() {
        fs::write(&file, &drv[..len]).unwrap();
        let what = format!("prefix of {len} bytes");
        assert_rejected(
            &what,
            &run(larder().args(["derivation", "show"]).arg(&file)),
        );
        store.reject(
            &what,
            &refs(&[
                "derivation".into(),
                "add".into(),
                file.clone().into_os_string(),
            ]),
        );
        store.reject(
            &what,
            &refs(&["build".into(), "--no-sandbox".into(), file.clone().into()]),
        );
    }
}

#[test]
fn byte_flips_of_a_drv_are_rejected_or_accepted_whole() {
    let store = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let drv = fs::read(vector("nix-2.8/drv/diamond.drv")).unwrap();
    let file = dir.path().join("x.drv");
    let mut rng = Lcg(8);
    let mut rejected = 0;
    for _ in 0..200 {
        let mut damaged = drv.clone();
        let at = rng.below(damaged.len());
        // Mostly the bytes the grammar is made of, sometimes any byte.
        let pool = b"()[],\"\\/-.0az\n\xff";
        damaged[at] = if rng.below(4) == 0 {
            rng.below(256) as u8
        } else {
            pool[rng.below(pool.len())]
        };
        if damaged == drv {
            continue;
        }
        fs::write(&file, &damaged).unwrap();
        let what = format!("byte {at} set to {:#04x}", damaged[at]);
        let show = run(larder()
            .args(["derivation", "show", "--import"])
            .arg(drv_store())
            .arg(&file));
        if show.status.success() {
            // A flip inside a string the checks do not cover (the builder's
            // arguments, say) is another valid derivation.
            continue;
        }
        assert_rejected(&what, &show);
        rejected += 1;
        store.reject(
            &what,
            &refs(&["derivation".into(), "add".into(), file.clone().into()]),
        );
        store.reject(
            &what,
            &refs(&[
                "build".into(),
                "--no-sandbox".into(),
                "--import".into(),
                drv_store().into(),
                file.clone().into(),
            ]),
        );
    }
    assert!(rejected > 100, "only {rejected} flips were rejected");
}

#[test]
fn invalid_store_paths_are_rejected() {
    let store = TestStore::new();
    let malformed = [
        "",
        "abc",
        "/nix/store/abc",
        "/nix/store/00000000000000000000000000000000",
        "/nix/store/00000000000000000000000000000000-",
        "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
        "/nix/store/00000000000000000000000000000000-a b",
        "/nix/store/00000000000000000000000000000000-x/sub",
        "/tmp/00000000000000000000000000000000-x",
        "/nix/store/../store/00000000000000000000000000000000-x",
        "00000000000000000000000000000000-x\ny",
        &format!(
            "/nix/store/00000000000000000000000000000000-{}",
            "x".repeat(212)
        ),
    ];
    // Well-formed, but not in the store.
    let unknown = [
        "/nix/store/00000000000000000000000000000000-x",
        "00000000000000000000000000000000-x.drv",
    ];
    for path in malformed.iter().chain(&unknown) {
        for command in [&["path-info"][..], &["path-info", "--json"], &["log"]] {
            if command == ["path-info", "--json"] && unknown.contains(path) {
                continue; // Listed as `valid: false`, as Nix does.
            }
            let mut args = os(command);
            args.push(path.into());
            store.reject(&format!("{args:?}"), &refs(&args));
            if malformed.contains(path) {
                let (_dir, absent) = absent_root();
                let out = run(larder().arg("--store").arg(&absent).args(&args));
                assert_rejected(&format!("{args:?} on a new store"), &out);
                assert!(!absent.exists(), "{args:?} created a store");
            }
        }
    }
    // `build` takes a `.drv` store path that is neither valid nor found.
    store.reject(
        "build of an unknown .drv path",
        &refs(&os(&[
            "build",
            "--no-sandbox",
            "/nix/store/00000000000000000000000000000000-x.drv",
        ])),
    );
}

#[test]
fn store_add_rejects_bad_names_and_sources() {
    let store = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "contents\n").unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "a\n").unwrap();
    let with_fifo = dir.path().join("with-fifo");
    fs::create_dir(&with_fifo).unwrap();
    fs::write(with_fifo.join("a"), "a\n").unwrap();
    let status = Command::new("mkfifo").arg(with_fifo.join("fifo")).status();
    let have_fifo = status.is_ok_and(|s| s.success());
    let bad_file_name = dir.path().join("a b");
    fs::write(&bad_file_name, "x").unwrap();

    let mut cases: Vec<(Vec<OsString>, bool)> = Vec::new();
    for name in ["", "a b", "a/b", "é", &"x".repeat(212)] {
        for dry_run in [false, true] {
            let mut args = os(&["store", "add", "--name", name]);
            if dry_run {
                args.push("--dry-run".into());
            }
            args.push(file.clone().into());
            cases.push((args, true));
        }
    }
    cases.push((
        os(&["store", "add"])
            .into_iter()
            .chain([bad_file_name.into()])
            .collect(),
        true,
    ));
    let missing = dir.path().join("missing");
    cases.push((
        os(&["store", "add"])
            .into_iter()
            .chain([missing.into()])
            .collect(),
        true,
    ));
    for mode in ["flat", "text"] {
        cases.push((
            os(&["store", "add", "--mode", mode])
                .into_iter()
                .chain([tree.clone().into()])
                .collect(),
            true,
        ));
    }
    cases.push((
        os(&["store", "add", "--mode", "sha3"])
            .into_iter()
            .chain([file.clone().into()])
            .collect(),
        true,
    ));
    if have_fifo {
        // Found only while copying: the store is open by then.
        cases.push((
            os(&["store", "add"])
                .into_iter()
                .chain([with_fifo.clone().into()])
                .collect(),
            false,
        ));
        cases.push((
            os(&["store", "add", "--mode", "flat"])
                .into_iter()
                .chain([with_fifo.join("fifo").into()])
                .collect(),
            true,
        ));
    } else {
        eprintln!("store_add_rejects_bad_names_and_sources: no mkfifo, fifo cases skipped");
    }
    for (args, creates_no_store) in &cases {
        store.reject(&format!("{args:?}"), &refs(args));
        if *creates_no_store {
            let (_dir, absent) = absent_root();
            let out = run(larder().arg("--store").arg(&absent).args(args));
            assert_rejected(&format!("{args:?} on a new store"), &out);
            assert!(!absent.exists(), "{args:?} created a store");
        }
    }
}

#[test]
fn hash_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<Vec<OsString>> = vec![
        os(&["hash", "file"])
            .into_iter()
            .chain([dir.path().into()])
            .collect(),
        os(&["hash", "path"])
            .into_iter()
            .chain([missing.into()])
            .collect(),
        os(&["hash", "file", "--type", ""])
            .into_iter()
            .chain([file.clone().into()])
            .collect(),
        os(&["hash", "file", "--type", "SHA256"])
            .into_iter()
            .chain([file.clone().into()])
            .collect(),
        os(&["hash", "path", "--type", "sha256\n"])
            .into_iter()
            .chain([file.clone().into()])
            .collect(),
        os(&["hash", "path", "--base16", "--base32"])
            .into_iter()
            .chain([file.clone().into()])
            .collect(),
        os(&["hash", "path"]),
    ];
    for args in cases {
        assert_rejected(&format!("{args:?}"), &run(larder().args(&args)));
    }
}

/// Restores `nar` at a new DEST and checks the rejection, and that neither
/// DEST nor a scratch folder is left.
fn assert_restore_rejected(what: &str, nar: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let mut child = larder()
        .args(["nar", "restore"])
        .arg(&dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may stop reading at the first error.
    let _ = child.stdin.take().unwrap().write_all(nar);
    let out = child.wait_with_output().unwrap();
    assert_rejected(what, &out);
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{what}: left {left:?}");
}

#[test]
fn hostile_nars_are_rejected_and_leave_nothing() {
    let upstream = vector("nix-upstream/src/libutil-tests/data/nars");
    let mut count = 0;
    for entry in fs::read_dir(&upstream).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // The one valid NAR of the set (zero padding after one byte).
        if name == "regular-one-byte-zero-padding.nar" {
            continue;
        }
        assert_restore_rejected(&name, &fs::read(&path).unwrap());
        count += 1;
    }
    assert_eq!(count, 11, "hostile NARs from Nix");

    // Every prefix of a real NAR, and byte flips that break it.
    let nar = fs::read(vector("nix-2.8/nar/nar-dir-mixed.nar")).unwrap();
    for len in (0..nar.len()).step_by(8).chain([nar.len() - 1]) {
        assert_restore_rejected(&format!("prefix of {len} bytes"), &nar[..len]);
    }
    let mut rng = Lcg(11);
    let mut flips = 0;
    while flips < 40 {
        let mut damaged = nar.clone();
        let at = rng.below(damaged.len());
        damaged[at] ^= 1 << rng.below(8);
        // Flips inside file contents give another valid NAR.
        let valid = larder_store_core::nar::validate(&mut std::io::Cursor::new(&damaged)).is_ok();
        if !valid {
            assert_restore_rejected(&format!("bit flip at byte {at}"), &damaged);
            flips += 1;
        }
    }

    // An existing destination, and one whose folder is missing.
    let dir = tempfile::tempdir().unwrap();
    let exists = dir.path().join("exists");
    fs::write(&exists, "mine").unwrap();
    for dest in [exists.clone(), dir.path().join("no/such/folder")] {
        let out = run(larder()
            .args(["nar", "restore"])
            .arg(&dest)
            .stdin(fs::File::open(vector("nix-2.8/nar/nar-file.nar")).unwrap()));
        assert_rejected(&format!("restore to {}", dest.display()), &out);
    }
    assert_eq!(fs::read_to_string(&exists).unwrap(), "mine");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["exists"]);
}

/// Commands that open the store, with input that is otherwise fine.
fn store_commands(dir: &Path) -> Vec<Vec<OsString>> {
    let file = dir.join("file");
    fs::write(&file, "contents\n").unwrap();
    vec![
        os(&["store", "add"])
            .into_iter()
            .chain([file.into()])
            .collect(),
        os(&["path-info", "/nix/store/00000000000000000000000000000000-x"]),
        os(&["log", "/nix/store/00000000000000000000000000000000-x.drv"]),
        os(&["verify"]),
        os(&["derivation", "add"])
            .into_iter()
            .chain([repo_root().join("examples/hello.json").into()])
            .collect(),
        os(&["build", "--no-sandbox"])
            .into_iter()
            .chain([repo_root().join("examples/hello.json").into()])
            .collect(),
    ]
}

#[test]
fn a_store_that_is_a_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("store-file");
    fs::write(&not_a_folder, "not a store").unwrap();
    for root in [not_a_folder.clone(), not_a_folder.join("below")] {
        for args in store_commands(dir.path()) {
            let out = run(larder().arg("--store").arg(&root).args(&args));
            assert_rejected(&format!("--store {} {args:?}", root.display()), &out);
        }
    }
    assert_eq!(fs::read_to_string(&not_a_folder).unwrap(), "not a store");
}

/// Runs `larder` with `ro` mounted read-only in a mount namespace of its
/// own; `None` when this machine cannot (no `unshare`, or not allowed).
fn run_with_read_only(ro: &Path, args: &[OsString]) -> Option<Output> {
    let script = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" || exit 77; shift; exec \"$@\"";
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(ro)
        .arg(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env_remove("LARDER_STORE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    (out.status.code() != Some(77)).then_some(out)
}

#[test]
fn an_unwritable_store_is_rejected_and_unchanged() {
    let store = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    // Commands that would write: reading ones need the store's lock file,
    // which a read-only store also refuses, with as clear an error.
    let writing: Vec<Vec<OsString>> = store_commands(dir.path())
        .into_iter()
        .filter(|args| args[0] != "path-info" && args[0] != "log" && args[0] != "verify")
        .collect();
    let is_root = rustix::process::geteuid().is_root();
    // The whole root read-only, then only its `nix/store`, with the
    // database writable.
    for ro in [store.root.clone(), store.root.join("nix/store")] {
        for args in &writing {
            let mut full: Vec<OsString> = vec!["--store".into(), store.root.clone().into()];
            full.extend(args.iter().cloned());
            let what = format!("read-only {}: {args:?}", ro.display());
            if is_root {
                let Some(out) = run_with_read_only(&ro, &full) else {
                    eprintln!(
                        "SKIPPED {what}: running as root and cannot mount read-only (no unshare or not allowed)"
                    );
                    return;
                };
                assert_rejected(&what, &out);
            } else {
                fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
                let out = run(larder().args(&full));
                fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
                assert_rejected(&what, &out);
            }
            store.assert_unchanged(&what);
        }
    }
}

#[test]
fn a_relative_store_root_works() {
    // `--store ROOT` relative to the current folder once made every add
    // fail on its own lock.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file"), "x\n").unwrap();
    let added = stdout_of(
        larder()
            .current_dir(dir.path())
            .args(["--store", "root", "store", "add", "file"]),
    );
    let listed = stdout_of(larder().current_dir(dir.path()).args([
        "--store",
        "root",
        "path-info",
        added.trim(),
    ]));
    assert_eq!(listed, added);
}
