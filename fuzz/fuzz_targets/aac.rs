//! The ADTS parser and splitter: frames tile the input exactly, configs are consistent and the
//! AudioSpecificConfig round-trips.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use onair::media::aac::{parse_adts_header, split_adts};
use onair::media::flv;

const RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let mut frames = Vec::new();
    let result = split_adts(&data, &mut frames);
    let mut offset = 0;
    for f in &frames {
        let h = parse_adts_header(&data[offset..]).expect("a split frame's header parses");
        assert!(
            h.header_len == 7 || h.header_len == 9,
            "header length {}",
            h.header_len
        );
        assert!(h.frame_len >= h.header_len, "frame length {}", h.frame_len);
        assert_eq!(h.config, f.config);
        assert_eq!(f.raw.len(), h.frame_len - h.header_len, "raw length");
        assert_eq!(
            &f.raw[..],
            &data[offset + h.header_len..offset + h.frame_len]
        );
        offset += h.frame_len;
        let c = f.config;
        assert_eq!(
            RATES.get(usize::from(c.sample_rate_index)),
            Some(&c.sample_rate),
            "sample rate"
        );
        let asc = c.audio_specific_config();
        assert_eq!(asc[0] >> 3, c.object_type, "ASC object type");
        assert_eq!(
            ((asc[0] & 7) << 1) | (asc[1] >> 7),
            c.sample_rate_index,
            "ASC rate"
        );
        assert_eq!((asc[1] >> 3) & 0x0F, c.channels, "ASC channels");
        let tag = flv::aac_frame(&f.raw);
        assert_eq!(&tag[2..], &f.raw[..]);
    }
    if result.is_ok() {
        assert_eq!(offset, data.len(), "frames must tile the input");
    } else {
        assert!(
            offset < data.len() || data.is_empty(),
            "error after tiling everything"
        );
    }
});
