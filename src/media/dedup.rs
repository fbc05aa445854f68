//! Drops datagrams that repeat one of the last few (a network that duplicates UDP: two paths,
//! a misbehaving switch, a multicast joined twice). Pure.
//!
//! The TS continuity counter only allows a packet repeated *immediately*; a repeated
//! datagram of 7 packets steps each PID's counter back, which the demuxer must treat as loss
//! (and drop video to the next keyframe). Plain UDP has no sequence number, so a repeat is
//! recognised by content: a fingerprint of the datagram's length and, per TS packet, its
//! 4-byte header (PID, continuity counter) and last 8 bytes. Two different datagrams with
//! the same fingerprint within the window would need every packet to repeat its PID, its
//! counter and its last 8 bytes: in practice only null packets do, and dropping those is
//! harmless. RTP/TS is deduplicated by sequence number before this.

/// How many recent datagrams a repeat is looked for in.
pub const WINDOW: usize = 8;

#[derive(Debug, Default)]
pub struct DupFilter {
    recent: [u64; WINDOW],
    next: usize,
    filled: usize,
}

const PACKET: usize = 188;

/// Mixes one word into the hash (a multiply-rotate step: one multiply per 8 bytes, where a
/// byte-wise FNV-1a spent one per byte and was ~5 % of a relay's CPU).
#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// Up to 8 bytes as a little-endian word, zero-padded.
#[inline]
fn word(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

/// The fingerprint described in the module docs: the length, then per TS packet its first
/// 12 bytes (header, and a PCR's start when there is one) and its last 8.
pub fn fingerprint(ts: &[u8]) -> u64 {
    let mut h = mix(0xcbf2_9ce4_8422_2325, ts.len() as u64);
    for p in ts.chunks(PACKET) {
        if let Ok(p) = <&[u8; PACKET]>::try_from(p) {
            // A whole packet: fixed-size loads (the general path's variable-length copies
            // were calls to memcpy, 0.6 % of a relay's samples at 64 streams). Same words.
            let (mut a, mut b, mut c) = ([0u8; 8], [0u8; 8], [0u8; 8]);
            a.copy_from_slice(&p[..8]);
            b[..4].copy_from_slice(&p[8..12]);
            c.copy_from_slice(&p[PACKET - 8..]);
            h = mix(h, u64::from_le_bytes(a));
            h = mix(h, u64::from_le_bytes(b));
            h = mix(h, u64::from_le_bytes(c));
            continue;
        }
        let head = &p[..p.len().min(12)];
        let (a, b) = head.split_at(head.len().min(8));
        h = mix(h, word(a));
        h = mix(h, word(b));
        h = mix(h, word(&p[p.len().saturating_sub(8)..]));
    }
    h
}

impl DupFilter {
    /// True when `ts` repeats one of the last [`WINDOW`] datagrams (then it is not recorded
    /// again).
    pub fn is_repeat(&mut self, ts: &[u8]) -> bool {
        let f = fingerprint(ts);
        if self.recent[..self.filled].contains(&f) {
            return true;
        }
        self.recent[self.next] = f;
        self.next = (self.next + 1) % WINDOW;
        self.filled = (self.filled + 1).min(WINDOW);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(cc: u8, fill: u8) -> Vec<u8> {
        let mut d = Vec::new();
        for i in 0..7u8 {
            let mut p = vec![fill.wrapping_add(i); PACKET];
            p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10 | ((cc + i) & 0x0F)]);
            d.extend_from_slice(&p);
        }
        d
    }

    /// The fingerprint as documented, word by word, for any length.
    fn reference(ts: &[u8]) -> u64 {
        let mut h = mix(0xcbf2_9ce4_8422_2325, ts.len() as u64);
        for p in ts.chunks(PACKET) {
            let head = &p[..p.len().min(12)];
            let (a, b) = head.split_at(head.len().min(8));
            h = mix(h, word(a));
            h = mix(h, word(b));
            h = mix(h, word(&p[p.len().saturating_sub(8)..]));
        }
        h
    }

    #[test]
    fn whole_packets_and_a_short_tail_hash_as_documented() {
        let mut d = datagram(3, 9);
        assert_eq!(fingerprint(&d), reference(&d));
        for cut in [1, 5, 9, 13, 100, 187, 188, 189] {
            d.truncate(7 * PACKET - cut);
            assert_eq!(fingerprint(&d), reference(&d), "cut {cut}");
            d = datagram(3, 9);
        }
        assert_eq!(fingerprint(&[]), reference(&[]));
    }

    #[test]
    fn a_repeat_within_the_window_is_dropped_once_seen() {
        let mut f = DupFilter::default();
        let a = datagram(0, 1);
        let b = datagram(7, 2);
        assert!(!f.is_repeat(&a));
        assert!(!f.is_repeat(&b));
        assert!(f.is_repeat(&a));
        assert!(f.is_repeat(&b));
    }

    #[test]
    fn same_counters_with_other_payload_are_not_repeats() {
        // 16 packets later the counters come round again; the payload differs.
        let mut f = DupFilter::default();
        assert!(!f.is_repeat(&datagram(0, 1)));
        assert!(!f.is_repeat(&datagram(0, 9)));
    }

    #[test]
    fn pcr_only_packets_with_the_same_counter_are_not_repeats() {
        // Adaptation-field-only packets (a PCR PID) keep their continuity counter.
        let pcr = |base: u8| {
            let mut p = vec![0xFF; PACKET];
            p[..12].copy_from_slice(&[0x47, 0x01, 0x01, 0x20, 183, 0x10, 0, 0, base, 0, 0x7E, 0]);
            p
        };
        let mut f = DupFilter::default();
        assert!(!f.is_repeat(&pcr(1)));
        assert!(!f.is_repeat(&pcr(2)));
        assert!(f.is_repeat(&pcr(2)));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut f = DupFilter::default();
        let first = datagram(0, 100);
        assert!(!f.is_repeat(&first));
        for i in 0..WINDOW as u8 {
            assert!(!f.is_repeat(&datagram(i, i)));
        }
        assert!(!f.is_repeat(&first), "forgotten after {WINDOW} datagrams");
    }
}
