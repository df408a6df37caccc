//! Hashing file-system objects: the NAR hash and size of a path, in one
//! algorithm or several at once, and the "flat" hash of a regular file.
//!
//! Nothing is materialised: the NAR is written straight into the hashers,
//! file contents through the [`Dumper`]'s reused buffer, so memory stays at
//! the buffer's size whatever the size of the tree.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use super::write::{DumpError, Dumper};
use crate::hash::{Hash, HashAlgo, Hasher};

/// The NAR hash and NAR size of a file-system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarHash {
    /// The hash of the NAR bytes.
    pub hash: Hash,
    /// The NAR's length in bytes.
    pub size: u64,
}

/// Several hashers fed the same bytes, as an [`io::Write`] sink.
#[derive(Clone)]
pub struct MultiHasher {
    hashers: Vec<Hasher>,
}

impl MultiHasher {
    /// One hasher per algorithm, in the order given.
    #[must_use]
    pub fn new(algos: &[HashAlgo]) -> Self {
        Self {
            hashers: algos.iter().map(|&algo| Hasher::new(algo)).collect(),
        }
    }

    /// Feeds `data` to every hasher.
    pub fn update(&mut self, data: &[u8]) {
        for hasher in &mut self.hashers {
            hasher.update(data);
        }
    }

    /// The hashes, in the order the algorithms were given.
    #[must_use]
    pub fn finish(self) -> Vec<Hash> {
        self.hashers.into_iter().map(Hasher::finish).collect()
    }
}

impl Write for MultiHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Dumper {
    /// The NAR hash (in `algo`) and NAR size of `path`.
    ///
    /// # Errors
    ///
    /// As [`Dumper::dump`].
    pub fn hash_path(&mut self, path: &Path, algo: HashAlgo) -> Result<NarHash, DumpError> {
        let mut hasher = Hasher::new(algo);
        let size = self.dump(path, &mut hasher)?;
        Ok(NarHash {
            hash: hasher.finish(),
            size,
        })
    }

    /// The NAR hashes of `path` in each of `algos` (in that order), from one
    /// walk of the tree, and the NAR size.
    ///
    /// # Errors
    ///
    /// As [`Dumper::dump`].
    pub fn hash_path_multi(
        &mut self,
        path: &Path,
        algos: &[HashAlgo],
    ) -> Result<(Vec<Hash>, u64), DumpError> {
        let mut hasher = MultiHasher::new(algos);
        let size = self.dump(path, &mut hasher)?;
        Ok((hasher.finish(), size))
    }

    /// The hash of the contents of the file at `path` (Nix's "flat"
    /// method), following symlinks as `nix hash file` does.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or read.
    pub fn hash_file_flat(&mut self, path: &Path, algo: HashAlgo) -> Result<Hash, DumpError> {
        let read_error = |source| DumpError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_error)?;
        let buf = self.buffer();
        let mut hasher = Hasher::new(algo);
        loop {
            match file.read(buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
    }
}

/// The SHA-256 NAR hash and the NAR size of `path`: what Nix records as
/// `narHash` and `narSize`.
///
/// # Errors
///
/// As [`Dumper::dump`].
pub fn hash_path(path: &Path) -> Result<NarHash, DumpError> {
    Dumper::new().hash_path(path, HashAlgo::Sha256)
}

/// The flat hash of the file at `path` in `algo`.
///
/// # Errors
///
/// When the file cannot be opened or read.
pub fn hash_file_flat(path: &Path, algo: HashAlgo) -> Result<Hash, DumpError> {
    Dumper::new().hash_file_flat(path, algo)
}
