//! Every buildable derivation of `vectors/nix-2.8/` builds with the generic
//! builder into a temporary store with the output paths, NAR hashes, sizes,
//! references and content addresses real Nix 2.8 gave (`builds.jsonl`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::TestStore;
use larder_builder::test_support::nix_2_8::{builds, load_drv, store_file};
use larder_store_core::StorePath;

/// Builds `path` after its inputs; sources are added from `drv/store/`.
fn realise(t: &TestStore, path: &StorePath, done: &mut BTreeSet<StorePath>) {
    if done.contains(path) {
        return;
    }
    let drv = load_drv(&t.store, path);
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
    let builds = builds();
    assert_eq!(builds.len(), 26);
    let mut done = BTreeSet::new();
    let mut seen_outputs = BTreeSet::new();
    for build in &builds {
        let drv_path = t.store_dir().parse(&build.drv_path).unwrap();
        realise(&t, &drv_path, &mut done);
        for (name, want) in &build.outputs {
            let path = t.store_dir().parse(&want.path).unwrap();
            let info = want.assert_matches(&t.store, &format!("{} {name}", build.id));
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
