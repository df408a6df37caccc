//! What `larder build` shows on standard error while it builds: a status
//! line redrawn in place on a terminal (done/total, what is running, the
//! last log line), plain lines otherwise (Nix's `building '...'`), the
//! builders' logs with `-L`, and each failure's message.
//!
//! It runs on its own thread, fed by the worker's events, so that writing
//! to a slow terminal never holds up the worker.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use larder_goals::{BuildResult, BuildStatus, Event};

/// How the display shows progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Style {
    /// Redraw one status line in place (standard error is a terminal).
    pub(super) terminal: bool,
    /// Print every log line (`-L`).
    pub(super) print_logs: bool,
}

/// The display thread.
pub(super) struct Display {
    thread: JoinHandle<Vec<BuildResult>>,
    stop: Arc<AtomicBool>,
}

impl Display {
    /// Starts showing the events that arrive on `events`.
    pub(super) fn start(events: Receiver<Event>, style: Style) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("larder-progress".to_owned())
            .spawn(move || State::new(style).run(&events, &stopping))?;
        Ok(Self { thread, stop })
    }

    /// Shows what is left to show and returns the result of every goal
    /// that finished (inputs included). Every event sent before this call
    /// is shown.
    pub(super) fn finish(self) -> Vec<BuildResult> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

struct Running {
    name: String,
    last_line: Option<String>,
}

struct State {
    style: Style,
    total: usize,
    done: usize,
    failed: usize,
    running: BTreeMap<PathBuf, Running>,
    results: Vec<BuildResult>,
    status_shown: bool,
    last_draw: Option<Instant>,
    dirty: bool,
}

/// How often the status line may be redrawn.
const REDRAW: Duration = Duration::from_millis(50);

impl State {
    fn new(style: Style) -> Self {
        Self {
            style,
            total: 0,
            done: 0,
            failed: 0,
            running: BTreeMap::new(),
            results: Vec::new(),
            status_shown: false,
            last_draw: None,
            dirty: false,
        }
    }

    fn run(mut self, events: &Receiver<Event>, stop: &AtomicBool) -> Vec<BuildResult> {
        loop {
            match events.recv_timeout(REDRAW) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::SeqCst) {
                while let Ok(event) = events.try_recv() {
                    self.handle(event);
                }
                break;
            }
            self.draw(false);
        }
        self.clear_status();
        self.results
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::GoalCreated { .. } => self.total += 1,
            Event::BuildStarted { drv, name } => {
                if !self.style.terminal {
                    self.line(&format!("building '{}'...", drv.display()));
                }
                self.running.insert(
                    drv,
                    Running {
                        name,
                        last_line: None,
                    },
                );
            }
            Event::LogLine { drv, line } => {
                if self.style.print_logs {
                    let name = self
                        .running
                        .get(&drv)
                        .map_or_else(|| drv.display().to_string(), |r| r.name.clone());
                    self.line(&format!("{name}> {line}"));
                }
                if let Some(running) = self.running.get_mut(&drv) {
                    running.last_line = Some(line);
                }
            }
            Event::WaitingForLock { paths, .. } => {
                let names: Vec<String> =
                    paths.iter().map(|p| format!("'{}'", p.display())).collect();
                if !self.style.terminal {
                    self.line(&format!("waiting for lock on {}", names.join(", ")));
                }
            }
            Event::Finished { result } => {
                self.running.remove(&result.drv);
                self.done += 1;
                if !result.is_success() {
                    self.failed += 1;
                    // A goal cancelled because another failed says nothing
                    // new: the failure that stopped it is shown.
                    if result.status != BuildStatus::Cancelled
                        && let Some(error) = &result.error
                    {
                        self.line(&format!("error: {error}"));
                    }
                }
                self.results.push(result);
            }
        }
        self.dirty = true;
    }

    /// Prints a line that stays, above the status line.
    fn line(&mut self, text: &str) {
        self.clear_status();
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{text}");
        self.dirty = true;
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
            self.status_shown = false;
        }
    }

    fn draw(&mut self, force: bool) {
        if !self.style.terminal || !self.dirty {
            return;
        }
        if !force && self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        let mut status = format!("[{}/{} done", self.done, self.total);
        if self.failed > 0 {
            status.push_str(&format!(", {} failed", self.failed));
        }
        status.push(']');
        if !self.running.is_empty() {
            let names: Vec<&str> = self.running.values().map(|r| r.name.as_str()).collect();
            status.push_str(&format!(" building {}", names.join(", ")));
            if let Some(line) = self
                .running
                .values()
                .rev()
                .find_map(|r| r.last_line.as_ref())
            {
                status.push_str(": ");
                status.push_str(line);
            }
        }
        let width = terminal_width();
        let shown: String = status
            .chars()
            .filter(|c| !c.is_control())
            .take(width.saturating_sub(1))
            .collect();
        let _ = write!(io::stderr().lock(), "\r\x1b[K{shown}");
        self.status_shown = true;
        self.last_draw = Some(Instant::now());
        self.dirty = false;
    }
}

/// The terminal's width from `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c: &usize| c > 10)
        .unwrap_or(80)
}
