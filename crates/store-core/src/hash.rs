//! Hashes as Nix prints and parses them.
//!
//! A [`Hash`](struct@Hash) always holds a digest of exactly the length its
//! [`HashAlgo`] produces; every constructor checks it. Printing and parsing
//! follow Nix's `hash.cc`: base16, nix32 and base64, with or without an
//! `algo:` prefix, and SRI (`algo-base64`).

use std::fmt;
use std::io;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::Digest as _;
use thiserror::Error;

use crate::nixbase32;

/// The hash algorithms Nix supports for store objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    /// MD5 (16 bytes). Only for fixed-output derivations.
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes): the hash of every store path computation.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// Every algorithm, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512];

    /// The digest length in bytes.
    #[must_use]
    pub const fn size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// The name Nix uses (`md5`, `sha1`, `sha256`, `sha512`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Hashes `data` in one call.
    #[must_use]
    pub fn digest(self, data: impl AsRef<[u8]>) -> Hash {
        let mut hasher = Hasher::new(self);
        hasher.update(data.as_ref());
        hasher.finish()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|algo| algo.name() == s)
            .ok_or_else(|| HashError::UnknownAlgo(s.to_owned()))
    }
}

/// How a hash is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashEncoding {
    /// Lowercase hexadecimal.
    Base16,
    /// Nix's base-32 ([`nixbase32`]).
    Nix32,
    /// Standard base64 with padding.
    Base64,
    /// Subresource integrity: `algo-base64`.
    Sri,
}

/// What is wrong with a hash string or digest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    /// The algorithm name is none of md5, sha1, sha256, sha512.
    #[error("unknown hash algorithm '{0}', expected 'md5', 'sha1', 'sha256' or 'sha512'")]
    UnknownAlgo(String),
    /// No `algo:` or `algo-` prefix, and the caller named no algorithm.
    #[error("hash '{0}' does not include a type, nor is the type otherwise known from context")]
    MissingAlgo(String),
    /// The prefix names another algorithm than the caller expects.
    #[error("hash '{hash}' should have type '{expected}'")]
    AlgoMismatch {
        /// The hash as given.
        hash: String,
        /// The algorithm the context demands.
        expected: HashAlgo,
    },
    /// The string's length fits none of the encodings of this algorithm.
    #[error("hash '{hash}' has wrong length for hash type '{algo}'")]
    WrongLength {
        /// The hash as given.
        hash: String,
        /// The algorithm it was read as.
        algo: HashAlgo,
    },
    /// A digest of the wrong size was handed to [`Hash::from_digest`].
    #[error("{algo} digest must be {} bytes, got {found}", algo.size())]
    DigestLength {
        /// The algorithm.
        algo: HashAlgo,
        /// Bytes given.
        found: usize,
    },
    /// The characters are not valid in the encoding picked by the length.
    #[error("invalid {encoding} in hash '{hash}'")]
    Encoding {
        /// The hash as given.
        hash: String,
        /// Which encoding was tried.
        encoding: &'static str,
    },
}

/// A digest together with the algorithm that made it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algo: HashAlgo,
    // Only the first `algo.size()` bytes are used; the rest stay zero so that
    // the derived comparisons look at the digest alone.
    bytes: [u8; 64],
}

impl Hash {
    /// Wraps a digest, checking its length.
    ///
    /// # Errors
    ///
    /// When `digest` is not `algo.size()` bytes long.
    pub fn from_digest(algo: HashAlgo, digest: &[u8]) -> Result<Self, HashError> {
        if digest.len() != algo.size() {
            return Err(HashError::DigestLength {
                algo,
                found: digest.len(),
            });
        }
        let mut bytes = [0; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Self { algo, bytes })
    }

    /// Wraps a SHA-256 digest, whose length the type already guarantees.
    #[must_use]
    pub fn sha256(digest: [u8; 32]) -> Self {
        let mut bytes = [0; 64];
        bytes[..32].copy_from_slice(&digest);
        Self {
            algo: HashAlgo::Sha256,
            bytes,
        }
    }

    /// The algorithm.
    #[must_use]
    pub const fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The digest bytes, exactly `algo().size()` of them.
    #[must_use]
    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    /// Spells the hash. With `include_algo`, non-SRI forms get an `algo:`
    /// prefix; SRI always carries its `algo-` prefix.
    #[must_use]
    pub fn encode(&self, encoding: HashEncoding, include_algo: bool) -> String {
        let body = match encoding {
            HashEncoding::Base16 => data_encoding::HEXLOWER.encode(self.digest()),
            HashEncoding::Nix32 => nixbase32::encode(self.digest()),
            HashEncoding::Base64 => BASE64.encode(self.digest()),
            HashEncoding::Sri => return format!("{}-{}", self.algo, BASE64.encode(self.digest())),
        };
        if include_algo {
            format!("{}:{body}", self.algo)
        } else {
            body
        }
    }

    /// Lowercase hex without prefix.
    #[must_use]
    pub fn to_base16(&self) -> String {
        self.encode(HashEncoding::Base16, false)
    }

    /// Nix32 without prefix.
    #[must_use]
    pub fn to_nix32(&self) -> String {
        self.encode(HashEncoding::Nix32, false)
    }

    /// SRI form, `algo-base64`.
    #[must_use]
    pub fn to_sri(&self) -> String {
        self.encode(HashEncoding::Sri, true)
    }

    /// Parses a hash that names its algorithm: `algo:digest` (base16, nix32
    /// or base64) or SRI `algo-base64`. Nix's `Hash::parseAnyPrefixed`.
    ///
    /// # Errors
    ///
    /// When the prefix is missing or unknown, or the digest is malformed.
    pub fn parse_prefixed(s: &str) -> Result<Self, HashError> {
        Self::parse_any(s, None)
    }

    /// Parses a hash whose algorithm is given by its prefix, by `algo`, or by
    /// both (then they must agree). Nix's `Hash::parseAny`.
    ///
    /// # Errors
    ///
    /// When no algorithm is known, the two disagree, or the digest is malformed.
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<Self, HashError> {
        let (prefix, rest, sri) = split_prefix(s);
        let found = prefix.map(str::parse::<HashAlgo>).transpose()?;
        let algo = match (found, algo) {
            (Some(found), Some(expected)) if found != expected => {
                return Err(HashError::AlgoMismatch {
                    hash: s.to_owned(),
                    expected,
                });
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(HashError::MissingAlgo(s.to_owned())),
        };
        if sri {
            Self::parse_base64(s, rest, algo)
        } else {
            Self::parse_unprefixed(rest, algo).map_err(|e| e.with_hash(s))
        }
    }

    /// Parses an SRI hash, `algo-base64`.
    ///
    /// # Errors
    ///
    /// When it is not SRI, or the algorithm or digest is malformed.
    pub fn parse_sri(s: &str) -> Result<Self, HashError> {
        let (algo, digest) = s
            .split_once('-')
            .ok_or_else(|| HashError::MissingAlgo(s.to_owned()))?;
        Self::parse_base64(s, digest, algo.parse()?)
    }

    /// Parses an unprefixed digest of a known algorithm, choosing the
    /// encoding by its length as Nix does: base16, nix32 or base64.
    ///
    /// # Errors
    ///
    /// When the length fits no encoding or the characters do not fit it.
    pub fn parse_unprefixed(s: &str, algo: HashAlgo) -> Result<Self, HashError> {
        let size = algo.size();
        let invalid = |encoding| HashError::Encoding {
            hash: s.to_owned(),
            encoding,
        };
        if s.len() == 2 * size {
            let digest = HEXLOWER_PERMISSIVE
                .decode(s.as_bytes())
                .map_err(|_| invalid("base16"))?;
            Self::from_digest(algo, &digest)
        } else if s.len() == nixbase32::encoded_len(size) {
            let digest = nixbase32::decode(s, size).map_err(|_| invalid("nix32"))?;
            Self::from_digest(algo, &digest)
        } else if s.len() == BASE64.encode_len(size) {
            Self::parse_base64(s, s, algo)
        } else {
            Err(HashError::WrongLength {
                hash: s.to_owned(),
                algo,
            })
        }
    }

    fn parse_base64(whole: &str, digest: &str, algo: HashAlgo) -> Result<Self, HashError> {
        let bytes = BASE64
            .decode(digest.as_bytes())
            .map_err(|_| HashError::Encoding {
                hash: whole.to_owned(),
                encoding: "base64",
            })?;
        if bytes.len() != algo.size() {
            return Err(HashError::WrongLength {
                hash: whole.to_owned(),
                algo,
            });
        }
        Self::from_digest(algo, &bytes)
    }
}

impl HashError {
    /// Names the whole string in messages about a part of it.
    fn with_hash(self, whole: &str) -> Self {
        match self {
            Self::WrongLength { algo, .. } => Self::WrongLength {
                hash: whole.to_owned(),
                algo,
            },
            Self::Encoding { encoding, .. } => Self::Encoding {
                hash: whole.to_owned(),
                encoding,
            },
            other => other,
        }
    }
}

/// Splits `algo:rest` or `algo-rest` (SRI); the bool says SRI.
fn split_prefix(s: &str) -> (Option<&str>, &str, bool) {
    if let Some((algo, rest)) = s.split_once(':') {
        (Some(algo), rest, false)
    } else if let Some((algo, rest)) = s.split_once('-') {
        (Some(algo), rest, true)
    } else {
        (None, s, false)
    }
}

impl fmt::Display for Hash {
    /// The `algo:nix32` form that Nix prints by default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}:{})", self.algo, self.to_base16())
    }
}

impl FromStr for Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_prefixed(s)
    }
}

/// An incremental hasher for any [`HashAlgo`], usable as an [`io::Write`] sink.
///
/// SHA-256 comes from `sha2`, which picks the CPU's SHA extensions at run time
/// where present.
#[derive(Clone)]
pub struct Hasher {
    inner: HasherInner,
    len: u64,
}

#[derive(Clone)]
enum HasherInner {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher.
    #[must_use]
    pub fn new(algo: HashAlgo) -> Self {
        let inner = match algo {
            HashAlgo::Md5 => HasherInner::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => HasherInner::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
        };
        Self { inner, len: 0 }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        match &mut self.inner {
            HasherInner::Md5(h) => h.update(data),
            HasherInner::Sha1(h) => h.update(data),
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// How many bytes were fed.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash of everything fed.
    #[must_use]
    pub fn finish(self) -> Hash {
        match self.inner {
            HasherInner::Md5(h) => finish_with(HashAlgo::Md5, &h.finalize()),
            HasherInner::Sha1(h) => finish_with(HashAlgo::Sha1, &h.finalize()),
            HasherInner::Sha256(h) => Hash::sha256(h.finalize().into()),
            HasherInner::Sha512(h) => finish_with(HashAlgo::Sha512, &h.finalize()),
        }
    }
}

fn finish_with(algo: HashAlgo, digest: &[u8]) -> Hash {
    let mut bytes = [0; 64];
    // Each RustCrypto digest has its algorithm's length by type.
    bytes[..digest.len()].copy_from_slice(digest);
    Hash { algo, bytes }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of `data`, the hash every store path computation uses.
#[must_use]
pub fn sha256(data: impl AsRef<[u8]>) -> [u8; 32] {
    sha2::Sha256::digest(data.as_ref()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abc_sha256() {
        let h = HashAlgo::Sha256.digest("abc");
        assert_eq!(
            h.to_nix32(),
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
        );
        assert_eq!(
            h.to_base16(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for enc in [
            HashEncoding::Base16,
            HashEncoding::Nix32,
            HashEncoding::Base64,
        ] {
            let prefixed = h.encode(enc, true);
            assert_eq!(Hash::parse_prefixed(&prefixed).unwrap(), h);
            let bare = h.encode(enc, false);
            assert_eq!(Hash::parse_any(&bare, Some(HashAlgo::Sha256)).unwrap(), h);
        }
        assert_eq!(Hash::parse_sri(&h.to_sri()).unwrap(), h);
        assert_eq!(Hash::parse_prefixed(&h.to_sri()).unwrap(), h);
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            Hash::parse_prefixed("abc"),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_prefixed("sha3:abc"),
            Err(HashError::UnknownAlgo(a)) if a == "sha3"
        ));
        assert!(matches!(
            Hash::parse_any("sha1:abc", Some(HashAlgo::Sha256)),
            Err(HashError::AlgoMismatch { .. })
        ));
        assert!(matches!(
            Hash::parse_prefixed("sha256:abc"),
            Err(HashError::WrongLength { .. })
        ));
        let bad_hex = format!("sha1:{}", "g".repeat(40));
        assert!(matches!(
            Hash::parse_prefixed(&bad_hex),
            Err(HashError::Encoding {
                encoding: "base16",
                ..
            })
        ));
        assert!(matches!(
            Hash::from_digest(HashAlgo::Md5, &[0; 15]),
            Err(HashError::DigestLength { .. })
        ));
    }
}
