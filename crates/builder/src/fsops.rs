//! File system work on build outputs beyond what store-core provides
//! (its [`nar`], [`references`](larder_store_core::references) and
//! [`canonicalise`] modules do the archiving, scanning and metadata):
//! rewriting hash parts inside a tree, hashing modulo a self-reference,
//! copying a tree across file systems, deleting trees.
//!
//! Everything streams. A tree is rewritten or copied by dumping its NAR
//! into a pipe in one thread while another restores it, and hashed modulo
//! its self-reference by dumping it into the hasher, so memory stays at a
//! few buffers whatever the size of an output (the NAR of a large output
//! is never held whole).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use larder_store_core::canonicalise::{self, CanonicaliseError};
use larder_store_core::hash::{Hash, HashAlgo, Hasher};
use larder_store_core::nar::{self, DumpError, Dumper};
use larder_store_core::references::RefScanner;

use crate::error::{BuildError, IoContext, Result};

/// A [`CanonicaliseError`] as a build failure: the output is rejected when
/// the rules refuse it, the build fails otherwise.
pub(crate) fn canonicalise_failure(e: CanonicaliseError) -> BuildError {
    match e {
        CanonicaliseError::Io { .. } => BuildError::misc(e.to_string()),
        CanonicaliseError::Policy { .. } | CanonicaliseError::TopLevelOwnership { .. } => {
            BuildError::rejected(e.to_string())
        }
    }
}

/// The NAR hash and size of a path, as a build failure on error.
pub(crate) fn nar_hash(path: &Path) -> Result<nar::NarHash> {
    nar::hash_path(path).map_err(|e| dump_failure("hashing", path, &e))
}

/// Rewrites hash parts inside the tree at `path` (same-length
/// replacements, applied one after another in the map's order): a
/// rewritten, canonicalised copy is made beside it and replaces it.
/// Nothing happens when no `from` occurs, which a scan finds first.
pub(crate) fn rewrite_tree(path: &Path, rewrites: &BTreeMap<String, String>) -> Result<()> {
    let rewrites = effective(rewrites);
    if rewrites.is_empty() {
        return Ok(());
    }
    // The keys are hash parts; were one not, the scan is skipped and the
    // tree is always copied.
    if let Ok(mut scanner) = RefScanner::new(rewrites.iter().map(|(from, _)| from)) {
        Dumper::new()
            .dump(path, &mut scanner)
            .map_err(|e| dump_failure("scanning", path, &e))?;
        if scanner.found_count() == 0 {
            return Ok(());
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".rewrite");
    let tmp = PathBuf::from(tmp);
    delete_path(&tmp)?;
    copy_tree(path, &tmp, &rewrites)?;
    delete_path(path)?;
    fs::rename(&tmp, path).at("moving rewritten output to", path)?;
    Ok(())
}

/// Copies the tree at `from` to `to` (which must not exist) through its
/// NAR, and canonicalises the copy (which is ours, made by this process).
pub(crate) fn copy_tree_canonical(from: &Path, to: &Path) -> Result<()> {
    copy_tree(from, to, &[])
}

/// Nix's `HashModuloSink` over the NAR of `path` (or, when `flat`, its
/// contents): the hash with every occurrence of `modulus` replaced by zero
/// bytes, followed by `|<offset>` for each occurrence.
pub(crate) fn hash_modulo_path(
    algo: HashAlgo,
    path: &Path,
    flat: bool,
    modulus: &str,
) -> Result<Hash> {
    let zeros = vec![0; modulus.len()];
    let mut sink = Replacer::new(Hasher::new(algo), &[(modulus, &zeros)]);
    if flat {
        let mut file = fs::File::open(path).at("opening", path)?;
        io::copy(&mut file, &mut sink).at("reading", path)?;
    } else {
        Dumper::new()
            .dump(path, &mut sink)
            .map_err(|e| dump_failure("hashing", path, &e))?;
    }
    let (mut hasher, offsets) = sink.finish().at("hashing", path)?;
    for offset in offsets {
        hasher.update(format!("|{offset}").as_bytes());
    }
    Ok(hasher.finish())
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

/// The rewrites that change anything and keep the NAR's framing: non-empty
/// and of equal lengths.
fn effective(rewrites: &BTreeMap<String, String>) -> Vec<(&str, &[u8])> {
    rewrites
        .iter()
        .filter(|(from, to)| !from.is_empty() && from.len() == to.len() && from != to)
        .map(|(from, to)| (from.as_str(), to.as_bytes()))
        .collect()
}

/// Copies `from` to `to` through its NAR with `rewrites` applied, then
/// canonicalises the copy. One thread dumps into a pipe while this one
/// restores from it, so at most a pipe's and a few buffers' worth of the
/// NAR is in memory.
fn copy_tree_unclean(from: &Path, to: &Path, rewrites: &[(&str, &[u8])]) -> Result<()> {
    let failure = |e: &dyn std::fmt::Display| {
        BuildError::misc(format!(
            "copying '{}' to '{}': {e}",
            from.display(),
            to.display()
        ))
    };
    let (reader, writer) = io::pipe().map_err(|e| failure(&e))?;
    let (dumped, restored) = std::thread::scope(|scope| {
        let dumper = scope.spawn(move || -> std::result::Result<(), DumpError> {
            let mut sink = Replacer::new(writer, rewrites);
            Dumper::new().dump(from, &mut sink)?;
            // Dropping the pipe's writer ends the restorer's input.
            sink.finish().map_err(DumpError::Write)?;
            Ok(())
        });
        let restored = nar::restore(&mut BufReader::new(reader), to);
        (dumper.join(), restored)
    });
    // A dump error explains a restore error (a truncated NAR), so it comes
    // first; a restore error ends the dump with a broken pipe.
    match dumped {
        Err(_) => return Err(failure(&"the NAR writer thread panicked")),
        Ok(Err(e)) if restored.is_ok() || !matches!(e, DumpError::Write(_)) => {
            return Err(failure(&e));
        }
        Ok(_) => {}
    }
    restored.map_err(|e| failure(&e))?;
    canonicalise::canonicalise_path(to).map_err(canonicalise_failure)
}

/// [`copy_tree_unclean`] that removes what it made when it fails.
fn copy_tree(from: &Path, to: &Path, rewrites: &[(&str, &[u8])]) -> Result<()> {
    copy_tree_unclean(from, to, rewrites).inspect_err(|_| {
        if let Err(e) = delete_path(to) {
            tracing::warn!(
                "removing the partial copy '{}': {}",
                to.display(),
                e.message
            );
        }
    })
}

fn dump_failure(action: &str, path: &Path, e: &DumpError) -> BuildError {
    BuildError::misc(format!("{action} '{}': {e}", path.display()))
}

/// An [`io::Write`] adapter that replaces every occurrence of each `from`
/// by its `to` (same length) before passing the stream on, the
/// replacements applied one after another as if each ran over the whole
/// stream. [`finish`](Self::finish) passes on what is held back and says
/// where the first replacement matched.
struct Replacer<W> {
    inner: W,
    stages: Vec<Stage>,
    /// Buffers reused between writes, for the data between stages.
    input: Vec<u8>,
    output: Vec<u8>,
}

/// One replacement over a stream: holds back the last bytes that may
/// start a match completed by the next write.
struct Stage {
    from: Vec<u8>,
    to: Vec<u8>,
    held: Vec<u8>,
    /// The stream offset of `held[0]`.
    position: u64,
    matches: Vec<u64>,
}

impl<W: Write> Replacer<W> {
    fn new<F: AsRef<[u8]>, T: AsRef<[u8]>>(inner: W, rewrites: &[(F, T)]) -> Self {
        let stages = rewrites
            .iter()
            .filter(|(from, _)| !from.as_ref().is_empty())
            .map(|(from, to)| Stage {
                from: from.as_ref().to_vec(),
                to: to.as_ref().to_vec(),
                held: Vec::new(),
                position: 0,
                matches: Vec::new(),
            })
            .collect();
        Self {
            inner,
            stages,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Passes on everything held back; returns the inner writer and the
    /// stream offsets where the first replacement matched.
    fn finish(mut self) -> io::Result<(W, Vec<u64>)> {
        self.pass(&[], true)?;
        let matches = self
            .stages
            .first_mut()
            .map(|s| std::mem::take(&mut s.matches))
            .unwrap_or_default();
        Ok((self.inner, matches))
    }

    fn pass(&mut self, data: &[u8], last: bool) -> io::Result<()> {
        let mut input = std::mem::take(&mut self.input);
        let mut output = std::mem::take(&mut self.output);
        input.clear();
        input.extend_from_slice(data);
        for stage in &mut self.stages {
            output.clear();
            stage.feed(&input, &mut output, last);
            std::mem::swap(&mut input, &mut output);
        }
        let written = self.inner.write_all(&input);
        self.input = input;
        self.output = output;
        written
    }
}

impl<W: Write> Write for Replacer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pass(buf, false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Stage {
    /// Appends to `out` the bytes of `data` (after those held back) that
    /// no later byte can change, replaced; with `last`, all of them.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>, last: bool) {
        let Self {
            from,
            to,
            held,
            position,
            matches,
        } = self;
        held.extend_from_slice(data);
        let n = from.len();
        // Every offset before `i` is decided: no match starts there.
        let mut i = 0;
        let mut emitted = 0;
        while i + n <= held.len() {
            match held[i..=held.len() - n].iter().position(|&b| b == from[0]) {
                None => {
                    i = held.len() - n + 1;
                    break;
                }
                Some(skip) => i += skip,
            }
            if held[i..i + n] == from[..] {
                out.extend_from_slice(&held[emitted..i]);
                out.extend_from_slice(to);
                matches.push(*position + i as u64);
                i += n;
                emitted = i;
            } else {
                i += 1;
            }
        }
        if last {
            i = held.len();
        }
        out.extend_from_slice(&held[emitted..i]);
        *position += i as u64;
        held.drain(..i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replaces all of `data` at once, one rewrite after another.
    fn replace_whole(data: &[u8], rewrites: &[(&str, &str)]) -> Vec<u8> {
        let mut data = data.to_vec();
        for (from, to) in rewrites {
            let (from, to) = (from.as_bytes(), to.as_bytes());
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
        data
    }

    #[test]
    fn replaces_across_every_split() {
        let rewrites = [("abcab", "xyzxy"), ("xyzxy", "QQQQQ"), ("aaaaa", "bbbbb")];
        let text = b"..abcabcab..abcab.aaaaaaa.xyzx";
        let expected = replace_whole(text, &rewrites);
        for split in 0..=text.len() {
            for second in split..=text.len() {
                let mut r = Replacer::new(Vec::new(), &rewrites);
                r.write_all(&text[..split]).unwrap();
                r.write_all(&text[split..second]).unwrap();
                r.write_all(&text[second..]).unwrap();
                let (out, _) = r.finish().unwrap();
                assert_eq!(out, expected, "split at {split}, {second}");
            }
        }
        let mut r = Replacer::new(Vec::new(), &rewrites);
        for b in text {
            r.write_all(&[*b]).unwrap();
        }
        assert_eq!(r.finish().unwrap().0, expected);
    }

    #[test]
    fn hash_modulo_appends_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"abXYcdXY").unwrap();
        let h = hash_modulo_path(HashAlgo::Sha256, &file, true, "XY").unwrap();
        let mut expected = Hasher::new(HashAlgo::Sha256);
        expected.update(b"ab\0\0cd\0\0|2|6");
        assert_eq!(h, expected.finish());
    }

    #[test]
    fn rewrites_a_tree_through_a_pipe() {
        let from = "0123456789abcdfghijklmnpqrsvwxyz";
        let to = "zyxwvsrqpnmlkjihgfdcba9876543210";
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        // Larger than a pipe's buffer, so both threads must run.
        let big = format!("{}{from}", "x".repeat(1 << 20));
        fs::write(out.join("big"), &big).unwrap();
        std::os::unix::fs::symlink(format!("/nix/store/{from}-x"), out.join("link")).unwrap();
        let rewrites = BTreeMap::from([(from.to_owned(), to.to_owned())]);
        rewrite_tree(&out, &rewrites).unwrap();
        let rewritten = fs::read_to_string(out.join("big")).unwrap();
        assert!(rewritten.ends_with(to) && rewritten.len() == big.len());
        assert_eq!(
            fs::read_link(out.join("link")).unwrap(),
            Path::new(&format!("/nix/store/{to}-x"))
        );
        assert_eq!(
            fs::symlink_metadata(&out).unwrap().permissions().mode() & 0o777,
            0o555
        );
        // Nothing to rewrite leaves the tree as it is.
        let before = nar_hash(&out).unwrap();
        rewrite_tree(&out, &rewrites).unwrap();
        assert_eq!(nar_hash(&out).unwrap(), before);
        delete_path(&out).unwrap();
    }
}
