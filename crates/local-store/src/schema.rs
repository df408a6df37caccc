//! Nix 2.8's database schema (version 10) and connection settings.
//!
//! The statements are Nix's `schema.sql`, written with `if not exists` so
//! that creating the schema again after an interrupted first open is
//! harmless. SQLite keeps each statement's text in `sqlite_master` without
//! the `if not exists`, so the stored schema reads exactly as in a database
//! Nix created.

use std::time::Duration;

use rusqlite::Connection;

/// The schema version Nix 2.8 writes to `db/schema`.
pub const SCHEMA_VERSION: u32 = 10;

/// The tables, indices and trigger of a version-10 store database.
pub(crate) const SCHEMA_SQL: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- A path may refer to itself. Deleting its row would then violate the
-- restrict on Refs.reference, so self-references go first.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// How long a connection waits for another writer before giving up: an
/// hour, as Nix.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Applies Nix's per-connection settings: busy timeout, foreign keys,
/// `synchronous = normal` (or `off` when metadata need not be synced),
/// write-ahead logging and its checkpoint interval.
pub(crate) fn configure(conn: &Connection, fsync_metadata: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("pragma foreign_keys = 1;")?;
    conn.execute_batch(if fsync_metadata {
        "pragma synchronous = normal;"
    } else {
        "pragma synchronous = off;"
    })?;
    let mode: String = conn.query_row("pragma main.journal_mode;", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Setting the mode answers with the new mode as a row.
        let _: String = conn.query_row("pragma main.journal_mode = wal;", [], |row| row.get(0))?;
    }
    // A large checkpoint interval lets big registrations finish in one
    // fsync, as in Nix.
    let _: i64 = conn.query_row("pragma wal_autocheckpoint = 40000;", [], |row| row.get(0))?;
    Ok(())
}
