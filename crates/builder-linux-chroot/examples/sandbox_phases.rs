//! Times the phases of one sandboxed `/bin/sh -c true`: chroot creation,
//! spawn (until exec), the builder's run, reaping, namespace reset, chroot
//! removal. Usage: `sandbox_phases [N]`.
#![allow(clippy::print_stdout, missing_docs)]
use std::io::Read;
use std::time::{Duration, Instant};

use larder_builder_linux_chroot::{Chroot, ChrootSpec, Command, default_sandbox_paths, spawn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    let temp = tempfile::tempdir()?;
    let build_dir = temp.path().join("build");
    std::fs::create_dir(&build_dir)?;
    let mut spec = ChrootSpec::new(temp.path().join("bench.drv.chroot"), &build_dir);
    spec.sandbox_paths = default_sandbox_paths()?;
    let command = Command::new("/bin/sh").arg("-c").arg("true");
    let names = ["create", "spawn", "run", "wait", "drop", "remove"];
    let mut total = [Duration::ZERO; 6];
    for _ in 0..n {
        let mut t = Instant::now();
        let mut lap = |i: usize, total: &mut [Duration; 6]| {
            total[i] += t.elapsed();
            t = Instant::now();
        };
        let chroot = Chroot::create(&spec)?;
        lap(0, &mut total);
        let mut child = spawn(&chroot, &command)?;
        lap(1, &mut total);
        if let Some(log) = child.take_log() {
            std::fs::File::from(log).read_to_end(&mut Vec::new())?;
        }
        lap(2, &mut total);
        child.wait()?;
        lap(3, &mut total);
        drop(child);
        lap(4, &mut total);
        chroot.remove()?;
        lap(5, &mut total);
    }
    for (name, d) in names.iter().zip(total) {
        println!("{name:>8}: {:.3} ms", d.as_secs_f64() * 1e3 / f64::from(n));
    }
    Ok(())
}
