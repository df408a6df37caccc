//! Benchmark of the worker building many trivial derivations, for
//! `cargo xtask bench`: prints one JSON object per figure,
//! `{"name","value","unit","peer","peer_value","target"}`.
//!
//! ```text
//! build_bench [--quick]
//! ```
//!
//! - 200 independent derivations (`echo $name > $out`), `-j2`, in the
//!   sandbox and without it, against `nix-store --realise` of the very
//!   same `.drv` files (made by `nix-instantiate` when Nix is installed;
//!   otherwise the peer is reported missing and larder builds its own).
//! - N = 100 / 1,000 / 5,000 of them without the sandbox: time per build
//!   and the peak memory (VmHWM) of the process that runs the worker.
//!
//! Each measurement runs in a child process of its own (this program with
//! `--child`), in a fresh store, so its peak memory is its own. Only the
//! build is timed: the derivations are written to the store first, as
//! `nix-instantiate` writes them before `nix-store --realise` runs.

#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_builder::{BuildSettings, DerivationBuilder, GenericBuilder};
use larder_builder_linux_chroot::SandboxConfig;
use larder_goals::runtime::Runtime;
use larder_goals::{EventSink, Failure, Settings, StoreBackend};
use larder_local_store::LocalStore;
use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{Derivation, StoreDir, StorePath};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, rest @ ..] if flag == "--child" => child(rest),
        [] => parent(false),
        [flag] if flag == "--quick" => parent(true),
        _ => Err("usage: build_bench [--quick]".into()),
    }
}

/// What a child measured.
struct Measured {
    ms_per_drv: f64,
    peak_mib: f64,
}

fn parent(quick: bool) -> Result<(), Error> {
    let n = if quick { 50 } else { 200 };
    let sandbox = match SandboxConfig::detect() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("build_bench: no sandbox here ({e}); sandboxed figures are skipped");
            false
        }
    };
    let nix = nix_available();
    if !nix {
        eprintln!("build_bench: nix-instantiate/nix-store not installed; the Nix peer is missing");
    }
    for sandboxed in [true, false] {
        if sandboxed && !sandbox {
            continue;
        }
        let (drv_files, peer) = if nix {
            let files = nix_instantiate(n)?;
            let peer = nix_realise(&files, sandboxed)?;
            // Nix built them; larder builds the same .drv files again in
            // its own store, from fresh ones of the same shape.
            (Some(nix_instantiate(n)?), Some(peer))
        } else {
            (None, None)
        };
        let measured = run_child(n, sandboxed, drv_files.as_deref())?;
        let mode = if sandboxed { "sandboxed" } else { "no sandbox" };
        let target = if sandboxed {
            "≤ 3 ms/drv"
        } else {
            "≤ 2 ms/drv"
        };
        figure(
            &format!("{n} trivial independent builds, -j2, {mode}"),
            measured.ms_per_drv,
            "ms/drv",
            Some(("nix-store --realise", peer)),
            target,
        );
    }
    let sizes: &[usize] = if quick {
        &[100, 1000]
    } else {
        &[100, 1000, 5000]
    };
    let mut first = None;
    for &size in sizes {
        let measured = run_child(size, false, None)?;
        let base = *first.get_or_insert(measured.ms_per_drv);
        figure(
            &format!("trivial builds, N = {size}, -j2, no sandbox"),
            measured.ms_per_drv,
            "ms/drv",
            None,
            &format!(
                "flat: within 1.2x of N = {} ({:.2}x)",
                sizes[0],
                measured.ms_per_drv / base
            ),
        );
        figure(
            &format!("peak memory (VmHWM), N = {size}, no sandbox"),
            measured.peak_mib,
            "MiB",
            None,
            "< 100 MiB at 5,000",
        );
    }
    Ok(())
}

fn figure(name: &str, value: f64, unit: &str, peer: Option<(&str, Option<f64>)>, target: &str) {
    let mut object = serde_json::json!({
        "name": name,
        "value": (value * 1000.0).round() / 1000.0,
        "unit": unit,
        "target": target,
    });
    if let Some((peer, peer_value)) = peer {
        object["peer"] = peer.into();
        if let Some(v) = peer_value {
            object["peer_value"] = ((v * 1000.0).round() / 1000.0).into();
        }
    }
    println!("{object}");
}

/// Runs one measurement in a fresh process.
fn run_child(n: usize, sandboxed: bool, drvs: Option<&[PathBuf]>) -> Result<Measured, Error> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--child")
        .arg(n.to_string())
        .arg(if sandboxed { "sandbox" } else { "no-sandbox" });
    if let Some(drvs) = drvs {
        cmd.args(drvs);
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("the measurement of {n} builds failed").into());
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
    match (get("ms_per_drv"), get("peak_mib")) {
        (Some(ms_per_drv), Some(peak_mib)) => Ok(Measured {
            ms_per_drv,
            peak_mib,
        }),
        _ => Err(format!("unexpected measurement: {value}").into()),
    }
}

/// The child: builds N derivations (the given `.drv` files, or its own) in
/// a fresh store and prints the time per build and its peak memory.
fn child(args: &[String]) -> Result<(), Error> {
    let [n, mode, files @ ..] = args else {
        return Err("usage: build_bench --child N sandbox|no-sandbox [DRV...]".into());
    };
    let n: usize = n.parse()?;
    let sandboxed = mode == "sandbox";
    let dir = tempfile::tempdir()?;
    let store = Arc::new(LocalStore::open(dir.path().join("store"))?);
    let store_dir = store.store_dir().clone();
    let drvs: Vec<Derivation> = if files.is_empty() {
        own_derivations(&store_dir, n)?
    } else {
        files
            .iter()
            .map(|f| read_drv(Path::new(f), &store_dir))
            .collect::<Result<_, _>>()?
    };
    let mut targets = Vec::with_capacity(drvs.len());
    for drv in &drvs {
        let info = store.write_derivation(drv)?;
        targets.push(PathBuf::from(store.print_path(&info.path)));
    }
    let new_builder: Box<larder_goals::BuilderFactory> = if sandboxed {
        let config = SandboxConfig::detect()?;
        let store = Arc::clone(&store);
        Box::new(move |_| -> Result<Box<dyn DerivationBuilder>, Failure> {
            Ok(Box::new(config.builder(Arc::clone(&store))))
        })
    } else {
        Box::new(|_| -> Result<Box<dyn DerivationBuilder>, Failure> {
            Ok(Box::new(GenericBuilder))
        })
    };
    let settings = BuildSettings {
        build_dir: Some(dir.path().join("build")),
        ..BuildSettings::default()
    };
    std::fs::create_dir_all(dir.path().join("build"))?;
    let backend = StoreBackend::new(Arc::clone(&store), settings, new_builder);
    let runtime = Runtime::new()?;
    let worker_settings = Settings {
        max_jobs: 2,
        ..Settings::default()
    };
    let started = Instant::now();
    let results = larder_goals::build(
        &runtime,
        Rc::new(backend),
        worker_settings,
        EventSink::none(),
        &targets,
    )?;
    let elapsed = started.elapsed();
    if let Some(failed) = results.iter().find(|r| !r.is_success()) {
        return Err(format!("{}: {:?}", failed.drv.display(), failed.error).into());
    }
    let peak_mib = vm_hwm_kib()? / 1024.0;
    println!(
        "{}",
        serde_json::json!({
            "ms_per_drv": per_drv(elapsed, targets.len()),
            "peak_mib": peak_mib,
        })
    );
    Ok(())
}

fn per_drv(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64
}

/// N derivations of the shape the Nix peer uses, with a per-run nonce.
fn own_derivations(store_dir: &StoreDir, n: usize) -> Result<Vec<Derivation>, Error> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let mut cache = HashModuloCache::new(store_dir.clone());
    let mut none = |p: &StorePath| -> Result<Derivation, String> { Err(format!("no input {p}")) };
    (0..n)
        .map(|i| {
            let name = format!("bench-{nonce}-{i}");
            let mut drv = Derivation::new(&name)?;
            drv.system = "x86_64-linux".to_owned();
            drv.builder = "/bin/sh".to_owned();
            drv.args = vec!["-c".to_owned(), "echo $name > $out".to_owned()];
            drv.env = BTreeMap::from([
                ("builder".to_owned(), "/bin/sh".to_owned()),
                ("name".to_owned(), name.clone()),
                ("out".to_owned(), String::new()),
                ("system".to_owned(), "x86_64-linux".to_owned()),
            ]);
            drv.insert_output("out", DerivationOutput::Deferred)?;
            drv.fill_in_output_paths(&mut cache, &mut none)?;
            Ok(drv)
        })
        .collect()
}

fn read_drv(file: &Path, store_dir: &StoreDir) -> Result<Derivation, Error> {
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let path = StorePath::from_base_name(base)?;
    let name = path.name().strip_suffix(".drv").unwrap_or(path.name());
    Ok(Derivation::parse_aterm(
        &std::fs::read(file)?,
        name,
        store_dir,
    )?)
}

fn vm_hwm_kib() -> Result<f64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".into())
}

fn nix_available() -> bool {
    ["nix-instantiate", "nix-store"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `nix-instantiate`s N independent trivial derivations (as
/// `peer/nix/bench-nix-build.sh` does) and returns their `.drv` files.
fn nix_instantiate(n: usize) -> Result<Vec<PathBuf>, Error> {
    let dir = std::env::temp_dir().join("larder-build-bench");
    std::fs::create_dir_all(&dir)?;
    let expr = dir.join("bench.nix");
    std::fs::write(
        &expr,
        "{ n, seed }: builtins.genList (i: derivation {\n  \
           name = \"bench-${seed}-${toString i}\";\n  \
           system = builtins.currentSystem;\n  \
           builder = \"/bin/sh\";\n  \
           args = [ \"-c\" \"echo $name > $out\" ];\n}) n\n",
    )?;
    let seed = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let out = Command::new("nix-instantiate")
        .args(["--arg", "n", &n.to_string(), "--argstr", "seed", &seed])
        .arg(&expr)
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err("nix-instantiate failed".into());
    }
    let files: Vec<PathBuf> = String::from_utf8(out.stdout)?
        .lines()
        .map(PathBuf::from)
        .collect();
    if files.len() != n {
        return Err(format!("nix-instantiate gave {} paths, not {n}", files.len()).into());
    }
    Ok(files)
}

/// Times `nix-store --realise -j2` of `drvs`; milliseconds per build.
fn nix_realise(drvs: &[PathBuf], sandboxed: bool) -> Result<f64, Error> {
    let started = Instant::now();
    let status = Command::new("nix-store")
        .args(["--realise", "-j", "2", "--option", "sandbox"])
        .arg(if sandboxed { "true" } else { "false" })
        .args(drvs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("nix-store --realise failed".into());
    }
    Ok(per_drv(started.elapsed(), drvs.len()))
}
