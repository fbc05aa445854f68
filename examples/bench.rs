//! Developer tool for the side-by-side benchmark (scripts/bench.sh). Not part of the appliance
//! binary, which never streams without consent.
//!
//! `bench load --file F.ts --label L --streams K --udp-base P --ready-file R --pids-file PF
//!  [--sink-port 0] [--stagger-ms 2000] [--warmup-s 6] [--measure-s 15] [--require-delivery]
//!  [--gates-file G]`
//!   the measuring sink + the paced K-stream sender; prints one JSON line of figures (and a
//!   summary on stderr); with `--require-delivery`, fails unless every stream delivered.
//! `bench relays --streams K --udp-base P --url rtmp(s)://127.0.0.1:S/live [--socket] [--seconds N]
//!  [--ca CA.pem] [--gate-delay-ms D --gate-spread-ms S] [--gates-file G] [--start-at-gate]`
//!   K onair relays in this one process (stream i: UDP P+i → `<url>/bench-i`), the way
//!   `onair run` hosts them (tokio, 2 workers); runs until killed or N seconds passed, then
//!   prints one JSON line per relay of its counters on stderr, and exits.
//!   `--ca`: the CA bundle of an `rtmps://` URL. Relay i's consent gate is D ms after start plus
//!   a fixed scramble of i in [0, S) ms; `--gates-file` gets them (`<i> <CLOCK_MONOTONIC ns>`)
//!   for `bench load --gates-file`, which measures confirm → first frame. `--start-at-gate`:
//!   each relay is started at its gate (as after a confirm), not at once and gated.
//!   The stream keys are the public names `bench-<i>` the sink expects: not secrets.
//!   `--stage recv|core` (cost breakdown; nothing is delivered): `recv` receives the datagrams
//!   and drops them, `core` also runs the media core and drops its frames.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use onair::bench::{LoadOptions, run_load, sink::stream_name, system_monotonic_offset_ns};
use onair::clock::monotonic_ns;
use onair::egress::{Destination, EgressOptions, RtmpUrl, TlsOptions};
use onair::ingest::DatagramSink;
use onair::ingest::{IngestConfig, IngestMode};
use onair::media::core::{MediaCore, MediaFrame};
use onair::relay::Relay;
use onair::secret::Secret;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Res<T> {
    match arg(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name} {v:?} is not a number").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("load") => load(&args),
        Some("relays") => relays(&args),
        _ => Err("usage: bench load … | bench relays … (see examples/bench.rs)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(args: &[String]) -> Res<()> {
    let need = |n: &str| arg(args, n).ok_or_else(|| format!("{n} is required"));
    let opts = LoadOptions {
        file: PathBuf::from(need("--file")?),
        label: arg(args, "--label").unwrap_or_else(|| "relay".into()),
        streams: num(args, "--streams", 1usize)?,
        udp_base: num(args, "--udp-base", 0u16)?,
        sink_port: num(args, "--sink-port", 0u16)?,
        ready_file: PathBuf::from(need("--ready-file")?),
        pids_file: PathBuf::from(need("--pids-file")?),
        stagger: Duration::from_millis(num(args, "--stagger-ms", 2000u64)?),
        warmup: Duration::from_secs_f64(num(args, "--warmup-s", 6.0f64)?),
        measure: Duration::from_secs_f64(num(args, "--measure-s", 15.0f64)?),
        gates_file: arg(args, "--gates-file").map(PathBuf::from),
    };
    if opts.udp_base == 0 {
        return Err("--udp-base is required".into());
    }
    let report = run_load(&opts)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "bench: {} K={}: delivered {}/{} frames in {}/{} streams, lost {}, DTS gaps {}",
        report.label,
        report.streams,
        report.frames_received,
        report.frames_expected,
        report.streams_delivered,
        report.streams,
        report.frames_lost,
        report.dts_gaps
    );
    if args.iter().any(|a| a == "--require-delivery") && !report.valid {
        return Err("not every stream delivered every frame".into());
    }
    Ok(())
}

fn relays(args: &[String]) -> Res<()> {
    let k: usize = num(args, "--streams", 1)?;
    let base: u16 = num(args, "--udp-base", 0)?;
    let seconds: u64 = num(args, "--seconds", 3600)?;
    let url = arg(args, "--url").ok_or("--url rtmp://…/app is required")?;
    let socket = args.iter().any(|a| a == "--socket");
    let ca_bundle_pem = match arg(args, "--ca") {
        Some(p) => Some(std::fs::read(&p).map_err(|e| format!("--ca {p}: {e}"))?),
        None => None,
    };
    let gate_delay = Duration::from_millis(num(args, "--gate-delay-ms", 0u64)?);
    let gate_spread_ms: u64 = num(args, "--gate-spread-ms", 0)?;
    let gates_file = arg(args, "--gates-file");
    let start_at_gate = args.iter().any(|a| a == "--start-at-gate");
    let stage = arg(args, "--stage").unwrap_or_else(|| "full".into());
    if !["full", "recv", "core"].contains(&stage.as_str()) {
        return Err(format!("--stage {stage}: expected full, recv or core").into());
    }
    if base == 0 {
        return Err("--udp-base is required".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Relay i's consent gate: `--gate-delay-ms` after now, plus a spread over
        // `--gate-spread-ms` (a fixed scramble of i, so gates fall anywhere in a GOP).
        let t0 = monotonic_ns();
        let gate = |i: usize| {
            let spread = match gate_spread_ms {
                0 => 0,
                s => (i as u64).wrapping_mul(2_654_435_761) % s,
            };
            t0 + u64::try_from(gate_delay.as_nanos()).unwrap_or(0) + spread * 1_000_000
        };
        if let Some(path) = &gates_file {
            let offset = system_monotonic_offset_ns();
            let text: String = (0..k)
                .map(|i| format!("{i} {}\n", i64::try_from(gate(i)).unwrap_or(i64::MAX) + offset))
                .collect();
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))?;
        }
        // `--start-at-gate`: each relay starts (binds, connects its egress) at its gate, as the
        // supervisor starts one at confirm; otherwise all start now and wait for their gate.
        let mut order: Vec<usize> = (0..k).collect();
        if start_at_gate {
            order.sort_by_key(|&i| gate(i));
        }
        let mut relays = Vec::with_capacity(k);
        let mut partial = Vec::new();
        for i in order {
            if start_at_gate {
                let now = monotonic_ns();
                if gate(i) > now {
                    tokio::time::sleep(Duration::from_nanos(gate(i) - now)).await;
                }
            }
            let port = u16::try_from(usize::from(base) + i)?;
            let mut cfg = IngestConfig::unicast(([127, 0, 0, 1], port).into());
            if socket {
                cfg.mode = IngestMode::Socket;
            }
            let url = RtmpUrl::parse(&url)?;
            let dest = Destination {
                allow_plain_rtmp: !url.is_tls(),
                url,
                stream_key: Secret::new(stream_name(i)),
                tls: TlsOptions {
                    ca_bundle_pem: ca_bundle_pem.clone(),
                    spki_sha256: None,
                },
                addr_policy: None,
            };
            if stage != "full" {
                let sink = StageSink {
                    core: (stage == "core").then(|| MediaCore::with_gate(gate(i))),
                    frames: Vec::new(),
                };
                partial.push(onair::ingest::start(&cfg, sink)?);
                continue;
            }
            let relay = Relay::start(&cfg, vec![(dest, EgressOptions::default())], gate(i))?;
            relays.push((i, relay));
        }
        relays.sort_by_key(|(i, _)| *i);
        let _partial = partial;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        for (i, r) in &relays {
            let core = r.core_stats();
            let e = r.egress_stats();
            let out = e.first();
            eprintln!(
                "{{\"relay\":{i},\"video_frames\":{},\"audio_frames\":{},\"frames_in\":{},\"frames_out\":{},\"frames_dropped\":{},\"reconnects\":{},\"cc_errors\":{},\"dropped_waiting_keyframe\":{},\"datagrams\":{},\"rebases\":{}}}",
                core.video_frames,
                core.audio_frames,
                out.map_or(0, |s| s.frames_in),
                out.map_or(0, |s| s.frames_out),
                out.map_or(0, |s| s.frames_dropped),
                out.map_or(0, |s| s.reconnects),
                core.demux.cc_errors,
                core.dropped_waiting_keyframe,
                core.datagrams,
                core.timeline.rebases
            );
        }
        if let Some(s) = onair::ingest::shared_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            eprintln!(
                "{{\"ingest_wakeups\":{},\"ingest_completions\":{},\"ingest_buffers\":{}}}",
                s.wakeups.load(Relaxed),
                s.completions.load(Relaxed),
                s.buffers.load(Relaxed)
            );
        }
        // No graceful stop: the sink is gone by now, and the figures were taken.
        std::process::exit(0);
    })
}

/// `--stage recv|core`: receives (and runs the media core), delivers nothing.
struct StageSink {
    core: Option<MediaCore>,
    frames: Vec<MediaFrame>,
}

impl DatagramSink for StageSink {
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        if let Some(core) = &mut self.core {
            core.push_datagram(data, rx_ns, &mut self.frames);
            self.frames.clear();
        }
    }
}
