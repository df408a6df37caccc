//! The local store against real Nix 2.8: a store larder wrote passes Nix's
//! `--verify --check-contents` and `nix path-info` agrees with larder's; a
//! store Nix wrote (added paths, an instantiated `.drv`, a built output and
//! its log) reads the same through larder and passes larder's verify; and
//! a `larder` killed at any point while adding leaves a store both accept.
//! Tests that need Nix skip, saying so, when `nix-store` is absent.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_local_store::LocalStore;
use serde_json::Value;

use crate::support::{larder, run, stdout_of, vector};

/// Whether Nix 2.8 is installed; prints why a test is skipped when not.
fn have_nix(test: &str) -> bool {
    let found = Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED {test}: nix-store is not installed (see peer/nix/setup.sh)");
    }
    found
}

/// A Nix command pinned to the settings the oracle scripts use, on the
/// store rooted at `root`.
fn nix(program: &str, root: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env(
        "NIX_CONFIG",
        "experimental-features = nix-command\nsubstituters =\nbuild-users-group =\n\
         sandbox-paths = /bin/sh=/bin/busybox\nsandbox-fallback = false\nwarn-dirty = false",
    )
    .env("NIX_PATH", "")
    .env_remove("NIX_REMOTE")
    .arg("--store")
    .arg(format!("local?root={}", root.display()));
    cmd
}

fn larder_at(root: &Path) -> Command {
    let mut cmd = larder();
    cmd.arg("--store").arg(root);
    cmd
}

/// `path-info --json` entries by path.
fn by_path(json: &str) -> BTreeMap<String, Value> {
    let entries: Vec<Value> = serde_json::from_str(json).unwrap();
    entries
        .into_iter()
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e))
        .collect()
}

fn write_tree(dir: &Path, seed: usize, files: usize) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for i in 0..files {
        let sub = if i % 3 == 0 { "sub" } else { "sub/deeper" };
        fs::write(
            dir.join(sub).join(format!("f{i}")),
            format!("{seed}:{i}\n").repeat(50 + i),
        )
        .unwrap();
    }
    fs::write(dir.join("run"), format!("#!/bin/sh\necho {seed}\n")).unwrap();
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("run", dir.join("link")).unwrap();
}

/// Adds the `.drv` vectors through `larder derivation add`, inputs first,
/// and their input sources from `drv/data`; returns the `.drv` paths added.
fn add_drv_vectors(root: &Path) -> Vec<String> {
    let cases: Vec<Value> = fs::read_to_string(vector("nix-2.8/drv.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for data in fs::read_dir(vector("nix-2.8/drv/data")).unwrap() {
        let data = data.unwrap().path();
        for mode in ["nar", "text", "flat"] {
            stdout_of(
                larder_at(root)
                    .args(["store", "add", "--mode", mode])
                    .arg(&data),
            );
        }
    }
    let mut added = Vec::new();
    let mut pending: Vec<&Value> = cases.iter().collect();
    loop {
        let before = pending.len();
        pending.retain(|case| {
            let file = vector(&format!("nix-2.8/{}", case["aterm_file"].as_str().unwrap()));
            let out = run(larder_at(root).args(["derivation", "add"]).arg(&file));
            if !out.status.success() {
                return true;
            }
            let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            assert_eq!(path, case["drv_path"].as_str().unwrap(), "{}", case["id"]);
            added.push(path);
            false
        });
        if pending.len() == before {
            break;
        }
    }
    added
}

#[test]
fn larder_store_passes_nix_verify_and_path_info_agrees() {
    if !have_nix("larder_store_passes_nix_verify_and_path_info_agrees") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tree = dir.path().join("tree");
    write_tree(&tree, 1, 20);
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello\n").unwrap();

    let mut paths = Vec::new();
    for (mode, src) in [
        ("nar", &tree),
        ("flat", &file),
        ("text", &file),
        ("nar", &file),
    ] {
        let out = stdout_of(
            larder_at(&root)
                .args(["store", "add", "--mode", mode])
                .arg(src),
        );
        paths.push(out.trim().to_owned());
    }
    let drvs = add_drv_vectors(&root);
    assert!(drvs.len() >= 10, "only {} derivations added", drvs.len());
    paths.extend(drvs.iter().cloned());

    // A build log, written by the library as a build would.
    let store = LocalStore::open(&root).unwrap();
    let drv = store.parse_path(&drvs[0]).unwrap();
    store.add_build_log(&drv, b"building...\nok\n").unwrap();
    drop(store);

    let verify = run(nix("nix-store", &root).args(["--verify", "--check-contents"]));
    assert!(
        verify.status.success(),
        "Nix rejects the store: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let log = stdout_of(nix("nix-store", &root).arg("--read-log").arg(&drvs[0]));
    assert_eq!(log, "building...\nok\n");

    let nix_info = by_path(&stdout_of(nix("nix", &root).args([
        "path-info",
        "--json",
        "--all",
    ])));
    let ours = by_path(&stdout_of(
        larder_at(&root).args(["path-info", "--json"]).args(&paths),
    ));
    assert_eq!(
        nix_info.len(),
        stdout_of(nix("nix", &root).args(["path-info", "--all"]))
            .lines()
            .count()
    );
    for (path, entry) in &ours {
        let theirs = nix_info
            .get(path)
            .unwrap_or_else(|| panic!("Nix lacks {path}"));
        for key in [
            "narHash",
            "narSize",
            "references",
            "ca",
            "deriver",
            "registrationTime",
        ] {
            assert_eq!(entry.get(key), theirs.get(key), "{path}: {key}");
        }
    }
    // And larder's own verify agrees.
    stdout_of(larder_at(&root).args(["verify", "--check-contents"]));
}

#[test]
fn nix_store_reads_through_larder() {
    if !have_nix("nix_store_reads_through_larder") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let file = dir.path().join("fixed.txt");
    fs::write(&file, "fixed\n").unwrap();
    let tree = dir.path().join("tree");
    write_tree(&tree, 2, 5);
    let fixed = stdout_of(
        nix("nix-store", &root)
            .args(["--add-fixed", "sha256"])
            .arg(&file),
    );
    let recursive = stdout_of(nix("nix-store", &root).arg("--add").arg(&tree));
    let expr = dir.path().join("t.nix");
    fs::write(
        &expr,
        "derivation { name = \"t\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [\"-c\" \"echo building t; echo hi > $out\"]; }",
    )
    .unwrap();
    let drv = stdout_of(nix("nix-instantiate", &root).arg(&expr))
        .trim()
        .to_owned();
    let built = stdout_of(nix("nix-store", &root).arg("--realise").arg(&drv))
        .trim()
        .to_owned();

    let nix_info = by_path(&stdout_of(nix("nix", &root).args([
        "path-info",
        "--json",
        "--all",
    ])));
    let all: Vec<&String> = nix_info.keys().collect();
    let ours = by_path(&stdout_of(
        larder_at(&root).args(["path-info", "--json"]).args(&all),
    ));
    // Field for field, the same objects.
    assert_eq!(ours, nix_info);
    for path in [fixed.trim(), recursive.trim(), &drv, &built] {
        assert!(ours.contains_key(path), "{path}");
    }
    assert!(ours[&built]["deriver"] == Value::String(drv.clone()));

    stdout_of(larder_at(&root).args(["verify", "--check-contents"]));
    let log = stdout_of(larder_at(&root).args(["log", &drv]));
    assert!(log.contains("building t"), "{log:?}");
    let log_of_output = stdout_of(larder_at(&root).args(["log", &built]));
    assert_eq!(log, log_of_output);

    let store = LocalStore::open(&root).unwrap();
    let drv_path = store.parse_path(&drv).unwrap();
    let outputs = store.query_derivation_outputs(&drv_path).unwrap();
    assert_eq!(store.print_path(&outputs["out"]), built);
    let parsed = store.read_derivation(&drv_path).unwrap();
    assert_eq!(parsed.drv_path(store.store_dir()), drv_path);
    assert_eq!(
        store.query_valid_derivers(&outputs["out"]).unwrap(),
        [drv_path].into()
    );
}

/// Kills `larder store add` at many points of its run; after each kill the
/// store verifies (larder's and, when installed, Nix's check) and the next
/// run completes.
#[test]
fn killed_adds_leave_a_store_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let with_nix = have_nix("killed_adds_leave_a_store_that_verifies (Nix's verify part)");

    // How long one uninterrupted add takes, to spread the kills over it.
    let probe = dir.path().join("probe");
    write_tree(&probe, 0, 60);
    let start = Instant::now();
    stdout_of(
        larder_at(&dir.path().join("probe-root"))
            .args(["store", "add"])
            .arg(&probe),
    );
    let span = start.elapsed().max(Duration::from_millis(5));

    let rounds: u32 = 24;
    let mut killed = 0;
    let mut outcomes = Vec::new();
    for round in 0..rounds {
        let src = dir.path().join(format!("src{round}"));
        write_tree(&src, round as usize + 1, 60);
        let expected = stdout_of(larder().args(["store", "add", "--dry-run"]).arg(&src));

        let mut child = larder_at(&root)
            .args(["store", "add"])
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(span * round / rounds + Duration::from_micros(200) * round);
        // SIGKILL: no destructor, no cleanup.
        if child.kill().is_ok() {
            killed += 1;
        }
        let status = child.wait().unwrap();
        // Where the kill landed: before the path became valid, or after.
        let valid = run(larder_at(&root).args(["path-info"]).arg(expected.trim()))
            .status
            .success();
        outcomes.push((status.success(), valid));

        let check = run(larder_at(&root).args(["verify", "--check-contents"]));
        assert!(
            check.status.success(),
            "round {round}: larder verify fails: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        if with_nix {
            let check = run(nix("nix-store", &root).args(["--verify", "--check-contents"]));
            assert!(
                check.status.success(),
                "round {round}: Nix's verify fails: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let added = stdout_of(larder_at(&root).args(["store", "add"]).arg(&src));
        assert_eq!(added, expected, "round {round}");
        stdout_of(larder_at(&root).args(["path-info"]).arg(added.trim()));
    }
    assert!(killed > 0, "no process was killed mid-way");
    let interrupted = outcomes.iter().filter(|(done, _)| !done).count();
    let interrupted_invalid = outcomes
        .iter()
        .filter(|(done, valid)| !done && !valid)
        .count();
    eprintln!(
        "killed_adds: {interrupted} of {rounds} adds killed, {interrupted_invalid} before registration"
    );
    assert!(
        interrupted_invalid > 0,
        "no kill landed before registration"
    );
    stdout_of(larder_at(&root).args(["verify", "--check-contents"]));
    // The next open sweeps what the killed processes left behind.
    let store = LocalStore::open(&root).unwrap();
    let leftovers = fs::read_dir(store.layout().scratch_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
}

#[test]
fn concurrent_adds_of_one_path_agree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let src = dir.path().join("src");
    write_tree(&src, 7, 40);
    let children: Vec<_> = (0..4)
        .map(|_| {
            larder_at(&root)
                .args(["store", "add"])
                .arg(&src)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{outputs:?}");
    stdout_of(larder_at(&root).args(["verify", "--check-contents"]));
}

#[test]
fn store_commands_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bad_json = dir.path().join("bad.json");
    fs::write(&bad_json, "{\"version\": 4,").unwrap();
    let missing = PathBuf::from("/nix/store/00000000000000000000000000000000-missing");
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["derivation".into(), "add".into(), bad_json.clone().into()],
        vec!["path-info".into(), missing.clone().into()],
        vec!["path-info".into(), "not-a-path".into()],
        vec![
            "log".into(),
            "/nix/store/00000000000000000000000000000000-x.drv".into(),
        ],
        vec![
            "store".into(),
            "add".into(),
            dir.path().join("absent").into(),
        ],
        vec![
            "store".into(),
            "add".into(),
            "--mode".into(),
            "flat".into(),
            dir.path().into(),
        ],
    ];
    for args in cases {
        let out = run(larder_at(&root).args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let listed = stdout_of(larder_at(&root).args(["path-info", "--json"]).arg(&missing));
    assert_eq!(
        listed.trim(),
        format!("[{{\"path\":\"{}\",\"valid\":false}}]", missing.display())
    );
    // A corrupt database is a clear error, not a crash.
    let db = root.join("nix/var/nix/db/db.sqlite");
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    fs::write(&db, vec![b'x'; 4096]).unwrap();
    let out = run(larder_at(&root).args(["verify"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("db.sqlite"));
}
