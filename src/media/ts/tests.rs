//! Unit tests of the TS demuxer with hand-built packets.

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
    let marked = |bits: u64| ((bits as u8) << 1) | 1;
    [
        (prefix << 4) | marked((t >> 30) & 0x07),
        (t >> 22) as u8,
        marked((t >> 15) & 0x7F),
        (t >> 7) as u8,
        marked(t & 0x7F),
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

#[test]
fn bounded_pes_cut_short_is_dropped() {
    let mut demux = started();
    let mut cc = 0;
    let long = packetize(
        AUDIO,
        &mut cc,
        Af::default(),
        &pes(0xC0, 0, None, true, &payload(400, 1)),
    );
    // Only the first packet arrives (CC stays continuous), then the next PES starts.
    let mut packets = vec![long[0].clone()];
    cc = 1;
    packets.extend(packetize(
        AUDIO,
        &mut cc,
        Af::default(),
        &pes(0xC0, 1920, None, true, b"ok"),
    ));
    let out = push_all(&mut demux, &packets);
    let pes = pes_of(&out);
    assert_eq!(pes.len(), 1);
    assert_eq!((pes[0].pts_90k, pes[0].after_loss), (Some(1920), true));
    assert_eq!((demux.stats().pes_errors, demux.stats().cc_errors), (1, 0));
}

#[test]
fn pcr_on_a_pid_without_payload_stream() {
    let mut demux = Demuxer::new();
    let mut out = Vec::new();
    demux.push(&psi_packet(0, 0, &pat(0, PMT)), &mut out);
    demux.push(
        &psi_packet(PMT, 0, &pmt(0, 0x1FF, &[(0x1B, VIDEO)], &[])),
        &mut out,
    );
    out.clear();
    let af = Af {
        pcr_27m: Some(27_000_000),
        disc: true,
        ..Af::default()
    };
    demux.push(&packet(0x1FF, false, 0, af, &[]), &mut out);
    let pcr = DemuxEvent::Pcr {
        pid: 0x1FF,
        pcr_27m: 27_000_000,
        discontinuity: true,
    };
    assert_eq!(out, [pcr]);
}

#[test]
fn a_pes_that_began_before_the_first_pmt_is_replayed_once_it_is_known() {
    // A receiver started between a PMT and a keyframe: the keyframe's first packets come
    // before any PAT/PMT. Regression: they were dropped (unknown PID) and the stream started
    // a GOP later (2 s in the benchmark, relays started at the consent instant).
    let mut demux = Demuxer::new();
    let mut cc = 0;
    let first = payload(400, 1);
    let second = payload(200, 2);
    let mut packets = packetize(
        VIDEO,
        &mut cc,
        Af {
            rai: true,
            ..Af::default()
        },
        &pes(0xE0, 9000, None, false, &first),
    );
    assert_eq!(packets.len(), 3);
    let early = packets.len() as u64;
    packets.push(psi_packet(0, 0, &pat(0, PMT)));
    let streams = [(0x1B, VIDEO), (0x0F, AUDIO)];
    packets.push(psi_packet(PMT, 0, &pmt(0, VIDEO, &streams, &[])));
    packets.extend(packetize(
        VIDEO,
        &mut cc,
        Af::default(),
        &pes(0xE0, 12000, None, false, &second),
    ));
    let mut out = push_all(&mut demux, &packets);
    out.extend(flushed(&mut demux));
    let pes = pes_of(&out);
    assert_eq!(pes.len(), 2, "{out:?}");
    assert_eq!(pes[0].data[..], first[..], "the early PES, whole");
    assert_eq!(pes[0].pts_90k, Some(9000));
    assert!(pes[0].random_access);
    assert_eq!(
        pes[0].first_packet, 1,
        "replayed under its own packet number"
    );
    assert_eq!(pes[1].data[..], second[..]);
    assert_eq!(pes[1].first_packet, early + 3);
    assert_eq!(demux.stats().packets, packets.len() as u64);
    assert_eq!(demux.stats().cc_errors, 0);
    assert_eq!(
        demux.buffered_bytes(),
        0,
        "nothing kept once the program is known"
    );
}

#[test]
fn packets_kept_before_the_first_pmt_are_bounded() {
    let mut demux = Demuxer::new();
    let mut out = Vec::new();
    for i in 0..(MAX_PRE_PROGRAM_PACKETS as u64 + 500) {
        demux.push(
            &packet(AUDIO, false, (i % 16) as u8, Af::default(), &[7; 184]),
            &mut out,
        );
        // Null packets are never kept.
        demux.push(
            &packet(NULL_PID, false, 0, Af::default(), &[0; 184]),
            &mut out,
        );
    }
    assert!(out.is_empty());
    assert_eq!(
        demux.buffered_bytes(),
        MAX_PRE_PROGRAM_PACKETS * TS_PACKET_LEN
    );
}
