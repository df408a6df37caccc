//! The store database: opening it with Nix's settings, and the queries and
//! updates on `ValidPaths`, `Refs` and `DerivationOutputs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use larder_store_core::{ContentAddress, Hash, StoreDir, StorePath};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::path_info::PathInfo;
use crate::schema;

/// An open store database.
pub(crate) struct Db {
    conn: Connection,
    path: PathBuf,
    store_dir: StoreDir,
}

/// The outputs of a derivation being registered, for `DerivationOutputs`.
pub(crate) type DrvOutputs = BTreeMap<StorePath, BTreeMap<String, StorePath>>;

impl Db {
    /// Opens the database (creating it and its schema when `create`) and
    /// applies Nix's connection settings.
    pub(crate) fn open(
        path: &Path,
        create: bool,
        fsync_metadata: bool,
        store_dir: StoreDir,
    ) -> Result<Self> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let wrap = |source| Error::Database {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(wrap)?;
        schema::configure(&conn, fsync_metadata).map_err(wrap)?;
        if create {
            conn.execute_batch(schema::SCHEMA_SQL).map_err(wrap)?;
        }
        let db = Self {
            conn,
            path: path.to_owned(),
            store_dir,
        };
        db.check_tables()?;
        Ok(db)
    }

    /// Fails early, with the database named, when the file is not a store
    /// database (corrupt, or another SQLite file).
    fn check_tables(&self) -> Result<()> {
        let tables: i64 = self
            .conn
            .query_row(
                "select count(*) from sqlite_master where type = 'table' and name in ('ValidPaths', 'Refs', 'DerivationOutputs')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.wrap(e))?;
        if tables != 3 {
            return Err(Error::Database {
                path: self.path.clone(),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        Ok(())
    }

    fn wrap(&self, source: rusqlite::Error) -> Error {
        Error::Database {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn is_valid(&self, path: &StorePath) -> Result<bool> {
        query_id(&self.conn, &self.store_dir.display(path))
            .map(|id| id.is_some())
            .map_err(|e| self.wrap(e))
    }

    pub(crate) fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        query_info(&self.conn, &self.store_dir, path).map_err(|e| self.lift(e))
    }

    pub(crate) fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_of_path(
            "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)",
            path,
        )
    }

    /// The paths that the valid `path` refers to (empty when it is not
    /// valid).
    pub(crate) fn references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "select path from Refs join ValidPaths on reference = id where referrer = (select id from ValidPaths where path = ?)",
            )
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([self.store_dir.display(path)], |row| {
                row.get::<_, String>(0)
            })
            .map_err(|e| self.wrap(e))?;
        self.parse_paths(rows)
    }

    pub(crate) fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached("select path from ValidPaths")
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| self.wrap(e))?;
        self.parse_paths(rows)
    }

    pub(crate) fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.paths_of_path(
            "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
            path,
        )
    }

    /// The store paths `sql` selects (one column) given `path` as its one
    /// parameter.
    fn paths_of_path(&self, sql: &str, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([self.store_dir.display(path)], |row| {
                row.get::<_, String>(0)
            })
            .map_err(|e| self.wrap(e))?;
        self.parse_paths(rows)
    }

    pub(crate) fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "select d.id, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?",
            )
            .map_err(|e| self.wrap(e))?;
        let rows = stmt
            .query_map([self.store_dir.display(drv)], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.wrap(e))?;
        let mut outputs = BTreeMap::new();
        for row in rows {
            let (name, path) = row.map_err(|e| self.wrap(e))?;
            outputs.insert(name, parse_path(&self.store_dir, &path)?);
        }
        Ok(outputs)
    }

    pub(crate) fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        let prefix = format!("{}/{hash_part}", self.store_dir.as_str());
        let found: Option<String> = self
            .conn
            .query_row(
                "select path from ValidPaths where path >= ? limit 1",
                [&prefix],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.wrap(e))?;
        match found {
            Some(path) if path.starts_with(&prefix) && path[prefix.len()..].starts_with('-') => {
                parse_path(&self.store_dir, &path).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Registers `infos` in one immediate transaction: new paths are
    /// inserted, valid ones updated, references added, and derivation
    /// outputs recorded for new `.drv` paths. Every reference must be valid
    /// or in `infos`; any failure rolls everything back.
    pub(crate) fn register(&mut self, infos: &[PathInfo], drv_outputs: &DrvOutputs) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let store_dir = self.store_dir.clone();
        let path = self.path.clone();
        let wrap = |source| Error::Database {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let mut ids = BTreeMap::new();
        for info in infos {
            let printed = store_dir.display(&info.path);
            let id = match query_id(&tx, &printed).map_err(wrap)? {
                Some(id) => {
                    update_info(&tx, &store_dir, info).map_err(wrap)?;
                    id
                }
                None => {
                    let id = insert_info(&tx, &store_dir, info, now).map_err(wrap)?;
                    if let Some(outputs) = drv_outputs.get(&info.path) {
                        for (name, output) in outputs {
                            tx.prepare_cached(
                                "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
                            )
                            .and_then(|mut s| s.execute(params![id, name, store_dir.display(output)]))
                            .map_err(wrap)?;
                        }
                    }
                    id
                }
            };
            ids.insert(&info.path, id);
        }
        for info in infos {
            let referrer = ids[&info.path];
            for reference in &info.references {
                let id = match ids.get(reference) {
                    Some(&id) => id,
                    None => query_id(&tx, &store_dir.display(reference))
                        .map_err(wrap)?
                        .ok_or_else(|| Error::MissingReference {
                            path: store_dir.display(&info.path),
                            reference: store_dir.display(reference),
                        })?,
                };
                tx.prepare_cached(
                    "insert or replace into Refs (referrer, reference) values (?, ?)",
                )
                .and_then(|mut s| s.execute(params![referrer, id]))
                .map_err(wrap)?;
            }
        }
        tx.commit().map_err(wrap)
    }

    /// Removes a path that has no referrers but itself, in one transaction.
    /// Returns whether it was valid.
    pub(crate) fn invalidate_checked(&mut self, path: &StorePath) -> Result<bool> {
        let printed = self.store_dir.display(path);
        let referrers: Vec<String> = self
            .referrers(path)?
            .into_iter()
            .filter(|r| r != path)
            .map(|r| self.store_dir.display(&r))
            .collect();
        if !referrers.is_empty() {
            return Err(Error::PathInUse {
                path: printed,
                referrers,
            });
        }
        let db_path = self.path.clone();
        let wrap = |source| Error::Database {
            path: db_path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        // Foreign keys refuse the delete when a referrer appeared since the
        // check above; the transaction then rolls back.
        let removed = tx
            .execute("delete from ValidPaths where path = ?", [&printed])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::PathInUse {
                        path: printed.clone(),
                        referrers: vec!["a path registered meanwhile".to_owned()],
                    }
                }
                other => wrap(other),
            })?;
        tx.commit().map_err(wrap)?;
        Ok(removed > 0)
    }

    /// Updates the NAR hash and size of a valid path (verify's repair of
    /// rows without them).
    pub(crate) fn update(&mut self, info: &PathInfo) -> Result<()> {
        update_info(&self.conn, &self.store_dir, info).map_err(|e| self.wrap(e))
    }

    fn parse_paths(
        &self,
        rows: impl Iterator<Item = rusqlite::Result<String>>,
    ) -> Result<BTreeSet<StorePath>> {
        let mut paths = BTreeSet::new();
        for row in rows {
            paths.insert(parse_path(
                &self.store_dir,
                &row.map_err(|e| self.wrap(e))?,
            )?);
        }
        Ok(paths)
    }

    fn lift(&self, e: QueryError) -> Error {
        match e {
            QueryError::Sql(e) => self.wrap(e),
            QueryError::Entry(e) => e,
        }
    }
}

/// A query failure: SQLite's, or a row that does not parse.
enum QueryError {
    Sql(rusqlite::Error),
    Entry(Error),
}

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<Error> for QueryError {
    fn from(e: Error) -> Self {
        Self::Entry(e)
    }
}

fn query_id(conn: &Connection, printed: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("select id from ValidPaths where path = ?")?
        .query_row([printed], |row| row.get(0))
        .optional()
}

fn query_info(
    conn: &Connection,
    store_dir: &StoreDir,
    path: &StorePath,
) -> Result<Option<PathInfo>, QueryError> {
    let printed = store_dir.display(path);
    type Row = (
        i64,
        String,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = conn
        .prepare_cached(
            "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?",
        )?
        .query_row([&printed], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
            ))
        })
        .optional()?;
    let Some((id, hash, registration_time, deriver, nar_size, ultimate, sigs, ca)) = row else {
        return Ok(None);
    };
    let corrupt = |reason: String| Error::CorruptEntry {
        path: printed.clone(),
        reason,
    };
    let nar_hash = Hash::parse_prefixed(&hash).map_err(|e| corrupt(format!("NAR hash: {e}")))?;
    let deriver = deriver
        .filter(|d| !d.is_empty())
        .map(|d| store_dir.parse(&d))
        .transpose()
        .map_err(|e| corrupt(format!("deriver: {e}")))?;
    let ca = ca
        .filter(|c| !c.is_empty())
        .map(|c| ContentAddress::parse(&c))
        .transpose()
        .map_err(|e| corrupt(format!("content address: {e}")))?;
    let nar_size = u64::try_from(nar_size.unwrap_or(0))
        .map_err(|_| corrupt("negative NAR size".to_owned()))?;
    let mut references = BTreeSet::new();
    {
        let mut stmt = conn.prepare_cached(
            "select path from Refs join ValidPaths on reference = id where referrer = ?",
        )?;
        let rows = stmt.query_map([id], |row| row.get::<_, String>(0))?;
        for reference in rows {
            references.insert(parse_path(store_dir, &reference?)?);
        }
    }
    Ok(Some(PathInfo {
        path: path.clone(),
        nar_hash,
        nar_size,
        references,
        deriver,
        ca,
        registration_time,
        ultimate: ultimate == Some(1),
        sigs: sigs
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

fn insert_info(
    conn: &Connection,
    store_dir: &StoreDir,
    info: &PathInfo,
    now: i64,
) -> rusqlite::Result<i64> {
    let (nar_size, ultimate, sigs, ca) = optional_columns(info);
    conn.prepare_cached(
        "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        store_dir.display(&info.path),
        info.nar_hash.encode(larder_store_core::hash::HashEncoding::Base16, true),
        if info.registration_time == 0 {
            now
        } else {
            info.registration_time
        },
        info.deriver.as_ref().map(|d| store_dir.display(d)),
        nar_size,
        ultimate,
        sigs,
        ca,
    ])?;
    Ok(conn.last_insert_rowid())
}

fn update_info(conn: &Connection, store_dir: &StoreDir, info: &PathInfo) -> rusqlite::Result<()> {
    let (nar_size, ultimate, sigs, ca) = optional_columns(info);
    conn.prepare_cached(
        "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?",
    )?
    .execute(params![
        nar_size,
        info.nar_hash.encode(larder_store_core::hash::HashEncoding::Base16, true),
        ultimate,
        sigs,
        ca,
        store_dir.display(&info.path),
    ])?;
    Ok(())
}

/// The nullable columns as Nix writes them: NULL for a zero size, a
/// non-ultimate path, no signatures, no content address.
fn optional_columns(info: &PathInfo) -> (Option<i64>, Option<i64>, Option<String>, Option<String>) {
    (
        (info.nar_size != 0).then(|| i64::try_from(info.nar_size).unwrap_or(i64::MAX)),
        info.ultimate.then_some(1),
        (!info.sigs.is_empty()).then(|| info.sigs.iter().cloned().collect::<Vec<_>>().join(" ")),
        info.ca.map(|ca| ca.render()),
    )
}

fn parse_path(store_dir: &StoreDir, printed: &str) -> Result<StorePath> {
    store_dir.parse(printed).map_err(|e| Error::CorruptEntry {
        path: printed.to_owned(),
        reason: e.to_string(),
    })
}
