//! `.drv` files in the store: writing derivations as text paths whose
//! references are their inputs, reading them back, and adding derivation
//! JSON with its input-addressed output paths filled in.

use std::collections::BTreeMap;
use std::fs;

use larder_store_core::{Derivation, StorePath};

use crate::error::{Error, IoContext, Result};
use crate::path_info::PathInfo;
use crate::store::LocalStore;

impl LocalStore {
    /// Reads and parses the `.drv` file of `drv_path` (valid or not).
    ///
    /// # Errors
    ///
    /// [`Error::NotDerivation`] when the path is not a `.drv`, or when the
    /// file cannot be read or does not parse.
    pub fn read_derivation(&self, drv_path: &StorePath) -> Result<Derivation> {
        let name = drv_path
            .name()
            .strip_suffix(".drv")
            .ok_or_else(|| Error::NotDerivation(self.print_path(drv_path)))?;
        let real = self.layout().real_path(drv_path);
        let bytes = fs::read(&real).io_context("reading derivation", &real)?;
        Derivation::parse_aterm(&bytes, name, self.store_dir()).map_err(|source| {
            Error::BadDerivation {
                path: self.print_path(drv_path),
                source,
            }
        })
    }

    /// Writes a derivation to the store as `<name>.drv` (a text path whose
    /// references are its input sources and derivations) and registers it
    /// with its outputs in `DerivationOutputs`. Its output paths are
    /// checked first, as Nix checks them on registration: input derivations
    /// are read from the store.
    ///
    /// # Errors
    ///
    /// When an input is not valid, an output path or output variable is
    /// wrong, or writing fails.
    pub fn write_derivation(&self, drv: &Derivation) -> Result<PathInfo> {
        let mut source = |p: &StorePath| self.read_derivation(p);
        drv.check_output_paths(&mut self.hash_cache(), &mut source)
            .map_err(|source| Error::BadDerivation {
                path: self.print_path(&drv.drv_path(self.store_dir())),
                source,
            })?;
        let aterm = drv.to_aterm(self.store_dir());
        self.add_text(
            &format!("{}.drv", drv.name()),
            aterm.as_bytes(),
            &drv.references(),
        )
    }

    /// Adds a derivation given as JSON (version 4, or Nix 2.8's `nix
    /// show-derivation` shape), filling in input-addressed output paths
    /// and their environment variables when they are absent. As the
    /// evaluator does, an output without an environment variable gets an
    /// empty one before the hash is taken, so the paths come out as Nix
    /// would compute them for the same attributes.
    ///
    /// # Errors
    ///
    /// When the JSON is malformed, a given output path is wrong, or as
    /// [`LocalStore::write_derivation`].
    pub fn add_derivation_json(&self, json: &str) -> Result<(Derivation, PathInfo)> {
        let mut drv = Derivation::from_json(json, self.store_dir()).map_err(|source| {
            Error::BadDerivation {
                path: "JSON".to_owned(),
                source,
            }
        })?;
        let missing: Vec<String> = drv
            .outputs()
            .keys()
            .filter(|name| !drv.env.contains_key(*name))
            .cloned()
            .collect();
        for name in missing {
            drv.env.insert(name, String::new());
        }
        let mut source = |p: &StorePath| self.read_derivation(p);
        drv.fill_in_output_paths(&mut self.hash_cache(), &mut source)
            .map_err(|source| Error::BadDerivation {
                path: format!("{}.drv", drv.name()),
                source,
            })?;
        let info = self.write_derivation(&drv)?;
        Ok((drv, info))
    }

    /// The outputs with known paths of the `.drv` files among `infos` that
    /// the caller gave none for, read from disk (as Nix reads them when it
    /// registers a derivation).
    pub(crate) fn read_drv_outputs(
        &self,
        infos: &[PathInfo],
        given: &BTreeMap<StorePath, BTreeMap<String, StorePath>>,
    ) -> Result<BTreeMap<StorePath, BTreeMap<String, StorePath>>> {
        let mut all = given.clone();
        for info in infos {
            if info.path.is_derivation() && !given.contains_key(&info.path) {
                let drv = self.read_derivation(&info.path)?;
                let outputs = drv
                    .output_paths(self.store_dir())
                    .into_iter()
                    .filter_map(|(name, path)| path.map(|p| (name, p)))
                    .collect();
                all.insert(info.path.clone(), outputs);
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::test_util::temp_store;

    const DRVS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors/nix-2.8/");

    fn stand_in(store: &LocalStore, path: &StorePath) {
        if store.is_valid(path).expect("query") {
            return;
        }
        let real = store.layout().real_path(path);
        fs::write(&real, b"stand-in").expect("write");
        let nar = larder_store_core::nar::hash_path(&real).expect("hash");
        store
            .register_paths(&[PathInfo::new(path.clone(), nar.hash, nar.size)])
            .expect("registers");
    }

    #[test]
    fn nix_instantiated_derivations_are_written_at_their_paths() {
        let (_dir, store) = temp_store();
        let cases: Vec<Value> = fs::read_to_string(format!("{DRVS}drv.jsonl"))
            .expect("vectors")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let mut pending: Vec<&Value> = cases.iter().collect();
        let mut written = 0;
        // Inputs first: write whatever has all its input derivations.
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|case| {
                let input_drvs: Vec<StorePath> = case["input_drvs"]
                    .as_object()
                    .expect("inputs")
                    .keys()
                    .map(|p| store.parse_path(p).expect("path"))
                    .collect();
                if !input_drvs.iter().all(|p| store.is_valid(p).expect("query")) {
                    return true;
                }
                for src in case["input_srcs"].as_array().expect("srcs") {
                    stand_in(
                        &store,
                        &store.parse_path(src.as_str().expect("src")).expect("path"),
                    );
                }
                let aterm = fs::read(format!(
                    "{DRVS}{}",
                    case["aterm_file"].as_str().expect("file")
                ))
                .expect("drv");
                let drv = Derivation::parse_aterm(
                    &aterm,
                    case["name"].as_str().expect("name"),
                    store.store_dir(),
                )
                .expect("parses");
                let info = store.write_derivation(&drv).expect("writes");
                let id = case["id"].as_str().expect("id");
                assert_eq!(store.print_path(&info.path), case["drv_path"], "{id}");
                assert_eq!(
                    fs::read(store.layout().real_path(&info.path)).expect("read"),
                    aterm,
                    "{id}"
                );
                assert_eq!(
                    store.read_derivation(&info.path).expect("reads"),
                    drv,
                    "{id}"
                );
                let outputs: BTreeMap<String, String> = store
                    .query_derivation_outputs(&info.path)
                    .expect("outputs")
                    .into_iter()
                    .map(|(name, path)| (name, store.print_path(&path)))
                    .collect();
                let expected: BTreeMap<String, String> = case["outputs"]
                    .as_object()
                    .expect("outputs")
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect();
                assert_eq!(outputs, expected, "{id}");
                written += 1;
                false
            });
            assert!(
                pending.len() < before,
                "stuck: {:?}",
                pending.iter().map(|c| &c["id"]).collect::<Vec<_>>()
            );
        }
        assert!(written >= 10, "{written}");
        assert!(store.verify(true).expect("verifies").is_ok());
    }

    #[test]
    fn json_derivations_get_their_outputs_filled_in() {
        let (_dir, store) = temp_store();
        let json = r#"{"version": 4, "name": "hello", "system": "x86_64-linux",
            "builder": "/bin/sh", "args": ["-c", "echo hi > $out"],
            "env": {"name": "hello", "system": "x86_64-linux", "builder": "/bin/sh"},
            "inputs": {"srcs": [], "drvs": {}}, "outputs": {"out": {}}}"#;
        let outcome = store.add_derivation_json(json);
        let (drv, info) = match outcome {
            Ok(done) => done,
            // The v4 shape may spell deferred outputs differently; the
            // error must still be a clear derivation error.
            Err(e) => panic!("{e}"),
        };
        let out = drv.output_paths(store.store_dir())["out"]
            .clone()
            .expect("filled in");
        assert_eq!(drv.env["out"], store.print_path(&out));
        assert_eq!(
            store.query_derivation_outputs(&info.path).expect("outputs")["out"],
            out
        );
        assert_eq!(
            store.query_valid_derivers(&out).expect("derivers"),
            [info.path.clone()].into()
        );
        let err = store.add_derivation_json("{\"version\": 4,").unwrap_err();
        assert!(matches!(err, Error::BadDerivation { .. }), "{err}");
    }

    #[test]
    fn wrong_output_paths_are_refused() {
        let (_dir, store) = temp_store();
        let aterm = fs::read(format!("{DRVS}drv/escapes.drv")).expect("drv");
        let text = String::from_utf8(aterm).expect("utf-8");
        let wrong = text.replacen(
            "0xrh0hz2fc2bmxqvsbymqlhfyldcshv4",
            "1xrh0hz2fc2bmxqvsbymqlhfyldcshv4",
            2,
        );
        let drv = Derivation::parse_aterm(wrong.as_bytes(), "escapes", store.store_dir())
            .expect("parses");
        let err = store.write_derivation(&drv).unwrap_err();
        assert!(matches!(err, Error::BadDerivation { .. }), "{err}");
        assert!(store.query_all_valid_paths().expect("all").is_empty());
    }
}
