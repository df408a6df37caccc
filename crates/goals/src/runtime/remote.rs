//! [`remote_channel`]: how other threads (or a signal-handling thread) send
//! to the worker and wake its loop.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Handle;
use super::executor::Shared;

struct Channel<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    senders: usize,
}

/// The sending side; `Send` when `T` is. While one exists the loop is never
/// considered stalled, since a message may still arrive.
pub struct RemoteSender<T> {
    channel: Arc<Mutex<Channel<T>>>,
    live_senders: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

/// The receiving side, used by a task on the worker thread.
pub struct RemoteReceiver<T> {
    channel: Arc<Mutex<Channel<T>>>,
}

/// An unbounded channel into the worker thread. Sending never blocks;
/// the receiving task's waker interrupts the loop's poll through the
/// runtime's eventfd.
pub fn remote_channel<T>(handle: &Handle) -> (RemoteSender<T>, RemoteReceiver<T>) {
    let channel = Arc::new(Mutex::new(Channel {
        queue: VecDeque::new(),
        waker: None,
        senders: 1,
    }));
    let live_senders = Arc::clone(handle.remote_senders());
    live_senders.fetch_add(1, Ordering::SeqCst);
    (
        RemoteSender {
            channel: Arc::clone(&channel),
            live_senders,
            shared: Arc::clone(handle.inner.executor.shared()),
        },
        RemoteReceiver { channel },
    )
}

fn lock<T>(channel: &Mutex<Channel<T>>) -> MutexGuard<'_, Channel<T>> {
    // Poisoning means a sender panicked while pushing; the queue itself is
    // still a valid VecDeque.
    channel.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> RemoteSender<T> {
    /// Queues `value` and wakes the receiver.
    pub fn send(&self, value: T) {
        let waker = {
            let mut channel = lock(&self.channel);
            channel.queue.push_back(value);
            channel.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Clone for RemoteSender<T> {
    fn clone(&self) -> Self {
        lock(&self.channel).senders += 1;
        self.live_senders.fetch_add(1, Ordering::SeqCst);
        Self {
            channel: Arc::clone(&self.channel),
            live_senders: Arc::clone(&self.live_senders),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for RemoteSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut channel = lock(&self.channel);
            channel.senders -= 1;
            if channel.senders == 0 {
                channel.waker.take()
            } else {
                None
            }
        };
        // Decrement before waking: the woken loop must not see a sender
        // that is gone and decide it may still be woken.
        self.live_senders.fetch_sub(1, Ordering::SeqCst);
        if let Some(waker) = waker {
            waker.wake();
        }
        // With no sender left, a loop asleep with nothing else to wait for
        // is stalled; interrupt its poll so that it notices.
        self.shared.interrupt_poll_if_sleeping();
    }
}

impl<T> RemoteReceiver<T> {
    /// The next value, or `None` once every sender is gone and the queue
    /// is empty.
    pub async fn recv(&self) -> Option<T> {
        std::future::poll_fn(|cx| {
            let mut channel = lock(&self.channel);
            if let Some(value) = channel.queue.pop_front() {
                return Poll::Ready(Some(value));
            }
            if channel.senders == 0 {
                return Poll::Ready(None);
            }
            channel.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The next value if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        lock(&self.channel).queue.pop_front()
    }
}

impl<T> fmt::Debug for RemoteSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteSender")
    }
}

impl<T> fmt::Debug for RemoteReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteReceiver")
    }
}
