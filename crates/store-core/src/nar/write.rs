//! Writing NARs: of a file-system path, streamed, and of a byte string.
//!
//! The writer walks the tree as Nix's `dumpPath` does: `lstat` semantics
//! (symlinks are archived, never followed), directory entries sorted by the
//! raw bytes of their names, the executable marker from the owner-execute
//! bit, and nothing else of the metadata. File contents go from a reused
//! buffer straight to the output; small tokens are gathered in a short
//! header buffer so that the output sees few, large writes.

use std::ffi::OsString;
use std::fs::{self, File, FileType};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::wire::{self, MAGIC, MAX_DEPTH, ZEROS, padding_len, push_str};

/// The default size of the buffer file contents are read into.
///
/// Large enough that a read costs little next to hashing it, small enough
/// to stay in the CPU's second-level cache while the hash reads it back.
pub const DEFAULT_BUFFER_SIZE: usize = 128 * 1024;

/// The smallest buffer a [`Dumper`] uses, whatever it is asked for.
pub const MIN_BUFFER_SIZE: usize = 4096;

/// Why a path could not be archived.
#[derive(Debug, Error)]
pub enum DumpError {
    /// Reading the file system failed.
    #[error("reading '{path}': {source}")]
    Read {
        /// The path being read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file that is neither regular, a directory nor a symlink.
    #[error("file '{path}' has an unsupported type ({kind})")]
    UnsupportedType {
        /// The offending path.
        path: PathBuf,
        /// What it is: fifo, socket, block device, ...
        kind: &'static str,
    },
    /// A regular file became shorter while it was being read.
    #[error("file '{path}' changed size while it was being archived (expected {expected} bytes)")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The size it had when archiving started.
        expected: u64,
    },
    /// The tree nests deeper than a NAR may.
    #[error("'{path}' is nested more than {} directories deep, the NAR limit", MAX_DEPTH - 1)]
    TooDeep {
        /// The first path past the limit.
        path: PathBuf,
    },
    /// Writing the NAR to its destination failed.
    #[error("writing the NAR: {0}")]
    Write(#[source] io::Error),
}

/// Writes NARs of file-system paths, reusing one contents buffer across
/// files and across calls; the buffer's size bounds the memory used.
#[derive(Debug)]
pub struct Dumper {
    buf: Vec<u8>,
    header: Vec<u8>,
}

impl Default for Dumper {
    fn default() -> Self {
        Self::new()
    }
}

impl Dumper {
    /// A dumper with a buffer of [`DEFAULT_BUFFER_SIZE`] bytes.
    #[must_use]
    pub fn new() -> Self {
        Self::with_buffer_size(DEFAULT_BUFFER_SIZE)
    }

    /// A dumper whose contents buffer has `size` bytes (at least
    /// [`MIN_BUFFER_SIZE`]).
    #[must_use]
    pub fn with_buffer_size(size: usize) -> Self {
        let size = size.max(MIN_BUFFER_SIZE);
        Self {
            buf: vec![0; size],
            header: Vec::with_capacity(HEADER_FLUSH + SMALL_FILE + 64),
        }
    }

    /// The size of the contents buffer: with the small header buffer, all
    /// the memory a dump holds, whatever the size of the files.
    #[must_use]
    pub fn buffer_size(&self) -> usize {
        self.buf.len()
    }

    /// The contents buffer, for other whole-file readers of this module.
    pub(crate) fn buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Writes the NAR of `path` to `out` and returns its size in bytes.
    ///
    /// `out` receives few, large writes, so it needs no buffering of its own.
    ///
    /// # Errors
    ///
    /// When reading the tree or writing `out` fails, when the tree holds a
    /// file of an unsupported type, or nests too deep.
    pub fn dump<W: Write + ?Sized>(&mut self, path: &Path, out: &mut W) -> Result<u64, DumpError> {
        let meta = fs::symlink_metadata(path).map_err(|e| read_error(path, e))?;
        let mut walk = Walk {
            buf: &mut self.buf,
            header: &mut self.header,
            out,
            written: 0,
        };
        walk.header.clear();
        push_str(walk.header, MAGIC);
        walk.node(path, meta.file_type(), 0)?;
        walk.flush()?;
        Ok(walk.written)
    }
}

/// Writes the NAR of `path` to `out` with a fresh [`Dumper`] and returns
/// its size.
///
/// # Errors
///
/// As [`Dumper::dump`].
pub fn dump_path<W: Write + ?Sized>(path: &Path, out: &mut W) -> Result<u64, DumpError> {
    Dumper::new().dump(path, out)
}

/// Writes the NAR of a single non-executable regular file holding
/// `contents` (Nix's `dumpString`) and returns its size.
///
/// # Errors
///
/// When writing `out` fails.
pub fn dump_bytes<W: Write + ?Sized>(contents: &[u8], out: &mut W) -> io::Result<u64> {
    let mut header = Vec::with_capacity(128);
    push_str(&mut header, MAGIC);
    for tag in [b"(" as &[u8], b"type", b"regular", b"contents"] {
        push_str(&mut header, tag);
    }
    header.extend_from_slice(&(contents.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(contents)?;
    let mut trailer = Vec::with_capacity(24);
    trailer.extend_from_slice(&ZEROS[..padding_len(contents.len() as u64)]);
    push_str(&mut trailer, b")");
    out.write_all(&trailer)?;
    Ok((header.len() + contents.len() + trailer.len()) as u64)
}

/// The size of the NAR [`dump_bytes`] writes for `len` bytes of contents.
#[must_use]
pub const fn dump_bytes_len(len: u64) -> u64 {
    // magic, "(", "type", "regular", "contents", the contents, ")".
    wire::encoded_len(MAGIC.len() as u64) + 8 * 2 + 16 + 16 + 16 + wire::encoded_len(len) + 16
}

/// Files up to this size are copied into the header buffer, so that a tree
/// of small files reaches the output in large writes.
const SMALL_FILE: usize = 16 * 1024;

/// The header buffer is written out once it holds this much.
const HEADER_FLUSH: usize = 64 * 1024;

/// One dump in progress.
struct Walk<'a, W: Write + ?Sized> {
    buf: &'a mut [u8],
    header: &'a mut Vec<u8>,
    out: &'a mut W,
    written: u64,
}

impl<W: Write + ?Sized> Walk<'_, W> {
    fn node(&mut self, path: &Path, file_type: FileType, depth: usize) -> Result<(), DumpError> {
        if depth >= MAX_DEPTH {
            return Err(DumpError::TooDeep {
                path: path.to_owned(),
            });
        }
        push_str(self.header, b"(");
        push_str(self.header, b"type");
        if file_type.is_file() {
            self.regular(path)?;
        } else if file_type.is_dir() {
            self.directory(path, depth)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(|e| read_error(path, e))?;
            push_str(self.header, b"symlink");
            push_str(self.header, b"target");
            push_str(self.header, target.as_os_str().as_bytes());
        } else {
            return Err(DumpError::UnsupportedType {
                path: path.to_owned(),
                kind: describe(file_type),
            });
        }
        push_str(self.header, b")");
        if self.header.len() >= HEADER_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn directory(&mut self, path: &Path, depth: usize) -> Result<(), DumpError> {
        push_str(self.header, b"directory");
        let mut entries: Vec<(OsString, FileType)> = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| read_error(path, e))? {
            let entry = entry.map_err(|e| read_error(path, e))?;
            let file_type = entry
                .file_type()
                .map_err(|e| read_error(&entry.path(), e))?;
            entries.push((entry.file_name(), file_type));
        }
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut child = path.to_path_buf();
        for (name, file_type) in entries {
            push_str(self.header, b"entry");
            push_str(self.header, b"(");
            push_str(self.header, b"name");
            push_str(self.header, name.as_bytes());
            push_str(self.header, b"node");
            child.push(&name);
            self.node(&child, file_type, depth + 1)?;
            child.pop();
            push_str(self.header, b")");
        }
        Ok(())
    }

    fn regular(&mut self, path: &Path) -> Result<(), DumpError> {
        let mut file = File::open(path).map_err(|e| read_error(path, e))?;
        let meta = file.metadata().map_err(|e| read_error(path, e))?;
        // The entry was a regular file when the directory was read; if it
        // was replaced meanwhile, refuse rather than archive something else.
        if !meta.is_file() {
            return Err(DumpError::UnsupportedType {
                path: path.to_owned(),
                kind: describe(meta.file_type()),
            });
        }
        push_str(self.header, b"regular");
        if meta.permissions().mode() & 0o100 != 0 {
            push_str(self.header, b"executable");
            push_str(self.header, b"");
        }
        push_str(self.header, b"contents");
        let size = meta.len();
        self.header.extend_from_slice(&size.to_le_bytes());
        if size <= SMALL_FILE as u64 {
            // Small files join the header buffer, read in buffer-sized
            // pieces since the buffer may be smaller than SMALL_FILE.
            let mut left = size;
            while left > 0 {
                let n = self.read_chunk(&mut file, path, left, size)?;
                self.header.extend_from_slice(&self.buf[..n]);
                left -= n as u64;
            }
        } else {
            self.flush()?;
            let mut left = size;
            while left > 0 {
                let n = self.read_chunk(&mut file, path, left, size)?;
                self.out
                    .write_all(&self.buf[..n])
                    .map_err(DumpError::Write)?;
                self.written += n as u64;
                left -= n as u64;
            }
        }
        self.header.extend_from_slice(&ZEROS[..padding_len(size)]);
        Ok(())
    }

    /// Reads up to `left` bytes (at least one) into the buffer.
    fn read_chunk(
        &mut self,
        file: &mut File,
        path: &Path,
        left: u64,
        size: u64,
    ) -> Result<usize, DumpError> {
        let want = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
        loop {
            match file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(DumpError::FileChanged {
                        path: path.to_owned(),
                        expected: size,
                    });
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(path, e)),
            }
        }
    }

    fn flush(&mut self) -> Result<(), DumpError> {
        if !self.header.is_empty() {
            self.out.write_all(self.header).map_err(DumpError::Write)?;
            self.written += self.header.len() as u64;
            self.header.clear();
        }
        Ok(())
    }
}

fn read_error(path: &Path, source: io::Error) -> DumpError {
    DumpError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Names a file type for messages.
pub(crate) fn describe(file_type: FileType) -> &'static str {
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_file() {
        "regular file"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_bytes_matches_its_length() {
        for len in [0usize, 1, 7, 8, 9, 100] {
            let contents = vec![b'x'; len];
            let mut out = Vec::new();
            let n = dump_bytes(&contents, &mut out).unwrap();
            assert_eq!(n, out.len() as u64);
            assert_eq!(n, dump_bytes_len(len as u64));
        }
    }

    #[test]
    fn fifo_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipping: mkfifo is not available");
            return;
        }
        let err = dump_path(dir.path(), &mut io::sink()).unwrap_err();
        match err {
            DumpError::UnsupportedType { path, kind } => {
                assert_eq!(path, fifo);
                assert_eq!(kind, "fifo");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn too_deep_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().to_path_buf();
        for _ in 0..MAX_DEPTH - 1 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        dump_path(dir.path(), &mut io::sink()).unwrap();
        p.push("d");
        fs::create_dir(&p).unwrap();
        let err = dump_path(dir.path(), &mut io::sink()).unwrap_err();
        assert!(matches!(err, DumpError::TooDeep { path } if path == p));
    }
}
