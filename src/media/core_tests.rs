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

#[test]
fn idle_flush_mid_frame_then_resume_waits_for_a_keyframe() {
    // Regression: a pause inside an unbounded video PES emitted it as complete, and the rest
    // of it was silently ignored, so the following frames referenced a truncated picture.
    let mut core = MediaCore::new();
    let mut out = Vec::new();
    let datagrams: Vec<&[u8]> = FFMPEG_HIGH.chunks(7 * 188).collect();
    let pause_after = datagrams.len() / 3;
    for (i, d) in datagrams.iter().enumerate() {
        core.push_datagram(d, i as u64, &mut out);
        if i == pause_after {
            core.flush_idle(i as u64, &mut out);
        }
    }
    let st = core.stats();
    assert!(
        st.demux.pes_errors >= 1,
        "the cut frame was not noticed: {st:?}"
    );
    assert!(st.dropped_waiting_keyframe > 0, "{st:?}");
    let video: Vec<&MediaFrame> = out.iter().filter(|f| f.kind == FrameKind::Video).collect();
    let gap = video
        .windows(2)
        .position(|w| w[1].ts_ms > w[0].ts_ms + 200)
        .expect("a gap");
    assert!(video[gap + 1].keyframe);
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

#[test]
fn start_hold_is_bounded_in_bytes() {
    // Audio announced but its config never comes; 4 MiB frames: the hold must end at
    // MAX_START_HOLD_BYTES, long before 2 s or 240 frames.
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
    let big = Bytes::from(vec![0u8; 4 << 20]);
    let mut out = Vec::new();
    let mut fed = 0;
    while !core.started && fed < 20 {
        let i = fed;
        let held = Held {
            first_packet: i + 1,
            dts_90k: i * 3_000,
            pts_90k: i * 3_000,
            frame: AvcFrame {
                data: big.clone(),
                keyframe: i == 0,
            },
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
