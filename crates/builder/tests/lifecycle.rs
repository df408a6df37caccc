//! The lifecycle's failure kinds, output checks, check mode, limits, and
//! the dynamic lock set unprepare returns.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{TestStore, ca_path, fixed_drv, floating_drv, sh_drv};
use larder_builder::{FailureKind, Limits};
use larder_store_core::{ContentAddressMethod, Hash, HashAlgo};

fn sha256(data: &str) -> Hash {
    HashAlgo::Sha256.digest(data)
}

#[test]
fn input_addressed_build_needs_no_extra_locks() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "ia", "echo ia > $out", &["out"]);
    let (_, unprepared) = t.unprepare(&drv, false);
    let unprepared = unprepared.unwrap();
    assert!(unprepared.locks_needed().is_empty());
    assert!(unprepared.declared_paths_not_registered().is_empty());
    let out = t.register(unprepared).unwrap();
    let path = &out.outputs["out"].path;
    assert_eq!(std::fs::read_to_string(t.real(path)).unwrap(), "ia\n");
    assert!(t.store.is_valid(path).unwrap());
}

#[test]
fn matching_fixed_output_needs_no_extra_locks() {
    let t = TestStore::new();
    let drv = fixed_drv(
        t.store_dir(),
        "fod",
        "echo fixed > $out",
        ContentAddressMethod::Flat,
        sha256("fixed\n"),
    );
    let (_, unprepared) = t.unprepare(&drv, false);
    let unprepared = unprepared.unwrap();
    assert!(unprepared.locks_needed().is_empty());
    let out = t.register(unprepared).unwrap();
    assert_eq!(
        out.outputs["out"].path,
        ca_path(
            t.store_dir(),
            "fod",
            ContentAddressMethod::Flat,
            sha256("fixed\n")
        )
    );
}

#[test]
fn mismatching_fixed_output_locks_and_registers_its_actual_path() {
    let t = TestStore::new();
    let drv = fixed_drv(
        t.store_dir(),
        "fod",
        "echo other > $out",
        ContentAddressMethod::Flat,
        sha256("fixed\n"),
    );
    let declared = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    let actual = ca_path(
        t.store_dir(),
        "fod",
        ContentAddressMethod::Flat,
        sha256("other\n"),
    );
    let drv_path = drv.drv_path(t.store_dir());
    let (_, unprepared) = t.unprepare(&drv, false);
    let unprepared = unprepared.unwrap();
    assert_eq!(unprepared.locks_needed(), BTreeSet::from([actual.clone()]));
    assert_eq!(
        unprepared.declared_paths_not_registered(),
        BTreeSet::from([declared.clone()])
    );
    // The output left the declared path, so a sibling may take it now.
    assert!(!t.real(&declared).exists());
    let err = t.register(unprepared).unwrap_err();
    assert_eq!(err.kind, FailureKind::HashMismatch);
    assert_eq!(
        err.message,
        format!(
            "hash mismatch in fixed-output derivation '{}':\n  specified: {}\n     got:    {}",
            t.store_dir().display(&drv_path),
            sha256("fixed\n").to_sri(),
            sha256("other\n").to_sri()
        )
    );
    assert!(t.store.is_valid(&actual).unwrap());
    assert_eq!(std::fs::read_to_string(t.real(&actual)).unwrap(), "other\n");
    assert!(!t.store.is_valid(&declared).unwrap());
    assert!(!t.real(&declared).exists());
}

#[test]
fn floating_output_locks_its_final_path_and_rewrites_self_references() {
    let t = TestStore::new();
    let drv = floating_drv("float", "mkdir $out; echo $out > $out/self");
    let (_, unprepared) = t.unprepare(&drv, false);
    let unprepared = unprepared.unwrap();
    let summary = unprepared.outputs().next().unwrap().clone();
    assert_eq!(
        unprepared.locks_needed(),
        BTreeSet::from([summary.path.clone()])
    );
    assert!(summary.references.contains(&summary.path), "self reference");
    let out = t.register(unprepared).unwrap();
    let path = &out.outputs["out"].path;
    assert_eq!(path, &summary.path);
    assert_eq!(
        std::fs::read_to_string(t.real(path).join("self")).unwrap(),
        format!("{}\n", t.store_dir().display(path))
    );
    let info = t.store.query_path_info(path).unwrap().unwrap();
    assert_eq!(info.ca, summary.ca);
    // The content address gives the path (checked on registration too).
    assert_eq!(
        t.store_dir()
            .make_content_addressed_path("float", &info.ca.unwrap(), &info.store_references())
            .unwrap(),
        *path
    );
}

#[test]
fn already_valid_content_addressed_target_is_reused() {
    let t = TestStore::new();
    let first = floating_drv("same", "echo same > $out");
    let second = floating_drv("same", "echo same > $out # another recipe");
    let (_, a) = t.build(&first);
    let a = a.unwrap();
    let (_, b) = t.build(&second);
    let b = b.unwrap();
    assert_eq!(a.outputs["out"].path, b.outputs["out"].path);
    assert!(!a.outputs["out"].reused);
    assert!(b.outputs["out"].reused);
    let info = t
        .store
        .query_path_info(&a.outputs["out"].path)
        .unwrap()
        .unwrap();
    assert_eq!(info.deriver, Some(first.drv_path(t.store_dir())));
}

#[test]
fn register_demands_the_locks() {
    let t = TestStore::new();
    let drv = floating_drv("float", "echo x > $out");
    let (_, unprepared) = t.unprepare(&drv, false);
    let unprepared = unprepared.unwrap();
    assert!(unprepared.locks_held(&t.store, &()).is_err());
    let path = unprepared.outputs().next().unwrap().path.clone();
    let other = larder_pathlocks::try_lock(
        larder_pathlocks::Owner::fresh(),
        [t.dir.path().join("unrelated")],
    )
    .unwrap();
    let missing = unprepared.locks_held(&t.store, &other).unwrap_err();
    assert_eq!(missing.path, t.real(&path));
    // Dropping the unregistered build leaves nothing behind.
    drop(unprepared);
    assert!(!t.real(&path).exists());
    assert_no_leftovers(&t);
}

#[test]
fn nonzero_exit_quotes_the_log_tail() {
    let t = TestStore::new();
    let drv = sh_drv(
        t.store_dir(),
        "fail",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13; do echo line$i; done; exit 3",
        &["out"],
    );
    let drv_display = t.store_dir().display(&drv.drv_path(t.store_dir()));
    let (log, result) = t.build(&drv);
    assert!(log.starts_with("line1\n"));
    let err = result.unwrap_err();
    assert_eq!(err.kind, FailureKind::PermanentFailure);
    let mut want =
        format!("builder for '{drv_display}' failed with exit code 3;\nlast 10 log lines:\n");
    for i in 4..=13 {
        want.push_str(&format!("> line{i}\n"));
    }
    want.push_str(&format!("For full logs, run 'larder log {drv_display}'."));
    assert_eq!(err.message, want);
    assert_no_leftovers(&t);
}

#[test]
fn killed_by_a_signal() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "sig", "kill -9 $$", &["out"]);
    let err = t.build(&drv).1.unwrap_err();
    assert!(
        err.message.ends_with("failed due to signal 9 (Killed)"),
        "{}",
        err.message
    );
}

#[test]
fn missing_output_is_rejected() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "noout", "echo hi", &["out"]);
    let out = drv.output_paths(t.store_dir())["out"].clone().unwrap();
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    assert_eq!(
        err.message,
        format!(
            "builder for '{}' failed to produce output path for output 'out' at '{}'",
            t.store_dir().display(&drv.drv_path(t.store_dir())),
            t.store_dir().display(&out)
        )
    );
    assert_no_leftovers(&t);
}

#[test]
fn one_missing_output_of_several_leaves_nothing_valid() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "multi", "echo out > $out", &["out", "dev"]);
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    for path in drv.output_paths(t.store_dir()).values().flatten() {
        assert!(!t.store.is_valid(path).unwrap());
        assert!(!t.real(path).exists());
    }
    assert_no_leftovers(&t);
}

#[test]
fn setuid_and_write_bits_are_stripped() {
    let t = TestStore::new();
    let drv = sh_drv(
        t.store_dir(),
        "suid",
        "mkdir $out; echo x > $out/f; chmod 4755 $out/f; echo y > $out/g; chmod 2644 $out/g; mkdir $out/d; chmod 1755 $out/d",
        &["out"],
    );
    let out = t.build(&drv).1.unwrap();
    let real = t.real(&out.outputs["out"].path);
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&real), 0o555);
    assert_eq!(mode(&real.join("f")), 0o555);
    assert_eq!(mode(&real.join("g")), 0o444);
    assert_eq!(mode(&real.join("d")), 0o555);
}

#[test]
fn fifo_is_rejected() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "fifo", "mkdir $out; mkfifo $out/f", &["out"]);
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    // The derivation, the file under the output's store path, and its type.
    assert!(
        err.message.contains("-fifo.drv' rejected")
            && err
                .message
                .contains("-fifo/f': file has an unsupported type (fifo)"),
        "{}",
        err.message
    );
    assert_no_leftovers(&t);
}

#[test]
fn hard_links_inside_the_outputs_are_kept() {
    let t = TestStore::new();
    let drv = sh_drv(
        t.store_dir(),
        "links",
        "mkdir $out; echo a > $out/a; ln $out/a $out/b",
        &["out"],
    );
    let out = t.build(&drv).1.unwrap();
    let real = t.real(&out.outputs["out"].path);
    assert_eq!(std::fs::read_to_string(real.join("b")).unwrap(), "a\n");
}

#[test]
fn hard_link_to_a_file_outside_the_outputs_is_rejected() {
    let t = TestStore::new();
    // A file in the store directory, as an input's file would be (a link
    // across the store's bind mount would fail with EXDEV anyway).
    let outside = t.store.layout().real_store_dir().join(".outside");
    std::fs::write(&outside, "secret").unwrap();
    let drv = sh_drv(
        t.store_dir(),
        "badlink",
        &format!("mkdir $out; ln {}/.outside $out/x", t.store_dir().as_str()),
        &["out"],
    );
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    assert!(err.message.contains("hard links"), "{}", err.message);
    // The outside file was not made read-only.
    assert_eq!(
        std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_no_leftovers(&t);
}

#[test]
fn group_writable_output_is_rejected() {
    let t = TestStore::new();
    let drv = sh_drv(
        t.store_dir(),
        "gw",
        "echo x > $out; chmod 664 $out",
        &["out"],
    );
    let err = t.build(&drv).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::OutputRejected);
    assert!(
        err.message
            .starts_with("suspicious ownership or permission"),
        "{}",
        err.message
    );
}

#[test]
fn check_mode_deterministic_and_not() {
    let t = TestStore::new();
    let det = sh_drv(t.store_dir(), "det", "echo same > $out", &["out"]);
    t.build(&det).1.unwrap();
    let checked = t.build_mode(&det, true).1.unwrap();
    assert!(t.store.is_valid(&checked.outputs["out"].path).unwrap());

    let nondet = sh_drv(t.store_dir(), "nondet", "date +%s%N > $out", &["out"]);
    let first = t.build(&nondet).1.unwrap();
    let path = first.outputs["out"].path.clone();
    let before = std::fs::read_to_string(t.real(&path)).unwrap();
    let err = t.build_mode(&nondet, true).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::NotDeterministic);
    let shown = t.store_dir().display(&path);
    assert_eq!(
        err.message,
        format!(
            "derivation '{}' may not be deterministic: output '{shown}' differs from '{shown}.check'",
            t.store_dir().display(&nondet.drv_path(t.store_dir()))
        )
    );
    // The registered output is untouched; the other one is beside it.
    assert_eq!(std::fs::read_to_string(t.real(&path)).unwrap(), before);
    let mut check = t.real(&path).into_os_string();
    check.push(".check");
    let other = std::fs::read_to_string(&check).unwrap();
    assert_ne!(other, before);
    assert!(t.store.is_valid(&path).unwrap());
}

fn limited(t: &TestStore, limits: Limits) -> larder_builder::BuildSettings {
    let mut settings = t.settings();
    settings.limits = limits;
    settings
}

#[test]
fn silence_timeout_kills() {
    let t = TestStore::new();
    let drv = sh_drv(t.store_dir(), "silent", "echo start; sleep 30", &["out"]);
    let settings = limited(
        &t,
        Limits {
            max_silent_time: Some(Duration::from_millis(300)),
            ..Limits::default()
        },
    );
    let err = t.unprepare_with(&drv, false, settings).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::SilenceTimedOut);
    assert!(
        err.message
            .ends_with("from .drv file timed out after 0 seconds of silence"),
        "{}",
        err.message
    );
    assert_eq!(err.kind.exit_status_bits(), 1);
    assert_no_leftovers(&t);
}

#[test]
fn build_timeout_kills() {
    let t = TestStore::new();
    // Chatty but endless: only the overall timeout applies.
    let drv = sh_drv(
        t.store_dir(),
        "endless",
        "while :; do echo tick; sleep 0.05; done",
        &["out"],
    );
    let settings = limited(
        &t,
        Limits {
            timeout: Some(Duration::from_secs(1)),
            max_silent_time: Some(Duration::from_secs(20)),
            ..Limits::default()
        },
    );
    let err = t.unprepare_with(&drv, false, settings).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::TimedOut);
    assert_eq!(
        err.message,
        format!(
            "building of '{}!*' from .drv file timed out after 1 seconds",
            t.store_dir().display(&drv.drv_path(t.store_dir()))
        )
    );
    assert_no_leftovers(&t);
}

#[test]
fn log_limit_kills() {
    let t = TestStore::new();
    let drv = sh_drv(
        t.store_dir(),
        "flood",
        "yes | head -c 100000; sleep 30",
        &["out"],
    );
    let settings = limited(
        &t,
        Limits {
            max_log_size: Some(1000),
            ..Limits::default()
        },
    );
    let err = t.unprepare_with(&drv, false, settings).1.unwrap_err();
    assert_eq!(err.kind, FailureKind::LogLimitExceeded);
    assert!(
        err.message
            .ends_with("killed after writing more than 1000 bytes of log output"),
        "{}",
        err.message
    );
    assert_no_leftovers(&t);
}

/// No build directory, staging directory or unregistered store object is
/// left; spare build directories kept for reuse are empty and private.
fn assert_no_leftovers(t: &TestStore) {
    use std::os::unix::fs::PermissionsExt;
    let builds = t.dir.path().join("builds");
    if builds.exists() {
        let spare = format!(".larder-spare-{}-", std::process::id());
        for entry in std::fs::read_dir(&builds).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(name.starts_with(&spare), "build directory left: {name}");
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            assert!(meta.is_dir(), "spare {name} is not a directory");
            assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "spare {name}");
            assert_eq!(
                std::fs::read_dir(entry.path()).unwrap().count(),
                0,
                "spare {name} is not empty"
            );
        }
    }
    // The only entry a build may leave in the scratch area is this
    // process's staging directory, empty.
    let scratch = t.store.layout().scratch_dir();
    if scratch.exists() {
        let mine = format!("{}-builds", std::process::id());
        for entry in std::fs::read_dir(&scratch).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.file_name().to_string_lossy(), mine, "scratch left");
            assert_eq!(
                std::fs::read_dir(entry.path()).unwrap().count(),
                0,
                "staging left"
            );
        }
    }
    let valid = t.store.query_all_valid_paths().unwrap();
    for entry in std::fs::read_dir(t.store.layout().real_store_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') || name.ends_with(".drv") || name.ends_with(".lock") {
            continue;
        }
        assert!(
            valid.iter().any(|p| p.as_str() == name),
            "unregistered store object left: {name}"
        );
    }
}

/// The variables Nix 2.8 gave the same derivation (captured with `env` from
/// a real build), values checked where they do not depend on the machine.
#[test]
fn environment_is_nixs() {
    let t = TestStore::new();
    let mut drv = sh_drv(
        t.store_dir(),
        "env-test",
        "env > $out; pwd >> $out",
        &["out"],
    );
    drv.env.remove("outputs");
    drv.env.insert("passAsFile".to_owned(), "foo".to_owned());
    drv.env.insert("foo".to_owned(), "x".to_owned());
    let out = t.build(&drv).1.unwrap();
    let text = std::fs::read_to_string(t.real(&out.outputs["out"].path)).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let pwd = lines.pop().unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        lines.iter().map(|l| l.split_once('=').unwrap()).collect();
    let names: Vec<&str> = vars.keys().copied().collect();
    assert_eq!(
        names,
        [
            "HOME",
            "NIX_BUILD_CORES",
            "NIX_BUILD_TOP",
            "NIX_LOG_FD",
            "NIX_STORE",
            "PATH",
            "PWD",
            "TEMP",
            "TEMPDIR",
            "TERM",
            "TMP",
            "TMPDIR",
            "builder",
            "fooPath",
            "name",
            "out",
            "passAsFile",
            "system",
        ]
    );
    assert_eq!(vars["HOME"], "/homeless-shelter");
    assert_eq!(vars["NIX_BUILD_CORES"], "1");
    assert_eq!(vars["NIX_LOG_FD"], "2");
    assert_eq!(vars["NIX_STORE"], "/nix/store");
    assert_eq!(vars["TERM"], "xterm-256color");
    assert_eq!(vars["PATH"], "/usr/bin:/bin");
    for dir in ["NIX_BUILD_TOP", "PWD", "TEMP", "TEMPDIR", "TMP", "TMPDIR"] {
        assert_eq!(vars[dir], pwd);
    }
    assert_eq!(
        vars["fooPath"],
        format!("{pwd}/.attr-1bp7cri8hplaz6hbz0v4f0nl44rl84q1sg25kgwqzipzd1mv89ic")
    );
}

#[test]
fn fixed_output_gets_impure_variables() {
    let t = TestStore::new();
    let mut drv = fixed_drv(
        t.store_dir(),
        "fodenv",
        "env > /dev/stderr; echo fixed > $out",
        ContentAddressMethod::Flat,
        sha256("fixed\n"),
    );
    drv.env.insert(
        "impureEnvVars".to_owned(),
        "HOME_OF_TEST_UNSET LARDER_TEST_SURELY_UNSET".to_owned(),
    );
    let (log, result) = t.build(&drv);
    result.unwrap();
    assert!(log.lines().any(|l| l == "NIX_OUTPUT_CHECKED=1"), "{log}");
    assert!(
        log.lines().any(|l| l == "LARDER_TEST_SURELY_UNSET="),
        "{log}"
    );
}
