//! H.264 (ISO/IEC 14496-10) repacking: Annex-B access units → AVCC (4-byte NAL lengths),
//! SPS/PPS extraction, AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1), keyframes.
//!
//! STUB: to be filled in (helper B). The public API below is fixed.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H264Error {
    /// No NAL unit found (no start code, or empty).
    Empty,
    /// A parameter set could not be parsed.
    BadSps(&'static str),
    BadPps(&'static str),
    /// A frame arrived before any SPS/PPS was seen.
    NoParameterSets,
}

impl std::fmt::Display for H264Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a sequence header carries; a new one is produced whenever the SPS or PPS changes.
#[derive(Clone, Debug, PartialEq)]
pub struct AvcConfig {
    /// AVCDecoderConfigurationRecord (configurationVersion=1, lengthSizeMinusOne=3).
    pub record: Bytes,
    pub width: u32,
    pub height: u32,
    pub profile_idc: u8,
    pub level_idc: u8,
    /// From the SPS VUI timing info when present (time_scale / (2 * num_units_in_tick)).
    pub frame_rate: Option<f64>,
}

/// One access unit in AVCC form: each NAL prefixed by its 4-byte big-endian length. AUD NAL
/// units (type 9) are dropped; SPS/PPS/SEI stay in-band.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcFrame {
    pub data: Bytes,
    /// Contains an IDR slice (nal_unit_type 5).
    pub keyframe: bool,
}

#[derive(Default)]
pub struct H264Repacker {}

impl H264Repacker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts one access unit (one PES payload, Annex-B). Returns `Some(config)` when this
    /// unit carries an SPS/PPS different from the last one (first one included).
    pub fn push(&mut self, annexb: &[u8]) -> Result<(Option<AvcConfig>, AvcFrame), H264Error> {
        let _ = annexb;
        Err(H264Error::Empty)
    }
}
