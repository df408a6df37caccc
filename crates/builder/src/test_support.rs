//! A blocking driver for the build lifecycle, for tests and simple tools:
//! it reads the log to end-of-file with `poll(2)`, enforcing the limits,
//! and waits for the exit ([`run_to_unprepared`]), then locks what the
//! build installs and registers it ([`lock_and_register`]). The worker has
//! its own event loop and lock discipline instead.

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
