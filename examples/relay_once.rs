//! Developer tool for measurements: one relay in its own process, for a fixed time.
//! Not part of the appliance binary (which never streams without consent).
//!
//! `ONAIR_STREAM_KEY=… relay_once --ingest 127.0.0.1:5000 --url rtmp://127.0.0.1:1935/live
//!  [--seconds 20] [--socket]` — the key comes from the environment, never argv.
//! Prints the relay's counters as one JSON line at the end.

use std::time::Duration;

use onair::egress::{Destination, EgressOptions, RtmpUrl, TlsOptions};
use onair::ingest::{IngestConfig, IngestMode};
use onair::relay::Relay;
use onair::secret::Secret;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ingest: std::net::SocketAddr = arg(&args, "--ingest")
        .ok_or("--ingest HOST:PORT")?
        .parse()?;
    let url = RtmpUrl::parse(&arg(&args, "--url").ok_or("--url rtmp[s]://…")?)?;
    let seconds: u64 = arg(&args, "--seconds").map_or(Ok(20), |s| s.parse())?;
    let key = std::env::var("ONAIR_STREAM_KEY").map_err(|_| "set ONAIR_STREAM_KEY")?;
    let ca = match std::env::var_os("ONAIR_CA_BUNDLE") {
        Some(p) => Some(std::fs::read(p)?),
        None => None,
    };
    let mut cfg = IngestConfig::unicast(ingest);
    if args.iter().any(|a| a == "--socket") {
        cfg.mode = IngestMode::Socket;
    }
    let dest = Destination {
        allow_plain_rtmp: !url.is_tls(),
        url,
        stream_key: Secret::new(key),
        tls: TlsOptions {
            ca_bundle_pem: ca,
            spki_sha256: None,
        },
        addr_policy: None,
    };
    let relay = Relay::start(&cfg, vec![(dest, EgressOptions::default())], 0)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let core = relay.core_stats();
    let e = relay.egress_stats().remove(0);
    for r in relay.stop().await {
        r?;
    }
    println!(
        "{{\"video_frames\":{},\"audio_frames\":{},\"frames_in\":{},\"frames_out\":{},\"frames_dropped\":{},\"bytes_sent\":{},\"reconnects\":{},\"cc_errors\":{},\"h264_errors\":{}}}",
        core.video_frames,
        core.audio_frames,
        e.frames_in,
        e.frames_out,
        e.frames_dropped,
        e.bytes_sent,
        e.reconnects,
        core.demux.cc_errors,
        core.h264_errors
    );
    Ok(())
}
