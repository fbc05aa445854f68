//! RTP-wrapped MPEG-TS (RFC 2250, payload type 33), detected per datagram.
//!
//! A datagram starting with the TS sync byte and holding whole 188-byte packets is plain TS;
//! one with RTP version 2 and payload type 33 is unwrapped (CSRCs, header extension and
//! padding skipped). Sequence numbers are tracked to count lost datagrams.

/// RTP payload type for MPEG-2 transport streams (RFC 3551).
pub const PT_MP2T: u8 = 33;
const RTP_HEADER_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Ts,
    Rtp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtpError {
    /// Neither TS nor RTP/TS (wrong version, payload type, or no sync byte).
    Unrecognised,
    /// RTP header fields point past the end of the datagram.
    Truncated,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RtpStats {
    pub rtp_datagrams: u64,
    pub ts_datagrams: u64,
    pub unrecognised: u64,
    /// Datagrams missing according to RTP sequence numbers.
    pub lost: u64,
    /// Datagrams that arrived with an old sequence number (reordered or duplicated).
    pub late: u64,
}

/// Stateful unwrapper: keeps the last RTP sequence number and the framing last seen.
#[derive(Debug, Default)]
pub struct Unwrapper {
    last_seq: Option<u16>,
    framing: Option<Framing>,
    stats: RtpStats,
}

impl Unwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the TS bytes carried by `datagram` (a sub-slice, no copy).
    pub fn unwrap<'a>(&mut self, datagram: &'a [u8]) -> Result<&'a [u8], RtpError> {
        match classify(datagram) {
            Some(Framing::Ts) => {
                self.framing = Some(Framing::Ts);
                self.stats.ts_datagrams += 1;
                Ok(datagram)
            }
            Some(Framing::Rtp) => {
                let (seq, payload) = rtp_payload(datagram)?;
                self.framing = Some(Framing::Rtp);
                self.stats.rtp_datagrams += 1;
                self.track_seq(seq);
                Ok(payload)
            }
            None => {
                self.stats.unrecognised += 1;
                Err(RtpError::Unrecognised)
            }
        }
    }

    fn track_seq(&mut self, seq: u16) {
        if let Some(last) = self.last_seq {
            let gap = seq.wrapping_sub(last);
            if gap == 0 || gap >= 0x8000 {
                self.stats.late += 1;
                return;
            }
            self.stats.lost += u64::from(gap - 1);
        }
        self.last_seq = Some(seq);
    }

    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    pub fn stats(&self) -> &RtpStats {
        &self.stats
    }
}

/// Plain TS starts with 0x47 at every 188-byte boundary; RTP/TS has version 2 and PT 33.
fn classify(d: &[u8]) -> Option<Framing> {
    if d.first() == Some(&0x47) && d.len().is_multiple_of(188) {
        return Some(Framing::Ts);
    }
    let (b0, b1) = (*d.first()?, *d.get(1)?);
    if b0 >> 6 == 2 && b1 & 0x7F == PT_MP2T {
        return Some(Framing::Rtp);
    }
    None
}

/// Parses the RTP header; returns the sequence number and the payload.
fn rtp_payload(d: &[u8]) -> Result<(u16, &[u8]), RtpError> {
    let hdr = d.get(..RTP_HEADER_LEN).ok_or(RtpError::Truncated)?;
    let padding = hdr[0] & 0x20 != 0;
    let extension = hdr[0] & 0x10 != 0;
    let csrc_count = usize::from(hdr[0] & 0x0F);
    let seq = u16::from_be_bytes([hdr[2], hdr[3]]);
    let mut start = RTP_HEADER_LEN + 4 * csrc_count;
    if extension {
        let ext = d.get(start..start + 4).ok_or(RtpError::Truncated)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = d.len();
    if padding {
        let pad = usize::from(*d.last().ok_or(RtpError::Truncated)?);
        end = end.checked_sub(pad).ok_or(RtpError::Truncated)?;
    }
    let payload = d.get(start..end).ok_or(RtpError::Truncated)?;
    Ok((seq, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_packets(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; 188 * n];
        for i in 0..n {
            v[i * 188] = 0x47;
        }
        v
    }

    fn rtp(seq: u16, csrc: u8, ext_words: Option<u16>, pad: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | csrc, PT_MP2T];
        v[0] |= if ext_words.is_some() { 0x10 } else { 0 } | if pad > 0 { 0x20 } else { 0 };
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 1, 0xDE, 0xAD, 0xBE, 0xEF]);
        v.extend(std::iter::repeat_n(0xCC, 4 * usize::from(csrc)));
        if let Some(w) = ext_words {
            v.extend_from_slice(&[0xBE, 0xDE]);
            v.extend_from_slice(&w.to_be_bytes());
            v.extend(std::iter::repeat_n(0xEE, 4 * usize::from(w)));
        }
        v.extend_from_slice(payload);
        if pad > 0 {
            v.extend(std::iter::repeat_n(0, usize::from(pad - 1)));
            v.push(pad);
        }
        v
    }

    #[test]
    fn plain_ts_passes_through() {
        let mut u = Unwrapper::new();
        let d = ts_packets(7);
        assert_eq!(u.unwrap(&d).map(<[u8]>::len), Ok(1316));
        assert_eq!(u.framing(), Some(Framing::Ts));
    }

    #[test]
    fn rtp_header_csrc_extension_padding() {
        let ts = ts_packets(2);
        let mut u = Unwrapper::new();
        let d = rtp(7, 2, Some(1), 4, &ts);
        assert_eq!(u.unwrap(&d), Ok(&ts[..]));
        assert_eq!(u.framing(), Some(Framing::Rtp));
    }

    #[test]
    fn sequence_gaps_and_wrap() {
        let ts = ts_packets(1);
        let mut u = Unwrapper::new();
        for seq in [65534u16, 65535, 1, 2, 2, 0] {
            assert!(u.unwrap(&rtp(seq, 0, None, 0, &ts)).is_ok());
        }
        // 65535 → 1 skips 0; then 2 repeated and 0 arrive late.
        assert_eq!(u.stats().lost, 1);
        assert_eq!(u.stats().late, 2);
    }

    #[test]
    fn garbage_and_truncation() {
        let mut u = Unwrapper::new();
        assert_eq!(u.unwrap(&[]), Err(RtpError::Unrecognised));
        assert_eq!(u.unwrap(&[0x12; 40]), Err(RtpError::Unrecognised));
        // RTP with 15 CSRCs but only the fixed header present.
        assert_eq!(u.unwrap(&[0x8F, 33, 0, 1]), Err(RtpError::Truncated));
        let mut bad_pad = rtp(1, 0, None, 0, &[1, 2]);
        bad_pad[0] |= 0x20;
        let last = bad_pad.len() - 1;
        bad_pad[last] = 200;
        assert_eq!(u.unwrap(&bad_pad), Err(RtpError::Truncated));
        assert_eq!(u.stats().unrecognised, 2);
    }
}
