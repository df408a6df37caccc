//! Derivations against real Nix: the Nix 2.8 vectors (`vectors/nix-2.8/`)
//! and upstream Nix's unit-test data (`vectors/nix-upstream/`).

// The helpers below are test code too: a missing or malformed vector
// should fail the test loudly, which is what `unwrap` does.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use larder_store_core::derivation::{
    DerivationError, DerivationOutput, DrvHashKind, HashModuloCache,
};
use larder_store_core::hash::sha256;
use larder_store_core::{ContentAddressMethod, Derivation, HashAlgo, StoreDir, StorePath};
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors");

fn nix28(rel: &str) -> PathBuf {
    Path::new(VECTORS).join("nix-2.8").join(rel)
}

fn upstream(rel: &str) -> PathBuf {
    Path::new(VECTORS)
        .join("nix-upstream/src/libstore-tests/data/derivation")
        .join(rel)
}

/// Reads a file of the upstream data, following the git symlinks that the
/// copy stores as text holding their target.
fn read_upstream(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if bytes.starts_with(b"../") {
        let target = std::str::from_utf8(&bytes).unwrap().trim();
        return fs::read(path.parent().unwrap().join(target))
            .unwrap_or_else(|e| panic!("{} -> {target}: {e}", path.display()));
    }
    bytes
}

fn dir() -> StoreDir {
    StoreDir::default()
}

/// Compares bytes, reporting the first difference rather than both arrays.
#[track_caller]
fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let show = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: differs at byte {at} (lengths {} and {})\n  actual:   {:?}\n  expected: {:?}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}

/// Input derivations of the Nix 2.8 cases, from `drv/store/` by base name.
fn nix28_source(path: &StorePath) -> Result<Derivation, DerivationError> {
    let bytes = fs::read(nix28("drv/store").join(path.as_str()))
        .map_err(|e| DerivationError::JsonShape(format!("{path}: {e}")))?;
    let name = path.name().strip_suffix(".drv").unwrap();
    Derivation::parse_aterm(&bytes, name, &dir())
}

fn cases() -> Vec<Value> {
    fs::read_to_string(nix28("drv.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn nix28_cases() {
    let dir = dir();
    let mut cache = HashModuloCache::new(dir.clone());
    let cases = cases();
    assert_eq!(cases.len(), 30);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let name = case["name"].as_str().unwrap();
        let aterm = fs::read(nix28(case["aterm_file"].as_str().unwrap())).unwrap();
        let drv =
            Derivation::parse_aterm(&aterm, name, &dir).unwrap_or_else(|e| panic!("{id}: {e}"));

        // ATerm bytes and the .drv path.
        assert_same(
            drv.to_aterm(&dir).as_bytes(),
            &aterm,
            &format!("{id}: ATerm"),
        );
        let drv_path = dir.display(&drv.drv_path(&dir));
        assert_eq!(
            drv_path,
            case["drv_path"].as_str().unwrap(),
            "{id}: drv path"
        );

        // Output paths, inputs.
        let outputs: BTreeMap<String, Option<String>> = drv
            .output_paths(&dir)
            .into_iter()
            .map(|(o, p)| (o, p.map(|p| dir.display(&p))))
            .collect();
        let expected: BTreeMap<String, Option<String>> =
            serde_json::from_value(case["outputs"].clone()).unwrap();
        assert_eq!(outputs, expected, "{id}: outputs");
        let input_drvs: BTreeMap<String, BTreeSet<String>> = drv
            .input_drvs
            .iter()
            .map(|(p, o)| (dir.display(p), o.clone()))
            .collect();
        assert_eq!(
            input_drvs,
            serde_json::from_value(case["input_drvs"].clone()).unwrap(),
            "{id}: input drvs"
        );
        let srcs: BTreeSet<String> = drv.input_srcs.iter().map(|p| dir.display(p)).collect();
        assert_eq!(
            srcs,
            serde_json::from_value(case["input_srcs"].clone()).unwrap(),
            "{id}: input srcs"
        );

        // JSON: Nix 2.8's shape in, version 4 out and back in.
        let json = fs::read_to_string(nix28(case["json_file"].as_str().unwrap())).unwrap();
        assert_eq!(
            Derivation::from_json(&json, &dir).unwrap(),
            drv,
            "{id}: 2.8 JSON"
        );
        let legacy = Derivation::from_json_legacy(&json, &dir).unwrap();
        assert_eq!(
            legacy.keys().map(|p| dir.display(p)).collect::<Vec<_>>(),
            [drv_path]
        );
        let v4 = drv.to_json_string();
        assert_eq!(
            Derivation::from_json(&v4, &dir).unwrap(),
            drv,
            "{id}: v4 JSON"
        );
        assert_eq!(Derivation::from_json_v4(&v4).unwrap(), drv, "{id}: v4 JSON");

        // Hash modulo and output paths.
        let masked = cache.hash_modulo(&drv, true, &mut nix28_source).unwrap();
        if let Some(hex) = case.get("derived_hash_modulo") {
            assert_eq!(masked.kind, DrvHashKind::Regular, "{id}");
            for hash in masked.hashes.values() {
                assert_eq!(hash.to_base16(), hex.as_str().unwrap(), "{id}: hash modulo");
            }
        } else if let Some(fixed) = case.get("derived_hash_modulo_fixed_string") {
            let expected = sha256(fixed.as_str().unwrap());
            assert_eq!(
                masked.hashes["out"].digest(),
                &expected[..],
                "{id}: FOD hash"
            );
            let unmasked = cache.hash_modulo(&drv, false, &mut nix28_source).unwrap();
            assert_eq!(unmasked, masked, "{id}: a FOD's hash ignores masking");
        } else {
            assert_eq!(masked.kind, DrvHashKind::Deferred, "{id}: floating");
        }
        drv.check_output_paths(&mut cache, &mut nix28_source)
            .unwrap_or_else(|e| panic!("{id}: {e}"));

        // What the evaluator does: outputs deferred, their variables empty,
        // then filled in; this must give back Nix's derivation exactly.
        let mut blank = drv.clone();
        for (output, value) in drv.outputs() {
            if let DerivationOutput::InputAddressed(_) = value {
                blank
                    .insert_output(output, DerivationOutput::Deferred)
                    .unwrap();
                blank.env.insert(output.clone(), String::new());
            }
        }
        blank
            .fill_in_output_paths(&mut cache, &mut nix28_source)
            .unwrap();
        assert_eq!(blank, drv, "{id}: fill-in");
    }
    // Every input derivation was read once and hashed once.
    assert!(!cache.is_empty());
}

#[test]
fn nix28_store_round_trips() {
    let dir = dir();
    let mut cache = HashModuloCache::new(dir.clone());
    let mut count = 0;
    for entry in fs::read_dir(nix28("drv/store")).unwrap() {
        let entry = entry.unwrap();
        let base = entry.file_name().into_string().unwrap();
        let path = StorePath::from_base_name(&base).unwrap();
        if !path.is_derivation() {
            continue;
        }
        let bytes = fs::read(entry.path()).unwrap();
        let drv = nix28_source(&path).unwrap();
        assert_same(drv.to_aterm(&dir).as_bytes(), &bytes, &base);
        assert_eq!(drv.drv_path(&dir), path, "{base}");
        drv.check_output_paths(&mut cache, &mut nix28_source)
            .unwrap_or_else(|e| panic!("{base}: {e}"));
        count += 1;
    }
    assert_eq!(count, 30);
}

#[test]
fn nix28_fixed_output_json_fields() {
    // Fixed outputs in Nix 2.8's JSON are checked against their path.
    let json = fs::read_to_string(nix28("drv/fod-rec-sha1.json")).unwrap();
    let tampered = json.replace(
        "8zfar4af216axy5acg0yh956w2nkn58s",
        "9zfar4af216axy5acg0yh956w2nkn58s",
    );
    let err = Derivation::from_json(&tampered, &dir()).unwrap_err();
    assert!(
        matches!(err, DerivationError::FixedPathMismatch { .. }),
        "{err}"
    );
    let drv = Derivation::from_json(&json, &dir()).unwrap();
    let DerivationOutput::Fixed(ca) = &drv.outputs()["out"] else {
        panic!("not fixed");
    };
    assert_eq!(ca.method, ContentAddressMethod::Nar);
    assert_eq!(ca.hash.algo(), HashAlgo::Sha1);
}

/// The name of the derivation in an upstream `.drv`: from the JSON beside
/// it, else the file's stem.
fn upstream_name(drv_file: &Path) -> String {
    let json = drv_file.with_extension("json");
    if let Ok(text) = fs::read_to_string(&json) {
        let value: Value = serde_json::from_str(&text).unwrap();
        if let Some(name) = value["name"].as_str() {
            return name.to_owned();
        }
    }
    drv_file.file_stem().unwrap().to_str().unwrap().to_owned()
}

fn files_with_extension(rel: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(upstream(rel))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn upstream_aterm_round_trips() {
    let dir = dir();
    let mut count = 0;
    for sub in ["", "ia", "ca", "hash-modulo"] {
        for file in files_with_extension(sub, "drv") {
            let stem = file.file_stem().unwrap().to_str().unwrap().to_owned();
            let bytes = read_upstream(&file);
            if stem.ends_with("-modulo") {
                // Not derivations: the input keys are hashes (see below).
                continue;
            }
            let name = upstream_name(&file);
            let result = Derivation::parse_aterm(&bytes, &name, &dir);
            match stem.as_str() {
                "bad-version" | "dyn-dep-derivation" => {
                    let err = result.unwrap_err();
                    assert!(
                        matches!(err, DerivationError::UnsupportedVersion { offset: 15, .. }),
                        "{stem}: {err}"
                    );
                }
                "bad-old-version-dyn-deps" => {
                    let err = result.unwrap_err();
                    assert!(err.to_string().contains("dynamic outputs"), "{stem}: {err}");
                    assert!(err.to_string().contains("at byte 11"), "{stem}: {err}");
                }
                "bad-ca-fixed-path" => {
                    let err = Derivation::parse_aterm(&bytes, "fixed", &dir).unwrap_err();
                    assert!(
                        err.to_string()
                            .contains("does not match its content address"),
                        "{stem}: {err}"
                    );
                }
                "firefox" | "hello" => {
                    // Benchmark files whose hash parts were all replaced by
                    // `a`s, leaving its input derivations out of order: Nix
                    // prints it sorted too. Printing is stable from there.
                    let drv = result.unwrap();
                    let printed = drv.to_aterm(&dir);
                    assert_ne!(printed.as_bytes(), &bytes[..]);
                    let again = Derivation::parse_aterm(printed.as_bytes(), &name, &dir).unwrap();
                    assert_eq!(again, drv);
                    assert_eq!(again.to_aterm(&dir), printed);
                }
                _ => {
                    let drv = result.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    assert_same(
                        drv.to_aterm(&dir).as_bytes(),
                        &bytes,
                        &file.display().to_string(),
                    );
                    count += 1;
                }
            }
        }
    }
    // simple-derivation, 4 ia, 4 ca, 6 hash-modulo.
    assert_eq!(count, 15);
}

#[test]
fn upstream_json_v4_round_trips() {
    let dir = dir();
    let mut count = 0;
    for sub in ["", "ia", "ca", "hash-modulo", "invariants", "try-resolve"] {
        for file in files_with_extension(sub, "json") {
            let text = fs::read_to_string(&file).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            if value.get("version").is_none() || value["inputs"].is_array() {
                // Not derivations, or resolved "basic" derivations, whose
                // inputs are a plain list of paths.
                continue;
            }
            if file.ends_with("dyn-dep-derivation.json") {
                let err = Derivation::from_json_v4(&text).unwrap_err();
                assert!(
                    matches!(err, DerivationError::DynamicOutputs { .. }),
                    "{err}"
                );
                continue;
            }
            let drv = Derivation::from_json_v4(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value["env"].get("__json").is_some() {
                // Written by a test with the attributes both in `env` and as
                // `structuredAttrs`; larder keeps one copy, in `env`.
                assert_eq!(
                    Derivation::from_json_v4(&drv.to_json_string()).unwrap(),
                    drv
                );
            } else {
                assert_eq!(drv.to_json_string(), text.trim_end(), "{}", file.display());
            }
            count += 1;

            // ATerm <-> JSON pairs (the ia/ca ones with input derivations
            // were generated separately and do not pair).
            let aterm_file = file.with_extension("drv");
            if aterm_file.exists()
                && (sub.is_empty() || sub == "hash-modulo" || drv.input_drvs.is_empty())
            {
                let bytes = read_upstream(&aterm_file);
                assert_same(
                    drv.to_aterm(&dir).as_bytes(),
                    &bytes,
                    &aterm_file.display().to_string(),
                );
                let parsed = Derivation::parse_aterm(&bytes, drv.name(), &dir).unwrap();
                assert_eq!(parsed, drv, "{}", aterm_file.display());
            }
        }
    }
    assert!(count >= 30, "{count}");
}

#[test]
fn upstream_output_kinds() {
    for (file, output) in [
        ("output-inputAddressed.json", true),
        ("output-caFixedFlat.json", true),
        ("output-caFixedNAR.json", true),
        ("output-caFixedText.json", true),
        ("output-caFloating.json", true),
        ("output-deferred.json", true),
        ("output-impure.json", false),
    ] {
        let text = fs::read_to_string(upstream(file)).unwrap();
        let doc = format!(
            r#"{{"name":"drv-name","version":4,"outputs":{{"output-name":{text}}},
                "inputs":{{"srcs":[],"drvs":{{}}}},"system":"s","builder":"b","args":[],"env":{{}}}}"#
        );
        match Derivation::from_json_v4(&doc) {
            Ok(drv) => {
                assert!(output, "{file} should be rejected");
                let written = drv.to_json();
                let expected: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(written["outputs"]["output-name"], expected, "{file}");
            }
            Err(err) => {
                assert!(!output, "{file}: {err}");
                assert!(
                    matches!(err, DerivationError::Impure { .. }),
                    "{file}: {err}"
                );
            }
        }
    }
}

#[test]
fn upstream_structured_attrs() {
    let text = read_upstream(&upstream("ia/advanced-attributes-structured-attrs.drv"));
    let drv =
        Derivation::parse_aterm(&text, "advanced-attributes-structured-attrs", &dir()).unwrap();
    let attrs = drv.structured_attrs().unwrap().unwrap();
    assert_eq!(attrs["outputs"], serde_json::json!(["out", "bin", "dev"]));
    // JSON shows them as an object; reading it back re-serialises `__json`
    // to the same bytes Nix wrote.
    let json = drv.to_json();
    assert!(json["env"].get("__json").is_none());
    assert_eq!(json["structuredAttrs"]["system"], "my-system");
    let back = Derivation::from_json_v4(&drv.to_json_string()).unwrap();
    assert_eq!(back, drv);
    assert_same(back.to_aterm(&dir()).as_bytes(), &text, "structured attrs");
}

fn json_drv(rel: &str) -> Derivation {
    Derivation::from_json_v4(&fs::read_to_string(upstream(rel)).unwrap()).unwrap()
}

#[test]
fn upstream_hash_modulo() {
    let dir = dir();
    let mut store: BTreeMap<StorePath, Derivation> = BTreeMap::new();
    for stem in [
        "source-first",
        "source-second",
        "intermediate-first",
        "intermediate-second",
    ] {
        let drv = json_drv(&format!("hash-modulo/{stem}.json"));
        store.insert(drv.drv_path(&dir), drv);
    }
    let source_first = json_drv("hash-modulo/source-first.json");
    assert_eq!(
        source_first.drv_path(&dir).as_str(),
        "q4mzjdlh5px6977h7v5fdsk1p33yg583-source.drv"
    );
    let mut source = |p: &StorePath| {
        store
            .get(p)
            .cloned()
            .ok_or_else(|| format!("no derivation {p}"))
    };
    let mut cache = HashModuloCache::new(dir.clone());
    for stem in ["source-first", "source-second"] {
        let drv = json_drv(&format!("hash-modulo/{stem}.json"));
        let path = drv.drv_path(&dir);
        let hash = cache.input_hash(&path, &mut source).unwrap();
        // Both sources hash alike: how a FOD is built does not matter.
        assert_eq!(
            hash.hashes["out"].to_base16(),
            "42cfa58bf5a281911b6c9471c67cf64f70a820b033415190db3da91710c5ff2c"
        );
        drv.check_output_paths(&mut cache, &mut source).unwrap();
    }
    for stem in [
        "intermediate-first",
        "intermediate-second",
        "parent-split",
        "parent-joined",
    ] {
        let drv = json_drv(&format!("hash-modulo/{stem}.json"));
        let expected = read_upstream(&upstream(&format!("hash-modulo/{stem}-modulo.drv")));
        let (aterm, kind) = cache.modulo_aterm(&drv, true, &mut source).unwrap();
        assert_same(aterm.as_bytes(), &expected, stem);
        assert_eq!(kind, DrvHashKind::Regular);
        if stem.starts_with("intermediate") {
            let path = drv.drv_path(&dir);
            assert_eq!(
                cache.input_hash(&path, &mut source).unwrap().hashes["dev"].to_base16(),
                "6df335a6cafec6b08aa38163a4a3d1b8f04bc8dc10de4ad35d677f911f2d3b5a"
            );
        }
    }
    // Both parents name inputs that merge into one: the same output paths.
    let mut split = json_drv("hash-modulo/parent-split.json");
    let mut joined = json_drv("hash-modulo/parent-joined.json");
    split.fill_in_output_paths(&mut cache, &mut source).unwrap();
    joined
        .fill_in_output_paths(&mut cache, &mut source)
        .unwrap();
    assert!(split.output_paths(&dir)["out"].is_some());
    assert_eq!(split.output_paths(&dir), joined.output_paths(&dir));
    // A source the resolver cannot provide is named in the error.
    let mut empty = |_: &StorePath| Err::<Derivation, _>("absent");
    let err = HashModuloCache::new(dir.clone())
        .hash_modulo(&split, true, &mut empty)
        .unwrap_err();
    assert!(err.to_string().contains("intermediate.drv"), "{err}");
}

#[test]
fn upstream_invariants() {
    let dir = dir();
    // The floating content-addressed dependency of the `depends-on-drv`
    // cases, built as Nix's test builds it; its path must be the one the
    // data names.
    let mut dependency = Derivation::new("dependency").unwrap();
    dependency
        .insert_output(
            "out",
            DerivationOutput::Floating {
                method: ContentAddressMethod::Nar,
                algo: HashAlgo::Sha256,
            },
        )
        .unwrap();
    dependency.system = "x86_64-linux".to_owned();
    dependency.builder = "/bin/sh".to_owned();
    dependency.env.insert("out".to_owned(), String::new());
    let dependency_path = dependency.drv_path(&dir);
    assert_eq!(
        dependency_path.as_str(),
        "lg4c4b8r9hlczwprl6kgnzfd9mc1xmkk-dependency.drv"
    );
    let mut source = |p: &StorePath| {
        if *p == dependency_path {
            Ok(dependency.clone())
        } else {
            Err(format!("no derivation {p}"))
        }
    };
    let mut cache = HashModuloCache::new(dir.clone());

    for case in [
        "filled-in-deferred-empty-env-var",
        "filled-in-deferred-no-env-var",
    ] {
        let mut drv = json_drv(&format!("invariants/{case}-pre.json"));
        assert!(drv.check_output_paths(&mut cache, &mut source).is_ok());
        drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
        assert_eq!(
            drv,
            json_drv(&format!("invariants/{case}-post.json")),
            "{case}"
        );
        // The masked hash depends on whether the output's variable exists:
        // filling in a missing one changes it, so only the derivation that
        // had an (empty) variable passes the check afterwards, as in Nix.
        let checked = drv.check_output_paths(&mut cache, &mut source);
        if case.ends_with("no-env-var") {
            assert!(
                matches!(checked, Err(DerivationError::WrongOutputPath { .. })),
                "{checked:?}"
            );
        } else {
            checked.unwrap();
        }
    }

    let mut drv = json_drv("invariants/filled-in-idempotent.json");
    let before = drv.clone();
    drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
    assert_eq!(drv, before);

    let mut drv = json_drv("invariants/bad-path.json");
    let err = drv.check_output_paths(&mut cache, &mut source).unwrap_err();
    assert!(
        matches!(err, DerivationError::WrongOutputPath { .. }),
        "{err}"
    );
    assert!(drv.fill_in_output_paths(&mut cache, &mut source).is_err());

    // A wrong variable of a deferred output is corrected, as Nix does.
    let mut drv = json_drv("invariants/bad-env-var.json");
    drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
    let path = drv.output_paths(&dir)["out"].clone().unwrap();
    assert_eq!(drv.env["out"], dir.display(&path));
    drv.check_output_paths(&mut cache, &mut source).unwrap();
    // But a wrong variable of an input-addressed output is an error.
    drv.env
        .insert("out".to_owned(), "/nix/store/wrong".to_owned());
    let err = drv.check_output_paths(&mut cache, &mut source).unwrap_err();
    assert!(
        matches!(err, DerivationError::WrongOutputVar { .. }),
        "{err}"
    );
    // Removing the variable changes the masked hash itself.
    drv.env.remove("out");
    let err = drv.check_output_paths(&mut cache, &mut source).unwrap_err();
    assert!(
        matches!(err, DerivationError::WrongOutputPath { .. }),
        "{err}"
    );

    let mut drv = json_drv("invariants/depends-on-drv-pre.json");
    let before = drv.clone();
    drv.fill_in_output_paths(&mut cache, &mut source).unwrap();
    assert_eq!(drv, before, "deferred stays deferred with a floating input");
    assert_eq!(drv.output_paths(&dir)["out"], None);

    let mut drv = json_drv("invariants/bad-depends-on-drv-pre.json");
    let err = drv
        .fill_in_output_paths(&mut cache, &mut source)
        .unwrap_err();
    assert!(
        matches!(err, DerivationError::ShouldBeDeferred { .. }),
        "{err}"
    );

    // Mixed output kinds are an error, not a panic.
    let mut mixed = json_drv("invariants/filled-in-deferred-empty-env-var-pre.json");
    mixed
        .insert_output(
            "dev",
            DerivationOutput::Floating {
                method: ContentAddressMethod::Nar,
                algo: HashAlgo::Sha256,
            },
        )
        .unwrap();
    assert!(mixed.fill_in_output_paths(&mut cache, &mut source).is_err());
    assert!(mixed.check_output_paths(&mut cache, &mut source).is_err());
}

#[test]
fn upstream_ia_defaults_output_path() {
    // Real evaluator output with no inputs: its output path is checkable.
    let dir = dir();
    let bytes = read_upstream(&upstream("ia/advanced-attributes-defaults.drv"));
    let drv = Derivation::parse_aterm(&bytes, "advanced-attributes-defaults", &dir).unwrap();
    let mut none = |p: &StorePath| Err::<Derivation, _>(format!("no {p}"));
    let mut cache = HashModuloCache::new(dir.clone());
    drv.check_output_paths(&mut cache, &mut none).unwrap();
    assert_eq!(
        drv.output_paths(&dir)["out"].as_ref().unwrap().as_str(),
        "1qsc7svv43m4dw2prh6mvyf7cai5czji-advanced-attributes-defaults"
    );
}
