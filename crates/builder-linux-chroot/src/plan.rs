//! Everything the child needs after `clone`, computed before it: every path
//! as a `CString`, `argv` and `envp` as NUL-terminated pointer arrays. The
//! child only reads this (in the parent's memory, which it shares) and
//! never allocates. A plan owns all it points to, so that it can be kept
//! alive for as long as the child may read it, whatever becomes of the
//! chroot and the command it was made from.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::SandboxError;
use crate::chroot::{Chroot, Op, cpath};
use crate::spec::{Command, Network};

/// The child's whole program, as data.
pub(crate) struct ChildPlan {
    /// The chroot root on the host, which becomes `/`.
    pub(crate) root: CString,
    /// The steps that build the chroot.
    pub(crate) ops: Arc<[Op]>,
    pub(crate) working_dir: CString,
    pub(crate) program: CString,
    /// Whether the child brings up `lo` in a network namespace its `clone`
    /// made (not in one from [`crate::NetworkNamespaces`], which is up).
    pub(crate) bring_loopback_up: bool,
    // The pointer arrays point into these; they must live as long as the plan.
    _argv_strings: Vec<CString>,
    _env_strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointer arrays point into strings the plan owns on the heap,
// which are valid and unchanged wherever the plan is, on any thread.
unsafe impl Send for ChildPlan {}

impl ChildPlan {
    /// Lays out `command` in `chroot` for the child.
    pub(crate) fn new(chroot: &Chroot, command: &Command) -> Result<ChildPlan, SandboxError> {
        let mut argv_strings = vec![cstring("argument", command.arg0.as_bytes())?];
        for arg in &command.args {
            argv_strings.push(cstring("argument", arg.as_bytes())?);
        }
        let mut env_strings = Vec::with_capacity(command.env.len());
        for (name, value) in &command.env {
            let mut pair = name.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env_strings.push(cstring("environment variable", &pair)?);
        }
        let argv = null_terminated(&argv_strings);
        let envp = null_terminated(&env_strings);
        Ok(ChildPlan {
            root: cpath(chroot.root())?,
            ops: Arc::clone(chroot.ops()),
            working_dir: cpath(&command.working_dir)?,
            program: cpath(&command.program)?,
            bring_loopback_up: chroot.network() == Network::Loopback,
            _argv_strings: argv_strings,
            _env_strings: env_strings,
            argv,
            envp,
        })
    }

    /// `argv` for `execve`: NUL-terminated, pointing into strings the plan owns.
    pub(crate) fn argv(&self) -> *const *const libc::c_char {
        self.argv.as_ptr()
    }

    /// `envp` for `execve`, like [`ChildPlan::argv`].
    pub(crate) fn envp(&self) -> *const *const libc::c_char {
        self.envp.as_ptr()
    }
}

/// Pointers to `strings` followed by a null one, as `execve` takes them;
/// they point into `strings`, which must outlive their use.
pub(crate) fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn cstring(what: &'static str, bytes: &[u8]) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::Nul {
        what,
        value: OsStr::from_bytes(bytes).to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ChrootSpec;

    #[test]
    fn argv_and_envp_are_null_terminated_and_nul_bytes_are_refused() {
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(temp.path().join("build")).expect("mkdir");
        let spec = ChrootSpec::new(temp.path().join("c"), temp.path().join("build"));
        let chroot = Chroot::create(&spec).expect("chroot");
        let command = Command::new("/bin/sh").arg("-c").arg("true").env("A", "b");
        let plan = ChildPlan::new(&chroot, &command).expect("plan");
        assert_eq!(plan.argv.len(), 4);
        assert!(plan.argv[3].is_null());
        assert_eq!(plan.envp.len(), 2);
        assert!(plan.envp[1].is_null());
        assert_eq!(plan._env_strings[0].as_bytes(), b"A=b");

        let bad = Command::new("/bin/sh").arg("a\0b");
        let error = ChildPlan::new(&chroot, &bad).err().expect("a NUL byte");
        assert!(matches!(
            error,
            SandboxError::Nul {
                what: "argument",
                ..
            }
        ));
    }
}
