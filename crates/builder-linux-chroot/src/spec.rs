//! What a sandbox is made of: the chroot's contents, its network, and the
//! command run inside it. Plain data, checked when the chroot is created.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The uid the builder has inside the sandbox (Nix's `nixbld` user).
pub const SANDBOX_UID: u32 = 1000;

/// The gid the builder has inside the sandbox (Nix's `nixbld` group).
pub const SANDBOX_GID: u32 = 100;

/// Where the build directory appears inside the sandbox (Nix's
/// `sandbox-build-dir`).
pub const SANDBOX_BUILD_DIR: &str = "/build";

/// The logical store directory, where inputs appear inside the sandbox.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// The hostname inside the sandbox's UTS namespace.
pub const SANDBOX_HOSTNAME: &str = "localhost";

/// The domain name inside the sandbox's UTS namespace.
pub const SANDBOX_DOMAINNAME: &str = "(none)";

/// Where the default `/bin/sh` of the sandbox comes from: Debian's
/// `busybox-static`, a static binary that needs nothing else in the chroot.
pub const DEFAULT_SHELL_SOURCE: &str = "/bin/busybox";

/// `/etc/hosts` of a sandboxed build, as Nix writes it.
pub const ETC_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// `/etc/nsswitch.conf` of a build with the host's network, as Nix writes it.
pub const ETC_NSSWITCH: &str = "hosts: files dns\nservices: files\n";

/// `/etc/passwd` inside the sandbox, in Nix's format.
pub fn etc_passwd(uid: u32, gid: u32, build_dir_in_sandbox: &Path) -> String {
    let home = build_dir_in_sandbox.display();
    format!(
        "root:x:0:0:Nix build user:{home}:/noshell\n\
         nixbld:x:{uid}:{gid}:Nix build user:{home}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

/// `/etc/group` inside the sandbox, in Nix's format.
pub fn etc_group(gid: u32) -> String {
    format!("root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n")
}

/// Which network the builder sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A private network namespace with only the loopback interface, up.
    /// Every build except fixed-output ones.
    Loopback,
    /// The host's network, with the host's `/etc/resolv.conf`, `/etc/services`
    /// and `/etc/hosts`: fixed-output derivations, as in Nix.
    Host,
}

/// A host path made visible inside the sandbox by a bind mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The path on the host. A symlink is recreated, not followed.
    pub source: PathBuf,
    /// The absolute path inside the sandbox.
    pub target: PathBuf,
    /// Remount read-only after binding, so the builder cannot write it even
    /// where it owns the files.
    pub read_only: bool,
    /// A missing source is skipped instead of failing the build.
    pub optional: bool,
}

impl BindMount {
    /// A read-only bind of `source` at `target`.
    pub fn read_only(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        BindMount {
            source: source.into(),
            target: target.into(),
            read_only: true,
            optional: false,
        }
    }

    /// A writable bind of `source` at `target`.
    pub fn read_write(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        BindMount {
            read_only: false,
            ..BindMount::read_only(source, target)
        }
    }

    /// The same bind, skipped when its source does not exist.
    pub fn optional(self) -> Self {
        BindMount {
            optional: true,
            ..self
        }
    }
}

/// Everything that goes into one build's chroot.
#[derive(Clone, Debug)]
pub struct ChrootSpec {
    /// The chroot's folder on the host, on the store's file system so that
    /// outputs can later be moved into the store by `rename` (Nix puts it
    /// beside the derivation, `<real store>/<drv>.chroot`; the chroot
    /// builder uses its process's staging directory). An old copy is
    /// deleted.
    pub dir: PathBuf,
    /// The logical store directory inside the sandbox (`/nix/store`).
    pub store_dir: PathBuf,
    /// The build directory on the host, mounted writable at
    /// [`ChrootSpec::build_dir_in_sandbox`].
    pub build_dir: PathBuf,
    /// Where the build directory appears inside (`/build`).
    pub build_dir_in_sandbox: PathBuf,
    /// The input closure: each store path's real location on the host and its
    /// logical path inside. Always mounted read-only.
    pub inputs: Vec<BindMount>,
    /// Extra sandbox paths (Nix's `sandbox-paths`), e.g.
    /// [`default_sandbox_paths`].
    pub sandbox_paths: Vec<BindMount>,
    /// Private loopback or the host's network.
    pub network: Network,
}

impl ChrootSpec {
    /// A spec with the defaults of a sandboxed, non-fixed-output build: store
    /// at `/nix/store`, build dir at `/build`, loopback-only network, no inputs
    /// and no extra paths yet.
    pub fn new(dir: impl Into<PathBuf>, build_dir: impl Into<PathBuf>) -> Self {
        ChrootSpec {
            dir: dir.into(),
            store_dir: PathBuf::from(DEFAULT_STORE_DIR),
            build_dir: build_dir.into(),
            build_dir_in_sandbox: PathBuf::from(SANDBOX_BUILD_DIR),
            inputs: Vec::new(),
            sandbox_paths: Vec::new(),
            network: Network::Loopback,
        }
    }

    /// Adds the store path whose real location is `real_path` as an input,
    /// mounted read-only at `<store dir>/<base name>`.
    pub fn add_input(&mut self, real_path: impl Into<PathBuf>, base_name: &str) {
        let target = self.store_dir.join(base_name);
        self.inputs.push(BindMount::read_only(real_path, target));
    }
}

/// The process run inside the sandbox.
#[derive(Clone, Debug)]
pub struct Command {
    /// The program, as a path inside the sandbox.
    pub program: PathBuf,
    /// `argv[0]`. Nix passes the program's base name.
    pub arg0: OsString,
    /// The arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// The complete environment, in order; nothing is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory inside the sandbox.
    pub working_dir: PathBuf,
}

impl Command {
    /// Runs `program` with no arguments, an empty environment, `argv[0]` its
    /// base name (as Nix does), in [`SANDBOX_BUILD_DIR`].
    pub fn new(program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        let arg0 = program
            .file_name()
            .map_or_else(|| program.clone().into_os_string(), ToOwned::to_owned);
        Command {
            program,
            arg0,
            args: Vec::new(),
            env: Vec::new(),
            working_dir: PathBuf::from(SANDBOX_BUILD_DIR),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends one environment variable.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// The default extra sandbox paths: `/bin/sh` from a static busybox
/// ([`DEFAULT_SHELL_SOURCE`]).
///
/// A missing or dynamically linked busybox is an error with advice, because a
/// `/bin/sh` that cannot run inside the chroot fails every build obscurely.
pub fn default_sandbox_paths() -> Result<Vec<BindMount>, crate::SandboxError> {
    let source = Path::new(DEFAULT_SHELL_SOURCE);
    check_static_executable(source)?;
    Ok(vec![BindMount::read_only(source, "/bin/sh")])
}

/// Checks that `path` is an ELF executable without a program interpreter, so
/// it runs in a chroot that has no dynamic loader.
pub fn check_static_executable(path: &Path) -> Result<(), crate::SandboxError> {
    let bytes = std::fs::read(path).map_err(|source| crate::SandboxError::NoStaticShell {
        path: path.to_owned(),
        reason: source.to_string(),
    })?;
    match crate::elf::has_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => Err(crate::SandboxError::NoStaticShell {
            path: path.to_owned(),
            reason: "it is dynamically linked".to_owned(),
        }),
        None => Err(crate::SandboxError::NoStaticShell {
            path: path.to_owned(),
            reason: "it is not a 64-bit little-endian ELF executable".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_have_nix_contents() {
        assert_eq!(
            etc_passwd(1000, 100, Path::new("/build")),
            "root:x:0:0:Nix build user:/build:/noshell\n\
             nixbld:x:1000:100:Nix build user:/build:/noshell\n\
             nobody:x:65534:65534:Nobody:/:/noshell\n"
        );
        assert_eq!(
            etc_group(100),
            "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
        );
    }

    #[test]
    fn command_arg0_is_the_base_name() {
        let command = Command::new("/nix/store/abc-bash/bin/bash").arg("-e");
        assert_eq!(command.arg0, "bash");
        assert_eq!(command.args, vec![OsString::from("-e")]);
    }

    #[test]
    fn inputs_land_in_the_logical_store() {
        let mut spec = ChrootSpec::new("/tmp/x.chroot", "/tmp/build");
        spec.add_input("/root/nix/store/abc-foo", "abc-foo");
        assert_eq!(spec.inputs[0].target, Path::new("/nix/store/abc-foo"));
        assert!(spec.inputs[0].read_only);
    }

    #[test]
    fn a_dynamic_or_missing_shell_is_refused_with_advice() {
        let missing = check_static_executable(Path::new("/nonexistent/busybox"));
        assert!(missing.is_err());
        let message = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("busybox-static"), "{message}");
    }
}
