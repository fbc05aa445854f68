//! A UDP impairment relay: listens on one port and forwards every datagram to a target with
//! configurable loss, bursts, duplication, reordering (hold-and-swap), jitter and an outage.
//!
//! Impairments apply to datagrams whose index (0-based, in arrival order) falls in `window`;
//! the outage drops every datagram in `outage` (or while `paused` is set). Keyed by datagram
//! index rather than wall time, a fabric-sim feed (PCR-paced from a fixed file) is impaired at
//! the same media position on every run, however loaded the machine. The RNG is seeded.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Impairment {
    pub seed: u64,
    /// Datagram indices the random impairments apply to.
    pub window: Range<u64>,
    /// Each datagram in the window is dropped with this probability (0..1).
    pub loss: f64,
    /// A burst of `burst_len` consecutive drops starts with this probability.
    pub burst: f64,
    pub burst_len: u32,
    /// Sent twice with this probability.
    pub dup: f64,
    /// Held back and sent after the next datagram with this probability.
    pub reorder: f64,
    /// Each datagram is delayed by a uniform 0..=jitter (order kept: a datagram never leaves
    /// before the one ahead of it).
    pub jitter: Duration,
    /// Every datagram with an index in here is dropped (a fabric outage).
    pub outage: Range<u64>,
}

impl Impairment {
    pub fn none() -> Impairment {
        Impairment {
            seed: 1,
            window: 0..0,
            loss: 0.0,
            burst: 0.0,
            burst_len: 0,
            dup: 0.0,
            reorder: 0.0,
            jitter: Duration::ZERO,
            outage: 0..0,
        }
    }
}

/// What the relay did.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub received: u64,
    pub forwarded: u64,
    pub lost: u64,
    pub burst_lost: u64,
    pub outage_lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
    /// When the first datagram at or past the end of the window/outage was forwarded.
    pub cleared_at: Option<Instant>,
}

pub struct ImpairRelay {
    pub addr: SocketAddr,
    /// While set, every datagram is dropped (counted as outage): a manual outage switch for
    /// wall-time scenarios (the suite's own outage is keyed by datagram index).
    #[allow(dead_code)]
    pub paused: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// xorshift64*: small, seeded, good enough for test impairments.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Worker {
    rx: UdpSocket,
    tx: UdpSocket,
    to: SocketAddr,
    imp: Impairment,
    rng: Rng,
    counts: Arc<Mutex<Counts>>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Datagrams waiting for their departure time, in order.
    out: VecDeque<(Instant, Vec<u8>)>,
    held: Option<Vec<u8>>,
    burst_left: u32,
    index: u64,
}

impl ImpairRelay {
    pub fn start(to: SocketAddr, imp: Impairment) -> ImpairRelay {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind impair relay");
        rx.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let addr = rx.local_addr().expect("addr");
        let counts = Arc::new(Mutex::new(Counts::default()));
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = Worker {
            rx,
            tx: UdpSocket::bind("127.0.0.1:0").expect("bind tx"),
            to,
            rng: Rng(imp.seed | 1),
            imp,
            counts: counts.clone(),
            paused: paused.clone(),
            stop: stop.clone(),
            out: VecDeque::new(),
            held: None,
            burst_left: 0,
            index: 0,
        };
        let thread = std::thread::spawn(move || w.run());
        ImpairRelay {
            addr,
            paused,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().expect("counts").clone()
    }
}

impl Drop for ImpairRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Worker {
    fn run(&mut self) {
        let mut buf = vec![0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            match self.rx.recv(&mut buf) {
                Ok(n) => self.on_datagram(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("impair relay: {e}"),
            }
            self.send_due();
        }
    }

    fn on_datagram(&mut self, d: Vec<u8>) {
        let i = self.index;
        self.index += 1;
        let mut c = self.counts.lock().expect("counts");
        c.received += 1;
        if self.imp.outage.contains(&i) || self.paused.load(Ordering::Relaxed) {
            c.outage_lost += 1;
            return;
        }
        let end = self.imp.window.end.max(self.imp.outage.end);
        if i >= end && end > 0 && c.cleared_at.is_none() {
            c.cleared_at = Some(Instant::now());
        }
        if !self.imp.window.contains(&i) {
            drop(c);
            if let Some(h) = self.held.take() {
                self.enqueue(h, Duration::ZERO);
            }
            self.enqueue(d, Duration::ZERO);
            return;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            c.burst_lost += 1;
            return;
        }
        if self.imp.burst > 0.0 && self.rng.unit() < self.imp.burst {
            self.burst_left = self.imp.burst_len.saturating_sub(1);
            c.burst_lost += 1;
            return;
        }
        if self.rng.unit() < self.imp.loss {
            c.lost += 1;
            return;
        }
        let dup = self.rng.unit() < self.imp.dup;
        let hold = self.held.is_none() && self.rng.unit() < self.imp.reorder;
        let jitter = self.imp.jitter.mul_f64(self.rng.unit());
        if dup {
            c.duplicated += 1;
        }
        if !jitter.is_zero() {
            c.delayed += 1;
        }
        if hold {
            c.reordered += 1;
            drop(c);
            self.held = Some(d);
            return;
        }
        drop(c);
        if dup {
            self.enqueue(d.clone(), jitter);
        }
        self.enqueue(d, jitter);
        if let Some(h) = self.held.take() {
            self.enqueue(h, jitter);
        }
    }

    fn enqueue(&mut self, d: Vec<u8>, delay: Duration) {
        let mut due = Instant::now() + delay;
        if let Some((last, _)) = self.out.back() {
            due = due.max(*last);
        }
        self.out.push_back((due, d));
        self.send_due();
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        while self.out.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, d)) = self.out.pop_front() else {
                break;
            };
            let _ = self.tx.send_to(&d, self.to);
            self.counts.lock().expect("counts").forwarded += 1;
        }
    }
}
