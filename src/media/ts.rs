//! MPEG-TS demultiplexer (ISO/IEC 13818-1): PAT/PMT (sections spanning packets, CRC-32
//! checked), PES reassembly, continuity counters, PCR, discontinuity indicator.
//!
//! Contract (pure): `push` takes whole 188-byte packets (a datagram's payload), appends events
//! to `out`. Never panics on any input; malformed input only moves counters in [`DemuxStats`].
//!
//! Layout: this file parses TS packets (header, adaptation field), checks continuity and
//! routes payloads; [`super::psi`] reassembles and parses PAT/PMT sections (CRC in
//! [`super::crc`]); [`super::pes`] reassembles PES packets.
//!
//! Routing: PID 0 → PAT (first program only), that program's PMT PID → PMT, the PMT's H.264 and
//! ADTS AAC PIDs → PES (at most [`MAX_RELAYED_STREAMS`]); PCRs are taken from the PMT's
//! PCR_PID whatever it carries. Every other PID is skipped without further parsing.
//!
//! Continuity counters are checked on the PAT, PMT and relayed PIDs. A repeated packet (same
//! CC, same payload) is dropped silently; any other unexpected CC is a loss: the section or
//! PES in progress is dropped and the next PES emitted on that PID has `after_loss`.

use bytes::Bytes;

use super::pes::PesAssembler;
pub use super::pes::{MAX_PES_BYTES, PesHeader, PesHeaderError, parse_pes_header};
use super::psi::{self, PsiError, SectionAssembler, SectionHeader, SectionOutput};

pub const TS_PACKET_LEN: usize = 188;
pub const SYNC_BYTE: u8 = 0x47;

/// Elementary stream types we relay; everything else is ignored (but reported in `Program`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    /// 0x1B: H.264 / AVC video, Annex-B byte stream.
    H264,
    /// 0x0F: AAC audio in ADTS framing.
    AdtsAac,
    Other(u8),
}

impl StreamType {
    /// Maps a PMT stream_type byte.
    pub fn from_wire(stream_type: u8) -> Self {
        match stream_type {
            0x1B => Self::H264,
            0x0F => Self::AdtsAac,
            other => Self::Other(other),
        }
    }

    /// The PMT stream_type byte.
    pub fn to_wire(self) -> u8 {
        match self {
            Self::H264 => 0x1B,
            Self::AdtsAac => 0x0F,
            Self::Other(other) => other,
        }
    }

    /// Whether PES packets of this type are reassembled and emitted.
    pub fn is_relayed(self) -> bool {
        matches!(self, Self::H264 | Self::AdtsAac)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsInfo {
    pub pid: u16,
    pub stream_type: StreamType,
}

/// The first program of the PAT and its PMT. Emitted when first seen and whenever the PMT
/// version or content changes (a source restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub program_number: u16,
    pub pmt_pid: u16,
    pub pcr_pid: u16,
    pub version: u8,
    pub streams: Vec<EsInfo>,
}

/// One complete PES packet's payload (for video: one access unit; for ADTS audio: one or more
/// ADTS frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pes {
    pub pid: u16,
    pub stream_type: StreamType,
    /// 33-bit PTS in 90 kHz units, as on the wire.
    pub pts_90k: Option<u64>,
    /// 33-bit DTS in 90 kHz units; `None` when the header carries only a PTS (then DTS = PTS).
    pub dts_90k: Option<u64>,
    pub data: Bytes,
    /// The discontinuity_indicator was set in a TS packet of this PES (or on this PID since the
    /// previous PES): timestamps may jump.
    pub discontinuity: bool,
    /// random_access_indicator was set on the first TS packet of this PES.
    pub random_access: bool,
    /// Data was lost on this PID (continuity error, truncated or malformed PES) since the
    /// previous PES that was emitted: a decoder chain is broken, wait for a keyframe.
    pub after_loss: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemuxEvent {
    Program(Program),
    Pes(Pes),
    /// A PCR on the program's PCR PID, 27 MHz units (base*300 + ext).
    Pcr {
        pid: u16,
        pcr_27m: u64,
        discontinuity: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub packets: u64,
    /// Packets not starting with 0x47 (each run of bytes skipped while resynchronising counts
    /// once), or trailing bytes that are not a whole packet.
    pub sync_errors: u64,
    /// transport_error_indicator set, or a packet whose adaptation_field_length overruns it
    /// (the packet is treated as lost).
    pub transport_errors: u64,
    /// Continuity counter gaps (and repeated CCs with a different payload) on the PAT, PMT
    /// and relayed PIDs.
    pub cc_errors: u64,
    pub crc_errors: u64,
    /// PSI sections that were malformed (bad lengths, unsupported syntax).
    pub psi_errors: u64,
    /// PES packets dropped because they were malformed, incomplete (loss, truncation) or
    /// larger than [`MAX_PES_BYTES`].
    pub pes_errors: u64,
    pub pes_emitted: u64,
}

/// At most this many H.264/AAC PIDs of a PMT are reassembled (bounds memory to this many
/// times [`MAX_PES_BYTES`]); further ones are still listed in [`Program`].
pub const MAX_RELAYED_STREAMS: usize = 16;
/// The null packet PID, also "no PCR" as a PCR_PID.
pub const NULL_PID: u16 = 0x1FFF;
const PAT_PID: u16 = 0;
/// Payload bytes of a TS packet without adaptation field.
const MAX_PAYLOAD_LEN: usize = TS_PACKET_LEN - 4;

/// The 4-byte TS packet header.
#[derive(Clone, Copy, Debug)]
struct PacketHeader {
    transport_error: bool,
    unit_start: bool,
    pid: u16,
    /// adaptation_field_control: bit 1 = adaptation field, bit 0 = payload.
    afc: u8,
    cc: u8,
}

impl PacketHeader {
    fn parse(&[_sync, b1, b2, b3]: &[u8; 4]) -> Self {
        Self {
            transport_error: b1 & 0x80 != 0,
            unit_start: b1 & 0x40 != 0,
            pid: u16::from(b1 & 0x1F) << 8 | u16::from(b2),
            afc: (b3 >> 4) & 0x03,
            cc: b3 & 0x0F,
        }
    }
}

/// The adaptation field flags we use.
#[derive(Clone, Copy, Debug, Default)]
struct AdaptationField {
    discontinuity: bool,
    random_access: bool,
    pcr_27m: Option<u64>,
}

impl AdaptationField {
    /// Parses the adaptation field body (after adaptation_field_length). An empty body (length
    /// 0, one stuffing byte) has no flags; a PCR flag without room for the PCR is ignored.
    fn parse(body: &[u8]) -> Self {
        let Some((&flags, rest)) = body.split_first() else {
            return Self::default();
        };
        let pcr_27m = match rest.first_chunk::<6>() {
            Some(&[b0, b1, b2, b3, b4, b5]) if flags & 0x10 != 0 => {
                let base = u64::from(b0) << 25
                    | u64::from(b1) << 17
                    | u64::from(b2) << 9
                    | u64::from(b3) << 1
                    | u64::from(b4 >> 7);
                let ext = u64::from(b4 & 0x01) << 8 | u64::from(b5);
                Some(base * 300 + ext)
            }
            _ => None,
        };
        Self {
            discontinuity: flags & 0x80 != 0,
            random_access: flags & 0x40 != 0,
            pcr_27m,
        }
    }
}

/// Splits the bytes after a packet header into adaptation field and payload. `None` when
/// adaptation_field_length overruns the packet. The payload is `None` when
/// adaptation_field_control says there is none.
fn split_packet(afc: u8, rest: &[u8]) -> Option<(AdaptationField, Option<&[u8]>)> {
    let (af, payload) = if afc & 0b10 != 0 {
        let (&af_len, after) = rest.split_first()?;
        let (af_body, payload) = after.split_at_checked(usize::from(af_len))?;
        (AdaptationField::parse(af_body), payload)
    } else {
        (AdaptationField::default(), rest)
    };
    Some((af, (afc & 0b01 != 0).then_some(payload)))
}

/// What a CC check says about a packet with payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CcVerdict {
    Ok,
    /// Same CC and same payload as the previous packet: a permitted duplicate, to be ignored.
    Duplicate,
    Gap,
}

/// Continuity counter state of one PID.
#[derive(Clone)]
struct Continuity {
    last_cc: Option<u8>,
    /// Payload of the last packet, to tell a duplicate from a 16-packet loss.
    last_payload: [u8; MAX_PAYLOAD_LEN],
    last_payload_len: usize,
}

impl Default for Continuity {
    fn default() -> Self {
        Self {
            last_cc: None,
            last_payload: [0; MAX_PAYLOAD_LEN],
            last_payload_len: 0,
        }
    }
}

impl Continuity {
    /// Checks a packet. Packets without payload do not advance the CC (§2.4.3.3); a
    /// discontinuity_indicator makes any CC acceptable.
    fn check(&mut self, cc: u8, payload: Option<&[u8]>, discontinuity: bool) -> CcVerdict {
        let Some(payload) = payload else {
            if discontinuity {
                self.last_cc = None;
            }
            return CcVerdict::Ok;
        };
        let verdict = match self.last_cc {
            None => CcVerdict::Ok,
            Some(_) if discontinuity => CcVerdict::Ok,
            Some(last) if last == cc && self.last_payload() == payload => {
                return CcVerdict::Duplicate;
            }
            Some(last) if (last + 1) & 0x0F == cc => CcVerdict::Ok,
            Some(_) => CcVerdict::Gap,
        };
        self.last_cc = Some(cc);
        let len = payload.len().min(MAX_PAYLOAD_LEN);
        if let (Some(dst), Some(src)) = (self.last_payload.get_mut(..len), payload.get(..len)) {
            dst.copy_from_slice(src);
        }
        self.last_payload_len = len;
        verdict
    }

    fn last_payload(&self) -> &[u8] {
        self.last_payload
            .get(..self.last_payload_len)
            .unwrap_or_default()
    }

    /// Forgets the last CC (after a packet whose header cannot be trusted).
    fn reset(&mut self) {
        self.last_cc = None;
    }
}

/// State of a PSI PID (PAT or PMT).
#[derive(Default)]
struct PsiPid {
    cc: Continuity,
    sections: SectionAssembler,
}

/// State of a relayed elementary PID.
struct EsPid {
    pid: u16,
    cc: Continuity,
    pes: PesAssembler,
}

/// Where a PID's packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Pat,
    Pmt,
    /// Index into `Demuxer::es`.
    Es(usize),
    /// Not parsed beyond the adaptation field (for the PCR) or at all.
    Other,
}

/// The MPEG-TS demultiplexer. See the module documentation for what it parses.
#[derive(Default)]
pub struct Demuxer {
    stats: DemuxStats,
    pat: PsiPid,
    /// `(program_number, pmt_pid)` of the first program of the last PAT.
    target: Option<(u16, u16)>,
    pmt: PsiPid,
    /// The last emitted program.
    program: Option<Program>,
    es: Vec<EsPid>,
}

impl Demuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes whole TS packets (any multiple of 188 bytes; a trailing partial packet is counted
    /// in `sync_errors` and ignored). A video PES whose PES_packet_length is 0 is emitted when
    /// the next PES on that PID starts; a PES with a length is emitted as soon as it is complete.
    ///
    /// If a packet does not start with 0x47, the demuxer skips to the next 0x47 that is
    /// followed by another one 188 bytes later (or ends the datagram exactly).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<DemuxEvent>) {
        let mut rest = data;
        while !rest.is_empty() {
            if rest.first() != Some(&SYNC_BYTE) {
                self.stats.sync_errors += 1;
                match find_sync(rest).and_then(|at| rest.get(at..)) {
                    Some(resynced) => rest = resynced,
                    None => return,
                }
                continue;
            }
            let Some((packet, after)) = rest.split_first_chunk::<TS_PACKET_LEN>() else {
                self.stats.sync_errors += 1;
                return;
            };
            self.push_packet(packet, out);
            rest = after;
        }
    }

    /// Emits any PES still being assembled (end of input). A PES with PES_packet_length that
    /// is still incomplete is dropped and counted in `pes_errors`.
    pub fn flush(&mut self, out: &mut Vec<DemuxEvent>) {
        for es in &mut self.es {
            es.pes.finish(&mut self.stats, out);
        }
    }

    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }

    fn push_packet(&mut self, packet: &[u8; TS_PACKET_LEN], out: &mut Vec<DemuxEvent>) {
        self.stats.packets += 1;
        let Some((header_bytes, rest)) = packet.split_first_chunk::<4>() else {
            return;
        };
        let header = PacketHeader::parse(header_bytes);
        let route = self.route(header.pid);
        if header.transport_error {
            self.stats.transport_errors += 1;
            self.lose(route, true);
            return;
        }
        let Some((af, payload)) = split_packet(header.afc, rest) else {
            self.stats.transport_errors += 1;
            self.lose(route, true);
            return;
        };
        if header.afc == 0 {
            return; // reserved: decoders discard such packets
        }
        let verdict = match self.continuity(route) {
            Some(cc) => cc.check(header.cc, payload, af.discontinuity),
            None => CcVerdict::Ok,
        };
        match verdict {
            CcVerdict::Duplicate => return,
            CcVerdict::Gap => {
                self.stats.cc_errors += 1;
                self.lose(route, false);
            }
            CcVerdict::Ok => {}
        }
        self.pcr(header.pid, &af, out);
        let unit_start = header.unit_start && payload.is_some();
        match route {
            Route::Pat | Route::Pmt => {
                if let Some(payload) = payload {
                    self.psi_payload(route == Route::Pat, unit_start, payload, out);
                }
            }
            Route::Es(index) => self.es_packet(index, unit_start, &af, payload, out),
            Route::Other => {}
        }
    }

    fn route(&self, pid: u16) -> Route {
        if pid == PAT_PID {
            return Route::Pat;
        }
        if self.target.is_some_and(|(_, pmt_pid)| pmt_pid == pid) {
            return Route::Pmt;
        }
        match self.es.iter().position(|es| es.pid == pid) {
            Some(index) => Route::Es(index),
            None => Route::Other,
        }
    }

    fn continuity(&mut self, route: Route) -> Option<&mut Continuity> {
        match route {
            Route::Pat => Some(&mut self.pat.cc),
            Route::Pmt => Some(&mut self.pmt.cc),
            Route::Es(index) => self.es.get_mut(index).map(|es| &mut es.cc),
            Route::Other => None,
        }
    }

    /// A packet of `route` was lost: drop what was being assembled. With `untrusted_cc`, the
    /// lost packet's CC is unknown, so the next one is accepted as is (the loss is already
    /// counted).
    fn lose(&mut self, route: Route, untrusted_cc: bool) {
        let stats = &mut self.stats;
        let (cc, sections) = match route {
            Route::Pat => (&mut self.pat.cc, Some(&mut self.pat.sections)),
            Route::Pmt => (&mut self.pmt.cc, Some(&mut self.pmt.sections)),
            Route::Es(index) => match self.es.get_mut(index) {
                Some(es) => {
                    es.pes.lose(stats);
                    (&mut es.cc, None)
                }
                None => return,
            },
            Route::Other => return,
        };
        if let Some(sections) = sections {
            sections.reset();
        }
        if untrusted_cc {
            cc.reset();
        }
    }

    /// Emits a PCR carried on the program's PCR_PID.
    fn pcr(&self, pid: u16, af: &AdaptationField, out: &mut Vec<DemuxEvent>) {
        let Some(pcr_27m) = af.pcr_27m else {
            return;
        };
        if self.program.as_ref().is_some_and(|p| p.pcr_pid == pid) {
            out.push(DemuxEvent::Pcr {
                pid,
                pcr_27m,
                discontinuity: af.discontinuity,
            });
        }
    }

    fn es_packet(
        &mut self,
        index: usize,
        unit_start: bool,
        af: &AdaptationField,
        payload: Option<&[u8]>,
        out: &mut Vec<DemuxEvent>,
    ) {
        let Some(es) = self.es.get_mut(index) else {
            return;
        };
        match payload {
            Some(payload) if unit_start => {
                let (rai, disc) = (af.random_access, af.discontinuity);
                es.pes.start(payload, rai, disc, &mut self.stats, out);
            }
            _ => {
                if af.discontinuity {
                    es.pes.mark_discontinuity();
                }
                if let Some(payload) = payload {
                    es.pes.append(payload, &mut self.stats, out);
                }
            }
        }
    }

    fn psi_payload(
        &mut self,
        is_pat: bool,
        unit_start: bool,
        payload: &[u8],
        out: &mut Vec<DemuxEvent>,
    ) {
        let mut output = SectionOutput::default();
        let pid_state = if is_pat { &mut self.pat } else { &mut self.pmt };
        pid_state.sections.push(unit_start, payload, &mut output);
        self.stats.psi_errors += output.malformed;
        for section in &output.sections {
            match psi::check_section(section) {
                Err(PsiError::Crc) => self.stats.crc_errors += 1,
                Err(PsiError::Malformed) => self.stats.psi_errors += 1,
                Ok((header, _)) if !header.current_next => {}
                Ok((header, body)) if is_pat => self.on_pat(&header, body),
                Ok((header, body)) => self.on_pmt(&header, body, out),
            }
        }
    }

    /// A valid, current PAT section: follows the first program's PMT PID.
    fn on_pat(&mut self, header: &SectionHeader, body: &[u8]) {
        if header.table_id != psi::TABLE_ID_PAT {
            self.stats.psi_errors += 1;
            return;
        }
        if header.section_number != 0 {
            return; // the first program is in section 0
        }
        match psi::parse_pat(body) {
            Ok(Some((_, pmt_pid))) if pmt_pid == PAT_PID || pmt_pid == NULL_PID => {
                self.stats.psi_errors += 1;
            }
            Ok(Some(target)) => {
                if self.target != Some(target) {
                    self.target = Some(target);
                    self.pmt = PsiPid::default();
                }
            }
            Ok(None) => {}
            Err(_) => self.stats.psi_errors += 1,
        }
    }

    /// A valid, current section on the PMT PID: emits the program if it changed.
    fn on_pmt(&mut self, header: &SectionHeader, body: &[u8], out: &mut Vec<DemuxEvent>) {
        let Some((program_number, pmt_pid)) = self.target else {
            return;
        };
        // Other tables and other programs' PMTs may share the PID.
        if header.table_id != psi::TABLE_ID_PMT || header.table_id_extension != program_number {
            return;
        }
        let (pcr_pid, streams) = match psi::parse_pmt(body) {
            Ok(parsed) => parsed,
            Err(_) => {
                self.stats.psi_errors += 1;
                return;
            }
        };
        let program = Program {
            program_number,
            pmt_pid,
            pcr_pid,
            version: header.version,
            streams,
        };
        if self.program.as_ref() != Some(&program) {
            self.apply_program(&program);
            out.push(DemuxEvent::Program(program.clone()));
            self.program = Some(program);
        }
    }

    /// Keeps the state of relayed PIDs that stay (same PID, same type), drops the rest.
    fn apply_program(&mut self, program: &Program) {
        let mut old = std::mem::take(&mut self.es);
        for info in &program.streams {
            let usable = info.stream_type.is_relayed()
                && info.pid != PAT_PID
                && info.pid != program.pmt_pid
                && info.pid != NULL_PID
                && !self.es.iter().any(|es| es.pid == info.pid);
            if !usable || self.es.len() >= MAX_RELAYED_STREAMS {
                continue;
            }
            let kept = old
                .iter()
                .position(|es| es.pid == info.pid && es.pes.stream_type() == info.stream_type)
                .map(|at| old.swap_remove(at));
            self.es.push(kept.unwrap_or_else(|| EsPid {
                pid: info.pid,
                cc: Continuity::default(),
                pes: PesAssembler::new(info.pid, info.stream_type),
            }));
        }
    }
}

/// Offset of the next plausible packet start in `data` (after byte 0): a sync byte followed by
/// another one a packet later, or one that starts the datagram's last whole packet.
fn find_sync(data: &[u8]) -> Option<usize> {
    (1..data.len()).find(|&at| {
        data.get(at) == Some(&SYNC_BYTE)
            && (at + TS_PACKET_LEN == data.len()
                || data.get(at + TS_PACKET_LEN) == Some(&SYNC_BYTE))
    })
}

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::crc::crc32_mpeg2;

    const VIDEO: u16 = 0x100;
    const AUDIO: u16 = 0x101;
    const PMT: u16 = 0x1000;

    /// Adaptation field content of a hand-built packet.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Af {
        disc: bool,
        rai: bool,
        pcr_27m: Option<u64>,
    }

    impl Af {
        fn body(self) -> Vec<u8> {
            if self == Af::default() {
                return Vec::new();
            }
            let flags = u8::from(self.disc) << 7
                | u8::from(self.rai) << 6
                | u8::from(self.pcr_27m.is_some()) << 4;
            let mut body = vec![flags];
            if let Some(pcr) = self.pcr_27m {
                let (base, ext) = (pcr / 300, pcr % 300);
                let bits = base << 15 | 0x3F << 9 | ext;
                body.extend_from_slice(&bits.to_be_bytes()[2..]);
            }
            body
        }
    }

    /// One TS packet; a payload shorter than 184 bytes is padded with adaptation-field
    /// stuffing; an empty payload gives adaptation_field_control 0b10.
    fn packet(pid: u16, pusi: bool, cc: u8, af: Af, payload: &[u8]) -> Vec<u8> {
        let body = af.body();
        let mut p = vec![0x47, u8::from(pusi) << 6 | (pid >> 8) as u8, pid as u8];
        if body.is_empty() && payload.len() == 184 {
            p.push(0x10 | cc);
        } else {
            let afc = if payload.is_empty() { 0x20 } else { 0x30 };
            p.push(afc | cc);
            let af_len = 183 - payload.len();
            assert!(
                af_len >= body.len(),
                "payload too long for the adaptation field"
            );
            p.push(af_len as u8);
            if body.is_empty() && af_len > 0 {
                p.push(0x00); // flags: none
            }
            p.extend_from_slice(&body);
            p.resize(5 + af_len, 0xFF);
        }
        p.extend_from_slice(payload);
        assert_eq!(p.len(), TS_PACKET_LEN);
        p
    }

    /// Splits a PES into packets with consecutive CCs starting at `*cc`.
    fn packetize(pid: u16, cc: &mut u8, first_af: Af, pes: &[u8]) -> Vec<Vec<u8>> {
        let overhead = match first_af.body().len() {
            0 => 0,
            n => n + 1,
        };
        let first_len = pes.len().min(184 - overhead);
        let (first, rest) = pes.split_at(first_len);
        let mut packets = vec![packet(pid, true, *cc, first_af, first)];
        for chunk in rest.chunks(184) {
            *cc = (*cc + 1) & 0x0F;
            packets.push(packet(pid, false, *cc, Af::default(), chunk));
        }
        *cc = (*cc + 1) & 0x0F;
        packets
    }

    fn section(table_id: u8, ext: u16, version: u8, body: &[u8]) -> Vec<u8> {
        let len = 5 + body.len() + 4;
        let mut s = vec![table_id, 0xB0 | (len >> 8) as u8, len as u8];
        s.extend_from_slice(&ext.to_be_bytes());
        s.extend_from_slice(&[0xC1 | version << 1, 0, 0]);
        s.extend_from_slice(body);
        let crc = crc32_mpeg2(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }

    fn pat(version: u8, pmt_pid: u16) -> Vec<u8> {
        let [hi, lo] = pmt_pid.to_be_bytes();
        section(0, 1, version, &[0, 1, 0xE0 | hi, lo])
    }

    fn pmt(version: u8, pcr_pid: u16, streams: &[(u8, u16)], info: &[u8]) -> Vec<u8> {
        let [pcr_hi, pcr_lo] = pcr_pid.to_be_bytes();
        let mut body = vec![0xE0 | pcr_hi, pcr_lo, 0xF0 | (info.len() >> 8) as u8];
        body.push(info.len() as u8);
        body.extend_from_slice(info);
        for &(stream_type, pid) in streams {
            let [hi, lo] = pid.to_be_bytes();
            body.extend_from_slice(&[stream_type, 0xE0 | hi, lo, 0xF0, 0]);
        }
        section(2, 1, version, &body)
    }

    /// A PSI packet holding a whole section after pointer_field 0, 0xFF-stuffed.
    fn psi_packet(pid: u16, cc: u8, section: &[u8]) -> Vec<u8> {
        let mut payload = vec![0];
        payload.extend_from_slice(section);
        payload.resize(184, 0xFF);
        packet(pid, true, cc, Af::default(), &payload)
    }

    fn ts_bytes(prefix: u8, t: u64) -> [u8; 5] {
        [
            prefix << 4 | ((t >> 30) & 0x07) as u8 * 2 | 1,
            (t >> 22) as u8,
            ((t >> 15) & 0x7F) as u8 * 2 | 1,
            (t >> 7) as u8,
            (t & 0x7F) as u8 * 2 | 1,
        ]
    }

    /// A PES; `bounded` sets PES_packet_length.
    fn pes(stream_id: u8, pts: u64, dts: Option<u64>, bounded: bool, payload: &[u8]) -> Vec<u8> {
        let header_data_len = if dts.is_some() { 10 } else { 5 };
        let len = if bounded {
            3 + header_data_len + payload.len()
        } else {
            0
        };
        let flags = if dts.is_some() { 0xC0 } else { 0x80 };
        let mut p = vec![0, 0, 1, stream_id, (len >> 8) as u8, len as u8, 0x80, flags];
        p.push(header_data_len as u8);
        p.extend_from_slice(&ts_bytes(if dts.is_some() { 3 } else { 2 }, pts));
        if let Some(dts) = dts {
            p.extend_from_slice(&ts_bytes(1, dts));
        }
        p.extend_from_slice(payload);
        p
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// A demuxer that has seen the PAT and a PMT (H.264 on VIDEO with the PCR, AAC on AUDIO).
    fn started() -> Demuxer {
        let mut demux = Demuxer::new();
        let mut out = Vec::new();
        demux.push(&psi_packet(0, 0, &pat(0, PMT)), &mut out);
        let streams = [(0x1B, VIDEO), (0x0F, AUDIO)];
        demux.push(&psi_packet(PMT, 0, &pmt(0, VIDEO, &streams, &[])), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        demux
    }

    fn push_all(demux: &mut Demuxer, packets: &[Vec<u8>]) -> Vec<DemuxEvent> {
        let mut out = Vec::new();
        for p in packets {
            demux.push(p, &mut out);
        }
        out
    }

    fn pes_of(events: &[DemuxEvent]) -> Vec<&Pes> {
        events
            .iter()
            .filter_map(|e| match e {
                DemuxEvent::Pes(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn flushed(demux: &mut Demuxer) -> Vec<DemuxEvent> {
        let mut out = Vec::new();
        demux.flush(&mut out);
        out
    }

    #[test]
    fn pat_pmt_split_across_packets() {
        let mut demux = Demuxer::new();
        let mut out = Vec::new();
        // PAT behind a pointer_field that skips 3 bytes of a section we never saw the start of.
        let mut pat_payload = vec![3, 1, 2, 3];
        pat_payload.extend_from_slice(&pat(0, PMT));
        pat_payload.resize(184, 0xFF);
        demux.push(&packet(0, true, 0, Af::default(), &pat_payload), &mut out);
        // A PMT with 250 bytes of program descriptors: two packets.
        let streams = [(0x1B, VIDEO), (0x0F, AUDIO), (0x06, 0x102)];
        let section = pmt(4, VIDEO, &streams, &[0xAB; 250]);
        let mut first = vec![0];
        first.extend_from_slice(&section[..183]);
        let mut second = section[183..].to_vec();
        second.resize(184, 0xFF);
        demux.push(&packet(PMT, true, 0, Af::default(), &first), &mut out);
        assert!(out.is_empty());
        demux.push(&packet(PMT, false, 1, Af::default(), &second), &mut out);
        let expected = Program {
            program_number: 1,
            pmt_pid: PMT,
            pcr_pid: VIDEO,
            version: 4,
            streams: vec![
                EsInfo {
                    pid: VIDEO,
                    stream_type: StreamType::H264,
                },
                EsInfo {
                    pid: AUDIO,
                    stream_type: StreamType::AdtsAac,
                },
                EsInfo {
                    pid: 0x102,
                    stream_type: StreamType::Other(6),
                },
            ],
        };
        assert_eq!(out, [DemuxEvent::Program(expected)]);
        // Repeats of the same PMT are silent.
        out.clear();
        demux.push(&packet(PMT, true, 2, Af::default(), &first), &mut out);
        demux.push(&packet(PMT, false, 3, Af::default(), &second), &mut out);
        assert!(out.is_empty());
        assert_eq!(demux.stats().psi_errors + demux.stats().crc_errors, 0);
    }

    #[test]
    fn crc_mismatch_rejected() {
        let mut demux = Demuxer::new();
        let mut out = Vec::new();
        demux.push(&psi_packet(0, 0, &pat(0, PMT)), &mut out);
        let mut bad = pmt(0, VIDEO, &[(0x1B, VIDEO)], &[]);
        bad[14] ^= 0x01; // a stream PID bit
        demux.push(&psi_packet(PMT, 0, &bad), &mut out);
        assert!(out.is_empty());
        assert_eq!(demux.stats().crc_errors, 1);
        demux.push(
            &psi_packet(PMT, 1, &pmt(0, VIDEO, &[(0x1B, VIDEO)], &[])),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(demux.stats().crc_errors, 1);
    }

    #[test]
    fn bounded_pes_is_emitted_when_complete() {
        let mut demux = started();
        let data = payload(300, 7);
        let mut cc = 0;
        let packets = packetize(
            AUDIO,
            &mut cc,
            Af::default(),
            &pes(0xC0, 9000, None, true, &data),
        );
        assert_eq!(packets.len(), 2);
        let out = push_all(&mut demux, &packets[..1]);
        assert!(out.is_empty());
        let out = push_all(&mut demux, &packets[1..]);
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1, "emitted without waiting for the next PES");
        assert_eq!(pes[0].data[..], data[..]);
        assert_eq!(
            (pes[0].pid, pes[0].stream_type),
            (AUDIO, StreamType::AdtsAac)
        );
        assert_eq!((pes[0].pts_90k, pes[0].dts_90k), (Some(9000), None));
        assert!(!pes[0].after_loss && !pes[0].discontinuity && !pes[0].random_access);
        assert!(flushed(&mut demux).is_empty());
        assert_eq!(demux.stats().pes_emitted, 1);
    }

    #[test]
    fn unbounded_pes_is_emitted_at_next_start_and_flush() {
        let mut demux = started();
        let (first, second) = (payload(500, 1), payload(10, 2));
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &first),
        );
        let out = push_all(&mut demux, &packets);
        assert!(out.is_empty());
        packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 3600, None, false, &second),
        );
        let out = push_all(&mut demux, &packets);
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1);
        assert_eq!((pes[0].data[..].len(), pes[0].pts_90k), (500, Some(0)));
        assert_eq!(pes[0].data[..], first[..]);
        let out = flushed(&mut demux);
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1);
        assert_eq!(
            (&pes[0].data[..], pes[0].pts_90k),
            (&second[..], Some(3600))
        );
        assert_eq!(demux.stats().pes_errors, 0);
    }

    #[test]
    fn pts_and_dts_near_2_pow_33() {
        let mut demux = started();
        let (pts, dts) = ((1 << 33) - 1, (1 << 33) - 3003);
        let mut cc = 0;
        let packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, pts, Some(dts), false, b"x"),
        );
        push_all(&mut demux, &packets);
        let out = flushed(&mut demux);
        let pes = pes_of(&out);
        assert_eq!((pes[0].pts_90k, pes[0].dts_90k), (Some(pts), Some(dts)));
    }

    #[test]
    fn cc_gap_drops_pes_and_flags_the_next() {
        let mut demux = started();
        let mut cc = 0;
        let lost = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &payload(500, 1)),
        );
        let mut packets = vec![lost[0].clone(), lost[2].clone()];
        for (i, pts) in [3600, 7200].into_iter().enumerate() {
            let data = payload(200, i as u8);
            packets.extend(packetize(
                VIDEO,
                &mut cc,
                Af::default(),
                &pes(0xE0, pts, None, false, &data),
            ));
        }
        let mut out = push_all(&mut demux, &packets);
        out.extend(flushed(&mut demux));
        let pes = pes_of(&out);
        let summary: Vec<_> = pes.iter().map(|p| (p.pts_90k, p.after_loss)).collect();
        assert_eq!(summary, [(Some(3600), true), (Some(7200), false)]);
        let stats = demux.stats();
        assert_eq!(
            (stats.cc_errors, stats.pes_errors, stats.pes_emitted),
            (1, 1, 2)
        );
    }

    #[test]
    fn duplicate_packet_is_ignored() {
        let mut demux = started();
        let data = payload(500, 3);
        let mut cc = 5;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &data),
        );
        packets.insert(2, packets[1].clone());
        push_all(&mut demux, &packets);
        let out = flushed(&mut demux);
        assert_eq!(pes_of(&out)[0].data[..], data[..]);
        assert_eq!(demux.stats().cc_errors, 0);
        assert_eq!(demux.stats().pes_errors, 0);
    }

    #[test]
    fn repeated_cc_with_other_payload_is_a_loss() {
        let mut demux = started();
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &payload(500, 3)),
        );
        let mut other = packets[1].clone();
        other[100] ^= 0xFF;
        packets.insert(2, other);
        push_all(&mut demux, &packets);
        assert!(flushed(&mut demux).is_empty());
        assert_eq!((demux.stats().cc_errors, demux.stats().pes_errors), (1, 1));
    }

    #[test]
    fn discontinuity_indicator_allows_cc_jump_and_flags_pes() {
        let mut demux = started();
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, b"a"),
        );
        let disc = Af {
            disc: true,
            ..Af::default()
        };
        cc = 9; // jump
        packets.extend(packetize(
            VIDEO,
            &mut cc,
            disc,
            &pes(0xE0, 1 << 20, None, false, b"b"),
        ));
        packets.extend(packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 90, None, false, &payload(300, 0)),
        ));
        // Mid-PES discontinuity in an adaptation-only packet, then a CC jump.
        packets.push(packet(VIDEO, false, 3, disc, &[]));
        cc = 7;
        packets.extend(packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 5, None, false, b"c"),
        ));
        let mut out = push_all(&mut demux, &packets);
        out.extend(flushed(&mut demux));
        let flags: Vec<_> = pes_of(&out).iter().map(|p| p.discontinuity).collect();
        assert_eq!(flags, [false, true, true, true]);
        assert_eq!(demux.stats().cc_errors, 0);
        assert_eq!(demux.stats().pes_errors, 0);
    }

    #[test]
    fn transport_error_drops_pes_without_cc_error() {
        let mut demux = started();
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &payload(500, 1)),
        );
        packets[1][1] |= 0x80;
        packets.extend(packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 3600, None, false, b"z"),
        ));
        let mut out = push_all(&mut demux, &packets);
        out.extend(flushed(&mut demux));
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1);
        assert!(pes[0].after_loss);
        let stats = demux.stats();
        assert_eq!(
            (stats.transport_errors, stats.pes_errors, stats.cc_errors),
            (1, 1, 0)
        );
    }

    #[test]
    fn resync_after_garbage() {
        let mut demux = started();
        let mut cc = 0;
        let data = payload(200, 9);
        let packets = packetize(
            AUDIO,
            &mut cc,
            Af::default(),
            &pes(0xC0, 0, None, true, &data),
        );
        // Garbage including a lone 0x47 that is not followed by a packet 188 bytes later.
        let mut datagram = vec![0x00, 0x47, 0x12, 0xFF, 0x47];
        datagram.extend(packets.concat());
        let mut out = Vec::new();
        demux.push(&datagram, &mut out);
        assert_eq!(pes_of(&out)[0].data[..], data[..]);
        assert_eq!(demux.stats().sync_errors, 1);
        // All garbage: one error, nothing else.
        demux.push(&[0x12; 500], &mut out);
        assert_eq!(demux.stats().sync_errors, 2);
        assert_eq!(demux.stats().packets, 4);
    }

    #[test]
    fn truncated_datagram() {
        let mut demux = started();
        let mut cc = 0;
        let data = payload(500, 9);
        let packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &data),
        );
        let mut datagram = packets.concat();
        datagram.truncate(188 + 100);
        let mut out = Vec::new();
        demux.push(&datagram, &mut out);
        assert_eq!(demux.stats().sync_errors, 1);
        assert_eq!(demux.stats().packets, 3);
        // The lost packet shows up as a CC gap when the next one arrives.
        demux.push(&packets[2], &mut out);
        assert_eq!(demux.stats().cc_errors, 1);
        assert!(flushed(&mut demux).is_empty());
    }

    #[test]
    fn pmt_change_reemits_program_and_moves_pids() {
        let mut demux = started();
        let mut out = Vec::new();
        let mut cc = 0;
        let old = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, b"old"),
        );
        out.extend(push_all(&mut demux, &old));
        // Same content, same version: silent. New version, video moved to 0x200: re-emitted.
        demux.push(
            &psi_packet(PMT, 1, &pmt(0, VIDEO, &[(0x1B, VIDEO), (0x0F, AUDIO)], &[])),
            &mut out,
        );
        assert!(out.is_empty());
        let moved = [(0x1B, 0x200), (0x0F, AUDIO)];
        demux.push(&psi_packet(PMT, 2, &pmt(1, 0x200, &moved, &[])), &mut out);
        let [DemuxEvent::Program(program)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!((program.version, program.pcr_pid), (1, 0x200));
        out.clear();
        // Old PID: ignored (its PES in progress was dropped); new PID: relayed.
        out.extend(push_all(
            &mut demux,
            &packetize(VIDEO, &mut cc, Af::default(), b"\0\0\x01\xE0\0\0\x80\0\0"),
        ));
        let mut cc = 0;
        out.extend(push_all(
            &mut demux,
            &packetize(
                0x200,
                &mut cc,
                Af::default(),
                &pes(0xE0, 7, None, false, b"new"),
            ),
        ));
        out.extend(flushed(&mut demux));
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1);
        assert_eq!((pes[0].pid, &pes[0].data[..]), (0x200, &b"new"[..]));
        // Same content under a new version number is a change too.
        out.clear();
        demux.push(&psi_packet(PMT, 3, &pmt(2, 0x200, &moved, &[])), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn pat_change_follows_new_pmt_pid() {
        let mut demux = started();
        let mut out = Vec::new();
        demux.push(&psi_packet(0, 1, &pat(1, 0x1001)), &mut out);
        demux.push(
            &psi_packet(PMT, 1, &pmt(0, VIDEO, &[(0x1B, VIDEO)], &[])),
            &mut out,
        );
        assert!(out.is_empty(), "the old PMT PID is no longer followed");
        demux.push(
            &psi_packet(0x1001, 0, &pmt(0, VIDEO, &[(0x1B, VIDEO)], &[])),
            &mut out,
        );
        let [DemuxEvent::Program(program)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(program.pmt_pid, 0x1001);
    }

    #[test]
    fn pcr_and_random_access() {
        let mut demux = started();
        let pcr_27m = ((1 << 33) - 1) * 300 + 299;
        let af = Af {
            rai: true,
            pcr_27m: Some(pcr_27m),
            ..Af::default()
        };
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            af,
            &pes(0xE0, 0, None, false, &payload(400, 0)),
        );
        packets.push(packet(
            AUDIO,
            false,
            0,
            Af {
                pcr_27m: Some(5),
                ..Af::default()
            },
            &[],
        ));
        let mut out = push_all(&mut demux, &packets);
        assert_eq!(
            out,
            [DemuxEvent::Pcr {
                pid: VIDEO,
                pcr_27m,
                discontinuity: false
            }],
            "not the PCR PID: ignored"
        );
        out.extend(flushed(&mut demux));
        assert!(pes_of(&out)[0].random_access);
    }

    #[test]
    fn oversized_pes_is_dropped() {
        let mut demux = started();
        let mut cc = 0;
        let chunk = vec![0u8; 184];
        let mut out = Vec::new();
        demux.push(
            &packetize(
                VIDEO,
                &mut cc,
                Af::default(),
                &pes(0xE0, 0, None, false, b""),
            )[0],
            &mut out,
        );
        for _ in 0..=MAX_PES_BYTES / 184 {
            demux.push(&packet(VIDEO, false, cc, Af::default(), &chunk), &mut out);
            cc = (cc + 1) & 0x0F;
        }
        assert_eq!(demux.stats().pes_errors, 1);
        let packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 1, None, false, b"ok"),
        );
        out.extend(push_all(&mut demux, &packets));
        out.extend(flushed(&mut demux));
        let pes = pes_of(&out);
        assert_eq!(pes.len(), 1);
        assert!(pes[0].after_loss);
    }

    #[test]
    fn adaptation_field_overrun_is_a_lost_packet() {
        let mut demux = started();
        let mut cc = 0;
        let mut packets = packetize(
            VIDEO,
            &mut cc,
            Af::default(),
            &pes(0xE0, 0, None, false, &payload(500, 1)),
        );
        packets[1][3] |= 0x20; // adaptation field present...
        packets[1][4] = 184; // ...longer than the packet
        push_all(&mut demux, &packets);
        assert!(flushed(&mut demux).is_empty());
        assert_eq!(
            (demux.stats().transport_errors, demux.stats().pes_errors),
            (1, 1)
        );
    }
}
