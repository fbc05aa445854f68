//! RTMP chunking of media messages without copying the payload (pure).
//!
//! rml_rtmp's serializer copies every payload into a growing `Vec` with the chunk headers;
//! for a 1080p stream that is the frame's bytes copied twice or more per frame. Here a
//! message becomes a list of `Bytes`: small headers (one allocation per message, shared by
//! all its chunks) around slices of the frame body, which the egress hands to one `writev`
//! (or to rustls, which copies once, into the TLS record it encrypts).
//!
//! Only audio and video go through here, on the chunk streams rml_rtmp would use for them
//! (4 video, 5 audio); the session never lets rml_rtmp serialize audio or video once this
//! chunker exists, so its header compression state for those chunk streams is ours alone.
//! Headers: type 0 for a chunk stream's first message (and whenever the timestamp goes
//! back), type 1 (timestamp delta, length, type) when the length or type changed, type 2
//! (delta only) otherwise; continuation chunks are type 3 and repeat the extended timestamp
//! when there is one, as the specification (5.3.1.3) and nginx-rtmp expect.

use bytes::{BufMut, Bytes, BytesMut};

/// Message type ids.
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;

/// Largest 24-bit timestamp field; at or above it the value goes in the extended field.
const EXTENDED: u32 = 0x00FF_FFFF;
/// Longest message RTMP can carry (24-bit length).
pub const MAX_MESSAGE: usize = 0x00FF_FFFF;

#[derive(Clone, Copy, Debug)]
struct Last {
    ts: u32,
    len: u32,
    type_id: u8,
}

#[derive(Debug)]
pub struct MediaChunker {
    chunk_size: usize,
    stream_id: u32,
    /// Last message header per chunk stream (video, audio).
    last: [Option<Last>; 2],
}

impl MediaChunker {
    /// `chunk_size`: the size announced to the server (Set Chunk Size), ≥ 1. `stream_id`: the
    /// message stream the publish runs on.
    pub fn new(chunk_size: u32, stream_id: u32) -> MediaChunker {
        MediaChunker {
            chunk_size: (chunk_size as usize).max(1),
            stream_id,
            last: [None, None],
        }
    }

    /// Appends one message's chunks to `out` (headers and body slices, in wire order);
    /// returns how many bytes they hold. `None` when the body is longer than RTMP allows.
    pub fn push(
        &mut self,
        type_id: u8,
        ts: u32,
        body: &Bytes,
        out: &mut Vec<Bytes>,
    ) -> Option<usize> {
        if body.len() > MAX_MESSAGE {
            return None;
        }
        let (slot, csid) = if type_id == VIDEO { (0, 4u8) } else { (1, 5u8) };
        let len = body.len() as u32;
        // Format and the value of the timestamp field.
        let (fmt, field) = match self.last[slot] {
            Some(l) if ts >= l.ts && l.type_id == type_id && l.len == len => (2u8, ts - l.ts),
            Some(l) if ts >= l.ts => (1u8, ts - l.ts),
            _ => (0u8, ts),
        };
        self.last[slot] = Some(Last { ts, len, type_id });
        let ext = field >= EXTENDED;
        let chunks = body.len().div_ceil(self.chunk_size).max(1);
        let first_len = 1 + [11, 7, 3][fmt as usize] + if ext { 4 } else { 0 };
        let cont_len = 1 + if ext { 4 } else { 0 };
        let mut hdr = BytesMut::with_capacity(first_len + (chunks - 1) * cont_len);
        hdr.put_u8((fmt << 6) | csid);
        let shown = field.min(EXTENDED);
        hdr.put_slice(&shown.to_be_bytes()[1..]);
        if fmt <= 1 {
            hdr.put_slice(&len.to_be_bytes()[1..]);
            hdr.put_u8(type_id);
        }
        if fmt == 0 {
            hdr.put_u32_le(self.stream_id);
        }
        if ext {
            hdr.put_u32(field);
        }
        let mut total = 0;
        let first = hdr.split().freeze();
        total += first.len();
        out.push(first);
        let mut off = 0;
        while off < body.len() {
            if off > 0 {
                hdr.put_u8(0xC0 | csid);
                if ext {
                    hdr.put_u32(field);
                }
                let h = hdr.split().freeze();
                total += h.len();
                out.push(h);
            }
            let end = (off + self.chunk_size).min(body.len());
            out.push(body.slice(off..end));
            total += end - off;
            off = end;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
    use rml_rtmp::messages::{MessagePayload, RtmpMessage};
    use rml_rtmp::time::RtmpTimestamp;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// Reads every message back with rml_rtmp's deserializer (an independent reading of the
    /// chunk format): (type, timestamp, stream id, payload).
    fn read_back(wire: &[u8], chunk_size: u32) -> Vec<ReadMsg> {
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(chunk_size as usize)
            .expect("chunk size");
        let mut out = Vec::new();
        let mut input = wire;
        loop {
            match d.get_next_message(input).expect("valid chunks") {
                Some(p) => out.push((
                    p.type_id,
                    p.timestamp.value,
                    p.message_stream_id,
                    p.data.to_vec(),
                )),
                None => break,
            }
            input = &[];
        }
        out
    }

    type Msg = (u8, u32, Bytes);

    /// A message as read back: (type, timestamp, stream id, payload).
    type ReadMsg = (u8, u32, u32, Vec<u8>);

    /// Chunks `msgs`; checks the returned byte count; returns what reads back, what should
    /// (the messages on stream `sid`), and the wire bytes.
    fn round_trip(
        c: &mut MediaChunker,
        msgs: &[Msg],
        cs: u32,
        sid: u32,
    ) -> (Vec<ReadMsg>, Vec<ReadMsg>, Vec<u8>) {
        let mut parts = Vec::new();
        let mut total = 0;
        for (t, ts, b) in msgs {
            total += c.push(*t, *ts, b, &mut parts).expect("fits");
        }
        let wire = concat(&parts);
        assert_eq!(wire.len(), total);
        let want = msgs
            .iter()
            .map(|(t, ts, b)| (*t, *ts, sid, b.to_vec()))
            .collect();
        (read_back(&wire, cs), want, wire)
    }

    fn body(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn messages_read_back_as_sent_across_formats_and_chunk_boundaries() {
        let cs = 128;
        let mut c = MediaChunker::new(cs, 1);
        let msgs = [
            (VIDEO, 0, body(5, 1)),     // type 0
            (AUDIO, 0, body(7, 2)),     // type 0 on the audio stream
            (VIDEO, 33, body(5, 3)),    // same length: type 2
            (VIDEO, 66, body(300, 4)),  // new length: type 1, three chunks
            (AUDIO, 21, body(7, 5)),    // type 2
            (VIDEO, 100, body(256, 6)), // exactly two chunks
            (VIDEO, 90, body(10, 7)),   // timestamp back: type 0
            (AUDIO, 43, body(128, 8)),  // exactly one chunk
        ];
        let (got, want, _) = round_trip(&mut c, &msgs, cs, 1);
        assert_eq!(got, want);
    }

    #[test]
    fn extended_timestamps_are_repeated_on_continuation_chunks() {
        let mut c = MediaChunker::new(128, 3);
        let big = 0x0100_0000 + 5;
        let msgs = [
            (VIDEO, big, body(400, 1)),         // type 0, extended, four chunks
            (VIDEO, big + 33, body(400, 2)),    // type 2, small delta
            (AUDIO, 0xFFFF_FF00, body(200, 3)), // extended near the wrap
        ];
        let (got, want, wire) = round_trip(&mut c, &msgs, 128, 3);
        // Four chunks of video: 1 + 11 + 4 header, then three of 1 + 4.
        assert_eq!(&wire[..1], &[0x04]);
        assert_eq!(&wire[12..16], &big.to_be_bytes());
        assert_eq!(wire[16 + 128], 0xC4);
        assert_eq!(&wire[17 + 128..21 + 128], &big.to_be_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn bodies_are_not_copied() {
        let mut c = MediaChunker::new(100, 1);
        let b = body(250, 9);
        let mut parts = Vec::new();
        c.push(VIDEO, 0, &b, &mut parts).expect("fits");
        // header, slice, header, slice, header, slice
        assert_eq!(parts.len(), 6);
        for (i, p) in parts.iter().skip(1).step_by(2).enumerate() {
            assert_eq!(
                p.as_ptr(),
                b[i * 100..].as_ptr(),
                "slice {i} points into the body"
            );
        }
    }

    #[test]
    fn an_empty_message_is_one_header() {
        let mut c = MediaChunker::new(128, 1);
        let mut parts = Vec::new();
        assert_eq!(c.push(AUDIO, 7, &Bytes::new(), &mut parts), Some(12));
        assert_eq!(parts.len(), 1);
        assert_eq!(read_back(&concat(&parts), 128), vec![(AUDIO, 7, 1, vec![])]);
    }

    #[test]
    fn too_long_a_body_is_refused() {
        let mut c = MediaChunker::new(65_536, 1);
        let b = Bytes::from(vec![0u8; MAX_MESSAGE + 1]);
        let mut parts = Vec::new();
        assert_eq!(c.push(VIDEO, 0, &b, &mut parts), None);
        assert!(parts.is_empty());
    }

    proptest::proptest! {
        /// Any sequence of audio and video messages (timestamps jumping back and forth,
        /// across the extended range, lengths around chunk boundaries, any chunk size) reads
        /// back exactly with an independent deserializer.
        #[test]
        fn any_sequence_reads_back(
            chunk_size in 1u32..600,
            msgs in proptest::collection::vec(
                (proptest::bool::ANY, 0u32..3, 0u32..0x0100_0100, 0usize..1300),
                1..40,
            ),
        ) {
            let mut ts = 0u32;
            let msgs: Vec<Msg> = msgs
                .into_iter()
                .enumerate()
                .map(|(k, (video, how, jump, len))| {
                    ts = match how {
                        0 => ts.wrapping_add(jump % 50),
                        1 => jump,
                        _ => 0xFF00_0000u32.wrapping_add(jump),
                    };
                    (if video { VIDEO } else { AUDIO }, ts, body(len, k as u8))
                })
                .collect();
            let mut c = MediaChunker::new(chunk_size, 7);
            let (got, want, _) = round_trip(&mut c, &msgs, chunk_size, 7);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn same_bytes_as_rml_rtmp_for_a_typical_stream() {
        // rml_rtmp's serializer is what the egress used before: for the usual sequence the
        // wire bytes are the same, so servers see nothing new. (rml_rtmp also starts a
        // message with a type 3 header when the delta repeats; this chunker does not, which
        // costs 3 bytes and spares servers that read that case differently.)
        let mut ser = ChunkSerializer::new();
        let _ = ser
            .set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .expect("size");
        let mut c = MediaChunker::new(4096, 1);
        let msgs = [
            (VIDEO, 0, body(40, 1)),
            (AUDIO, 0, body(7, 2)),
            (VIDEO, 33, body(9000, 3)),
            (AUDIO, 21, body(7, 4)),
            (VIDEO, 67, body(9000, 5)),
            (AUDIO, 43, body(9, 6)),
        ];
        for (t, ts, b) in &msgs {
            let m = if *t == VIDEO {
                RtmpMessage::VideoData { data: b.clone() }
            } else {
                RtmpMessage::AudioData { data: b.clone() }
            };
            let p = MessagePayload::from_rtmp_message(m, RtmpTimestamp::new(*ts), 1).expect("p");
            let theirs = ser.serialize(&p, false, false).expect("ser").bytes;
            let mut parts = Vec::new();
            c.push(*t, *ts, b, &mut parts).expect("fits");
            assert_eq!(concat(&parts), theirs, "message at {ts} ms, type {t}");
        }
    }
}
