//! Derivation JSON.
//!
//! larder writes and reads Nix's current shape, version 4: store paths as
//! base names, outputs told apart by their keys, inputs nested under
//! `inputs`, structured attributes as a `structuredAttrs` object. It also
//! reads what Nix 2.8's `nix show-derivation` prints: an object from full
//! `.drv` paths to `{outputs, inputSrcs, inputDrvs, system, builder, args,
//! env}` with full store paths and ATerm-style `hashAlgo`/`hash` fields.
//!
//! Syntax and type errors keep serde_json's line and column.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

use super::aterm::parse_output;
use super::{Derivation, DerivationError, DerivationOutput, STRUCTURED_ATTRS_VAR};

/// The derivation JSON version larder writes.
pub const JSON_VERSION: u64 = 4;

impl Derivation {
    /// The derivation as Nix's JSON, version 4. A `__json` environment
    /// variable that holds a JSON object is shown as `structuredAttrs`
    /// (keys sorted, as Nix prints them); one that does not stays in `env`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut env = self.env.clone();
        let structured = self.structured_attrs().ok().flatten();
        if structured.is_some() {
            env.remove(STRUCTURED_ATTRS_VAR);
        }
        let outputs: Map<String, Value> = self
            .outputs
            .iter()
            .map(|(name, output)| (name.clone(), output_json(output)))
            .collect();
        let drvs: Map<String, Value> = self
            .input_drvs
            .iter()
            .map(|(path, outputs)| {
                (
                    path.to_string(),
                    json!({ "outputs": outputs, "dynamicOutputs": {} }),
                )
            })
            .collect();
        let mut doc = json!({
            "name": self.name,
            "version": JSON_VERSION,
            "outputs": outputs,
            "inputs": { "srcs": self.input_srcs, "drvs": drvs },
            "system": self.system,
            "builder": self.builder,
            "args": self.args,
            "env": env,
        });
        if let (Some(structured), Some(doc)) = (structured, doc.as_object_mut()) {
            doc.insert("structuredAttrs".to_owned(), Value::Object(structured));
        }
        doc
    }

    /// [`Derivation::to_json`] printed as Nix prints it: two-space
    /// indentation, keys sorted, no trailing newline.
    #[must_use]
    pub fn to_json_string(&self) -> String {
        // Serialising a `Value` to a string cannot fail: its maps have
        // string keys and its numbers are finite.
        serde_json::to_string_pretty(&self.to_json()).expect("a JSON value always serialises")
    }

    /// Reads derivation JSON in either shape: version 4, or Nix 2.8's
    /// `nix show-derivation` output holding exactly one derivation (whose
    /// full paths must be in `store_dir`).
    ///
    /// # Errors
    ///
    /// When the JSON is malformed, has the wrong types or keys, is another
    /// version, or holds other than one Nix 2.8 derivation.
    pub fn from_json(json: &str, store_dir: &StoreDir) -> Result<Self, DerivationError> {
        let value: Value = serde_json::from_str(json)?;
        let Value::Object(doc) = &value else {
            return Err(DerivationError::JsonShape(
                "expected a JSON object".to_owned(),
            ));
        };
        if doc.contains_key("version") {
            return Self::from_json_v4(json);
        }
        let mut all = Self::from_json_legacy(json, store_dir)?;
        match all.len() {
            1 => Ok(all
                .pop_first()
                .map(|(_, drv)| drv)
                .ok_or_else(|| DerivationError::JsonShape("no derivation".to_owned()))?),
            n => Err(DerivationError::JsonShape(format!(
                "expected one derivation, found {n}"
            ))),
        }
    }

    /// Reads version 4 derivation JSON.
    ///
    /// # Errors
    ///
    /// When the JSON is malformed, has the wrong types or keys, or is not
    /// version 4; or when it uses impure outputs or dynamic derivations.
    pub fn from_json_v4(json: &str) -> Result<Self, DerivationError> {
        let doc: V4 = serde_json::from_str(json)?;
        if doc.version != JSON_VERSION {
            return Err(DerivationError::JsonShape(format!(
                "derivation JSON version {} is not supported; larder reads version \
                 {JSON_VERSION} and the Nix 2.8 'nix show-derivation' shape",
                doc.version
            )));
        }
        let mut drv = Self::new(&doc.name)?;
        for (name, output) in doc.outputs {
            let output = match output.0 {
                Some(output) => output,
                None => return Err(DerivationError::Impure { output: name }),
            };
            drv.insert_output(&name, output)?;
        }
        drv.input_srcs = doc.inputs.srcs;
        for (path, input) in doc.inputs.drvs {
            if !input.dynamic_outputs.is_empty() {
                return Err(DerivationError::DynamicOutputs { drv: path });
            }
            if input.outputs.is_empty() {
                return Err(DerivationError::NoInputOutputs(path));
            }
            for output in &input.outputs {
                super::check_output_name(output)?;
            }
            drv.input_drvs.insert(path, input.outputs);
        }
        drv.system = doc.system;
        drv.builder = doc.builder;
        drv.args = doc.args;
        drv.env = doc.env;
        if let Some(structured) = doc.structured_attrs {
            // Keys come out sorted (serde_json's map is ordered), as Nix's
            // nlohmann::json prints them.
            let json = Value::Object(structured).to_string();
            match drv.env.get(STRUCTURED_ATTRS_VAR) {
                Some(existing) if *existing != json => {
                    return Err(DerivationError::JsonShape(format!(
                        "'structuredAttrs' and the environment variable \
                         '{STRUCTURED_ATTRS_VAR}' disagree"
                    )));
                }
                _ => {
                    drv.env.insert(STRUCTURED_ATTRS_VAR.to_owned(), json);
                }
            }
        }
        Ok(drv)
    }

    /// Reads what Nix 2.8's `nix show-derivation` prints: every derivation
    /// by its `.drv` path.
    ///
    /// # Errors
    ///
    /// When the JSON is malformed or has the wrong types, a path is not in
    /// `store_dir` or is not a `.drv`, or an output is malformed.
    pub fn from_json_legacy(
        json: &str,
        store_dir: &StoreDir,
    ) -> Result<BTreeMap<StorePath, Self>, DerivationError> {
        let doc: BTreeMap<String, Legacy> = serde_json::from_str(json)?;
        if doc.is_empty() {
            return Err(DerivationError::JsonShape(
                "expected a version 4 derivation or an object from .drv paths to derivations"
                    .to_owned(),
            ));
        }
        let mut all = BTreeMap::new();
        for (drv_path, legacy) in doc {
            let path = store_dir.parse(&drv_path)?;
            let drv = legacy.into_derivation(&path, store_dir)?;
            all.insert(path, drv);
        }
        Ok(all)
    }
}

/// The JSON of one output, version 4.
fn output_json(output: &DerivationOutput) -> Value {
    match output {
        DerivationOutput::InputAddressed(path) => json!({ "path": path }),
        DerivationOutput::Fixed(ca) => json!({
            "method": ca.method.json_name(),
            "hash": ca.hash.to_sri(),
        }),
        DerivationOutput::Floating { method, algo } => json!({
            "method": method.json_name(),
            "hashAlgo": algo.name(),
        }),
        DerivationOutput::Deferred => json!({}),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V4 {
    name: String,
    version: u64,
    outputs: BTreeMap<String, V4Output>,
    inputs: V4Inputs,
    system: String,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    #[serde(default, rename = "structuredAttrs")]
    structured_attrs: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V4Inputs {
    srcs: BTreeSet<StorePath>,
    drvs: BTreeMap<StorePath, V4InputDrv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V4InputDrv {
    outputs: BTreeSet<String>,
    #[serde(default, rename = "dynamicOutputs")]
    dynamic_outputs: Map<String, Value>,
}

/// A version 4 output; `None` for an impure one, which is rejected with the
/// output's name once it is known.
#[derive(Deserialize)]
#[serde(try_from = "RawV4Output")]
struct V4Output(Option<DerivationOutput>);

/// Every key an output may have; which are present tells the kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawV4Output {
    path: Option<StorePath>,
    method: Option<String>,
    hash: Option<String>,
    #[serde(rename = "hashAlgo")]
    hash_algo: Option<String>,
    impure: Option<bool>,
}

impl TryFrom<RawV4Output> for V4Output {
    type Error = String;

    fn try_from(raw: RawV4Output) -> Result<Self, String> {
        let method = |m: &str| ContentAddressMethod::from_json_name(m).map_err(|e| e.to_string());
        let algo = |a: &str| a.parse::<HashAlgo>().map_err(|e| e.to_string());
        let output = match raw {
            RawV4Output {
                path: None,
                method: None,
                hash: None,
                hash_algo: None,
                impure: None,
            } => DerivationOutput::Deferred,
            RawV4Output {
                path: Some(path),
                method: None,
                hash: None,
                hash_algo: None,
                impure: None,
            } => DerivationOutput::InputAddressed(path),
            RawV4Output {
                path: None,
                method: Some(m),
                hash: Some(h),
                hash_algo: None,
                impure: None,
            } => DerivationOutput::Fixed(ContentAddress {
                method: method(&m)?,
                hash: Hash::parse_prefixed(&h).map_err(|e| e.to_string())?,
            }),
            RawV4Output {
                path: None,
                method: Some(m),
                hash: None,
                hash_algo: Some(a),
                impure: None,
            } => DerivationOutput::Floating {
                method: method(&m)?,
                algo: algo(&a)?,
            },
            RawV4Output {
                path: None,
                method: Some(_),
                hash: None,
                hash_algo: Some(_),
                impure: Some(true),
            } => return Ok(Self(None)),
            _ => {
                return Err(
                    "unknown kind of derivation output: expected {} (deferred), \
                     {path} (input-addressed), {method, hash} (fixed), {method, hashAlgo} \
                     (floating) or {method, hashAlgo, impure: true} (impure)"
                        .to_owned(),
                );
            }
        };
        Ok(Self(Some(output)))
    }
}

/// One derivation in Nix 2.8's `nix show-derivation` output.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Legacy {
    outputs: BTreeMap<String, LegacyOutput>,
    input_srcs: Vec<String>,
    input_drvs: BTreeMap<String, BTreeSet<String>>,
    system: String,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LegacyOutput {
    path: Option<String>,
    hash_algo: Option<String>,
    hash: Option<String>,
}

impl Legacy {
    fn into_derivation(
        self,
        drv_path: &StorePath,
        store_dir: &StoreDir,
    ) -> Result<Derivation, DerivationError> {
        let name = drv_path.name().strip_suffix(".drv").ok_or_else(|| {
            DerivationError::JsonShape(format!("'{drv_path}' is not a .drv path"))
        })?;
        let mut drv = Derivation::new(name)?;
        for (output, fields) in self.outputs {
            let path = fields.path.unwrap_or_default();
            let parsed = parse_output(
                store_dir,
                &output,
                &path,
                fields.hash_algo.as_deref().unwrap_or_default(),
                fields.hash.as_deref().unwrap_or_default(),
            )?;
            drv.insert_output(&output, parsed)?;
            if let Some(expected) = drv.output_paths(store_dir).remove(&output).flatten() {
                let expected = store_dir.display(&expected);
                if matches!(drv.outputs[&output], DerivationOutput::Fixed(_)) && path != expected {
                    return Err(DerivationError::FixedPathMismatch {
                        output,
                        path,
                        expected,
                    });
                }
            }
        }
        for src in &self.input_srcs {
            drv.input_srcs.insert(store_dir.parse(src)?);
        }
        for (input, outputs) in self.input_drvs {
            let input = store_dir.parse(&input)?;
            if outputs.is_empty() {
                return Err(DerivationError::NoInputOutputs(input));
            }
            for output in &outputs {
                super::check_output_name(output)?;
            }
            drv.input_drvs.insert(input, outputs);
        }
        drv.system = self.system;
        drv.builder = self.builder;
        drv.args = self.args;
        drv.env = self.env;
        Ok(drv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_kinds_by_keys() {
        let parse = |s: &str| serde_json::from_str::<V4Output>(s).map(|o| o.0);
        assert_eq!(parse("{}").unwrap(), Some(DerivationOutput::Deferred));
        assert_eq!(
            parse(r#"{"method":"nar","hashAlgo":"sha256"}"#).unwrap(),
            Some(DerivationOutput::Floating {
                method: ContentAddressMethod::Nar,
                algo: HashAlgo::Sha256
            })
        );
        assert_eq!(
            parse(r#"{"method":"nar","hashAlgo":"sha256","impure":true}"#).unwrap(),
            None
        );
        let err = parse(r#"{"method":"nar"}"#).unwrap_err().to_string();
        assert!(err.contains("unknown kind of derivation output"), "{err}");
        let err = parse(r#"{"bogus":1}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
        let err = parse(r#"{"path":3}"#).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn wrong_version_and_shapes() {
        let dir = StoreDir::default();
        let err = Derivation::from_json(r#"{"version":3}"#, &dir).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        let v5 = r#"{"name":"x","version":5,"outputs":{},"inputs":{"srcs":[],"drvs":{}},
            "system":"s","builder":"b","args":[],"env":{}}"#;
        let err = Derivation::from_json(v5, &dir).unwrap_err();
        assert!(err.to_string().contains("version 5"), "{err}");
        assert!(Derivation::from_json("[]", &dir).is_err());
        assert!(Derivation::from_json("{}", &dir).is_err());
        let bad_output = r#"{"name":"x","version":4,
            "outputs":{"out":{"method":"nar"}},"inputs":{"srcs":[],"drvs":{}},
            "system":"s","builder":"b","args":[],"env":{}}"#;
        let err = Derivation::from_json(bad_output, &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind of derivation output"), "{err}");
        assert!(err.contains("line 2 column"), "{err}");
        let err = Derivation::from_json("{\n  \"a\": ", &dir).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
