//! The settings a build takes from the user's configuration.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Settings that shape every build (Nix's `nix.conf` options that matter
/// here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// Where build directories are created; `None` means the system's temp
    /// directory (`$TMPDIR` or `/tmp`), as Nix 2.8 does.
    pub build_dir: Option<PathBuf>,
    /// `NIX_BUILD_CORES`; 0 means the number of CPUs.
    pub cores: u32,
    /// Limits the worker enforces while the builder runs.
    pub limits: Limits,
    /// How many trailing log lines a failure message quotes (Nix's
    /// `log-lines`, 10).
    pub log_lines: usize,
    /// Keep the build directory of a failed build (Nix's `keep-failed`).
    pub keep_failed: bool,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            build_dir: None,
            cores: 0,
            limits: Limits::default(),
            log_lines: 10,
            keep_failed: false,
        }
    }
}

impl BuildSettings {
    /// The value of `NIX_BUILD_CORES`.
    #[must_use]
    pub fn effective_cores(&self) -> u32 {
        if self.cores != 0 {
            return self.cores;
        }
        // Asked once per process: the answer reads a handful of cgroup
        // files, a visible cost when repeated for every trivial build.
        static CPUS: OnceLock<u32> = OnceLock::new();
        *CPUS.get_or_init(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
                .unwrap_or(1)
        })
    }
}

/// Limits on a running builder; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Kill the builder after this long without log output (`max-silent-time`).
    pub max_silent_time: Option<Duration>,
    /// Kill the builder after it has run this long (`timeout`).
    pub timeout: Option<Duration>,
    /// Kill the builder once it has written more than this many log bytes
    /// (`max-build-log-size`).
    pub max_log_size: Option<u64>,
}
