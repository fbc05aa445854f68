//! The timeline (90 kHz PTS/DTS → RTMP ms) under arbitrary sample sequences: steady steps,
//! reordering noise, jumps both ways, 33-bit wraps, discontinuity flags, interleaved tracks.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use onair::media::timeline::{MAX_JUMP_90K, Timeline, Track};
use onair_fuzz::media_check::not_before;

#[derive(Arbitrary, Debug)]
enum Dts {
    /// A step from the track's previous DTS (the common case).
    Step(i16),
    /// A step scaled up to the whole 33-bit range.
    Jump(i32),
    /// Any 64-bit value (the timeline masks to 33 bits).
    Abs(u64),
}

#[derive(Arbitrary, Debug)]
struct Sample {
    audio: bool,
    dts: Dts,
    /// PTS − DTS (may be negative: malformed input).
    cts: i32,
    discontinuity: bool,
}

const WRAP: u64 = 1 << 33;

fuzz_target!(|samples: Vec<Sample>| {
    let mut tl = Timeline::new();
    let mut last_in = [0u64; 2];
    let mut last_out: [Option<u32>; 2] = [None; 2];
    let mut prev_track = None;
    // The previous sample was neither clamped nor rebased.
    let mut prev_clean = false;
    for (i, s) in samples.iter().enumerate() {
        let (track, t) = if s.audio {
            (Track::Audio, 1)
        } else {
            (Track::Video, 0)
        };
        let step = match s.dts {
            Dts::Step(d) => i64::from(d),
            Dts::Jump(d) => i64::from(d) * 4,
            Dts::Abs(_) => 0,
        };
        let dts = match s.dts {
            Dts::Abs(a) => a,
            _ => (last_in[t] as i64)
                .wrapping_add(step)
                .rem_euclid(WRAP as i64) as u64,
        };
        let pts = (dts as i64)
            .wrapping_add(i64::from(s.cts))
            .rem_euclid(WRAP as i64) as u64;
        let before = tl.stats().clone();
        let m = tl.map(track, dts, pts, s.discontinuity);
        let after = tl.stats().clone();
        if i == 0 {
            assert_eq!(m.dts_ms, 0, "the first sample maps to 0");
        }
        if let Some(l) = last_out[t] {
            assert!(not_before(m.dts_ms, l), "{track:?} {l} → {}", m.dts_ms);
            // A steady step on the same track, nothing else in between, no clamp or rebase
            // now or on the previous sample: output moves by exactly the input step (± the
            // ms rounding).
            let steady = matches!(s.dts, Dts::Step(_))
                && (0..=MAX_JUMP_90K).contains(&step)
                && !s.discontinuity
                && prev_track == Some(t)
                && prev_clean
                && after == before;
            if steady {
                let got = i64::from(m.dts_ms.wrapping_sub(l));
                assert!((got - step / 90).abs() <= 1, "step {step} → {got} ms");
            }
        }
        assert_eq!(i64::from(m.cts_ms), i64::from(s.cts).div_euclid(90), "cts");
        last_in[t] = dts;
        last_out[t] = Some(m.dts_ms);
        prev_track = Some(t);
        prev_clean = after == before;
    }
});
