//! Reference scanning: which of a set of store paths a byte stream mentions.
//!
//! Nix decides the references of a build output by searching its NAR for
//! the 32-character hash parts of the candidate paths (the build's inputs
//! and outputs). [`RefScanner`] does the same incrementally: feed it chunks
//! of any size, matches split across chunk boundaries included.
//!
//! The scan skips ahead like Nix's `RefScanSink`: a hash part consists of
//! nix32 digits only, so a window of 32 bytes can only match if all its
//! bytes are digits, and on finding a non-digit at offset `j` of a window
//! the next `j + 1` windows are skipped at once. In binary data most
//! windows are ruled out by their last byte. A window of digits is then
//! looked up through a small bitmap of candidate prefixes before the hash
//! set, and a run of digits slides one byte at a time checking only the
//! byte that enters.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use thiserror::Error;

use crate::hash::{HashAlgo, Hasher};
use crate::nar::{DumpError, Dumper, NarHash};
use crate::nixbase32;
use crate::store_path::{HASH_PART_LEN, StorePath};

/// A candidate that is not a hash part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("'{hash_part}' is not a store path hash part (32 nix32 digits)")]
pub struct InvalidHashPart {
    /// The candidate as given.
    pub hash_part: String,
}

/// An incremental search for hash parts in a byte stream.
#[derive(Clone)]
pub struct RefScanner {
    /// The distinct candidates, in the order first given.
    candidates: Vec<[u8; HASH_PART_LEN]>,
    index: foldhash::HashMap<[u8; HASH_PART_LEN], usize>,
    /// One bit per value of the first three digits of some candidate.
    prefixes: Box<[u64; PREFIX_WORDS]>,
    found: Vec<bool>,
    found_count: usize,
    /// The last bytes of the stream so far (fewer than a hash part), to
    /// find matches that straddle two chunks.
    tail: [u8; HASH_PART_LEN - 1],
    tail_len: usize,
    /// `Some` for a scanner made by [`RefScanner::collecting`].
    collecting: Option<Collecting>,
}

/// The state of a scanner that collects every hash part it sees.
#[derive(Clone, Copy)]
struct Collecting {
    limit: usize,
    overflowed: bool,
}

impl RefScanner {
    /// A scanner for the given hash parts (duplicates are merged).
    ///
    /// # Errors
    ///
    /// When a candidate is not 32 nix32 digits.
    pub fn new<I, S>(hash_parts: I) -> Result<Self, InvalidHashPart>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut scanner = Self::empty();
        for hash_part in hash_parts {
            let s = hash_part.as_ref();
            let bytes: [u8; HASH_PART_LEN] = s
                .as_bytes()
                .try_into()
                .ok()
                .filter(|b: &[u8; HASH_PART_LEN]| b.iter().all(|&c| is_digit(c)))
                .ok_or_else(|| InvalidHashPart {
                    hash_part: s.to_owned(),
                })?;
            scanner.add(bytes);
        }
        Ok(scanner)
    }

    /// A scanner for the hash parts of `paths`.
    pub fn for_store_paths<'a>(paths: impl IntoIterator<Item = &'a StorePath>) -> Self {
        let mut scanner = Self::empty();
        for path in paths {
            let mut bytes = [0; HASH_PART_LEN];
            // A StorePath's hash part is HASH_PART_LEN nix32 digits by
            // construction, so this copies all of it.
            let hash_part = path.hash_part().as_bytes();
            let n = hash_part.len().min(HASH_PART_LEN);
            bytes[..n].copy_from_slice(&hash_part[..n]);
            scanner.add(bytes);
        }
        scanner
    }

    /// A scanner without candidates that collects every distinct run of
    /// 32 nix32 digits it sees (each window of a longer run), up to
    /// `limit` of them: the hash parts a stream may refer to, to be
    /// matched afterwards against candidates that are costly to list (a
    /// build's input closure). Beyond `limit` it notes that it
    /// [overflowed](RefScanner::overflowed) and collects no more.
    #[must_use]
    pub fn collecting(limit: usize) -> Self {
        Self {
            collecting: Some(Collecting {
                limit,
                overflowed: false,
            }),
            ..Self::empty()
        }
    }

    /// Whether a [collecting](RefScanner::collecting) scanner saw more
    /// distinct hash parts than its limit (then [`RefScanner::found`]
    /// misses some).
    #[must_use]
    pub fn overflowed(&self) -> bool {
        self.collecting.is_some_and(|c| c.overflowed)
    }

    /// Scans the next chunk of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.collecting.is_none() && self.found_count == self.candidates.len() {
            return;
        }
        // Windows that begin in the tail and end in this chunk.
        if self.tail_len > 0 {
            let take = chunk.len().min(HASH_PART_LEN - 1);
            let mut joint = [0; 2 * (HASH_PART_LEN - 1)];
            joint[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joint[self.tail_len..self.tail_len + take].copy_from_slice(&chunk[..take]);
            self.scan(&joint[..self.tail_len + take]);
        }
        self.scan(chunk);
        self.keep_tail(chunk);
    }

    /// Whether the candidate with this hash part was seen.
    #[must_use]
    pub fn is_found(&self, hash_part: &str) -> bool {
        <&[u8; HASH_PART_LEN]>::try_from(hash_part.as_bytes())
            .ok()
            .and_then(|key| self.index.get(key))
            .is_some_and(|&i| self.found[i])
    }

    /// The hash parts seen so far, in the order they were given.
    pub fn found(&self) -> impl Iterator<Item = &str> {
        self.candidates
            .iter()
            .zip(&self.found)
            .filter(|(_, found)| **found)
            // Candidates are ASCII digits, checked in `new`.
            .filter_map(|(c, _)| std::str::from_utf8(c).ok())
    }

    /// How many distinct candidates were seen.
    #[must_use]
    pub fn found_count(&self) -> usize {
        self.found_count
    }

    /// Of `paths`, those whose hash part was seen.
    #[must_use]
    pub fn found_paths<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> BTreeSet<StorePath> {
        if self.found_count == 0 {
            return BTreeSet::new();
        }
        paths
            .into_iter()
            .filter(|p| self.is_found(p.hash_part()))
            .cloned()
            .collect()
    }

    fn empty() -> Self {
        Self {
            candidates: Vec::new(),
            index: foldhash::HashMap::default(),
            prefixes: Box::new([0; PREFIX_WORDS]),
            found: Vec::new(),
            found_count: 0,
            tail: [0; HASH_PART_LEN - 1],
            tail_len: 0,
            collecting: None,
        }
    }

    /// Adds a candidate of nix32 digits, unless it is there already.
    fn add(&mut self, bytes: [u8; HASH_PART_LEN]) {
        let next = self.candidates.len();
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(bytes) {
            slot.insert(next);
        } else {
            return;
        }
        self.candidates.push(bytes);
        self.found.push(false);
        let prefix = prefix_of(&bytes);
        self.prefixes[prefix / 64] |= 1 << (prefix % 64);
    }

    fn scan(&mut self, s: &[u8]) {
        let n = s.len();
        let mut i = 0;
        while i + HASH_PART_LEN <= n {
            if let Some(j) = s[i..i + HASH_PART_LEN].iter().rposition(|&b| !is_digit(b)) {
                i += j + 1;
                continue;
            }
            // s[i..i + 32] is all digits: check it, then slide along the run.
            loop {
                self.check(&s[i..i + HASH_PART_LEN]);
                match s.get(i + HASH_PART_LEN) {
                    Some(&b) if is_digit(b) => i += 1,
                    Some(_) => {
                        i += HASH_PART_LEN + 1;
                        break;
                    }
                    None => return,
                }
            }
        }
    }

    fn check(&mut self, window: &[u8]) {
        if let Some(collecting) = &mut self.collecting {
            if let Ok(bytes) = <[u8; HASH_PART_LEN]>::try_from(window)
                && !self.index.contains_key(&bytes)
            {
                if self.candidates.len() < collecting.limit {
                    self.add(bytes);
                    let last = self.found.len() - 1;
                    self.found[last] = true;
                    self.found_count += 1;
                } else {
                    collecting.overflowed = true;
                }
            }
            return;
        }
        let prefix = prefix_of(window);
        if self.prefixes[prefix / 64] & (1 << (prefix % 64)) == 0 {
            return;
        }
        if let Some(&i) = <&[u8; HASH_PART_LEN]>::try_from(window)
            .ok()
            .and_then(|key| self.index.get(key))
            && !self.found[i]
        {
            self.found[i] = true;
            self.found_count += 1;
        }
    }

    fn keep_tail(&mut self, chunk: &[u8]) {
        const KEEP: usize = HASH_PART_LEN - 1;
        if chunk.len() >= KEEP {
            self.tail.copy_from_slice(&chunk[chunk.len() - KEEP..]);
            self.tail_len = KEEP;
        } else {
            let total = self.tail_len + chunk.len();
            let drop = total.saturating_sub(KEEP);
            self.tail.copy_within(drop..self.tail_len, 0);
            self.tail_len -= drop;
            self.tail[self.tail_len..self.tail_len + chunk.len()].copy_from_slice(chunk);
            self.tail_len += chunk.len();
        }
    }
}

impl std::fmt::Debug for RefScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefScanner")
            .field("candidates", &self.candidates.len())
            .field("found", &self.found().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Of `candidates`, the store paths whose hash part occurs in the NAR of
/// `path`, as Nix computes a build output's references.
///
/// # Errors
///
/// When the tree cannot be archived (see [`Dumper::dump`]).
pub fn scan_path<'a, I>(path: &Path, candidates: I) -> Result<BTreeSet<StorePath>, DumpError>
where
    I: IntoIterator<Item = &'a StorePath>,
    I::IntoIter: Clone,
{
    let candidates = candidates.into_iter();
    let mut scanner = RefScanner::for_store_paths(candidates.clone());
    Dumper::new().dump(path, &mut scanner)?;
    Ok(scanner.found_paths(candidates))
}

/// [`scan_path`] and the SHA-256 NAR hash and size of `path`, from one walk
/// of the tree.
///
/// # Errors
///
/// When the tree cannot be archived (see [`Dumper::dump`]).
pub fn scan_and_hash_path<'a, I>(
    path: &Path,
    candidates: I,
) -> Result<(BTreeSet<StorePath>, NarHash), DumpError>
where
    I: IntoIterator<Item = &'a StorePath>,
    I::IntoIter: Clone,
{
    let candidates = candidates.into_iter();
    let mut tee = ScanAndHash {
        scanner: RefScanner::for_store_paths(candidates.clone()),
        hasher: Hasher::new(HashAlgo::Sha256),
    };
    let size = Dumper::new().dump(path, &mut tee)?;
    let references = tee.scanner.found_paths(candidates);
    let hash = tee.hasher.finish();
    Ok((references, NarHash { hash, size }))
}

struct ScanAndHash {
    scanner: RefScanner,
    hasher: Hasher,
}

impl Write for ScanAndHash {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scanner.update(buf);
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const PREFIX_WORDS: usize = (1 << 15) / 64;

/// Whether `b` is a nix32 digit.
fn is_digit(b: u8) -> bool {
    IS_DIGIT[usize::from(b)]
}

/// The first three digits' values as a 15-bit number. `window` holds
/// digits only.
fn prefix_of(window: &[u8]) -> usize {
    let value = |b: u8| usize::from(nixbase32::digit_value(b).unwrap_or(0));
    (value(window[0]) << 10) | (value(window[1]) << 5) | value(window[2])
}

static IS_DIGIT: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < nixbase32::ALPHABET.len() {
        table[nixbase32::ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const A: &str = "0c8ajrvx4nqdhxqd0rzr4m1kxi7xd6xp";
    const B: &str = "7d9z2lq4kj1y3scg0r5dqgqh8m6f2ffi";

    #[test]
    fn rejects_bad_candidates() {
        assert!(RefScanner::new(["short"]).is_err());
        assert!(RefScanner::new(["e".repeat(32)]).is_err());
        assert!(RefScanner::new([A, B, A]).is_ok());
    }

    #[test]
    fn finds_in_one_chunk() {
        let mut scanner = RefScanner::new([A, B]).unwrap();
        scanner.update(format!("#!/bin/sh\nexec /nix/store/{A}-hello/bin/hello\n").as_bytes());
        assert_eq!(scanner.found().collect::<Vec<_>>(), [A]);
        assert!(scanner.is_found(A));
        assert!(!scanner.is_found(B));
        assert_eq!(scanner.found_count(), 1);
    }

    #[test]
    fn finds_inside_a_long_run_of_digits() {
        let mut scanner = RefScanner::new([A, B]).unwrap();
        scanner.update(format!("{}{A}{}{B}", "0".repeat(100), "1".repeat(7)).as_bytes());
        assert_eq!(scanner.found().collect::<Vec<_>>(), [A, B]);
    }

    #[test]
    fn every_split_point() {
        let text = format!("prefix /nix/store/{A}-x and {B}");
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut scanner = RefScanner::new([A, B]).unwrap();
            scanner.update(&bytes[..split]);
            scanner.update(&bytes[split..]);
            assert_eq!(scanner.found_count(), 2, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_and_three_pieces() {
        let text = format!("..{A}..");
        let mut scanner = RefScanner::new([A]).unwrap();
        for b in text.as_bytes() {
            scanner.update(std::slice::from_ref(b));
        }
        assert!(scanner.is_found(A));
        // A match spanning three chunks: the middle one shorter than 31.
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                let mut scanner = RefScanner::new([A]).unwrap();
                scanner.update(&bytes[..i]);
                scanner.update(&bytes[i..j]);
                scanner.update(&bytes[j..]);
                assert!(scanner.is_found(A), "{i} {j}");
            }
        }
    }

    fn naive(haystack: &[u8], candidates: &[String]) -> BTreeSet<String> {
        candidates
            .iter()
            .filter(|c| haystack.windows(HASH_PART_LEN).any(|w| w == c.as_bytes()))
            .cloned()
            .collect()
    }

    fn hash_part() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(nixbase32::ALPHABET.to_vec()),
            HASH_PART_LEN,
        )
        .prop_map(|v| String::from_utf8(v).unwrap())
    }

    proptest! {
        #[test]
        fn agrees_with_naive_search(
            candidates in prop::collection::vec(hash_part(), 1..6),
            pieces in prop::collection::vec(
                prop_oneof![
                    // Runs of digits and other bytes, and whole or partial candidates.
                    prop::collection::vec(prop::sample::select(b"0123456789abcdfgz-/\0e".to_vec()), 0..50),
                    (0usize..6, 0usize..=HASH_PART_LEN, any::<bool>()).prop_map(|(i, n, front)| {
                        let c = [A, B][i % 2].as_bytes();
                        if front { c[..n].to_vec() } else { c[HASH_PART_LEN - n..].to_vec() }
                    }),
                    (0usize..6).prop_map(|i| vec![i as u8]),
                ],
                0..30,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut all = candidates.clone();
            all.push(A.to_owned());
            all.push(B.to_owned());
            // The `vec![i]` pieces splice in the generated candidates.
            let mut haystack = Vec::new();
            for piece in &pieces {
                if piece.len() == 1 && piece[0] < 6 {
                    haystack.extend_from_slice(all[usize::from(piece[0]) % all.len()].as_bytes());
                } else {
                    haystack.extend_from_slice(piece);
                }
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c.index(haystack.len() + 1)).collect();
            cut_points.push(0);
            cut_points.push(haystack.len());
            cut_points.sort_unstable();
            let mut scanner = RefScanner::new(&all).unwrap();
            for pair in cut_points.windows(2) {
                scanner.update(&haystack[pair[0]..pair[1]]);
            }
            let found: BTreeSet<String> = scanner.found().map(str::to_owned).collect();
            prop_assert_eq!(&found, &naive(&haystack, &all));

            // A collecting scanner sees every window of digits: matched
            // against the candidates afterwards, it finds the same.
            let mut collector = RefScanner::collecting(usize::MAX);
            for pair in cut_points.windows(2) {
                collector.update(&haystack[pair[0]..pair[1]]);
            }
            prop_assert!(!collector.overflowed());
            let windows: BTreeSet<&str> = collector.found().collect();
            let matched: BTreeSet<String> =
                all.iter().filter(|c| windows.contains(c.as_str())).cloned().collect();
            prop_assert_eq!(matched, found);
        }
    }

    #[test]
    fn collecting_stops_at_its_limit_and_says_so() {
        let mut collector = RefScanner::collecting(1);
        collector.update(format!("{A} and {B}").as_bytes());
        assert!(collector.overflowed());
        assert_eq!(collector.found().collect::<Vec<_>>(), [A]);

        let mut roomy = RefScanner::collecting(2);
        roomy.update(format!("{A} and {B} and {A}").as_bytes());
        assert!(!roomy.overflowed());
        assert_eq!(roomy.found_count(), 2);
        // A run of 33 digits holds two windows.
        let mut run = RefScanner::collecting(10);
        run.update(format!("{A}0").as_bytes());
        assert_eq!(run.found_count(), 2);
    }
}
