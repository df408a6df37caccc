//! The per-build chroot on the host: its folders, `/etc` files, mount points
//! and the list of bind mounts the child performs in its own namespace.
//!
//! Everything here runs in the parent before the child exists, so the child
//! only issues mount syscalls over paths prepared for it. The host never
//! sees the mounts; to the host the chroot is a tree of empty mount points,
//! which is why deleting it is safe at any time.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

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

/// One bind mount the child performs, with its target already resolved to a
/// path on the host under the chroot root.
#[derive(Clone, Debug)]
pub(crate) struct PlannedMount {
    pub(crate) source: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) directory: bool,
}

/// A chroot tree built on the host for one build, deleted when dropped.
#[derive(Debug)]
pub struct Chroot {
    dir: PathBuf,
    root: PathBuf,
    store_dir: PathBuf,
    network: Network,
    mounts: Vec<PlannedMount>,
    removed: bool,
}

impl Chroot {
    /// Builds the chroot described by `spec` under `spec.dir` (deleting an
    /// old copy first): `/tmp`, `/etc` (`passwd`, `group`, `hosts` or the
    /// host's network files), the store directory (mode 01775), `/proc`,
    /// `/dev` with its links, and a mount point for every bind.
    pub fn create(spec: &ChrootSpec) -> Result<Chroot, SandboxError> {
        let dir = spec.dir.clone();
        remove_tree(&dir).map_err(SandboxError::io("deleting the old chroot", &dir))?;
        create_dir_mode(&dir, 0o700)?;
        let root = dir.join("root");
        let mut chroot = Chroot {
            dir,
            root: root.clone(),
            store_dir: spec.store_dir.clone(),
            network: spec.network,
            mounts: Vec::new(),
            removed: false,
        };
        create_dir_mode(&root, 0o755)?;
        create_dir_mode(&root.join("tmp"), 0o1777)?;
        create_dir_mode(&root.join("proc"), 0o555)?;

        let etc = root.join("etc");
        create_dir_mode(&etc, 0o755)?;
        write_file(
            &etc.join("passwd"),
            &etc_passwd(SANDBOX_UID, SANDBOX_GID, &spec.build_dir_in_sandbox),
        )?;
        write_file(&etc.join("group"), &etc_group(SANDBOX_GID))?;
        match spec.network {
            Network::Loopback => write_file(&etc.join("hosts"), ETC_HOSTS)?,
            Network::Host => write_file(&etc.join("nsswitch.conf"), ETC_NSSWITCH)?,
        }

        let store = chroot.host_path(&spec.store_dir)?;
        fs::create_dir_all(&store).map_err(SandboxError::io("creating", &store))?;
        set_mode(&store, 0o1775)?;

        let dev = root.join("dev");
        create_dir_mode(&dev, 0o755)?;
        create_dir_mode(&dev.join("shm"), 0o755)?;
        create_dir_mode(&dev.join("pts"), 0o755)?;
        for (name, target) in DEV_LINKS {
            let link = dev.join(name);
            symlink(target, &link).map_err(SandboxError::io("creating the symlink", &link))?;
        }

        let mut binds: Vec<BindMount> = DEVICES
            .iter()
            .map(|&(device, optional)| BindMount {
                optional,
                ..BindMount::read_write(device, device)
            })
            .collect();
        binds.push(BindMount::read_write(
            &spec.build_dir,
            &spec.build_dir_in_sandbox,
        ));
        if spec.network == Network::Host {
            binds.extend(
                HOST_NETWORK_FILES
                    .iter()
                    .map(|file| BindMount::read_only(file, file).optional()),
            );
        }
        binds.extend(spec.inputs.iter().map(|input| BindMount {
            read_only: true,
            ..input.clone()
        }));
        binds.extend(spec.sandbox_paths.iter().cloned());
        for bind in &binds {
            chroot.plan_bind(bind)?;
        }

        // Nix makes `/etc` read-only once its files are written.
        set_mode(&etc, 0o555)?;
        Ok(chroot)
    }

    /// The chroot's folder on the host (the parent of [`Chroot::root`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder that becomes `/` inside the sandbox.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logical store directory inside the sandbox.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The chroot's store directory on the host: where the builder's outputs
    /// are written, to be moved into the real store by registration.
    pub fn store_dir_on_host(&self) -> PathBuf {
        self.root.join(relative(&self.store_dir))
    }

    /// The network the sandbox is created with.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Where the path `inside` of the sandbox lives on the host.
    pub fn host_path(&self, inside: &Path) -> Result<PathBuf, SandboxError> {
        check_target(inside)?;
        Ok(self.root.join(relative(inside)))
    }

    /// The bind mounts the child performs, in order.
    pub(crate) fn mounts(&self) -> &[PlannedMount] {
        &self.mounts
    }

    /// Deletes the chroot from the host, reporting failure.
    pub fn remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        remove_tree(&self.dir).map_err(SandboxError::io("deleting the chroot", &self.dir))
    }

    /// Records `bind` and creates its mount point: a folder for a folder, an
    /// empty file for anything else, and a copy of a symlink instead of a
    /// mount (as Nix does, so a link never leads the mount out of the tree).
    fn plan_bind(&mut self, bind: &BindMount) -> Result<(), SandboxError> {
        let target = self.host_path(&bind.target)?;
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
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(SandboxError::io("creating", parent))?;
        }
        let directory = metadata.is_dir();
        if metadata.file_type().is_symlink() {
            let link = fs::read_link(&bind.source)
                .map_err(SandboxError::io("reading the symlink", &bind.source))?;
            symlink(&link, &target).map_err(SandboxError::io("creating the symlink", &target))?;
            return Ok(());
        } else if directory {
            fs::create_dir_all(&target).map_err(SandboxError::io("creating", &target))?;
        } else if !target.exists() {
            fs::File::create(&target).map_err(SandboxError::io("creating", &target))?;
        }
        self.mounts.push(PlannedMount {
            source: bind.source.clone(),
            target,
            read_only: bind.read_only,
            directory,
        });
        Ok(())
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

/// Refuses a sandbox path that is relative or has `..` or `.` in it, so a
/// target can never point outside the chroot.
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

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn create_dir_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::create_dir(path).map_err(SandboxError::io("creating", path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(SandboxError::io("changing the mode of", path))
}

fn write_file(path: &Path, contents: &str) -> Result<(), SandboxError> {
    fs::write(path, contents).map_err(SandboxError::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_in(temp: &Path) -> ChrootSpec {
        let build = temp.join("build");
        fs::create_dir(&build).expect("creating the build dir");
        ChrootSpec::new(temp.join("x.chroot"), build)
    }

    #[test]
    fn the_tree_has_nix_layout() {
        let temp = tempfile::tempdir().expect("tempdir");
        let chroot = Chroot::create(&spec_in(temp.path())).expect("creating the chroot");
        let root = chroot.root();
        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("nix/store"), 0o1775);
        assert_eq!(mode("etc"), 0o555);
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).expect("hosts"),
            ETC_HOSTS
        );
        assert!(
            fs::read_to_string(root.join("etc/passwd"))
                .expect("passwd")
                .contains("nixbld:x:1000:100:")
        );
        assert_eq!(
            fs::read_link(root.join("dev/stdout")).expect("link"),
            Path::new("/proc/self/fd/1")
        );
        assert!(root.join("dev/null").is_file());
        assert!(root.join("build").is_dir());
        assert_eq!(chroot.store_dir_on_host(), root.join("nix/store"));
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
        let etc = chroot.root().join("etc");
        assert_eq!(
            fs::read_to_string(etc.join("nsswitch.conf")).expect("nsswitch"),
            ETC_NSSWITCH
        );
        let binds_hosts = chroot
            .mounts()
            .iter()
            .any(|m| m.source == Path::new("/etc/hosts"));
        assert_eq!(binds_hosts, Path::new("/etc/hosts").exists());
    }

    #[test]
    fn sources_are_checked_and_symlinks_copied() {
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
        let chroot = Chroot::create(&spec).expect("creating the chroot");
        let store_in = chroot.store_dir_on_host();
        assert!(store_in.join("aaa-dir").is_dir());
        assert_eq!(
            fs::read_link(store_in.join("bbb-link")).expect("link"),
            Path::new("aaa-dir")
        );
        assert_eq!(fs::read(store_in.join("ccc-file")).expect("file"), b"");
        assert!(!chroot.root().join("opt/thing").exists());
        let inputs: Vec<_> = chroot.mounts().iter().filter(|m| m.read_only).collect();
        assert_eq!(inputs.len(), 2, "the symlink is copied, not mounted");

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
