//! FLV (Adobe FLV spec v10.1, annex E) tag bodies, `onMetaData`, and the FLV file container.
//!
//! Tag bodies are what RTMP video/audio messages carry; the file container adds the 9-byte
//! header and per-tag 11-byte headers with back-pointers. Pure: builds and parses bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// FLV VideoTagHeader CodecID for AVC.
pub const VIDEO_CODEC_AVC: u8 = 7;
/// FLV AudioTagHeader SoundFormat for AAC.
pub const AUDIO_FORMAT_AAC: u8 = 10;

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// Bytes before the AVC payload in a video tag body: frame type/codec, packet type, CTS.
pub const AVC_HEADER_LEN: usize = 5;
/// Bytes before the AAC payload in an audio tag body: format/rate/size/type, packet type.
pub const AAC_HEADER_LEN: usize = 2;

/// Video tag body holding the AVCDecoderConfigurationRecord (AVCPacketType 0).
pub fn avc_sequence_header(record: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(AVC_HEADER_LEN + record.len());
    b.put_u8(0x10 | VIDEO_CODEC_AVC);
    b.put_u8(0);
    b.put_slice(&[0, 0, 0]);
    b.put_slice(record);
    b.freeze()
}

/// The 5-byte header of an AVC NALU tag body (AVCPacketType 1). `cts_ms` is the composition
/// time offset (PTS − DTS), a signed 24-bit value; out-of-range values are clamped.
pub fn avc_frame_header(keyframe: bool, cts_ms: i32) -> [u8; AVC_HEADER_LEN] {
    let frame_type: u8 = if keyframe { 1 } else { 2 };
    let cts = cts_ms.clamp(-0x80_0000, 0x7F_FFFF);
    let c = cts.to_be_bytes();
    [(frame_type << 4) | VIDEO_CODEC_AVC, 1, c[1], c[2], c[3]]
}

/// A complete AVC NALU tag body (header + AVCC data).
pub fn avc_frame(keyframe: bool, cts_ms: i32, avcc: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(AVC_HEADER_LEN + avcc.len());
    b.put_slice(&avc_frame_header(keyframe, cts_ms));
    b.put_slice(avcc);
    b.freeze()
}

/// AVC end-of-sequence tag body (AVCPacketType 2).
pub fn avc_end_of_sequence() -> Bytes {
    Bytes::from_static(&[0x10 | VIDEO_CODEC_AVC, 2, 0, 0, 0])
}

/// First byte of an AAC audio tag: SoundFormat 10, rate 3 (44 kHz), 16-bit, stereo. For AAC the
/// rate/type bits are fixed by the spec; the AudioSpecificConfig carries the real values.
const AAC_TAG_BYTE0: u8 = (AUDIO_FORMAT_AAC << 4) | 0x0F;

/// Audio tag body holding the AudioSpecificConfig (AACPacketType 0).
pub fn aac_sequence_header(asc: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(AAC_HEADER_LEN + asc.len());
    b.put_u8(AAC_TAG_BYTE0);
    b.put_u8(0);
    b.put_slice(asc);
    b.freeze()
}

/// Audio tag body holding one raw AAC frame (AACPacketType 1).
pub fn aac_frame(raw: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(AAC_HEADER_LEN + raw.len());
    b.put_u8(AAC_TAG_BYTE0);
    b.put_u8(1);
    b.put_slice(raw);
    b.freeze()
}

/// What `onMetaData` announces. Fields that are `None` are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frame_rate: Option<f64>,
    pub video_codec_id: Option<u8>,
    pub video_data_rate_kbps: Option<u32>,
    pub audio_codec_id: Option<u8>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
    pub audio_data_rate_kbps: Option<u32>,
    pub encoder: Option<String>,
}

impl Metadata {
    /// The (name, value) pairs in a stable order.
    pub fn entries(&self) -> Vec<(&'static str, Amf0)> {
        let mut v = Vec::new();
        let num = |x: Option<f64>| x.map(Amf0::Number);
        let pairs: [(&'static str, Option<Amf0>); 10] = [
            ("width", num(self.width.map(f64::from))),
            ("height", num(self.height.map(f64::from))),
            ("framerate", num(self.frame_rate)),
            ("videocodecid", num(self.video_codec_id.map(f64::from))),
            (
                "videodatarate",
                num(self.video_data_rate_kbps.map(f64::from)),
            ),
            ("audiocodecid", num(self.audio_codec_id.map(f64::from))),
            (
                "audiosamplerate",
                num(self.audio_sample_rate.map(f64::from)),
            ),
            ("audiochannels", num(self.audio_channels.map(f64::from))),
            (
                "audiodatarate",
                num(self.audio_data_rate_kbps.map(f64::from)),
            ),
            ("stereo", self.audio_channels.map(|c| Amf0::Boolean(c >= 2))),
        ];
        for (k, val) in pairs {
            if let Some(val) = val {
                v.push((k, val));
            }
        }
        if let Some(e) = &self.encoder {
            v.push(("encoder", Amf0::String(e.clone())));
        }
        v
    }
}

/// The AMF0 values `onMetaData` needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Amf0 {
    Number(f64),
    Boolean(bool),
    String(String),
}

fn put_amf0_string_body(b: &mut BytesMut, s: &str) {
    // Short strings only: metadata keys and values are ours, all far below 64 KiB.
    let bytes = s.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    b.put_u16(len);
    b.put_slice(&bytes[..usize::from(len)]);
}

fn put_amf0(b: &mut BytesMut, v: &Amf0) {
    match v {
        Amf0::Number(n) => {
            b.put_u8(0x00);
            b.put_f64(*n);
        }
        Amf0::Boolean(x) => {
            b.put_u8(0x01);
            b.put_u8(u8::from(*x));
        }
        Amf0::String(s) => {
            b.put_u8(0x02);
            put_amf0_string_body(b, s);
        }
    }
}

/// Script tag body: AMF0 string "onMetaData" followed by an ECMA array of the entries.
pub fn on_metadata_body(meta: &Metadata) -> Bytes {
    let entries = meta.entries();
    let mut b = BytesMut::with_capacity(64 + entries.len() * 24);
    put_amf0(&mut b, &Amf0::String("onMetaData".into()));
    b.put_u8(0x08); // ECMA array
    b.put_u32(u32::try_from(entries.len()).unwrap_or(0));
    for (k, v) in &entries {
        put_amf0_string_body(&mut b, k);
        put_amf0(&mut b, v);
    }
    b.put_slice(&[0, 0, 0x09]); // object end
    b.freeze()
}

/// The 9-byte FLV file header followed by PreviousTagSize0.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Largest tag body an FLV tag header can describe (24-bit DataSize).
pub const MAX_TAG_BODY: usize = 0xFF_FFFF;

/// Appends one FLV tag (11-byte header, body, PreviousTagSize) to `out`.
/// Returns false (and appends nothing) when the body is larger than [`MAX_TAG_BODY`].
pub fn put_tag(out: &mut BytesMut, tag_type: u8, ts_ms: u32, body: &[u8]) -> bool {
    let Ok(size) = u32::try_from(body.len()) else {
        return false;
    };
    if body.len() > MAX_TAG_BODY {
        return false;
    }
    out.reserve(11 + body.len() + 4);
    out.put_u8(tag_type);
    out.put_slice(&size.to_be_bytes()[1..]);
    out.put_slice(&ts_ms.to_be_bytes()[1..]);
    out.put_u8(ts_ms.to_be_bytes()[0]); // TimestampExtended
    out.put_slice(&[0, 0, 0]); // StreamID
    out.put_slice(body);
    out.put_u32(size + 11);
    true
}

/// One tag read back from an FLV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub tag_type: u8,
    pub ts_ms: u32,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlvError {
    NotFlv,
    /// The file ends inside a tag (a recording cut by a crash); the tags before are valid.
    Truncated {
        valid_tags: usize,
    },
    BadBackPointer {
        tag_index: usize,
    },
}

/// Parses a whole FLV file into its tags. Used by tests and by the receiver's recovery.
pub fn parse_file(data: &Bytes) -> Result<Vec<Tag>, FlvError> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        return Err(FlvError::NotFlv);
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len.checked_add(4).ok_or(FlvError::NotFlv)?;
    let mut tags = Vec::new();
    while pos < data.len() {
        let Some(h) = data.get(pos..pos + 11) else {
            return Err(FlvError::Truncated {
                valid_tags: tags.len(),
            });
        };
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ts_ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body_start = pos + 11;
        let body_end = body_start + size;
        let Some(back) = data.get(body_end..body_end + 4) else {
            return Err(FlvError::Truncated {
                valid_tags: tags.len(),
            });
        };
        if u32::from_be_bytes([back[0], back[1], back[2], back[3]]) as usize != size + 11 {
            return Err(FlvError::BadBackPointer {
                tag_index: tags.len(),
            });
        }
        tags.push(Tag {
            tag_type: h[0] & 0x1F,
            ts_ms,
            body: data.slice(body_start..body_end),
        });
        pos = body_end + 4;
    }
    Ok(tags)
}

/// Reads the composition time offset of an AVC NALU tag body, if it is one.
pub fn avc_cts_ms(body: &[u8]) -> Option<i32> {
    if body.len() < AVC_HEADER_LEN || body[0] & 0x0F != VIDEO_CODEC_AVC || body[1] != 1 {
        return None;
    }
    let raw = i32::from_be_bytes([0, body[2], body[3], body[4]]);
    Some((raw << 8) >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_headers() {
        let h = avc_frame_header(true, 80);
        assert_eq!(h, [0x17, 1, 0, 0, 80]);
        let h = avc_frame_header(false, -40);
        assert_eq!(h, [0x27, 1, 0xFF, 0xFF, 0xD8]);
        let f = avc_frame(false, -40, &[1, 2]);
        assert_eq!(avc_cts_ms(&f), Some(-40));
        assert_eq!(
            avc_cts_ms(&avc_frame(true, 0x7F_FFFF + 5, &[])),
            Some(0x7F_FFFF)
        );
        let sh = avc_sequence_header(&[1, 0x64]);
        assert_eq!(&sh[..], &[0x17, 0, 0, 0, 0, 1, 0x64]);
        assert_eq!(avc_cts_ms(&sh), None);
    }

    #[test]
    fn audio_headers() {
        assert_eq!(
            &aac_sequence_header(&[0x11, 0x90])[..],
            &[0xAF, 0, 0x11, 0x90]
        );
        assert_eq!(&aac_frame(&[9])[..], &[0xAF, 1, 9]);
    }

    #[test]
    fn metadata_amf0() {
        let m = Metadata {
            width: Some(1280),
            audio_channels: Some(1),
            encoder: Some("onair".into()),
            ..Default::default()
        };
        let b = on_metadata_body(&m);
        // "onMetaData" string marker + length
        assert_eq!(&b[..3], &[0x02, 0, 10]);
        assert_eq!(&b[3..13], b"onMetaData");
        assert_eq!(b[13], 0x08);
        assert_eq!(&b[14..18], &4u32.to_be_bytes()); // width, audiochannels, stereo, encoder
        // width: key "width", number 1280
        assert_eq!(&b[18..20], &[0, 5]);
        assert_eq!(&b[20..25], b"width");
        assert_eq!(b[25], 0);
        assert_eq!(&b[26..34], &1280f64.to_be_bytes());
        assert!(b.ends_with(&[0, 0, 9]));
        let enc_pos = b.windows(5).position(|w| w == b"onair");
        assert!(enc_pos.is_some());
    }

    #[test]
    fn file_roundtrip() {
        let mut out = BytesMut::new();
        out.put_slice(&file_header(true, true));
        assert!(put_tag(&mut out, TAG_VIDEO, 0x0123_4567, &[1, 2, 3]));
        assert!(put_tag(&mut out, TAG_AUDIO, 5, &[]));
        let data = out.freeze();
        assert_eq!(&data[..5], b"FLV\x01\x05");
        let tags = parse_file(&data).expect("valid");
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].tag_type, TAG_VIDEO);
        assert_eq!(tags[0].ts_ms, 0x0123_4567);
        assert_eq!(&tags[0].body[..], &[1, 2, 3]);
        assert_eq!(tags[1].ts_ms, 5);
        // Truncation is reported with the count of valid tags before it.
        let cut = data.slice(..data.len() - 2);
        assert_eq!(parse_file(&cut), Err(FlvError::Truncated { valid_tags: 1 }));
        assert_eq!(
            parse_file(&Bytes::from_static(b"GIF89a")),
            Err(FlvError::NotFlv)
        );
    }

    #[test]
    fn oversized_tag_refused() {
        let mut out = BytesMut::new();
        let big = vec![0u8; MAX_TAG_BODY + 1];
        assert!(!put_tag(&mut out, TAG_VIDEO, 0, &big));
        assert!(out.is_empty());
    }
}
