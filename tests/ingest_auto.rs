//! `Auto` ingest: the first streams run on socket threads of their own, and move to the shared
//! io_uring receiver when one more starts, without losing or reordering a datagram; stopping
//! works wherever a stream is, also while it moves. One test in its own binary: the number of
//! `Auto` streams running is process-wide.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onair::ingest::{self, Backend, DatagramSink, IngestConfig, IngestHandle, OWN_THREAD_MAX};

#[derive(Clone, Default)]
struct Seq {
    got: Arc<Mutex<Vec<u32>>>,
    stops: Arc<AtomicU32>,
}

impl DatagramSink for Seq {
    fn on_datagram(&mut self, data: &[u8], _rx_ns: u64) {
        let Some(n) = data.get(..4).and_then(|b| b.try_into().ok()) else {
            return;
        };
        self.got.lock().expect("lock").push(u32::from_be_bytes(n));
    }
    fn on_stop(&mut self, _now_ns: u64) {
        self.stops.fetch_add(1, Ordering::SeqCst);
    }
}

fn auto() -> (Seq, IngestHandle) {
    let cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
    let sink = Seq::default();
    let h = ingest::start(&cfg, sink.clone()).expect("start ingest");
    (sink, h)
}

fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends numbered datagrams to `to` until `stop`, one a millisecond (the socket buffer holds
/// ~0.2 s of them, so a busy machine does not overflow it); returns how many.
fn feed(to: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let mut n = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let mut d = vec![0x47u8; 1316];
            d[..4].copy_from_slice(&n.to_be_bytes());
            tx.send_to(&d, to).expect("send");
            n += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        n
    })
}

fn in_order(sink: &Seq, sent: u32, what: &str) {
    until(what, || {
        sink.got.lock().expect("lock").len() >= sent as usize
    });
    let got = sink.got.lock().expect("lock");
    assert_eq!(
        got.len(),
        sent as usize,
        "{what}: datagrams lost or doubled"
    );
    for (i, &n) in got.iter().enumerate() {
        assert_eq!(n, i as u32, "{what}: datagram {i} out of order");
    }
}

#[test]
fn the_first_streams_have_their_own_thread_and_move_to_the_ring_when_more_start() {
    assert_eq!(
        OWN_THREAD_MAX, 2,
        "this test starts streams for a limit of 2"
    );
    // Two streams: each on a thread of its own.
    let (a_sink, a) = auto();
    let (b_sink, b) = auto();
    assert_eq!(a.backend(), Backend::Socket);
    assert_eq!(b.backend(), Backend::Socket);
    // A is fed throughout; the third stream starts while datagrams flow.
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feeder = feed(a.local_addr(), stop_feed.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (c_sink, c) = auto();
    assert_eq!(
        c.backend(),
        Backend::Uring,
        "the third stream goes to the ring"
    );
    until("the first two streams to move", || {
        a.backend() == Backend::Uring && b.backend() == Backend::Uring
    });
    std::thread::sleep(Duration::from_millis(300));
    stop_feed.store(true, Ordering::SeqCst);
    let sent = feeder.join().expect("feeder");
    assert!(sent > 100, "the feeder sent only {sent}");
    in_order(&a_sink, sent, "the stream that moved while fed");
    // Stopping: once each, wherever the stream is.
    a.stop();
    b.stop();
    c.stop();
    for (name, s) in [("a", &a_sink), ("b", &b_sink), ("c", &c_sink)] {
        assert_eq!(s.stops.load(Ordering::SeqCst), 1, "{name}: on_stop once");
    }
    // With every stream stopped, the next one has its own thread again.
    let (d_sink, d) = auto();
    assert_eq!(d.backend(), Backend::Socket);
    // A stop right after the move was asked for: E (idle, in its blocked receive) is told to
    // move and stopped at once. It stops once and nothing hangs; it nearly always stops on
    // its own thread (the loop looks at the stop first).
    let (e_sink, e) = auto();
    assert_eq!(e.backend(), Backend::Socket);
    let (f_sink, f) = auto();
    assert_eq!(f.backend(), Backend::Uring);
    e.stop();
    assert_eq!(e_sink.stops.load(Ordering::SeqCst), 1, "e: on_stop once");
    until("d to move", || d.backend() == Backend::Uring);
    // A moved stream still receives.
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for n in 0..50u32 {
        tx.send_to(&n.to_be_bytes(), d.local_addr()).expect("send");
    }
    in_order(&d_sink, 50, "a stream received after it moved");
    d.stop();
    f.stop();
    assert_eq!(d_sink.stops.load(Ordering::SeqCst), 1, "d: on_stop once");
    assert_eq!(f_sink.stops.load(Ordering::SeqCst), 1, "f: on_stop once");
}
