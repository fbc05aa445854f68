//! AAC in ADTS framing (ISO/IEC 13818-7 / 14496-3): ADTS → raw access units, and the
//! AudioSpecificConfig for the FLV sequence header.
//!
//! Contract: pure and panic-free on any input; frames are zero-copy slices of the input.

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

impl std::fmt::Display for AacError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Sampling frequencies by `sampling_frequency_index` (ISO/IEC 14496-3 Table 1.18); indices
/// 13 and 14 are reserved and 15 (explicit frequency) cannot occur in ADTS.
pub const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// ADTS fixed + variable header length without CRC.
pub const ADTS_HEADER_LEN: usize = 7;
/// ADTS header length with the 16-bit CRC (protection_absent = 0).
pub const ADTS_HEADER_LEN_CRC: usize = 9;

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
    ///
    /// The last 3 bits (GASpecificConfig: frameLengthFlag, dependsOnCoreCoder,
    /// extensionFlag) are 0, as ffmpeg writes them: AAC-LC 48 kHz stereo is `[0x11, 0x90]`.
    /// Fields are masked to their widths (object types above 31 cannot be expressed here).
    pub fn audio_specific_config(&self) -> [u8; 2] {
        let object_type = self.object_type & 0x1F;
        let index = self.sample_rate_index & 0x0F;
        let channels = self.channels & 0x0F;
        [
            (object_type << 3) | (index >> 1),
            ((index & 0x01) << 7) | (channels << 3),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdtsFrame {
    pub config: AudioConfig,
    /// The raw AAC access unit (header and CRC stripped), a zero-copy slice of the input.
    pub raw: Bytes,
}

/// A parsed ADTS header: the stream parameters, header length and whole frame length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdtsHeader {
    pub config: AudioConfig,
    /// 7, or 9 when a CRC follows the header (protection_absent = 0).
    pub header_len: usize,
    /// aac_frame_length: header, CRC and raw data.
    pub frame_len: usize,
}

/// Parses the ADTS header at the start of `data` (ISO/IEC 13818-7 §6.2.1 / 14496-3 §1.A.3.2).
///
/// Errors: [`AacError::NoSync`] when the first 12 bits are not `0xFFF` (or `data` is empty);
/// [`AacError::Truncated`] when the header itself or the frame it announces goes past the end
/// of `data`; [`AacError::BadHeader`] for layer ≠ 0, a sampling index ≥ 13, a frame length
/// shorter than the header, or more than one raw data block per frame. The CRC is not checked.
pub fn parse_adts_header(data: &[u8]) -> Result<AdtsHeader, AacError> {
    let sync = match data {
        [] => false,
        [b0] => *b0 == 0xFF,
        [b0, b1, ..] => *b0 == 0xFF && b1 & 0xF0 == 0xF0,
    };
    if !sync {
        return Err(AacError::NoSync);
    }
    let Some(&[_, b1, b2, b3, b4, b5, b6]) = data.first_chunk::<7>() else {
        return Err(AacError::Truncated);
    };
    if (b1 >> 1) & 0x03 != 0 {
        return Err(AacError::BadHeader("layer != 0"));
    }
    let header_len = if b1 & 0x01 == 1 {
        ADTS_HEADER_LEN
    } else {
        ADTS_HEADER_LEN_CRC
    };
    let sample_rate_index = (b2 >> 2) & 0x0F;
    let sample_rate = *SAMPLE_RATES
        .get(usize::from(sample_rate_index))
        .ok_or(AacError::BadHeader("sampling_frequency_index >= 13"))?;
    let frame_len = (usize::from(b3 & 0x03) << 11) | (usize::from(b4) << 3) | usize::from(b5 >> 5);
    if frame_len < header_len {
        return Err(AacError::BadHeader("frame length shorter than header"));
    }
    if b6 & 0x03 != 0 {
        return Err(AacError::BadHeader("more than one raw data block"));
    }
    if frame_len > data.len() {
        return Err(AacError::Truncated);
    }
    let config = AudioConfig {
        object_type: (b2 >> 6) + 1,
        sample_rate_index,
        sample_rate,
        channels: ((b2 & 0x01) << 2) | (b3 >> 6),
    };
    Ok(AdtsHeader {
        config,
        header_len,
        frame_len,
    })
}

/// Splits a PES payload of one or more ADTS frames. On error, the frames parsed before the
/// error are still in `out`.
///
/// Frames are appended to `out` (not cleared) back to back from the start of `data`; anything
/// after the last frame that is not another valid frame is an error (see
/// [`parse_adts_header`]); empty `data` is [`AacError::NoSync`].
pub fn split_adts(data: &Bytes, out: &mut Vec<AdtsFrame>) -> Result<(), AacError> {
    if data.is_empty() {
        return Err(AacError::NoSync);
    }
    let mut offset = 0;
    while let Some(rest) = data.get(offset..).filter(|r| !r.is_empty()) {
        let header = parse_adts_header(rest)?;
        let raw = data.slice(offset + header.header_len..offset + header.frame_len);
        out.push(AdtsFrame {
            config: header.config,
            raw,
        });
        offset += header.frame_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // From scripts/make-codec-fixtures.sh: ffmpeg's native aac encoder, 1 s of sine, -f adts.
    const STEREO_48K: &[u8] = include_bytes!("../../tests/data/ffmpeg_aaclc_48k_stereo.adts");
    const MONO_44K: &[u8] = include_bytes!("../../tests/data/ffmpeg_aaclc_44k_mono.adts");

    /// Facts verified by running ffprobe / ffmpeg on the fixtures:
    /// - `ffprobe -show_packets`: 48 packets (stereo 48k) and 45 packets (mono 44.1k); packet
    ///   sizes (whole ADTS frames) sum to the file sizes, 16716 and 8750 bytes; first sizes
    ///   311, 400, 308 and 271, 285, 183.
    /// - extradata after `ffmpeg -i X.adts -c copy -f flv` (aac_adtstoasc), shown by
    ///   `ffprobe -show_data`: `11 90` (stereo 48k) and `12 08` (mono 44.1k).
    /// - `ffprobe -show_streams`: profile LC, sample_rate 48000 / 44100, channels 2 / 1.
    struct Golden {
        data: &'static [u8],
        frames: usize,
        first_sizes: [usize; 3],
        asc: [u8; 2],
        sample_rate: u32,
        channels: u8,
    }

    const GOLDEN: [Golden; 2] = [
        Golden {
            data: STEREO_48K,
            frames: 48,
            first_sizes: [311, 400, 308],
            asc: [0x11, 0x90],
            sample_rate: 48000,
            channels: 2,
        },
        Golden {
            data: MONO_44K,
            frames: 45,
            first_sizes: [271, 285, 183],
            asc: [0x12, 0x08],
            sample_rate: 44100,
            channels: 1,
        },
    ];

    #[test]
    fn real_adts_files_match_ffprobe() {
        for g in &GOLDEN {
            let data = Bytes::from_static(g.data);
            let mut frames = Vec::new();
            assert_eq!(split_adts(&data, &mut frames), Ok(()));
            assert_eq!(frames.len(), g.frames);
            let total: usize = frames.iter().map(|f| f.raw.len() + 7).sum();
            assert_eq!(total, g.data.len(), "ffmpeg writes no CRC: 7-byte headers");
            for (f, size) in frames.iter().zip(g.first_sizes) {
                assert_eq!(f.raw.len() + 7, size);
            }
            for f in &frames {
                assert_eq!(f.config.object_type, 2, "AAC-LC");
                assert_eq!(f.config.sample_rate, g.sample_rate);
                assert_eq!(f.config.channels, g.channels);
                assert_eq!(f.config.audio_specific_config(), g.asc);
            }
        }
    }

    #[test]
    fn raw_frames_are_zero_copy_slices_without_headers() {
        let data = Bytes::from_static(STEREO_48K);
        let mut frames = Vec::new();
        assert_eq!(split_adts(&data, &mut frames), Ok(()));
        let mut offset = 0;
        for f in &frames {
            let start = offset + 7;
            assert_eq!(
                f.raw.as_ptr(),
                STEREO_48K[start..].as_ptr(),
                "points into input"
            );
            assert_eq!(&f.raw[..], &STEREO_48K[start..start + f.raw.len()]);
            offset = start + f.raw.len();
        }
    }

    #[test]
    fn audio_specific_config_bits() {
        let cfg = |object_type, sample_rate_index, channels| AudioConfig {
            object_type,
            sample_rate_index,
            sample_rate: 0,
            channels,
        };
        assert_eq!(cfg(2, 3, 2).audio_specific_config(), [0x11, 0x90]);
        assert_eq!(cfg(2, 4, 1).audio_specific_config(), [0x12, 0x08]);
        assert_eq!(cfg(2, 11, 1).audio_specific_config(), [0x15, 0x88]);
        assert_eq!(cfg(1, 0, 6).audio_specific_config(), [0x08, 0x30]);
    }

    /// Builds an ADTS header (profile 1 = LC) for `payload_len` bytes of raw data.
    fn header(crc: bool, index: u8, channels: u8, payload_len: usize) -> Vec<u8> {
        let hlen = if crc { 9 } else { 7 };
        let flen = hlen + payload_len;
        let mut h = vec![
            0xFF,
            0xF0 | u8::from(!crc),
            (1 << 6) | (index << 2) | (channels >> 2),
            ((channels & 3) << 6) | ((flen >> 11) as u8 & 0x03),
            (flen >> 3) as u8,
            (((flen & 0x07) as u8) << 5) | 0x1F,
            0xFC,
        ];
        if crc {
            h.extend_from_slice(&[0xAB, 0xCD]);
        }
        h
    }

    #[test]
    fn crc_protected_header_is_stripped() {
        let mut data = header(true, 3, 2, 4);
        data.extend_from_slice(&[1, 2, 3, 4]);
        data.extend(header(false, 3, 2, 2));
        data.extend_from_slice(&[5, 6]);
        let mut frames = Vec::new();
        assert_eq!(split_adts(&Bytes::from(data), &mut frames), Ok(()));
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].raw[..], &[1, 2, 3, 4]);
        assert_eq!(&frames[1].raw[..], &[5, 6]);
        assert_eq!(frames[0].config.audio_specific_config(), [0x11, 0x90]);
        let h = parse_adts_header(&header(true, 3, 2, 0));
        assert_eq!(h.map(|h| (h.header_len, h.frame_len)), Ok((9, 9)));
    }

    #[test]
    fn bad_headers_are_rejected() {
        let split = |d: Vec<u8>| split_adts(&Bytes::from(d), &mut Vec::new());
        assert_eq!(split(vec![]), Err(AacError::NoSync));
        assert_eq!(split(vec![0x47, 0x40, 0x11]), Err(AacError::NoSync));
        assert_eq!(
            split(vec![0xFF, 0xE1, 0, 0, 0, 0, 0]),
            Err(AacError::NoSync)
        );
        assert_eq!(split(vec![0xFF]), Err(AacError::Truncated));
        assert_eq!(split(header(false, 3, 2, 10)), Err(AacError::Truncated));
        let mut layer = header(false, 3, 2, 0);
        layer[1] |= 0x02;
        assert!(matches!(split(layer), Err(AacError::BadHeader(_))));
        assert!(matches!(
            split(header(false, 13, 2, 0)),
            Err(AacError::BadHeader(_))
        ));
        assert!(matches!(
            split(header(false, 15, 2, 0)),
            Err(AacError::BadHeader(_))
        ));
        let mut blocks = header(false, 3, 2, 0);
        blocks[6] |= 0x01;
        assert!(matches!(split(blocks), Err(AacError::BadHeader(_))));
        // CRC header announcing 8 bytes (< 9).
        let mut short = header(true, 3, 2, 0);
        short[4] = 1;
        short[5] = 0x1F;
        assert!(matches!(split(short), Err(AacError::BadHeader(_))));
    }

    #[test]
    fn frames_before_an_error_are_kept() {
        let mut data = STEREO_48K[..311 + 400].to_vec();
        data.extend_from_slice(&STEREO_48K[311 + 400..311 + 400 + 100]);
        let mut frames = Vec::new();
        assert_eq!(
            split_adts(&Bytes::from(data), &mut frames),
            Err(AacError::Truncated)
        );
        assert_eq!(frames.len(), 2);
        let mut data = STEREO_48K[..311].to_vec();
        data.extend_from_slice(&[0, 0, 0]);
        let mut frames = Vec::new();
        assert_eq!(
            split_adts(&Bytes::from(data), &mut frames),
            Err(AacError::NoSync)
        );
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn fuzz_truncated_and_garbage_never_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let source = &MONO_44K[..2000];
        for i in 0..3000 {
            let mut v = source.to_vec();
            let n = (next() % 2000) as usize;
            match i % 3 {
                0 => v.truncate(n),
                1 => {
                    for _ in 0..4 {
                        let k = (next() % 2000) as usize;
                        v[k] = next() as u8;
                    }
                }
                _ => v = (0..n % 64).map(|_| next() as u8 | 0xF0).collect(),
            }
            let data = Bytes::from(v);
            let mut frames = Vec::new();
            let _ = split_adts(&data, &mut frames);
            let covered: usize = frames.iter().map(|f| f.raw.len() + 7).sum();
            assert!(covered <= data.len());
        }
    }
}
