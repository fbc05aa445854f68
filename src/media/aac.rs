//! AAC in ADTS framing (ISO/IEC 13818-7 / 14496-3): ADTS → raw access units, and the
//! AudioSpecificConfig for the FLV sequence header.
//!
//! STUB: to be filled in (helper B). The public API below is fixed.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AacError {
    /// Not starting with the 0xFFF syncword.
    NoSync,
    /// Header fields out of range (sampling index 15, frame length shorter than header...).
    BadHeader(&'static str),
    /// A frame length beyond the end of the data.
    Truncated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioConfig {
    /// MPEG-4 audio object type (profile + 1): 2 = AAC-LC.
    pub object_type: u8,
    pub sample_rate_index: u8,
    pub sample_rate: u32,
    /// channel_configuration (1 = mono, 2 = stereo ...).
    pub channels: u8,
}

impl AudioConfig {
    /// The 2-byte AudioSpecificConfig: object type (5 bits), frequency index (4), channels (4).
    pub fn audio_specific_config(&self) -> [u8; 2] {
        [0, 0]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdtsFrame {
    pub config: AudioConfig,
    /// The raw AAC access unit (header and CRC stripped), a zero-copy slice of the input.
    pub raw: Bytes,
}

/// Splits a PES payload of one or more ADTS frames. On error, the frames parsed before the
/// error are still in `out`.
pub fn split_adts(data: &Bytes, out: &mut Vec<AdtsFrame>) -> Result<(), AacError> {
    let _ = (data, out);
    Err(AacError::NoSync)
}
