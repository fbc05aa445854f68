//! A TS file prepared for the multi-stream sender (pure): its datagrams with their due times
//! (PCR pacing, from [`crate::fabric_sim::Schedule`]) and its video frames, each with the
//! datagram carrying its last TS packet and the datagram where the next video PES starts.

use crate::error::Result;
use crate::fabric_sim::Schedule;
use crate::media::pes::parse_pes_header;
use crate::media::ts::{SYNC_BYTE, TS_PACKET_LEN};

/// One datagram of the feed: `len` bytes at `offset` in the file, due `due_ns` after start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub offset: usize,
    pub len: usize,
    pub due_ns: u64,
}

/// One video frame (one video PES) of the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// DTS (PTS when the PES has no DTS), 90 kHz, unwrapped from the first frame.
    pub dts_90k: u64,
    /// The random_access_indicator was set on the PES's first packet, or an IDR NAL unit
    /// starts in it.
    pub key: bool,
    /// Index of the datagram holding the frame's last TS packet.
    pub last_datagram: usize,
    /// Index of the datagram where the next video PES starts (`None` for the last frame): a
    /// video PES without a length is only known complete then.
    pub next_start_datagram: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Feed {
    pub datagrams: Vec<Datagram>,
    pub frames: Vec<Frame>,
    /// Length of the feed in time.
    pub duration_ns: u64,
}

/// Byte range of a TS packet's payload, and whether its adaptation field has the
/// random_access_indicator.
fn payload_range(p: &[u8]) -> Option<(usize, bool)> {
    let afc = (p[3] >> 4) & 0x03;
    let mut start = 4;
    let mut rai = false;
    if afc & 0x02 != 0 {
        let af_len = usize::from(p[4]);
        rai = af_len > 0 && p[5] & 0x40 != 0;
        start = 5 + af_len;
    }
    (afc & 0x01 != 0 && start < TS_PACKET_LEN).then_some((start, rai))
}

fn pid_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[1] & 0x1F, p[2]])
}

/// Whether an H.264 IDR NAL unit (type 5) starts in `es`.
fn has_idr(es: &[u8]) -> bool {
    es.windows(4)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1F == 5)
}

impl Feed {
    /// Splits `data` (a TS file) into datagrams of `per` TS packets (1..=7) and finds the video
    /// frames (the first PID whose PES carries stream_id 0xE0..=0xEF).
    pub fn from_ts(data: &[u8], per: usize) -> Result<Feed> {
        let schedule = Schedule::from_ts(data)?;
        let per = per.clamp(1, 7);
        let packets: Vec<&[u8]> = data.chunks_exact(TS_PACKET_LEN).collect();
        let datagrams: Vec<Datagram> = (0..packets.len())
            .step_by(per)
            .map(|i| Datagram {
                offset: i * TS_PACKET_LEN,
                len: per.min(packets.len() - i) * TS_PACKET_LEN,
                due_ns: schedule.offsets_ns[i],
            })
            .collect();
        let mut video_pid = None;
        let mut frames: Vec<Frame> = Vec::new();
        let mut last_video_packet = None;
        let (mut first_dts, mut prev_raw, mut wraps) = (None::<u64>, None::<u64>, 0u64);
        for (i, p) in packets.iter().enumerate() {
            if p[0] != SYNC_BYTE {
                continue;
            }
            let pid = pid_of(p);
            let pusi = p[1] & 0x40 != 0;
            let Some((start, rai)) = payload_range(p) else {
                continue;
            };
            let payload = &p[start..];
            if video_pid.is_none()
                && pusi
                && payload.len() > 3
                && payload[..3] == [0, 0, 1]
                && payload[3] & 0xF0 == 0xE0
            {
                video_pid = Some(pid);
            }
            if video_pid != Some(pid) {
                continue;
            }
            if pusi {
                if let (Some(f), Some(last)) = (frames.last_mut(), last_video_packet) {
                    f.last_datagram = last / per;
                    f.next_start_datagram = Some(i / per);
                }
                let Ok(h) = parse_pes_header(payload) else {
                    continue;
                };
                let Some(raw) = h.dts_90k.or(h.pts_90k) else {
                    continue;
                };
                if prev_raw.is_some_and(|prev| raw + (1 << 32) < prev) {
                    wraps += 1;
                }
                prev_raw = Some(raw);
                let unwrapped = raw + (wraps << 33);
                let first = *first_dts.get_or_insert(unwrapped);
                let es = payload.get(h.header_len..).unwrap_or(&[]);
                frames.push(Frame {
                    dts_90k: unwrapped.saturating_sub(first),
                    key: rai || has_idr(es),
                    last_datagram: i / per,
                    next_start_datagram: None,
                });
            }
            last_video_packet = Some(i);
        }
        if let (Some(f), Some(last)) = (frames.last_mut(), last_video_packet) {
            f.last_datagram = last / per;
        }
        if frames.len() < 2 {
            crate::bail!(
                InvalidArgument,
                "the TS file holds fewer than two video frames"
            );
        }
        Ok(Feed {
            datagrams,
            frames,
            duration_ns: schedule.pass_ns,
        })
    }

    /// For each datagram, the frames whose last packet it carries and the frames whose
    /// successor starts in it: `(ends, next_starts)` lists of frame indices.
    pub fn marks(&self) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let n = self.datagrams.len();
        let (mut ends, mut starts) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for (k, f) in self.frames.iter().enumerate() {
            let k = u32::try_from(k).unwrap_or(u32::MAX);
            if let Some(v) = ends.get_mut(f.last_datagram) {
                v.push(k);
            }
            if let Some(v) = f.next_start_datagram.and_then(|d| starts.get_mut(d)) {
                v.push(k);
            }
        }
        (ends, starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TS packet on `pid` with an optional PCR and a payload starting with `payload`.
    fn packet(pid: u16, pusi: bool, pcr_27m: Option<u64>, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0xFFu8; TS_PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (if pusi { 0x40 } else { 0 }) | ((pid >> 8) as u8 & 0x1F);
        p[2] = pid as u8;
        let start = match pcr_27m {
            Some(pcr) => {
                p[3] = 0x30;
                p[4] = 7;
                p[5] = 0x10;
                let base = pcr / 300;
                p[6] = (base >> 25) as u8;
                p[7] = (base >> 17) as u8;
                p[8] = (base >> 9) as u8;
                p[9] = (base >> 1) as u8;
                p[10] = ((base & 1) << 7) as u8 | 0x7E;
                p[11] = 0;
                12
            }
            None => {
                p[3] = 0x10;
                4
            }
        };
        p[start..start + payload.len()].copy_from_slice(payload);
        p
    }

    fn pes(dts_90k: u64, idr: bool) -> Vec<u8> {
        let ts = |v: u64, tag: u8| {
            [
                (tag << 4) | (((v >> 30) as u8 & 0x07) << 1) | 1,
                (v >> 22) as u8,
                ((v >> 14) as u8 & 0xFE) | 1,
                (v >> 7) as u8,
                ((v << 1) as u8) | 1,
            ]
        };
        let mut v = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10];
        v.extend_from_slice(&ts(dts_90k + 3000, 3));
        v.extend_from_slice(&ts(dts_90k, 1));
        v.extend_from_slice(&[0, 0, 0, 1, if idr { 0x65 } else { 0x41 }]);
        v
    }

    #[test]
    fn frames_and_their_datagrams() {
        let mut ts = Vec::new();
        // Frame 0 (IDR): packets 0..3, PCR on packet 0; frame 1: packets 3..5; frame 2: 5..
        ts.extend(packet(0x100, true, Some(0), &pes(900_000, true)));
        ts.extend(packet(0x100, false, None, &[]));
        ts.extend(packet(0x101, false, None, &[]));
        ts.extend(packet(0x100, true, Some(27_000_000), &pes(903_000, false)));
        ts.extend(packet(0x100, false, None, &[]));
        ts.extend(packet(0x100, true, Some(54_000_000), &pes(906_000, false)));
        let feed = Feed::from_ts(&ts, 2).expect("feed");
        assert_eq!(feed.datagrams.len(), 3);
        assert_eq!(feed.datagrams[2].len, 2 * TS_PACKET_LEN);
        assert_eq!(feed.frames.len(), 3);
        assert_eq!(feed.frames[0].dts_90k, 0);
        assert!(feed.frames[0].key);
        assert!(!feed.frames[1].key);
        assert_eq!(feed.frames[1].dts_90k, 3000);
        // Frame 0's last packet is packet 1 (datagram 0); frame 1 starts at packet 3 (datagram 1).
        assert_eq!(feed.frames[0].last_datagram, 0);
        assert_eq!(feed.frames[0].next_start_datagram, Some(1));
        assert_eq!(feed.frames[1].last_datagram, 2);
        assert_eq!(feed.frames[2].next_start_datagram, None);
        let (ends, starts) = feed.marks();
        assert_eq!(ends[0], vec![0]);
        assert_eq!(starts[1], vec![0]);
        assert_eq!(ends[2], vec![1, 2]);
    }

    #[test]
    fn rejects_non_ts() {
        assert!(Feed::from_ts(&[0u8; 100], 7).is_err());
    }
}
