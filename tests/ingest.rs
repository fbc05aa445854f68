//! The fabric ingest on real sockets: io_uring and the socket fallback both deliver every
//! datagram intact and in order on loopback; the multishot is re-armed when buffers run out;
//! multicast joins work; oversized datagrams are counted, not delivered.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onair::ingest::{self, Backend, DatagramSink, IngestConfig, IngestMode};

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Vec<u8>>>>);

impl DatagramSink for Collect {
    fn on_datagram(&mut self, data: &[u8], _rx_ns: u64) {
        self.0.lock().expect("lock").push(data.to_vec());
    }
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0x47u8; len];
    v[1..5].copy_from_slice(&i.to_be_bytes());
    v
}

fn wait_for(c: &Collect, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.0.lock().expect("lock").len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn roundtrip(
    mode: IngestMode,
    expect: Backend,
    buffers: u16,
    count: u32,
    paced: bool,
) -> (Collect, ingest::IngestHandle) {
    let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
    cfg.mode = mode;
    cfg.uring_buffers = buffers;
    let sink = Collect::default();
    let h = ingest::start(&cfg, sink.clone()).expect("start ingest");
    assert_eq!(h.backend(), expect);
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for i in 0..count {
        let len = 188 * (1 + (i as usize % 7));
        tx.send_to(&payload(i, len), h.local_addr()).expect("send");
        if paced && i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (sink, h)
}

fn check_all(sink: &Collect, count: u32) {
    assert_eq!(
        wait_for(sink, count as usize),
        count as usize,
        "datagrams lost on loopback"
    );
    let got = sink.0.lock().expect("lock");
    for (i, d) in got.iter().enumerate() {
        let i = i as u32;
        assert_eq!(
            d,
            &payload(i, 188 * (1 + (i as usize % 7))),
            "datagram {i} differs"
        );
    }
}

#[test]
fn io_uring_receives_everything_in_order() {
    let (sink, h) = roundtrip(IngestMode::Uring, Backend::Uring, 1024, 5_000, true);
    check_all(&sink, 5_000);
    assert_eq!(h.stats.datagrams.load(Ordering::Relaxed), 5_000);
    h.stop();
}

#[test]
fn socket_fallback_receives_everything_in_order() {
    let (sink, h) = roundtrip(IngestMode::Socket, Backend::Socket, 1024, 5_000, true);
    check_all(&sink, 5_000);
    h.stop();
}

#[test]
fn auto_prefers_io_uring_here() {
    let (sink, h) = roundtrip(IngestMode::Auto, Backend::Uring, 1024, 100, false);
    check_all(&sink, 100);
    h.stop();
}

#[test]
fn multishot_is_rearmed_when_buffers_run_out() {
    // 4 buffers and an unpaced burst: the kernel ends the multishot with ENOBUFS; the receiver
    // must re-arm and keep receiving (some datagrams of the burst are lost, by design).
    let (sink, h) = roundtrip(IngestMode::Uring, Backend::Uring, 4, 20_000, false);
    std::thread::sleep(Duration::from_millis(300));
    let before = sink.0.lock().expect("lock").len();
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..50u32 {
        tx.send_to(&payload(1_000_000 + i, 188), h.local_addr())
            .expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = wait_for(&sink, before + 50);
    assert!(h.stats.rearms.load(Ordering::Relaxed) > 0, "never re-armed");
    assert_eq!(
        after - before,
        50,
        "receiving stopped after the multishot ended"
    );
    h.stop();
}

#[test]
fn oversized_datagram_counted_not_delivered() {
    for mode in [IngestMode::Uring, IngestMode::Socket] {
        let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
        cfg.mode = mode;
        let sink = Collect::default();
        let h = ingest::start(&cfg, sink.clone()).expect("start");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(&vec![0x47u8; 4000], h.local_addr())
            .expect("send big");
        tx.send_to(&payload(1, 188), h.local_addr()).expect("send");
        assert_eq!(wait_for(&sink, 1), 1);
        assert_eq!(h.stats.truncated.load(Ordering::Relaxed), 1, "{mode:?}");
        assert_eq!(sink.0.lock().expect("lock")[0], payload(1, 188));
        h.stop();
    }
}

#[test]
fn multicast_group_join() {
    let group: Ipv4Addr = "239.255.42.99".parse().expect("group");
    let probe = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let mut cfg = IngestConfig::unicast(SocketAddr::from(([0, 0, 0, 0], port)));
    cfg.multicast = Some((group, Ipv4Addr::LOCALHOST));
    let sink = Collect::default();
    let h = match ingest::start(&cfg, sink.clone()) {
        Ok(h) => h,
        Err(e) => panic!("multicast join on loopback failed: {e}"),
    };
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Bound to 127.0.0.1, Linux sends multicast out of the interface owning that address (lo).
    tx.set_multicast_loop_v4(true).expect("loop");
    for i in 0..20u32 {
        tx.send_to(&payload(i, 1316), (group, port)).expect("send");
    }
    assert_eq!(wait_for(&sink, 20), 20, "multicast datagrams not received");
    h.stop();
}
