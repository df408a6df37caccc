//! Spare build directories, kept empty for the next build instead of being
//! deleted.
//!
//! Creating a directory costs an inode, and on some file systems (ext4
//! without a journal) every new inode is checked against each inode freed
//! in the last minutes, so a long run of builds that each create and delete
//! a directory makes every later file creation slower. A build therefore
//! gives its directory back when it is done with it: emptied, checked
//! (a real directory, owned by this process's effective user and the group
//! a new one would get, no extended attributes such as ACLs), mode 0700,
//! and renamed to a hidden spare name `.larder-spare-<pid>-<k>` in the same
//! parent. The next build in this process renames a spare to its fresh
//! name, which costs no inode. At most [`MAX_SPARES_PER_PARENT`] spares are
//! kept per parent; anything that fails a check, or finds the pool full, is
//! deleted as before.
//!
//! Spares must not outlive the process: [`release_spare_build_dirs`] (or
//! dropping a [`SpareBuildDirs`] guard) deletes them, and the first build
//! in a parent deletes the spares that processes no longer running left
//! there (a killed process cannot clean up after itself).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::fs::{CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{BuildError, Result};
use crate::fsops;

/// The most spare directories kept in one parent; more are deleted.
pub const MAX_SPARES_PER_PARENT: usize = 8;

/// Deletes every spare build directory this process keeps, in every
/// parent. Call it once the process has no more builds to run (the CLI
/// before it exits); builds after it still work and pool again. Spares a
/// killed process leaves behind are deleted by the next process's first
/// build in the same parent.
pub fn release_spare_build_dirs() {
    let spares: Vec<PathBuf> = {
        let mut pool = lock_pool();
        pool.values_mut()
            .flat_map(|parent| std::mem::take(&mut parent.spares))
            .collect()
    };
    for spare in spares {
        if let Err(e) = fsops::delete_path(&spare) {
            tracing::warn!("deleting spare build directory: {e}");
        }
    }
}

/// A guard that calls [`release_spare_build_dirs`] when dropped: hold it
/// in `main` (or around a command's builds) so spares are deleted however
/// the builds end, short of the process being killed or calling
/// [`std::process::exit`].
#[derive(Debug, Default)]
#[must_use = "the spare build directories are deleted when the guard is dropped"]
pub struct SpareBuildDirs {
    _private: (),
}

impl SpareBuildDirs {
    /// The guard.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Drop for SpareBuildDirs {
    fn drop(&mut self) {
        release_spare_build_dirs();
    }
}

/// An empty directory (mode 0700) named `name` in `parent`, for a folder
/// other than the build directory that each build makes and deletes (a
/// sandbox's chroot): a spare renamed, or a new one. Hand it back with
/// [`give_back_dir`].
///
/// # Errors
///
/// When `name` exists in `parent` or the directory cannot be created.
pub fn take_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    if let Some(spare) = take_spare(parent) {
        match rename_noreplace(&spare, &dir) {
            Ok(()) if fit_for_reuse(&dir) => return Ok(dir),
            Ok(()) => discard(&dir),
            Err(e) => {
                tracing::debug!("reusing spare '{}': {e}", spare.display());
                discard(&spare);
            }
        }
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| BuildError::io("creating directory", &dir, &e))?;
    Ok(dir)
}

/// Done with a directory of [`take_dir`]: kept as a spare (emptied and
/// checked as a build directory is) or deleted.
///
/// # Errors
///
/// When it must be deleted and cannot be.
pub fn give_back_dir(dir: &Path) -> Result<()> {
    give_back(dir)
}

/// A fresh, empty build directory (mode 0700) in `parent` named by
/// `fresh_name`: a spare renamed, or a new one. `parent` must exist.
pub(crate) fn take(parent: &Path, mut fresh_name: impl FnMut() -> String) -> Result<PathBuf> {
    if let Some(spare) = take_spare(parent) {
        loop {
            let dir = parent.join(fresh_name());
            match rename_noreplace(&spare, &dir) {
                Ok(()) if fit_for_reuse(&dir) => return Ok(dir),
                Ok(()) => {
                    discard(&dir);
                    break;
                }
                Err(Errno::EXIST) => {}
                Err(e) => {
                    tracing::debug!("reusing spare '{}': {e}", spare.display());
                    discard(&spare);
                    break;
                }
            }
        }
    }
    loop {
        let dir = parent.join(fresh_name());
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BuildError::io("creating build directory", &dir, &e)),
        }
    }
}

/// Done with the build directory `dir`: keeps it as a spare if it can be
/// emptied and passes the checks and the pool has room, deletes it
/// otherwise. A `dir` that does not exist is not an error.
///
/// # Errors
///
/// When it must be deleted and cannot be.
pub(crate) fn give_back(dir: &Path) -> Result<()> {
    match keep_as_spare(dir) {
        Ok(true) => Ok(()),
        Ok(false) => fsops::delete_path(dir),
        Err(reason) => {
            tracing::debug!("not reusing build directory '{}': {reason}", dir.display());
            fsops::delete_path(dir)
        }
    }
}

/// The spares of one parent directory.
#[derive(Debug, Default)]
struct Parent {
    /// Whether this process has deleted the spares dead processes left.
    swept: bool,
    spares: Vec<PathBuf>,
}

static POOL: Mutex<BTreeMap<PathBuf, Parent>> = Mutex::new(BTreeMap::new());

const SPARE_PREFIX: &str = ".larder-spare-";

fn lock_pool() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Parent>> {
    // The map stays consistent whatever panicked while holding it: a lost
    // entry is a directory that is deleted later or not reused.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A spare of `parent`, after sweeping dead processes' spares on the
/// parent's first use.
fn take_spare(parent: &Path) -> Option<PathBuf> {
    let mut pool = lock_pool();
    let entry = pool.entry(parent.to_path_buf()).or_default();
    if !entry.swept {
        entry.swept = true;
        // Under the lock, before this process keeps any spare here, so a
        // spare named with this process's pid is an earlier process's.
        sweep(parent);
    }
    entry.spares.pop()
}

/// Deletes the spares in `parent` of processes that no longer run (and of
/// an earlier process with this pid), owned by this user.
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    let euid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPARE_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != me
            && i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|pid| {
                    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
                });
        let path = entry.path();
        let ours = fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == euid);
        if alive || !ours {
            continue;
        }
        if let Err(e) = fsops::delete_path(&path) {
            tracing::warn!("deleting stale spare build directory: {e}");
        }
    }
}

/// Whether a spare just renamed to `dir` is as a new directory would be:
/// a real directory, ours, mode 0700, empty.
fn fit_for_reuse(dir: &Path) -> bool {
    let euid = rustix::process::geteuid().as_raw();
    fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == euid && m.mode() & 0o7777 == 0o700)
        && fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Deletes a spare that cannot be reused.
fn discard(path: &Path) {
    if let Err(e) = fsops::delete_path(path) {
        tracing::warn!("deleting spare build directory: {e}");
    }
}

/// Why a build directory is not kept as a spare.
#[derive(Debug, thiserror::Error)]
enum NotKept {
    #[error("it has no parent")]
    NoParent,
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it belongs to user {uid}, not {euid}")]
    Owner { uid: u32, euid: u32 },
    #[error("its group is {gid}, not {expected}")]
    Group { gid: u32, expected: u32 },
    #[error("it was replaced while being checked")]
    Replaced,
    #[error("it has extended attributes")]
    ExtendedAttributes,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Build(#[from] BuildError),
}

/// Empties `dir`, checks it and renames it to a spare name; `Ok(false)`
/// when the pool is full or `dir` does not exist.
fn keep_as_spare(dir: &Path) -> std::result::Result<bool, NotKept> {
    let parent = dir.parent().ok_or(NotKept::NoParent)?;
    if lock_pool()
        .get(parent)
        .is_some_and(|p| p.spares.len() >= MAX_SPARES_PER_PARENT)
    {
        return Ok(false);
    }
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // A symbolic link the builder put in its place is not followed: it is
    // deleted, not its target emptied.
    if !meta.is_dir() {
        return Err(NotKept::NotADirectory);
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(NotKept::Owner {
            uid: meta.uid(),
            euid,
        });
    }
    // The builder may have taken its own permissions away; it is ours, so
    // it gets them back before being read. Nothing but this user can
    // replace it in the meantime (the builder has exited, and the parent is
    // sticky or private), and the open below confirms it was not.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    if stat.st_dev != meta.dev() || stat.st_ino != meta.ino() {
        return Err(NotKept::Replaced);
    }
    let expected = expected_group(parent)?;
    if stat.st_gid != expected {
        return Err(NotKept::Group {
            gid: stat.st_gid,
            expected,
        });
    }
    if has_extended_attributes(&fd)? {
        return Err(NotKept::ExtendedAttributes);
    }
    for entry in fs::read_dir(dir)? {
        fsops::delete_path(&entry?.path())?;
    }
    // Clears the set-group-id and sticky bits the builder may have set.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(io::Error::from)?;
    let mut pool = lock_pool();
    let entry = pool.entry(parent.to_path_buf()).or_default();
    if entry.spares.len() >= MAX_SPARES_PER_PARENT {
        return Ok(false);
    }
    loop {
        let spare = parent.join(format!(
            "{SPARE_PREFIX}{}-{}",
            std::process::id(),
            next_spare()
        ));
        match rename_noreplace(dir, &spare) {
            Ok(()) => {
                entry.spares.push(spare);
                return Ok(true);
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
}

/// The group a directory made in `parent` gets: the parent's when it is
/// set-group-id, the effective group's otherwise.
fn expected_group(parent: &Path) -> io::Result<u32> {
    let meta = fs::metadata(parent)?;
    Ok(if meta.mode() & 0o2000 != 0 {
        meta.gid()
    } else {
        rustix::process::getegid().as_raw()
    })
}

/// Whether the directory carries extended attributes that would shape what
/// the next builder sees (an ACL, a default ACL, user attributes).
/// `security.*` attributes (an SELinux label) are the system's, set on
/// every new directory alike, and do not count. A parent with a default
/// ACL gives every new directory one, so no directory there is reused.
fn has_extended_attributes(fd: &OwnedFd) -> io::Result<bool> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(fd, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::NOTSUP) => return Ok(false),
        Err(Errno::RANGE) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    Ok(names[..len]
        .split(|&b| b == 0)
        .any(|name| !name.is_empty() && !name.starts_with(b"security.")))
}

/// Renames `from` to `to`, failing with `EEXIST` when `to` exists (a plain
/// rename would replace an empty directory there).
fn rename_noreplace(from: &Path, to: &Path) -> rustix::io::Result<()> {
    rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)
}

fn next_spare() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spares_in(parent: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(parent)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(SPARE_PREFIX))
            })
            .collect();
        found.sort();
        found
    }

    fn pooled(parent: &Path) -> usize {
        lock_pool().get(parent).map_or(0, |p| p.spares.len())
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("nix-build-test-{n}")
        }
    }

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).expect("stat").ino()
    }

    fn release(parent: &Path) {
        let spares = lock_pool()
            .get_mut(parent)
            .map(|p| std::mem::take(&mut p.spares))
            .unwrap_or_default();
        for spare in spares {
            fsops::delete_path(&spare).expect("deleting spare");
        }
    }

    #[test]
    fn a_filled_and_chmodded_directory_is_emptied_and_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let parent = tmp.path();
        let mut names = counter();
        let first = take(parent, &mut names).expect("take");
        let inode = ino(&first);
        fs::create_dir_all(first.join("a/b")).expect("mkdir");
        fs::write(first.join("a/b/file"), "x").expect("write");
        fs::write(first.join(".hidden"), "x").expect("write");
        fs::set_permissions(first.join("a"), fs::Permissions::from_mode(0o000)).expect("chmod");
        fs::set_permissions(&first, fs::Permissions::from_mode(0o3555)).expect("chmod");
        give_back(&first).expect("give back");
        assert!(!first.exists());
        assert_eq!(spares_in(parent).len(), 1);

        let second = take(parent, &mut names).expect("take");
        assert_ne!(second, first);
        assert_eq!(ino(&second), inode, "the spare was not reused");
        let meta = fs::symlink_metadata(&second).expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(fs::read_dir(&second).expect("read_dir").count(), 0);
        assert!(spares_in(parent).is_empty());
        give_back(&second).expect("give back");
        release(parent);
        assert!(spares_in(parent).is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_directory_is_deleted_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let parent = tmp.path().join("builds");
        fs::create_dir(&parent).expect("mkdir");
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("precious"), "x").expect("write");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o751)).expect("chmod");
        let mode = 0o751;
        let dir = take(&parent, counter()).expect("take");
        fs::remove_dir(&dir).expect("rmdir");
        std::os::unix::fs::symlink(&target, &dir).expect("symlink");
        give_back(&dir).expect("give back");
        assert!(fs::symlink_metadata(&dir).is_err(), "the symlink is left");
        assert!(target.join("precious").exists(), "the target was emptied");
        assert_eq!(fs::metadata(&target).expect("stat").mode() & 0o7777, mode);
        assert!(spares_in(&parent).is_empty());
        assert_eq!(pooled(&parent), 0);
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_deleted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = take(tmp.path(), counter()).expect("take");
        fs::remove_dir(&dir).expect("rmdir");
        fs::write(&dir, "x").expect("write");
        give_back(&dir).expect("give back");
        assert!(fs::symlink_metadata(&dir).is_err());
        assert!(spares_in(tmp.path()).is_empty());
    }

    #[test]
    fn a_directory_of_another_user_or_group_is_deleted() {
        if !rustix::process::geteuid().is_root() {
            // Only root can give a directory away; as another user the
            // check cannot be reached.
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut names = counter();
        let dir = take(tmp.path(), &mut names).expect("take");
        std::os::unix::fs::chown(&dir, Some(12345), None).expect("chown");
        give_back(&dir).expect("give back");
        assert!(!dir.exists());
        let dir = take(tmp.path(), &mut names).expect("take");
        std::os::unix::fs::chown(&dir, None, Some(12345)).expect("chown");
        give_back(&dir).expect("give back");
        assert!(!dir.exists());
        assert!(spares_in(tmp.path()).is_empty());
    }

    #[test]
    fn a_directory_with_user_attributes_is_deleted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = take(tmp.path(), counter()).expect("take");
        match rustix::fs::setxattr(
            &dir,
            "user.larder-test",
            b"1",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            // The file system has no user attributes: nothing to test.
            Err(Errno::NOTSUP | Errno::PERM) => return,
            Err(e) => panic!("setxattr: {e}"),
        }
        give_back(&dir).expect("give back");
        assert!(!dir.exists());
        assert!(spares_in(tmp.path()).is_empty());
    }

    #[test]
    fn at_most_the_limit_is_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut names = counter();
        let dirs: Vec<PathBuf> = (0..MAX_SPARES_PER_PARENT + 3)
            .map(|_| take(tmp.path(), &mut names).expect("take"))
            .collect();
        for dir in &dirs {
            give_back(dir).expect("give back");
            assert!(!dir.exists());
        }
        assert_eq!(spares_in(tmp.path()).len(), MAX_SPARES_PER_PARENT);
        assert_eq!(pooled(tmp.path()), MAX_SPARES_PER_PARENT);
        assert_eq!(
            fs::read_dir(tmp.path()).expect("read_dir").count(),
            MAX_SPARES_PER_PARENT
        );
        release(tmp.path());
        assert!(spares_in(tmp.path()).is_empty());
    }

    #[test]
    fn the_first_use_sweeps_spares_of_dead_processes_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        let alive = std::os::unix::process::parent_id();
        let stale = tmp.path().join(format!("{SPARE_PREFIX}{dead}-3"));
        fs::create_dir_all(stale.join("sub")).expect("mkdir");
        let live = tmp.path().join(format!("{SPARE_PREFIX}{alive}-0"));
        fs::create_dir(&live).expect("mkdir");
        let mine = tmp
            .path()
            .join(format!("{SPARE_PREFIX}{}-999", std::process::id()));
        fs::create_dir(&mine).expect("mkdir");
        let other = tmp.path().join("unrelated");
        fs::create_dir(&other).expect("mkdir");

        let dir = take(tmp.path(), counter()).expect("take");
        assert!(!stale.exists(), "a dead process's spare was kept");
        assert!(
            !mine.exists(),
            "an earlier process's spare with this pid was kept"
        );
        assert!(live.exists(), "a live process's spare was deleted");
        assert!(other.exists());
        // Only the first use sweeps.
        fs::create_dir(&stale).expect("mkdir");
        give_back(&dir).expect("give back");
        let _again = take(tmp.path(), counter()).expect("take");
        assert!(stale.exists());
    }

    #[test]
    fn a_missing_directory_is_not_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        give_back(&tmp.path().join("gone")).expect("give back");
        assert_eq!(pooled(tmp.path()), 0);
    }
}
