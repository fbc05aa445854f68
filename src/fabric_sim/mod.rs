//! `onair fabric-sim`: plays an MPEG-TS file over UDP as the conferencing fabric would, paced by
//! its PCR in real time, looping. At each loop the continuity counters are rewritten to stay
//! continuous and the discontinuity_indicator is set on the first packet of each PID that has an
//! adaptation field, since the timestamps jump back to the start of the file.
//!
//! [`Schedule`] (pure) computes when each packet is due; [`run`] sends.

pub mod indicator;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::media::ts::{SYNC_BYTE, TS_PACKET_LEN};

/// Send offsets (ns from the start of one pass) for every packet of a TS file.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub offsets_ns: Vec<u64>,
    /// Length of one pass: last PCR − first PCR plus one mean PCR interval.
    pub pass_ns: u64,
}

/// The PCR (27 MHz) carried by a packet, if any.
pub fn packet_pcr_27m(p: &[u8]) -> Option<u64> {
    if p.len() < 12 || p[0] != SYNC_BYTE || p[3] & 0x20 == 0 || p[4] < 7 || p[5] & 0x10 == 0 {
        return None;
    }
    let base = (u64::from(p[6]) << 25)
        | (u64::from(p[7]) << 17)
        | (u64::from(p[8]) << 9)
        | (u64::from(p[9]) << 1)
        | (u64::from(p[10]) >> 7);
    let ext = (u64::from(p[10] & 1) << 8) | u64::from(p[11]);
    Some(base * 300 + ext)
}

impl Schedule {
    /// Interpolates packet times linearly between PCRs (of the first PCR PID seen). Packets
    /// before the first PCR are due at 0; after the last, at the last PCR's rate.
    pub fn from_ts(data: &[u8]) -> Result<Schedule> {
        if data.len() < TS_PACKET_LEN || !data.len().is_multiple_of(TS_PACKET_LEN) {
            crate::bail!(
                InvalidArgument,
                "not a TS file: size is not a multiple of 188 bytes"
            );
        }
        let packets: Vec<&[u8]> = data.chunks_exact(TS_PACKET_LEN).collect();
        if packets.iter().any(|p| p[0] != SYNC_BYTE) {
            crate::bail!(
                InvalidArgument,
                "not a TS file: lost sync (packets must start with 0x47)"
            );
        }
        let mut pcr_pid = None;
        let mut points: Vec<(usize, u64)> = Vec::new();
        let wrap = (1u64 << 33) * 300;
        let (mut prev_raw, mut wraps) = (None::<u64>, 0u64);
        for (i, p) in packets.iter().enumerate() {
            let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
            let Some(pcr) = packet_pcr_27m(p) else {
                continue;
            };
            if *pcr_pid.get_or_insert(pid) != pid {
                continue;
            }
            // Unwrap the 33-bit base so times only grow.
            if prev_raw.is_some_and(|prev| pcr < prev && prev - pcr > wrap / 2) {
                wraps += 1;
            }
            prev_raw = Some(pcr);
            points.push((i, wraps * wrap + pcr));
        }
        if points.len() < 2 {
            crate::bail!(
                InvalidArgument,
                "TS file has fewer than two PCRs: cannot pace it"
            );
        }
        let first = points[0].1;
        let to_ns = |pcr: u64| (pcr.saturating_sub(first)) * 1000 / 27;
        let mut offsets_ns = vec![0u64; packets.len()];
        for w in points.windows(2) {
            let ((i0, p0), (i1, p1)) = (w[0], w[1]);
            let (t0, t1) = (to_ns(p0), to_ns(p1.max(p0)));
            for (k, slot) in offsets_ns[i0..i1].iter_mut().enumerate() {
                *slot = t0 + (t1 - t0) * k as u64 / (i1 - i0) as u64;
            }
        }
        let (li, lp) = points[points.len() - 1];
        let (fi, _) = points[0];
        let total = to_ns(lp);
        let ns_per_packet = total / (li - fi).max(1) as u64;
        for (k, slot) in offsets_ns[li..].iter_mut().enumerate() {
            *slot = total + ns_per_packet * k as u64;
        }
        let pass_ns = total + ns_per_packet * (packets.len() - li) as u64;
        Ok(Schedule {
            offsets_ns,
            pass_ns,
        })
    }
}

/// Rewrites one pass of packets for loop `n`: continuity counters continue from `cc`, and on
/// loops after the first the discontinuity_indicator is set on each PID's first packet that
/// carries an adaptation field.
pub fn prepare_pass(data: &[u8], n: u64, cc: &mut [Option<u8>; 8192]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut marked = vec![false; 8192];
    for p in out.chunks_exact_mut(TS_PACKET_LEN) {
        let pid = usize::from(u16::from_be_bytes([p[1] & 0x1F, p[2]]));
        let has_payload = p[3] & 0x10 != 0;
        let has_af = p[3] & 0x20 != 0 && p[4] > 0;
        if n > 0 && !marked[pid] && has_af {
            p[5] |= 0x80;
            marked[pid] = true;
        }
        if pid == 0x1FFF {
            continue;
        }
        let next = match cc[pid] {
            Some(c) if has_payload => (c + 1) & 0x0F,
            Some(c) => c,
            None => p[3] & 0x0F,
        };
        p[3] = (p[3] & 0xF0) | next;
        cc[pid] = Some(next);
    }
    out
}

/// Options of `onair fabric-sim`.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub file: PathBuf,
    pub to: SocketAddr,
    /// TS packets per datagram (1..=7). Default 7.
    pub packets_per_datagram: usize,
    /// Number of passes; `None` loops forever.
    pub loops: Option<u64>,
    /// Wrap datagrams in RTP (RFC 2250, PT 33).
    pub rtp: bool,
    /// Set to end the playback early (checked before every datagram).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Builds the 12-byte RTP header for PT 33 (90 kHz timestamp from the send offset).
pub fn rtp_header(seq: u16, offset_ns: u64, ssrc: u32) -> [u8; 12] {
    let ts = ((offset_ns / 1000) * 9 / 100) as u32;
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = crate::media::rtp::PT_MP2T;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

/// Plays the file. Blocks; returns after `loops` passes (never, when looping forever).
pub fn run(opts: &SimOptions) -> Result<()> {
    let data = std::fs::read(&opts.file)
        .map_err(|e| crate::err!(InvalidArgument, "cannot read {}: {e}", opts.file.display()))?;
    let schedule = Schedule::from_ts(&data)?;
    let per = opts.packets_per_datagram.clamp(1, 7);
    let sock = UdpSocket::bind(if opts.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .map_err(|e| crate::err!(Io, "fabric-sim: bind: {e}"))?;
    let start = Instant::now();
    let mut cc = [None; 8192];
    let mut seq: u16 = 0;
    let mut n = 0u64;
    let mut dgram = Vec::with_capacity(12 + per * TS_PACKET_LEN);
    while opts.loops.is_none_or(|l| n < l) {
        let pass = prepare_pass(&data, n, &mut cc);
        let pass_start_ns = n * schedule.pass_ns;
        for (i, chunk) in pass.chunks(per * TS_PACKET_LEN).enumerate() {
            if opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            {
                return Ok(());
            }
            let due_ns = pass_start_ns + schedule.offsets_ns[i * per];
            let due = start + Duration::from_nanos(due_ns);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            dgram.clear();
            if opts.rtp {
                dgram.extend_from_slice(&rtp_header(seq, due_ns, 0x0A1B_2C3D));
                seq = seq.wrapping_add(1);
            }
            dgram.extend_from_slice(chunk);
            if let Err(e) = sock.send_to(&dgram, opts.to) {
                // A fabric that keeps sending: a missing receiver is not fatal.
                tracing::debug!(error = %e, "fabric-sim: send failed");
            }
        }
        n += 1;
        tracing::info!(pass = n, "fabric-sim: pass done");
    }
    Ok(())
}

const USAGE: &str = "usage: onair fabric-sim --to HOST:PORT [--file FILE.ts] [--loops N] [--packets-per-datagram 1..7] [--rtp]
                        [--api URL --token-file F [--ca FILE | --pin SHA256 | --insecure-loopback]]
  Plays FILE (default: the bundled sample clip) over UDP, paced by its PCR, looping forever
  unless --loops is given. With --api it also plays the fabric's indicator side: it subscribes
  to the appliance's indicator events, shows them, and acknowledges (token from --token-file
  or ONAIR_FABRIC_TOKEN, never from the command line).";

/// The bundled sample clip (H.264 High with B-frames + AAC, ~10 s), made by scripts/make-sample.sh.
pub const DEFAULT_CLIP: &str = "assets/sample.ts";

/// `onair fabric-sim …`
pub fn cli_main(args: &[String]) -> std::process::ExitCode {
    let (media_args, api) = match split_api_args(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("onair fabric-sim: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let _indicator = api.map(start_indicator);
    match parse_args(&media_args).and_then(|o| run(&o)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onair fabric-sim: {e}");
            if e.kind() == crate::error::ErrorKind::InvalidArgument {
                eprintln!("{USAGE}");
            }
            std::process::ExitCode::from(2)
        }
    }
}

/// Separates the indicator options (`--api`, `--token-file`, trust) from the media ones.
fn split_api_args(args: &[String]) -> Result<(Vec<String>, Option<indicator::IndicatorConfig>)> {
    let mut media = Vec::new();
    let (mut url, mut token_file, mut trust) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| crate::err!(InvalidArgument, "{a} needs a value"))
        };
        match a.as_str() {
            "--api" => url = Some(value()?),
            "--token-file" => token_file = Some(value()?),
            "--ca" => trust = Some(crate::ctl::Trust::Ca(PathBuf::from(value()?))),
            // The device certificate's SHA-256, as the console and `onair ctl --pin` show it.
            "--pin" => {
                trust = Some(crate::ctl::Trust::Pin(
                    crate::api::tls::require_fingerprint(&value()?)?,
                ))
            }
            "--insecure-loopback" => trust = Some(crate::ctl::Trust::InsecureLoopback),
            "--token" => crate::bail!(
                InvalidArgument,
                "tokens are never taken from the command line: use --token-file or ONAIR_FABRIC_TOKEN"
            ),
            _ => media.push(a.clone()),
        }
    }
    let Some(url) = url else {
        return Ok((media, None));
    };
    let token = match (token_file, std::env::var("ONAIR_FABRIC_TOKEN").ok()) {
        (Some(f), _) => std::fs::read_to_string(&f)
            .map_err(|e| crate::err!(InvalidArgument, "cannot read {f}: {e}"))?
            .trim()
            .to_string(),
        (None, Some(t)) => t,
        (None, None) => crate::bail!(
            InvalidArgument,
            "--api needs a fabric token (--token-file or ONAIR_FABRIC_TOKEN)"
        ),
    };
    let cfg = indicator::IndicatorConfig {
        target: crate::ctl::parse_url(&url)?,
        trust: trust.unwrap_or(crate::ctl::Trust::WebPki),
        token: crate::secret::Secret::new(token),
        heartbeat: Duration::from_secs(1),
    };
    Ok((media, Some(cfg)))
}

/// Runs the indicator side on its own thread and runtime, for the life of the process.
fn start_indicator(cfg: indicator::IndicatorConfig) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("onair fabric-sim: cannot start the indicator runtime");
            return;
        };
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        rt.block_on(indicator::run(cfg, Default::default(), stop_rx));
    })
}

fn parse_args(args: &[String]) -> Result<SimOptions> {
    let mut opts = SimOptions {
        file: PathBuf::from(DEFAULT_CLIP),
        to: SocketAddr::from(([127, 0, 0, 1], 5000)),
        packets_per_datagram: 7,
        loops: None,
        rtp: false,
        stop: None,
    };
    let mut to = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| crate::err!(InvalidArgument, "{name} needs a value"))
        };
        match a.as_str() {
            "--to" => {
                let v = value("--to")?;
                to = Some(
                    std::net::ToSocketAddrs::to_socket_addrs(&v)
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| {
                            crate::err!(InvalidArgument, "--to {v:?} is not HOST:PORT")
                        })?,
                );
            }
            "--file" => opts.file = PathBuf::from(value("--file")?),
            "--loops" => {
                let v = value("--loops")?;
                opts.loops =
                    Some(v.parse().map_err(|_| {
                        crate::err!(InvalidArgument, "--loops {v:?} is not a number")
                    })?);
            }
            "--packets-per-datagram" => {
                let v = value("--packets-per-datagram")?;
                opts.packets_per_datagram = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=7).contains(n))
                    .ok_or_else(|| {
                        crate::err!(InvalidArgument, "--packets-per-datagram must be 1..7")
                    })?;
            }
            "--rtp" => opts.rtp = true,
            "-h" | "--help" => crate::bail!(InvalidArgument, "help"),
            other => crate::bail!(InvalidArgument, "unknown argument {other:?}"),
        }
    }
    opts.to = to.ok_or_else(|| crate::err!(InvalidArgument, "--to is required"))?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, cc: u8, pcr_27m: Option<u64>) -> Vec<u8> {
        let mut p = vec![0xFFu8; TS_PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (pid >> 8) as u8 & 0x1F;
        p[2] = pid as u8;
        match pcr_27m {
            Some(pcr) => {
                p[3] = 0x30 | cc;
                p[4] = 7;
                p[5] = 0x10;
                let base = pcr / 300;
                let ext = pcr % 300;
                p[6] = (base >> 25) as u8;
                p[7] = (base >> 17) as u8;
                p[8] = (base >> 9) as u8;
                p[9] = (base >> 1) as u8;
                p[10] = ((base & 1) << 7) as u8 | 0x7E | ((ext >> 8) as u8 & 1);
                p[11] = ext as u8;
            }
            None => p[3] = 0x10 | cc,
        }
        p
    }

    #[test]
    fn pcr_roundtrip() {
        let p = packet(256, 0, Some(123_456_789));
        assert_eq!(packet_pcr_27m(&p), Some(123_456_789));
        assert_eq!(packet_pcr_27m(&packet(256, 0, None)), None);
    }

    #[test]
    fn schedule_interpolates_between_pcrs() {
        let mut data = Vec::new();
        // PCR every 4 packets, 40 ms apart (1_080_000 ticks of 27 MHz).
        for k in 0..3u64 {
            data.extend(packet(256, 0, Some(27_000_000 + k * 1_080_000)));
            for _ in 0..3 {
                data.extend(packet(257, 0, None));
            }
        }
        let s = Schedule::from_ts(&data).expect("schedule");
        assert_eq!(s.offsets_ns[0], 0);
        assert_eq!(s.offsets_ns[2], 20_000_000);
        assert_eq!(s.offsets_ns[4], 40_000_000);
        assert_eq!(s.offsets_ns[8], 80_000_000);
        assert_eq!(s.offsets_ns[11], 110_000_000);
        assert_eq!(s.pass_ns, 120_000_000);
    }

    #[test]
    fn schedule_refuses_bad_files() {
        assert!(Schedule::from_ts(&[0u8; 100]).is_err());
        assert!(Schedule::from_ts(&[0u8; 188]).is_err());
        assert!(Schedule::from_ts(&packet(256, 0, None)).is_err(), "no PCR");
    }

    #[test]
    fn loops_keep_cc_continuous_and_flag_discontinuity() {
        let mut data = packet(256, 5, Some(0));
        data.extend(packet(257, 9, None));
        data.extend(packet(256, 6, Some(27_000)));
        let mut cc = [None; 8192];
        let first = prepare_pass(&data, 0, &mut cc);
        let second = prepare_pass(&data, 1, &mut cc);
        let ccs = |d: &[u8]| d.chunks(188).map(|p| p[3] & 0x0F).collect::<Vec<_>>();
        assert_eq!(ccs(&first), vec![5, 9, 6]);
        assert_eq!(ccs(&second), vec![7, 10, 8]);
        assert_eq!(first[5] & 0x80, 0);
        assert_eq!(second[5] & 0x80, 0x80, "first PCR packet of loop 2 flagged");
        assert_eq!(
            second[188 * 2 + 5] & 0x80,
            0,
            "only the first packet of the PID"
        );
    }

    #[test]
    fn pin_takes_the_fingerprint_as_ctl_does() {
        // The console prints the device certificate's fingerprint with colons; `onair ctl
        // --pin` takes that form, and so must the fabric's side (it used to take bare hex only).
        let dir = std::env::temp_dir().join(format!("onair-fabric-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("fabric.token");
        std::fs::write(&token, "onair_test\n").expect("token");
        let trust = |pin: &str| {
            let args: Vec<String> = [
                "--to",
                "127.0.0.1:5000",
                "--api",
                "https://127.0.0.1:8443",
                "--token-file",
                &token.display().to_string(),
                "--pin",
                pin,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match split_api_args(&args) {
                Ok((media, Some(c))) => {
                    assert_eq!(media, ["--to", "127.0.0.1:5000"]);
                    Some(c.trust)
                }
                _ => None,
            }
        };
        let fp = "56:30:EE:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
        let with_colons = trust(fp).expect("the colon form, as the console prints it");
        assert_eq!(
            Some(with_colons),
            trust(&fp.replace(':', "").to_lowercase())
        );
        assert_eq!(trust("56:30"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rtp_header_fields() {
        let h = rtp_header(7, 1_000_000_000, 1);
        assert_eq!(h[0], 0x80);
        assert_eq!(h[1], 33);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 7);
        assert_eq!(u32::from_be_bytes([h[4], h[5], h[6], h[7]]), 90_000);
    }
}
