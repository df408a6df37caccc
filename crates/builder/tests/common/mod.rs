//! Shared helpers: a temporary store, adding sources, building a derivation
//! through the whole lifecycle with the blocking test driver.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use larder_builder::test_support::{lock_and_register, run_to_unprepared};
use larder_builder::{
    BuildError, BuildOutputs, BuildRequest, BuildSettings, GenericBuilder, UnpreparedBuild, prepare,
};
use larder_local_store::{LocalStore, PathInfo};
use larder_store_core::derivation::{Derivation, DerivationOutput};
use larder_store_core::nar;
use larder_store_core::store_path::output_path_name;
use larder_store_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, StoreDir, StorePath,
};

pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: LocalStore,
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        Self { dir, store }
    }

    pub fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    pub fn real(&self, path: &StorePath) -> PathBuf {
        self.store.layout().real_path(path)
    }

    pub fn settings(&self) -> BuildSettings {
        BuildSettings {
            build_dir: Some(self.dir.path().join("builds")),
            cores: 1,
            ..BuildSettings::default()
        }
    }

    /// Copies a file or tree into the store as `path` and registers it.
    pub fn add_path(&self, source: &Path, path: &StorePath, references: &[StorePath]) {
        let mut bytes = Vec::new();
        nar::dump_path(source, &mut bytes).unwrap();
        let real = self.real(path);
        nar::restore(&mut bytes.as_slice(), &real).unwrap();
        let h = nar::hash_path(&real).unwrap();
        let mut info = PathInfo::new(path.clone(), h.hash, h.size);
        info.references = references.iter().cloned().collect();
        self.store.register_paths(&[info]).unwrap();
    }

    /// Writes a `.drv` file into the store (unregistered, as the builder
    /// only reads it to find input derivations' outputs).
    pub fn write_drv(&self, drv: &Derivation) -> StorePath {
        let path = drv.drv_path(self.store_dir());
        std::fs::write(self.real(&path), drv.to_aterm(self.store_dir())).unwrap();
        path
    }

    pub fn unprepare(
        &self,
        drv: &Derivation,
        check: bool,
    ) -> (String, Result<UnpreparedBuild, BuildError>) {
        self.unprepare_with(drv, check, self.settings())
    }

    pub fn unprepare_with(
        &self,
        drv: &Derivation,
        check: bool,
        settings: BuildSettings,
    ) -> (String, Result<UnpreparedBuild, BuildError>) {
        let drv_path = self.write_drv(drv);
        let request = BuildRequest {
            drv_path,
            drv: drv.clone(),
            check,
            settings,
        };
        let prepared = match prepare(&self.store, request, Box::new(GenericBuilder)) {
            Ok(p) => p,
            Err(e) => return (String::new(), Err(e)),
        };
        let running = match prepared.start() {
            Ok(r) => r,
            Err(e) => return (String::new(), Err(e)),
        };
        let (log, result) = run_to_unprepared(running, &self.store);
        (String::from_utf8_lossy(&log).into_owned(), result)
    }

    /// Locks what the build installs, as the worker would, and registers.
    pub fn register(&self, unprepared: UnpreparedBuild) -> Result<BuildOutputs, BuildError> {
        lock_and_register(unprepared, &self.store)
    }

    pub fn build(&self, drv: &Derivation) -> (String, Result<BuildOutputs, BuildError>) {
        self.build_mode(drv, false)
    }

    pub fn build_mode(
        &self,
        drv: &Derivation,
        check: bool,
    ) -> (String, Result<BuildOutputs, BuildError>) {
        let (log, result) = self.unprepare(drv, check);
        (log, result.and_then(|u| self.register(u)))
    }
}

/// A `/bin/sh -c SCRIPT` derivation with PATH set, input-addressed (its
/// output path made up from the name and script: the builder does not
/// check how input-addressed paths were computed).
pub fn sh_drv(store_dir: &StoreDir, name: &str, script: &str, outputs: &[&str]) -> Derivation {
    let mut drv = base_drv(name, script);
    for output in outputs {
        let hash = HashAlgo::Sha256.digest(format!("{name}\0{script}\0{output}"));
        let path = store_dir.make_output_path(output, &hash, name).unwrap();
        drv.env
            .insert((*output).to_owned(), store_dir.display(&path));
        drv.insert_output(output, DerivationOutput::InputAddressed(path))
            .unwrap();
    }
    drv.env.insert("outputs".to_owned(), outputs.join(" "));
    drv
}

/// A fixed-output derivation.
pub fn fixed_drv(
    store_dir: &StoreDir,
    name: &str,
    script: &str,
    method: ContentAddressMethod,
    hash: Hash,
) -> Derivation {
    let mut drv = base_drv(name, script);
    let ca = ContentAddress { method, hash };
    drv.insert_output("out", DerivationOutput::Fixed(ca))
        .unwrap();
    let path = drv.output_paths(store_dir)["out"].clone().unwrap();
    drv.env.insert("out".to_owned(), store_dir.display(&path));
    drv
}

/// A floating content-addressed derivation with one output, `out`.
pub fn floating_drv(name: &str, script: &str) -> Derivation {
    let mut drv = base_drv(name, script);
    drv.insert_output(
        "out",
        DerivationOutput::Floating {
            method: ContentAddressMethod::Nar,
            algo: HashAlgo::Sha256,
        },
    )
    .unwrap();
    drv.env.insert(
        "out".to_owned(),
        larder_builder::rewrite::hash_placeholder("out"),
    );
    drv
}

fn base_drv(name: &str, script: &str) -> Derivation {
    let mut drv = Derivation::new(name).unwrap();
    drv.system = "x86_64-linux".to_owned();
    drv.builder = "/bin/sh".to_owned();
    drv.args = vec!["-c".to_owned(), script.to_owned()];
    drv.env.insert("name".to_owned(), name.to_owned());
    drv.env.insert("builder".to_owned(), "/bin/sh".to_owned());
    drv.env.insert("system".to_owned(), drv.system.clone());
    drv.env
        .insert("PATH".to_owned(), "/usr/bin:/bin".to_owned());
    drv
}

/// The path a content address gives an output named `name`.
pub fn ca_path(
    store_dir: &StoreDir,
    name: &str,
    method: ContentAddressMethod,
    hash: Hash,
) -> StorePath {
    store_dir
        .make_content_addressed_path(
            &output_path_name(name, "out"),
            &ContentAddress { method, hash },
            &Default::default(),
        )
        .unwrap()
}
