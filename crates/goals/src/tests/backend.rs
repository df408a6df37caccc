//! A backend for testing the worker on its own: real builder processes
//! (`sh -c`), real lock files, a store that is a folder with an in-memory
//! set of valid paths, and content-addressed paths that are the content
//! itself (`<store>/<content>-<name>`), so collisions between fixed and
//! floating outputs are easy to arrange.
//!
//! It checks the lock discipline as it goes: registration asserts that the
//! target's lock is held in this process, and that no valid path is ever
//! overwritten.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::rc::Rc;

use crate::backend::{Backend, Plan, StartedBuild, UnpreparedBuild};
use crate::result::{BuildStatus, Failure};
use crate::runtime::{Handle, KillScope, Process};

/// How an output's path is decided.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// Input-addressed: this store name.
    Named(String),
    /// Fixed-output: the declared content; the path is
    /// `<store>/<content>-<name>`.
    Fixed(String),
    /// Floating content-addressed.
    Floating,
}

#[derive(Debug, Clone)]
pub(crate) struct TestDrv {
    pub(crate) name: String,
    pub(crate) inputs: Vec<PathBuf>,
    pub(crate) out: Out,
    /// Writes the output to `$out` (a file whose content is what counts).
    pub(crate) script: String,
}

pub(crate) struct TestBackend {
    handle: Handle,
    pub(crate) store: PathBuf,
    scratch: PathBuf,
    drvs: RefCell<HashMap<PathBuf, TestDrv>>,
    valid: Rc<RefCell<BTreeSet<PathBuf>>>,
    /// How often each path was registered by a build (not reused).
    pub(crate) registered: Rc<RefCell<BTreeMap<PathBuf, usize>>>,
    pub(crate) running: Rc<Cell<usize>>,
    pub(crate) peak_running: Rc<Cell<usize>>,
    pub(crate) started: Rc<RefCell<Vec<PathBuf>>>,
    counter: Cell<usize>,
}

impl TestBackend {
    pub(crate) fn new(handle: &Handle, root: &Path) -> Rc<Self> {
        let store = root.join("store");
        let scratch = root.join("scratch");
        std::fs::create_dir_all(&store).expect("store dir");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        Rc::new(Self {
            handle: handle.clone(),
            store,
            scratch,
            drvs: RefCell::new(HashMap::new()),
            valid: Rc::default(),
            registered: Rc::default(),
            running: Rc::default(),
            peak_running: Rc::default(),
            started: Rc::default(),
            counter: Cell::new(0),
        })
    }

    /// Adds a derivation; returns its `.drv` path.
    pub(crate) fn add(&self, drv: TestDrv) -> PathBuf {
        let path = self
            .store
            .join(format!("{}-{}.drv", self.drvs.borrow().len(), drv.name));
        self.drvs.borrow_mut().insert(path.clone(), drv);
        path
    }

    pub(crate) fn fixed_path(&self, content: &str, name: &str) -> PathBuf {
        self.store.join(format!("{content}-{name}"))
    }

    pub(crate) fn is_valid_path(&self, path: &Path) -> bool {
        self.valid.borrow().contains(path)
    }

    fn declared(&self, drv: &TestDrv) -> Option<PathBuf> {
        match &drv.out {
            Out::Named(name) => Some(self.store.join(name)),
            Out::Fixed(content) => Some(self.fixed_path(content, &drv.name)),
            Out::Floating => None,
        }
    }
}

impl Backend for TestBackend {
    fn plan(&self, drv: &Path) -> Result<Plan, Failure> {
        let drvs = self.drvs.borrow();
        let d = drvs
            .get(drv)
            .ok_or_else(|| Failure::misc(format!("no such derivation '{}'", drv.display())))?;
        Ok(Plan {
            name: d.name.clone(),
            input_drvs: d.inputs.clone(),
            outputs: BTreeMap::from([("out".to_owned(), self.declared(d))]),
        })
    }

    fn is_valid(&self, path: &Path) -> Result<bool, Failure> {
        Ok(self.is_valid_path(path))
    }

    fn delete_invalid(&self, path: &Path) -> Result<(), Failure> {
        assert!(!self.is_valid_path(path), "deleting a valid path");
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Failure::misc(e.to_string())),
        }
    }

    fn lock_path(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }

    fn start(
        &self,
        drv: &Path,
        _plan: &Plan,
        _check: bool,
    ) -> Result<Box<dyn StartedBuild>, Failure> {
        let d = self.drvs.borrow().get(drv).cloned().expect("planned");
        let n = self.counter.get();
        self.counter.set(n + 1);
        let out = self.scratch.join(format!("{n}-{}", d.name));
        let (reader, writer) = io::pipe().map_err(|e| Failure::misc(e.to_string()))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| Failure::misc(e.to_string()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&d.script)
            .env("out", &out)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::misc(e.to_string()))?;
        self.running.set(self.running.get() + 1);
        self.peak_running
            .set(self.peak_running.get().max(self.running.get()));
        self.started.borrow_mut().push(drv.to_path_buf());
        Ok(Box::new(TestStarted {
            drv: drv.to_path_buf(),
            d,
            declared: self.declared(&self.drvs.borrow()[drv]),
            store: self.store.clone(),
            out,
            process: Process::from_child(&self.handle, child, KillScope::Group)
                .map_err(|e| Failure::misc(e.to_string()))?,
            status: None,
            log: OwnedFd::from(reader),
            valid: Rc::clone(&self.valid),
            registered: Rc::clone(&self.registered),
            running: Rc::clone(&self.running),
        }))
    }
}

struct TestStarted {
    drv: PathBuf,
    d: TestDrv,
    declared: Option<PathBuf>,
    store: PathBuf,
    out: PathBuf,
    process: Process,
    status: Option<ExitStatus>,
    log: OwnedFd,
    valid: Rc<RefCell<BTreeSet<PathBuf>>>,
    registered: Rc<RefCell<BTreeMap<PathBuf, usize>>>,
    running: Rc<Cell<usize>>,
}

impl Drop for TestStarted {
    fn drop(&mut self) {
        self.running.set(self.running.get() - 1);
    }
}

impl StartedBuild for TestStarted {
    fn pid(&self) -> u32 {
        self.process.id()
    }

    fn log_fd(&self) -> BorrowedFd<'_> {
        self.log.as_fd()
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.process
            .pidfd()
            .expect("not reaped before exit_fd is asked")
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.process.try_wait()?;
        self.status = self.status.or(status);
        Ok(status)
    }

    fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }

    fn unprepare(self: Box<Self>) -> Result<Box<dyn UnpreparedBuild>, Failure> {
        let status = self.status.expect("reaped before unprepare");
        if !status.success() {
            let how = match status.code() {
                Some(code) => format!("failed with exit code {code}"),
                None => format!("failed due to signal {}", status.signal().unwrap_or(0)),
            };
            return Err(Failure::new(
                BuildStatus::PermanentFailure,
                format!("builder for '{}' {how}", self.drv.display()),
            ));
        }
        let content = std::fs::read_to_string(&self.out)
            .map_err(|_| {
                Failure::new(
                    BuildStatus::OutputRejected,
                    format!(
                        "builder for '{}' failed to produce output path",
                        self.drv.display()
                    ),
                )
            })?
            .trim()
            .to_owned();
        let actual = match &self.d.out {
            Out::Named(_) => self.declared.clone().expect("named outputs are declared"),
            Out::Fixed(_) | Out::Floating => self.store.join(format!("{content}-{}", self.d.name)),
        };
        Ok(Box::new(TestUnprepared {
            started: self,
            actual,
        }))
    }
}

struct TestUnprepared {
    started: Box<TestStarted>,
    actual: PathBuf,
}

impl UnpreparedBuild for TestUnprepared {
    fn paths_needing_locks(&self) -> BTreeSet<PathBuf> {
        if Some(&self.actual) == self.started.declared.as_ref() {
            BTreeSet::new()
        } else {
            BTreeSet::from([self.actual.clone()])
        }
    }

    fn paths_not_registered(&self) -> BTreeSet<PathBuf> {
        match &self.started.declared {
            Some(declared) if *declared != self.actual => BTreeSet::from([declared.clone()]),
            _ => BTreeSet::new(),
        }
    }

    fn register_outputs(
        self: Box<Self>,
        locks: &[larder_pathlocks::PathLocks],
        already_valid: &BTreeSet<PathBuf>,
    ) -> Result<BTreeMap<String, PathBuf>, Failure> {
        let s = &self.started;
        let snapshot = larder_pathlocks::snapshot();
        assert!(
            snapshot.holder_of(&self.actual).is_some(),
            "registering '{}' without holding its lock",
            self.actual.display()
        );
        assert!(
            locks.iter().any(|l| l.contains(&self.actual)),
            "the guards given to register '{}' do not hold its lock",
            self.actual.display()
        );
        if already_valid.contains(&self.actual) {
            assert!(s.valid.borrow().contains(&self.actual));
        } else {
            assert!(
                !s.valid.borrow().contains(&self.actual),
                "overwriting the valid path '{}'",
                self.actual.display()
            );
            std::fs::rename(&s.out, &self.actual).map_err(|e| Failure::misc(e.to_string()))?;
            s.valid.borrow_mut().insert(self.actual.clone());
            *s.registered
                .borrow_mut()
                .entry(self.actual.clone())
                .or_default() += 1;
        }
        if let Some(declared) = &s.declared
            && *declared != self.actual
        {
            return Err(Failure::new(
                BuildStatus::HashMismatch,
                format!(
                    "hash mismatch in fixed-output derivation '{}':\n  specified: {}\n  got:       {}",
                    s.drv.display(),
                    declared.display(),
                    self.actual.display()
                ),
            ));
        }
        Ok(BTreeMap::from([("out".to_owned(), self.actual.clone())]))
    }
}
