//! Store paths and the store directory.
//!
//! A [`StorePath`] is only the base name, `<hash part>-<name>`, as in Nix:
//! which directory it lives in is a property of the store, held by
//! [`StoreDir`], so tests can use a temporary store directory while the
//! logical directory stays `/nix/store`. A `StorePath` is always valid: the
//! hash part is 32 nix32 digits and the name follows Nix's rules.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo, sha256};
use crate::nixbase32;

/// Bytes in a store path's hash part.
pub const HASH_BYTES: usize = 20;
/// Characters in a store path's hash part.
pub const HASH_PART_LEN: usize = 32;
/// The longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a valid store path, or why a path cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// Fewer characters than a hash part and a dash.
    #[error("'{0}' is too short to be a valid store path")]
    TooShort(String),
    /// The hash part holds a character outside nix32.
    #[error("store path '{path}' contains illegal base-32 character '{byte}'")]
    HashCharacter {
        /// The base name.
        path: String,
        /// The character, escaped when not printable ASCII.
        byte: EscapedByte,
    },
    /// No dash after the 32 hash characters.
    #[error("store path '{0}' has no '-' after its hash part")]
    MissingDash(String),
    /// The name is empty.
    #[error("store path '{0}' has an empty name")]
    EmptyName(String),
    /// The name is over 211 bytes.
    #[error("store path '{0}' has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    /// The name holds a byte outside `[0-9a-zA-Z+-._?=]`.
    #[error("store path '{path}' contains illegal character '{byte}'")]
    NameCharacter {
        /// The base name.
        path: String,
        /// The character, escaped when not printable ASCII.
        byte: EscapedByte,
    },
    /// A full path that is not directly inside the store directory.
    #[error("path '{path}' is not in the Nix store '{store_dir}'")]
    NotInStore {
        /// The path given.
        path: String,
        /// The store directory it was checked against.
        store_dir: String,
    },
    /// A store directory that is not an absolute, canonical path.
    #[error(
        "store directory '{0}' must be an absolute path without '.', '..', '//' or a trailing '/'"
    )]
    BadStoreDir(String),
    /// References that this kind of content address cannot carry.
    #[error(
        "fixed output derivation '{name}' is not allowed to refer to other store paths.\n\
         You may need to use the 'unsafeDiscardReferences' derivation attribute, see the manual for more details."
    )]
    FixedOutputReferences {
        /// The name of the path being computed.
        name: String,
    },
    /// A text path must be hashed with SHA-256 and may not refer to itself.
    #[error("text path '{name}' must use sha256 and may not refer to itself")]
    BadTextPath {
        /// The name of the path being computed.
        name: String,
    },
}

/// A byte shown as Nix shows an illegal character: itself when printable
/// ASCII, `\xNN` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscapedByte(pub u8);

impl fmt::Display for EscapedByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "{}", char::from(self.0))
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

/// A valid store path base name, `<32 nix32 digits>-<name>`.
///
/// Ordered as Nix orders `StorePathSet`: by the base name's bytes.
///
/// Cloning is cheap (a shared reference count): a build's input closure
/// hands the same thousands of paths to several places, and copying each
/// name every time was a measurable part of a build in a deep DAG.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    base_name: std::sync::Arc<str>,
}

impl StorePath {
    /// Parses a base name such as `7qh2hjzvyxnn7z0g2kldmdrx55gz5mrw-hello`.
    ///
    /// # Errors
    ///
    /// When the hash part or the name breaks Nix's rules.
    pub fn from_base_name(base_name: &str) -> Result<Self, StorePathError> {
        if base_name.len() < HASH_PART_LEN + 1 {
            return Err(StorePathError::TooShort(base_name.to_owned()));
        }
        let bytes = base_name.as_bytes();
        if let Some(&c) = bytes[..HASH_PART_LEN]
            .iter()
            .find(|&&c| nixbase32::digit_value(c).is_none())
        {
            return Err(StorePathError::HashCharacter {
                path: base_name.to_owned(),
                byte: EscapedByte(c),
            });
        }
        if bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base_name.to_owned()));
        }
        check_name(base_name, &base_name[HASH_PART_LEN + 1..])?;
        Ok(Self {
            base_name: base_name.into(),
        })
    }

    /// Joins a 20-byte digest and a name.
    ///
    /// # Errors
    ///
    /// When the name breaks Nix's rules.
    pub fn from_digest(digest: &[u8; HASH_BYTES], name: &str) -> Result<Self, StorePathError> {
        let base_name = format!("{}-{name}", nixbase32::encode(digest));
        check_name(&base_name, name)?;
        Ok(Self {
            base_name: base_name.into(),
        })
    }

    /// The base name, `<hash part>-<name>`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.base_name
    }

    /// The 32-character hash part.
    #[must_use]
    pub fn hash_part(&self) -> &str {
        &self.base_name[..HASH_PART_LEN]
    }

    /// The name after the dash.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.base_name[HASH_PART_LEN + 1..]
    }

    /// The 20 bytes the hash part encodes.
    #[must_use]
    pub fn digest(&self) -> [u8; HASH_BYTES] {
        // Construction checked that the hash part is 32 nix32 digits, and
        // 32 digits of 5 bits are exactly 160 bits: decoding cannot fail.
        nixbase32::decode_fixed(self.hash_part()).expect("validated hash part")
    }

    /// Whether this is a derivation file (`.drv`).
    #[must_use]
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base_name)
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base_name(s)
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.base_name)
    }
}

impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_base_name(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a store path name; `path` is the base name, for messages.
fn check_name(path: &str, name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(path.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(path.to_owned()));
    }
    if let Some(&c) = name.as_bytes().iter().find(|&&c| !is_name_byte(c)) {
        return Err(StorePathError::NameCharacter {
            path: path.to_owned(),
            byte: EscapedByte(c),
        });
    }
    Ok(())
}

/// Checks a name on its own, as a store path name would be checked.
///
/// # Errors
///
/// When the name breaks Nix's rules.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let placeholder = format!("{}-{name}", "0".repeat(HASH_PART_LEN));
    check_name(&placeholder, name)
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// The references a content-addressed path may declare: other paths, and
/// whether it refers to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReferences {
    /// Other store paths, in Nix's order.
    pub others: BTreeSet<StorePath>,
    /// Whether the path refers to itself.
    pub self_ref: bool,
}

impl StoreReferences {
    /// No references at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.others.is_empty() && !self.self_ref
    }
}

/// The store directory, `/nix/store` unless a store says otherwise.
///
/// It renders store paths in full, parses full paths back, and computes
/// store paths, since the directory is part of every fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir {
    dir: Box<str>,
}

impl Default for StoreDir {
    fn default() -> Self {
        Self {
            dir: "/nix/store".into(),
        }
    }
}

impl StoreDir {
    /// A store directory; it must be absolute and canonical.
    ///
    /// # Errors
    ///
    /// When `dir` is relative, has a trailing slash, or holds `.`, `..` or `//`.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let canonical = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && dir[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !canonical {
            return Err(StorePathError::BadStoreDir(dir.to_owned()));
        }
        Ok(Self { dir: dir.into() })
    }

    /// The directory, such as `/nix/store`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.dir
    }

    /// The full path of a store path, such as `/nix/store/<hash>-hello`.
    #[must_use]
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.dir, path)
    }

    /// Parses the full path of a store path. The path must be exactly
    /// `<store dir>/<base name>`, as in a `.drv` file.
    ///
    /// # Errors
    ///
    /// When the path is outside this store directory or the base name is invalid.
    pub fn parse(&self, path: &str) -> Result<StorePath, StorePathError> {
        let base = path
            .strip_prefix(&*self.dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: path.to_owned(),
                store_dir: self.dir.to_string(),
            })?;
        StorePath::from_base_name(base)
    }

    /// Parses a path inside the store, possibly below a store path, such as
    /// `/nix/store/<hash>-hello/bin/hello`, returning the store path and the
    /// rest (empty, or starting with `/`).
    ///
    /// # Errors
    ///
    /// When the path is not inside this store directory.
    pub fn parse_inside<'a>(&self, path: &'a str) -> Result<(StorePath, &'a str), StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: path.to_owned(),
            store_dir: self.dir.to_string(),
        };
        let rest = path
            .strip_prefix(&*self.dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        let (base, sub) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        Ok((StorePath::from_base_name(base)?, sub))
    }

    /// Nix's `makeStorePath`: the path for fingerprint
    /// `<path_type>:<algo>:<base16>:<store dir>:<name>`.
    ///
    /// # Errors
    ///
    /// When `name` is not a valid store path name.
    pub fn make_store_path(
        &self,
        path_type: &str,
        hash: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        let fingerprint = format!(
            "{path_type}:{}:{}:{name}",
            hash.encode(crate::hash::HashEncoding::Base16, true),
            self.dir
        );
        StorePath::from_digest(&compress_hash(&sha256(fingerprint)), name)
    }

    /// The path of a text object (`builtins.toFile`, `.drv` files) with the
    /// SHA-256 of its contents and its references.
    ///
    /// # Errors
    ///
    /// When the hash is not SHA-256 or the name is invalid.
    pub fn make_text_path(
        &self,
        name: &str,
        hash: &Hash,
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StorePathError> {
        if hash.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::BadTextPath {
                name: name.to_owned(),
            });
        }
        let path_type = self.path_type("text", references, false);
        self.make_store_path(&path_type, hash, name)
    }

    /// Nix's `makeFixedOutputPath` for the flat and NAR methods: NAR with
    /// SHA-256 is the "source" case, which may carry references; every other
    /// combination goes through `fixed:out:` and may not.
    ///
    /// # Errors
    ///
    /// When references are given where they are not allowed, or the name is invalid.
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        method: ContentAddressMethod,
        hash: &Hash,
        references: &StoreReferences,
    ) -> Result<StorePath, StorePathError> {
        match method {
            ContentAddressMethod::Text => {
                if references.self_ref {
                    return Err(StorePathError::BadTextPath {
                        name: name.to_owned(),
                    });
                }
                self.make_text_path(name, hash, &references.others)
            }
            ContentAddressMethod::Nar if hash.algo() == HashAlgo::Sha256 => {
                let path_type = self.path_type("source", &references.others, references.self_ref);
                self.make_store_path(&path_type, hash, name)
            }
            ContentAddressMethod::Flat | ContentAddressMethod::Nar => {
                if !references.is_empty() {
                    return Err(StorePathError::FixedOutputReferences {
                        name: name.to_owned(),
                    });
                }
                let inner = format!(
                    "fixed:out:{}{}:",
                    method.prefix(),
                    hash.encode(crate::hash::HashEncoding::Base16, true)
                );
                self.make_store_path("output:out", &Hash::sha256(sha256(inner)), name)
            }
        }
    }

    /// The path of a content address with its references.
    ///
    /// # Errors
    ///
    /// As [`StoreDir::make_fixed_output_path`].
    pub fn make_content_addressed_path(
        &self,
        name: &str,
        ca: &ContentAddress,
        references: &StoreReferences,
    ) -> Result<StorePath, StorePathError> {
        self.make_fixed_output_path(name, ca.method, &ca.hash, references)
    }

    /// The output path of an input-addressed derivation: `hash` is the
    /// derivation's hash modulo, `drv_name` its name.
    ///
    /// # Errors
    ///
    /// When the resulting name is invalid.
    pub fn make_output_path(
        &self,
        output: &str,
        hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        self.make_store_path(
            &format!("output:{output}"),
            hash,
            &output_path_name(drv_name, output),
        )
    }

    fn path_type(&self, kind: &str, references: &BTreeSet<StorePath>, self_ref: bool) -> String {
        let mut path_type = kind.to_owned();
        for reference in references {
            path_type.push(':');
            path_type.push_str(&self.dir);
            path_type.push('/');
            path_type.push_str(reference.as_str());
        }
        if self_ref {
            path_type.push_str(":self");
        }
        path_type
    }
}

/// The name of a derivation output's path: the derivation's name for `out`,
/// `<name>-<output>` otherwise.
#[must_use]
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

/// Nix's `compressHash`: folds a digest into 20 bytes by XOR.
#[must_use]
pub fn compress_hash(digest: &[u8]) -> [u8; HASH_BYTES] {
    let mut out = [0; HASH_BYTES];
    for (i, byte) in digest.iter().enumerate() {
        out[i % HASH_BYTES] ^= byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "7qh2hjzvyxnn7z0g2kldmdrx55gz5mrw-hello";

    #[test]
    fn base_name_round_trip() {
        let path = StorePath::from_base_name(HELLO).unwrap();
        assert_eq!(path.hash_part(), "7qh2hjzvyxnn7z0g2kldmdrx55gz5mrw");
        assert_eq!(path.name(), "hello");
        assert_eq!(
            StorePath::from_digest(&path.digest(), "hello").unwrap(),
            path
        );
        let dir = StoreDir::default();
        let full = dir.display(&path);
        assert_eq!(dir.parse(&full).unwrap(), path);
        assert_eq!(
            dir.parse_inside(&format!("{full}/bin/sh")).unwrap(),
            (path, "/bin/sh")
        );
    }

    #[test]
    fn rejects_bad_base_names() {
        assert!(matches!(
            StorePath::from_base_name("abc"),
            Err(StorePathError::TooShort(_))
        ));
        let e_in_hash = format!("e{}", &HELLO[1..]);
        assert!(matches!(
            StorePath::from_base_name(&e_in_hash),
            Err(StorePathError::HashCharacter {
                byte: EscapedByte(b'e'),
                ..
            })
        ));
        let no_dash = format!("{}xhello", &HELLO[..32]);
        assert!(matches!(
            StorePath::from_base_name(&no_dash),
            Err(StorePathError::MissingDash(_))
        ));
        let err = StorePath::from_base_name(&format!("{}-é", &HELLO[..32])).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("contains illegal character '\\xc3'"),
            "{err}"
        );
    }

    #[test]
    fn store_dir_must_be_canonical() {
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/./store",
            "/nix/../store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
        assert!(StoreDir::new("/tmp/x/nix/store").is_ok());
        let dir = StoreDir::default();
        assert!(dir.parse(&format!("/nix/store2/{HELLO}")).is_err());
        assert!(dir.parse(&format!("/nix/store/{HELLO}/bin")).is_err());
    }

    #[test]
    fn text_path_without_references() {
        // The `build_text_path("foo", "bar", [])` case from Nix's test suite.
        let dir = StoreDir::default();
        let path = dir
            .make_text_path("foo", &HashAlgo::Sha256.digest("bar"), &BTreeSet::new())
            .unwrap();
        assert_eq!(path.as_str(), "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
    }
}
