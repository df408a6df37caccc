//! Every buildable derivation of `vectors/nix-2.8/` builds with the generic
//! builder into a temporary store with the output paths, NAR hashes, sizes,
//! references and content addresses real Nix 2.8 gave (`builds.jsonl`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::TestStore;
use larder_store_core::StorePath;
use larder_store_core::derivation::Derivation;
use serde::Deserialize;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors/nix-2.8");

#[derive(Deserialize)]
struct Build {
    id: String,
    drv_path: String,
    outputs: BTreeMap<String, Output>,
}

#[derive(Deserialize)]
struct Output {
    path: String,
    nar_hash_sri: String,
    nar_size: u64,
    references: Vec<String>,
    ca: Option<String>,
}

fn store_file(base: &str) -> PathBuf {
    PathBuf::from(VECTORS).join("drv/store").join(base)
}

fn load_drv(t: &TestStore, path: &StorePath) -> Derivation {
    let bytes = std::fs::read(store_file(path.as_str())).unwrap();
    let name = path.name().strip_suffix(".drv").unwrap();
    Derivation::parse_aterm(&bytes, name, t.store_dir()).unwrap()
}

/// Builds `path` after its inputs; sources are added from `drv/store/`.
fn realise(t: &TestStore, path: &StorePath, done: &mut BTreeSet<StorePath>) {
    if done.contains(path) {
        return;
    }
    let drv = load_drv(t, path);
    for input in drv.input_drvs.keys() {
        realise(t, input, done);
    }
    for src in &drv.input_srcs {
        if !t.store.is_valid(src).unwrap() {
            t.add_path(&store_file(src.as_str()), src, &[]);
        }
    }
    assert_eq!(&t.write_drv(&drv), path, "the .drv round-trips to its path");
    let (log, result) = t.build(&drv);
    if let Err(e) = result {
        panic!("building {path}: {e}\nlog:\n{log}");
    }
    done.insert(path.clone());
}

#[test]
fn nix_2_8_builds_are_reproduced() {
    let t = TestStore::new();
    let text = std::fs::read_to_string(format!("{VECTORS}/builds.jsonl")).unwrap();
    let builds: Vec<Build> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(builds.len(), 26);
    let mut done = BTreeSet::new();
    let mut seen_outputs = BTreeSet::new();
    for build in &builds {
        let drv_path = t.store_dir().parse(&build.drv_path).unwrap();
        realise(&t, &drv_path, &mut done);
        for (name, want) in &build.outputs {
            let path = t.store_dir().parse(&want.path).unwrap();
            let info =
                t.store.query_path_info(&path).unwrap().unwrap_or_else(|| {
                    panic!("{}: output {name} {} not valid", build.id, want.path)
                });
            assert_eq!(
                info.nar_hash.to_sri(),
                want.nar_hash_sri,
                "{} {name}",
                build.id
            );
            assert_eq!(info.nar_size, want.nar_size, "{} {name}", build.id);
            let refs: Vec<String> = info
                .references
                .iter()
                .map(|r| t.store_dir().display(r))
                .collect();
            let mut want_refs = want.references.clone();
            want_refs.sort();
            assert_eq!(refs, want_refs, "{} {name}", build.id);
            assert_eq!(info.ca.map(|c| c.render()), want.ca, "{} {name}", build.id);
            // An output another derivation produced first (same fixed
            // output) is valid already and not rebuilt.
            if seen_outputs.insert(path.clone()) {
                assert_eq!(
                    info.deriver.as_ref(),
                    Some(&drv_path),
                    "{} {name}: deriver",
                    build.id
                );
            }
        }
    }
}
