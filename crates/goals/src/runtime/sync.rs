//! [`Semaphore`]: FIFO permits for the worker's build slots.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Counts free permits; waiters are served first come, first served.
///
/// A permit is handed directly to the first waiter on release, so a task
/// that calls `acquire` later cannot overtake one that is waiting.
#[derive(Clone)]
pub struct Semaphore {
    inner: Rc<Inner>,
}

struct Inner {
    total: usize,
    free: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

struct Waiter {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    pub fn new(permits: usize) -> Self {
        Self {
            inner: Rc::new(Inner {
                total: permits,
                free: Cell::new(permits),
                waiters: RefCell::new(VecDeque::new()),
            }),
        }
    }

    /// Waits for a permit.
    pub fn acquire(&self) -> Acquire {
        Acquire {
            semaphore: self.clone(),
            waiter: None,
            done: false,
        }
    }

    /// A permit if one is free and nobody waits, without waiting.
    pub fn try_acquire(&self) -> Option<Permit> {
        if self.inner.free.get() > 0 && self.inner.waiters.borrow().is_empty() {
            self.inner.free.set(self.inner.free.get() - 1);
            Some(Permit {
                semaphore: self.clone(),
            })
        } else {
            None
        }
    }

    /// Permits not handed out.
    pub fn available(&self) -> usize {
        self.inner.free.get()
    }

    /// Permits handed out and not yet released.
    pub fn in_use(&self) -> usize {
        self.inner.total - self.inner.free.get()
    }

    /// Tasks waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.borrow().len()
    }

    fn release(&self) {
        let next = self.inner.waiters.borrow_mut().pop_front();
        match next {
            Some(waiter) => {
                waiter.granted.set(true);
                let waker = waiter.waker.borrow_mut().take();
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            None => self.inner.free.set(self.inner.free.get() + 1),
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// The future of [`Semaphore::acquire`]. Dropping it gives up its place in
/// the queue, or passes on a permit granted but not yet taken.
pub struct Acquire {
    semaphore: Semaphore,
    waiter: Option<Rc<Waiter>>,
    done: bool,
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let this = self.get_mut();
        match &this.waiter {
            None => {
                if let Some(permit) = this.semaphore.try_acquire() {
                    this.done = true;
                    return Poll::Ready(permit);
                }
                let waiter = Rc::new(Waiter {
                    granted: Cell::new(false),
                    waker: RefCell::new(Some(cx.waker().clone())),
                });
                this.semaphore
                    .inner
                    .waiters
                    .borrow_mut()
                    .push_back(Rc::clone(&waiter));
                this.waiter = Some(waiter);
                Poll::Pending
            }
            Some(waiter) if waiter.granted.get() => {
                this.done = true;
                this.waiter = None;
                Poll::Ready(Permit {
                    semaphore: this.semaphore.clone(),
                })
            }
            Some(waiter) => {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if waiter.granted.get() {
            self.semaphore.release();
        } else {
            self.semaphore
                .inner
                .waiters
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, &waiter));
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("queued", &self.waiter.is_some())
            .finish()
    }
}

/// A held permit; dropping it releases it.
pub struct Permit {
    semaphore: Semaphore,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}
