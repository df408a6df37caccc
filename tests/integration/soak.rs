//! Soak: the deadlock scenarios of the goals issue ([`crate::scenarios`]),
//! at their fast pace, repeated in a loop: zero hangs and the right
//! outcome every time. `LARDER_SOAK_REPS` sets the number of repetitions
//! (100 by default, what CI runs); each repetition runs every scenario
//! once, in a fresh store, alternating with and without the sandbox where
//! the sandbox works. A hang fails the run that hit it after
//! [`crate::scenarios::BOUND`].
//!
//! Each repetition checks the store with `larder verify --check-contents`;
//! Nix's verification runs on the last one only, as Nix takes a second per
//! store.

use std::time::{Duration, Instant};

use crate::drvs::{Scratch, sandbox_available};
use crate::scenarios::{self, Pace};

/// Repetitions CI runs.
const DEFAULT_REPS: usize = 100;

#[test]
fn deadlock_scenarios_never_hang_in_a_loop() {
    let reps = std::env::var("LARDER_SOAK_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_REPS);
    let sandbox = sandbox_available();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut runs = 0;
    for rep in 0..reps {
        let mode: &[&str] = if sandbox && !rep.is_multiple_of(2) {
            &[]
        } else {
            &["--no-sandbox"]
        };
        for scenario in scenarios::all(Pace::Fast) {
            let scratch = Scratch::new();
            let run = Instant::now();
            scenario.run(&scratch, mode);
            slowest = slowest.max(run.elapsed());
            scratch.assert_verifies_with(rep + 1 == reps);
            runs += 1;
        }
    }
    eprintln!(
        "soak: {reps} repetitions, {runs} scenario runs, no hang; {:.1} s in all, slowest run \
         {:.2} s",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
}
