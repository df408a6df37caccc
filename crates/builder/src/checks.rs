//! Output checks: `allowedReferences`, `allowedRequisites`,
//! `disallowedReferences`, `disallowedRequisites`, `maxSize` and
//! `maxClosureSize`, in the plain (environment) and structured-attributes
//! forms, with Nix's messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use larder_store_core::{StoreDir, StorePath};
use serde_json::{Map, Value};

use crate::error::{BuildError, Result};

/// The checks for one output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputChecks {
    /// Whether the output itself is left out of its closure for the
    /// requisite checks (the plain form does this, the structured one not).
    pub ignore_self_refs: bool,
    /// The largest NAR size allowed.
    pub max_size: Option<u64>,
    /// The largest closure size (sum of NAR sizes) allowed.
    pub max_closure_size: Option<u64>,
    /// If present, the only paths (or output names) it may refer to.
    pub allowed_references: Option<Vec<String>>,
    /// If present, the only paths (or output names) its closure may hold.
    pub allowed_requisites: Option<Vec<String>>,
    /// Paths (or output names) it must not refer to.
    pub disallowed_references: Option<Vec<String>>,
    /// Paths (or output names) its closure must not hold.
    pub disallowed_requisites: Option<Vec<String>>,
}

impl OutputChecks {
    /// Whether nothing is checked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.max_size.is_none()
            && self.max_closure_size.is_none()
            && self.allowed_references.is_none()
            && self.allowed_requisites.is_none()
            && self.disallowed_references.is_none()
            && self.disallowed_requisites.is_none()
    }
}

/// The checks of every output of a derivation.
///
/// # Errors
///
/// When a structured `outputChecks` entry is not of the expected type.
pub fn parse_output_checks(
    drv_display: &str,
    outputs: impl IntoIterator<Item = String>,
    env: &BTreeMap<String, String>,
    structured: Option<&Map<String, Value>>,
) -> Result<BTreeMap<String, OutputChecks>> {
    let mut all = BTreeMap::new();
    for output in outputs {
        let checks = match structured {
            None => {
                let list = |name: &str| {
                    env.get(name)
                        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
                };
                OutputChecks {
                    ignore_self_refs: true,
                    max_size: None,
                    max_closure_size: None,
                    allowed_references: list("allowedReferences"),
                    allowed_requisites: list("allowedRequisites"),
                    disallowed_references: list("disallowedReferences"),
                    disallowed_requisites: list("disallowedRequisites"),
                }
            }
            Some(attrs) => match attrs.get("outputChecks").and_then(|c| c.get(&output)) {
                None => OutputChecks::default(),
                Some(spec) => structured_checks(drv_display, spec)?,
            },
        };
        all.insert(output, checks);
    }
    Ok(all)
}

fn structured_checks(drv_display: &str, spec: &Value) -> Result<OutputChecks> {
    let size = |name: &str| -> Result<Option<u64>> {
        spec.get(name)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    BuildError::misc(format!(
                        "attribute '{name}' of derivation '{drv_display}' must be a non-negative integer"
                    ))
                })
            })
            .transpose()
    };
    let list = |name: &str| -> Result<Option<Vec<String>>> {
        spec.get(name)
            .map(|v| {
                let bad = || {
                    BuildError::misc(format!(
                        "attribute '{name}' of derivation '{drv_display}' must be a list of strings"
                    ))
                };
                v.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned).ok_or_else(bad))
                    .collect()
            })
            .transpose()
    };
    Ok(OutputChecks {
        ignore_self_refs: false,
        max_size: size("maxSize")?,
        max_closure_size: size("maxClosureSize")?,
        allowed_references: list("allowedReferences")?,
        allowed_requisites: list("allowedRequisites")?,
        disallowed_references: list("disallowedReferences")?,
        disallowed_requisites: list("disallowedRequisites")?,
    })
}

/// What the checks need to know of a path: its NAR size and references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPath {
    /// Its NAR size.
    pub nar_size: u64,
    /// Its references (itself included when it refers to itself).
    pub references: BTreeSet<StorePath>,
}

/// Runs the checks of every output. `new` holds the freshly built outputs
/// by output name (their final paths and infos); `query` answers for every
/// other path, from the store.
///
/// # Errors
///
/// The first violated check, with Nix's message, as
/// [`FailureKind::OutputRejected`](crate::FailureKind::OutputRejected).
pub fn check_outputs(
    store_dir: &StoreDir,
    checks: &BTreeMap<String, OutputChecks>,
    new: &BTreeMap<String, (StorePath, CheckedPath)>,
    query: &dyn Fn(&StorePath) -> Result<CheckedPath>,
) -> Result<()> {
    let by_path: BTreeMap<&StorePath, &CheckedPath> =
        new.values().map(|(path, info)| (path, info)).collect();
    let info_of = |path: &StorePath| -> Result<CheckedPath> {
        match by_path.get(path) {
            Some(info) => Ok((*info).clone()),
            None => query(path),
        }
    };
    let closure = |start: &StorePath| -> Result<(BTreeSet<StorePath>, u64)> {
        let mut seen = BTreeSet::from([start.clone()]);
        let mut queue = VecDeque::from([start.clone()]);
        let mut size = 0u64;
        while let Some(path) = queue.pop_front() {
            let info = info_of(&path)?;
            size = size.saturating_add(info.nar_size);
            for reference in info.references {
                if seen.insert(reference.clone()) {
                    queue.push_back(reference);
                }
            }
        }
        Ok((seen, size))
    };

    for (output, (path, info)) in new {
        let Some(checks) = checks.get(output) else {
            continue;
        };
        let shown = store_dir.display(path);
        if let Some(limit) = checks.max_size
            && info.nar_size > limit
        {
            return Err(BuildError::rejected(format!(
                "path '{shown}' is too large at {} bytes; limit is {limit} bytes",
                info.nar_size
            )));
        }
        if let Some(limit) = checks.max_closure_size {
            let (_, size) = closure(path)?;
            if size > limit {
                return Err(BuildError::rejected(format!(
                    "closure of path '{shown}' is too large at {size} bytes; limit is {limit} bytes"
                )));
            }
        }
        let check_refs =
            |spec: &Option<Vec<String>>, allowed: bool, recursive: bool| -> Result<()> {
                let Some(spec) = spec else {
                    return Ok(());
                };
                let mut spec_paths = BTreeSet::new();
                for item in spec {
                    if let Ok(p) = store_dir.parse(item) {
                        spec_paths.insert(p);
                    } else if let Some((p, _)) = new.get(item) {
                        spec_paths.insert(p.clone());
                    } else {
                        return Err(BuildError::misc(format!(
                            "derivation contains an illegal reference specifier '{item}'"
                        )));
                    }
                }
                let mut used = if recursive {
                    closure(path)?.0
                } else {
                    info.references.clone()
                };
                if recursive && checks.ignore_self_refs {
                    used.remove(path);
                }
                let bad: Vec<&StorePath> = used
                    .iter()
                    .filter(|p| spec_paths.contains(*p) != allowed)
                    .collect();
                if bad.is_empty() {
                    return Ok(());
                }
                let mut message =
                    format!("output '{shown}' is not allowed to refer to the following paths:");
                for p in bad {
                    message.push_str("\n  ");
                    message.push_str(&store_dir.display(p));
                }
                Err(BuildError::rejected(message))
            };
        check_refs(&checks.allowed_references, true, false)?;
        check_refs(&checks.allowed_requisites, true, true)?;
        check_refs(&checks.disallowed_references, false, false)?;
        check_refs(&checks.disallowed_requisites, false, true)?;
    }
    Ok(())
}
