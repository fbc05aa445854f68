//! [`MediaCore`]: datagrams in, FLV-ready frames out. Pure; the caller supplies `rx_ns`, the
//! receive time of each datagram on its own monotonic clock, which frames carry on (latency
//! metrics, and the consent gate: no frame captured before the gate instant is emitted).
//!
//! Output order guarantee: the first frames are `Metadata`, `VideoHeader`, `AudioHeader` (when
//! audio is known) and a video keyframe; every video frame after a loss waits for a keyframe;
//! a changed SPS/PPS or audio config emits a new header (and metadata) before the frame using it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::aac::{self, AdtsFrame, AudioConfig};
use super::flv::{self, Metadata};
use super::h264::{AvcConfig, AvcFrame, H264Repacker};
use super::pes::MAX_PES_BYTES;
use super::rtp::{RtpStats, Unwrapper};
use super::timeline::{self, Timeline, Track};
use super::ts::{DemuxEvent, DemuxStats, Demuxer, Pes, Program, StreamType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Metadata,
    VideoHeader,
    AudioHeader,
    Video,
    Audio,
}

impl FrameKind {
    pub fn is_header(self) -> bool {
        matches!(
            self,
            FrameKind::Metadata | FrameKind::VideoHeader | FrameKind::AudioHeader
        )
    }
}

/// One RTMP media message: an FLV tag body and its timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaFrame {
    pub kind: FrameKind,
    /// RTMP timestamp (DTS), ms.
    pub ts_ms: u32,
    /// FLV tag body (empty for `Metadata`).
    pub body: Bytes,
    /// For `Metadata` only.
    pub metadata: Option<Arc<Metadata>>,
    /// A video frame holding an IDR picture.
    pub keyframe: bool,
    /// A video frame no other frame references (nal_ref_idc 0): may be dropped under congestion.
    pub droppable: bool,
    /// Receive time of the datagram that completed this frame (caller's monotonic ns).
    pub rx_ns: u64,
}

impl MediaFrame {
    fn new(kind: FrameKind, ts_ms: u32, body: Bytes, rx_ns: u64) -> Self {
        MediaFrame {
            kind,
            ts_ms,
            body,
            metadata: None,
            keyframe: false,
            droppable: false,
            rx_ns,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub datagrams: u64,
    pub bad_datagrams: u64,
    /// Datagrams dropped as repeats of a recent one ([`super::dedup`]).
    pub duplicate_datagrams: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Frames dropped before the stream started (no keyframe yet, or before the gate).
    pub dropped_before_start: u64,
    /// Video frames dropped after a loss while waiting for the next keyframe.
    pub dropped_waiting_keyframe: u64,
    pub h264_errors: u64,
    pub aac_errors: u64,
    pub program_changes: u64,
    /// Last video DTS − last audio DTS, ms.
    pub av_offset_ms: i64,
    /// Receive time of the first frame emitted (the start keyframe), caller's clock.
    pub first_frame_rx_ns: Option<u64>,
    pub demux: DemuxStats,
    pub rtp: RtpStats,
    pub timeline: timeline::TimelineStats,
}

/// Longest span of video held at the start waiting for the audio config: 2 s.
pub const MAX_START_HOLD_90K: i64 = 2 * 90_000;

/// The same bound in receive time: 40 ms. The audio config arrives with the first audio PES,
/// up to ~170 ms after a keyframe (ffmpeg packs ~8 AAC frames per PES); waiting for it longer
/// would break the start promise (confirm → first frame ≤ the next keyframe + 50 ms). After
/// this the stream starts with video; the audio header and new metadata follow when audio
/// comes. Enforced on every frame and, without one, by [`MediaCore::tick`].
pub const MAX_START_HOLD_NS: u64 = 40_000_000;
/// And in frames (120 fps for 2 s).
pub const MAX_START_HOLD_FRAMES: usize = 240;
/// And in bytes (2 s at 128 Mbit/s): frames can be large, the count alone does not bound memory.
pub const MAX_START_HOLD_BYTES: usize = 32 << 20;

/// What a [`MediaCore`] holds in memory right now (see [`MediaCore::buffered`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buffered {
    /// Video frames held at the start (at most [`MAX_START_HOLD_FRAMES`]).
    pub held_frames: usize,
    /// Their AVCC bytes (under [`MAX_START_HOLD_BYTES`] plus one frame).
    pub held_bytes: usize,
    /// The demuxer's reassembly buffers ([`Demuxer::buffered_bytes`]).
    pub demux_bytes: usize,
    /// Elementary PIDs being reassembled.
    pub relayed_pids: usize,
}

/// A repacked video frame not yet mapped to the output timeline.
struct Held {
    first_packet: u64,
    dts_90k: u64,
    pts_90k: u64,
    frame: AvcFrame,
    discontinuity: bool,
    rx_ns: u64,
}

/// The pieces so far of a video access unit split over bounded PES: the first PES (with the
/// timestamps) and the payload gathered from it and its continuations.
struct SplitAu {
    first: Pes,
    data: BytesMut,
}

impl SplitAu {
    fn into_pes(self) -> Pes {
        let mut pes = self.first;
        pes.data = self.data.freeze();
        pes
    }
}

#[derive(Default)]
pub struct MediaCore {
    unwrapper: Unwrapper,
    dedup: super::dedup::DupFilter,
    /// Off: repeated datagrams are not looked for ([`MediaCore::set_dedup`]).
    dedup_off: bool,
    demux: Demuxer,
    events: Vec<DemuxEvent>,
    adts: Vec<AdtsFrame>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    h264: H264Repacker,
    avc: Option<AvcConfig>,
    aac: Option<AudioConfig>,
    timeline: Timeline,
    /// The stream has started (headers and a keyframe were emitted).
    started: bool,
    /// Input DTS (33-bit) of the first emitted keyframe: earlier audio is not emitted.
    start_dts_90k: Option<u64>,
    /// Video after a loss: drop until a keyframe.
    waiting_keyframe: bool,
    /// Video held at the start until the audio config is known.
    held: Vec<Held>,
    /// A video access unit split over full-length bounded PES, waiting for its last piece.
    split: Option<SplitAu>,
    /// The consent instant (caller's monotonic ns).
    gate_ns: u64,
    /// Demuxer index of the first TS packet received at or after `gate_ns`: a frame passes
    /// the gate only if its first packet is at or after it.
    gate_packet: Option<u64>,
    stats: CoreStats,
}

impl MediaCore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A core that emits nothing completed before `gate_ns` (the consent instant, on the same
    /// clock as `rx_ns`): the first frame out is a keyframe received at or after it.
    pub fn with_gate(gate_ns: u64) -> Self {
        MediaCore {
            gate_ns,
            ..Self::default()
        }
    }

    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats.clone();
        s.demux = self.demux.stats().clone();
        s.rtp = self.unwrapper.stats().clone();
        s.timeline = self.timeline.stats().clone();
        s
    }

    /// Memory held by the core: cheap, for bounds checks (fuzz targets, tests).
    pub fn buffered(&self) -> Buffered {
        Buffered {
            held_frames: self.held.len(),
            held_bytes: self.held_bytes(),
            demux_bytes: self.demux.buffered_bytes(),
            relayed_pids: self.demux.relayed_pids(),
        }
    }

    fn held_bytes(&self) -> usize {
        self.held.iter().map(|h| h.frame.data().len()).sum()
    }

    /// Turns the repeated-datagram filter ([`super::dedup`]) on (the default) or off. Its unit
    /// is the datagram, so the same packets cut into other datagrams are filtered differently:
    /// the fuzz target that checks datagram boundaries carry no meaning turns it off for the
    /// packet-by-packet replay.
    pub fn set_dedup(&mut self, on: bool) {
        self.dedup_off = !on;
    }

    /// Pushes one UDP datagram (plain TS or RTP/TS). Frames are appended to `out`.
    pub fn push_datagram(&mut self, datagram: &[u8], rx_ns: u64, out: &mut Vec<MediaFrame>) {
        self.stats.datagrams += 1;
        let Ok(ts) = self.unwrapper.unwrap(datagram) else {
            self.stats.bad_datagrams += 1;
            return;
        };
        if !self.dedup_off && self.dedup.is_repeat(ts) {
            self.stats.duplicate_datagrams += 1;
            return;
        }
        if self.gate_packet.is_none() && rx_ns >= self.gate_ns {
            self.gate_packet = Some(self.demux.stats().packets + 1);
        }
        self.demux.push(ts, &mut self.events);
        self.drain_events(rx_ns, out);
    }

    /// Time passes (the relay calls this whenever the ingest hands it on): ends a start hold that
    /// has waited [`MAX_START_HOLD_NS`] for the audio config.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<MediaFrame>) {
        if !self.started
            && self
                .held
                .first()
                .is_some_and(|first| now_ns.saturating_sub(first.rx_ns) >= MAX_START_HOLD_NS)
        {
            self.start_with_held(out);
        }
    }

    /// The source went quiet: emits frames whose end is only known from the next one
    /// (unbounded video PES) when they look complete (their last TS packet was padded with
    /// stuffing); others wait for more of their PID (see
    /// [`super::pes::PesAssembler::finish_idle`]), so nothing truncated is sent.
    pub fn flush_idle(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        self.demux.flush_idle(&mut self.events);
        self.drain_events(rx_ns, out);
    }

    /// End of input: emits what the demuxer still holds.
    pub fn flush(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        self.demux.flush(&mut self.events);
        self.drain_events(rx_ns, out);
        if let Some(split) = self.split.take() {
            // Every piece arrived whole; the last one was full-length, so its end was unknown.
            self.on_video_au(split.into_pes(), rx_ns, out);
        }
        if !self.started {
            self.start_with_held(out);
        }
    }

    fn drain_events(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            match ev {
                DemuxEvent::Program(p) => self.on_program(&p),
                DemuxEvent::Pes(pes) => self.on_pes(pes, rx_ns, out),
                DemuxEvent::Pcr { .. } => {}
            }
        }
        self.events = events;
    }

    fn on_program(&mut self, p: &Program) {
        let find = |t: StreamType| p.streams.iter().find(|s| s.stream_type == t).map(|s| s.pid);
        let (video, audio) = (find(StreamType::H264), find(StreamType::AdtsAac));
        if (video, audio) != (self.video_pid, self.audio_pid) {
            self.stats.program_changes += 1;
            self.video_pid = video;
            self.audio_pid = audio;
            self.waiting_keyframe = true;
            self.split = None;
        }
    }

    fn on_pes(&mut self, pes: Pes, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        if Some(pes.pid) == self.video_pid {
            self.on_video(pes, rx_ns, out);
        } else if Some(pes.pid) == self.audio_pid {
            self.on_audio(pes, rx_ns, out);
        }
    }

    /// A video PES: a whole access unit, or a piece of one split over bounded PES. The fabric
    /// marks a split access unit by making every piece but the last full-length (65535) and
    /// leaving the PTS out of the continuations; the unit is complete when a shorter piece
    /// ends, so its end is known without waiting for the next PES to start.
    fn on_video(&mut self, pes: Pes, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        if pes.pts_90k.is_none() {
            let Some(mut split) = self.split.take() else {
                // A continuation of nothing: it cannot be placed in time.
                self.stats.h264_errors += 1;
                return;
            };
            if pes.after_loss || split.data.len().saturating_add(pes.data.len()) > MAX_PES_BYTES {
                // A piece of the unit was lost (or it grew past any sane size): drop it all.
                self.stats.h264_errors += 1;
                self.waiting_keyframe = true;
                self.held.clear();
                return;
            }
            split.data.extend_from_slice(&pes.data);
            if pes.full_length {
                self.split = Some(split);
            } else {
                self.on_video_au(split.into_pes(), rx_ns, out);
            }
            return;
        }
        if let Some(split) = self.split.take() {
            if pes.after_loss {
                // The unit's tail may be what was lost; `pes` restarts the wait for a keyframe.
                self.stats.h264_errors += 1;
            } else {
                // Its last piece happened to be full-length: it ends where the next one starts.
                self.on_video_au(split.into_pes(), rx_ns, out);
            }
        }
        if pes.full_length {
            let data = BytesMut::from(&pes.data[..]);
            self.split = Some(SplitAu { first: pes, data });
            return;
        }
        self.on_video_au(pes, rx_ns, out);
    }

    /// A whole video access unit.
    fn on_video_au(&mut self, pes: Pes, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        let Some(pts) = pes.pts_90k else {
            self.stats.h264_errors += 1;
            return;
        };
        let dts = pes.dts_90k.unwrap_or(pts);
        if pes.after_loss {
            self.waiting_keyframe = true;
        }
        let (config, frame) = match self.h264.push(&pes.data) {
            Ok(x) => x,
            Err(_) => {
                self.stats.h264_errors += 1;
                self.waiting_keyframe = true;
                self.held.clear();
                return;
            }
        };
        if let Some(c) = config {
            self.avc = Some(c);
            if self.started {
                self.emit_video_header(rx_ns, out);
                self.emit_metadata(rx_ns, out);
            }
        }
        if pes.after_loss {
            // A broken chain also invalidates frames held for the start.
            self.held.clear();
        }
        let held = Held {
            first_packet: pes.first_packet,
            dts_90k: dts,
            pts_90k: pts,
            frame,
            discontinuity: pes.discontinuity,
            rx_ns,
        };
        if !self.started {
            self.before_start(held, out);
            return;
        }
        if self.waiting_keyframe && !held.frame.keyframe {
            self.stats.dropped_waiting_keyframe += 1;
            return;
        }
        self.emit_video(held, out);
    }

    /// Video before the stream started: wait for a keyframe at or after the gate; when the PMT
    /// announces audio whose config is not known yet, hold the keyframe and what follows (up to
    /// [`MAX_START_HOLD_NS`] of receive time, [`MAX_START_HOLD_90K`] of video) so both
    /// sequence headers come before the first frame.
    fn before_start(&mut self, h: Held, out: &mut Vec<MediaFrame>) {
        if self.held.is_empty()
            && (!h.frame.keyframe || !self.passed_gate(h.first_packet) || self.avc.is_none())
        {
            self.stats.dropped_before_start += 1;
            return;
        }
        let audio_pending = self.audio_pid.is_some() && self.aac.is_none();
        let held_too_long = self.held.first().is_some_and(|first| {
            timeline::diff33(h.dts_90k, first.dts_90k as i64) > MAX_START_HOLD_90K
                || h.rx_ns.saturating_sub(first.rx_ns) > MAX_START_HOLD_NS
                || self.held.len() >= MAX_START_HOLD_FRAMES
                || self.held_bytes() >= MAX_START_HOLD_BYTES
        });
        self.held.push(h);
        if !audio_pending || held_too_long {
            self.start_with_held(out);
        }
    }

    /// Starts the stream with the held frames (the first one is a keyframe).
    fn start_with_held(&mut self, out: &mut Vec<MediaFrame>) {
        let held = std::mem::take(&mut self.held);
        let Some(first) = held.first() else {
            return;
        };
        self.start(first.dts_90k, first.rx_ns, out);
        for h in held {
            self.emit_video(h, out);
        }
    }

    fn emit_video(&mut self, h: Held, out: &mut Vec<MediaFrame>) {
        self.stats.first_frame_rx_ns.get_or_insert(h.rx_ns);
        self.waiting_keyframe = false;
        let m = self
            .timeline
            .map(Track::Video, h.dts_90k, h.pts_90k, h.discontinuity);
        let mut f = MediaFrame::new(FrameKind::Video, m.dts_ms, Bytes::new(), h.rx_ns);
        f.keyframe = h.frame.keyframe;
        f.droppable = !h.frame.keyframe && avcc_is_disposable(h.frame.data());
        f.body = h
            .frame
            .into_tagged(flv::avc_frame_header(f.keyframe, m.cts_ms));
        self.stats.video_frames += 1;
        self.update_av_offset();
        out.push(f);
    }

    /// Emits metadata and headers; the caller then emits the keyframe.
    fn start(&mut self, dts_90k: u64, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        self.started = true;
        self.start_dts_90k = Some(dts_90k);
        self.emit_metadata(rx_ns, out);
        if self.avc.is_some() {
            self.emit_video_header(rx_ns, out);
        }
        if self.aac.is_some() {
            self.emit_audio_header(rx_ns, out);
        }
    }

    fn on_audio(&mut self, pes: Pes, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        let Some(pts) = pes.pts_90k else {
            self.stats.aac_errors += 1;
            return;
        };
        let mut frames = std::mem::take(&mut self.adts);
        frames.clear();
        if aac::split_adts(&pes.data, &mut frames).is_err() {
            self.stats.aac_errors += 1;
        }
        let mut discontinuity = pes.discontinuity;
        let gated = !self.passed_gate(pes.first_packet);
        for (i, fr) in frames.iter().enumerate() {
            let rate = u64::from(fr.config.sample_rate.max(1));
            // Exact per-frame offset (1024 samples each): no accumulated truncation.
            let ts = pts.wrapping_add(i as u64 * 1024 * 90_000 / rate);
            self.on_audio_frame(fr, ts, discontinuity, gated, rx_ns, out);
            discontinuity = false;
        }
        self.adts = frames;
    }

    fn on_audio_frame(
        &mut self,
        fr: &AdtsFrame,
        ts_90k: u64,
        discontinuity: bool,
        before_gate: bool,
        rx_ns: u64,
        out: &mut Vec<MediaFrame>,
    ) {
        let changed = self.aac != Some(fr.config);
        if changed {
            self.aac = Some(fr.config);
        }
        let audio_only = self.video_pid.is_none();
        if !self.started {
            if !self.held.is_empty() {
                // The audio config the held keyframe was waiting for.
                self.start_with_held(out);
                if before_gate {
                    // It configures the stream, but it began arriving before the gate.
                    self.stats.dropped_before_start += 1;
                    return;
                }
            } else if !audio_only || before_gate {
                self.stats.dropped_before_start += 1;
                return;
            } else {
                self.start(ts_90k, rx_ns, out);
            }
        } else if changed {
            self.emit_audio_header(rx_ns, out);
            self.emit_metadata(rx_ns, out);
        }
        // Audio that ends at or before the first keyframe's DTS is from before the stream start.
        let duration_90k = 1024 * 90_000 / u64::from(fr.config.sample_rate.max(1));
        if let Some(start) = self.start_dts_90k
            && timeline::diff33(ts_90k + duration_90k, start as i64) <= 0
            && self.timeline.last_ms(Track::Audio).is_none()
        {
            self.stats.dropped_before_start += 1;
            return;
        }
        let m = self
            .timeline
            .map(Track::Audio, ts_90k, ts_90k, discontinuity);
        self.stats.audio_frames += 1;
        self.update_av_offset();
        out.push(MediaFrame::new(
            FrameKind::Audio,
            m.dts_ms,
            flv::aac_frame(&fr.raw),
            rx_ns,
        ));
    }

    fn emit_video_header(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        if let Some(c) = &self.avc {
            let ts = self.timeline.last_ms(Track::Video).unwrap_or(0);
            out.push(MediaFrame::new(
                FrameKind::VideoHeader,
                ts,
                flv::avc_sequence_header(&c.record),
                rx_ns,
            ));
        }
    }

    fn emit_audio_header(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        if let Some(c) = &self.aac {
            let ts = self.timeline.last_ms(Track::Audio).unwrap_or(0);
            out.push(MediaFrame::new(
                FrameKind::AudioHeader,
                ts,
                flv::aac_sequence_header(&c.audio_specific_config()),
                rx_ns,
            ));
        }
    }

    fn emit_metadata(&mut self, rx_ns: u64, out: &mut Vec<MediaFrame>) {
        let mut f = MediaFrame::new(FrameKind::Metadata, 0, Bytes::new(), rx_ns);
        f.metadata = Some(Arc::new(self.metadata()));
        out.push(f);
    }

    fn passed_gate(&self, first_packet: u64) -> bool {
        self.gate_packet.is_some_and(|g| first_packet >= g)
    }

    /// What `onMetaData` announces for the current configs.
    pub fn metadata(&self) -> Metadata {
        let mut m = Metadata {
            encoder: Some(concat!("onair/", env!("CARGO_PKG_VERSION")).into()),
            ..Metadata::default()
        };
        if let Some(v) = &self.avc {
            m.width = Some(v.width);
            m.height = Some(v.height);
            m.frame_rate = v.frame_rate;
            m.video_codec_id = Some(flv::VIDEO_CODEC_AVC);
        }
        if let Some(a) = &self.aac {
            m.audio_codec_id = Some(flv::AUDIO_FORMAT_AAC);
            m.audio_sample_rate = Some(a.sample_rate);
            m.audio_channels = Some(a.channels);
        } else if self.audio_pid.is_some() {
            // The PMT announces AAC whose config has not come yet (a start that did not wait
            // for it): the stream still says it carries audio; the rest follows with the
            // audio header.
            m.audio_codec_id = Some(flv::AUDIO_FORMAT_AAC);
        }
        m
    }

    fn update_av_offset(&mut self) {
        if let (Some(v), Some(a)) = (
            self.timeline.last_ms(Track::Video),
            self.timeline.last_ms(Track::Audio),
        ) {
            self.stats.av_offset_ms = i64::from(v) - i64::from(a);
        }
    }
}

/// True when every slice NAL of an AVCC access unit has nal_ref_idc 0 (nothing references it).
pub fn avcc_is_disposable(avcc: &[u8]) -> bool {
    let mut rest = avcc;
    let mut saw_slice = false;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len) else {
            return false;
        };
        if let Some(&h) = nal.first() {
            let nal_type = h & 0x1F;
            if (1..=5).contains(&nal_type) {
                saw_slice = true;
                if h & 0x60 != 0 {
                    return false;
                }
            }
        }
        rest = &rest[4 + len..];
    }
    saw_slice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn disposable_detection() {
        // non-reference B slice (nal_ref_idc 0, type 1)
        assert!(avcc_is_disposable(&avcc(&[&[0x01, 0xAA]])));
        // reference P slice (nal_ref_idc 2)
        assert!(!avcc_is_disposable(&avcc(&[&[0x41, 0xAA]])));
        // SEI only: no slice, not disposable
        assert!(!avcc_is_disposable(&avcc(&[&[0x06, 0x05]])));
        // truncated length
        assert!(!avcc_is_disposable(&[0, 0, 0, 9, 1]));
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod golden_tests;
