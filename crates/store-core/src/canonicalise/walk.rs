//! Applying the canonicalisation rules to a tree on disk.

use std::collections::{HashMap, HashSet};
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};
use thiserror::Error;

use super::policy::{
    self, Action, Decision, FileKind, MTIME_STORE, Metadata, PolicyError, Rules, decide,
};
use crate::nar::write::describe;

/// Extended attributes Nix leaves in place (its `ignored-acls` default):
/// they are managed by the system, not by the build.
pub const IGNORED_XATTRS: [&str; 3] = ["security.selinux", "system.nfs4_acl", "security.csm"];

/// Why a tree could not be canonicalised.
#[derive(Debug, Error)]
pub enum CanonicaliseError {
    /// The rules refuse an entry.
    #[error("'{path}': {source}")]
    Policy {
        /// The entry.
        path: PathBuf,
        /// What the rules object to.
        #[source]
        source: PolicyError,
    },
    /// A file-system operation failed.
    #[error("{op} '{path}': {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The top-level path is still owned by someone else afterwards.
    #[error("wrong ownership of top-level store path '{path}'")]
    TopLevelOwnership {
        /// The path.
        path: PathBuf,
    },
}

/// Canonicalises the outputs of one build, remembering the inodes it has
/// seen across them (so hard links between outputs are recognised).
#[derive(Debug)]
pub struct Canonicaliser {
    rules: Rules,
    seen: HashSet<(u64, u64)>,
}

impl Canonicaliser {
    /// A canonicaliser applying `rules`.
    #[must_use]
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            seen: HashSet::new(),
        }
    }

    /// Rules for the current process: its effective uid and gid, no build
    /// user range, hard links not confined.
    #[must_use]
    pub fn current_user_rules() -> Rules {
        Rules {
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            build_uids: None,
            confine_hard_links: false,
        }
    }

    /// Canonicalises the tree at `path` (not following symlinks), as
    /// [`canonicalise_all`](Self::canonicalise_all) of it alone.
    ///
    /// # Errors
    ///
    /// When an entry breaks the rules or the file system refuses a change.
    /// Entries handled before the error stay changed.
    pub fn canonicalise(&mut self, path: &Path) -> Result<(), CanonicaliseError> {
        self.canonicalise_all([path])
    }

    /// Canonicalises the trees at `paths` (all outputs of one build). Under
    /// [`Rules::confine_hard_links`] the links of every multiply-linked
    /// file are counted across all the trees first, and nothing is changed
    /// if one has links elsewhere; so with that rule a build's outputs must
    /// be given together, not one call each.
    ///
    /// # Errors
    ///
    /// As [`canonicalise`](Self::canonicalise).
    pub fn canonicalise_all<P: AsRef<Path>>(
        &mut self,
        paths: impl IntoIterator<Item = P> + Clone,
    ) -> Result<(), CanonicaliseError> {
        if self.rules.confine_hard_links {
            check_links_confined(&self.rules, paths.clone())?;
        }
        for path in paths {
            self.canonicalise_tree(path.as_ref())?;
        }
        Ok(())
    }

    fn canonicalise_tree(&mut self, path: &Path) -> Result<(), CanonicaliseError> {
        let mut stack = vec![path.to_path_buf()];
        while let Some(entry) = stack.pop() {
            if let Some(action) = self.entry(&entry)?
                && action.descend
            {
                let entries =
                    fs::read_dir(&entry).map_err(|e| io_error("reading directory", &entry, e))?;
                for child in entries {
                    let child = child.map_err(|e| io_error("reading directory", &entry, e))?;
                    stack.push(child.path());
                }
            }
        }
        let meta =
            fs::symlink_metadata(path).map_err(|e| io_error("getting status of", path, e))?;
        if meta.uid() != self.rules.euid {
            return Err(CanonicaliseError::TopLevelOwnership {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// Canonicalises one entry; returns the action taken, `None` if skipped.
    fn entry(&mut self, path: &Path) -> Result<Option<Action>, CanonicaliseError> {
        let st = fs::symlink_metadata(path).map_err(|e| io_error("getting status of", path, e))?;
        let meta = metadata(&st);
        let inode = (st.dev(), st.ino());
        let decision =
            decide(&meta, &self.rules, self.seen.contains(&inode)).map_err(|source| {
                CanonicaliseError::Policy {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let Decision::Apply(action) = decision else {
            return Ok(None);
        };
        self.seen.insert(inode);
        if action.strip_xattrs {
            strip_xattrs(path)?;
        }
        if let Some(mode) = action.chmod {
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(|e| io_error("changing mode of", path, e))?;
        }
        if action.set_mtime {
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: MTIME_STORE,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error("changing modification time of", path, e.into()))?;
        }
        if action.chown {
            std::os::unix::fs::lchown(path, Some(self.rules.euid), Some(self.rules.egid))
                .map_err(|e| io_error("changing owner of", path, e))?;
        }
        Ok(Some(action))
    }
}

/// Canonicalises the tree at `path` for the current user, without the
/// build-user ownership check.
///
/// # Errors
///
/// As [`Canonicaliser::canonicalise`].
pub fn canonicalise_path(path: &Path) -> Result<(), CanonicaliseError> {
    Canonicaliser::new(Canonicaliser::current_user_rules()).canonicalise(path)
}

/// Checks the top-level entry of a fresh build output at `path` before it
/// is taken, as [`policy::check_output_root`] says.
///
/// # Errors
///
/// When the check fails, or `path` cannot be examined.
pub fn check_output_root(path: &Path, rules: &Rules) -> Result<(), CanonicaliseError> {
    let st = fs::symlink_metadata(path).map_err(|e| io_error("getting status of", path, e))?;
    policy::check_output_root(&metadata(&st), rules).map_err(|source| CanonicaliseError::Policy {
        path: path.to_owned(),
        source,
    })
}

/// Counts the links of every multiply-linked regular file in the trees at
/// `paths` and applies [`policy::check_links`] to each, changing nothing.
fn check_links_confined<P: AsRef<Path>>(
    rules: &Rules,
    paths: impl IntoIterator<Item = P>,
) -> Result<(), CanonicaliseError> {
    // Per inode: its link count, how many links were met, the first one.
    let mut links: HashMap<(u64, u64), (u64, u64, PathBuf)> = HashMap::new();
    let mut stack: Vec<PathBuf> = paths.into_iter().map(|p| p.as_ref().to_owned()).collect();
    while let Some(entry) = stack.pop() {
        let st =
            fs::symlink_metadata(&entry).map_err(|e| io_error("getting status of", &entry, e))?;
        if st.is_file() && st.nlink() > 1 {
            links
                .entry((st.dev(), st.ino()))
                .or_insert_with(|| (st.nlink(), 0, entry.clone()))
                .1 += 1;
        } else if st.is_dir() {
            let entries =
                fs::read_dir(&entry).map_err(|e| io_error("reading directory", &entry, e))?;
            for child in entries {
                let child = child.map_err(|e| io_error("reading directory", &entry, e))?;
                stack.push(child.path());
            }
        }
    }
    for (nlink, inside, path) in links.into_values() {
        policy::check_links(rules, nlink, inside)
            .map_err(|source| CanonicaliseError::Policy { path, source })?;
    }
    Ok(())
}

/// The metadata the rules look at, from `lstat`.
fn metadata(st: &fs::Metadata) -> Metadata {
    let file_type = st.file_type();
    let kind = if file_type.is_file() {
        FileKind::Regular
    } else if file_type.is_dir() {
        FileKind::Directory
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other(describe(file_type))
    };
    Metadata {
        kind,
        mode: st.mode() & 0o7777,
        mtime: st.mtime(),
        uid: st.uid(),
    }
}

/// Removes every extended attribute of `path` (not following a symlink)
/// except [`IGNORED_XATTRS`]. File systems without them are fine.
fn strip_xattrs(path: &Path) -> Result<(), CanonicaliseError> {
    let unsupported =
        |e: rustix::io::Errno| e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NODATA;
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(size) => size,
        Err(e) if unsupported(e) => return Ok(()),
        Err(e) => return Err(io_error("listing extended attributes of", path, e.into())),
    };
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let len = rustix::fs::llistxattr(path, &mut names[..])
        .map_err(|e| io_error("listing extended attributes of", path, e.into()))?;
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if IGNORED_XATTRS
            .iter()
            .any(|ignored| ignored.as_bytes() == name)
        {
            continue;
        }
        rustix::fs::lremovexattr(path, name)
            .map_err(|e| io_error("removing extended attribute from", path, e.into()))?;
    }
    Ok(())
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> CanonicaliseError {
    CanonicaliseError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::nar;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn mtime(path: &Path) -> i64 {
        fs::symlink_metadata(path).unwrap().mtime()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    /// A tree with every kind of permission trouble.
    fn messy_tree(root: &Path) {
        fs::create_dir(root).unwrap();
        fs::write(root.join("plain"), "plain").unwrap();
        chmod(&root.join("plain"), 0o664);
        fs::write(root.join("setuid"), "#!/bin/sh").unwrap();
        chmod(&root.join("setuid"), 0o4755);
        fs::write(root.join("owner-x"), "x").unwrap();
        chmod(&root.join("owner-x"), 0o700);
        fs::write(root.join("group-x"), "x").unwrap();
        chmod(&root.join("group-x"), 0o610);
        fs::hard_link(root.join("plain"), root.join("plain-link")).unwrap();
        symlink("plain", root.join("link")).unwrap();
        symlink("/does/not/exist", root.join("dangling")).unwrap();
        fs::create_dir(root.join("sticky")).unwrap();
        fs::write(root.join("sticky/inner"), "").unwrap();
        chmod(&root.join("sticky"), 0o1777);
        fs::create_dir(root.join("no-x")).unwrap();
        chmod(&root.join("no-x"), 0o2755);
    }

    #[test]
    fn canonicalises_a_tree_without_changing_its_nar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        messy_tree(&root);
        let before = nar::hash_path(&root).unwrap();

        canonicalise_path(&root).unwrap();

        for (name, expected) in [
            ("", 0o555),
            ("plain", 0o444),
            ("plain-link", 0o444),
            ("setuid", 0o555),
            ("owner-x", 0o555),
            ("group-x", 0o444),
            ("sticky", 0o555),
            ("sticky/inner", 0o444),
            ("no-x", 0o555),
        ] {
            assert_eq!(mode(&root.join(name)), expected, "{name}");
        }
        for name in [
            "",
            "plain",
            "link",
            "dangling",
            "sticky",
            "sticky/inner",
            "no-x",
        ] {
            assert_eq!(mtime(&root.join(name)), MTIME_STORE, "{name}");
        }
        assert_eq!(nar::hash_path(&root).unwrap(), before);

        // Running again changes nothing and succeeds.
        canonicalise_path(&root).unwrap();
        assert_eq!(mode(&root.join("setuid")), 0o555);

        // Let the temporary directory be removed.
        chmod(&root, 0o755);
        chmod(&root.join("sticky"), 0o755);
        chmod(&root.join("no-x"), 0o755);
    }

    #[test]
    fn refuses_a_fifo_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipping: mkfifo is not available");
            return;
        }
        let err = canonicalise_path(dir.path()).unwrap_err();
        assert!(matches!(
            &err,
            CanonicaliseError::Policy { path, source: PolicyError::UnsupportedType { kind: "fifo" } }
                if *path == fifo
        ));
        assert!(err.to_string().contains("pipe"));
        chmod(dir.path(), 0o755);
    }

    #[test]
    fn strips_extended_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        if rustix::fs::lsetxattr(&file, "user.larder", b"1", rustix::fs::XattrFlags::empty())
            .is_err()
        {
            eprintln!("skipping: this file system has no user extended attributes");
            return;
        }
        canonicalise_path(&file).unwrap();
        assert_eq!(rustix::fs::llistxattr_query(&file).unwrap(), 0);
    }

    #[test]
    fn build_user_ownership() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipping: changing owners needs root");
            return;
        }
        let build_uid = 30_001;
        let rules = Rules {
            euid: 0,
            egid: 0,
            build_uids: Some((30_001, 30_032)),
            confine_hard_links: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let lib = dir.path().join("lib");
        fs::create_dir(&out).unwrap();
        fs::create_dir(&lib).unwrap();
        fs::write(out.join("a"), "a").unwrap();
        // A hard link from a second output to a file of the first.
        fs::hard_link(out.join("a"), lib.join("a")).unwrap();
        for p in [&out, &lib, &out.join("a")] {
            std::os::unix::fs::lchown(p, Some(build_uid), Some(build_uid)).unwrap();
        }
        let mut canonicaliser = Canonicaliser::new(rules);
        canonicaliser.canonicalise(&out).unwrap();
        assert_eq!(fs::metadata(out.join("a")).unwrap().uid(), 0);
        canonicaliser.canonicalise(&lib).unwrap();

        // A foreign (root-owned) file linked into fresh output is refused.
        let foreign = dir.path().join("secret");
        fs::write(&foreign, "secret").unwrap();
        let foreign_mode = mode(&foreign);
        let evil = dir.path().join("evil");
        fs::create_dir(&evil).unwrap();
        fs::hard_link(&foreign, evil.join("x")).unwrap();
        std::os::unix::fs::lchown(&evil, Some(build_uid), Some(build_uid)).unwrap();
        let err = Canonicaliser::new(rules).canonicalise(&evil).unwrap_err();
        assert!(matches!(
            err,
            CanonicaliseError::Policy {
                source: PolicyError::InvalidOwnership { uid: 0 },
                ..
            }
        ));
        // It was refused before anything about it changed.
        assert_eq!(mode(&foreign), foreign_mode);
        assert_ne!(mtime(&foreign), MTIME_STORE);
        chmod(&out, 0o755);
        chmod(&lib, 0o755);
        chmod(&evil, 0o755);
    }

    #[test]
    fn confined_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let (out, dev) = (dir.path().join("out"), dir.path().join("dev"));
        fs::create_dir(&out).unwrap();
        fs::create_dir(&dev).unwrap();
        fs::write(out.join("a"), "a").unwrap();
        fs::hard_link(out.join("a"), out.join("b")).unwrap();
        // A link between two outputs given together counts as inside.
        fs::hard_link(out.join("a"), dev.join("a")).unwrap();
        let rules = Rules {
            confine_hard_links: true,
            ..Canonicaliser::current_user_rules()
        };
        Canonicaliser::new(rules)
            .canonicalise_all([&out, &dev])
            .unwrap();
        assert_eq!(mode(&dev.join("a")), 0o444);
        chmod(&out, 0o755);
        chmod(&dev, 0o755);

        // A link to a file elsewhere is refused, and nothing is changed.
        let host = dir.path().join("host");
        fs::write(&host, "secret").unwrap();
        chmod(&host, 0o644);
        let evil = dir.path().join("evil");
        fs::create_dir(&evil).unwrap();
        fs::write(evil.join("own"), "own").unwrap();
        fs::hard_link(&host, evil.join("x")).unwrap();
        let err = Canonicaliser::new(rules).canonicalise(&evil).unwrap_err();
        assert!(matches!(
            &err,
            CanonicaliseError::Policy {
                source: PolicyError::HardLinkOutside { nlink: 2, inside: 1 },
                path,
            } if *path == evil.join("x")
        ));
        assert_eq!(mode(&host), 0o644);
        assert_ne!(mtime(&evil.join("own")), MTIME_STORE);
        // Without the rule the same tree is accepted.
        canonicalise_path(&evil).unwrap();
        chmod(&evil, 0o755);
    }

    #[test]
    fn output_root_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out");
        fs::write(&file, "x").unwrap();
        let rules = Canonicaliser::current_user_rules();
        chmod(&file, 0o644);
        check_output_root(&file, &rules).unwrap();
        chmod(&file, 0o664);
        let err = check_output_root(&file, &rules).unwrap_err();
        assert!(matches!(
            err,
            CanonicaliseError::Policy {
                source: PolicyError::SuspiciousOutput { mode: 0o664, .. },
                ..
            }
        ));
    }
}
