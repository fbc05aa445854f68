//! Plays a TS byte stream as datagrams through an impairment script, the way a fabric with
//! faults would deliver it: loss, duplication, reordering, timestamp jumps (a source restart),
//! PID changes (with PAT/PMT rewritten and their CRC recomputed), corrupted bytes, continuity
//! counter jumps, garbage and truncated datagrams, RTP framing, idle gaps.

use arbitrary::Unstructured;
use onair::media::crc::crc32_mpeg2;

const TS: usize = 188;
const WRAP_33: u64 = 1 << 33;

/// What the player asks of the system under test.
pub enum Delivery<'a> {
    Datagram {
        bytes: &'a [u8],
        rx_ns: u64,
    },
    /// The source went quiet (the ingest's idle flush).
    Idle {
        rx_ns: u64,
    },
}

/// The impairment state carried from packet to packet.
#[derive(Default)]
struct State {
    /// Added to every PTS/DTS (mod 2^33).
    ts_offset: i64,
    /// XORed into every PID except the PAT's and the null PID.
    pid_xor: u16,
    /// PMT PIDs announced by the (original) PAT.
    pmt_pids: Vec<u16>,
    rtp: bool,
    rtp_seq: u16,
    rx_ns: u64,
}

/// Plays `stream` (188-byte packets; a trailing partial packet is sent as is) under `script`,
/// calling `sink` for every delivery.
pub fn play(script: &[u8], stream: &[u8], mut sink: impl FnMut(Delivery<'_>)) {
    let mut u = Unstructured::new(script);
    let mut st = State::default();
    let mut packets: Vec<Vec<u8>> = stream.chunks(TS).map(<[u8]>::to_vec).collect();
    packets.reverse(); // pop() takes the next packet
    let mut dgram = Vec::with_capacity(7 * TS + 12);
    while !packets.is_empty() {
        st.rx_ns += 1_000_000;
        let op = if u.is_empty() {
            0
        } else {
            u.arbitrary::<u8>().unwrap_or(0) % 13
        };
        dgram.clear();
        match op {
            // Loss: drop 1..=16 packets.
            1 => {
                let n = 1 + usize::from(u.arbitrary::<u8>().unwrap_or(0) % 16);
                for _ in 0..n {
                    packets.pop();
                }
                continue;
            }
            // Duplicate the next packet in one datagram.
            2 => {
                if let Some(p) = packets.pop() {
                    let p = st.rewrite(p);
                    dgram.extend_from_slice(&p);
                    dgram.extend_from_slice(&p);
                }
            }
            // Reorder: swap the next two packets.
            3 => {
                let a = packets.pop();
                let b = packets.pop();
                for p in [b, a].into_iter().flatten() {
                    dgram.extend_from_slice(&st.rewrite(p));
                }
            }
            // Timestamp jump from here on (a source restart), anywhere in the 33-bit range.
            4 => {
                let j = i64::from(u.arbitrary::<i32>().unwrap_or(0));
                st.ts_offset = st.ts_offset.wrapping_add(j * 4);
                continue;
            }
            // New PIDs from here on.
            5 => {
                st.pid_xor = u.arbitrary::<u16>().unwrap_or(0) & 0x1FFF;
                continue;
            }
            // Corrupt one byte of the next packet.
            6 => {
                let at = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                let v = u.arbitrary::<u8>().unwrap_or(0);
                if let Some(mut p) = packets.pop() {
                    p = st.rewrite(p);
                    let len = p.len();
                    if len > 0 {
                        p[at % len] = v;
                    }
                    dgram.extend_from_slice(&p);
                }
            }
            // The source pauses.
            7 => {
                st.rx_ns += 300_000_000;
                sink(Delivery::Idle { rx_ns: st.rx_ns });
                continue;
            }
            // Time passes.
            8 => {
                st.rx_ns += u64::from(u.arbitrary::<u32>().unwrap_or(0));
                continue;
            }
            // A garbage datagram taken from the script.
            9 => {
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0)) * 2;
                let bytes = u.bytes(n.min(u.len())).unwrap_or(&[]);
                dgram.extend_from_slice(bytes);
            }
            // A truncated packet.
            10 => {
                let n = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                if let Some(p) = packets.pop() {
                    let p = st.rewrite(p);
                    dgram.extend_from_slice(&p[..n.min(p.len())]);
                }
            }
            // A continuity counter jump on the next packet.
            11 => {
                let cc = u.arbitrary::<u8>().unwrap_or(0) & 0x0F;
                if let Some(mut p) = packets.pop() {
                    p = st.rewrite(p);
                    if p.len() >= 4 {
                        p[3] = (p[3] & 0xF0) | cc;
                    }
                    dgram.extend_from_slice(&p);
                }
            }
            // Toggle RTP framing.
            12 => {
                st.rtp = !st.rtp;
                continue;
            }
            // Deliver 1..=7 packets (the normal case).
            _ => {
                let n = if u.is_empty() {
                    7
                } else {
                    1 + usize::from(u.arbitrary::<u8>().unwrap_or(0) % 7)
                };
                for _ in 0..n {
                    if let Some(p) = packets.pop() {
                        dgram.extend_from_slice(&st.rewrite(p));
                    }
                }
            }
        }
        if dgram.is_empty() {
            continue;
        }
        if st.rtp {
            let mut framed = Vec::with_capacity(dgram.len() + 12);
            framed.extend_from_slice(&[0x80, 33]);
            framed.extend_from_slice(&st.rtp_seq.to_be_bytes());
            framed.extend_from_slice(&(st.rx_ns as u32).to_be_bytes());
            framed.extend_from_slice(&[0, 0, 0, 1]);
            framed.extend_from_slice(&dgram);
            st.rtp_seq = st.rtp_seq.wrapping_add(1);
            sink(Delivery::Datagram {
                bytes: &framed,
                rx_ns: st.rx_ns,
            });
        } else {
            sink(Delivery::Datagram {
                bytes: &dgram,
                rx_ns: st.rx_ns,
            });
        }
    }
}

impl State {
    /// Applies the persistent impairments (PID change, timestamp offset) to one packet.
    fn rewrite(&mut self, mut p: Vec<u8>) -> Vec<u8> {
        if p.len() < TS || p[0] != 0x47 {
            return p;
        }
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        let unit_start = p[1] & 0x40 != 0;
        let Some(start) = payload_start(&p) else {
            return p;
        };
        if pid == 0 && unit_start {
            self.pat(&mut p, start);
        } else if self.pmt_pids.contains(&pid) && unit_start {
            self.pmt(&mut p, start);
        } else if unit_start && self.ts_offset != 0 {
            shift_pes_timestamps(&mut p[start..], self.ts_offset);
        }
        let new = self.map_pid(pid);
        p[1] = (p[1] & 0xE0) | (new >> 8) as u8;
        p[2] = new as u8;
        p
    }

    fn map_pid(&self, pid: u16) -> u16 {
        if pid == 0 || pid == 0x1FFF {
            return pid;
        }
        match pid ^ self.pid_xor {
            0 | 0x1FFF => pid,
            n => n,
        }
    }

    /// Rewrites the PMT PIDs of a PAT section that fits in the packet.
    fn pat(&mut self, p: &mut [u8], start: usize) {
        let Some((s, end)) = section_bounds(p, start) else {
            return;
        };
        let mut at = s + 8;
        while at + 4 <= end - 4 {
            let program = u16::from_be_bytes([p[at], p[at + 1]]);
            let pid = u16::from_be_bytes([p[at + 2], p[at + 3]]) & 0x1FFF;
            if program != 0 && !self.pmt_pids.contains(&pid) && self.pmt_pids.len() < 16 {
                self.pmt_pids.push(pid);
            }
            self.put_pid(p, at + 2);
            at += 4;
        }
        put_crc(p, s, end);
    }

    /// Rewrites PCR_PID and the elementary PIDs of a PMT section that fits in the packet.
    fn pmt(&mut self, p: &mut [u8], start: usize) {
        let Some((s, end)) = section_bounds(p, start) else {
            return;
        };
        if s + 12 > end - 4 {
            return;
        }
        self.put_pid(p, s + 8);
        let info_len = usize::from(u16::from_be_bytes([p[s + 10], p[s + 11]]) & 0x0FFF);
        let mut at = s + 12 + info_len;
        while at + 5 <= end - 4 {
            self.put_pid(p, at + 1);
            let es_len = usize::from(u16::from_be_bytes([p[at + 3], p[at + 4]]) & 0x0FFF);
            at += 5 + es_len;
        }
        put_crc(p, s, end);
    }

    fn put_pid(&self, p: &mut [u8], at: usize) {
        let pid = u16::from_be_bytes([p[at], p[at + 1]]) & 0x1FFF;
        let new = self.map_pid(pid);
        p[at] = (p[at] & 0xE0) | (new >> 8) as u8;
        p[at + 1] = new as u8;
    }
}

/// Offset of the payload in a packet, if it has one.
fn payload_start(p: &[u8]) -> Option<usize> {
    let afc = (p[3] >> 4) & 0x03;
    let start = match afc {
        0b01 => 4,
        0b11 => 5 + usize::from(p[4]),
        _ => return None,
    };
    (start < p.len()).then_some(start)
}

/// `(section start, section end)` of the first section after the pointer field, when the whole
/// section (CRC included) is inside the packet.
fn section_bounds(p: &[u8], start: usize) -> Option<(usize, usize)> {
    let s = start + 1 + usize::from(*p.get(start)?);
    let len = usize::from(u16::from_be_bytes([*p.get(s + 1)?, *p.get(s + 2)?]) & 0x0FFF);
    let end = s + 3 + len;
    (len >= 9 && end <= p.len()).then_some((s, end))
}

fn put_crc(p: &mut [u8], s: usize, end: usize) {
    let crc = crc32_mpeg2(&p[s..end - 4]);
    p[end - 4..end].copy_from_slice(&crc.to_be_bytes());
}

/// Adds `offset` to the PTS and DTS of a PES header at the start of `payload`.
fn shift_pes_timestamps(payload: &mut [u8], offset: i64) {
    if payload.len() < 19 || payload[..3] != [0, 0, 1] {
        return;
    }
    let flags = payload[7] >> 6;
    if flags & 0b10 != 0 {
        shift_ts(&mut payload[9..14], offset);
    }
    if flags == 0b11 {
        shift_ts(&mut payload[14..19], offset);
    }
}

fn shift_ts(b: &mut [u8], offset: i64) {
    let t = (u64::from(b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | u64::from(b[2] >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4] >> 1);
    let t = (t as i64).wrapping_add(offset).rem_euclid(WRAP_33 as i64) as u64;
    b[0] = (b[0] & 0xF1) | (((t >> 30) as u8 & 0x07) << 1);
    b[1] = (t >> 22) as u8;
    b[2] = (((t >> 15) as u8) << 1) | 1;
    b[3] = (t >> 7) as u8;
    b[4] = ((t as u8) << 1) | 1;
}
