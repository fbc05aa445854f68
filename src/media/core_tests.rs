//! MediaCore against real captures (ffmpeg and GStreamer), compared with what ffprobe reports
//! (`tests/data/*.ts.packets.csv`, made by scripts/make-fixtures.sh).

use super::*;
use crate::media::flv;

const FFMPEG_HIGH: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264high_bframes_aac48k_stereo.ts");
const FFMPEG_HIGH_CSV: &str =
    include_str!("../../tests/data/ffmpeg_h264high_bframes_aac48k_stereo.ts.packets.csv");
const FFMPEG_BASE: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264baseline_aac44k_mono.ts");
const FFMPEG_BASE_CSV: &str =
    include_str!("../../tests/data/ffmpeg_h264baseline_aac44k_mono.ts.packets.csv");
const GST_MAIN: &[u8] =
    include_bytes!("../../tests/data/gstreamer_h264main_bframes_aac48k_stereo.ts");
const GST_MAIN_CSV: &str =
    include_str!("../../tests/data/gstreamer_h264main_bframes_aac48k_stereo.ts.packets.csv");

/// ffprobe's packets: (stream index, pts, dts, keyframe).
fn probe(csv: &str) -> Vec<(u32, i64, i64, bool)> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(4)?.starts_with('K'),
            ))
        })
        .collect()
}

/// Feeds a capture as 7-packet datagrams, `rx_ns` advancing 1 ms per datagram.
fn run(core: &mut MediaCore, ts: &[u8], rx_start_ns: u64) -> Vec<MediaFrame> {
    let mut out = Vec::new();
    for (i, d) in ts.chunks(7 * 188).enumerate() {
        core.push_datagram(d, rx_start_ns + i as u64 * 1_000_000, &mut out);
    }
    out
}

fn kinds(frames: &[MediaFrame]) -> Vec<FrameKind> {
    frames.iter().map(|f| f.kind).collect()
}

fn assert_monotonic(frames: &[MediaFrame]) {
    for kind in [FrameKind::Video, FrameKind::Audio] {
        let ts: Vec<u32> = frames
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.ts_ms)
            .collect();
        assert!(
            ts.windows(2).all(|w| w[1] >= w[0]),
            "{kind:?} not monotonic: {ts:?}"
        );
    }
}

fn check_capture(ts: &[u8], csv: &str, audio_stream: u32) {
    let mut core = MediaCore::new();
    let mut frames = run(&mut core, ts, 0);
    core.flush(u64::MAX, &mut frames);
    let k = kinds(&frames);
    assert_eq!(
        &k[..4],
        &[
            FrameKind::Metadata,
            FrameKind::VideoHeader,
            FrameKind::AudioHeader,
            FrameKind::Video
        ]
    );
    assert!(frames[3].keyframe);
    let meta = frames[0].metadata.as_deref().expect("metadata");
    assert_eq!((meta.width, meta.height), (Some(320), Some(240)));
    assert_eq!(meta.video_codec_id, Some(flv::VIDEO_CODEC_AVC));
    assert_eq!(meta.audio_codec_id, Some(flv::AUDIO_FORMAT_AAC));

    let packets = probe(csv);
    let video: Vec<_> = packets.iter().filter(|p| p.0 != audio_stream).collect();
    let audio = packets.iter().filter(|p| p.0 == audio_stream).count();
    let out_video: Vec<&MediaFrame> = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Video)
        .collect();
    assert_eq!(
        out_video.len(),
        video.len(),
        "every video frame (the capture starts on a keyframe)"
    );
    // DTS and composition offsets exactly as ffprobe reads them (90 kHz → ms, floored).
    let dts0 = video[0].2;
    for (f, p) in out_video.iter().zip(&video) {
        assert_eq!(
            i64::from(f.ts_ms),
            (p.2 - dts0).div_euclid(90),
            "dts of {p:?}"
        );
        let cts = flv::avc_cts_ms(&f.body).expect("AVC NALU body");
        let expect = (p.1 - dts0).div_euclid(90) - (p.2 - dts0).div_euclid(90);
        assert!(
            (i64::from(cts) - expect).abs() <= 1,
            "cts {cts} vs {expect} for {p:?}"
        );
        assert_eq!(f.keyframe, p.3);
    }
    let out_audio = frames.iter().filter(|f| f.kind == FrameKind::Audio).count();
    assert!(
        out_audio + 2 >= audio && out_audio <= audio,
        "audio {out_audio} of {audio}"
    );
    assert_monotonic(&frames);
    let st = core.stats();
    assert_eq!(
        (st.h264_errors, st.aac_errors, st.demux.cc_errors),
        (0, 0, 0)
    );
}

#[test]
fn ffmpeg_high_bframes_matches_ffprobe() {
    check_capture(FFMPEG_HIGH, FFMPEG_HIGH_CSV, 1);
}

#[test]
fn ffmpeg_baseline_matches_ffprobe() {
    check_capture(FFMPEG_BASE, FFMPEG_BASE_CSV, 1);
}

#[test]
fn gstreamer_main_bframes_matches_ffprobe() {
    check_capture(GST_MAIN, GST_MAIN_CSV, 1);
}

#[test]
fn source_restart_with_new_parameters_continues_monotonic() {
    // The fabric restarts: a new encoder (other profile, other audio config), timestamps back.
    let mut core = MediaCore::new();
    let mut frames = run(&mut core, FFMPEG_HIGH, 0);
    let first_part = frames.len();
    frames.extend(run(&mut core, FFMPEG_BASE, 1_000_000_000));
    core.flush(u64::MAX, &mut frames);
    let after = &frames[first_part..];
    let k = kinds(after);
    assert!(
        k.contains(&FrameKind::VideoHeader),
        "new SPS → new AVC sequence header"
    );
    assert!(
        k.contains(&FrameKind::AudioHeader),
        "44.1 kHz mono → new AAC sequence header"
    );
    let meta = after
        .iter()
        .rev()
        .find_map(|f| f.metadata.as_deref())
        .expect("new metadata");
    assert_eq!(
        (meta.audio_sample_rate, meta.audio_channels),
        (Some(44_100), Some(1))
    );
    // The new header comes before the first frame that needs it.
    let first_video = k
        .iter()
        .position(|x| *x == FrameKind::Video)
        .expect("video");
    let header = k
        .iter()
        .position(|x| *x == FrameKind::VideoHeader)
        .expect("header");
    assert!(header < first_video);
    assert_monotonic(&frames);
    assert!(
        core.stats().timeline.rebases >= 1,
        "{:?}",
        core.stats().timeline
    );
}

#[test]
fn nothing_received_before_the_gate_is_emitted() {
    // Gate at the 20th of 86 datagrams (after the first keyframe, before the second): the first
    // frame out is the second keyframe, received after the gate.
    let gate_ns = 20 * 1_000_000;
    let mut core = MediaCore::with_gate(gate_ns);
    let frames = run(&mut core, FFMPEG_HIGH, 0);
    assert!(!frames.is_empty());
    assert!(
        frames.iter().all(|f| f.rx_ns >= gate_ns),
        "a frame from before the gate leaked"
    );
    let first_video = frames
        .iter()
        .find(|f| f.kind == FrameKind::Video)
        .expect("video");
    assert!(first_video.keyframe);
    assert_eq!(first_video.ts_ms, 0);
    assert!(core.stats().dropped_before_start > 0);
}

#[test]
fn loss_resumes_on_the_next_keyframe() {
    let mut core = MediaCore::new();
    let mut out = Vec::new();
    let datagrams: Vec<&[u8]> = FFMPEG_HIGH.chunks(7 * 188).collect();
    let lost = datagrams.len() / 4..datagrams.len() / 4 + 3;
    for (i, d) in datagrams.iter().enumerate() {
        if !lost.contains(&i) {
            core.push_datagram(d, i as u64, &mut out);
        }
    }
    let st = core.stats();
    assert!(st.demux.cc_errors > 0);
    assert!(st.dropped_waiting_keyframe > 0, "{st:?}");
    // After the first gap in video timestamps, the next video frame is a keyframe.
    let video: Vec<&MediaFrame> = out.iter().filter(|f| f.kind == FrameKind::Video).collect();
    let gap = video
        .windows(2)
        .position(|w| w[1].ts_ms > w[0].ts_ms + 200)
        .expect("a gap");
    assert!(video[gap + 1].keyframe, "resumed on a non-key frame");
    assert_eq!(st.h264_errors, 0);
}

#[test]
fn rtp_wrapped_capture_gives_the_same_frames() {
    let mut plain = MediaCore::new();
    let a = run(&mut plain, FFMPEG_HIGH, 0);
    let mut rtp = MediaCore::new();
    let mut b = Vec::new();
    for (i, d) in FFMPEG_HIGH.chunks(7 * 188).enumerate() {
        let mut dg = crate::fabric_sim::rtp_header(i as u16, 0, 1).to_vec();
        dg.extend_from_slice(d);
        rtp.push_datagram(&dg, i as u64 * 1_000_000, &mut b);
    }
    assert_eq!(a, b);
    assert_eq!(
        rtp.stats().rtp.rtp_datagrams as usize,
        FFMPEG_HIGH.len().div_ceil(7 * 188)
    );
}

#[test]
fn announced_audio_that_never_comes_delays_start_by_at_most_two_seconds() {
    // Drop every packet of the audio PID: the PMT still announces it.
    let mut demux = crate::media::ts::Demuxer::new();
    let mut ev = Vec::new();
    demux.push(FFMPEG_HIGH, &mut ev);
    let audio_pid = ev
        .iter()
        .find_map(|e| match e {
            crate::media::ts::DemuxEvent::Program(p) => p
                .streams
                .iter()
                .find(|s| s.stream_type == crate::media::ts::StreamType::AdtsAac)
                .map(|s| s.pid),
            _ => None,
        })
        .expect("audio pid");
    let video_only: Vec<u8> = FFMPEG_HIGH
        .chunks(188)
        .filter(|p| u16::from_be_bytes([p[1] & 0x1F, p[2]]) != audio_pid)
        .flatten()
        .copied()
        .collect();
    let mut core = MediaCore::new();
    let mut frames = run(&mut core, &video_only, 0);
    // 2 s capture at 25 fps: the hold ends on the frame after 2 s of video, or at flush.
    core.flush(u64::MAX, &mut frames);
    let k = kinds(&frames);
    assert_eq!(
        &k[..3],
        &[
            FrameKind::Metadata,
            FrameKind::VideoHeader,
            FrameKind::Video
        ]
    );
    assert!(frames[2].keyframe);
    assert_eq!(
        frames.iter().filter(|f| f.kind == FrameKind::Video).count(),
        50,
        "held frames were lost"
    );
    assert!(!k.contains(&FrameKind::Audio));
}

fn video_of(frames: &[MediaFrame]) -> Vec<(u32, bytes::Bytes)> {
    frames
        .iter()
        .filter(|f| f.kind == FrameKind::Video)
        .map(|f| (f.ts_ms, f.body.clone()))
        .collect()
}

#[test]
fn idle_flush_mid_frame_then_resume_loses_nothing() {
    // Regression: a pause inside an unbounded video PES emitted it as complete, and the rest
    // of it was silently ignored, so the following frames referenced a truncated picture.
    // Now a PES whose last packet was full waits for more; a sender that pauses mid-frame
    // (≥ the idle flush delay) and goes on loses nothing.
    let datagrams: Vec<&[u8]> = FFMPEG_HIGH.chunks(7 * 188).collect();
    let end = datagrams.len() as u64;
    let whole = {
        let mut core = MediaCore::new();
        let mut out = run(&mut core, FFMPEG_HIGH, 0);
        core.flush_idle(end, &mut out); // the source stops: its last frame goes out too
        video_of(&out)
    };
    for pause_after in 0..datagrams.len() {
        let mut core = MediaCore::new();
        let mut out = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            core.push_datagram(d, i as u64, &mut out);
            if i == pause_after {
                core.flush_idle(i as u64, &mut out);
            }
        }
        core.flush_idle(end, &mut out);
        assert_eq!(video_of(&out), whole, "pause after datagram {pause_after}");
        assert_eq!(core.stats().demux.pes_errors, 0);
    }
}

#[test]
fn an_outage_that_cuts_a_frame_never_sends_the_truncated_frame() {
    // Regression (tests/faults.rs, fabric_outage_3s): the idle flush emitted the video PES in
    // progress when a fabric outage began; its tail was lost in the outage, so a truncated
    // picture reached the recording ("error while decoding MB …").
    let clean: std::collections::HashSet<bytes::Bytes> =
        video_of(&run(&mut MediaCore::new(), FFMPEG_HIGH, 0))
            .into_iter()
            .map(|(_, b)| b)
            .collect();
    let datagrams: Vec<&[u8]> = FFMPEG_HIGH.chunks(7 * 188).collect();
    let video_packets = |d: &[u8]| {
        d.chunks(188)
            .filter(|p| u16::from_be_bytes([p[1] & 0x1F, p[2]]) == 0x100)
            .count()
    };
    // Outages of 1..=10 datagrams at every point. Not when they swallow 16·k packets of the
    // video PID: no TS receiver can see that loss (the 4-bit continuity counter comes round).
    let cases = (0..datagrams.len() - 12).flat_map(|c| (1..=10).map(move |l| (c, l)));
    for (cut_after, lost) in cases {
        let lost_video: usize = datagrams[cut_after + 1..cut_after + 1 + lost]
            .iter()
            .map(|d| video_packets(d))
            .sum();
        if lost_video.is_multiple_of(16) {
            continue;
        }
        let mut core = MediaCore::new();
        let mut out = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            if (cut_after + 1..cut_after + 1 + lost).contains(&i) {
                continue; // the outage
            }
            core.push_datagram(d, i as u64, &mut out);
            if i == cut_after {
                core.flush_idle(i as u64, &mut out);
            }
        }
        let video: Vec<&MediaFrame> = out.iter().filter(|f| f.kind == FrameKind::Video).collect();
        for f in &video {
            assert!(
                clean.contains(&f.body),
                "outage of {lost} after datagram {cut_after}: a frame at {} ms differs from the source",
                f.ts_ms
            );
        }
        // After the outage the stream resumes on a keyframe.
        if let Some(gap) = video.windows(2).position(|w| w[1].ts_ms > w[0].ts_ms + 200) {
            assert!(
                video[gap + 1].keyframe,
                "outage of {lost} after {cut_after}"
            );
        }
    }
}

#[test]
fn idle_flush_leaves_bounded_pes_alone() {
    // GStreamer's video PES carry their length: a pause must not cut them.
    let whole = {
        let mut core = MediaCore::new();
        run(&mut core, GST_MAIN, 0)
    };
    let mut core = MediaCore::new();
    let mut out = Vec::new();
    for (i, d) in GST_MAIN.chunks(7 * 188).enumerate() {
        core.push_datagram(d, i as u64 * 1_000_000, &mut out);
        core.flush_idle(i as u64 * 1_000_000, &mut out);
    }
    assert_eq!(out, whole);
    assert_eq!(core.stats().demux.pes_errors, 0);
}

#[test]
fn a_keyframe_begun_before_the_gate_does_not_pass_it() {
    // Regression: the gate compared the time the frame *completed*; the first keyframe here
    // starts in datagram 0 and completes a few datagrams later, after a gate at datagram 2.
    let mut core = MediaCore::with_gate(2_000_000);
    let frames = run(&mut core, FFMPEG_HIGH, 0);
    let video: Vec<&MediaFrame> = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Video)
        .collect();
    assert!(video[0].keyframe);
    assert_eq!(
        video.len(),
        24,
        "only the second GOP (frames 25..48; the last awaits a flush)"
    );
}

/// How [`remux_video`] writes each video access unit.
#[derive(Clone, Copy)]
enum VideoPes {
    /// One PES without a length (as ffmpeg writes them).
    Unbounded,
    /// Bounded pieces: every piece but the last full-length (65535), continuations without PTS.
    Split,
}

/// A remuxed capture and, per video access unit, the index of the TS packet holding its last byte.
struct Remuxed {
    ts: Vec<u8>,
    au_last_packet: Vec<usize>,
}

fn ts_payload(p: &[u8]) -> &[u8] {
    let afc = (p[3] >> 4) & 3;
    let start = if afc & 2 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    if afc & 1 == 0 || start >= 188 {
        &[]
    } else {
        &p[start..]
    }
}

/// TS packets carrying `pes` on `pid`; the last one is stuffed with an adaptation field.
fn packetize_pes(pid: u16, cc: &mut u8, pes: &[u8]) -> Vec<[u8; 188]> {
    let mut packets = Vec::new();
    for (i, chunk) in pes.chunks(184).enumerate() {
        let mut p = [0xFFu8; 188];
        p[0] = 0x47;
        p[1] = (if i == 0 { 0x40 } else { 0 }) | (pid >> 8) as u8;
        p[2] = pid as u8;
        let stuffing = 184 - chunk.len();
        if stuffing == 0 {
            p[3] = 0x10 | *cc;
            p[4..].copy_from_slice(chunk);
        } else {
            // Adaptation field of `stuffing` bytes: length byte, flags, then 0xFF.
            p[3] = 0x30 | *cc;
            p[4] = (stuffing - 1) as u8;
            if stuffing > 1 {
                p[5] = 0;
            }
            p[4 + stuffing..].copy_from_slice(chunk);
        }
        *cc = (*cc + 1) & 0xF;
        packets.push(p);
    }
    packets
}

/// Rewrites a capture's video PES: each access unit padded with a filler NAL to at least
/// `pad_to` bytes of payload (so it needs several 64 KiB pieces), written as `how` says, in
/// place of the original PES; everything else passes through.
fn remux_video(ts: &[u8], how: VideoPes, pad_to: usize) -> Remuxed {
    let mut demux = Demuxer::default();
    let mut events = Vec::new();
    demux.push(ts, &mut events);
    let vpid = events
        .iter()
        .find_map(|e| match e {
            DemuxEvent::Program(p) => p
                .streams
                .iter()
                .find(|s| s.stream_type == StreamType::H264)
                .map(|s| s.pid),
            _ => None,
        })
        .expect("a video stream");
    let pid_of = |p: &[u8]| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
    // The original video PES, each with the index of its first packet.
    let mut pes: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, p) in ts.chunks_exact(188).enumerate() {
        if pid_of(p) == vpid {
            if p[1] & 0x40 != 0 {
                pes.push((i, Vec::new()));
            }
            if let Some((_, buf)) = pes.last_mut() {
                buf.extend_from_slice(ts_payload(p));
            }
        }
    }
    let mut cc = 0u8;
    let mut out = Remuxed {
        ts: Vec::new(),
        au_last_packet: Vec::new(),
    };
    let mut next = pes.iter().peekable();
    for (i, p) in ts.chunks_exact(188).enumerate() {
        if pid_of(p) != vpid {
            out.ts.extend_from_slice(p);
            continue;
        }
        let Some((_, orig)) = next.next_if(|(first, _)| *first == i) else {
            continue;
        };
        let header_len = 9 + usize::from(orig[8]);
        let mut es = orig[header_len..].to_vec();
        if es.len() < pad_to {
            // Filler data NAL (type 12): 0xFF bytes, then the RBSP stop bit.
            es.extend_from_slice(&[0, 0, 1, 0x0C]);
            es.resize(pad_to - 1, 0xFF);
            es.push(0x80);
        }
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        match how {
            VideoPes::Unbounded => {
                let mut p = orig[..header_len].to_vec();
                p[4..6].copy_from_slice(&[0, 0]);
                p.extend_from_slice(&es);
                pieces.push(p);
            }
            VideoPes::Split => {
                let mut rest = &es[..];
                let mut first = true;
                while !rest.is_empty() {
                    let mut header = if first {
                        orig[..header_len].to_vec()
                    } else {
                        vec![0, 0, 1, orig[3], 0, 0, 0x80, 0, 0]
                    };
                    let take = rest.len().min(65535 - (header.len() - 6));
                    let length = (header.len() - 6 + take) as u16;
                    header[4..6].copy_from_slice(&length.to_be_bytes());
                    header.extend_from_slice(&rest[..take]);
                    pieces.push(header);
                    rest = &rest[take..];
                    first = false;
                }
            }
        }
        for piece in pieces {
            for packet in packetize_pes(vpid, &mut cc, &piece) {
                out.ts.extend_from_slice(&packet);
            }
        }
        out.au_last_packet.push(out.ts.len() / 188 - 1);
    }
    out
}

/// What a frame carries, without the receive time: kind, timestamp, body length and hash,
/// keyframe, droppable; grouped by kind (the order within each kind kept), since when a video
/// frame leaves relative to audio is what the PES length changes.
fn content(frames: &[MediaFrame]) -> Vec<(FrameKind, u32, usize, u64, bool, bool)> {
    use std::hash::{Hash, Hasher};
    let mut c: Vec<_> = frames
        .iter()
        .filter(|f| f.kind != FrameKind::Metadata)
        .map(|f| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            f.body.hash(&mut h);
            (
                f.kind,
                f.ts_ms,
                f.body.len(),
                h.finish(),
                f.keyframe,
                f.droppable,
            )
        })
        .collect();
    c.sort_by_key(|f| f.0 as u8);
    c
}

/// Feeds one TS packet per datagram, `rx_ns` = packet index.
fn run_per_packet(core: &mut MediaCore, ts: &[u8]) -> Vec<MediaFrame> {
    let mut out = Vec::new();
    for (i, p) in ts.chunks(188).enumerate() {
        core.push_datagram(p, i as u64, &mut out);
    }
    core.flush(u64::MAX, &mut out);
    out
}

#[test]
fn access_units_split_over_bounded_pes_are_emitted_with_their_last_piece() {
    // 150 kB per access unit: three pieces, two of them full-length.
    let unbounded = remux_video(FFMPEG_HIGH, VideoPes::Unbounded, 150_000);
    let split = remux_video(FFMPEG_HIGH, VideoPes::Split, 150_000);
    assert_eq!(split.au_last_packet.len(), unbounded.au_last_packet.len());
    let mut core = MediaCore::new();
    let whole = run_per_packet(&mut core, &unbounded.ts);
    let mut core = MediaCore::new();
    let out = run_per_packet(&mut core, &split.ts);
    let st = core.stats();
    assert_eq!((st.h264_errors, st.demux.pes_errors), (0, 0), "{st:?}");
    assert!(st.video_frames >= 40, "{st:?}");
    assert_eq!(content(&out), content(&whole));
    // Each frame leaves with the packet holding its last byte, not with the next PES start.
    let video_rx = |frames: &[MediaFrame]| -> Vec<u64> {
        frames
            .iter()
            .filter(|f| f.kind == FrameKind::Video)
            .map(|f| f.rx_ns)
            .collect()
    };
    // Per emitted video frame, the packet holding its last byte (the stream starts at a
    // keyframe a few access units in: align on the last frame, which is the last unit).
    let last_packets = |r: &Remuxed, n: usize| -> Vec<u64> {
        let skip = r.au_last_packet.len() - n;
        r.au_last_packet[skip..].iter().map(|&i| i as u64).collect()
    };
    let (split_rx, whole_rx) = (video_rx(&out), video_rx(&whole));
    // The first frame may have been held for the audio config; every other one leaves with
    // its last packet when the PES are bounded...
    let split_last = last_packets(&split, split_rx.len());
    assert_eq!(split_rx[1..], split_last[1..]);
    // ... and only when the next video PES starts when they are not.
    let whole_last = last_packets(&unbounded, whole_rx.len());
    assert!(
        whole_rx[1..]
            .iter()
            .zip(&whole_last[1..])
            .all(|(rx, last)| rx > last)
    );
}

#[test]
fn a_lost_piece_drops_its_access_unit_and_video_waits_for_a_keyframe() {
    let split = remux_video(FFMPEG_HIGH, VideoPes::Split, 150_000);
    let mut core = MediaCore::new();
    let whole = content(&run_per_packet(&mut core, &split.ts));
    // Drop a packet in the middle of the 20th access unit's second piece.
    let lost = split.au_last_packet[19] - 400;
    let mut ts = split.ts.clone();
    ts.drain(lost * 188..(lost + 1) * 188);
    let mut core = MediaCore::new();
    let out = content(&run_per_packet(&mut core, &ts));
    let st = core.stats();
    assert!(st.h264_errors + st.demux.pes_errors >= 1, "{st:?}");
    assert!(st.dropped_waiting_keyframe > 0, "{st:?}");
    // Nothing truncated or invented: every frame out is one of the intact stream's.
    assert!(out.iter().all(|f| whole.contains(f)));
    let video: Vec<_> = out.iter().filter(|f| f.0 == FrameKind::Video).collect();
    let gap = video
        .windows(2)
        .position(|w| w[1].1 > w[0].1 + 100)
        .expect("a gap where the unit was lost");
    assert!(video[gap + 1].4, "video resumed on a non-keyframe");
}

#[test]
fn a_split_unit_whose_last_piece_is_full_length_ends_at_the_next_start() {
    // 65522 + 65532 bytes: both pieces full-length (ffmpeg's video PES header is 19 bytes), so
    // the end is only known when the next access unit starts, or at the end of input.
    let split = remux_video(FFMPEG_HIGH, VideoPes::Split, 65_522 + 65_532);
    let unbounded = remux_video(FFMPEG_HIGH, VideoPes::Unbounded, 65_522 + 65_532);
    let mut core = MediaCore::new();
    let whole = run_per_packet(&mut core, &unbounded.ts);
    let mut core = MediaCore::new();
    let out = run_per_packet(&mut core, &split.ts);
    assert_eq!(core.stats().h264_errors, 0);
    assert_eq!(content(&out), content(&whole));
}

#[test]
fn duplicated_datagrams_lose_nothing() {
    // Regression (tests/faults.rs, dup_5pct): a repeated 7-packet datagram stepped the
    // continuity counters back; the demuxer took it as loss and dropped video to the next
    // keyframe (5 % duplicates cost ~1/3 of the frames).
    let whole = run(&mut MediaCore::new(), FFMPEG_HIGH, 0);
    let mut core = MediaCore::new();
    let mut out = Vec::new();
    for (i, d) in FFMPEG_HIGH.chunks(7 * 188).enumerate() {
        core.push_datagram(d, i as u64 * 1_000_000, &mut out);
        if i % 5 == 2 {
            core.push_datagram(d, i as u64 * 1_000_000, &mut out);
        }
        if i % 7 == 3 && i >= 2 {
            // A late repeat: two datagrams back.
            let prev = &FFMPEG_HIGH[(i - 2) * 7 * 188..(i - 1) * 7 * 188];
            core.push_datagram(prev, i as u64 * 1_000_000, &mut out);
        }
    }
    assert_eq!(out, whole);
    let st = core.stats();
    assert!(st.duplicate_datagrams > 10, "{st:?}");
    assert_eq!(st.demux.cc_errors, 0, "{st:?}");
}

#[test]
fn with_the_repeat_filter_off_repeats_reach_the_demuxer() {
    // Used by the ts_demux fuzz target's packet-by-packet replay.
    let mut core = MediaCore::new();
    core.set_dedup(false);
    let mut out = Vec::new();
    let d = &FFMPEG_HIGH[..7 * 188];
    core.push_datagram(d, 0, &mut out);
    core.push_datagram(d, 1_000_000, &mut out);
    let st = core.stats();
    assert_eq!(st.duplicate_datagrams, 0, "{st:?}");
    assert_eq!(st.demux.packets, 14, "{st:?}");
    assert!(
        st.demux.cc_errors > 0,
        "a repeated datagram steps the counters back: {st:?}"
    );
}

/// A core past its gate that knows the video config and a PMT announcing audio whose config
/// has not come: a keyframe is held for it.
fn awaiting_audio_config() -> MediaCore {
    let mut core = MediaCore::new();
    core.avc = Some(AvcConfig {
        record: Bytes::from_static(&[1, 0x64, 0, 0x1F, 0xFF, 0xE1]),
        width: 1920,
        height: 1080,
        profile_idc: 100,
        level_idc: 31,
        frame_rate: None,
    });
    core.audio_pid = Some(0x101);
    core.gate_packet = Some(0);
    core
}

#[test]
fn start_hold_is_bounded_in_bytes() {
    // Audio announced but its config never comes; 4 MiB frames: the hold must end at
    // MAX_START_HOLD_BYTES, long before 2 s or 240 frames.
    let mut core = awaiting_audio_config();
    let big = Bytes::from(vec![0u8; 4 << 20]);
    let mut out = Vec::new();
    let mut fed = 0;
    while !core.started && fed < 20 {
        let i = fed;
        let held = Held {
            first_packet: i + 1,
            dts_90k: i * 3_000,
            pts_90k: i * 3_000,
            frame: AvcFrame::from_avcc(&big, i == 0),
            discontinuity: false,
            rx_ns: i * 1_000_000,
        };
        core.before_start(held, &mut out);
        fed += 1;
        let b = core.buffered();
        assert!(b.held_bytes <= MAX_START_HOLD_BYTES, "{i}: {b:?}");
    }
    // 8 frames (32 MiB) held; the 9th ends the hold.
    assert!(core.started, "the hold never ended");
    assert_eq!(fed, 9);
    assert_eq!(
        out.iter().filter(|f| f.kind == FrameKind::Video).count(),
        9,
        "held frames were lost"
    );
}

#[test]
fn start_hold_for_the_audio_config_ends_after_40_ms_of_receive_time() {
    // Regression: a relay started at the consent instant held its first keyframe until the
    // first audio PES came (~80 ms at K = 64 in the benchmark), over the start promise of
    // keyframe + 50 ms. The hold now ends by time, also when no other frame comes.
    let mut core = awaiting_audio_config();
    let t0 = 5_000_000_000u64;
    let held = Held {
        first_packet: 1,
        dts_90k: 0,
        pts_90k: 0,
        frame: AvcFrame::from_avcc(&[0, 0, 0, 2, 0x65, 0x88], true),
        discontinuity: false,
        rx_ns: t0,
    };
    let mut out = Vec::new();
    core.before_start(held, &mut out);
    assert!(out.is_empty(), "held for the audio config");
    core.tick(t0 + MAX_START_HOLD_NS - 1, &mut out);
    assert!(!core.started && out.is_empty(), "released early");
    core.tick(t0 + MAX_START_HOLD_NS, &mut out);
    assert!(core.started, "the hold did not end on time");
    assert_eq!(
        kinds(&out),
        vec![
            FrameKind::Metadata,
            FrameKind::VideoHeader,
            FrameKind::Video
        ]
    );
    assert!(out[2].keyframe);
    // A tick once started emits nothing.
    let n = out.len();
    core.tick(t0 + 10 * MAX_START_HOLD_NS, &mut out);
    assert_eq!(out.len(), n);
}
