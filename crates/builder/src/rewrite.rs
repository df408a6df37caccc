//! String rewriting: Nix's `rewriteStrings` over the builder's arguments,
//! environment and files, and hash placeholders.

use std::collections::BTreeMap;

use larder_store_core::hash::sha256;
use larder_store_core::nixbase32;

/// An ordered set of string replacements, applied one after another, as
/// Nix's `StringMap` of rewrites.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrites {
    map: BTreeMap<String, String>,
}

impl Rewrites {
    /// No rewrites.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the rewrite of `from` into `to`.
    pub fn insert(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.map.insert(from.into(), to.into());
    }

    /// The rewrites, in the order they are applied.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Applies every rewrite to `s`, in order.
    #[must_use]
    pub fn apply(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (from, to) in &self.map {
            if from != to && !from.is_empty() && out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        }
        out
    }
}

/// Nix's `hashPlaceholder(output)`: `/` and the nix32 SHA-256 of
/// `nix-output:<output>`, which a derivation uses for an output path that is
/// not known when it is written.
#[must_use]
pub fn hash_placeholder(output: &str) -> String {
    format!(
        "/{}",
        nixbase32::encode(&sha256(format!("nix-output:{output}")))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_of_out_is_nixs() {
        assert_eq!(
            hash_placeholder("out"),
            "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
        );
    }

    #[test]
    fn rewrites_apply_in_order() {
        let mut r = Rewrites::new();
        r.insert("aaa", "bbb");
        r.insert("bbb", "ccc");
        assert_eq!(r.apply("xaaay"), "xcccy");
        assert_eq!(r.apply("none"), "none");
    }
}
