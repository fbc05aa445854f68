//! The live write path: once the ingest accepted the publish, frames are serialized and written
//! to the socket by whichever thread has them, normally the ingest thread when it hands the
//! relay on (`on_batch_end`), with non-blocking writes and without waking the egress task.
//!
//! The egress task (the tokio driver in `mod.rs`) keeps what needs waiting: the server's
//! messages, a socket that would block (it waits until the socket is writable, then drains the
//! queue), the write-stall deadline, reconnects and the graceful end. Both sides meet under
//! one lock ([`OutState`]); every operation under it is non-blocking.
//!
//! Rules that make the hand-over safe:
//! - the ingest pushes into the queue first, then takes the lock: if it finds the socket
//!   blocked it leaves the frames queued, and the task, which un-blocks under the same lock,
//!   drains the queue right after;
//! - whoever hits "would block" or an error first tells the task (one notify), never the
//!   other way round: a socket that takes everything costs the ingest one `writev` per hand-on;
//! - a stopped egress has no [`Wire`]: after [`super::EgressHandle::stop`] returns nothing
//!   more is written;
//! - on the io_uring receiver's thread a plain-TCP write is a send queued on its ring
//!   ([`crate::ingest::queue_send`]), issued by the `io_uring_enter` that then waits. While it
//!   is in flight ([`Wire::inflight`]) nobody else writes; its completion (on that thread)
//!   moves the wire on and pumps the rest. A stop or a dropped connection with a send still
//!   in flight shuts the socket down, so a send not yet issued writes nothing.

use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::session::{Output, PublishSession};
use super::{BitrateMeter, EgressStats, HeaderCache, SharedQueue};
use crate::error::{Error, Result};
use crate::ingest;
use crate::media::core::MediaFrame;

/// Frames serialized per write.
const BATCH: usize = 64;
/// Server bytes read per wake-up of the egress task.
const READ_PER_WAKE: usize = 64 * 1024;

/// One publishing connection's write side.
pub(crate) struct Wire {
    pub(crate) tcp: Arc<TcpStream>,
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    pub(crate) session: PublishSession,
    /// Plain TCP: bytes accepted but not yet written (the front one from `pending_off`). With
    /// TLS, rustls holds them (as records).
    pending: VecDeque<Bytes>,
    pending_off: usize,
    /// Set when the socket would not take more, and moved on whenever a write makes
    /// progress: the stall deadline counts from the last progress, so a slow but moving link
    /// is not taken for a stalled one. Cleared once everything pending is written.
    pub(crate) blocked_since: Option<Instant>,
    /// A write since the last [`pump_out`] wrote something.
    progressed: bool,
    /// A write failed (from any thread): the connection is over.
    pub(crate) error: Option<Error>,
    /// Tells this connection's ring-send completions from an earlier connection's.
    id: u64,
    /// A send of the front of `pending` is queued on the ingest ring: nobody else writes
    /// until its completion.
    pub(crate) inflight: bool,
}

static WIRE_IDS: AtomicU64 = AtomicU64::new(1);

/// A borrowed socket as blocking-style `Read`/`Write` that never block (rustls's I/O).
struct SockIo<'a>(&'a TcpStream);

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

impl Wire {
    pub(crate) fn new(
        tcp: Arc<TcpStream>,
        tls: Option<rustls::ClientConnection>,
        session: PublishSession,
    ) -> Wire {
        let tls = tls.map(|mut c| {
            // We bound what is buffered ourselves: a batch is added only after the previous
            // one was written out.
            c.set_buffer_limit(None);
            Box::new(c)
        });
        Wire {
            tcp,
            tls,
            session,
            pending: VecDeque::new(),
            pending_off: 0,
            blocked_since: None,
            progressed: false,
            error: None,
            id: WIRE_IDS.fetch_add(1, Ordering::Relaxed),
            inflight: false,
        }
    }

    /// `n` bytes of the front of `pending` were written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pending.front() else {
                break;
            };
            let left = front.len() - self.pending_off;
            if n >= left {
                n -= left;
                self.pending.pop_front();
                self.pending_off = 0;
            } else {
                self.pending_off += n;
                n = 0;
            }
        }
    }

    /// Shuts the socket down if a send of it is queued on the ingest ring (a send not issued
    /// yet then writes nothing). For a connection being let go of.
    pub(crate) fn refuse_inflight(&self) {
        if self.inflight {
            let _ = socket2::SockRef::from(self.tcp.as_ref()).shutdown(std::net::Shutdown::Both);
        }
    }

    /// On the io_uring receiver's thread, plain TCP: queues a send of the front of `pending`
    /// on its ring. False where that is not possible (the caller writes itself).
    fn send_on_ring(&mut self, q: &Arc<SharedQueue>) -> bool {
        if self.tls.is_some() || self.pending.is_empty() || !ingest::sends_here() {
            return false;
        }
        let q = Arc::clone(q);
        let id = self.id;
        let req = ingest::SendReq {
            sock: self.tcp.clone(),
            pieces: self
                .pending
                .iter()
                .take(ingest::SEND_MAX_PIECES)
                .cloned()
                .collect(),
            skip: self.pending_off,
            done: Box::new(move |r| ring_sent(&q, id, r)),
        };
        self.inflight = ingest::queue_send(req).is_ok();
        self.inflight
    }

    /// Queues RTMP bytes for writing (nothing is written yet).
    pub(crate) fn enqueue(&mut self, b: Bytes, stats: &EgressStats) -> Result<()> {
        let mut one = vec![b];
        self.enqueue_parts(&mut one, stats)
    }

    /// Queues a list of RTMP pieces (a frame's chunk headers and body slices) for writing,
    /// leaving `parts` empty whatever the outcome. Plain TCP keeps the pieces (one `writev`
    /// sends them); with TLS they go to rustls in one call, which copies them into records.
    pub(crate) fn enqueue_parts(
        &mut self,
        parts: &mut Vec<Bytes>,
        stats: &EgressStats,
    ) -> Result<()> {
        let r = match &mut self.tls {
            None => {
                self.pending
                    .extend(parts.drain(..).filter(|b| !b.is_empty()));
                Ok(())
            }
            Some(c) => tls_write_all(c, parts, stats),
        };
        parts.clear();
        r
    }

    /// Whether bytes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        match &self.tls {
            None => !self.pending.is_empty(),
            Some(c) => c.wants_write(),
        }
    }

    /// Writes what is pending without blocking. `Ok(true)`: all written.
    pub(crate) fn flush(&mut self, stats: &EgressStats) -> std::io::Result<bool> {
        if let Some(c) = &mut self.tls {
            while c.wants_write() {
                match c.write_tls(&mut SockIo(&self.tcp)) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(_) => self.progressed = true,
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            return Ok(true);
        }
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); BATCH];
            let mut n_slices = 0;
            for (k, b) in self.pending.iter().take(BATCH).enumerate() {
                let s = if k == 0 {
                    b.get(self.pending_off..).unwrap_or_default()
                } else {
                    &b[..]
                };
                slices[k] = IoSlice::new(s);
                n_slices = k + 1;
            }
            let n = match self.tcp.try_write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            self.progressed = true;
            self.advance(n);
        }
        Ok(true)
    }

    /// Plaintext rustls already decrypted (read with the publish answer, before the wire was
    /// made): the session must see it now, the socket will not become readable for it.
    pub(crate) fn take_buffered(&mut self, out: &mut Vec<u8>) {
        if let Some(c) = &mut self.tls {
            // A close or an error here shows again at the socket's next read.
            let _ = read_plaintext(c, out);
        }
    }

    /// Reads what the server sent without blocking, into `out` (plaintext), at most about
    /// [`READ_PER_WAKE`] (the caller holds the lock the ingest thread writes under; more is
    /// read at the next wake-up, the socket stays readable). `Ok(false)`: the server closed
    /// the connection.
    pub(crate) fn read_available(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        match &mut self.tls {
            None => loop {
                let mut buf = [0u8; 8192];
                if out.len() >= READ_PER_WAKE {
                    return Ok(true);
                }
                match self.tcp.try_read(&mut buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if would_block(&e) => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Some(c) => loop {
                if out.len() >= READ_PER_WAKE {
                    return Ok(true);
                }
                let eof = match c.read_tls(&mut SockIo(&self.tcp)) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if would_block(&e) => return Ok(true),
                    Err(e) => return Err(e),
                };
                c.process_new_packets()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                if !read_plaintext(c, out)? || eof {
                    return Ok(false);
                }
            },
        }
    }
}

/// Hands every piece to rustls (which takes all: its buffer limit is off).
fn tls_write_all(
    c: &mut rustls::ClientConnection,
    parts: &[Bytes],
    stats: &EgressStats,
) -> Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut bufs = &mut slices[..];
    let mut n = 0;
    while !bufs.is_empty() {
        let w = c
            .writer()
            .write_vectored(bufs)
            .map_err(|e| Error::from_net("TLS write", &e))?;
        if w == 0 {
            crate::bail!(Internal, "TLS write took nothing");
        }
        n += w;
        IoSlice::advance_slices(&mut bufs, w);
    }
    stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

/// Moves the plaintext rustls holds into `out`. `Ok(false)`: the server closed the TLS
/// session (close_notify, or the connection ended without it).
fn read_plaintext(c: &mut rustls::ClientConnection, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match c.reader().read(&mut buf) {
            Ok(0) => return Ok(false), // close_notify
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// What the live path shares between the ingest thread and the egress task.
pub(crate) struct OutState {
    pub(crate) wire: Option<Wire>,
    /// The latest metadata and sequence headers sent, re-sent first after a reconnect.
    pub(crate) headers: HeaderCache,
    meter: BitrateMeter,
    /// Stopped by the handle: no wire is installed any more.
    pub(crate) stopped: bool,
    batch: Vec<MediaFrame>,
    /// Serialized pieces of a batch, before they are queued on the wire.
    parts: Vec<Bytes>,
}

impl OutState {
    pub(crate) fn new() -> OutState {
        OutState {
            wire: None,
            headers: HeaderCache::default(),
            meter: BitrateMeter::new(),
            stopped: false,
            batch: Vec::with_capacity(BATCH),
            parts: Vec::with_capacity(4 * BATCH),
        }
    }
}

/// What [`pump_out`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// Everything queued was written (or there is no wire).
    Done,
    /// The socket would not take more: the task must wait for it.
    Blocked,
    /// A send is queued on the ingest ring; its completion pumps on.
    InFlight,
    /// The connection failed (the error is in the wire).
    Failed,
}

/// Writes what is pending, then drains the queue into the socket until it is empty or the
/// socket would block (on the io_uring receiver's thread: until a send is queued on its
/// ring). Never blocks. Call with the out lock held.
pub(crate) fn pump_out(q: &Arc<SharedQueue>, st: &mut OutState) -> Pumped {
    let OutState {
        wire,
        headers,
        meter,
        batch,
        parts,
        ..
    } = st;
    let Some(w) = wire.as_mut() else {
        return Pumped::Done;
    };
    if w.error.is_some() {
        return Pumped::Failed;
    }
    let stats = &q.stats;
    let r = (|| -> Result<Pumped> {
        loop {
            if w.inflight || w.send_on_ring(q) {
                return Ok(Pumped::InFlight);
            }
            if !w
                .flush(stats)
                .map_err(|e| Error::from_net("write to the ingest", &e))?
            {
                return Ok(Pumped::Blocked);
            }
            batch.clear();
            q.pop_batch(batch, BATCH);
            if batch.is_empty() {
                return Ok(Pumped::Done);
            }
            // Headers are cached before anything is written: a reconnect re-sends the newest.
            for f in batch.iter() {
                headers.remember(f);
            }
            // A batch is queued whole or not at all (an error fails the connection; nothing
            // of it may be left for the next one): `send_frames` takes back what it added on
            // an error, and `enqueue_parts` always leaves `parts` empty.
            meter.add(w.session.send_frames(batch, parts)?);
            w.enqueue_parts(parts, stats)?;
            stats
                .frames_out
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(bps) = meter.poll() {
                stats.bitrate_bps.store(bps, Ordering::Relaxed);
            }
        }
    })();
    match r {
        Ok(Pumped::Done) => {
            w.blocked_since = None;
            w.progressed = false;
            Pumped::Done
        }
        Ok(p @ (Pumped::InFlight | Pumped::Failed)) => p,
        Ok(Pumped::Blocked) => {
            if std::mem::take(&mut w.progressed) || w.blocked_since.is_none() {
                w.blocked_since = Some(Instant::now());
            }
            Pumped::Blocked
        }
        Err(e) => {
            w.error = Some(e);
            Pumped::Failed
        }
    }
}

/// A ring send of wire `id` completed (on the ingest thread): moves the wire on and pumps the
/// rest, or tells the task (the socket is full, the write failed, or the queue is closing).
fn ring_sent(q: &Arc<SharedQueue>, id: u64, r: std::io::Result<usize>) {
    if let Ok(n @ 1..) = r {
        // Counted even if the wire is gone by now: the bytes went out before it was let go
        // of (a send not issued by then fails, see `refuse_inflight`).
        q.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        q.stats.ring_sends.fetch_add(1, Ordering::Relaxed);
    }
    let mut st = q.out();
    let Some(w) = st.wire.as_mut() else {
        return; // stopped, or the connection was let go of
    };
    if w.id != id || !w.inflight {
        return;
    }
    w.inflight = false;
    match r {
        Ok(0) => {
            let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
            w.error = Some(Error::from_net("write to the ingest", &e));
        }
        Ok(n) => {
            w.progressed = true;
            w.advance(n);
        }
        Err(e) if would_block(&e) => {
            if std::mem::take(&mut w.progressed) || w.blocked_since.is_none() {
                w.blocked_since = Some(Instant::now());
            }
        }
        Err(e) => w.error = Some(Error::from_net("write to the ingest", &e)),
    }
    let wake = if w.error.is_some() || w.blocked_since.is_some() {
        true
    } else {
        q.pump_locked(&mut st)
    };
    drop(st);
    if wake || q.closed.load(Ordering::Acquire) {
        q.notify.notify_one();
    }
}

/// Feeds the server's bytes to the session; replies are queued on the wire (written by the
/// next [`pump_out`]).
pub(crate) fn on_server_bytes(w: &mut Wire, bytes: &[u8], stats: &EgressStats) -> Result<()> {
    let mut out = Vec::new();
    w.session.handle_input(bytes, &mut out)?;
    for o in out {
        match o {
            Output::Send(b) => w.enqueue(b, stats)?,
            Output::Acknowledged(n) => {
                stats.bytes_acked.fetch_add(u64::from(n), Ordering::Relaxed);
            }
            Output::Published => {}
        }
    }
    Ok(())
}
