//! Structured progress events, sent on a channel: the CLI turns them into
//! a progress display on a terminal and plain lines otherwise.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use crate::result::BuildResult;

/// Something the worker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A goal was created (counts towards the total of the display).
    GoalCreated {
        /// The derivation.
        drv: PathBuf,
    },
    /// A builder process started.
    BuildStarted {
        /// The derivation.
        drv: PathBuf,
        /// Its name.
        name: String,
    },
    /// A complete line of a builder's log.
    LogLine {
        /// The derivation.
        drv: PathBuf,
        /// The line, without its end.
        line: String,
    },
    /// A goal waits for locks held by someone else (Nix's `waiting for lock
    /// on ...`).
    WaitingForLock {
        /// The derivation.
        drv: PathBuf,
        /// The store paths waited for.
        paths: Vec<PathBuf>,
    },
    /// A goal finished.
    Finished {
        /// How.
        result: BuildResult,
    },
}

/// Where events go: a channel's sender, or nowhere. Sending never blocks
/// the worker (the channel is unbounded); a closed receiver is ignored.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    sender: Option<Sender<Event>>,
}

impl EventSink {
    /// Sends events on `sender`.
    pub fn new(sender: Sender<Event>) -> Self {
        Self {
            sender: Some(sender),
        }
    }

    /// Drops every event.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends `event` if anyone listens.
    pub fn send(&self, event: Event) {
        if let Some(sender) = &self.sender {
            // A display that went away must not stop the builds.
            let _ = sender.send(event);
        }
    }

    /// True when events are listened to (so that log lines are worth
    /// splitting out).
    pub fn is_active(&self) -> bool {
        self.sender.is_some()
    }
}
