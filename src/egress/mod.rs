//! Egress: publish the media core's frames to one RTMP/RTMPS destination.
//!
//! [`session`] is the sans-IO RTMP publisher, [`queue`] the bounded congestion-aware queue,
//! [`backoff`] the retry schedule; this module is the thin tokio driver that connects (TCP or
//! TLS), runs the session and pumps the queue, reconnecting after network loss and failing hard
//! on a rejected key, certificate or policy.

pub mod backoff;
pub mod chunk;
mod live;
pub mod queue;
pub mod session;
pub mod tls;
pub mod url;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::media::core::{FrameKind, MediaFrame};
use crate::secret::Secret;
pub use queue::{FrameQueue, QueueStats};
use session::{Output, PublishSession};
pub use tls::TlsOptions;
pub use url::RtmpUrl;

/// Where to publish. The key is held apart from the URL and never logged.
#[derive(Clone, Debug)]
pub struct Destination {
    pub url: RtmpUrl,
    pub stream_key: Secret,
    pub tls: TlsOptions,
    /// `rtmp://` (no TLS) is refused unless this is set (by admin policy).
    pub allow_plain_rtmp: bool,
    /// Checked on every address the host name resolves to, before connecting: a name cannot
    /// be re-pointed past the admin policy. `None` = any address.
    pub addr_policy: Option<crate::control::destination::AddressPolicy>,
}

/// Tunables; defaults in `Default`.
#[derive(Clone, Debug)]
pub struct EgressOptions {
    /// TCP + TLS connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// From TCP connect to publish accepted. Default 10 s.
    pub publish_timeout: Duration,
    /// A write of one message (or the handshake) not done within this long means a stalled
    /// peer: the connection is dropped and re-made. Default 10 s.
    pub write_timeout: Duration,
    /// Outbound RTMP chunk size (128..=65536). Default 32768.
    pub chunk_size: u32,
    /// First reconnect delay (then doubling, with jitter). Default 500 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 10 s.
    pub backoff_max: Duration,
    /// Queue bound in bytes. Default 16 MiB (≈ 20 s of 6 Mbit/s).
    pub queue_max_bytes: usize,
    /// Queue bound in frames. Default 2048.
    pub queue_max_frames: usize,
    /// SO_SNDBUF of the egress socket. Default `None`: the kernel's autotuning, which may
    /// buffer up to `net.ipv4.tcp_wmem` max (4 MiB by default; ~1.3 MiB at once on
    /// loopback) before a slow ingest pushes back, i.e. seconds of media that the queue's
    /// drop policy never sees. A bound makes congestion reach the queue (and its GOP-aware
    /// drops) sooner, at the cost of throughput on long fat paths (bytes ≥ rate × RTT).
    pub send_buffer_bytes: Option<usize>,
    /// TCP_NOTSENT_LOWAT of the egress socket: at most this many bytes wait unsent in the
    /// kernel; beyond it writes block and frames stay in the queue, where congestion meets the
    /// GOP-aware drop policy. Data in flight is not limited (the kernel still sizes the buffer
    /// to the path), so unlike `send_buffer_bytes` this costs no throughput on long paths.
    /// Default 128 KiB (≈ 170 ms of a 6 Mbit/s stream); `None` leaves the kernel's default.
    pub unsent_limit_bytes: Option<u32>,
}

impl Default for EgressOptions {
    fn default() -> Self {
        EgressOptions {
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            chunk_size: 32_768,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            queue_max_bytes: 16 << 20,
            queue_max_frames: 2048,
            send_buffer_bytes: None,
            unsent_limit_bytes: Some(128 << 10),
        }
    }
}

/// Live counters of one egress, readable from any thread.
#[derive(Debug, Default)]
pub struct EgressStats {
    pub bytes_sent: AtomicU64,
    pub bytes_acked: AtomicU64,
    pub frames_out: AtomicU64,
    pub reconnects: AtomicU64,
    pub connects: AtomicU64,
    pub bitrate_bps: AtomicU64,
    pub av_offset_ms: AtomicI64,
    pub publishing: AtomicBool,
    /// Writes issued from the io_uring ingest thread's ring (see `live`), completed.
    pub ring_sends: AtomicU64,
}

/// A point-in-time copy of [`EgressStats`] and the queue's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_dropped: u64,
    pub gops_dropped: u64,
    pub reconnects: u64,
    pub connects: u64,
    pub bitrate_bps: u64,
    pub av_offset_ms: i64,
    pub publishing: bool,
}

/// The queue shared between the producer (media core, any thread) and the egress task, and
/// the live write path (see [`live`]): while publishing, the producer writes to the socket.
pub struct SharedQueue {
    queue: Mutex<FrameQueue>,
    notify: Notify,
    closed: AtomicBool,
    out: Mutex<live::OutState>,
    stats: Arc<EgressStats>,
}

impl std::fmt::Debug for SharedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedQueue")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SharedQueue {
    fn new(max_bytes: usize, max_frames: usize, stats: Arc<EgressStats>) -> Arc<Self> {
        Arc::new(SharedQueue {
            queue: Mutex::new(FrameQueue::new(max_bytes, max_frames)),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            out: Mutex::new(live::OutState::new()),
            stats,
        })
    }

    fn out(&self) -> std::sync::MutexGuard<'_, live::OutState> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the wire away: nothing more is written from the producer's side.
    fn disable(&self) {
        let mut st = self.out();
        st.stopped = true;
        if let Some(w) = st.wire.take() {
            w.refuse_inflight();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FrameQueue> {
        // A panic while holding the lock cannot leave FrameQueue inconsistent in a way that
        // matters more than losing the stream; keep going with the inner value.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes frames (from the media core) and, while publishing, writes them to the socket
    /// when it takes them without blocking. Never blocks on the network.
    pub fn push_all(self: &Arc<Self>, frames: &[MediaFrame]) {
        if frames.is_empty() {
            return;
        }
        {
            let mut q = self.lock();
            for f in frames {
                q.push(f.clone());
            }
        }
        let mut st = self.out();
        let wake = match &st.wire {
            // Not publishing: the task sends them once it is.
            None => true,
            // The task waits for the socket and drains the queue when it can.
            // A send on the ingest ring is in flight: its completion pumps these.
            Some(w) if w.blocked_since.is_some() || w.error.is_some() || w.inflight => false,
            Some(_) => self.pump_locked(&mut st),
        };
        drop(st);
        if wake {
            self.notify.notify_one();
        }
    }

    /// [`live::pump_out`] on the producer's side; true if the task must look (the socket is
    /// full or the connection failed).
    fn pump_locked(self: &Arc<Self>, st: &mut live::OutState) -> bool {
        // rml_rtmp and rustls run on the ingest thread here, which every relay shares: a
        // panic in them ends this connection (the task reconnects), not the ingest.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| live::pump_out(self, st))) {
            Ok(p) => matches!(p, live::Pumped::Blocked | live::Pumped::Failed),
            Err(_) => {
                if let Some(w) = st.wire.as_mut() {
                    w.error = Some(crate::err!(Internal, "egress serialization panicked"));
                }
                true
            }
        }
    }

    /// No more frames will come: the egress drains what is queued, then ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn stats(&self) -> QueueStats {
        self.lock().stats()
    }

    fn pop_batch(&self, out: &mut Vec<MediaFrame>, max: usize) {
        let mut q = self.lock();
        while out.len() < max {
            match q.pop() {
                Some(f) => out.push(f),
                None => break,
            }
        }
    }
}

/// A running egress. [`EgressHandle::stop`] (or dropping the handle) stops it at the next
/// await point, also while it is connecting or publishing.
pub struct EgressHandle {
    pub stats: Arc<EgressStats>,
    pub queue: Arc<SharedQueue>,
    stop: watch::Sender<bool>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl EgressHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        snapshot(&self.stats, &self.queue)
    }

    /// Lets a held egress (see [`spawn_held`]) connect and publish what is queued.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Asks the egress to stop now: no media is written once this returns (the connection is
    /// reset when the task lets go of it, without the graceful unpublish).
    pub fn stop(&self) {
        self.queue.disable();
        let _ = self.stop.send(true);
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the egress to end and returns how it ended.
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(crate::err!(Internal, "egress task failed: {e}")),
        }
    }
}

pub fn snapshot(stats: &EgressStats, queue: &SharedQueue) -> StatsSnapshot {
    let q = queue.stats();
    StatsSnapshot {
        bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
        bytes_acked: stats.bytes_acked.load(Ordering::Relaxed),
        frames_in: q.frames_in,
        frames_out: stats.frames_out.load(Ordering::Relaxed),
        frames_dropped: q.frames_dropped,
        gops_dropped: q.gops_dropped,
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        connects: stats.connects.load(Ordering::Relaxed),
        bitrate_bps: stats.bitrate_bps.load(Ordering::Relaxed),
        av_offset_ms: stats.av_offset_ms.load(Ordering::Relaxed),
        publishing: stats.publishing.load(Ordering::Relaxed),
    }
}

/// Starts an egress on the current tokio runtime. Policy is checked before anything is sent.
pub fn spawn(dest: Destination, opts: EgressOptions) -> Result<EgressHandle> {
    let h = spawn_held(dest, opts)?;
    h.release();
    Ok(h)
}

/// Starts an egress that queues frames but does not connect until [`EgressHandle::release`]
/// (a session confirmed whose indicator the fabric has not acknowledged yet: media from the
/// confirm on is kept, none leaves before the acknowledgement).
pub fn spawn_held(dest: Destination, opts: EgressOptions) -> Result<EgressHandle> {
    check_policy(&dest)?;
    let tls = if dest.url.is_tls() {
        Some(tls::client_config(&dest.tls)?)
    } else {
        None
    };
    let stats = Arc::new(EgressStats::default());
    let queue = SharedQueue::new(opts.queue_max_bytes, opts.queue_max_frames, stats.clone());
    let (stop, stop_rx) = watch::channel(false);
    let (release, release_rx) = watch::channel(false);
    let driver = Driver {
        release: release_rx,
        attempted: false,
        dest,
        opts,
        tls,
        queue: queue.clone(),
        stats: stats.clone(),
        stop: stop_rx,
    };
    let task = tokio::spawn(driver.run());
    Ok(EgressHandle {
        stats,
        queue,
        stop,
        release,
        task,
    })
}

/// Whether the stream key appears in the URL (pasted into the path, typically).
pub fn url_holds_key(url: &RtmpUrl, key: &Secret) -> bool {
    let k = key.expose();
    k.len() >= 4 && (url.app.contains(k) || url.host.contains(k))
}

fn check_policy(dest: &Destination) -> Result<()> {
    if !dest.url.is_tls() && !dest.allow_plain_rtmp {
        crate::bail!(
            Policy,
            "plain rtmp:// to {} is not allowed for this destination; use rtmps:// or have an admin allow plain RTMP",
            dest.url
        );
    }
    if dest.stream_key.is_empty() {
        crate::bail!(
            InvalidArgument,
            "destination {} has no stream key",
            dest.url
        );
    }
    if url_holds_key(&dest.url, &dest.stream_key) {
        // The URL is logged and sent as tcUrl: a key pasted into it would leak.
        crate::bail!(
            InvalidArgument,
            "the ingest URL contains the stream key; give the URL without it (the key goes in its own field)"
        );
    }
    Ok(())
}

/// The latest metadata and sequence headers, re-sent first after every reconnect.
#[derive(Default)]
struct HeaderCache {
    metadata: Option<MediaFrame>,
    video: Option<MediaFrame>,
    audio: Option<MediaFrame>,
}

impl HeaderCache {
    fn remember(&mut self, f: &MediaFrame) {
        let slot = match f.kind {
            FrameKind::Metadata => &mut self.metadata,
            FrameKind::VideoHeader => &mut self.video,
            FrameKind::AudioHeader => &mut self.audio,
            _ => return,
        };
        *slot = Some(f.clone());
    }

    fn all(&self) -> impl Iterator<Item = &MediaFrame> {
        [&self.metadata, &self.video, &self.audio]
            .into_iter()
            .filter_map(Option::as_ref)
    }
}

/// A connection while it handshakes and publishes (async I/O); taken apart into a [`live::Wire`]
/// once publishing.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn into_parts(self) -> (TcpStream, Option<rustls::ClientConnection>) {
        match self {
            Conn::Plain(t) => (t, None),
            Conn::Tls(t) => {
                let (io, c) = t.into_inner();
                (io, Some(c))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_write(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_shutdown(cx),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Takes the wire out of the shared state when the connection's future ends or is dropped
/// (a stop, a reconnect): the producer never writes to a connection the task let go of.
struct WireGuard(Arc<SharedQueue>);

impl Drop for WireGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.out().wire.take() {
            w.refuse_inflight();
        }
    }
}

enum PumpEnd {
    Stopped,
    /// Everything was written and the queue is closed: the wire, taken out under the same
    /// lock that saw it idle (a producer pushing late cannot start a write on it after).
    Drained(Box<live::Wire>),
}

struct Driver {
    dest: Destination,
    opts: EgressOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    queue: Arc<SharedQueue>,
    stats: Arc<EgressStats>,
    stop: watch::Receiver<bool>,
    /// False while held: nothing connects.
    release: watch::Receiver<bool>,
    /// A connection was attempted before (the queue is stale at the next publish).
    attempted: bool,
}

/// SO_LINGER {on, 0} on a connected socket.
fn socket2_linger_zero(tcp: &TcpStream) -> nix::Result<()> {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(tcp, nix::sys::socket::sockopt::Linger, &linger)
}

/// A publish that lasted this long counts as established (the backoff schedule resets).
const STABLE_PUBLISH: Duration = Duration::from_secs(10);

/// Failures a reconnect cannot fix. Everything else (network loss, DNS, resets, a server that
/// misbehaves) is retried with backoff.
pub fn is_hard_failure(kind: crate::error::ErrorKind) -> bool {
    use crate::error::ErrorKind as K;
    matches!(
        kind,
        K::PermissionDenied | K::Certificate | K::Policy | K::InvalidArgument
    )
}

/// Resolves when a stop was requested (or the handle is gone).
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

impl Driver {
    async fn run(mut self) -> Result<()> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut backoff =
            backoff::Backoff::new(self.opts.backoff_initial, self.opts.backoff_max, seed);
        // Held: wait for the release (or a stop, or the handle gone).
        let mut stop = self.stop.clone();
        while !*self.release.borrow() {
            tokio::select! {
                r = self.release.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                _ = wait_stop(&mut stop) => return Ok(()),
            }
        }
        loop {
            let mut stop = self.stop.clone();
            let attempt = tokio::select! {
                r = self.connect_and_pump() => Some(r),
                _ = wait_stop(&mut stop) => None,
            };
            self.stats.publishing.store(false, Ordering::Relaxed);
            let Some(result) = attempt else {
                return Ok(()); // stopped while connecting or publishing
            };
            let (result, published_for) = result;
            if published_for >= STABLE_PUBLISH {
                // A publish that held: the next outage starts a fresh schedule. A server that
                // accepts and drops at once keeps backing off.
                backoff.reset();
            }
            let err = match result {
                Ok(PumpEnd::Stopped | PumpEnd::Drained(_)) => return Ok(()),
                Err(e) => e,
            };
            if is_hard_failure(err.kind()) {
                tracing::error!(url = %self.dest.url, error = %err, "egress failed");
                return Err(err);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                // Stopping, and the ingest is gone: do not reconnect just to drain.
                return Ok(());
            }
            let delay = backoff.next_delay();
            tracing::warn!(url = %self.dest.url, error = %err, ?delay, "egress lost the ingest; reconnecting");
            if self.stopped_during(delay).await {
                return Ok(());
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn stopped_during(&mut self, d: Duration) -> bool {
        if *self.stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.changed() => true,
        }
    }

    /// One connection: returns how it ended and how long it was publishing.
    async fn connect_and_pump(&mut self) -> (Result<PumpEnd>, Duration) {
        let reconnect = std::mem::replace(&mut self.attempted, true);
        let mut conn = match self.connect().await {
            Ok(s) => s,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let session = match self.publish(&mut conn).await {
            Ok(s) => s,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let since = Instant::now();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.stats.publishing.store(true, Ordering::Relaxed);
        tracing::info!(url = %self.dest.url, "publishing");
        if reconnect {
            // Media queued while disconnected is stale: resume at the newest keyframe. When the
            // first attempt publishes, the queue holds the stream from its first keyframe
            // (after the confirm; queued while held for the indicator acknowledgement): all of
            // it goes. After a failed first attempt (backoff up to seconds) it is stale too.
            self.queue.lock().resume_at_latest_keyframe();
        }
        let (tcp, tls) = conn.into_parts();
        let tcp = Arc::new(tcp);
        let guard = WireGuard(self.queue.clone());
        {
            let mut st = self.queue.out();
            if st.stopped {
                return (Ok(PumpEnd::Stopped), Duration::ZERO);
            }
            let mut wire = live::Wire::new(tcp.clone(), tls, session);
            let mut early = Vec::new();
            wire.take_buffered(&mut early);
            if !early.is_empty()
                && let Err(e) = live::on_server_bytes(&mut wire, &early, &self.stats)
            {
                return (Err(e), Duration::ZERO);
            }
            // The newest headers go first (a reconnect's frames need them).
            let mut parts = Vec::new();
            for f in st.headers.all() {
                if let Err(e) = wire
                    .session
                    .send_frame(f, &mut parts)
                    .and_then(|_| wire.enqueue_parts(&mut parts, &self.stats))
                {
                    return (Err(e), Duration::ZERO);
                }
            }
            st.wire = Some(wire);
        }
        let mut end = match self.pump(&tcp).await {
            Ok(end) => end,
            Err(e) => return (Err(e), since.elapsed()),
        };
        drop(guard); // stopped: the guard takes the wire (refusing a send still in flight)
        if let PumpEnd::Drained(wire) = &mut end {
            self.finish(wire).await;
        }
        (Ok(end), since.elapsed())
    }

    /// Graceful end: deleteStream, close our side (TLS close_notify), and read until the
    /// server closes, so the last frames are not lost to a reset. Bounded to 2 s.
    async fn finish(&self, w: &mut live::Wire) {
        let graceful = async {
            for b in w.session.unpublish()? {
                w.enqueue(b, &self.stats)?;
            }
            if let Some(c) = &mut w.tls {
                c.send_close_notify();
            }
            while !w
                .flush(&self.stats)
                .map_err(|e| Error::from_net("unpublish", &e))?
            {
                w.tcp
                    .writable()
                    .await
                    .map_err(|e| Error::from_net("unpublish", &e))?;
            }
            socket2::SockRef::from(w.tcp.as_ref())
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| Error::from_net("shutdown", &e))?;
            let mut buf = [0u8; 4096];
            loop {
                w.tcp
                    .readable()
                    .await
                    .map_err(|e| Error::from_net("drain", &e))?;
                match w.tcp.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Error::from_net("drain", &e)),
                }
            }
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), graceful).await {
            Ok(Ok(())) => tracing::info!(url = %self.dest.url, "unpublished"),
            Ok(Err(e)) => tracing::debug!(url = %self.dest.url, error = %e, "unpublish"),
            Err(_) => {
                tracing::debug!(url = %self.dest.url, "unpublish: server did not close within 2 s")
            }
        }
    }

    /// Resolves the host; keeps the addresses the policy allows (none left = a hard failure).
    async fn resolve(&self) -> Result<Vec<std::net::SocketAddr>> {
        let url = &self.dest.url;
        let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| crate::err!(Unavailable, "resolve {}: {e}", url.host))?
            .collect();
        let Some(policy) = &self.dest.addr_policy else {
            return Ok(all);
        };
        let allowed: Vec<_> = all
            .iter()
            .copied()
            .filter(|a| policy.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            crate::bail!(
                Policy,
                "{} resolves to {:?}, which the admin policy does not allow",
                url.host,
                all.iter().map(|a| a.ip()).collect::<Vec<_>>()
            );
        }
        Ok(allowed)
    }

    async fn connect(&self) -> Result<Conn> {
        let url = &self.dest.url;
        let addrs = self.resolve().await?;
        let tcp = tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect(&addrs[..]))
            .await
            .map_err(|_| crate::err!(Unavailable, "connect to {url}: timed out"))?
            .map_err(|e| Error::from_net(&format!("connect to {url}"), &e))?;
        let _ = tcp.set_nodelay(true);
        // Closing resets the connection: an aborted egress must not keep flushing what sits in
        // the kernel's send buffer (a graceful stop has drained and seen the server close first).
        let _ = socket2_linger_zero(&tcp);
        if let Some(bytes) = self.opts.send_buffer_bytes {
            let _ = nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::SndBuf, &bytes);
        }
        if let Some(bytes) = self.opts.unsent_limit_bytes {
            let _ = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(bytes);
        }
        let Some(config) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let name = tls::server_name(&url.host)?;
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = tokio::time::timeout(self.opts.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| crate::err!(Unavailable, "TLS handshake with {url}: timed out"))?
            .map_err(|e| tls::classify_tls_error(&e))?;
        Ok(Conn::Tls(Box::new(tls)))
    }

    /// Handshake, connect(app), publish(key); returns once the server accepted the publish.
    async fn publish(&self, stream: &mut Conn) -> Result<PublishSession> {
        let url = &self.dest.url;
        let (mut session, c0c1) = PublishSession::new(
            &url.app,
            &url.tc_url(),
            self.dest.stream_key.clone(),
            self.opts.chunk_size,
        )?;
        let deadline = tokio::time::Instant::now() + self.opts.publish_timeout;
        self.write(stream, &c0c1).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
                .await
                .map_err(|_| {
                    crate::err!(
                        Unavailable,
                        "{url}: no publish answer within {:?}",
                        self.opts.publish_timeout
                    )
                })?
                .map_err(|e| Error::from_net(&format!("read from {url}"), &e))?;
            if n == 0 {
                crate::bail!(
                    Unavailable,
                    "{url} closed the connection before accepting the publish"
                );
            }
            session.handle_input(&buf[..n], &mut out)?;
            let mut published = false;
            for o in out.drain(..) {
                match o {
                    Output::Send(b) => self.write(stream, &b).await?,
                    Output::Published => published = true,
                    Output::Acknowledged(_) => {}
                }
            }
            if published {
                return Ok(session);
            }
        }
    }

    async fn write(&self, stream: &mut Conn, b: &[u8]) -> Result<()> {
        tokio::time::timeout(self.opts.write_timeout, stream.write_all(b))
            .await
            .map_err(|_| {
                crate::err!(
                    Unavailable,
                    "{}: write stalled for {:?}",
                    self.dest.url,
                    self.opts.write_timeout
                )
            })?
            .map_err(|e| Error::from_net(&format!("write to {}", self.dest.url), &e))?;
        self.stats
            .bytes_sent
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// While publishing: the producer writes (see [`live`]); this task reads the server's
    /// messages, waits out a socket that would block and drains the queue after it, and
    /// notices the end (stop, drained after close, a failed write, a stalled socket).
    async fn pump(&mut self, tcp: &TcpStream) -> Result<PumpEnd> {
        let mut from_server = Vec::with_capacity(8192);
        // A safety tick, armed once (not a new timer on every wake-up).
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            let blocked_since = {
                let mut st = self.queue.out();
                live::pump_out(&self.queue, &mut st);
                let Some(w) = st.wire.as_mut() else {
                    return Ok(PumpEnd::Stopped); // stop() took it
                };
                if let Some(e) = w.error.take() {
                    return Err(e);
                }
                let blocked_since = w.blocked_since;
                let drained = blocked_since.is_none()
                    && !w.inflight
                    && !w.has_pending()
                    && self.queue.closed.load(Ordering::Acquire)
                    && self.queue.lock().is_empty();
                if drained && let Some(w) = st.wire.take() {
                    return Ok(PumpEnd::Drained(Box::new(w)));
                }
                blocked_since
            };
            if *self.stop.borrow() {
                return Ok(PumpEnd::Stopped);
            }
            let stall_at =
                blocked_since.map(|t| tokio::time::Instant::from_std(t) + self.opts.write_timeout);
            tokio::select! {
                _ = self.queue.notify.notified() => {}
                r = tcp.readable() => {
                    r.map_err(|e| Error::from_net(&format!("read from {}", self.dest.url), &e))?;
                    from_server.clear();
                    let mut st = self.queue.out();
                    let Some(w) = st.wire.as_mut() else {
                        return Ok(PumpEnd::Stopped);
                    };
                    let open = w
                        .read_available(&mut from_server)
                        .map_err(|e| Error::from_net(&format!("read from {}", self.dest.url), &e))?;
                    if !from_server.is_empty() {
                        live::on_server_bytes(w, &from_server, &self.stats)?;
                    }
                    if !open {
                        crate::bail!(Unavailable, "{} closed the connection", self.dest.url);
                    }
                }
                r = tcp.writable(), if blocked_since.is_some() => {
                    r.map_err(|e| Error::from_net(&format!("write to {}", self.dest.url), &e))?;
                }
                _ = sleep_until_opt(stall_at) => {
                    crate::bail!(
                        Unavailable,
                        "{}: write stalled for {:?}",
                        self.dest.url,
                        self.opts.write_timeout
                    );
                }
                _ = self.stop.changed() => return Ok(PumpEnd::Stopped),
                _ = &mut tick => {
                    tick.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

/// Sleeps until the instant, or forever.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Bytes per second over ~1 s windows.
struct BitrateMeter {
    since: Instant,
    bytes: u64,
}

impl BitrateMeter {
    fn new() -> Self {
        BitrateMeter {
            since: Instant::now(),
            bytes: 0,
        }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    fn poll(&mut self) -> Option<u64> {
        let el = self.since.elapsed();
        if el < Duration::from_secs(1) {
            return None;
        }
        let bps = (self.bytes as f64 * 8.0 / el.as_secs_f64()) as u64;
        *self = BitrateMeter::new();
        Some(bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(url: &str, key: &str) -> Destination {
        Destination {
            url: RtmpUrl::parse(url).expect("url"),
            stream_key: Secret::new(key),
            tls: TlsOptions::default(),
            allow_plain_rtmp: false,
            addr_policy: None,
        }
    }

    #[test]
    fn a_key_pasted_into_the_url_is_refused_without_echoing_it() {
        let e = check_policy(&dest(
            "rtmps://a.rtmps.youtube.com/live2/abcd-1234-efgh",
            "abcd-1234-efgh",
        ))
        .expect_err("refused");
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
        assert!(!e.to_string().contains("abcd-1234"), "{e}");
        assert!(check_policy(&dest("rtmps://a.rtmps.youtube.com/live2", "abcd-1234-efgh")).is_ok());
    }

    #[test]
    fn hard_failures_are_the_ones_a_retry_cannot_fix() {
        use crate::error::ErrorKind as K;
        for k in [
            K::PermissionDenied,
            K::Certificate,
            K::Policy,
            K::InvalidArgument,
        ] {
            assert!(is_hard_failure(k), "{k:?}");
        }
        // Regression: a DNS failure surfaced as Io and ended the egress for good.
        for k in [
            K::Unavailable,
            K::Protocol,
            K::Io,
            K::ResourceExhausted,
            K::Internal,
        ] {
            assert!(!is_hard_failure(k), "{k:?}");
        }
    }
}
