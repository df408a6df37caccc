//! Lock handoff latency and the cost of an uncontended try-lock.
//!
//! `cargo run --release -p larder-pathlocks --example lock_bench` prints one
//! JSON object per figure on stdout:
//!
//! - `try_lock_uncontended`: one `try_lock` of a free path (open, `flock`,
//!   `fstat`), for scale.
//! - `handoff_in_process`: from a holder dropping its guard to a waiting
//!   future of the same process holding the lock (woken by the lock table).
//! - `handoff_cross_process`: the same with the waiter in another process,
//!   waiting with the async lock on its backoff timer (1 ms doubling to
//!   20 ms); Nix polls every 5 s.
//! - `handoff_cross_process_blocking`: the same with a blocking waiter
//!   (the kernel wakes it), the floor for crossing processes.
//!
//! The child process is this binary run again with `--child MODE PATH`.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::executor::{LocalPool, block_on};
use futures::task::LocalSpawnExt;
use larder_pathlocks::test_support::thread_sleep;
use larder_pathlocks::{Owner, lock, lock_blocking, try_lock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode, path] = args.as_slice()
        && flag == "--child"
    {
        return child(mode, Path::new(path));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench");

    report("try_lock_uncontended", &try_lock_uncontended(&path, 5000)?);
    report("handoff_in_process", &handoff_in_process(&path, 2000)?);
    report(
        "handoff_cross_process",
        &handoff_cross_process(&path, "async", 200)?,
    );
    report(
        "handoff_cross_process_blocking",
        &handoff_cross_process(&path, "blocking", 200)?,
    );
    Ok(())
}

fn try_lock_uncontended(
    path: &Path,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let owner = Owner::fresh();
    // The lock file exists, as it does for a path locked before.
    drop(try_lock(owner, [path])?);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let guard = try_lock(owner, [path])?;
        samples.push(start.elapsed());
        drop(guard);
    }
    Ok(samples)
}

fn handoff_in_process(path: &Path, n: usize) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let mut pool = LocalPool::new();
    let (holder, waiter) = (Owner::fresh(), Owner::fresh());
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let guard = try_lock(holder, [path])?;
        let acquired: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let slot = Rc::clone(&acquired);
        let owned = path.to_owned();
        pool.spawner().spawn_local(async move {
            // Every wait here is on a holder in this process: no timer.
            let timer = |_: Duration| std::future::pending::<()>();
            if let Ok(guard) = lock(waiter, [&owned], timer).await {
                slot.set(Some(Instant::now()));
                drop(guard);
            }
        })?;
        pool.run_until_stalled();
        let released = Instant::now();
        drop(guard);
        pool.run_until_stalled();
        let at = acquired.get().ok_or("the waiter did not get the lock")?;
        samples.push(at - released);
    }
    Ok(samples)
}

/// The parent holds the lock, tells the child to wait for it, holds it a
/// few milliseconds more (so the child is well into its backoff), then
/// releases; the child reports when it got the lock.
fn handoff_cross_process(
    path: &Path,
    mode: &str,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--child", mode])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().ok_or("no stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let owner = Owner::fresh();
    let mut samples = Vec::with_capacity(n);
    let mut line = String::new();
    for round in 0..n {
        let guard = lock_blocking(owner, [path])?;
        writeln!(to_child, "go")?;
        to_child.flush()?;
        // 1 to 30 ms: samples every phase of the child's backoff.
        std::thread::sleep(Duration::from_micros(1000 + (round as u64 * 7919) % 29_000));
        let released = now_ns();
        drop(guard);
        line.clear();
        from_child.read_line(&mut line)?;
        let acquired: u128 = line.trim().parse()?;
        samples.push(Duration::from_nanos(
            acquired.saturating_sub(released) as u64
        ));
    }
    drop(to_child);
    child.wait()?;
    Ok(samples)
}

fn child(mode: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let owner = Owner::fresh();
    let path: PathBuf = path.to_owned();
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        line?;
        let guard = match mode {
            "blocking" => lock_blocking(owner, [&path])?,
            _ => block_on(lock(owner, [&path], thread_sleep))?,
        };
        let acquired = now_ns();
        drop(guard);
        writeln!(stdout, "{acquired}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Wall-clock time, comparable between the two processes.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn report(name: &str, samples: &[Duration]) {
    let mut micros: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"name\":\"{name}\",\"median_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"n\":{}}}",
        at(0.5),
        at(0.99),
        at(1.0),
        micros.len()
    );
}
