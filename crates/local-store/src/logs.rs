//! Build logs: `ROOT/nix/var/log/nix/drvs/<2 chars>/<rest of the .drv base
//! name>`, bzip2-compressed with `.bz2` appended as Nix 2.8 writes them.
//!
//! Reading takes the plain file first, then the `.bz2` one, then the flat
//! layout of older Nix (`drvs/<base name>`), as Nix does. Writing streams
//! into a temp file that is renamed into place when the log is finished, so
//! a reader never sees half a log under the final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use larder_store_core::StorePath;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::store::LocalStore;

/// How a log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogCompression {
    /// bzip2, Nix's default (`compress-build-log = true`).
    #[default]
    Bzip2,
    /// Plain text, which Nix reads just as well.
    None,
}

impl LocalStore {
    /// Where a finished log of `drv` is, if there is one.
    #[must_use]
    pub fn build_log_path(&self, drv: &StorePath) -> Option<PathBuf> {
        log_candidates(self, drv)
            .into_iter()
            .find(|path| path.exists())
    }

    /// The build log of a derivation, or of the deriver of a valid output
    /// path; `None` when there is none.
    ///
    /// # Errors
    ///
    /// When the log exists but cannot be read or decompressed.
    pub fn read_build_log(&self, path: &StorePath) -> Result<Option<Vec<u8>>> {
        let drv = if path.is_derivation() {
            path.clone()
        } else {
            match self.query_path_info(path)?.and_then(|info| info.deriver) {
                Some(deriver) => deriver,
                None => return Ok(None),
            }
        };
        for candidate in log_candidates(self, &drv) {
            let file = match File::open(&candidate) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).io_context("opening build log", &candidate),
            };
            let mut log = Vec::new();
            if candidate.extension().is_some_and(|e| e == "bz2") {
                bzip2::read::MultiBzDecoder::new(file)
                    .read_to_end(&mut log)
                    .io_context("decompressing build log", &candidate)?;
            } else {
                io::BufReader::new(file)
                    .read_to_end(&mut log)
                    .io_context("reading build log", &candidate)?;
            }
            return Ok(Some(log));
        }
        Ok(None)
    }

    /// Stores a whole build log of `drv` at once. An existing log is kept,
    /// as Nix keeps it.
    ///
    /// # Errors
    ///
    /// When `drv` is not a derivation or writing fails.
    pub fn add_build_log(&self, drv: &StorePath, log: &[u8]) -> Result<()> {
        if self.build_log_path(drv).is_some() {
            return Ok(());
        }
        let mut writer = self.build_log_writer(drv, LogCompression::Bzip2)?;
        writer
            .write_all(log)
            .io_context("writing build log", writer.tmp_path())?;
        writer.finish()
    }

    /// A writer for the log of a build of `drv` in progress; the log
    /// appears under its final name when [`BuildLogWriter::finish`] is
    /// called, replacing an older one.
    ///
    /// # Errors
    ///
    /// When `drv` is not a derivation or the file cannot be created.
    pub fn build_log_writer(
        &self,
        drv: &StorePath,
        compression: LogCompression,
    ) -> Result<BuildLogWriter> {
        if !drv.is_derivation() {
            return Err(Error::NotDerivation(self.print_path(drv)));
        }
        let plain = self.layout().drv_log_path(drv);
        let final_path = match compression {
            LogCompression::Bzip2 => with_suffix(&plain, ".bz2"),
            LogCompression::None => plain,
        };
        if let Some(dir) = final_path.parent() {
            fsutil::create_dirs(dir)?;
        }
        let tmp_path = fsutil::temp_sibling(&final_path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp_path)
            .io_context("creating build log", &tmp_path)?;
        let sink = match compression {
            LogCompression::Bzip2 => Sink::Bzip2(bzip2::write::BzEncoder::new(
                BufWriter::new(file),
                bzip2::Compression::default(),
            )),
            LogCompression::None => Sink::Plain(BufWriter::new(file)),
        };
        Ok(BuildLogWriter {
            sink: Some(sink),
            tmp_path,
            final_path,
        })
    }
}

/// A build log being written; see [`LocalStore::build_log_writer`].
/// Dropped without [`BuildLogWriter::finish`], it removes its temp file.
pub struct BuildLogWriter {
    sink: Option<Sink>,
    tmp_path: PathBuf,
    final_path: PathBuf,
}

impl std::fmt::Debug for BuildLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLogWriter")
            .field("tmp_path", &self.tmp_path)
            .field("final_path", &self.final_path)
            .finish_non_exhaustive()
    }
}

enum Sink {
    Plain(BufWriter<File>),
    Bzip2(bzip2::write::BzEncoder<BufWriter<File>>),
}

impl BuildLogWriter {
    /// Completes the log and moves it to its final name.
    ///
    /// # Errors
    ///
    /// When flushing or renaming fails.
    pub fn finish(mut self) -> Result<()> {
        let file = match self.sink.take() {
            Some(Sink::Plain(w)) => w.into_inner().map_err(io::IntoInnerError::into_error),
            Some(Sink::Bzip2(w)) => w
                .finish()
                .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error)),
            None => return Ok(()),
        }
        .io_context("writing build log", &self.tmp_path)?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path)
            .io_context("moving build log into place", &self.final_path)
    }

    /// The temp file being written.
    #[must_use]
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }
}

impl Write for BuildLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Some(Sink::Plain(w)) => w.write(buf),
            Some(Sink::Bzip2(w)) => w.write(buf),
            None => Err(io::Error::other("build log already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Some(Sink::Plain(w)) => w.flush(),
            Some(Sink::Bzip2(w)) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BuildLogWriter {
    fn drop(&mut self) {
        if self.sink.is_some() {
            self.sink = None;
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// The places Nix looks for a log, in its order.
fn log_candidates(store: &LocalStore, drv: &StorePath) -> [PathBuf; 4] {
    let nested = store.layout().drv_log_path(drv);
    let flat = store.layout().drv_log_dir().join(drv.as_str());
    [
        nested.clone(),
        with_suffix(&nested, ".bz2"),
        flat.clone(),
        with_suffix(&flat, ".bz2"),
    ]
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::temp_store;

    fn drv() -> StorePath {
        StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-hello.drv").expect("path")
    }

    #[test]
    fn logs_round_trip_compressed_and_plain() {
        let (_dir, store) = temp_store();
        assert_eq!(store.read_build_log(&drv()).expect("reads"), None);
        store
            .add_build_log(&drv(), b"building\ndone\n")
            .expect("writes");
        let path = store.build_log_path(&drv()).expect("exists");
        assert!(
            path.to_string_lossy()
                .ends_with("/drvs/01/23456789abcdfghijklmnpqrsvwxyz-hello.drv.bz2")
        );
        assert_eq!(&fs::read(&path).expect("read")[..3], b"BZh");
        assert_eq!(
            store.read_build_log(&drv()).expect("reads").as_deref(),
            Some(&b"building\ndone\n"[..])
        );

        // A plain log is preferred, as in Nix.
        let mut writer = store
            .build_log_writer(&drv(), LogCompression::None)
            .expect("writer");
        writer.write_all(b"plain").expect("write");
        assert_eq!(
            store.read_build_log(&drv()).expect("reads").as_deref(),
            Some(&b"building\ndone\n"[..]),
            "unfinished logs are invisible"
        );
        writer.finish().expect("finishes");
        assert_eq!(
            store.read_build_log(&drv()).expect("reads").as_deref(),
            Some(&b"plain"[..])
        );
    }

    #[test]
    fn dropped_writer_leaves_nothing_and_non_derivations_are_refused() {
        let (_dir, store) = temp_store();
        let writer = store
            .build_log_writer(&drv(), LogCompression::Bzip2)
            .expect("writer");
        let tmp = writer.tmp_path().to_owned();
        drop(writer);
        assert!(!tmp.exists());
        assert_eq!(store.read_build_log(&drv()).expect("reads"), None);
        let not_drv =
            StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-hello").expect("path");
        assert!(matches!(
            store.add_build_log(&not_drv, b"x"),
            Err(Error::NotDerivation(_))
        ));
        assert_eq!(store.read_build_log(&not_drv).expect("reads"), None);
    }
}
