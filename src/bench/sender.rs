//! The multi-stream paced sender: N copies of one feed from one thread, each on its own clock
//! (stream `i` starts `i · stagger` after the first), every datagram due now sent with one
//! `sendmmsg` per wake-up (≤ 1024 datagrams per call). Records, per stream and frame, when the
//! datagram carrying the frame's last TS packet was sent, and when the next PES started.
//!
//! No loop: a stream stops at the end of the feed or at the deadline, whichever comes first.

use std::io::IoSlice;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};

use super::feed::Feed;
use crate::clock::monotonic_ns;
use crate::error::Result;

/// Most datagrams handed to one `sendmmsg`.
const BATCH: usize = 1024;
/// Shortest sleep between wake-ups: datagrams due within it are sent together.
const TICK_NS: u64 = 500_000;

/// Send times of one stream's frames, indexed like `Feed::frames` (0 = not sent).
#[derive(Clone, Debug, Default)]
pub struct SentTimes {
    pub last_packet_ns: Vec<u64>,
    pub next_start_ns: Vec<u64>,
}

#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub targets: Vec<SocketAddrV4>,
    /// Monotonic instant stream 0 starts.
    pub start_ns: u64,
    pub stagger_ns: u64,
    /// Monotonic instant every stream stops.
    pub stop_ns: u64,
}

pub struct SenderReport {
    pub streams: Vec<SentTimes>,
    pub datagrams_sent: u64,
    pub send_errors: u64,
    /// Most lateness of a datagram behind its due time (ns): the sender kept up if small.
    pub max_late_ns: u64,
}

struct Stream {
    addr: SockaddrIn,
    start_ns: u64,
    next: usize,
}

/// Runs the sender on the calling thread until every stream ended or `stop` is set.
pub fn run(
    feed: &Feed,
    data: &[u8],
    cfg: &SenderConfig,
    stop: &Arc<AtomicBool>,
) -> Result<SenderReport> {
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| crate::err!(Io, "bench sender: bind: {e}"))?;
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
    let (ends, starts) = feed.marks();
    let mut streams: Vec<Stream> = cfg
        .targets
        .iter()
        .enumerate()
        .map(|(i, a)| Stream {
            addr: SockaddrIn::from(*a),
            start_ns: cfg.start_ns + cfg.stagger_ns * i as u64,
            next: 0,
        })
        .collect();
    let mut times: Vec<SentTimes> = (0..streams.len())
        .map(|_| SentTimes {
            last_packet_ns: vec![0; feed.frames.len()],
            next_start_ns: vec![0; feed.frames.len()],
        })
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let mut report = SenderReport {
        streams: Vec::new(),
        datagrams_sent: 0,
        send_errors: 0,
        max_late_ns: 0,
    };
    // (stream, datagram) of the batch being built.
    let mut batch: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
    let n = feed.datagrams.len();
    // Bounded: every pass sends or sleeps, and ends at stop_ns.
    loop {
        let now = monotonic_ns();
        if now >= cfg.stop_ns || stop.load(Ordering::Relaxed) {
            break;
        }
        batch.clear();
        let mut next_due = cfg.stop_ns;
        'fill: for (si, s) in streams.iter_mut().enumerate() {
            while s.next < n {
                let due = s.start_ns + feed.datagrams[s.next].due_ns;
                if due > now {
                    next_due = next_due.min(due);
                    break;
                }
                report.max_late_ns = report.max_late_ns.max(now - due);
                batch.push((si, s.next));
                s.next += 1;
                if batch.len() == BATCH {
                    next_due = now;
                    break 'fill;
                }
            }
        }
        if streams.iter().all(|s| s.next >= n) && batch.is_empty() {
            break;
        }
        if !batch.is_empty() {
            send_batch(
                &sock,
                &mut headers,
                &batch,
                feed,
                data,
                &streams,
                &mut report,
            );
            let sent_ns = monotonic_ns();
            for &(si, d) in &batch {
                for &k in &ends[d] {
                    times[si].last_packet_ns[k as usize] = sent_ns;
                }
                for &k in &starts[d] {
                    times[si].next_start_ns[k as usize] = sent_ns;
                }
            }
        }
        let wake = next_due.max(now + TICK_NS);
        let now = monotonic_ns();
        if wake > now {
            std::thread::sleep(Duration::from_nanos(wake - now));
        }
    }
    report.streams = times;
    Ok(report)
}

fn send_batch(
    sock: &UdpSocket,
    headers: &mut MultiHeaders<SockaddrIn>,
    batch: &[(usize, usize)],
    feed: &Feed,
    data: &[u8],
    streams: &[Stream],
    report: &mut SenderReport,
) {
    let slices: Vec<[IoSlice<'_>; 1]> = batch
        .iter()
        .map(|&(_, d)| {
            let g = feed.datagrams[d];
            [IoSlice::new(&data[g.offset..g.offset + g.len])]
        })
        .collect();
    let addrs: Vec<Option<SockaddrIn>> =
        batch.iter().map(|&(s, _)| Some(streams[s].addr)).collect();
    let mut done = 0;
    // Bounded: each round sends at least one datagram or gives up.
    for _ in 0..16 {
        if done == batch.len() {
            break;
        }
        match sendmmsg(
            sock.as_raw_fd(),
            headers,
            &slices[done..],
            &addrs[done..],
            [],
            MsgFlags::empty(),
        ) {
            Ok(res) => {
                let k = res.count();
                if k == 0 {
                    break;
                }
                done += k;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => {
                // ECONNREFUSED from an earlier datagram (no receiver yet) or a full buffer:
                // skip this one, as a fabric would.
                report.send_errors += 1;
                done += 1;
            }
        }
    }
    report.datagrams_sent += done as u64;
}
