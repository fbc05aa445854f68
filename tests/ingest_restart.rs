//! The shared io_uring receiver is one thread for the whole process. If it dies (a sink that
//! panics, in an unwinding build), the next ingest start must launch a new one instead of
//! handing out the dead one. Its own test binary: the dead receiver would take down the
//! ingests of any other test running in the same process.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onair::ingest::{self, Backend, DatagramSink, IngestConfig, IngestMode};

struct Panics;

impl DatagramSink for Panics {
    fn on_datagram(&mut self, _data: &[u8], _rx_ns: u64) {
        panic!("test: a sink that panics on its first datagram");
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<usize>>);

impl DatagramSink for Collect {
    fn on_datagram(&mut self, _data: &[u8], _rx_ns: u64) {
        *self.0.lock().expect("lock") += 1;
    }
}

fn uring_cfg() -> IngestConfig {
    IngestConfig {
        mode: IngestMode::Uring,
        ..IngestConfig::unicast("127.0.0.1:0".parse().expect("addr"))
    }
}

#[test]
fn a_dead_shared_receiver_is_replaced_on_the_next_start() {
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let doomed = ingest::start(&uring_cfg(), Panics).expect("first ingest");
    tx.send_to(&[0x47; 188], doomed.local_addr()).expect("send");
    std::thread::sleep(Duration::from_millis(500));
    drop(doomed);
    // Regression: the dead receiver stayed the process's receiver, so this start failed
    // ("io_uring receiver is gone") for the life of the process.
    let c = Collect::default();
    let h = ingest::start(&uring_cfg(), c.clone()).expect("an ingest after the receiver died");
    assert_eq!(h.backend(), Backend::Uring);
    let deadline = Instant::now() + Duration::from_secs(10);
    while *c.0.lock().expect("lock") == 0 {
        assert!(
            Instant::now() < deadline,
            "the new receiver delivered nothing"
        );
        tx.send_to(&[0x47; 188], h.local_addr()).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
}
