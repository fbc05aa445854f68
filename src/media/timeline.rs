//! Timeline: 33-bit 90 kHz PTS/DTS of one program → RTMP milliseconds.
//!
//! Guarantees, per track: output DTS never decreases; the 33-bit wrap is invisible; a
//! discontinuity (flagged, or a jump larger than [`MAX_JUMP_90K`]) rebases the program so output
//! continues one frame after the last output, for every track with one shared offset, so A/V
//! sync inside the new segment is kept. The first mapped timestamp becomes 0 ms.

/// A jump between two consecutive DTS of one track larger than this (forwards) or than
/// [`MAX_BACKWARD_90K`] (backwards) is a discontinuity even without the flag: 5 s.
pub const MAX_JUMP_90K: i64 = 5 * 90_000;
/// Backward steps of one track up to this are reordering noise, clamped rather than rebased.
pub const MAX_BACKWARD_90K: i64 = 90_000;
const WRAP_90K: i64 = 1 << 33;
const HALF_WRAP_90K: i64 = 1 << 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    Video = 0,
    Audio = 1,
}

/// A mapped timestamp: RTMP DTS in ms and the composition offset (PTS − DTS) in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub dts_ms: u32,
    pub cts_ms: i32,
}

#[derive(Clone, Copy, Debug, Default)]
struct TrackState {
    /// Last unwrapped input DTS (90 kHz, 64-bit).
    last_in_90k: Option<i64>,
    /// Last output DTS (90 kHz, offset applied).
    last_out_90k: Option<i64>,
    /// Last observed DTS step, used as the frame duration at a rebase.
    step_90k: i64,
    /// Set at a rebase caused by another track: unwrap against the program anchor.
    resync: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineStats {
    pub rebases: u64,
    /// Timestamps raised to keep a track's output monotonic.
    pub clamped: u64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    tracks: [TrackState; 2],
    /// Added to unwrapped input to get output (90 kHz).
    offset_90k: i64,
    /// Unwrapped input of the most recent sample of any track (reference for resync).
    anchor_in_90k: Option<i64>,
    stats: TimelineStats,
}

/// Signed difference `a − b` of two 33-bit values, folded into (−2^32, 2^32].
pub(crate) fn diff33(a: u64, b: i64) -> i64 {
    let d = (a as i64 - b.rem_euclid(WRAP_90K)).rem_euclid(WRAP_90K);
    if d > HALF_WRAP_90K { d - WRAP_90K } else { d }
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &TimelineStats {
        &self.stats
    }

    /// Maps one sample. `pts_90k`/`dts_90k` are 33-bit wire values (masked here);
    /// `discontinuity` is the TS discontinuity indicator of the sample's PES.
    pub fn map(&mut self, track: Track, dts_90k: u64, pts_90k: u64, discontinuity: bool) -> Mapped {
        let dts_90k = dts_90k & (WRAP_90K as u64 - 1);
        let pts_90k = pts_90k & (WRAP_90K as u64 - 1);
        let t = track as usize;
        let st = self.tracks[t];
        let reference = match (st.resync, st.last_in_90k, self.anchor_in_90k) {
            (false, Some(last), _) => Some(last),
            (_, _, anchor) => anchor,
        };
        let in_90k = match reference {
            Some(r) => r + diff33(dts_90k, r),
            None => {
                // Very first sample of the program: it maps to 0.
                let first = dts_90k as i64;
                self.offset_90k = -first;
                first
            }
        };
        let jumped = match reference {
            Some(r) => {
                let step = in_90k - r;
                !(-MAX_BACKWARD_90K..=MAX_JUMP_90K).contains(&step)
            }
            None => false,
        };
        if (discontinuity && !st.resync && st.last_in_90k.is_some()) || jumped {
            self.rebase(t, in_90k);
        }
        let out = self.output(t, in_90k);
        let cts_90k = diff33(pts_90k, dts_90k as i64);
        Mapped {
            dts_ms: ms_u32(out),
            cts_ms: ms_i32(cts_90k),
        }
    }

    /// Chooses a new offset so that `in_90k` lands one step after the newest output of any
    /// track; every other track re-anchors on its next sample.
    fn rebase(&mut self, t: usize, in_90k: i64) {
        let newest_out = self
            .tracks
            .iter()
            .filter_map(|s| s.last_out_90k)
            .max()
            .unwrap_or(0);
        let step = match self.tracks[t].step_90k {
            s if s > 0 && s <= 9_000 => s,
            _ => 3_000, // 1/30 s when no sane step is known
        };
        self.offset_90k = newest_out + step - in_90k;
        self.stats.rebases += 1;
        for (i, s) in self.tracks.iter_mut().enumerate() {
            if i != t {
                s.resync = true;
            }
        }
    }

    fn output(&mut self, t: usize, in_90k: i64) -> i64 {
        let mut out = in_90k + self.offset_90k;
        if out < 0 {
            // A sample slightly older than the first one sent (audio overlapping the starting
            // keyframe): the stream cannot go below 0.
            out = 0;
            self.stats.clamped += 1;
        }
        let st = &mut self.tracks[t];
        if let Some(last_out) = st.last_out_90k {
            if out < last_out {
                out = last_out;
                self.stats.clamped += 1;
            }
            if let Some(last_in) = st.last_in_90k {
                let step = in_90k - last_in;
                if step > 0 && !st.resync {
                    st.step_90k = step;
                }
            }
        }
        st.last_in_90k = Some(in_90k);
        st.last_out_90k = Some(out);
        st.resync = false;
        self.anchor_in_90k = Some(in_90k);
        out
    }

    /// Last output DTS of a track, ms.
    pub fn last_ms(&self, track: Track) -> Option<u32> {
        self.tracks[track as usize].last_out_90k.map(ms_u32)
    }
}

/// 90 kHz → ms, wrapping into the 32-bit RTMP timestamp space.
fn ms_u32(t_90k: i64) -> u32 {
    (t_90k.div_euclid(90) & 0xFFFF_FFFF) as u32
}

fn ms_i32(t_90k: i64) -> i32 {
    i32::try_from(t_90k.div_euclid(90)).unwrap_or(if t_90k < 0 { i32::MIN } else { i32::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 3_600; // 25 fps
    const AUDIO: u64 = 1_920; // 1024 samples at 48 kHz

    #[test]
    fn first_sample_is_zero_and_cts_kept() {
        let mut tl = Timeline::new();
        let m = tl.map(Track::Video, 900_000, 900_000 + 2 * FRAME, false);
        assert_eq!(
            m,
            Mapped {
                dts_ms: 0,
                cts_ms: 80
            }
        );
        let m = tl.map(Track::Video, 900_000 + FRAME, 900_000 + 4 * FRAME, false);
        assert_eq!(
            m,
            Mapped {
                dts_ms: 40,
                cts_ms: 120
            }
        );
    }

    #[test]
    fn wrap_33_bit_is_invisible() {
        let mut tl = Timeline::new();
        let start = (1u64 << 33) - 10 * FRAME;
        let mut last = 0;
        for i in 0..20u64 {
            let dts = (start + i * FRAME) & ((1 << 33) - 1);
            let m = tl.map(Track::Video, dts, dts, false);
            assert_eq!(u64::from(m.dts_ms), i * 40, "frame {i}");
            assert!(m.dts_ms >= last);
            last = m.dts_ms;
        }
        assert_eq!(tl.stats().rebases, 0);
    }

    #[test]
    fn source_restart_rebases_both_tracks_continuously() {
        let mut tl = Timeline::new();
        let (mut v, mut a) = (1_000_000u64, 1_000_000u64);
        let mut last = [0u32; 2];
        for _ in 0..50 {
            last[0] = tl.map(Track::Video, v, v, false).dts_ms;
            last[1] = tl.map(Track::Audio, a, a, false).dts_ms;
            v += FRAME;
            a += AUDIO;
        }
        // Source restarts: timestamps jump back to near zero, no flag.
        let (v2, a2) = (5_000u64, 5_000u64 + 900);
        let mv = tl.map(Track::Video, v2, v2, false);
        let ma = tl.map(Track::Audio, a2, a2, false);
        assert_eq!(
            tl.stats().rebases,
            1,
            "one rebase for the program, not per track"
        );
        assert!(mv.dts_ms > last[0] && mv.dts_ms <= last[0].max(last[1]) + 40);
        assert!(ma.dts_ms >= last[1]);
        // Inside the new segment, A/V offset is the source's (900 ticks = 10 ms).
        assert_eq!(ma.dts_ms - mv.dts_ms, 10);
        let mv2 = tl.map(Track::Video, v2 + FRAME, v2 + FRAME, false);
        assert_eq!(mv2.dts_ms - mv.dts_ms, 40);
    }

    #[test]
    fn discontinuity_flag_forward_jump() {
        let mut tl = Timeline::new();
        for i in 0..10 {
            tl.map(Track::Video, i * FRAME, i * FRAME, false);
        }
        // Small forward jump of 2 s with the flag: rebased to continue after the last frame.
        let m = tl.map(Track::Video, 9 * FRAME + 180_000, 9 * FRAME + 180_000, true);
        assert_eq!(m.dts_ms, 400);
        assert_eq!(tl.stats().rebases, 1);
    }

    #[test]
    fn small_backstep_is_clamped_not_rebased() {
        let mut tl = Timeline::new();
        tl.map(Track::Audio, 10_000, 10_000, false);
        let m = tl.map(Track::Audio, 9_000, 9_000, false);
        assert_eq!(m.dts_ms, 0);
        assert_eq!(tl.stats().clamped, 1);
        assert_eq!(tl.stats().rebases, 0);
    }

    #[test]
    fn monotonic_under_random_input() {
        let mut tl = Timeline::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut last = [None::<u32>; 2];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let track = if x & 1 == 0 {
                Track::Video
            } else {
                Track::Audio
            };
            let dts = x >> 20;
            let m = tl.map(track, dts, dts.wrapping_add(x & 0xFFFF), x & 0x100 != 0);
            if let Some(l) = last[track as usize] {
                // Monotonic modulo the 32-bit RTMP wrap (49 days).
                assert!(m.dts_ms.wrapping_sub(l) < 0x8000_0000, "{l} → {}", m.dts_ms);
            }
            last[track as usize] = Some(m.dts_ms);
        }
    }
}
