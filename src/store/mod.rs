//! The durable, crash-safe state store: JSON documents by (kind, id), an append-only
//! hash-chained audit log, and secrets sealed under a device key.
//!
//! The store knows nothing of the control plane's model. For every state-changing command the
//! control plane builds a [`Batch`] (document puts and deletes plus the audit entries that
//! describe the change) and calls [`Store::commit`] BEFORE the change takes effect in memory.
//! A batch is one SQLite transaction: after `commit` returns `Ok` it is durable
//! (`synchronous=FULL` in WAL mode, so it survives power loss, not just a crash); after `Err`
//! nothing of it was applied. Every batch must carry at least one audit entry.
//!
//! On disk, in the data directory (created 0700): `onair.db` (+ `-wal`, `-shm`) and
//! `device.key` (32 random bytes, 0600). Schema versions: see [`schema`].
//!
//! Errors: bad arguments are `InvalidArgument`; everything the disk or database does wrong
//! (full, read-only, corrupt, newer schema, bad key file) is `Io` with a message that says what.
//!
//! Threading: a `Store` owns one connection; keep it on the thread that owns the state.

mod audit;
mod keys;
pub mod schema;

#[cfg(test)]
mod tests;

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::rand::SystemRandom;
use rusqlite::ffi::ErrorCode;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{AuditEntry, AuditRecord, AuditReport, Broken, GENESIS_HASH, MAX_PAGE, Problem};
pub use keys::{KEY_FILE, TOKEN_PREFIX, hash_token, new_token};

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::{bail, err};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "onair.db";
/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest document, serialized, in bytes.
pub const MAX_DOC_BYTES: usize = 1024 * 1024;
/// Most puts + deletes + audit entries in one batch.
pub const MAX_BATCH_ITEMS: usize = 10_000;
const MAX_ID_BYTES: usize = 256;
const MAX_KIND_BYTES: usize = 64;

/// The open store. See the module doc.
pub struct Store {
    conn: Connection,
    key: keys::DeviceKey,
    rng: SystemRandom,
    dir: PathBuf,
    /// Set when a COMMIT failed with an I/O error: its outcome is unknown and later writes
    /// could build on a state that is not on disk, so every later commit is refused.
    poisoned: bool,
}

/// Document changes and the audit entries describing them, applied all-or-nothing, in order.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    audit: Vec<AuditEntry>,
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        kind: String,
        id: String,
        body: serde_json::Value,
    },
    Delete {
        kind: String,
        id: String,
    },
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Inserts or replaces document (`kind`, `id`). `kind` is 1–64 of `[a-z0-9_]`; `id` is
    /// 1–256 bytes. Checked at commit.
    pub fn put(mut self, kind: &str, id: &str, body: serde_json::Value) -> Batch {
        self.ops.push(Op::Put {
            kind: kind.to_string(),
            id: id.to_string(),
            body,
        });
        self
    }

    /// [`Batch::put`] of any serializable value.
    pub fn put_as<T: Serialize>(self, kind: &str, id: &str, value: &T) -> Result<Batch> {
        let body = serde_json::to_value(value)
            .map_err(|e| err!(InvalidArgument, "document {kind}/{id}: {e}"))?;
        Ok(self.put(kind, id, body))
    }

    /// Removes document (`kind`, `id`); removing an absent document is not an error.
    pub fn delete(mut self, kind: &str, id: &str) -> Batch {
        self.ops.push(Op::Delete {
            kind: kind.to_string(),
            id: id.to_string(),
        });
        self
    }

    /// Appends an audit entry; entries get consecutive seqs in the order added.
    pub fn audit(mut self, entry: AuditEntry) -> Batch {
        self.audit.push(entry);
        self
    }
}

/// What a successful [`Store::commit`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Id of the row in `commits`; audit records carry it.
    pub commit_id: i64,
    /// Seq of the first audit entry of the batch.
    pub first_seq: i64,
    /// Seq of the last audit entry of the batch.
    pub last_seq: i64,
    pub puts: usize,
    pub deletes: usize,
}

/// A batch whose names were checked and whose JSON is serialized, ready for SQL.
struct PreparedBatch {
    ops: Vec<(String, String, Option<String>)>,
    audit: Vec<audit::Prepared>,
    puts: usize,
    deletes: usize,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`: creates the directory (0700),
    /// upgrades the schema to [`schema::CURRENT_VERSION`] in one transaction, and loads the
    /// device key (creating it on first open). Refuses, with an `Io` error, a database newer
    /// than this code, a database that is not ours, a key file that group/others can read or
    /// has the wrong size, and a key that is not the one the database was sealed with.
    pub fn open(data_dir: &Path) -> Result<Store> {
        ensure_dir(data_dir)?;
        let mut conn = open_db(&data_dir.join(DB_FILE))?;
        let migrated = schema::migrate(&mut conn)?;
        if migrated.from != migrated.to {
            tracing::info!(
                from = migrated.from,
                to = migrated.to,
                "store schema upgraded"
            );
        }
        let recorded = meta_get(&conn, "device_key_id")?;
        let key = keys::load_or_create(data_dir, recorded.is_none())?;
        match recorded {
            Some(id) if id != key.id() => bail!(
                Io,
                "{} is not the key this database was sealed with (key id {} != {id}); \
                 refusing to start",
                data_dir.join(KEY_FILE).display(),
                key.id()
            ),
            Some(_) => {}
            None => meta_set(&conn, "device_key_id", key.id())?,
        }
        Ok(Store {
            conn,
            key,
            rng: SystemRandom::new(),
            dir: data_dir.to_path_buf(),
            poisoned: false,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `batch` in one transaction: all of it, durably, or none of it.
    ///
    /// Errors: `InvalidArgument` for a bad batch (no audit entry, bad kind/id, too large),
    /// checked before anything is written; `Io` when the database refuses (disk full,
    /// read-only, …), and then nothing was applied. If the final COMMIT itself fails with an
    /// I/O error its outcome is unknown: the store then refuses all later commits (reopen it
    /// to learn the truth).
    pub fn commit(&mut self, batch: Batch) -> Result<CommitInfo> {
        if self.poisoned {
            bail!(
                Io,
                "store refuses commits after an I/O error during an earlier commit; restart"
            );
        }
        let prepared = prepare(batch)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| commit_err("begin", &e))?;
        let info = apply(&tx, &prepared).map_err(|e| commit_err("write", &e))?;
        if let Err(e) = tx.commit() {
            if e.sqlite_error_code() == Some(ErrorCode::SystemIoFailure) {
                self.poisoned = true;
                bail!(
                    Io,
                    "commit outcome unknown after an I/O error: {e}; restart"
                );
            }
            return Err(commit_err("commit", &e));
        }
        Ok(info)
    }

    /// All documents of `kind`, ordered by id.
    pub fn load_all(&self, kind: &str) -> Result<Vec<(String, serde_json::Value)>> {
        check_kind(kind)?;
        let ctx = |e: rusqlite::Error| db_err(&format!("load {kind}"), &e);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, body FROM documents WHERE kind = ?1 ORDER BY id")
            .map_err(ctx)?;
        let rows = stmt
            .query_map([kind], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(ctx)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(ctx)?;
            out.push((id.clone(), parse_body(kind, &id, &body)?));
        }
        Ok(out)
    }

    /// [`Store::load_all`], deserialized into `T`; a document that does not fit is an `Io`
    /// error naming it.
    pub fn load_all_as<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<(String, T)>> {
        self.load_all(kind)?
            .into_iter()
            .map(|(id, v)| {
                let t = serde_json::from_value(v)
                    .map_err(|e| err!(Io, "document {kind}/{id} does not decode: {e}"))?;
                Ok((id, t))
            })
            .collect()
    }

    /// One document, e.g. a singleton such as (`policy`, `main`).
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<serde_json::Value>> {
        check_kind(kind)?;
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND id = ?2",
                [kind, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_err(&format!("get {kind}/{id}"), &e))?;
        body.map(|b| parse_body(kind, id, &b)).transpose()
    }

    /// Encrypts a secret (stream key) for storage inside a document: `v1:` + base64 of
    /// nonce‖ciphertext‖tag, AES-256-GCM under the device key, fresh random nonce each call.
    pub fn seal(&self, plaintext: &str) -> Result<String> {
        self.key.seal(&self.rng, plaintext)
    }

    /// Decrypts a string made by [`Store::seal`] with this device key. Not a sealed string →
    /// `InvalidArgument`; wrong key or tampered bytes → `Io`. Never returns garbage.
    pub fn open_secret(&self, sealed: &str) -> Result<Secret> {
        self.key.open(sealed)
    }

    /// Up to `limit` (capped at [`MAX_PAGE`]) audit records with `seq > after_seq`, oldest
    /// first. Page with `after_seq = last record's seq`.
    pub fn audit_page(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>> {
        audit::page(&self.conn, after_seq, limit)
    }

    /// The audit records written by one commit ([`CommitInfo::commit_id`]).
    pub fn audit_for_commit(&self, commit_id: i64) -> Result<Vec<AuditRecord>> {
        audit::for_commit(&self.conn, commit_id)
    }

    /// Recomputes the whole audit chain. `Ok` with [`AuditReport::first_broken`] set when an
    /// entry was deleted, edited or reordered; `Err` only when the database cannot be read.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        audit::verify(&self.conn)
    }
}

/// Creates the data directory with mode 0700, or tightens an existing one to 0700; refuses a
/// directory on a read-only file system (SQLite would only say "unable to open").
fn ensure_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| keys::io_err(&format!("create data directory {}", dir.display()), &e))?;
    let meta = fs::metadata(dir)
        .map_err(|e| keys::io_err(&format!("data directory {}", dir.display()), &e))?;
    let ro = nix::sys::statvfs::statvfs(dir)
        .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    if ro {
        bail!(
            Io,
            "data directory {} is on a read-only file system",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "data directory was group/world accessible; set to 0700");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| keys::io_err(&format!("chmod 700 {}", dir.display()), &e))?;
    }
    Ok(())
}

/// Opens the database file (mode 0600) with the store's pragmas: WAL, synchronous=FULL,
/// foreign keys, busy timeout, untrusted schema.
fn open_db(path: &Path) -> Result<Connection> {
    let shown = path.display();
    let ctx = |e: rusqlite::Error| db_err(&format!("open {shown}"), &e);
    let conn = Connection::open(path).map_err(ctx)?;
    // Before WAL mode: SQLite gives `-wal`/`-shm` the database file's permissions.
    let private = fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
    if !private {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| keys::io_err(&format!("chmod 600 {shown}"), &e))?;
    }
    conn.busy_timeout(BUSY_TIMEOUT).map_err(ctx)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(ctx)?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            Io,
            "open {shown}: journal_mode is {mode}, WAL could not be enabled"
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(ctx)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(ctx)?;
    conn.pragma_update(None, "trusted_schema", "OFF")
        .map_err(ctx)?;
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .map_err(ctx)?;
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .map_err(ctx)?;
    if sync != 2 || fk != 1 {
        bail!(
            Io,
            "open {shown}: pragmas did not take (synchronous={sync}, foreign_keys={fk})"
        );
    }
    Ok(conn)
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(|e| db_err(&format!("read meta {key}"), &e))
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [key, value],
    )
    .map(drop)
    .map_err(|e| db_err(&format!("write meta {key}"), &e))
}

fn check_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        bail!(
            InvalidArgument,
            "document kind {kind:?} must be 1-{MAX_KIND_BYTES} of [a-z0-9_]"
        );
    }
    Ok(())
}

fn check_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        bail!(
            InvalidArgument,
            "document id in {kind} must be 1-{MAX_ID_BYTES} bytes"
        );
    }
    Ok(())
}

/// Validates and serializes everything before the transaction starts.
fn prepare(batch: Batch) -> Result<PreparedBatch> {
    if batch.audit.is_empty() {
        bail!(
            InvalidArgument,
            "a batch must carry at least one audit entry"
        );
    }
    if batch.ops.len() + batch.audit.len() > MAX_BATCH_ITEMS {
        bail!(
            InvalidArgument,
            "a batch holds at most {MAX_BATCH_ITEMS} items"
        );
    }
    let (mut puts, mut deletes) = (0, 0);
    let mut ops = Vec::with_capacity(batch.ops.len());
    for op in batch.ops {
        let (kind, id, body) = match op {
            Op::Put { kind, id, body } => {
                puts += 1;
                let text = serde_json::to_string(&body)
                    .map_err(|e| err!(InvalidArgument, "document {kind}/{id}: {e}"))?;
                (kind, id, Some(text))
            }
            Op::Delete { kind, id } => {
                deletes += 1;
                (kind, id, None)
            }
        };
        check_kind(&kind)?;
        check_id(&kind, &id)?;
        if body.as_ref().is_some_and(|b| b.len() > MAX_DOC_BYTES) {
            bail!(
                InvalidArgument,
                "document {kind}/{id} exceeds {MAX_DOC_BYTES} bytes"
            );
        }
        ops.push((kind, id, body));
    }
    let audit = batch
        .audit
        .into_iter()
        .map(audit::prepare)
        .collect::<Result<Vec<_>>>()?;
    Ok(PreparedBatch {
        ops,
        audit,
        puts,
        deletes,
    })
}

/// Writes a prepared batch inside `tx`: commit row, documents, audit rows, head.
fn apply(tx: &Transaction<'_>, b: &PreparedBatch) -> rusqlite::Result<CommitInfo> {
    let (tail_seq, _) = audit::tail(tx)?;
    let first_seq = tail_seq + 1;
    let last_seq = tail_seq + i64::try_from(b.audit.len()).unwrap_or(i64::MAX);
    let (puts, deletes) = (b.puts as i64, b.deletes as i64);
    tx.execute(
        "INSERT INTO commits (first_seq, last_seq, puts, deletes) VALUES (?1, ?2, ?3, ?4)",
        params![first_seq, last_seq, puts, deletes],
    )?;
    let commit_id = tx.last_insert_rowid();
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO documents (kind, id, body) VALUES (?1, ?2, ?3) \
             ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM documents WHERE kind = ?1 AND id = ?2")?;
        for (kind, id, body) in &b.ops {
            match body {
                Some(body) => put.execute(params![kind, id, body])?,
                None => del.execute(params![kind, id])?,
            };
        }
    }
    audit::append(tx, commit_id, &b.audit)?;
    Ok(CommitInfo {
        commit_id,
        first_seq,
        last_seq,
        puts: b.puts,
        deletes: b.deletes,
    })
}

fn parse_body(kind: &str, id: &str, body: &str) -> Result<serde_json::Value> {
    serde_json::from_str(body).map_err(|e| err!(Io, "document {kind}/{id} is not JSON: {e}"))
}

/// Maps a SQLite error to an `Io` error with a hint for the common disk conditions.
pub(crate) fn db_err(context: &str, e: &rusqlite::Error) -> Error {
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => " [disk full]",
        Some(ErrorCode::ReadOnly) => " [read-only file system or database]",
        Some(ErrorCode::CannotOpen) => " [cannot open the database file]",
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            " [corrupt, or not an onair database]"
        }
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            " [locked by another process]"
        }
        Some(ErrorCode::SystemIoFailure) => " [I/O error]",
        _ => "",
    };
    err!(Io, "{context}: {e}{hint}")
}

fn commit_err(stage: &str, e: &rusqlite::Error) -> Error {
    db_err(&format!("commit failed at {stage}, nothing was applied"), e)
}
