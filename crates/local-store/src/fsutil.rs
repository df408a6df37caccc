//! File system helpers: durable writes, deletion of read-only trees, tree
//! copies, and the whole-file locks on `big-lock` and `gc.lock`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{IoContext, Result};

/// Creates a folder and its parents.
pub(crate) fn create_dirs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).io_context("creating directory", path)
}

/// Flushes a folder's entries to disk.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .io_context("syncing directory", path)
}

/// Flushes every file and folder of a tree to disk, so that a registration
/// committed afterwards never describes contents lost in a crash.
pub(crate) fn sync_tree(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).io_context("getting status of", path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).io_context("reading directory", path)? {
            let entry = entry.io_context("reading directory", path)?;
            sync_tree(&entry.path())?;
        }
        sync_dir(path)
    } else if meta.is_file() {
        File::open(path)
            .and_then(|file| file.sync_all())
            .io_context("syncing file", path)
    } else {
        // A symlink's target is part of its folder's entry, which the
        // folder's own sync covers.
        Ok(())
    }
}

/// Removes a file or tree, making read-only folders writable first (store
/// contents are 0555). A missing path is not an error.
pub(crate) fn delete_path(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).io_context("getting status of", path),
    };
    if meta.is_dir() {
        if meta.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .io_context("making directory writable", path)?;
        }
        for entry in fs::read_dir(path).io_context("reading directory", path)? {
            let entry = entry.io_context("reading directory", path)?;
            delete_path(&entry.path())?;
        }
        match fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).io_context("removing directory", path)
            }
            _ => Ok(()),
        }
    } else {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).io_context("removing file", path)
            }
            _ => Ok(()),
        }
    }
}

/// Writes a small file atomically: a temp file beside it, synced, then
/// renamed over it, then the folder synced.
pub(crate) fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .io_context("creating file", &tmp)?;
        file.write_all(contents).io_context("writing file", &tmp)?;
        file.sync_all().io_context("syncing file", &tmp)?;
        fs::rename(&tmp, path).io_context("renaming into place", path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `<path>.tmp.<pid>`, a name no other process picks.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// An open file holding a whole-file `flock` (shared or exclusive); the
/// lock goes with the file.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens (creating, mode 0600, close-on-exec) a lock file without
    /// locking it.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        // std opens every file with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .io_context("opening lock file", path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Takes the lock in `shared` or exclusive mode. Tries first; when
    /// someone else holds it, logs why and waits. Only store opening and
    /// verification (never the build loop) take these locks.
    pub(crate) fn lock(&self, shared: bool, waiting: &str) -> Result<()> {
        let (try_op, wait_op) = if shared {
            (
                FlockOperation::NonBlockingLockShared,
                FlockOperation::LockShared,
            )
        } else {
            (
                FlockOperation::NonBlockingLockExclusive,
                FlockOperation::LockExclusive,
            )
        };
        match rustix::fs::flock(&self.file, try_op) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tracing::info!("{waiting}");
                rustix::fs::flock(&self.file, wait_op)
                    .map_err(std::io::Error::from)
                    .io_context("locking", &self.path)
            }
            Err(e) => Err(std::io::Error::from(e)).io_context("locking", &self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_path_removes_read_only_trees() {
        let dir = tempfile::tempdir().expect("temp dir");
        let top = dir.path().join("t");
        fs::create_dir_all(top.join("sub")).expect("mkdir");
        fs::write(top.join("sub/f"), b"x").expect("write");
        fs::set_permissions(top.join("sub/f"), fs::Permissions::from_mode(0o444)).expect("chmod");
        fs::set_permissions(top.join("sub"), fs::Permissions::from_mode(0o555)).expect("chmod");
        fs::set_permissions(&top, fs::Permissions::from_mode(0o555)).expect("chmod");
        delete_path(&top).expect("deletes");
        assert!(!top.exists());
        delete_path(&top).expect("missing is fine");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("schema");
        write_file_atomic(&file, b"9").expect("write");
        write_file_atomic(&file, b"10").expect("write");
        assert_eq!(fs::read(&file).expect("read"), b"10");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
