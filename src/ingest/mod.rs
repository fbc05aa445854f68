//! Fabric ingest: MPEG-TS (or RTP/TS) datagrams on UDP, unicast or multicast. With io_uring,
//! one thread of the process receives on every ingest socket (one ring, one multishot recv
//! per socket, one shared provided-buffer pool) and handles, at each wake-up, everything that
//! completed by then; with a plain blocking socket (when the kernel refuses io_uring, logged
//! once per process, or on request), one thread per socket.
//!
//! Datagrams are handed to a [`DatagramSink`] as slices of the receive buffers, on the ingest
//! thread; the sink (the media core) copies TS payloads once into PES buffers and nothing else.

mod socket;
mod uring;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Receives datagrams on the ingest thread.
pub trait DatagramSink: Send + 'static {
    /// One datagram; `rx_ns` is [`crate::clock::monotonic_ns`] at receipt (one read per batch).
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64);
    /// After datagrams were handed to this sink: at the end of each batch that brought it at
    /// least one, and within a large batch after every 8 datagrams of the ingest thread (io_uring);
    /// also at least every ~100 ms when idle.
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
    /// io_uring buffers this socket adds to the process's shared pool (2 KB each). Default 64
    /// (132 KB; ~100 ms of a 6 Mbit/s feed; the pool is shared, so a burst on one socket can
    /// use others' share). If the pool runs out, datagrams wait in the socket receive queue
    /// until the receive is re-armed, they are not lost. The pool grows as sockets are added
    /// and keeps its largest size.
    pub uring_buffers: u16,
}

impl IngestConfig {
    pub fn unicast(bind: SocketAddr) -> Self {
        IngestConfig {
            bind,
            multicast: None,
            mode: IngestMode::Auto,
            recv_buffer_bytes: 4 << 20,
            uring_buffers: 64,
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
    /// io_uring multishot re-arms after the kernel ended one (ENOBUFS, CQ overflow, an empty
    /// datagram).
    pub rearms: AtomicU64,
}

pub struct IngestHandle {
    pub stats: Arc<IngestStats>,
    local_addr: SocketAddr,
    backend: Backend,
    inner: Running,
}

enum Running {
    /// On the shared io_uring receiver, under this id.
    Uring(Arc<uring::Shared>, u64),
    /// Its own socket thread.
    Socket(Arc<AtomicBool>, JoinHandle<()>),
    Stopped,
}

impl IngestHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stops receiving and waits until the sink had `on_stop` (within ~100 ms).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        match std::mem::replace(&mut self.inner, Running::Stopped) {
            Running::Uring(shared, id) => shared.remove(id),
            Running::Socket(stop, thread) => {
                stop.store(true, Ordering::Release);
                let _ = thread.join();
            }
            Running::Stopped => {}
        }
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub use uring::SharedStats;
pub(crate) use uring::{SEND_MAX_PIECES, SendReq, queue_send, sends_here};

/// The process's shared io_uring receiver, started on first use; `None` while the kernel
/// refuses io_uring (retried on the next start).
static SHARED: Mutex<Option<Arc<uring::Shared>>> = Mutex::new(None);

fn shared_receiver() -> Result<Arc<uring::Shared>> {
    let mut g = SHARED
        .lock()
        .map_err(|_| crate::err!(Internal, "ingest: receiver lock poisoned"))?;
    if let Some(s) = g.as_ref().filter(|s| s.is_alive()) {
        return Ok(s.clone());
    }
    let s = Arc::new(uring::Shared::start()?);
    *g = Some(s.clone());
    Ok(s)
}

/// Counters of the shared io_uring receiver, if it runs.
pub fn shared_stats() -> Option<Arc<SharedStats>> {
    SHARED
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.stats.clone()))
}

/// Largest datagram accepted: 7 TS packets plus a generous RTP header.
pub const MAX_DATAGRAM: usize = 2048;

/// Binds, joins the group if any, and starts receiving: on the shared io_uring receiver, or
/// on a socket thread of its own.
pub fn start<S: DatagramSink>(config: &IngestConfig, sink: S) -> Result<IngestHandle> {
    let sock = bind(config)?;
    let local_addr = sock
        .local_addr()
        .map_err(|e| Error::from_net("ingest local address", &e))?;
    let stats = Arc::new(IngestStats::default());
    let handle = |backend, inner| IngestHandle {
        stats: stats.clone(),
        local_addr,
        backend,
        inner,
    };
    if config.mode == IngestMode::Socket {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = socket::spawn(socket_ctx(sock, &stats, &stop), sink)?;
        return Ok(handle(Backend::Socket, Running::Socket(stop, thread)));
    }
    let req = uring::AddReq {
        sock,
        sink: Box::new(sink),
        stats: stats.clone(),
        buffers: usize::from(config.uring_buffers.max(1)),
    };
    let (e, req) = match shared_receiver() {
        Ok(shared) => match shared.add(req) {
            Ok(id) => return Ok(handle(Backend::Uring, Running::Uring(shared, id))),
            Err((e, req)) => (e, req),
        },
        Err(e) => (e, Some(req)),
    };
    match (config.mode, req) {
        (IngestMode::Auto, Some(req)) => {
            log_fallback_once(&e);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = socket::spawn(socket_ctx(req.sock, &stats, &stop), req.sink)?;
            Ok(handle(Backend::Socket, Running::Socket(stop, thread)))
        }
        _ => Err(e),
    }
}

fn socket_ctx(sock: UdpSocket, stats: &Arc<IngestStats>, stop: &Arc<AtomicBool>) -> socket::Ctx {
    socket::Ctx {
        sock,
        stats: stats.clone(),
        stop: stop.clone(),
    }
}

impl DatagramSink for Box<dyn DatagramSink> {
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        (**self).on_datagram(data, rx_ns);
    }
    fn on_batch_end(&mut self, now_ns: u64) {
        (**self).on_batch_end(now_ns);
    }
    fn on_stop(&mut self, now_ns: u64) {
        (**self).on_stop(now_ns);
    }
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
