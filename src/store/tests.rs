//! Store tests. The tests that need a child process (kill -9, a real full disk, a read-only
//! file system) are in the submodule `crash` (`tests/crash.rs` beside this file).
#![allow(clippy::unwrap_used)]

mod crash;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

use super::audit::{GENESIS_HASH, chain_hash};
use super::keys::{base64_decode, base64_encode};
use super::schema::{CURRENT_VERSION, V1};
use super::*;
use crate::error::ErrorKind;

/// A directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("onair-store-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// The data directory used by the tests (a child that `Store::open` creates).
    pub(super) fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        ts_ms: 1_700_000_000_000,
        actor: "alice".into(),
        role: "admin".into(),
        source: "10.0.0.7".into(),
        action: action.into(),
        target: target.into(),
        outcome: "ok".into(),
        detail: json!({"why": "test", "n": [1, 2, 3]}),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir).unwrap()
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .conn
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Commits `n` batches of one put and two audit entries each.
fn fill(store: &mut Store, n: usize) {
    for i in 0..n {
        let id = format!("s{i}");
        store
            .commit(
                Batch::new()
                    .put("session", &id, json!({"i": i}))
                    .audit(entry("session.create", &id))
                    .audit(entry("session.confirm", &id)),
            )
            .unwrap();
    }
}

// ---- open, device key ----

#[test]
fn open_creates_private_dir_db_and_key() {
    let t = TempDir::new("create");
    let store = open(&t.data());
    assert_eq!(mode(&t.data()), 0o700);
    let key = t.data().join(KEY_FILE);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(fs::metadata(&key).unwrap().len(), 32);
    assert_eq!(mode(&t.data().join(DB_FILE)), 0o600);
    assert_eq!(mode(&t.data().join(format!("{DB_FILE}-wal"))), 0o600);
    assert!(!t.data().join("device.key.tmp").exists());
    let v: String = store
        .conn
        .query_row(
            "SELECT value FROM meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, CURRENT_VERSION.to_string());
    let jm: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
}

#[test]
fn existing_open_dir_is_tightened_to_0700() {
    let t = TempDir::new("tighten");
    fs::create_dir(t.data()).unwrap();
    fs::set_permissions(t.data(), fs::Permissions::from_mode(0o755)).unwrap();
    let _s = open(&t.data());
    assert_eq!(mode(&t.data()), 0o700);
}

#[test]
fn device_key_is_reloaded_identical() {
    let t = TempDir::new("reload");
    let sealed = open(&t.data()).seal("live_abc").unwrap();
    let bytes = fs::read(t.data().join(KEY_FILE)).unwrap();
    let store = open(&t.data());
    assert_eq!(fs::read(t.data().join(KEY_FILE)).unwrap(), bytes);
    assert_eq!(store.open_secret(&sealed).unwrap().expose(), "live_abc");
}

#[test]
fn device_key_readable_by_group_or_others_is_refused() {
    for m in [0o640, 0o604, 0o644] {
        let t = TempDir::new("keymode");
        drop(open(&t.data()));
        let key = t.data().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(m)).unwrap();
        let e = Store::open(&t.data()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.message().contains(&format!("mode {m:03o}")), "{e}");
    }
}

#[test]
fn device_key_of_wrong_size_or_type_is_refused() {
    let t = TempDir::new("keysize");
    drop(open(&t.data()));
    let key = t.data().join(KEY_FILE);
    fs::write(&key, [7u8; 31]).unwrap();
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("31 bytes, expected 32"), "{e}");
    fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("not a regular file"), "{e}");
}

#[test]
fn swapped_or_missing_device_key_is_refused() {
    let t = TempDir::new("keyswap");
    drop(open(&t.data()));
    let key = t.data().join(KEY_FILE);
    fs::write(&key, [9u8; 32]).unwrap();
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("not the key this database"), "{e}");
    fs::remove_file(&key).unwrap();
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("is missing"), "{e}");
    assert!(
        !key.exists(),
        "must not create a new key for an existing database"
    );
}

#[test]
fn stale_key_temp_file_is_replaced() {
    let t = TempDir::new("staletmp");
    fs::create_dir(t.data()).unwrap();
    fs::write(t.data().join("device.key.tmp"), b"half").unwrap();
    let _s = open(&t.data());
    assert!(!t.data().join("device.key.tmp").exists());
    assert_eq!(fs::metadata(t.data().join(KEY_FILE)).unwrap().len(), 32);
}

// ---- documents ----

#[test]
fn commit_then_load_round_trips_documents() {
    let t = TempDir::new("docs");
    let mut s = open(&t.data());
    let info = s
        .commit(
            Batch::new()
                .put("profile", "b", json!({"name": "B", "key": "v1:x"}))
                .put("profile", "a", json!({"name": "A"}))
                .put("policy", "main", json!({"private_only": true}))
                .audit(entry("profile.create", "profile/a")),
        )
        .unwrap();
    assert_eq!(
        (info.first_seq, info.last_seq, info.puts, info.deletes),
        (1, 1, 3, 0)
    );
    drop(s);
    let s = open(&t.data());
    let all = s.load_all("profile").unwrap();
    assert_eq!(
        all,
        vec![
            ("a".to_string(), json!({"name": "A"})),
            ("b".to_string(), json!({"name": "B", "key": "v1:x"}))
        ]
    );
    assert_eq!(
        s.get("policy", "main").unwrap(),
        Some(json!({"private_only": true}))
    );
    assert_eq!(s.get("policy", "other").unwrap(), None);
    assert!(s.load_all("session").unwrap().is_empty());
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct P {
        name: String,
    }
    let typed: Vec<(String, P)> = s.load_all_as("profile").unwrap();
    assert_eq!(typed[1].1, P { name: "B".into() });
    let e = s.load_all_as::<u32>("profile").unwrap_err();
    assert!(e.message().contains("profile/a does not decode"), "{e}");
}

#[test]
fn puts_replace_and_deletes_remove_in_batch_order() {
    let t = TempDir::new("delete");
    let mut s = open(&t.data());
    s.commit(
        Batch::new()
            .put("session", "1", json!(1))
            .put("session", "2", json!(2))
            .audit(entry("a", "x")),
    )
    .unwrap();
    let info = s
        .commit(
            Batch::new()
                .put("session", "1", json!("one"))
                .delete("session", "2")
                .delete("session", "absent")
                .put("session", "3", json!(3))
                .delete("session", "3")
                .audit(entry("b", "y")),
        )
        .unwrap();
    assert_eq!((info.puts, info.deletes), (2, 3));
    assert_eq!(
        s.load_all("session").unwrap(),
        vec![("1".to_string(), json!("one"))]
    );
}

#[test]
fn invalid_batches_are_refused_before_writing() {
    let t = TempDir::new("invalid");
    let mut s = open(&t.data());
    let cases = [
        Batch::new().put("session", "1", json!(1)),
        Batch::new()
            .put("Session", "1", json!(1))
            .audit(entry("a", "b")),
        Batch::new().put("", "1", json!(1)).audit(entry("a", "b")),
        Batch::new()
            .put("session", "", json!(1))
            .audit(entry("a", "b")),
        Batch::new()
            .delete("session", &"x".repeat(257))
            .audit(entry("a", "b")),
        Batch::new()
            .put("session", "big", json!("x".repeat(MAX_DOC_BYTES)))
            .audit(entry("a", "b")),
        Batch::new().audit(entry("", "b")),
    ];
    for b in cases {
        let e = s.commit(b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    assert_eq!(count(&s, "documents"), 0);
    assert_eq!(count(&s, "audit"), 0);
    assert_eq!(count(&s, "commits"), 0);
    assert_eq!(
        s.load_all("Bad").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

/// Injects a statement that fails in the middle of the transaction (a trigger on the third
/// document, then on the audit insert) and checks that nothing of the batch is applied.
#[test]
fn failing_statement_mid_batch_applies_nothing() {
    let t = TempDir::new("atomic");
    let mut s = open(&t.data());
    fill(&mut s, 2);
    let before = (
        count(&s, "documents"),
        count(&s, "audit"),
        count(&s, "commits"),
    );
    s.conn
        .execute_batch(
            "CREATE TRIGGER boom_doc BEFORE INSERT ON documents WHEN NEW.id = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
             CREATE TRIGGER boom_audit BEFORE INSERT ON audit WHEN NEW.action = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let doc_fail = Batch::new()
        .put("session", "new1", json!(1))
        .delete("session", "s0")
        .put("session", "boom", json!(3))
        .audit(entry("x", "y"));
    let audit_fail = Batch::new()
        .put("session", "new2", json!(1))
        .delete("session", "s1")
        .audit(entry("ok", "y"))
        .audit(entry("boom", "y"));
    for b in [doc_fail, audit_fail] {
        let e = s.commit(b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.message().contains("nothing was applied"), "{e}");
        assert!(e.message().contains("injected failure"), "{e}");
        let after = (
            count(&s, "documents"),
            count(&s, "audit"),
            count(&s, "commits"),
        );
        assert_eq!(after, before);
        assert!(s.get("session", "s0").unwrap().is_some());
        assert!(s.get("session", "s1").unwrap().is_some());
    }
    let info = s
        .commit(
            Batch::new()
                .put("session", "z", json!(0))
                .audit(entry("a", "z")),
        )
        .unwrap();
    assert_eq!(info.first_seq, 5, "seqs continue without a hole");
    assert!(s.verify_audit().unwrap().is_intact());
}

/// `PRAGMA max_page_count` makes SQLite answer exactly as on a full disk (SQLITE_FULL), which
/// works without root; the real ENOSPC test on a tiny tmpfs is in `crash`.
#[test]
fn full_database_gives_clear_io_error_and_stays_consistent() {
    let t = TempDir::new("full");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    let pages: i64 = s
        .conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    s.conn
        .pragma_update(None, "max_page_count", pages + 4)
        .unwrap();
    let mut acked = 0;
    let err = loop {
        let b = Batch::new()
            .put("blob", &format!("{acked}"), json!("x".repeat(3000)))
            .audit(entry("blob.put", "b"));
        match s.commit(b) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1000, "never filled up");
    };
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("disk full"), "{err}");
    assert!(err.message().contains("nothing was applied"), "{err}");
    assert_eq!(s.load_all("blob").unwrap().len(), acked);
    assert!(s.verify_audit().unwrap().is_intact());
    // Space comes back: the store is usable again, no restart needed.
    s.conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    fill(&mut s, 1);
    drop(s);
    let s = open(&t.data());
    assert_eq!(s.load_all("blob").unwrap().len(), acked);
    assert!(s.verify_audit().unwrap().is_intact());
}

#[test]
fn unusable_paths_give_clear_io_errors() {
    let t = TempDir::new("paths");
    let file = t.0.join("plainfile");
    fs::write(&file, b"x").unwrap();
    let e = Store::open(&file).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("create data directory"), "{e}");

    fs::create_dir_all(t.data().join(DB_FILE)).unwrap();
    let e = Store::open(&t.data()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("cannot open"), "{e}");

    let t2 = TempDir::new("garbage");
    fs::create_dir(t2.data()).unwrap();
    fs::write(t2.data().join(DB_FILE), vec![0x5a; 8192]).unwrap();
    let e = Store::open(&t2.data()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("not an onair database"), "{e}");
}

// ---- schema ----

#[test]
fn empty_dir_v0_opens_at_current_version() {
    let t = TempDir::new("v0");
    let mut s = open(&t.data());
    let tables: Vec<String> = s
        .conn
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["audit", "commits", "documents", "meta"]);
    fill(&mut s, 1);
    assert_eq!(s.audit_page(0, 10).unwrap()[0].commit_id, Some(1));
}

/// Writes a v1 database by hand: V1 SQL, version 1, documents, and a chain of audit rows
/// (v1 had no commit ids and no recorded head).
fn build_v1(dir: &Path, audit_rows: i64) {
    fs::create_dir_all(dir).unwrap();
    let c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    c.execute_batch(V1).unwrap();
    c.execute("INSERT INTO meta VALUES ('schema_version', '1')", [])
        .unwrap();
    c.execute(
        "INSERT INTO documents VALUES ('profile', 'p1', '{\"name\":\"old\"}')",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO documents VALUES ('policy', 'main', 'true')",
        [],
    )
    .unwrap();
    let mut prev = GENESIS_HASH.to_string();
    for seq in 1..=audit_rows {
        let e = entry("v1.action", &format!("t{seq}"));
        let detail = serde_json::to_string(&e.detail).unwrap();
        let hash = chain_hash(seq, &prev, &e, &detail);
        c.execute(
            "INSERT INTO audit VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                seq, e.ts_ms, e.actor, e.role, e.source, e.action, e.target, e.outcome, detail,
                prev, hash
            ],
        )
        .unwrap();
        prev = hash;
    }
}

#[test]
fn v1_database_is_upgraded_with_data_and_chain_intact() {
    let t = TempDir::new("v1");
    build_v1(&t.data(), 5);
    let mut s = open(&t.data());
    let v: String = s
        .conn
        .query_row(
            "SELECT value FROM meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "2");
    assert_eq!(
        s.get("profile", "p1").unwrap(),
        Some(json!({"name": "old"}))
    );
    assert_eq!(s.get("policy", "main").unwrap(), Some(json!(true)));
    let r = s.verify_audit().unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!((r.entries, r.last_seq), (5, 5));
    let page = s.audit_page(0, 100).unwrap();
    assert_eq!(page.len(), 5);
    assert!(page.iter().all(|r| r.commit_id.is_none()));
    assert_eq!(page[2].entry, entry("v1.action", "t3"));
    let info = s
        .commit(
            Batch::new()
                .put("profile", "p2", json!({}))
                .audit(entry("new", "p2")),
        )
        .unwrap();
    assert_eq!((info.first_seq, info.commit_id), (6, 1));
    assert!(s.verify_audit().unwrap().is_intact());
    // The backfilled head makes a deleted tail show even for v1 rows.
    drop_audit_triggers(&s);
    s.conn
        .execute("DELETE FROM audit WHERE seq = 6", [])
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 6,
            problem: Problem::HeadMismatch
        })
    );
}

#[test]
fn failed_upgrade_leaves_the_old_version_untouched() {
    let t = TempDir::new("v1fail");
    build_v1(&t.data(), 2);
    {
        let c = rusqlite::Connection::open(t.data().join(DB_FILE)).unwrap();
        // An object that makes the v2 step fail half-way (after its ALTER TABLE ran).
        c.execute_batch("CREATE INDEX audit_by_commit ON documents(kind)")
            .unwrap();
    }
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("upgrade v1 -> v2"), "{e}");
    let c = rusqlite::Connection::open(t.data().join(DB_FILE)).unwrap();
    let v: String = c
        .query_row(
            "SELECT value FROM meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "1");
    let cols: i64 = c
        .query_row(
            "SELECT count(*) FROM pragma_table_info('audit') WHERE name='commit_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        cols, 0,
        "the ALTER TABLE of the failed step was rolled back"
    );
    let commits: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name='commits'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(commits, 0);
}

#[test]
fn newer_or_foreign_database_is_refused() {
    let t = TempDir::new("newer");
    drop(open(&t.data()));
    {
        let c = rusqlite::Connection::open(t.data().join(DB_FILE)).unwrap();
        c.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    }
    let e = Store::open(&t.data()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("version 99 is newer"), "{e}");

    let t = TempDir::new("foreign");
    fs::create_dir(t.data()).unwrap();
    {
        let c = rusqlite::Connection::open(t.data().join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE other (x)").unwrap();
    }
    let e = Store::open(&t.data()).err().unwrap();
    assert!(e.message().contains("not an onair database"), "{e}");
}

// ---- audit ----

fn drop_audit_triggers(s: &Store) {
    s.conn
        .execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
}

#[test]
fn audit_pages_carry_entries_and_commit_ids() {
    let t = TempDir::new("page");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    let p1 = s.audit_page(0, 4).unwrap();
    assert_eq!(p1.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(p1[0].prev_hash, GENESIS_HASH);
    assert_eq!(p1[1].prev_hash, p1[0].hash);
    assert_eq!(p1[2].commit_id, Some(2));
    assert_eq!(p1[3].entry, entry("session.confirm", "s1"));
    let p2 = s.audit_page(4, 100).unwrap();
    assert_eq!(p2.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
    assert!(s.audit_page(6, 100).unwrap().is_empty());
    assert!(s.audit_page(0, 0).unwrap().is_empty());
    let c2 = s.audit_for_commit(2).unwrap();
    assert_eq!(c2.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    let r = s.verify_audit().unwrap();
    assert_eq!((r.entries, r.last_seq, r.first_broken), (6, 6, None));
    assert_eq!(r.last_hash, p2[1].hash);
}

#[test]
fn audit_page_limit_is_capped() {
    let t = TempDir::new("cap");
    let mut s = open(&t.data());
    let mut b = Batch::new();
    for i in 0..(MAX_PAGE + 5) {
        b = b.audit(entry("bulk", &i.to_string()));
    }
    s.commit(b).unwrap();
    assert_eq!(s.audit_page(0, usize::MAX).unwrap().len(), MAX_PAGE);
}

#[test]
fn audit_rows_cannot_be_updated_or_deleted() {
    let t = TempDir::new("append");
    let mut s = open(&t.data());
    fill(&mut s, 1);
    let e = s
        .conn
        .execute("UPDATE audit SET actor = 'x' WHERE seq = 1", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = s.conn.execute("DELETE FROM audit", []).unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert_eq!(count(&s, "audit"), 2);
}

#[test]
fn verify_reports_an_edited_row() {
    let t = TempDir::new("edit");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    drop_audit_triggers(&s);
    s.conn
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 3,
            problem: Problem::HashMismatch
        })
    );
    assert_eq!(r.entries, 2);
    // Editing detail (a reserialization that means the same JSON) also shows.
    let t = TempDir::new("edit2");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    drop_audit_triggers(&s);
    s.conn
        .execute(
            "UPDATE audit SET detail = json_set(detail, '$.why', 'x') WHERE seq = 5",
            [],
        )
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 5,
            problem: Problem::HashMismatch
        })
    );
}

#[test]
fn verify_reports_a_deleted_row() {
    let t = TempDir::new("del");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    drop_audit_triggers(&s);
    s.conn
        .execute("DELETE FROM audit WHERE seq = 4", [])
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 4,
            problem: Problem::Missing
        })
    );
    // The first row too.
    s.conn
        .execute("DELETE FROM audit WHERE seq = 1", [])
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 1,
            problem: Problem::Missing
        })
    );
}

#[test]
fn verify_reports_a_deleted_tail() {
    let t = TempDir::new("tail");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    drop_audit_triggers(&s);
    s.conn
        .execute("DELETE FROM audit WHERE seq >= 5", [])
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 5,
            problem: Problem::HeadMismatch
        })
    );
}

#[test]
fn verify_reports_reordered_rows() {
    let t = TempDir::new("reorder");
    let mut s = open(&t.data());
    fill(&mut s, 3);
    drop_audit_triggers(&s);
    // Swap the positions of rows 2 and 3.
    s.conn
        .execute_batch(
            "UPDATE audit SET seq = 100 WHERE seq = 2;
             UPDATE audit SET seq = 2 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = 100;",
        )
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 2,
            problem: Problem::PrevHashMismatch
        })
    );
    // An edited row whose own hash was recomputed: the break shows at the next row.
    let t = TempDir::new("forge");
    let mut s = open(&t.data());
    fill(&mut s, 2);
    drop_audit_triggers(&s);
    let mut e = entry("session.create", "s0");
    e.actor = "mallory".into();
    let detail = serde_json::to_string(&e.detail).unwrap();
    let forged = chain_hash(1, GENESIS_HASH, &e, &detail);
    s.conn
        .execute(
            "UPDATE audit SET actor = 'mallory', hash = ?1 WHERE seq = 1",
            [forged],
        )
        .unwrap();
    let r = s.verify_audit().unwrap();
    assert_eq!(
        r.first_broken,
        Some(Broken {
            seq: 2,
            problem: Problem::PrevHashMismatch
        })
    );
}

// ---- secrets and tokens ----

#[test]
fn seal_open_round_trip() {
    let t = TempDir::new("seal");
    let s = open(&t.data());
    for p in ["", "live_abc123", "ключ 🔑", &"k".repeat(5000)] {
        let sealed = s.seal(p).unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains(p) || p.is_empty());
        assert_eq!(s.open_secret(&sealed).unwrap().expose(), p);
    }
    assert_eq!(
        format!("{:?}", s.open_secret(&s.seal("x").unwrap()).unwrap()),
        "***"
    );
}

#[test]
fn sealed_secret_fails_under_another_key() {
    let (t1, t2) = (TempDir::new("k1"), TempDir::new("k2"));
    let (a, b) = (open(&t1.data()), open(&t2.data()));
    let sealed = a.seal("live_abc").unwrap();
    let e = b.open_secret(&sealed).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("wrong device key or corrupted"), "{e}");
}

#[test]
fn tampered_sealed_secret_is_rejected() {
    let t = TempDir::new("tamper");
    let s = open(&t.data());
    let sealed = s.seal("live_abc123").unwrap();
    let raw = base64_decode(&sealed[3..]).unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let e = s
            .open_secret(&format!("v1:{}", base64_encode(&bad)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "byte {i}");
    }
    let truncated = format!("v1:{}", base64_encode(&raw[..raw.len() - 1]));
    assert!(s.open_secret(&truncated).is_err());
    for bad in [
        "",
        "live_abc",
        "v2:AAAA",
        "v1:",
        "v1:@@@@",
        "v1:AAA",
        "v1:AAAAAAAA",
    ] {
        let e = s.open_secret(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}: {e}");
    }
}

#[test]
fn nonces_are_unique_over_1000_seals() {
    let t = TempDir::new("nonce");
    let s = open(&t.data());
    let mut nonces = HashSet::new();
    let mut sealed_all = HashSet::new();
    for _ in 0..1000 {
        let sealed = s.seal("same plaintext").unwrap();
        let raw = base64_decode(&sealed[3..]).unwrap();
        assert!(nonces.insert(raw[..12].to_vec()), "nonce repeated");
        assert!(sealed_all.insert(sealed));
    }
}

#[test]
fn base64_round_trips_and_is_strict() {
    let data: Vec<u8> = (0..=255u8).collect();
    for n in 0..70 {
        let enc = base64_encode(&data[..n]);
        assert_eq!(enc.len(), n.div_ceil(3) * 4);
        assert_eq!(base64_decode(&enc).unwrap(), &data[..n]);
    }
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    for bad in ["Zm9", "Zm9=Zm9v", "Zm===", "Zm9vY", "Zm9 ", "Zm9=", "Zn=="] {
        assert!(base64_decode(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn tokens_are_random_prefixed_and_hash_to_sha256_hex() {
    let a = new_token().unwrap();
    let b = new_token().unwrap();
    assert_ne!(a, b);
    let hexpart = a.expose().strip_prefix(TOKEN_PREFIX).unwrap();
    assert_eq!(hexpart.len(), 64);
    assert!(
        hexpart
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(format!("{a}"), "***");
    assert_eq!(
        hash_token("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_ne!(hash_token(a.expose()), hash_token(b.expose()));
}
