//! Source clips for the fault scenarios (made once with ffmpeg, cached under target/), a
//! fabric-sim player, and the analysis of a recording against its sources.
//!
//! Every video frame of a source is known by the hash of its decoded picture and by the index
//! of the datagram that carries the start of its PES (fabric-sim sends 7 TS packets per
//! datagram). The impairment relay counts datagrams the same way, so a recorded frame maps to
//! a position in the feed, and "time to recover" is measured in the feed's own (PCR) time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::common::{audio_packet_hashes, packet_dts_ms, video_frame_hashes};

pub const PACKETS_PER_DATAGRAM: usize = 7;
pub const FPS: u32 = 25;

pub struct Source {
    pub path: PathBuf,
    /// Send offset of each datagram from the start of the feed (ns).
    pub offsets_ns: Vec<u64>,
    /// Decoded-frame hash → (presentation index, datagram index of the PES start).
    pub frames: HashMap<String, (usize, u64)>,
    pub video_frames: usize,
    pub audio_packets: usize,
}

/// What a clip looks like: `testsrc2` or `testsrc`, seconds, and the PIDs to use.
pub struct ClipSpec {
    pub name: &'static str,
    pub pattern: &'static str,
    pub seconds: u32,
    pub video_pid: u16,
    pub service_id: u16,
    pub pmt_pid: u16,
}

/// The main clip: 12 s 320x240@25 H.264 High with B-frames, 1 s GOP, AAC 48 kHz stereo.
pub const MAIN: ClipSpec = ClipSpec {
    name: "main",
    pattern: "testsrc2",
    seconds: 12,
    video_pid: 0x100,
    service_id: 1,
    pmt_pid: 0x1000,
};

/// The restarted source: other picture, other program number, PMT PID and stream PIDs; its
/// timestamps start again near zero.
pub const RESTARTED: ClipSpec = ClipSpec {
    name: "restarted",
    pattern: "testsrc",
    seconds: 6,
    video_pid: 0x200,
    service_id: 7,
    pmt_pid: 0x1100,
};

fn make_clip(spec: &ClipSpec, path: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!("{}=size=320x240:rate={FPS}", spec.pattern))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            &spec.seconds.to_string(),
            "-map",
            "0:v",
            "-map",
            "1:a",
        ])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-preset",
            "veryfast",
        ])
        .args(["-pix_fmt", "yuv420p", "-g", &FPS.to_string(), "-bf", "2"])
        .args(["-threads", "1", "-c:a", "aac", "-ac", "2", "-ar", "48000"])
        .args(["-streamid", &format!("0:{}", spec.video_pid)])
        .args(["-streamid", &format!("1:{}", spec.video_pid + 1)])
        .args(["-mpegts_pmt_start_pid", &spec.pmt_pid.to_string()])
        .args(["-mpegts_service_id", &spec.service_id.to_string()])
        .args(["-f", "mpegts"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not make the {} clip",
        spec.name
    );
}

/// (datagram index, PTS) of every video PES start, in file order.
fn video_pes_starts(ts: &[u8], video_pid: u16) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, p) in ts.chunks_exact(188).enumerate() {
        let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
        if pid != video_pid || p[1] & 0x40 == 0 || p[3] & 0x10 == 0 {
            continue;
        }
        let start = if p[3] & 0x20 != 0 {
            5 + usize::from(p[4])
        } else {
            4
        };
        let pes = &p[start.min(188)..];
        if pes.len() < 14 || pes[..3] != [0, 0, 1] || pes[7] & 0x80 == 0 {
            continue;
        }
        let b = &pes[9..14];
        let pts = (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1);
        out.push(((i / PACKETS_PER_DATAGRAM) as u64, pts));
    }
    out
}

impl Source {
    /// Makes (or reuses) the clip in `cache` and indexes it.
    pub fn get(spec: &ClipSpec, cache: &Path) -> Source {
        std::fs::create_dir_all(cache).expect("cache dir");
        let path = cache.join(format!("{}_{}s_v3.ts", spec.name, spec.seconds));
        if !path.exists() {
            let tmp = path.with_extension("tmp.ts");
            make_clip(spec, &tmp);
            std::fs::rename(&tmp, &path).expect("rename clip");
        }
        let data = std::fs::read(&path).expect("read clip");
        let sched = onair::fabric_sim::Schedule::from_ts(&data).expect("schedule");
        let offsets_ns: Vec<u64> = sched
            .offsets_ns
            .iter()
            .step_by(PACKETS_PER_DATAGRAM)
            .copied()
            .collect();
        let mut pes = video_pes_starts(&data, spec.video_pid);
        pes.sort_by_key(|&(_, pts)| pts);
        let hashes = video_frame_hashes(&path);
        assert_eq!(hashes.len(), pes.len(), "one PES per decoded frame");
        let frames: HashMap<String, (usize, u64)> = hashes
            .into_iter()
            .zip(pes)
            .enumerate()
            .map(|(k, (h, (dgram, _)))| (h, (k, dgram)))
            .collect();
        assert_eq!(frames.len(), spec.seconds as usize * FPS as usize);
        Source {
            audio_packets: audio_packet_hashes(&path, true).len(),
            video_frames: frames.len(),
            frames,
            offsets_ns,
            path,
        }
    }

    /// The first datagram sent at or after `ms` into the feed.
    pub fn datagram_at_ms(&self, ms: u64) -> u64 {
        self.offsets_ns.partition_point(|&o| o < ms * 1_000_000) as u64
    }

    pub fn ms_of(&self, datagram: u64) -> i64 {
        let i = usize::try_from(datagram).expect("index");
        (self.offsets_ns[i.min(self.offsets_ns.len() - 1)] / 1_000_000) as i64
    }
}

/// Plays `src` once to `to`, PCR-paced, on a thread (fabric-sim's own player).
pub fn play(
    src: &Source,
    to: SocketAddr,
    stop: Option<Arc<AtomicBool>>,
) -> std::thread::JoinHandle<()> {
    let opts = onair::fabric_sim::SimOptions {
        file: src.path.clone(),
        to,
        packets_per_datagram: PACKETS_PER_DATAGRAM,
        loops: Some(1),
        rtp: false,
        stop,
    };
    std::thread::spawn(move || onair::fabric_sim::run(&opts).expect("fabric-sim"))
}

/// A recording compared with the source(s) it was fed from.
#[derive(Debug)]
pub struct Analysis {
    pub video_frames: usize,
    pub audio_packets: usize,
    /// Recorded frames, in order: (source number, presentation index, PES datagram index);
    /// `None` for a frame that decodes to a picture no source has (a damaged frame).
    pub mapped: Vec<Option<(usize, usize, u64)>>,
    pub damaged: usize,
    /// ffmpeg's complaints while decoding the whole recording (empty = clean).
    pub decode_errors: String,
    pub dts_monotonic: bool,
    pub source_video_frames: usize,
    pub source_audio_packets: usize,
}

impl Analysis {
    pub fn of(rec: &Path, sources: &[&Source]) -> Analysis {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(rec)
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg decode");
        let mut decode_errors = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            decode_errors.push_str(&format!("ffmpeg exited with {}", out.status));
        }
        let hashes = video_frame_hashes(rec);
        let mapped: Vec<Option<(usize, usize, u64)>> = hashes
            .iter()
            .map(|h| {
                sources
                    .iter()
                    .enumerate()
                    .find_map(|(s, src)| src.frames.get(h).map(|&(k, dgram)| (s, k, dgram)))
            })
            .collect();
        let dts_monotonic = ["video", "audio"]
            .iter()
            .all(|kind| packet_dts_ms(rec, kind).windows(2).all(|w| w[1] >= w[0]));
        Analysis {
            video_frames: hashes.len(),
            audio_packets: audio_packet_hashes(rec, false).len(),
            damaged: mapped.iter().filter(|m| m.is_none()).count(),
            mapped,
            decode_errors,
            dts_monotonic,
            source_video_frames: sources.iter().map(|s| s.video_frames).sum(),
            source_audio_packets: sources.iter().map(|s| s.audio_packets).sum(),
        }
    }

    pub fn frames_lost(&self) -> i64 {
        self.source_video_frames as i64 - self.video_frames as i64
    }

    pub fn audio_lost(&self) -> i64 {
        self.source_audio_packets as i64 - self.audio_packets as i64
    }

    /// Clean decode: ffmpeg is silent, every picture is one of the sources', DTS monotonic,
    /// and the recorded frames of each source appear in source order (none repeated).
    pub fn decodable(&self) -> bool {
        self.decode_errors.trim().is_empty()
            && self.damaged == 0
            && self.dts_monotonic
            && self.in_source_order()
    }

    pub fn in_source_order(&self) -> bool {
        let keys: Vec<(usize, usize)> = self.mapped.iter().flatten().map(|m| (m.0, m.1)).collect();
        keys.windows(2).all(|w| w[1] > w[0])
    }

    /// Longest run of consecutive source frames missing from the recording (frames), over the
    /// frames of source `s` between the first and last recorded one.
    pub fn longest_gap(&self, s: usize) -> usize {
        let mut ks: Vec<usize> = self
            .mapped
            .iter()
            .flatten()
            .filter(|m| m.0 == s)
            .map(|m| m.1)
            .collect();
        ks.sort_unstable();
        ks.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0)
    }

    /// Feed time from datagram `cleared` of source `s` (the fault's end) to the PES start of
    /// the first recorded frame of that source whose PES starts at or after it (ms). `None`:
    /// no frame after the fault was recorded.
    pub fn recover_ms(&self, src: &Source, s: usize, cleared: u64) -> Option<i64> {
        let first = self
            .mapped
            .iter()
            .flatten()
            .filter(|m| m.0 == s && m.2 >= cleared)
            .map(|m| m.2)
            .min()?;
        Some(src.ms_of(first) - src.ms_of(cleared))
    }
}
