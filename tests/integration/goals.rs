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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder_builder::test_support::nix_2_8;
use larder_store_core::Derivation;

use crate::drvs::{Scratch, input_addressed, modes, output_lines, run_bounded, store_dir, text};
use crate::scenarios::{self, Pace};
use crate::support::{larder, repo_root, vector};

/// How long a build run may take before it counts as hung. The slowest
/// run here takes about ten seconds; Nix 2.8 hangs forever on the first.
const BOUND: Duration = scenarios::BOUND;

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

/// Nix #15846 ([`scenarios::issue_15846`]), with and without
/// `--keep-going`. Nix 2.8 hangs here.
#[test]
fn issue_15846_fixed_outputs_with_wrong_hashes_do_not_hang() {
    for mode in modes() {
        let scratch = Scratch::new();
        let scenario = scenarios::issue_15846(Pace::Slow);
        let started = Instant::now();
        scenario.run(&scratch, mode);
        scratch.assert_verifies();
        eprintln!("#15846 {mode:?}: {:?}", started.elapsed());

        // Without --keep-going the first mismatch stops the run; it still
        // ends at once, with the same status.
        let scratch = Scratch::new();
        let files = scenario.write(&scratch);
        let mut args = vec![scenario.jobs];
        args.extend_from_slice(mode);
        let out = scratch.build(&args, &files);
        assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
        scratch.assert_verifies();
    }
}

/// Swapped hashes ([`scenarios::swapped_hashes`]): both fail, neither
/// waits for the other forever.
#[test]
fn swapped_hashes_both_fail_without_hanging() {
    for mode in modes() {
        let scratch = Scratch::new();
        scenarios::swapped_hashes(Pace::Slow).run(&scratch, mode);
        scratch.assert_verifies();
    }
}

/// Floating CA against a fixed output of the same content
/// ([`scenarios::floating_ca_and_fixed_output`]): both succeed with one
/// valid path.
#[test]
fn floating_ca_and_fixed_output_share_one_path() {
    for mode in modes() {
        let scratch = Scratch::new();
        scenarios::floating_ca_and_fixed_output(Pace::Slow).run(&scratch, mode);
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
    let mut drv_paths = Vec::new();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for build in nix_2_8::builds() {
        drv_paths.push(PathBuf::from(build.drv_path));
        for output in build.outputs.into_values() {
            expected.insert(output.path, output.nar_hash_sri);
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
