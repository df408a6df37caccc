//! Faults: `larder build` killed (SIGKILL) at many points of a build, and
//! builders that misbehave.
//!
//! - Crash safety: a DAG of small derivations (some chatty, some slow) is
//!   built once without interruption as the reference, then built again
//!   into fresh stores, each run killed after a delay spread over the
//!   reference run's wall time. After every kill the store must pass
//!   `larder verify --check-contents` (and Nix's, when installed), every
//!   valid path must have the reference run's NAR hash, no builder may
//!   outlive the killed worker, and the next run must complete over what
//!   the killed one left (lock files, build folders, staged outputs). Where
//!   each kill landed is read from what it left behind.
//! - Misbehaving builders, built with `--keep-going` beside a well-behaved
//!   derivation, with and without the sandbox: a daemon, a full disk, a log
//!   flood, silence, a builder that ignores SIGTERM, a fifo, a setuid file,
//!   a symlink out of the store. Each ends with its failure kind (or
//!   succeeds), the good derivation is built, and nothing is left running
//!   or lying around.
//!
//! The sandbox needs root or user namespaces and a static busybox at
//! `/bin/busybox`; the full disk needs root (a small tmpfs in a private
//! mount namespace). Without them the parts say why they skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use larder_local_store::LocalStore;
use larder_store_core::derivation::HashModuloCache;
use larder_store_core::{Derivation, StoreDir, StorePath};
use serde_json::{Value, json};

use crate::support::{larder, run, stdout_of};

// ---------------------------------------------------------------------------
// Derivations written as JSON, with their output paths computed here.

/// A set of derivation JSON files in one folder.
struct Drvs {
    dir: PathBuf,
    store_dir: StoreDir,
    cache: HashModuloCache,
    known: HashMap<StorePath, Derivation>,
    files: Vec<PathBuf>,
    marker: String,
}

/// One derivation of a [`Drvs`].
#[derive(Clone)]
struct Node {
    drv: String,
    out: String,
}

impl Drvs {
    /// Derivations in `dir`; every builder gets `FAULTS_MARKER=marker` in
    /// its environment, which its processes inherit, so that any process
    /// left over can be found.
    fn new(dir: &Path, marker: &str) -> Drvs {
        fs::create_dir_all(dir).unwrap();
        let store_dir = StoreDir::default();
        Drvs {
            dir: dir.to_path_buf(),
            cache: HashModuloCache::new(store_dir.clone()),
            store_dir,
            known: HashMap::new(),
            files: Vec::new(),
            marker: marker.to_owned(),
        }
    }

    /// Adds a `/bin/sh -c script` derivation with one output `out`; each
    /// input's output path is in `$in0`, `$in1`, ...
    fn add(&mut self, name: &str, script: &str, inputs: &[&Node]) -> Node {
        let mut env = json!({
            "PATH": "/usr/bin:/bin",
            "builder": "/bin/sh",
            "name": name,
            "out": "",
            "system": "x86_64-linux",
            "FAULTS_MARKER": self.marker,
        });
        let mut drvs = serde_json::Map::new();
        for (i, input) in inputs.iter().enumerate() {
            env[format!("in{i}")] = Value::from(input.out.clone());
            drvs.insert(
                input.drv.trim_start_matches("/nix/store/").to_owned(),
                json!({ "outputs": ["out"] }),
            );
        }
        let text = json!({
            "args": ["-c", script],
            "builder": "/bin/sh",
            "env": env,
            "inputs": { "drvs": drvs, "srcs": [] },
            "name": name,
            "outputs": { "out": {} },
            "system": "x86_64-linux",
            "version": 4,
        })
        .to_string();
        let mut drv = Derivation::from_json(&text, &self.store_dir).unwrap();
        let known = &self.known;
        drv.fill_in_output_paths(&mut self.cache, &mut |p: &StorePath| {
            known.get(p).cloned().ok_or("an input not added yet")
        })
        .unwrap();
        let drv_path = drv.drv_path(&self.store_dir);
        let out = drv.output_paths(&self.store_dir)["out"].clone().unwrap();
        let file = self.dir.join(format!("{name}.json"));
        fs::write(&file, drv.to_json_string()).unwrap();
        self.files.push(file);
        let node = Node {
            drv: self.store_dir.display(&drv_path),
            out: self.store_dir.display(&out),
        };
        self.known.insert(drv_path, drv);
        node
    }
}

/// The crash test's DAG: four layers of six derivations, each reading two
/// of the layer below. Outputs are folders (a file, a subfolder, a
/// symlink, references to the inputs) or single files; some builders print
/// hundreds of lines, some sleep a little, so that kills land while
/// builders run, while outputs are registered and in between.
fn crash_dag(drvs: &mut Drvs) -> Vec<Node> {
    let mut all: Vec<Node> = Vec::new();
    let mut below: Vec<Node> = Vec::new();
    for layer in 0..4 {
        let mut this = Vec::new();
        for k in 0..6 {
            let name = format!("node-{layer}-{k}");
            let inputs: Vec<&Node> = if below.is_empty() {
                vec![]
            } else {
                vec![&below[k], &below[(k + 1) % below.len()]]
            };
            let mut script = String::new();
            if (layer + k) % 3 == 0 {
                script.push_str(
                    "i=0; while [ $i -lt 300 ]; do echo \"chatter $i of $name\"; i=$((i+1)); done; ",
                );
            }
            if k == 1 && (layer == 1 || layer == 2) {
                script.push_str("sleep 0.3; ");
            }
            if k % 3 == 2 {
                // A single file.
                script.push_str("{ echo \"$name\"; ");
                for i in 0..inputs.len() {
                    script.push_str(&format!("echo \"$in{i}\"; "));
                }
                script.push_str("} > $out");
            } else {
                script.push_str("mkdir -p $out/sub; echo \"$name\" > $out/data; ");
                for i in 0..inputs.len() {
                    script.push_str(&format!(
                        "echo \"$in{i}\" >> $out/refs; cat \"$in{i}\"/data >> $out/data 2>/dev/null || cat \"$in{i}\" >> $out/data; "
                    ));
                }
                script.push_str(
                    "i=0; while [ $i -lt 20 ]; do echo \"$i $name\" > $out/sub/f$i; i=$((i+1)); done; \
                     ln -s data $out/link; chmod +x $out/sub/f0",
                );
            }
            this.push(drvs.add(&name, &script, &inputs));
        }
        all.extend(this.iter().cloned());
        below = this;
    }
    all
}

// ---------------------------------------------------------------------------
// Environment checks and inspection.

/// Whether Nix's `nix-store` is installed.
fn have_nix() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the sandbox cannot run here, if it cannot.
fn sandbox_unavailable() -> Option<String> {
    if let Err(e) = larder_builder_linux_chroot::check_support() {
        return Some(format!("the sandbox needs root or user namespaces: {e}"));
    }
    if let Err(e) = larder_builder_linux_chroot::default_sandbox_paths() {
        return Some(e.to_string());
    }
    None
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Nix's `nix-store --verify --check-contents` on the store at `root`.
fn nix_verify(root: &Path) -> Output {
    run(Command::new("nix-store")
        .env("NIX_CONFIG", "experimental-features = nix-command")
        .env_remove("NIX_REMOTE")
        .arg("--store")
        .arg(format!("local?root={}", root.display()))
        .args(["--verify", "--check-contents"]))
}

/// The processes whose environment or command line holds `marker`.
fn processes_marked(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let needle = marker.as_bytes();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let has = |file: &str| {
            fs::read(entry.path().join(file))
                .is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
        };
        if has("environ") || has("cmdline") {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A zombie waiting for its parent is no running process.
            let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !zombie {
                found.push(format!("{name}: {shown}"));
            }
        }
    }
    found
}

/// Waits up to `limit` for the processes marked with `marker` to be gone,
/// and returns those still there.
fn processes_left(marker: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_marked(marker);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the processes marked with `marker` (a failed test cleans up).
fn kill_marked(marker: &str) {
    for entry in processes_marked(marker) {
        if let Some(pid) = entry
            .split(':')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// What a run left in the store and the build folder, read from the file
/// system before the store is opened again (opening sweeps scratch).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Leftovers {
    /// Build folders (`nix-build-*`) in the temp folder.
    build_dirs: usize,
    /// Outputs staged for registration in the store's scratch area.
    staged: usize,
    /// Other scratch folders (paths being added: the imported `.drv`s).
    scratch: usize,
    /// `.lock` files in the store.
    locks: usize,
    /// `.chroot` folders in the store.
    chroots: usize,
    /// Anything else in the temp folder.
    other_temp: Vec<String>,
}

impl Leftovers {
    fn read(root: &Path, tmp: &Path) -> Leftovers {
        let mut left = Leftovers::default();
        for entry in fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("nix-build-") {
                left.build_dirs += 1;
            } else {
                left.other_temp.push(name);
            }
        }
        let store = root.join("nix/store");
        for entry in fs::read_dir(&store).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                left.locks += 1;
            } else if name.ends_with(".chroot") {
                left.chroots += 1;
            } else if name.starts_with('.') && entry.path().is_dir() {
                for scratch in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                    if scratch.file_name().to_string_lossy().contains("-build-") {
                        left.staged += 1;
                    } else {
                        left.scratch += 1;
                    }
                }
            }
        }
        left
    }

    fn is_clean(&self) -> bool {
        *self == Leftovers::default()
    }
}

/// Every valid path of the store at `root` with its NAR hash.
fn valid_paths(root: &Path) -> BTreeMap<String, String> {
    let store = LocalStore::open(root).unwrap();
    store
        .query_all_valid_paths()
        .unwrap()
        .into_iter()
        .map(|p| {
            let info = store.query_path_info(&p).unwrap().unwrap();
            (store.print_path(&p), info.nar_hash.to_sri())
        })
        .collect()
}

/// Waits for a child for at most `limit`, killing it after.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Crash safety.

/// One `larder build` of the crash DAG.
struct CrashRun<'a> {
    files: &'a [PathBuf],
    sandbox: bool,
}

impl CrashRun<'_> {
    /// The build into the store at `root`, build folders in `tmp`.
    fn command(&self, root: &Path, tmp: &Path) -> Command {
        fs::create_dir_all(tmp).unwrap();
        let mut cmd = larder();
        cmd.arg("--store")
            .arg(root)
            .env("TMPDIR", tmp)
            .args(["build", "-j", "4"]);
        if !self.sandbox {
            cmd.arg("--no-sandbox");
        }
        cmd.args(self.files);
        cmd
    }
}

/// Where a kill landed, judged from what it left.
fn phase_of(left: &Leftovers, valid_outputs: usize, total: usize) -> &'static str {
    if left.staged > 0 {
        "registering outputs"
    } else if left.build_dirs > 0 || left.chroots > 0 {
        "building"
    } else if left.scratch > 0 {
        "importing derivations"
    } else if valid_outputs == 0 {
        "before any build (opening, locking)"
    } else if valid_outputs == total {
        "after the last registration (cleanup, exit)"
    } else {
        "between builds"
    }
}

/// How one series of kill rounds runs.
struct Mode {
    label: &'static str,
    sandbox: bool,
    rounds: u32,
    with_nix: bool,
}

/// Runs the kill rounds of one mode and returns the count of kills by
/// phase.
fn kill_rounds(
    mode: &Mode,
    work: &Path,
    nodes: &[Node],
    files: &[PathBuf],
    marker: &str,
) -> BTreeMap<&'static str, u32> {
    let Mode {
        label,
        sandbox,
        rounds,
        with_nix,
    } = *mode;
    let run_of = CrashRun { files, sandbox };
    let outputs: BTreeSet<String> = nodes.iter().map(|n| n.out.clone()).collect();
    let nodes_total = nodes.len();

    // The reference: one uninterrupted run, timed.
    let reference_root = work.join(format!("{label}-reference"));
    let start = Instant::now();
    let printed = stdout_of(&mut run_of.command(&reference_root, &work.join("tmp")));
    let span = start.elapsed();
    let printed: BTreeSet<String> = printed.lines().map(str::to_owned).collect();
    // Every file is a target.
    let expected_outputs = outputs.clone();
    assert_eq!(printed, expected_outputs, "{label}: the targets' outputs");
    let reference = valid_paths(&reference_root);
    assert!(outputs.iter().all(|o| reference.contains_key(o)));
    eprintln!(
        "faults: {label}: uninterrupted build of {} derivations took {:.0} ms",
        nodes.len(),
        span.as_secs_f64() * 1000.0
    );

    let mut phases: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut stale = Leftovers::default();
    let mut surviving_children = 0;
    let mut next_runs = Duration::ZERO;
    let rounds_started = Instant::now();
    for round in 0..rounds {
        let root = work.join(format!("{label}-{round}"));
        // The killed run's build folders stay in its temp folder, as
        // Nix's do in /tmp; the next run gets a clean one to show that it
        // leaves none.
        let tmp = work.join(format!("{label}-{round}-killed-tmp"));
        let next_tmp = work.join(format!("{label}-{round}-next-tmp"));
        // Delays from 2 % to 95 % of the reference run (the last ones land
        // in the final registrations and cleanup; a busier machine moves
        // them earlier in the build, a quieter one past the exit).
        let delay = span.mul_f64(0.02 + 0.93 * f64::from(round) / f64::from(rounds - 1));
        let mut child = run_of
            .command(&root, &tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();

        // Builders must not outlive the killed worker: they get SIGKILL
        // when it dies, which takes effect at once (the slow ones would
        // sleep 300 ms more). In the sandbox everything the builder started
        // dies with its PID namespace; without it the builder's children
        // (here a `sleep`) outlive it, as they do Nix's unsandboxed builds.
        let mut left_running = processes_left(marker, Duration::from_millis(150));
        kill_marked(marker);
        if !sandbox {
            let before = left_running.len();
            left_running.retain(|p| p.contains(": /bin/sh -c "));
            surviving_children += before - left_running.len();
        }
        assert!(
            left_running.is_empty(),
            "{label} round {round}: builders outlived the killed worker: {left_running:?}"
        );

        let killed_left = Leftovers::read(&root, &tmp);
        let left = killed_left.clone();
        stale.build_dirs += left.build_dirs;
        stale.scratch += left.scratch;
        stale.staged += left.staged;
        stale.locks += left.locks;
        stale.chroots += left.chroots;
        let valid = if root.join("nix/var/nix/db").exists() {
            valid_paths(&root)
        } else {
            BTreeMap::new()
        };
        let valid_outputs = valid.keys().filter(|p| outputs.contains(*p)).count();
        let phase = if status.success() {
            "after the run ended"
        } else {
            phase_of(&left, valid_outputs, nodes_total)
        };
        *phases.entry(phase).or_default() += 1;

        // Every valid path holds the reference run's content.
        for (path, hash) in &valid {
            assert_eq!(
                Some(hash),
                reference.get(path),
                "{label} round {round} ({phase}): '{path}' is valid with other content"
            );
        }
        if root.join("nix/var/nix/db").exists() {
            let check = run(larder()
                .arg("--store")
                .arg(&root)
                .args(["verify", "--check-contents"]));
            assert!(
                check.status.success(),
                "{label} round {round} ({phase}): larder verify fails: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            if with_nix {
                let check = nix_verify(&root);
                assert!(
                    check.status.success(),
                    "{label} round {round} ({phase}): Nix's verify fails: {}",
                    String::from_utf8_lossy(&check.stderr)
                );
            }
        }

        // The next run completes over the leftovers, with the same
        // outputs, and cleans up after itself.
        let next_started = Instant::now();
        let printed = stdout_of(&mut run_of.command(&root, &next_tmp));
        next_runs += next_started.elapsed();
        let printed: BTreeSet<String> = printed.lines().map(str::to_owned).collect();
        assert_eq!(printed, expected_outputs, "{label} round {round} ({phase})");
        let after = valid_paths(&root);
        for path in &outputs {
            assert_eq!(
                after.get(path),
                reference.get(path),
                "{label} round {round} ({phase}): '{path}' after the next run"
            );
        }
        let left = Leftovers::read(&root, &next_tmp);
        // Lock files and chroots of derivations the killed run made valid
        // stay (the next run never locks a valid path), as Nix's do; the
        // next run adds none and leaves nothing else.
        assert!(
            left.build_dirs == 0
                && left.scratch == 0
                && left.staged == 0
                && left.chroots <= killed_left.chroots
                && left.locks <= killed_left.locks
                && left.other_temp.is_empty(),
            "{label} round {round}: the next run left {left:?} (the killed one {killed_left:?})"
        );
        assert!(processes_marked(marker).is_empty());
        fs::remove_dir_all(&root).unwrap_or_else(|_| {
            // Read-only folders of a store: make them writable first.
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(&root)
                .status();
            fs::remove_dir_all(&root).unwrap();
        });
    }
    eprintln!(
        "faults: {label}: {rounds} rounds took {:.1} s, of which the next runs {:.1} s",
        rounds_started.elapsed().as_secs_f64(),
        next_runs.as_secs_f64()
    );
    if !sandbox {
        eprintln!(
            "faults: {label}: {surviving_children} children of builders outlived a killed worker \
             (the builders themselves did not)"
        );
    }
    eprintln!(
        "faults: {label}: the killed runs left {} build folders, {} staged outputs, \
         {} other scratch folders, {} lock files, {} chroots; none blocked the next run",
        stale.build_dirs, stale.staged, stale.scratch, stale.locks, stale.chroots
    );
    phases
}

/// SIGKILLs `larder build` at many points of a 24-derivation DAG, without
/// and (where it can run) with the sandbox.
#[test]
fn killed_builds_leave_a_store_that_verifies_and_the_next_run_completes() {
    let work = tempfile::tempdir().unwrap();
    let marker = format!("faults-crash-{}", std::process::id());
    let mut drvs = Drvs::new(&work.path().join("drvs"), &marker);
    let nodes = crash_dag(&mut drvs);
    let with_nix = have_nix();
    if !with_nix {
        eprintln!("faults: nix-store is not installed: Nix's verify is skipped");
    }
    let started = Instant::now();
    let mut report = Vec::new();
    let mode = Mode {
        label: "no-sandbox",
        sandbox: false,
        rounds: 16,
        with_nix,
    };
    let phases = kill_rounds(&mode, work.path(), &nodes, &drvs.files, &marker);
    report.push(("no-sandbox", phases));
    match sandbox_unavailable() {
        Some(why) => eprintln!("faults: sandbox kill rounds skipped: {why}"),
        None => {
            // The sandbox costs more per build: the first two layers.
            let mode = Mode {
                label: "sandbox",
                sandbox: true,
                rounds: 6,
                with_nix,
            };
            let phases = kill_rounds(&mode, work.path(), &nodes[..12], &drvs.files[..12], &marker);
            report.push(("sandbox", phases));
        }
    }
    for (label, phases) in &report {
        let total: u32 = phases.values().sum();
        eprintln!("faults: {label}: {total} kill points tried: {phases:?}");
    }
    eprintln!(
        "faults: crash test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Misbehaving builders.

/// How a misbehaving build must end.
enum Expect {
    /// It fails, its error holding each of these texts.
    Fails(&'static [&'static str]),
    /// It succeeds; the check looks at the output's real path.
    Succeeds(fn(&Path)),
}

struct Case {
    name: &'static str,
    script: String,
    expect: Expect,
}

fn setuid_stripped(out: &Path) {
    let mode = fs::symlink_metadata(out).unwrap().mode() & 0o7777;
    assert_eq!(
        mode, 0o555,
        "the setuid bit is stripped, the mode canonical"
    );
}

fn symlink_kept(out: &Path) {
    assert_eq!(fs::read_link(out).unwrap(), Path::new("/etc/passwd"));
}

fn good_output(out: &Path) {
    assert_eq!(fs::read_to_string(out).unwrap(), "good\n");
}

fn daemon_output(out: &Path) {
    assert_eq!(fs::read_to_string(out).unwrap(), "forked\n");
}

/// The misbehaving builders of one mode (and a good one). Without the
/// sandbox a daemon that leaves the builder's session (`setsid`) is out of
/// larder's reach, as it is out of Nix's without build users: there the
/// daemon stays in the builder's process group, which is killed when the
/// builder exits. In the sandbox it leaves the session too, and dies with
/// the PID namespace.
fn misbehaving_cases(sandbox: bool, disk: bool) -> Vec<Case> {
    let daemon = if sandbox {
        "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &"
    } else {
        "sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &"
    };
    let mut cases = vec![
        Case {
            name: "good",
            script: "echo good > $out".to_owned(),
            expect: Expect::Succeeds(good_output),
        },
        Case {
            name: "daemon",
            script: format!("{daemon} echo forked > $out"),
            expect: Expect::Succeeds(daemon_output),
        },
        Case {
            name: "flood",
            script: "yes 'a flood of log lines'".to_owned(),
            expect: Expect::Fails(&["killed after writing more than 65536 bytes of log output"]),
        },
        Case {
            name: "silent",
            script: "echo going quiet; sleep 300".to_owned(),
            expect: Expect::Fails(&["timed out after 1 seconds of silence"]),
        },
        Case {
            name: "ignores-sigterm",
            script: "trap '' TERM; while :; do echo tick; sleep 0.2; done".to_owned(),
            expect: Expect::Fails(&["timed out after 4 seconds"]),
        },
        Case {
            name: "fifo",
            script: "mkdir $out; mkfifo $out/pipe".to_owned(),
            expect: Expect::Fails(&["-fifo/pipe': file has an unsupported type (fifo)"]),
        },
        Case {
            name: "setuid",
            script: "echo x > $out; chmod 4755 $out".to_owned(),
            expect: Expect::Succeeds(setuid_stripped),
        },
        Case {
            name: "symlink-out",
            script: "ln -s /etc/passwd $out".to_owned(),
            expect: Expect::Succeeds(symlink_kept),
        },
    ];
    if disk {
        // Writes until the 16 MiB temp file system is full, and at most
        // 64 MiB whatever happens.
        cases.push(Case {
            name: "fills-disk",
            script:
                "dd if=/dev/zero of=$NIX_BUILD_TOP/fill bs=65536 count=1024 && echo fits > $out"
                    .to_owned(),
            expect: Expect::Fails(&[
                "failed with exit code 1",
                "build failure may have been caused by lack of free disk space",
            ]),
        });
    }
    cases
}

/// Builds the misbehaving derivations with `--keep-going` in one mode and
/// checks each outcome and that nothing leaks.
fn misbehaving_builds(sandbox: bool) {
    let label = if sandbox { "sandbox" } else { "no-sandbox" };
    let work = tempfile::tempdir().unwrap();
    let marker = format!("faults-misbehaving-{label}-{}", std::process::id());
    let root = work.path().join("root");
    let tmp = work.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    // A full disk needs a small file system of its own: a tmpfs mounted in
    // a private mount namespace, which only root may make here.
    let disk = is_root() && Path::new("/usr/bin/unshare").exists();
    if !disk {
        eprintln!("faults: {label}: the full-disk builder is skipped: it needs root for a tmpfs");
    }
    let mut drvs = Drvs::new(&work.path().join("drvs"), &marker);
    let cases = misbehaving_cases(sandbox, disk);
    let nodes: Vec<Node> = cases
        .iter()
        .map(|case| drvs.add(case.name, &case.script, &[]))
        .collect();

    let mut build = larder();
    build
        .arg("--store")
        .arg(&root)
        .args(["build", "--keep-going", "-j", "16"])
        .args(["--max-silent-time", "1", "--timeout", "4"])
        .args(["--max-log-size", "65536"]);
    if !sandbox {
        build.arg("--no-sandbox");
    }
    build.args(&drvs.files);
    let left_in_tmp = work.path().join("tmp.left");
    let mut command = if disk {
        let mut shell = Command::new("/usr/bin/unshare");
        shell
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=16m faults \"$0\" || exit 90; \
                 \"$@\"; rc=$?; ls -A \"$0\" > \"$0.left\"; exit $rc",
            )
            .arg(&tmp)
            .arg(build.get_program())
            .args(build.get_args());
        for (key, value) in build.get_envs() {
            match value {
                Some(value) => shell.env(key, value),
                None => shell.env_remove(key),
            };
        }
        shell
    } else {
        build
    };
    command.env("TMPDIR", &tmp);
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    let output = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let Some(status) = status else {
        kill_marked(&marker);
        panic!("{label}: larder build hung:\n{stderr}");
    };
    assert_ne!(
        status.code(),
        Some(90),
        "{label}: mounting the tmpfs failed"
    );

    // Nothing left running, whatever else fails.
    let left_running = processes_left(&marker, Duration::from_secs(1));
    kill_marked(&marker);
    assert!(
        left_running.is_empty(),
        "{label}: processes left running: {left_running:?}"
    );

    let errors: Vec<&str> = stderr
        .split("\nerror: ")
        .skip(1)
        .chain(stderr.strip_prefix("error: "))
        .collect();
    let store = LocalStore::open(&root).unwrap();
    let mut outcomes = Vec::new();
    for (case, node) in cases.iter().zip(&nodes) {
        let valid = store
            .is_valid(&store.parse_path(&node.out).unwrap())
            .unwrap();
        match &case.expect {
            Expect::Succeeds(check) => {
                assert!(
                    stdout.lines().any(|l| l == node.out) && valid,
                    "{label}: '{}' must succeed:\n{stderr}",
                    case.name
                );
                check(&root.join(node.out.trim_start_matches('/')));
                outcomes.push(format!("{}: built", case.name));
            }
            Expect::Fails(texts) => {
                assert!(
                    !valid,
                    "{label}: '{}' failed but its output is valid",
                    case.name
                );
                let error = errors
                    .iter()
                    .find(|e| {
                        // Only an error's first line names its build: the
                        // lines after it may be progress lines of others.
                        let first = e.lines().next().unwrap_or_default();
                        first.contains(&format!("-{}.drv'", case.name))
                            || (case.name == "fifo" && first.contains("-fifo.drv' rejected"))
                    })
                    .unwrap_or_else(|| panic!("{label}: no error for '{}':\n{stderr}", case.name));
                for text in *texts {
                    assert!(
                        error.contains(text),
                        "{label}: the error of '{}' lacks '{text}': {error}",
                        case.name
                    );
                }
                outcomes.push(format!("{}: failed", case.name));
            }
        }
    }
    // Timed-out builds beside others that failed: Nix's 101.
    assert_eq!(status.code(), Some(101), "{label}:\n{stderr}");

    // Nothing lying around: build folders, staged outputs, lock files,
    // chroots.
    let left = Leftovers::read(&root, &tmp);
    assert!(left.is_clean(), "{label}: left behind: {left:?}");
    if disk {
        let listing = fs::read_to_string(&left_in_tmp).unwrap();
        assert_eq!(listing.trim(), "", "{label}: left in the tmpfs");
    }
    stdout_of(
        larder()
            .arg("--store")
            .arg(&root)
            .args(["verify", "--check-contents"]),
    );
    if have_nix() {
        let check = nix_verify(&root);
        assert!(
            check.status.success(),
            "{label}: Nix's verify fails: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    eprintln!(
        "faults: {label}: {} builds in {:.1} s, exit status {}: {}",
        cases.len(),
        elapsed.as_secs_f64(),
        status.code().unwrap_or(-1),
        outcomes.join(", ")
    );
}

/// Misbehaving builders without the sandbox.
#[test]
fn misbehaving_builders_fail_alone_and_leave_nothing_without_the_sandbox() {
    misbehaving_builds(false);
}

/// Misbehaving builders in the sandbox.
#[test]
fn misbehaving_builders_fail_alone_and_leave_nothing_in_the_sandbox() {
    if let Some(why) = sandbox_unavailable() {
        eprintln!("SKIPPED misbehaving builders in the sandbox: {why}");
        return;
    }
    misbehaving_builds(true);
}

/// `larder build` stopped by SIGTERM while its builder ignores SIGTERM:
/// it exits soon, the builder is killed, nothing is left.
fn interrupted_while_a_builder_ignores_sigterm(sandbox: bool) {
    let label = if sandbox { "sandbox" } else { "no-sandbox" };
    let work = tempfile::tempdir().unwrap();
    let marker = format!("faults-sigterm-{label}-{}", std::process::id());
    let root = work.path().join("root");
    let tmp = work.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut drvs = Drvs::new(&work.path().join("drvs"), &marker);
    drvs.add(
        "stubborn",
        "trap '' TERM INT; while :; do echo tick; sleep 0.1; done",
        &[],
    );
    let mut build = larder();
    build
        .arg("--store")
        .arg(&root)
        .env("TMPDIR", &tmp)
        .arg("build");
    if !sandbox {
        build.arg("--no-sandbox");
    }
    let mut child = build
        .args(&drvs.files)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the builder runs.
    let start = Instant::now();
    while processes_marked(&marker).is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !processes_marked(&marker).is_empty(),
        "{label}: the builder never ran"
    );
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(10));
    let left_running = processes_left(&marker, Duration::from_secs(1));
    kill_marked(&marker);
    let status = status.unwrap_or_else(|| panic!("{label}: larder ignored SIGTERM"));
    assert_eq!(status.code(), Some(1), "{label}: interrupted");
    assert!(
        left_running.is_empty(),
        "{label}: left running: {left_running:?}"
    );
    let left = Leftovers::read(&root, &tmp);
    assert!(left.is_clean(), "{label}: left behind: {left:?}");
    stdout_of(
        larder()
            .arg("--store")
            .arg(&root)
            .args(["verify", "--check-contents"]),
    );
}

#[test]
fn sigterm_stops_a_build_whose_builder_ignores_it() {
    interrupted_while_a_builder_ignores_sigterm(false);
    match sandbox_unavailable() {
        Some(why) => eprintln!("faults: sigterm in the sandbox skipped: {why}"),
        None => interrupted_while_a_builder_ignores_sigterm(true),
    }
}

/// A user without privileges builds folder outputs (made 0555 before they
/// are moved to their final path, which needs write permission on the
/// folder itself to rewrite its `..`). As root, the build runs as `nobody`
/// through `setpriv`.
#[test]
fn an_unprivileged_user_builds_read_only_folder_outputs() {
    let work = tempfile::tempdir().unwrap();
    let marker = format!("faults-unprivileged-{}", std::process::id());
    let mut drvs = Drvs::new(&work.path().join("drvs"), &marker);
    let node = drvs.add(
        "folders",
        "mkdir -p $out/sub/deeper; echo data > $out/sub/deeper/file; chmod 500 $out/sub",
        &[],
    );
    let root = work.path().join("root");
    let tmp = work.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut build = if is_root() {
        if !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("SKIPPED the unprivileged build: setpriv is missing");
            return;
        }
        // `nobody` must reach the files: the temp folder is 0700.
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(work.path())
            .status()
            .unwrap();
        assert!(status.success());
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_larder"))
            .env_remove("LARDER_STORE")
            .env("RUST_LOG", "warn");
        cmd
    } else {
        larder()
    };
    let out = run(build
        .arg("--store")
        .arg(&root)
        .env("TMPDIR", &tmp)
        .args(["build", "--no-sandbox"])
        .args(&drvs.files));
    assert!(
        out.status.success(),
        "the unprivileged build fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), node.out);
    let real = root.join(node.out.trim_start_matches('/'));
    assert_eq!(fs::metadata(&real).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(
        fs::read_to_string(real.join("sub/deeper/file")).unwrap(),
        "data\n"
    );
    let left = Leftovers::read(&root, &tmp);
    assert!(left.is_clean(), "left behind: {left:?}");
    if is_root() {
        // The temp folder's owner is `nobody` now; root removes it anyway.
        drop(work);
    }
}
