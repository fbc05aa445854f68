//! MPEG-TS demultiplexer (ISO/IEC 13818-1): PAT/PMT (sections spanning packets, CRC-32
//! checked), PES reassembly, continuity counters, PCR, discontinuity indicator.
//!
//! Contract (pure): `push` takes whole 188-byte packets (a datagram's payload), appends events
//! to `out`. Never panics on any input; malformed input only moves counters in [`DemuxStats`].
//!
//! STUB: to be filled in (helper A). The public API below is fixed; see the doc comments.

use bytes::Bytes;

pub const TS_PACKET_LEN: usize = 188;
pub const SYNC_BYTE: u8 = 0x47;

/// Elementary stream types we relay; everything else is ignored (but reported in `Program`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    /// 0x1B: H.264 / AVC video, Annex-B byte stream.
    H264,
    /// 0x0F: AAC audio in ADTS framing.
    AdtsAac,
    Other(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsInfo {
    pub pid: u16,
    pub stream_type: StreamType,
}

/// The first program of the PAT and its PMT. Emitted when first seen and whenever the PMT
/// version or content changes (a source restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub program_number: u16,
    pub pmt_pid: u16,
    pub pcr_pid: u16,
    pub version: u8,
    pub streams: Vec<EsInfo>,
}

/// One complete PES packet's payload (for video: one access unit; for ADTS audio: one or more
/// ADTS frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pes {
    pub pid: u16,
    pub stream_type: StreamType,
    /// 33-bit PTS in 90 kHz units, as on the wire.
    pub pts_90k: Option<u64>,
    /// 33-bit DTS in 90 kHz units; `None` when the header carries only a PTS (then DTS = PTS).
    pub dts_90k: Option<u64>,
    pub data: Bytes,
    /// The discontinuity_indicator was set in a TS packet of this PES (or on this PID since the
    /// previous PES): timestamps may jump.
    pub discontinuity: bool,
    /// random_access_indicator was set on the first TS packet of this PES.
    pub random_access: bool,
    /// Data was lost on this PID (continuity error, truncated or malformed PES) since the
    /// previous PES that was emitted: a decoder chain is broken, wait for a keyframe.
    pub after_loss: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemuxEvent {
    Program(Program),
    Pes(Pes),
    /// A PCR on the program's PCR PID, 27 MHz units (base*300 + ext).
    Pcr {
        pid: u16,
        pcr_27m: u64,
        discontinuity: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub packets: u64,
    /// Packets not starting with 0x47, or trailing bytes that are not a whole packet.
    pub sync_errors: u64,
    /// transport_error_indicator set.
    pub transport_errors: u64,
    pub cc_errors: u64,
    pub crc_errors: u64,
    /// PSI sections that were malformed (bad lengths, unsupported syntax).
    pub psi_errors: u64,
    /// PES packets dropped because they were malformed or incomplete.
    pub pes_errors: u64,
    pub pes_emitted: u64,
}

#[derive(Default)]
pub struct Demuxer {
    stats: DemuxStats,
}

impl Demuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes whole TS packets (any multiple of 188 bytes; a trailing partial packet is counted
    /// in `sync_errors` and ignored). A video PES whose PES_packet_length is 0 is emitted when
    /// the next PES on that PID starts; a PES with a length is emitted as soon as it is complete.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<DemuxEvent>) {
        let _ = (data, out);
    }

    /// Emits any PES still being assembled (end of input).
    pub fn flush(&mut self, out: &mut Vec<DemuxEvent>) {
        let _ = out;
    }

    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }
}
