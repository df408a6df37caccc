//! The single-threaded runtime the worker is built on: the only event loop
//! in larder.
//!
//! Futures run on the thread that calls [`Runtime::block_on`]. The thread
//! sleeps in exactly one place, the reactor's `poll(2)`, which waits for
//! readable descriptors (builders' log pipes, pidfds of running builders),
//! the wake-up eventfd (written by wakers called on other threads) and the
//! earliest timer. Nothing else on the worker thread may block.
//!
//! - [`Runtime`] and its cloneable [`Handle`]: spawn tasks ([`JoinHandle`],
//!   abortable), timers ([`Handle::sleep`], [`Handle::timeout`]).
//! - [`AsyncFd`]: reads a non-blocking descriptor through the reactor.
//! - [`Process`]: a child's exit through its pidfd; dropping it kills the
//!   child's process group, so cancelling a goal kills its builder.
//! - [`Semaphore`]: FIFO permits, the build slots of `-j N`.
//! - [`remote_channel`]: the only way other threads talk to the loop.

mod executor;
mod fd;
mod process;
mod reactor;
mod remote;
mod sync;
mod time;

pub use fd::AsyncFd;
pub use process::{KillScope, Process};
pub use remote::{RemoteReceiver, RemoteSender, remote_channel};
pub use sync::{Acquire, Permit, Semaphore};
pub use time::{Elapsed, Sleep, Timeout};

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use executor::{Executor, MAIN_TASK, Shared, TaskId, TaskWaker};
use reactor::Reactor;

/// Why [`Runtime::block_on`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The driven future is pending but nothing could ever wake it: no task
    /// is ready, no descriptor is waited for, no timer is armed and no
    /// remote sender exists. Rather than sleep forever, the loop stops.
    #[error("event loop stalled: {tasks} task(s) pending with nothing left that could wake them")]
    Stalled {
        /// How many spawned tasks were still alive.
        tasks: usize,
    },
    /// `poll(2)` or the eventfd failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

/// Owns the event loop. Dropping it drops every task (killing their
/// processes) and reaps the killed processes.
pub struct Runtime {
    handle: Handle,
}

/// A cheap, cloneable reference to the runtime, usable from its tasks. It
/// cannot leave the worker thread (`!Send`).
#[derive(Clone)]
pub struct Handle {
    inner: Rc<Inner>,
}

struct Inner {
    executor: Executor,
    reactor: Reactor,
    /// How many [`RemoteSender`]s exist: while any does, an idle loop may
    /// still be woken from another thread, so it is not stalled.
    remote_senders: Arc<AtomicUsize>,
}

impl Runtime {
    /// Creates a runtime (one eventfd).
    pub fn new() -> io::Result<Self> {
        let wake_fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let shared = Arc::new(Shared::new(wake_fd));
        Ok(Self {
            handle: Handle {
                inner: Rc::new(Inner {
                    executor: Executor::new(shared),
                    reactor: Reactor::default(),
                    remote_senders: Arc::new(AtomicUsize::new(0)),
                }),
            },
        })
    }

    /// The handle to spawn tasks and create timers and descriptors with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` and every spawned task until `future` completes.
    /// Spawned tasks still alive afterwards stay suspended (they run again
    /// in the next `block_on`, or are dropped with the runtime).
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, RuntimeError> {
        let inner = &self.handle.inner;
        let shared = Arc::clone(inner.executor.shared());
        let main_waker = TaskWaker::new(MAIN_TASK, Arc::clone(&shared));
        let waker = Waker::from(Arc::clone(&main_waker));
        let mut future = pin!(future);
        let mut main_ready = true;
        loop {
            if main_ready {
                main_waker.clear_queued();
                let mut cx = Context::from_waker(&waker);
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return Ok(out);
                }
            }
            main_ready = false;
            for id in shared.take_ready() {
                if id == MAIN_TASK {
                    main_ready = true;
                } else {
                    inner.executor.poll_task(id);
                }
            }
            if main_ready {
                continue;
            }
            // Sleep only when nothing is ready; otherwise look at the
            // descriptors without sleeping, so a busy round of tasks does
            // not starve the log pipes.
            shared.set_polling(true);
            let block = !shared.has_ready();
            if block
                && !inner.reactor.has_wakeable_sources()
                && inner.remote_senders.load(Ordering::SeqCst) == 0
            {
                shared.set_polling(false);
                return Err(RuntimeError::Stalled {
                    tasks: inner.executor.len(),
                });
            }
            let turn = inner.reactor.turn(shared.wake_fd(), block);
            shared.set_polling(false);
            for waker in turn?.wakers {
                waker.wake();
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Tasks hold handles (an Rc cycle through `Inner`), so they are
        // dropped explicitly; their processes are killed and become
        // zombies, reaped here.
        self.handle.inner.executor.drop_all();
        self.handle.inner.reactor.reap_all_zombies();
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("tasks", &self.handle.inner.executor.len())
            .finish()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("tasks", &self.inner.executor.len())
            .finish()
    }
}

impl Handle {
    /// Spawns a task on the worker thread. It runs while some `block_on`
    /// runs, until it completes or is aborted.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let state = Rc::new(RefCell::new(JoinState {
            output: None,
            cancelled: false,
            waker: None,
        }));
        let completion = Completion {
            state: Rc::clone(&state),
            done: false,
        };
        let id = self.inner.executor.spawn(Box::pin(async move {
            let mut completion = completion;
            let output = future.await;
            completion.complete(output);
        }));
        JoinHandle {
            state,
            id,
            handle: self.clone(),
        }
    }

    /// A future that completes at `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep::new(self.clone(), deadline)
    }

    /// A future that completes after `duration`.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(Instant::now() + duration)
    }

    /// Runs `future` for at most `duration`.
    pub fn timeout<F: Future>(&self, duration: Duration, future: F) -> Timeout<F> {
        Timeout::new(future, self.sleep(duration))
    }

    /// How many spawned tasks are alive.
    pub fn task_count(&self) -> usize {
        self.inner.executor.len()
    }

    /// How many killed child processes are not reaped yet.
    pub fn zombie_count(&self) -> usize {
        self.inner.reactor.zombie_count()
    }

    fn reactor(&self) -> &Reactor {
        &self.inner.reactor
    }

    fn remote_senders(&self) -> &Arc<AtomicUsize> {
        &self.inner.remote_senders
    }
}

/// Yields once: the task goes to the back of the ready queue.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// The task was aborted before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task was cancelled")]
pub struct Cancelled;

/// Awaits a spawned task's output. Dropping it detaches the task; use
/// [`JoinHandle::abort`] to cancel it.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
    id: TaskId,
    handle: Handle,
}

struct JoinState<T> {
    output: Option<T>,
    cancelled: bool,
    waker: Option<Waker>,
}

impl<T> JoinHandle<T> {
    /// Cancels the task: its future is dropped (now, or when its current
    /// poll returns), which drops everything it owns.
    pub fn abort(&self) {
        self.handle.inner.executor.abort(self.id);
    }

    /// True once the task completed or was cancelled.
    pub fn is_finished(&self) -> bool {
        let state = self.state.borrow();
        state.output.is_some() || state.cancelled
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.state.borrow_mut();
        if let Some(output) = state.output.take() {
            return Poll::Ready(Ok(output));
        }
        if state.cancelled {
            return Poll::Ready(Err(Cancelled));
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("task", &self.id)
            .finish()
    }
}

/// Lives inside the spawned future: completes the join state with the
/// output, or marks it cancelled when dropped first.
struct Completion<T> {
    state: Rc<RefCell<JoinState<T>>>,
    done: bool,
}

impl<T> Completion<T> {
    fn complete(&mut self, output: T) {
        self.done = true;
        let waker = {
            let mut state = self.state.borrow_mut();
            state.output = Some(output);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waker = {
            let mut state = self.state.borrow_mut();
            state.cancelled = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests;
