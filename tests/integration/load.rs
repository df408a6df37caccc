//! Load: eight `larder build -j8` processes at once, each building an
//! overlapping part of one DAG of a few hundred trivial derivations into
//! one store. Nothing hangs (a generous bound fails the test), every output
//! is built exactly once across all processes, and the store verifies with
//! larder and with Nix. The wall time and the number of lock waits (the
//! `waiting for lock on` lines `larder build` prints) are printed.
//!
//! Builds run without the sandbox by default, to keep the test fast;
//! `LARDER_LOAD_SANDBOX=1` runs them sandboxed where the sandbox works
//! (then only larder's `building` lines count the builds, since sandboxed
//! builders cannot reach the journal).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use larder_store_core::Derivation;

use crate::drvs::{
    Scratch, count_in_stderr, input_addressed, lines_of, out_path, output_lines, sandbox_available,
    store_dir, text,
};

/// Processes building at once.
const PROCESSES: usize = 8;
/// Derivations in the DAG: layers of [`WIDTH`], each node but the first
/// layer's using two nodes of the layer below.
const NODES: usize = 300;
const WIDTH: usize = 30;
/// Far beyond what a run takes (seconds); reaching it means a hang.
const BOUND: Duration = Duration::from_secs(300);

/// The DAG, as derivations whose builders append their name to `journal`
/// (outside the store) before writing their output, which names their
/// inputs' outputs so that it references them.
fn dag(journal: &std::path::Path) -> Vec<Derivation> {
    let mut known = BTreeMap::new();
    let mut nodes: Vec<Derivation> = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let (layer, pos) = (i / WIDTH, i % WIDTH);
        let inputs: Vec<&Derivation> = if layer == 0 {
            vec![]
        } else {
            let below = (layer - 1) * WIDTH;
            vec![&nodes[below + pos], &nodes[below + (pos + 7) % WIDTH]]
        };
        let refs: Vec<String> = inputs.iter().map(|d| out_path(d)).collect();
        let script = format!(
            "echo $name >> '{}'; echo $name {} > $out",
            journal.display(),
            refs.join(" ")
        );
        let drv = input_addressed(&format!("load-{i}"), &script, &inputs, &known);
        known.insert(drv.drv_path(&store_dir()), drv.clone());
        nodes.push(drv);
    }
    nodes
}

/// The nodes process `k` asks for: a quarter of the DAG spread over every
/// layer (so processes `k` and `k + 4` ask for the same ones, in opposite
/// orders), whose closures overlap the other processes' everywhere but
/// the top layers.
fn targets(k: usize, files: &[PathBuf]) -> Vec<PathBuf> {
    let mut mine: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| (i * 5 + k).is_multiple_of(4))
        .map(|(_, f)| f.clone())
        .collect();
    if !k.is_multiple_of(2) {
        mine.reverse();
    }
    mine
}

#[test]
fn eight_processes_build_overlapping_dags_once() {
    let sandboxed = std::env::var_os("LARDER_LOAD_SANDBOX").is_some_and(|v| v == "1");
    let mode: &[&str] = if sandboxed && sandbox_available() {
        &[]
    } else {
        &["--no-sandbox"]
    };
    let scratch = Scratch::new();
    let journal = scratch.dir.path().join("journal.log");
    let nodes = dag(&journal);
    let files: Vec<PathBuf> = nodes.iter().map(|d| scratch.write_aterm(d)).collect();

    let started = Instant::now();
    let runs: Vec<_> = (0..PROCESSES)
        .map(|k| {
            let scratch_store = scratch.store();
            let mine = targets(k, &files);
            let args: Vec<String> = ["-j8"]
                .iter()
                .chain(mode)
                .map(|s| (*s).to_owned())
                .collect();
            std::thread::spawn(move || {
                let mut cmd = crate::support::larder();
                cmd.arg("--store")
                    .arg(scratch_store)
                    .arg("build")
                    .args(&args)
                    .args(&mine);
                (mine.len(), crate::drvs::run_bounded(&mut cmd, BOUND))
            })
        })
        .collect();
    let mut lock_waits = 0;
    let mut builds_reported = 0;
    for (k, run) in runs.into_iter().enumerate() {
        let (asked, out) = run.join().unwrap();
        assert!(
            out.status.success(),
            "process {k} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(
            output_lines(&out).len(),
            asked,
            "process {k}: one per target"
        );
        lock_waits += count_in_stderr(&out, "waiting for lock on");
        builds_reported += count_in_stderr(&out, "building '");
    }
    let wall = started.elapsed();

    assert_eq!(builds_reported, NODES, "one `building` line per derivation");
    // The journal is outside the store, which only builders without the
    // sandbox can reach: there, the builders themselves say they ran once.
    if !mode.is_empty() {
        let built = lines_of(&journal);
        let distinct: BTreeSet<&String> = built.iter().collect();
        assert_eq!(distinct.len(), NODES, "every derivation built");
        assert_eq!(built.len(), NODES, "no derivation built twice");
    }
    for node in [&nodes[0], &nodes[NODES - 1]] {
        let path = out_path(node);
        assert!(
            text(&scratch.read(&path)).starts_with(node.name()),
            "{path} holds its builder's output"
        );
    }
    scratch.assert_verifies();
    eprintln!(
        "load: {PROCESSES} processes x -j8, {NODES} derivations ({}): wall time {:.2} s, \
         {lock_waits} lock waits",
        if mode.is_empty() {
            "sandboxed"
        } else {
            "no sandbox"
        },
        wall.as_secs_f64()
    );
}
