//! [`AsyncFd`]: reading a non-blocking descriptor through the reactor.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::OFlags;

use super::Handle;
use super::reactor::IoKey;

/// A descriptor registered with the reactor (a log pipe, a pty master, a
/// pidfd). It is made non-blocking; reads that would block suspend the task
/// until `poll(2)` says the descriptor is readable.
pub struct AsyncFd {
    handle: Handle,
    fd: Rc<OwnedFd>,
    key: IoKey,
}

impl AsyncFd {
    /// Registers `fd`, switching it to non-blocking mode.
    pub fn new(handle: &Handle, fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(Self::watch(handle, fd))
    }

    /// Registers `fd` without touching its flags, to wait for readiness
    /// only (a pidfd, whose "readable" means "exited" and which is never
    /// read; or a descriptor that is non-blocking already).
    pub fn watch(handle: &Handle, fd: OwnedFd) -> Self {
        let fd = Rc::new(fd);
        let key = handle.reactor().register(Rc::clone(&fd));
        Self {
            handle: handle.clone(),
            fd,
            key,
        }
    }

    /// Waits until the descriptor is readable, hung up or in error.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            if self.handle.reactor().poll_ready(self.key, cx.waker()) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Reads what is available, waiting until something is. `Ok(0)` is end
    /// of file. A pty master whose slave side is closed reports `EIO` on
    /// Linux; that is end of file too.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(self.fd.as_ref(), &mut *buf) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::AGAIN) => {
                    self.handle.reactor().clear_ready(self.key);
                    self.readable().await;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::IO) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for AsyncFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for AsyncFd {
    fn drop(&mut self) {
        self.handle.reactor().deregister(self.key);
    }
}

impl fmt::Debug for AsyncFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFd").field("fd", &self.fd).finish()
    }
}
