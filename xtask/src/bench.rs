//! `cargo xtask bench`: every figure the project claims, each printed beside
//! a peer measured in the same run, and the ratio between them.
//!
//! Peers: Nix 2.8 from Debian (`nix hash path`), `openssl dgst -sha256` for
//! one SHA-256 stream, and larder's own figures where the claim is absolute.
//! A missing peer is said plainly, never guessed.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::run::{available, cargo, exec, output};

/// One row of the final table.
struct Row {
    figure: String,
    larder: String,
    peer: String,
    ratio: String,
    target: String,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: cargo xtask bench [--quick]"),
    };
    let reps = if quick { 1 } else { 3 };
    exec(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "larder-cli",
        "-p",
        "larder-store-core",
        "-p",
        "larder-pathlocks",
        "-p",
        "larder-builder-linux-chroot",
        "--examples",
        "--bins",
    ]))?;
    let release = PathBuf::from("target/release");
    let larder = release.join("larder");
    let work = PathBuf::from("target/bench");
    fs::create_dir_all(&work)?;

    // Trivial builds through the real `larder build`, against Nix building
    // the same `.drv` files; N up to 10,000 for the flatness figures. They
    // run first, though listed last: the benches below create and delete
    // tens of thousands of files, and on ext4 without a journal every inode
    // deleted in the last minutes makes each new file slower to create,
    // which would tax whichever tool's build ran next.
    let mut build_rows = Vec::new();
    let build_args: &[&str] = if quick { &["--quick"] } else { &[] };
    example_rows(
        &release.join("examples/cli_build_bench"),
        build_args,
        &mut build_rows,
    )?;

    let mut rows = Vec::new();
    let scale = if quick { 10 } else { 1 };
    // The folders are named by size, so a `--quick` run's smaller trees
    // are never measured as the full ones.
    let large_mb = 200 / scale;
    let large = work.join(format!("large-files-{large_mb}mb"));
    generate_large_files(&large, large_mb)?;
    let small_count = 20_000 / scale;
    let small = work.join(format!("small-files-{small_count}"));
    generate_small_files(&small, small_count)?;
    for (label, tree) in [("large files", &large), ("small files", &small)] {
        nar_hash_rows(&larder, label, tree, &work, reps, &mut rows)?;
    }
    let refscan_mb = if quick { "32" } else { "256" };
    example_rows(
        &release.join("examples/refscan_bench"),
        &[refscan_mb],
        &mut rows,
    )?;
    lock_rows(&release.join("examples/lock_bench"), &mut rows)?;
    let sandbox_n = if quick { "20" } else { "200" };
    example_rows(
        &release.join("examples/sandbox_bench"),
        &[sandbox_n],
        &mut rows,
    )?;
    rows.extend(build_rows);

    println!("\n{}", render(&rows));
    println!("machine: {}", machine()?);
    Ok(())
}

/// NAR hashing of `tree`: larder against `nix hash path`, and larder's
/// SHA-256 of the NAR bytes against `openssl dgst -sha256`.
fn nar_hash_rows(
    larder: &Path,
    label: &str,
    tree: &Path,
    work: &Path,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let nar = work.join("tree.nar");
    let dump = fs::File::create(&nar)?;
    let status = Command::new(larder)
        .args(["nar", "dump"])
        .arg(tree)
        .stdout(dump)
        .status()?;
    if !status.success() {
        bail!("larder nar dump {} failed", tree.display());
    }
    let size = fs::metadata(&nar)?.len() as f64;
    let mb = size / 1e6;

    let ours = best_of(reps, Command::new(larder).args(["hash", "path"]).arg(tree))?;
    let nix = if available("nix", &["--version"]) {
        Some(best_of(
            reps,
            Command::new("nix")
                .args([
                    "--extra-experimental-features",
                    "nix-command",
                    "hash",
                    "path",
                ])
                .arg(tree),
        )?)
    } else {
        None
    };
    rows.push(throughput_row(
        &format!("NAR hash, {label} ({mb:.0} MB)"),
        mb,
        ours,
        nix.map(|t| ("nix hash path", t)),
        "≥ 1.0x Nix",
    ));

    let ours_stream = best_of(reps, Command::new(larder).args(["hash", "file"]).arg(&nar))?;
    let openssl = if available("openssl", &["version"]) {
        Some(best_of(
            reps,
            Command::new("openssl").args(["dgst", "-sha256"]).arg(&nar),
        )?)
    } else {
        None
    };
    rows.push(throughput_row(
        &format!("SHA-256 of that NAR file ({mb:.0} MB)"),
        mb,
        ours_stream,
        openssl.map(|t| ("openssl dgst -sha256", t)),
        "for scale",
    ));
    rows.push(Row {
        figure: format!("NAR hash / one SHA-256 stream, {label}"),
        larder: format!("{:.2}", ours_stream.as_secs_f64() / ours.as_secs_f64()),
        peer: "larder's own SHA-256 of the NAR".to_owned(),
        ratio: String::new(),
        target: "≥ 0.90".to_owned(),
    });
    fs::remove_file(&nar)?;
    Ok(())
}

/// Runs a benchmark example that prints one JSON object per figure:
/// `{"name", "value", "unit", "peer"?, "peer_value"?, "target"?}`.
fn example_rows(example: &Path, args: &[&str], rows: &mut Vec<Row>) -> Result<()> {
    let text = output(Command::new(example).args(args))?;
    for line in text.lines().filter(|l| l.contains("skipped")) {
        // A benchmark that cannot run here says why; so does the table.
        rows.push(Row {
            figure: example
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            larder: "skipped".to_owned(),
            peer: line.trim().to_owned(),
            ratio: String::new(),
            target: String::new(),
        });
    }
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let figure = parse_figure(line)
            .with_context(|| format!("reading a figure of {}: {line}", example.display()))?;
        rows.push(figure);
    }
    Ok(())
}

/// Lock handoff latencies from `larder-pathlocks`' `lock_bench`, which
/// prints `{"name", "median_us", "p99_us", "max_us", "n"}` per figure. The
/// uncontended try-lock is the scale; Nix's own handoff is its 5 s poll
/// interval (`build-poll-interval`), a setting rather than a measurement.
fn lock_rows(example: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let text = output(&mut Command::new(example))?;
    let figures: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let median = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| Some((f["median_us"].as_f64()?, f["max_us"].as_f64()?)))
    };
    let scale = median("try_lock_uncontended").map(|(m, _)| m);
    for (name, label, target) in [
        (
            "handoff_in_process",
            "lock handoff, two goals in one process",
            "< 1 ms median",
        ),
        (
            "handoff_cross_process",
            "lock handoff, two processes (async lock)",
            "well under Nix's 5 s poll",
        ),
        (
            "handoff_cross_process_blocking",
            "lock handoff, two processes (blocking lock)",
            "for scale",
        ),
    ] {
        let Some((med, max)) = median(name) else {
            bail!("{} printed no figure '{name}'", example.display());
        };
        rows.push(Row {
            figure: label.to_owned(),
            larder: format!("median {med:.1} µs, worst {max:.1} µs"),
            peer: scale.map_or_else(
                || "uncontended try-lock: missing".to_owned(),
                |s| format!("uncontended try-lock: {s:.1} µs; Nix: polls every 5 s"),
            ),
            ratio: format!("{} than Nix's poll", speedup(5e6 / med)),
            target: target.to_owned(),
        });
    }
    Ok(())
}

fn parse_figure(line: &str) -> Option<Row> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let unit = value.get("unit").and_then(|u| u.as_str()).unwrap_or("");
    let ours = value.get("value")?.as_f64()?;
    let (peer, ratio) = match (
        value.get("peer").and_then(|p| p.as_str()),
        value.get("peer_value").and_then(serde_json::Value::as_f64),
    ) {
        (Some(peer), Some(theirs)) => (
            format!("{peer}: {theirs:.3} {unit}"),
            if is_memory(unit) {
                lighter(theirs / ours)
            } else {
                speedup(if lower_is_better(unit) {
                    theirs / ours
                } else {
                    ours / theirs
                })
            },
        ),
        (Some(peer), None) => (format!("{peer}: missing"), String::new()),
        _ => ("none (absolute target)".to_owned(), String::new()),
    };
    Some(Row {
        figure: name,
        larder: format!("{ours:.3} {unit}"),
        peer,
        ratio,
        target: value
            .get("target")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_owned(),
    })
}

fn throughput_row(
    figure: &str,
    mb: f64,
    ours: Duration,
    peer: Option<(&str, Duration)>,
    target: &str,
) -> Row {
    let rate = |d: Duration| mb / d.as_secs_f64();
    let (peer, ratio) = match peer {
        Some((name, theirs)) => (
            format!("{name}: {:.0} MB/s", rate(theirs)),
            speedup(theirs.as_secs_f64() / ours.as_secs_f64()),
        ),
        None => ("peer missing (not installed)".to_owned(), String::new()),
    };
    Row {
        figure: figure.to_owned(),
        larder: format!("{:.0} MB/s", rate(ours)),
        peer,
        ratio,
        target: target.to_owned(),
    }
}

/// Whether smaller figures in `unit` are better (times, sizes), as opposed
/// to throughputs.
fn lower_is_better(unit: &str) -> bool {
    matches!(
        unit,
        "ns" | "µs" | "us" | "ms" | "s" | "ms/drv" | "MiB" | "MB"
    )
}

/// Whether `unit` measures memory.
fn is_memory(unit: &str) -> bool {
    matches!(unit, "MiB" | "MB" | "KiB" | "GiB")
}

/// A ratio of larder's speed to the peer's, said in words so that its
/// direction is never in doubt.
fn speedup(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{} faster", times(ratio))
    } else {
        format!("{} slower", times(1.0 / ratio))
    }
}

/// A ratio of the peer's memory to larder's, in words.
fn lighter(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{} less memory", times(ratio))
    } else {
        format!("{} more memory", times(1.0 / ratio))
    }
}

/// `2.27x`, or `961x` once the decimals say nothing.
fn times(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}x")
    } else {
        format!("{ratio:.2}x")
    }
}

/// The fastest of `reps` runs, after one warm-up run.
fn best_of(reps: usize, cmd: &mut Command) -> Result<Duration> {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut best = Duration::MAX;
    for i in 0..=reps {
        let start = Instant::now();
        let status = cmd.status()?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("{} failed: {status}", crate::run::render(cmd));
        }
        if i > 0 {
            best = best.min(elapsed);
        }
    }
    Ok(best)
}

/// About `mb` megabytes in 10 MB files of incompressible bytes, some
/// executable, with a few symlinks: the shape of a `lib` directory.
fn generate_large_files(dir: &Path, mb: usize) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("lib"))?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..mb.div_ceil(10) {
        let path = tmp.join(format!("lib/libbench{i}.so"));
        fs::write(&path, rng.bytes(10_000_000))?;
        std::os::unix::fs::symlink(
            format!("libbench{i}.so"),
            tmp.join(format!("lib/libbench{i}.so.1")),
        )?;
    }
    fs::rename(&tmp, dir)?;
    Ok(())
}

/// `count` files of 1 to 19 KiB in directories of 500.
fn generate_small_files(dir: &Path, count: usize) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for i in 0..count {
        let sub = tmp.join(format!("d{:03}", i / 500));
        if i % 500 == 0 {
            fs::create_dir_all(&sub)?;
        }
        let len = 1024 * (1 + (rng.next() % 19) as usize);
        fs::write(sub.join(format!("f{i:05}")), rng.bytes(len))?;
    }
    fs::rename(&tmp, dir)?;
    Ok(())
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn render(rows: &[Row]) -> String {
    let mut s = String::from(
        "| figure | larder | peer (same run) | larder vs peer | target |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.figure, r.larder, r.peer, r.ratio, r.target
        );
    }
    s
}

fn machine() -> Result<String> {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Ok(format!("{cpu}, {cores} cores"))
}
