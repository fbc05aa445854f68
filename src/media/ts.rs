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
    /// Index (1-based, as counted in [`DemuxStats::packets`]) of the TS packet this PES
    /// started in: lets the caller tell when its first byte arrived.
    pub first_packet: u64,
    /// PES_packet_length was 65535, the largest a PES can announce: a video access unit split
    /// over bounded PES continues in the next PES of the PID, which carries no PTS
    /// (docs/performance.md, "Removing the PES wait").
    pub full_length: bool,
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
/// Packets of not yet routed PIDs kept until the first program is known (770 KB; ~1 s of a
/// 6 Mbit/s feed), then replayed: a receiver started between a PMT and a keyframe (a relay
/// started at the consent instant) would otherwise lose that keyframe and wait a whole GOP.
/// PAT/PMT come every ~100 ms in practice. The oldest go first when more come.
pub const MAX_PRE_PROGRAM_PACKETS: usize = 4096;
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
    /// The field holds stuffing bytes: a muxer pads the last packet of a PES this way (the
    /// next PES must start a new packet), so the payload ends the PES.
    stuffing: bool,
}

impl AdaptationField {
    /// Parses the adaptation field body (after adaptation_field_length). An empty body (length
    /// 0, one stuffing byte) has no flags; a PCR flag without room for the PCR is ignored.
    fn parse(body: &[u8]) -> Self {
        let Some((&flags, rest)) = body.split_first() else {
            // adaptation_field_length 0: one stuffing byte.
            return Self {
                stuffing: true,
                ..Self::default()
            };
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
            stuffing: rest.len() > Self::flagged_len(flags, rest),
        }
    }

    /// Bytes after the flags byte taken by the optional fields `flags` announces.
    fn flagged_len(flags: u8, rest: &[u8]) -> usize {
        let mut n = 0usize;
        if flags & 0x10 != 0 {
            n += 6; // PCR
        }
        if flags & 0x08 != 0 {
            n += 6; // OPCR
        }
        if flags & 0x04 != 0 {
            n += 1; // splice_countdown
        }
        if flags & 0x02 != 0 {
            n += 1 + rest.get(n).map_or(0, |&l| usize::from(l)); // private data
        }
        if flags & 0x01 != 0 {
            n += 1 + rest.get(n).map_or(0, |&l| usize::from(l)); // extension
        }
        n
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
    /// Until the first program: packets of PIDs not routed yet, with their packet numbers.
    pre_program: std::collections::VecDeque<(u64, [u8; TS_PACKET_LEN])>,
    /// The first program was just applied: replay `pre_program` after this packet.
    replay: bool,
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

    /// The source paused: emits unbounded PES in progress (see
    /// [`crate::media::pes::PesAssembler::finish_idle`]); bounded ones keep waiting.
    pub fn flush_idle(&mut self, out: &mut Vec<DemuxEvent>) {
        for es in &mut self.es {
            es.pes.finish_idle(&mut self.stats, out);
        }
    }

    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }

    /// Bytes allocated in reassembly buffers (PAT/PMT sections and PES in progress). Bounded by
    /// [`MAX_RELAYED_STREAMS`] PES buffers (each under 2 × [`MAX_PES_BYTES`]) plus two sections.
    pub fn buffered_bytes(&self) -> usize {
        let es: usize = self.es.iter().map(|e| e.pes.buffered_bytes()).sum();
        es + self.pat.sections.buffered_bytes()
            + self.pmt.sections.buffered_bytes()
            + self.pre_program.len() * TS_PACKET_LEN
    }

    /// Number of elementary PIDs being reassembled (at most [`MAX_RELAYED_STREAMS`]).
    pub fn relayed_pids(&self) -> usize {
        self.es.len()
    }

    fn push_packet(&mut self, packet: &[u8; TS_PACKET_LEN], out: &mut Vec<DemuxEvent>) {
        self.stats.packets += 1;
        self.handle_packet(packet, false, out);
        if std::mem::take(&mut self.replay) {
            // The packets kept before the first program, under their own packet numbers (the
            // consent gate is a packet number: media from before it stays gated).
            let kept = std::mem::take(&mut self.pre_program);
            let now = self.stats.packets;
            for (number, p) in &kept {
                self.stats.packets = *number;
                self.handle_packet(p, true, out);
            }
            self.stats.packets = now;
        }
    }

    /// One packet; `replayed`: kept from before the first program (PSI in it is not parsed
    /// again: the program just applied is newer).
    fn handle_packet(
        &mut self,
        packet: &[u8; TS_PACKET_LEN],
        replayed: bool,
        out: &mut Vec<DemuxEvent>,
    ) {
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
        if replayed && matches!(route, Route::Pat | Route::Pmt) {
            return;
        }
        if route == Route::Other && !self.is_pcr_pid(header.pid) {
            if self.program.is_none() && header.pid != NULL_PID && !replayed {
                if self.pre_program.len() >= MAX_PRE_PROGRAM_PACKETS {
                    self.pre_program.pop_front();
                }
                self.pre_program.push_back((self.stats.packets, *packet));
            }
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

    fn is_pcr_pid(&self, pid: u16) -> bool {
        pid != NULL_PID && self.program.as_ref().is_some_and(|p| p.pcr_pid == pid)
    }

    /// Emits a PCR carried on the program's PCR_PID.
    fn pcr(&self, pid: u16, af: &AdaptationField, out: &mut Vec<DemuxEvent>) {
        let Some(pcr_27m) = af.pcr_27m else {
            return;
        };
        if self.is_pcr_pid(pid) {
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
                es.pes.note_stuffing(af.stuffing);
            }
            _ => {
                if af.discontinuity {
                    es.pes.mark_discontinuity();
                }
                if let Some(payload) = payload {
                    es.pes.append(payload, &mut self.stats, out);
                    es.pes.note_stuffing(af.stuffing);
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
            self.replay = self.program.is_none() && !self.pre_program.is_empty();
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
mod tests;
