//! One receiving RTMP connection as a pure state machine: peer bytes in, [`Action`]s out.
//!
//! Wraps rml_rtmp's server `Handshake` and `ServerSession`, with a [`ChunkGuard`] in front that
//! rejects input rml_rtmp would mis-handle (see `guard.rs`). No sockets, files or clocks here
//! (rml_rtmp itself reads `SystemTime` for the timestamps of its own replies).
//!
//! Call contract: feed every byte the peer sends to [`Session::handle_input`], perform the
//! returned actions in order (all `Send`s before acting on a `Close`), and call
//! [`Session::on_disconnect`] once when the connection ends for any reason.

use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};

use crate::error::ErrorKind;
use crate::media::flv;
use crate::rtmp_guard::{ChunkGuard, GuardLimits, Violation};
use crate::secret::Secret;

/// A stream the receiver accepts: publishing `key` on `app` records as `name`.
#[derive(Clone, Debug)]
pub struct StreamEntry {
    pub name: String,
    pub app: String,
    pub key: Secret,
}

/// Which streams are being published right now, across all connections.
pub trait Claims {
    /// Marks `name` as published; false if it already is.
    fn try_claim(&mut self, name: &str) -> bool;
    fn release(&mut self, name: &str);
}

/// Why a connection is being closed. The text never holds a stream key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer asked for something it may not have (app, stream key, play).
    Rejected(String),
    /// The peer broke the protocol (handshake, chunk stream, AMF).
    Malformed(String),
    /// The peer exceeded a limit (message size, chunk size, commands).
    Limit(String),
}

impl CloseReason {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CloseReason::Rejected(_) => ErrorKind::PermissionDenied,
            CloseReason::Malformed(_) => ErrorKind::Protocol,
            CloseReason::Limit(_) => ErrorKind::ResourceExhausted,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Rejected(s) => write!(f, "rejected: {s}"),
            CloseReason::Malformed(s) => write!(f, "malformed: {s}"),
            CloseReason::Limit(s) => write!(f, "limit: {s}"),
        }
    }
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write these bytes to the peer.
    Send(Bytes),
    /// A publish was accepted: open a recording for stream `name`.
    StartRecording { name: String, app: String },
    /// Append one FLV tag (`flv::TAG_*`) to the open recording.
    Tag {
        tag_type: u8,
        ts_ms: u32,
        body: Bytes,
    },
    /// The publish ended: flush and close the recording.
    StopRecording,
    /// Close the connection after the `Send`s before it.
    Close { reason: CloseReason },
}

enum Phase {
    Handshake(Box<Handshake>),
    Session(Box<ServerSession>),
    Closed,
}

pub struct Session {
    streams: Arc<[StreamEntry]>,
    phase: Phase,
    guard: ChunkGuard,
    app: Option<String>,
    /// Name of the stream this connection publishes, while it does.
    publishing: Option<String>,
}

/// Longest peer-supplied text (app name) we repeat in a reason.
const MAX_ECHO_CHARS: usize = 64;

fn echo(s: &str) -> String {
    s.chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Session {
    pub fn new(streams: Arc<[StreamEntry]>, limits: GuardLimits) -> Self {
        Session {
            streams,
            phase: Phase::Handshake(Box::new(Handshake::new(PeerType::Server))),
            guard: {
                // Media-sized messages only after a publish was accepted (see the guard).
                let mut g = ChunkGuard::new(limits);
                g.set_media_allowed(false);
                g
            },
            app: None,
            publishing: None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The chunk guard in front of rml_rtmp (for its memory figures).
    pub fn guard(&self) -> &ChunkGuard {
        &self.guard
    }

    /// Whether the handshake is done (the driver uses a shorter timeout before).
    pub fn handshake_done(&self) -> bool {
        !matches!(self.phase, Phase::Handshake(_))
    }

    /// Processes bytes from the peer.
    pub fn handle_input(&mut self, input: &[u8], claims: &mut impl Claims) -> Vec<Action> {
        let mut out = Vec::new();
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Handshake(hs) => match hs.process_bytes(input) {
                Err(e) => self.close(
                    CloseReason::Malformed(format!("handshake: {e}")),
                    claims,
                    &mut out,
                ),
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    push_send(&mut out, response_bytes);
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    push_send(&mut out, response_bytes);
                    self.start_session(&remaining_bytes, claims, &mut out);
                }
            },
            Phase::Session(_) => self.feed(input, claims, &mut out),
        }
        out
    }

    /// The connection ended (peer gone, error, shutdown): ends a publish in progress.
    pub fn on_disconnect(&mut self, claims: &mut impl Claims) -> Vec<Action> {
        let mut out = Vec::new();
        self.stop_publishing(claims, &mut out);
        self.phase = Phase::Closed;
        out
    }

    fn start_session(&mut self, rest: &[u8], claims: &mut impl Claims, out: &mut Vec<Action>) {
        match ServerSession::new(ServerSessionConfig::new()) {
            Ok((session, results)) => {
                self.phase = Phase::Session(Box::new(session));
                self.apply(results, claims, out);
                if !rest.is_empty() && !self.is_closed() {
                    self.feed(rest, claims, out);
                }
            }
            Err(e) => self.close(CloseReason::Malformed(format!("session: {e}")), claims, out),
        }
    }

    fn feed(&mut self, input: &[u8], claims: &mut impl Claims, out: &mut Vec<Action>) {
        let (ok_len, violation) = match self.guard.check(input) {
            Ok(()) => (input.len(), None),
            Err((ok, v)) => (ok, Some(v)),
        };
        if ok_len > 0 {
            let Phase::Session(session) = &mut self.phase else {
                return;
            };
            match session.handle_input(&input[..ok_len]) {
                Ok(results) => self.apply(results, claims, out),
                Err(e) => {
                    let reason = CloseReason::Malformed(format!("rtmp: {e}"));
                    return self.close(reason, claims, out);
                }
            }
        }
        match violation {
            Some(Violation::Limit(s)) => self.close(CloseReason::Limit(s), claims, out),
            Some(Violation::Malformed(s)) => self.close(CloseReason::Malformed(s), claims, out),
            None => {}
        }
    }

    fn apply(
        &mut self,
        results: Vec<ServerSessionResult>,
        claims: &mut impl Claims,
        out: &mut Vec<Action>,
    ) {
        for r in results {
            if self.is_closed() {
                return;
            }
            match r {
                ServerSessionResult::OutboundResponse(p) => push_send(out, p.bytes),
                ServerSessionResult::RaisedEvent(e) => self.on_event(e, claims, out),
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
    }

    fn on_event(&mut self, e: ServerSessionEvent, claims: &mut impl Claims, out: &mut Vec<Action>) {
        match e {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => self.on_connect(request_id, app_name, claims, out),
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => self.on_publish(request_id, &app_name, &stream_key, claims, out),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                let reason = CloseReason::Rejected("play is not supported".into());
                self.reject(request_id, "NetStream.Play.Failed", reason, claims, out);
            }
            ServerSessionEvent::PublishStreamFinished { .. } => self.stop_publishing(claims, out),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                let body = flv::on_metadata_body(&to_flv_metadata(&metadata));
                self.push_tag(flv::TAG_SCRIPT, 0, body, out);
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.push_tag(flv::TAG_VIDEO, timestamp.value, data, out),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.push_tag(flv::TAG_AUDIO, timestamp.value, data, out),
            _ => {}
        }
    }

    fn push_tag(&self, tag_type: u8, ts_ms: u32, body: Bytes, out: &mut Vec<Action>) {
        if self.publishing.is_some() {
            out.push(Action::Tag {
                tag_type,
                ts_ms,
                body,
            });
        }
    }

    fn on_connect(
        &mut self,
        request_id: u32,
        app: String,
        claims: &mut impl Claims,
        out: &mut Vec<Action>,
    ) {
        if self.app.is_some() || !self.streams.iter().any(|s| s.app == app) {
            let reason = CloseReason::Rejected(format!("unknown application {:?}", echo(&app)));
            return self.reject(
                request_id,
                "NetConnection.Connect.Rejected",
                reason,
                claims,
                out,
            );
        }
        self.app = Some(app);
        self.accept(request_id, claims, out);
    }

    fn on_publish(
        &mut self,
        request_id: u32,
        app: &str,
        key: &str,
        claims: &mut impl Claims,
        out: &mut Vec<Action>,
    ) {
        let code = "NetStream.Publish.BadName";
        if self.publishing.is_some() {
            let reason = CloseReason::Rejected("second publish on one connection".into());
            return self.reject(request_id, code, reason, claims, out);
        }
        // Compare against every entry so the time does not depend on which one matches.
        let mut found = None;
        for s in self.streams.iter() {
            if s.key.ct_eq(key) && s.app == app && found.is_none() {
                found = Some(s.name.clone());
            }
        }
        let Some(name) = found else {
            let reason = CloseReason::Rejected("unknown stream key".into());
            return self.reject(request_id, code, reason, claims, out);
        };
        if !claims.try_claim(&name) {
            let reason = CloseReason::Rejected(format!("stream {name} is already being published"));
            return self.reject(request_id, code, reason, claims, out);
        }
        self.publishing = Some(name.clone());
        self.guard.set_media_allowed(true);
        self.accept(request_id, claims, out);
        if !self.is_closed() {
            out.push(Action::StartRecording {
                name,
                app: app.to_owned(),
            });
        }
    }

    fn accept(&mut self, request_id: u32, claims: &mut impl Claims, out: &mut Vec<Action>) {
        let Phase::Session(session) = &mut self.phase else {
            return;
        };
        match session.accept_request(request_id) {
            Ok(results) => self.apply(results, claims, out),
            Err(e) => self.close(CloseReason::Malformed(format!("accept: {e}")), claims, out),
        }
    }

    /// Sends an error status for the request (its description holds no key), then closes.
    fn reject(
        &mut self,
        request_id: u32,
        code: &str,
        reason: CloseReason,
        claims: &mut impl Claims,
        out: &mut Vec<Action>,
    ) {
        if let Phase::Session(session) = &mut self.phase {
            let description = match &reason {
                CloseReason::Rejected(s) => s.clone(),
                other => other.to_string(),
            };
            if let Ok(results) = session.reject_request(request_id, code, &description) {
                for r in results {
                    if let ServerSessionResult::OutboundResponse(p) = r {
                        push_send(out, p.bytes);
                    }
                }
            }
        }
        self.close(reason, claims, out);
    }

    fn stop_publishing(&mut self, claims: &mut impl Claims, out: &mut Vec<Action>) {
        if let Some(name) = self.publishing.take() {
            self.guard.set_media_allowed(false);
            claims.release(&name);
            out.push(Action::StopRecording);
        }
    }

    fn close(&mut self, reason: CloseReason, claims: &mut impl Claims, out: &mut Vec<Action>) {
        self.stop_publishing(claims, out);
        self.phase = Phase::Closed;
        out.push(Action::Close { reason });
    }
}

fn push_send(out: &mut Vec<Action>, bytes: Vec<u8>) {
    if !bytes.is_empty() {
        out.push(Action::Send(Bytes::from(bytes)));
    }
}

fn to_flv_metadata(m: &StreamMetadata) -> flv::Metadata {
    let channels = m
        .audio_channels
        .and_then(|c| u8::try_from(c).ok())
        .or_else(|| m.audio_is_stereo.map(|s| if s { 2 } else { 1 }));
    flv::Metadata {
        width: m.video_width,
        height: m.video_height,
        frame_rate: m.video_frame_rate.map(f64::from),
        video_codec_id: m.video_codec_id.and_then(|c| u8::try_from(c).ok()),
        video_data_rate_kbps: m.video_bitrate_kbps,
        audio_codec_id: m.audio_codec_id.and_then(|c| u8::try_from(c).ok()),
        audio_sample_rate: m.audio_sample_rate,
        audio_channels: channels,
        audio_data_rate_kbps: m.audio_bitrate_kbps,
        encoder: m.encoder.clone(),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
