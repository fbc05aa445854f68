//! The H.264 Annex-B → AVCC repacker and SPS parser. The input is an Annex-B stream cut into
//! access units the way PES packets would carry them (a new unit at an AUD, an SPS, or a slice
//! with first_mb_in_slice 0); the first byte picks other cuts (whole input, every NAL).
#![no_main]
use libfuzzer_sys::fuzz_target;
use onair::media::h264::{H264Repacker, nal_type, parse_sps, split_annexb};
use onair_fuzz::avcc;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut ranges = Vec::new();
    split_annexb(stream, &mut ranges);
    let mut prev_end = 0;
    for r in &ranges {
        assert!(r.start >= prev_end && r.end <= stream.len(), "NAL ranges");
        prev_end = r.end;
        let nal = &stream[r.clone()];
        if nal_type(nal) == Some(7)
            && let Ok(info) = parse_sps(nal)
        {
            assert!(info.width > 0 && info.height > 0, "SPS size {info:?}");
            if let Some(fps) = info.frame_rate() {
                assert!(fps.is_finite() && fps > 0.0, "frame rate {fps}");
            }
        }
    }
    // Cut points: NAL start offsets (the start code begins up to 4 bytes before).
    let cut_at = |r: &std::ops::Range<usize>| -> bool {
        let nal = &stream[r.clone()];
        match mode % 3 {
            0 => match nal_type(nal) {
                Some(9 | 7) => true,
                Some(1 | 5) => nal.get(1).is_some_and(|b| b & 0x80 != 0),
                _ => false,
            },
            1 => true,
            _ => false,
        }
    };
    let mut units = Vec::new();
    let mut start = 0;
    for r in &ranges {
        if cut_at(r) {
            let cut = stream[..r.start]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1)
                .max(start);
            // Back up over the start code "00 00 01" (the 0x01 is the last non-zero byte).
            let cut = if cut > start && stream[cut - 1] == 1 {
                cut - 1
            } else {
                cut
            };
            let cut = stream[start..cut]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(start, |i| start + i + 1);
            if cut > start {
                units.push(&stream[start..cut]);
            }
            start = cut;
        }
    }
    units.push(&stream[start..]);

    let mut rp = H264Repacker::new();
    let mut configured = false;
    for unit in units {
        let Ok((config, frame)) = rp.push(unit) else {
            continue;
        };
        if !configured {
            assert!(
                config.is_some(),
                "the first accepted unit carries no config"
            );
            configured = true;
        }
        if let Some(c) = config {
            let (sps, _pps) = avcc::record(&c.record);
            let info = parse_sps(sps).expect("the record's SPS parses");
            assert_eq!(
                (c.width, c.height),
                (info.width, info.height),
                "config size"
            );
        }
        let nals = avcc::nals(frame.data());
        assert!(!nals.is_empty(), "an accepted unit without NAL units");
        assert!(nals.iter().all(|n| n[0] & 0x1F != 9), "AUD kept in AVCC");
        assert_eq!(
            frame.keyframe,
            nals.iter().any(|n| n[0] & 0x1F == 5),
            "keyframe flag"
        );
    }
});
