//! Bringing what a build needs into the store: the derivations named on
//! the command line, their input derivations and their input sources.
//! Missing ones are taken by base name from a list of folders (a local
//! Nix's `/nix/store` works as one), and each is verified against its store
//! path before it is added.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use larder_local_store::{AddOptions, LocalStore};
use larder_store_core::derivation::{DerivationOutput, DerivationSource, HashModuloCache};
use larder_store_core::store_path::StoreReferences;
use larder_store_core::{ContentAddressMethod, Derivation, HashAlgo, StorePath};

/// Adds derivations and their inputs to a store.
pub(super) struct Importer<'a> {
    store: &'a LocalStore,
    dirs: Vec<PathBuf>,
    /// Derivations given on the command line, by `.drv` path: inputs of
    /// others are taken from here first, whatever the order of the files.
    given: BTreeMap<StorePath, Derivation>,
    /// Paths known valid (or added) in this run: each is looked at once.
    done: BTreeSet<StorePath>,
    /// Paths being imported, to refuse reference cycles between sources.
    active: BTreeSet<StorePath>,
    /// Paths found importable by the checks, which write nothing.
    checked: BTreeSet<StorePath>,
}

impl<'a> Importer<'a> {
    /// Imports into `store`, looking for missing inputs in `dirs`.
    pub(super) fn new(store: &'a LocalStore, dirs: Vec<PathBuf>) -> Self {
        Self {
            store,
            dirs,
            given: BTreeMap::new(),
            done: BTreeSet::new(),
            active: BTreeSet::new(),
            checked: BTreeSet::new(),
        }
    }

    /// Takes the derivations read from the command line's files: fills in
    /// the output paths JSON may leave out and checks the others, looking
    /// input derivations up among them, in the store and in the folders.
    /// Returns them with their `.drv` paths, in order.
    pub(super) fn accept(
        &mut self,
        files: Vec<(PathBuf, Derivation)>,
    ) -> Result<Vec<(StorePath, Derivation)>> {
        let store_dir = self.store.store_dir().clone();
        for (_, drv) in &files {
            if !is_deferred(drv) {
                self.given.insert(drv.drv_path(&store_dir), drv.clone());
            }
        }
        let mut cache = HashModuloCache::new(store_dir.clone());
        let mut accepted: Vec<Option<(StorePath, Derivation)>> = vec![None; files.len()];
        let mut pending: Vec<usize> = (0..files.len()).collect();
        // A derivation whose output paths JSON leaves out gets its `.drv`
        // path only once they are filled in, which needs its inputs: each
        // round accepts what it can, until a round makes no progress.
        loop {
            let before = pending.len();
            let mut failed = Vec::new();
            let mut first_error = None;
            for index in pending {
                let (file, drv) = &files[index];
                let mut drv = drv.clone();
                let mut lookup = Lookup { importer: self };
                let outcome = if is_deferred(&drv) {
                    drv.fill_in_output_paths(&mut cache, &mut lookup)
                        .with_context(|| {
                            format!("computing the output paths of '{}'", file.display())
                        })
                } else {
                    drv.check_output_paths(&mut cache, &mut lookup)
                        .with_context(|| {
                            format!("checking the output paths of '{}'", file.display())
                        })
                };
                match outcome {
                    Ok(()) => {
                        let path = drv.drv_path(&store_dir);
                        self.given.insert(path.clone(), drv.clone());
                        accepted[index] = Some((path, drv));
                    }
                    Err(e) => {
                        failed.push(index);
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => break,
                Some(e) if failed.len() == before => return Err(e),
                Some(_) => pending = failed,
            }
        }
        let accepted: Vec<(StorePath, Derivation)> = accepted.into_iter().flatten().collect();
        Ok(accepted)
    }

    /// Checks, writing nothing, that the derivation `path` is valid or can
    /// be imported with everything it needs: each input found and hashing
    /// to its store path. [`Importer::ensure_derivation`] then cannot fail
    /// for bad input, only for a store that refuses the writes.
    pub(super) fn check_derivation(&mut self, path: &StorePath) -> Result<()> {
        if self.checked.contains(path) || self.is_valid(path)? {
            return Ok(());
        }
        let drv = self.given_or_from_folder(path)?;
        self.check_inputs(&drv)?;
        self.checked.insert(path.clone());
        Ok(())
    }

    /// Checks, writing nothing, that the inputs of `drv` are valid or can
    /// be imported (see [`Importer::check_derivation`]).
    pub(super) fn check_inputs(&mut self, drv: &Derivation) -> Result<()> {
        self.visit_inputs(drv, Pass::Check)
    }

    /// Checks, writing nothing, that the source `path` is valid or found in
    /// a folder with contents that hash to it, as [`Importer::ensure_source`]
    /// would add it: a text or a NAR-hashed tree, with the references it
    /// mentions that can be had.
    fn check_source(&mut self, path: &StorePath) -> Result<()> {
        if self.checked.contains(path) || self.is_valid(path)? {
            return Ok(());
        }
        let (file, references) = self.source_references(path, Pass::Check)?;
        self.active.remove(path);
        let store_dir = self.store.store_dir();
        let meta =
            fs::symlink_metadata(&file).with_context(|| format!("reading '{}'", file.display()))?;
        if meta.is_file() {
            let contents =
                fs::read(&file).with_context(|| format!("reading '{}'", file.display()))?;
            let hash = HashAlgo::Sha256.digest(&contents);
            if store_dir.make_text_path(path.name(), &hash, &references)? == *path {
                self.checked.insert(path.clone());
                return Ok(());
            }
        }
        let nar = larder_store_core::nar::Dumper::new()
            .hash_path(&file, HashAlgo::Sha256)
            .with_context(|| format!("hashing '{}'", file.display()))?;
        let references = StoreReferences {
            others: references,
            self_ref: false,
        };
        let computed = store_dir.make_fixed_output_path(
            path.name(),
            ContentAddressMethod::Nar,
            &nar.hash,
            &references,
        )?;
        if computed != *path {
            let shown = self.store.print_path(path);
            bail!(
                "'{}' does not hash to the input source '{shown}' as a text or a NAR-hashed path",
                file.display()
            );
        }
        self.checked.insert(path.clone());
        Ok(())
    }

    /// Writes `drv` to the store after its inputs, and returns its path.
    pub(super) fn add_derivation(&mut self, drv: &Derivation) -> Result<StorePath> {
        self.visit_inputs(drv, Pass::Write)?;
        let store_dir = self.store.store_dir();
        let path = drv.drv_path(store_dir);
        if self.is_valid(&path)? {
            return Ok(path);
        }
        let info = self
            .store
            .write_derivation(drv)
            .with_context(|| format!("adding derivation '{}'", store_dir.display(&path)))?;
        self.done.insert(info.path.clone());
        Ok(info.path)
    }

    /// Makes the derivation `path` valid, reading it from a folder when it
    /// is not.
    pub(super) fn ensure_derivation(&mut self, path: &StorePath) -> Result<()> {
        if self.is_valid(path)? {
            return Ok(());
        }
        let drv = self.given_or_from_folder(path)?;
        self.add_derivation(&drv)?;
        Ok(())
    }

    /// The derivation `path`: the one given on the command line, else the
    /// one read from the folders.
    fn given_or_from_folder(&self, path: &StorePath) -> Result<Derivation> {
        match self.given.get(path) {
            Some(drv) => Ok(drv.clone()),
            None => self.read_from_folder(path),
        }
    }

    /// Reads the `.drv` file of `path` from the folders, verified.
    fn read_from_folder(&self, path: &StorePath) -> Result<Derivation> {
        let shown = self.store.print_path(path);
        let file = self.find(path)?;
        let bytes = fs::read(&file).with_context(|| format!("reading '{}'", file.display()))?;
        let name = path.name().strip_suffix(".drv").unwrap_or(path.name());
        let drv = Derivation::parse_aterm(&bytes, name, self.store.store_dir())
            .with_context(|| format!("parsing derivation '{}'", file.display()))?;
        if drv.drv_path(self.store.store_dir()) != *path {
            bail!(
                "'{}' is not the derivation '{shown}': its contents hash to another path",
                file.display()
            );
        }
        Ok(drv)
    }

    /// Makes the source `path` valid, adding it from a folder when it is
    /// not. A source is a text (`builtins.toFile`, possibly naming other
    /// store paths) or a NAR-hashed tree (a path literal); the method and
    /// the references whose store path matches `path` are the ones used,
    /// so nothing is added under a wrong name.
    fn ensure_source(&mut self, path: &StorePath) -> Result<()> {
        if self.is_valid(path)? {
            return Ok(());
        }
        let (file, references) = self.source_references(path, Pass::Write)?;
        let meta =
            fs::symlink_metadata(&file).with_context(|| format!("reading '{}'", file.display()))?;
        let mut methods = vec![ContentAddressMethod::Nar];
        if meta.is_file() {
            methods.insert(0, ContentAddressMethod::Text);
        }
        let mut last_error = None;
        for method in methods {
            let mut options = AddOptions::new(method);
            options.name = Some(path.name().to_owned());
            options.expected_path = Some(path.clone());
            options.references = references.clone();
            match self.store.add_path(&file, &options) {
                Ok(_) => {
                    self.active.remove(path);
                    self.done.insert(path.clone());
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        }
        let detail = last_error.map(|e| format!(": {e}")).unwrap_or_default();
        let shown = self.store.print_path(path);
        bail!(
            "'{}' does not hash to the input source '{shown}' as a text or a NAR-hashed path{detail}",
            file.display()
        )
    }

    /// Checks or imports, as `pass` says, the inputs of `drv`: its input
    /// derivations, then its input sources.
    fn visit_inputs(&mut self, drv: &Derivation, pass: Pass) -> Result<()> {
        for input in drv.input_drvs.keys() {
            self.visit_derivation(input, pass)?;
        }
        for source in &drv.input_srcs {
            self.visit_source(source, pass)?;
        }
        Ok(())
    }

    /// Checks or imports, as `pass` says, the derivation `path`.
    fn visit_derivation(&mut self, path: &StorePath, pass: Pass) -> Result<()> {
        match pass {
            Pass::Check => self.check_derivation(path),
            Pass::Write => self.ensure_derivation(path),
        }
    }

    /// Checks or imports, as `pass` says, the source `path`.
    fn visit_source(&mut self, path: &StorePath, pass: Pass) -> Result<()> {
        match pass {
            Pass::Check => self.check_source(path),
            Pass::Write => self.ensure_source(path),
        }
    }

    /// Starts on the source `path`: marks it active (refusing a cycle of
    /// sources), finds its file, and checks or imports, as `pass` says,
    /// each store path it mentions that is valid or can be found, which
    /// become its references. The caller unmarks it when done.
    fn source_references(
        &mut self,
        path: &StorePath,
        pass: Pass,
    ) -> Result<(PathBuf, BTreeSet<StorePath>)> {
        if !self.active.insert(path.clone()) {
            let shown = self.store.print_path(path);
            bail!("input source '{shown}' refers to itself through other sources");
        }
        let file = self.find(path)?;
        let mut references = BTreeSet::new();
        for candidate in self.mentioned_paths(&file, path)? {
            if self.is_valid(&candidate)? || self.locate(&candidate).is_some() {
                if candidate.name().ends_with(".drv") {
                    self.visit_derivation(&candidate, pass)?;
                } else {
                    self.visit_source(&candidate, pass)?;
                }
                references.insert(candidate);
            }
        }
        Ok((file, references))
    }

    fn is_valid(&mut self, path: &StorePath) -> Result<bool> {
        if self.done.contains(path) {
            return Ok(true);
        }
        let valid = self
            .store
            .is_valid(path)
            .with_context(|| format!("querying '{}'", self.store.print_path(path)))?;
        if valid {
            self.done.insert(path.clone());
        }
        Ok(valid)
    }

    fn locate(&self, path: &StorePath) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.join(path.as_str()))
            .find(|candidate| fs::symlink_metadata(candidate).is_ok())
    }

    fn find(&self, path: &StorePath) -> Result<PathBuf> {
        self.locate(path).ok_or_else(|| {
            let dirs = if self.dirs.is_empty() {
                "no folder (use --import DIR)".to_owned()
            } else {
                let names: Vec<String> = self
                    .dirs
                    .iter()
                    .map(|d| format!("'{}'", d.display()))
                    .collect();
                names.join(", ")
            };
            anyhow::anyhow!(
                "'{}' is not in the store and not found in {dirs}",
                self.store.print_path(path)
            )
        })
    }

    /// The store paths other than `this` whose full name appears in the
    /// NAR of `file`: the candidates for its references.
    fn mentioned_paths(&self, file: &Path, this: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut nar = Vec::new();
        larder_store_core::nar::dump_path(file, &mut nar)
            .with_context(|| format!("reading '{}'", file.display()))?;
        let prefix = format!("{}/", self.store.store_dir().as_str());
        let mut found = BTreeSet::new();
        let mut rest = nar.as_slice();
        while let Some(at) = find(rest, prefix.as_bytes()) {
            rest = &rest[at + prefix.len()..];
            let len = rest
                .iter()
                .position(|&b| !is_name_byte(b))
                .unwrap_or(rest.len());
            if let Ok(base) = std::str::from_utf8(&rest[..len])
                && let Ok(path) = StorePath::from_base_name(base)
                && path != *this
            {
                found.insert(path);
            }
        }
        Ok(found)
    }
}

/// What a walk over a derivation's inputs does with each: only check that
/// it can be imported, or import it.
#[derive(Clone, Copy)]
enum Pass {
    /// Check, writing nothing.
    Check,
    /// Make valid, writing to the store.
    Write,
}

/// Input derivations for computing output paths: given on the command
/// line, valid in the store, or in a folder.
struct Lookup<'i, 'a> {
    importer: &'i Importer<'a>,
}

impl DerivationSource for Lookup<'_, '_> {
    fn derivation(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<Derivation, Box<dyn std::error::Error + Send + Sync>> {
        let importer = self.importer;
        if let Some(drv) = importer.given.get(drv_path) {
            return Ok(drv.clone());
        }
        if importer.store.is_valid(drv_path)? {
            return Ok(importer.store.read_derivation(drv_path)?);
        }
        importer.read_from_folder(drv_path).map_err(Into::into)
    }
}

fn is_deferred(drv: &Derivation) -> bool {
    drv.outputs()
        .values()
        .any(|o| matches!(o, DerivationOutput::Deferred))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The bytes a store path's base name may hold.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)
}
