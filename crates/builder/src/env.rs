//! The builder's environment, as Nix's `initEnv` sets it, and the files
//! that go with it (`passAsFile`, structured attributes,
//! `exportReferencesGraph`).

use std::collections::BTreeMap;

use larder_store_core::derivation::{Derivation, DerivationKind, STRUCTURED_ATTRS_VAR};
use larder_store_core::hash::sha256;
use larder_store_core::nixbase32;
use serde_json::{Map, Value};

use crate::error::{BuildError, Result};
use crate::rewrite::{Rewrites, hash_placeholder};
use crate::structured_attrs::{attrs_json, attrs_sh};

/// What the environment is computed from.
#[derive(Debug, Clone, Copy)]
pub struct EnvInputs<'a> {
    /// The derivation.
    pub drv: &'a Derivation,
    /// Its kind (fixed-output builds get `NIX_OUTPUT_CHECKED` and impure
    /// variables).
    pub kind: DerivationKind,
    /// The logical store directory, as in `NIX_STORE`.
    pub store_dir: &'a str,
    /// The build directory as the builder sees it.
    pub build_dir_in_sandbox: &'a str,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Placeholders and scratch paths, applied to every value and file.
    pub rewrites: &'a Rewrites,
}

/// The environment and the files to write into the build directory before
/// the builder starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuilderEnv {
    /// The variables (a map, as Nix's: a later setting overrides).
    pub vars: BTreeMap<String, String>,
    /// Files to create in the build directory: name and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

impl BuilderEnv {
    /// Computes the environment. `impure_env` looks variables up for the
    /// `impureEnvVars` of a fixed-output derivation (the caller's own
    /// environment, usually); `closure_text` renders the
    /// `exportReferencesGraph` file for a set of store paths.
    ///
    /// # Errors
    ///
    /// When the structured attributes are not a JSON object, or
    /// `exportReferencesGraph` is malformed or names a path the caller
    /// cannot render.
    pub fn compute(
        inputs: &EnvInputs<'_>,
        impure_env: &dyn Fn(&str) -> Option<String>,
        closure_text: &dyn Fn(&str) -> Result<String>,
    ) -> Result<Self> {
        let drv = inputs.drv;
        let mut env = Self::default();
        let mut set = |k: &str, v: String| {
            env.vars.insert(k.to_owned(), v);
        };
        // Defaults the derivation may override.
        set("PATH", "/path-not-set".to_owned());
        set("HOME", "/homeless-shelter".to_owned());
        set("NIX_STORE", inputs.store_dir.to_owned());
        set("NIX_BUILD_CORES", inputs.cores.to_string());

        let structured = structured_attrs(drv)?;
        let tmp = inputs.build_dir_in_sandbox;
        if let Some(attrs) = &structured {
            let outputs: BTreeMap<String, String> = drv
                .outputs()
                .keys()
                .map(|name| (name.clone(), inputs.rewrites.apply(&hash_placeholder(name))))
                .collect();
            if attrs.contains_key("exportReferencesGraph") {
                return Err(BuildError::misc(format!(
                    "derivation '{}': exportReferencesGraph with structured attributes is not supported",
                    drv.name()
                )));
            }
            let json = attrs_json(attrs, &outputs);
            let full: Map<String, Value> = serde_json::from_str(&json)
                .map_err(|e| BuildError::misc(format!("re-reading .attrs.json: {e}")))?;
            let sh = attrs_sh(&full);
            env.files.push((
                ".attrs.json".to_owned(),
                inputs.rewrites.apply(&json).into_bytes(),
            ));
            env.files.push((
                ".attrs.sh".to_owned(),
                inputs.rewrites.apply(&sh).into_bytes(),
            ));
            env.vars
                .insert("NIX_ATTRS_SH_FILE".to_owned(), format!("{tmp}/.attrs.sh"));
            env.vars.insert(
                "NIX_ATTRS_JSON_FILE".to_owned(),
                format!("{tmp}/.attrs.json"),
            );
        } else {
            let pass_as_file: Vec<&str> = drv
                .env
                .get("passAsFile")
                .map(|s| s.split_ascii_whitespace().collect())
                .unwrap_or_default();
            for (name, value) in &drv.env {
                if pass_as_file.contains(&name.as_str()) {
                    continue;
                }
                env.vars.insert(name.clone(), value.clone());
            }
            for name in &pass_as_file {
                let file = format!(".attr-{}", nixbase32::encode(&sha256(name)));
                let value = drv.env.get(*name).cloned().unwrap_or_default();
                env.files
                    .push((file.clone(), inputs.rewrites.apply(&value).into_bytes()));
                env.vars
                    .insert(format!("{name}Path"), format!("{tmp}/{file}"));
            }
            if let Some(graph) = drv.env.get("exportReferencesGraph") {
                let words: Vec<&str> = graph.split_ascii_whitespace().collect();
                if !words.len().is_multiple_of(2) {
                    return Err(BuildError::misc(format!(
                        "odd number of tokens in 'exportReferencesGraph': '{graph}'"
                    )));
                }
                for pair in words.chunks(2) {
                    let (file, path) = (pair[0], pair[1]);
                    if file.is_empty() || file.contains('/') || file.starts_with('.') {
                        return Err(BuildError::misc(format!(
                            "invalid file name '{file}' in 'exportReferencesGraph'"
                        )));
                    }
                    env.files
                        .push((file.to_owned(), closure_text(path)?.into_bytes()));
                }
            }
        }

        for name in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
            env.vars.insert(name.to_owned(), tmp.to_owned());
        }
        if inputs.kind == DerivationKind::Fixed {
            env.vars
                .insert("NIX_OUTPUT_CHECKED".to_owned(), "1".to_owned());
            for name in impure_env_vars(drv, structured.as_ref()) {
                let value = impure_env(&name).unwrap_or_default();
                env.vars.insert(name, value);
            }
        }
        env.vars.insert("NIX_LOG_FD".to_owned(), "2".to_owned());
        env.vars
            .insert("TERM".to_owned(), "xterm-256color".to_owned());

        for value in env.vars.values_mut() {
            *value = inputs.rewrites.apply(value);
        }
        Ok(env)
    }
}

/// The parsed structured attributes, if the derivation has them.
pub(crate) fn structured_attrs(drv: &Derivation) -> Result<Option<Map<String, Value>>> {
    drv.env
        .get(STRUCTURED_ATTRS_VAR)
        .map(|json| {
            serde_json::from_str::<Map<String, Value>>(json).map_err(|e| {
                BuildError::misc(format!(
                    "derivation '{}': structured attributes are not a JSON object: {e}",
                    drv.name()
                ))
            })
        })
        .transpose()
}

/// `impureEnvVars`: a whitespace-separated list, or a JSON list of strings
/// in structured attributes.
fn impure_env_vars(drv: &Derivation, structured: Option<&Map<String, Value>>) -> Vec<String> {
    match structured {
        Some(attrs) => match attrs.get("impureEnvVars") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        },
        None => drv
            .env
            .get("impureEnvVars")
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}
