//! The relocating builder (no sandbox, a store under a root of its own)
//! driven through the generic lifecycle into temporary stores.
//!
//! These need a `/nix/store` folder on the host to mount the store on, and
//! root or unprivileged user namespaces; without them each test prints why
//! it skips.

#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use larder_builder::test_support::{lock_and_register, run_to_unprepared};
use larder_builder::{BuildError, BuildOutputs, BuildRequest, BuildSettings, prepare};
use larder_builder_linux_chroot::RelocatingBuilder;
use larder_local_store::LocalStore;
use larder_store_core::derivation::{Derivation, DerivationOutput};
use larder_store_core::{HashAlgo, StoreDir, StorePath};

/// Whether the host can relocate a store, or `false` with the reason
/// printed.
fn can_relocate() -> bool {
    if !Path::new("/nix/store").is_dir() {
        eprintln!("skipped: needs a /nix/store folder to mount the store on");
        return false;
    }
    if let Err(error) = larder_builder_linux_chroot::check_support() {
        eprintln!("skipped: needs root or user namespaces: {error}");
        return false;
    }
    true
}

struct TestStore {
    dir: tempfile::TempDir,
    store: Arc<LocalStore>,
}

impl TestStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path().join("root")).unwrap());
        Self { dir, store }
    }

    fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    fn real(&self, path: &StorePath) -> PathBuf {
        self.store.layout().real_path(path)
    }

    /// A whole build with the relocating builder: the log and the result.
    fn build(&self, drv: &Derivation) -> (String, Result<BuildOutputs, BuildError>) {
        let drv_path = drv.drv_path(self.store_dir());
        fs::write(self.real(&drv_path), drv.to_aterm(self.store_dir())).unwrap();
        let request = BuildRequest {
            drv_path,
            drv: drv.clone(),
            check: false,
            settings: BuildSettings {
                build_dir: Some(self.dir.path().join("builds")),
                cores: 1,
                ..BuildSettings::default()
            },
        };
        let running = match prepare(&self.store, request, Box::new(RelocatingBuilder::new()))
            .and_then(|p| p.start())
        {
            Ok(r) => r,
            Err(e) => return (String::new(), Err(e)),
        };
        let (log, result) = run_to_unprepared(running, &self.store);
        let log = String::from_utf8_lossy(&log).into_owned();
        let result = result.and_then(|unprepared| lock_and_register(unprepared, &self.store));
        (log, result)
    }
}

/// A `/bin/sh -c SCRIPT` derivation, input-addressed with a made-up path.
fn sh_drv(store_dir: &StoreDir, name: &str, program: &str, script: &str) -> Derivation {
    let mut drv = Derivation::new(name).unwrap();
    drv.system = "x86_64-linux".to_owned();
    drv.builder = program.to_owned();
    drv.args = vec!["-c".to_owned(), script.to_owned()];
    drv.env.insert("name".to_owned(), name.to_owned());
    drv.env.insert("builder".to_owned(), program.to_owned());
    drv.env.insert("system".to_owned(), drv.system.clone());
    let hash = HashAlgo::Sha256.digest(format!("{name}\0{script}"));
    let path = store_dir.make_output_path("out", &hash, name).unwrap();
    drv.env.insert("out".to_owned(), store_dir.display(&path));
    drv.insert_output("out", DerivationOutput::InputAddressed(path))
        .unwrap();
    drv
}

#[test]
fn a_build_writes_the_logical_store_and_lands_in_the_real_one() {
    if !can_relocate() {
        return;
    }
    let t = TestStore::new();
    // What the builder sees: its output under /nix/store, its own process
    // group, its working directory, and SIGPIPE not ignored (bit 12 of
    // SigIgn), all with shell builtins (no PATH is set).
    let script = r#"
        read -r stat < /proc/self/stat
        set -- $stat
        pgrp=$5
        ignored=none
        while read -r key value; do
            case "$key" in SigIgn:) ignored=$value ;; esac
        done < /proc/self/status
        echo "pid=$1 pgrp=$pgrp cwd=$PWD top=$NIX_BUILD_TOP" > $out
        echo "sigign=$ignored"
        echo "to the log"
    "#;
    let drv = sh_drv(t.store_dir(), "relocated", "/bin/sh", script);
    let (log, result) = t.build(&drv);
    let outputs = result.unwrap_or_else(|e| panic!("{e}\nlog:\n{log}"));
    let out = &outputs.outputs["out"];
    let written = fs::read_to_string(t.real(&out.path)).unwrap();
    let fields: Vec<&str> = written.split_whitespace().collect();
    let [pid, pgrp, cwd, top] = fields.as_slice() else {
        panic!("unexpected output {written:?}");
    };
    assert_eq!(
        pid.strip_prefix("pid="),
        pgrp.strip_prefix("pgrp="),
        "{written}"
    );
    assert_eq!(cwd.strip_prefix("cwd="), top.strip_prefix("top="));
    assert!(log.contains("to the log"), "{log}");
    let mask = log
        .lines()
        .find_map(|l| l.strip_prefix("sigign="))
        .and_then(|m| u64::from_str_radix(m, 16).ok())
        .unwrap_or_else(|| panic!("no signal mask in {log:?}"));
    assert_eq!(mask & (1 << 12), 0, "SIGPIPE is ignored: {mask:x}");
    // The host's /nix/store was not touched: the mount stayed private.
    assert!(!Path::new("/nix/store").join(out.path.as_str()).exists());
    assert!(t.store.is_valid(&out.path).unwrap());
}

#[test]
fn a_missing_builder_program_is_named() {
    if !can_relocate() {
        return;
    }
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "missing", "/nonexistent/sh", "true");
    let (_, result) = t.build(&drv);
    let message = result.expect_err("no such program").to_string();
    assert!(message.contains("executing /nonexistent/sh"), "{message}");
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn a_failing_builder_fails_the_build_with_its_status() {
    if !can_relocate() {
        return;
    }
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "fails", "/bin/sh", "echo oops; exit 3");
    let (log, result) = t.build(&drv);
    let message = result.expect_err("exit 3").to_string();
    assert!(message.contains("exit code 3"), "{message}");
    assert!(log.contains("oops"), "{log}");
}
