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

/// Holds the ingest thread up for 100 ms in its first datagram.
struct StallFirst {
    inner: Collect,
    stalled: bool,
}

impl DatagramSink for StallFirst {
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        self.inner.on_datagram(data, rx_ns);
        if !std::mem::replace(&mut self.stalled, true) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs [`multishot_rearm_in_batch_mode`] in a process of its own with a 5 ms batch wait: the
/// receiver is shared per process and reads its batch wait once. (Without a batch wait, the
/// default, the thread hands buffers back faster than the kernel's multishot takes them — at
/// most 32 datagrams per receive run, at most 20 runs per ring entry — from a pool of ≥ 64,
/// so ENOBUFS does not happen here; the re-arm path is exercised with the 5 ms wait.)
#[test]
fn multishot_is_rearmed_when_buffers_run_out() {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "multishot_rearm_in_batch_mode",
            "--test-threads=1",
        ])
        .env("ONAIR_INGEST_BATCH_US", "5000")
        .output()
        .expect("run the test binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("test multishot_rearm_in_batch_mode ... ok"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by multishot_is_rearmed_when_buffers_run_out in its own process"]
fn multishot_rearm_in_batch_mode() {
    // 4 buffers and an unpaced burst while the ingest thread is held up in the first datagram:
    // the kernel ends the multishot with ENOBUFS; the receiver must re-arm and keep receiving
    // (some datagrams of the burst are lost, by design).
    if std::env::var_os("ONAIR_INGEST_BATCH_US").is_none() {
        // Run alone (`--ignored`) without the batch wait: nothing to check here.
        return;
    }
    let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
    cfg.mode = IngestMode::Uring;
    cfg.uring_buffers = 4;
    let sink = Collect::default();
    let stall = StallFirst {
        inner: sink.clone(),
        stalled: false,
    };
    let h = ingest::start(&cfg, stall).expect("start ingest");
    assert_eq!(h.backend(), Backend::Uring);
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for i in 0..20_000 {
        tx.send_to(&payload(i, 188 * (1 + (i as usize % 7))), h.local_addr())
            .expect("send");
    }
    // Let what is left of the burst in the socket queue drain: the count stops moving. (A fixed
    // 300 ms was not always enough on a loaded machine, the shared receiver serving other tests.)
    let mut before = sink.0.lock().expect("lock").len();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(300));
        let now = sink.0.lock().expect("lock").len();
        if now == before {
            break;
        }
        before = now;
    }
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

/// An ingest on loopback in `mode` collecting what it receives, and a socket to send to it.
fn collecting(mode: IngestMode) -> (Collect, ingest::IngestHandle, UdpSocket) {
    let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
    cfg.mode = mode;
    let sink = Collect::default();
    let h = ingest::start(&cfg, sink.clone()).expect("start");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    (sink, h, tx)
}

#[test]
fn oversized_datagram_counted_not_delivered() {
    for mode in [IngestMode::Uring, IngestMode::Socket] {
        let (sink, h, tx) = collecting(mode);
        tx.send_to(&vec![0x47u8; 4000], h.local_addr())
            .expect("send big");
        tx.send_to(&payload(1, 188), h.local_addr()).expect("send");
        assert_eq!(wait_for(&sink, 1), 1);
        assert_eq!(h.stats.truncated.load(Ordering::Relaxed), 1, "{mode:?}");
        assert_eq!(sink.0.lock().expect("lock")[0], payload(1, 188));
        h.stop();
    }
}

/// An empty datagram ends io_uring's multishot `recv` (a 0-byte read): it must be counted and
/// handed on like the socket receiver does, and the receive re-armed with nothing lost or
/// reordered around it. A datagram of exactly 2048 bytes (the largest) arrives whole, one of
/// 2049 is counted as truncated.
#[test]
fn empty_and_edge_size_datagrams_keep_the_stream_whole() {
    for mode in [IngestMode::Uring, IngestMode::Socket] {
        let (sink, h, tx) = collecting(mode);
        let mut want = Vec::new();
        for i in 0..40u32 {
            let d = if i % 10 == 3 {
                Vec::new()
            } else if i == 17 {
                payload(i, 2048)
            } else {
                payload(i, 188)
            };
            tx.send_to(&d, h.local_addr()).expect("send");
            want.push(d);
            if i == 25 {
                tx.send_to(&payload(i, 2049), h.local_addr())
                    .expect("send oversized");
            }
        }
        assert_eq!(wait_for(&sink, want.len()), want.len(), "{mode:?}");
        assert_eq!(*sink.0.lock().expect("lock"), want, "{mode:?}");
        assert_eq!(h.stats.truncated.load(Ordering::Relaxed), 1, "{mode:?}");
        assert_eq!(
            h.stats.datagrams.load(Ordering::Relaxed),
            want.len() as u64,
            "{mode:?}"
        );
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

/// A sink that also records `on_stop`.
#[derive(Clone, Default)]
struct Tracked {
    got: Collect,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl DatagramSink for Tracked {
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        self.got.on_datagram(data, rx_ns);
    }
    fn on_stop(&mut self, _now_ns: u64) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn start_uring(n: usize) -> Vec<(Tracked, ingest::IngestHandle)> {
    (0..n)
        .map(|_| {
            let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
            cfg.mode = IngestMode::Uring;
            let sink = Tracked::default();
            let h = ingest::start(&cfg, sink.clone()).expect("start ingest");
            assert_eq!(h.backend(), Backend::Uring);
            (sink, h)
        })
        .collect()
}

/// Datagram `i` of socket `s`: the socket's number in byte 5, lengths varying.
fn tagged(s: usize, i: u32) -> Vec<u8> {
    let mut v = payload(i, 188 * (1 + ((i as usize + s) % 7)));
    v[5] = s as u8;
    v
}

/// Sends `rounds` datagrams to each of `targets` (interleaved, paced), numbered from `from`.
fn send_interleaved(targets: &[(usize, SocketAddr)], from: u32, rounds: u32) {
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for i in from..from + rounds {
        for &(s, addr) in targets {
            tx.send_to(&tagged(s, i), addr).expect("send");
        }
        if i % 16 == 15 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn check_tagged(sink: &Collect, s: usize, range: std::ops::Range<u32>) {
    let want = range.len();
    assert_eq!(wait_for(sink, want), want, "socket {s}: datagrams lost");
    let got = sink.0.lock().expect("lock");
    assert_eq!(got.len(), want, "socket {s}: extra datagrams");
    for (d, i) in got.iter().zip(range) {
        assert_eq!(
            d,
            &tagged(s, i),
            "socket {s}: datagram {i} differs or out of order"
        );
    }
}

#[test]
fn many_sockets_on_the_shared_ring_each_get_theirs_in_order() {
    let ingests = start_uring(8);
    let targets: Vec<_> = ingests
        .iter()
        .enumerate()
        .map(|(s, (_, h))| (s, h.local_addr()))
        .collect();
    send_interleaved(&targets, 0, 1500);
    for (s, (sink, h)) in ingests.iter().enumerate() {
        check_tagged(&sink.got, s, 0..1500);
        assert_eq!(h.stats.datagrams.load(Ordering::Relaxed), 1500);
    }
    let shared = ingest::shared_stats().expect("the shared receiver runs");
    assert!(shared.completions.load(Ordering::Relaxed) >= 8 * 1500);
    for (_, h) in ingests {
        h.stop();
    }
}

#[test]
fn removing_one_socket_leaves_the_others_receiving() {
    let mut ingests = start_uring(4);
    let targets: Vec<_> = ingests
        .iter()
        .enumerate()
        .map(|(s, (_, h))| (s, h.local_addr()))
        .collect();
    send_interleaved(&targets, 0, 300);
    for (s, (sink, _)) in ingests.iter().enumerate() {
        check_tagged(&sink.got, s, 0..300);
    }
    // Stop socket 1 while the others keep receiving.
    let (removed, h) = ingests.remove(1);
    let started = Instant::now();
    h.stop();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "stop not prompt"
    );
    assert!(removed.stopped.load(Ordering::SeqCst), "on_stop not called");
    let rest: Vec<_> = targets.iter().copied().filter(|&(s, _)| s != 1).collect();
    send_interleaved(&rest, 300, 700);
    for ((sink, h), &(s, _)) in ingests.iter().zip(&rest) {
        check_tagged(&sink.got, s, 0..1000);
        assert!(!sink.stopped.load(Ordering::SeqCst));
        assert_eq!(h.stats.datagrams.load(Ordering::Relaxed), 1000);
    }
    assert_eq!(removed.got.0.lock().expect("lock").len(), 300);
    // Churn: sockets come and go on the ring while one keeps receiving.
    for round in 0..20u32 {
        let extra = start_uring(2);
        let mut t = vec![rest[0]];
        t.extend(
            extra
                .iter()
                .enumerate()
                .map(|(j, (_, h))| (10 + j, h.local_addr())),
        );
        send_interleaved(&t, 1000 + round * 10, 10);
        for (j, (sink, _)) in extra.iter().enumerate() {
            check_tagged(&sink.got, 10 + j, 1000 + round * 10..1000 + round * 10 + 10);
        }
        for (sink, h) in extra {
            h.stop();
            assert!(sink.stopped.load(Ordering::SeqCst));
        }
    }
    check_tagged(&ingests[0].0.got, rest[0].0, 0..1200);
    for (_, h) in ingests {
        h.stop();
    }
}

/// Records, per `on_batch_end`, how many datagrams came since the previous one; stalls the
/// ingest thread in its first datagram so the next ones pile up into one large batch.
/// (datagrams, datagrams since the last on_batch_end, runs as (datagrams, now_ns)).
type RunLog = (usize, usize, Vec<(usize, u64)>);

#[derive(Clone, Default)]
struct Runs {
    got: Arc<Mutex<RunLog>>,
}

impl DatagramSink for Runs {
    fn on_datagram(&mut self, _data: &[u8], _rx_ns: u64) {
        let first = {
            let mut g = self.got.lock().expect("lock");
            g.0 += 1;
            g.1 += 1;
            g.0 == 1
        };
        if first {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn on_batch_end(&mut self, now_ns: u64) {
        let mut g = self.got.lock().expect("lock");
        let run = std::mem::take(&mut g.1);
        if run > 0 {
            g.2.push((run, now_ns));
        }
    }
}

/// Regression (latency at 256 streams): a frame completed early in a large batch used to wait
/// until the whole batch was parsed; sinks now get `on_batch_end` every few completions.
#[test]
fn a_large_batch_is_handed_on_in_parts() {
    let mut cfg = IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"));
    cfg.mode = IngestMode::Uring;
    let sink = Runs::default();
    let h = ingest::start(&cfg, sink.clone()).expect("start ingest");
    assert_eq!(h.backend(), Backend::Uring);
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    tx.send_to(&payload(0, 188), h.local_addr()).expect("send");
    std::thread::sleep(Duration::from_millis(10));
    // The ingest thread sleeps in the first datagram: these queue up for one batch.
    for i in 1..=60 {
        tx.send_to(&payload(i, 188), h.local_addr()).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.got.lock().expect("lock").0 < 61 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let (n, _, runs) = sink.got.lock().expect("lock").clone();
    assert_eq!(n, 61, "datagrams lost");
    let longest = runs.iter().map(|r| r.0).max().unwrap_or(0);
    assert!(
        longest <= 8,
        "{longest} datagrams handled before the sink was flushed (runs {runs:?})"
    );
    assert!(runs.len() >= 61 / 8, "runs {runs:?}");
    // `now_ns` is read once per wake-up: two runs with the same one prove a batch was split
    // (the test is not passing only because the kernel delivered small batches).
    let split = runs.windows(2).any(|w| w[0].1 == w[1].1);
    assert!(split, "no batch was handed on in parts (runs {runs:?})");
    h.stop();
}
