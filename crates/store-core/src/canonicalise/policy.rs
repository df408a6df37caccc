//! The canonicalisation rules, free of any file-system access.

use thiserror::Error;

/// The modification time of every store object, in seconds since the epoch.
pub const MTIME_STORE: i64 = 1;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// Anything else: fifo, socket, device; the name says which.
    Other(&'static str),
}

/// The metadata the rules look at (from `lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// The file's kind.
    pub kind: FileKind,
    /// The permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// The modification time, whole seconds.
    pub mtime: i64,
    /// The owner.
    pub uid: u32,
}

/// Who runs the canonicalisation, and for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The effective uid, which ends up owning everything.
    pub euid: u32,
    /// The effective gid, given to files whose owner is changed.
    pub egid: u32,
    /// For fresh build output: the uids the build ran as (inclusive). A
    /// file owned by another uid is refused unless it is a hard link to a
    /// file already canonicalised. `None` skips the ownership check.
    pub build_uids: Option<(u32, u32)>,
    /// For fresh build output built as [`euid`](Self::euid) itself (no
    /// build users): refuse a regular file with hard links outside the
    /// trees canonicalised together. Such a builder can link any file we
    /// own (a host file, an input) into its output, and canonicalising
    /// would then change that file; with this rule the links are counted
    /// before anything is changed (see [`check_links`]).
    pub confine_hard_links: bool,
}

/// What to do with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Canonicalise it as the action says.
    Apply(Action),
    /// Leave it alone: a hard link to a file already canonicalised.
    Skip,
}

/// The changes one entry needs; each `false`/`None` when already canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Action {
    /// Extended attributes are to be removed.
    pub strip_xattrs: bool,
    /// The permission bits to set.
    pub chmod: Option<u32>,
    /// The mtime is to be set to [`MTIME_STORE`].
    pub set_mtime: bool,
    /// The owner is to be changed to [`Rules::euid`].
    pub chown: bool,
    /// It is a directory whose entries are to be canonicalised too.
    pub descend: bool,
}

/// Why an entry cannot be canonicalised.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A fifo, socket or device.
    #[error("file has an unsupported type ({kind})")]
    UnsupportedType {
        /// What it is.
        kind: &'static str,
    },
    /// Owned by a uid outside the build users', and not a hard link to a
    /// file this build canonicalised.
    #[error("invalid ownership on file (owned by uid {uid})")]
    InvalidOwnership {
        /// The owner.
        uid: u32,
    },
    /// A foreign-owned inode seen before in this build that is not
    /// canonical: something changed it after it was canonicalised.
    #[error(
        "hard link to a file that is no longer canonical (uid {uid}, mode {mode:o}, mtime {mtime})"
    )]
    HardLinkNotCanonical {
        /// The owner.
        uid: u32,
        /// The permission bits.
        mode: u32,
        /// The mtime.
        mtime: i64,
    },
    /// A regular file with links outside the trees canonicalised together,
    /// under [`Rules::confine_hard_links`].
    #[error(
        "file has {nlink} hard links, only {inside} of them inside the build outputs; \
         hard links to files outside the outputs are not allowed"
    )]
    HardLinkOutside {
        /// The file's link count.
        nlink: u64,
        /// How many of its links were found inside the trees.
        inside: u64,
    },
    /// The top of a build output is group- or world-writable, or owned by
    /// a uid outside the build users'.
    #[error("suspicious ownership or permission (uid {uid}, mode {mode:o})")]
    SuspiciousOutput {
        /// The owner.
        uid: u32,
        /// The permission bits.
        mode: u32,
    },
}

/// The permission bits an entry of `kind` with bits `mode` must get, or
/// `None` when it has them already.
///
/// Symlinks keep theirs (they mean nothing). Otherwise 0444, plus 0111 for
/// directories and for files the owner could execute. This is current
/// Nix's rule; Nix 2.8 left a directory alone when it was already 0444 and
/// made a directory without owner-execute 0444, which no NAR records
/// (NARs have no directory modes) and which only made such outputs
/// unreadable for others.
#[must_use]
pub fn canonical_mode(kind: FileKind, mode: u32) -> Option<u32> {
    let is_dir = kind == FileKind::Directory;
    match kind {
        FileKind::Symlink | FileKind::Other(_) => None,
        FileKind::Regular | FileKind::Directory => {
            if (mode != 0o444 || is_dir) && mode != 0o555 {
                Some(
                    0o444
                        | if mode & 0o100 != 0 || is_dir {
                            0o111
                        } else {
                            0
                        },
                )
            } else {
                None
            }
        }
    }
}

/// Decides what to do with an entry. `seen_before` says whether its inode
/// was already met in this build (all outputs of one build share the set).
///
/// # Errors
///
/// For unsupported file types and foreign ownership, as described on
/// [`PolicyError`].
pub fn decide(meta: &Metadata, rules: &Rules, seen_before: bool) -> Result<Decision, PolicyError> {
    if let FileKind::Other(kind) = meta.kind {
        return Err(PolicyError::UnsupportedType { kind });
    }
    if let Some((first, last)) = rules.build_uids
        && !(first..=last).contains(&meta.uid)
    {
        if meta.kind == FileKind::Directory || !seen_before {
            return Err(PolicyError::InvalidOwnership { uid: meta.uid });
        }
        // A hard link to a file canonicalised earlier in this build, which
        // then belongs to `euid`; it must still be canonical.
        let canonical = meta.kind == FileKind::Symlink
            || (meta.uid == rules.euid
                && (meta.mode == 0o444 || meta.mode == 0o555)
                && meta.mtime == MTIME_STORE);
        if !canonical {
            return Err(PolicyError::HardLinkNotCanonical {
                uid: meta.uid,
                mode: meta.mode,
                mtime: meta.mtime,
            });
        }
        return Ok(Decision::Skip);
    }
    Ok(Decision::Apply(Action {
        strip_xattrs: true,
        chmod: canonical_mode(meta.kind, meta.mode),
        set_mtime: meta.mtime != MTIME_STORE,
        chown: meta.uid != rules.euid,
        descend: meta.kind == FileKind::Directory,
    }))
}

/// Under [`Rules::confine_hard_links`], checks a regular file with `nlink`
/// links of which `inside` were found in the trees canonicalised together.
/// Without the rule, anything goes.
///
/// # Errors
///
/// [`PolicyError::HardLinkOutside`] when some links are outside.
pub fn check_links(rules: &Rules, nlink: u64, inside: u64) -> Result<(), PolicyError> {
    if rules.confine_hard_links && nlink > inside {
        return Err(PolicyError::HardLinkOutside { nlink, inside });
    }
    Ok(())
}

/// Checks the top-level entry of a fresh build output before it is taken
/// (Nix's check in `registerOutputs`): unless it is a symlink, it must not
/// be group- or world-writable, and with build users it must belong to
/// one of them. Another user could otherwise change it while, or after,
/// it becomes a store object.
///
/// # Errors
///
/// [`PolicyError::SuspiciousOutput`] when the check fails.
pub fn check_output_root(meta: &Metadata, rules: &Rules) -> Result<(), PolicyError> {
    let writable = meta.kind != FileKind::Symlink && meta.mode & 0o022 != 0;
    let foreign = rules
        .build_uids
        .is_some_and(|(first, last)| !(first..=last).contains(&meta.uid));
    if writable || foreign {
        return Err(PolicyError::SuspiciousOutput {
            uid: meta.uid,
            mode: meta.mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Rules = Rules {
        euid: 1000,
        egid: 100,
        build_uids: None,
        confine_hard_links: false,
    };

    fn meta(kind: FileKind, mode: u32) -> Metadata {
        Metadata {
            kind,
            mode,
            mtime: 1_700_000_000,
            uid: 1000,
        }
    }

    #[test]
    fn modes() {
        use FileKind::*;
        let cases = [
            (Regular, 0o644, Some(0o444)),
            (Regular, 0o444, None),
            (Regular, 0o555, None),
            (Regular, 0o755, Some(0o555)),
            (Regular, 0o744, Some(0o555)),
            (Regular, 0o611, Some(0o444)),
            (Regular, 0o4755, Some(0o555)),
            (Regular, 0o2555, Some(0o555)),
            (Regular, 0o000, Some(0o444)),
            (Regular, 0o100, Some(0o555)),
            (Directory, 0o755, Some(0o555)),
            (Directory, 0o555, None),
            (Directory, 0o444, Some(0o555)),
            (Directory, 0o1777, Some(0o555)),
            (Directory, 0o700, Some(0o555)),
            (Directory, 0o644, Some(0o555)),
            (Symlink, 0o777, None),
        ];
        for (kind, mode, expected) in cases {
            assert_eq!(canonical_mode(kind, mode), expected, "{kind:?} {mode:o}");
        }
    }

    #[test]
    fn a_fresh_file() {
        let decision = decide(&meta(FileKind::Regular, 0o755), &ME, false).unwrap();
        assert_eq!(
            decision,
            Decision::Apply(Action {
                strip_xattrs: true,
                chmod: Some(0o555),
                set_mtime: true,
                chown: false,
                descend: false,
            })
        );
        let canonical = Metadata {
            mtime: 1,
            ..meta(FileKind::Directory, 0o555)
        };
        let Decision::Apply(action) = decide(&canonical, &ME, false).unwrap() else {
            panic!("a directory is applied");
        };
        assert!(action.descend && action.chmod.is_none() && !action.set_mtime && !action.chown);
    }

    #[test]
    fn unsupported_types() {
        let err = decide(&meta(FileKind::Other("fifo"), 0o644), &ME, false).unwrap_err();
        assert_eq!(err, PolicyError::UnsupportedType { kind: "fifo" });
        assert!(err.to_string().contains("unsupported type"));
    }

    #[test]
    fn ownership_for_build_output() {
        let rules = Rules {
            euid: 0,
            egid: 0,
            build_uids: Some((30001, 30032)),
            confine_hard_links: false,
        };
        let built = Metadata {
            uid: 30005,
            ..meta(FileKind::Regular, 0o644)
        };
        let Decision::Apply(action) = decide(&built, &rules, false).unwrap() else {
            panic!("build output is applied");
        };
        assert!(action.chown);

        // A foreign file never seen: `ln /etc/shadow $out/x`.
        let foreign = Metadata {
            uid: 0,
            ..meta(FileKind::Regular, 0o640)
        };
        assert_eq!(
            decide(&foreign, &rules, false),
            Err(PolicyError::InvalidOwnership { uid: 0 })
        );
        // Foreign but seen and not canonical: refused too.
        assert!(matches!(
            decide(&foreign, &rules, true),
            Err(PolicyError::HardLinkNotCanonical { .. })
        ));
        // A second link to a file this build already canonicalised.
        let relinked = Metadata {
            uid: 0,
            mode: 0o444,
            mtime: 1,
            kind: FileKind::Regular,
        };
        assert_eq!(decide(&relinked, &rules, true), Ok(Decision::Skip));
        // Directories cannot be hard links.
        let dir = Metadata {
            kind: FileKind::Directory,
            ..relinked
        };
        assert!(matches!(
            decide(&dir, &rules, true),
            Err(PolicyError::InvalidOwnership { .. })
        ));
    }

    #[test]
    fn confined_hard_links() {
        let confined = Rules {
            confine_hard_links: true,
            ..ME
        };
        // Every link inside: fine, with or without the rule.
        assert_eq!(check_links(&confined, 2, 2), Ok(()));
        // A link outside: only the rule refuses it.
        assert_eq!(check_links(&ME, 3, 2), Ok(()));
        let err = check_links(&confined, 3, 2).unwrap_err();
        assert_eq!(
            err,
            PolicyError::HardLinkOutside {
                nlink: 3,
                inside: 2
            }
        );
        assert!(err.to_string().contains("hard links"));
    }

    #[test]
    fn output_roots() {
        let ok = |kind, mode, uid, rules: &Rules| {
            check_output_root(
                &Metadata {
                    uid,
                    ..meta(kind, mode)
                },
                rules,
            )
        };
        assert_eq!(ok(FileKind::Regular, 0o644, 1000, &ME), Ok(()));
        assert_eq!(ok(FileKind::Directory, 0o755, 1000, &ME), Ok(()));
        // Symlinks' bits mean nothing.
        assert_eq!(ok(FileKind::Symlink, 0o777, 1000, &ME), Ok(()));
        for mode in [0o664, 0o646, 0o775, 0o1777] {
            let err = ok(FileKind::Regular, mode, 1000, &ME).unwrap_err();
            assert_eq!(err, PolicyError::SuspiciousOutput { uid: 1000, mode });
            assert!(
                err.to_string()
                    .starts_with("suspicious ownership or permission")
            );
        }
        let build_users = Rules {
            euid: 0,
            egid: 0,
            build_uids: Some((30001, 30032)),
            confine_hard_links: false,
        };
        assert_eq!(ok(FileKind::Directory, 0o755, 30002, &build_users), Ok(()));
        assert!(matches!(
            ok(FileKind::Directory, 0o755, 0, &build_users),
            Err(PolicyError::SuspiciousOutput { uid: 0, .. })
        ));
    }
}
