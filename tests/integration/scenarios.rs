//! The deadlock scenarios of the goals issue, built once and used twice:
//! by the goals tests (at their original, slow pace) and by the soak test
//! (fast: short sleeps and quick log floods, repeated many times).
//!
//! Each keeps the shape that made Nix hang: a goal finishes while the path
//! it must register is locked by a sibling that is still running and
//! writing more log than a pipe holds.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use larder_store_core::{ContentAddressMethod, Derivation};

use crate::drvs::{Scratch, chatter, fixed, floating, out_path, output_lines, text};

/// How fast the builders go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The goals tests' pace: seconds per run, logs trickling out.
    Slow,
    /// The soak test's: a fraction of a second per run, logs flooded at once
    /// after a short sleep (still more than a pipe holds).
    Fast,
}

/// One scenario: derivations to build together and what must come out.
pub struct Scenario {
    /// What it is, for messages.
    pub name: &'static str,
    /// The derivations, each with the file name it is written under.
    pub drvs: Vec<(&'static str, Derivation)>,
    /// Build slots: every derivation runs at once.
    pub jobs: &'static str,
    /// Whether the run uses `--keep-going`.
    pub keep_going: bool,
    expect: Expect,
}

enum Expect {
    /// Exit 102; the first derivation's output is the only one printed;
    /// `mismatches` hash mismatches reported; each of `valid` holds
    /// `content`.
    Mismatch {
        mismatches: usize,
        printed: Vec<String>,
        valid: Vec<String>,
        content: Option<&'static [u8]>,
    },
    /// Success; every derivation's output is `path`, holding `content`.
    Shared {
        path: String,
        content: &'static [u8],
    },
}

/// How long one run of a scenario may take before it counts as hung.
pub const BOUND: Duration = Duration::from_secs(180);

/// Nix #15846: two fixed-output derivations with wrong hashes produce,
/// quickly, the content a third declares correctly and builds slowly while
/// writing over 1 MiB of log. The wrong ones' real path is the slow one's
/// declared path, whose lock the slow one holds. Nix 2.8 hangs here.
pub fn issue_15846(pace: Pace) -> Scenario {
    const CONTENT: &[u8] = b"content-15846\n";
    let write = "printf 'content-15846\\n' > $out";
    let (slow_script, bad1_script, bad2_script) = match pace {
        Pace::Slow => (
            format!("{}{write}", chatter(1100, "0.02")),
            format!("sleep 0.5; {write}"),
            format!("sleep 1; {write}"),
        ),
        Pace::Fast => (
            format!("sleep 0.2; {}{write}", chatter(1100, "")),
            format!("sleep 0.05; {write}"),
            format!("sleep 0.1; {write}"),
        ),
    };
    let slow = fixed("fixed", &slow_script, ContentAddressMethod::Flat, CONTENT);
    let bad1 = fixed(
        "fixed",
        &bad1_script,
        ContentAddressMethod::Flat,
        b"not the content 1",
    );
    let bad2 = fixed(
        "fixed",
        &bad2_script,
        ContentAddressMethod::Flat,
        b"not the content 2",
    );
    let slow_path = out_path(&slow);
    Scenario {
        name: "#15846",
        drvs: vec![
            ("slow.json", slow),
            ("bad1.json", bad1),
            ("bad2.json", bad2),
        ],
        jobs: "-j3",
        keep_going: true,
        expect: Expect::Mismatch {
            mismatches: 2,
            printed: vec![slow_path.clone()],
            valid: vec![slow_path],
            content: Some(CONTENT),
        },
    }
}

/// Two fixed-output derivations with the same name, each declaring the
/// hash of the other's content: each one's real path is the other's
/// declared path. Both fail; neither waits for the other forever.
pub fn swapped_hashes(pace: Pace) -> Scenario {
    let (a_log, b_log) = match pace {
        Pace::Slow => (chatter(256, "0.01"), chatter(384, "0.01")),
        Pace::Fast => (
            format!("sleep 0.05; {}", chatter(256, "")),
            format!("sleep 0.1; {}", chatter(384, "")),
        ),
    };
    let a = fixed(
        "swapped",
        &format!("{a_log}printf 'A\\n' > $out"),
        ContentAddressMethod::Flat,
        b"B\n",
    );
    let b = fixed(
        "swapped",
        &format!("{b_log}printf 'B\\n' > $out"),
        ContentAddressMethod::Flat,
        b"A\n",
    );
    // Each content is valid under its own address, which is the other
    // derivation's declared path.
    let valid = vec![out_path(&a), out_path(&b)];
    Scenario {
        name: "swapped hashes",
        drvs: vec![("a.json", a), ("b.json", b)],
        jobs: "-j2",
        keep_going: true,
        expect: Expect::Mismatch {
            mismatches: 2,
            printed: vec![],
            valid,
            content: None,
        },
    }
}

/// A floating content-addressed derivation named X quickly produces the
/// content C; a slow recursive fixed-output derivation named X declaring
/// C's hash holds that very path. Both succeed with one valid path.
pub fn floating_ca_and_fixed_output(pace: Pace) -> Scenario {
    const CONTENT: &[u8] = b"shared content\n";
    let write = "printf 'shared content\\n' > $out";
    let (fod_script, floating_script) = match pace {
        Pace::Slow => (
            format!("{}{write}", chatter(512, "0.01")),
            format!("sleep 0.3; {write}"),
        ),
        Pace::Fast => (
            format!("sleep 0.15; {}{write}", chatter(512, "")),
            format!("sleep 0.05; {write}"),
        ),
    };
    let fod = fixed("shared", &fod_script, ContentAddressMethod::Nar, CONTENT);
    let path = out_path(&fod);
    Scenario {
        name: "floating CA vs fixed output",
        drvs: vec![
            ("fod.json", fod),
            ("floating.json", floating("shared", &floating_script)),
        ],
        jobs: "-j2",
        keep_going: false,
        expect: Expect::Shared {
            path,
            content: CONTENT,
        },
    }
}

/// Every scenario at `pace`.
pub fn all(pace: Pace) -> Vec<Scenario> {
    vec![
        issue_15846(pace),
        swapped_hashes(pace),
        floating_ca_and_fixed_output(pace),
    ]
}

impl Scenario {
    /// Writes the derivations into `scratch` and returns their files.
    pub fn write(&self, scratch: &Scratch) -> Vec<PathBuf> {
        self.drvs
            .iter()
            .map(|(file, drv)| scratch.write(file, drv))
            .collect()
    }

    /// Builds the scenario in `scratch` with the extra `mode` arguments
    /// (`--no-sandbox` or none), within [`BOUND`], and checks the outcome.
    pub fn run(&self, scratch: &Scratch, mode: &[&str]) -> Output {
        let files = self.write(scratch);
        let mut args = vec![self.jobs];
        if self.keep_going {
            args.push("--keep-going");
        }
        args.extend_from_slice(mode);
        let out = scratch.build_within(BOUND, &args, &files);
        self.check(scratch, &out, mode);
        out
    }

    /// Checks what a run of the scenario gave.
    pub fn check(&self, scratch: &Scratch, out: &Output, mode: &[&str]) {
        let stderr = text(&out.stderr);
        let name = self.name;
        match &self.expect {
            Expect::Mismatch {
                mismatches,
                printed,
                valid,
                content,
            } => {
                assert_eq!(out.status.code(), Some(102), "{name} {mode:?}: {stderr}");
                assert_eq!(&output_lines(out), printed, "{name}: {stderr}");
                assert_eq!(
                    stderr
                        .matches("hash mismatch in fixed-output derivation")
                        .count(),
                    *mismatches,
                    "{name}: {stderr}"
                );
                for path in valid {
                    assert!(scratch.is_valid(path), "{name}: {path} is valid");
                    if let Some(content) = content {
                        assert_eq!(scratch.read(path), *content, "{name}: {path}");
                    }
                }
            }
            Expect::Shared { path, content } => {
                assert!(out.status.success(), "{name} {mode:?}: {stderr}");
                assert_eq!(
                    output_lines(out),
                    vec![path.clone(); self.drvs.len()],
                    "{name}"
                );
                assert_eq!(scratch.read(path), *content, "{name}: {path}");
            }
        }
    }
}
