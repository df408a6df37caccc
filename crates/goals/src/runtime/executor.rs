//! The task half of the runtime: spawned futures, their wakers and the
//! queue of tasks ready to run.
//!
//! Futures are `!Send` and live on the worker thread only. Their wakers
//! are `Send + Sync` (the standard library requires it), so a waker may be
//! called from another thread: it pushes the task's id onto a mutex-guarded
//! queue and, when the worker thread is asleep in `poll(2)`, writes to the
//! runtime's eventfd so that the poll returns.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};

/// A task's identity, never reused within one runtime.
pub(crate) type TaskId = u64;

/// The id `block_on` gives the future it drives; spawned tasks start at 1.
pub(crate) const MAIN_TASK: TaskId = 0;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The part of the runtime that wakers on any thread may touch.
pub(crate) struct Shared {
    ready: Mutex<Vec<TaskId>>,
    /// The eventfd that interrupts the worker's `poll(2)`.
    wake_fd: OwnedFd,
    /// True while the worker thread is in (or about to enter) `poll(2)`:
    /// only then does a wake need the eventfd write.
    polling: AtomicBool,
}

impl Shared {
    pub(crate) fn new(wake_fd: OwnedFd) -> Self {
        Self {
            ready: Mutex::new(Vec::new()),
            wake_fd,
            polling: AtomicBool::new(false),
        }
    }

    pub(crate) fn wake_fd(&self) -> &OwnedFd {
        &self.wake_fd
    }

    /// Queues a task and interrupts the poll if the worker is in it.
    pub(crate) fn schedule(&self, id: TaskId) {
        self.lock_ready().push(id);
        self.interrupt_poll_if_sleeping();
    }

    /// Interrupts the poll if the worker is in it. The ordering argument:
    /// the worker stores `polling = true` and only then looks at the ready
    /// queue under its mutex; a waker pushes under the same mutex and only
    /// then loads `polling`. So either the worker sees the pushed id, or the
    /// waker sees `polling == true` and writes the eventfd.
    pub(crate) fn interrupt_poll_if_sleeping(&self) {
        if self.polling.load(Ordering::SeqCst) {
            // A full eventfd counter (EAGAIN) already means "readable", so
            // a failed write loses nothing.
            let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
        }
    }

    pub(crate) fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::SeqCst);
    }

    pub(crate) fn take_ready(&self) -> Vec<TaskId> {
        std::mem::take(&mut *self.lock_ready())
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.lock_ready().is_empty()
    }

    fn lock_ready(&self) -> MutexGuard<'_, Vec<TaskId>> {
        // A poisoned queue only means a waker panicked on another thread
        // after or before pushing a plain integer; the Vec is still sound.
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The waker of one task.
pub(crate) struct TaskWaker {
    id: TaskId,
    shared: Arc<Shared>,
    /// Set while the id is in the ready queue, so a task woken many times
    /// between two polls is queued once.
    queued: AtomicBool,
}

impl TaskWaker {
    pub(crate) fn new(id: TaskId, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            id,
            shared,
            queued: AtomicBool::new(false),
        })
    }

    /// Called right before the task is polled: a wake from now on must
    /// queue it again.
    pub(crate) fn clear_queued(&self) {
        self.queued.store(false, Ordering::SeqCst);
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.shared.schedule(self.id);
        }
    }
}

struct Task {
    /// `None` while the task is being polled.
    future: Option<LocalFuture>,
    waker: Arc<TaskWaker>,
    /// Set when the task is aborted during its own poll: the future is
    /// dropped as soon as the poll returns.
    aborted: bool,
}

/// The spawned tasks of one runtime.
pub(crate) struct Executor {
    shared: Arc<Shared>,
    tasks: RefCell<HashMap<TaskId, Task>>,
    next_id: Cell<TaskId>,
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            tasks: RefCell::new(HashMap::new()),
            next_id: Cell::new(MAIN_TASK + 1),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Adds a task and queues it for its first poll.
    pub(crate) fn spawn(&self, future: LocalFuture) -> TaskId {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let waker = TaskWaker::new(id, Arc::clone(&self.shared));
        self.tasks.borrow_mut().insert(
            id,
            Task {
                future: Some(future),
                waker: Arc::clone(&waker),
                aborted: false,
            },
        );
        waker.wake_by_ref();
        id
    }

    /// Polls one task once. No borrow of the task table is held while the
    /// future runs or is dropped, so a task may spawn and abort tasks,
    /// itself included.
    pub(crate) fn poll_task(&self, id: TaskId) {
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(&id) {
                Some(task) => task.future.take().map(|f| (f, Arc::clone(&task.waker))),
                None => None,
            }
        };
        let Some((mut future, task_waker)) = taken else {
            return;
        };
        task_waker.clear_queued();
        let waker = Waker::from(Arc::clone(&task_waker));
        let mut cx = Context::from_waker(&waker);
        let finished = future.as_mut().poll(&mut cx).is_ready();
        let to_drop = {
            let mut tasks = self.tasks.borrow_mut();
            if finished {
                tasks.remove(&id);
                Some(future)
            } else {
                match tasks.get_mut(&id) {
                    Some(task) if !task.aborted => {
                        task.future = Some(future);
                        None
                    }
                    Some(_) => {
                        tasks.remove(&id);
                        Some(future)
                    }
                    None => Some(future),
                }
            }
        };
        drop(to_drop);
    }

    /// Cancels a task: its future is dropped now, or right after its
    /// current poll if it is the one running.
    pub(crate) fn abort(&self, id: TaskId) {
        let to_drop = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(&id) {
                Some(task) => match task.future.take() {
                    Some(future) => {
                        tasks.remove(&id);
                        Some(future)
                    }
                    None => {
                        task.aborted = true;
                        None
                    }
                },
                None => None,
            }
        };
        drop(to_drop);
    }

    /// How many tasks are alive.
    pub(crate) fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// Drops every task's future, one at a time, with no borrow held: a
    /// dropped future may spawn or abort others.
    pub(crate) fn drop_all(&self) {
        loop {
            let next = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(&id) = tasks.keys().next() else {
                    break;
                };
                tasks.remove(&id).and_then(|task| task.future)
            };
            drop(next);
        }
    }
}
