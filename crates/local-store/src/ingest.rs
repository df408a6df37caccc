//! Copying a file or tree into a scratch folder: regular files (keeping the
//! owner's execute bit), folders and symlinks, nothing else. Metadata is
//! made canonical once the copy is in its final place (see
//! [`larder_store_core::canonicalise`]), since moving a read-only folder to
//! another parent needs write access to it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Copies `src` (a regular file, folder or symlink) to `dst`, which must
/// not exist.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).io_context("getting status of", src)?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        fs::create_dir(dst).io_context("creating directory", dst)?;
        for entry in fs::read_dir(src).io_context("reading directory", src)? {
            let entry = entry.io_context("reading directory", src)?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if file_type.is_file() {
        let exec = meta.permissions().mode() & 0o100 != 0;
        let mut input = File::open(src).io_context("opening", src)?;
        let mut output = create_file(dst, if exec { 0o755 } else { 0o644 })?;
        io::copy(&mut input, &mut output).io_context("copying into", dst)?;
    } else if file_type.is_symlink() {
        let target = fs::read_link(src).io_context("reading symlink", src)?;
        std::os::unix::fs::symlink(&target, dst).io_context("creating symlink", dst)?;
    } else {
        return Err(Error::UnsupportedFileType {
            path: src.to_owned(),
        });
    }
    Ok(())
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

fn create_file(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .io_context("creating file", path)
}
