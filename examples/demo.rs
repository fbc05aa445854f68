//! The demo (`scripts/demo.sh`): the appliance's main job, on loopback, end to end.
//!
//! Starts `onair run` on its embedded default config, `onair receive` as the enterprise's
//! private RTMPS ingest (certificates made here), and `onair fabric-sim` (media + the fabric's
//! indicator side); then walks through the real admin API as an admin and a subscriber would:
//! enable the entitlement, create a subscriber and a profile pointing at the private ingest,
//! create a session, confirm it, stream ~15 s with live stats, stop, and show the recording.
//!
//! Everything lives under var/demo/ (wiped at each run). The binary is `$ONAIR_BIN`
//! (default target/release/onair).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onair::ctl::http::{Request, exchange};
use onair::ctl::{Target, Trust, connect};
use onair::secret::Secret;
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const API_PORT: u16 = 8080;
const INGEST: &str = "127.0.0.1:5000";

struct Kid(&'static str, Child);

impl Drop for Kid {
    fn drop(&mut self) {
        // SIGTERM first (clean shutdown), then make sure.
        let _ = Command::new("kill").arg(self.1.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.1.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.1.kill();
        let _ = self.1.wait();
        eprintln!("(stopped {})", self.0);
    }
}

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

async fn call(method: &'static str, path: &str, token: &Secret, body: Option<Value>) -> Res<Value> {
    let target = Target {
        tls: false,
        host: "127.0.0.1".into(),
        port: API_PORT,
    };
    let data = body.map(|b| b.to_string().into_bytes());
    let req = Request {
        method,
        host: "127.0.0.1",
        port: API_PORT,
        path,
        token: Some(token),
        body: data.as_deref(),
    };
    let mut conn = connect(&target, &Trust::InsecureLoopback).await?;
    let resp = exchange(&mut conn, &req).await?;
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    if !(200..300).contains(&resp.status) {
        return Err(format!("{method} {path}: {} {}", resp.status, v).into());
    }
    Ok(v)
}

fn make_pki(dir: &Path) -> Res<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "onair demo private CA");
    let ca = CertifiedIssuer::self_signed(
        ca_params,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
    )?;
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_pem, ca.pem())?;
    std::fs::write(&cert, leaf.pem())?;
    onair::api::tls::write_private(&key, leaf_key.serialize_pem().as_bytes())?;
    Ok((ca_pem, cert, key))
}

fn random_hex() -> Res<String> {
    Ok(onair::store::new_token()?
        .expose()
        .trim_start_matches("onair_")
        .chars()
        .take(24)
        .collect())
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_tcp(port: u16, what: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var("ONAIR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/release/onair"));
    let demo = root.join("var/demo");
    let _ = std::fs::remove_dir_all(&demo);
    std::fs::create_dir_all(&demo)?;
    if std::net::TcpStream::connect(("127.0.0.1", API_PORT)).is_ok() {
        return Err(format!("port {API_PORT} is in use: the demo runs `onair run` on its default 127.0.0.1:{API_PORT}").into());
    }

    step(
        1,
        "The enterprise's private RTMPS ingest: onair receive (certificate from a private CA)",
    );
    let (ca_pem, cert, key) = make_pki(&demo.join("pki"))?;
    let stream_key = random_hex()?;
    onair::api::tls::write_private(&demo.join("stream.key"), stream_key.as_bytes())?;
    let rx_port = free_port()?;
    std::fs::write(
        demo.join("receive.toml"),
        format!(
            "listen = \"127.0.0.1:{rx_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nrecord_dir = \"{}\"\n[[stream]]\nname = \"townhall\"\napp = \"live\"\nkey_file = \"stream.key\"\n",
            cert.display(),
            key.display(),
            demo.join("recordings").display()
        ),
    )?;
    let receive = Kid(
        "onair receive",
        Command::new(&bin)
            .args(["receive", "--config"])
            .arg(demo.join("receive.toml"))
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_tcp(rx_port, "onair receive")?;
    println!("    rtmps://localhost:{rx_port}/live, recording to var/demo/recordings/");

    step(
        2,
        "The appliance: onair run on its embedded default (state in var/demo/var/onair, API on 127.0.0.1:8080)",
    );
    let run = Kid(
        "onair run",
        Command::new(&bin)
            .arg("run")
            .current_dir(&demo)
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_tcp(API_PORT, "onair run")?;
    let admin = Secret::new(std::fs::read_to_string(demo.join("var/onair/admin.token"))?.trim());
    println!("    first start: admin token written to var/demo/var/onair/admin.token (0600)");
    println!(
        "    entitlement now: {}",
        call("GET", "/v1/entitlement", &admin, None).await?
    );

    step(
        3,
        "Admin: enable streaming, allow the private ingest, create a subscriber and a fabric token",
    );
    call(
        "PUT",
        "/v1/entitlement",
        &admin,
        Some(json!({"enabled": true, "recording_allowed": true})),
    )
    .await?;
    call("PUT", "/v1/policy", &admin, Some(json!({"allowed_services": ["youtube", "facebook", "vimeo", "linkedin", "custom"], "allowed_hosts": ["localhost"]}))).await?;
    let sub = call(
        "POST",
        "/v1/subscribers",
        &admin,
        Some(json!({"name": "Comms team"})),
    )
    .await?;
    let sub_tok = call(
        "POST",
        "/v1/tokens",
        &admin,
        Some(json!({"role": "subscriber", "subscriber_id": sub["id"], "label": "demo"})),
    )
    .await?;
    let fab_tok = call(
        "POST",
        "/v1/tokens",
        &admin,
        Some(json!({"role": "fabric", "label": "mcu"})),
    )
    .await?;
    let subscriber = Secret::new(sub_tok["token"].as_str().unwrap_or_default());
    onair::api::tls::write_private(
        &demo.join("fabric.token"),
        fab_tok["token"].as_str().unwrap_or_default().as_bytes(),
    )?;
    println!(
        "    subscriber {} · tokens issued (shown once, kept in files)",
        sub["id"]
    );

    step(
        4,
        "Subscriber: an ingest profile → the private ingest, its CA, the stream key (write-only)",
    );
    let profile = call(
        "POST",
        "/v1/profiles",
        &subscriber,
        Some(json!({"name": "Town hall archive", "service": "custom", "url": format!("rtmps://localhost:{rx_port}/live"), "stream_key": stream_key, "ca_bundle_pem": std::fs::read_to_string(&ca_pem)?, "destination_records": true})),
    )
    .await?;
    println!(
        "    profile {} (stream_key_set: {}; the key itself is never shown again)",
        profile["id"], profile["stream_key_set"]
    );

    step(
        5,
        "The conferencing fabric: onair fabric-sim (media to 127.0.0.1:5000, indicator side on the API)",
    );
    let fabric = Kid(
        "onair fabric-sim",
        Command::new(&bin)
            .args(["fabric-sim", "--to", INGEST, "--file"])
            .arg(root.join("assets/sample.ts"))
            .args([
                "--api",
                &format!("http://127.0.0.1:{API_PORT}"),
                "--token-file",
            ])
            .arg(demo.join("fabric.token"))
            .env("RUST_LOG", "warn")
            .spawn()?,
    );

    step(
        6,
        "Subscriber: create a session — it waits for confirmation, nothing streams",
    );
    let s = call("POST", "/v1/sessions", &subscriber, Some(json!({"profile_id": profile["id"], "meeting_id": "all-hands", "source": format!("udp://{INGEST}")}))).await?;
    let id = s["id"].as_str().unwrap_or_default().to_string();
    println!("    session {id}: {}", s["state"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "    after 2 s: {} (media arrives from the fabric, none leaves)",
        call("GET", &format!("/v1/sessions/{id}"), &subscriber, None).await?["state"]
    );

    step(
        7,
        "Subscriber presses confirm → indicator on in the meeting → the fabric acknowledges → live",
    );
    let cid = s["confirm_id"].clone();
    let s = call(
        "POST",
        &format!("/v1/sessions/{id}/confirm"),
        &subscriber,
        Some(json!({"confirm_id": cid})),
    )
    .await?;
    println!("    {}", s["state"]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(16) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = call("GET", &format!("/v1/sessions/{id}"), &subscriber, None).await?;
        let st = &s["stats"];
        println!(
            "    {:>2} s  {}  video {} audio {} · sent {} frames, {} KiB, {} kbit/s · dropped {} · reconnects {}",
            t0.elapsed().as_secs(),
            s["state"].as_str().unwrap_or("?"),
            st["video_frames"],
            st["audio_frames"],
            st["frames_out"],
            st["bytes_sent"].as_u64().unwrap_or(0) / 1024,
            st["bitrate_bps"].as_u64().unwrap_or(0) / 1000,
            st["frames_dropped"],
            st["reconnects"]
        );
    }

    step(
        8,
        "Subscriber stops → the last frames leave → indicator off",
    );
    call(
        "POST",
        &format!("/v1/sessions/{id}/stop"),
        &subscriber,
        None,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = call("GET", &format!("/v1/sessions/{id}"), &subscriber, None).await?;
        if s["state"] == "ended" || Instant::now() > deadline {
            println!("    {} {}", s["state"], s["state_detail"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = call("GET", "/v1/audit?limit=1000", &admin, None).await?;
    let verify = call("GET", "/v1/audit/verify", &admin, None).await?;
    println!(
        "    audit log: {} entries, hash chain intact: {}",
        audit["entries"].as_array().map_or(0, Vec::len),
        verify["intact"]
    );
    drop(fabric);
    drop(run);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(receive);

    step(9, "What the private ingest recorded");
    let mut recs: Vec<PathBuf> = std::fs::read_dir(demo.join("recordings"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    recs.sort();
    let Some(rec) = recs.last() else {
        return Err("nothing was recorded".into());
    };
    println!("    {}", rec.display());
    match Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,profile,width,height,sample_rate,channels:format=duration,size",
            "-of",
            "compact",
        ])
        .arg(rec)
        .output()
    {
        Ok(out) if out.status.success() => print!(
            "{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ),
        _ => println!("    (install ffmpeg to see ffprobe's description)"),
    }
    Ok(())
}
