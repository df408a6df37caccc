//! Loopback-only network namespaces, kept for the next build.
//!
//! Creating a network namespace and tearing it down again (the kernel's
//! `cleanup_net`, which waits for RCU grace periods) was about a fifth of
//! a trivial sandboxed build's CPU time. A process running as root can keep
//! the namespaces it made instead: [`NetworkNamespaces`] hands each build
//! one with only `lo`, up, and takes it back once the build's processes are
//! gone.
//!
//! Reuse must not let one build see another:
//!
//! - A namespace serves one build at a time; a running build holds it as a
//!   [`LoopbackNamespace`].
//! - It is made by this process in the host's user namespace, so the
//!   builder, uid 1000 in a user namespace of its own, holds no capability
//!   over it: it cannot change its interfaces, addresses, routes, firewall
//!   or `net` sysctls, and there is nothing of that kind to reset.
//! - What a build can leave behind are sockets that outlive their
//!   processes: TCP connections closing (`TIME_WAIT`, `FIN_WAIT`), unix
//!   sockets waiting for the garbage collector. A namespace is handed out
//!   again only when the kernel counts no socket at all in it (`SOCKET_COUNTS`);
//!   otherwise it is dropped and a new one made.
//!
//! Where this process may not create network namespaces itself (not root),
//! the sandbox's `clone` makes one per build instead, owned by the build's
//! user namespace, and brings its `lo` up.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use crate::SandboxError;

/// The spare loopback namespaces of one worker, and whether it can make
/// them. Share it between the builds of a worker ([`crate::SandboxConfig`]
/// does).
#[derive(Debug, Default)]
pub struct NetworkNamespaces {
    spares: Mutex<Vec<OwnedFd>>,
    /// Set once creating a namespace failed: the sandbox's `clone` makes
    /// one per build from then on.
    unavailable: AtomicBool,
}

/// A loopback-only network namespace in use by one build.
#[derive(Debug)]
pub struct LoopbackNamespace {
    fd: OwnedFd,
}

/// The calling thread in a clean loopback namespace, until [`Entered::leave`].
#[derive(Debug)]
#[must_use = "the thread stays in the namespace until `leave`"]
pub(crate) struct Entered {
    home: OwnedFd,
    namespace: OwnedFd,
}

/// Spare namespaces kept at most: more than a worker runs builds at once
/// would only hold kernel memory.
const MAX_SPARES: usize = 64;

/// The kernel's socket counts of the calling thread's network namespace:
/// `sockets: used` counts every socket in it (of any family, including
/// closed connections whose process is gone and unix sockets waiting for
/// the garbage collector), `tw` its TCP connections in `TIME_WAIT`. Listing
/// the sockets (`/proc/net/tcp`) instead would walk the host's whole TCP
/// hash table, milliseconds per look.
const SOCKET_COUNTS: &str = "/proc/thread-self/net/sockstat";

impl NetworkNamespaces {
    /// An empty pool; namespaces are made when builds need them.
    pub fn new() -> Self {
        NetworkNamespaces::default()
    }

    /// How many namespaces wait for a build.
    pub fn spare_count(&self) -> usize {
        self.spares.lock().map_or(0, |spares| spares.len())
    }

    /// Takes back a build's namespace, for the next build if no socket is
    /// left in it by then.
    ///
    /// Only once every process of the build is gone (the sandbox's PID 1 was
    /// reaped, which the kernel lets happen only after the rest of its PID
    /// namespace is gone): a namespace given back is handed out again.
    pub fn give_back(&self, namespace: LoopbackNamespace) {
        if let Ok(mut spares) = self.spares.lock()
            && spares.len() < MAX_SPARES
        {
            spares.push(namespace.fd);
        }
    }

    /// Moves the calling thread into a clean loopback namespace: a spare one
    /// with no socket left in it, or a new one with `lo` brought up. A
    /// process created by this thread before [`Entered::leave`] starts in it.
    ///
    /// `Ok(None)` when this process cannot make network namespaces (it is
    /// not root): the thread has not moved, and the caller makes one per
    /// build instead.
    ///
    /// # Errors
    ///
    /// When this thread's own namespace cannot be opened, or the thread
    /// cannot return to it after looking into a spare one.
    pub(crate) fn enter(&self) -> Result<Option<Entered>, SandboxError> {
        if self.unavailable.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let home = open_current().map_err(|source| SandboxError::Spawn {
            step: "opening this thread's network namespace",
            source,
        })?;
        while let Some(spare) = self.pop_spare() {
            if rustix::thread::move_into_link_name_space(
                spare.as_fd(),
                Some(LinkNameSpaceType::Network),
            )
            .is_err()
            {
                continue;
            }
            if current_has_no_sockets() {
                return Ok(Some(Entered {
                    home,
                    namespace: spare,
                }));
            }
            return_home(&home)?;
            tracing::debug!("a build left sockets in its network namespace: not reused");
        }
        // SAFETY: a new network namespace changes only which network this
        // thread's new sockets and children see; no descriptor, memory or
        // file system state is unshared.
        if unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.is_err() {
            self.unavailable.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        match loopback_up()
            .map_err(io::Error::from)
            .and_then(|()| open_current())
        {
            Ok(namespace) => Ok(Some(Entered { home, namespace })),
            Err(error) => {
                return_home(&home)?;
                tracing::debug!("setting up a loopback namespace: {error}; one per build instead");
                self.unavailable.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn pop_spare(&self) -> Option<OwnedFd> {
        self.spares.lock().ok()?.pop()
    }
}

impl Entered {
    /// Moves the thread back to the namespace it came from; the namespace it
    /// was in is the build's now.
    ///
    /// # Errors
    ///
    /// When the kernel refuses the move (it can only lack memory: the
    /// thread was in that namespace a moment ago, with the same
    /// capabilities).
    pub(crate) fn leave(self) -> Result<LoopbackNamespace, SandboxError> {
        return_home(&self.home)?;
        Ok(LoopbackNamespace { fd: self.namespace })
    }
}

/// Brings up `lo` in the calling thread's network namespace, so that a
/// builder can talk to itself over 127.0.0.1. Only raw system calls: the
/// sandbox's child calls it too.
pub(crate) fn loopback_up() -> rustix::io::Result<()> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let mut request = InterfaceFlags {
        name: [0; 16],
        flags: IFF_UP | IFF_LOOPBACK | IFF_RUNNING,
        _pad: [0; 22],
    };
    request.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`, which `InterfaceFlags`
    // lays out exactly (name, then the flags member of the union, padded to
    // the union's size).
    unsafe {
        rustix::ioctl::ioctl(
            &socket,
            rustix::ioctl::Setter::<SIOCSIFFLAGS, InterfaceFlags>::new(request),
        )
    }
}

/// `struct ifreq` as `SIOCSIFFLAGS` reads it: the interface name, then the
/// flags in a union padded to 24 bytes.
#[repr(C)]
struct InterfaceFlags {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

const SIOCSIFFLAGS: rustix::ioctl::Opcode = 0x8914;
const IFF_UP: i16 = 0x1;
const IFF_LOOPBACK: i16 = 0x8;
const IFF_RUNNING: i16 = 0x40;

fn open_current() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        c"/proc/thread-self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn return_home(home: &OwnedFd) -> Result<(), SandboxError> {
    rustix::thread::move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|errno| SandboxError::Spawn {
            step: "returning to this thread's network namespace",
            source: errno.into(),
        })
}

/// Whether the kernel counts no socket in the calling thread's network
/// namespace. Counts that cannot be read, or lack `used` or `tw` (kernels
/// before 4.16), are not taken for an empty namespace.
fn current_has_no_sockets() -> bool {
    std::fs::read_to_string(SOCKET_COUNTS).is_ok_and(|counts| counts_are_empty(&counts))
}

/// Whether every `used`, `inuse` and `tw` count in a `sockstat` text is
/// zero, and both `used` and `tw` are there. Each line is a label and
/// pairs of a name and a number: `TCP: inuse 0 orphan 0 tw 0 alloc 1 mem 0`.
fn counts_are_empty(counts: &str) -> bool {
    let (mut used, mut tw) = (false, false);
    for line in counts.lines() {
        let mut words = line.split_whitespace().skip(1);
        while let (Some(name), Some(value)) = (words.next(), words.next()) {
            let seen = match name {
                "used" => &mut used,
                "tw" => &mut tw,
                "inuse" => &mut false,
                _ => continue,
            };
            if value != "0" {
                return false;
            }
            *seen = true;
        }
    }
    used && tw
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn socket_counts_are_read_as_the_kernel_writes_them() {
        let empty = "sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 9 mem 373\n\
                     UDP: inuse 0 mem 0\nFRAG: inuse 0 memory 0\n";
        assert!(counts_are_empty(empty));
        assert!(!counts_are_empty(&empty.replace("used 0", "used 1")));
        assert!(!counts_are_empty(&empty.replace("tw 0", "tw 2")));
        assert!(!counts_are_empty(
            &empty.replace("UDP: inuse 0", "UDP: inuse 1")
        ));
        // Without the per-namespace counts nothing is known.
        assert!(!counts_are_empty("TCP: inuse 0 orphan 0 alloc 1 mem 0\n"));
        assert!(!counts_are_empty(""));
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<InterfaceFlags>(), 40);
    }

    /// The namespace's identity, as `ls -i /proc/self/ns/net` shows it.
    fn inode(fd: &OwnedFd) -> u64 {
        std::fs::File::from(fd.try_clone().expect("dup"))
            .metadata()
            .expect("fstat")
            .ino()
    }

    fn current_inode() -> u64 {
        inode(&open_current().expect("open"))
    }

    /// Runs `check` on a thread of its own, which moves between namespaces.
    fn on_own_thread(check: impl FnOnce() + Send + 'static) {
        std::thread::spawn(check).join().expect("the check passed");
    }

    fn entered_or_skip(pool: &NetworkNamespaces) -> Option<Entered> {
        let entered = pool.enter().expect("enter");
        if entered.is_none() {
            eprintln!("skipped: making network namespaces needs root");
        }
        entered
    }

    #[test]
    fn a_clean_namespace_is_reused_and_the_thread_returns_home() {
        on_own_thread(|| {
            let pool = NetworkNamespaces::new();
            let home = current_inode();
            let Some(entered) = entered_or_skip(&pool) else {
                return;
            };
            let first = current_inode();
            assert_ne!(first, home);
            // `lo` is up: a listener on it accepts a connection.
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind in the namespace");
            let port = listener.local_addr().expect("addr").port();
            drop(listener);
            assert!(current_has_no_sockets(), "a closed listener leaves nothing");
            let namespace = entered.leave().expect("leave");
            assert_eq!(current_inode(), home);
            assert_eq!(inode(&namespace.fd), first);
            pool.give_back(namespace);
            assert_eq!(pool.spare_count(), 1);

            let entered = pool.enter().expect("enter").expect("entered again");
            assert_eq!(current_inode(), first, "the spare is reused");
            assert_eq!(pool.spare_count(), 0);
            assert!(
                TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "the port is free again"
            );
            entered.leave().expect("leave");
            assert_eq!(current_inode(), home);
        });
    }

    #[test]
    fn a_namespace_with_sockets_left_is_not_reused() {
        on_own_thread(|| {
            let pool = NetworkNamespaces::new();
            let Some(entered) = entered_or_skip(&pool) else {
                return;
            };
            let first = current_inode();
            // A connection closed by the client first leaves the client's
            // side in TIME_WAIT after both are closed: what a test suite
            // talking to its own server leaves behind.
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop(client);
            drop(server);
            drop(listener);
            assert!(!current_has_no_sockets(), "TIME_WAIT is listed");
            pool.give_back(entered.leave().expect("leave"));

            let entered = pool.enter().expect("enter").expect("entered again");
            assert_ne!(current_inode(), first, "a new namespace");
            assert!(current_has_no_sockets());
            assert!(
                TcpListener::bind(("127.0.0.1", 0)).is_ok(),
                "lo is up in the new one"
            );
            entered.leave().expect("leave");
        });
    }
}
