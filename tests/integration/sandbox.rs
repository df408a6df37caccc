//! The Linux sandbox, driven directly: each test runs a small `/bin/sh`
//! script (a static busybox) as the builder and checks what it could see or
//! do. These need root or unprivileged user namespaces, and
//! `/bin/busybox` from Debian's `busybox-static`; without them each test
//! says why it skips. CI runs as root, so they run there.

// A skipped test says why on stderr.
#![allow(clippy::print_stderr)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::Duration;

use larder_builder_linux_chroot::{
    BindMount, Chroot, ChrootSpec, Command, Network, Rescue, SandboxChild, check_support,
    default_sandbox_paths, rescue_outputs, spawn,
};
use larder_store_core::StorePath;

const INPUT: &str = "0a5s0k4kxzpqsj47qz0y6bh2ldyrjbl2-input";
const NOT_INPUT: &str = "1b5s0k4kxzpqsj47qz0y6bh2ldyrjbl2-secret";
const OUTPUT: &str = "2c5s0k4kxzpqsj47qz0y6bh2ldyrjbl2-out";

/// A fake store root with one input and one path that is not an input, a
/// build directory, and a secret file elsewhere on the host.
struct Fixture {
    temp: tempfile::TempDir,
    sandbox_paths: Vec<BindMount>,
}

impl Fixture {
    /// The fixture, or `None` (with the reason printed) where the sandbox
    /// cannot run.
    fn new() -> Option<Fixture> {
        if let Err(error) = check_support() {
            eprintln!("skipped: the sandbox needs root or user namespaces: {error}");
            return None;
        }
        let sandbox_paths = match default_sandbox_paths() {
            Ok(paths) => paths,
            Err(error) => {
                eprintln!("skipped: {error}");
                return None;
            }
        };
        let temp = tempfile::tempdir().expect("tempdir");
        let store = temp.path().join("nix/store");
        fs::create_dir_all(store.join(INPUT)).expect("mkdir");
        fs::write(store.join(INPUT).join("data"), "input data\n").expect("write");
        fs::create_dir_all(store.join(NOT_INPUT)).expect("mkdir");
        fs::write(store.join(NOT_INPUT).join("data"), "store secret\n").expect("write");
        fs::write(temp.path().join("host-secret"), "host secret\n").expect("write");
        fs::create_dir(temp.path().join("build")).expect("mkdir");
        Some(Fixture {
            temp,
            sandbox_paths,
        })
    }

    fn real_store(&self) -> PathBuf {
        self.temp.path().join("nix/store")
    }

    fn build_dir(&self) -> PathBuf {
        self.temp.path().join("build")
    }

    fn chroot(&self, network: Network) -> Chroot {
        let mut spec = ChrootSpec::new(
            self.real_store().join("xyz-test.drv.chroot"),
            self.build_dir(),
        );
        spec.network = network;
        spec.add_input(self.real_store().join(INPUT), INPUT);
        spec.sandbox_paths = self.sandbox_paths.clone();
        Chroot::create(&spec).expect("creating the chroot")
    }

    fn start(&self, chroot: &Chroot, script: &str) -> SandboxChild {
        let command = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("PATH", "/path-not-set")
            .env("HOST_SECRET", self.temp.path().join("host-secret"));
        spawn(chroot, &command).expect("starting the sandbox")
    }

    /// Runs `script` and returns its status and log.
    fn run(&self, network: Network, script: &str) -> (ExitStatus, String) {
        let chroot = self.chroot(network);
        let mut child = self.start(&chroot, script);
        let log = drain(&mut child);
        (child.wait().expect("waiting"), log)
    }
}

/// Reads the log until every writer is gone, failing after 30 s (a writer
/// that survived the builder would hold it open forever).
fn drain(child: &mut SandboxChild) -> String {
    let log = child.take_log().expect("the log pipe");
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = fs::File::from(log).read_to_string(&mut text);
        let _ = send.send(text);
    });
    receive
        .recv_timeout(Duration::from_secs(30))
        .expect("the log reached EOF: no process of the sandbox outlived the builder")
}

#[test]
fn identity_and_layout_are_as_specified() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let script = "id -u; id -g; hostname; cat /proc/sys/kernel/domainname; echo $$; pwd; \
                  cat /etc/passwd /etc/group /etc/hosts; \
                  ls /dev; stat -c '%a' /tmp; ls /nix/store; cat /nix/store/*/data; \
                  echo ok > /build/written && cat /build/written; \
                  ls /; awk '$5 == \"/\"' /proc/self/mountinfo | wc -l; true";
    let (status, log) = fixture.run(Network::Loopback, script);
    assert!(status.success(), "{log}");
    let expected_head = "1000\n100\nlocalhost\n(none)\n1\n/build\n\
        root:x:0:0:Nix build user:/build:/noshell\n\
        nixbld:x:1000:100:Nix build user:/build:/noshell\n\
        nobody:x:65534:65534:Nobody:/:/noshell\n\
        root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n\
        127.0.0.1 localhost\n::1 localhost\n";
    assert!(log.starts_with(expected_head), "{log}");
    let rest: Vec<&str> = log[expected_head.len()..].lines().collect();
    let dev: Vec<&str> = rest.iter().take(13).copied().collect();
    let mut want = vec![
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ];
    if !Path::new("/dev/tty").exists() {
        want.retain(|d| *d != "tty");
    }
    assert_eq!(&dev[..want.len()], &want[..], "{log}");
    let tail = &rest[want.len()..];
    assert_eq!(
        tail,
        [
            "1777",
            INPUT,
            "input data",
            "ok",
            "bin",
            "build",
            "dev",
            "etc",
            "nix",
            "proc",
            "tmp",
            // One mount at `/`: the host's root, which `pivot_root` put on
            // top of the chroot, is gone.
            "1"
        ],
        "{log}"
    );
    assert_eq!(
        fs::read_to_string(fixture.build_dir().join("written")).expect("read"),
        "ok\n",
        "/build is the host build directory"
    );
}

#[test]
fn host_files_outside_the_inputs_are_invisible() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let script = format!(
        "cat \"$HOST_SECRET\"; cat /nix/store/{NOT_INPUT}/data; ls /nix/store; \
         ls /etc; test -e /usr/bin || echo no-usr; test -e /root || echo no-root; \
         cat /proc/1/root/etc/hostname 2>/dev/null || echo no-host-root; exit 0"
    );
    let (status, log) = fixture.run(Network::Loopback, &script);
    assert!(status.success(), "{log}");
    assert!(!log.contains("secret\n"), "a secret leaked: {log}");
    assert!(log.contains("No such file"), "{log}");
    assert!(log.contains(&format!("{INPUT}\n")), "{log}");
    assert!(!log.contains(&format!("{NOT_INPUT}\n")), "{log}");
    assert!(log.contains("group\nhosts\npasswd\n"), "{log}");
    for absent in ["no-usr", "no-root", "no-host-root"] {
        assert!(log.contains(absent), "{absent}: {log}");
    }
}

#[test]
fn inputs_and_the_real_store_cannot_be_written() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let script = format!(
        "echo evil > /nix/store/{INPUT}/data || echo write-refused; \
         touch /nix/store/{INPUT}/new || echo create-refused; \
         chmod 777 /nix/store/{INPUT} || echo chmod-refused; \
         rm -rf /nix/store/{INPUT} || echo rm-refused; \
         echo built > /nix/store/{OUTPUT} && echo output-written; \
         mkdir /nix/store/evil-dir && echo store-dir-written"
    );
    let (status, log) = fixture.run(Network::Loopback, &script);
    assert!(status.success(), "{log}");
    for refused in [
        "write-refused",
        "create-refused",
        "chmod-refused",
        "rm-refused",
        "output-written",
        "store-dir-written",
    ] {
        assert!(log.contains(refused), "{refused}: {log}");
    }
    assert!(log.contains("Read-only file system"), "{log}");
    let store = fixture.real_store();
    assert_eq!(
        fs::read_to_string(store.join(INPUT).join("data")).expect("read"),
        "input data\n"
    );
    assert!(!store.join(INPUT).join("new").exists());
    assert!(
        !store.join(OUTPUT).exists() && !store.join("evil-dir").exists(),
        "writes to /nix/store stay in the chroot"
    );
}

#[test]
fn outputs_land_in_the_chroot_store() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let chroot = fixture.chroot(Network::Loopback);
    let mut child = fixture.start(&chroot, &format!("echo built > /nix/store/{OUTPUT}"));
    let log = drain(&mut child);
    assert!(child.wait().expect("wait").success(), "{log}");
    assert_eq!(
        fs::read_to_string(chroot.store_dir_on_host().join(OUTPUT)).expect("read"),
        "built\n"
    );
}

/// Runs `nc` against a port the test listens on from the host, and returns
/// the builder's log and whether the host saw the builder's connection.
fn connect_to_host(fixture: &Fixture, network: Network) -> (String, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listening");
    let port = listener.local_addr().expect("addr").port();
    // The host side: answer the first connection, and report what it sent.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut line = [0u8; 6];
        let _ = stream.read_exact(&mut line);
        let _ = stream.write_all(b"welcome\n");
        line
    });
    let script = format!(
        "ip -o link | cut -d: -f2; \
         echo hello | nc 127.0.0.1 {port} && echo connected || echo refused"
    );
    let (status, log) = fixture.run(network, &script);
    assert!(status.success(), "{log}");
    // Unblock the server if the builder never reached it.
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.write_all(b"tester");
    }
    let first = server.join().expect("the host side");
    (log, &first == b"hello\n")
}

#[test]
fn network_is_loopback_only_except_for_fixed_output_builds() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let (log, accepted) = connect_to_host(&fixture, Network::Loopback);
    assert!(!accepted, "a sandboxed build reached the host: {log}");
    assert!(log.contains("refused"), "{log}");
    let interfaces: Vec<&str> = log.lines().take_while(|l| l.starts_with(' ')).collect();
    assert_eq!(interfaces, [" lo"], "only loopback: {log}");

    let (log, accepted) = connect_to_host(&fixture, Network::Host);
    assert!(
        accepted,
        "a fixed-output build has the host's network: {log}"
    );
    assert!(log.contains("welcome\nconnected"), "{log}");
}

#[test]
fn loopback_is_up_inside() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    // The client retries until the listener is up rather than guessing how
    // long that takes on a loaded machine.
    // The listener's input stays open (`sleep`), so that it reads what the
    // client sends rather than closing first with the data unread.
    let script = "sleep 2 | nc -l -p 7777 > /build/got & \
                  i=0; until echo ping | nc -w 1 127.0.0.1 7777; do \
                  i=$((i+1)); [ $i -ge 100 ] && exit 1; sleep 0.1; done; \
                  wait; cat /build/got";
    let (status, log) = fixture.run(Network::Loopback, script);
    assert!(status.success(), "{log}");
    assert!(log.ends_with("ping\n"), "{log}");
}

#[test]
fn host_processes_are_invisible() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let script = format!(
        "ls /proc | grep '^[0-9]'; test -e /proc/{} && echo sees-test-pid; exit 0",
        std::process::id()
    );
    let (status, log) = fixture.run(Network::Loopback, &script);
    assert!(status.success(), "{log}");
    assert!(!log.contains("sees-test-pid"), "{log}");
    let pids: Vec<u32> = log.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&1), "{log}");
    assert!(
        pids.iter().all(|&pid| pid < 10),
        "only the sandbox's own: {log}"
    );
}

#[test]
fn processes_left_running_are_killed_with_the_builder() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    // Both children keep the log pipe open; `drain` only returns once every
    // writer is gone, which is the kernel killing the PID namespace.
    let script = "sleep 1000 & setsid sleep 1000 & echo started";
    let chroot = fixture.chroot(Network::Loopback);
    let mut child = fixture.start(&chroot, script);
    let log = drain(&mut child);
    assert_eq!(log, "started\n");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn a_hung_builder_is_killed_with_its_namespace() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let chroot = fixture.chroot(Network::Loopback);
    let mut child = fixture.start(&chroot, "sleep 1000 & echo started; sleep 1000");
    let mut log = fs::File::from(child.take_log().expect("log"));
    let mut started = [0u8; 8];
    log.read_exact(&mut started).expect("the builder started");
    assert_eq!(&started, b"started\n");
    child.kill().expect("kill");
    // EOF: the background sleep, which holds the log open, died too.
    let mut rest = Vec::new();
    log.read_to_end(&mut rest).expect("reading to EOF");
    assert!(rest.is_empty());
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn setuid_gains_nothing() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    // A setuid copy of busybox among the inputs: owned by root (when this
    // runs as root) and mode 4755.
    let setuid = fixture.real_store().join(INPUT).join("busybox");
    fs::copy("/bin/busybox", &setuid).expect("copy");
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).expect("chmod");
    let script = format!(
        "/nix/store/{INPUT}/busybox id -u; grep NoNewPrivs /proc/self/status; \
         cp /bin/sh /build/mine && chmod 4755 /build/mine; /build/mine id -u; \
         /nix/store/{INPUT}/busybox su -c true 2>/dev/null && echo became-root || echo no-root"
    );
    let (status, log) = fixture.run(Network::Loopback, &script);
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    assert_eq!(lines[0], "1000", "{log}");
    assert_eq!(lines[1], "NoNewPrivs:\t1", "{log}");
    assert!(lines.contains(&"no-root"), "{log}");
    assert!(!lines.contains(&"0"), "{log}");
}

#[test]
fn saved_namespaces_are_open_during_the_build_and_closed_after_reset() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let chroot = fixture.chroot(Network::Loopback);
    let mut child = fixture.start(
        &chroot,
        "while [ ! -e /build/go ]; do sleep 0.02; done; echo done",
    );
    let link = |path: String| fs::read_link(path).ok();
    let fd_link = |fd: i32| link(format!("/proc/self/fd/{fd}"));
    let (mount_fd, user_fd) = {
        use std::os::fd::AsRawFd;
        let saved = child.namespaces();
        (
            saved.mount().expect("mount ns saved").as_raw_fd(),
            saved.user().expect("user ns saved").as_raw_fd(),
        )
    };
    let saved_mount = fd_link(mount_fd).expect("the mount namespace fd is open");
    let saved_user = fd_link(user_fd).expect("the user namespace fd is open");
    let pid = child.pid();
    assert!(saved_mount.to_string_lossy().starts_with("mnt:["));
    assert_eq!(
        Some(saved_user.clone()),
        link(format!("/proc/{pid}/ns/user"))
    );
    assert_ne!(Some(saved_mount.clone()), link("/proc/self/ns/mnt".into()));
    assert_ne!(
        Some(saved_mount.clone()),
        link(format!("/proc/{pid}/ns/mnt")),
        "the builder runs in a second mount namespace, after pivot_root"
    );

    fs::write(fixture.build_dir().join("go"), "").expect("go");
    let log = drain(&mut child);
    assert!(child.wait().expect("wait").success(), "{log}");
    assert!(child.namespaces().is_open(), "still held until reset");
    child.namespaces_mut().reset();
    assert!(!child.namespaces().is_open());
    assert_ne!(fd_link(mount_fd), Some(saved_mount), "mount ns fd closed");
    assert_ne!(fd_link(user_fd), Some(saved_user), "user ns fd closed");
}

#[test]
fn a_failed_build_is_rescued_only_where_the_store_says_invalid_now() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let output = StorePath::from_base_name(OUTPUT).expect("path");
    let build = |fixture: &Fixture| {
        let chroot = fixture.chroot(Network::Loopback);
        let mut child = fixture.start(
            &chroot,
            &format!("echo partial > /nix/store/{OUTPUT}; exit 1"),
        );
        drain(&mut child);
        assert_eq!(child.wait().expect("wait").code(), Some(1));
        chroot
    };

    // Registered valid meanwhile: the store is asked, and says valid.
    let chroot = build(&fixture);
    let real = fixture.real_store().join(OUTPUT);
    fs::write(&real, "registered\n").expect("write");
    let outcome = rescue_outputs(
        &chroot,
        &fixture.real_store(),
        std::slice::from_ref(&output),
        |_| Ok(true),
    );
    assert!(matches!(outcome[0].1, Rescue::ValidNow));
    assert_eq!(fs::read_to_string(&real).expect("read"), "registered\n");
    // Even a store that wrongly says invalid cannot make it replace a path.
    let outcome = rescue_outputs(
        &chroot,
        &fixture.real_store(),
        std::slice::from_ref(&output),
        |_| Ok(false),
    );
    assert!(matches!(outcome[0].1, Rescue::Occupied));
    assert_eq!(fs::read_to_string(&real).expect("read"), "registered\n");
    drop(chroot);

    // Invalid now and absent: moved out for inspection.
    fs::remove_file(&real).expect("rm");
    let chroot = build(&fixture);
    let outcome = rescue_outputs(&chroot, &fixture.real_store(), &[output], |_| Ok(false));
    assert!(matches!(outcome[0].1, Rescue::Moved));
    assert_eq!(fs::read_to_string(&real).expect("read"), "partial\n");
}
