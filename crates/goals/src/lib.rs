//! The worker: larder's only event loop, and the goals it runs.
//!
//! One goal per derivation, deduplicated by `.drv` path, each a task on a
//! single-threaded runtime; a goal awaits its inputs' goals, then a build
//! slot, then its locks, builds, and registers. The worker thread never
//! blocks: it sleeps only in the runtime's `poll(2)`, and every lock is
//! taken by try-lock, waiting on the loop while busy.
//!
//! - [`runtime`]: the executor and `poll(2)` reactor (descriptors, pidfds,
//!   a wake-up eventfd, timers), abortable tasks, kill-on-drop child
//!   processes, a FIFO semaphore for build slots.
//! - [`backend`]: what the worker asks of the store and the builder
//!   ([`Backend`], [`StartedBuild`], [`UnpreparedBuild`]).
//! - [`worker`]: [`build`] and [`Worker`], the goals and the lock
//!   discipline; [`Settings`].
//! - [`store_backend`]: [`StoreBackend`], the real backend over a local
//!   store and the builder crate (generic or sandboxed builder).
//! - [`locks`]: waiting for path locks on the loop, with the wait-for
//!   cycle check.
//! - [`log`]: draining a builder's log under its [`Limits`].
//! - [`result`]: [`BuildResult`], [`BuildStatus`], [`Failure`] and
//!   [`exit_status`] as `nix-store --realise` computes it.
//! - [`events`]: the progress [`Event`]s and their [`EventSink`].

pub mod backend;
pub mod events;
pub mod locks;
pub mod log;
pub mod result;
pub mod runtime;
pub mod store_backend;
pub mod worker;

pub use backend::{Backend, Plan, StartedBuild, UnpreparedBuild};
pub use events::{Event, EventSink};
pub use log::Limits;
pub use result::{BuildResult, BuildStatus, Failure, exit_status};
pub use store_backend::{BuilderFactory, StoreBackend};
pub use worker::{Settings, Worker, build, build_until};

#[cfg(test)]
mod tests;
