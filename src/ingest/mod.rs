//! Fabric ingest: MPEG-TS (or RTP/TS) datagrams on UDP, unicast or multicast, received on a
//! dedicated thread with io_uring (multishot recvmsg + provided buffer ring), or with a plain
//! blocking socket when the kernel refuses io_uring (logged once per process).
//!
//! Datagrams are handed to a [`DatagramSink`] as slices of the receive buffers, on the ingest
//! thread; the sink (the media core) copies TS payloads once into PES buffers and nothing else.

mod socket;
mod uring;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Receives datagrams on the ingest thread.
pub trait DatagramSink: Send + 'static {
    /// One datagram; `rx_ns` is [`crate::clock::monotonic_ns`] at receipt (one read per batch).
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64);
    /// After each batch of datagrams (and at least every ~100 ms when idle).
    fn on_batch_end(&mut self, _now_ns: u64) {}
    /// The ingest is stopping: nothing more will come.
    fn on_stop(&mut self, _now_ns: u64) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestMode {
    /// io_uring, falling back to the socket receiver when refused.
    Auto,
    /// io_uring only: an error if the kernel refuses it.
    Uring,
    /// The plain blocking socket receiver.
    Socket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Socket,
}

#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Address to bind: `127.0.0.1:5000`, or `0.0.0.0:5000` with `multicast`.
    pub bind: SocketAddr,
    /// Multicast group to join and the local interface address to join it on.
    pub multicast: Option<(Ipv4Addr, Ipv4Addr)>,
    pub mode: IngestMode,
    /// SO_RCVBUF request. Default 4 MiB.
    pub recv_buffer_bytes: usize,
    /// io_uring provided buffers (a power of two). Default 256 (0.5 MB; ~400 ms of a 6 Mbit/s
    /// feed between wake-ups — if they run out, datagrams wait in the socket receive queue
    /// until the receive is re-armed, they are not lost).
    pub uring_buffers: u16,
}

impl IngestConfig {
    pub fn unicast(bind: SocketAddr) -> Self {
        IngestConfig {
            bind,
            multicast: None,
            mode: IngestMode::Auto,
            recv_buffer_bytes: 4 << 20,
            uring_buffers: 256,
        }
    }
}

#[derive(Debug, Default)]
pub struct IngestStats {
    pub datagrams: AtomicU64,
    pub bytes: AtomicU64,
    /// Datagrams larger than a receive buffer (cut, so dropped).
    pub truncated: AtomicU64,
    pub receive_errors: AtomicU64,
    /// io_uring multishot re-arms after the kernel ended one (ENOBUFS, CQ overflow).
    pub rearms: AtomicU64,
}

pub struct IngestHandle {
    pub stats: Arc<IngestStats>,
    local_addr: SocketAddr,
    backend: Backend,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IngestHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stops the thread (within ~100 ms) and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Largest datagram accepted: 7 TS packets plus a generous RTP header.
pub const MAX_DATAGRAM: usize = 2048;

/// Binds, joins the group if any, and starts the ingest thread.
pub fn start<S: DatagramSink>(config: &IngestConfig, sink: S) -> Result<IngestHandle> {
    let sock = bind(config)?;
    let local_addr = sock
        .local_addr()
        .map_err(|e| Error::from_net("ingest local address", &e))?;
    let stats = Arc::new(IngestStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = socket::Ctx {
        sock,
        stats: stats.clone(),
        stop: stop.clone(),
    };
    let (backend, thread) = match config.mode {
        IngestMode::Socket => (Backend::Socket, socket::spawn(ctx, sink)?),
        IngestMode::Uring => (
            Backend::Uring,
            uring::spawn(ctx, sink, config.uring_buffers).map_err(|(e, _, _)| e)?,
        ),
        IngestMode::Auto => match uring::spawn(ctx, sink, config.uring_buffers) {
            Ok(t) => (Backend::Uring, t),
            Err((e, ctx, sink)) => {
                log_fallback_once(&e);
                (Backend::Socket, socket::spawn(ctx, sink)?)
            }
        },
    };
    Ok(IngestHandle {
        stats,
        local_addr,
        backend,
        stop,
        thread: Some(thread),
    })
}

fn log_fallback_once(e: &Error) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "io_uring refused by the kernel; using the plain socket receiver");
    }
}

fn bind(config: &IngestConfig) -> Result<UdpSocket> {
    let sock = UdpSocket::bind(config.bind)
        .map_err(|e| crate::err!(Io, "ingest: cannot bind {}: {e}", config.bind))?;
    let size = config.recv_buffer_bytes.max(64 * 1024);
    if let Err(e) = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &size) {
        tracing::warn!(error = %e, "ingest: SO_RCVBUF not set");
    }
    if let Some((group, iface)) = config.multicast {
        if !group.is_multicast() {
            crate::bail!(InvalidArgument, "ingest: {group} is not a multicast group");
        }
        sock.join_multicast_v4(&group, &iface)
            .map_err(|e| crate::err!(Io, "ingest: cannot join {group} on {iface}: {e}"))?;
    }
    Ok(sock)
}
