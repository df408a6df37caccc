//! Checking the store against its database, as `nix-store --verify`.
//!
//! Every valid path must exist on disk. A valid path that disappeared and
//! has no valid referrers is removed from the database (Nix does the same,
//! and reports it as information, not as an error); one that still has
//! valid referrers is a problem. With `check_contents`, each path's NAR hash
//! is recomputed and compared with the registered one (a missing size is
//! filled in). Beyond Nix, a path claiming a content address must be the
//! path that content address gives.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;

use larder_store_core::nar::Dumper;
use larder_store_core::{Hash, HashAlgo, StorePath};

use crate::error::{IoContext, Result};
use crate::fsutil::FileLock;
use crate::store::LocalStore;

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many valid paths were checked.
    pub checked: usize,
    /// Paths that had disappeared and were removed from the database.
    pub removed: Vec<StorePath>,
    /// Rows whose missing NAR size was filled in.
    pub fixed_sizes: Vec<StorePath>,
    /// What is wrong.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProblem {
    /// A valid path is gone from disk but valid paths still refer to it.
    Disappeared {
        /// The full path.
        path: String,
    },
    /// The contents no longer have the registered NAR hash.
    Modified {
        /// The full path.
        path: String,
        /// The registered hash.
        expected: Hash,
        /// The hash of the contents now.
        got: Hash,
    },
    /// A path's content address gives another path.
    NotContentAddressed {
        /// The full path.
        path: String,
        /// Why: the path it gives, or why it cannot be computed.
        detail: String,
    },
    /// A path could not be read or hashed.
    Unreadable {
        /// The full path.
        path: String,
        /// The error.
        error: String,
    },
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disappeared { path } => {
                write!(
                    f,
                    "path '{path}' disappeared, but it still has valid referrers!"
                )
            }
            Self::Modified {
                path,
                expected,
                got,
            } => write!(
                f,
                "path '{path}' was modified! expected hash '{expected}', got '{got}'"
            ),
            Self::NotContentAddressed { path, detail } => write!(
                f,
                "path '{path}' claims to be content-addressed but isn't: {detail}"
            ),
            Self::Unreadable { path, error } => write!(f, "cannot check path '{path}': {error}"),
        }
    }
}

impl LocalStore {
    /// Verifies the store; see the [module documentation](self). Holds
    /// `gc.lock` shared meanwhile, as Nix does, for a consistent view.
    ///
    /// # Errors
    ///
    /// When the store folder or the database cannot be read. Problems with
    /// single paths go into the report instead.
    pub fn verify(&self, check_contents: bool) -> Result<VerifyReport> {
        let gc_lock = FileLock::open(&self.layout().gc_lock_path())?;
        gc_lock.lock(true, "waiting for the big garbage collector lock...")?;

        let real_store_dir = self.layout().real_store_dir();
        let mut on_disk = BTreeSet::new();
        for entry in
            fs::read_dir(&real_store_dir).io_context("reading directory", &real_store_dir)?
        {
            let entry = entry.io_context("reading directory", &real_store_dir)?;
            if let Some(name) = entry.file_name().to_str() {
                on_disk.insert(name.to_owned());
            }
        }

        let mut report = VerifyReport::default();
        let mut done = BTreeSet::new();
        let mut valid = BTreeSet::new();
        for path in self.query_all_valid_paths()? {
            self.verify_exists(&path, &on_disk, &mut done, &mut valid, &mut report)?;
        }
        report.checked = valid.len();

        for path in &valid {
            let Some(mut info) = self.query_path_info(path)? else {
                continue;
            };
            let printed = self.print_path(path);
            match info.content_addressed_path(self.store_dir()) {
                Ok(Some(computed)) if computed != *path => {
                    report.problems.push(VerifyProblem::NotContentAddressed {
                        path: printed.clone(),
                        detail: format!(
                            "its content address gives '{}'",
                            self.print_path(&computed)
                        ),
                    });
                }
                Err(e) => report.problems.push(VerifyProblem::NotContentAddressed {
                    path: printed.clone(),
                    detail: e.to_string(),
                }),
                Ok(_) => {}
            }
            if !check_contents {
                continue;
            }
            let algo = info.nar_hash.algo();
            let current = match Dumper::new().hash_path(&self.layout().real_path(path), algo) {
                Ok(current) => current,
                Err(e) => {
                    report.problems.push(VerifyProblem::Unreadable {
                        path: printed,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            if current.hash != info.nar_hash && info.nar_hash != null_hash(algo) {
                report.problems.push(VerifyProblem::Modified {
                    path: printed,
                    expected: info.nar_hash,
                    got: current.hash,
                });
            } else if info.nar_size == 0 || info.nar_hash == null_hash(algo) {
                tracing::info!("updating hash and size of '{printed}'");
                info.nar_hash = current.hash;
                info.nar_size = current.size;
                self.db().update(&info)?;
                report.fixed_sizes.push(path.clone());
            }
        }
        Ok(report)
    }

    fn verify_exists(
        &self,
        path: &StorePath,
        on_disk: &BTreeSet<String>,
        done: &mut BTreeSet<StorePath>,
        valid: &mut BTreeSet<StorePath>,
        report: &mut VerifyReport,
    ) -> Result<()> {
        if !done.insert(path.clone()) {
            return Ok(());
        }
        if on_disk.contains(path.as_str()) {
            valid.insert(path.clone());
            return Ok(());
        }
        // Referrers first: if they can all go, this path can go too.
        let mut can_invalidate = true;
        for referrer in self.query_referrers(path)? {
            if referrer != *path {
                self.verify_exists(&referrer, on_disk, done, valid, report)?;
                if valid.contains(&referrer) {
                    can_invalidate = false;
                }
            }
        }
        let printed = self.print_path(path);
        if can_invalidate {
            tracing::info!("path '{printed}' disappeared, removing from database...");
            self.invalidate_path(path)?;
            report.removed.push(path.clone());
        } else {
            report
                .problems
                .push(VerifyProblem::Disappeared { path: printed });
        }
        Ok(())
    }
}

/// The all-zero hash old stores used for "unknown".
fn null_hash(algo: HashAlgo) -> Hash {
    // `from_digest` fails only for a digest of another size than the
    // algorithm's, and this one has exactly that size.
    Hash::from_digest(algo, &vec![0; algo.size()]).expect("digest of the algorithm's size")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_util::{put_file, temp_store};

    #[test]
    fn finds_modified_and_disappeared_paths() {
        let (_dir, store) = temp_store();
        let a = put_file(&store, "a", b"a");
        let mut b = put_file(&store, "b", b"b");
        b.references = [a.path.clone()].into();
        let c = put_file(&store, "c", b"c");
        let mut d = put_file(&store, "d", b"d");
        d.nar_size = 0;
        store
            .register_paths(&[a.clone(), b.clone(), c.clone(), d.clone()])
            .expect("registers");
        let report = store.verify(true).expect("verifies");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.fixed_sizes, vec![d.path.clone()]);
        assert_eq!(store.path_info(&d.path).expect("info").nar_size, 112 + 8);

        // Modify c; remove a (referred to by b) and d (referred to by none).
        let real_c = store.layout().real_path(&c.path);
        fs::set_permissions(&real_c, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&real_c, b"changed").expect("write");
        fs::remove_file(store.layout().real_path(&a.path)).expect("rm");
        fs::remove_file(store.layout().real_path(&d.path)).expect("rm");

        let report = store.verify(false).expect("verifies");
        assert_eq!(report.removed, vec![d.path.clone()]);
        assert_eq!(
            report.problems,
            vec![VerifyProblem::Disappeared {
                path: store.print_path(&a.path)
            }]
        );
        assert!(!store.is_valid(&d.path).expect("query"));

        let report = store.verify(true).expect("verifies");
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems.iter().any(|p| matches!(
            p,
            VerifyProblem::Modified { path, .. } if *path == store.print_path(&c.path)
        )));
        let shown = report
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            shown
                .iter()
                .any(|s| s.contains("was modified! expected hash")),
            "{shown:?}"
        );
    }
}
