//! Tests of `media::h264` (a separate file to keep h264.rs short): golden checks against
//! ffmpeg/ffprobe fixtures in tests/data, hand-built edge cases and a deterministic fuzz loop.

use super::*;

// Fixtures from scripts/make-codec-fixtures.sh (ffmpeg 5.1 / libx264, AUD inserted by the
// h264_metadata bsf at the start of every access unit). The `.avcC.bin` files are the
// AVCDecoderConfigurationRecord ffmpeg's FLV muxer wrote for the same stream.
const HIGH: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264high_bframes_320x240.h264");
const HIGH_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264high_bframes_320x240.avcC.bin");
const BASE720: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264baseline_1280x720.h264");
const BASE720_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264baseline_1280x720.avcC.bin");
const BASE1080: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264baseline_1920x1080.h264");
const BASE1080_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264baseline_1920x1080.avcC.bin");
const HI422: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264high422_10bit_cqm_360x202.h264");
const HI422_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264high422_10bit_cqm_360x202.avcC.bin");
const HI444: &[u8] = include_bytes!("../../tests/data/ffmpeg_h264high444_cqmcustom_170x100.h264");
const HI444_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264high444_cqmcustom_170x100.avcC.bin");
const INTERLACED: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264main_interlaced_320x240.h264");
const INTERLACED_AVCC: &[u8] =
    include_bytes!("../../tests/data/ffmpeg_h264main_interlaced_320x240.avcC.bin");

/// What ffprobe says about a fixture. All values were read by running
/// `ffprobe -show_streams` (width, height, level, r_frame_rate; profile_idc is the numeric
/// value of ffprobe's profile name, also byte 1 of ffmpeg's avcC) and
/// `ffprobe -show_packets -show_entries packet=flags` (packet count, indices of `K` packets,
/// decode order) on the files in tests/data.
struct Golden {
    name: &'static str,
    stream: &'static [u8],
    avcc: &'static [u8],
    width: u32,
    height: u32,
    profile_idc: u8,
    level_idc: u8,
    frame_rate: f64,
    packets: usize,
    keyframes: &'static [usize],
}

const GOLDEN: &[Golden] = &[
    Golden {
        name: "high 320x240 (profile High, level 13, 25/1)",
        stream: HIGH,
        avcc: HIGH_AVCC,
        width: 320,
        height: 240,
        profile_idc: 100,
        level_idc: 13,
        frame_rate: 25.0,
        packets: 50,
        keyframes: &[0, 25],
    },
    Golden {
        name: "baseline 1280x720 (Constrained Baseline, level 31, 25/1)",
        stream: BASE720,
        avcc: BASE720_AVCC,
        width: 1280,
        height: 720,
        profile_idc: 66,
        level_idc: 31,
        frame_rate: 25.0,
        packets: 25,
        keyframes: &[0],
    },
    Golden {
        name: "baseline 1920x1080 (coded 1088, level 40, 25/1)",
        stream: BASE1080,
        avcc: BASE1080_AVCC,
        width: 1920,
        height: 1080,
        profile_idc: 66,
        level_idc: 40,
        frame_rate: 25.0,
        packets: 13,
        keyframes: &[0],
    },
    Golden {
        name: "High 4:2:2 10-bit 360x202 (level 13, 25/1)",
        stream: HI422,
        avcc: HI422_AVCC,
        width: 360,
        height: 202,
        profile_idc: 122,
        level_idc: 13,
        frame_rate: 25.0,
        packets: 2,
        keyframes: &[0],
    },
    Golden {
        name: "High 4:4:4 Predictive 170x100 (level 11, 30/1)",
        stream: HI444,
        avcc: HI444_AVCC,
        width: 170,
        height: 100,
        profile_idc: 244,
        level_idc: 11,
        frame_rate: 30.0,
        packets: 2,
        keyframes: &[0],
    },
    Golden {
        name: "Main interlaced 320x240 (field_order tt, level 21, 25/1)",
        stream: INTERLACED,
        avcc: INTERLACED_AVCC,
        width: 320,
        height: 240,
        profile_idc: 77,
        level_idc: 21,
        frame_rate: 25.0,
        packets: 3,
        keyframes: &[0],
    },
];

/// Test-side reference splitter (byte loop, independent of `split_annexb`): start-code
/// positions (first `00` of `00 00 01`) and NAL bodies with trailing zeros removed.
fn ref_nals(data: &[u8]) -> Vec<(usize, &[u8])> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).copied().unwrap_or(data.len());
        while end > s + 3 && data[end - 1] == 0 {
            end -= 1;
        }
        out.push((s, &data[s + 3..end]));
    }
    out
}

/// Splits an elementary stream into access units at every AUD start code. The leading zero
/// of the AUD's 4-byte start code stays at the end of the previous unit (a trailing zero).
fn split_aus(data: &[u8]) -> Vec<&[u8]> {
    let cuts: Vec<usize> = ref_nals(data)
        .into_iter()
        .filter(|(_, nal)| nal[0] & 0x1F == 9)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(cuts.first(), Some(&1), "stream starts with 00 00 00 01 09");
    let mut aus = Vec::new();
    for (k, &c) in cuts.iter().enumerate() {
        let end = cuts.get(k + 1).copied().unwrap_or(data.len());
        aus.push(&data[c..end]);
    }
    aus
}

/// Walks an AVCC buffer; `None` unless the 4-byte lengths chain exactly to the end.
fn parse_avcc(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut nals = Vec::new();
    while !data.is_empty() {
        let len_bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let nal = data.get(4..4 + len)?;
        nals.push(nal);
        data = &data[4 + len..];
    }
    Some(nals)
}

fn sps_of(stream: &[u8]) -> &[u8] {
    ref_nals(stream)
        .into_iter()
        .map(|(_, n)| n)
        .find(|n| n[0] & 0x1F == 7)
        .expect("fixture has an SPS")
}

fn push_all(
    rp: &mut H264Repacker,
    aus: &[&[u8]],
    configs: &mut Vec<(usize, AvcConfig)>,
    frames: &mut Vec<AvcFrame>,
) {
    for au in aus {
        let (cfg, frame) = rp.push(au).expect("real access unit converts");
        if let Some(cfg) = cfg {
            configs.push((frames.len(), cfg));
        }
        frames.push(frame);
    }
}

#[test]
fn golden_streams_match_ffprobe_and_ffmpeg_avcc() {
    for g in GOLDEN {
        let aus = split_aus(g.stream);
        assert_eq!(aus.len(), g.packets, "{}: AU count", g.name);
        let mut rp = H264Repacker::new();
        let (mut configs, mut frames) = (Vec::new(), Vec::new());
        push_all(&mut rp, &aus, &mut configs, &mut frames);
        // SPS/PPS are repeated at each IDR with identical bytes: one config only.
        assert_eq!(configs.len(), 1, "{}", g.name);
        let (at, cfg) = &configs[0];
        assert_eq!(*at, 0, "{}", g.name);
        assert_eq!((cfg.width, cfg.height), (g.width, g.height), "{}", g.name);
        assert_eq!(cfg.profile_idc, g.profile_idc, "{}", g.name);
        assert_eq!(cfg.level_idc, g.level_idc, "{}", g.name);
        assert_eq!(cfg.frame_rate, Some(g.frame_rate), "{}", g.name);
        assert_eq!(&cfg.record[..], g.avcc, "{}: avcC", g.name);
        let keys: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].keyframe).collect();
        assert_eq!(keys, g.keyframes, "{}: keyframes", g.name);
    }
}

#[test]
fn avcc_output_carries_input_nals_without_aud() {
    for g in GOLDEN {
        let mut rp = H264Repacker::new();
        for au in split_aus(g.stream) {
            let (_, frame) = rp.push(au).expect("converts");
            let got = parse_avcc(frame.data()).expect("lengths chain to the end");
            let want: Vec<&[u8]> = ref_nals(au)
                .into_iter()
                .map(|(_, n)| n)
                .filter(|n| n[0] & 0x1F != 9)
                .collect();
            assert_eq!(got, want, "{}", g.name);
            assert!(got.iter().all(|n| n[0] & 0x1F != 9));
            let idr = got.iter().any(|n| n[0] & 0x1F == 5);
            assert_eq!(frame.keyframe, idr);
        }
    }
}

/// Facts about ffmpeg/x264 output the pipeline relies on (checked on the fixtures): every
/// AU starts with an AUD (4-byte start code); IDR units carry AUD, SPS, PPS (4-byte start
/// codes), then an SEI only in the very first unit (x264's version string), then the IDR
/// slice (3-byte start codes).
#[test]
fn ffmpeg_x264_nal_layout() {
    let types =
        |au: &[u8]| -> Vec<u8> { ref_nals(au).into_iter().map(|(_, n)| n[0] & 0x1F).collect() };
    let aus = split_aus(HIGH);
    assert_eq!(types(aus[0]), [9, 7, 8, 6, 5]);
    assert_eq!(types(aus[1]), [9, 1]);
    assert_eq!(types(aus[25]), [9, 7, 8, 5]);
    assert_eq!(&HIGH[..5], &[0, 0, 0, 1, 0x09]);
    assert_eq!(&aus[0][..4], &[0, 0, 1, 0x09]);
    assert_eq!(aus[0].last(), Some(&0), "next AUD's 4-byte start code");
}

#[test]
fn sps_change_mid_stream_gives_new_config() {
    let mut aus = split_aus(HIGH);
    aus.extend(split_aus(BASE1080));
    let mut rp = H264Repacker::new();
    let (mut configs, mut frames) = (Vec::new(), Vec::new());
    push_all(&mut rp, &aus, &mut configs, &mut frames);
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[0].0, 0);
    assert_eq!((configs[0].1.width, configs[0].1.height), (320, 240));
    assert_eq!(configs[1].0, 50);
    assert_eq!((configs[1].1.width, configs[1].1.height), (1920, 1080));
    assert_eq!(configs[1].1.profile_idc, 66);
    assert_eq!(&configs[1].1.record[..], BASE1080_AVCC);
    assert!(frames[50].keyframe);
}

#[test]
fn frame_before_parameter_sets_is_refused() {
    let aus = split_aus(HIGH);
    let mut rp = H264Repacker::new();
    assert_eq!(rp.push(aus[1]), Err(H264Error::NoParameterSets));
    // SPS alone is not enough.
    let sps_only = [&[0u8, 0, 0, 1][..], sps_of(HIGH), &[0, 0, 1], &aus[1][5..]].concat();
    assert_eq!(rp.push(&sps_only), Err(H264Error::NoParameterSets));
    let (cfg, frame) = rp.push(aus[0]).expect("IDR with SPS/PPS");
    assert!(cfg.is_some() && frame.keyframe);
    let (cfg, frame) = rp.push(aus[1]).expect("P frame");
    assert!(cfg.is_none() && !frame.keyframe);
}

#[test]
fn config_deferred_until_a_unit_is_accepted() {
    let aus = split_aus(HIGH);
    let mut rp = H264Repacker::new();
    // An SPS-only unit updates the SPS but is refused; the PPS arrives with the IDR.
    let sps_only = [&[0u8, 0, 0, 1][..], sps_of(HIGH)].concat();
    assert_eq!(rp.push(&sps_only), Err(H264Error::NoParameterSets));
    let (cfg, _) = rp.push(aus[0]).expect("IDR");
    assert_eq!(cfg.map(|c| c.record.to_vec()), Some(HIGH_AVCC.to_vec()));
}

#[test]
fn start_code_forms_and_trailing_zeros() {
    let sps = sps_of(HIGH);
    let pps = [0x68, 0xEB, 0xE2, 0x4B, 0x22, 0xC0];
    let idr = [0x65, 0x88, 0x84, 0x00, 0x03, 0x01, 0x7F];
    let mut au = vec![0xAB, 0x00]; // junk before the first start code is ignored
    au.extend_from_slice(&[0, 0, 1, 0x09, 0xF0]);
    au.extend_from_slice(&[0, 0, 0, 1]);
    au.extend_from_slice(sps);
    au.extend_from_slice(&[0, 0, 1]);
    au.extend_from_slice(&pps);
    au.extend_from_slice(&[0, 0, 0, 0, 1]);
    au.extend_from_slice(&idr);
    au.extend_from_slice(&[0, 0, 0, 0]);
    let mut rp = H264Repacker::new();
    let (cfg, frame) = rp.push(&au).expect("converts");
    let mut want = Vec::new();
    for nal in [sps, &pps[..], &idr[..]] {
        want.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        want.extend_from_slice(nal);
    }
    assert_eq!(frame.data(), &want[..]);
    assert!(frame.keyframe);
    let cfg = cfg.expect("first parameter sets");
    assert_eq!(&cfg.record[..], HIGH_AVCC);
}

#[test]
fn empty_and_aud_only_units() {
    let mut rp = H264Repacker::new();
    assert_eq!(rp.push(&[]), Err(H264Error::Empty));
    assert_eq!(rp.push(&[1, 2, 3, 4, 5]), Err(H264Error::Empty));
    assert_eq!(rp.push(&[0, 0, 1]), Err(H264Error::Empty));
    assert_eq!(
        rp.push(&[0, 0, 0, 1, 0x09, 0xF0, 0, 0]),
        Err(H264Error::Empty)
    );
    assert_eq!(rp.push(&[0, 0, 1, 0, 0, 1, 0, 0, 0]), Err(H264Error::Empty));
}

#[test]
fn bad_parameter_sets_keep_the_current_ones() {
    let aus = split_aus(HIGH);
    let mut rp = H264Repacker::new();
    assert!(rp.push(aus[0]).is_ok());
    let sps = sps_of(HIGH);
    let bad = [&[0u8, 0, 0, 1][..], &sps[..5], &[0, 0, 1], &aus[1][5..]].concat();
    assert!(matches!(rp.push(&bad), Err(H264Error::BadSps(_))));
    let bad_pps = [
        &[0u8, 0, 0, 1, 0x68, 0x00, 0x00, 0x00][..],
        &[0, 0, 1],
        &aus[1][5..],
    ];
    assert!(matches!(
        rp.push(&bad_pps.concat()),
        Err(H264Error::BadPps(_))
    ));
    let (cfg, _) = rp.push(aus[1]).expect("still configured");
    assert!(cfg.is_none());
}

#[test]
fn parse_sps_fields_of_real_streams() {
    // Values cross-checked with `ffmpeg -bsf:v trace_headers` on the fixtures.
    let s = parse_sps(sps_of(HIGH)).expect("parses");
    assert_eq!(
        (s.chroma_format_idc, s.bit_depth_luma, s.timing),
        (1, 8, Some((1, 50)))
    );
    let s = parse_sps(sps_of(HI422)).expect("parses");
    assert_eq!(
        (s.chroma_format_idc, s.bit_depth_luma, s.bit_depth_chroma),
        (2, 10, 10)
    );
    let s = parse_sps(sps_of(HI444)).expect("parses");
    assert_eq!((s.chroma_format_idc, s.separate_colour_plane), (3, false));
    assert_eq!(s.timing, Some((1, 60)));
    let s = parse_sps(sps_of(INTERLACED)).expect("parses");
    assert!(!s.frame_mbs_only);
    assert_eq!((s.width, s.height), (320, 240));
    let s = parse_sps(sps_of(BASE1080)).expect("parses");
    assert_eq!((s.constraint_flags, s.height), (0xC0, 1080));
}

/// Hand-built SPS from scripts/make-sps-scaling-vector.py: High 4:4:4, all 12 SPS scaling
/// lists coded (absent / explicit / use-default / early end), a VUI with Extended_SAR 4:3,
/// overscan, colour description and chroma loc before timing 1001/60000. Spliced over the
/// SPS of the 4:4:4 fixture, ffprobe reported 170x100, SAR 4:3, r_frame_rate 30000/1001,
/// and trace_headers parsed it without error.
const SCALING_SPS_HEX: &str = "67f4000b91a8413214c7102450b183470f084228a1409603200cbfffce574431cae886395d10c72ba218e574431cae886395d10c72ba218e574431e114230500f00eb492492492492492492492492492492492492492492492492b4167f3c6ffe00080007ee0202034a000007d20001d4c1080";

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn sps_with_scaling_lists_and_full_vui() {
    let sps = from_hex(SCALING_SPS_HEX);
    let s = parse_sps(&sps).expect("parses");
    assert_eq!(
        (s.profile_idc, s.level_idc, s.chroma_format_idc),
        (244, 11, 3)
    );
    assert_eq!((s.width, s.height), (170, 100));
    assert_eq!(s.timing, Some((1001, 60000)));
    let fr = s.frame_rate().expect("timing");
    assert!((fr - 30000.0 / 1001.0).abs() < 1e-9);
    // Cut anywhere inside the scaling lists or geometry: an error, never a panic.
    for cut in 1..60 {
        assert!(parse_sps(&sps[..cut]).is_err(), "cut {cut}");
    }
    // Cut inside the VUI: size still known, no timing.
    let s = parse_sps(&sps[..sps.len() - 12]).expect("geometry complete");
    assert_eq!((s.width, s.height, s.timing), (170, 100, None));
}

#[test]
fn avc_record_layout() {
    let sps = sps_of(HIGH);
    let info = parse_sps(sps).expect("parses");
    let pps = [0x68, 0xEB, 0xE2, 0x4B, 0x22, 0xC0];
    let rec = build_avc_record(sps, &pps, &info);
    assert_eq!(&rec[..6], &[1, 100, 0x00, 13, 0xFF, 0xE1]);
    assert_eq!(usize::from(u16::from_be_bytes([rec[6], rec[7]])), sps.len());
    assert_eq!(&rec[rec.len() - 4..], &[0xFD, 0xF8, 0xF8, 0x00]);
    // ffmpeg's 4:2:2 10-bit record ends in chroma 2 and depths 10.
    assert_eq!(
        &HI422_AVCC[HI422_AVCC.len() - 4..],
        &[0xFE, 0xFA, 0xFA, 0x00]
    );
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    match rng.below(5) {
        0 => v.truncate(rng.below(v.len() + 1)),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(v.len());
                if let Some(b) = v.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
        }
        2 => {
            let i = rng.below(v.len() + 1);
            v.splice(i..i, [0, 0, 1, (rng.next() as u8) & 0x7F]);
        }
        3 => {
            for b in v.iter_mut().skip(4).take(40) {
                *b ^= rng.next() as u8 & 0x11;
            }
        }
        _ => {
            v = (0..rng.below(64))
                .map(|_| rng.next() as u8 & 0x83)
                .collect()
        }
    }
    v
}

#[test]
fn fuzz_mutated_units_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut pool: Vec<&[u8]> = Vec::new();
    for stream in [HIGH, BASE1080, HI422, HI444, INTERLACED] {
        pool.extend(split_aus(stream).into_iter().take(4));
    }
    let sps_pool: Vec<Vec<u8>> = [HIGH, HI422, HI444, INTERLACED]
        .iter()
        .map(|s| sps_of(s).to_vec())
        .chain([from_hex(SCALING_SPS_HEX)])
        .collect();
    let mut rp = H264Repacker::new();
    let mut accepted = 0;
    for _ in 0..4000 {
        let pick = rng.below(pool.len());
        let au = mutate(&mut rng, pool[pick]);
        if let Ok((_, frame)) = rp.push(&au) {
            assert!(parse_avcc(frame.data()).is_some());
            accepted += 1;
        }
        let pick = rng.below(sps_pool.len());
        let sps = mutate(&mut rng, &sps_pool[pick]);
        let _ = parse_sps(&sps);
    }
    assert!(
        accepted > 100,
        "fuzz exercised the success path ({accepted})"
    );
}

proptest::proptest! {
    /// The vectorised start-code search splits exactly like the byte loop, on data dense in
    /// `00` and `01` bytes (start codes, near misses, runs of zeros).
    #[test]
    fn split_annexb_matches_the_byte_loop(data in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::strategy::Just(0u8),
            proptest::strategy::Just(1u8),
            proptest::prelude::any::<u8>()
        ],
        0..300,
    )) {
        let mut got = Vec::new();
        split_annexb(&data, &mut got);
        let got: Vec<&[u8]> = got.iter().map(|r| &data[r.clone()]).collect();
        let want: Vec<&[u8]> = ref_nals(&data).into_iter().map(|(_, n)| n).filter(|n| !n.is_empty()).collect();
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn the_flv_header_goes_in_front_of_the_avcc_data_without_a_copy() {
    let f = AvcFrame::from_avcc(&[0, 0, 0, 2, 0x65, 0x88], true);
    let data_at = f.data().as_ptr();
    assert_eq!(f.data(), &[0, 0, 0, 2, 0x65, 0x88]);
    let tagged = f.into_tagged([0x17, 1, 0, 0, 0]);
    assert_eq!(&tagged[..], &[0x17, 1, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88]);
    assert_eq!(
        tagged[AvcFrame::HEADROOM..].as_ptr(),
        data_at,
        "the data was moved"
    );
}
