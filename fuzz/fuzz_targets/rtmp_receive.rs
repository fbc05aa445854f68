//! The receiver's RTMP input path: `receive::Session` (rml_rtmp behind `rtmp_guard`), fed raw
//! peer bytes and messages from a real rml_rtmp client, from any point of the conversation:
//! before the handshake, after it, after connect, or while publishing.
//!
//! Invariants after every input: no panic (rml_rtmp panics on crafted input: the guard must
//! stop it first), nothing after `Close`, recording actions well nested (tags only while
//! recording), the stream claim released on disconnect, the guard's memory within its limits.
#![no_main]
use std::collections::HashSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use onair::receive::session::{Action, Claims, Session, StreamEntry};
use onair::rtmp_guard::GuardLimits;
use onair::secret::Secret;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Start {
    /// Raw bytes from the first byte (the handshake is fuzzed too).
    Raw,
    /// After an RTMP handshake.
    Handshaken,
    /// After `connect` to app "live".
    Connected,
    /// While publishing stream key "k3y-cam1".
    Publishing,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Raw(Vec<u8>),
    Video {
        ts: u32,
        body: Vec<u8>,
    },
    Audio {
        ts: u32,
        body: Vec<u8>,
    },
    Metadata {
        width: Option<u32>,
        encoder: Option<String>,
        rate: Option<f32>,
    },
    Connect(String),
    Publish(String),
    Disconnect,
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    steps: Vec<Step>,
}

#[derive(Default)]
struct SetClaims(HashSet<String>);

impl Claims for SetClaims {
    fn try_claim(&mut self, name: &str) -> bool {
        self.0.insert(name.to_owned())
    }
    fn release(&mut self, name: &str) {
        assert!(self.0.remove(name), "released {name} twice");
    }
}

struct Harness {
    server: Session,
    claims: SetClaims,
    client: Option<ClientSession>,
    closed: bool,
    recording: bool,
    limits: GuardLimits,
}

impl Harness {
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let actions = self.server.handle_input(bytes, &mut self.claims);
        if self.closed {
            assert!(actions.is_empty(), "actions after Close: {actions:?}");
        }
        let reply = self.apply(actions);
        let g = self.server.guard();
        assert!(
            g.chunk_streams() <= self.limits.max_chunk_streams as usize,
            "chunk streams"
        );
        let bound = self.limits.max_amf_message_bytes as usize
            + 256
            + self.limits.max_chunk_streams as usize * 32;
        assert!(
            g.held_bytes() <= bound,
            "guard holds {} bytes",
            g.held_bytes()
        );
        reply
    }

    fn apply(&mut self, actions: Vec<Action>) -> Vec<u8> {
        let mut reply = Vec::new();
        for a in actions {
            assert!(!self.closed, "action after Close: {a:?}");
            match a {
                Action::Send(b) => reply.extend_from_slice(&b),
                Action::StartRecording { .. } => {
                    assert!(!self.recording, "StartRecording while recording");
                    self.recording = true;
                }
                Action::Tag { .. } => assert!(self.recording, "Tag while not recording"),
                Action::StopRecording => {
                    assert!(self.recording, "StopRecording while not recording");
                    self.recording = false;
                }
                Action::Close { .. } => {
                    assert!(!self.recording, "closed while still recording");
                    self.closed = true;
                }
            }
        }
        assert_eq!(
            self.recording,
            !self.claims.0.is_empty(),
            "claim held iff recording"
        );
        reply
    }

    /// Sends client results to the server and the server's replies back to the client.
    fn client_sends(&mut self, results: Vec<ClientSessionResult>) {
        let mut out = Vec::new();
        for r in results {
            if let ClientSessionResult::OutboundResponse(p) = r {
                out.extend_from_slice(&p.bytes);
            }
        }
        if out.is_empty() {
            return;
        }
        let reply = self.feed(&out);
        if reply.is_empty() {
            return;
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if let Ok(results) = client.handle_input(&reply) {
            // One level of replies is enough for connect and publish.
            let mut more = Vec::new();
            for r in results {
                if let ClientSessionResult::OutboundResponse(p) = r {
                    more.extend_from_slice(&p.bytes);
                }
            }
            if !more.is_empty() {
                self.feed(&more);
            }
        }
    }

    fn handshake(&mut self) {
        let mut hs = Handshake::new(PeerType::Client);
        let Ok(c0c1) = hs.generate_outbound_p0_and_p1() else {
            return;
        };
        let s = self.feed(&c0c1);
        if let Ok(HandshakeProcessResult::Completed { response_bytes, .. }) = hs.process_bytes(&s) {
            self.feed(&response_bytes);
            self.client = ClientSession::new(ClientSessionConfig::new())
                .ok()
                .map(|(c, _)| c);
        }
    }

    fn with_client<T>(&mut self, f: impl FnOnce(&mut ClientSession) -> Option<T>) -> Option<T> {
        self.client.as_mut().and_then(f)
    }
}

fn streams() -> Arc<[StreamEntry]> {
    Arc::from(vec![StreamEntry {
        name: "cam1".into(),
        app: "live".into(),
        key: Secret::new("k3y-cam1"),
    }])
}

fuzz_target!(|input: Input| {
    let limits = GuardLimits::default();
    let mut h = Harness {
        server: Session::new(streams(), limits),
        claims: SetClaims::default(),
        client: None,
        closed: false,
        recording: false,
        limits,
    };
    if !matches!(input.start, Start::Raw) {
        h.handshake();
    }
    if matches!(input.start, Start::Connected | Start::Publishing) {
        let r = h.with_client(|c| c.request_connection("live".into()).ok());
        h.client_sends(r.into_iter().collect());
    }
    if matches!(input.start, Start::Publishing) {
        let r = h.with_client(|c| {
            c.request_publishing("k3y-cam1".into(), PublishRequestType::Live)
                .ok()
        });
        h.client_sends(r.into_iter().collect());
    }
    for step in input.steps {
        let results = match step {
            Step::Raw(bytes) => {
                h.feed(&bytes);
                continue;
            }
            Step::Video { ts, body } => h.with_client(|c| {
                c.publish_video_data(Bytes::from(body), RtmpTimestamp::new(ts), false)
                    .ok()
            }),
            Step::Audio { ts, body } => h.with_client(|c| {
                c.publish_audio_data(Bytes::from(body), RtmpTimestamp::new(ts), false)
                    .ok()
            }),
            Step::Metadata {
                width,
                encoder,
                rate,
            } => h.with_client(|c| {
                let m = StreamMetadata {
                    video_width: width,
                    encoder,
                    video_frame_rate: rate,
                    ..StreamMetadata::new()
                };
                c.publish_metadata(&m).ok()
            }),
            Step::Connect(app) => h.with_client(|c| c.request_connection(app).ok()),
            Step::Publish(key) => {
                h.with_client(|c| c.request_publishing(key, PublishRequestType::Live).ok())
            }
            Step::Disconnect => {
                let actions = h.server.on_disconnect(&mut h.claims);
                h.apply(actions);
                h.closed = true;
                continue;
            }
        };
        h.client_sends(results.into_iter().collect());
    }
    let actions = h.server.on_disconnect(&mut h.claims);
    h.closed = false; // on_disconnect may stop a recording even after Close
    h.apply(actions);
    assert!(h.claims.0.is_empty(), "claim not released on disconnect");
    assert!(!h.recording, "recording not stopped on disconnect");
});
