//! PSI (Program Specific Information) for the TS demuxer: reassembly of sections that span TS
//! packets, CRC checks, and PAT/PMT parsing (ISO/IEC 13818-1 §2.4.4).
//!
//! Pure and total: malformed input yields `Err`/counters, never a panic.

use super::crc::crc32_mpeg2;
use super::ts::{EsInfo, StreamType};

/// Largest `section_length` allowed for PAT and PMT sections (§2.4.4.3, §2.4.4.8).
pub const MAX_PSI_SECTION_LENGTH: usize = 1021;
/// table_id of a program_association_section.
pub const TABLE_ID_PAT: u8 = 0x00;
/// table_id of a TS_program_map_section.
pub const TABLE_ID_PMT: u8 = 0x02;

/// Why a section was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsiError {
    /// CRC_32 mismatch (counted in `crc_errors`).
    Crc,
    /// Lengths or syntax that do not fit (counted in `psi_errors`).
    Malformed,
}

/// Outcome of feeding one TS packet's payload to a [`SectionAssembler`].
#[derive(Debug, Default)]
pub struct SectionOutput {
    /// Whole sections (header through CRC_32), not yet checked.
    pub sections: Vec<Vec<u8>>,
    /// Sections abandoned because their framing was malformed or truncated.
    pub malformed: u64,
}

/// Reassembles PSI sections of one PID from TS packet payloads.
///
/// Contract: feed every payload of the PID in order with its payload_unit_start_indicator;
/// call [`SectionAssembler::reset`] on packet loss. A section is only started at a
/// pointer_field, so a join mid-section waits for the next unit start.
#[derive(Debug, Default)]
pub struct SectionAssembler {
    /// Bytes of the section being collected; empty when idle.
    buf: Vec<u8>,
    active: bool,
}

impl SectionAssembler {
    /// Bytes allocated for the section being collected.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets the section being collected (after loss).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
    }

    /// Feeds one packet payload. With `unit_start`, the payload starts with a pointer_field;
    /// the bytes before the pointed-to position finish the section in progress.
    pub fn push(&mut self, unit_start: bool, payload: &[u8], out: &mut SectionOutput) {
        if !unit_start {
            if self.active {
                // Bytes after the end of the section are stuffing (a new section would need a
                // unit start).
                let _ = self.continue_section(payload, out);
            }
            return;
        }
        let Some((&pointer, rest)) = payload.split_first() else {
            out.malformed += 1;
            self.reset();
            return;
        };
        let Some((tail, mut new)) = rest.split_at_checked(usize::from(pointer)) else {
            out.malformed += 1;
            self.reset();
            return;
        };
        if self.active {
            let _ = self.continue_section(tail, out);
            if self.active {
                // The previous section was cut short by the next unit start.
                out.malformed += 1;
                self.reset();
            }
        }
        while let Some(&table_id) = new.first() {
            if table_id == 0xFF {
                break; // stuffing until the end of the packet
            }
            self.buf.clear();
            self.active = true;
            new = self.continue_section(new, out);
            if self.active {
                break; // continues in the next packet
            }
        }
    }

    /// Appends bytes to the active section; returns the unconsumed rest once it is complete
    /// (or abandoned). Leaves `active` set when more bytes are needed.
    fn continue_section<'a>(&mut self, mut data: &'a [u8], out: &mut SectionOutput) -> &'a [u8] {
        loop {
            let total = match *self.buf.as_slice() {
                [0xFF, _, _, ..] => {
                    // Stuffing table_id: nothing more in this packet.
                    self.reset();
                    return &[];
                }
                [_, len_hi, len_lo, ..] => {
                    let section_length = len12(len_hi, len_lo);
                    if len_hi & 0x0C != 0 || section_length > MAX_PSI_SECTION_LENGTH {
                        out.malformed += 1;
                        self.reset();
                        return &[];
                    }
                    3 + section_length
                }
                _ => 3,
            };
            let missing = total.saturating_sub(self.buf.len());
            if missing == 0 {
                out.sections.push(std::mem::take(&mut self.buf));
                self.active = false;
                return data;
            }
            if data.is_empty() {
                return data;
            }
            let (take, rest) = data.split_at(missing.min(data.len()));
            self.buf.extend_from_slice(take);
            data = rest;
        }
    }
}

/// The long-form section header fields we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    pub table_id: u8,
    /// transport_stream_id (PAT) or program_number (PMT).
    pub table_id_extension: u16,
    pub version: u8,
    pub current_next: bool,
    pub section_number: u8,
    pub last_section_number: u8,
}

/// Checks a whole long-form section (syntax indicator, length, CRC_32) and returns its header
/// and body (the bytes between the 8-byte header and the CRC_32).
pub fn check_section(section: &[u8]) -> Result<(SectionHeader, &[u8]), PsiError> {
    let Some((head, rest)) = section.split_first_chunk::<8>() else {
        return Err(PsiError::Malformed);
    };
    let [
        table_id,
        len_hi,
        len_lo,
        ext_hi,
        ext_lo,
        version_byte,
        section_number,
        last_section,
    ] = *head;
    let section_length = len12(len_hi, len_lo);
    let syntax_indicator = len_hi & 0x80 != 0;
    if !syntax_indicator || section_length + 3 != section.len() || rest.len() < 4 {
        return Err(PsiError::Malformed);
    }
    let (body, crc_bytes) = rest.split_at(rest.len() - 4);
    let crc_field = crc_bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| PsiError::Malformed)?;
    let covered = section.len() - 4;
    let computed = section.get(..covered).map(crc32_mpeg2);
    if computed != Some(crc_field) {
        return Err(PsiError::Crc);
    }
    let header = SectionHeader {
        table_id,
        table_id_extension: u16::from_be_bytes([ext_hi, ext_lo]),
        version: (version_byte >> 1) & 0x1F,
        current_next: version_byte & 0x01 != 0,
        section_number,
        last_section_number: last_section,
    };
    Ok((header, body))
}

/// 13-bit PID from two bytes whose top 3 bits are reserved.
fn pid13(hi: u8, lo: u8) -> u16 {
    u16::from(hi & 0x1F) << 8 | u16::from(lo)
}

/// 12-bit length from two bytes whose top 4 bits are reserved.
fn len12(hi: u8, lo: u8) -> usize {
    usize::from(hi & 0x0F) << 8 | usize::from(lo)
}

/// The first program (program_number != 0) of a PAT body: `(program_number, pmt_pid)`.
/// `Ok(None)` when the PAT lists only the network PID.
pub fn parse_pat(body: &[u8]) -> Result<Option<(u16, u16)>, PsiError> {
    let (entries, rest) = body.as_chunks::<4>();
    if !rest.is_empty() {
        return Err(PsiError::Malformed);
    }
    let first = entries
        .iter()
        .find_map(|&[num_hi, num_lo, pid_hi, pid_lo]| {
            let program_number = u16::from_be_bytes([num_hi, num_lo]);
            (program_number != 0).then(|| (program_number, pid13(pid_hi, pid_lo)))
        });
    Ok(first)
}

/// A PMT body: `(pcr_pid, streams)` in the order listed.
pub fn parse_pmt(body: &[u8]) -> Result<(u16, Vec<EsInfo>), PsiError> {
    let Some((&[pcr_hi, pcr_lo, info_hi, info_lo], rest)) = body.split_first_chunk::<4>() else {
        return Err(PsiError::Malformed);
    };
    let pcr_pid = pid13(pcr_hi, pcr_lo);
    let mut es_loop = rest
        .get(len12(info_hi, info_lo)..)
        .ok_or(PsiError::Malformed)?;
    let mut streams = Vec::new();
    while !es_loop.is_empty() {
        let Some((&[stream_type, pid_hi, pid_lo, es_hi, es_lo], after)) =
            es_loop.split_first_chunk::<5>()
        else {
            return Err(PsiError::Malformed);
        };
        es_loop = after
            .get(len12(es_hi, es_lo)..)
            .ok_or(PsiError::Malformed)?;
        streams.push(EsInfo {
            pid: pid13(pid_hi, pid_lo),
            stream_type: StreamType::from_wire(stream_type),
        });
    }
    Ok((pcr_pid, streams))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wraps a body in a long-form section with a valid CRC.
    fn section(table_id: u8, ext: u16, version: u8, body: &[u8]) -> Vec<u8> {
        let len = 5 + body.len() + 4;
        let mut s = vec![table_id, 0xB0 | (len >> 8) as u8, len as u8];
        s.extend_from_slice(&ext.to_be_bytes());
        s.extend_from_slice(&[0xC1 | (version << 1), 0, 0]);
        s.extend_from_slice(body);
        let crc = crc32_mpeg2(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }

    #[test]
    fn pat_first_program_skips_network_pid() {
        let body = [0, 0, 0xE0, 0x10, 0, 7, 0xF0, 0x00, 0, 8, 0xE1, 0x00];
        assert_eq!(parse_pat(&body), Ok(Some((7, 0x1000))));
        assert_eq!(parse_pat(&body[..4]), Ok(None));
        assert_eq!(parse_pat(&body[..5]), Err(PsiError::Malformed));
    }

    #[test]
    fn pmt_streams_and_bounds() {
        let body = [
            0xE1, 0x00, 0xF0, 0x02, 0xAA, 0xBB, // PCR PID 0x100, 2 bytes program info
            0x1B, 0xE1, 0x00, 0xF0, 0x00, // H.264 on 0x100
            0x0F, 0xE1, 0x01, 0xF0, 0x03, 1, 2, 3, // AAC on 0x101, 3 bytes ES info
            0x06, 0xE1, 0x02, 0xF0, 0x00, // private data
        ];
        let (pcr, streams) = parse_pmt(&body).expect("valid");
        assert_eq!(pcr, 0x100);
        let types: Vec<_> = streams.iter().map(|s| (s.pid, s.stream_type)).collect();
        assert_eq!(
            types,
            [
                (0x100, StreamType::H264),
                (0x101, StreamType::AdtsAac),
                (0x102, StreamType::Other(6))
            ]
        );
        for cut in 0..body.len() {
            let r = parse_pmt(&body[..cut]);
            if ![6, 11, 19].contains(&cut) {
                assert_eq!(r, Err(PsiError::Malformed), "cut at {cut}");
            }
        }
    }

    #[test]
    fn check_section_crc_and_length() {
        let s = section(TABLE_ID_PAT, 1, 3, &[0, 1, 0xF0, 0]);
        let (h, body) = check_section(&s).expect("valid");
        assert_eq!((h.table_id, h.table_id_extension, h.version), (0, 1, 3));
        assert!(h.current_next);
        assert_eq!(body, [0, 1, 0xF0, 0]);
        let mut bad = s.clone();
        bad[9] ^= 1;
        assert_eq!(check_section(&bad), Err(PsiError::Crc));
        assert_eq!(check_section(&s[..s.len() - 1]), Err(PsiError::Malformed));
        assert_eq!(check_section(&s[..5]), Err(PsiError::Malformed));
    }

    #[test]
    fn assembler_spans_packets_and_handles_pointer() {
        let s = section(
            TABLE_ID_PMT,
            1,
            0,
            &[0xE1, 0, 0xF0, 0, 0x1B, 0xE1, 0, 0xF0, 0],
        );
        let mut asm = SectionAssembler::default();
        let mut out = SectionOutput::default();
        // Unit start with pointer 0, section split in 3 pieces.
        let mut first = vec![0];
        first.extend_from_slice(&s[..2]);
        asm.push(true, &first, &mut out);
        asm.push(false, &s[2..10], &mut out);
        assert!(out.sections.is_empty());
        let mut last = s[10..].to_vec();
        last.extend_from_slice(&[0xFF; 20]);
        asm.push(false, &last, &mut out);
        assert_eq!(out.sections, std::slice::from_ref(&s));
        // Two sections back to back after a pointer skipping 3 bytes of an unknown section.
        let mut out = SectionOutput::default();
        let mut p = vec![3, 9, 9, 9];
        p.extend_from_slice(&s);
        p.extend_from_slice(&s);
        p.push(0xFF);
        asm.push(true, &p, &mut out);
        assert_eq!(out.sections.len(), 2);
        assert_eq!(out.malformed, 0);
        // Pointer beyond the payload.
        asm.push(true, &[200, 0, 1], &mut out);
        assert_eq!(out.malformed, 1);
    }

    #[test]
    fn assembler_counts_truncated_section() {
        let s = section(TABLE_ID_PAT, 1, 0, &[0, 1, 0xF0, 0]);
        let mut asm = SectionAssembler::default();
        let mut out = SectionOutput::default();
        let mut first = vec![0];
        first.extend_from_slice(&s[..6]);
        asm.push(true, &first, &mut out);
        // A new unit start whose pointer does not finish the first section.
        let mut second = vec![2, s[6], s[7]];
        second.extend_from_slice(&s);
        asm.push(true, &second, &mut out);
        assert_eq!(out.malformed, 1);
        assert_eq!(out.sections, [s]);
    }
}
