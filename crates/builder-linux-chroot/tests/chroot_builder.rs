//! The chroot builder driven through the generic lifecycle
//! (`prepare` → `start` → `unprepare` → `register_outputs`) with the
//! builder crate's blocking test driver, into temporary stores.
//!
//! These need root or unprivileged user namespaces, and `/bin/busybox`
//! from Debian's `busybox-static` as the sandbox's `/bin/sh`; without them
//! each test prints why it skips. CI runs as root, so they run there.

#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder_builder::test_support::nix_2_8::{builds, load_drv, store_file};
use larder_builder::test_support::{lock_and_register, run_to_unprepared};
use larder_builder::{
    BuildContext, BuildError, BuildOutputs, BuildRequest, BuildSettings, BuilderCommand,
    DerivationBuilder, SpawnedBuilder, UnpreparedBuild, prepare,
};
use larder_builder_linux_chroot::{ChrootBuilder, SandboxConfig};
use larder_local_store::{LocalStore, PathInfo};
use larder_pathlocks::Owner;
use larder_store_core::derivation::{Derivation, DerivationOutput};
use larder_store_core::{ContentAddress, ContentAddressMethod, HashAlgo, StoreDir, StorePath, nar};

/// The sandbox, or `None` with the reason printed.
fn sandbox() -> Option<SandboxConfig> {
    match SandboxConfig::detect() {
        Ok(config) => Some(config),
        Err(error) => {
            eprintln!("skipped: needs root or user namespaces and a static busybox: {error}");
            None
        }
    }
}

/// A temporary store, shared with the builders as the worker shares it.
struct TestStore {
    dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    sandbox: SandboxConfig,
}

impl TestStore {
    fn new(sandbox: SandboxConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        Self {
            dir,
            store,
            sandbox,
        }
    }

    fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    fn real(&self, path: &StorePath) -> PathBuf {
        self.store.layout().real_path(path)
    }

    fn settings(&self) -> BuildSettings {
        BuildSettings {
            build_dir: Some(self.dir.path().join("builds")),
            cores: 1,
            ..BuildSettings::default()
        }
    }

    fn builder(&self) -> ChrootBuilder {
        self.sandbox.builder(Arc::clone(&self.store))
    }

    /// Copies a file or tree into the store as `path` and registers it.
    fn add_path(&self, source: &Path, path: &StorePath) {
        let mut bytes = Vec::new();
        nar::dump_path(source, &mut bytes).unwrap();
        let real = self.real(path);
        nar::restore(&mut bytes.as_slice(), &real).unwrap();
        self.register_as_is(path);
    }

    /// Registers what is at `path`'s real location.
    fn register_as_is(&self, path: &StorePath) {
        let h = nar::hash_path(&self.real(path)).unwrap();
        let info = PathInfo::new(path.clone(), h.hash, h.size);
        self.store.register_paths(&[info]).unwrap();
    }

    fn write_drv(&self, drv: &Derivation) -> StorePath {
        let path = drv.drv_path(self.store_dir());
        fs::write(self.real(&path), drv.to_aterm(self.store_dir())).unwrap();
        path
    }

    fn request(&self, drv: &Derivation) -> BuildRequest {
        BuildRequest {
            drv_path: self.write_drv(drv),
            drv: drv.clone(),
            check: false,
            settings: self.settings(),
        }
    }

    /// Runs the build to its unprepared state with `builder`.
    fn unprepare(
        &self,
        drv: &Derivation,
        builder: Box<dyn DerivationBuilder>,
    ) -> (String, Result<UnpreparedBuild, BuildError>) {
        let running = match prepare(&self.store, self.request(drv), builder).and_then(|p| p.start())
        {
            Ok(r) => r,
            Err(e) => return (String::new(), Err(e)),
        };
        let (log, result) = run_to_unprepared(running, &self.store);
        (String::from_utf8_lossy(&log).into_owned(), result)
    }

    /// Locks what the build installs, as the worker would, and registers.
    fn register(&self, unprepared: UnpreparedBuild) -> Result<BuildOutputs, BuildError> {
        lock_and_register(unprepared, &self.store)
    }

    /// A whole build in the sandbox.
    fn build(&self, drv: &Derivation) -> (String, Result<BuildOutputs, BuildError>) {
        let (log, result) = self.unprepare(drv, Box::new(self.builder()));
        (log, result.and_then(|u| self.register(u)))
    }

    /// The sandbox folders left in the store directory (where Nix puts
    /// them) or in this process's staging directory (where larder does).
    fn leftover_sandboxes(&self) -> Vec<String> {
        let names = |dir: &Path| -> Vec<String> {
            match fs::read_dir(dir) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let mut left: Vec<String> = names(&self.store.layout().real_store_dir())
            .into_iter()
            .filter(|n| n.ends_with(".chroot"))
            .collect();
        left.extend(
            names(&larder_builder::staging_dir(&self.store))
                .into_iter()
                .filter(|n| n.starts_with("sandbox-")),
        );
        left
    }
}

/// A `/bin/sh -c SCRIPT` derivation, input-addressed with a made-up path.
fn sh_drv(store_dir: &StoreDir, name: &str, script: &str) -> Derivation {
    let mut drv = base_drv(name, script);
    let hash = HashAlgo::Sha256.digest(format!("{name}\0{script}"));
    let path = store_dir.make_output_path("out", &hash, name).unwrap();
    drv.env.insert("out".to_owned(), store_dir.display(&path));
    drv.insert_output("out", DerivationOutput::InputAddressed(path))
        .unwrap();
    drv
}

/// A fixed-output derivation whose output is the flat file `contents`.
fn fixed_drv(store_dir: &StoreDir, name: &str, script: &str, contents: &str) -> Derivation {
    let mut drv = base_drv(name, script);
    let ca = ContentAddress {
        method: ContentAddressMethod::Flat,
        hash: HashAlgo::Sha256.digest(contents),
    };
    drv.insert_output("out", DerivationOutput::Fixed(ca))
        .unwrap();
    let path = drv.output_paths(store_dir)["out"].clone().unwrap();
    drv.env.insert("out".to_owned(), store_dir.display(&path));
    drv
}

fn base_drv(name: &str, script: &str) -> Derivation {
    let mut drv = Derivation::new(name).unwrap();
    drv.system = "x86_64-linux".to_owned();
    drv.builder = "/bin/sh".to_owned();
    drv.args = vec!["-c".to_owned(), script.to_owned()];
    drv.env.insert("name".to_owned(), name.to_owned());
    drv.env.insert("builder".to_owned(), "/bin/sh".to_owned());
    drv.env.insert("system".to_owned(), drv.system.clone());
    drv.env.insert("PATH".to_owned(), "/bin".to_owned());
    drv
}

fn out_path(drv: &Derivation, store_dir: &StoreDir) -> StorePath {
    drv.output_paths(store_dir)["out"].clone().unwrap()
}

// ---------------------------------------------------------------------------
// Nix 2.8's builds, in the sandbox.

/// Builds `path` after its inputs; sources are added from `drv/store/`.
fn realise(t: &TestStore, path: &StorePath, done: &mut BTreeSet<StorePath>) {
    if done.contains(path) {
        return;
    }
    let drv = load_drv(&t.store, path);
    for input in drv.input_drvs.keys() {
        realise(t, input, done);
    }
    for src in &drv.input_srcs {
        if !t.store.is_valid(src).unwrap() {
            t.add_path(&store_file(src.as_str()), src);
        }
    }
    assert_eq!(&t.write_drv(&drv), path, "the .drv round-trips to its path");
    let (log, result) = t.build(&drv);
    if let Err(e) = result {
        panic!("building {path} in the sandbox: {e}\nlog:\n{log}");
    }
    done.insert(path.clone());
}

#[test]
fn nix_2_8_builds_are_reproduced_in_the_sandbox() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let builds = builds();
    assert_eq!(builds.len(), 26);
    let mut done = BTreeSet::new();
    for build in &builds {
        let drv_path = t.store_dir().parse(&build.drv_path).unwrap();
        realise(&t, &drv_path, &mut done);
        for (name, want) in &build.outputs {
            want.assert_matches(&t.store, &format!("{} {name}", build.id));
        }
    }
    assert!(
        t.leftover_sandboxes().is_empty(),
        "{:?}",
        t.leftover_sandboxes()
    );
}

// ---------------------------------------------------------------------------
// The saved namespaces.

/// The chroot builder with every step delegated, recording whether its
/// namespaces are saved at each step.
struct Watched {
    inner: ChrootBuilder,
    seen: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Watched {
    fn note(&self, step: &'static str) {
        self.seen
            .lock()
            .unwrap()
            .push((step, self.inner.namespaces_open()));
    }
}

impl DerivationBuilder for Watched {
    fn needs_hash_rewrite(&self) -> bool {
        self.inner.needs_hash_rewrite()
    }
    fn build_dir_in_sandbox(&self, ctx: &BuildContext) -> PathBuf {
        self.inner.build_dir_in_sandbox(ctx)
    }
    fn prepare_sandbox(&mut self, ctx: &BuildContext) -> Result<(), BuildError> {
        self.inner.prepare_sandbox(ctx)
    }
    fn start_child(
        &mut self,
        ctx: &BuildContext,
        command: &BuilderCommand,
    ) -> Result<SpawnedBuilder, BuildError> {
        self.note("before start");
        let spawned = self.inner.start_child(ctx, command);
        self.note("after start");
        spawned
    }
    fn before_unprepare(&mut self, ctx: &BuildContext) {
        self.note("unprepare called");
        self.inner.before_unprepare(ctx);
        self.note("before the generic unprepare");
    }
    fn kill_sandbox(&mut self, ctx: &BuildContext) -> Result<(), BuildError> {
        self.inner.kill_sandbox(ctx)
    }
    fn real_path_in_host(&self, ctx: &BuildContext, path: &StorePath) -> PathBuf {
        self.inner.real_path_in_host(ctx, path)
    }
    fn cleanup_sandbox(&mut self, ctx: &BuildContext, success: bool) {
        self.inner.cleanup_sandbox(ctx, success);
    }
}

/// How many of this process's descriptors refer to the namespace `link`
/// (as `readlink /proc/<pid>/ns/<kind>` names it).
fn fds_on(link: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == link)
        .count()
}

#[test]
fn saved_namespaces_are_open_during_the_build_and_closed_after_unprepare() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let builder = Watched {
        inner: t.builder(),
        seen: Arc::clone(&seen),
    };
    let drv = sh_drv(
        t.store_dir(),
        "waits",
        "while [ ! -e /build/go ]; do sleep 0.01; done; echo done > $out",
    );
    let running = prepare(&t.store, t.request(&drv), Box::new(builder))
        .unwrap()
        .start()
        .unwrap();

    // While the builder runs, this process holds its user namespace (the
    // builder never leaves it, so the saved descriptor points to the same
    // namespace as the builder's own).
    let user_ns =
        fs::read_link(format!("/proc/{}/ns/user", running.pid().as_raw_nonzero())).unwrap();
    assert_eq!(fds_on(&user_ns), 1, "the saved user namespace");
    fs::write(running.context().build_dir.join("go"), "").unwrap();

    let (log, unprepared) = run_to_unprepared(running, &t.store);
    let unprepared =
        unprepared.unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&log)));
    assert_eq!(fds_on(&user_ns), 0, "closed by unprepare");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("before start", false),
            ("after start", true),
            ("unprepare called", true),
            ("before the generic unprepare", false),
        ]
    );
    let outputs = t.register(unprepared).unwrap();
    let out = &outputs.outputs["out"];
    assert_eq!(fs::read(t.real(&out.path)).unwrap(), b"done\n");
    assert!(t.leftover_sandboxes().is_empty());
}

// ---------------------------------------------------------------------------
// The rescue rule, with a real store.

/// Builds `drv`, which must fail, holding the pre-build lock on its output
/// as the worker does; `during` runs while the builder waits for
/// `/build/go`. Returns the failure.
fn failing_build(t: &TestStore, drv: &Derivation, during: impl FnOnce()) -> BuildError {
    let out = out_path(drv, t.store_dir());
    let pre_build_lock = larder_pathlocks::try_lock(Owner::fresh(), [t.real(&out)]).unwrap();
    let running = prepare(&t.store, t.request(drv), Box::new(t.builder()))
        .unwrap()
        .start()
        .unwrap();
    during();
    fs::write(running.context().build_dir.join("go"), "").unwrap();
    let (_, result) = run_to_unprepared(running, &t.store);
    // The failed build is cleaned up here, under the lock.
    let error = result.expect_err("the build fails");
    drop(pre_build_lock);
    error
}

const WRITES_THEN_FAILS: &str =
    "while [ ! -e /build/go ]; do sleep 0.01; done; echo partial > $out; exit 1";

#[test]
fn a_failed_build_s_output_is_rescued_when_the_store_says_it_is_invalid() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let drv = sh_drv(t.store_dir(), "fails", WRITES_THEN_FAILS);
    let out = out_path(&drv, t.store_dir());
    let error = failing_build(&t, &drv, || {});
    assert!(error.message.contains("failed with exit code 1"), "{error}");
    // Moved into the store for inspection, and not registered.
    assert_eq!(fs::read(t.real(&out)).unwrap(), b"partial\n");
    assert!(!t.store.is_valid(&out).unwrap());
    assert!(t.leftover_sandboxes().is_empty());
}

#[test]
fn a_path_that_became_valid_during_the_build_is_never_replaced() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let drv = sh_drv(t.store_dir(), "fails", WRITES_THEN_FAILS);
    let out = out_path(&drv, t.store_dir());
    // Invalid when the build starts (what a snapshot would record), valid
    // by the time the build fails: registered meanwhile.
    assert!(!t.store.is_valid(&out).unwrap());
    failing_build(&t, &drv, || {
        fs::write(t.real(&out), "registered\n").unwrap();
        t.register_as_is(&out);
    });
    assert!(t.store.is_valid(&out).unwrap());
    assert_eq!(fs::read(t.real(&out)).unwrap(), b"registered\n");
    assert!(t.leftover_sandboxes().is_empty());
}

#[test]
fn an_existing_invalid_path_is_not_replaced_either() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let drv = sh_drv(t.store_dir(), "fails", WRITES_THEN_FAILS);
    let out = out_path(&drv, t.store_dir());
    failing_build(&t, &drv, || {
        fs::write(t.real(&out), "someone else's\n").unwrap();
    });
    assert!(!t.store.is_valid(&out).unwrap());
    assert_eq!(fs::read(t.real(&out)).unwrap(), b"someone else's\n");
}

// ---------------------------------------------------------------------------
// The network.

/// Listens on the host's loopback, answers one connection with `welcome`.
fn host_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream.write_all(b"welcome\n").unwrap();
            let mut got = String::new();
            let _ = stream.read_to_string(&mut got);
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

#[test]
fn only_fixed_output_builds_reach_the_host_network() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);

    // A fixed-output build connects to the host; its output is fixed.
    let (port, rx) = host_listener();
    let script = format!("echo hello | nc -w 2 127.0.0.1 {port} >&2; echo fixed > $out");
    let fixed = fixed_drv(t.store_dir(), "fetch", &script, "fixed\n");
    let (log, result) = t.build(&fixed);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("welcome"), "{log}");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "hello\n");

    // Any other build sees only its own loopback.
    let (port, rx) = host_listener();
    let script = format!(
        "if echo hello | nc -w 2 127.0.0.1 {port}; then echo connected; else echo refused; fi > $out"
    );
    let other = sh_drv(t.store_dir(), "no-network", &script);
    let (log, result) = t.build(&other);
    let outputs = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        fs::read(t.real(&outputs.outputs["out"].path)).unwrap(),
        b"refused\n"
    );
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn a_failed_setup_step_is_named_when_the_build_is_torn_down() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    // The child fails its last step, `execve`, after `start_child` has
    // returned: the failure comes out of `unprepare`, with the step.
    let mut drv = sh_drv(t.store_dir(), "no-builder", "true");
    drv.builder = "/nonexistent/sh".to_owned();
    let (log, result) = t.build(&drv);
    let message = result.expect_err("no such builder").to_string();
    assert!(
        message.contains("starting builder '/nonexistent/sh'"),
        "{message}\n{log}"
    );
    assert!(message.contains("executing /nonexistent/sh"), "{message}");
    assert!(
        t.leftover_sandboxes().is_empty(),
        "{:?}",
        t.leftover_sandboxes()
    );

    // The next build is not disturbed by it.
    let (log, result) = t.build(&sh_drv(t.store_dir(), "after", "echo ok > $out"));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

#[test]
fn a_build_killed_while_its_sandbox_is_set_up_ends_at_once() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    // `start` hands the builder back while its child may still be setting
    // the sandbox up (before it leads a process group; the builder crate's
    // `kill_builder` test covers that case alone): a kill right away must
    // reach it all the same, or the build would run its 30 seconds.
    let drv = sh_drv(t.store_dir(), "killed-early", "sleep 30; echo late > $out");
    let began = std::time::Instant::now();
    let mut running = prepare(&t.store, t.request(&drv), Box::new(t.builder()))
        .and_then(|p| p.start())
        .unwrap();
    running.kill().unwrap();
    let result = running.unprepare(&t.store);
    assert!(result.is_err(), "a killed build fails");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the kill missed the child: {:?}",
        began.elapsed()
    );
    assert!(
        t.leftover_sandboxes().is_empty(),
        "{:?}",
        t.leftover_sandboxes()
    );
}

#[test]
fn network_namespaces_serve_one_build_after_another_unless_sockets_are_left() {
    let Some(sandbox) = sandbox() else { return };
    if fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: only root keeps network namespaces for the next build");
        return;
    }
    let t = TestStore::new(sandbox);
    // Each build writes the identity of its network namespace.
    let namespace_of = |name: &str, before: &str| {
        let script = format!("{before} readlink /proc/self/ns/net > $out");
        let (log, result) = t.build(&sh_drv(t.store_dir(), name, &script));
        let outputs = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        fs::read_to_string(t.real(&outputs.outputs["out"].path)).unwrap()
    };
    let first = namespace_of("first", "");
    assert!(first.starts_with("net:["), "{first}");
    assert_eq!(t.sandbox.networks().spare_count(), 1);
    assert_eq!(namespace_of("second", ""), first, "the namespace is reused");

    // A build that talks to itself over TCP leaves its connection closing
    // in the kernel: the next build gets a namespace of its own.
    // The listener's input stays open (`sleep`), so that it reads what the
    // client sends rather than closing first with the data unread, which
    // would reset the connection instead of closing it.
    let chat = "sleep 2 | nc -l -p 7777 > /build/got & \
                i=0; until echo ping | nc -w 1 127.0.0.1 7777; do \
                i=$((i+1)); [ $i -ge 100 ] && exit 1; sleep 0.1; done; \
                wait; grep -q ping /build/got &&";
    assert_eq!(
        namespace_of("chat", chat),
        first,
        "lo is up in a reused one"
    );
    let fresh = namespace_of("after-chat", "");
    assert_ne!(fresh, first, "a namespace with sockets left is not reused");

    // The worker's thread went back to the host's network each time: a
    // fixed-output build still reaches it.
    let (port, rx) = host_listener();
    let script = format!("echo hello | nc -w 2 127.0.0.1 {port} >&2; echo fixed > $out");
    let (log, result) = t.build(&fixed_drv(t.store_dir(), "fetch", &script, "fixed\n"));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "hello\n");
}

#[test]
fn the_builder_sees_its_inputs_read_only_and_the_build_dir_at_slash_build() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let source = t.dir.path().join("src.txt");
    fs::write(&source, "input\n").unwrap();
    let input = t
        .store_dir()
        .make_content_addressed_path(
            "src.txt",
            &ContentAddress {
                method: ContentAddressMethod::Nar,
                hash: nar::hash_path(&source).unwrap().hash,
            },
            &Default::default(),
        )
        .unwrap();
    t.add_path(&source, &input);
    let input_shown = t.store_dir().display(&input);
    let script = format!(
        "{{ cat {input_shown}; pwd; echo $NIX_BUILD_TOP; \
         if echo x >> {input_shown}; then echo wrote; else echo read-only; fi; \
         ls /nix/store | wc -l; }} > $out"
    );
    let mut drv = sh_drv(t.store_dir(), "reads-input", &script);
    drv.input_srcs.insert(input.clone());
    let (log, result) = t.build(&drv);
    let outputs = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let out = &outputs.outputs["out"];
    // The store shows the input and the output being built, nothing else.
    assert_eq!(
        fs::read_to_string(t.real(&out.path)).unwrap(),
        "input\n/build\n/build\nread-only\n2\n"
    );
    assert_eq!(fs::read(t.real(&input)).unwrap(), b"input\n");
    assert!(out.references.is_empty());
}

#[test]
fn a_reused_build_dir_looks_new_to_the_next_sandboxed_builder() {
    let Some(sandbox) = sandbox() else { return };
    let t = TestStore::new(sandbox);
    let report = "stat -c '%i %a %u %g' /build; ls -A /build | wc -l";
    // The first builder reports its fresh directory, then leaves files, an
    // unreadable folder and a mode of its own there.
    let first = sh_drv(
        t.store_dir(),
        "first",
        &format!(
            "{{ {report}; }} > $out; mkdir -p /build/a/b; echo x > /build/a/b/f; \
             echo y > /build/.h; chmod 0 /build/a; chmod 2755 /build"
        ),
    );
    let (log, result) = t.build(&first);
    let first = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let second = sh_drv(t.store_dir(), "second", &format!("{{ {report}; }} > $out"));
    let (log, result) = t.build(&second);
    let second = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let seen =
        |outputs: &BuildOutputs| fs::read_to_string(t.real(&outputs.outputs["out"].path)).unwrap();
    assert_eq!(seen(&second), seen(&first));
    // The same directory (inode), mode 0700, the same owner, empty.
    let fields: Vec<String> = seen(&second)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(fields[1], "700", "{fields:?}");
    assert_eq!(fields[4], "0", "{fields:?}");
    larder_builder::release_spare_build_dirs();
    assert_eq!(
        fs::read_dir(t.dir.path().join("builds")).unwrap().count(),
        0
    );
}
