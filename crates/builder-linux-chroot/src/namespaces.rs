//! The namespaces kept open while a build runs, and the check that this
//! process can create namespaces at all.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::SandboxError;

/// Descriptors of a running sandbox's mount and user namespaces, opened
/// before the child pivots its root.
///
/// Holding them keeps the namespaces alive and lets a path be bound into
/// the running sandbox through the pre-pivot mount namespace (recursive
/// Nix's `addDependency`). Nothing may add paths once the build is being torn
/// down, so the chroot builder's `unprepare` [resets](SavedNamespaces::reset)
/// them first, as Nix's `ChrootLinuxDerivationBuilder::unprepareBuild` does;
/// that drops this process's last reference to the namespaces.
#[derive(Debug, Default)]
pub struct SavedNamespaces {
    mount: Option<OwnedFd>,
    user: Option<OwnedFd>,
}

impl SavedNamespaces {
    pub(crate) fn new(mount: OwnedFd, user: OwnedFd) -> Self {
        SavedNamespaces {
            mount: Some(mount),
            user: Some(user),
        }
    }

    /// The sandbox's pre-pivot mount namespace, while saved.
    pub fn mount(&self) -> Option<BorrowedFd<'_>> {
        self.mount.as_ref().map(AsFd::as_fd)
    }

    /// The sandbox's user namespace, while saved.
    pub fn user(&self) -> Option<BorrowedFd<'_>> {
        self.user.as_ref().map(AsFd::as_fd)
    }

    /// Whether either namespace is still held.
    pub fn is_open(&self) -> bool {
        self.mount.is_some() || self.user.is_some()
    }

    /// Closes both descriptors. Idempotent.
    pub fn reset(&mut self) {
        self.mount = None;
        self.user = None;
    }
}

/// Checks that this process can create the namespaces a sandbox uses, by
/// reading the kernel's limit and creating them once for a child that exits
/// at once. The error names the cause and the `--no-sandbox` way out.
pub fn check_support() -> Result<(), SandboxError> {
    const LIMIT: &str = "/proc/sys/user/max_user_namespaces";
    if let Ok(text) = std::fs::read_to_string(LIMIT)
        && text.trim() == "0"
    {
        return Err(SandboxError::Unavailable {
            cause: format!("user namespaces are disabled ({LIMIT} is 0)"),
        });
    }
    crate::spawn::probe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_closes_and_is_idempotent() {
        let (a, b) = rustix::pipe::pipe().expect("pipe");
        let mut saved = SavedNamespaces::new(a, b);
        assert!(saved.is_open());
        assert!(saved.mount().is_some() && saved.user().is_some());
        saved.reset();
        assert!(!saved.is_open());
        saved.reset();
        assert!(saved.mount().is_none());
    }
}
