//! What can go wrong while building a chroot or starting a sandboxed process.

use std::path::PathBuf;

/// An error of the sandbox, naming the path or the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel does not let this process create the namespaces a sandbox
    /// needs.
    #[error(
        "cannot perform a sandboxed build: {cause}; \
         build without the sandbox with `--no-sandbox`"
    )]
    Unavailable {
        /// Why namespaces cannot be created (the failing step and the
        /// kernel's answer, or the sysctl to change).
        cause: String,
    },
    /// The default `/bin/sh` of the sandbox cannot be used.
    #[error(
        "cannot use {path} as the sandbox's /bin/sh: {reason}; install a static \
         busybox (Debian: `apt-get install busybox-static`) or configure other sandbox paths"
    )]
    NoStaticShell {
        /// The shell looked for.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A path given for the sandbox is not absolute or climbs with `..`.
    #[error("sandbox path {path} must be absolute and must not contain `..`")]
    BadTarget {
        /// The offending path inside the sandbox.
        path: PathBuf,
    },
    /// A required bind-mount source does not exist.
    #[error("path {source_path} to be mounted at {target} in the sandbox does not exist")]
    MissingSource {
        /// The host path.
        source_path: PathBuf,
        /// The path inside the sandbox.
        target: PathBuf,
    },
    /// A file system operation on the host failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`creating`, `writing`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A string handed to the kernel contains a NUL byte.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul {
        /// Which string (`argument`, `environment variable`, `path`).
        what: &'static str,
        /// The string, lossily.
        value: String,
    },
    /// A step of starting the sandboxed process failed in the parent.
    #[error("while setting up the build environment: {step}: {source}")]
    Spawn {
        /// The step.
        step: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A step inside the new namespaces failed, reported by the child over
    /// its error pipe.
    #[error("while setting up the build environment: {step}: {source}")]
    Child {
        /// The step, with the paths it involved.
        step: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// An [`SandboxError::Io`] from a `std::io::Error`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SandboxError::Io {
            action,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_names_the_cause_and_the_way_out() {
        let error = SandboxError::Unavailable {
            cause: "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)"
                .to_owned(),
        };
        let message = error.to_string();
        assert!(message.contains("max_user_namespaces is 0"), "{message}");
        assert!(message.contains("`--no-sandbox`"), "{message}");
    }
}
