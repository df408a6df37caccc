//! The I/O half of the runtime: the one `poll(2)` where the worker thread
//! sleeps, over registered descriptors, the wake-up eventfd, the pidfds of
//! killed processes still to reap, and a heap of timers that gives the
//! poll its timeout.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{WaitId, WaitIdOptions};

/// The key of one registered descriptor.
pub(crate) type IoKey = u64;

/// The key of one armed timer.
pub(crate) type TimerKey = u64;

struct IoEntry {
    fd: Rc<OwnedFd>,
    /// Set by the poll when the descriptor was readable (or hung up, or
    /// failed); consumed by the future that waits for it.
    ready: bool,
    /// The waiting future's waker. Only descriptors with a waiter are
    /// polled, so an idle registration costs nothing.
    waker: Option<Waker>,
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Live timers; a key missing here is a cancelled heap entry, skipped
    /// lazily when it reaches the top.
    wakers: HashMap<TimerKey, Waker>,
}

/// Registered descriptors, timers and zombies.
#[derive(Default)]
pub(crate) struct Reactor {
    io: RefCell<HashMap<IoKey, IoEntry>>,
    timers: RefCell<Timers>,
    zombies: RefCell<Vec<OwnedFd>>,
    next_key: Cell<u64>,
}

/// What one turn of the reactor found.
pub(crate) struct Turn {
    /// Wakers to call once every borrow of the reactor is released.
    pub(crate) wakers: Vec<Waker>,
}

impl Reactor {
    fn key(&self) -> u64 {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        key
    }

    pub(crate) fn register(&self, fd: Rc<OwnedFd>) -> IoKey {
        let key = self.key();
        self.io.borrow_mut().insert(
            key,
            IoEntry {
                fd,
                ready: false,
                waker: None,
            },
        );
        key
    }

    pub(crate) fn deregister(&self, key: IoKey) {
        let entry = self.io.borrow_mut().remove(&key);
        drop(entry);
    }

    /// Consumes the readiness of a descriptor, or stores the waker to call
    /// when the next poll finds it ready.
    pub(crate) fn poll_ready(&self, key: IoKey, waker: &Waker) -> bool {
        let mut io = self.io.borrow_mut();
        let Some(entry) = io.get_mut(&key) else {
            // A deregistered descriptor never becomes ready again; say so
            // rather than sleep forever.
            return true;
        };
        if entry.ready {
            entry.ready = false;
            entry.waker = None;
            true
        } else {
            entry.waker = Some(waker.clone());
            false
        }
    }

    /// Clears a readiness that turned out spurious (the read said EAGAIN).
    pub(crate) fn clear_ready(&self, key: IoKey) {
        if let Some(entry) = self.io.borrow_mut().get_mut(&key) {
            entry.ready = false;
        }
    }

    pub(crate) fn add_timer(&self, deadline: Instant, waker: &Waker) -> TimerKey {
        let key = self.key();
        let mut timers = self.timers.borrow_mut();
        timers.heap.push(Reverse((deadline, key)));
        timers.wakers.insert(key, waker.clone());
        key
    }

    /// Replaces the waker of an armed timer; false if it is no longer
    /// armed (it fired).
    pub(crate) fn update_timer(&self, key: TimerKey, waker: &Waker) -> bool {
        match self.timers.borrow_mut().wakers.get_mut(&key) {
            Some(slot) => {
                *slot = waker.clone();
                true
            }
            None => false,
        }
    }

    pub(crate) fn cancel_timer(&self, key: TimerKey) {
        let waker = self.timers.borrow_mut().wakers.remove(&key);
        drop(waker);
    }

    /// Hands over the pidfd of a killed child; it is reaped when it exits.
    pub(crate) fn add_zombie(&self, pidfd: OwnedFd) {
        self.zombies.borrow_mut().push(pidfd);
    }

    /// True if something registered here can still wake a task: a waiting
    /// descriptor or an armed timer.
    pub(crate) fn has_wakeable_sources(&self) -> bool {
        self.io.borrow().values().any(|e| e.waker.is_some())
            || !self.timers.borrow().wakers.is_empty()
    }

    /// The deadline of the earliest live timer.
    fn next_deadline(&self) -> Option<Instant> {
        let mut timers = self.timers.borrow_mut();
        while let Some(&Reverse((deadline, key))) = timers.heap.peek() {
            if timers.wakers.contains_key(&key) {
                return Some(deadline);
            }
            timers.heap.pop();
        }
        None
    }

    /// One poll. `block` false polls without sleeping (tasks are ready to
    /// run); otherwise the poll sleeps until a descriptor is ready, the
    /// eventfd is written, or the earliest timer is due.
    pub(crate) fn turn(&self, wake_fd: &OwnedFd, block: bool) -> io::Result<Turn> {
        let waiting: Vec<(IoKey, Rc<OwnedFd>)> = self
            .io
            .borrow()
            .iter()
            .filter(|(_, e)| e.waker.is_some())
            .map(|(k, e)| (*k, Rc::clone(&e.fd)))
            .collect();
        let zombies = self.zombies.borrow_mut().split_off(0);
        let timeout = if block {
            self.next_deadline().map(|deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                timespec(left)
            })
        } else {
            Some(timespec(Duration::ZERO))
        };

        let mut fds = Vec::with_capacity(1 + waiting.len() + zombies.len());
        fds.push(PollFd::new(wake_fd, PollFlags::IN));
        for (_, fd) in &waiting {
            fds.push(PollFd::new(fd.as_ref(), PollFlags::IN));
        }
        for fd in &zombies {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            // A signal only ends the sleep early; the caller loops.
            Err(rustix::io::Errno::INTR) => {
                for fd in &mut fds {
                    fd.clear_revents();
                }
            }
            Err(e) => {
                self.zombies.borrow_mut().extend(zombies);
                return Err(e.into());
            }
        }
        let revents: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);

        if revents[0] {
            drain_eventfd(wake_fd);
        }
        let mut wakers = Vec::new();
        {
            let mut io = self.io.borrow_mut();
            for ((key, _), &ready) in waiting.iter().zip(&revents[1..]) {
                if !ready {
                    continue;
                }
                if let Some(entry) = io.get_mut(key) {
                    entry.ready = true;
                    wakers.extend(entry.waker.take());
                }
            }
        }
        let zombie_events = &revents[1 + waiting.len()..];
        for (pidfd, &ready) in zombies.into_iter().zip(zombie_events) {
            if !(ready && reap(&pidfd)) {
                self.zombies.borrow_mut().push(pidfd);
            }
        }
        self.expire_timers(&mut wakers);
        Ok(Turn { wakers })
    }

    fn expire_timers(&self, wakers: &mut Vec<Waker>) {
        let now = Instant::now();
        let mut timers = self.timers.borrow_mut();
        while let Some(&Reverse((deadline, key))) = timers.heap.peek() {
            if deadline > now {
                break;
            }
            timers.heap.pop();
            // The Sleep that owned the timer checks the clock itself when
            // polled; the reactor only has to wake it.
            wakers.extend(timers.wakers.remove(&key));
        }
    }

    /// Reaps every zombie, waiting for each. Called only when the runtime
    /// is dropped, after every task is gone: the processes were sent
    /// SIGKILL, so each wait is short.
    pub(crate) fn reap_all_zombies(&self) {
        let zombies = std::mem::take(&mut *self.zombies.borrow_mut());
        for pidfd in zombies {
            // The pidfd is non-blocking (waitid would say EAGAIN), so wait
            // for it to turn readable (the child exited) first.
            while !reap(&pidfd) {
                let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// How many killed processes are not reaped yet.
    pub(crate) fn zombie_count(&self) -> usize {
        self.zombies.borrow().len()
    }
}

/// Reaps an exited child through its pidfd without waiting; true when the
/// child is gone (reaped now, or already reaped by someone else).
fn reap(pidfd: &OwnedFd) -> bool {
    // EAGAIN is what a non-blocking pidfd says for "still running"; any
    // other error (ECHILD: reaped elsewhere) means nothing is left to wait
    // for.
    !matches!(
        rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ),
        Ok(None) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR)
    )
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // The eventfd is non-blocking: one read resets the counter, EAGAIN
    // means another drain got there first.
    let _ = rustix::io::read(fd, &mut buf);
}

fn timespec(d: Duration) -> Timespec {
    // `ppoll` takes nanoseconds and never returns before the timeout, so a
    // due timer is always found expired after the poll.
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}
