//! The per-build chroot: a small folder on the host, and the list of steps
//! (`Op`) the child follows to build the rest in its own mount namespace.
//!
//! On the host a chroot is one folder, `<dir>` (mode 01775): the chroot's
//! store directory, where outputs are written and from where registration
//! moves them into the real store; it also holds the mount points of the
//! inputs. Everything else (`/etc`, `/dev`, `/tmp`, `/proc`, `/build`, the
//! sandbox paths) lives in a tmpfs the child mounts over `<dir>` in its own
//! mount namespace, after taking a detached copy of the folder's mount
//! (`open_tree`), which it then attaches at `/nix/store` (`move_mount`). So a build costs the host file
//! system one folder, not a tree, and deleting the chroot is cheap and safe
//! at any time: the host never sees the child's mounts.
//!
//! The ops are computed here, before the child exists, with every path and
//! file content ready as C strings and bytes, so that the child only issues
//! system calls.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::SandboxError;
use crate::spec::{
    BindMount, ChrootSpec, ETC_HOSTS, ETC_NSSWITCH, Network, SANDBOX_GID, SANDBOX_UID, etc_group,
    etc_passwd,
};

/// Host devices bound into `/dev`, and whether each may be missing.
const DEVICES: [(&str, bool); 6] = [
    ("/dev/null", false),
    ("/dev/zero", false),
    ("/dev/full", false),
    ("/dev/random", false),
    ("/dev/urandom", false),
    ("/dev/tty", true),
];

/// Symlinks created in `/dev`, as Nix does.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "/dev/pts/ptmx"),
];

/// Host files a build with the host's network sees, as in Nix.
const HOST_NETWORK_FILES: [&str; 3] = ["/etc/resolv.conf", "/etc/services", "/etc/hosts"];

/// One step of building the chroot in the child. Paths are absolute host
/// paths under the chroot root, as the child sees them before `pivot_root`.
#[derive(Debug)]
pub(crate) enum Op {
    /// Mount a file system (`tmpfs`, `proc`, `devpts`).
    Mount {
        fs_type: &'static std::ffi::CStr,
        target: CString,
        flags: rustix::mount::MountFlags,
        data: Option<&'static std::ffi::CStr>,
    },
    /// Create a folder with exactly this mode (the child's umask is 0).
    Mkdir { path: CString, mode: u32 },
    /// Create an empty file: the mount point of a file bind.
    Touch { path: CString },
    /// Create a symlink.
    Symlink { target: CString, path: CString },
    /// Create a file with these contents.
    Write {
        path: CString,
        contents: Vec<u8>,
        mode: u32,
    },
    /// Bind-mount `source` on `target`, recursively for folders, then make
    /// it read-only if asked.
    Bind {
        source: CString,
        target: CString,
        recursive: bool,
        read_only: bool,
    },
    /// Take a detached copy of the mount at `source` (the chroot's folder,
    /// before the tmpfs covers it); the child holds one such copy at a time.
    CloneTree { source: CString },
    /// Attach the copy taken by [`Op::CloneTree`] at `target`.
    AttachTree { target: CString },
    /// Make a mount a shared peer group, so binds made later through the
    /// saved namespace propagate into the builder's.
    Share { target: CString },
    /// Change a mode.
    Chmod { path: CString, mode: u32 },
}

/// A chroot for one build, deleted from the host when dropped.
#[derive(Debug)]
pub struct Chroot {
    dir: PathBuf,
    store_dir: PathBuf,
    network: Network,
    /// Shared with the plans of the children that perform them, which may
    /// outlive a borrow of the chroot (see `spawn.rs`).
    ops: Arc<[Op]>,
    removed: bool,
}

impl Chroot {
    /// Prepares the chroot described by `spec` under `spec.dir` (deleting an
    /// old copy first): the host folders, the inputs' mount points, and the
    /// ops that give the sandbox `/tmp`, `/etc` (`passwd`, `group`, `hosts`
    /// or the host's network files), the store (mode 01775), `/proc`, `/dev`
    /// with its links, the build directory and the sandbox paths.
    ///
    /// Every bind source is checked here: a missing one is an error unless
    /// the bind is optional.
    pub fn create(spec: &ChrootSpec) -> Result<Chroot, SandboxError> {
        check_target(&spec.store_dir)?;
        check_target(&spec.build_dir_in_sandbox)?;
        let dir = spec.dir.clone();
        remove_tree(&dir).map_err(SandboxError::io("deleting the old chroot", &dir))?;
        // A spare folder renamed, where the process has one: creating and
        // deleting a folder per build slows file creation down (see the
        // builder's `take_dir`).
        match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) => {
                larder_builder::take_dir(parent, name)
                    .map_err(|e| io::Error::other(e.to_string()))
                    .map_err(SandboxError::io("creating", &dir))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o1775))
                    .map_err(SandboxError::io("changing the mode of", &dir))?;
            }
            _ => create_dir_mode(&dir, 0o1775)?,
        }

        let mut layout = Layout {
            root: dir.clone(),
            store_dir: spec.store_dir.clone(),
            store: dir.clone(),
            made: BTreeSet::new(),
            ops: Vec::new(),
        };
        layout.build(spec)?;
        Ok(Chroot {
            dir,
            store_dir: spec.store_dir.clone(),
            network: spec.network,
            ops: layout.ops.into(),
            removed: false,
        })
    }

    /// The chroot's folder on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path that becomes `/` inside the sandbox: the same folder, which
    /// the child covers with its tmpfs.
    pub fn root(&self) -> &Path {
        &self.dir
    }

    /// The logical store directory inside the sandbox.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The chroot's store directory on the host: where the builder's outputs
    /// are written, to be moved into the real store by registration.
    pub fn store_dir_on_host(&self) -> &Path {
        &self.dir
    }

    /// The network the sandbox is created with.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The steps the child follows.
    pub(crate) fn ops(&self) -> &Arc<[Op]> {
        &self.ops
    }

    /// Deletes the chroot from the host, reporting failure.
    pub fn remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        larder_builder::give_back_dir(&self.dir)
            .map_err(|e| io::Error::other(e.to_string()))
            .map_err(SandboxError::io("deleting the chroot", &self.dir))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if !self.removed {
            // Best effort: a chroot that cannot be deleted here is deleted by
            // the next build of the same derivation.
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Computes the ops, remembering which folders exist in the tmpfs.
struct Layout {
    root: PathBuf,
    store_dir: PathBuf,
    store: PathBuf,
    made: BTreeSet<PathBuf>,
    ops: Vec<Op>,
}

impl Layout {
    fn build(&mut self, spec: &ChrootSpec) -> Result<(), SandboxError> {
        self.ops.push(Op::CloneTree {
            source: cpath(&self.store)?,
        });
        self.ops.push(Op::Mount {
            fs_type: c"tmpfs",
            target: cpath(&self.root)?,
            flags: rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            data: Some(c"mode=0755"),
        });
        self.mkdir(Path::new("/tmp"), 0o1777)?;
        self.mkdir(Path::new("/proc"), 0o555)?;
        self.mkdir(Path::new("/etc"), 0o755)?;
        let passwd = etc_passwd(SANDBOX_UID, SANDBOX_GID, &spec.build_dir_in_sandbox);
        self.write(Path::new("/etc/passwd"), passwd.into_bytes())?;
        self.write(Path::new("/etc/group"), etc_group(SANDBOX_GID).into_bytes())?;
        match spec.network {
            Network::Loopback => self.write(Path::new("/etc/hosts"), ETC_HOSTS.into())?,
            Network::Host => self.write(Path::new("/etc/nsswitch.conf"), ETC_NSSWITCH.into())?,
        }

        // The store: the host folder, shared, with every input bound in it.
        self.mkdir_all(&spec.store_dir, 0o755)?;
        let store_target = self.in_root(&spec.store_dir)?;
        self.ops.push(Op::AttachTree {
            target: store_target.clone(),
        });
        self.ops.push(Op::Share {
            target: store_target,
        });

        self.mkdir(Path::new("/dev"), 0o755)?;
        self.mkdir(Path::new("/dev/shm"), 0o1777)?;
        self.mkdir(Path::new("/dev/pts"), 0o755)?;
        for (name, target) in DEV_LINKS {
            self.ops.push(Op::Symlink {
                target: cpath(Path::new(target))?,
                path: self.in_root(&Path::new("/dev").join(name))?,
            });
        }
        for (device, optional) in DEVICES {
            self.bind(&BindMount {
                optional,
                ..BindMount::read_write(device, device)
            })?;
        }
        self.bind(&BindMount::read_write(
            &spec.build_dir,
            &spec.build_dir_in_sandbox,
        ))?;
        if spec.network == Network::Host {
            for file in HOST_NETWORK_FILES {
                self.bind(&BindMount::read_only(file, file).optional())?;
            }
        }
        for input in &spec.inputs {
            self.bind(&BindMount {
                read_only: true,
                ..input.clone()
            })?;
        }
        for path in &spec.sandbox_paths {
            self.bind(path)?;
        }

        let hardened = rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC;
        self.ops.push(Op::Mount {
            fs_type: c"proc",
            target: self.in_root(Path::new("/proc"))?,
            flags: hardened,
            data: None,
        });
        self.ops.push(Op::Mount {
            fs_type: c"tmpfs",
            target: self.in_root(Path::new("/dev/shm"))?,
            flags: rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            data: Some(c"size=50%"),
        });
        self.ops.push(Op::Mount {
            fs_type: c"devpts",
            target: self.in_root(Path::new("/dev/pts"))?,
            flags: rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NOEXEC,
            data: Some(c"newinstance,mode=0620"),
        });
        self.ops.push(Op::Chmod {
            path: self.in_root(Path::new("/dev/pts/ptmx"))?,
            mode: 0o666,
        });
        // Nix makes `/etc` read-only once its files are written.
        self.ops.push(Op::Chmod {
            path: self.in_root(Path::new("/etc"))?,
            mode: 0o555,
        });
        Ok(())
    }

    /// Plans `bind`: its mount point (a folder for a folder, an empty file
    /// for anything else) and the mount; a symlink source is copied instead,
    /// as Nix does, so a link never leads a mount out of the tree. Mount
    /// points inside the store are made on the host, in the chroot's store
    /// folder; all others in the tmpfs.
    fn bind(&mut self, bind: &BindMount) -> Result<(), SandboxError> {
        let target = self.in_root(&bind.target)?;
        let metadata = match fs::symlink_metadata(&bind.source) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if bind.optional {
                    return Ok(());
                }
                return Err(SandboxError::MissingSource {
                    source_path: bind.source.clone(),
                    target: bind.target.clone(),
                });
            }
            Err(error) => return Err(SandboxError::io("inspecting", &bind.source)(error)),
        };
        let directory = metadata.is_dir();
        if let Ok(in_store) = bind.target.strip_prefix(&self.store_dir) {
            let host = self.store.join(in_store);
            if let Some(parent) = host.parent() {
                fs::create_dir_all(parent).map_err(SandboxError::io("creating", parent))?;
            }
            if metadata.file_type().is_symlink() {
                let link = fs::read_link(&bind.source)
                    .map_err(SandboxError::io("reading the symlink", &bind.source))?;
                return symlink(&link, &host)
                    .map_err(SandboxError::io("creating the symlink", &host));
            } else if directory {
                fs::create_dir_all(&host).map_err(SandboxError::io("creating", &host))?;
            } else if !host.exists() {
                fs::File::create(&host).map_err(SandboxError::io("creating", &host))?;
            }
        } else {
            if let Some(parent) = bind.target.parent() {
                self.mkdir_all(parent, 0o755)?;
            }
            if metadata.file_type().is_symlink() {
                let link = fs::read_link(&bind.source)
                    .map_err(SandboxError::io("reading the symlink", &bind.source))?;
                self.ops.push(Op::Symlink {
                    target: cpath(&link)?,
                    path: target,
                });
                return Ok(());
            } else if directory {
                self.mkdir_all(&bind.target, 0o755)?;
            } else {
                self.ops.push(Op::Touch {
                    path: target.clone(),
                });
            }
        }
        self.ops.push(Op::Bind {
            source: cpath(&bind.source)?,
            target,
            recursive: directory,
            read_only: bind.read_only,
        });
        Ok(())
    }

    fn mkdir(&mut self, inside: &Path, mode: u32) -> Result<(), SandboxError> {
        let path = self.in_root(inside)?;
        self.made.insert(inside.to_owned());
        self.ops.push(Op::Mkdir { path, mode });
        Ok(())
    }

    /// Creates `inside` and its missing ancestors in the tmpfs.
    fn mkdir_all(&mut self, inside: &Path, mode: u32) -> Result<(), SandboxError> {
        if inside == Path::new("/") || self.made.contains(inside) {
            return Ok(());
        }
        if let Some(parent) = inside.parent() {
            self.mkdir_all(parent, 0o755)?;
        }
        self.mkdir(inside, mode)
    }

    fn write(&mut self, inside: &Path, contents: Vec<u8>) -> Result<(), SandboxError> {
        let path = self.in_root(inside)?;
        self.ops.push(Op::Write {
            path,
            contents,
            mode: 0o644,
        });
        Ok(())
    }

    /// The host path (before `pivot_root`) of `inside`, as a C string.
    fn in_root(&self, inside: &Path) -> Result<CString, SandboxError> {
        check_target(inside)?;
        cpath(&self.root.join(inside.strip_prefix("/").unwrap_or(inside)))
    }
}

/// Deletes `path` and everything below it without following symlinks,
/// making folders writable first (builders leave read-only folders behind).
/// A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return fs::remove_file(path);
    }
    if metadata.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

/// Refuses a sandbox path that is relative or has `..` in it, so a target
/// can never point outside the chroot.
fn check_target(path: &Path) -> Result<(), SandboxError> {
    let mut components = path.components();
    let absolute = components.next() == Some(Component::RootDir);
    if !absolute || !components.all(|c| matches!(c, Component::Normal(_))) {
        return Err(SandboxError::BadTarget {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// A path as a C string, refusing NUL bytes.
pub(crate) fn cpath(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Nul {
        what: "path",
        value: OsStr::new(path).to_string_lossy().into_owned(),
    })
}

fn create_dir_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::create_dir(path).map_err(SandboxError::io("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(SandboxError::io("changing the mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_in(temp: &Path) -> ChrootSpec {
        let build = temp.join("build");
        fs::create_dir(&build).expect("creating the build dir");
        ChrootSpec::new(temp.join("x.chroot"), build)
    }

    /// The ops, with paths relative to the root, as readable lines.
    fn describe(chroot: &Chroot) -> Vec<String> {
        let root = chroot.root().to_string_lossy().into_owned();
        let rel = |c: &CString| c.to_string_lossy().replacen(&root, "", 1);
        chroot
            .ops()
            .iter()
            .map(|op| match op {
                Op::Mount {
                    fs_type, target, ..
                } => format!("mount {} {}", fs_type.to_string_lossy(), rel(target)),
                Op::Mkdir { path, mode } => format!("mkdir {} {mode:o}", rel(path)),
                Op::Touch { path } => format!("touch {}", rel(path)),
                Op::Symlink { target, path } => {
                    format!("symlink {} -> {}", rel(path), target.to_string_lossy())
                }
                Op::Write { path, contents, .. } => format!(
                    "write {} {}",
                    rel(path),
                    String::from_utf8_lossy(contents)
                        .lines()
                        .next()
                        .unwrap_or("")
                ),
                Op::Bind {
                    source,
                    target,
                    read_only,
                    ..
                } => format!(
                    "bind {} {} {}",
                    source.to_string_lossy(),
                    rel(target),
                    if *read_only { "ro" } else { "rw" }
                ),
                Op::Share { target } => format!("share {}", rel(target)),
                Op::CloneTree { source } => format!("clone {}", rel(source)),
                Op::AttachTree { target } => format!("attach {}", rel(target)),
                Op::Chmod { path, mode } => format!("chmod {} {mode:o}", rel(path)),
            })
            .collect()
    }

    #[test]
    fn the_host_holds_only_the_store_and_the_plan_has_nix_layout() {
        let temp = tempfile::tempdir().expect("tempdir");
        let chroot = Chroot::create(&spec_in(temp.path())).expect("creating the chroot");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(chroot.store_dir_on_host()), 0o1775);
        assert_eq!(
            fs::read_dir(chroot.dir()).expect("ls").count(),
            0,
            "one empty folder"
        );
        let ops = describe(&chroot);
        let build = temp.path().join("build");
        for want in [
            "mount tmpfs ".to_owned(),
            "mkdir /tmp 1777".to_owned(),
            "write /etc/passwd root:x:0:0:Nix build user:/build:/noshell".to_owned(),
            "write /etc/group root:x:0:".to_owned(),
            "write /etc/hosts 127.0.0.1 localhost".to_owned(),
            "mkdir /nix/store 755".to_owned(),
            "clone ".to_owned(),
            "attach /nix/store".to_owned(),
            "share /nix/store".to_owned(),
            "symlink /dev/stdout -> /proc/self/fd/1".to_owned(),
            "touch /dev/null".to_owned(),
            "bind /dev/null /dev/null rw".to_owned(),
            format!("bind {} /build rw", build.display()),
            "mount proc /proc".to_owned(),
            "mount devpts /dev/pts".to_owned(),
            "chmod /etc 555".to_owned(),
        ] {
            assert!(ops.contains(&want), "{want:?} missing from {ops:#?}");
        }
        let dir = chroot.dir().to_owned();
        drop(chroot);
        assert!(!dir.exists(), "the chroot is deleted on drop");
    }

    #[test]
    fn host_network_builds_get_the_host_files_instead_of_nix_hosts() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_in(temp.path());
        spec.network = Network::Host;
        let chroot = Chroot::create(&spec).expect("creating the chroot");
        let ops = describe(&chroot);
        assert!(ops.contains(&"write /etc/nsswitch.conf hosts: files dns".to_owned()));
        assert!(!ops.iter().any(|op| op.starts_with("write /etc/hosts")));
        if Path::new("/etc/hosts").exists() {
            assert!(
                ops.contains(&"bind /etc/hosts /etc/hosts ro".to_owned()),
                "{ops:#?}"
            );
        }
    }

    #[test]
    fn inputs_get_mount_points_in_the_chroot_store_and_symlinks_are_copied() {
        let temp = tempfile::tempdir().expect("tempdir");
        let store = temp.path().join("store");
        fs::create_dir_all(store.join("aaa-dir/sub")).expect("mkdir");
        symlink("aaa-dir", store.join("bbb-link")).expect("symlink");
        fs::write(store.join("ccc-file"), "x").expect("write");

        let mut spec = spec_in(temp.path());
        spec.add_input(store.join("aaa-dir"), "aaa-dir");
        spec.add_input(store.join("bbb-link"), "bbb-link");
        spec.add_input(store.join("ccc-file"), "ccc-file");
        spec.sandbox_paths
            .push(BindMount::read_only("/nonexistent/thing", "/opt/thing").optional());
        spec.sandbox_paths
            .push(BindMount::read_only("/dev/null", "/usr/lib/deep/null"));
        let chroot = Chroot::create(&spec).expect("creating the chroot");
        let store_in = chroot.store_dir_on_host();
        assert!(store_in.join("aaa-dir").is_dir());
        assert_eq!(
            fs::read_link(store_in.join("bbb-link")).expect("link"),
            Path::new("aaa-dir")
        );
        assert_eq!(fs::read(store_in.join("ccc-file")).expect("file"), b"");
        let ops = describe(&chroot);
        let aaa = format!(
            "bind {} /nix/store/aaa-dir ro",
            store.join("aaa-dir").display()
        );
        assert!(ops.contains(&aaa), "{ops:#?}");
        assert!(
            !ops.iter().any(|op| op.contains("bbb-link")),
            "copied, not bound"
        );
        assert!(
            !ops.iter().any(|op| op.contains("/opt")),
            "optional and missing"
        );
        for want in [
            "mkdir /usr 755",
            "mkdir /usr/lib 755",
            "mkdir /usr/lib/deep 755",
        ] {
            assert!(ops.contains(&want.to_owned()), "{want}: {ops:#?}");
        }

        spec.sandbox_paths = vec![BindMount::read_only("/nonexistent/thing", "/opt/thing")];
        let error = Chroot::create(&spec).expect_err("a required source is missing");
        assert!(error.to_string().contains("/nonexistent/thing"), "{error}");
    }

    #[test]
    fn targets_cannot_climb_out() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_in(temp.path());
        for bad in ["relative/path", "/nix/../../etc", "/.."] {
            spec.sandbox_paths = vec![BindMount::read_only("/dev/null", bad)];
            let error = Chroot::create(&spec).expect_err("a bad target");
            assert!(
                matches!(error, SandboxError::BadTarget { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn remove_tree_handles_read_only_folders() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("out");
        fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        fs::write(dir.join("a/b/f"), "x").expect("write");
        fs::set_permissions(dir.join("a/b"), fs::Permissions::from_mode(0o555)).expect("chmod");
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o555)).expect("chmod");
        remove_tree(&dir).expect("removing");
        assert!(!dir.exists());
        remove_tree(&dir).expect("a missing path is fine");
    }
}
