//! The worker: larder's only event loop, and the goals it runs.
//!
//! - [`runtime`]: a single-threaded executor over one `poll(2)` reactor
//!   (descriptors, pidfds, a wake-up eventfd, timers), with abortable
//!   tasks, kill-on-drop child processes and a FIFO semaphore for build
//!   slots. The worker thread never blocks anywhere else.

pub mod runtime;
