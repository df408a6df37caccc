//! A blocking driver for the build lifecycle, for tests and simple tools:
//! it reads the log to end-of-file with `poll(2)`, enforcing the limits,
//! and waits for the exit ([`run_to_unprepared`]), then locks what the
//! build installs and registers it ([`lock_and_register`]). The worker has
//! its own event loop and lock discipline instead. [`nix_2_8`] reads the
//! builds real Nix 2.8 made, which the builders' tests reproduce.

use std::time::{Duration, Instant};

use larder_local_store::LocalStore;
use larder_pathlocks::Owner;
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::error::{BuildError, Result};
use crate::lifecycle::{BuildOutputs, RunningBuild, UnpreparedBuild};
use crate::process::LogRead;

/// Runs the builder to its end: drains the log (returned) and enforces
/// the limits, then unprepares.
///
/// # Errors
///
/// The build's failure.
pub fn run_to_unprepared(
    mut running: RunningBuild,
    store: &LocalStore,
) -> (Vec<u8>, Result<UnpreparedBuild>) {
    let mut log = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let now = Instant::now();
        match running.check_limits(now) {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return (log, Err(BuildError::misc(e.to_string()))),
        }
        let Some(fd) = running.log_fd() else {
            break;
        };
        let wait = running
            .next_deadline()
            .map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(wait.subsec_nanos()).max(1_000_000),
        };
        if let Err(e) = rustix::event::poll(&mut fds, Some(&timeout))
            && e != rustix::io::Errno::INTR
        {
            return (log, Err(BuildError::misc(e.to_string())));
        }
        loop {
            match running.read_log(&mut buf) {
                Ok(LogRead::Data(n)) => log.extend_from_slice(&buf[..n]),
                Ok(LogRead::WouldBlock | LogRead::Eof) => break,
                Err(e) => return (log, Err(BuildError::misc(e.to_string()))),
            }
        }
    }
    // The log reached end-of-file: every writer exited. Wait for the exit
    // itself (the leader may linger for a moment after closing its pipe).
    while let Ok(None) = running.try_wait() {
        if running
            .check_limits(Instant::now())
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = running.unprepare(store);
    (log, result)
}

/// Locks the paths `unprepared` installs with one try-lock, as the worker
/// does once it holds them, and registers the outputs.
///
/// # Errors
///
/// When a path is locked elsewhere, or the build's registration failure.
pub fn lock_and_register(unprepared: UnpreparedBuild, store: &LocalStore) -> Result<BuildOutputs> {
    let paths: Vec<_> = unprepared
        .paths_to_install()
        .iter()
        .map(|p| store.layout().real_path(p))
        .collect();
    let guard = larder_pathlocks::try_lock(Owner::fresh(), &paths)
        .map_err(|e| BuildError::misc(format!("locking the outputs: {e}")))?;
    let proof = unprepared
        .locks_held(store, &guard)
        .map_err(|e| BuildError::misc(e.to_string()))?;
    unprepared.register_outputs(store, proof)
}

/// The builds of `vectors/nix-2.8/` (`builds.jsonl`, and the `.drv` files
/// and sources in `drv/store/`), as real Nix 2.8 made them, and the check
/// that a store holds an output exactly as Nix did. For tests: failures
/// panic with what did not match.
pub mod nix_2_8 {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use larder_local_store::{LocalStore, PathInfo};
    use larder_store_core::StorePath;
    use larder_store_core::derivation::Derivation;
    use serde::Deserialize;

    /// The vectors' folder in this workspace.
    pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vectors/nix-2.8");

    /// One build Nix 2.8 made: the derivation and what each output became.
    #[derive(Debug, Deserialize)]
    pub struct Build {
        /// The vector's name.
        pub id: String,
        /// The `.drv` store path.
        pub drv_path: String,
        /// Each output by name.
        pub outputs: BTreeMap<String, Output>,
    }

    /// One output as Nix 2.8 registered it.
    #[derive(Debug, Deserialize)]
    pub struct Output {
        /// Its store path.
        pub path: String,
        /// Its NAR hash, as an SRI string.
        pub nar_hash_sri: String,
        /// Its NAR's size.
        pub nar_size: u64,
        /// Its references, as store paths.
        pub references: Vec<String>,
        /// Its content address, if any.
        pub ca: Option<String>,
    }

    /// Every build of `builds.jsonl`.
    pub fn builds() -> Vec<Build> {
        let text = std::fs::read_to_string(format!("{VECTORS}/builds.jsonl"))
            .expect("reading builds.jsonl");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a build of builds.jsonl"))
            .collect()
    }

    /// A file of the vectors' store (`drv/store/<base>`): a `.drv` or a
    /// source.
    pub fn store_file(base: &str) -> PathBuf {
        PathBuf::from(VECTORS).join("drv/store").join(base)
    }

    /// The derivation at `path`, read from the vectors' store.
    pub fn load_drv(store: &LocalStore, path: &StorePath) -> Derivation {
        let bytes = std::fs::read(store_file(path.as_str())).expect("reading a vector .drv");
        let name = path.name().strip_suffix(".drv").expect("a .drv path");
        Derivation::parse_aterm(&bytes, name, store.store_dir()).expect("parsing a vector .drv")
    }

    impl Output {
        /// Asserts that `store` holds this output as Nix registered it
        /// (NAR hash and size, references, content address), and returns
        /// its path info. `what` names it in a failure.
        pub fn assert_matches(&self, store: &LocalStore, what: &str) -> PathInfo {
            let path = store.store_dir().parse(&self.path).expect("a vector path");
            let info = store
                .query_path_info(&path)
                .expect("querying the store")
                .unwrap_or_else(|| panic!("{what}: {} is not valid", self.path));
            assert_eq!(info.nar_hash.to_sri(), self.nar_hash_sri, "{what}");
            assert_eq!(info.nar_size, self.nar_size, "{what}");
            let refs: Vec<String> = info
                .references
                .iter()
                .map(|r| store.store_dir().display(r))
                .collect();
            let mut want = self.references.clone();
            want.sort();
            assert_eq!(refs, want, "{what}");
            assert_eq!(info.ca.as_ref().map(|c| c.render()), self.ca, "{what}");
            info
        }
    }
}
