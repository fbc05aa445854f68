//! A shadow RTMP chunk parser that vets peer bytes before rml_rtmp sees them: the receiver's
//! `ServerSession` input and the egress's `ClientSession` input (a hostile ingest server).
//!
//! Pure: bytes in, a verdict out. Why it exists (rml_rtmp 0.8, read from its source):
//! - `ChunkDeserializer` keeps one partial-message buffer for all chunk streams and computes
//!   `message_length - bytes_so_far` unchecked: an interleaved chunk, or a type-1 header that
//!   shrinks the length mid-message, underflows (a panic with overflow checks, a huge `reserve`
//!   without). An extended timestamp below 0xFFFFFF on a non-type-0 header underflows too.
//! - It reserves the whole announced message length (up to 16 MiB) at the first chunk, and
//!   accepts any `SetChunkSize` up to 2^31 (0 makes it mis-frame).
//! - `rml_amf0` decodes nested objects/arrays recursively: a deep nest overflows the stack.
//! - `@setDataFrame` with fewer than two following values indexes out of bounds.
//! - A command (type 17/20) that decodes to fewer than three values panics in `drain(..3)`.
//! - A `WindowAcknowledgement` size near 2^32 overflows its u32 byte counter.
//! - Every `createStream` adds a map entry that is never bounded.
//!
//! The guard mirrors rml's framing exactly (same chunk size, same header compression, applied at
//! the same message boundaries) and rejects all of the above before the bytes reach rml. It never
//! copies audio/video payloads; it collects only control and AMF messages, which are size-capped.

use std::collections::HashMap;

/// Chunk size every RTMP peer starts with.
const INITIAL_CHUNK_SIZE: u32 = 128;
/// The 24-bit timestamp field value that announces an extended timestamp.
const EXTENDED_TS: u32 = 0xFF_FFFF;
/// Largest payload of a protocol control message we collect (SetChunkSize, WindowAck: 4 bytes).
const MAX_CONTROL_BYTES: u32 = 64;

/// Limits enforced on one connection. Defaults are documented on each field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardLimits {
    /// Largest RTMP message (video frame, audio frame) accepted. Default 8 MiB.
    pub max_message_bytes: u32,
    /// Largest chunk size a peer may announce with SetChunkSize. Default 64 KiB.
    pub max_chunk_size_bytes: u32,
    /// Largest AMF command or data message (connect, publish, onMetaData). Default 64 KiB.
    pub max_amf_message_bytes: u32,
    /// Deepest nesting of AMF0 objects/arrays. Default 16.
    pub max_amf_depth: u32,
    /// Most AMF commands on one connection (a publish needs about 8). Default 256.
    pub max_commands: u32,
    /// Most distinct chunk stream ids on one connection. Default 64.
    pub max_chunk_streams: u32,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            max_message_bytes: 8 << 20,
            max_chunk_size_bytes: 64 << 10,
            max_amf_message_bytes: 64 << 10,
            max_amf_depth: 16,
            max_commands: 256,
            max_chunk_streams: 64,
        }
    }
}

/// Why the guard refused the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A limit was exceeded.
    Limit(String),
    /// Input rml_rtmp would mis-handle or that breaks the chunk protocol.
    Malformed(String),
}

/// What a chunk stream remembers for header compression (the fields that affect framing).
#[derive(Clone, Copy, Debug, Default)]
struct PrevHeader {
    message_length: u32,
    type_id: u8,
    ts_field: u32,
}

/// The message whose chunks are being received.
#[derive(Debug)]
struct InProgress {
    csid: u32,
    length: u32,
    received: u32,
    type_id: u8,
    /// Payload kept for control/AMF messages; `None` for media (not copied).
    collected: Option<Vec<u8>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ChunkGuard {
    limits: GuardLimits,
    chunk_size: u32,
    headers: HashMap<u32, PrevHeader>,
    /// Bytes of a chunk header seen so far (at most 18).
    header: Vec<u8>,
    /// Payload bytes left in the current chunk.
    chunk_left: u32,
    message: Option<InProgress>,
    commands: u32,
    /// Whether media-sized messages are allowed; when not, every message is capped at
    /// `max_amf_message_bytes` (see [`ChunkGuard::set_media_allowed`]).
    media_allowed: bool,
}

impl ChunkGuard {
    pub fn new(limits: GuardLimits) -> Self {
        ChunkGuard {
            limits,
            chunk_size: INITIAL_CHUNK_SIZE,
            headers: HashMap::new(),
            header: Vec::with_capacity(18),
            chunk_left: 0,
            message: None,
            commands: 0,
            media_allowed: true,
        }
    }

    /// Allows (default) or forbids media-sized messages. The receiver forbids them until a
    /// publish is accepted: rml_rtmp reserves a message's whole announced length at its first
    /// chunk, so without this an unauthenticated peer could make it hold `max_message_bytes`
    /// (8 MiB) per connection.
    pub fn set_media_allowed(&mut self, allowed: bool) {
        self.media_allowed = allowed;
    }

    /// Bytes the guard holds for the connection (header bytes, a collected control/AMF message
    /// by capacity, per-chunk-stream state): bounded by the limits, checked by the fuzz targets.
    pub fn held_bytes(&self) -> usize {
        let collected = self
            .message
            .as_ref()
            .and_then(|m| m.collected.as_ref())
            .map_or(0, Vec::capacity);
        self.header.capacity()
            + collected
            + self.headers.len() * std::mem::size_of::<(u32, PrevHeader)>()
    }

    /// Distinct chunk stream ids seen (at most [`GuardLimits::max_chunk_streams`]).
    pub fn chunk_streams(&self) -> usize {
        self.headers.len()
    }

    /// Vets `input`. On a violation returns how many leading bytes of `input` were fine (they
    /// end on a chunk boundary, or inside a header that was not yet complete).
    pub fn check(&mut self, input: &[u8]) -> Result<(), (usize, Violation)> {
        let mut pos = 0;
        let mut last_ok = 0;
        while pos < input.len() {
            if self.chunk_left > 0 {
                let n = (input.len() - pos).min(self.chunk_left as usize);
                self.payload(&input[pos..pos + n])
                    .map_err(|v| (last_ok, v))?;
                pos += n;
                if self.chunk_left == 0 {
                    last_ok = pos;
                }
                continue;
            }
            let start = pos;
            pos += self.fill_header(&input[pos..]).map_err(|v| (last_ok, v))?;
            if self.header_complete().map_err(|v| (last_ok, v))? {
                self.start_chunk().map_err(|v| (last_ok, v))?;
                if self.chunk_left == 0 {
                    last_ok = pos;
                }
            } else if start == last_ok {
                // An incomplete header at the end of the input harms nothing.
                last_ok = pos;
            }
        }
        Ok(())
    }

    /// Bytes the header needs before its total length is known, or the total length.
    fn header_needed(&self) -> Result<usize, Violation> {
        let h = &self.header;
        let Some(&b0) = h.first() else {
            return Ok(1);
        };
        let basic = basic_len(b0);
        if h.len() < basic {
            return Ok(basic);
        }
        let fmt = b0 >> 6;
        let body = [11, 7, 3, 0][usize::from(fmt)];
        let ts_field = if fmt < 3 {
            if h.len() < basic + 3 {
                return Ok(basic + 3);
            }
            u24(&h[basic..basic + 3])
        } else {
            self.prev(csid_of(h))?.ts_field
        };
        let ext = if ts_field >= EXTENDED_TS { 4 } else { 0 };
        Ok(basic + body + ext)
    }

    fn fill_header(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let mut used = 0;
        loop {
            let need = self.header_needed()?;
            if self.header.len() >= need || used == input.len() {
                return Ok(used);
            }
            let n = (need - self.header.len()).min(input.len() - used);
            self.header.extend_from_slice(&input[used..used + n]);
            used += n;
        }
    }

    fn header_complete(&self) -> Result<bool, Violation> {
        Ok(!self.header.is_empty() && self.header.len() >= self.header_needed()?)
    }

    fn prev(&self, csid: u32) -> Result<PrevHeader, Violation> {
        self.headers.get(&csid).copied().ok_or_else(|| {
            Violation::Malformed(format!(
                "compressed chunk header on new chunk stream {csid}"
            ))
        })
    }

    /// Applies a complete header, mirroring rml's `ChunkDeserializer`.
    fn start_chunk(&mut self) -> Result<(), Violation> {
        let h = std::mem::take(&mut self.header);
        self.header = Vec::with_capacity(18);
        let fmt = h[0] >> 6;
        let csid = csid_of(&h);
        let basic = basic_len(h[0]);
        let mut hdr = if fmt == 0 {
            PrevHeader::default()
        } else {
            self.prev(csid)?
        };
        if fmt < 3 {
            hdr.ts_field = u24(&h[basic..basic + 3]);
        }
        if fmt < 2 {
            hdr.message_length = u24(&h[basic + 3..basic + 6]);
            hdr.type_id = h[basic + 6];
        }
        self.check_extended_ts(&h, fmt, hdr.ts_field)?;
        if !self.headers.contains_key(&csid)
            && self.headers.len() >= self.limits.max_chunk_streams as usize
        {
            return Err(Violation::Limit("too many chunk streams".into()));
        }
        self.headers.insert(csid, hdr);
        self.begin_or_continue(csid, fmt, hdr)?;
        let msg = self.message.as_ref().map_or(0, |m| m.length - m.received);
        self.chunk_left = msg.min(self.chunk_size);
        if msg == 0 {
            self.finish_message()?;
        }
        Ok(())
    }

    /// rml subtracts 0xFFFFFF from a non-type-0 extended timestamp at a message start.
    fn check_extended_ts(&self, h: &[u8], fmt: u8, ts_field: u32) -> Result<(), Violation> {
        if fmt == 0 || ts_field < EXTENDED_TS || self.message.is_some() {
            return Ok(());
        }
        let ext = u32::from_be_bytes([
            h[h.len() - 4],
            h[h.len() - 3],
            h[h.len() - 2],
            h[h.len() - 1],
        ]);
        if ext < EXTENDED_TS {
            return Err(Violation::Malformed(
                "extended timestamp delta too small".into(),
            ));
        }
        Ok(())
    }

    fn begin_or_continue(&mut self, csid: u32, fmt: u8, hdr: PrevHeader) -> Result<(), Violation> {
        if let Some(m) = &self.message {
            if m.csid != csid || fmt != 3 {
                return Err(Violation::Malformed(
                    "interleaved chunk streams are not supported".into(),
                ));
            }
            return Ok(());
        }
        let t = hdr.type_id;
        let collect_cap = match t {
            1..=7 => MAX_CONTROL_BYTES,
            15..=20 => self.limits.max_amf_message_bytes,
            _ if !self.media_allowed => self.limits.max_amf_message_bytes,
            _ => self.limits.max_message_bytes,
        };
        if hdr.message_length > collect_cap {
            let when = if self.media_allowed {
                ""
            } else {
                " before a publish was accepted"
            };
            return Err(Violation::Limit(format!(
                "message of type {t} is {} bytes, over the {collect_cap}-byte limit{when}",
                hdr.message_length
            )));
        }
        let collect = matches!(t, 1..=7 | 15..=20);
        self.message = Some(InProgress {
            csid,
            length: hdr.message_length,
            received: 0,
            type_id: t,
            collected: collect.then(|| Vec::with_capacity(hdr.message_length as usize)),
        });
        Ok(())
    }

    fn payload(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let Some(m) = self.message.as_mut() else {
            return Err(Violation::Malformed(
                "chunk payload without a message".into(),
            ));
        };
        if let Some(c) = m.collected.as_mut() {
            c.extend_from_slice(bytes);
        }
        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        m.received = m.received.saturating_add(n);
        self.chunk_left = self.chunk_left.saturating_sub(n);
        if m.received >= m.length {
            self.finish_message()?;
        }
        Ok(())
    }

    fn finish_message(&mut self) -> Result<(), Violation> {
        let Some(m) = self.message.take() else {
            return Ok(());
        };
        let data = m.collected.unwrap_or_default();
        match m.type_id {
            1 => self.on_set_chunk_size(&data),
            5 => on_window_ack(&data),
            17 | 20 => {
                self.commands = self.commands.saturating_add(1);
                if self.commands > self.limits.max_commands {
                    return Err(Violation::Limit("too many commands".into()));
                }
                let body = if m.type_id == 17 && data.first() == Some(&0) {
                    &data[1..]
                } else {
                    &data[..]
                };
                // rml_rtmp takes the first three values with `drain(..3)`, which panics on
                // fewer (e.g. a body that is just an object-end marker).
                let top = amf0_scan(body, self.limits.max_amf_depth)?;
                if top.len() < 3 {
                    return Err(Violation::Malformed(format!(
                        "AMF command with {} values (name, transaction id and command object \
                         needed)",
                        top.len()
                    )));
                }
                Ok(())
            }
            15 | 18 => check_data_message(&data, self.limits.max_amf_depth),
            _ => Ok(()),
        }
    }

    fn on_set_chunk_size(&mut self, data: &[u8]) -> Result<(), Violation> {
        let Some(size) = be_u32(data) else {
            // rml fails to decode it and the session closes; nothing to mirror.
            return Ok(());
        };
        if size == 0 || size > 0x7FFF_FFFF {
            return Err(Violation::Malformed(format!("invalid chunk size {size}")));
        }
        if size > self.limits.max_chunk_size_bytes {
            return Err(Violation::Limit(format!(
                "peer chunk size {size} over the {}-byte limit",
                self.limits.max_chunk_size_bytes
            )));
        }
        self.chunk_size = size;
        Ok(())
    }
}

fn on_window_ack(data: &[u8]) -> Result<(), Violation> {
    match be_u32(data) {
        Some(size) if size > 0x7FFF_FFFF => Err(Violation::Malformed(format!(
            "window acknowledgement size {size} too large"
        ))),
        _ => Ok(()),
    }
}

fn check_data_message(data: &[u8], max_depth: u32) -> Result<(), Violation> {
    let top = amf0_scan(data, max_depth)?;
    if top.first().map(String::as_str) == Some("@setDataFrame") && top.len() < 3 {
        return Err(Violation::Malformed(
            "@setDataFrame without metadata".into(),
        ));
    }
    Ok(())
}

/// Length of the basic header (format + chunk stream id) from its first byte.
fn basic_len(b0: u8) -> usize {
    match b0 & 0x3F {
        0 => 2,
        1 => 3,
        _ => 1,
    }
}

fn csid_of(h: &[u8]) -> u32 {
    match h[0] & 0x3F {
        0 => u32::from(h[1]) + 64,
        1 => u32::from(h[2]) * 256 + u32::from(h[1]) + 64,
        x => u32::from(x),
    }
}

fn u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn be_u32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

/// Walks AMF0 values the way `rml_amf0::deserialize` does, without recursion, and returns the
/// top-level values as strings (non-strings as ""). Fails on nesting deeper than `max_depth`.
/// Other malformations are left for rml to report (the scan stops quietly at them).
pub fn amf0_scan(data: &[u8], max_depth: u32) -> Result<Vec<String>, Violation> {
    let mut r = Amf0Reader { data, pos: 0 };
    let mut top = Vec::new();
    // Each open container: (is_object, strict-array items left).
    let mut stack: Vec<(bool, u32)> = Vec::new();
    loop {
        let in_object = stack.last().is_some_and(|&(obj, _)| obj);
        if in_object {
            let Some(label_len) = r.u16() else { break };
            if label_len == 0 {
                if r.u8() != Some(0x09) {
                    break;
                }
                stack.pop();
                continue;
            }
            if r.skip(usize::from(label_len)).is_none() {
                break;
            }
        } else if let Some(&mut (false, ref mut left)) = stack.last_mut() {
            if *left == 0 {
                stack.pop();
                continue;
            }
            *left -= 1;
        }
        let Some(marker) = r.u8() else { break };
        if marker == 0x09 {
            // rml: the end marker ends a strict array early, and ends the top level.
            if matches!(stack.last(), Some((false, _))) {
                stack.pop();
                continue;
            }
            break;
        }
        let Some(value) = r.value(marker) else { break };
        if stack.is_empty() {
            top.push(value.string.unwrap_or_default());
        }
        if let Some(open) = value.opens {
            if stack.len() >= max_depth as usize {
                return Err(Violation::Malformed("AMF0 nesting too deep".into()));
            }
            stack.push(open);
        }
    }
    Ok(top)
}

struct Amf0Value {
    string: Option<String>,
    opens: Option<(bool, u32)>,
}

struct Amf0Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Amf0Reader<'_> {
    fn skip(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.skip(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.skip(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads the value after `marker`. `None` ends the scan (end marker, short data, unknown).
    fn value(&mut self, marker: u8) -> Option<Amf0Value> {
        let plain = |string| Amf0Value {
            string,
            opens: None,
        };
        match marker {
            0x00 => self.skip(8).map(|_| plain(None)),
            0x01 => self.skip(1).map(|_| plain(None)),
            0x02 => {
                let n = self.u16()?;
                let s = self.skip(usize::from(n))?;
                Some(plain(Some(String::from_utf8_lossy(s).into_owned())))
            }
            0x03 => Some(Amf0Value {
                string: None,
                opens: Some((true, 0)),
            }),
            0x05 | 0x06 => Some(plain(None)),
            0x08 => self.skip(4).map(|_| Amf0Value {
                string: None,
                opens: Some((true, 0)),
            }),
            0x0A => {
                let b = self.skip(4)?;
                let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                Some(Amf0Value {
                    string: None,
                    opens: Some((false, n)),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(depth: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..depth {
            v.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        v
    }

    #[test]
    fn deep_amf_refused_shallow_accepted() {
        assert!(amf0_scan(&nest(8), 16).is_ok());
        assert!(matches!(
            amf0_scan(&nest(17), 16),
            Err(Violation::Malformed(_))
        ));
        let mut arrays = Vec::new();
        for _ in 0..40 {
            arrays.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
        }
        assert!(amf0_scan(&arrays, 16).is_err());
        // An end marker closes a strict array early; what follows is still scanned.
        let mut v = vec![0x0A, 0, 0, 0, 5, 0x09];
        v.extend_from_slice(&nest(17));
        assert!(amf0_scan(&v, 16).is_err());
    }

    #[test]
    fn top_level_strings() {
        let mut v = vec![0x02, 0, 13];
        v.extend_from_slice(b"@setDataFrame");
        v.extend_from_slice(&[0x02, 0, 2, b'o', b'n', 0x03, 0, 1, b'w', 0x00]);
        v.extend_from_slice(&1.0f64.to_be_bytes());
        v.extend_from_slice(&[0, 0, 9, 0x05]);
        let top = amf0_scan(&v, 4).expect("valid");
        assert_eq!(top, vec!["@setDataFrame", "on", "", ""]);
    }

    /// A type-0 chunk of a SetChunkSize message on chunk stream 2.
    fn set_chunk_size(size: u32) -> Vec<u8> {
        let mut v = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
        v.extend_from_slice(&size.to_be_bytes());
        v
    }

    #[test]
    fn chunk_size_limits() {
        let mut g = ChunkGuard::new(GuardLimits::default());
        assert_eq!(g.check(&set_chunk_size(4096)), Ok(()));
        assert_eq!(g.chunk_size, 4096);
        let err = g.check(&set_chunk_size(1 << 20)).expect_err("too big");
        assert!(matches!(err.1, Violation::Limit(_)));
        let mut g = ChunkGuard::new(GuardLimits::default());
        assert!(g.check(&set_chunk_size(0)).is_err());
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let mut bytes = set_chunk_size(300);
        // A 600-byte video message on csid 6 in 300-byte chunks.
        bytes.extend_from_slice(&[0x06, 0, 0, 0, 0, 0x02, 0x58, 9, 1, 0, 0, 0]);
        bytes.extend_from_slice(&[0u8; 300]);
        bytes.push(0xC6);
        bytes.extend_from_slice(&[0u8; 300]);
        let mut g = ChunkGuard::new(GuardLimits::default());
        for b in &bytes {
            assert_eq!(g.check(std::slice::from_ref(b)), Ok(()));
        }
        assert!(g.message.is_none());
        assert_eq!(g.chunk_left, 0);
    }

    #[test]
    fn interleaving_and_oversize_refused() {
        let mut g = ChunkGuard::new(GuardLimits::default());
        let mut bytes = vec![0x06, 0, 0, 0, 0, 0x02, 0x58, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 128]);
        bytes.extend_from_slice(&[0x07, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0, 0]);
        let (ok, v) = g.check(&bytes).expect_err("interleaved");
        assert_eq!(ok, 12 + 128);
        assert!(matches!(v, Violation::Malformed(_)));

        let mut g = ChunkGuard::new(GuardLimits::default());
        let big = [0x06, 0, 0, 0, 0x90, 0, 0, 9, 1, 0, 0, 0];
        assert!(matches!(g.check(&big), Err((0, Violation::Limit(_)))));
    }

    /// Regression (issue 6, hostile clients): before a publish, a peer could announce an
    /// 8 MiB video message, which rml_rtmp reserves whole: 20 such connections took the
    /// receiver from 17 to 100 MiB RSS.
    #[test]
    fn media_sized_messages_refused_until_allowed() {
        // A 1 MiB video message header on csid 6.
        let header = [0x06, 0, 0, 0, 0x10, 0, 0, 9, 1, 0, 0, 0];
        let mut g = ChunkGuard::new(GuardLimits::default());
        g.set_media_allowed(false);
        let (ok, v) = g.check(&header).expect_err("refused before publish");
        assert_eq!(ok, 0);
        assert!(
            matches!(v, Violation::Limit(ref m) if m.contains("before a publish")),
            "{v:?}"
        );
        // Small messages (AMF-sized) still pass, so connect/publish work.
        let mut g = ChunkGuard::new(GuardLimits::default());
        g.set_media_allowed(false);
        assert_eq!(g.check(&[0x06, 0, 0, 0, 0, 0, 0x10, 9, 1, 0, 0, 0]), Ok(()));
        let mut g = ChunkGuard::new(GuardLimits::default());
        g.set_media_allowed(false);
        g.set_media_allowed(true);
        assert_eq!(g.check(&header), Ok(()));
    }
}
