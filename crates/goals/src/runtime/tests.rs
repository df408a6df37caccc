//! Tests of the runtime on its own: tasks, timers, pipes, child processes,
//! cancellation, cross-thread wake-ups, the semaphore and stall detection.
//! Every wait is bounded by a generous timeout that fails the test.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;

const BOUND: Duration = Duration::from_secs(30);

fn rt() -> Runtime {
    Runtime::new().expect("eventfd")
}

/// Spawns `sh -c script` as a process-group leader with stdout piped.
fn sh(handle: &Handle, script: &str) -> (Process, AsyncFd) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
    let fd = AsyncFd::new(handle, stdout).expect("register pipe");
    let process = Process::from_child(handle, child, KillScope::Group).expect("pidfd");
    (process, fd)
}

async fn read_to_end(fd: &AsyncFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = fd.read(&mut buf).await.expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn bounded<F: Future>(rt: &Runtime, f: F) -> F::Output {
    rt.block_on(rt.handle().timeout(BOUND, f))
        .expect("runtime")
        .expect("test hit its bound: the loop hung")
}

#[test]
fn spawned_tasks_complete_and_join() {
    let rt = rt();
    let h = rt.handle().clone();
    let sum = bounded(&rt, async move {
        let joins: Vec<_> = (0..100u64).map(|i| h.spawn(async move { i * 2 })).collect();
        let mut sum = 0;
        for j in joins {
            sum += j.await.expect("not cancelled");
        }
        sum
    });
    assert_eq!(sum, 9900);
    assert_eq!(rt.handle().task_count(), 0);
}

#[test]
fn pending_future_with_nothing_to_wake_it_is_reported_stalled() {
    let rt = rt();
    let h = rt.handle().clone();
    let _task = h.spawn(std::future::pending::<()>());
    match rt.block_on(std::future::pending::<()>()) {
        Err(RuntimeError::Stalled { tasks }) => assert_eq!(tasks, 1),
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn timers_fire_in_deadline_order() {
    let rt = rt();
    let h = rt.handle().clone();
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = Rc::clone(&order);
    bounded(&rt, async move {
        let joins: Vec<_> = [30u64, 10, 20, 0]
            .into_iter()
            .map(|ms| {
                let h2 = h.clone();
                let o = Rc::clone(&o);
                h.spawn(async move {
                    let start = Instant::now();
                    h2.sleep(Duration::from_millis(ms)).await;
                    assert!(start.elapsed() >= Duration::from_millis(ms));
                    o.borrow_mut().push(ms);
                })
            })
            .collect();
        for j in joins {
            j.await.expect("not cancelled");
        }
    });
    assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
}

#[test]
fn timeout_elapses_or_passes_and_disarms_its_timer() {
    let rt = rt();
    let h = rt.handle().clone();
    let (fast, slow) = bounded(&rt, async move {
        let fast = h
            .timeout(Duration::from_secs(60), h.sleep(Duration::from_millis(1)))
            .await;
        let slow = h
            .timeout(Duration::from_millis(5), h.sleep(Duration::from_secs(60)))
            .await;
        (fast, slow)
    });
    assert_eq!(fast, Ok(()));
    assert_eq!(slow, Err(Elapsed));
    // Both 60 s timers were dropped with their futures: nothing is left to
    // wake the loop, which therefore reports a stall at once.
    assert!(matches!(
        rt.block_on(std::future::pending::<()>()),
        Err(RuntimeError::Stalled { .. })
    ));
}

#[test]
fn aborting_a_task_drops_its_future_and_cancels_its_join() {
    let rt = rt();
    let h = rt.handle().clone();
    let dropped = Rc::new(Cell::new(false));
    struct OnDrop(Rc<Cell<bool>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let d = Rc::clone(&dropped);
    let result = bounded(&rt, async move {
        let h2 = h.clone();
        let task = h.spawn(async move {
            let _guard = OnDrop(d);
            h2.sleep(Duration::from_secs(3600)).await;
        });
        h.sleep(Duration::from_millis(1)).await;
        task.abort();
        task.await
    });
    assert_eq!(result, Err(Cancelled));
    assert!(dropped.get());
    assert_eq!(rt.handle().task_count(), 0);
}

#[test]
fn a_task_may_abort_itself_during_its_poll() {
    let rt = rt();
    let h = rt.handle().clone();
    let result = bounded(&rt, async move {
        let me: Rc<RefCell<Option<JoinHandle<()>>>> = Rc::new(RefCell::new(None));
        let me2 = Rc::clone(&me);
        let h2 = h.clone();
        let task = h.spawn(async move {
            yield_now().await;
            if let Some(j) = me2.borrow().as_ref() {
                j.abort();
            }
            // Still running until this poll returns; then it is dropped.
            h2.sleep(Duration::from_secs(3600)).await;
        });
        let probe = h.spawn(async {});
        *me.borrow_mut() = Some(task);
        probe.await.expect("probe");
        let task = me.borrow_mut().take().expect("stored");
        task.await
    });
    assert_eq!(result, Err(Cancelled));
}

#[test]
fn reads_a_child_output_to_eof_and_its_exit_code() {
    let rt = rt();
    let h = rt.handle().clone();
    let (out, status) = bounded(&rt, async move {
        let (mut p, fd) = sh(
            &h,
            "for i in 1 2 3; do echo line $i; sleep 0.01; done; exit 3",
        );
        let out = read_to_end(&fd).await;
        (out, p.wait().await.expect("wait"))
    });
    assert_eq!(out, b"line 1\nline 2\nline 3\n");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn drains_many_chatty_children_at_once() {
    // Each child writes 2 MiB, far more than a pipe holds: all finish only
    // if the loop keeps draining every pipe.
    let rt = rt();
    let h = rt.handle().clone();
    let sizes = bounded(&rt, async move {
        let joins: Vec<_> = (0..6)
            .map(|_| {
                let h2 = h.clone();
                h.spawn(async move {
                    let (mut p, fd) = sh(&h2, "head -c 2097152 /dev/zero");
                    let n = read_to_end(&fd).await.len();
                    assert!(p.wait().await.expect("wait").success());
                    n
                })
            })
            .collect();
        let mut sizes = Vec::new();
        for j in joins {
            sizes.push(j.await.expect("not cancelled"));
        }
        sizes
    });
    assert_eq!(sizes, vec![2 * 1024 * 1024; 6]);
}

#[test]
fn reports_death_by_signal() {
    let rt = rt();
    let h = rt.handle().clone();
    let status = bounded(&rt, async move {
        let (mut p, _fd) = sh(&h, "kill -TERM $$; sleep 60");
        p.wait().await.expect("wait")
    });
    assert_eq!(status.signal(), Some(15));
}

#[test]
fn explicit_kill_ends_a_silent_child() {
    let rt = rt();
    let h = rt.handle().clone();
    let status = bounded(&rt, async move {
        let (mut p, _fd) = sh(&h, "sleep 3600");
        p.kill().expect("kill");
        p.wait().await.expect("wait")
    });
    assert_eq!(status.signal(), Some(9));
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

#[test]
fn cancelling_a_task_kills_its_child_process_group_and_reaps_it() {
    let rt = rt();
    let h = rt.handle().clone();
    let (leader, grandchild) = bounded(&rt, async move {
        let h2 = h.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        let task = h.spawn(async move {
            let (mut p, fd) = sh(&h2, "sleep 3600 & echo $!; wait");
            let mut buf = [0u8; 64];
            let n = fd.read(&mut buf).await.expect("read");
            let grandchild: u32 = std::str::from_utf8(&buf[..n])
                .expect("utf8")
                .trim()
                .parse()
                .expect("pid");
            let _ = tx.send((p.id(), grandchild));
            p.wait().await.expect("wait");
        });
        let pids = rx.await.expect("pids");
        task.abort();
        assert_eq!(task.await, Err(Cancelled));
        // The loop reaps the killed leader through its pidfd.
        while h.zombie_count() > 0 {
            h.sleep(Duration::from_millis(2)).await;
        }
        while !process_gone(pids.1) {
            h.sleep(Duration::from_millis(2)).await;
        }
        pids
    });
    assert!(process_gone(leader));
    assert!(process_gone(grandchild));
}

#[test]
fn dropping_the_runtime_kills_and_reaps_running_children() {
    let rt = rt();
    let h = rt.handle().clone();
    let pid = Rc::new(Cell::new(0));
    let p2 = Rc::clone(&pid);
    let h2 = h.clone();
    let _task = h.spawn(async move {
        let (mut p, _fd) = sh(&h2, "sleep 3600");
        p2.set(p.id());
        let _ = p.wait().await;
    });
    bounded(&rt, async {
        while pid.get() == 0 {
            yield_now().await;
        }
    });
    drop(rt);
    let pid = pid.get();
    // Reaped, not merely dead: the pid is no child of ours any more.
    let reaped = rustix::process::waitpid(
        rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")),
        rustix::process::WaitOptions::NOHANG,
    );
    assert!(
        matches!(reaped, Err(rustix::io::Errno::CHILD)),
        "{reaped:?}"
    );
}

#[test]
fn remote_senders_wake_the_loop_from_another_thread() {
    let rt = rt();
    let (tx, rx) = remote_channel::<u32>(rt.handle());
    let thread = std::thread::spawn(move || {
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(5));
            tx.send(i);
        }
    });
    let got = bounded(&rt, async move {
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        got
    });
    thread.join().expect("sender thread");
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[test]
fn semaphore_bounds_concurrency_in_fifo_order() {
    let rt = rt();
    let h = rt.handle().clone();
    let slots = Semaphore::new(2);
    let running = Rc::new(Cell::new(0usize));
    let peak = Rc::new(Cell::new(0usize));
    let order = Rc::new(RefCell::new(Vec::new()));
    let (r, p, o) = (Rc::clone(&running), Rc::clone(&peak), Rc::clone(&order));
    bounded(&rt, async move {
        let joins: Vec<_> = (0..8)
            .map(|i| {
                let (h2, s) = (h.clone(), slots.clone());
                let (r, p, o) = (Rc::clone(&r), Rc::clone(&p), Rc::clone(&o));
                h.spawn(async move {
                    let _permit = s.acquire().await;
                    o.borrow_mut().push(i);
                    r.set(r.get() + 1);
                    p.set(p.get().max(r.get()));
                    h2.sleep(Duration::from_millis(2)).await;
                    r.set(r.get() - 1);
                })
            })
            .collect();
        for j in joins {
            j.await.expect("not cancelled");
        }
        assert_eq!(slots.available(), 2);
    });
    assert_eq!(peak.get(), 2);
    assert_eq!(*order.borrow(), (0..8).collect::<Vec<_>>());
}

#[test]
fn a_cancelled_semaphore_waiter_passes_its_permit_on() {
    let rt = rt();
    let h = rt.handle().clone();
    bounded(&rt, async move {
        let s = Semaphore::new(1);
        let held = s.acquire().await;
        let s1 = s.clone();
        let first = h.spawn(async move { s1.acquire().await });
        let s2 = s.clone();
        let second = h.spawn(async move { drop(s2.acquire().await) });
        yield_now().await;
        assert_eq!(s.waiting(), 2);
        drop(held); // granted to `first`, which has not run yet
        first.abort();
        second.await.expect("second got the permit");
        assert_eq!(s.available(), 1);
    });
}
