//! Tests with a child process: the test binary runs itself with `ONAIR_STORE_CHILD=mode:dir`
//! and the filter [`CHILD_TEST`], and [`child_entry`] then plays the child's part.
//!
//! - kill -9 at random points while committing: every acknowledged commit survives.
//! - a real full disk (ENOSPC) on a 1 MiB tmpfs, and a read-only remount of it: both in a
//!   private mount namespace (`unshare --mount`, needs root; skipped with a message otherwise),
//!   so nothing outside the test sees the mount and it disappears with the child.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{TempDir, entry};
use crate::error::ErrorKind;
use crate::store::{Batch, Store};

const CHILD_ENV: &str = "ONAIR_STORE_CHILD";
const CHILD_TEST: &str = "store::tests::crash::child_entry";

/// Does nothing in a normal run; in a child, runs the mode named by `ONAIR_STORE_CHILD`.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, dir) = spec.split_once(':').unwrap();
    let dir = Path::new(dir);
    match mode {
        "loop" => child_loop(dir),
        "fill" => child_fill(dir),
        "prepare" => child_prepare(dir),
        "readonly" => child_readonly(dir),
        other => panic!("unknown child mode {other}"),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// One commit: item `i`, counter = `i`, one audit entry. Items are 1, 2, 3, … with no hole.
fn commit_item(s: &mut Store, i: i64, pad: usize) -> crate::error::Result<()> {
    let id = format!("{i:09}");
    s.commit(
        Batch::new()
            .put("item", &id, json!({"i": i, "pad": "x".repeat(pad)}))
            .put("counter", "main", json!(i))
            .audit(entry("item.put", &id)),
    )
    .map(drop)
}

fn counter(s: &Store) -> i64 {
    s.get("counter", "main")
        .unwrap()
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

/// Commits forever, printing `ACK i` after each commit returned.
fn child_loop(dir: &Path) {
    let mut s = Store::open(dir).unwrap();
    let mut i = counter(&s);
    loop {
        i += 1;
        commit_item(&mut s, i, 200).unwrap();
        say(&format!("ACK {i}"));
    }
}

/// Checks the invariants after a crash: items are exactly 1..=counter, each acked item is
/// there, and the audit chain verifies with one entry and one commit per item.
fn check_after_crash(dir: &Path, acks: &[i64]) -> i64 {
    let s = Store::open(dir).unwrap();
    let n = counter(&s);
    let items = s.load_all("item").unwrap();
    assert_eq!(items.len() as i64, n, "items are exactly 1..=counter");
    for (k, (id, v)) in items.iter().enumerate() {
        assert_eq!(v["i"], json!(k as i64 + 1), "item {id}");
    }
    if let Some(&max) = acks.iter().max() {
        assert!(n >= max, "acknowledged commit {max} lost (counter {n})");
    }
    let report = s.verify_audit().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.last_seq, n);
    let commits: i64 = s
        .conn
        .query_row("SELECT count(*) FROM commits", [], |r| r.get(0))
        .unwrap();
    assert_eq!(commits, n);
    n
}

fn child_command(mode: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", dir.display()));
    cmd
}

#[test]
fn kill9_at_random_points_never_loses_acknowledged_commits() {
    const ITERATIONS: usize = 50;
    let t = TempDir::new("kill9");
    let dir = t.data();
    let mut rng = seed();
    eprintln!("kill9 seed {rng}");
    let started = Instant::now();
    let (mut total_acks, mut kills_after_acks) = (0usize, 0usize);
    for _ in 0..ITERATIONS {
        let mut child = child_command("loop", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2 + next(&mut rng) % 120));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let acks: Vec<i64> = out
            .lines()
            .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
            .collect();
        total_acks += acks.len();
        kills_after_acks += usize::from(!acks.is_empty());
        check_after_crash(&dir, &acks);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "kill9: {ITERATIONS} kills ({kills_after_acks} mid-loop), {total_acks} acknowledged \
         commits all present, {elapsed:?}"
    );
    assert!(
        kills_after_acks >= ITERATIONS / 2,
        "most kills must land while committing"
    );
}

/// Runs `script` (sh, with `$1` = a fresh mount point, `$2` = this test binary) in a private
/// mount namespace. `None` when the namespace or mount is not available here.
fn in_private_tmpfs(name: &str, script: &str) -> Option<String> {
    let t = TempDir::new(name);
    let mnt = t.data();
    std::fs::create_dir(&mnt).unwrap();
    let full = format!(
        "mount -t tmpfs -o size=1024k,mode=700 onair-test \"$1\" || {{ echo MOUNT_FAILED; exit 0; }}\n\
         echo NS_READY\n{script}"
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &full, "sh"])
        .arg(&mnt)
        .arg(std::env::current_exe().unwrap())
        .env("CHILD", CHILD_TEST)
        .stderr(Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            eprintln!("SKIPPED {name}: cannot run unshare: {e}");
            return None;
        }
    };
    if !out.contains("NS_READY") {
        eprintln!("SKIPPED {name}: no private mount namespace/tmpfs here (needs root): {out}");
        return None;
    }
    Some(out)
}

const RUN_CHILD: &str =
    "ONAIR_STORE_CHILD=\"$MODE:$1\" \"$2\" \"$CHILD\" --exact --nocapture --test-threads=1";

#[test]
fn real_full_disk_gives_clear_error_and_keeps_acknowledged_commits() {
    let script = format!("MODE=fill {RUN_CHILD}");
    let Some(out) = in_private_tmpfs("enospc", &script) else {
        return;
    };
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("FILL_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.contains("FILL_OK"), "child failed:\n{out}");
}

/// Fills the tmpfs until a commit fails, then checks the error and the data.
fn child_fill(dir: &Path) {
    let mut s = Store::open(dir).unwrap();
    let mut acked = 0;
    let err = loop {
        match commit_item(&mut s, acked + 1, 8000) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "a 1 MiB file system never filled up");
    };
    say(&format!("FILL_ERR after {acked} commits: {err}"));
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("disk full"), "{err}");
    assert_eq!(counter(&s), acked);
    assert!(s.verify_audit().unwrap().is_intact());
    drop(s);
    // Reopening on the still-full disk works and shows exactly the acknowledged commits.
    assert_eq!(check_after_crash(dir, &[acked]), acked);
    say(&format!("FILL_OK acked={acked}"));
}

#[test]
fn read_only_file_system_gives_clear_error() {
    let script = format!(
        "MODE=prepare {RUN_CHILD} || exit 1\n\
         mount -o remount,ro \"$1\" || {{ echo REMOUNT_FAILED; exit 1; }}\n\
         MODE=readonly {RUN_CHILD}"
    );
    let Some(out) = in_private_tmpfs("rofs", &script) else {
        return;
    };
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("RO_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.contains("PREPARED"), "prepare failed:\n{out}");
    assert!(out.contains("RO_OK"), "child failed:\n{out}");
}

fn child_prepare(dir: &Path) {
    let mut s = Store::open(dir).unwrap();
    commit_item(&mut s, 1, 10).unwrap();
    say("PREPARED");
}

/// On a read-only file system either open or the first commit must fail with a clear `Io`.
fn child_readonly(dir: &Path) {
    let err = match Store::open(dir) {
        Err(e) => e,
        Ok(mut s) => {
            assert_eq!(counter(&s), 1);
            commit_item(&mut s, 2, 10).unwrap_err()
        }
    };
    say(&format!("RO_ERR {err}"));
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("read-only"), "{err}");
    say("RO_OK");
}

/// Measures commit latency (one put + one audit entry, synchronous=FULL) on this disk.
#[test]
fn commit_latency_with_synchronous_full() {
    const N: usize = 200;
    let t = TempDir::new("latency");
    let mut s = Store::open(&t.data()).unwrap();
    let mut us = Vec::with_capacity(N);
    for i in 1..=N as i64 {
        let start = Instant::now();
        commit_item(&mut s, i, 200).unwrap();
        us.push(start.elapsed().as_micros());
    }
    us.sort_unstable();
    let mean = us.iter().sum::<u128>() / N as u128;
    eprintln!(
        "commit latency over {N}: mean {mean} us, p50 {} us, p99 {} us, max {} us",
        us[N / 2],
        us[N * 99 / 100],
        us[N - 1]
    );
    drop(s);
    assert_eq!(check_after_crash(&t.data(), &[N as i64]), N as i64);
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) | 1
}

/// xorshift64.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
