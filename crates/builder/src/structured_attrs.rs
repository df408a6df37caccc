//! Structured attributes: the `.attrs.json` and `.attrs.sh` files a builder
//! of a `__structuredAttrs` derivation reads, byte for byte as Nix 2.8
//! writes them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The contents of `.attrs.json`: the structured attributes with an
/// `outputs` object mapping each output to its path (as the builder sees
/// it), printed compactly with sorted keys, as nlohmann's `dump()`.
#[must_use]
pub fn attrs_json(attrs: &Map<String, Value>, outputs: &BTreeMap<String, String>) -> String {
    let mut json = attrs.clone();
    let outputs: Map<String, Value> = outputs
        .iter()
        .map(|(name, path)| (name.clone(), Value::String(path.clone())))
        .collect();
    json.insert("outputs".to_owned(), Value::Object(outputs));
    sorted(&Value::Object(json)).to_string()
}

/// The contents of `.attrs.sh`: a `declare` line for every attribute whose
/// name is a shell variable name and whose value is a string, an integer,
/// a Boolean or null, or an array or object of those.
#[must_use]
pub fn attrs_sh(json: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = json.keys().collect();
    keys.sort();
    let mut out = String::new();
    for key in keys {
        if !is_shell_var_name(key) {
            continue;
        }
        let value = &json[key.as_str()];
        if let Some(simple) = simple_shell_value(value) {
            out.push_str(&format!("declare {key}={simple}\n"));
        } else if let Value::Array(items) = value {
            let mut body = String::new();
            let all_simple = items.iter().all(|item| {
                simple_shell_value(item).is_some_and(|s| {
                    body.push_str(&s);
                    body.push(' ');
                    true
                })
            });
            if all_simple {
                out.push_str(&format!("declare -a {key}=({body})\n"));
            }
        } else if let Value::Object(entries) = value {
            let mut names: Vec<&String> = entries.keys().collect();
            names.sort();
            let mut body = String::new();
            let all_simple = names.iter().all(|name| {
                simple_shell_value(&entries[name.as_str()]).is_some_and(|s| {
                    body.push_str(&format!("[{}]={s} ", shell_escape(name)));
                    true
                })
            });
            if all_simple {
                out.push_str(&format!("declare -A {key}=({body})\n"));
            }
        }
    }
    out
}

/// A JSON value whose objects are rebuilt in sorted key order, so the
/// output is sorted whether or not `serde_json` preserves insertion order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k.as_str()])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_shell_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Nix's `handleSimpleType`: strings quoted, integral numbers as integers,
/// null as `''`, true as `1` and false as nothing; anything else has no
/// shell form.
fn simple_shell_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                // Nix converts to float and prints the integer when the
                // value is integral; other floats have no shell form.
                let f = n.as_f64()?;
                (f.ceil() == f && f.abs() < 9.0e15).then(|| format!("{f:.0}"))
            }
        }
        Value::Null => Some("''".to_owned()),
        Value::Bool(true) => Some("1".to_owned()),
        Value::Bool(false) => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Single-quotes a string for the shell, as Nix's `shellEscape`.
fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Nix 2.8 wrote for a derivation with these attributes (captured
    /// from a real build: `.attrs.json` and `.attrs.sh`).
    #[test]
    fn matches_nix_2_8() {
        let attrs: Map<String, Value> = serde_json::from_str(
            r#"{"PATH":"/usr/bin:/bin","bad-name":1,"builder":"/bin/sh","f":2.5,"fa":false,
            "list":[1,2,"a b"],"n":null,"name":"sa-test-larder",
            "nested":{"a":1,"b":[true,null,"x",1.5],"c":{"d":"e\n\"f\" it's"}},
            "obj":{"x":"y","z":3},"str":"hello 'q'","system":"x86_64-linux","t":true}"#,
        )
        .unwrap();
        let outputs = BTreeMap::from([
            (
                "doc".to_owned(),
                "/nix/store/arxk18vy7kclbkaha23k8xksxw5gplma-sa-test-larder-doc".to_owned(),
            ),
            (
                "out".to_owned(),
                "/nix/store/9lpn98rmgkszx5rbvpgba4iq1w4wr8gg-sa-test-larder".to_owned(),
            ),
        ]);
        let json = attrs_json(&attrs, &outputs);
        assert_eq!(
            json,
            r#"{"PATH":"/usr/bin:/bin","bad-name":1,"builder":"/bin/sh","f":2.5,"fa":false,"list":[1,2,"a b"],"n":null,"name":"sa-test-larder","nested":{"a":1,"b":[true,null,"x",1.5],"c":{"d":"e\n\"f\" it's"}},"obj":{"x":"y","z":3},"outputs":{"doc":"/nix/store/arxk18vy7kclbkaha23k8xksxw5gplma-sa-test-larder-doc","out":"/nix/store/9lpn98rmgkszx5rbvpgba4iq1w4wr8gg-sa-test-larder"},"str":"hello 'q'","system":"x86_64-linux","t":true}"#
        );
        let full: Map<String, Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            attrs_sh(&full),
            "declare PATH='/usr/bin:/bin'\n\
             declare builder='/bin/sh'\n\
             declare fa=\n\
             declare -a list=(1 2 'a b' )\n\
             declare n=''\n\
             declare name='sa-test-larder'\n\
             declare -A obj=(['x']='y' ['z']=3 )\n\
             declare -A outputs=(['doc']='/nix/store/arxk18vy7kclbkaha23k8xksxw5gplma-sa-test-larder-doc' ['out']='/nix/store/9lpn98rmgkszx5rbvpgba4iq1w4wr8gg-sa-test-larder' )\n\
             declare str='hello '\\''q'\\'''\n\
             declare system='x86_64-linux'\n\
             declare t=1\n"
        );
    }
}
