//! File system work on build outputs: canonicalising metadata, scanning
//! for references, rewriting hash parts, hashing modulo self-references,
//! deleting trees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use larder_store_core::hash::{Hash, HashAlgo, Hasher};
use larder_store_core::nar;
use larder_store_core::nixbase32;
use larder_store_core::store_path::HASH_PART_LEN;
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

use crate::error::{BuildError, IoContext, Result};

/// Inodes met while canonicalising the outputs of one build, with how many
/// of their links were found inside the outputs.
#[derive(Debug, Default)]
pub(crate) struct InodesSeen {
    links: HashMap<(u64, u64), (u64, std::path::PathBuf)>,
}

impl InodesSeen {
    /// Fails when a regular file has links outside the outputs: a builder
    /// that hard-linked a file it does not own (an input, a host file)
    /// would otherwise make the store share, and change, that file.
    pub(crate) fn check_links_inside(&self, nlink: impl Fn(&Path) -> u64) -> Result<()> {
        for (seen, path) in self.links.values() {
            let total = nlink(path);
            if total > *seen {
                return Err(BuildError::rejected(format!(
                    "file '{}' has {total} hard links, only {seen} of them inside the build outputs; \
                     hard links to files outside the outputs are not allowed",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Nix's `canonicalisePathMetaData` without a uid range: only regular
/// files, directories and symlinks; modes 0444 or 0555 (directories 0555),
/// so no write, setuid, setgid or sticky bits; mtime 1; owned by us.
pub(crate) fn canonicalise(path: &Path, inodes: &mut InodesSeen) -> Result<()> {
    let meta = fs::symlink_metadata(path).at("getting status of", path)?;
    let file_type = meta.file_type();
    if !(file_type.is_file() || file_type.is_dir() || file_type.is_symlink()) {
        return Err(BuildError::rejected(format!(
            "file '{}' has an unsupported type",
            path.display()
        )));
    }
    if file_type.is_file() && meta.nlink() > 1 {
        let entry = inodes
            .links
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| (0, path.to_owned()));
        entry.0 += 1;
    }
    if !file_type.is_symlink() {
        let mode = meta.permissions().mode() & 0o7777;
        if (mode != 0o444 || file_type.is_dir()) && mode != 0o555 {
            let exec = if file_type.is_dir() || mode & 0o100 != 0 {
                0o111
            } else {
                0
            };
            fs::set_permissions(path, fs::Permissions::from_mode(0o444 | exec))
                .at("changing permissions of", path)?;
        }
    }
    if meta.mtime() != 1 || meta.mtime_nsec() != 0 {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            last_modification: Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .at("changing modification time of", path)?;
    }
    let euid = rustix::process::geteuid();
    if meta.uid() != euid.as_raw() {
        let egid = rustix::process::getegid();
        rustix::fs::chownat(CWD, path, Some(euid), Some(egid), AtFlags::SYMLINK_NOFOLLOW)
            .at("changing ownership of", path)?;
    }
    if file_type.is_dir() {
        for entry in fs::read_dir(path).at("reading directory", path)? {
            let entry = entry.at("reading directory", path)?;
            canonicalise(&entry.path(), inodes)?;
        }
    }
    Ok(())
}

/// The NAR serialisation of a path.
pub(crate) fn nar_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    nar::dump_path(path, &mut out)
        .map_err(|e| BuildError::misc(format!("serialising '{}': {e}", path.display())))?;
    Ok(out)
}

/// The SHA-256 NAR hash and size of a path.
pub(crate) fn nar_hash(path: &Path) -> Result<(Hash, u64)> {
    let h = nar::hash_path(path)
        .map_err(|e| BuildError::misc(format!("hashing '{}': {e}", path.display())))?;
    Ok((h.hash, h.size))
}

/// Which of the `candidates` (hash parts) occur in the NAR of `path`.
pub(crate) fn scan_references(
    path: &Path,
    candidates: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let mut scanner = RefScanner::new(candidates);
    nar::dump_path(path, &mut scanner).map_err(|e| {
        BuildError::misc(format!("scanning '{}' for references: {e}", path.display()))
    })?;
    Ok(scanner.found)
}

/// An `io::Write` sink that finds hash parts, carrying the end of each
/// chunk over so a match across two writes is found.
struct RefScanner<'a> {
    candidates: &'a BTreeSet<String>,
    found: BTreeSet<String>,
    carry: Vec<u8>,
}

impl<'a> RefScanner<'a> {
    fn new(candidates: &'a BTreeSet<String>) -> Self {
        Self {
            candidates,
            found: BTreeSet::new(),
            carry: Vec::new(),
        }
    }

    fn search(&mut self, data: &[u8]) {
        let mut i = 0;
        while i + HASH_PART_LEN <= data.len() {
            // Check from the end of the window so one bad byte skips the
            // windows that hold it.
            let window = &data[i..i + HASH_PART_LEN];
            match window
                .iter()
                .rposition(|&b| nixbase32::digit_value(b).is_none())
            {
                Some(bad) => i += bad + 1,
                None => {
                    if let Ok(s) = std::str::from_utf8(window)
                        && self.candidates.contains(s)
                    {
                        self.found.insert(s.to_owned());
                    }
                    i += 1;
                }
            }
        }
    }
}

impl Write for RefScanner<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.carry.is_empty() {
            self.search(buf);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&buf[..buf.len().min(HASH_PART_LEN)]);
            self.search(&joined);
            if buf.len() > HASH_PART_LEN {
                self.search(buf);
            }
        }
        let keep = HASH_PART_LEN - 1;
        let tail_from = buf.len().saturating_sub(keep);
        if buf.len() >= keep {
            self.carry = buf[tail_from..].to_vec();
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(buf);
            let drop = carry.len().saturating_sub(keep);
            carry.drain(..drop);
            self.carry = carry;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Replaces every occurrence of each `from` with its `to` (equal lengths).
fn replace_all(data: &mut [u8], rewrites: &BTreeMap<String, String>) {
    for (from, to) in rewrites {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        if from.is_empty() || from.len() != to.len() || from == to {
            continue;
        }
        let mut i = 0;
        while i + from.len() <= data.len() {
            if &data[i..i + from.len()] == from {
                data[i..i + from.len()].copy_from_slice(to);
                i += from.len();
            } else {
                i += 1;
            }
        }
    }
}

/// Rewrites hash parts inside the tree at `path` (same-length
/// replacements), through its NAR: the rewritten copy is restored beside it
/// and replaces it. Nothing happens when no `from` occurs.
pub(crate) fn rewrite_tree(path: &Path, rewrites: &BTreeMap<String, String>) -> Result<()> {
    if rewrites.is_empty() {
        return Ok(());
    }
    let mut bytes = nar_bytes(path)?;
    let before = bytes.clone();
    replace_all(&mut bytes, rewrites);
    if bytes == before {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".rewrite");
    let tmp = std::path::PathBuf::from(tmp);
    delete_path(&tmp)?;
    nar::restore(&mut bytes.as_slice(), &tmp)
        .map_err(|e| BuildError::misc(format!("restoring '{}': {e}", tmp.display())))?;
    delete_path(path)?;
    fs::rename(&tmp, path).at("moving rewritten output to", path)?;
    Ok(())
}

/// Nix's `HashModuloSink`: the hash of `data` with every occurrence of
/// `modulus` replaced by zero bytes, followed by `|<offset>` for each.
pub(crate) fn hash_modulo(algo: HashAlgo, data: &[u8], modulus: &str) -> Hash {
    let modulus = modulus.as_bytes();
    let mut hasher = Hasher::new(algo);
    let mut offsets = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while !modulus.is_empty() && i + modulus.len() <= data.len() {
        if &data[i..i + modulus.len()] == modulus {
            hasher.update(&data[start..i]);
            hasher.update(&vec![0u8; modulus.len()]);
            offsets.push(i);
            i += modulus.len();
            start = i;
        } else {
            i += 1;
        }
    }
    hasher.update(&data[start..]);
    for offset in offsets {
        hasher.update(format!("|{offset}").as_bytes());
    }
    hasher.finish()
}

/// Deletes a file or tree if it exists, making read-only directories
/// writable first (canonical store objects are 0555).
pub(crate) fn delete_path(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BuildError::io("getting status of", path, &e)),
    };
    if meta.is_dir() {
        if meta.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .at("changing permissions of", path)?;
        }
        for entry in fs::read_dir(path).at("reading directory", path)? {
            delete_path(&entry.at("reading directory", path)?.path())?;
        }
        fs::remove_dir(path).at("deleting", path)
    } else {
        fs::remove_file(path).at("deleting", path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_matches_across_writes() {
        let hash = "0123456789abcdfghijklmnpqrsvwxyz".to_owned();
        let candidates = BTreeSet::from([hash.clone(), "z".repeat(32)]);
        let text = format!("xx/nix/store/{hash}-foo yy");
        for split in 0..text.len() {
            let mut s = RefScanner::new(&candidates);
            s.write_all(&text.as_bytes()[..split]).unwrap();
            s.write_all(&text.as_bytes()[split..]).unwrap();
            assert_eq!(s.found, BTreeSet::from([hash.clone()]), "split at {split}");
        }
        let mut s = RefScanner::new(&candidates);
        for b in text.as_bytes() {
            s.write_all(&[*b]).unwrap();
        }
        assert_eq!(s.found, BTreeSet::from([hash]));
    }

    #[test]
    fn hash_modulo_appends_offsets() {
        let h = hash_modulo(HashAlgo::Sha256, b"abXYcdXY", "XY");
        let mut expected = Hasher::new(HashAlgo::Sha256);
        expected.update(b"ab\0\0cd\0\0|2|6");
        assert_eq!(h, expected.finish());
    }
}
