//! larder's Linux sandbox.
//!
//! A build runs in new user, mount, PID, network, IPC, UTS and cgroup
//! namespaces, as uid 1000 / gid 100 (`nixbld`), PID 1 of its namespace, on
//! host `localhost`, inside a chroot made for it: the input closure mounted
//! read-only at `/nix/store/...`, the build directory at `/build`, a minimal
//! `/dev`, a fresh `/proc`, `/tmp`, Nix's `/etc/passwd`, `/etc/group` and
//! `/etc/hosts`, and the configured sandbox paths. Fixed-output builds keep
//! the host's network, as in Nix.
//!
//! - [`spec`]: what a sandbox is made of ([`ChrootSpec`], [`BindMount`],
//!   [`Network`], [`Command`]) and Nix's fixed contents.
//! - [`chroot`]: [`Chroot`], the per-build tree on the host.
//! - [`mod@spawn`]: [`spawn()`] starts a [`Command`] in a [`Chroot`] and returns
//!   a [`SandboxChild`] (pid, pidfd, log pipe, saved namespaces) once the
//!   builder runs; [`start()`] returns before the child has set the
//!   sandbox up, with its [`ChildSetup`] to ask later.
//! - [`namespaces`]: [`SavedNamespaces`] and [`check_support`].
//! - [`network`]: [`NetworkNamespaces`], loopback-only network namespaces
//!   kept from one build for the next, and [`start`]'s
//!   [`LoopbackNamespace`].
//! - [`rescue`]: moving a failed build's outputs out for inspection, never
//!   over a path that is valid now.
//! - [`builder`]: [`ChrootBuilder`], the generic builder's steps overridden
//!   to build in the sandbox, and [`SandboxConfig`], which a worker checks
//!   once and makes a [`ChrootBuilder`] per build from.
//! - [`relocate`]: [`RelocatingBuilder`], the generic builder without a
//!   sandbox, whose child bind-mounts a relocated store on `/nix/store`
//!   itself instead of through `unshare(1)`, `sh` and `mount(8)`.
//!
//! This is the one crate of larder with `unsafe` code: the `clone` that
//! creates the child, the few raw calls the children make, and one `ioctl`.
//! Each block states why it is sound.

#![allow(unsafe_code)]
#![cfg(target_os = "linux")]

pub mod builder;
pub mod chroot;
pub mod namespaces;
pub mod network;
pub mod relocate;
pub mod rescue;
pub mod spawn;
pub mod spec;

mod child;
mod clone_vm;
mod elf;
mod error;
mod plan;
mod raw;
mod setup;

pub use builder::{ChrootBuilder, SandboxConfig};
pub use chroot::Chroot;
pub use error::SandboxError;
pub use namespaces::{SavedNamespaces, check_support};
pub use network::{LoopbackNamespace, NetworkNamespaces};
pub use relocate::{RelocatingBuilder, spawn_relocated};
pub use rescue::{Rescue, rescue_outputs, rescue_outputs_from};
pub use setup::ChildSetup;
pub use spawn::{SandboxChild, SandboxParts, spawn, start};
pub use spec::{BindMount, ChrootSpec, Command, Network, default_sandbox_paths};
