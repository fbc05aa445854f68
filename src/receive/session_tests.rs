//! Drives [`Session`] with rml_rtmp's own sans-IO client, in memory.

use std::collections::HashSet;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

use super::*;

#[derive(Default)]
struct SetClaims(HashSet<String>);

impl Claims for SetClaims {
    fn try_claim(&mut self, name: &str) -> bool {
        self.0.insert(name.to_owned())
    }
    fn release(&mut self, name: &str) {
        self.0.remove(name);
    }
}

fn streams() -> Arc<[StreamEntry]> {
    Arc::from(vec![
        StreamEntry {
            name: "cam1".into(),
            app: "live".into(),
            key: Secret::new("k3y-cam1"),
        },
        StreamEntry {
            name: "cam2".into(),
            app: "live".into(),
            key: Secret::new("k3y-cam2"),
        },
    ])
}

/// A server session and an rml client talking through memory.
struct Pair {
    server: Session,
    claims: SetClaims,
    client: ClientSession,
    /// Server actions other than `Send`, in order.
    actions: Vec<Action>,
    client_events: Vec<ClientSessionEvent>,
    /// Every byte the client sent (for mutation tests).
    transcript: Vec<u8>,
}

impl Pair {
    fn new() -> Pair {
        let mut server = Session::new(streams(), GuardLimits::default());
        let mut claims = SetClaims::default();
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
        let s_out = sends(server.handle_input(&c0c1, &mut claims));
        let c2 = match hs.process_bytes(&s_out).expect("client handshake") {
            HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
            HandshakeProcessResult::InProgress { .. } => panic!("handshake not complete"),
        };
        let (client, _) = ClientSession::new(ClientSessionConfig::new()).expect("client");
        let mut pair = Pair {
            server,
            claims,
            client,
            actions: Vec::new(),
            client_events: Vec::new(),
            transcript: c0c1,
        };
        pair.send_to_server(c2);
        pair
    }

    fn send_to_server(&mut self, bytes: Vec<u8>) {
        self.transcript.extend_from_slice(&bytes);
        let actions = self.server.handle_input(&bytes, &mut self.claims);
        let mut reply = Vec::new();
        for a in actions {
            match a {
                Action::Send(b) => reply.extend_from_slice(&b),
                other => self.actions.push(other),
            }
        }
        if !reply.is_empty() {
            self.send_to_client(&reply);
        }
    }

    fn send_to_client(&mut self, bytes: &[u8]) {
        let Ok(results) = self.client.handle_input(bytes) else {
            return;
        };
        self.client_results(results);
    }

    fn client_results(&mut self, results: Vec<ClientSessionResult>) {
        let mut out = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(e) => self.client_events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        if !out.is_empty() {
            self.send_to_server(out);
        }
    }

    fn client_sends(&mut self, r: ClientSessionResult) {
        self.client_results(vec![r]);
    }

    fn connect(&mut self, app: &str) {
        let r = self.client.request_connection(app.into()).expect("connect");
        self.client_sends(r);
    }

    fn publish(&mut self, key: &str) {
        let r = self
            .client
            .request_publishing(key.into(), PublishRequestType::Live)
            .expect("publish");
        self.client_sends(r);
    }

    fn closed_reason(&self) -> Option<&CloseReason> {
        self.actions.iter().find_map(|a| match a {
            Action::Close { reason } => Some(reason),
            _ => None,
        })
    }

    fn started(&self) -> usize {
        let is_start = |a: &&Action| matches!(a, Action::StartRecording { .. });
        self.actions.iter().filter(is_start).count()
    }
}

fn sends(actions: Vec<Action>) -> Vec<u8> {
    let mut v = Vec::new();
    for a in actions {
        if let Action::Send(b) = a {
            v.extend_from_slice(&b);
        }
    }
    v
}

fn tags(actions: &[Action]) -> Vec<(u8, u32, Bytes)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Tag {
                tag_type,
                ts_ms,
                body,
            } => Some((*tag_type, *ts_ms, body.clone())),
            _ => None,
        })
        .collect()
}

/// Publishes metadata and a few frames; the big frame spans many chunks.
fn publish_media(p: &mut Pair) -> Vec<(u8, u32, Bytes)> {
    let meta = StreamMetadata {
        video_width: Some(320),
        video_height: Some(240),
        video_codec_id: Some(7),
        ..StreamMetadata::new()
    };
    let r = p.client.publish_metadata(&meta).expect("meta");
    p.client_sends(r);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let frames = vec![
        (
            flv::TAG_VIDEO,
            0,
            flv::avc_sequence_header(&[1, 0x64, 0, 0x1F]),
        ),
        (flv::TAG_AUDIO, 0, flv::aac_sequence_header(&[0x11, 0x90])),
        (flv::TAG_VIDEO, 40, flv::avc_frame(true, 80, &big)),
        (flv::TAG_AUDIO, 21, flv::aac_frame(&[1, 2, 3])),
        (flv::TAG_VIDEO, 80, flv::avc_frame(false, 0, &[5; 300])),
    ];
    for (t, ts, body) in &frames {
        let ts = RtmpTimestamp::new(*ts);
        let r = if *t == flv::TAG_VIDEO {
            p.client.publish_video_data(body.clone(), ts, false)
        } else {
            p.client.publish_audio_data(body.clone(), ts, false)
        };
        p.client_sends(r.expect("media"));
    }
    frames
}

#[test]
fn good_key_records_tags() {
    let mut p = Pair::new();
    p.connect("live");
    assert!(
        p.client_events
            .contains(&ClientSessionEvent::ConnectionRequestAccepted)
    );
    p.publish("k3y-cam2");
    assert!(
        p.client_events
            .contains(&ClientSessionEvent::PublishRequestAccepted)
    );
    assert_eq!(
        p.actions.first(),
        Some(&Action::StartRecording {
            name: "cam2".into(),
            app: "live".into()
        })
    );
    assert!(p.claims.0.contains("cam2"));
    let sent = publish_media(&mut p);
    let got = tags(&p.actions);
    assert_eq!(got.len(), sent.len() + 1);
    assert_eq!(got[0].0, flv::TAG_SCRIPT);
    assert!(got[0].2.windows(5).any(|w| w == b"width"));
    assert_eq!(&got[1..], &sent[..]);

    let r = p.client.stop_publishing().expect("stop");
    for x in r {
        p.client_sends(x);
    }
    assert_eq!(p.actions.last(), Some(&Action::StopRecording));
    assert!(p.claims.0.is_empty(), "claim released");
    assert_eq!(p.closed_reason(), None);
}

#[test]
fn wrong_key_rejected_and_closed() {
    let mut p = Pair::new();
    p.connect("live");
    p.publish("k3y-cam3");
    assert_eq!(p.started(), 0);
    let reason = p.closed_reason().expect("closed");
    assert!(matches!(reason, CloseReason::Rejected(_)));
    assert!(!reason.to_string().contains("k3y"), "{reason}");
    assert!(p.server.is_closed());
    // The client heard an error status, not a publish start.
    assert!(
        !p.client_events
            .contains(&ClientSessionEvent::PublishRequestAccepted)
    );
    // Key of another app does not count either.
    let mut p = Pair::new();
    p.connect("live");
    p.publish("k3y-cam1x");
    assert_eq!(p.started(), 0);
}

#[test]
fn wrong_app_rejected() {
    let mut p = Pair::new();
    p.connect("other");
    assert!(matches!(p.closed_reason(), Some(CloseReason::Rejected(_))));
    assert!(
        !p.client_events
            .contains(&ClientSessionEvent::ConnectionRequestAccepted)
    );
}

#[test]
fn stream_already_published_is_rejected() {
    let mut p = Pair::new();
    p.claims.0.insert("cam1".into());
    p.connect("live");
    p.publish("k3y-cam1");
    assert_eq!(p.started(), 0);
    assert!(matches!(p.closed_reason(), Some(CloseReason::Rejected(_))));
    assert!(
        p.claims.0.contains("cam1"),
        "the other publisher keeps its claim"
    );
}

#[test]
fn disconnect_mid_publish_stops_recording() {
    let mut p = Pair::new();
    p.connect("live");
    p.publish("k3y-cam1");
    let out = p.server.on_disconnect(&mut p.claims);
    assert_eq!(out, vec![Action::StopRecording]);
    assert!(p.claims.0.is_empty());
}

#[test]
fn garbage_closes() {
    let mut claims = SetClaims::default();
    let mut s = Session::new(streams(), GuardLimits::default());
    let out = s.handle_input(b"GET / HTTP/1.1\r\n\r\n", &mut claims);
    assert!(matches!(
        out.last(),
        Some(Action::Close {
            reason: CloseReason::Malformed(_)
        })
    ));
    assert!(s.handle_input(b"more", &mut claims).is_empty());

    // After a good handshake: 1 MB of noise.
    let mut p = Pair::new();
    p.send_to_server(xorshift_bytes(7, 1 << 20));
    assert!(p.closed_reason().is_some());
}

/// A type-0 chunk on csid 2 carrying a protocol control message.
fn control_chunk(type_id: u8, value: u32) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 0, 4, type_id, 0, 0, 0, 0];
    v.extend_from_slice(&value.to_be_bytes());
    v
}

#[test]
fn huge_chunk_size_closes() {
    let mut p = Pair::new();
    p.send_to_server(control_chunk(1, 0x7FFF_FFFF));
    assert!(matches!(p.closed_reason(), Some(CloseReason::Limit(_))));
    let mut p = Pair::new();
    p.send_to_server(control_chunk(1, 0));
    assert!(matches!(p.closed_reason(), Some(CloseReason::Malformed(_))));
}

/// Regression (issue 6, hostile clients: AMF garbage): a command message whose AMF decodes to
/// fewer than three values (here: none, the body is an object-end marker) panicked in rml_rtmp
/// (`drain(..3)` on a shorter list). The session must close it as malformed.
#[test]
fn short_amf_commands_close_without_panic() {
    for body in [&[0x09u8][..], &[0x05], &[0x02, 0, 1, b'x', 0x05], &[]] {
        for type_id in [20u8, 17] {
            let mut msg = body.to_vec();
            if type_id == 17 {
                msg.insert(0, 0);
            }
            let len = u8::try_from(msg.len()).expect("small");
            let mut bytes = vec![0x03, 0, 0, 0, 0, 0, len, type_id, 0, 0, 0, 0];
            bytes.extend_from_slice(&msg);
            let mut p = Pair::new();
            p.send_to_server(bytes);
            assert!(
                matches!(p.closed_reason(), Some(CloseReason::Malformed(_))),
                "type {type_id} body {body:?}: {:?}",
                p.closed_reason()
            );
        }
    }
}

#[test]
fn huge_message_and_deep_amf_close() {
    // A video message announcing 9 MiB.
    let mut p = Pair::new();
    p.send_to_server(vec![0x06, 0, 0, 0, 0x90, 0, 0, 9, 1, 0, 0, 0]);
    assert!(matches!(p.closed_reason(), Some(CloseReason::Limit(_))));
    // A connect command nested 10000 deep (would overflow rml_amf0's recursion).
    let mut body = vec![0x02, 0, 7];
    body.extend_from_slice(b"connect");
    body.push(0);
    body.extend_from_slice(&1f64.to_be_bytes());
    for _ in 0..10_000 {
        body.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    let mut p = Pair::new();
    p.send_to_server(control_chunk(1, 65536));
    let len = body.len();
    let mut msg = vec![
        0x03,
        0,
        0,
        0,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        20,
    ];
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&body);
    p.send_to_server(msg);
    assert!(matches!(p.closed_reason(), Some(CloseReason::Malformed(_))));
    // @setDataFrame with nothing after it (rml would index out of bounds).
    let mut p = Pair::new();
    p.connect("live");
    p.publish("k3y-cam1");
    let mut msg = vec![0x04, 0, 0, 0, 0, 0, 16, 18, 1, 0, 0, 0, 0x02, 0, 13];
    msg.extend_from_slice(b"@setDataFrame");
    p.send_to_server(msg);
    assert!(matches!(p.closed_reason(), Some(CloseReason::Malformed(_))));
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| **a == Action::StopRecording)
            .count(),
        1
    );
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn xorshift_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n).map(|_| xorshift(&mut s) as u8).collect()
}

/// The bytes a real client sends for connect, publish, media and unpublish.
fn good_transcript() -> Vec<u8> {
    let mut p = Pair::new();
    p.connect("live");
    p.publish("k3y-cam1");
    publish_media(&mut p);
    let r = p.client.stop_publishing().expect("stop");
    for x in r {
        p.client_sends(x);
    }
    assert_eq!(p.started(), 1);
    p.transcript
}

fn mutate(base: &[u8], s: &mut u64) -> Vec<u8> {
    let mut v = base.to_vec();
    let edits = 1 + xorshift(s) % 8;
    for _ in 0..edits {
        let pos = (xorshift(s) as usize) % v.len().max(1);
        match xorshift(s) % 4 {
            0 => v[pos] = xorshift(s) as u8,
            1 => v[pos] ^= 1 << (xorshift(s) % 8),
            2 => v.insert(pos, xorshift(s) as u8),
            _ => v.truncate(pos.max(3074)),
        }
    }
    v
}

#[test]
fn mutated_streams_never_panic() {
    let base = good_transcript();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut closes = 0;
    for _ in 0..3000 {
        let input = mutate(&base, &mut s);
        let mut claims = SetClaims::default();
        let mut server = Session::new(streams(), GuardLimits::default());
        let mut pos = 0;
        let mut after_close = 0;
        while pos < input.len() {
            let n = 1 + (xorshift(&mut s) as usize) % 9000;
            let end = (pos + n).min(input.len());
            let closed = server.is_closed();
            let out = server.handle_input(&input[pos..end], &mut claims);
            if closed {
                after_close += out.len();
            }
            pos = end;
        }
        assert_eq!(after_close, 0, "no actions after close");
        closes += usize::from(server.is_closed());
        server.on_disconnect(&mut claims);
        assert!(claims.0.is_empty(), "claims released");
    }
    // The mutations must actually exercise the failure paths.
    assert!(closes > 100, "only {closes} closed");
}
