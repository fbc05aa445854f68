//! PES (Packetized Elementary Stream) header parsing and per-PID reassembly for the TS
//! demuxer (ISO/IEC 13818-1 §2.4.3.6).
//!
//! Pure and total: malformed input drops the PES and moves counters, never panics.

use bytes::{Buf, BytesMut};

use super::ts::{DemuxEvent, DemuxStats, Pes, StreamType};

/// Largest PES (header included) we buffer; a bigger one is dropped and counted in
/// `pes_errors`. 8 MiB holds any sane access unit (a 4K intra frame at broadcast bitrates is
/// well under 2 MiB).
pub const MAX_PES_BYTES: usize = 8 << 20;

/// Initial buffer for a PES without PES_packet_length when there is no previous size to go by.
const DEFAULT_UNBOUNDED_CAPACITY: usize = 16 << 10;

/// Fixed part of every PES header: start code (3), stream_id (1), PES_packet_length (2).
const PES_FIXED_LEN: usize = 6;

/// Fields of a PES header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PesHeader {
    pub stream_id: u8,
    /// PES_packet_length: bytes following the length field; 0 = unbounded (video only).
    pub packet_length: u16,
    /// Bytes from the start code to the first payload byte.
    pub header_len: usize,
    /// 33-bit PTS, 90 kHz.
    pub pts_90k: Option<u64>,
    /// 33-bit DTS, 90 kHz (only present together with a PTS).
    pub dts_90k: Option<u64>,
}

impl PesHeader {
    /// Total PES size (start code through last payload byte) when PES_packet_length is set.
    pub fn total_len(&self) -> Option<usize> {
        (self.packet_length != 0).then(|| PES_FIXED_LEN + usize::from(self.packet_length))
    }
}

/// Why [`parse_pes_header`] did not return a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PesHeaderError {
    /// The bytes seen so far are a valid prefix; more are needed.
    NeedMore,
    /// Not a PES header (bad start code, marker bits, flags or lengths).
    Invalid,
}

/// stream_ids whose PES header has no optional fields (§2.4.3.7, Table 2-21 semantics):
/// program_stream_map, padding, private_stream_2, ECM, EMM, program_stream_directory, DSMCC,
/// ITU-T H.222.1 type E.
fn has_optional_header(stream_id: u8) -> bool {
    !matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    )
}

/// Decodes a 33-bit timestamp from its 5-byte wire form `pppp TTT1 TTTT..TTT1 TTTT..TTT1`
/// (marker bits are not checked: some muxers get them wrong and the value is still usable).
fn timestamp_33([b0, b1, b2, b3, b4]: [u8; 5]) -> u64 {
    (u64::from(b0 >> 1) & 0x07) << 30
        | u64::from(b1) << 22
        | u64::from(b2 >> 1) << 15
        | u64::from(b3) << 7
        | u64::from(b4 >> 1)
}

/// Parses the PES header at the start of `data` (which may hold only a prefix of the PES).
///
/// Checks the start code, the `10` marker bits of the optional header, PTS_DTS_flags (`01` is
/// forbidden), that header_data_length covers the timestamps it announces, and that a nonzero
/// PES_packet_length covers the header.
pub fn parse_pes_header(data: &[u8]) -> Result<PesHeader, PesHeaderError> {
    let Some((&[s0, s1, s2, stream_id, len_hi, len_lo], rest)) =
        data.split_first_chunk::<PES_FIXED_LEN>()
    else {
        return Err(prefix_error(data, &[0, 0, 1]));
    };
    if [s0, s1, s2] != [0, 0, 1] {
        return Err(PesHeaderError::Invalid);
    }
    let packet_length = u16::from_be_bytes([len_hi, len_lo]);
    let mut header = PesHeader {
        stream_id,
        packet_length,
        header_len: PES_FIXED_LEN,
        pts_90k: None,
        dts_90k: None,
    };
    if has_optional_header(stream_id) {
        let Some((&[flags1, flags2, header_data_length], optional)) = rest.split_first_chunk::<3>()
        else {
            return Err(PesHeaderError::NeedMore);
        };
        if flags1 & 0xC0 != 0x80 {
            return Err(PesHeaderError::Invalid);
        }
        let needed = match flags2 >> 6 {
            0b00 => 0,
            0b10 => 5,
            0b11 => 10,
            _ => return Err(PesHeaderError::Invalid),
        };
        let data_len = usize::from(header_data_length);
        if data_len < needed {
            return Err(PesHeaderError::Invalid);
        }
        header.header_len = PES_FIXED_LEN + 3 + data_len;
        if packet_length != 0 && usize::from(packet_length) < 3 + data_len {
            return Err(PesHeaderError::Invalid);
        }
        let Some(fields) = optional.get(..data_len) else {
            return Err(PesHeaderError::NeedMore);
        };
        if let Some((&pts, more)) = fields.split_first_chunk::<5>().filter(|_| needed >= 5) {
            header.pts_90k = Some(timestamp_33(pts));
            if let Some((&dts, _)) = more.split_first_chunk::<5>().filter(|_| needed == 10) {
                header.dts_90k = Some(timestamp_33(dts));
            }
        }
    }
    Ok(header)
}

/// For input shorter than the fixed header: `NeedMore` if it is a prefix of a valid one.
fn prefix_error(data: &[u8], start_code: &[u8]) -> PesHeaderError {
    let n = data.len().min(start_code.len());
    if data.get(..n) == start_code.get(..n) {
        PesHeaderError::NeedMore
    } else {
        PesHeaderError::Invalid
    }
}

/// A PES being collected.
#[derive(Debug)]
struct PesInProgress {
    /// Raw PES bytes from the start code on.
    buf: BytesMut,
    header: Option<PesHeader>,
    random_access: bool,
    discontinuity: bool,
    after_loss: bool,
    /// Demuxer packet index of the PES's first packet.
    first_packet: u64,
    /// The last packet's adaptation field held stuffing: the PES looks complete.
    ends_stuffed: bool,
}

/// Reassembly state of one elementary PID.
///
/// Contract: [`PesAssembler::start`] on each payload_unit_start, [`PesAssembler::append`] for
/// the other payloads, [`PesAssembler::lose`] on packet loss, [`PesAssembler::finish`] at end
/// of input. Completed PES go to `out` as [`DemuxEvent::Pes`].
#[derive(Debug)]
pub struct PesAssembler {
    pid: u16,
    stream_type: StreamType,
    cur: Option<PesInProgress>,
    /// A discontinuity_indicator was seen; the next PES to start gets `discontinuity`.
    pending_discontinuity: bool,
    /// Data was lost since the last emitted PES; the next PES to start gets `after_loss`.
    pending_loss: bool,
    /// Size of the last unbounded PES, used to size the next buffer.
    last_unbounded_len: usize,
    /// The PES in progress was emitted by an idle flush: if more of it arrives, what was
    /// emitted was truncated, and the chain is broken.
    idle_flushed: bool,
}

impl PesAssembler {
    pub fn new(pid: u16, stream_type: StreamType) -> Self {
        Self {
            pid,
            stream_type,
            cur: None,
            pending_discontinuity: false,
            pending_loss: false,
            last_unbounded_len: 0,
            idle_flushed: false,
        }
    }

    pub fn stream_type(&self) -> StreamType {
        self.stream_type
    }

    /// Bytes allocated for the PES in progress (capacity, not length).
    pub fn buffered_bytes(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.buf.capacity())
    }

    /// A packet with payload_unit_start_indicator: finishes the PES in progress (emitted if
    /// unbounded, dropped as truncated if its PES_packet_length was not reached) and starts a
    /// new one with `payload`.
    pub fn start(
        &mut self,
        payload: &[u8],
        random_access: bool,
        discontinuity: bool,
        stats: &mut DemuxStats,
        out: &mut Vec<DemuxEvent>,
    ) {
        self.finish(stats, out);
        self.idle_flushed = false;
        let capacity = match parse_pes_header(payload).ok().and_then(|h| h.total_len()) {
            Some(total) => total,
            None => match self.last_unbounded_len {
                0 => DEFAULT_UNBOUNDED_CAPACITY,
                last => last.saturating_add(last / 4).min(MAX_PES_BYTES),
            },
        };
        self.cur = Some(PesInProgress {
            buf: BytesMut::with_capacity(capacity),
            header: None,
            random_access,
            discontinuity: discontinuity || std::mem::take(&mut self.pending_discontinuity),
            after_loss: std::mem::take(&mut self.pending_loss),
            first_packet: stats.packets,
            ends_stuffed: false,
        });
        self.append(payload, stats, out);
    }

    /// A payload continuing the PES in progress (ignored when none is: joined mid-PES, or the
    /// previous one was complete or dropped).
    pub fn append(&mut self, payload: &[u8], stats: &mut DemuxStats, out: &mut Vec<DemuxEvent>) {
        let Some(cur) = self.cur.as_mut() else {
            if std::mem::take(&mut self.idle_flushed) {
                // The rest of a PES an idle flush emitted: that frame was cut short.
                stats.pes_errors += 1;
                self.pending_loss = true;
            }
            return;
        };
        if cur.buf.len().saturating_add(payload.len()) > MAX_PES_BYTES {
            self.drop_current(stats);
            return;
        }
        cur.buf.extend_from_slice(payload);
        if cur.header.is_none() {
            match parse_pes_header(&cur.buf) {
                Ok(h) => cur.header = Some(h),
                Err(PesHeaderError::NeedMore) => return,
                Err(PesHeaderError::Invalid) => {
                    self.drop_current(stats);
                    return;
                }
            }
        }
        let complete = cur
            .header
            .and_then(|h| h.total_len())
            .is_some_and(|total| cur.buf.len() >= total);
        if complete {
            self.emit(stats, out);
        }
    }

    /// A discontinuity_indicator in a packet that does not start a PES: flags the PES in
    /// progress (timestamps may jump inside it) and the next one (which carries the new
    /// time base).
    pub fn mark_discontinuity(&mut self) {
        if let Some(cur) = self.cur.as_mut() {
            cur.discontinuity = true;
        }
        self.pending_discontinuity = true;
    }

    /// Packet loss on this PID: drops the PES in progress; the next emitted PES gets
    /// `after_loss`.
    pub fn lose(&mut self, stats: &mut DemuxStats) {
        self.drop_current(stats);
        self.pending_loss = true;
    }

    /// Ends the PES in progress: emitted if unbounded with a parsed header, dropped otherwise.
    pub fn finish(&mut self, stats: &mut DemuxStats, out: &mut Vec<DemuxEvent>) {
        let Some(cur) = self.cur.as_ref() else {
            return;
        };
        match cur.header {
            Some(h) if h.total_len().is_none() => self.emit(stats, out),
            _ => self.drop_current(stats),
        }
    }

    /// Whether the packet just passed to [`Self::start`]/[`Self::append`] was padded with
    /// adaptation-field stuffing (how muxers end a PES that does not fill its last packet).
    pub fn note_stuffing(&mut self, stuffed: bool) {
        if let Some(cur) = self.cur.as_mut() {
            cur.ends_stuffed = stuffed;
        }
    }

    /// The source went quiet. An unbounded PES in progress whose last packet was padded with
    /// stuffing looks complete and is emitted (if more of it arrives anyway, the next PES is
    /// marked `after_loss`). One whose last packet was full may go on, or its tail may be lost
    /// in an outage: it waits, like a bounded PES, for the next packet of its PID (a
    /// continuity gap then drops it), and is never sent truncated.
    pub fn finish_idle(&mut self, stats: &mut DemuxStats, out: &mut Vec<DemuxEvent>) {
        let looks_complete = self
            .cur
            .as_ref()
            .is_some_and(|c| c.ends_stuffed && c.header.is_some_and(|h| h.total_len().is_none()));
        if looks_complete {
            self.emit(stats, out);
            self.idle_flushed = true;
        }
    }

    /// Drops the PES in progress, if any, as malformed/incomplete.
    fn drop_current(&mut self, stats: &mut DemuxStats) {
        if self.cur.take().is_some() {
            stats.pes_errors += 1;
            self.pending_loss = true;
        }
    }

    /// Emits the PES in progress (header parsed; complete).
    fn emit(&mut self, stats: &mut DemuxStats, out: &mut Vec<DemuxEvent>) {
        let Some(mut cur) = self.cur.take() else {
            return;
        };
        let Some(header) = cur.header else {
            stats.pes_errors += 1;
            self.pending_loss = true;
            return;
        };
        match header.total_len() {
            Some(total) => cur.buf.truncate(total),
            None => self.last_unbounded_len = cur.buf.len(),
        }
        if cur.buf.len() < header.header_len {
            // A bounded PES whose header is longer than the PES is rejected by the parser;
            // an unbounded one can end inside its header.
            stats.pes_errors += 1;
            self.pending_loss = true;
            return;
        }
        cur.buf.advance(header.header_len);
        stats.pes_emitted += 1;
        out.push(DemuxEvent::Pes(Pes {
            pid: self.pid,
            stream_type: self.stream_type,
            pts_90k: header.pts_90k,
            dts_90k: header.dts_90k,
            data: cur.buf.freeze(),
            discontinuity: cur.discontinuity,
            random_access: cur.random_access,
            after_loss: cur.after_loss,
            first_packet: cur.first_packet,
            full_length: header.packet_length == u16::MAX,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a 33-bit timestamp with prefix `prefix` (0b0010 PTS only, 0b0011/0b0001 PTS/DTS).
    fn ts_bytes(prefix: u8, t: u64) -> [u8; 5] {
        [
            (prefix << 4) | (((t >> 30) & 0x07) as u8) << 1 | 1,
            (t >> 22) as u8,
            (((t >> 15) & 0x7F) as u8) << 1 | 1,
            (t >> 7) as u8,
            ((t & 0x7F) as u8) << 1 | 1,
        ]
    }

    #[test]
    fn pts_dts_near_2_pow_33() {
        for (pts, dts) in [
            (0, 0),
            ((1 << 33) - 1, (1 << 33) - 3600),
            (0x1_2345_6789, 1),
        ] {
            let mut h = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10];
            h.extend_from_slice(&ts_bytes(3, pts));
            h.extend_from_slice(&ts_bytes(1, dts));
            let parsed = parse_pes_header(&h).expect("valid");
            assert_eq!(parsed.pts_90k, Some(pts));
            assert_eq!(parsed.dts_90k, Some(dts));
            assert_eq!(parsed.header_len, 19);
            assert_eq!(parsed.total_len(), None);
        }
    }

    #[test]
    fn header_prefixes_need_more_and_garbage_is_invalid() {
        let mut h = vec![0, 0, 1, 0xC0, 0, 20, 0x80, 0x80, 5];
        h.extend_from_slice(&ts_bytes(2, 90_000));
        for cut in 0..h.len() {
            assert_eq!(parse_pes_header(&h[..cut]), Err(PesHeaderError::NeedMore));
        }
        let parsed = parse_pes_header(&h).expect("valid");
        assert_eq!((parsed.pts_90k, parsed.dts_90k), (Some(90_000), None));
        assert_eq!(parsed.total_len(), Some(26));
        assert_eq!(parse_pes_header(&[0, 1]), Err(PesHeaderError::Invalid));
        assert_eq!(
            parse_pes_header(&[0, 0, 2, 0xE0, 0, 0]),
            Err(PesHeaderError::Invalid)
        );
        // Forbidden PTS_DTS_flags 01, missing marker bits, header_data_length too short for
        // the PTS, PES_packet_length shorter than the header.
        for bad in [
            [0, 0, 1, 0xE0, 0, 0, 0x80, 0x40, 0],
            [0, 0, 1, 0xE0, 0, 0, 0x00, 0x00, 0],
            [0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 4],
            [0, 0, 1, 0xE0, 0, 4, 0x80, 0x00, 5],
        ] {
            assert_eq!(
                parse_pes_header(&bad),
                Err(PesHeaderError::Invalid),
                "{bad:?}"
            );
        }
        // Padding stream: no optional header.
        let padding = parse_pes_header(&[0, 0, 1, 0xBE, 0, 2]).expect("valid");
        assert_eq!(padding.header_len, 6);
    }
}
