//! Running a started builder to its end: draining its log through the
//! event loop while enforcing the build's limits.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::pin;
use std::process::ExitStatus;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::backend::StartedBuild;
use crate::events::{Event, EventSink};
use crate::result::{BuildStatus, Failure};
use crate::runtime::{AsyncFd, Handle};

/// The limits of one build (Nix's `max-silent-time`, `timeout`,
/// `max-build-log-size`); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Kill a builder silent for this long.
    pub max_silent_time: Option<Duration>,
    /// Kill a builder running for this long.
    pub timeout: Option<Duration>,
    /// Kill a builder after this many bytes of log.
    pub max_log_size: Option<u64>,
}

/// The last lines of a build's log, for the failure message.
#[derive(Debug)]
pub(crate) struct LogTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    keep: usize,
}

impl LogTail {
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            partial: Vec::new(),
            keep,
        }
    }

    /// Adds a chunk of log; calls `line` for each completed line.
    fn push(&mut self, chunk: &[u8], mut line: impl FnMut(&str)) {
        for &byte in chunk {
            match byte {
                b'\n' => self.finish_line(&mut line),
                // A carriage return starts the line over, as a terminal
                // would show it.
                b'\r' => self.partial.clear(),
                _ => self.partial.push(byte),
            }
        }
    }

    fn finish_line(&mut self, line: &mut impl FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        line(&text);
        if self.keep > 0 {
            if self.lines.len() == self.keep {
                self.lines.pop_front();
            }
            self.lines.push_back(text);
        }
    }

    /// Ends an unterminated last line.
    fn flush(&mut self, line: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            let mut line = line;
            self.finish_line(&mut line);
        }
    }

    /// Nix's `Last N log lines:` block (empty when there is no log).
    pub(crate) fn render(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let mut out = format!("\nLast {} log lines:", self.lines.len());
        for line in &self.lines {
            out.push_str("\n> ");
            out.push_str(line);
        }
        out
    }
}

/// Everything `drain` needs besides the process and its log.
pub(crate) struct Drain<'a> {
    pub(crate) handle: &'a Handle,
    pub(crate) drv: &'a Path,
    pub(crate) limits: Limits,
    pub(crate) events: &'a EventSink,
    pub(crate) forward_lines: bool,
    pub(crate) log_file: Option<Box<dyn Write>>,
    pub(crate) tail: &'a mut LogTail,
}

enum Step {
    Data(usize),
    ReadError(std::io::Error),
    Exited,
    Deadline,
}

impl Drain<'_> {
    /// Reads the log until end of file and waits for the builder's exit,
    /// enforcing the limits; a limit kills the builder (and its group) and
    /// fails the build. Returns the builder's exit status.
    pub(crate) async fn run(
        mut self,
        log: AsyncFd,
        exit: AsyncFd,
        process: &mut dyn StartedBuild,
    ) -> Result<ExitStatus, Failure> {
        let started = Instant::now();
        let mut last_output = started;
        let mut log_size: u64 = 0;
        let mut eof = false;
        let mut exited = false;
        let mut buf = vec![0u8; 64 * 1024];
        while !(eof && exited) {
            let silence_deadline = self.limits.max_silent_time.map(|d| last_output + d);
            let timeout_deadline = self.limits.timeout.map(|d| started + d);
            let deadline = match (silence_deadline, timeout_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let step = {
                let mut read = pin!(async {
                    if eof {
                        std::future::pending::<()>().await;
                    }
                    log.read(&mut buf).await
                });
                let mut exit_seen = pin!(async {
                    if exited {
                        std::future::pending::<()>().await;
                    }
                    exit.readable().await;
                });
                let mut sleep = deadline.map(|d| Box::pin(self.handle.sleep_until(d)));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = read.as_mut().poll(cx) {
                        return Poll::Ready(match r {
                            Ok(n) => Step::Data(n),
                            Err(e) => Step::ReadError(e),
                        });
                    }
                    if exit_seen.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Step::Exited);
                    }
                    if let Some(sleep) = &mut sleep
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Step::Deadline);
                    }
                    Poll::Pending
                })
                .await
            };
            match step {
                Step::Data(0) => eof = true,
                Step::Data(n) => {
                    last_output = Instant::now();
                    log_size += n as u64;
                    if let Some(max) = self.limits.max_log_size
                        && log_size > max
                    {
                        kill_and_reap(process, &exit).await;
                        return Err(Failure::new(
                            BuildStatus::LogLimitExceeded,
                            format!(
                                "building of '{}' killed after writing more than {max} bytes of log output",
                                self.drv.display()
                            ),
                        ));
                    }
                    self.record(&buf[..n]);
                }
                Step::ReadError(e) => {
                    kill_and_reap(process, &exit).await;
                    return Err(Failure::misc(format!(
                        "reading the log of '{}': {e}",
                        self.drv.display()
                    )));
                }
                Step::Exited => {
                    exited = true;
                    // Whatever the builder left running in its process
                    // group goes with it; its pid is not reaped yet, so
                    // the group id cannot have been reused.
                    let _ = process.kill();
                }
                Step::Deadline => {
                    kill_and_reap(process, &exit).await;
                    let now = Instant::now();
                    let message = match (silence_deadline, self.limits.max_silent_time) {
                        (Some(at), Some(silence)) if at <= now => format!(
                            "building of '{}' timed out after {} seconds of silence",
                            self.drv.display(),
                            silence.as_secs()
                        ),
                        _ => format!(
                            "building of '{}' timed out after {} seconds",
                            self.drv.display(),
                            self.limits.timeout.unwrap_or_default().as_secs()
                        ),
                    };
                    return Err(Failure::new(BuildStatus::TimedOut, message));
                }
            }
        }
        let (events, drv, forward) = (self.events, self.drv, self.forward_lines);
        self.tail.flush(|line| {
            if forward {
                events.send(Event::LogLine {
                    drv: drv.to_path_buf(),
                    line: line.to_owned(),
                });
            }
        });
        wait(process, &exit).await.map_err(|e| {
            Failure::misc(format!(
                "waiting for the builder of '{}': {e}",
                drv.display()
            ))
        })
    }

    fn record(&mut self, chunk: &[u8]) {
        if let Some(file) = &mut self.log_file
            && let Err(e) = file.write_all(chunk)
        {
            tracing::warn!(drv = %self.drv.display(), "writing the build log: {e}");
            self.log_file = None;
        }
        let (events, drv, forward) = (self.events, self.drv, self.forward_lines);
        self.tail.push(chunk, |line| {
            if forward {
                events.send(Event::LogLine {
                    drv: drv.to_path_buf(),
                    line: line.to_owned(),
                });
            }
        });
    }
}

async fn kill_and_reap(process: &mut dyn StartedBuild, exit: &AsyncFd) {
    if let Err(e) = process.kill() {
        tracing::warn!(pid = process.pid(), "killing the builder: {e}");
    }
    // SIGKILL cannot be ignored: the wait is short, and it is a wait on the
    // event loop, not a blocking one.
    let _ = wait(process, exit).await;
}

/// Reaps the builder once its exit descriptor turns readable.
async fn wait(process: &mut dyn StartedBuild, exit: &AsyncFd) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = process.try_wait()? {
            return Ok(status);
        }
        exit.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_and_honours_carriage_returns() {
        let mut tail = LogTail::new(2);
        let mut seen = Vec::new();
        tail.push(b"one\ntwo\nprogress 1\rprogress 2\nthr", |l| {
            seen.push(l.to_owned())
        });
        tail.flush(|l| seen.push(l.to_owned()));
        assert_eq!(seen, ["one", "two", "progress 2", "thr"]);
        assert_eq!(tail.render(), "\nLast 2 log lines:\n> progress 2\n> thr");
        assert_eq!(LogTail::new(5).render(), "");
    }
}
