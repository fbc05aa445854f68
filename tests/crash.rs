//! Crash consistency (issue 6, item 3) with the real `onair run` process:
//!
//! * `kill_9_under_writes_loses_nothing`: writers issue a mixed stream of admin API writes;
//!   the service is killed with SIGKILL at a random (seeded) instant, restarted, and checked:
//!   every acknowledged write is there, the audit chain verifies and is gapless, ordered and
//!   covers the acknowledged writes, no session is starting/live, the store opens cleanly.
//!   Bounded: `ONAIR_CRASH_SECS` (default 60) or `ONAIR_CRASH_ITERS` (default 200), whichever
//!   comes first; `ONAIR_CRASH_SEED` picks the seed. Prints one `crash-result:` line.
//! * `full_data_disk_answers_an_error_and_writes_nothing_half`: the data dir on a small tmpfs
//!   filled up: a write is refused with 503 and the error shape, the service stays up, and after
//!   space is freed and a restart the failed write is absent and everything acknowledged is there.

mod procsvc;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procsvc::*;
use serde_json::{Value, json};

const INGEST_URL: &str = "rtmps://localhost:19350/live";

/// A running `onair run` with its config.
struct Svc {
    proc: Child9,
    addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Svc {
    async fn start(config: &Path, log: &Path, addr: SocketAddr) -> Svc {
        let proc = Child9::spawn(&["run", "--config", &config.to_string_lossy()], log);
        let mut s = Svc {
            proc,
            addr,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = call(self.addr, "GET", "/healthz", None, None).await
                && r.status == 200
            {
                return;
            }
            if let Some(st) = self.proc.exited() {
                panic!(
                    "onair run exited ({st}) instead of serving; log:\n{}",
                    tail(&self.log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "onair run not ready; log:\n{}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn restart(&mut self) {
        self.proc.kill9();
        let config = self.config.to_string_lossy().into_owned();
        self.proc = Child9::spawn(&["run", "--config", &config], &self.log);
        self.wait_ready().await;
    }
}

fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn ok(addr: SocketAddr, method: &str, path: &str, tok: &str, body: Option<Value>) -> Value {
    let r = call(addr, method, path, Some(tok), body.as_ref())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        r.ok(),
        "{method} {path} → {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Entitlement on, custom destinations to localhost allowed, a long indicator ack timeout (a
/// confirmed session stays `starting`), one subscriber with a token. Returns its token.
async fn provision(addr: SocketAddr, admin: &str) -> (String, String) {
    ok(
        addr,
        "PUT",
        "/v1/entitlement",
        admin,
        Some(json!({"enabled": true, "recording_allowed": false})),
    )
    .await;
    ok(addr, "PUT", "/v1/policy", admin, Some(policy(5000))).await;
    let sub = ok(
        addr,
        "POST",
        "/v1/subscribers",
        admin,
        Some(json!({"name": "crash team"})),
    )
    .await;
    let sub_id = sub["id"].as_str().expect("id").to_owned();
    let tok = ok(
        addr,
        "POST",
        "/v1/tokens",
        admin,
        Some(json!({"role": "subscriber", "subscriber_id": sub_id, "label": "crash"})),
    )
    .await;
    (tok["token"].as_str().expect("token").to_owned(), sub_id)
}

fn policy(grace_ms: u64) -> Value {
    json!({"allowed_services": ["custom"], "allowed_hosts": ["localhost"],
           "indicator_grace_ms": grace_ms, "indicator_ack_timeout_ms": 3_600_000})
}

/// One acknowledged write: what the audit log must show for it.
#[derive(Clone, Debug)]
struct Acked {
    writer: usize,
    action: &'static str,
    target: String,
}

/// What the writers know to be durable (acknowledged) and what may or may not have landed.
#[derive(Default)]
struct Model {
    subscribers: BTreeMap<String, Presence>,
    profiles: BTreeMap<String, Presence>,
    /// Acked sessions → must no longer await a confirm (acked confirm, stop or cancel).
    sessions: BTreeMap<String, bool>,
    /// The last acknowledged policy grace value and those issued after it (unknown outcome).
    grace_acked: u64,
    grace_maybe: Vec<u64>,
    acked: Vec<Acked>,
    acked_total: u64,
    sent: u64,
    unknown: u64,
    denied: u64,
}

type Sent = Result<Resp, bool>;

/// Whether a document must exist after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    Yes,
    No,
    /// A delete was sent but not answered: it may or may not have landed.
    Maybe,
}

struct Writer {
    id: usize,
    addr: SocketAddr,
    admin: String,
    sub: String,
    model: Arc<Mutex<Model>>,
    rng: Rng,
    n: u64,
    /// A write went unanswered: the service is down, stop writing.
    dead: bool,
}

impl Writer {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&mut self, which: fn(&Model) -> Vec<String>) -> Option<String> {
        let v = which(&self.model());
        (!v.is_empty()).then(|| v[self.rng.below(v.len() as u64) as usize].clone())
    }

    /// Sends one write: `Ok(response)` when acknowledged (2xx), `Err(true)` when its outcome
    /// is unknown (no answer: the kill), `Err(false)` when refused.
    async fn send(&mut self, method: &str, path: &str, tok: bool, body: Value) -> Sent {
        self.model().sent += 1;
        let t = if tok { &self.sub } else { &self.admin };
        let b = (!body.is_null()).then_some(&body);
        match call(self.addr, method, path, Some(t), b).await {
            Ok(r) if r.ok() => Ok(r),
            Ok(_) => {
                self.model().denied += 1;
                Err(false)
            }
            Err(_) => {
                self.model().unknown += 1;
                self.dead = true;
                Err(true)
            }
        }
    }

    fn ack(&mut self, action: &'static str, target: &str) {
        let id = self.id;
        let mut m = self.model();
        m.acked.push(Acked {
            writer: id,
            action,
            target: target.to_owned(),
        });
        m.acked_total += 1;
    }

    /// Deletes `{collection}/{id}`, keeping `which` of the model right: until it is answered,
    /// the delete may or may not land (the writer can be cancelled at the kill before it sees
    /// the answer).
    async fn delete(
        &mut self,
        which: fn(&mut Model) -> &mut BTreeMap<String, Presence>,
        collection: &str,
        id: String,
        tok: bool,
        action: &'static str,
    ) {
        which(&mut self.model()).insert(id.clone(), Presence::Maybe);
        match self
            .send("DELETE", &format!("{collection}/{id}"), tok, Value::Null)
            .await
        {
            Ok(_) => {
                which(&mut self.model()).insert(id.clone(), Presence::No);
                self.ack(action, &id);
            }
            Err(true) => {}
            Err(false) => {
                which(&mut self.model()).insert(id, Presence::Yes);
            }
        }
    }

    async fn step(&mut self) {
        self.n += 1;
        let tag = format!("w{}-{}-{}", self.id, self.n, self.rng.next() % 100_000);
        match self.rng.below(10) {
            0 => {
                let b = json!({"name": format!("sub {tag}")});
                if let Ok(r) = self.send("POST", "/v1/subscribers", false, b).await {
                    let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                    self.model().subscribers.insert(id.clone(), Presence::Yes);
                    self.ack("subscriber.create", &id);
                }
            }
            1 => {
                let Some(id) = self.pick(|m| live_keys(&m.subscribers)) else {
                    return;
                };
                self.delete(
                    |m| &mut m.subscribers,
                    "/v1/subscribers",
                    id,
                    false,
                    "subscriber.delete",
                )
                .await;
            }
            2 | 3 => {
                let b = json!({"name": format!("p {tag}"), "service": "custom",
                    "url": INGEST_URL, "stream_key": format!("key-{tag}")});
                if let Ok(r) = self.send("POST", "/v1/profiles", true, b).await {
                    let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                    self.model().profiles.insert(id.clone(), Presence::Yes);
                    self.ack("profile.create", &id);
                }
            }
            4 => {
                let Some(id) = self.pick(|m| live_keys(&m.profiles)) else {
                    return;
                };
                self.delete(
                    |m| &mut m.profiles,
                    "/v1/profiles",
                    id,
                    true,
                    "profile.delete",
                )
                .await;
            }
            5..=7 => self.session(&tag).await,
            // Policy writes from one writer only: then the last acknowledged value, or one sent
            // after it without an answer, is what the store must hold.
            _ if self.id != 0 => self.session(&tag).await,
            _ => {
                let grace = 1000 + (self.rng.next() % 1_000_000);
                self.model().grace_maybe.push(grace);
                if self
                    .send("PUT", "/v1/policy", false, policy(grace))
                    .await
                    .is_ok()
                {
                    let mut m = self.model();
                    m.grace_acked = grace;
                    m.grace_maybe.clear();
                    drop(m);
                    self.ack("policy.set", "");
                }
            }
        }
    }

    /// Creates a session on a profile, then confirms, cancels or leaves it.
    async fn session(&mut self, tag: &str) {
        let Some(profile) = self.pick(|m| live_keys(&m.profiles)) else {
            return;
        };
        let port = 20_000 + self.rng.below(20_000);
        let b = json!({"profile_id": profile, "meeting_id": format!("m {tag}"),
            "source": format!("udp://127.0.0.1:{port}")});
        let Ok(r) = self.send("POST", "/v1/sessions", true, b).await else {
            return;
        };
        let v = r.json();
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        self.model().sessions.insert(id.clone(), false);
        self.ack("session.create", &id);
        let confirm = v["confirm_id"].as_str().unwrap_or_default().to_owned();
        match self.rng.below(4) {
            0 | 1 => {
                let path = format!("/v1/sessions/{id}/confirm");
                let b = json!({ "confirm_id": confirm });
                if self.send("POST", &path, true, b).await.is_ok() {
                    self.model().sessions.insert(id.clone(), true);
                    self.ack("session.confirm", &id);
                    if self.rng.chance(30) {
                        let path = format!("/v1/sessions/{id}/stop");
                        if self.send("POST", &path, true, Value::Null).await.is_ok() {
                            self.ack("session.stop", &id);
                        }
                    }
                }
            }
            2 => {
                let path = format!("/v1/sessions/{id}/cancel");
                if self.send("POST", &path, true, Value::Null).await.is_ok() {
                    self.model().sessions.insert(id.clone(), true);
                    self.ack("session.cancel", &id);
                }
            }
            _ => {}
        }
    }
}

fn live_keys(m: &BTreeMap<String, Presence>) -> Vec<String> {
    m.iter()
        .filter(|(_, v)| **v == Presence::Yes)
        .map(|(k, _)| k.clone())
        .collect()
}

/// Checks acknowledged presence; resolves `Maybe` to what the store shows.
fn check_presence(
    ctx: &str,
    what: &str,
    model: &mut BTreeMap<String, Presence>,
    found: &HashMap<String, Value>,
) {
    for (id, p) in model.iter_mut() {
        let here = found.contains_key(id);
        match p {
            Presence::Yes => assert!(here, "{ctx}: acknowledged {what} {id} lost"),
            Presence::No => assert!(!here, "{ctx}: acknowledged delete of {what} {id} undone"),
            Presence::Maybe => {
                *p = if here { Presence::Yes } else { Presence::No };
            }
        }
    }
}

/// Audit entries seen so far (the chain must only grow).
#[derive(Default)]
struct AuditSeen {
    last_seq: i64,
    last_hash: String,
    entries: u64,
}

/// Reads the audit entries after `seen.last_seq`: gapless, chained to what was seen before.
async fn read_new_audit(addr: SocketAddr, admin: &str, seen: &mut AuditSeen) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let path = format!("/v1/audit?after={}&limit=1000", seen.last_seq);
        let page = ok(addr, "GET", &path, admin, None).await;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            return out;
        }
        for e in entries {
            let seq = e["seq"].as_i64().expect("seq");
            assert_eq!(seq, seen.last_seq + 1, "audit seq gap or disorder: {e}");
            if seen.last_seq > 0 {
                assert_eq!(
                    e["prev_hash"].as_str(),
                    Some(seen.last_hash.as_str()),
                    "audit entry {seq} does not chain to the one seen before: {e}"
                );
            }
            seen.last_seq = seq;
            seen.last_hash = e["hash"].as_str().unwrap_or_default().to_owned();
            seen.entries += 1;
            out.push(e);
        }
    }
}

fn ids(v: &Value) -> HashMap<String, Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| (x["id"].as_str().unwrap_or_default().to_owned(), x.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the restarted service must show; returns the number of acked writes checked.
async fn check_after_restart(
    addr: SocketAddr,
    admin: &str,
    model: &mut Model,
    seen: &mut AuditSeen,
    iteration: u64,
) -> usize {
    let ctx = format!("iteration {iteration}");
    let verify = ok(addr, "GET", "/v1/audit/verify", admin, None).await;
    assert_eq!(
        verify["intact"], true,
        "{ctx}: audit chain broken: {verify}"
    );
    let subs = ids(&ok(addr, "GET", "/v1/subscribers", admin, None).await);
    let profiles = ids(&ok(addr, "GET", "/v1/profiles", admin, None).await);
    let sessions = ids(&ok(addr, "GET", "/v1/sessions", admin, None).await);
    check_presence(&ctx, "subscriber", &mut model.subscribers, &subs);
    check_presence(&ctx, "profile", &mut model.profiles, &profiles);
    for (id, s) in &sessions {
        let st = s["state"].as_str().unwrap_or_default();
        assert!(
            !matches!(st, "starting" | "live" | "stopping"),
            "{ctx}: session {id} is {st} after a restart: {s}"
        );
    }
    for (id, decided) in &model.sessions {
        let s = sessions
            .get(id)
            .unwrap_or_else(|| panic!("{ctx}: acknowledged session {id} lost"));
        let st = s["state"].as_str().unwrap_or_default();
        if *decided {
            assert!(
                !matches!(st, "scheduled" | "awaiting_confirmation"),
                "{ctx}: session {id} was confirmed/cancelled (acknowledged) but is {st}"
            );
        }
    }
    let pol = ok(addr, "GET", "/v1/policy", admin, None).await;
    let grace = pol["indicator_grace_ms"].as_u64().unwrap_or_default();
    assert!(
        grace == model.grace_acked || model.grace_maybe.contains(&grace),
        "{ctx}: policy grace {grace}, last acknowledged {}",
        model.grace_acked
    );
    if grace != model.grace_acked {
        model.grace_acked = grace;
    }
    model.grace_maybe.clear();
    // The audit log covers every acknowledged write, each writer's in the order it was acked.
    let new = read_new_audit(addr, admin, seen).await;
    let mut used = vec![false; new.len()];
    let mut last_seq_of: HashMap<usize, i64> = HashMap::new();
    let acked = std::mem::take(&mut model.acked);
    for a in &acked {
        let hit = new.iter().enumerate().position(|(i, e)| {
            !used[i]
                && e["entry"]["action"] == a.action
                && e["entry"]["target"] == a.target.as_str()
                && e["entry"]["outcome"] == "ok"
                && e["seq"].as_i64() > last_seq_of.get(&a.writer).copied()
        });
        let i = hit.unwrap_or_else(|| {
            panic!(
                "{ctx}: acknowledged {} {} has no audit entry after seq {:?}",
                a.action,
                a.target,
                last_seq_of.get(&a.writer)
            )
        });
        used[i] = true;
        last_seq_of.insert(a.writer, new[i]["seq"].as_i64().unwrap_or_default());
    }
    acked.len()
}

fn temp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Opens the database file directly (the service is down) and runs SQLite's integrity check.
fn integrity_check(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(r, "ok", "integrity_check: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_writes_loses_nothing() {
    let secs = env_num("ONAIR_CRASH_SECS", 60);
    let max_iters = env_num("ONAIR_CRASH_ITERS", 200);
    let seed = env_num("ONAIR_CRASH_SEED", 0x0a1e_c4a5);
    let dir = temp("crash_kill9");
    let data = dir.join("data");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = write_run_config(&dir, &data, port, false);
    let mut svc = Svc::start(&config, &dir.join("onair.log"), addr).await;
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let (sub, _) = provision(addr, &admin).await;
    let model = Arc::new(Mutex::new(Model {
        grace_acked: 5000,
        ..Model::default()
    }));
    let mut seen = AuditSeen::default();
    read_new_audit(addr, &admin, &mut seen).await;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut iters, mut checked, mut kills_in_startup) = (0u64, 0usize, 0u64);
    while iters < max_iters && started.elapsed() < Duration::from_secs(secs) {
        iters += 1;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let mut wr = Writer {
                    id: w,
                    addr,
                    admin: admin.clone(),
                    sub: sub.clone(),
                    model: model.clone(),
                    rng: Rng::new(rng.next()),
                    n: 0,
                    dead: false,
                };
                tokio::spawn(async move {
                    while !wr.dead {
                        wr.step().await;
                    }
                })
            })
            .collect();
        // Kill at a random instant, now and then while the service is still starting.
        let delay = Duration::from_millis(rng.below(400));
        tokio::time::sleep(delay).await;
        svc.proc.kill9();
        for w in writers {
            w.abort();
            let _ = w.await;
        }
        if iters % 8 == 0 {
            integrity_check(&data.join("onair.db"));
        }
        if rng.chance(10) {
            // A crash during start-up (store open, boot commit, first requests).
            let config_s = config.to_string_lossy().into_owned();
            svc.proc = Child9::spawn(&["run", "--config", &config_s], &svc.log);
            tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
            kills_in_startup += 1;
        }
        svc.restart().await;
        let mut m = std::mem::take(&mut *model.lock().unwrap_or_else(|e| e.into_inner()));
        checked += check_after_restart(addr, &admin, &mut m, &mut seen, iters).await;
        *model.lock().unwrap_or_else(|e| e.into_inner()) = m;
    }
    svc.proc.kill9();
    integrity_check(&data.join("onair.db"));
    let m = model.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "crash-result: iterations={iters} acked_writes={} lost=0 checked={checked} sent={} \
         unanswered={} refused={} kills_in_startup={kills_in_startup} audit_entries={} \
         seed={seed:#x} secs={:.1}",
        m.acked_total,
        m.sent,
        m.unknown,
        m.denied,
        seen.entries,
        started.elapsed().as_secs_f64()
    );
    assert!(iters >= 10, "too few iterations ({iters}) to mean anything");
    let log = std::fs::read_to_string(&svc.log).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "onair run panicked: see {}",
        svc.log.display()
    );
    assert!(m.acked_total > 0);
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        st.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` with a file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0xa5u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

const LIVE_KEY: &str = "sk-diskfull-live";

/// A session streaming for real: `onair receive` (in this process, plain RTMP) as the ingest,
/// fabric-sim playing the bundled clip, and the fabric's indicator client acknowledging.
struct Live {
    rx: onair::receive::ReceiverHandle,
    media_stop: Arc<std::sync::atomic::AtomicBool>,
    media: Option<std::thread::JoinHandle<()>>,
    indicator_stop: tokio::sync::watch::Sender<bool>,
    session: String,
}

impl Live {
    async fn start(dir: &Path, addr: SocketAddr, admin: &str, sub: &str) -> Live {
        use onair::receive::config::{ReceiverConfig, StreamConfig};
        let mut c = ReceiverConfig::new(
            dir.join("rec"),
            vec![StreamConfig::new(
                "meeting",
                "live",
                onair::secret::Secret::new(LIVE_KEY),
            )],
        );
        c.listen = ([127, 0, 0, 1], 0).into();
        let rx = onair::receive::start(c).await.expect("receiver");
        let rx_port = rx.local_addr().port();
        let mut pol = policy(5000);
        pol["allow_plain_rtmp"] = json!(true);
        pol["indicator_ack_timeout_ms"] = json!(10_000);
        ok(addr, "PUT", "/v1/policy", admin, Some(pol)).await;
        let fabric = ok(
            addr,
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "fabric", "label": "mcu"})),
        )
        .await["token"]
            .as_str()
            .expect("token")
            .to_owned();
        let profile = ok(
            addr,
            "POST",
            "/v1/profiles",
            sub,
            Some(json!({"name": "live",
            "service": "custom", "url": format!("rtmp://localhost:{rx_port}/live"),
            "stream_key": LIVE_KEY})),
        )
        .await["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port();
        let s = ok(
            addr,
            "POST",
            "/v1/sessions",
            sub,
            Some(json!({"profile_id": profile,
            "meeting_id": "all-hands", "source": format!("udp://127.0.0.1:{udp}")})),
        )
        .await;
        let session = s["id"].as_str().expect("id").to_owned();
        let media_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opts = onair::fabric_sim::SimOptions {
            file: Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.ts"),
            to: ([127, 0, 0, 1], udp).into(),
            packets_per_datagram: 7,
            loops: None,
            rtp: false,
            stop: Some(media_stop.clone()),
        };
        let media = std::thread::spawn(move || {
            let _ = onair::fabric_sim::run(&opts);
        });
        let (indicator_stop, stop_rx) = tokio::sync::watch::channel(false);
        let cfg = onair::fabric_sim::indicator::IndicatorConfig {
            target: onair::ctl::Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: addr.port(),
            },
            trust: onair::ctl::Trust::InsecureLoopback,
            token: onair::secret::Secret::new(&fabric),
            heartbeat: Duration::from_millis(500),
        };
        tokio::spawn(onair::fabric_sim::indicator::run(
            cfg,
            onair::fabric_sim::indicator::Shown::default(),
            stop_rx,
        ));
        let path = format!("/v1/sessions/{session}/confirm");
        let b = json!({ "confirm_id": s["confirm_id"] });
        ok(addr, "POST", &path, sub, Some(b)).await;
        let live = Live {
            rx,
            media_stop,
            media: Some(media),
            indicator_stop,
            session,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while live.rx.stats().publishes_accepted < 1 {
            assert!(
                Instant::now() < deadline,
                "never went live: {:?}",
                live.rx.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        live
    }

    /// Whether the ingest still receives (the publish has not ended).
    fn streaming(&self) -> bool {
        self.rx.stats().files_completed.is_empty()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.media_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.indicator_stop.send(true);
        if let Some(m) = self.media.take() {
            let _ = m.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_data_disk_answers_an_error_and_writes_nothing_half() {
    // A mount left by an interrupted earlier run would be stacked on: drop it first.
    let stale = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crash_diskfull/mnt");
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&stale)
        .stderr(std::process::Stdio::null())
        .status();
    let dir = temp("crash_diskfull");
    let Some(mnt) = Tmpfs::mount(&dir.join("mnt"), "6m") else {
        // Without mount rights there is no honest full disk here: say so loudly.
        println!("crash-result: scenario=disk_full skipped=not_permitted_to_mount_tmpfs");
        return;
    };
    let data = mnt.0.join("data");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = write_run_config(&dir, &data, port, false);
    let mut svc = Svc::start(&config, &dir.join("onair.log"), addr).await;
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let (sub, _) = provision(addr, &admin).await;
    let mut before = Vec::new();
    for i in 0..5 {
        let b = json!({"name": format!("before {i}"), "service": "custom",
            "url": INGEST_URL, "stream_key": format!("key-{i}")});
        before.push(ok(addr, "POST", "/v1/profiles", &sub, Some(b)).await["id"].clone());
    }
    let live = Live::start(&dir, addr, &admin, &sub).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(live.streaming());
    let filler = fill(&mnt.0);
    // Writes until the store refuses one (WAL pages already allocated can absorb a few).
    let (mut acked_while_full, mut failed) = (Vec::new(), None);
    let t0 = Instant::now();
    for i in 0..5000 {
        let name = format!("while full {i}");
        let b = json!({ "name": name });
        let r = call(addr, "POST", "/v1/subscribers", Some(&admin), Some(&b))
            .await
            .expect("the API answers while the disk is full");
        if r.ok() {
            acked_while_full.push(r.json()["id"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        assert!(
            matches!(r.status, 503 | 507),
            "a full disk → {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.is_error_shape(),
            "error shape: {}",
            String::from_utf8_lossy(&r.body)
        );
        failed = Some((name, r));
        break;
    }
    let (failed_name, failed_resp) = failed.expect("the store never reported the full disk");
    let full_ms = t0.elapsed().as_millis();
    // Fail safe: consent can no longer be recorded, so the live session stops streaming.
    let t_refused = Instant::now();
    while live.streaming() {
        assert!(
            t_refused.elapsed() < Duration::from_secs(5),
            "still streaming 5 s after the store refused a write: {:?}",
            live.rx.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let egress_stopped_ms = t_refused.elapsed().as_millis();
    // Still up: reads answer, more writes get the same clear error, no crash.
    assert!(svc.proc.exited().is_none(), "onair run died on a full disk");
    let sys = call(addr, "GET", "/v1/profiles", Some(&admin), None)
        .await
        .expect("reads answer");
    assert_eq!(sys.status, 200);
    let again = call(addr, "PUT", "/v1/policy", Some(&admin), Some(&policy(7777)))
        .await
        .expect("answer");
    assert!(!again.ok() && again.is_error_shape(), "{again:?}");
    // Free the space: the store works again without a restart.
    std::fs::remove_file(&filler).expect("rm filler");
    let after = ok(
        addr,
        "POST",
        "/v1/subscribers",
        &admin,
        Some(json!({"name": "after free"})),
    )
    .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // And after a crash and restart on the same file system.
    svc.restart().await;
    let verify = ok(addr, "GET", "/v1/audit/verify", &admin, None).await;
    assert_eq!(verify["intact"], true, "{verify}");
    let subs = ok(addr, "GET", "/v1/subscribers", &admin, None).await;
    let names: Vec<&str> = subs
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&failed_name.as_str()),
        "the refused write is there"
    );
    assert!(names.contains(&"after free"));
    let sub_ids = ids(&subs);
    for id in acked_while_full.iter().chain([&after]) {
        assert!(
            sub_ids.contains_key(id),
            "acknowledged subscriber {id} lost"
        );
    }
    let profiles = ids(&ok(addr, "GET", "/v1/profiles", &admin, None).await);
    for id in &before {
        assert!(profiles.contains_key(id.as_str().unwrap_or_default()));
    }
    let pol = ok(addr, "GET", "/v1/policy", &admin, None).await;
    assert_ne!(
        pol["indicator_grace_ms"], 7777,
        "a refused policy write landed"
    );
    let path = format!("/v1/sessions/{}", live.session);
    let st = ok(addr, "GET", &path, &admin, None).await;
    assert!(
        !matches!(st["state"].as_str(), Some("starting" | "live" | "stopping")),
        "{st}"
    );
    let publishes = live.rx.stats().publishes_accepted;
    drop(live);
    svc.proc.kill9();
    integrity_check(&data.join("onair.db"));
    println!(
        "crash-result: scenario=disk_full fs=tmpfs:6m status={} error={} acked_before_refusal={} \
         refused_after_ms={full_ms} live_egress_stopped_ms={egress_stopped_ms} \
         publishes={publishes} service_up=true audit_intact=true failed_write_absent=true",
        failed_resp.status,
        failed_resp.json()["error"],
        acked_while_full.len()
    );
    drop(mnt);
}
