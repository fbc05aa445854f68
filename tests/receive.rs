//! `onair receive` end to end with the real ffmpeg/ffprobe/openssl: RTMP and RTMPS publishes are
//! recorded, decoded and compared with what ffmpeg itself writes; keys and limits are enforced.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use onair::receive::{ReceiverConfig, ReceiverHandle, Stats, StreamConfig, start};
use onair::secret::Secret;

const KEY: &str = "Zk9-live-0042";
/// Generous bound for anything that should take a few seconds.
const WAIT: Duration = Duration::from_secs(60);

/// Everything the receiver logged in this test process.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("onair-recv-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion, killing it after `WAIT`.
fn run(cmd: &str, args: &[&str]) -> Output {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > WAIT => {
                let _ = child.kill();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("wait {cmd}: {e}"),
        }
    }
    child.wait_with_output().expect("output")
}

async fn run_async(cmd: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(cmd, &a)
    })
    .await
    .expect("join")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The 4 s H.264 (B-frames) + AAC source, encoded once, and ffmpeg's own copy of it.
struct Source {
    _dir: TempDir,
    src: PathBuf,
    direct: PathBuf,
}

fn source() -> &'static Source {
    static SRC: OnceLock<Source> = OnceLock::new();
    SRC.get_or_init(|| {
        let dir = TempDir::new("src");
        let src = dir.0.join("src.flv");
        let direct = dir.0.join("direct.flv");
        let s = src.to_str().expect("utf8");
        let out = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "4",
                "-c:v",
                "libx264",
                "-bf",
                "2",
                "-g",
                "25",
                "-c:a",
                "aac",
                "-f",
                "flv",
                s,
            ],
        );
        assert!(
            out.status.success(),
            "encode: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = direct.to_str().expect("utf8");
        let out = run(
            "ffmpeg",
            &["-v", "error", "-y", "-i", s, "-c", "copy", "-f", "flv", d],
        );
        assert!(
            out.status.success(),
            "copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Source {
            _dir: dir,
            src,
            direct,
        }
    })
}

fn config(record_dir: &Path) -> ReceiverConfig {
    capture_logs();
    let mut c = ReceiverConfig::new(
        record_dir,
        vec![
            StreamConfig::new("townhall", "live", Secret::new(KEY)),
            StreamConfig::new("other", "live", Secret::new("another-key")),
        ],
    );
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c
}

/// Publishes the source with `-c copy` to `url`.
async fn publish(url: String, realtime: bool, extra: &[&str]) -> Output {
    let src = source().src.to_str().expect("utf8").to_owned();
    let mut args = strings(&["-v", "error", "-nostdin"]);
    if realtime {
        args.push("-re".into());
    }
    args.extend(strings(&["-i", &src, "-c", "copy"]));
    args.extend(strings(extra));
    args.extend(strings(&["-f", "flv", &url]));
    run_async("ffmpeg", args).await
}

async fn wait(h: &ReceiverHandle, what: &str, pred: impl FnMut(&Stats) -> bool) -> Stats {
    match h.wait_for(WAIT, pred).await {
        Ok(s) => s,
        Err(s) => panic!("timed out waiting for {what}: {s:#?}"),
    }
}

#[derive(Debug)]
struct Probe {
    video: Vec<serde_json::Value>,
    audio: Vec<serde_json::Value>,
}

fn ffprobe(path: &Path) -> Probe {
    let p = path.to_str().expect("utf8");
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,sample_rate,nb_read_frames",
            "-of",
            "json",
            p,
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let of = |t: &str| -> Vec<serde_json::Value> {
        streams
            .iter()
            .filter(|s| s["codec_type"] == t)
            .cloned()
            .collect()
    };
    Probe {
        video: of("video"),
        audio: of("audio"),
    }
}

fn frames(s: &serde_json::Value) -> u64 {
    s["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn framemd5(path: &Path) -> String {
    let p = path.to_str().expect("utf8");
    let out = run(
        "ffmpeg",
        &["-v", "error", "-i", p, "-map", "0:v", "-f", "framemd5", "-"],
    );
    assert!(
        out.status.success(),
        "framemd5: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks a recording against the source: streams, frame counts and decoded video.
fn check_recording(path: &Path) -> (u64, u64) {
    let probe = ffprobe(path);
    assert_eq!(probe.video.len(), 1, "{probe:?}");
    assert_eq!(probe.audio.len(), 1, "{probe:?}");
    let (v, a) = (&probe.video[0], &probe.audio[0]);
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["sample_rate"], "48000");
    let (vf, af) = (frames(v), frames(a));
    assert!(vf >= 99, "video frames {vf}");
    // 4 s of 48 kHz AAC is 187.5 frames of 1024 samples.
    assert!(af >= 185, "audio frames {af}");
    let direct = framemd5(&source().direct);
    assert!(direct.lines().filter(|l| !l.starts_with('#')).count() >= 99);
    assert_eq!(
        framemd5(path),
        direct,
        "decoded video differs from the source"
    );
    (vf, af)
}

fn only_file(stats: &Stats, dir: &Path) -> PathBuf {
    assert_eq!(stats.files_completed.len(), 1, "{stats:#?}");
    let f = &stats.files_completed[0];
    assert_eq!(f.path.parent(), Some(dir));
    let name = f.path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        name.starts_with("townhall-") && name.ends_with("-1.flv"),
        "{name}"
    );
    assert!(!name.contains(KEY));
    let files: Vec<_> = std::fs::read_dir(dir).expect("dir").collect();
    assert_eq!(files.len(), 1);
    f.path.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_publish_is_recorded_frame_exact() {
    let dir = TempDir::new("rtmp");
    let h = start(config(&dir.0)).await.expect("start");
    let url = format!("rtmp://{}/live/{KEY}", h.local_addr());
    let out = publish(url, true, &[]).await;
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = wait(&h, "recording", |s| !s.files_completed.is_empty()).await;
    assert_eq!(stats.publishes_accepted, 1);
    assert_eq!(stats.publishes_rejected, 0);
    let path = only_file(&stats, &dir.0);
    let (vf, af) = check_recording(&path);
    eprintln!("rtmp recording: {vf} video frames, {af} audio frames, {path:?}");
    let stats = h.stop().await;
    let logs = logs();
    assert!(logs.contains("recording complete"), "{logs}");
    assert!(!logs.contains(KEY), "stream key in logs");
    assert_eq!(stats.connections_active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_rejected_without_a_file() {
    let dir = TempDir::new("badkey");
    let h = start(config(&dir.0)).await.expect("start");
    let url = format!("rtmp://{}/live/not-{KEY}", h.local_addr());
    let out = publish(url, false, &[]).await;
    assert!(!out.status.success(), "ffmpeg should fail");
    let stats = wait(&h, "rejection", |s| s.publishes_rejected == 1).await;
    assert_eq!(stats.publishes_accepted, 0);
    assert!(stats.files_completed.is_empty());
    assert_eq!(std::fs::read_dir(&dir.0).expect("dir").count(), 0);
    // Wrong app, right key: rejected at connect.
    let url = format!("rtmp://{}/vod/{KEY}", h.local_addr());
    let out = publish(url, false, &[]).await;
    assert!(!out.status.success());
    wait(&h, "second rejection", |s| s.publishes_rejected == 2).await;
    h.stop().await;
    let logs = logs();
    assert!(logs.contains("unknown stream key"), "{logs}");
    assert!(!logs.contains(KEY), "stream key in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_publish_is_recorded_frame_exact() {
    let certs = TempDir::new("certs");
    let pki = common::TestCa::make(&certs.0, "receive");
    let dir = TempDir::new("rtmps");
    let mut c = config(&dir.0);
    c.tls_cert = Some(pki.cert_pem.clone());
    c.tls_key = Some(pki.key_pem.clone());
    let h = start(c).await.expect("start");
    let port = h.local_addr().port();
    let ca = pki.ca_pem.to_str().expect("utf8");
    let url = format!("rtmps://localhost:{port}/live/{KEY}");
    // ffmpeg's TLS client really verifies: the system roots do not know our CA.
    let system = "/etc/ssl/certs/ca-certificates.crt";
    let out = publish(
        url.clone(),
        false,
        &["-tls_verify", "1", "-ca_file", system],
    )
    .await;
    assert!(!out.status.success(), "unverified certificate accepted");
    let out = publish(url, true, &["-tls_verify", "1", "-ca_file", ca]).await;
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = wait(&h, "recording", |s| !s.files_completed.is_empty()).await;
    let path = only_file(&stats, &dir.0);
    let (vf, af) = check_recording(&path);
    eprintln!("rtmps recording: {vf} video frames, {af} audio frames");
    // Plain RTMP to the TLS port fails the TLS handshake and records nothing.
    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let out = publish(url, false, &[]).await;
    assert!(!out.status.success());
    let stats = wait(&h, "tls failure", |s| s.tls_failures >= 1).await;
    assert_eq!(stats.files_completed.len(), 1);
    h.stop().await;
}

/// Whether the peer closed `s` within `within` (EOF or reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let dir = TempDir::new("limit");
    let mut c = config(&dir.0);
    c.max_connections = 3;
    let h = start(c).await.expect("start");
    let addr = h.local_addr();
    let mut held = Vec::new();
    for i in 1..=3u64 {
        held.push(TcpStream::connect(addr).expect("connect"));
        wait(&h, "accept", |s| s.connections_active == i).await;
    }
    let extra = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        closed_within(&mut s, WAIT)
    });
    assert!(extra.await.expect("join"), "extra connection not closed");
    let stats = wait(&h, "refusal", |s| s.connections_refused_limit == 1).await;
    assert_eq!(stats.connections_active, 3);
    let still_open = tokio::task::spawn_blocking(move || {
        let open = !closed_within(&mut held[0], Duration::from_millis(300));
        (open, held)
    });
    let (open, held) = still_open.await.expect("join");
    assert!(open, "held connection was closed");
    drop(held);
    wait(&h, "held closed", |s| s.connections_active == 0).await;
    h.stop().await;
}

/// A client handshake by hand (the plain RTMP variant): C0+C1, read S0+S1+S2, send C2.
fn raw_handshake(s: &mut TcpStream) {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    s.write_all(&c0c1).expect("c0c1");
    let mut s0s1s2 = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut s0s1s2).expect("s0s1s2");
    s.write_all(&s0s1s2[1..1537]).expect("c2");
}

fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_closed_and_a_publish_still_works() {
    let dir = TempDir::new("garbage");
    let h = start(config(&dir.0)).await.expect("start");
    let addr = h.local_addr();
    let closed = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for handshake in [false, true] {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_write_timeout(Some(WAIT)).expect("timeout");
            if handshake {
                raw_handshake(&mut s);
            }
            // The server may close mid-write: a write error is fine.
            let _ = s.write_all(&garbage(42, 1 << 20));
            results.push(closed_within(&mut s, WAIT));
        }
        results
    });
    assert_eq!(closed.await.expect("join"), vec![true, true]);
    let stats = wait(&h, "closes", |s| s.closed_malformed + s.closed_limit == 2).await;
    assert_eq!(stats.connections_active, 0);
    let url = format!("rtmp://{addr}/live/{KEY}");
    let out = publish(url, false, &[]).await;
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = wait(&h, "recording", |s| !s.files_completed.is_empty()).await;
    let path = only_file(&stats, &dir.0);
    let probe = ffprobe(&path);
    assert_eq!(probe.video.len(), 1);
    assert!(frames(&probe.video[0]) >= 99);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_failure_closes_the_connection() {
    let dir = TempDir::new("disk");
    let record = dir.0.join("rec");
    let h = start(config(&record)).await.expect("start");
    std::fs::remove_dir_all(&record).expect("remove record dir");
    let url = format!("rtmp://{}/live/{KEY}", h.local_addr());
    let _ = publish(url, false, &[]).await;
    let stats = wait(&h, "write error", |s| s.write_errors == 1).await;
    assert!(stats.files_completed.is_empty());
    wait(&h, "closed", |s| s.connections_active == 0).await;
    // The stream is free again once the record dir is back.
    std::fs::create_dir_all(&record).expect("mkdir");
    let url = format!("rtmp://{}/live/{KEY}", h.local_addr());
    let out = publish(url, false, &[]).await;
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait(&h, "recording", |s| s.files_completed.len() == 1).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_closed_after_the_idle_timeout() {
    let dir = TempDir::new("idle");
    let mut c = config(&dir.0);
    c.idle_timeout_secs = 1;
    let h = start(c).await.expect("start");
    let addr = h.local_addr();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&[3]).expect("c0"); // a handshake that never completes
        closed_within(&mut s, WAIT)
    });
    assert!(closed.await.expect("join"));
    // The timeout is counted before the connection's task ends and stops counting itself
    // active: wait for both (asserting the second right after the first raced).
    let stats = wait(&h, "timeout", |s| {
        s.closed_timeout == 1 && s.connections_active == 0
    })
    .await;
    assert_eq!(stats.closed_timeout, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_publish_finishes_the_recording() {
    let dir = TempDir::new("stop");
    let h = start(config(&dir.0)).await.expect("start");
    let url = format!("rtmp://{}/live/{KEY}", h.local_addr());
    let ffmpeg = tokio::spawn(publish(url, true, &[]));
    wait(&h, "media", |s| s.publishes_accepted == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = h.stop().await;
    assert_eq!(stats.files_completed.len(), 1, "{stats:#?}");
    let path = &stats.files_completed[0].path;
    let data = bytes::Bytes::from(std::fs::read(path).expect("read"));
    let tags = onair::media::flv::parse_file(&data).expect("complete FLV, not truncated");
    assert_eq!(tags.len() as u64, stats.files_completed[0].tags);
    let out = ffmpeg.await.expect("join");
    assert!(
        !out.status.success(),
        "publisher should see the connection drop"
    );
}
