//! What the store knows about a valid path, and its `nix path-info --json`
//! rendering.

use std::collections::BTreeSet;

use larder_store_core::hash::HashEncoding;
use larder_store_core::store_path::StoreReferences;
use larder_store_core::{ContentAddress, Hash, HashAlgo, StoreDir, StorePath};
use serde::Serialize;

/// A valid path's metadata: one row of `ValidPaths` with its references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path.
    pub path: StorePath,
    /// The SHA-256 of its NAR serialisation.
    pub nar_hash: Hash,
    /// The size of its NAR serialisation in bytes.
    pub nar_size: u64,
    /// The store paths it refers to, itself included if it does.
    pub references: BTreeSet<StorePath>,
    /// The derivation that produced it, if known.
    pub deriver: Option<StorePath>,
    /// Its content address, when it is content-addressed.
    pub ca: Option<ContentAddress>,
    /// When it was registered, in seconds since the epoch; 0 means "now"
    /// when registering.
    pub registration_time: i64,
    /// Whether it was built locally rather than substituted.
    pub ultimate: bool,
    /// Signatures, `keyname:base64`.
    pub sigs: BTreeSet<String>,
}

impl PathInfo {
    /// A path info with the given NAR hash and size and nothing else.
    #[must_use]
    pub fn new(path: StorePath, nar_hash: Hash, nar_size: u64) -> Self {
        Self {
            path,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            deriver: None,
            ca: None,
            registration_time: 0,
            ultimate: false,
            sigs: BTreeSet::new(),
        }
    }

    /// The references split into others and self, as content addresses
    /// count them.
    #[must_use]
    pub fn store_references(&self) -> StoreReferences {
        let mut others = self.references.clone();
        let self_ref = others.remove(&self.path);
        StoreReferences { others, self_ref }
    }

    /// The path its content address gives, if it has one (Nix's
    /// `isContentAddressed` compares this with [`PathInfo::path`]).
    ///
    /// # Errors
    ///
    /// When the content address cannot carry these references, or the name
    /// is invalid.
    pub fn content_addressed_path(
        &self,
        store_dir: &StoreDir,
    ) -> Result<Option<StorePath>, larder_store_core::store_path::StorePathError> {
        self.ca
            .map(|ca| {
                store_dir.make_content_addressed_path(
                    self.path.name(),
                    &ca,
                    &self.store_references(),
                )
            })
            .transpose()
    }

    /// The object `nix path-info --json` prints for this path, with the NAR
    /// hash in SRI form as Nix 2.8 does.
    #[must_use]
    pub fn to_json(&self, store_dir: &StoreDir) -> PathInfoJson {
        PathInfoJson {
            path: store_dir.display(&self.path),
            nar_hash: Some(self.nar_hash.encode(HashEncoding::Sri, true)),
            nar_size: Some(self.nar_size),
            references: Some(
                self.references
                    .iter()
                    .map(|r| store_dir.display(r))
                    .collect(),
            ),
            ca: self.ca.map(|ca| ca.render()),
            deriver: self.deriver.as_ref().map(|d| store_dir.display(d)),
            registration_time: (self.registration_time != 0).then_some(self.registration_time),
            ultimate: self.ultimate.then_some(true),
            signatures: (!self.sigs.is_empty()).then(|| self.sigs.iter().cloned().collect()),
            valid: None,
        }
    }

    pub(crate) fn nar_hash_is_sha256(&self) -> bool {
        self.nar_hash.algo() == HashAlgo::Sha256
    }
}

/// One element of `nix path-info --json`'s array, with Nix 2.8's field
/// order. An invalid path has only `path` and `valid: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfoJson {
    /// The full store path.
    pub path: String,
    /// The NAR hash, `sha256-<base64>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    /// The NAR size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nar_size: Option<u64>,
    /// Full paths of the references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub references: Option<Vec<String>>,
    /// The content address, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The deriver, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deriver: Option<String>,
    /// The registration time, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_time: Option<i64>,
    /// Present (and true) for locally built paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ultimate: Option<bool>,
    /// Signatures, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signatures: Option<Vec<String>>,
    /// `false` for a path that is not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
}

impl PathInfoJson {
    /// The entry for a path that is not valid.
    #[must_use]
    pub fn invalid(store_dir: &StoreDir, path: &StorePath) -> Self {
        Self {
            path: store_dir.display(path),
            nar_hash: None,
            nar_size: None,
            references: None,
            ca: None,
            deriver: None,
            registration_time: None,
            ultimate: None,
            signatures: None,
            valid: Some(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_nix_shape() {
        // Taken from `nix path-info --json` of Nix 2.8 for a file added with
        // `nix-store --add-fixed sha256` holding "hello\n".
        let path = StorePath::from_base_name("d4b4lmbd433fa2xcdysz7p7zahnqh1z4-f.txt")
            .expect("valid path");
        let mut info = PathInfo::new(
            path,
            Hash::parse_prefixed(
                "sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
            )
            .expect("valid hash"),
            120,
        );
        info.ca = Some(
            ContentAddress::parse(
                "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            )
            .expect("valid ca"),
        );
        info.registration_time = 1_795_714_629;
        let json = serde_json::to_string(&info.to_json(&StoreDir::default())).expect("serialises");
        assert_eq!(
            json,
            r#"{"path":"/nix/store/d4b4lmbd433fa2xcdysz7p7zahnqh1z4-f.txt","narHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","narSize":120,"references":[],"ca":"fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq","registrationTime":1795714629}"#
        );
        assert_eq!(
            info.content_addressed_path(&StoreDir::default())
                .expect("computable"),
            Some(info.path.clone())
        );
    }
}
