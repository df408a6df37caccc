//! The worker's scenarios over [`backend::TestBackend`]: real processes
//! and real lock files, each run bounded so that a hang fails the test.

mod backend;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backend::{Out, TestBackend, TestDrv};

use crate::events::{Event, EventSink};
use crate::locks::{self, LockWait, LockWaitError};
use crate::result::{BuildResult, BuildStatus, exit_status};
use crate::runtime::Runtime;
use crate::worker::{Settings, Worker};
use crate::{Backend, Limits};

const BOUND: Duration = Duration::from_secs(60);

fn drv(name: &str, out: Out, script: &str, inputs: Vec<PathBuf>) -> TestDrv {
    TestDrv {
        name: name.to_owned(),
        inputs,
        out,
        script: script.to_owned(),
    }
}

/// Runs the worker on `targets`; fails the test if the bound is hit.
fn run(
    rt: &Runtime,
    backend: &Rc<TestBackend>,
    settings: Settings,
    targets: &[PathBuf],
) -> (Vec<BuildResult>, Vec<Event>) {
    let (tx, rx) = mpsc::channel();
    let dyn_backend: Rc<dyn Backend> = Rc::clone(backend) as Rc<dyn Backend>;
    let worker = Worker::new(rt.handle(), dyn_backend, settings, EventSink::new(tx));
    let started = Instant::now();
    let results = rt
        .block_on(rt.handle().timeout(BOUND, worker.run(targets)))
        .expect("runtime")
        .unwrap_or_else(|_| panic!("the worker hung: still running after {BOUND:?}"));
    assert!(started.elapsed() < BOUND);
    worker.shutdown();
    drop(worker);
    (results, rx.try_iter().collect())
}

fn statuses(results: &[BuildResult]) -> Vec<BuildStatus> {
    results.iter().map(|r| r.status).collect()
}

#[test]
fn a_diamond_builds_each_derivation_once_then_finds_it_valid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let d = b.add(drv("d", Out::Named("d".into()), "echo d > $out", vec![]));
    let l = b.add(drv(
        "l",
        Out::Named("l".into()),
        "echo l > $out",
        vec![d.clone()],
    ));
    let r = b.add(drv(
        "r",
        Out::Named("r".into()),
        "echo r > $out",
        vec![d.clone()],
    ));
    let top = b.add(drv(
        "top",
        Out::Named("top".into()),
        "echo top > $out",
        vec![l, r],
    ));
    let settings = Settings {
        max_jobs: 2,
        ..Settings::default()
    };
    let (results, events) = run(&rt, &b, settings.clone(), std::slice::from_ref(&top));
    assert_eq!(statuses(&results), [BuildStatus::Built]);
    assert_eq!(results[0].outputs["out"], b.store.join("top"));
    assert_eq!(b.started.borrow().len(), 4, "each derivation built once");
    let created = events
        .iter()
        .filter(|e| matches!(e, Event::GoalCreated { .. }))
        .count();
    assert_eq!(created, 4, "goals deduplicated by .drv path");
    assert!(b.registered.borrow().values().all(|&n| n == 1));

    let (again, _) = run(&rt, &b, settings, &[top.clone(), top]);
    assert_eq!(statuses(&again), [BuildStatus::AlreadyValid; 2]);
    assert_eq!(b.started.borrow().len(), 4);
}

#[test]
fn build_slots_bound_concurrent_builders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let targets: Vec<_> = (0..6)
        .map(|i| {
            b.add(drv(
                &format!("p{i}"),
                Out::Named(format!("p{i}")),
                "sleep 0.05; echo x > $out",
                vec![],
            ))
        })
        .collect();
    let settings = Settings {
        max_jobs: 2,
        ..Settings::default()
    };
    let (results, _) = run(&rt, &b, settings, &targets);
    assert_eq!(statuses(&results), [BuildStatus::Built; 6]);
    assert_eq!(b.peak_running.get(), 2);
}

#[test]
fn a_failed_input_fails_its_dependents_naming_it_with_keep_going() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let bad = b.add(drv(
        "bad",
        Out::Named("bad".into()),
        "echo oops; exit 3",
        vec![],
    ));
    let good = b.add(drv(
        "good",
        Out::Named("good".into()),
        "echo g > $out",
        vec![],
    ));
    let top = b.add(drv(
        "top",
        Out::Named("top".into()),
        "echo t > $out",
        vec![bad.clone()],
    ));
    let settings = Settings {
        keep_going: true,
        ..Settings::default()
    };
    let (results, events) = run(&rt, &b, settings, &[top, good, bad.clone()]);
    assert_eq!(
        statuses(&results),
        [
            BuildStatus::DependencyFailed,
            BuildStatus::Built,
            BuildStatus::PermanentFailure
        ]
    );
    let dep = results[0].error.as_deref().expect("message");
    assert!(dep.contains(&bad.display().to_string()), "{dep}");
    let own = results[2].error.as_deref().expect("message");
    assert!(own.contains("failed with exit code 3"), "{own}");
    assert!(own.contains("Last 1 log lines:\n> oops"), "{own}");
    assert_eq!(exit_status(&results), 100);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Finished { result } if result.drv == bad))
    );
}

#[test]
fn the_first_failure_stops_the_others_and_kills_their_builders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let slow = b.add(drv(
        "slow",
        Out::Named("slow".into()),
        "sleep 3600; echo > $out",
        vec![],
    ));
    let bad = b.add(drv(
        "bad",
        Out::Named("bad".into()),
        "sleep 0.1; exit 1",
        vec![],
    ));
    let settings = Settings {
        max_jobs: 2,
        ..Settings::default()
    };
    let started = Instant::now();
    let (results, _) = run(&rt, &b, settings, &[slow, bad]);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        statuses(&results),
        [BuildStatus::Cancelled, BuildStatus::PermanentFailure]
    );
    assert_eq!(b.running.get(), 0, "the cancelled build was dropped");
}

/// Nix #15846: three fixed-output derivations named alike; the slow one
/// declares the right hash and floods its log; the two others declare wrong
/// hashes but produce the slow one's content, so their actual path is the
/// path the slow one holds locked.
#[test]
fn nix_15846_three_fixed_outputs_do_not_hang() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let flood = "i=0; while [ $i -lt 40 ]; do head -c 32768 /dev/zero | tr '\\0' x; echo; sleep 0.02; i=$((i+1)); done";
    let slow = b.add(drv(
        "fixed",
        Out::Fixed("content".into()),
        &format!("{flood}; echo content > $out"),
        vec![],
    ));
    let bad1 = b.add(drv(
        "fixed",
        Out::Fixed("wrong1".into()),
        "sleep 0.1; echo content > $out",
        vec![],
    ));
    let bad2 = b.add(drv(
        "fixed",
        Out::Fixed("wrong2".into()),
        "sleep 0.2; echo content > $out",
        vec![],
    ));
    let settings = Settings {
        max_jobs: 3,
        keep_going: true,
        ..Settings::default()
    };
    let (results, events) = run(&rt, &b, settings, &[slow, bad1, bad2]);
    assert_eq!(
        statuses(&results),
        [
            BuildStatus::Built,
            BuildStatus::HashMismatch,
            BuildStatus::HashMismatch
        ]
    );
    assert_eq!(exit_status(&results), 102);
    let p = b.fixed_path("content", "fixed");
    assert!(b.is_valid_path(&p));
    assert_eq!(
        b.registered.borrow()[&p],
        1,
        "built once, reused by the others"
    );
    assert!(
        results[1]
            .error
            .as_deref()
            .expect("message")
            .contains("specified:")
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::WaitingForLock { paths, .. } if paths.contains(&p)))
    );
}

#[test]
fn swapped_hashes_both_fail_without_hanging() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let chatty = "i=0; while [ $i -lt 20 ]; do head -c 16384 /dev/zero | tr '\\0' y; echo; sleep 0.01; i=$((i+1)); done";
    let a = b.add(drv(
        "same",
        Out::Fixed("bbb".into()),
        &format!("{chatty}; echo aaa > $out"),
        vec![],
    ));
    let c = b.add(drv(
        "same",
        Out::Fixed("aaa".into()),
        &format!("{chatty}; echo bbb > $out"),
        vec![],
    ));
    let settings = Settings {
        max_jobs: 2,
        keep_going: true,
        ..Settings::default()
    };
    let (results, _) = run(&rt, &b, settings, &[a, c]);
    assert_eq!(statuses(&results), [BuildStatus::HashMismatch; 2]);
    assert_eq!(exit_status(&results), 102);
}

#[test]
fn floating_content_addressed_output_reuses_the_fixed_output_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let fod = b.add(drv(
        "x",
        Out::Fixed("c".into()),
        "sleep 0.3; echo c > $out",
        vec![],
    ));
    let floating = b.add(drv("x", Out::Floating, "echo c > $out", vec![]));
    let settings = Settings {
        max_jobs: 2,
        ..Settings::default()
    };
    let (results, events) = run(&rt, &b, settings, &[fod, floating]);
    assert_eq!(statuses(&results), [BuildStatus::Built; 2]);
    let p = b.fixed_path("c", "x");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::WaitingForLock { paths, .. } if paths.contains(&p))),
        "the floating output waited for the fixed output's lock"
    );
    assert_eq!(results[0].outputs["out"], p);
    assert_eq!(results[1].outputs["out"], p);
    assert_eq!(
        b.registered.borrow()[&p],
        1,
        "one valid path, registered once"
    );
}

#[test]
fn limits_end_builds_with_their_own_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let silent = b.add(drv(
        "silent",
        Out::Named("s".into()),
        "echo hi; sleep 3600",
        vec![],
    ));
    let settings = Settings {
        keep_going: true,
        limits: Limits {
            max_silent_time: Some(Duration::from_millis(200)),
            ..Limits::default()
        },
        ..Settings::default()
    };
    let (results, _) = run(&rt, &b, settings, std::slice::from_ref(&silent));
    assert_eq!(statuses(&results), [BuildStatus::TimedOut]);
    assert!(
        results[0]
            .error
            .as_deref()
            .expect("msg")
            .contains("of silence")
    );
    assert_eq!(exit_status(&results), 101);

    let busy = b.add(drv(
        "busy",
        Out::Named("busy".into()),
        "while true; do echo tick; sleep 0.01; done",
        vec![],
    ));
    let settings = Settings {
        limits: Limits {
            timeout: Some(Duration::from_millis(300)),
            ..Limits::default()
        },
        ..Settings::default()
    };
    let (results, _) = run(&rt, &b, settings, std::slice::from_ref(&busy));
    assert_eq!(statuses(&results), [BuildStatus::TimedOut]);

    let flood = b.add(drv(
        "flood",
        Out::Named("flood".into()),
        "head -c 1000000 /dev/zero; sleep 3600",
        vec![],
    ));
    let settings = Settings {
        limits: Limits {
            max_log_size: Some(4096),
            ..Limits::default()
        },
        ..Settings::default()
    };
    let (results, _) = run(&rt, &b, settings, std::slice::from_ref(&flood));
    assert_eq!(statuses(&results), [BuildStatus::LogLimitExceeded]);
    assert!(
        results[0]
            .error
            .as_deref()
            .expect("msg")
            .contains("more than 4096 bytes")
    );
    assert_eq!(b.running.get(), 0);
}

#[test]
fn log_lines_are_forwarded_as_events_with_dash_l() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new().expect("runtime");
    let b = TestBackend::new(rt.handle(), tmp.path());
    let d = b.add(drv(
        "talk",
        Out::Named("talk".into()),
        "echo one; echo two >&2; echo > $out",
        vec![],
    ));
    let settings = Settings {
        forward_logs: true,
        ..Settings::default()
    };
    let (_, events) = run(&rt, &b, settings, &[d]);
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::LogLine { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["one", "two"]);
}

#[test]
fn an_artificial_wait_cycle_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (p1, p2) = (tmp.path().join("p1"), tmp.path().join("p2"));
    let rt = Runtime::new().expect("runtime");
    let h = rt.handle().clone();
    let (a, b) = (
        larder_pathlocks::Owner::fresh(),
        larder_pathlocks::Owner::fresh(),
    );
    let names = move |o: larder_pathlocks::Owner| {
        if o == a {
            "goal 'A'".to_owned()
        } else if o == b {
            "goal 'B'".to_owned()
        } else {
            o.to_string()
        }
    };
    let outcome = rt
        .block_on(h.clone().timeout(BOUND, async move {
            let held_a = larder_pathlocks::try_lock(a, [&p1]).expect("p1");
            let held_b = larder_pathlocks::try_lock(b, [&p2]).expect("p2");
            let (h1, h2) = (h.clone(), h.clone());
            let (p1c, p2c) = (p1.clone(), p2.clone());
            let first = h.spawn(async move {
                let wait = LockWait {
                    handle: &h1,
                    backoff: larder_pathlocks::Backoff::default(),
                    check_cycles: true,
                    describe: &names,
                };
                let r = locks::acquire(&wait, a, &[p2c], |_| {}).await;
                drop(held_a);
                r.map(drop)
            });
            let second = h.spawn(async move {
                let wait = LockWait {
                    handle: &h2,
                    backoff: larder_pathlocks::Backoff::default(),
                    check_cycles: true,
                    describe: &names,
                };
                let r = locks::acquire(&wait, b, &[p1c], |_| {}).await;
                drop(held_b);
                r.map(drop)
            });
            (first.await.expect("first"), second.await.expect("second"))
        }))
        .expect("runtime")
        .expect("the cycle hung");
    // One side sees the cycle and gives up its lock; the other then gets
    // what it waited for.
    let (errors, oks): (Vec<_>, Vec<_>) =
        [outcome.0, outcome.1].into_iter().partition(Result::is_err);
    assert_eq!((errors.len(), oks.len()), (1, 1));
    match errors.into_iter().next() {
        Some(Err(LockWaitError::Cycle(message))) => {
            assert!(
                message.contains("goal 'A' waits for the lock on"),
                "{message}"
            );
            assert!(
                message.contains("goal 'B' waits for the lock on"),
                "{message}"
            );
            assert!(
                message.contains("/p1'") && message.contains("/p2'"),
                "{message}"
            );
        }
        other => panic!("expected a cycle error, got {other:?}"),
    }
}
