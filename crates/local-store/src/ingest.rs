//! Copying a file or tree into a scratch folder with canonical metadata,
//! as Nix restores a NAR into the store: folders 0555, files 0444 or 0555
//! (by the owner's execute bit), modification time 1 s after the epoch.
//!
//! The top object keeps a writable mode until it has been moved into the
//! store (moving a read-only folder to another parent needs write access to
//! it); [`finish_top`] then makes it canonical too.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};

use crate::error::{Error, IoContext, Result};

/// Copies `src` (a regular file, folder or symlink) to `dst`, which must
/// not exist, with canonical metadata below the top.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    copy_entry(src, dst, true)
}

/// Copies the contents of a regular file to `dst` as a non-executable
/// file, as flat and text ingestion store it.
pub(crate) fn copy_flat(src: &Path, dst: &Path, method: &'static str) -> Result<()> {
    let meta = fs::metadata(src).io_context("getting status of", src)?;
    if !meta.is_file() {
        return Err(Error::NotRegularFile {
            path: src.to_owned(),
            method,
        });
    }
    let mut input = File::open(src).io_context("opening", src)?;
    let mut output = create_file(dst, 0o644)?;
    io::copy(&mut input, &mut output).io_context("copying into", dst)?;
    Ok(())
}

/// Writes bytes as a new file at `dst`.
pub(crate) fn write_flat(dst: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    create_file(dst, 0o644)?
        .write_all(contents)
        .io_context("writing", dst)
}

/// Makes the top object canonical once it is in place.
pub(crate) fn finish_top(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).io_context("getting status of", path)?;
    if !meta.file_type().is_symlink() {
        let exec = meta.is_dir() || meta.permissions().mode() & 0o100 != 0;
        let mode = if exec { 0o555 } else { 0o444 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .io_context("changing mode of", path)?;
    }
    set_mtime_one(path)
}

fn copy_entry(src: &Path, dst: &Path, top: bool) -> Result<()> {
    let meta = fs::symlink_metadata(src).io_context("getting status of", src)?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        fs::create_dir(dst).io_context("creating directory", dst)?;
        for entry in fs::read_dir(src).io_context("reading directory", src)? {
            let entry = entry.io_context("reading directory", src)?;
            copy_entry(&entry.path(), &dst.join(entry.file_name()), false)?;
        }
        if !top {
            fs::set_permissions(dst, fs::Permissions::from_mode(0o555))
                .io_context("changing mode of", dst)?;
            set_mtime_one(dst)?;
        }
    } else if file_type.is_file() {
        let exec = meta.permissions().mode() & 0o100 != 0;
        let mut input = File::open(src).io_context("opening", src)?;
        let mut output = create_file(dst, if exec { 0o755 } else { 0o644 })?;
        io::copy(&mut input, &mut output).io_context("copying into", dst)?;
        drop(output);
        if !top {
            fs::set_permissions(
                dst,
                fs::Permissions::from_mode(if exec { 0o555 } else { 0o444 }),
            )
            .io_context("changing mode of", dst)?;
            set_mtime_one(dst)?;
        }
    } else if file_type.is_symlink() {
        let target = fs::read_link(src).io_context("reading symlink", src)?;
        std::os::unix::fs::symlink(&target, dst).io_context("creating symlink", dst)?;
        set_mtime_one(dst)?;
    } else {
        return Err(Error::UnsupportedFileType {
            path: src.to_owned(),
        });
    }
    Ok(())
}

fn create_file(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .io_context("creating file", path)
}

/// Sets the modification time to 1 (not following symlinks), keeping the
/// access time.
fn set_mtime_one(path: &Path) -> Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
        .io_context("changing modification time of", path)
}
