//! The cleanup "rescue" of a failed build's outputs, without Nix's stale
//! snapshot hazard.
//!
//! After a failed build Nix moves each output left in the chroot into the
//! real store "for easier debugging", for outputs that were invalid in a
//! validity snapshot taken *before* the build. Meanwhile the path may have
//! become valid (registered by this build before a later check failed, or by
//! another goal), and the rename then replaces a valid store path (see
//! reference 4.8). Here the caller asks the store *now*, while it holds the
//! output's lock, and the rename itself refuses to replace anything
//! (`RENAME_NOREPLACE`), so a valid path is never written.

use std::fmt;
use std::io;
use std::path::Path;

use larder_store_core::StorePath;
use rustix::fs::{CWD, RenameFlags};

use crate::chroot::Chroot;

/// What the rescue did with one output.
#[derive(Debug)]
pub enum Rescue {
    /// The chroot copy was moved to the real store path.
    Moved,
    /// The build left no copy in the chroot.
    NotBuilt,
    /// The store says the path is valid now: left alone.
    ValidNow,
    /// Something already exists at the real path: left alone.
    Occupied,
    /// Asking the store or moving failed.
    Failed(io::Error),
}

impl fmt::Display for Rescue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rescue::Moved => f.write_str("moved into the store for inspection"),
            Rescue::NotBuilt => f.write_str("not built"),
            Rescue::ValidNow => f.write_str("left alone: the path is valid"),
            Rescue::Occupied => f.write_str("left alone: the path exists"),
            Rescue::Failed(error) => write!(f, "not moved: {error}"),
        }
    }
}

/// Moves each of `outputs` left in `chroot` to `real_store_dir`, unless it is
/// valid now or its real path exists.
///
/// `valid_now` must ask the store's database at the time of the call, and the
/// caller must hold the output locks of `outputs` (the pre-build locks) for
/// the whole call, so that no other goal can register one of them between
/// the question and the rename.
pub fn rescue_outputs(
    chroot: &Chroot,
    real_store_dir: &Path,
    outputs: &[StorePath],
    valid_now: impl FnMut(&StorePath) -> io::Result<bool>,
) -> Vec<(StorePath, Rescue)> {
    rescue_outputs_from(
        chroot.store_dir_on_host(),
        real_store_dir,
        outputs,
        valid_now,
    )
}

/// [`rescue_outputs`] from any folder holding a build's outputs by base name
/// (the chroot builder moves the chroot's store aside when the build is torn
/// down, and rescues from there). Same rules: `valid_now` asks the store
/// now, under the caller's locks, and nothing existing is replaced.
pub fn rescue_outputs_from(
    dir: &Path,
    real_store_dir: &Path,
    outputs: &[StorePath],
    mut valid_now: impl FnMut(&StorePath) -> io::Result<bool>,
) -> Vec<(StorePath, Rescue)> {
    outputs
        .iter()
        .map(|output| {
            let from = dir.join(output.as_str());
            let to = real_store_dir.join(output.as_str());
            let outcome = match std::fs::symlink_metadata(&from) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => Rescue::NotBuilt,
                Err(error) => Rescue::Failed(error),
                Ok(_) => match valid_now(output) {
                    Err(error) => Rescue::Failed(error),
                    Ok(true) => Rescue::ValidNow,
                    Ok(false) => move_no_replace(&from, &to),
                },
            };
            (output.clone(), outcome)
        })
        .collect()
}

fn move_no_replace(from: &Path, to: &Path) -> Rescue {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Rescue::Moved,
        Err(rustix::io::Errno::EXIST) => Rescue::Occupied,
        Err(errno) => Rescue::Failed(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ChrootSpec;
    use std::fs;

    const OUT: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm-out";
    const DIR_OUT: &str = "2ddfa9bz2b8x8bwldam6w08q8c4vl6s1-dir-out";

    #[test]
    fn moves_only_what_is_invalid_now_and_never_replaces() {
        let temp = tempfile::tempdir().expect("tempdir");
        let real_store = temp.path().join("store");
        fs::create_dir_all(&real_store).expect("mkdir");
        fs::create_dir(temp.path().join("build")).expect("mkdir");
        let chroot = Chroot::create(&ChrootSpec::new(
            temp.path().join("c.chroot"),
            temp.path().join("build"),
        ))
        .expect("chroot");
        let out = StorePath::from_base_name(OUT).expect("path");
        let dir_out = StorePath::from_base_name(DIR_OUT).expect("path");
        let write_copies = || {
            fs::write(chroot.store_dir_on_host().join(OUT), "partial").expect("write");
            fs::create_dir_all(chroot.store_dir_on_host().join(DIR_OUT)).expect("mkdir");
        };

        // Valid now (registered during the build, after the snapshot): never moved.
        write_copies();
        fs::write(real_store.join(OUT), "registered").expect("write");
        let outcomes = rescue_outputs(&chroot, &real_store, std::slice::from_ref(&out), |_| {
            Ok(true)
        });
        assert!(matches!(outcomes[0].1, Rescue::ValidNow));
        assert_eq!(fs::read(real_store.join(OUT)).expect("read"), b"registered");

        // Invalid but present (a leftover): the rename refuses to replace it.
        let outcomes = rescue_outputs(&chroot, &real_store, std::slice::from_ref(&out), |_| {
            Ok(false)
        });
        assert!(
            matches!(outcomes[0].1, Rescue::Occupied),
            "{}",
            outcomes[0].1
        );
        assert_eq!(fs::read(real_store.join(OUT)).expect("read"), b"registered");

        // Invalid and absent: moved, for a file and for a folder.
        fs::remove_file(real_store.join(OUT)).expect("rm");
        let mut asked = Vec::new();
        let outcomes = rescue_outputs(&chroot, &real_store, &[out.clone(), dir_out.clone()], |p| {
            asked.push(p.clone());
            Ok(false)
        });
        assert!(outcomes.iter().all(|(_, r)| matches!(r, Rescue::Moved)));
        assert_eq!(
            asked,
            vec![out.clone(), dir_out.clone()],
            "the store is asked each time"
        );
        assert_eq!(fs::read(real_store.join(OUT)).expect("read"), b"partial");
        assert!(real_store.join(DIR_OUT).is_dir());

        // Nothing left in the chroot: not built, and the store is not asked.
        let outcomes = rescue_outputs(&chroot, &real_store, &[out], |_| {
            Err(io::Error::other("must not be asked"))
        });
        assert!(matches!(outcomes[0].1, Rescue::NotBuilt));
    }
}
