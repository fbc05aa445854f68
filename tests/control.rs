//! The consent guarantees end to end: the real admin API (`onair run`, in-process or as a
//! process), real media (fabric-sim playing the bundled clip), the fabric's indicator side, and
//! `onair receive` over RTMPS as the ingest; recordings checked with ffmpeg.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use onair::ctl::http::{Request, exchange};
use onair::ctl::{Target, Trust, connect};
use onair::fabric_sim::indicator::{self, IndicatorConfig, Shown};
use onair::receive::config::{ReceiverConfig, StreamConfig};
use onair::secret::Secret;
use serde_json::{Value, json};

const STREAM_KEY: &str = "sk-e2e-KEYMATERIAL-42";

#[derive(Clone)]
struct Api {
    port: u16,
}

impl Api {
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        token: &Secret,
        body: Option<Value>,
    ) -> (u16, Value) {
        let target = Target {
            tls: false,
            host: "127.0.0.1".into(),
            port: self.port,
        };
        let data = body.map(|b| b.to_string().into_bytes());
        let req = Request {
            method,
            host: "127.0.0.1",
            port: self.port,
            path,
            token: Some(token),
            body: data.as_deref(),
        };
        let mut conn = connect(&target, &Trust::InsecureLoopback)
            .await
            .expect("connect");
        let resp = exchange(&mut conn, &req).await.expect("exchange");
        let json = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, json)
    }

    async fn ok(
        &self,
        method: &'static str,
        path: &str,
        token: &Secret,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} → {status}: {v}"
        );
        v
    }

    async fn state(&self, token: &Secret, session: &str) -> Value {
        self.ok("GET", &format!("/v1/sessions/{session}"), token, None)
            .await
    }

    /// Polls a session until `pred` holds (bounded).
    async fn wait_state(
        &self,
        token: &Secret,
        session: &str,
        want: &str,
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.state(token, session).await;
            if s["state"] == want {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "session never became {want}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct World {
    dir: PathBuf,
    api: Api,
    admin: Secret,
    sub: Secret,
    fabric: Secret,
    profile: String,
    rx: onair::receive::ReceiverHandle,
    ingest_port: u16,
}

async fn receiver(dir: &Path, ca: &TestCa) -> onair::receive::ReceiverHandle {
    let mut c = ReceiverConfig::new(
        dir.join("rec"),
        vec![StreamConfig::new(
            "meeting",
            "live",
            Secret::new(STREAM_KEY),
        )],
    );
    c.listen = ([127, 0, 0, 1], 0).into();
    c.tls_cert = Some(ca.cert_pem.clone());
    c.tls_key = Some(ca.key_pem.clone());
    onair::receive::start(c).await.expect("receiver")
}

/// Admin enables streaming and allows the private ingest; a subscriber with a profile; a fabric.
async fn provision(
    api: &Api,
    admin: &Secret,
    rx_port: u16,
    ca_pem: &str,
) -> (Secret, Secret, String) {
    api.ok(
        "PUT",
        "/v1/entitlement",
        admin,
        Some(json!({"enabled": true, "recording_allowed": false})),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/policy",
        admin,
        Some(json!({"allowed_services": ["custom"], "allowed_hosts": ["localhost"], "indicator_grace_ms": 1500, "indicator_ack_timeout_ms": 5000})),
    )
    .await;
    let sub = api
        .ok(
            "POST",
            "/v1/subscribers",
            admin,
            Some(json!({"name": "Town hall team"})),
        )
        .await;
    let sub_token = api
        .ok(
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "subscriber", "subscriber_id": sub["id"], "label": "e2e"})),
        )
        .await;
    let fabric_token = api
        .ok(
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "fabric", "label": "mcu"})),
        )
        .await;
    let sub = Secret::new(sub_token["token"].as_str().expect("token"));
    let fabric = Secret::new(fabric_token["token"].as_str().expect("token"));
    let profile = api
        .ok(
            "POST",
            "/v1/profiles",
            &sub,
            Some(json!({"name": "private ingest", "service": "custom", "url": format!("rtmps://localhost:{rx_port}/live"), "stream_key": STREAM_KEY, "ca_bundle_pem": ca_pem})),
        )
        .await;
    assert_eq!(profile["stream_key_set"], true);
    assert!(
        !profile.to_string().contains(STREAM_KEY),
        "a response carried the key: {profile}"
    );
    (sub, fabric, profile["id"].as_str().expect("id").to_string())
}

async fn world(name: &str) -> (World, onair::run::Service) {
    let dir = temp_dir(name);
    let ca = TestCa::make(&dir.join("pki"), "ingest");
    let rx = receiver(&dir, &ca).await;
    let mut config = onair::config::RunConfig {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.api.listen = ([127, 0, 0, 1], 0).into();
    let service = onair::run::start(&config, std::future::pending())
        .await
        .expect("onair run");
    let api = Api {
        port: service.api.local_addr().port(),
    };
    let admin = Secret::new(
        std::fs::read_to_string(service.admin_token_file.clone().expect("first start"))
            .expect("token")
            .trim(),
    );
    let ca_pem = std::fs::read_to_string(&ca.ca_pem).expect("ca");
    let (sub, fabric, profile) = provision(&api, &admin, rx.local_addr().port(), &ca_pem).await;
    let w = World {
        dir,
        api,
        admin,
        sub,
        fabric,
        profile,
        rx,
        ingest_port: free_udp_port(),
    };
    (w, service)
}

/// The fabric: media on the ingest port (looping the bundled clip) and the indicator side.
struct Fabric {
    media_stop: Arc<AtomicBool>,
    media: Option<std::thread::JoinHandle<()>>,
    indicator_stop: tokio::sync::watch::Sender<bool>,
    shown: Shown,
}

impl Fabric {
    fn start(api_port: u16, token: &Secret, ingest_port: u16) -> Fabric {
        let media_stop = Arc::new(AtomicBool::new(false));
        let opts = onair::fabric_sim::SimOptions {
            file: Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.ts"),
            to: ([127, 0, 0, 1], ingest_port).into(),
            packets_per_datagram: 7,
            loops: None,
            rtp: false,
            stop: Some(media_stop.clone()),
        };
        let media = std::thread::spawn(move || {
            let _ = onair::fabric_sim::run(&opts);
        });
        let (indicator_stop, stop_rx) = tokio::sync::watch::channel(false);
        let shown = Shown::default();
        let cfg = IndicatorConfig {
            target: Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: api_port,
            },
            trust: Trust::InsecureLoopback,
            token: token.clone(),
            heartbeat: Duration::from_millis(500),
        };
        tokio::spawn(indicator::run(cfg, shown.clone(), stop_rx));
        Fabric {
            media_stop,
            media: Some(media),
            indicator_stop,
            shown,
        }
    }

    fn shown(&self) -> usize {
        self.shown.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The fabric stops acknowledging (crashed, or network to it lost).
    fn stop_indicator(&self) {
        let _ = self.indicator_stop.send(true);
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.media_stop.store(true, Ordering::Relaxed);
        let _ = self.indicator_stop.send(true);
        if let Some(m) = self.media.take() {
            let _ = m.join();
        }
    }
}

async fn new_session(w: &World, start_at_ms: Option<i64>) -> (String, Value) {
    let mut body = json!({"profile_id": w.profile, "meeting_id": "town-hall", "source": format!("udp://127.0.0.1:{}", w.ingest_port)});
    if let Some(t) = start_at_ms {
        body["start_at_ms"] = json!(t);
    }
    let s = w.api.ok("POST", "/v1/sessions", &w.sub, Some(body)).await;
    (s["id"].as_str().expect("id").to_string(), s)
}

/// The confirm id the session's owner sees for its current wait.
async fn confirm_id(w: &World, id: &str) -> String {
    w.api.state(&w.sub, id).await["confirm_id"]
        .as_str()
        .expect("awaiting: confirm_id shown to its owner")
        .to_string()
}

/// `POST /v1/sessions/{id}/confirm` with `cid`, as `token`: (status, body).
async fn post_confirm(api: &Api, token: &Secret, id: &str, cid: &str) -> (u16, Value) {
    api.call(
        "POST",
        &format!("/v1/sessions/{id}/confirm"),
        token,
        Some(json!({"confirm_id": cid})),
    )
    .await
}

/// The owner's confirm of the current wait; must succeed.
async fn confirm(w: &World, id: &str) -> Value {
    let cid = confirm_id(w, id).await;
    let (status, v) = post_confirm(&w.api, &w.sub, id, &cid).await;
    assert!((200..300).contains(&status), "confirm → {status}: {v}");
    v
}

async fn wait_publishes(rx: &onair::receive::ReceiverHandle, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while rx.stats().publishes_accepted < n {
        assert!(
            Instant::now() < deadline,
            "the ingest never saw publish #{n}: {:?}",
            rx.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time until the ingest sees the publish end (recording finished).
async fn wait_publish_end(
    rx: &onair::receive::ReceiverHandle,
    files: usize,
    limit: Duration,
) -> Duration {
    let t0 = Instant::now();
    while rx.stats().files_completed.len() < files {
        assert!(
            t0.elapsed() < limit,
            "the ingest still receives: {:?}",
            rx.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

fn decodes(file: &Path) -> f64 {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dts = packet_dts_ms(file, "video");
    dts.last().copied().unwrap_or(0.0) - dts.first().copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_confirm_indicator_media_stop() {
    let (w, _svc) = world("ctl_full_flow").await;
    let (id, s) = new_session(&w, None).await;
    assert_eq!(s["state"], "awaiting_confirmation");
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    // Media flows from the fabric, but nothing leaves before the owner confirms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        w.rx.stats().connections_accepted,
        0,
        "something streamed before the confirm"
    );
    assert_eq!(fabric.shown(), 0);
    // Someone else cannot confirm it (it does not even exist for them).
    let (status, _) = post_confirm(&w.api, &w.admin, &id, "x").await;
    assert!(status == 403 || status == 404, "{status}");
    confirm(&w, &id).await;
    let live = w
        .api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(5))
        .await;
    assert_eq!(
        fabric.shown(),
        1,
        "the fabric shows the indicator while live"
    );
    wait_publishes(&w.rx, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = w.api.state(&w.sub, &id).await;
    let stats = &s["stats"];
    assert!(stats["frames_out"].as_u64().unwrap_or(0) > 100, "{s}");
    // The first frame sent was received at or after the confirm instant (same clock).
    let confirmed = live["state_detail"]["consent"]["confirmed_mono_ns"]
        .as_u64()
        .expect("consent");
    let first = stats["first_frame_rx_ns"].as_u64().expect("first frame");
    assert!(
        first >= confirmed,
        "first frame received {first} before the confirm {confirmed}"
    );
    w.api
        .ok("POST", &format!("/v1/sessions/{id}/stop"), &w.sub, None)
        .await;
    let ended = w
        .api
        .wait_state(&w.sub, &id, "ended", Duration::from_secs(8))
        .await;
    assert_eq!(ended["state_detail"]["reason"], "requested");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fabric.shown(),
        0,
        "the indicator went off after the stream ended"
    );
    let stats = w.rx.stats();
    assert_eq!(stats.files_completed.len(), 1);
    let secs = decodes(&stats.files_completed[0].path);
    assert!(secs >= 5_000.0, "only {secs} ms recorded");
    // The audit chain is intact and shows the confirm by its owner.
    let verify = w.api.ok("GET", "/v1/audit/verify", &w.admin, None).await;
    assert_eq!(verify["intact"], true);
    let audit = w
        .api
        .ok("GET", "/v1/audit?limit=1000", &w.admin, None)
        .await;
    let confirms: Vec<&Value> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["entry"]["action"] == "session.confirm" && e["entry"]["outcome"] == "ok")
        .collect();
    assert_eq!(confirms.len(), 1);
    assert_eq!(confirms[0]["entry"]["role"], "subscriber");
    drop(fabric);
    let _ = &w.dir;
}

async fn go_live(w: &World) -> (String, Fabric) {
    let (id, _) = new_session(w, None).await;
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    confirm(w, &id).await;
    w.api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(5))
        .await;
    wait_publishes(&w.rx, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (id, fabric)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_entitlement_stops_egress_within_a_second() {
    let (w, _svc) = world("ctl_revoke").await;
    let (id, fabric) = go_live(&w).await;
    let t0 = Instant::now();
    w.api
        .ok(
            "PUT",
            "/v1/entitlement",
            &w.admin,
            Some(json!({"enabled": false, "recording_allowed": false})),
        )
        .await;
    wait_publish_end(&w.rx, 1, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    eprintln!("ingest saw the stream end {took:?} after the entitlement was revoked");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    let s = w
        .api
        .wait_state(&w.sub, &id, "ended", Duration::from_secs(5))
        .await;
    assert_eq!(s["state_detail"]["reason"], "entitlement_revoked");
    // And nothing can start again while it is off.
    let (status, err) = w.api.call("POST", "/v1/sessions", &w.sub, Some(json!({"profile_id": w.profile, "meeting_id": "m2", "source": format!("udp://127.0.0.1:{}", w.ingest_port)}))).await;
    assert_eq!((status, err["error"].as_str()), (403, Some("policy")));
    drop(fabric);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_indicator_stops_egress() {
    let (w, _svc) = world("ctl_indicator_lost").await;
    let (id, fabric) = go_live(&w).await;
    fabric.stop_indicator();
    let t0 = Instant::now();
    let took = wait_publish_end(&w.rx, 1, Duration::from_secs(6)).await;
    eprintln!(
        "egress stopped {:?} after the fabric went silent (grace 1.5 s)",
        t0.elapsed()
    );
    assert!(
        took >= Duration::from_millis(1000),
        "stopped before the grace period: {took:?}"
    );
    let s = w
        .api
        .wait_state(&w.sub, &id, "failed", Duration::from_secs(5))
        .await;
    assert_eq!(s["state_detail"]["reason"], "indicator_lost");
    drop(fabric);
}

/// At the confirm the relay starts receiving (so the first keyframe after the confirm is not
/// missed while the fabric answers), but its egress is held: with a fabric that never
/// acknowledges the indicator nothing connects to the ingest, the session fails at the ack
/// timeout, and the held relay is gone (its ingest port is free again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_indicator_ack_the_held_relay_never_connects_and_goes_away() {
    let (w, _svc) = world("ctl_held_no_ack").await;
    let (id, _) = new_session(&w, None).await;
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    fabric.stop_indicator();
    tokio::time::sleep(Duration::from_millis(300)).await;
    confirm(&w, &id).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = w.api.state(&w.sub, &id).await;
    assert_eq!(s["state"], "starting", "{s}");
    assert_eq!(
        w.rx.stats().connections_accepted,
        0,
        "the ingest was contacted before the indicator was acknowledged"
    );
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", w.ingest_port)).is_err(),
        "no relay receiving since the confirm"
    );
    let s = w
        .api
        .wait_state(&w.sub, &id, "failed", Duration::from_secs(6))
        .await;
    assert_eq!(s["state_detail"]["reason"], "indicator_not_acknowledged");
    assert_eq!(w.rx.stats().connections_accepted, 0);
    // The held relay let go of the ingest port.
    let t0 = Instant::now();
    loop {
        match std::net::UdpSocket::bind(("127.0.0.1", w.ingest_port)) {
            Ok(_) => break,
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(3),
                "ingest port still bound after the session failed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(fabric);
}

/// Whether something listens on 127.0.0.1:`port` (UDP), read from /proc/net/udp so the check
/// never takes the port itself.
fn udp_port_bound(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Waits up to 3 s until 127.0.0.1:`port` (UDP) is bound (`bound`) or free; fails with `what`.
async fn wait_udp_port(port: u16, bound: bool, what: &str) {
    let t0 = Instant::now();
    while udp_port_bound(port) != bound {
        assert!(t0.elapsed() < Duration::from_secs(3), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Holds the store's write lock (as a slow or stuck disk would) until rolled back.
fn lock_store(w: &World) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(w.dir.join("data").join(onair::store::DB_FILE))
        .expect("open the store");
    db.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    db
}

/// The owner's confirm with the current confirm id, sent in the background.
async fn spawn_confirm(w: &World, id: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let cid = confirm_id(w, id).await;
    let (api, sub, id) = (w.api.clone(), w.sub.clone(), id.to_string());
    tokio::spawn(async move { post_confirm(&api, &sub, &id, &cid).await })
}

/// A keyframe that arrives while the confirm is being written to disk is not missed: the relay
/// binds its ingest before the confirm is committed. The commit is made slow here by holding
/// the store's write lock from outside (as a slow disk would); the fabric starts the clip,
/// which opens with a keyframe (the next one is 2 s later), while the commit waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_arriving_while_the_confirm_is_committed_is_not_missed() {
    let (w, _svc) = world("ctl_confirm_commit_window").await;
    let (id, _) = new_session(&w, None).await;
    let db = lock_store(&w);
    let confirming = spawn_confirm(&w, &id).await;
    // The confirm is being committed (the commit waits for the lock): the ingest is bound.
    wait_udp_port(
        w.ingest_port,
        true,
        "no relay receiving while the confirm is being committed",
    )
    .await;
    assert!(
        !confirming.is_finished(),
        "the confirm did not wait for the store"
    );
    let media_start = onair::clock::monotonic_ns();
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.execute_batch("ROLLBACK")
        .expect("release the write lock");
    let (status, confirmed) = confirming.await.expect("confirm task");
    assert_eq!(status, 200, "{confirmed}");
    // The answer is the session as it is after the commit: already live if the fabric's
    // acknowledgement came first (the relay was receiving during the commit).
    assert!(
        confirmed["state"] == "starting" || confirmed["state"] == "live",
        "{confirmed}"
    );
    let live = w
        .api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(5))
        .await;
    wait_publishes(&w.rx, 1, Duration::from_secs(10)).await;
    let t0 = Instant::now();
    let first = loop {
        let s = w.api.state(&w.sub, &id).await;
        if let Some(f) = s["stats"]["first_frame_rx_ns"].as_u64() {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no frame sent: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gate = live["state_detail"]["consent"]["confirmed_mono_ns"]
        .as_u64()
        .expect("consent");
    assert!(
        gate <= media_start,
        "the confirm instant is when it was received"
    );
    assert!(first >= gate, "a frame from before the confirm was sent");
    // The clip's first keyframe, sent 500 ms before the commit ended, started the stream
    // (missing it means the next one, 2 s into the clip).
    let after_ms = (first - media_start) / 1_000_000;
    assert!(
        after_ms < 1000,
        "the first frame sent was received {after_ms} ms after the media started"
    );
    drop(fabric);
}

/// Only a confirm that will be accepted binds the ingest before its commit: a refused one (a
/// stale confirm id) binds nothing. One whose commit fails (the store's write lock held from
/// outside past the busy timeout) is answered 503, and the relay it bound goes away; the
/// session still waits, and the next confirm works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_uncommitted_confirm_leaves_no_receiving_relay_behind() {
    let (w, _svc) = world("ctl_confirm_refused").await;
    let (id, _) = new_session(&w, None).await;
    let (status, v) = post_confirm(&w.api, &w.sub, &id, "not-the-current-one").await;
    assert_eq!(status, 409, "{v}");
    assert!(
        !udp_port_bound(w.ingest_port),
        "a refused confirm bound the ingest"
    );

    let db = lock_store(&w);
    let confirming = spawn_confirm(&w, &id).await;
    wait_udp_port(w.ingest_port, true, "the ingest was never bound").await;
    let (status, v) = confirming.await.expect("confirm task");
    db.execute_batch("ROLLBACK")
        .expect("release the write lock");
    assert_eq!(status, 503, "the commit could not happen: {v}");
    wait_udp_port(
        w.ingest_port,
        false,
        "the ingest stays bound after the confirm's commit failed",
    )
    .await;
    let s = w.api.state(&w.sub, &id).await;
    assert_eq!(s["state"], "awaiting_confirmation", "{s}");
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    confirm(&w, &id).await;
    w.api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(5))
        .await;
    wait_publishes(&w.rx, 1, Duration::from_secs(10)).await;
    assert_eq!(w.rx.stats().publishes_accepted, 1);
    drop(fabric);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_start_waits_for_the_owners_confirm() {
    let (w, _svc) = world("ctl_scheduled").await;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let (id, s) = new_session(&w, Some(now_ms + 1_000)).await;
    assert_eq!(s["state"], "scheduled");
    let fabric = Fabric::start(w.api.port, &w.fabric, w.ingest_port);
    w.api
        .wait_state(&w.sub, &id, "awaiting_confirmation", Duration::from_secs(4))
        .await;
    // The start time has passed: still nothing streams until the confirm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.api.state(&w.sub, &id).await["state"],
        "awaiting_confirmation"
    );
    assert_eq!(w.rx.stats().connections_accepted, 0);
    confirm(&w, &id).await;
    w.api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(5))
        .await;
    wait_publishes(&w.rx, 1, Duration::from_secs(10)).await;
    drop(fabric);
}

/// `onair run` as a process, killed with SIGKILL while live.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_run(config: &Path) -> Process {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_onair"))
        .args(["run", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("onair run");
    Process(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_live_comes_back_interrupted_and_silent() {
    let dir = temp_dir("ctl_kill9");
    let ca = TestCa::make(&dir.join("pki"), "ingest");
    let rx = receiver(&dir, &ca).await;
    let port = free_tcp_port();
    let config = dir.join("onair.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let mut proc = spawn_run(&config);
    wait_tcp(port);
    let api = Api { port };
    let admin = Secret::new(
        std::fs::read_to_string(dir.join("data/admin.token"))
            .expect("token")
            .trim(),
    );
    let (sub, fabric_token, profile) = provision(
        &api,
        &admin,
        rx.local_addr().port(),
        &std::fs::read_to_string(&ca.ca_pem).expect("ca"),
    )
    .await;
    let w = World {
        dir: dir.clone(),
        api: api.clone(),
        admin,
        sub,
        fabric: fabric_token,
        profile,
        rx,
        ingest_port: free_udp_port(),
    };
    let (id, fabric) = go_live(&w).await;
    // Power cut.
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    wait_publish_end(&w.rx, 1, Duration::from_secs(5)).await;
    let _proc2 = spawn_run(&config);
    wait_tcp(port);
    let s = w.api.state(&w.sub, &id).await;
    assert_eq!(s["state"], "interrupted", "{s}");
    // The fabric keeps sending media and acknowledging: still nothing streams.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.rx.stats().publishes_accepted,
        1,
        "a restart resumed the stream"
    );
    // Only a new confirm by the owner makes it live again.
    w.api
        .ok("POST", &format!("/v1/sessions/{id}/rearm"), &w.sub, None)
        .await;
    confirm(&w, &id).await;
    w.api
        .wait_state(&w.sub, &id, "live", Duration::from_secs(8))
        .await;
    wait_publishes(&w.rx, 2, Duration::from_secs(10)).await;
    drop(fabric);
    drop(proc);
}

/// Stopping the service ends the fabric's indicator event stream at once: an open subscription
/// (the fabric always has one) used to hold every shutdown, e.g. the appliance's power button,
/// for the whole 5 s drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_the_indicator_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("ctl_shutdown_sse");
    let mut config = onair::config::RunConfig {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.api.listen = ([127, 0, 0, 1], 0).into();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = onair::run::start(&config, async move {
        let _ = stop_rx.await;
    })
    .await
    .expect("onair run");
    let api = Api {
        port: service.api.local_addr().port(),
    };
    let admin = Secret::new(
        std::fs::read_to_string(service.admin_token_file.clone().expect("first start"))
            .expect("token")
            .trim(),
    );
    let fabric = api
        .ok(
            "POST",
            "/v1/tokens",
            &admin,
            Some(json!({"role": "fabric", "label": "mcu"})),
        )
        .await;
    let token = fabric["token"].as_str().expect("token");
    // A subscription: the request sent, the response head read.
    let mut sse = tokio::net::TcpStream::connect(("127.0.0.1", api.port))
        .await
        .expect("connect");
    sse.write_all(
        format!(
            "GET /v1/fabric/indicators HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), sse.read(&mut buf))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"),
        "{head}"
    );
    let t0 = Instant::now();
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), service.api.join())
        .await
        .expect("the API stopped");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "shutdown waited {took:?} for the open indicator stream"
    );
    // And the fabric sees its stream end (not just a silent connection).
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while sse.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(end.is_ok(), "the indicator stream did not end");
}
