//! One Nix-compatible lock file: `<path>.lock`, its `flock`, the stale
//! check and the deletion marker.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::Error;

/// The lock file Nix uses for `path`: the path with `.lock` appended.
pub fn lock_file_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// How often a blocking `flock` was interrupted and retried (tests only).
#[cfg(test)]
pub(crate) static EINTR_RETRIES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// An open lock file. Closing it (dropping) releases its `flock`, since this
/// crate never duplicates the descriptor and opens it close-on-exec.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: OwnedFd,
    lock_path: PathBuf,
}

impl LockFile {
    /// Opens or creates the lock file, mode 0600, close-on-exec, as Nix does.
    pub(crate) fn open(lock_path: &Path) -> Result<Self, Error> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC;
        let fd =
            rustix::fs::open(lock_path, flags, Mode::from_raw_mode(0o600)).map_err(|errno| {
                Error::Open {
                    lock_path: lock_path.to_owned(),
                    source: errno.into(),
                }
            })?;
        Ok(LockFile {
            fd,
            lock_path: lock_path.to_owned(),
        })
    }

    pub(crate) fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Tries to take the exclusive lock without blocking: `false` when
    /// another open file description holds it.
    pub(crate) fn try_lock(&self) -> Result<bool, Error> {
        loop {
            match rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(true),
                Err(Errno::WOULDBLOCK) => return Ok(false),
                // A signal arrived during the call; nothing was decided.
                Err(Errno::INTR) => continue,
                Err(errno) => return Err(self.lock_error(errno)),
            }
        }
    }

    /// Takes the exclusive lock, blocking the calling thread until it is
    /// free.
    ///
    /// A signal handler installed without `SA_RESTART` makes `flock` fail
    /// with `EINTR` before the lock is granted. Nix 2.8 ignores the result of
    /// its blocking `flock` and goes on as if it held the lock; here an
    /// interrupted call holds nothing and is simply made again.
    pub(crate) fn lock_blocking(&self) -> Result<(), Error> {
        loop {
            match rustix::fs::flock(&self.fd, FlockOperation::LockExclusive) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => {
                    #[cfg(test)]
                    EINTR_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(errno) => return Err(self.lock_error(errno)),
            }
        }
    }

    /// Whether a previous holder deleted this lock file while we waited for
    /// it: it is unlinked (`st_nlink == 0`) or carries the deletion marker
    /// (`st_size != 0`). Nix checks only the size; the link count also
    /// covers a holder that died between unlinking and writing the marker.
    ///
    /// A marked file that is still the one at the lock path was marked by a
    /// holder whose unlink failed. Reopening would find the same file again
    /// forever (Nix spins on it), so, holding its lock, we empty it and use
    /// it: it is the current lock file.
    pub(crate) fn is_stale(&self) -> Result<bool, Error> {
        let stat_error = |errno: Errno| Error::Stat {
            lock_path: self.lock_path.clone(),
            source: errno.into(),
        };
        let stat = rustix::fs::fstat(&self.fd).map_err(stat_error)?;
        if stat.st_nlink == 0 {
            return Ok(true);
        }
        if stat.st_size == 0 {
            return Ok(false);
        }
        match rustix::fs::stat(&self.lock_path) {
            Ok(at_path) if at_path.st_dev == stat.st_dev && at_path.st_ino == stat.st_ino => {
                tracing::debug!(lock_path = %self.lock_path.display(), "emptying lock file marked deleted but still linked");
                rustix::fs::ftruncate(&self.fd, 0).map_err(stat_error)?;
                Ok(false)
            }
            // Another file (or none) is at the path now: ours is stale.
            Ok(_) | Err(Errno::NOENT) => Ok(true),
            Err(errno) => Err(stat_error(errno)),
        }
    }

    /// Deletes the lock file while still holding its lock: unlinks it, then
    /// writes the marker `d` through the descriptor so that a waiter that
    /// already opened it sees it is stale. Failures are only logged: deleting
    /// lock files is an optimisation, a leftover empty lock file is valid.
    pub(crate) fn delete(&self) {
        if let Err(errno) = rustix::fs::unlink(&self.lock_path) {
            tracing::debug!(lock_path = %self.lock_path.display(), error = %errno, "cannot delete lock file");
        }
        if let Err(errno) = rustix::io::write(&self.fd, b"d") {
            tracing::debug!(lock_path = %self.lock_path.display(), error = %errno, "cannot mark lock file deleted");
        }
    }

    fn lock_error(&self, errno: Errno) -> Error {
        Error::Lock {
            lock_path: self.lock_path.clone(),
            source: io::Error::from(errno),
        }
    }
}

/// Opens `path`'s lock file and tries to lock it without blocking,
/// reopening while the file it got turns out stale. `None`: busy.
pub(crate) fn try_acquire(path: &Path) -> Result<Option<LockFile>, Error> {
    let lock_path = lock_file_path(path);
    loop {
        let file = LockFile::open(&lock_path)?;
        if !file.try_lock()? {
            return Ok(None);
        }
        if file.is_stale()? {
            tracing::debug!(lock_path = %lock_path.display(), "open lock file has become stale");
            continue;
        }
        tracing::debug!(lock_path = %lock_path.display(), "lock acquired");
        return Ok(Some(file));
    }
}

/// Opens `path`'s lock file and locks it, blocking the calling thread while
/// another process holds it. `on_wait` runs once before the first blocking
/// wait.
pub(crate) fn acquire_blocking(path: &Path, mut on_wait: impl FnMut()) -> Result<LockFile, Error> {
    let lock_path = lock_file_path(path);
    loop {
        let file = LockFile::open(&lock_path)?;
        if !file.try_lock()? {
            on_wait();
            file.lock_blocking()?;
        }
        if file.is_stale()? {
            tracing::debug!(lock_path = %lock_path.display(), "open lock file has become stale");
            continue;
        }
        tracing::debug!(lock_path = %lock_path.display(), "lock acquired");
        return Ok(file);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustix::io::FdFlags;

    use super::*;

    #[test]
    fn lock_file_is_the_path_with_lock_appended() {
        assert_eq!(
            lock_file_path(Path::new("/nix/store/abc-hello")),
            Path::new("/nix/store/abc-hello.lock")
        );
        assert_eq!(
            lock_file_path(Path::new("/nix/store/abc-hello.drv.out")),
            Path::new("/nix/store/abc-hello.drv.out.lock")
        );
    }

    #[test]
    fn lock_file_is_mode_0600_and_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("p.lock");
        let file = LockFile::open(&lock_path).unwrap();
        let mode = std::fs::metadata(&lock_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            rustix::io::fcntl_getfd(&file.fd)
                .unwrap()
                .contains(FdFlags::CLOEXEC)
        );
    }

    #[test]
    fn delete_unlinks_then_marks_through_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("p.lock");
        let file = LockFile::open(&lock_path).unwrap();
        assert!(file.try_lock().unwrap());
        // A waiter that opened the file before the deletion.
        let waiter = LockFile::open(&lock_path).unwrap();
        file.delete();
        assert!(!lock_path.exists());
        drop(file);
        assert!(waiter.try_lock().unwrap());
        assert!(waiter.is_stale().unwrap());
        let stat = rustix::fs::fstat(&waiter.fd).unwrap();
        assert_eq!((stat.st_size, stat.st_nlink), (1, 0));
    }

    #[test]
    fn unlinked_file_without_marker_is_stale() {
        // The previous holder died between unlinking and writing `d`.
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("p.lock");
        let file = LockFile::open(&lock_path).unwrap();
        std::fs::remove_file(&lock_path).unwrap();
        assert!(file.try_lock().unwrap());
        assert!(file.is_stale().unwrap());
    }

    #[test]
    fn marked_file_still_at_the_path_is_emptied_and_used() {
        // A holder whose unlink failed still wrote `d`: reopening would
        // find the same file forever.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(lock_file_path(&path), "d").unwrap();
        let file = try_acquire(&path).unwrap().unwrap();
        assert_eq!(std::fs::metadata(lock_file_path(&path)).unwrap().len(), 0);
        assert!(!file.is_stale().unwrap());
    }

    #[test]
    fn try_lock_is_busy_while_another_description_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("p.lock");
        let first = LockFile::open(&lock_path).unwrap();
        let second = LockFile::open(&lock_path).unwrap();
        assert!(first.try_lock().unwrap());
        assert!(!second.try_lock().unwrap());
        drop(first);
        assert!(second.try_lock().unwrap());
    }
}
