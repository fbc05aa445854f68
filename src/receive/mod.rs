//! `onair receive`: the private RTMP/RTMPS ingest server that records each publish to FLV.
//!
//! [`session`] is the pure protocol core (with [`guard`] vetting peer bytes before rml_rtmp);
//! this module is its thin tokio driver: accept, TLS, one task per connection, a read loop that
//! feeds the session and performs its actions, and [`recorder`] for the files.
pub mod cli;
pub mod config;
pub mod recorder;
pub mod session;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use config::{LimitsConfig, ReceiverConfig, StreamConfig};
pub use recorder::CompletedFile;
use recorder::Recorder;
use session::{Action, Claims, CloseReason, Session, StreamEntry};

use crate::error::{Error, ErrorKind, Result};
use crate::{bail, err};

/// Completed files remembered in [`Stats::files_completed`] (the newest).
const MAX_REMEMBERED_FILES: usize = 256;
/// Bytes read from a peer per call.
const READ_BUF_BYTES: usize = 64 << 10;

/// Counters since start, for tests and monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted (TCP), including ones later rejected.
    pub connections_accepted: u64,
    /// Connections closed on accept because `max_connections` were open.
    pub connections_refused_limit: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// Publishes accepted (each starts a recording).
    pub publishes_accepted: u64,
    /// Connect, publish or play requests refused (unknown app or key, busy stream, play).
    pub publishes_rejected: u64,
    /// Connections closed for protocol violations (bad handshake, chunks, AMF).
    pub closed_malformed: u64,
    /// Connections closed for exceeding a limit (message or chunk size, commands).
    pub closed_limit: u64,
    /// Connections closed for silence.
    pub closed_timeout: u64,
    /// Recordings that failed on disk (the connection was closed).
    pub write_errors: u64,
    /// Recordings finished cleanly (flushed and fsynced), the newest 256.
    pub files_completed: Vec<CompletedFile>,
}

/// A running receiver. Dropping it stops the server too (without waiting).
pub struct ReceiverHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    stats: watch::Receiver<Stats>,
    task: JoinHandle<()>,
}

impl ReceiverHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// Waits until `pred` holds for the stats, up to `timeout`; returns the last stats either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Stats) -> bool,
    ) -> std::result::Result<Stats, Stats> {
        let mut rx = self.stats.clone();
        match tokio::time::timeout(timeout, rx.wait_for(pred)).await {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(self.stats()),
        }
    }

    /// Stops accepting, closes every connection (finishing their recordings) and waits.
    pub async fn stop(self) -> Stats {
        let _ = self.shutdown.send(true);
        let stats = self.stats.clone();
        let _ = (&mut { self }.task).await;
        stats.borrow().clone()
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct Shared {
    streams: Arc<[StreamEntry]>,
    guard_limits: crate::rtmp_guard::GuardLimits,
    idle: Duration,
    record_dir: PathBuf,
    claims: Mutex<HashSet<String>>,
    stats: watch::Sender<Stats>,
    file_seq: AtomicU64,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Stats)) {
        self.stats.send_modify(f);
    }
}

/// [`Claims`] over the receiver-wide set of streams being published.
struct SharedClaims<'a>(&'a Mutex<HashSet<String>>);

impl Claims for SharedClaims<'_> {
    fn try_claim(&mut self, name: &str) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(name.to_owned())
    }
    fn release(&mut self, name: &str) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(name);
    }
}

/// Validates the config, creates the record dir, binds and starts serving.
pub async fn start(config: ReceiverConfig) -> Result<ReceiverHandle> {
    let streams = config.stream_entries()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    tokio::fs::create_dir_all(&config.record_dir)
        .await
        .map_err(|e| err!(Io, "record_dir {}: {e}", config.record_dir.display()))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| err!(Io, "listen {}: {e}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::from_net("local_addr", &e))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (stats_tx, stats) = watch::channel(Stats::default());
    let shared = Arc::new(Shared {
        streams: Arc::from(streams),
        guard_limits: config.limits.guard_limits(),
        idle: Duration::from_secs(config.idle_timeout_secs),
        record_dir: config.record_dir.clone(),
        claims: Mutex::new(HashSet::new()),
        stats: stats_tx,
        file_seq: AtomicU64::new(1),
    });
    info!(%local_addr, tls = tls.is_some(), "receiver listening");
    let max = config.max_connections;
    let per_address = crate::conn_limit::PerAddress::new(config.max_connections_per_address);
    let task = tokio::spawn(accept_loop(
        listener,
        tls,
        shared,
        shutdown_rx,
        (max, per_address),
    ));
    Ok(ReceiverHandle {
        local_addr,
        shutdown,
        stats,
        task,
    })
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| err!(InvalidArgument, "tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        bail!(
            InvalidArgument,
            "tls_cert {}: no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err!(InvalidArgument, "tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err!(Internal, "tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err!(InvalidArgument, "tls certificate/key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    (max_connections, per_address): (usize, Arc<crate::conn_limit::PerAddress>),
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.count(|s| s.connections_accepted += 1);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.count(|s| s.connections_refused_limit += 1);
            warn!(%peer, max_connections, "connection refused: too many connections");
            drop(tcp);
            continue;
        };
        let Some(address_permit) = per_address.try_acquire(peer.ip()) else {
            shared.count(|s| s.connections_refused_limit += 1);
            debug!(%peer, "connection refused: too many connections from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            shared: shared.clone(),
            peer,
            shutdown: shutdown.clone(),
            _permit: (permit, address_permit),
        };
        tokio::spawn(conn.run(tcp, tls.clone()));
    }
    drop(listener);
    // Every connection task holds one permit until it has finished its recording.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    info!("receiver stopped");
}

/// How a connection ended.
enum End {
    PeerClosed,
    Shutdown,
    Timeout,
    Closed(CloseReason),
    Failed(Error),
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    _permit: (OwnedSemaphorePermit, crate::conn_limit::AddressPermit),
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        self.shared.count(|s| s.connections_active += 1);
        match tls {
            None => self.serve(tcp).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.shared.idle, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => self.serve(stream).await,
                    Ok(Err(e)) => {
                        self.shared.count(|s| s.tls_failures += 1);
                        info!(peer = %self.peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.shared.count(|s| s.closed_timeout += 1);
                        info!(peer = %self.peer, "TLS handshake timed out");
                    }
                }
            }
        }
        self.shared.count(|s| s.connections_active -= 1);
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut io: S) {
        let shared = self.shared.clone();
        let mut session = Session::new(shared.streams.clone(), shared.guard_limits);
        let mut rec: Option<Recorder> = None;
        let end = self.read_loop(&mut io, &mut session, &mut rec).await;
        if matches!(&end, End::Failed(e) if e.kind() == ErrorKind::Io) {
            rec.take(); // the disk failed: do not try to finish this file
        }
        let last = session.on_disconnect(&mut SharedClaims(&shared.claims));
        // Finish the recording even when the connection failed.
        let end2 = self.perform(last, &mut io, &mut rec).await;
        let end = match (end, end2) {
            (End::PeerClosed | End::Shutdown, Some(e)) => e,
            (e, _) => e,
        };
        self.log_end(&end);
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }

    async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        session: &mut Session,
        rec: &mut Option<Recorder>,
    ) -> End {
        let mut buf = vec![0u8; READ_BUF_BYTES];
        loop {
            let read = tokio::select! {
                _ = self.shutdown.changed() => return End::Shutdown,
                r = tokio::time::timeout(self.shared.idle, io.read(&mut buf)) => r,
            };
            let n = match read {
                Err(_) => return End::Timeout,
                Ok(Err(e)) => return End::Failed(Error::from_net("read", &e)),
                Ok(Ok(0)) => return End::PeerClosed,
                Ok(Ok(n)) => n,
            };
            let claims = &mut SharedClaims(&self.shared.claims);
            let actions = session.handle_input(&buf[..n], claims);
            if let Some(end) = self.perform(actions, io, rec).await {
                return end;
            }
        }
    }

    /// Performs the session's actions in order; returns how the connection ends, if it does.
    async fn perform<S: AsyncWrite + Unpin>(
        &self,
        actions: Vec<Action>,
        io: &mut S,
        rec: &mut Option<Recorder>,
    ) -> Option<End> {
        let mut sent = false;
        for a in actions {
            let r = match a {
                Action::Send(b) => {
                    sent = true;
                    self.send(io, &b).await
                }
                Action::Tag {
                    tag_type,
                    ts_ms,
                    body,
                } => match rec.as_mut() {
                    Some(r) => r.write_tag(tag_type, ts_ms, &body).await,
                    None => Ok(()),
                },
                Action::StartRecording { name, app } => {
                    self.start_recording(rec, &name, &app).await
                }
                Action::StopRecording => self.stop_recording(rec).await,
                Action::Close { reason } => {
                    let _ = self.flush(io, sent).await;
                    return Some(End::Closed(reason));
                }
            };
            if let Err(e) = r {
                if e.kind() == ErrorKind::Io {
                    self.shared.count(|s| s.write_errors += 1);
                }
                return Some(End::Failed(e));
            }
        }
        self.flush(io, sent).await.err().map(End::Failed)
    }

    async fn send<S: AsyncWrite + Unpin>(&self, io: &mut S, b: &[u8]) -> Result<()> {
        match tokio::time::timeout(self.shared.idle, io.write_all(b)).await {
            Ok(r) => r.map_err(|e| Error::from_net("write", &e)),
            Err(_) => Err(Error::new(ErrorKind::Unavailable, "write timed out")),
        }
    }

    async fn flush<S: AsyncWrite + Unpin>(&self, io: &mut S, sent: bool) -> Result<()> {
        if !sent {
            return Ok(());
        }
        match tokio::time::timeout(self.shared.idle, io.flush()).await {
            Ok(r) => r.map_err(|e| Error::from_net("flush", &e)),
            Err(_) => Err(Error::new(ErrorKind::Unavailable, "flush timed out")),
        }
    }

    async fn start_recording(
        &self,
        rec: &mut Option<Recorder>,
        name: &str,
        app: &str,
    ) -> Result<()> {
        self.shared.count(|s| s.publishes_accepted += 1);
        let seq = self.shared.file_seq.fetch_add(1, Ordering::Relaxed);
        let r = Recorder::create(&self.shared.record_dir, name, seq, SystemTime::now()).await?;
        info!(peer = %self.peer, stream = name, app, path = %r.path().display(), "recording");
        *rec = Some(r);
        Ok(())
    }

    async fn stop_recording(&self, rec: &mut Option<Recorder>) -> Result<()> {
        let Some(r) = rec.take() else {
            return Ok(());
        };
        let done = r.finish().await?;
        info!(peer = %self.peer, stream = %done.name, path = %done.path.display(),
            tags = done.tags, bytes = done.bytes, "recording complete");
        self.shared.count(|s| {
            if s.files_completed.len() >= MAX_REMEMBERED_FILES {
                s.files_completed.remove(0);
            }
            s.files_completed.push(done);
        });
        Ok(())
    }

    fn log_end(&self, end: &End) {
        let peer = self.peer;
        match end {
            End::PeerClosed => info!(%peer, "connection closed by peer"),
            End::Shutdown => info!(%peer, "connection closed: shutting down"),
            End::Timeout => {
                self.shared.count(|s| s.closed_timeout += 1);
                info!(%peer, "connection closed: idle timeout");
            }
            End::Closed(reason) => {
                self.shared.count(|s| match reason {
                    CloseReason::Rejected(_) => s.publishes_rejected += 1,
                    CloseReason::Malformed(_) => s.closed_malformed += 1,
                    CloseReason::Limit(_) => s.closed_limit += 1,
                });
                info!(%peer, kind = reason.kind().as_str(), "connection closed: {reason}");
            }
            End::Failed(e) => warn!(%peer, "connection failed: {e}"),
        }
    }
}
