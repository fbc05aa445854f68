//! The append-only, hash-chained audit log.
//!
//! Row `seq` (1, 2, 3, … with no gaps) stores `prev_hash` (the `hash` of row `seq - 1`, or 64
//! zeros for row 1) and `hash = SHA-256(canonical(seq, prev_hash, entry))`, lowercase hex. The
//! canonical encoding is, in order: the domain tag `onair-audit-v1\0`; `seq` as 8-byte big-endian;
//! `prev_hash`; `ts_ms` as 8-byte big-endian; then actor, role, source, action, target, outcome,
//! detail. Each text field is an 8-byte big-endian length followed by its UTF-8 bytes.
//! `detail` is hashed as the exact JSON text stored, so the hash never depends on how a JSON
//! library orders keys. The chain head is also kept in `meta('audit_head')` = `"seq:hash"`,
//! written in the same transaction, so that deleting the newest rows shows too.
//!
//! Nothing in this crate updates or deletes audit rows, and triggers refuse it in SQL.

use ring::digest::{Context, SHA256};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{db_err, keys::hex};
use crate::error::Result;
use crate::{bail, err};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest accepted text field of an entry, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Longest accepted `detail`, serialized, in bytes.
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;
/// Most rows one [`super::Store::audit_page`] call returns.
pub const MAX_PAGE: usize = 1000;

/// One audited action, as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the action was decided, ms since the Unix epoch (from the caller's clock).
    pub ts_ms: i64,
    /// Who: a token name or user, or `system` for the appliance itself.
    pub actor: String,
    /// The actor's role: `admin`, `subscriber`, `fabric`, `system`.
    pub role: String,
    /// From where: peer address, `console`, `startup`.
    pub source: String,
    /// What: e.g. `session.confirm`, `entitlement.set`.
    pub action: String,
    /// On what: e.g. `session/42`.
    pub target: String,
    /// `ok`, `denied`, `failed`, ….
    pub outcome: String,
    /// Anything else, as JSON. Never put secrets here.
    pub detail: serde_json::Value,
}

/// A stored entry with its place in the chain.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    /// The commit that wrote it; `None` for entries written before schema v2.
    pub commit_id: Option<i64>,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Why the chain is broken at [`Broken::seq`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No row with this seq although later rows exist (deleted or renumbered).
    Missing,
    /// The row's `prev_hash` is not the previous row's hash (rows reordered or replaced).
    PrevHashMismatch,
    /// The row's content does not hash to its `hash` (edited).
    HashMismatch,
    /// The recorded head is at this seq but the log ends before it, or the head's hash differs
    /// (newest rows deleted or replaced).
    HeadMismatch,
}

/// The first place where the chain fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub problem: Problem,
}

/// Result of [`super::Store::verify_audit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Rows checked.
    pub entries: u64,
    /// Seq of the last row (0 when empty).
    pub last_seq: i64,
    /// Hash of the last row ([`GENESIS_HASH`] when empty).
    pub last_hash: String,
    /// `None` when the whole chain verifies.
    pub first_broken: Option<Broken>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// An entry whose fields were checked and whose detail is serialized.
pub(super) struct Prepared {
    entry: AuditEntry,
    detail: String,
}

/// Checks field sizes and serializes `detail` (before any transaction starts).
pub(super) fn prepare(entry: AuditEntry) -> Result<Prepared> {
    let fields = [
        ("actor", &entry.actor),
        ("role", &entry.role),
        ("source", &entry.source),
        ("action", &entry.action),
        ("target", &entry.target),
        ("outcome", &entry.outcome),
    ];
    for (name, value) in fields {
        if value.len() > MAX_FIELD_BYTES {
            bail!(
                InvalidArgument,
                "audit {name} is longer than {MAX_FIELD_BYTES} bytes"
            );
        }
    }
    if entry.action.is_empty() {
        bail!(InvalidArgument, "audit entry without an action");
    }
    let detail = serde_json::to_string(&entry.detail)
        .map_err(|e| err!(InvalidArgument, "audit detail: {e}"))?;
    if detail.len() > MAX_DETAIL_BYTES {
        bail!(
            InvalidArgument,
            "audit detail is longer than {MAX_DETAIL_BYTES} bytes"
        );
    }
    Ok(Prepared { entry, detail })
}

/// The chain hash of one row; see the module doc for the encoding (tag, seq, prev_hash, ts_ms,
/// actor, role, source, action, target, outcome, detail).
pub(super) fn chain_hash(seq: i64, prev_hash: &str, e: &AuditEntry, detail_json: &str) -> String {
    fn text(ctx: &mut Context, s: &str) {
        ctx.update(&(s.len() as u64).to_be_bytes());
        ctx.update(s.as_bytes());
    }
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"onair-audit-v1\0");
    ctx.update(&seq.to_be_bytes());
    text(&mut ctx, prev_hash);
    ctx.update(&e.ts_ms.to_be_bytes());
    for s in [
        &e.actor, &e.role, &e.source, &e.action, &e.target, &e.outcome,
    ] {
        text(&mut ctx, s);
    }
    text(&mut ctx, detail_json);
    hex(ctx.finish().as_ref())
}

/// The newest (seq, hash) by the rows themselves; `(0, GENESIS_HASH)` when empty.
pub(super) fn tail(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or_else(|| (0, GENESIS_HASH.to_string())))
}

/// Appends entries after the current tail inside the caller's transaction and records the new
/// head.
pub(super) fn append(
    conn: &Connection,
    commit_id: i64,
    entries: &[Prepared],
) -> rusqlite::Result<()> {
    let (mut seq, mut prev) = tail(conn)?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit (seq, ts_ms, actor, role, source, action, target, outcome, detail, \
         prev_hash, hash, commit_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for p in entries {
        seq += 1;
        let e = &p.entry;
        let hash = chain_hash(seq, &prev, e, &p.detail);
        stmt.execute(params![
            seq, e.ts_ms, e.actor, e.role, e.source, e.action, e.target, e.outcome, p.detail, prev,
            hash, commit_id
        ])?;
        prev = hash;
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_head', ?1)",
        [format!("{seq}:{prev}")],
    )?;
    Ok(())
}

const SELECT_COLUMNS: &str = "SELECT seq, ts_ms, actor, role, source, action, target, outcome, \
                              detail, prev_hash, hash, commit_id FROM audit";

/// A row as stored; `detail` still as text.
struct RawRow {
    seq: i64,
    entry: AuditEntry,
    detail: String,
    prev_hash: String,
    hash: String,
    commit_id: Option<i64>,
}

fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        seq: r.get(0)?,
        entry: AuditEntry {
            ts_ms: r.get(1)?,
            actor: r.get(2)?,
            role: r.get(3)?,
            source: r.get(4)?,
            action: r.get(5)?,
            target: r.get(6)?,
            outcome: r.get(7)?,
            detail: serde_json::Value::Null,
        },
        detail: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
        commit_id: r.get(11)?,
    })
}

fn into_record(raw: RawRow) -> Result<AuditRecord> {
    let mut entry = raw.entry;
    entry.detail = serde_json::from_str(&raw.detail)
        .map_err(|e| err!(Io, "audit row {}: detail is not JSON: {e}", raw.seq))?;
    Ok(AuditRecord {
        seq: raw.seq,
        commit_id: raw.commit_id,
        entry,
        prev_hash: raw.prev_hash,
        hash: raw.hash,
    })
}

/// Up to `limit` (at most [`MAX_PAGE`]) records with `seq > after_seq`, oldest first.
pub(super) fn page(conn: &Connection, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>> {
    let limit = i64::try_from(limit.min(MAX_PAGE)).unwrap_or(0);
    let sql = format!("{SELECT_COLUMNS} WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    query(conn, &sql, params![after_seq, limit])
}

/// All records written by one commit, oldest first.
pub(super) fn for_commit(conn: &Connection, commit_id: i64) -> Result<Vec<AuditRecord>> {
    let sql = format!("{SELECT_COLUMNS} WHERE commit_id = ?1 ORDER BY seq");
    query(conn, &sql, params![commit_id])
}

fn query(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<AuditRecord>> {
    let ctx = |e: rusqlite::Error| db_err("audit: read", &e);
    let mut stmt = conn.prepare_cached(sql).map_err(ctx)?;
    let rows = stmt.query_map(p, raw_row).map_err(ctx)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(into_record(row.map_err(ctx)?)?);
    }
    Ok(out)
}

/// Recomputes the whole chain and compares the end with the recorded head.
pub(super) fn verify(conn: &Connection) -> Result<AuditReport> {
    let ctx = |e: rusqlite::Error| db_err("audit: verify", &e);
    let mut stmt = conn
        .prepare(&format!("{SELECT_COLUMNS} ORDER BY seq"))
        .map_err(ctx)?;
    let mut rows = stmt.query([]).map_err(ctx)?;
    let mut report = AuditReport {
        entries: 0,
        last_seq: 0,
        last_hash: GENESIS_HASH.to_string(),
        first_broken: None,
    };
    while let Some(row) = rows.next().map_err(ctx)? {
        let raw = raw_row(row).map_err(ctx)?;
        if let Some(problem) = check_row(&report, &raw) {
            let seq = if problem == Problem::Missing {
                report.last_seq + 1
            } else {
                raw.seq
            };
            report.first_broken = Some(Broken { seq, problem });
            return Ok(report);
        }
        report.entries += 1;
        report.last_seq = raw.seq;
        report.last_hash = raw.hash;
    }
    report.first_broken = check_head(conn, &report)?;
    Ok(report)
}

fn check_row(so_far: &AuditReport, raw: &RawRow) -> Option<Problem> {
    if raw.seq != so_far.last_seq + 1 {
        return Some(Problem::Missing);
    }
    if raw.prev_hash != so_far.last_hash {
        return Some(Problem::PrevHashMismatch);
    }
    if chain_hash(raw.seq, &raw.prev_hash, &raw.entry, &raw.detail) != raw.hash {
        return Some(Problem::HashMismatch);
    }
    None
}

fn check_head(conn: &Connection, report: &AuditReport) -> Result<Option<Broken>> {
    let head: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| db_err("audit: read head", &e))?;
    let Some(head) = head else {
        // No head: only right for an empty log.
        return Ok((report.entries > 0).then_some(Broken {
            seq: report.last_seq,
            problem: Problem::HeadMismatch,
        }));
    };
    let parsed = head
        .split_once(':')
        .and_then(|(s, h)| Some((s.parse::<i64>().ok()?, h)));
    let Some((head_seq, head_hash)) = parsed else {
        bail!(Io, "audit head {head:?} is malformed");
    };
    if head_seq > report.last_seq {
        return Ok(Some(Broken {
            seq: report.last_seq + 1,
            problem: Problem::HeadMismatch,
        }));
    }
    if head_seq < report.last_seq || head_hash != report.last_hash {
        return Ok(Some(Broken {
            seq: head_seq.max(1),
            problem: Problem::HeadMismatch,
        }));
    }
    Ok(None)
}
