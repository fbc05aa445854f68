//! Invariants on what `MediaCore` emits, checked after every push.

use onair::media::core::{Buffered, FrameKind, MAX_START_HOLD_BYTES, MAX_START_HOLD_FRAMES};
use onair::media::core::{MediaCore, MediaFrame};
use onair::media::ts::{MAX_PES_BYTES, MAX_RELAYED_STREAMS};

use crate::avcc;

/// RTMP timestamps are 32-bit ms and wrap (49 days): "not before" is a forward step under 2^31.
pub fn not_before(ts: u32, last: u32) -> bool {
    ts.wrapping_sub(last) < 0x8000_0000
}

/// Largest PES buffer capacity for a PID: a header-announced length (≤ 65,535 + 6), the
/// default for unbounded PES (16 KiB), or 1.25 × the previous unbounded PES (received bytes).
const PES_CAPACITY_SLACK: usize = 70_000;

#[derive(Default)]
pub struct FrameChecker {
    /// The consent gate, when the core has one.
    pub gate_ns: Option<u64>,
    video_header: bool,
    audio_header: bool,
    last_video_ms: Option<u32>,
    last_audio_ms: Option<u32>,
    video_frames: u64,
    audio_frames: u64,
    /// Input bytes pushed so far (bounds buffer capacities).
    pub input_bytes: usize,
}

impl FrameChecker {
    pub fn new(gate_ns: Option<u64>) -> Self {
        FrameChecker {
            gate_ns,
            ..FrameChecker::default()
        }
    }

    /// Checks new frames (drains `out`) and the core's memory.
    pub fn check(&mut self, core: &MediaCore, out: &mut Vec<MediaFrame>) {
        for f in out.drain(..) {
            self.frame(&f);
        }
        let s = core.stats();
        assert_eq!(s.video_frames, self.video_frames, "stats.video_frames");
        assert_eq!(s.audio_frames, self.audio_frames, "stats.audio_frames");
        self.memory(core.buffered());
    }

    fn frame(&mut self, f: &MediaFrame) {
        if let Some(gate) = self.gate_ns {
            assert!(f.rx_ns >= gate, "{:?} received before the gate", f.kind);
        }
        match f.kind {
            FrameKind::Metadata => assert!(f.metadata.is_some(), "metadata frame without data"),
            FrameKind::VideoHeader => {
                assert_eq!(&f.body[..2], &[0x17, 0x00], "AVC sequence header tag");
                avcc::record(&f.body[5..]);
                self.video_header = true;
            }
            FrameKind::AudioHeader => {
                assert_eq!(f.body.len(), 4, "AAC sequence header length");
                assert_eq!(&f.body[..2], &[0xAF, 0x00], "AAC sequence header tag");
                self.audio_header = true;
            }
            FrameKind::Video => self.video(f),
            FrameKind::Audio => {
                assert!(
                    self.audio_header,
                    "audio frame before the audio sequence header"
                );
                assert_eq!(&f.body[..2], &[0xAF, 0x01], "AAC raw tag");
                if let Some(last) = self.last_audio_ms {
                    assert!(not_before(f.ts_ms, last), "audio ts {last} → {}", f.ts_ms);
                }
                self.last_audio_ms = Some(f.ts_ms);
                self.audio_frames += 1;
            }
        }
    }

    fn video(&mut self, f: &MediaFrame) {
        assert!(
            self.video_header,
            "video frame before the AVC sequence header"
        );
        if self.last_video_ms.is_none() {
            assert!(f.keyframe, "the first video frame is not a keyframe");
        }
        let tag = if f.keyframe { 0x17 } else { 0x27 };
        assert_eq!(&f.body[..2], &[tag, 0x01], "AVC NALU tag");
        let nals = avcc::nals(&f.body[5..]);
        assert!(!nals.is_empty(), "video frame without NAL units");
        assert_eq!(
            f.keyframe,
            nals.iter().any(|n| n[0] & 0x1F == 5),
            "keyframe flag and IDR NAL disagree"
        );
        assert!(!(f.keyframe && f.droppable), "a droppable keyframe");
        if let Some(last) = self.last_video_ms {
            assert!(not_before(f.ts_ms, last), "video ts {last} → {}", f.ts_ms);
        }
        self.last_video_ms = Some(f.ts_ms);
        self.video_frames += 1;
    }

    fn memory(&self, b: Buffered) {
        assert!(b.held_frames <= MAX_START_HOLD_FRAMES, "held frames {b:?}");
        assert!(
            b.held_bytes < MAX_START_HOLD_BYTES + 2 * MAX_PES_BYTES,
            "held {b:?}"
        );
        assert!(b.relayed_pids <= MAX_RELAYED_STREAMS, "relayed PIDs {b:?}");
        let bound = b.relayed_pids * PES_CAPACITY_SLACK + 2 * self.input_bytes + 8192;
        assert!(
            b.demux_bytes <= bound,
            "demuxer holds {} bytes after {} input bytes: {b:?}",
            b.demux_bytes,
            self.input_bytes
        );
    }
}
