//! The egress's live write path (src/egress/live.rs): while publishing, the producer (the
//! ingest thread in the appliance; a plain thread here) writes to the socket itself. These
//! tests hold the path to its promises against a real RTMP server over TCP (rml_rtmp's server
//! session) and, for TLS, stunnel in front of it:
//! - a server that stops reading makes the socket block: every frame still arrives, intact and
//!   in order, once it reads again (partial writes, TLS records held by rustls, the task
//!   draining the queue after the socket became writable);
//! - after `EgressHandle::stop` returns, not one more byte is written, also while the producer
//!   keeps pushing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Stunnel, TestCa, temp_dir};
use onair::egress::{self, Destination, EgressHandle, EgressOptions, RtmpUrl, TlsOptions};
use onair::media::core::{FrameKind, MediaFrame};
use onair::secret::Secret;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test server saw.
#[derive(Default)]
struct Seen {
    video: Mutex<Vec<(u32, Bytes)>>,
    bytes: AtomicU64,
    paused: AtomicBool,
    /// Sleep this long after every read of at most `read_limit` bytes (a slow link).
    read_delay_ms: AtomicU64,
    read_limit: AtomicU64,
}

/// A one-connection RTMP server that accepts connect and publish and keeps the video messages.
/// While `paused` it does not read (the client's socket fills up and blocks).
async fn serve(listener: tokio::net::TcpListener, seen: Arc<Seen>) {
    let Ok((mut sock, _)) = listener.accept().await else {
        return;
    };
    let mut handshake = Handshake::new(PeerType::Server);
    let mut session: Option<ServerSession> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if seen.paused.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let limit = match seen.read_limit.load(Ordering::Acquire) {
            0 => buf.len(),
            l => (l as usize).min(buf.len()),
        };
        let delay = seen.read_delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let n = match sock.read(&mut buf[..limit]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut rest = buf[..n].to_vec();
        if session.is_none() {
            match handshake.process_bytes(&rest).expect("server handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    sock.write_all(&response_bytes).await.expect("write");
                    continue;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    out.extend(response_bytes);
                    let (s, r) = ServerSession::new(ServerSessionConfig::new()).expect("session");
                    session = Some(s);
                    handle(session.as_mut().expect("session"), r, &mut out, &seen);
                    rest = remaining_bytes;
                }
            }
        }
        if !rest.is_empty() {
            let s = session.as_mut().expect("session");
            let r = s.handle_input(&rest).expect("server input");
            handle(s, r, &mut out, &seen);
        }
        if !out.is_empty() {
            sock.write_all(&out).await.expect("write");
        }
    }
}

fn handle(
    s: &mut ServerSession,
    results: Vec<ServerSessionResult>,
    out: &mut Vec<u8>,
    seen: &Seen,
) {
    for r in results {
        match r {
            ServerSessionResult::OutboundResponse(p) => out.extend(p.bytes),
            ServerSessionResult::RaisedEvent(ev) => match ev {
                ServerSessionEvent::ConnectionRequested { request_id, .. }
                | ServerSessionEvent::PublishStreamRequested { request_id, .. } => {
                    let more = s.accept_request(request_id).expect("accept");
                    handle(s, more, out, seen);
                }
                ServerSessionEvent::VideoDataReceived {
                    data, timestamp, ..
                } => seen
                    .video
                    .lock()
                    .expect("video")
                    .push((timestamp.value, data)),
                _ => {}
            },
            ServerSessionResult::UnhandleableMessageReceived(_) => {}
        }
    }
}

/// Starts the server; returns its port.
async fn start_server(seen: Arc<Seen>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(listener, seen));
    port
}

fn destination(url: &str, ca: Option<&TestCa>) -> Destination {
    Destination {
        url: RtmpUrl::parse(url).expect("url"),
        stream_key: Secret::new("live-test-key"),
        tls: TlsOptions {
            ca_bundle_pem: ca.map(|c| std::fs::read(&c.ca_pem).expect("ca")),
            spki_sha256: None,
        },
        allow_plain_rtmp: true,
        addr_policy: None,
    }
}

/// Video frame `i`: its index and a pattern that differs per frame, `len` bytes in all.
fn frame(i: u32, len: usize) -> MediaFrame {
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&[if i.is_multiple_of(60) { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    body.extend_from_slice(&i.to_be_bytes());
    let mut x = i.wrapping_mul(2_654_435_761) | 1;
    while body.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        body.push(x as u8);
    }
    MediaFrame {
        kind: FrameKind::Video,
        ts_ms: i * 33,
        body: Bytes::from(body),
        metadata: None,
        keyframe: i.is_multiple_of(60),
        droppable: false,
        rx_ns: 0,
    }
}

fn header() -> MediaFrame {
    MediaFrame {
        kind: FrameKind::VideoHeader,
        ts_ms: 0,
        body: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x28, 0xff, 0xe1, 0, 0]),
        metadata: None,
        keyframe: false,
        droppable: false,
        rx_ns: 0,
    }
}

async fn wait_publishing(h: &EgressHandle) {
    let t0 = Instant::now();
    while !h.snapshot().publishing {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not publishing after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server stops reading while ~24 MB are pushed; every frame must still arrive, in order.
async fn stalled_reader_gets_everything(tls: bool) {
    let seen = Arc::new(Seen::default());
    seen.paused.store(false, Ordering::Release);
    let port = start_server(seen.clone()).await;
    let dir = temp_dir(if tls { "live-stall-tls" } else { "live-stall" });
    let (url, ca, _tunnel) = if tls {
        let ca = TestCa::make(&dir.join("ca"), "localhost");
        let tunnel = Stunnel::start(&dir, &ca, port);
        (
            format!("rtmps://localhost:{}/live", tunnel.port),
            Some(ca),
            Some(tunnel),
        )
    } else {
        (format!("rtmp://127.0.0.1:{port}/live"), None, None)
    };
    let opts = EgressOptions {
        queue_max_bytes: 64 << 20,
        queue_max_frames: 4096,
        ..EgressOptions::default()
    };
    let h = egress::spawn(destination(&url, ca.as_ref()), opts).expect("spawn");
    wait_publishing(&h).await;
    seen.paused.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(50)).await;

    const N: u32 = 400;
    const LEN: usize = 60_000;
    let q = h.queue.clone();
    std::thread::spawn(move || {
        q.push_all(&[header()]);
        for i in (0..N).step_by(4) {
            let batch: Vec<MediaFrame> = (i..(i + 4).min(N)).map(|k| frame(k, LEN)).collect();
            q.push_all(&batch);
        }
    })
    .join()
    .expect("producer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = h.snapshot();
    assert!(
        during.frames_out < u64::from(N),
        "the socket never blocked: {during:?}"
    );
    assert_eq!(during.frames_dropped, 0, "{during:?}");

    seen.paused.store(false, Ordering::Release);
    let t0 = Instant::now();
    while seen.video.lock().expect("video").len() < N as usize + 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "only {} of {} video messages arrived; {:?}",
            seen.video.lock().expect("video").len(),
            N + 1,
            h.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let video = seen.video.lock().expect("video").clone();
    assert_eq!(video.len(), N as usize + 1);
    assert_eq!(video[0].1, header().body, "the sequence header first");
    for (i, (ts, data)) in video[1..].iter().enumerate() {
        let want = frame(i as u32, LEN);
        assert_eq!(*ts, want.ts_ms, "frame {i}: timestamp");
        assert!(*data == want.body, "frame {i}: payload differs");
    }
    assert_eq!(h.snapshot().frames_out, u64::from(N) + 1);
    h.queue.close();
    tokio::time::timeout(Duration::from_secs(10), h.join())
        .await
        .expect("drained and ended")
        .expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_intact_and_in_order_after() {
    stalled_reader_gets_everything(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_over_tls_too() {
    common::need("stunnel4");
    stalled_reader_gets_everything(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_after_stop_returns_while_the_producer_keeps_pushing() {
    let seen = Arc::new(Seen::default());
    let port = start_server(seen.clone()).await;
    let url = format!("rtmp://127.0.0.1:{port}/live");
    let h = egress::spawn(destination(&url, None), EgressOptions::default()).expect("spawn");
    wait_publishing(&h).await;
    let q = h.queue.clone();
    let run = Arc::new(AtomicBool::new(true));
    let r = run.clone();
    let producer = std::thread::spawn(move || {
        q.push_all(&[header()]);
        let mut i = 0;
        while r.load(Ordering::Acquire) {
            q.push_all(&[frame(i, 8_000)]);
            i += 1;
            std::thread::sleep(Duration::from_micros(500));
        }
        i
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = h.snapshot();
    assert!(
        before.frames_out > 50,
        "frames flowed before the stop: {before:?}"
    );
    h.stop();
    let at_stop = h.snapshot();
    tokio::time::sleep(Duration::from_millis(400)).await;
    run.store(false, Ordering::Release);
    let pushed = producer.join().expect("producer");
    let after = h.snapshot();
    assert!(pushed > 300, "the producer kept pushing: {pushed}");
    assert_eq!(
        after.bytes_sent, at_stop.bytes_sent,
        "bytes written after stop()"
    );
    assert_eq!(
        after.frames_out, at_stop.frames_out,
        "frames sent after stop()"
    );
    assert!(
        seen.bytes.load(Ordering::Relaxed) <= at_stop.bytes_sent,
        "the server got more than was written before the stop"
    );
    tokio::time::timeout(Duration::from_secs(5), h.join())
        .await
        .expect("ended")
        .expect("a stop is a clean end");
}

/// A link slower than the stream but moving: the socket stays blocked for longer than the
/// write timeout while every wake-up writes something. Regression: the stall deadline
/// counted from the first block, not from the last progress, and such an egress reconnected
/// every write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_link_is_not_taken_for_a_stalled_one() {
    let seen = Arc::new(Seen::default());
    let port = start_server(seen.clone()).await;
    let url = format!("rtmp://127.0.0.1:{port}/live");
    let opts = EgressOptions {
        write_timeout: Duration::from_millis(800),
        queue_max_bytes: 64 << 20,
        queue_max_frames: 8192,
        ..EgressOptions::default()
    };
    let h = egress::spawn(destination(&url, None), opts).expect("spawn");
    wait_publishing(&h).await;
    // ~400 KB/s read; ~1.6 MB/s pushed for 3 s.
    seen.read_limit.store(4096, Ordering::Release);
    seen.read_delay_ms.store(10, Ordering::Release);
    let q = h.queue.clone();
    let producer = std::thread::spawn(move || {
        q.push_all(&[header()]);
        for i in 0..300u32 {
            q.push_all(&[frame(i, 16_000)]);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let t0 = Instant::now();
    let mut was_blocked_long = false;
    while t0.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = h.snapshot();
        assert_eq!(
            s.reconnects, 0,
            "a moving link was taken for a stalled one: {s:?}"
        );
        assert_eq!(s.connects, 1, "{s:?}");
        was_blocked_long |= t0.elapsed() > Duration::from_millis(2000) && s.frames_out < 200;
    }
    producer.join().expect("producer");
    assert!(
        was_blocked_long,
        "the link never fell behind for longer than the write timeout: {:?}",
        h.snapshot()
    );
    h.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), h.join()).await;
}
