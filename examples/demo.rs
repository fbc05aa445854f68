//! The data-plane demo, all on loopback: the bundled clip played by the fabric simulator →
//! an onair relay (io_uring ingest, media core, RTMP egress) → `onair receive` recording to
//! ./var/onair/demo/. Running this program is the explicit start: nothing streams on its own.
//!
//! `cargo run --release --example demo [-- --loops N]` (default 2 passes of the 10 s clip).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use onair::egress::{Destination, EgressOptions, RtmpUrl, TlsOptions};
use onair::fabric_sim::{self, SimOptions};
use onair::ingest::IngestConfig;
use onair::receive::config::{ReceiverConfig, StreamConfig};
use onair::relay::Relay;
use onair::secret::Secret;

fn random_key() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        b = [7u8; 16]; // loopback demo only
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn loops_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--loops")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let key = Secret::new(random_key());

    // 1. The private ingest (what an enterprise runs on its own network).
    let mut rx_cfg = ReceiverConfig::new(
        root.join("var/onair/demo"),
        vec![StreamConfig::new("demo", "live", key.clone())],
    );
    rx_cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let rx = onair::receive::start(rx_cfg).await?;
    println!("onair receive listening on rtmp://{}/live", rx.local_addr());

    // 2. The relay: fabric ingest on loopback → RTMP to the receiver (plain RTMP is allowed
    //    here explicitly: loopback, private ingest).
    let ingest = IngestConfig::unicast(SocketAddr::from(([127, 0, 0, 1], 0)));
    let dest = Destination {
        url: RtmpUrl::parse(&format!("rtmp://127.0.0.1:{}/live", rx.local_addr().port()))?,
        stream_key: key,
        tls: TlsOptions::default(),
        allow_plain_rtmp: true,
        addr_policy: None,
    };
    let relay = Relay::start(&ingest, vec![(dest, EgressOptions::default())], 0)?;
    let ingest_addr = relay.ingest().map(|i| i.local_addr()).ok_or("no ingest")?;
    println!(
        "relay: ingest udp://{ingest_addr} via {:?}",
        relay.ingest().map(|i| i.backend())
    );

    // 3. The fabric: plays the bundled clip, paced by its PCR.
    let sim = SimOptions {
        file: root.join(fabric_sim::DEFAULT_CLIP),
        to: ingest_addr,
        packets_per_datagram: 7,
        loops: Some(loops_arg()),
        rtp: false,
        stop: None,
    };
    let sim_thread = std::thread::spawn(move || fabric_sim::run(&sim));
    while !sim_thread.is_finished() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let e = &relay.egress_stats()[0];
        let c = relay.core_stats();
        println!(
            "live: video {} audio {} frames | sent {} frames, {} KiB, {} kbit/s | dropped {} | reconnects {} | A/V offset {} ms",
            c.video_frames,
            c.audio_frames,
            e.frames_out,
            e.bytes_sent / 1024,
            e.bitrate_bps / 1000,
            e.frames_dropped,
            e.reconnects,
            e.av_offset_ms
        );
    }
    sim_thread.join().map_err(|_| "fabric-sim panicked")??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in relay.stop().await {
        r?;
    }
    let stats = rx.stop().await;
    for f in &stats.files_completed {
        println!("recorded: {}", f.path.display());
    }
    if stats.files_completed.is_empty() {
        return Err("nothing was recorded".into());
    }
    Ok(())
}
