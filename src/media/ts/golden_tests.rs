//! Golden tests against real captures (tests/data, made by scripts/make-fixtures.sh) and
//! property-style robustness tests (pseudo-random garbage and mutated captures).
//!
//! The fixtures are compiled in with `include_bytes!`, so the media core stays free of file
//! access even in tests.

use super::*;

/// A capture and the ffprobe packet list made from it at fixture time.
struct Fixture {
    name: &'static str,
    ts: &'static [u8],
    csv: &'static str,
}

macro_rules! fixture {
    ($name:literal) => {
        Fixture {
            name: $name,
            ts: include_bytes!(concat!("../../../tests/data/", $name, ".ts")),
            csv: include_str!(concat!("../../../tests/data/", $name, ".ts.packets.csv")),
        }
    };
}

fn fixtures() -> [Fixture; 3] {
    [
        fixture!("ffmpeg_h264high_bframes_aac48k_stereo"),
        fixture!("ffmpeg_h264baseline_aac44k_mono"),
        fixture!("gstreamer_h264main_bframes_aac48k_stereo"),
    ]
}

/// One line of `ffprobe -show_entries packet=stream_index,pts,dts,size,flags -of csv=p=0`.
#[derive(Debug)]
struct ProbePacket {
    stream_index: usize,
    pts: Option<u64>,
    dts: Option<u64>,
    size: usize,
    key: bool,
}

/// Parses the ffprobe CSV. ffprobe prints a blank line and a trailing comma after packets
/// that carry side data; both are skipped.
fn parse_probe(csv: &str) -> Vec<ProbePacket> {
    csv.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            ProbePacket {
                stream_index: number(0).expect("stream_index") as usize,
                pts: number(1),
                dts: number(2),
                size: number(3).expect("size") as usize,
                key: fields.get(4).is_some_and(|f| f.starts_with('K')),
            }
        })
        .collect()
}

/// Demuxes a capture the way the ingest delivers it: datagrams of 7 packets.
fn demux(ts: &[u8]) -> (Vec<DemuxEvent>, DemuxStats) {
    let mut demuxer = Demuxer::new();
    let mut out = Vec::new();
    for datagram in ts.chunks(7 * TS_PACKET_LEN) {
        demuxer.push(datagram, &mut out);
    }
    demuxer.flush(&mut out);
    (out, demuxer.stats().clone())
}

/// Sizes of the ADTS frames in an AAC PES payload (frame_length includes the header).
fn adts_frame_sizes(mut data: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while let Some(&[0xFF, b1, _, b3, b4, b5]) = data.first_chunk::<6>() {
        assert_eq!(b1 & 0xF6, 0xF0, "ADTS syncword/layer");
        let len = usize::from(b3 & 0x03) << 11 | usize::from(b4) << 3 | usize::from(b5 >> 5);
        assert!(len >= 7 && len <= data.len(), "ADTS frame_length {len}");
        sizes.push(len);
        data = &data[len..];
    }
    assert!(
        data.is_empty(),
        "{} bytes after the last ADTS frame",
        data.len()
    );
    sizes
}

fn check_video(name: &str, pes: &[&Pes], probe: &[&ProbePacket]) {
    assert_eq!(pes.len(), probe.len(), "{name}: video PES count");
    for (i, (p, q)) in pes.iter().zip(probe).enumerate() {
        let pts = p.pts_90k.expect("video PES has a PTS");
        let dts = p.dts_90k.unwrap_or(pts);
        assert_eq!(
            (Some(pts), Some(dts)),
            (q.pts, q.dts),
            "{name}: video #{i} timestamps"
        );
        assert_eq!(p.data.len(), q.size, "{name}: video #{i} size");
        assert!(
            p.data.starts_with(&[0, 0, 0, 1, 9]),
            "{name}: video #{i} starts with an AUD"
        );
        if q.key {
            assert!(
                p.random_access,
                "{name}: keyframe #{i} without random_access"
            );
        }
    }
}

/// Audio: a PES may hold several ADTS frames, ffprobe lists one packet per frame. The frame
/// sizes must match one to one, and each PES's PTS must be its first frame's.
fn check_audio(name: &str, pes: &[&Pes], probe: &[&ProbePacket]) {
    let mut frames = probe.iter();
    for (i, p) in pes.iter().enumerate() {
        let sizes = adts_frame_sizes(&p.data);
        let first = frames.clone().next().expect("more ffprobe audio packets");
        assert_eq!(p.pts_90k, first.pts, "{name}: audio PES #{i} PTS");
        for size in sizes {
            let q = frames
                .next()
                .expect("an ffprobe packet for each ADTS frame");
            assert_eq!(size, q.size, "{name}: audio PES #{i} frame size");
        }
    }
    assert_eq!(frames.count(), 0, "{name}: ffprobe audio packets left over");
}

#[test]
fn golden_captures_match_ffprobe() {
    for fixture in fixtures() {
        let name = fixture.name;
        let (events, stats) = demux(fixture.ts);
        let programs: Vec<&Program> = events
            .iter()
            .filter_map(|e| match e {
                DemuxEvent::Program(p) => Some(p),
                _ => None,
            })
            .collect();
        let [program] = programs[..] else {
            panic!("{name}: expected one Program, got {programs:?}");
        };
        let types: Vec<StreamType> = program.streams.iter().map(|s| s.stream_type).collect();
        assert_eq!(types, [StreamType::H264, StreamType::AdtsAac], "{name}");
        let pcrs = events
            .iter()
            .filter(|e| matches!(e, DemuxEvent::Pcr { .. }))
            .count();
        assert!(pcrs >= 20, "{name}: {pcrs} PCRs in 2 s");

        let probe = parse_probe(fixture.csv);
        // ffprobe numbers streams in PMT order.
        for (index, es) in program.streams.iter().enumerate() {
            let pes: Vec<&Pes> = events
                .iter()
                .filter_map(|e| match e {
                    DemuxEvent::Pes(p) if p.pid == es.pid => Some(p),
                    _ => None,
                })
                .collect();
            let probed: Vec<&ProbePacket> =
                probe.iter().filter(|q| q.stream_index == index).collect();
            assert!(
                !probed.is_empty(),
                "{name}: stream {index} in ffprobe output"
            );
            assert!(
                pes.iter().all(|p| !p.after_loss && !p.discontinuity),
                "{name}"
            );
            match es.stream_type {
                StreamType::H264 => check_video(name, &pes, &probed),
                _ => check_audio(name, &pes, &probed),
            }
        }
        let clean = DemuxStats {
            packets: (fixture.ts.len() / TS_PACKET_LEN) as u64,
            pes_emitted: stats.pes_emitted,
            ..DemuxStats::default()
        };
        assert_eq!(stats, clean, "{name}: no errors on a clean capture");
    }
}

/// xorshift64*: a deterministic PRNG for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every counter of `now` is at least the one of `before`.
fn assert_counters_grow(before: &DemuxStats, now: &DemuxStats) {
    let pairs = |s: &DemuxStats| {
        [
            s.packets,
            s.sync_errors,
            s.transport_errors,
            s.cc_errors,
            s.crc_errors,
            s.psi_errors,
            s.pes_errors,
            s.pes_emitted,
        ]
    };
    for (b, n) in pairs(before).iter().zip(pairs(now)) {
        assert!(*b <= n, "counter went down: {before:?} → {now:?}");
    }
}

/// Pushes `datagrams`, checking after each that counters only grow and that emitted PES
/// respect the contract.
fn push_checked(demuxer: &mut Demuxer, datagrams: &[Vec<u8>]) {
    let mut out = Vec::new();
    for datagram in datagrams {
        let before = demuxer.stats().clone();
        demuxer.push(datagram, &mut out);
        assert_counters_grow(&before, demuxer.stats());
        for event in out.drain(..) {
            if let DemuxEvent::Pes(p) = event {
                assert!(p.data.len() <= MAX_PES_BYTES);
                assert!(p.pts_90k.is_none_or(|t| t < 1 << 33));
                assert!(p.dts_90k.is_none_or(|t| t < 1 << 33));
                assert!(p.dts_90k.is_none() || p.pts_90k.is_some());
            }
        }
    }
    let before = demuxer.stats().clone();
    demuxer.flush(&mut out);
    assert_counters_grow(&before, demuxer.stats());
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut demuxer = Demuxer::new();
    let datagrams: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let len = rng.below(8 * TS_PACKET_LEN);
            let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Make most of it look like packets so the deeper parsers are reached.
            for at in (0..d.len()).step_by(TS_PACKET_LEN) {
                if rng.below(8) != 0 {
                    d[at] = SYNC_BYTE;
                }
                if let Some(b) = d.get_mut(at + 1) {
                    *b &= if rng.below(2) == 0 { 0x40 } else { 0x41 }; // PID 0 or 0x100
                }
            }
            d
        })
        .collect();
    push_checked(&mut demuxer, &datagrams);
    assert!(demuxer.stats().packets > 1000);
}

/// One random mutation of a capture's packet stream.
fn mutate(rng: &mut Rng, packets: &mut Vec<Vec<u8>>) {
    let at = rng.below(packets.len());
    match rng.below(7) {
        0 => {
            let byte = rng.below(TS_PACKET_LEN);
            if let Some(b) = packets[at].get_mut(byte) {
                *b ^= 1 << rng.below(8);
            }
        }
        1 => {
            packets.remove(at);
        }
        2 => {
            let copy = packets[at].clone();
            packets.insert(at, copy);
        }
        3 => packets[at].truncate(rng.below(TS_PACKET_LEN)),
        4 => {
            let byte = rng.below(TS_PACKET_LEN);
            if let Some(b) = packets[at].get_mut(byte) {
                *b = rng.next() as u8;
            }
        }
        5 => {
            let other = rng.below(packets.len());
            packets.swap(at, other);
        }
        _ => {
            // Adaptation field control / length fuzzing, the riskiest header fields.
            if let Some(b) = packets[at].get_mut(3) {
                *b ^= 0x30;
            }
            if let Some(b) = packets[at].get_mut(4) {
                *b = rng.next() as u8;
            }
        }
    }
}

#[test]
fn mutated_captures_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for fixture in fixtures() {
        let clean = demux(fixture.ts).1.pes_emitted;
        for round in 0..12 {
            let mut packets: Vec<Vec<u8>> = fixture
                .ts
                .chunks(TS_PACKET_LEN)
                .map(<[u8]>::to_vec)
                .collect();
            for _ in 0..(1 + round * 40) {
                mutate(&mut rng, &mut packets);
            }
            // Datagrams of 1–7 (mutated) packets, like the ingest delivers; after round 0, now
            // and then a datagram is split at a random byte.
            let mut datagrams = Vec::new();
            let mut rest = &packets[..];
            while !rest.is_empty() {
                let (group, after) = rest.split_at((rng.below(7) + 1).min(rest.len()));
                let datagram = group.concat();
                if round > 0 && rng.below(10) == 0 {
                    let (a, b) = datagram.split_at(rng.below(datagram.len()));
                    datagrams.extend([a.to_vec(), b.to_vec()]);
                } else {
                    datagrams.push(datagram);
                }
                rest = after;
            }
            let mut demuxer = Demuxer::new();
            push_checked(&mut demuxer, &datagrams);
            let stats = demuxer.stats();
            // Lightly damaged captures still yield most of their PES.
            let name = fixture.name;
            match round {
                0 => assert!(stats.pes_emitted + 3 >= clean, "{name}: {stats:?}"),
                1..4 => assert!(stats.pes_emitted > 0, "{name}: round {round}: {stats:?}"),
                _ => {}
            }
        }
    }
}
