//! Parsing NARs: a streaming parser that drives a [`NarSink`].
//!
//! The parser reads from any [`BufRead`], never holds file contents (they
//! reach the sink in the reader's own buffer-sized slices), and rejects
//! everything Nix's `parseDump` rejects: a wrong magic, unknown or
//! misplaced tags, an `executable` marker after the contents or with a
//! value, invalid, unsorted or duplicate entry names, non-zero padding,
//! truncation, and tags, names, symlink targets or nesting beyond the
//! format's limits. Since the accepted form is canonical, every NAR it
//! accepts is exactly what the writer produces for the same tree.

use std::io::{self, BufRead, BufReader, Read};

use thiserror::Error;

use super::wire::{MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN, padding_len};

/// Receives the objects of a NAR as the parser meets them, in NAR order
/// (a directory before its entries, entries sorted by name).
///
/// `path` is the object's path relative to the root, its components joined
/// by `/`: empty for the root itself, `a/b` for the entry `b` of the
/// directory entry `a`. Every component has been checked: non-empty, not
/// `.` or `..`, free of `/` and NUL.
pub trait NarSink {
    /// A directory; its entries follow.
    ///
    /// # Errors
    ///
    /// Any error of the sink, which stops the parse.
    fn directory(&mut self, path: &[u8]) -> io::Result<()>;

    /// A regular file of `size` bytes; exactly `size` bytes of
    /// [`NarSink::file_data`] follow, then [`NarSink::file_end`].
    ///
    /// # Errors
    ///
    /// Any error of the sink, which stops the parse.
    fn file(&mut self, path: &[u8], executable: bool, size: u64) -> io::Result<()>;

    /// The next piece of the current file's contents.
    ///
    /// # Errors
    ///
    /// Any error of the sink, which stops the parse.
    fn file_data(&mut self, data: &[u8]) -> io::Result<()>;

    /// The current file is complete (its padding checked).
    ///
    /// # Errors
    ///
    /// Any error of the sink, which stops the parse.
    fn file_end(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// A symlink to `target` (non-empty, free of NUL).
    ///
    /// # Errors
    ///
    /// Any error of the sink, which stops the parse.
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()>;
}

/// A sink that ignores everything: parsing into it validates a NAR.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl NarSink for NullSink {
    fn directory(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn file(&mut self, _: &[u8], _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn file_data(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn symlink(&mut self, _: &[u8], _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// What is wrong with a NAR, and the byte offset (from the start of the
/// NAR) of the token where it was found.
#[derive(Debug, Error)]
pub enum ParseError {
    /// The input does not start with the NAR magic.
    #[error("bad archive: input doesn't look like a Nix archive")]
    NotANar {
        /// Always 0: the magic is the first token.
        offset: u64,
    },
    /// Another tag than the grammar allows here.
    #[error("bad archive: expected tag {expected}, got '{got}' at byte {offset}")]
    UnexpectedTag {
        /// Where the tag starts.
        offset: u64,
        /// The tag or tags allowed, quoted.
        expected: &'static str,
        /// The tag found, escaped.
        got: String,
    },
    /// A `type` other than `regular`, `directory` or `symlink`.
    #[error("bad archive: unknown file type '{got}' at byte {offset}")]
    UnknownType {
        /// Where the type starts.
        offset: u64,
        /// The type found, escaped.
        got: String,
    },
    /// The `executable` marker is followed by a non-empty string.
    #[error("bad archive: executable marker has non-empty value at byte {offset}")]
    ExecutableNotEmpty {
        /// Where the value starts.
        offset: u64,
    },
    /// An entry name that is empty, `.`, `..`, or holds `/` or NUL.
    #[error("bad archive: NAR contains invalid file name '{name}' at byte {offset}")]
    InvalidName {
        /// Where the name starts.
        offset: u64,
        /// The name, escaped.
        name: String,
    },
    /// An entry name not strictly greater than the one before it, so
    /// unsorted or duplicate.
    #[error(
        "bad archive: NAR directory is not sorted: '{name}' after '{previous}' at byte {offset}"
    )]
    NotSorted {
        /// Where the name starts.
        offset: u64,
        /// The name, escaped.
        name: String,
        /// The previous name of the same directory, escaped.
        previous: String,
    },
    /// A symlink target that is empty or holds NUL.
    #[error("bad archive: invalid symlink target '{target}' at byte {offset}")]
    InvalidTarget {
        /// Where the target starts.
        offset: u64,
        /// The target, escaped.
        target: String,
    },
    /// Padding after a string that is not all zero bytes.
    #[error("bad archive: non-zero padding at byte {offset}")]
    NonZeroPadding {
        /// Where the padding starts.
        offset: u64,
    },
    /// The input ended inside the NAR.
    #[error("bad archive: unexpected end of input at byte {offset}")]
    Truncated {
        /// How many bytes there were.
        offset: u64,
    },
    /// A tag longer than any tag can be.
    #[error("bad archive: tag of {len} bytes at byte {offset} exceeds the limit of {MAX_TAG_LEN}")]
    TagTooLong {
        /// Where the tag starts.
        offset: u64,
        /// Its declared length.
        len: u64,
    },
    /// An entry name longer than [`MAX_NAME_LEN`].
    #[error(
        "bad archive: file name of {len} bytes at byte {offset} exceeds the limit of {MAX_NAME_LEN}"
    )]
    NameTooLong {
        /// Where the name starts.
        offset: u64,
        /// Its declared length.
        len: u64,
    },
    /// A symlink target longer than [`MAX_TARGET_LEN`].
    #[error(
        "bad archive: symlink target of {len} bytes at byte {offset} exceeds the limit of {MAX_TARGET_LEN}"
    )]
    TargetTooLong {
        /// Where the target starts.
        offset: u64,
        /// Its declared length.
        len: u64,
    },
    /// Objects nested [`MAX_DEPTH`] deep or more.
    #[error(
        "bad archive: NAR directory nesting exceeds maximum depth of {MAX_DEPTH} at byte {offset}"
    )]
    TooDeep {
        /// Where the too deep object starts.
        offset: u64,
    },
    /// Reading the input failed.
    #[error("reading the NAR at byte {offset}: {source}")]
    Read {
        /// How far the parser got.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The sink refused an object.
    #[error("at byte {offset} of the NAR, '/{path}': {source}")]
    Sink {
        /// Where the object (or the piece of contents) starts.
        offset: u64,
        /// The object's path in the NAR, escaped.
        path: String,
        /// The sink's error.
        #[source]
        source: io::Error,
    },
}

impl ParseError {
    /// The byte offset the error is about.
    #[must_use]
    pub fn offset(&self) -> u64 {
        match self {
            Self::NotANar { offset }
            | Self::UnexpectedTag { offset, .. }
            | Self::UnknownType { offset, .. }
            | Self::ExecutableNotEmpty { offset }
            | Self::InvalidName { offset, .. }
            | Self::NotSorted { offset, .. }
            | Self::InvalidTarget { offset, .. }
            | Self::NonZeroPadding { offset }
            | Self::Truncated { offset }
            | Self::TagTooLong { offset, .. }
            | Self::NameTooLong { offset, .. }
            | Self::TargetTooLong { offset, .. }
            | Self::TooDeep { offset }
            | Self::Read { offset, .. }
            | Self::Sink { offset, .. } => *offset,
        }
    }
}

/// Parses one NAR from `input` into `sink` and returns its size in bytes.
///
/// Reading stops at the NAR's last byte: whatever follows stays in `input`.
///
/// # Errors
///
/// When the NAR is malformed, reading fails or the sink refuses an object.
pub fn parse<R: BufRead + ?Sized, S: NarSink + ?Sized>(
    input: &mut R,
    sink: &mut S,
) -> Result<u64, ParseError> {
    let mut parser = Parser {
        input,
        sink,
        offset: 0,
        path: Vec::new(),
    };
    parser.magic()?;
    parser.object(0)?;
    Ok(parser.offset)
}

/// Parses one NAR from an unbuffered reader (wrapping it in a 64 KiB
/// buffer, which may read past the NAR's end) and returns its size.
///
/// # Errors
///
/// As [`parse`].
pub fn parse_reader<R: Read, S: NarSink + ?Sized>(
    input: R,
    sink: &mut S,
) -> Result<u64, ParseError> {
    parse(&mut BufReader::with_capacity(64 * 1024, input), sink)
}

/// Checks that `input` starts with a well-formed NAR and returns its size.
///
/// # Errors
///
/// As [`parse`].
pub fn validate<R: BufRead + ?Sized>(input: &mut R) -> Result<u64, ParseError> {
    parse(input, &mut NullSink)
}

/// A tag read into a fixed buffer: tags are short, and reading one must not
/// allocate.
struct Tag {
    offset: u64,
    len: usize,
    bytes: [u8; MAX_TAG_LEN],
}

impl Tag {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn escaped(&self) -> String {
        escape(self.as_bytes())
    }
}

struct Parser<'a, R: BufRead + ?Sized, S: NarSink + ?Sized> {
    input: &'a mut R,
    sink: &'a mut S,
    offset: u64,
    /// The current object's path, components joined by `/`.
    path: Vec<u8>,
}

impl<R: BufRead + ?Sized, S: NarSink + ?Sized> Parser<'_, R, S> {
    fn magic(&mut self) -> Result<(), ParseError> {
        let not_a_nar = ParseError::NotANar { offset: 0 };
        let mut len = [0; 8];
        if self.fill(&mut len).is_err() || u64::from_le_bytes(len) != MAGIC.len() as u64 {
            return Err(not_a_nar);
        }
        let mut magic = [0; 16];
        let padded = MAGIC.len() + padding_len(MAGIC.len() as u64);
        if self.fill(&mut magic[..padded]).is_err()
            || &magic[..MAGIC.len()] != MAGIC
            || magic[MAGIC.len()..padded].iter().any(|&b| b != 0)
        {
            return Err(not_a_nar);
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), ParseError> {
        let start = self.offset;
        if depth >= MAX_DEPTH {
            return Err(ParseError::TooDeep { offset: start });
        }
        self.expect(b"(", "'('")?;
        self.expect(b"type", "'type'")?;
        let kind = self.tag()?;
        match kind.as_bytes() {
            b"regular" => self.regular(start)?,
            b"directory" => self.directory(start, depth)?,
            b"symlink" => self.symlink(start)?,
            _ => {
                return Err(ParseError::UnknownType {
                    offset: kind.offset,
                    got: kind.escaped(),
                });
            }
        }
        Ok(())
    }

    fn regular(&mut self, start: u64) -> Result<(), ParseError> {
        let mut tag = self.tag()?;
        let mut executable = false;
        if tag.as_bytes() == b"executable" {
            let value = self.tag()?;
            if value.len != 0 {
                return Err(ParseError::ExecutableNotEmpty {
                    offset: value.offset,
                });
            }
            executable = true;
            tag = self.tag()?;
        }
        if tag.as_bytes() != b"contents" {
            return Err(unexpected(&tag, "'contents'"));
        }
        let size = self.u64()?;
        self.sink_call(start, |sink, path| sink.file(path, executable, size))?;
        let mut left = size;
        while left > 0 {
            let chunk_start = self.offset;
            let available = buffered(&mut *self.input, self.offset)?;
            let n = usize::try_from(left).map_or(available.len(), |l| l.min(available.len()));
            if let Err(source) = self.sink.file_data(&available[..n]) {
                return Err(ParseError::Sink {
                    offset: chunk_start,
                    path: escape(&self.path),
                    source,
                });
            }
            self.input.consume(n);
            self.offset += n as u64;
            left -= n as u64;
        }
        self.padding(size)?;
        self.sink_call(start, |sink, _| sink.file_end())?;
        self.expect(b")", "')'")
    }

    fn directory(&mut self, start: u64, depth: usize) -> Result<(), ParseError> {
        self.sink_call(start, |sink, path| sink.directory(path))?;
        let mut previous: Vec<u8> = Vec::new();
        loop {
            let tag = self.tag()?;
            match tag.as_bytes() {
                b")" => return Ok(()),
                b"entry" => {}
                _ => return Err(unexpected(&tag, "'entry' or ')'")),
            }
            self.expect(b"(", "'('")?;
            self.expect(b"name", "'name'")?;
            let name_offset = self.offset;
            let name = self.string(MAX_NAME_LEN, |offset, len| ParseError::NameTooLong {
                offset,
                len,
            })?;
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(ParseError::InvalidName {
                    offset: name_offset,
                    name: escape(&name),
                });
            }
            if name <= previous {
                return Err(ParseError::NotSorted {
                    offset: name_offset,
                    name: escape(&name),
                    previous: escape(&previous),
                });
            }
            self.expect(b"node", "'node'")?;
            let parent_len = self.path.len();
            if parent_len > 0 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(&name);
            self.object(depth + 1)?;
            self.path.truncate(parent_len);
            self.expect(b")", "')'")?;
            previous = name;
        }
    }

    fn symlink(&mut self, start: u64) -> Result<(), ParseError> {
        self.expect(b"target", "'target'")?;
        let target_offset = self.offset;
        let target = self.string(MAX_TARGET_LEN, |offset, len| ParseError::TargetTooLong {
            offset,
            len,
        })?;
        if target.is_empty() || target.contains(&0) {
            return Err(ParseError::InvalidTarget {
                offset: target_offset,
                target: escape(&target),
            });
        }
        self.sink_call(start, |sink, path| sink.symlink(path, &target))?;
        self.expect(b")", "')'")
    }

    /// Calls the sink, attaching the object's offset and path to its error.
    fn sink_call(
        &mut self,
        start: u64,
        call: impl FnOnce(&mut S, &[u8]) -> io::Result<()>,
    ) -> Result<(), ParseError> {
        call(self.sink, &self.path).map_err(|source| ParseError::Sink {
            offset: start,
            path: escape(&self.path),
            source,
        })
    }

    fn expect(&mut self, expected: &[u8], quoted: &'static str) -> Result<(), ParseError> {
        let tag = self.tag()?;
        if tag.as_bytes() == expected {
            Ok(())
        } else {
            Err(unexpected(&tag, quoted))
        }
    }

    fn tag(&mut self) -> Result<Tag, ParseError> {
        let offset = self.offset;
        let len = self.u64()?;
        let len = match usize::try_from(len) {
            Ok(l) if l <= MAX_TAG_LEN => l,
            _ => return Err(ParseError::TagTooLong { offset, len }),
        };
        let mut tag = Tag {
            offset,
            len,
            bytes: [0; MAX_TAG_LEN],
        };
        self.fill(&mut tag.bytes[..len])?;
        self.padding(len as u64)?;
        Ok(tag)
    }

    /// Reads a string of at most `max` bytes.
    fn string(
        &mut self,
        max: usize,
        too_long: impl FnOnce(u64, u64) -> ParseError,
    ) -> Result<Vec<u8>, ParseError> {
        let offset = self.offset;
        let len = self.u64()?;
        let len = match usize::try_from(len) {
            Ok(l) if l <= max => l,
            _ => return Err(too_long(offset, len)),
        };
        let mut s = vec![0; len];
        self.fill(&mut s)?;
        self.padding(len as u64)?;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        let mut bytes = [0; 8];
        self.fill(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn padding(&mut self, len: u64) -> Result<(), ParseError> {
        let offset = self.offset;
        let mut pad = [0; 8];
        let pad = &mut pad[..padding_len(len)];
        self.fill(pad)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(ParseError::NonZeroPadding { offset });
        }
        Ok(())
    }

    /// Fills `out` from the input.
    fn fill(&mut self, mut out: &mut [u8]) -> Result<(), ParseError> {
        while !out.is_empty() {
            let available = buffered(&mut *self.input, self.offset)?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            self.input.consume(n);
            self.offset += n as u64;
            out = &mut out[n..];
        }
        Ok(())
    }
}

fn unexpected(tag: &Tag, expected: &'static str) -> ParseError {
    ParseError::UnexpectedTag {
        offset: tag.offset,
        expected,
        got: tag.escaped(),
    }
}

/// Bytes as printable text: ASCII as is, the rest escaped.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// The input's next buffered bytes, retrying reads that a signal
/// interrupted; the end of input there means the NAR is truncated at
/// `offset`.
fn buffered<R: BufRead + ?Sized>(input: &mut R, offset: u64) -> Result<&[u8], ParseError> {
    // Errors are settled first and the buffer taken after, since a borrow
    // returned from inside a retry loop is beyond today's borrow checker.
    loop {
        match input.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ParseError::Read { offset, source }),
            Ok(_) => break,
        }
    }
    match input.fill_buf() {
        Ok([]) => Err(ParseError::Truncated { offset }),
        Ok(available) => Ok(available),
        Err(source) => Err(ParseError::Read { offset, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::nar::wire::push_str;

    /// A NAR made of `tokens`, each encoded as a string.
    fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        push_str(&mut out, MAGIC);
        for token in tokens {
            push_str(&mut out, token);
        }
        out
    }

    fn file(contents: &[u8]) -> Vec<&[u8]> {
        vec![b"(", b"type", b"regular", b"contents", contents, b")"]
    }

    /// A directory NAR with one entry per name, each an empty file.
    fn dir_of(names: &[&[u8]]) -> Vec<u8> {
        let mut tokens: Vec<&[u8]> = vec![b"(", b"type", b"directory"];
        for name in names {
            tokens.extend([b"entry" as &[u8], b"(", b"name", name, b"node"]);
            tokens.extend(file(b""));
            tokens.push(b")");
        }
        tokens.push(b")");
        nar(&tokens)
    }

    fn check(bytes: &[u8]) -> Result<u64, ParseError> {
        validate(&mut Cursor::new(bytes))
    }

    #[test]
    fn accepts_a_file_and_reports_its_size() {
        let bytes = nar(&file(b"hello"));
        assert_eq!(check(&bytes).unwrap(), bytes.len() as u64);
    }

    #[test]
    fn magic() {
        assert!(matches!(check(b""), Err(ParseError::NotANar { offset: 0 })));
        let mut bytes = nar(&file(b""));
        bytes[8] = b'N';
        assert!(matches!(check(&bytes), Err(ParseError::NotANar { .. })));
        assert!(matches!(
            check(&bytes[..12]),
            Err(ParseError::NotANar { .. })
        ));
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        let bytes = dir_of(&[b"a", b"b"]);
        for len in 0..bytes.len() {
            let err = check(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, ParseError::Truncated { offset } if offset == len as u64)
                    || matches!(err, ParseError::NotANar { .. }) && len < 24,
                "prefix {len}: {err}"
            );
        }
    }

    #[test]
    fn stops_at_the_end_of_the_nar() {
        let mut bytes = nar(&file(b"x"));
        let size = bytes.len() as u64;
        bytes.extend_from_slice(b"more data");
        let mut input = Cursor::new(bytes);
        assert_eq!(validate(&mut input).unwrap(), size);
        assert_eq!(input.position(), size);
    }

    #[test]
    fn unknown_type_and_tags() {
        let bytes = nar(&[b"(", b"type", b"fifo", b")"]);
        assert!(
            matches!(check(&bytes), Err(ParseError::UnknownType { offset: 56, got }) if got == "fifo")
        );
        let bytes = nar(&[b"[", b"type"]);
        assert!(matches!(
            check(&bytes),
            Err(ParseError::UnexpectedTag {
                offset: 24,
                expected: "'('",
                ..
            })
        ));
        let bytes = nar(&[b"(", b"type", b"directory", b"entri"]);
        assert!(matches!(
            check(&bytes),
            Err(ParseError::UnexpectedTag {
                expected: "'entry' or ')'",
                ..
            })
        ));
        let bytes = nar(&[b"(", b"type", b"symlink", b"target", b"t", b"extra"]);
        assert!(matches!(
            check(&bytes),
            Err(ParseError::UnexpectedTag {
                expected: "')'",
                ..
            })
        ));
    }

    #[test]
    fn executable_marker() {
        let ok = nar(&[
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"contents",
            b"",
            b")",
        ]);
        check(&ok).unwrap();
        let bad = nar(&[
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"x",
            b"contents",
            b"",
            b")",
        ]);
        assert!(matches!(
            check(&bad),
            Err(ParseError::ExecutableNotEmpty { .. })
        ));
        let twice = nar(&[
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"executable",
            b"",
            b"contents",
            b"",
            b")",
        ]);
        assert!(matches!(
            check(&twice),
            Err(ParseError::UnexpectedTag {
                expected: "'contents'",
                ..
            })
        ));
    }

    #[test]
    fn sorting_and_duplicates() {
        check(&dir_of(&[b"A", b"B", b"a", b"b", b"\xff"])).unwrap();
        let err = check(&dir_of(&[b"b", b"a"])).unwrap_err();
        assert!(
            matches!(&err, ParseError::NotSorted { name, previous, .. } if name == "a" && previous == "b")
        );
        assert!(err.to_string().contains("NAR directory is not sorted"));
        assert!(matches!(
            check(&dir_of(&[b"a", b"a"])),
            Err(ParseError::NotSorted { .. })
        ));
    }

    #[test]
    fn names() {
        for bad in [b"" as &[u8], b".", b"..", b"a/b", b"a\0"] {
            assert!(
                matches!(
                    check(&dir_of(&[bad])),
                    Err(ParseError::InvalidName { offset: 128, .. })
                ),
                "{bad:?}"
            );
        }
        check(&dir_of(&[b"...", b".a"])).unwrap();
        let longest = vec![b'n'; MAX_NAME_LEN];
        check(&dir_of(&[&longest])).unwrap();
        let too_long = vec![b'n'; MAX_NAME_LEN + 1];
        assert!(matches!(
            check(&dir_of(&[&too_long])),
            Err(ParseError::NameTooLong {
                offset: 128,
                len: 256
            })
        ));
    }

    #[test]
    fn symlink_targets() {
        let link = |target: &[u8]| nar(&[b"(", b"type", b"symlink", b"target", target, b")"]);
        check(&link(&vec![b't'; MAX_TARGET_LEN])).unwrap();
        assert!(matches!(
            check(&link(&vec![b't'; MAX_TARGET_LEN + 1])),
            Err(ParseError::TargetTooLong { len: 4096, .. })
        ));
        assert!(matches!(
            check(&link(b"")),
            Err(ParseError::InvalidTarget { .. })
        ));
        assert!(matches!(
            check(&link(b"a\0b")),
            Err(ParseError::InvalidTarget { .. })
        ));
    }

    #[test]
    fn tag_limit() {
        let long = vec![b'x'; MAX_TAG_LEN + 1];
        let bytes = nar(&[b"(", b"type", &long]);
        assert!(matches!(
            check(&bytes),
            Err(ParseError::TagTooLong {
                offset: 56,
                len: 33
            })
        ));
        let mut huge = nar(&[b"("]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&huge), Err(ParseError::TagTooLong { .. })));
    }

    /// A chain of `depth` nested directories, each with one entry `d`.
    fn nested(depth: usize) -> Vec<u8> {
        let mut tokens: Vec<&[u8]> = Vec::new();
        for _ in 0..depth {
            tokens.extend([
                b"(" as &[u8],
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
                b"d",
                b"node",
            ]);
        }
        tokens.extend([b"(" as &[u8], b"type", b"directory", b")"]);
        for _ in 0..depth {
            tokens.extend([b")" as &[u8], b")"]);
        }
        nar(&tokens)
    }

    #[test]
    fn depth_limit() {
        check(&nested(MAX_DEPTH - 1)).unwrap();
        assert!(matches!(
            check(&nested(MAX_DEPTH)),
            Err(ParseError::TooDeep { .. })
        ));
    }

    #[test]
    fn padding_must_be_zero() {
        let mut bytes = nar(&file(b"abc"));
        // The contents start after magic (24), "(" "type" "regular"
        // "contents" (16 each) and the length (8): at 96; padding at 99.
        assert_eq!(&bytes[96..99], b"abc");
        bytes[101] = 1;
        assert!(matches!(
            check(&bytes),
            Err(ParseError::NonZeroPadding { offset: 99 })
        ));
    }

    struct Recorder(Vec<String>);

    impl NarSink for Recorder {
        fn directory(&mut self, path: &[u8]) -> io::Result<()> {
            self.0.push(format!("dir {}", escape(path)));
            Ok(())
        }
        fn file(&mut self, path: &[u8], executable: bool, size: u64) -> io::Result<()> {
            self.0
                .push(format!("file {} {executable} {size}", escape(path)));
            Ok(())
        }
        fn file_data(&mut self, data: &[u8]) -> io::Result<()> {
            self.0.push(format!("data {}", escape(data)));
            Ok(())
        }
        fn file_end(&mut self) -> io::Result<()> {
            self.0.push("end".into());
            Ok(())
        }
        fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
            if target == b"refuse" {
                return Err(io::Error::other("refused"));
            }
            self.0
                .push(format!("link {} {}", escape(path), escape(target)));
            Ok(())
        }
    }

    #[test]
    fn sink_sees_paths_in_order() {
        let mut tokens: Vec<&[u8]> = vec![b"(", b"type", b"directory"];
        tokens.extend([b"entry" as &[u8], b"(", b"name", b"a", b"node"]);
        tokens.extend([b"(" as &[u8], b"type", b"directory"]);
        tokens.extend([b"entry" as &[u8], b"(", b"name", b"f", b"node"]);
        tokens.extend(file(b"hi"));
        tokens.extend([b")" as &[u8], b")", b")"]);
        tokens.extend([b"entry" as &[u8], b"(", b"name", b"l", b"node"]);
        tokens.extend([
            b"(" as &[u8],
            b"type",
            b"symlink",
            b"target",
            b"a/f",
            b")",
            b")",
        ]);
        tokens.push(b")");
        let mut recorder = Recorder(Vec::new());
        parse(&mut Cursor::new(nar(&tokens)), &mut recorder).unwrap();
        assert_eq!(
            recorder.0,
            [
                "dir ",
                "dir a",
                "file a/f false 2",
                "data hi",
                "end",
                "link l a/f"
            ]
        );
    }

    #[test]
    fn sink_errors_carry_path_and_offset() {
        let bytes = nar(&[b"(", b"type", b"symlink", b"target", b"refuse", b")"]);
        let err = parse(&mut Cursor::new(bytes), &mut Recorder(Vec::new())).unwrap_err();
        assert!(matches!(err, ParseError::Sink { offset: 24, ref path, .. } if path.is_empty()));
        assert_eq!(err.offset(), 24);
    }
}
