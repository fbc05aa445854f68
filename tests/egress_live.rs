//! The egress's live write path (src/egress/live.rs): while publishing, the producer writes to
//! the socket itself: from a plain thread with `writev`, or, from the io_uring ingest thread
//! (as the appliance's relays do), as sends on its ring issued when the thread next waits.
//! These tests hold both to the path's promises against a real RTMP server over TCP
//! (rml_rtmp's server session) and, for TLS, stunnel in front of it:
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
use onair::egress::{
    self, Destination, EgressHandle, EgressOptions, RtmpUrl, SharedQueue, TlsOptions,
};
use onair::ingest::{self, Backend, DatagramSink, IngestConfig, IngestHandle, IngestMode};
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

/// Where frames are pushed from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum From {
    /// A plain thread (the egress writes with `writev`).
    Thread,
    /// The io_uring ingest thread, from a sink (the egress queues sends on its ring).
    Ring,
}

/// The ingest sink that pushes frames on the io_uring thread: each datagram asks for frames
/// `start..start + count` of `len` bytes (`start` = u32::MAX: the sequence header; `HOLD`:
/// push frame `count`, say so on `held`, then keep the ingest thread until `release` says
/// so (at most 5 s), before it submits the send).
struct RingPush {
    q: Arc<SharedQueue>,
    frames: Vec<MediaFrame>,
    pushed: Arc<AtomicU64>,
    held: Option<std::sync::mpsc::SyncSender<()>>,
    release: Option<std::sync::mpsc::Receiver<()>>,
    hold: bool,
    /// Pushed when the ingest stops (as the relay's sink pushes its last frames).
    last: Option<u32>,
}

const HOLD: u32 = u32::MAX - 1;

impl DatagramSink for RingPush {
    fn on_datagram(&mut self, d: &[u8], _rx_ns: u64) {
        let word = |i: usize| {
            d.get(i * 4..i * 4 + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (start, count, len) = (word(0), word(1), word(2) as usize);
        if start == u32::MAX {
            self.frames.push(header());
        } else if start == HOLD {
            self.frames.push(frame(count, len));
            self.hold = true;
        } else {
            self.frames
                .extend((start..start + count).map(|k| frame(k, len)));
        }
    }
    fn on_batch_end(&mut self, _now_ns: u64) {
        if !self.frames.is_empty() {
            self.q.push_all(&self.frames);
            self.pushed
                .fetch_add(self.frames.len() as u64, Ordering::Release);
            self.frames.clear();
        }
        if std::mem::take(&mut self.hold) {
            if let Some(tx) = &self.held {
                let _ = tx.send(());
            }
            if let Some(rx) = &self.release {
                let _ = rx.recv_timeout(Duration::from_secs(5));
            }
        }
    }
    fn on_stop(&mut self, _now_ns: u64) {
        if let Some(i) = self.last {
            self.q.push_all(&[frame(i, 8_000)]);
        }
    }
}

/// Pushes frames into an egress's queue from a thread or from the io_uring ingest thread.
struct Producer {
    q: Arc<SharedQueue>,
    ring: Option<(IngestHandle, std::net::UdpSocket)>,
    pushed: Arc<AtomicU64>,
}

impl Producer {
    fn new(from: From, q: Arc<SharedQueue>) -> Producer {
        Producer::with(from, q, None, None)
    }

    /// `hold`: the channels of the `HOLD` request (told when held, waits for the release).
    fn with(
        from: From,
        q: Arc<SharedQueue>,
        hold: Option<(
            std::sync::mpsc::SyncSender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
        last: Option<u32>,
    ) -> Producer {
        let (held, release) = hold.unzip();
        let pushed = Arc::new(AtomicU64::new(0));
        let ring = (from == From::Ring).then(|| {
            let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
            cfg.mode = IngestMode::Uring;
            let sink = RingPush {
                q: q.clone(),
                frames: Vec::new(),
                pushed: pushed.clone(),
                held,
                release,
                hold: false,
                last,
            };
            let h = ingest::start(&cfg, sink).expect("io_uring ingest");
            assert_eq!(h.backend(), Backend::Uring);
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            tx.connect(h.local_addr()).expect("connect");
            (h, tx)
        });
        Producer { q, ring, pushed }
    }

    fn push(&self, start: u32, count: u32, len: usize) {
        match &self.ring {
            None => {
                let frames: Vec<MediaFrame> = if start == u32::MAX {
                    vec![header()]
                } else {
                    (start..start + count).map(|k| frame(k, len)).collect()
                };
                self.q.push_all(&frames);
                self.pushed
                    .fetch_add(frames.len() as u64, Ordering::Release);
            }
            Some((_, tx)) => {
                let mut d = Vec::with_capacity(12);
                for w in [start, count, len as u32] {
                    d.extend_from_slice(&w.to_be_bytes());
                }
                tx.send(&d).expect("send to the ingest");
            }
        }
    }

    fn header(&self) {
        self.push(u32::MAX, 1, 0);
    }

    /// Waits until `n` frames were pushed into the queue.
    fn wait_pushed(&self, n: u64) {
        let t0 = Instant::now();
        while self.pushed.load(Ordering::Acquire) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "only {} of {n} frames pushed",
                self.pushed.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// After a test: frames pushed from the ingest thread over plain TCP were written by sends on
/// its ring; nothing else was (rustls writes itself).
fn assert_ring_used(from: From, tls: bool, h: &EgressHandle) {
    let sends = h.stats.ring_sends.load(Ordering::Relaxed);
    if from == From::Ring && !tls {
        assert!(sends > 0, "no write went through the ingest ring");
    } else {
        assert_eq!(sends, 0, "{from:?}, tls {tls}: a write went through a ring");
    }
}

/// The test server and a plain-RTMP egress to it with default options, publishing.
async fn publishing_plain() -> (Arc<Seen>, EgressHandle) {
    let seen = Arc::new(Seen::default());
    let port = start_server(seen.clone()).await;
    let url = format!("rtmp://127.0.0.1:{port}/live");
    let h = egress::spawn(destination(&url, None), EgressOptions::default()).expect("spawn");
    wait_publishing(&h).await;
    (seen, h)
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
async fn stalled_reader_gets_everything(tls: bool, from: From) {
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
    let producer = Producer::new(from, h.queue.clone());
    producer.header();
    for i in (0..N).step_by(4) {
        producer.push(i, 4.min(N - i), LEN);
    }
    producer.wait_pushed(u64::from(N) + 1);
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
    assert_ring_used(from, tls, &h);
    h.queue.close();
    tokio::time::timeout(Duration::from_secs(10), h.join())
        .await
        .expect("drained and ended")
        .expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_intact_and_in_order_after() {
    stalled_reader_gets_everything(false, From::Thread).await;
}

/// The same through sends on the io_uring ingest thread's ring: partial sends and `EAGAIN`
/// hand the socket to the egress task, which drains the rest in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_in_order_from_the_ingest_ring() {
    stalled_reader_gets_everything(false, From::Ring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_over_tls_too() {
    common::need("stunnel4");
    stalled_reader_gets_everything(true, From::Thread).await;
}

/// RTMPS from the ingest thread: rustls writes directly (no ring send), every frame arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_every_frame_over_tls_from_the_ingest_thread() {
    common::need("stunnel4");
    stalled_reader_gets_everything(true, From::Ring).await;
}

async fn nothing_written_after_stop(from: From) {
    let (seen, h) = publishing_plain().await;
    let q = h.queue.clone();
    let run = Arc::new(AtomicBool::new(true));
    let r = run.clone();
    let producer = std::thread::spawn(move || {
        let p = Producer::new(from, q);
        p.header();
        let mut i = 0;
        while r.load(Ordering::Acquire) {
            p.push(i, 1, 8_000);
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
    // A ring send the kernel took before the stop is counted when its completion is reaped,
    // possibly after: at most one send (≤ 32 of these frames). Writing on after the stop
    // would be ~800 frames.
    let slack = if from == From::Ring { 32 * 8_100 } else { 0 };
    assert!(
        after.bytes_sent >= at_stop.bytes_sent && after.bytes_sent - at_stop.bytes_sent <= slack,
        "bytes written after stop(): {} then {}",
        at_stop.bytes_sent,
        after.bytes_sent
    );
    assert_eq!(
        after.frames_out, at_stop.frames_out,
        "frames sent after stop()"
    );
    assert!(
        seen.bytes.load(Ordering::Relaxed) <= after.bytes_sent,
        "the server got more than was written"
    );
    if from == From::Ring {
        assert!(
            h.stats.ring_sends.load(Ordering::Relaxed) > 0,
            "no ring send"
        );
    }
    tokio::time::timeout(Duration::from_secs(5), h.join())
        .await
        .expect("ended")
        .expect("a stop is a clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_after_stop_returns_while_the_producer_keeps_pushing() {
    nothing_written_after_stop(From::Thread).await;
}

/// Also while the frames are sent from the ingest thread's ring, where a send queued before
/// the stop may not be issued yet when the stop returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_after_stop_returns_while_the_ingest_ring_keeps_sending() {
    nothing_written_after_stop(From::Ring).await;
}

/// Whether the server got the video frame with this index (by its timestamp).
fn server_saw(seen: &Seen, i: u32) -> bool {
    let ts = frame(i, 0).ts_ms;
    seen.video
        .lock()
        .expect("video")
        .iter()
        .any(|(t, _)| *t == ts)
}

/// A send queued on the ingest ring is submitted when the ingest thread next waits. If the
/// egress is stopped in between, that send must write nothing: here the sink keeps the ingest
/// thread right after queuing it until the stop has returned. (The thread is shared by every
/// io_uring ingest of the process: the hold lasts only as long as the stop takes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_send_queued_before_stop_returns_is_never_written() {
    let (seen, h) = publishing_plain().await;
    let (held_tx, held_rx) = std::sync::mpsc::sync_channel(1);
    let (release_tx, release_rx) = std::sync::mpsc::sync_channel(1);
    let producer = Producer::with(
        From::Ring,
        h.queue.clone(),
        Some((held_tx, release_rx)),
        None,
    );
    producer.header();
    producer.push(0, 10, 8_000);
    producer.wait_pushed(11);
    // The frames so far arrived and their send's completion was handled (it is counted in
    // `bytes_sent` then; the ingest thread's idle tick comes within 100 ms): the wire is idle
    // when the held push comes.
    let t0 = Instant::now();
    while !(server_saw(&seen, 9) && h.snapshot().bytes_sent >= 10 * 8_000) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the first frames never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = h.snapshot();
    producer.push(HOLD, 9_999, 8_000);
    tokio::task::spawn_blocking(move || held_rx.recv_timeout(Duration::from_secs(5)))
        .await
        .expect("join")
        .expect("the held frame was pushed");
    h.stop();
    release_tx.send(()).expect("release the ingest thread");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = h.snapshot();
    assert_eq!(
        after.frames_out,
        before.frames_out + 1,
        "the held frame was serialized (as a send queued on the ring)"
    );
    assert!(
        !server_saw(&seen, 9_999),
        "a send queued before stop() returned was written after it"
    );
    assert_eq!(
        after.bytes_sent, before.bytes_sent,
        "bytes written after stop()"
    );
    tokio::time::timeout(Duration::from_secs(5), h.join())
        .await
        .expect("ended")
        .expect("a stop is a clean end");
    drop(producer);
}

/// The relay's sink pushes its last frames when its ingest stops; when that was the ring's
/// last socket, the send they make must still complete, and the egress drain and end
/// gracefully after the queue closes. (Regression: the receiver with no socket left waited
/// for a second completion with no timeout, so the send's was never handled and the egress
/// never drained. It shows when this test runs alone: another test's socket on the shared
/// ring gives the wait its timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_frames_of_a_stopping_ingest_go_out_and_the_egress_drains() {
    let (seen, h) = publishing_plain().await;
    let mut producer = Producer::with(From::Ring, h.queue.clone(), None, Some(7_777));
    producer.header();
    producer.push(0, 10, 8_000);
    producer.wait_pushed(11);
    let (ingest, _tx) = producer.ring.take().expect("ring producer");
    tokio::task::spawn_blocking(move || ingest.stop())
        .await
        .expect("ingest stopped");
    h.queue.close();
    tokio::time::timeout(Duration::from_secs(3), h.join())
        .await
        .expect("the egress drained and ended within 3 s")
        .expect("clean end");
    assert!(server_saw(&seen, 9), "frames before the stop arrived");
    assert!(
        server_saw(&seen, 7_777),
        "the frame pushed at the ingest's stop arrived"
    );
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
