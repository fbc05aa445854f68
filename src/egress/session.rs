//! The RTMP publish session, sans-IO: the only module that touches rml_rtmp's client side.
//!
//! Bytes from the server go into [`PublishSession::handle_input`]; what must be written to the
//! server comes out as [`Output::Send`]. Server status strings are decoded once, here, into
//! [`Output`] variants.

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent,
    ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

use super::chunk::{self, MediaChunker};
use crate::error::{Error, ErrorKind, Result};
use crate::media::core::{FrameKind, MediaFrame};
use crate::media::flv::Metadata;
use crate::rtmp_guard::{ChunkGuard, GuardLimits};
use crate::secret::Secret;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes to write to the server, in order.
    Send(Bytes),
    /// The server accepted the publish: media may flow.
    Published,
    /// The server acknowledged this many bytes since its last acknowledgement.
    Acknowledged(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Handshaking,
    Connecting,
    PublishRequested,
    Publishing,
}

pub struct PublishSession {
    phase: Phase,
    handshake: Handshake,
    client: Option<ClientSession>,
    /// Vets server bytes before rml_rtmp parses them (it panics on some malformed input).
    guard: ChunkGuard,
    app: String,
    tc_url: String,
    key: Secret,
    chunk_size: u32,
    /// Audio and video chunking (set once publishing): see [`super::chunk`].
    media: Option<MediaChunker>,
}

fn rtmp_err(context: &str, e: ClientSessionError) -> Error {
    let kind = match e {
        ClientSessionError::CreateStreamFailed => ErrorKind::PermissionDenied,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{context}: {e}"))
}

impl PublishSession {
    /// Starts a session; returns it and the handshake bytes (C0+C1) to send first.
    pub fn new(app: &str, tc_url: &str, key: Secret, chunk_size: u32) -> Result<(Self, Bytes)> {
        let mut handshake = Handshake::new(PeerType::Client);
        let c0c1 = handshake
            .generate_outbound_p0_and_p1()
            .map_err(|e| crate::err!(Internal, "rtmp handshake: {e:?}"))?;
        let s = PublishSession {
            phase: Phase::Handshaking,
            handshake,
            client: None,
            guard: ChunkGuard::new(server_limits()),
            app: app.to_string(),
            tc_url: tc_url.to_string(),
            key,
            chunk_size: chunk_size.clamp(128, 65_536),
            media: None,
        };
        Ok((s, Bytes::from(c0c1)))
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Feeds bytes read from the server. Errors are final for this connection; their kind says
    /// whether a reconnect can help (`PermissionDenied` = publish rejected: it cannot).
    pub fn handle_input(&mut self, bytes: &[u8], out: &mut Vec<Output>) -> Result<()> {
        if self.phase == Phase::Handshaking {
            return self.handle_handshake(bytes, out);
        }
        if let Err((_, violation)) = self.guard.check(bytes) {
            crate::bail!(Protocol, "ingest sent malformed RTMP: {violation:?}");
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| crate::err!(Internal, "no rtmp session after handshake"))?;
        let results = client
            .handle_input(bytes)
            .map_err(|e| rtmp_err("rtmp input", e))?;
        self.handle_results(results, out)
    }

    fn handle_handshake(&mut self, bytes: &[u8], out: &mut Vec<Output>) -> Result<()> {
        let result = self
            .handshake
            .process_bytes(bytes)
            .map_err(|e| crate::err!(Protocol, "rtmp handshake failed: {e:?}"))?;
        match result {
            HandshakeProcessResult::InProgress { response_bytes } => {
                push_send(out, response_bytes);
                Ok(())
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                push_send(out, response_bytes);
                self.start_session(out)?;
                if remaining_bytes.is_empty() {
                    Ok(())
                } else {
                    self.handle_input(&remaining_bytes, out)
                }
            }
        }
    }

    fn start_session(&mut self, out: &mut Vec<Output>) -> Result<()> {
        let mut config = ClientSessionConfig::new();
        config.chunk_size = self.chunk_size;
        config.tc_url = Some(self.tc_url.clone());
        config.flash_version = "FMLE/3.0 (compatible; onair)".into();
        let (mut client, results) =
            ClientSession::new(config).map_err(|e| rtmp_err("rtmp session", e))?;
        let connect = client
            .request_connection(self.app.clone())
            .map_err(|e| rtmp_err("rtmp connect", e))?;
        self.client = Some(client);
        self.phase = Phase::Connecting;
        self.handle_results(results, out)?;
        self.handle_results(vec![connect], out)
    }

    fn handle_results(
        &mut self,
        results: Vec<ClientSessionResult>,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => push_send(out, p.bytes),
                ClientSessionResult::RaisedEvent(ev) => self.handle_event(ev, out)?,
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, ev: ClientSessionEvent, out: &mut Vec<Output>) -> Result<()> {
        match ev {
            ClientSessionEvent::ConnectionRequestAccepted => {
                let client = self
                    .client
                    .as_mut()
                    .ok_or_else(|| crate::err!(Internal, "no rtmp session"))?;
                let r = client
                    .request_publishing(self.key.expose().to_string(), PublishRequestType::Live)
                    .map_err(|e| rtmp_err("rtmp publish", e))?;
                self.phase = Phase::PublishRequested;
                self.handle_results(vec![r], out)
            }
            ClientSessionEvent::ConnectionRequestRejected { description } => Err(crate::err!(
                PermissionDenied,
                "ingest rejected the connection to app {:?}: {}",
                self.app,
                redact(&description, &self.key)
            )),
            ClientSessionEvent::PublishRequestAccepted => {
                let stream_id = self.publish_stream_id()?;
                self.media = Some(MediaChunker::new(self.chunk_size, stream_id));
                self.phase = Phase::Publishing;
                out.push(Output::Published);
                Ok(())
            }
            ClientSessionEvent::UnhandleableOnStatusCode { code } => self.on_status(&code),
            // A server refusing `publish` answers `_error` for transaction 0, which the client
            // session does not track: read the status code out of it.
            ClientSessionEvent::UnknownTransactionResultReceived {
                additional_values, ..
            } => match status_code_of(&additional_values) {
                Some(code) => self.on_status(&code),
                None => Ok(()),
            },
            ClientSessionEvent::AcknowledgementReceived { bytes_received } => {
                out.push(Output::Acknowledged(bytes_received));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Decodes onStatus codes the session does not handle itself.
    fn on_status(&self, code: &str) -> Result<()> {
        match StatusCode::decode(code) {
            StatusCode::PublishRejected => Err(crate::err!(
                PermissionDenied,
                "ingest rejected the publish ({code}): check the stream key"
            )),
            StatusCode::StreamEnded => {
                Err(crate::err!(Unavailable, "ingest ended the stream ({code})"))
            }
            StatusCode::Other => Ok(()),
        }
    }

    /// Ends the publish (deleteStream); returns the bytes to send. Nothing when not publishing.
    pub fn unpublish(&mut self) -> Result<Vec<Bytes>> {
        let Some(client) = self.client.as_mut() else {
            return Ok(Vec::new());
        };
        let results = client
            .stop_publishing()
            .map_err(|e| rtmp_err("rtmp unpublish", e))?;
        self.phase = Phase::Connecting;
        Ok(results
            .into_iter()
            .filter_map(|r| match r {
                ClientSessionResult::OutboundResponse(p) => Some(Bytes::from(p.bytes)),
                _ => None,
            })
            .collect())
    }

    /// The message stream the publish runs on. rml_rtmp keeps it private; its serializer
    /// shows it in the full header of the first audio message, which is made here and never
    /// sent. Marked droppable, so were rml_rtmp ever to serialize audio again it would start
    /// with a full header, not one relative to this unsent message.
    fn publish_stream_id(&mut self) -> Result<u32> {
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| crate::err!(Internal, "no rtmp session"))?;
        let r = client
            .publish_audio_data(Bytes::from_static(&[0]), RtmpTimestamp::new(0), true)
            .map_err(|e| rtmp_err("rtmp publish", e))?;
        match r {
            ClientSessionResult::OutboundResponse(p)
                if p.bytes.len() >= 12 && p.bytes[0] == 0x05 =>
            {
                let id: [u8; 4] = p.bytes[8..12].try_into().unwrap_or_default();
                Ok(u32::from_le_bytes(id))
            }
            _ => crate::bail!(
                Internal,
                "rtmp session: no message stream id for the publish"
            ),
        }
    }

    /// Serializes frames in order, appending their pieces to `out`; returns how many bytes
    /// they hold. On an error `out` is as it was: nothing of a failed batch is queued.
    pub fn send_frames(&mut self, frames: &[MediaFrame], out: &mut Vec<Bytes>) -> Result<usize> {
        let start = out.len();
        let mut n = 0;
        for f in frames {
            match self.send_frame(f, out) {
                Ok(k) => n += k,
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    /// Serializes one media frame, appending its pieces (in wire order) to `out`; returns how
    /// many bytes they hold. Audio and video bodies are not copied (see [`super::chunk`]).
    /// Only valid while publishing.
    pub fn send_frame(&mut self, f: &MediaFrame, out: &mut Vec<Bytes>) -> Result<usize> {
        let (client, media) = match (&mut self.client, &mut self.media, self.phase) {
            (Some(c), Some(m), Phase::Publishing) => (c, m),
            _ => crate::bail!(Internal, "send_frame before the publish was accepted"),
        };
        let type_id = match f.kind {
            FrameKind::Metadata => {
                let meta = f.metadata.as_deref().cloned().unwrap_or_default();
                let r = client
                    .publish_metadata(&stream_metadata(&meta))
                    .map_err(|e| rtmp_err("rtmp publish", e))?;
                return match r {
                    ClientSessionResult::OutboundResponse(p) => {
                        let n = p.bytes.len();
                        out.push(Bytes::from(p.bytes));
                        Ok(n)
                    }
                    _ => crate::bail!(Internal, "rtmp session produced no packet for metadata"),
                };
            }
            FrameKind::VideoHeader | FrameKind::Video => chunk::VIDEO,
            FrameKind::AudioHeader | FrameKind::Audio => chunk::AUDIO,
        };
        media.push(type_id, f.ts_ms, &f.body, out).ok_or_else(|| {
            crate::err!(
                Internal,
                "frame of {} bytes is too long for RTMP",
                f.body.len()
            )
        })
    }
}

/// onStatus codes, decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    PublishRejected,
    StreamEnded,
    Other,
}

impl StatusCode {
    pub fn decode(code: &str) -> StatusCode {
        match code {
            "NetStream.Publish.BadName"
            | "NetStream.Publish.Rejected"
            | "NetStream.Publish.Denied"
            | "NetStream.Publish.Failed"
            | "NetConnection.Connect.Rejected" => StatusCode::PublishRejected,
            "NetStream.Unpublish.Success" | "NetConnection.Connect.Closed" => {
                StatusCode::StreamEnded
            }
            _ => StatusCode::Other,
        }
    }
}

/// What an ingest server may send a publisher: control and command messages only, so the
/// message bound is small; commands are not capped per connection (a long publish sees many
/// status messages and pings).
fn server_limits() -> GuardLimits {
    GuardLimits {
        max_message_bytes: 256 << 10,
        max_commands: u32::MAX,
        ..GuardLimits::default()
    }
}

/// The `code` property of the first object argument of a status or error message.
fn status_code_of(values: &[Amf0Value]) -> Option<String> {
    values.iter().find_map(|v| match v {
        Amf0Value::Object(props) => match props.get("code") {
            Some(Amf0Value::Utf8String(code)) => Some(code.clone()),
            _ => None,
        },
        _ => None,
    })
}

fn push_send(out: &mut Vec<Output>, bytes: Vec<u8>) {
    if !bytes.is_empty() {
        out.push(Output::Send(Bytes::from(bytes)));
    }
}

/// A server may echo the stream key in a description; never let it through.
fn redact(text: &str, key: &Secret) -> String {
    if key.is_empty() {
        return text.to_string();
    }
    text.replace(key.expose(), "***")
}

fn stream_metadata(m: &Metadata) -> StreamMetadata {
    let mut s = StreamMetadata::new();
    s.video_width = m.width;
    s.video_height = m.height;
    s.video_codec_id = m.video_codec_id.map(u32::from);
    s.video_frame_rate = m.frame_rate.map(|f| f as f32);
    s.video_bitrate_kbps = m.video_data_rate_kbps;
    s.audio_codec_id = m.audio_codec_id.map(u32::from);
    s.audio_sample_rate = m.audio_sample_rate;
    s.audio_channels = m.audio_channels.map(u32::from);
    s.audio_is_stereo = m.audio_channels.map(|c| c >= 2);
    s.audio_bitrate_kbps = m.audio_data_rate_kbps;
    s.encoder = m.encoder.clone();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_decode() {
        assert_eq!(
            StatusCode::decode("NetStream.Publish.BadName"),
            StatusCode::PublishRejected
        );
        assert_eq!(
            StatusCode::decode("NetStream.Publish.Start"),
            StatusCode::Other
        );
        assert_eq!(
            StatusCode::decode("NetStream.Unpublish.Success"),
            StatusCode::StreamEnded
        );
    }

    #[test]
    fn redaction() {
        let k = Secret::new("sk-123");
        assert_eq!(redact("bad key sk-123 given", &k), "bad key *** given");
    }

    #[test]
    fn handshake_garbage_is_an_error_not_a_panic() {
        let (mut s, c0c1) =
            PublishSession::new("live", "rtmp://h:1935/live", Secret::new("k"), 4096).expect("new");
        assert_eq!(c0c1.len(), 1537);
        let mut out = Vec::new();
        let r = s.handle_input(&[0x42; 3073], &mut out);
        assert!(r.is_err());
        assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::Protocol));
    }

    #[test]
    fn frame_before_publish_refused() {
        let (mut s, _) =
            PublishSession::new("live", "rtmp://h:1935/live", Secret::new("k"), 4096).expect("new");
        let f = MediaFrame {
            kind: FrameKind::Video,
            ts_ms: 0,
            body: Bytes::from_static(&[0x17, 1, 0, 0, 0]),
            metadata: None,
            keyframe: true,
            droppable: false,
            rx_ns: 0,
        };
        assert!(s.send_frame(&f, &mut Vec::new()).is_err());
    }

    use rml_rtmp::sessions::{
        ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };

    /// An in-memory ingest server built on rml_rtmp's server session.
    struct Server {
        handshake: Handshake,
        session: Option<ServerSession>,
        published: bool,
        reject: bool,
        /// Video the server session accepted for the published stream: (timestamp, data).
        video: Vec<(u32, Vec<u8>)>,
    }

    impl Server {
        fn new(reject: bool) -> Self {
            Server {
                handshake: Handshake::new(PeerType::Server),
                session: None,
                published: false,
                reject,
                video: Vec::new(),
            }
        }

        /// Feeds bytes the client sent while publishing; returns the video they carried.
        fn video_frames(&mut self, wire: &[u8]) -> Vec<(u32, Vec<u8>)> {
            let _ = self.input(wire);
            std::mem::take(&mut self.video)
        }

        fn input(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut rest = bytes.to_vec();
            if self.session.is_none() {
                match self
                    .handshake
                    .process_bytes(bytes)
                    .expect("server handshake")
                {
                    HandshakeProcessResult::InProgress { response_bytes } => return response_bytes,
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        out.extend(response_bytes);
                        let (s, r) =
                            ServerSession::new(ServerSessionConfig::new()).expect("server");
                        self.session = Some(s);
                        self.results(r, &mut out);
                        rest = remaining_bytes;
                    }
                }
            }
            if !rest.is_empty() {
                let r = self
                    .session
                    .as_mut()
                    .expect("session")
                    .handle_input(&rest)
                    .expect("server input");
                self.results(r, &mut out);
            }
            out
        }

        fn results(&mut self, results: Vec<ServerSessionResult>, out: &mut Vec<u8>) {
            for r in results {
                match r {
                    ServerSessionResult::OutboundResponse(p) => out.extend(p.bytes),
                    ServerSessionResult::RaisedEvent(ev) => {
                        let id = match ev {
                            ServerSessionEvent::VideoDataReceived {
                                data, timestamp, ..
                            } => {
                                self.video.push((timestamp.value, data.to_vec()));
                                continue;
                            }
                            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                                request_id
                            }
                            ServerSessionEvent::PublishStreamRequested { request_id, .. } => {
                                self.published = true;
                                request_id
                            }
                            _ => continue,
                        };
                        let s = self.session.as_mut().expect("session");
                        let more = if self.reject && self.published {
                            s.reject_request(id, "NetStream.Publish.BadName", "no such key")
                        } else {
                            s.accept_request(id)
                        };
                        self.results(more.expect("answer"), out);
                    }
                    ServerSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }
    }

    /// Runs client ↔ server until the client publishes or fails; returns the client's result.
    fn converse(server: &mut Server) -> (PublishSession, Result<()>) {
        let (mut c, c0c1) =
            PublishSession::new("live", "rtmp://h:1935/live", Secret::new("k"), 4096).expect("new");
        let mut to_server = c0c1.to_vec();
        for _ in 0..20 {
            let reply = server.input(&to_server);
            let mut out = Vec::new();
            if let Err(e) = c.handle_input(&reply, &mut out) {
                return (c, Err(e));
            }
            to_server.clear();
            for o in out {
                if let Output::Send(b) = o {
                    to_server.extend_from_slice(&b);
                }
            }
            if c.phase() == Phase::Publishing {
                return (c, Ok(()));
            }
        }
        (c, Err(crate::err!(Internal, "no publish after 20 rounds")))
    }

    #[test]
    fn publishes_against_rml_server_and_sends_frames() {
        let mut server = Server::new(false);
        let (mut c, r) = converse(&mut server);
        r.expect("published");
        let f = MediaFrame {
            kind: FrameKind::Video,
            ts_ms: 40,
            body: Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]),
            metadata: None,
            keyframe: true,
            droppable: false,
            rx_ns: 0,
        };
        let mut parts = Vec::new();
        let n = c.send_frame(&f, &mut parts).expect("frame");
        assert_eq!(parts.len(), 2, "one header, then the body");
        assert_eq!(parts[1].as_ptr(), f.body.as_ptr(), "the body is not copied");
        assert_eq!(n, parts[0].len() + parts[1].len());
        // The server reads it back as the frame, on the publish's stream.
        let wire: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(server.video_frames(&wire), vec![(40, f.body.to_vec())]);
    }

    #[test]
    fn a_failed_batch_leaves_nothing_queued() {
        let mut server = Server::new(false);
        let (mut c, r) = converse(&mut server);
        r.expect("published");
        let frame = |ts_ms, body: Bytes| MediaFrame {
            kind: FrameKind::Video,
            ts_ms,
            body,
            metadata: None,
            keyframe: false,
            droppable: false,
            rx_ns: 0,
        };
        let good = frame(0, Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]));
        let too_long = frame(33, Bytes::from(vec![0u8; super::chunk::MAX_MESSAGE + 1]));
        let mut out = vec![Bytes::from_static(b"queued before")];
        let r = c.send_frames(&[good.clone(), too_long], &mut out);
        assert!(r.is_err());
        assert_eq!(out, vec![Bytes::from_static(b"queued before")]);
        let n = c.send_frames(&[good], &mut out).expect("a good batch");
        assert_eq!(n, out[1..].iter().map(Bytes::len).sum::<usize>());
    }

    #[test]
    fn publish_rejection_is_permission_denied() {
        let mut server = Server::new(true);
        let (_, r) = converse(&mut server);
        assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
    }

    #[test]
    fn hostile_server_bytes_are_errors_not_panics() {
        let mut server = Server::new(false);
        let (c, r) = converse(&mut server);
        r.expect("published");
        drop(c);
        // SetChunkSize 0x7FFFFFFF on csid 2, then a message claiming 16 MiB.
        let evil: Vec<&[u8]> = vec![
            &[
                0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF,
            ],
            &[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x14, 0, 0, 0, 0, 1, 2, 3],
        ];
        for e in evil {
            let mut server = Server::new(false);
            let (mut c, r) = converse(&mut server);
            r.expect("published");
            let mut out = Vec::new();
            let res = c.handle_input(e, &mut out);
            assert_eq!(res.err().map(|e| e.kind()), Some(ErrorKind::Protocol));
        }
        // Mutated copies of a real server conversation never panic.
        let mut x: u64 = 0xDEAD_BEEF_1234_5678;
        for _ in 0..2_000 {
            let mut server = Server::new(false);
            let (mut c, r) = converse(&mut server);
            r.expect("published");
            let mut junk: Vec<u8> = (0..64).map(|i| (x >> (i % 57)) as u8).collect();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk[0] = (x as u8 & 0x3F) | ((x >> 8) as u8 & 0xC0);
            let mut out = Vec::new();
            let _ = c.handle_input(&junk, &mut out);
        }
    }
}
