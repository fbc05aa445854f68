//! Schema versions and migrations.
//!
//! The version lives in `meta(key = 'schema_version')`. [`MIGRATIONS`] is an ordered list: entry
//! `i` moves a database from version `i` to `i + 1`. Version 0 is an empty file. All steps that a
//! database needs run in ONE immediate transaction, so a crash mid-upgrade leaves the old version.
//! A database whose version is newer than [`CURRENT_VERSION`] is refused, never touched.
//!
//! Rules for adding a version: append a step, never edit a shipped one; add a test that builds
//! the previous version with its SQL directly, fills it, and opens it with the current code.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::db_err;
use crate::bail;
use crate::error::Result;

/// v1: meta, documents by (kind, id), the hash-chained audit log with append-only triggers.
pub(super) const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE documents (
    kind TEXT NOT NULL
        CHECK (length(kind) BETWEEN 1 AND 64 AND kind NOT GLOB '*[^a-z0-9_]*'),
    id   TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
    body TEXT NOT NULL CHECK (json_valid(body)),
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 1),
    ts_ms     INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    source    TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL CHECK (json_valid(detail)),
    prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash      TEXT NOT NULL UNIQUE CHECK (length(hash) = 64)
);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"#;

/// v2: one row per commit; each audit row names its commit (`audit.commit_id`, indexed, read by
/// `audit_page`/`audit_for_commit`); the chain head is recorded in `meta('audit_head')` so that
/// a truncated tail shows. Rows from v1 keep `commit_id = NULL`; the head is backfilled.
pub(super) const V2: &str = r#"
CREATE TABLE commits (
    id        INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    puts      INTEGER NOT NULL CHECK (puts >= 0),
    deletes   INTEGER NOT NULL CHECK (deletes >= 0),
    CHECK (first_seq <= last_seq)
);

ALTER TABLE audit ADD COLUMN commit_id INTEGER REFERENCES commits(id);

CREATE INDEX audit_by_commit ON audit(commit_id) WHERE commit_id IS NOT NULL;

INSERT OR REPLACE INTO meta (key, value)
    SELECT 'audit_head', seq || ':' || hash FROM audit ORDER BY seq DESC LIMIT 1;
"#;

/// The ordered migration steps; `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this code writes and reads.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// What [`migrate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
}

/// Brings the database to [`CURRENT_VERSION`] in one transaction, or changes nothing.
pub(super) fn migrate(conn: &mut Connection) -> Result<Migrated> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| db_err("schema: begin", &e))?;
    let from = read_version(&tx)?;
    if from > CURRENT_VERSION {
        bail!(
            Io,
            "database schema version {from} is newer than this firmware knows \
             ({CURRENT_VERSION}); refusing to open it (was the firmware downgraded?)"
        );
    }
    let start = usize::try_from(from).unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(step)
            .map_err(|e| db_err(&format!("schema: upgrade v{i} -> v{}", i + 1), &e))?;
    }
    if from != CURRENT_VERSION {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
            [CURRENT_VERSION.to_string()],
        )
        .map_err(|e| db_err("schema: write version", &e))?;
    }
    tx.commit().map_err(|e| db_err("schema: commit", &e))?;
    Ok(Migrated {
        from,
        to: CURRENT_VERSION,
    })
}

/// Version 0 for an empty database; an error for a database that is not ours.
fn read_version(conn: &Connection) -> Result<i64> {
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| db_err("schema: read catalog", &e))?;
    if !has_meta {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| db_err("schema: read catalog", &e))?;
        if objects > 0 {
            bail!(
                Io,
                "database has tables but no schema version: not an onair database"
            );
        }
        return Ok(0);
    }
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_err("schema: read version", &e))?;
    let Some(text) = text else {
        bail!(Io, "database has a meta table but no schema_version");
    };
    match text.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => bail!(
            Io,
            "database schema_version {text:?} is not a version number"
        ),
    }
}
