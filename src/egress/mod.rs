//! Egress: publish the media core's frames to one RTMP/RTMPS destination.
//!
//! [`session`] is the sans-IO RTMP publisher, [`queue`] the bounded congestion-aware queue,
//! [`backoff`] the retry schedule; this module is the thin tokio driver that connects (TCP or
//! TLS), runs the session and pumps the queue, reconnecting after network loss and failing hard
//! on a rejected key, certificate or policy.

pub mod backoff;
pub mod queue;
pub mod session;
pub mod tls;
pub mod url;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// The queue shared between the producer (media core, any thread) and the egress task.
#[derive(Debug)]
pub struct SharedQueue {
    queue: Mutex<FrameQueue>,
    notify: Notify,
    closed: AtomicBool,
}

impl SharedQueue {
    pub fn new(max_bytes: usize, max_frames: usize) -> Arc<Self> {
        Arc::new(SharedQueue {
            queue: Mutex::new(FrameQueue::new(max_bytes, max_frames)),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FrameQueue> {
        // A panic while holding the lock cannot leave FrameQueue inconsistent in a way that
        // matters more than losing the stream; keep going with the inner value.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes frames (from the media core). Never blocks on the network.
    pub fn push_all(&self, frames: &[MediaFrame]) {
        if frames.is_empty() {
            return;
        }
        {
            let mut q = self.lock();
            for f in frames {
                q.push(f.clone());
            }
        }
        self.notify.notify_one();
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
    task: tokio::task::JoinHandle<Result<()>>,
}

impl EgressHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        snapshot(&self.stats, &self.queue)
    }

    /// Asks the egress to stop now (after the frame being written).
    pub fn stop(&self) {
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
    check_policy(&dest)?;
    let tls = if dest.url.is_tls() {
        Some(tls::client_config(&dest.tls)?)
    } else {
        None
    };
    let queue = SharedQueue::new(opts.queue_max_bytes, opts.queue_max_frames);
    let stats = Arc::new(EgressStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let driver = Driver {
        dest,
        opts,
        tls,
        queue: queue.clone(),
        stats: stats.clone(),
        stop: stop_rx,
        headers: HeaderCache::default(),
    };
    let task = tokio::spawn(driver.run());
    Ok(EgressHandle {
        stats,
        queue,
        stop,
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

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum PumpEnd {
    Stopped,
    Drained,
}

struct Driver {
    dest: Destination,
    opts: EgressOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    queue: Arc<SharedQueue>,
    stats: Arc<EgressStats>,
    stop: watch::Receiver<bool>,
    headers: HeaderCache,
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
                Ok(PumpEnd::Stopped | PumpEnd::Drained) => return Ok(()),
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
        let mut stream = match self.connect().await {
            Ok(s) => s,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let mut session = match self.publish(&mut stream).await {
            Ok(s) => s,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let since = Instant::now();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.stats.publishing.store(true, Ordering::Relaxed);
        tracing::info!(url = %self.dest.url, "publishing");
        // Media queued while disconnected is stale: resume at the newest keyframe.
        self.queue.lock().resume_at_latest_keyframe();
        let end = match self.pump(&mut stream, &mut session).await {
            Ok(end) => end,
            Err(e) => return (Err(e), since.elapsed()),
        };
        self.finish(&mut stream, &mut session).await;
        (Ok(end), since.elapsed())
    }

    /// Graceful end: deleteStream, close our side (TLS close_notify), and read until the
    /// server closes, so the last frames are not lost to a reset. Bounded to 2 s.
    async fn finish(&self, stream: &mut Box<dyn Stream>, session: &mut PublishSession) {
        let graceful = async {
            for b in session.unpublish()? {
                self.write(stream, &b).await?;
            }
            stream
                .shutdown()
                .await
                .map_err(|e| Error::from_net("shutdown", &e))?;
            let mut buf = [0u8; 4096];
            while stream
                .read(&mut buf)
                .await
                .map_err(|e| Error::from_net("drain", &e))?
                > 0
            {}
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

    async fn connect(&self) -> Result<Box<dyn Stream>> {
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
            return Ok(Box::new(tcp));
        };
        let name = tls::server_name(&url.host)?;
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = tokio::time::timeout(self.opts.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| crate::err!(Unavailable, "TLS handshake with {url}: timed out"))?
            .map_err(|e| tls::classify_tls_error(&e))?;
        Ok(Box::new(tls))
    }

    /// Handshake, connect(app), publish(key); returns once the server accepted the publish.
    async fn publish(&self, stream: &mut Box<dyn Stream>) -> Result<PublishSession> {
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

    async fn write(&self, stream: &mut Box<dyn Stream>, b: &[u8]) -> Result<()> {
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

    /// Writes every buffer, in order, with as few (vectored) writes as the stream takes.
    async fn write_all_vectored(&self, stream: &mut Box<dyn Stream>, bufs: &[Bytes]) -> Result<()> {
        let total: usize = bufs.iter().map(Bytes::len).sum();
        let all = async {
            let (mut i, mut off) = (0usize, 0usize);
            while i < bufs.len() {
                let mut slices = Vec::with_capacity(bufs.len() - i);
                for (k, b) in bufs.iter().enumerate().skip(i) {
                    let b = if k == i {
                        b.get(off..).unwrap_or_default()
                    } else {
                        &b[..]
                    };
                    slices.push(std::io::IoSlice::new(b));
                }
                let mut n = stream.write_vectored(&slices).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
                while n > 0 && i < bufs.len() {
                    let left = bufs[i].len() - off;
                    if n >= left {
                        n -= left;
                        i += 1;
                        off = 0;
                    } else {
                        off += n;
                        n = 0;
                    }
                }
                while i < bufs.len() && bufs[i].len() == off {
                    i += 1;
                    off = 0;
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.opts.write_timeout, all)
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
            .fetch_add(total as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends cached headers, then frames as they come, while reading the server's messages.
    async fn pump(
        &mut self,
        stream: &mut Box<dyn Stream>,
        session: &mut PublishSession,
    ) -> Result<PumpEnd> {
        let cached: Vec<MediaFrame> = self.headers.all().cloned().collect();
        for f in &cached {
            let b = session.send_frame(f)?;
            self.write(stream, &b).await?;
        }
        let mut batch = Vec::with_capacity(64);
        let mut sends: Vec<Bytes> = Vec::with_capacity(64);
        let mut rbuf = vec![0u8; 8 * 1024];
        let mut out = Vec::new();
        let mut meter = BitrateMeter::new();
        // A safety tick, armed once (not a new timer on every wake-up).
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            batch.clear();
            self.queue.pop_batch(&mut batch, 64);
            if batch.is_empty() {
                if self.queue.closed.load(Ordering::Acquire) {
                    return Ok(PumpEnd::Drained);
                }
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    r = stream.read(&mut rbuf) => {
                        let n = r.map_err(|e| Error::from_net(&format!("read from {}", self.dest.url), &e))?;
                        if n == 0 {
                            crate::bail!(Unavailable, "{} closed the connection", self.dest.url);
                        }
                        self.on_server_bytes(session, &rbuf[..n], &mut out, stream).await?;
                    }
                    _ = self.stop.changed() => return Ok(PumpEnd::Stopped),
                    _ = &mut tick => {
                        tick.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            if *self.stop.borrow() {
                return Ok(PumpEnd::Stopped);
            }
            // Cache the batch's headers before sending anything: if a write fails midway, the
            // reconnect must re-send the newest headers, not ones older than the frames.
            for f in &batch {
                self.headers.remember(f);
            }
            // The batch's messages go out with one vectored write.
            sends.clear();
            for f in &batch {
                let b = session.send_frame(f)?;
                meter.add(b.len());
                sends.push(b);
            }
            self.write_all_vectored(stream, &sends).await?;
            self.stats
                .frames_out
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(bps) = meter.poll() {
                self.stats.bitrate_bps.store(bps, Ordering::Relaxed);
            }
        }
    }

    async fn on_server_bytes(
        &self,
        session: &mut PublishSession,
        bytes: &[u8],
        out: &mut Vec<Output>,
        stream: &mut Box<dyn Stream>,
    ) -> Result<()> {
        session.handle_input(bytes, out)?;
        let sends: Vec<Bytes> = out
            .drain(..)
            .filter_map(|o| match o {
                Output::Send(b) => Some(b),
                Output::Acknowledged(n) => {
                    self.stats
                        .bytes_acked
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    None
                }
                Output::Published => None,
            })
            .collect();
        for b in sends {
            self.write(stream, &b).await?;
        }
        Ok(())
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
