//! Matching what the sink received to what the sender sent (pure): latency per frame, frames
//! lost and DTS gaps, for one stream.
//!
//! The sink knows a video message only by its RTMP timestamp (ms), whose origin each relay
//! chooses. The first keyframe received is mapped to the keyframe the sender sent last before
//! that receive time (keyframes are 2 s apart, far more than any sane latency); every other
//! message then maps to the source frame whose DTS is `rtmp_ms + offset`, within
//! [`MATCH_TOLERANCE_MS`].

/// A video frame as the sender sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// DTS from the feed's first frame, in ms (rounded down).
    pub dts_ms: u64,
    pub key: bool,
    /// When the datagram holding the frame's last TS packet was sent (monotonic ns).
    pub last_packet_ns: u64,
    /// When the datagram starting the next video PES was sent, if it was.
    pub next_start_ns: Option<u64>,
}

/// A video message as the sink received it (sequence headers excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub rtmp_ms: u32,
    pub key: bool,
    pub recv_ns: u64,
}

/// What one stream delivered within the measured window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamResult {
    /// Frames sent (last packet) within the window, after delivery started.
    pub expected: u64,
    /// Of those, frames received.
    pub received: u64,
    /// Frames from the first received keyframe to the window's end that never arrived.
    pub lost: u64,
    /// Received frames whose predecessor in receive order is not the previous source frame,
    /// or that did not map to any source frame.
    pub dts_gaps: u64,
    /// Per received frame in the window: receive − send of its last packet (ns).
    pub latency_ns: Vec<u64>,
    /// Per received frame in the window: receive − send of the next PES start (ns, may be
    /// negative when a relay does not wait for it, e.g. a PES with a length).
    pub latency_after_next_start_ns: Vec<i64>,
    /// Delivery started (the first keyframe was mapped) no later than the window's start.
    pub started_in_time: bool,
}

/// Matches `rx` (in receive order) to `sent` (in decode order) over the window
/// `[from_ns, to_ns]` of last-packet send times.
pub fn analyze(sent: &[Sent], rx: &[Received], from_ns: u64, to_ns: u64) -> StreamResult {
    let mut r = StreamResult::default();
    let Some(first_key) = rx.iter().find(|m| m.key) else {
        return r;
    };
    let Some(anchor) = pick_anchor(sent, rx, first_key) else {
        return r;
    };
    r.started_in_time = sent[anchor].last_packet_ns <= from_ns;
    let offset = i64::try_from(sent[anchor].dts_ms).unwrap_or(0) - i64::from(first_key.rtmp_ms);
    let mut matched = vec![false; sent.len()];
    let mut prev: Option<usize> = None;
    for m in rx {
        let want = i64::from(m.rtmp_ms) + offset;
        let idx = nearest(sent, want)
            .filter(|&i| (sent[i].dts_ms as i64 - want).abs() <= MATCH_TOLERANCE_MS);
        let in_window = |i: usize| (from_ns..=to_ns).contains(&sent[i].last_packet_ns);
        match idx {
            Some(i) => {
                if in_window(i) {
                    if prev.is_some_and(|p| p + 1 != i) {
                        r.dts_gaps += 1;
                    }
                    if !matched[i] {
                        r.latency_ns
                            .push(m.recv_ns.saturating_sub(sent[i].last_packet_ns));
                        if let Some(ns) = sent[i].next_start_ns {
                            let d = i128::from(m.recv_ns) - i128::from(ns);
                            r.latency_after_next_start_ns
                                .push(i64::try_from(d).unwrap_or(i64::MAX));
                        }
                    }
                }
                matched[i] = true;
                prev = Some(i);
            }
            None => {
                // A message that is no source frame: counted as a gap if inside the window.
                if m.recv_ns >= from_ns && m.recv_ns <= to_ns {
                    r.dts_gaps += 1;
                }
                prev = None;
            }
        }
    }
    for (i, s) in sent.iter().enumerate() {
        let in_window = (from_ns..=to_ns).contains(&s.last_packet_ns);
        if in_window && i >= anchor {
            r.expected += 1;
            if matched[i] {
                r.received += 1;
            }
        }
        if i >= anchor && s.last_packet_ns <= to_ns && !matched[i] {
            r.lost += 1;
        }
    }
    r
}

/// How far a relay's timestamp may stray from the source DTS + offset and still name that
/// frame: under half a frame interval up to 40 fps. GStreamer's tsdemux corrects clock skew
/// on live input, so its timestamps wander a few ms from the source's DTS.
pub const MATCH_TOLERANCE_MS: i64 = 12;

/// A frame may be stamped received before the sender stamped it sent: the stamp is taken
/// after `sendmmsg` returns, and at 256 streams the sender can be held that long (it ran up
/// to 13 ms late). Causality is only checked beyond this. A wrong anchor is a whole GOP
/// (2 s) off, so the slack can be generous; at 5 ms one stream of a K = 256 run was anchored
/// a GOP early (50 frames "lost" at the window's end, 2 s latency, no DTS gap, no relay
/// counter showing anything).
const CAUSALITY_SLACK_NS: i128 = 100_000_000;

/// The source keyframe the first received keyframe is: among the keyframes sent before it
/// was received (within [`CAUSALITY_SLACK_NS`]: a relay that starts at a keyframe may deliver
/// it before the sender took its stamp, and the keyframe before would then be picked), the
/// latest one under which at most a few received frames (1 %, at least 2: stamps of a sender
/// held up beyond the slack) would have arrived before they were sent (a relay that buffers
/// seconds at start, like FFmpeg probing its input, then drains its backlog, rules out the
/// later candidates once it has caught up: every frame after that violates). Falls back to
/// the candidate with the fewest such violations.
fn pick_anchor(sent: &[Sent], rx: &[Received], first_key: &Received) -> Option<usize> {
    let violations = |anchor: usize| -> usize {
        let offset = i64::try_from(sent[anchor].dts_ms).unwrap_or(0) - i64::from(first_key.rtmp_ms);
        rx.iter()
            .filter(|m| {
                let want = i64::from(m.rtmp_ms) + offset;
                nearest(sent, want)
                    .filter(|&i| (sent[i].dts_ms as i64 - want).abs() <= MATCH_TOLERANCE_MS)
                    .is_some_and(|i| {
                        i128::from(m.recv_ns) - i128::from(sent[i].last_packet_ns)
                            < -CAUSALITY_SLACK_NS
                    })
            })
            .count()
    };
    let candidates: Vec<usize> = sent
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.key
                && i128::from(s.last_packet_ns)
                    <= i128::from(first_key.recv_ns) + CAUSALITY_SLACK_NS
        })
        .map(|(i, _)| i)
        .rev()
        .collect();
    // An earlier (wrong) anchor never has violations, so the latest candidate is taken while
    // its violations are a few stray stamps (a sender held up beyond the slack), not a backlog.
    let tolerated = (rx.len() / 100).max(2);
    let mut best: Option<(usize, usize)> = None;
    for &i in &candidates {
        let v = violations(i);
        if v <= tolerated {
            return Some(i);
        }
        if best.is_none_or(|(_, b)| v < b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Index of the frame whose DTS is nearest `dts_ms` (`sent` is in decode order).
fn nearest(sent: &[Sent], dts_ms: i64) -> Option<usize> {
    let target = u64::try_from(dts_ms).ok()?;
    let i = sent.partition_point(|s| s.dts_ms < target);
    [i.checked_sub(1), Some(i)]
        .into_iter()
        .flatten()
        .filter(|&j| j < sent.len())
        .min_by_key(|&j| sent[j].dts_ms.abs_diff(target))
}

/// Confirm → first frame of one stream: how long after the gate (consent) the sink got the
/// first video message, and how much of that was more than the wait for the first keyframe
/// that began after the gate to be sent whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstFrame {
    /// First video message received − gate (ns).
    pub after_gate_ns: i64,
    /// First video message received − send of the last packet of the first keyframe whose
    /// first packet was sent at or after the gate (ns); the target is ≤ 50 ms.
    pub excess_ns: i64,
}

/// A source frame as sent, for [`first_frame`]: keyframe flag, send times (monotonic ns) of
/// the datagrams holding its first and its last TS packet (0 = not sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentSpan {
    pub key: bool,
    pub first_packet_ns: u64,
    pub last_packet_ns: u64,
}

/// [`FirstFrame`] for a stream whose frames (decode order) were sent as `frames`, gated at
/// `gate_ns`, whose first video message arrived at `first_rx_ns`. `None` if no keyframe began
/// after the gate.
pub fn first_frame(frames: &[SentSpan], gate_ns: u64, first_rx_ns: u64) -> Option<FirstFrame> {
    let k = frames.iter().find(|f| {
        f.key && f.first_packet_ns > 0 && f.first_packet_ns >= gate_ns && f.last_packet_ns > 0
    })?;
    let d = |a: u64, b: u64| i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(i64::MAX);
    Some(FirstFrame {
        after_gate_ns: d(first_rx_ns, gate_ns),
        excess_ns: d(first_rx_ns, k.last_packet_ns),
    })
}

/// The `q`-quantile (0..=1) of `v` (sorted in place), nearest rank.
pub fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = (q * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// 30 fps frames, keyframe every 10, frame k's last packet sent at 1000 ms + 33 ms·k.
    fn sent(n: usize) -> Vec<Sent> {
        (0..n)
            .map(|k| Sent {
                dts_ms: (k as u64 * 100) / 3,
                key: k % 10 == 0,
                last_packet_ns: (1000 + 33 * k as u64) * MS,
                next_start_ns: Some((1001 + 33 * k as u64) * MS),
            })
            .collect()
    }

    /// The relay starts at source frame `from`, timestamps from 0, 5 ms of latency.
    fn received(s: &[Sent], from: usize, skip: &[usize]) -> Vec<Received> {
        s[from..]
            .iter()
            .enumerate()
            .filter(|(j, _)| !skip.contains(&(from + j)))
            .map(|(_, f)| Received {
                rtmp_ms: (f.dts_ms - s[from].dts_ms) as u32,
                key: f.key,
                recv_ns: f.last_packet_ns + 5 * MS,
            })
            .collect()
    }

    /// [`received`] from `from`, with each message's receive time (its index `j` among them)
    /// given by `at(j, recv_ns)`.
    fn received_at(s: &[Sent], from: usize, at: impl Fn(usize, u64) -> u64) -> Vec<Received> {
        received(s, from, &[])
            .into_iter()
            .enumerate()
            .map(|(j, m)| Received {
                recv_ns: at(j, m.recv_ns),
                ..m
            })
            .collect()
    }

    #[test]
    fn perfect_delivery() {
        let s = sent(100);
        let rx = received(&s, 10, &[]);
        let r = analyze(&s, &rx, 1500 * MS, 3000 * MS);
        assert!(r.started_in_time);
        assert_eq!(r.lost, 0);
        assert_eq!(r.dts_gaps, 0);
        assert_eq!(r.expected, r.received);
        assert!(r.expected > 40);
        assert!(r.latency_ns.iter().all(|&l| l == 5 * MS));
        assert!(
            r.latency_after_next_start_ns
                .iter()
                .all(|&l| l == 4_000_000)
        );
    }

    #[test]
    fn a_lost_frame_is_a_loss_and_a_gap() {
        let s = sent(100);
        let rx = received(&s, 10, &[50]);
        let r = analyze(&s, &rx, 1500 * MS, 3000 * MS);
        assert_eq!(r.lost, 1);
        assert_eq!(r.dts_gaps, 1);
        assert_eq!(r.expected, r.received + 1);
    }

    #[test]
    fn a_relay_that_buffers_seconds_then_catches_up() {
        let s = sent(300);
        // Starts at frame 0, but only 2.5 s after it was sent; drains its backlog at 1 frame
        // per ms, then forwards each frame 5 ms after it was sent.
        let t0 = s[0].last_packet_ns + 2500 * MS;
        let rx: Vec<Received> = s
            .iter()
            .enumerate()
            .map(|(j, f)| Received {
                rtmp_ms: f.dts_ms as u32,
                key: f.key,
                recv_ns: (t0 + j as u64 * MS).max(f.last_packet_ns + 5 * MS),
            })
            .collect();
        let r = analyze(&s, &rx, 5000 * MS, 9000 * MS);
        assert_eq!(r.lost, 0);
        assert_eq!(r.dts_gaps, 0);
        assert!(
            r.latency_ns.iter().all(|&l| l == 5 * MS),
            "{:?}",
            &r.latency_ns[..5]
        );
    }

    #[test]
    fn late_start_is_flagged() {
        let s = sent(100);
        let rx = received(&s, 40, &[]);
        let r = analyze(&s, &rx, 1500 * MS, 3000 * MS);
        assert!(!r.started_in_time);
        // Nothing received at all.
        assert_eq!(analyze(&s, &[], 0, 1), StreamResult::default());
    }

    #[test]
    fn quantiles() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
    #[test]
    fn first_frame_after_the_gate() {
        let span = |key, first: u64, last: u64| SentSpan {
            key,
            first_packet_ns: first * MS,
            last_packet_ns: last * MS,
        };
        // Keyframes at 0 and 2000 ms (each sent over 20 ms), deltas in between.
        let frames = [
            span(true, 0, 20),
            span(false, 33, 40),
            span(true, 2000, 2020),
            span(false, 2033, 2040),
        ];
        // Gate at 500 ms: the keyframe that began at 2000 ms is the first one; it arrived 3 ms
        // after its last packet.
        let f = first_frame(&frames, 500 * MS, 2023 * MS).expect("a keyframe after the gate");
        assert_eq!(f.after_gate_ns, 1523 * MS as i64);
        assert_eq!(f.excess_ns, 3 * MS as i64);
        // A gate after the last keyframe began: nothing to measure.
        assert_eq!(first_frame(&frames, 2001 * MS, 2100 * MS), None);
    }
    #[test]
    fn a_first_keyframe_stamped_before_its_send_is_still_the_anchor() {
        // Delivery starts at keyframe 20 (a relay gated after keyframe 10), and every frame
        // is stamped received 1 ms before the sender's stamp (taken after sendmmsg).
        let s = sent(60);
        let rx = received_at(&s, 20, |_, t| t - 6 * MS);
        let r = analyze(&s, &rx, 0, u64::MAX);
        assert_eq!(r.lost, 0);
        assert_eq!(r.dts_gaps, 0);
        assert_eq!(r.received, 40);
    }

    #[test]
    fn a_few_stamps_later_than_the_slack_do_not_move_the_anchor_either() {
        // Two frames stamped 150 ms after they arrived (beyond the causality slack; the
        // tolerance is 1 % of the frames, at least 2).
        let s = sent(80);
        let rx = received_at(&s, 20, |j, t| {
            if (30..32).contains(&j) {
                t - 155 * MS
            } else {
                t
            }
        });
        let r = analyze(&s, &rx, 0, u64::MAX);
        assert_eq!(r.lost, 0);
        assert_eq!(r.received, 60);
    }

    #[test]
    fn a_backlog_drained_late_still_rules_out_later_anchors() {
        // The relay holds 25 frames, then delivers them at once and stays ~5 ms behind: a
        // later keyframe as the anchor would put every caught-up frame before its send.
        let s = sent(120);
        let burst = s[44].last_packet_ns + 5 * MS;
        let rx = received_at(&s, 20, |j, t| if j < 25 { burst } else { t });
        let r = analyze(&s, &rx, 0, u64::MAX);
        assert_eq!(r.lost, 0);
        assert_eq!(r.dts_gaps, 0);
        assert_eq!(r.received, 100);
    }

    #[test]
    fn a_sender_late_to_stamp_a_few_frames_does_not_move_the_anchor_a_gop() {
        // Regression: the sender was held ~20 ms between sending two frames and stamping
        // them, so they were "received before sent"; the anchor then went one keyframe
        // earlier, where nothing is, and the stream showed 2 s latency and lost frames.
        let s = sent(80);
        let rx = received_at(
            &s,
            20,
            |j, t| if j == 7 || j == 8 { t - 25 * MS } else { t },
        );
        let r = analyze(&s, &rx, 0, u64::MAX);
        assert_eq!(r.lost, 0);
        assert_eq!(r.dts_gaps, 0);
        assert_eq!(r.received, 60);
        assert!(
            r.latency_ns.iter().all(|&l| l <= 5 * MS),
            "no frame 2 s late"
        );
    }
}
