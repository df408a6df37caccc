//! The cost of starting and tearing down a trivial sandboxed process, against
//! `unshare(1)` creating the same namespaces, measured in the same run.
//!
//! Each iteration builds a chroot, starts `/bin/sh -c true` in the full
//! sandbox (user, mount, PID, network, IPC, UTS and cgroup namespaces,
//! binds, `/proc`, `pivot_root`), drains its log, reaps it and deletes the
//! chroot. The floor is `unshare --user --map-root-user --mount --pid --fork
//! --net --ipc --uts true`. A second series starts the sandbox as builds do
//! (`start`, with the network namespace kept from one run for the next when
//! running as root); the overhead over a plain spawn is that series'.
//! Prints one JSON object per figure, for `cargo xtask bench`.
//!
//! Usage: `sandbox_bench [N]` (default 200).

use std::io::Read;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use larder_builder_linux_chroot::{
    Chroot, ChrootSpec, Command, NetworkNamespaces, check_support, default_sandbox_paths, spawn,
    start,
};

const UNSHARE_ARGS: [&str; 9] = [
    "--user",
    "--map-root-user",
    "--mount",
    "--pid",
    "--fork",
    "--net",
    "--ipc",
    "--uts",
    "true",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 200,
    };
    if let Err(error) = check_support() {
        println!("sandbox_bench: skipped: {error}");
        return Ok(());
    }
    let sandbox_paths = match default_sandbox_paths() {
        Ok(paths) => paths,
        Err(error) => {
            println!("sandbox_bench: skipped: {error}");
            return Ok(());
        }
    };
    let temp = tempfile::tempdir()?;
    let build_dir = temp.path().join("build");
    std::fs::create_dir(&build_dir)?;
    let mut spec = ChrootSpec::new(temp.path().join("bench.drv.chroot"), &build_dir);
    spec.sandbox_paths = sandbox_paths;
    let command = Command::new("/bin/sh").arg("-c").arg("true");

    let sandboxed = per_run(n, || {
        let chroot = Chroot::create(&spec)?;
        let mut child = spawn(&chroot, &command)?;
        if let Some(log) = child.take_log() {
            std::fs::File::from(log).read_to_end(&mut Vec::new())?;
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("the sandboxed /bin/sh -c true failed: {status}").into());
        }
        // Teardown in the builder's order: the saved namespaces go first
        // (unprepare), then the chroot (cleanup).
        drop(child);
        chroot.remove()?;
        Ok(())
    })?;
    // As builds start the sandbox: `start` with the worker's kept network
    // namespaces, each given back once its process is reaped.
    let networks = NetworkNamespaces::new();
    let kept = per_run(n, || {
        let chroot = Chroot::create(&spec)?;
        let mut child = start(&chroot, &command, &networks)?;
        child.wait_for_setup()?;
        if let Some(log) = child.take_log() {
            std::fs::File::from(log).read_to_end(&mut Vec::new())?;
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("the sandboxed /bin/sh -c true failed: {status}").into());
        }
        let mut parts = child.into_parts()?;
        if let Some(network) = parts.network.take() {
            networks.give_back(network);
        }
        drop(parts);
        chroot.remove()?;
        Ok(())
    })?;
    let plain = per_run(n, || {
        run(Process::new("/bin/busybox").args(["sh", "-c", "true"]))
    })?;
    let unshare = per_run(n, || run(Process::new("unshare").args(UNSHARE_ARGS))).ok();
    let plain_true = per_run(n, || run(&mut Process::new("true")))?;

    figure(
        &format!("sandboxed /bin/sh -c true, start to teardown (N={n})"),
        sandboxed,
        unshare,
        "≤ 2x unshare(1)",
    );
    figure(
        &format!("same, the network namespace kept from the last run as builds keep it (N={n})"),
        kept,
        unshare,
        "≤ 2x unshare(1)",
    );
    figure(
        &format!("sandbox overhead over a plain spawn, as builds start it (N={n})"),
        kept.saturating_sub(plain),
        unshare.map(|u| u.saturating_sub(plain_true)),
        "≤ 1 ms",
    );
    Ok(())
}

/// The mean wall time of `n` calls of `step`.
fn per_run(
    n: u32,
    mut step: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let start = Instant::now();
    for _ in 0..n.max(1) {
        step()?;
    }
    Ok(start.elapsed() / n.max(1))
}

fn run(process: &mut Process) -> Result<(), Box<dyn std::error::Error>> {
    let status = process
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("{process:?} failed: {status}").into());
    }
    Ok(())
}

fn figure(name: &str, ours: Duration, peer: Option<Duration>, target: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let peer_value = peer.map_or_else(|| "null".to_owned(), |p| format!("{:.4}", ms(p)));
    println!(
        "{{\"name\":\"{name}\",\"value\":{:.4},\"unit\":\"ms\",\"peer\":\"unshare(1)\",\
         \"peer_value\":{peer_value},\"target\":\"{target}\"}}",
        ms(ours)
    );
}
