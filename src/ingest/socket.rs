//! The plain-socket receiver: a blocking `recv` loop with a 100 ms timeout to notice `stop`,
//! or that the stream is to move to the shared io_uring receiver (then the socket and the sink
//! are handed back, and nothing is lost: datagrams not read yet wait in the socket).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{DatagramSink, IngestStats, MAX_DATAGRAM};
use crate::clock::monotonic_ns;
use crate::error::Result;

/// How often a blocked receive looks at `stop` and `moving`.
pub(super) const READ_TIMEOUT: Duration = Duration::from_millis(100);

pub(super) struct Ctx {
    pub sock: UdpSocket,
    pub stats: Arc<IngestStats>,
    pub stop: Arc<AtomicBool>,
    /// Set when the stream is to move to the shared receiver.
    pub moving: Option<Arc<AtomicBool>>,
}

/// Starts the receiving thread; `then` runs on it with the socket and the sink if the stream
/// was asked to move (not if it stopped), and its result is the thread's.
pub(super) fn spawn<S: DatagramSink, T: Send + 'static>(
    ctx: Ctx,
    sink: S,
    then: impl FnOnce(UdpSocket, S) -> Option<T> + Send + 'static,
) -> Result<JoinHandle<Option<T>>> {
    ctx.sock
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| crate::err!(Io, "ingest: socket timeout: {e}"))?;
    std::thread::Builder::new()
        .name("onair-ingest".into())
        .spawn(move || run(ctx, sink).and_then(|(sock, sink)| then(sock, sink)))
        .map_err(|e| crate::err!(Io, "ingest: cannot start thread: {e}"))
}

/// Receives until stopped (the sink then had `on_stop`: `None`), or until asked to move
/// (`Some`: the socket and the sink, which has had `on_batch_end` after its last datagram).
pub(super) fn run<S: DatagramSink>(ctx: Ctx, mut sink: S) -> Option<(UdpSocket, S)> {
    // One byte more than the largest datagram accepted, to detect oversized ones.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while !ctx.stop.load(Ordering::Acquire) {
        if ctx
            .moving
            .as_ref()
            .is_some_and(|m| m.load(Ordering::Acquire))
        {
            // The idle hand-on comes from the ring next: not a gap of two ticks meanwhile.
            sink.on_batch_end(monotonic_ns());
            return Some((ctx.sock, sink));
        }
        match ctx.sock.recv(&mut buf) {
            Ok(n) => {
                let now = monotonic_ns();
                if n > MAX_DATAGRAM {
                    ctx.stats.truncated.fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.stats.datagrams.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    sink.on_datagram(&buf[..n], now);
                }
                sink.on_batch_end(now);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                sink.on_batch_end(monotonic_ns());
            }
            Err(e) => {
                ctx.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "ingest: receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    sink.on_stop(monotonic_ns());
    None
}
