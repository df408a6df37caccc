//! Trivial builds through the real `larder build`, against Nix 2.8
//! building the very same `.drv` files in the same run.
//!
//! Figures (one JSON object per line, for `cargo xtask bench`):
//! - 200 independent derivations, `-j2`, with and without the sandbox:
//!   milliseconds per derivation, larder against `nix-store --realise`.
//! - A DAG (layers of 10, each node using two of the layer below) at
//!   N = 100, 1,000, 5,000 and 10,000, `-j2`, no sandbox: milliseconds per
//!   derivation and the peak memory of the `larder` process, against Nix at
//!   100 and 1,000; and how the time per derivation at the larger N
//!   compares with N = 100 (DESIGN.md: flat, within 1.2x), and at 10,000
//!   with 1,000.
//!
//! The derivations are those of Nix's performance peer
//! (`peer/nix/bench-nix-build.sh`): `/bin/sh -c 'echo $name ... > $out'`,
//! named after a fresh seed per run so that nothing is valid yet. This
//! program writes them itself with `larder-store-core`; when Nix is
//! installed it also instantiates them with `nix-instantiate` (same seed)
//! and checks that the `.drv` paths are the same, so both tools build
//! byte-identical files. larder builds into a fresh store root each run,
//! its time including reading and adding the derivations; Nix's is the
//! `nix-store --realise` of already-instantiated derivations.
//!
//! Build figures count from larder's first `building` line, which comes
//! after it has added the `.drv` files to its fresh store (Nix's were
//! added by `nix-instantiate`, untimed); a second figure gives larder's
//! whole run. Peak memory is the `VmHWM` of the process (its resident high-water
//! mark), read from `/proc` every 2 ms while it runs.
//!
//! On ext4 without a journal (this project's machines) every inode deleted
//! in the last minute (six while its inode table is not written back) slows
//! down each file creation, and both tools delete files: Nix its build
//! folders, chroots and lock files as it goes, larder its lock files when a
//! run ends. So each measured run of the independent builds, of either
//! tool, starts on a settled file system (`sync`, then 65 s), and so does
//! each size of larder's DAG series; not with `--quick` or `--no-settle`.
//! Every larder run comes before every Nix run, on the same derivations.
//! Each figure is the median of `R` runs (3 unless `--reps`).
//!
//! Usage: `cli_build_bench [--quick] [--larder PATH] [--reps R] [--sizes
//! 100,1000,...] [--no-settle]`. The `larder` binary defaults to the one
//! beside this example's folder (`target/release/larder`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use larder_store_core::derivation::{DerivationOutput, HashModuloCache};
use larder_store_core::{Derivation, StoreDir, StorePath};

/// Independent derivations of the first figure.
const INDEPENDENT: usize = 200;
/// Width of a DAG layer, as in the peer's script.
const WIDTH: usize = 10;
/// Sizes at which Nix is measured too (larger ones take Nix minutes).
const NIX_SIZES: [usize; 2] = [100, 1_000];
/// The peer, named in every figure (its value is `null` when Nix is not
/// installed).
const PEER: Option<&str> = Some("nix-store --realise (Nix 2.8)");
/// A larder run longer than this ends the scaling series.
const SCALING_BUDGET: Duration = Duration::from_secs(150);

fn main() -> Result<()> {
    let options = Options::parse()?;
    let nix = Nix::detect();
    if nix.is_none() {
        println!(
            "cli_build_bench: Nix (nix-instantiate, nix-store) is not installed: peer figures are missing"
        );
    }
    let sandbox = sandbox_reason();
    if let Some(reason) = &sandbox {
        println!(
            "cli_build_bench: the sandbox is not available ({reason}): sandboxed figures skipped"
        );
    }
    let work = tempfile::Builder::new().prefix("build-bench").tempdir()?;
    let bench = Bench {
        larder: options.larder.clone(),
        nix,
        work: work.path().to_path_buf(),
    };

    let modes: Vec<bool> = [false, true]
        .into_iter()
        .filter(|&sandboxed| !sandboxed || sandbox.is_none())
        .collect();

    // Every larder run first, then Nix's on the same derivations. Each
    // measured run of the independent builds starts on a settled file
    // system (`settle_file_system`): Nix deletes its build folders, chroots
    // and lock files as it goes, and a larder run its lock files when it
    // ends, and either would slow down the file creation of the run after.
    let mut independent = Vec::new();
    for &sandboxed in &modes {
        for _ in 0..options.reps {
            let set = bench.derivations(Shape::Independent, INDEPENDENT)?;
            if options.settle {
                settle_file_system()?;
            }
            let run = bench.larder(&set, sandboxed)?;
            independent.push((sandboxed, set, run));
        }
    }
    let mut dag = Vec::new();
    for &n in &options.sizes {
        let set = bench.derivations(Shape::Dag, n)?;
        // Each run deletes its lock files when it ends (two per
        // derivation): the flatness series compares sizes, so each size
        // starts on a settled file system.
        if options.settle {
            settle_file_system()?;
        }
        // The median run counts: of `reps` at the small sizes, the base of
        // the flatness figures, and of 3 at the large ones.
        let reps = if n <= 1_000 {
            options.reps
        } else {
            options.reps.min(3)
        };
        let mut runs = Vec::with_capacity(reps);
        for _ in 0..reps {
            runs.push(bench.larder(&set, false)?);
        }
        runs.sort_by_key(|r| r.wall);
        let run = runs.swap_remove(runs.len() / 2);
        let over_budget = run.wall > SCALING_BUDGET;
        dag.push((n, set, run));
        if over_budget {
            println!("cli_build_bench: N={n} took over {SCALING_BUDGET:?}, larger N skipped");
            break;
        }
    }

    for &sandboxed in &modes {
        let mut ours = Vec::new();
        let mut whole = Vec::new();
        let mut theirs = Vec::new();
        for (_, set, run) in independent.iter().filter(|(s, ..)| *s == sandboxed) {
            ours.push(run.building_per_drv(INDEPENDENT));
            whole.push(run.per_drv(INDEPENDENT));
            if let Some(nix) = &bench.nix {
                if options.settle {
                    settle_file_system()?;
                }
                theirs.push(nix.realise(set, sandboxed)?.per_drv(INDEPENDENT));
            }
        }
        let (label, target) = if sandboxed {
            ("sandboxed", "≤ 3 ms/drv (Nix: ~12)")
        } else {
            ("no sandbox", "≤ 2 ms/drv (Nix: ~6)")
        };
        let peer = (!theirs.is_empty()).then(|| median(&theirs));
        figure(
            &format!("{INDEPENDENT} trivial independent builds, -j2, {label}"),
            median(&ours),
            "ms/drv",
            PEER,
            peer,
            target,
        );
        figure(
            &format!("same, whole larder build (adding the {INDEPENDENT} .drv files too), {label}"),
            median(&whole),
            "ms/drv",
            PEER,
            peer,
            "",
        );
    }
    let mut per_drv_at = BTreeMap::new();
    for (n, set, run) in dag {
        let peer = match &bench.nix {
            Some(nix) if NIX_SIZES.contains(&n) => Some(nix.realise(&set, false)?),
            _ => None,
        };
        figure(
            &format!("trivial DAG builds, N={n}, -j2, no sandbox"),
            run.building_per_drv(n),
            "ms/drv",
            PEER,
            peer.as_ref().map(|p| p.per_drv(n)),
            "flat in N",
        );
        figure(
            &format!("same, whole larder build (adding the .drv files too), N={n}"),
            run.per_drv(n),
            "ms/drv",
            PEER,
            peer.as_ref().map(|p| p.per_drv(n)),
            "",
        );
        figure(
            &format!("peak memory of larder build, N={n}"),
            run.peak_mib(),
            "MiB",
            PEER,
            peer.as_ref().map(Run::peak_mib),
            if n == 5_000 { "< 100 MiB" } else { "" },
        );
        per_drv_at.insert(n, run.per_drv(n));
    }
    // Against N = 100 (DESIGN.md) and, for the largest, against 1,000.
    for (base_n, from) in [(100, 1_001), (1_000, 10_000)] {
        let Some(&base) = per_drv_at.get(&base_n) else {
            continue;
        };
        for (&n, &per_drv) in per_drv_at.range(from..) {
            figure(
                &format!("time per derivation, N={n} against N={base_n}"),
                per_drv / base,
                "x",
                None,
                None,
                "≤ 1.2x",
            );
        }
    }
    Ok(())
}

struct Options {
    larder: PathBuf,
    reps: usize,
    sizes: Vec<usize>,
    /// Wait for the file system to forget recent deletions first.
    settle: bool,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut larder = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("this example lives in target/<profile>/examples")?
            .join("larder");
        let mut reps = 3;
        let mut sizes = vec![100, 1_000, 5_000, 10_000];
        let mut settle = true;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    reps = 1;
                    sizes = vec![100, 1_000];
                    settle = false;
                }
                "--no-settle" => settle = false,
                "--larder" => larder = args.next().context("--larder PATH")?.into(),
                "--reps" => reps = args.next().context("--reps R")?.parse()?,
                "--sizes" => {
                    sizes = args
                        .next()
                        .context("--sizes N,N,...")?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                other => bail!(
                    "unknown argument '{other}'; usage: cli_build_bench [--quick] [--larder PATH] \
                     [--reps R] [--sizes N,N,...] [--no-settle]"
                ),
            }
        }
        if !larder.exists() {
            bail!(
                "no larder binary at '{}' (build it, or pass --larder PATH)",
                larder.display()
            );
        }
        Ok(Self {
            larder,
            reps: reps.max(1),
            sizes,
            settle,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Independent,
    Dag,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Independent => "independent",
            Self::Dag => "dag",
        }
    }

    /// The nodes that node `i` uses, as in the peer's `bench.nix`.
    fn inputs(self, i: usize) -> Vec<usize> {
        let (layer, pos) = (i / WIDTH, i % WIDTH);
        match self {
            Self::Dag if layer > 0 => {
                let below = (layer - 1) * WIDTH;
                vec![below + pos, below + (pos + 1) % WIDTH]
            }
            _ => vec![],
        }
    }
}

/// One set of fresh derivations: the `.drv` files larder is given and,
/// when Nix is installed, the same derivations in Nix's store.
struct DrvSet {
    files: Vec<PathBuf>,
    nix_drvs: Option<Vec<String>>,
}

struct Bench {
    larder: PathBuf,
    nix: Option<Nix>,
    work: PathBuf,
}

impl Bench {
    /// `n` derivations of `shape` named after a fresh seed, written as
    /// `.drv` files (and instantiated by Nix, which must agree).
    fn derivations(&self, shape: Shape, n: usize) -> Result<DrvSet> {
        let seed = format!(
            "{}l",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let dir = self.work.join(format!("drvs-{seed}"));
        fs::create_dir_all(&dir)?;
        let store_dir = StoreDir::default();
        let mut drvs: Vec<(StorePath, Derivation)> = Vec::with_capacity(n);
        let mut outs: Vec<String> = Vec::with_capacity(n);
        let mut files = Vec::with_capacity(n);
        let mut cache = HashModuloCache::new(store_dir.clone());
        for i in 0..n {
            let inputs = shape.inputs(i);
            let drv = trivial(&store_dir, &seed, i, &inputs, &drvs, &outs, &mut cache)?;
            let path = drv.drv_path(&store_dir);
            let out = drv
                .output_paths(&store_dir)
                .remove("out")
                .flatten()
                .context("a trivial derivation has its output path")?;
            outs.push(store_dir.display(&out));
            let file = dir.join(path.to_string());
            fs::write(&file, drv.to_aterm(&store_dir))?;
            files.push(file);
            drvs.push((path, drv));
        }
        let nix_drvs = match &self.nix {
            Some(nix) => {
                let theirs = nix.instantiate(&self.work, shape, n, &seed)?;
                let ours: Vec<String> = drvs.iter().map(|(p, _)| store_dir.display(p)).collect();
                if theirs != ours {
                    bail!(
                        "nix-instantiate made other .drv files than larder's generator \
                         (first: {:?} against {:?})",
                        theirs.first(),
                        ours.first()
                    );
                }
                Some(theirs)
            }
            None => None,
        };
        Ok(DrvSet { files, nix_drvs })
    }

    /// `larder build -j2` of `set` into a fresh store.
    fn larder(&self, set: &DrvSet, sandboxed: bool) -> Result<Run> {
        // Kept until the whole work folder goes at the end: deleting a
        // store's thousands of files between runs would slow the next run
        // down (on ext4 without a journal, every new inode is checked
        // against each one deleted in the last half minute).
        let root = tempfile::Builder::new()
            .prefix("store")
            .tempdir_in(&self.work)?
            .keep();
        let mut cmd = Command::new(&self.larder);
        cmd.env_remove("LARDER_STORE")
            .env("RUST_LOG", "warn")
            .arg("--store")
            .arg(&root)
            .args(["build", "-j2"]);
        if !sandboxed {
            cmd.arg("--no-sandbox");
        }
        cmd.args(&set.files);
        measure(&mut cmd)
    }
}

/// The peer's derivation: what `derivation { name; system; builder =
/// "/bin/sh"; args = [ "-c" "echo $name <inputs> > $out" ]; }` gives.
fn trivial(
    store_dir: &StoreDir,
    seed: &str,
    i: usize,
    inputs: &[usize],
    drvs: &[(StorePath, Derivation)],
    outs: &[String],
    cache: &mut HashModuloCache,
) -> Result<Derivation> {
    let name = format!("bench-{seed}-{i}");
    let mut drv = Derivation::new(&name)?;
    drv.system = "x86_64-linux".to_owned();
    drv.builder = "/bin/sh".to_owned();
    let refs: Vec<&str> = inputs.iter().map(|&j| outs[j].as_str()).collect();
    drv.args = vec![
        "-c".to_owned(),
        format!("echo $name {} > $out", refs.join(" ")),
    ];
    for (key, value) in [
        ("builder", "/bin/sh"),
        ("name", name.as_str()),
        ("out", ""),
        ("system", "x86_64-linux"),
    ] {
        drv.env.insert(key.to_owned(), value.to_owned());
    }
    drv.insert_output("out", DerivationOutput::Deferred)?;
    let known: BTreeMap<&StorePath, &Derivation> =
        inputs.iter().map(|&j| (&drvs[j].0, &drvs[j].1)).collect();
    for &j in inputs {
        drv.input_drvs
            .insert(drvs[j].0.clone(), ["out".to_owned()].into());
    }
    // The inputs' own hashes are in the cache already (each node was
    // hashed when it was made), so only direct inputs are ever read.
    let mut source = |p: &StorePath| -> Result<Derivation, String> {
        known
            .get(p)
            .map(|d| (*d).clone())
            .ok_or_else(|| format!("unknown input {p}"))
    };
    drv.fill_in_output_paths(cache, &mut source)?;
    let path = drv.drv_path(store_dir);
    let mut this = |p: &StorePath| -> Result<Derivation, String> {
        if *p == path {
            return Ok(drv.clone());
        }
        source(p)
    };
    cache.input_hash(&path, &mut this)?;
    Ok(drv)
}

/// Nix 2.8, run as the peer's scripts run it (`peer/nix/env.sh`).
struct Nix;

/// The peer's expression (`bench-nix-build.sh`).
const BENCH_NIX: &str = r#"{ n, seed, shape }:
let
  system = builtins.currentSystem;
  mk = i: deps: derivation {
    name = "bench-${seed}-${toString i}";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" ("echo $name " + builtins.concatStringsSep " " (map toString deps) + " > $out") ];
  };
  width = 10;
  nodes = builtins.genList (i:
    if shape == "independent" then mk i [ ]
    else
      let layer = i / width; pos = i - layer * width; below = (layer - 1) * width; in
      if layer == 0 then mk i [ ]
      else mk i [ (builtins.elemAt nodes (below + pos))
                  (builtins.elemAt nodes (below + (pos + 1 - ((pos + 1) / width) * width))) ]
  ) n;
in nodes
"#;

impl Nix {
    fn detect() -> Option<Self> {
        let works = |prog: &str| {
            Command::new(prog)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        (works("nix-instantiate") && works("nix-store")).then_some(Nix)
    }

    fn command(&self, prog: &str) -> Command {
        let mut cmd = Command::new(prog);
        cmd.env(
            "NIX_CONFIG",
            "experimental-features = nix-command\nsubstituters =\nbuild-users-group =\n\
             sandbox-paths = /bin/sh=/bin/busybox\nsandbox-fallback = false\nwarn-dirty = false",
        )
        .env("NIX_PATH", "")
        .env_remove("NIX_REMOTE");
        cmd
    }

    fn instantiate(&self, work: &Path, shape: Shape, n: usize, seed: &str) -> Result<Vec<String>> {
        let expr = work.join("bench.nix");
        if !expr.exists() {
            fs::write(&expr, BENCH_NIX)?;
        }
        let out = self
            .command("nix-instantiate")
            .args(["--arg", "n", &n.to_string()])
            .args(["--argstr", "shape", shape.name()])
            .args(["--argstr", "seed", seed])
            .arg(&expr)
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("nix-instantiate failed: {}", out.status);
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// `nix-store --realise -j2` of `set`'s derivations.
    fn realise(&self, set: &DrvSet, sandboxed: bool) -> Result<Run> {
        let drvs = set
            .nix_drvs
            .as_ref()
            .context("the set was made without Nix")?;
        let mut cmd = self.command("nix-store");
        cmd.args(["--realise", "-j2", "--option", "sandbox"])
            .arg(if sandboxed { "true" } else { "false" })
            .args(drvs);
        measure(&mut cmd)
    }
}

/// One timed run of a build command.
struct Run {
    wall: Duration,
    /// From the first `building` line to the end (the whole run when no
    /// such line was seen).
    building: Duration,
    /// Peak resident memory in KiB.
    peak_kib: u64,
}

impl Run {
    fn per_drv(&self, n: usize) -> f64 {
        self.wall.as_secs_f64() * 1e3 / n as f64
    }

    fn building_per_drv(&self, n: usize) -> f64 {
        self.building.as_secs_f64() * 1e3 / n as f64
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

/// How long an inode deleted on ext4 without a journal slows down every
/// file creation in its group once its inode table block is written back
/// (the kernel's `recently_deleted`: 60 s, or 300 s while the block is
/// dirty), plus a margin.
const SETTLE: Duration = Duration::from_secs(65);

/// Writes everything back and waits out [`SETTLE`], so that files deleted
/// before the bench (by tests, earlier benches, anything) tax neither
/// tool's builds: both start from the same quiet file system.
fn settle_file_system() -> Result<()> {
    println!(
        "cli_build_bench: letting the file system forget recent deletions ({} s)",
        SETTLE.as_secs()
    );
    let status = Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    std::thread::sleep(SETTLE);
    Ok(())
}

/// Runs `cmd` to its end, timing it and watching its peak memory; fails
/// (with its last words) when it fails. The time of the first `building`
/// line on its standard error is kept: what larder does before it (open
/// the store, add the `.drv` files) is not part of building.
fn measure(cmd: &mut Command) -> Result<Run> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let reader = std::thread::spawn(move || {
        let mut first_build = None;
        let mut tail = std::collections::VecDeque::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if first_build.is_none() && line.starts_with("building '") {
                first_build = Some(Instant::now());
            }
            if tail.len() == 5 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        (first_build, tail)
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kib) = vm_hwm(&status_file) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let end = Instant::now();
    let (first_build, tail) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stderr reader panicked"))?;
    if !status.success() {
        bail!(
            "{:?} failed ({status}):\n{}",
            cmd.get_program(),
            Vec::from(tail).join("\n")
        );
    }
    Ok(Run {
        wall: end - start,
        building: end - first_build.unwrap_or(start),
        peak_kib,
    })
}

/// The `VmHWM` line of a `/proc/PID/status` file, in KiB.
fn vm_hwm(status_file: &str) -> Option<u64> {
    let text = fs::read_to_string(status_file).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Why `larder build` cannot use the sandbox here, if it cannot.
fn sandbox_reason() -> Option<String> {
    if let Err(error) = larder_builder_linux_chroot::check_support() {
        return Some(error.to_string());
    }
    larder_builder_linux_chroot::default_sandbox_paths()
        .err()
        .map(|e| e.to_string())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Prints one figure as the JSON line `cargo xtask bench` reads.
fn figure(
    name: &str,
    value: f64,
    unit: &str,
    peer: Option<&str>,
    peer_value: Option<f64>,
    target: &str,
) {
    let mut object = serde_json::json!({
        "name": name,
        "value": (value * 1e4).round() / 1e4,
        "unit": unit,
        "target": target,
    });
    if let Some(peer) = peer {
        object["peer"] = peer.into();
        object["peer_value"] = peer_value.map(|v| (v * 1e4).round() / 1e4).into();
    }
    println!("{object}");
}
