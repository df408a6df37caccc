//! Reference scanning against the references Nix 2.8 recorded for real
//! build outputs (`vectors/nix-2.8/builds.jsonl`).

#![cfg(test)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Cursor;

use data_encoding::BASE64;
use larder_store_core::references::{self, RefScanner};
use larder_store_core::{StoreDir, StorePath, nar};
use serde_json::Value;

const NIX_2_8: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors/nix-2.8");

fn jsonl(name: &str) -> Vec<Value> {
    fs::read_to_string(format!("{NIX_2_8}/{name}"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn build_outputs_reference_what_nix_found() {
    let store = StoreDir::default();
    let parse = |v: &Value| store.parse(v.as_str().unwrap()).unwrap();
    let builds = jsonl("builds.jsonl");

    // Every path the builds could mention: all outputs, all recorded
    // references and every input source. A superset of each build's real
    // candidates is harmless: a build cannot mention a path it never saw.
    let mut candidates: BTreeSet<StorePath> = BTreeSet::new();
    for build in &builds {
        for output in build["outputs"].as_object().unwrap().values() {
            candidates.insert(parse(&output["path"]));
            candidates.extend(output["references"].as_array().unwrap().iter().map(parse));
        }
    }
    for drv in jsonl("drv.jsonl") {
        candidates.extend(drv["input_srcs"].as_array().unwrap().iter().map(parse));
    }

    let mut checked = 0;
    for build in &builds {
        for (name, output) in build["outputs"].as_object().unwrap() {
            let Some(nar_base64) = output["nar_base64"].as_str() else {
                continue;
            };
            let nar_bytes = BASE64.decode(nar_base64.as_bytes()).unwrap();
            let expected: BTreeSet<StorePath> = output["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(parse)
                .collect();

            // Scanning the NAR bytes, in two chunks split in the middle.
            let mut scanner = RefScanner::for_store_paths(&candidates);
            let (first, second) = nar_bytes.split_at(nar_bytes.len() / 2);
            scanner.update(first);
            scanner.update(second);
            assert_eq!(
                scanner.found_paths(&candidates),
                expected,
                "{} {name}",
                build["id"]
            );

            // Scanning the restored tree, with its NAR hash.
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("out");
            nar::restore(&mut Cursor::new(&nar_bytes), &root).unwrap();
            let (found, nar_hash) = references::scan_and_hash_path(&root, &candidates).unwrap();
            assert_eq!(found, expected);
            assert_eq!(
                nar_hash.hash.to_sri(),
                output["nar_hash_sri"].as_str().unwrap()
            );
            assert_eq!(nar_hash.size, output["nar_size"].as_u64().unwrap());
            assert_eq!(references::scan_path(&root, &candidates).unwrap(), expected);
            checked += 1;
        }
    }
    assert_eq!(checked, 28);
}
