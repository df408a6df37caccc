//! The worker: one goal per derivation, run as tasks on the runtime, with
//! build slots, the lock discipline of DESIGN.md, and keep-going or
//! stop-at-first-failure.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::SystemTime;

use larder_pathlocks::{Backoff, DeferredDeletions, Owner, PathLocks, TryLockError};

use crate::backend::{Backend, Plan, UnpreparedBuild};
use crate::events::{Event, EventSink};
use crate::locks::{self, LockWait, LockWaitError};
use crate::log::{Drain, Limits, LogTail};
use crate::result::{BuildResult, BuildStatus, Failure};
use crate::runtime::{AsyncFd, Handle, JoinHandle, Runtime, RuntimeError, Semaphore};

/// How the worker runs builds.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Build slots (`-j N`); at least 1.
    pub max_jobs: usize,
    /// Go on with the other builds after one fails.
    pub keep_going: bool,
    /// Rebuild valid outputs and compare (`--check`).
    pub check: bool,
    /// Silence, time and log-size limits of each build.
    pub limits: Limits,
    /// How many log lines a failure message shows (Nix's `log-lines`).
    pub log_lines: usize,
    /// Send every log line as an event (`-L`).
    pub forward_logs: bool,
    /// Retry delays for locks another process holds.
    pub lock_backoff: Backoff,
    /// Search the wait-for graph while a goal waits for a lock.
    pub check_cycles: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_jobs: 1,
            keep_going: false,
            check: false,
            limits: Limits::default(),
            log_lines: 25,
            forward_logs: false,
            lock_backoff: Backoff::default(),
            check_cycles: locks::CHECK_CYCLES_DEFAULT,
        }
    }
}

/// Builds `targets` (derivation store paths) and returns one result per
/// target, in order. Results of every goal (inputs included) are also sent
/// as [`Event::Finished`].
pub fn build(
    runtime: &Runtime,
    backend: Rc<dyn Backend>,
    settings: Settings,
    events: EventSink,
    targets: &[PathBuf],
) -> Result<Vec<BuildResult>, RuntimeError> {
    let worker = Worker::new(runtime.handle(), backend, settings, events);
    let result = runtime.block_on(worker.run(targets));
    worker.shutdown();
    result
}

/// Like [`build`], but gives up as soon as `interrupt` completes (Ctrl-C):
/// every goal is cancelled, which kills its builder's process group and
/// releases its locks, and `None` is returned.
pub fn build_until(
    runtime: &Runtime,
    backend: Rc<dyn Backend>,
    settings: Settings,
    events: EventSink,
    targets: &[PathBuf],
    interrupt: impl Future<Output = ()>,
) -> Result<Option<Vec<BuildResult>>, RuntimeError> {
    let worker = Worker::new(runtime.handle(), backend, settings, events);
    let result = runtime.block_on(async {
        let mut run = pin!(worker.run(targets));
        let mut interrupt = pin!(interrupt);
        std::future::poll_fn(|cx| {
            if interrupt.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            run.as_mut().poll(cx).map(Some)
        })
        .await
    });
    worker.shutdown();
    result
}

/// The goals of one build run and what they share.
pub struct Worker {
    ctx: Rc<Ctx>,
}

struct Ctx {
    handle: Handle,
    backend: Rc<dyn Backend>,
    settings: Settings,
    events: EventSink,
    slots: Semaphore,
    goals: RefCell<HashMap<PathBuf, Rc<GoalCell>>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    owners: RefCell<HashMap<Owner, PathBuf>>,
    stopping: Cell<bool>,
    /// Lock files of paths that became valid, deleted when the run ends
    /// rather than one by one while it builds (see `DeferredDeletions`).
    deferred: Arc<DeferredDeletions>,
}

/// Where a goal's result appears, for every goal that awaits it.
#[derive(Default)]
struct GoalCell {
    result: RefCell<Option<Rc<BuildResult>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl GoalCell {
    fn set(&self, result: Rc<BuildResult>) {
        if self.result.borrow().is_some() {
            return;
        }
        *self.result.borrow_mut() = Some(result);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    async fn wait(&self) -> Rc<BuildResult> {
        std::future::poll_fn(|cx| {
            if let Some(result) = &*self.result.borrow() {
                return Poll::Ready(Rc::clone(result));
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Lives in a goal's task: a goal dropped before it finished (cancelled)
/// still gives its waiters a result.
struct CellGuard {
    cell: Rc<GoalCell>,
    drv: PathBuf,
}

impl Drop for CellGuard {
    fn drop(&mut self) {
        self.cell.set(Rc::new(failed(
            &self.drv,
            Failure::new(
                BuildStatus::Cancelled,
                format!("build of '{}' was cancelled", self.drv.display()),
            ),
            None,
        )));
    }
}

impl Worker {
    /// A worker on `handle`'s loop.
    pub fn new(
        handle: &Handle,
        backend: Rc<dyn Backend>,
        settings: Settings,
        events: EventSink,
    ) -> Self {
        let slots = Semaphore::new(settings.max_jobs.max(1));
        Self {
            ctx: Rc::new(Ctx {
                handle: handle.clone(),
                backend,
                settings,
                events,
                slots,
                goals: RefCell::new(HashMap::new()),
                tasks: RefCell::new(Vec::new()),
                owners: RefCell::new(HashMap::new()),
                stopping: Cell::new(false),
                deferred: Arc::new(DeferredDeletions::new()),
            }),
        }
    }

    /// Runs the goals of `targets` to their end and returns their results
    /// in order.
    pub async fn run(&self, targets: &[PathBuf]) -> Vec<BuildResult> {
        let cells: Vec<_> = targets.iter().map(|t| Ctx::goal(&self.ctx, t)).collect();
        let mut results = Vec::with_capacity(cells.len());
        for cell in cells {
            results.push((*cell.wait().await).clone());
        }
        results
    }

    /// Cancels every goal still running (killing its builder).
    pub fn shutdown(&self) {
        self.ctx.stop_all();
        self.ctx.deferred.delete_now();
    }
}

impl Ctx {
    /// The goal of `drv`, created (and spawned) on first use.
    fn goal(self: &Rc<Self>, drv: &Path) -> Rc<GoalCell> {
        if let Some(cell) = self.goals.borrow().get(drv) {
            return Rc::clone(cell);
        }
        let cell = Rc::new(GoalCell::default());
        self.goals
            .borrow_mut()
            .insert(drv.to_path_buf(), Rc::clone(&cell));
        self.events.send(Event::GoalCreated {
            drv: drv.to_path_buf(),
        });
        if self.stopping.get() {
            drop(CellGuard {
                cell: Rc::clone(&cell),
                drv: drv.to_path_buf(),
            });
            return cell;
        }
        let ctx = Rc::clone(self);
        let guard = CellGuard {
            cell: Rc::clone(&cell),
            drv: drv.to_path_buf(),
        };
        let task = self.handle.spawn(async move {
            let guard = guard;
            let result = Rc::new(ctx.run_goal(&guard.drv).await);
            ctx.finish(&guard.cell, result);
        });
        self.tasks.borrow_mut().push(task);
        cell
    }

    fn finish(&self, cell: &GoalCell, result: Rc<BuildResult>) {
        let failed = !result.is_success();
        cell.set(Rc::clone(&result));
        self.events.send(Event::Finished {
            result: (*result).clone(),
        });
        if failed && !self.settings.keep_going {
            self.stop_all();
        }
    }

    /// Stop at the first failure: every goal's task is aborted, which drops
    /// its builder (killing the process group) and its locks.
    fn stop_all(&self) {
        self.stopping.set(true);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for task in &tasks {
            task.abort();
        }
    }

    fn describe(&self, owner: Owner) -> String {
        match self.owners.borrow().get(&owner) {
            Some(drv) => format!("goal '{}'", drv.display()),
            None => format!("lock owner {owner}"),
        }
    }

    async fn run_goal(self: &Rc<Self>, drv: &Path) -> BuildResult {
        let owner = Owner::fresh();
        self.owners.borrow_mut().insert(owner, drv.to_path_buf());
        let mut start_time = None;
        let result = self.try_goal(drv, owner, &mut start_time).await;
        self.owners.borrow_mut().remove(&owner);
        match result {
            Ok((status, outputs)) => BuildResult {
                drv: drv.to_path_buf(),
                status,
                error: None,
                outputs,
                start_time,
                stop_time: start_time.map(|_| SystemTime::now()),
            },
            Err(failure) => failed(drv, failure, start_time),
        }
    }

    async fn try_goal(
        self: &Rc<Self>,
        drv: &Path,
        owner: Owner,
        start_time: &mut Option<SystemTime>,
    ) -> Result<(BuildStatus, BTreeMap<String, PathBuf>), Failure> {
        let backend = Rc::clone(&self.backend);
        let plan = backend.plan(drv)?;

        // Inputs first: their goals run concurrently; this one waits.
        let inputs: Vec<_> = plan.input_drvs.iter().map(|d| self.goal(d)).collect();
        let mut failed_inputs = Vec::new();
        for (input, cell) in plan.input_drvs.iter().zip(&inputs) {
            if !cell.wait().await.is_success() {
                failed_inputs.push(input.clone());
            }
        }
        if !failed_inputs.is_empty() {
            let names: Vec<String> = failed_inputs
                .iter()
                .map(|p| format!("'{}'", p.display()))
                .collect();
            return Err(Failure::new(
                BuildStatus::DependencyFailed,
                format!(
                    "{} dependencies of derivation '{}' failed to build: {}",
                    failed_inputs.len(),
                    drv.display(),
                    names.join(", ")
                ),
            ));
        }

        if !self.settings.check
            && let Some(outputs) = self.valid_outputs(&plan)?
        {
            return Ok((BuildStatus::AlreadyValid, outputs));
        }

        // Rule 5: the slot is taken before any lock, so no goal holds a
        // lock while it waits for a slot.
        let permit = self.slots.acquire().await;

        // Pre-build locks on the declared outputs (rules 1-3).
        let declared = plan.declared_paths();
        let mut locks = self.lock(drv, owner, &declared).await?;

        // Rule 4: someone (another process, or a goal of ours with the same
        // output) may have built them meanwhile.
        if !self.settings.check
            && let Some(outputs) = self.valid_outputs(&plan)?
        {
            locks.delete_later(&self.deferred);
            tracing::debug!(drv = %drv.display(), "skipping build: someone beat us to it");
            return Ok((BuildStatus::AlreadyValid, outputs));
        }
        for path in &declared {
            if !backend.is_valid(path)? {
                backend.delete_invalid(path)?;
            }
        }

        *start_time = Some(SystemTime::now());
        let mut started = backend.start(drv, &plan, self.settings.check)?;
        self.events.send(Event::BuildStarted {
            drv: drv.to_path_buf(),
            name: plan.name.clone(),
        });
        let watch = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
        let (log, exit) = match (watch(started.log_fd()), watch(started.exit_fd())) {
            (Ok(log), Ok(exit)) => (log, exit),
            (Err(e), _) | (_, Err(e)) => {
                return Err(Failure::misc(format!(
                    "watching the builder of '{}': {e}",
                    drv.display()
                )));
            }
        };
        let log = AsyncFd::new(&self.handle, log)
            .map_err(|e| Failure::misc(format!("reading the log of '{}': {e}", drv.display())))?;
        let exit = AsyncFd::watch(&self.handle, exit);
        let log_file = backend.open_log(drv).unwrap_or_else(|e| {
            tracing::warn!(drv = %drv.display(), "cannot keep the build log: {e}");
            None
        });
        let mut tail = LogTail::new(self.settings.log_lines);
        let status = Drain {
            handle: &self.handle,
            drv,
            limits: self.settings.limits,
            events: &self.events,
            forward_lines: self.settings.forward_logs && self.events.is_active(),
            log_file,
            tail: &mut tail,
        }
        .run(log, exit, started.as_mut())
        .await?;
        tracing::debug!(drv = %drv.display(), %status, "builder exited");

        let unprepared = started.unprepare().map_err(|mut failure| {
            if matches!(
                failure.status,
                BuildStatus::PermanentFailure | BuildStatus::TransientFailure
            ) {
                failure.message.push_str(&tail.render());
            }
            failure
        })?;

        let (outputs, guards) = self
            .register(drv, owner, locks, unprepared, &declared)
            .await?;
        // Every later locker finds these paths valid: delete the lock files.
        for mut guard in guards {
            guard.delete_later(&self.deferred);
        }
        drop(permit);
        Ok((BuildStatus::Built, outputs))
    }

    /// Takes the dynamic locks (rules 6 and 7), then registers. Returns the
    /// outputs and the locks held, to be released by the caller.
    async fn register(
        &self,
        drv: &Path,
        owner: Owner,
        mut locks: PathLocks,
        unprepared: Box<dyn UnpreparedBuild>,
        declared: &BTreeSet<PathBuf>,
    ) -> Result<(BTreeMap<String, PathBuf>, Vec<PathLocks>), Failure> {
        // Rule 6, first half: a declared path that will not be registered
        // (a fixed output whose hash differs) is released before anything
        // else, so that the goal that does build it is not held up.
        for path in unprepared.paths_not_registered() {
            locks.release(&self.backend.lock_path(&path));
        }
        let dynamic: BTreeSet<PathBuf> = unprepared
            .paths_needing_locks()
            .into_iter()
            .filter(|p| !declared.contains(p))
            .collect();
        let mut guards = vec![];
        let mut reacquired = BTreeSet::new();
        if dynamic.is_empty() {
            guards.push(locks);
        } else {
            let lock_paths: Vec<PathBuf> =
                dynamic.iter().map(|p| self.backend.lock_path(p)).collect();
            match larder_pathlocks::try_lock(owner, &lock_paths) {
                Ok(mut guard) => {
                    guard.delete_later(&self.deferred);
                    guards.extend([locks, guard]);
                }
                Err(TryLockError::Busy(_)) => {
                    // Rule 6, second half: never wait while holding a lock.
                    // Everything still held is given up and the whole set
                    // is waited for at once; the paths given up are checked
                    // for validity again below, like the dynamic ones.
                    let mut all: BTreeSet<PathBuf> = dynamic.clone();
                    for path in declared {
                        if locks.contains(&self.backend.lock_path(path)) {
                            reacquired.insert(path.clone());
                            all.insert(path.clone());
                        }
                    }
                    drop(locks);
                    guards.push(self.lock(drv, owner, &all).await?);
                }
                Err(TryLockError::Failed(e)) => return Err(Failure::misc(e.to_string())),
            }
        }
        // Rule 7: a target that became valid while this goal waited is
        // reused, not overwritten.
        let mut already_valid = BTreeSet::new();
        for path in dynamic.iter().chain(&reacquired) {
            if self.backend.is_valid(path)? {
                already_valid.insert(path.clone());
            }
        }
        let outputs = unprepared.register_outputs(&guards, &already_valid)?;
        Ok((outputs, guards))
    }

    /// Locks the real paths of `paths` for `owner`, suspending while busy.
    async fn lock(
        &self,
        drv: &Path,
        owner: Owner,
        paths: &BTreeSet<PathBuf>,
    ) -> Result<PathLocks, Failure> {
        let lock_paths: Vec<PathBuf> = paths.iter().map(|p| self.backend.lock_path(p)).collect();
        let describe = |o: Owner| self.describe(o);
        let wait = LockWait {
            handle: &self.handle,
            backoff: self.settings.lock_backoff,
            check_cycles: self.settings.check_cycles,
            describe: &describe,
        };
        let mut guard = locks::acquire(&wait, owner, &lock_paths, |_| {
            tracing::info!(drv = %drv.display(), "waiting for lock on {}", quoted(paths));
            self.events.send(Event::WaitingForLock {
                drv: drv.to_path_buf(),
                paths: paths.iter().cloned().collect(),
            });
        })
        .await
        .map_err(|e| match e {
            LockWaitError::Cycle(message) => Failure::misc(message),
            LockWaitError::Lock(e) => Failure::misc(e.to_string()),
        })?;
        // Every release deletes the lock files, after a failure too: a
        // failed build must not litter the store with `.lock` files, and
        // the lock protocol makes deletion safe at any release (a waiter
        // that opened the file before the unlink finds it stale and opens
        // it again).
        guard.delete_later(&self.deferred);
        Ok(guard)
    }

    /// The outputs by name if every output is known and valid.
    fn valid_outputs(&self, plan: &Plan) -> Result<Option<BTreeMap<String, PathBuf>>, Failure> {
        let mut outputs = BTreeMap::new();
        for (name, path) in &plan.outputs {
            let Some(path) = path else { return Ok(None) };
            if !self.backend.is_valid(path)? {
                return Ok(None);
            }
            outputs.insert(name.clone(), path.clone());
        }
        Ok(Some(outputs))
    }
}

fn quoted(paths: &BTreeSet<PathBuf>) -> String {
    paths
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failed(drv: &Path, failure: Failure, start_time: Option<SystemTime>) -> BuildResult {
    BuildResult {
        drv: drv.to_path_buf(),
        status: failure.status,
        error: Some(failure.message),
        outputs: BTreeMap::new(),
        start_time,
        stop_time: start_time.map(|_| SystemTime::now()),
    }
}
