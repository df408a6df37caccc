//! Derivations and bounded `larder build` runs, shared by the build tests
//! (goals, load, soak): a scratch folder with a store, derivations made in
//! memory with `larder-store-core`, a runner that turns a hang into a test
//! failure, and store verification by larder and by Nix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{ContentAddress, ContentAddressMethod, Derivation, HashAlgo, StoreDir};

use crate::support::larder;

/// A scratch folder with a store under it and a folder of derivations.
pub struct Scratch {
    /// The folder, deleted when the scratch is dropped.
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The store root (`--store`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The folder derivation files are written to.
    pub fn drvs(&self) -> PathBuf {
        let dir = self.dir.path().join("drvs");
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `drv` as version 4 JSON and returns the file.
    pub fn write(&self, file: &str, drv: &Derivation) -> PathBuf {
        let path = self.drvs().join(file);
        fs::write(&path, drv.to_json_string()).unwrap();
        path
    }

    /// Writes `drv` as a `.drv` file named by its store path's base name,
    /// so that `larder build` finds it by that name when another
    /// derivation in the folder uses it.
    pub fn write_aterm(&self, drv: &Derivation) -> PathBuf {
        let path = self.drvs().join(drv.drv_path(&store_dir()).to_string());
        fs::write(&path, drv.to_aterm(&store_dir())).unwrap();
        path
    }

    /// `larder --store ROOT build ARGS... FILES...`, run to its end within
    /// [`crate::scenarios::BOUND`].
    pub fn build(&self, args: &[&str], files: &[PathBuf]) -> Output {
        self.build_within(crate::scenarios::BOUND, args, files)
    }

    /// `larder --store ROOT build ARGS... FILES...`, run to its end within
    /// `bound`.
    pub fn build_within(&self, bound: Duration, args: &[&str], files: &[PathBuf]) -> Output {
        let mut cmd = larder();
        cmd.arg("--store").arg(self.store()).arg("build").args(args);
        cmd.args(files);
        run_bounded(&mut cmd, bound)
    }

    /// `larder --store ROOT ARGS...` within `bound`.
    pub fn larder_within(&self, bound: Duration, args: &[&str]) -> Output {
        let mut cmd = larder();
        cmd.arg("--store").arg(self.store()).args(args);
        run_bounded(&mut cmd, bound)
    }

    /// Whether `path` is valid in the store.
    pub fn is_valid(&self, path: &str) -> bool {
        self.larder_within(Duration::from_secs(60), &["path-info", path])
            .status
            .success()
    }

    /// The content of the regular file at the store path `path`.
    pub fn read(&self, path: &str) -> Vec<u8> {
        fs::read(self.store().join(path.trim_start_matches('/'))).unwrap()
    }

    /// `larder verify --check-contents`, and Nix's own verification when
    /// Nix is installed.
    pub fn assert_verifies(&self) {
        self.assert_verifies_with(true);
    }

    /// `larder verify --check-contents`, and Nix's too when `with_nix` and
    /// Nix is installed.
    pub fn assert_verifies_with(&self, with_nix: bool) {
        let out = self.larder_within(Duration::from_secs(120), &["verify", "--check-contents"]);
        assert!(out.status.success(), "larder verify: {}", text(&out.stderr));
        if !with_nix {
            return;
        }
        if nix_store_available() {
            let out = Command::new("nix-store")
                .arg("--store")
                .arg(format!("local?root={}", self.store().display()))
                .args(["--verify", "--check-contents"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nix-store --verify: {}",
                text(&out.stderr)
            );
            assert!(
                !text(&out.stderr).contains("error"),
                "nix-store --verify complained: {}",
                text(&out.stderr)
            );
        } else {
            eprintln!("note: nix-store is not installed; only larder verified the store");
        }
    }
}

/// Runs `cmd`, reading its output as it comes; if it has not ended after
/// `bound`, interrupts it (larder then kills its builders), kills it, and
/// fails: a hang is what the build tests look for.
pub fn run_bounded(cmd: &mut Command, bound: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > bound {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_thread.join().unwrap_or_default();
            panic!(
                "HANG: {cmd:?} did not finish within {bound:?}; its stderr:\n{}",
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// Bytes as text, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines of a run's standard output.
pub fn output_lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// Whether Nix's `nix-store` can be run here.
pub fn nix_store_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `larder build` can use the sandbox here; says why not.
pub fn sandbox_available() -> bool {
    if let Err(error) = larder_builder_linux_chroot::check_support() {
        eprintln!("skipped in the sandbox: it needs root or user namespaces: {error}");
        return false;
    }
    if let Err(error) = larder_builder_linux_chroot::default_sandbox_paths() {
        eprintln!("skipped in the sandbox: {error}");
        return false;
    }
    true
}

/// The sandbox modes to run a test in: without, and with when available.
pub fn modes() -> Vec<&'static [&'static str]> {
    let mut modes: Vec<&'static [&'static str]> = vec![&["--no-sandbox"]];
    if sandbox_available() {
        modes.push(&[]);
    }
    modes
}

/// The logical store directory, `/nix/store`.
pub fn store_dir() -> StoreDir {
    StoreDir::default()
}

/// A `/bin/sh -c SCRIPT` derivation without outputs yet.
pub fn base(name: &str, script: &str) -> Derivation {
    let mut drv = Derivation::new(name).unwrap();
    drv.system = "x86_64-linux".to_owned();
    drv.builder = "/bin/sh".to_owned();
    drv.args = vec!["-c".to_owned(), script.to_owned()];
    for (key, value) in [
        ("name", name),
        ("builder", "/bin/sh"),
        ("system", "x86_64-linux"),
        ("PATH", "/usr/bin:/bin"),
    ] {
        drv.env.insert(key.to_owned(), value.to_owned());
    }
    drv
}

/// A fixed-output derivation producing one file whose hash (flat, or NAR
/// with [`ContentAddressMethod::Nar`]) is that of `content_hash_of`.
pub fn fixed(
    name: &str,
    script: &str,
    method: ContentAddressMethod,
    content_hash_of: &[u8],
) -> Derivation {
    let mut drv = base(name, script);
    let hash = match method {
        ContentAddressMethod::Nar => nar_hash_of_file(content_hash_of),
        _ => HashAlgo::Sha256.digest(content_hash_of),
    };
    drv.insert_output(
        "out",
        DerivationOutput::Fixed(ContentAddress { method, hash }),
    )
    .unwrap();
    let path = drv.output_paths(&store_dir())["out"].clone().unwrap();
    drv.env.insert("out".to_owned(), store_dir().display(&path));
    drv
}

/// A floating content-addressed derivation (NAR, SHA-256) with one output.
pub fn floating(name: &str, script: &str) -> Derivation {
    let mut drv = base(name, script);
    drv.insert_output(
        "out",
        DerivationOutput::Floating {
            method: ContentAddressMethod::Nar,
            algo: HashAlgo::Sha256,
        },
    )
    .unwrap();
    drv.env.insert(
        "out".to_owned(),
        larder_builder::rewrite::hash_placeholder("out"),
    );
    drv
}

/// The NAR hash (SHA-256) of a regular file holding `content`.
pub fn nar_hash_of_file(content: &[u8]) -> larder_store_core::Hash {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, content).unwrap();
    larder_store_core::nar::hash_path(&file).unwrap().hash
}

/// The path of `drv`'s output `out` (known in advance).
pub fn out_path(drv: &Derivation) -> String {
    store_dir().display(&drv.output_paths(&store_dir())["out"].clone().unwrap())
}

/// An input-addressed derivation whose output paths are filled in, with
/// the given input derivations (their outputs `out`), which must be in
/// `known` by `.drv` path or among `inputs`.
pub fn input_addressed(
    name: &str,
    script: &str,
    inputs: &[&Derivation],
    known: &BTreeMap<larder_store_core::StorePath, Derivation>,
) -> Derivation {
    let mut drv = base(name, script);
    drv.insert_output("out", DerivationOutput::Deferred)
        .unwrap();
    drv.env.insert("out".to_owned(), String::new());
    let mut local = BTreeMap::new();
    for input in inputs {
        let path = input.drv_path(&store_dir());
        drv.input_drvs
            .insert(path.clone(), BTreeSet::from(["out".to_owned()]));
        local.insert(path, (*input).clone());
    }
    let mut cache = HashModuloCache::new(store_dir());
    let mut source = |p: &larder_store_core::StorePath| -> Result<Derivation, String> {
        local
            .get(p)
            .or_else(|| known.get(p))
            .cloned()
            .ok_or_else(|| format!("unknown {p}"))
    };
    drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
    drv
}

/// A shell loop writing about `kib` KiB to stdout in 4 KiB lines, pausing
/// `pause` (a `sleep` argument, or empty for none) after each: a chatty
/// builder that blocks on a full pipe if nobody reads it.
pub fn chatter(kib: u32, pause: &str) -> String {
    let sleep = if pause.is_empty() {
        String::new()
    } else {
        format!(" sleep {pause};")
    };
    format!(
        "i=0; while [ $i -lt {} ]; do printf '%4095s\\n' x;{sleep} i=$((i+1)); done; ",
        kib / 4
    )
}

/// How many times `needle` occurs in the run's standard error.
pub fn count_in_stderr(out: &Output, needle: &str) -> usize {
    text(&out.stderr).matches(needle).count()
}

/// The lines of a file, or none when it does not exist.
pub fn lines_of(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}
