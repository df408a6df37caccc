//! Content addresses: how a store object's path follows from its contents.
//!
//! A [`ContentAddress`] is a method ([`ContentAddressMethod`]) and a hash.
//! Nix renders it as `text:sha256:<nix32>`, `fixed:r:<algo>:<nix32>` or
//! `fixed:<algo>:<nix32>` in path infos (the `ca` column of `db.sqlite`), and
//! spells the method with its algorithm as `text:sha256`, `r:sha256` or
//! `sha256` in `.drv` files.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashEncoding, HashError};

/// How the contents are turned into bytes to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContentAddressMethod {
    /// A text file hashed as is (`builtins.toFile`, `.drv` files); may
    /// refer to other paths but not to itself; always SHA-256.
    Text,
    /// A single regular file hashed as its contents.
    Flat,
    /// Any file system object hashed as its NAR serialisation ("recursive").
    Nar,
}

impl ContentAddressMethod {
    /// The prefix Nix puts before the algorithm: `text:`, `r:` or nothing.
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Text => "text:",
            Self::Flat => "",
            Self::Nar => "r:",
        }
    }

    /// The method and algorithm as written in a `.drv` output, such as `r:sha256`.
    #[must_use]
    pub fn render_with_algo(self, algo: HashAlgo) -> String {
        format!("{}{algo}", self.prefix())
    }

    /// Parses `r:sha256`, `sha256` or `text:sha256`.
    ///
    /// # Errors
    ///
    /// When the algorithm is unknown.
    pub fn parse_with_algo(s: &str) -> Result<(Self, HashAlgo), ContentAddressError> {
        let (method, algo) = if let Some(algo) = s.strip_prefix("r:") {
            (Self::Nar, algo)
        } else if let Some(algo) = s.strip_prefix("text:") {
            (Self::Text, algo)
        } else if s.starts_with("git:") {
            return Err(ContentAddressError::Unsupported(s.to_owned()));
        } else {
            (Self::Flat, s)
        };
        Ok((method, algo.parse()?))
    }

    /// The name used in derivation JSON: `text`, `flat` or `nar`.
    #[must_use]
    pub const fn json_name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Flat => "flat",
            Self::Nar => "nar",
        }
    }

    /// Parses a JSON method name.
    ///
    /// # Errors
    ///
    /// When the name is none of `text`, `flat`, `nar` (`git` is not supported).
    pub fn from_json_name(s: &str) -> Result<Self, ContentAddressError> {
        match s {
            "text" => Ok(Self::Text),
            "flat" => Ok(Self::Flat),
            "nar" => Ok(Self::Nar),
            other => Err(ContentAddressError::Unsupported(other.to_owned())),
        }
    }
}

/// What is wrong with a content address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    /// The hash part is malformed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Neither `text:` nor `fixed:`.
    #[error("content address '{0}' does not start with 'text:' or 'fixed:'")]
    BadPrefix(String),
    /// A method larder does not implement (such as `git:`).
    #[error("unsupported content-address method '{0}'")]
    Unsupported(String),
    /// Text content addresses must use SHA-256.
    #[error("text content address '{0}' must use sha256")]
    TextNotSha256(String),
}

/// A content address: a method and the hash of the contents under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentAddress {
    /// How the contents were serialised for hashing.
    pub method: ContentAddressMethod,
    /// The hash.
    pub hash: Hash,
}

impl ContentAddress {
    /// Nix's rendering, such as `fixed:r:sha256:<nix32>`.
    #[must_use]
    pub fn render(&self) -> String {
        let hash = self.hash.encode(HashEncoding::Nix32, true);
        match self.method {
            ContentAddressMethod::Text => format!("text:{hash}"),
            method => format!("fixed:{}{hash}", method.prefix()),
        }
    }

    /// Parses Nix's rendering.
    ///
    /// # Errors
    ///
    /// When the prefix or the hash is malformed.
    pub fn parse(s: &str) -> Result<Self, ContentAddressError> {
        if let Some(hash) = s.strip_prefix("text:") {
            let hash = Hash::parse_prefixed(hash)?;
            if hash.algo() != HashAlgo::Sha256 {
                return Err(ContentAddressError::TextNotSha256(s.to_owned()));
            }
            Ok(Self {
                method: ContentAddressMethod::Text,
                hash,
            })
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            let (method, hash) = match rest.strip_prefix("r:") {
                Some(hash) => (ContentAddressMethod::Nar, hash),
                None if rest.starts_with("git:") => {
                    return Err(ContentAddressError::Unsupported(s.to_owned()));
                }
                None => (ContentAddressMethod::Flat, rest),
            };
            Ok(Self {
                method,
                hash: Hash::parse_prefixed(hash)?,
            })
        } else {
            Err(ContentAddressError::BadPrefix(s.to_owned()))
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse() {
        let hash = HashAlgo::Sha256.digest("hello\n");
        for method in [
            ContentAddressMethod::Text,
            ContentAddressMethod::Flat,
            ContentAddressMethod::Nar,
        ] {
            let ca = ContentAddress { method, hash };
            assert_eq!(ContentAddress::parse(&ca.render()).unwrap(), ca);
        }
        assert_eq!(
            ContentAddress::parse(
                "text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
            )
            .unwrap()
            .hash
            .to_base16(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert!(ContentAddress::parse("foo:sha256:x").is_err());
        assert!(ContentAddress::parse("fixed:git:sha1:x").is_err());
        assert_eq!(
            ContentAddressMethod::parse_with_algo("r:sha1").unwrap(),
            (ContentAddressMethod::Nar, HashAlgo::Sha1)
        );
    }
}
