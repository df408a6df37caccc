//! Unpacking a NAR onto the file system, and copying a NAR while checking it.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::parse::{NarSink, ParseError, parse};

/// Writes the objects of a parsed NAR under a destination path, as Nix's
/// `restorePath` does: directories 0755, files 0644, executable files 0755
/// (Nix runs with umask 022; here the modes are set explicitly, whatever
/// the umask), symlinks as they are. Nothing existing is overwritten: the
/// destination must not exist, and every object is created exclusively.
#[derive(Debug)]
pub struct RestoreSink {
    dest: PathBuf,
    file: Option<(File, PathBuf)>,
}

impl RestoreSink {
    /// A sink that creates the NAR's root object at `dest`.
    #[must_use]
    pub fn new(dest: &Path) -> Self {
        Self {
            dest: dest.to_owned(),
            file: None,
        }
    }

    fn target(&self, path: &[u8]) -> PathBuf {
        if path.is_empty() {
            self.dest.clone()
        } else {
            self.dest.join(OsStr::from_bytes(path))
        }
    }
}

impl NarSink for RestoreSink {
    fn directory(&mut self, path: &[u8]) -> io::Result<()> {
        let target = self.target(path);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&target)
            .and_then(|()| fs::set_permissions(&target, Permissions::from_mode(0o755)))
            .map_err(|e| context(e, "creating directory", &target))
    }

    fn file(&mut self, path: &[u8], executable: bool, _size: u64) -> io::Result<()> {
        let target = self.target(path);
        let mode = if executable { 0o755 } else { 0o644 };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)
            .and_then(|file| {
                file.set_permissions(Permissions::from_mode(mode))?;
                Ok(file)
            })
            .map_err(|e| context(e, "creating file", &target))?;
        self.file = Some((file, target));
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some((file, target)) => file
                .write_all(data)
                .map_err(|e| context(e, "writing file", target)),
            None => Err(io::Error::other("file contents outside of a file")),
        }
    }

    fn file_end(&mut self) -> io::Result<()> {
        self.file = None;
        Ok(())
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
        let link = self.target(path);
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &link)
            .map_err(|e| context(e, "creating symlink", &link))
    }
}

/// Parses the NAR at the start of `input` and recreates its root object at
/// `dest`, which must not exist. Returns the NAR's size.
///
/// On error, what was created so far stays; the caller removes it.
///
/// # Errors
///
/// When the NAR is malformed, `dest` exists, or the file system refuses.
pub fn restore<R: BufRead + ?Sized>(input: &mut R, dest: &Path) -> Result<u64, ParseError> {
    parse(input, &mut RestoreSink::new(dest))
}

/// Copies the NAR at the start of `input` to `out`, checking it as it goes;
/// returns its size. Exactly the NAR's bytes are consumed from `input` and
/// written, so a NAR embedded in a longer stream is copied alone.
///
/// # Errors
///
/// When the NAR is malformed or reading or writing fails (a write error is
/// reported as [`ParseError::Read`] at the offset it happened).
pub fn copy<R: BufRead + ?Sized, W: Write + ?Sized>(
    input: &mut R,
    out: &mut W,
) -> Result<u64, ParseError> {
    let mut tee = TeeReader {
        input,
        out,
        error: None,
    };
    let result = parse(&mut tee, &mut super::parse::NullSink);
    match (result, tee.error) {
        (Ok(size), None) => Ok(size),
        (Ok(size), Some(source)) => Err(ParseError::Read {
            offset: size,
            source,
        }),
        (Err(e), _) => Err(e),
    }
}

/// A [`BufRead`] that writes every byte its reader consumes to `out`.
///
/// A write error cannot be returned from `consume`; it is kept and returned
/// by the next `fill_buf`, and checked once parsing ends.
struct TeeReader<'a, R: BufRead + ?Sized, W: Write + ?Sized> {
    input: &'a mut R,
    out: &'a mut W,
    error: Option<io::Error>,
}

impl<R: BufRead + ?Sized, W: Write + ?Sized> io::Read for TeeReader<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead + ?Sized, W: Write + ?Sized> BufRead for TeeReader<'_, R, W> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.input.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if self.error.is_none() {
            match self.input.fill_buf() {
                Ok(available) => {
                    let n = amount.min(available.len());
                    if let Err(e) = self.out.write_all(&available[..n]) {
                        self.error = Some(e);
                    }
                }
                Err(e) => self.error = Some(e),
            }
        }
        self.input.consume(amount);
    }
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}
