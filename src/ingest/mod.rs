//! Fabric ingest: MPEG-TS (or RTP/TS) datagrams on UDP, unicast or multicast. With io_uring,
//! one thread of the process receives on every ingest socket (one ring, one multishot recv
//! per socket, one shared provided-buffer pool) and handles, at each wake-up, everything that
//! completed by then; with a plain blocking socket (when the kernel refuses io_uring, logged
//! once per process, or on request), one thread per socket.
//!
//! `Auto` (the default) runs the first [`OWN_THREAD_MAX`] streams on socket threads of their
//! own: for one or two streams a blocking `recv` costs less CPU than the ring (K = 1: 3.06 vs
//! 4.36 ms per stream-second, docs/performance.md). When one more starts, it goes on the ring
//! and they move there too: each thread stops reading and hands its socket and sink to the
//! ring, where the next datagram waits in the socket; nothing is lost or reordered. The move
//! is one way: a stream that moved stays on the ring.
//!
//! Datagrams are handed to a [`DatagramSink`] as slices of the receive buffers, on the ingest
//! thread; the sink (the media core) copies TS payloads once into PES buffers and nothing else.

mod socket;
mod uring;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    inner: Running,
    /// Started in `Auto` mode: counted in [`AUTO`] until stopped.
    counted: bool,
}

/// Where a stream that moved from its own thread runs now.
type Moved = (Arc<uring::Shared>, u64);

enum Running {
    /// On the shared io_uring receiver, under this id.
    Uring(Arc<uring::Shared>, u64),
    /// Its own socket thread. `moved`: the stream has since moved to the shared receiver (the
    /// thread ended, and its result says where).
    Socket {
        stop: Arc<AtomicBool>,
        moved: Arc<AtomicBool>,
        thread: JoinHandle<Option<Moved>>,
    },
    Stopped,
}

/// `Auto` streams that run at once on socket threads of their own; one more, and all go to
/// the shared io_uring receiver.
pub const OWN_THREAD_MAX: usize = 2;

/// `Auto` streams running, and the move signals of those on their own thread.
struct AutoStreams {
    live: usize,
    own: Vec<Weak<AtomicBool>>,
}

static AUTO: Mutex<AutoStreams> = Mutex::new(AutoStreams {
    live: 0,
    own: Vec::new(),
});

/// Where a starting `Auto` stream goes.
enum AutoPlace {
    /// A thread of its own; it moves to the ring when the signal is set.
    Own(Arc<AtomicBool>),
    /// The ring; once it is there, the streams on their own threads are told to move
    /// (their signals).
    Ring(Vec<Arc<AtomicBool>>),
}

/// Counts a starting `Auto` stream and says where it goes.
fn auto_join() -> AutoPlace {
    let Ok(mut g) = AUTO.lock() else {
        return AutoPlace::Ring(Vec::new());
    };
    g.live += 1;
    if g.live <= OWN_THREAD_MAX {
        let signal = Arc::new(AtomicBool::new(false));
        g.own.push(Arc::downgrade(&signal));
        return AutoPlace::Own(signal);
    }
    AutoPlace::Ring(g.own.drain(..).filter_map(|w| w.upgrade()).collect())
}

fn auto_leave() {
    if let Ok(mut g) = AUTO.lock() {
        g.live = g.live.saturating_sub(1);
        g.own.retain(|w| w.strong_count() > 0);
    }
}

impl IngestHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the stream is received now (a stream on its own thread may have moved to the ring).
    pub fn backend(&self) -> Backend {
        match &self.inner {
            Running::Socket { moved, .. } if !moved.load(Ordering::Acquire) => Backend::Socket,
            _ => Backend::Uring,
        }
    }

    /// Stops receiving and waits until the sink had `on_stop` (within ~100 ms).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        match std::mem::replace(&mut self.inner, Running::Stopped) {
            Running::Uring(shared, id) => shared.remove(id),
            Running::Socket { stop, thread, .. } => {
                stop.store(true, Ordering::Release);
                // A stream that moved meanwhile is removed from the ring instead.
                if let Ok(Some((shared, id))) = thread.join() {
                    shared.remove(id);
                }
            }
            Running::Stopped => {}
        }
        if std::mem::take(&mut self.counted) {
            auto_leave();
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
    let counted = config.mode == IngestMode::Auto;
    let handle = |inner| IngestHandle {
        stats: stats.clone(),
        local_addr,
        inner,
        counted,
    };
    let buffers = usize::from(config.uring_buffers.max(1));
    let (own, to_move) = match config.mode {
        IngestMode::Socket => (Some(None), Vec::new()),
        IngestMode::Auto => match auto_join() {
            AutoPlace::Own(signal) => (Some(Some(signal)), Vec::new()),
            AutoPlace::Ring(signals) => (None, signals),
        },
        IngestMode::Uring => (None, Vec::new()),
    };
    let started = match own {
        Some(moving) => own_thread(sock, sink, &stats, buffers, moving),
        None => on_ring(config.mode, sock, sink, &stats, buffers, to_move),
    };
    match started {
        Ok(inner) => Ok(handle(inner)),
        Err(e) => {
            if counted {
                auto_leave();
            }
            Err(e)
        }
    }
}

/// Adds the stream to the shared receiver; once it is there, the streams of `to_move` are told
/// to join it. `Auto` falls back to a thread of its own when io_uring is refused.
fn on_ring<S: DatagramSink>(
    mode: IngestMode,
    sock: UdpSocket,
    sink: S,
    stats: &Arc<IngestStats>,
    buffers: usize,
    to_move: Vec<Arc<AtomicBool>>,
) -> Result<Running> {
    let req = uring::AddReq {
        sock,
        sink: Box::new(sink),
        stats: stats.clone(),
        buffers,
    };
    let (e, req) = match add_to_ring(req) {
        Ok((shared, id)) => {
            for signal in to_move {
                signal.store(true, Ordering::Release);
            }
            return Ok(Running::Uring(shared, id));
        }
        Err(refused) => refused,
    };
    match (mode, req) {
        (IngestMode::Auto, Some(req)) => {
            log_fallback_once(&e);
            own_thread(req.sock, req.sink, stats, buffers, None)
        }
        _ => Err(e),
    }
}

/// Adds a stream to the process's shared receiver; when it refuses, the request comes back
/// (unless its thread took it and died).
fn add_to_ring(req: uring::AddReq) -> std::result::Result<Moved, (Error, Option<uring::AddReq>)> {
    let shared = match shared_receiver() {
        Ok(shared) => shared,
        Err(e) => return Err((e, Some(req))),
    };
    let id = shared.add(req)?;
    Ok((shared, id))
}

/// Starts a socket thread of its own for the stream. With `moving`, the stream moves to the
/// shared receiver when it is set; if the ring refuses it then, it goes on on this thread.
fn own_thread<S: DatagramSink>(
    sock: UdpSocket,
    sink: S,
    stats: &Arc<IngestStats>,
    buffers: usize,
    moving: Option<Arc<AtomicBool>>,
) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicBool::new(false));
    let ctx = socket::Ctx {
        sock,
        stats: stats.clone(),
        stop: stop.clone(),
        moving,
    };
    let (stats, stop_then, moved_then) = (stats.clone(), stop.clone(), moved.clone());
    let then = move |sock: UdpSocket, mut sink: S| {
        if stop_then.load(Ordering::Acquire) {
            // Stopped as it was about to move.
            sink.on_stop(crate::clock::monotonic_ns());
            return None;
        }
        // The ring's receives do not block; the timeout was for the loop.
        let _ = sock.set_read_timeout(None);
        let req = uring::AddReq {
            sock,
            sink: Box::new(sink) as Box<dyn DatagramSink>,
            stats: stats.clone(),
            buffers,
        };
        let (e, req) = match add_to_ring(req) {
            Ok(moved) => {
                moved_then.store(true, Ordering::Release);
                return Some(moved);
            }
            Err(refused) => refused,
        };
        let Some(req) = req else {
            tracing::error!(error = %e, "ingest: the io_uring receiver failed with the stream moving to it; it is no longer received");
            return None;
        };
        tracing::warn!(error = %e, "ingest: stream not moved to the io_uring receiver; it keeps its own thread");
        let _ = req.sock.set_read_timeout(Some(socket::READ_TIMEOUT));
        let ctx = socket::Ctx {
            sock: req.sock,
            stats,
            stop: stop_then,
            moving: None,
        };
        socket::run(ctx, req.sink);
        None
    };
    let thread = socket::spawn(ctx, sink, then)?;
    Ok(Running::Socket {
        stop,
        moved,
        thread,
    })
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
