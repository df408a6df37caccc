//! Metadata canonicalisation: what Nix does to a built tree before it
//! becomes a store object (`canonicalisePathMetaData`).
//!
//! Every file ends up read-only with mtime 1 (1970-01-01T00:00:01Z):
//! regular files 0444, or 0555 when the owner could execute them;
//! directories 0555; setuid, setgid and sticky bits gone; extended
//! attributes removed; owned by the current user. Fifos, sockets and
//! devices are refused. For fresh build output the caller names the build
//! users' uid range: a file owned by anyone else is refused, unless it is
//! a hard link to a file this build already canonicalised (so `ln
//! /etc/shadow $out/x` fails while hard links inside the outputs work).
//! A build run as the current user has no such owner to tell foreign files
//! by; [`Rules::confine_hard_links`] then refuses any file with links
//! outside the outputs, before anything is changed.
//! [`check_output_root`] is the check on a fresh output's top entry that
//! comes before it is taken at all.
//!
//! - [`policy`]: the rules, as a pure function from metadata to an action.
//! - [`walk`]: applying them to a tree on disk.

pub mod policy;
pub mod walk;

pub use policy::{Action, Decision, FileKind, MTIME_STORE, Metadata, PolicyError, Rules};
pub use walk::{CanonicaliseError, Canonicaliser, canonicalise_path, check_output_root};
