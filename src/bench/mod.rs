//! Load tools for the side-by-side benchmark (issue 5): a multi-stream paced sender, a
//! measuring RTMP sink, and the matching of the two into CPU, memory, latency and delivery
//! figures for the relay processes under test. Driven by `examples/bench.rs` and
//! `scripts/bench.sh`; nothing in the appliance binary uses this module.
//!
//! One run ([`run_load`]): the sink listens; the script starts the relays (any program) and
//! names their PIDs; the sender plays K copies of the feed; after a warm-up the relays' CPU
//! time is sampled at both ends of the measured window; the sink's receive stamps are matched
//! to the sender's send stamps (same process, same monotonic clock).

pub mod analyze;
pub mod feed;
pub mod procstat;
pub mod sender;
pub mod sink;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::monotonic_ns;
use crate::error::Result;
use analyze::{Sent, SentSpan, StreamResult, analyze, first_frame, quantile};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub file: PathBuf,
    pub label: String,
    pub streams: usize,
    /// UDP port of stream 0 on 127.0.0.1; stream i uses `udp_base + i`.
    pub udp_base: u16,
    /// The sink's TCP port (0 = any; the chosen one is written to `ready_file`).
    pub sink_port: u16,
    /// Written (atomically) with the sink's port once it listens.
    pub ready_file: PathBuf,
    /// Waited for: the PIDs of the relay processes, whitespace separated.
    pub pids_file: PathBuf,
    /// Spread of the streams' start times over one GOP.
    pub stagger: Duration,
    pub warmup: Duration,
    pub measure: Duration,
    /// Read after the run, if given: the relays' consent gates, one `<stream> <ns>` line each,
    /// on the system's CLOCK_MONOTONIC (see [`system_monotonic_offset_ns`]).
    pub gates_file: Option<PathBuf>,
}

/// CLOCK_MONOTONIC − [`monotonic_ns`] in this process (ns): adding it turns this process's
/// instants into the system clock another process can compare (`Instant` is CLOCK_MONOTONIC
/// on Linux).
pub fn system_monotonic_offset_ns() -> i64 {
    use nix::time::{ClockId, clock_gettime};
    let local = monotonic_ns();
    let sys = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    sys - i64::try_from(local).unwrap_or(i64::MAX)
}

/// One run's figures, one JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub label: String,
    pub streams: usize,
    pub window_s: f64,
    pub cpu_ms_per_stream_s: f64,
    /// From `/proc/PID/stat` (includes ended threads), as a cross-check.
    pub cpu_ms_per_stream_s_stat: f64,
    pub rss_kib_total: u64,
    pub rss_kib_per_process: Vec<u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Latency counted from the datagram that started the next video PES.
    pub latency_after_next_start_p50_ms: f64,
    pub latency_after_next_start_p99_ms: f64,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub dts_gaps: u64,
    pub streams_delivered: usize,
    pub streams_started_late: usize,
    pub relays_exited: bool,
    /// Every stream delivered every frame of the window, in order, from before the window.
    pub valid: bool,
    /// Confirm → first frame (streams with a gate and a keyframe after it): first video
    /// message at the sink − gate, and its excess over the wait for the first keyframe that
    /// began after the gate to be sent whole (target ≤ 50 ms).
    pub confirm_streams: usize,
    pub confirm_first_frame_p50_ms: f64,
    pub confirm_first_frame_max_ms: f64,
    pub confirm_excess_p50_ms: f64,
    pub confirm_excess_max_ms: f64,
    pub sender_max_late_ms: f64,
    pub sender_errors: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits (≤ `limit`) for a file to exist and hold something; returns its text.
fn wait_for_file(path: &std::path::Path, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && !t.trim().is_empty()
        {
            return Ok(t);
        }
        if Instant::now() > deadline {
            crate::bail!(Io, "bench: {} did not appear in time", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sleep_until(ns: u64) {
    let now = monotonic_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

/// One measured run (see the module doc).
pub fn run_load(opts: &LoadOptions) -> Result<LoadReport> {
    let data = std::fs::read(&opts.file)
        .map_err(|e| crate::err!(InvalidArgument, "cannot read {}: {e}", opts.file.display()))?;
    let feed = feed::Feed::from_ts(&data, 7)?;
    let k = opts.streams.max(1);
    let needed = opts.stagger + opts.warmup + opts.measure + Duration::from_millis(200);
    if needed.as_nanos() > u128::from(feed.duration_ns) {
        crate::bail!(
            InvalidArgument,
            "the feed lasts {:.1} s: stagger + warm-up + measure must fit in it",
            feed.duration_ns as f64 / 1e9
        );
    }
    let sink = sink::Sink::start(opts.sink_port, k)?;
    let tmp = opts.ready_file.with_extension("tmp");
    std::fs::write(&tmp, sink.addr.port().to_string())
        .and_then(|()| std::fs::rename(&tmp, &opts.ready_file))
        .map_err(|e| crate::err!(Io, "bench: write {}: {e}", opts.ready_file.display()))?;
    let pids: Vec<u32> = wait_for_file(&opts.pids_file, Duration::from_secs(120))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // Let the relays bind their sockets.
    std::thread::sleep(Duration::from_millis(500));
    let ports: Vec<SocketAddrV4> = (0..k)
        .map(|i| {
            let port = u16::try_from(usize::from(opts.udp_base) + i).unwrap_or(u16::MAX);
            SocketAddrV4::new([127, 0, 0, 1].into(), port)
        })
        .collect();
    let start_ns = monotonic_ns() + 50_000_000;
    let stagger_ns = u64::try_from(opts.stagger.as_nanos()).unwrap_or(0) / k as u64;
    let warm_ns = start_ns + u64::try_from((opts.stagger + opts.warmup).as_nanos()).unwrap_or(0);
    let end_ns = warm_ns + u64::try_from(opts.measure.as_nanos()).unwrap_or(0);
    let cfg = sender::SenderConfig {
        targets: ports,
        start_ns,
        stagger_ns,
        stop_ns: end_ns,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (feed, stop) = (feed.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-sender".into())
            .spawn(move || sender::run(&feed, &data, &cfg, &stop))
            .map_err(|e| crate::err!(Io, "bench: sender thread: {e}"))?
    };
    let loadavg_start = loadavg();
    sleep_until(warm_ns);
    let cpu0: Vec<Option<u64>> = pids.iter().map(|&p| procstat::cpu_ns(p)).collect();
    let ticks0: Vec<Option<u64>> = pids.iter().map(|&p| procstat::stat_ticks(p)).collect();
    let t0 = monotonic_ns();
    sleep_until(end_ns);
    let cpu1: Vec<Option<u64>> = pids.iter().map(|&p| procstat::cpu_ns(p)).collect();
    let ticks1: Vec<Option<u64>> = pids.iter().map(|&p| procstat::stat_ticks(p)).collect();
    let t1 = monotonic_ns();
    let rss: Vec<u64> = pids
        .iter()
        .map(|&p| procstat::rss_kib(p).unwrap_or(0))
        .collect();
    let loadavg_end = loadavg();
    let sent = sender
        .join()
        .map_err(|_| crate::err!(Internal, "bench: the sender panicked"))??;
    // Let the last frames arrive.
    std::thread::sleep(Duration::from_millis(1500));
    let window_s = (t1 - t0) as f64 / 1e9;
    let sum = |a: &[Option<u64>], b: &[Option<u64>]| -> Option<u64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| Some(y.as_ref()?.saturating_sub(*x.as_ref()?)))
            .sum()
    };
    let cpu = sum(&cpu0, &cpu1);
    let ticks = sum(&ticks0, &ticks1);
    let per_stream_s = k as f64 * window_s;
    let mut report = LoadReport {
        label: opts.label.clone(),
        streams: k,
        window_s,
        cpu_ms_per_stream_s: cpu.map_or(f64::NAN, |c| c as f64 / 1e6 / per_stream_s),
        cpu_ms_per_stream_s_stat: ticks.map_or(f64::NAN, |t| {
            t as f64 * 1000.0 / clock_ticks() / per_stream_s
        }),
        rss_kib_total: rss.iter().sum(),
        rss_kib_per_process: rss,
        relays_exited: cpu.is_none(),
        sender_max_late_ms: sent.max_late_ns as f64 / 1e6,
        sender_errors: sent.send_errors,
        loadavg_start,
        loadavg_end,
        ..Default::default()
    };
    // Frames whose successor started before the stop: a relay can know them complete.
    let to_ns = end_ns.saturating_sub(300_000_000);
    let (mut lat, mut lat_next) = (Vec::new(), Vec::new());
    let gates = read_gates(opts.gates_file.as_deref(), k);
    let (mut after_gate, mut excess) = (Vec::new(), Vec::new());
    for (i, times) in sent.streams.iter().enumerate() {
        let frames: Vec<Sent> = feed
            .frames
            .iter()
            .zip(times.last_packet_ns.iter().zip(&times.next_start_ns))
            .filter(|(_, (last, _))| **last > 0)
            .map(|(f, (&last, &next))| Sent {
                dts_ms: f.dts_90k / 90,
                key: f.key,
                last_packet_ns: last,
                next_start_ns: (next > 0).then_some(next),
            })
            .collect();
        let rx = sink.streams[i]
            .lock()
            .map(|s| s.video.clone())
            .unwrap_or_default();
        if i == 0
            && let Some(path) = std::env::var_os("BENCH_DUMP")
        {
            // Diagnosis: stream 0's send and receive stamps.
            let text = format!(
                "window {warm_ns} {to_ns}\ngate {:?} start {start_ns}\nsent {frames:?}\nrx {rx:?}\n",
                gates.first()
            );
            let _ = std::fs::write(path, text);
        }
        if let (Some(gate), Some(first)) = (gates.get(i).copied().flatten(), rx.first()) {
            // A frame's first packet is in the datagram that started its PES: the previous
            // frame's "next start", or the stream's start for the first frame.
            let spans: Vec<SentSpan> = feed
                .frames
                .iter()
                .enumerate()
                .map(|(j, f)| SentSpan {
                    key: f.key,
                    first_packet_ns: match j {
                        0 => start_ns + i as u64 * stagger_ns,
                        _ => times.next_start_ns.get(j - 1).copied().unwrap_or(0),
                    },
                    last_packet_ns: times.last_packet_ns.get(j).copied().unwrap_or(0),
                })
                .collect();
            if let Some(f) = first_frame(&spans, gate, first.recv_ns) {
                after_gate.push(f.after_gate_ns);
                excess.push(f.excess_ns);
                if let Some(path) = std::env::var_os("BENCH_CONFIRM_DUMP") {
                    // Diagnosis: per stream, the gate, the first frame's arrival and excess.
                    use std::io::Write as _;
                    if let Ok(mut file) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        let _ = writeln!(
                            file,
                            "{i} gate {gate} first_rx {} after_gate_ms {:.1} excess_ms {:.1} first_key {} key_first_packet_after_gate_ms {:?}",
                            first.recv_ns,
                            f.after_gate_ns as f64 / 1e6,
                            f.excess_ns as f64 / 1e6,
                            first.key,
                            spans
                                .iter()
                                .find(|x| x.key && x.first_packet_ns >= gate)
                                .map(|x| (x.first_packet_ns as f64 - gate as f64) / 1e6)
                        );
                    }
                }
            }
        }
        let r: StreamResult = analyze(&frames, &rx, warm_ns, to_ns);
        report.frames_expected += r.expected;
        report.frames_received += r.received;
        report.frames_lost += r.lost;
        report.dts_gaps += r.dts_gaps;
        if !r.started_in_time {
            report.streams_started_late += 1;
        }
        if r.started_in_time && r.lost == 0 && r.dts_gaps == 0 && r.expected > 0 {
            report.streams_delivered += 1;
        }
        lat.extend(r.latency_ns);
        lat_next.extend(
            r.latency_after_next_start_ns
                .iter()
                .map(|&v| u64::try_from(v.max(0)).unwrap_or(0)),
        );
    }
    let ms = |v: Option<u64>| v.map_or(f64::NAN, |x| x as f64 / 1e6);
    report.latency_p50_ms = ms(quantile(&mut lat, 0.5));
    report.latency_p99_ms = ms(quantile(&mut lat, 0.99));
    report.latency_max_ms = ms(quantile(&mut lat, 1.0));
    report.latency_after_next_start_p50_ms = ms(quantile(&mut lat_next, 0.5));
    report.latency_after_next_start_p99_ms = ms(quantile(&mut lat_next, 0.99));
    report.confirm_streams = after_gate.len();
    let ms_i = |v: &mut Vec<i64>, q: f64| {
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(rank).map_or(f64::NAN, |&x| x as f64 / 1e6)
    };
    report.confirm_first_frame_p50_ms = ms_i(&mut after_gate, 0.5);
    report.confirm_first_frame_max_ms = ms_i(&mut after_gate, 1.0);
    report.confirm_excess_p50_ms = ms_i(&mut excess, 0.5);
    report.confirm_excess_max_ms = ms_i(&mut excess, 1.0);
    report.valid = report.streams_delivered == k && !report.relays_exited;
    Ok(report)
}

/// The gates of `path` (`<stream> <CLOCK_MONOTONIC ns>` lines) on this process's clock, by
/// stream; none if there is no file.
fn read_gates(path: Option<&std::path::Path>, k: usize) -> Vec<Option<u64>> {
    let mut gates = vec![None; k];
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return gates;
    };
    let offset = system_monotonic_offset_ns();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if let (Some(Ok(i)), Some(Ok(sys))) = (
            f.next().map(str::parse::<usize>),
            f.next().map(str::parse::<i64>),
        ) && i < k
        {
            // A gate before this process's clock began (before any stream started) is 0.
            gates[i] = Some(u64::try_from(sys - offset).unwrap_or(0));
        }
    }
    gates
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ: 100 on Linux x86_64 and arm64).
fn clock_ticks() -> f64 {
    100.0
}
