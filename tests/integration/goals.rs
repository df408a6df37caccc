//! `larder build` end to end: the real binary, a real store, real builders.
//!
//! The hang tests are Nix's #15846 and its relatives: builds whose outputs
//! collide on one lock. Each run has a generous bound; reaching it fails
//! the test (after interrupting larder, so that nothing is left running),
//! since a hang is exactly the bug they look for. Tests that need the
//! sandbox or Nix say why they skip when it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{
    ContentAddress, ContentAddressMethod, Derivation, HashAlgo, StoreDir, StorePath,
};

use crate::support::{larder, repo_root, vector};

/// How long a build run may take before it counts as hung. The slowest
/// run here takes about ten seconds; Nix 2.8 hangs forever on the first.
const BOUND: Duration = Duration::from_secs(180);

/// A scratch folder with a store under it and a folder of derivations.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn drvs(&self) -> PathBuf {
        let dir = self.dir.path().join("drvs");
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `drv` as version 4 JSON and returns the file.
    fn write(&self, file: &str, drv: &Derivation) -> PathBuf {
        let path = self.drvs().join(file);
        fs::write(&path, drv.to_json_string()).unwrap();
        path
    }

    /// `larder --store ROOT build ARGS...`, run to its end within
    /// [`BOUND`].
    fn build(&self, args: &[&str], files: &[PathBuf]) -> Output {
        let mut cmd = larder();
        cmd.arg("--store").arg(self.store()).arg("build").args(args);
        cmd.args(files);
        run_bounded(&mut cmd, BOUND)
    }

    fn larder(&self, args: &[&str]) -> Output {
        let mut cmd = larder();
        cmd.arg("--store").arg(self.store()).args(args);
        run_bounded(&mut cmd, BOUND)
    }

    fn is_valid(&self, path: &str) -> bool {
        self.larder(&["path-info", path]).status.success()
    }

    /// `larder verify --check-contents`, and Nix's own verification when
    /// Nix is installed.
    fn assert_verifies(&self) {
        let out = self.larder(&["verify", "--check-contents"]);
        assert!(out.status.success(), "larder verify: {}", text(&out.stderr));
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
/// fails.
fn run_bounded(cmd: &mut Command, bound: Duration) -> Output {
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
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn nix_store_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `larder build` can use the sandbox here; says why not.
fn sandbox_available() -> bool {
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
fn modes() -> Vec<&'static [&'static str]> {
    let mut modes: Vec<&'static [&'static str]> = vec![&["--no-sandbox"]];
    if sandbox_available() {
        modes.push(&[]);
    }
    modes
}

fn store_dir() -> StoreDir {
    StoreDir::default()
}

/// A `/bin/sh -c SCRIPT` derivation without outputs yet.
fn base(name: &str, script: &str) -> Derivation {
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

/// A fixed-output derivation producing one file.
fn fixed(
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

/// The NAR hash (SHA-256) of a regular file holding `content`.
fn nar_hash_of_file(content: &[u8]) -> larder_store_core::Hash {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, content).unwrap();
    larder_store_core::nar::hash_path(&file).unwrap().hash
}

/// The store path a fixed output of this kind gets.
fn fixed_path(drv: &Derivation) -> String {
    store_dir().display(&drv.output_paths(&store_dir())["out"].clone().unwrap())
}

/// An input-addressed derivation whose output paths are filled in, with
/// the given input derivations (known by `.drv` path in `known`).
fn input_addressed(
    name: &str,
    script: &str,
    inputs: &[&Derivation],
    known: &BTreeMap<StorePath, Derivation>,
) -> Derivation {
    let mut drv = base(name, script);
    drv.insert_output("out", DerivationOutput::Deferred)
        .unwrap();
    drv.env.insert("out".to_owned(), String::new());
    for input in inputs {
        drv.input_drvs.insert(
            input.drv_path(&store_dir()),
            BTreeSet::from(["out".to_owned()]),
        );
    }
    let mut cache = HashModuloCache::new(store_dir());
    let mut source = |p: &StorePath| -> Result<Derivation, String> {
        known.get(p).cloned().ok_or_else(|| format!("unknown {p}"))
    };
    drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
    drv
}

/// Writes about `kib` KiB to stdout in 4 KiB lines, a pause after each:
/// a chatty, slow builder that blocks on a full pipe if nobody reads it.
fn chatter(kib: u32, pause: &str) -> String {
    format!(
        "i=0; while [ $i -lt {} ]; do printf '%4095s\\n' x; sleep {pause}; i=$((i+1)); done; ",
        kib / 4
    )
}

fn output_lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn examples_build_with_and_without_the_sandbox() {
    let examples = repo_root().join("examples");
    let mut files: Vec<PathBuf> = fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "examples: {files:?}");
    let mut results = Vec::new();
    for mode in modes() {
        let scratch = Scratch::new();
        let out = scratch.build(mode, &files);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        let lines = output_lines(&out);
        assert!(lines.iter().any(|l| l.ends_with("-hello")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.ends_with("-multi-output-dev")),
            "{lines:?}"
        );
        let dag_d = lines.iter().find(|l| l.ends_with("-dag-d")).unwrap();
        let real = scratch.store().join(dag_d.trim_start_matches('/'));
        assert_eq!(
            fs::read_to_string(real).unwrap(),
            "d, from:\na\nb\nfetched content\n"
        );
        // A second run finds everything valid.
        let again = scratch.build(mode, &files);
        assert!(again.status.success(), "{}", text(&again.stderr));
        assert_eq!(output_lines(&again), lines);
        scratch.assert_verifies();
        results.push(lines);
    }
    // The sandbox changes nothing in the outputs' paths.
    results.dedup();
    assert_eq!(results.len(), 1);
}

/// Nix #15846: two fixed-output derivations with wrong hashes produce,
/// quickly, the content a third declares correctly and builds slowly while
/// writing over 1 MiB of log. The wrong ones' real path is the slow one's
/// declared path, whose lock the slow one holds. Nix 2.8 hangs here.
#[test]
fn issue_15846_fixed_outputs_with_wrong_hashes_do_not_hang() {
    let content = b"content-15846\n";
    let write = "printf 'content-15846\\n' > $out";
    for mode in modes() {
        let scratch = Scratch::new();
        let slow = fixed(
            "fixed",
            &format!("{}{write}", chatter(1100, "0.02")),
            ContentAddressMethod::Flat,
            content,
        );
        let bad1 = fixed(
            "fixed",
            &format!("sleep 0.5; {write}"),
            ContentAddressMethod::Flat,
            b"not the content 1",
        );
        let bad2 = fixed(
            "fixed",
            &format!("sleep 1; {write}"),
            ContentAddressMethod::Flat,
            b"not the content 2",
        );
        let slow_path = fixed_path(&slow);
        let files = [
            scratch.write("slow.json", &slow),
            scratch.write("bad1.json", &bad1),
            scratch.write("bad2.json", &bad2),
        ];
        let mut args = vec!["-j3", "--keep-going"];
        args.extend_from_slice(mode);
        let started = Instant::now();
        let out = scratch.build(&args, &files);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(102), "{mode:?}: {stderr}");
        assert_eq!(
            output_lines(&out),
            std::slice::from_ref(&slow_path),
            "{stderr}"
        );
        assert_eq!(
            stderr
                .matches("hash mismatch in fixed-output derivation")
                .count(),
            2,
            "{stderr}"
        );
        assert!(scratch.is_valid(&slow_path));
        let real = scratch.store().join(slow_path.trim_start_matches('/'));
        assert_eq!(fs::read(real).unwrap(), content);
        scratch.assert_verifies();
        eprintln!("#15846 {mode:?}: {:?}", started.elapsed());

        // Without --keep-going the first mismatch stops the run; it still
        // ends at once, with the same status.
        let scratch = Scratch::new();
        let files = [
            scratch.write("slow.json", &slow),
            scratch.write("bad1.json", &bad1),
            scratch.write("bad2.json", &bad2),
        ];
        let mut args = vec!["-j3"];
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &files);
        assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
        scratch.assert_verifies();
    }
}

/// Two fixed-output derivations with the same name, each declaring the
/// hash of the other's content: each one's real path is the other's
/// declared path. Both fail; neither waits for the other forever.
#[test]
fn swapped_hashes_both_fail_without_hanging() {
    for mode in modes() {
        let scratch = Scratch::new();
        let a = fixed(
            "swapped",
            &format!("{}printf 'A\\n' > $out", chatter(256, "0.01")),
            ContentAddressMethod::Flat,
            b"B\n",
        );
        let b = fixed(
            "swapped",
            &format!("{}printf 'B\\n' > $out", chatter(384, "0.01")),
            ContentAddressMethod::Flat,
            b"A\n",
        );
        let files = [scratch.write("a.json", &a), scratch.write("b.json", &b)];
        let mut args = vec!["-j2", "--keep-going"];
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &files);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(102), "{mode:?}: {stderr}");
        assert_eq!(
            stderr
                .matches("hash mismatch in fixed-output derivation")
                .count(),
            2,
            "{stderr}"
        );
        // Each content is valid under its own address, which is the other
        // derivation's declared path.
        assert!(scratch.is_valid(&fixed_path(&a)));
        assert!(scratch.is_valid(&fixed_path(&b)));
        scratch.assert_verifies();
    }
}

/// A floating content-addressed derivation named X quickly produces the
/// content C; a slow recursive fixed-output derivation named X declaring
/// C's hash holds that very path. Both succeed with one valid path.
#[test]
fn floating_ca_and_fixed_output_share_one_path() {
    let content = b"shared content\n";
    let write = "printf 'shared content\\n' > $out";
    for mode in modes() {
        let scratch = Scratch::new();
        let fod = fixed(
            "shared",
            &format!("{}{write}", chatter(512, "0.01")),
            ContentAddressMethod::Nar,
            content,
        );
        let mut floating = base("shared", &format!("sleep 0.3; {write}"));
        floating
            .insert_output(
                "out",
                DerivationOutput::Floating {
                    method: ContentAddressMethod::Nar,
                    algo: HashAlgo::Sha256,
                },
            )
            .unwrap();
        floating.env.insert(
            "out".to_owned(),
            larder_builder::rewrite::hash_placeholder("out"),
        );
        let path = fixed_path(&fod);
        let files = [
            scratch.write("fod.json", &fod),
            scratch.write("floating.json", &floating),
        ];
        let mut args = vec!["-j2"];
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &files);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        assert_eq!(output_lines(&out), [path.clone(), path.clone()]);
        let real = scratch.store().join(path.trim_start_matches('/'));
        assert_eq!(fs::read(real).unwrap(), content);
        scratch.assert_verifies();
    }
}

/// Four `larder build` processes build one 30-derivation DAG into one
/// store at once: each derivation is built exactly once, all succeed, and
/// the store verifies.
#[test]
fn four_processes_build_one_dag_once() {
    let scratch = Scratch::new();
    let counter = scratch.dir.path().join("builds.log");
    let mut known = BTreeMap::new();
    let mut drvs: Vec<Derivation> = Vec::new();
    for i in 0..30usize {
        let inputs: Vec<&Derivation> = match i {
            0 => vec![],
            _ => {
                let mut v = vec![&drvs[i - 1]];
                if i / 2 != i - 1 {
                    v.push(&drvs[i / 2]);
                }
                v
            }
        };
        let mut script = format!(
            "echo node-{i} >> '{}'; sleep 0.05; echo node-{i} > $out",
            counter.display()
        );
        for input in &inputs {
            let out = input.output_paths(&store_dir())["out"].clone().unwrap();
            script.push_str(&format!("; cat {} >> $out", store_dir().display(&out)));
        }
        let drv = input_addressed(&format!("node-{i}"), &script, &inputs, &known);
        known.insert(drv.drv_path(&store_dir()), drv.clone());
        drvs.push(drv);
    }
    let files: Vec<PathBuf> = drvs
        .iter()
        .enumerate()
        .map(|(i, d)| scratch.write(&format!("node-{i}.json"), d))
        .collect();
    let store = scratch.store();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let files = files.clone();
            std::thread::spawn(move || {
                let mut cmd = larder();
                cmd.arg("--store")
                    .arg(&store)
                    .args(["build", "-j2", "--no-sandbox"])
                    .args(&files);
                run_bounded(&mut cmd, BOUND)
            })
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let out = child.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        outputs.push(output_lines(&out));
    }
    assert_eq!(outputs[0].len(), 30);
    assert!(outputs.iter().all(|o| *o == outputs[0]));
    let log = fs::read_to_string(&counter).unwrap();
    let mut built: Vec<&str> = log.lines().collect();
    assert_eq!(built.len(), 30, "each derivation once: {built:?}");
    built.sort_unstable();
    built.dedup();
    assert_eq!(built.len(), 30);
    scratch.assert_verifies();
}

/// Every derivation Nix 2.8 built for the vectors builds through `larder
/// build --import` from the `.drv` files alone, with Nix's output paths
/// and NAR hashes, with and without the sandbox.
#[test]
fn nix_vectors_build_with_the_outputs_nix_produced() {
    let builds = fs::read_to_string(vector("nix-2.8/builds.jsonl")).unwrap();
    let mut drv_paths = Vec::new();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for line in builds.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        drv_paths.push(PathBuf::from(case["drv_path"].as_str().unwrap()));
        for output in case["outputs"].as_object().unwrap().values() {
            expected.insert(
                output["path"].as_str().unwrap().to_owned(),
                output["nar_hash_sri"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert!(drv_paths.len() >= 20);
    let import = vector("nix-2.8/drv/store");
    for mode in modes() {
        let scratch = Scratch::new();
        let mut args = vec!["-j2", "--keep-going", "--json", "--import"];
        let import = import.to_str().unwrap();
        args.push(import);
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &drv_paths);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut built = BTreeSet::new();
        for result in results.as_array().unwrap() {
            for path in result["outputs"].as_object().unwrap().values() {
                built.insert(path.as_str().unwrap().to_owned());
            }
        }
        let wanted: BTreeSet<String> = expected.keys().cloned().collect();
        assert_eq!(built, wanted, "{mode:?}");
        let mut cmd = larder();
        cmd.arg("--store")
            .arg(scratch.store())
            .args(["path-info", "--json"])
            .args(&wanted);
        let info = run_bounded(&mut cmd, BOUND);
        assert!(info.status.success(), "{}", text(&info.stderr));
        let infos: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        for info in infos.as_array().unwrap() {
            let path = info["path"].as_str().unwrap();
            assert_eq!(
                info["narHash"].as_str().unwrap(),
                expected[path],
                "{mode:?}: NAR hash of {path}"
            );
        }
        scratch.assert_verifies();
    }
}

/// A failing builder, a missing input and bad JSON: clear errors and Nix's
/// exit statuses, nothing left valid.
#[test]
fn failures_give_nix_exit_statuses() {
    let scratch = Scratch::new();
    let known = BTreeMap::new();
    let failing = input_addressed("failing", "echo oops >&2; exit 3", &[], &known);
    let out = scratch.build(
        &["--no-sandbox"],
        &[scratch.write("failing.json", &failing)],
    );
    assert_eq!(out.status.code(), Some(100), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("failed with exit code 3"), "{stderr}");
    assert!(stderr.contains("> oops"), "{stderr}");

    let mut known = BTreeMap::new();
    known.insert(failing.drv_path(&store_dir()), failing.clone());
    let dependent = input_addressed("dependent", "echo x > $out", &[&failing], &known);
    let out = scratch.build(
        &["--no-sandbox", "--keep-going"],
        &[scratch.write("dependent.json", &dependent)],
    );
    assert_eq!(out.status.code(), Some(100), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("dependencies of derivation"));

    let missing = scratch.dir.path().join("elsewhere");
    fs::create_dir_all(&missing).unwrap();
    let lonely = missing.join("dependent.json");
    fs::write(&lonely, dependent.to_json_string()).unwrap();
    let other = Scratch::new();
    let out = other.build(&["--no-sandbox"], &[lonely]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("failing.drv"),
        "{}",
        text(&out.stderr)
    );

    let bad = scratch.drvs().join("bad.json");
    fs::write(&bad, "{\"name\": 3}").unwrap();
    let out = scratch.build(&[], &[bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );

    let timed = input_addressed("slowpoke", "sleep 20; echo > $out", &[], &BTreeMap::new());
    let out = scratch.build(
        &["--no-sandbox", "--timeout", "1"],
        &[scratch.write("slowpoke.json", &timed)],
    );
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    let out_path = store_dir().display(&timed.output_paths(&store_dir())["out"].clone().unwrap());
    assert!(!scratch.is_valid(&out_path));
    scratch.assert_verifies();
}

/// `--check` rebuilds and compares: a deterministic build passes, one
/// that is not gives Nix's status 104.
#[test]
fn check_mode_reports_non_determinism() {
    let scratch = Scratch::new();
    let known = BTreeMap::new();
    let steady = input_addressed("steady", "echo same > $out", &[], &known);
    let wobbly = input_addressed("wobbly", "date +%s%N > $out", &[], &known);
    let files = [
        scratch.write("steady.json", &steady),
        scratch.write("wobbly.json", &wobbly),
    ];
    let out = scratch.build(&["--no-sandbox"], &files);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = scratch.build(&["--no-sandbox", "--check"], &files[..1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = scratch.build(&["--no-sandbox", "--check"], &files[1..]);
    assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("may not be deterministic"));
}

/// SIGINT (Ctrl-C) stops `larder build` at once: the builder, in a
/// process group of its own that the terminal's signal does not reach, is
/// killed with it, and the store stays consistent.
#[test]
fn interrupt_kills_the_builders() {
    let scratch = Scratch::new();
    let pid_file = scratch.dir.path().join("builder.pid");
    let sleeper = input_addressed(
        "sleeper",
        &format!("echo $$ > '{}'; sleep 60; echo > $out", pid_file.display()),
        &[],
        &BTreeMap::new(),
    );
    let file = scratch.write("sleeper.json", &sleeper);
    let mut child = larder()
        .arg("--store")
        .arg(scratch.store())
        .args(["build", "--no-sandbox"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !pid_file.exists() || fs::read_to_string(&pid_file).unwrap().trim().is_empty() {
        assert!(started.elapsed() < BOUND, "the builder never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let builder: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("larder did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by the user"), "{stderr}");
    let builder = rustix::process::Pid::from_raw(builder).unwrap();
    assert!(
        rustix::process::test_kill_process(builder).is_err(),
        "the builder outlived larder"
    );
    scratch.assert_verifies();
}

/// A derivation `nix-instantiate` wrote, with a path literal, texts (one
/// naming another) and an input derivation, builds from its store path
/// with `--import /nix/store`: every input is taken from Nix's store,
/// verified, and the output is the path Nix names.
#[test]
fn nix_instantiated_derivations_import_from_the_nix_store() {
    let available = Command::new("nix-instantiate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        eprintln!("skipped: nix-instantiate is not installed");
        return;
    }
    let scratch = Scratch::new();
    let dir = scratch.drvs();
    fs::write(dir.join("data.txt"), "hello from a path\n").unwrap();
    fs::write(
        dir.join("t.nix"),
        r#"{ seed }:
let
  txt = builtins.toFile "note-${seed}.txt" "a note\n";
  ref = builtins.toFile "ref-${seed}.txt" "points at ${txt}\n";
  dep = derivation {
    name = "dep-${seed}"; system = builtins.currentSystem; PATH = "/usr/bin:/bin";
    builder = "/bin/sh"; args = [ "-c" "echo dep > $out" ];
  };
in derivation {
  name = "imported-${seed}"; system = builtins.currentSystem; PATH = "/usr/bin:/bin";
  builder = "/bin/sh"; args = [ "-c" "cat ${./data.txt} ${ref} ${dep} > $out" ];
}
"#,
    )
    .unwrap();
    let seed = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let out = Command::new("nix-instantiate")
        .args(["--argstr", "seed", &seed])
        .arg(dir.join("t.nix"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drv = text(&out.stdout).trim().to_owned();
    let out = Command::new("nix-store")
        .args(["--query", "--outputs", &drv])
        .output()
        .unwrap();
    let wanted = text(&out.stdout).trim().to_owned();
    for mode in modes() {
        let scratch = Scratch::new();
        let mut args = vec!["--import", "/nix/store"];
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &[PathBuf::from(&drv)]);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        assert_eq!(output_lines(&out), std::slice::from_ref(&wanted));
        let real = scratch.store().join(wanted.trim_start_matches('/'));
        let contents = fs::read_to_string(real).unwrap();
        assert!(
            contents.starts_with("hello from a path\npoints at /nix/store/"),
            "{contents}"
        );
        assert!(
            contents.ends_with(&format!("-note-{seed}.txt\ndep\n")),
            "{contents}"
        );
        scratch.assert_verifies();
    }
}
