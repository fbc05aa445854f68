//! The io_uring receiver: one multishot `recvmsg` on the socket, fed by a provided-buffer ring.
//! The kernel picks a buffer per datagram; we hand its payload to the sink in place and give
//! the buffer back to the ring. The multishot is re-armed whenever the kernel ends it (ENOBUFS
//! when every buffer is in use, CQ overflow), and cancelled before the ring is dropped.
//!
//! This is the only module of onair with `unsafe` code.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::types::{BufRingEntry, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, types};
use nix::libc;

use super::socket::Ctx;
use super::{DatagramSink, MAX_DATAGRAM};
use crate::clock::monotonic_ns;
use crate::error::{Error, Result};

/// Size of one provided buffer: the recvmsg header (16 bytes) + the largest datagram + 1 so an
/// oversized datagram shows as truncated.
const BUF_SIZE: usize = 16 + MAX_DATAGRAM + 1;
const BGID: u16 = 0x0A1;
const RECV_UD: u64 = 1;
const CANCEL_UD: u64 = 2;

/// The provided-buffer ring: `entries` descriptors shared with the kernel, and the buffers the
/// kernel writes datagrams into. Both are raw allocations: the kernel writes buffers while we
/// read others, so no Rust reference ever spans more than the one completed buffer.
struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    tail: u16,
}

/// Offsets in `struct io_uring_buf` (Linux UAPI, include/uapi/linux/io_uring.h):
/// `{ __u64 addr; __u32 len; __u16 bid; __u16 resv; }`, 16 bytes; `resv` of entry 0 is the
/// ring's shared tail.
const BUF_ADDR: usize = 0;
const BUF_LEN: usize = 8;
const BUF_BID: usize = 12;

fn alloc_zeroed_raw(layout: Layout) -> Result<NonNull<u8>> {
    // SAFETY: every layout passed here has a non-zero size (entries ≥ 1).
    let ptr = unsafe { alloc_zeroed(layout) };
    NonNull::new(ptr)
        .ok_or_else(|| crate::err!(ResourceExhausted, "io_uring buffer allocation failed"))
}

impl BufRing {
    fn new(entries: u16) -> Result<Self> {
        if !entries.is_power_of_two() {
            crate::bail!(
                InvalidArgument,
                "io_uring buffer count must be a power of two"
            );
        }
        let n = usize::from(entries);
        let ring_layout = Layout::from_size_align(std::mem::size_of::<BufRingEntry>() * n, 4096)
            .map_err(|e| crate::err!(Internal, "buf ring layout: {e}"))?;
        let bufs_layout = Layout::from_size_align(BUF_SIZE * n, 64)
            .map_err(|e| crate::err!(Internal, "buffer layout: {e}"))?;
        let ring = alloc_zeroed_raw(ring_layout)?.cast::<BufRingEntry>();
        let bufs = match alloc_zeroed_raw(bufs_layout) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: allocated just above with this layout; never shared with the kernel.
                unsafe { dealloc(ring.as_ptr().cast::<u8>(), ring_layout) };
                return Err(e);
            }
        };
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            tail: 0,
        };
        for bid in 0..entries {
            br.provide(bid);
        }
        Ok(br)
    }

    /// Writes the descriptor of buffer `bid` at the local tail (visible after `publish`).
    fn provide(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        let bid = bid & (self.entries - 1);
        // SAFETY: bid < entries, so the offset stays inside the buffer allocation.
        let addr = unsafe { self.bufs.as_ptr().add(usize::from(bid) * BUF_SIZE) } as u64;
        // SAFETY: idx < entries keeps the descriptor inside the ring allocation; the kernel
        // reads descriptors only between its head and the published tail, and this slot is past
        // the published tail until `publish`. Fields are written through raw pointers at their
        // UAPI offsets (aligned: the entry is 16-byte aligned), never through a reference that
        // would also cover entry 0's shared tail.
        unsafe {
            let entry = self.ring.as_ptr().add(idx).cast::<u8>();
            entry.add(BUF_ADDR).cast::<u64>().write_volatile(addr);
            entry
                .add(BUF_LEN)
                .cast::<u32>()
                .write_volatile(BUF_SIZE as u32);
            entry.add(BUF_BID).cast::<u16>().write_volatile(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every descriptor written so far visible to the kernel (release store).
    fn publish(&self) {
        // SAFETY: `ring` points to the first entry of the ring; `tail` returns the address of
        // the shared tail field, which the kernel reads atomically; u16 alignment is guaranteed
        // by the 4096-byte alignment of the allocation.
        let tail = unsafe { &*BufRingEntry::tail(self.ring.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has completed.
    ///
    /// # Safety
    /// Only for a buffer id taken from a completion, before it is provided again: the kernel
    /// does not write a buffer between completing it and getting it back.
    unsafe fn completed(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > BUF_SIZE {
            return None;
        }
        // SAFETY: in bounds (checked above); the caller guarantees no concurrent write.
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(usize::from(bid) * BUF_SIZE), len)
        })
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring is dropped (or the buffer
        // ring unregistered) before `BufRing`, so the kernel no longer references either.
        unsafe {
            dealloc(self.ring.as_ptr().cast::<u8>(), self.ring_layout);
            dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

type SpawnError<S> = (Error, Ctx, S);

/// Starts the receiver thread. Setup happens on that thread; if the kernel refuses io_uring the
/// socket and sink come back so the caller can fall back.
pub(super) fn spawn<S: DatagramSink>(
    ctx: Ctx,
    sink: S,
    entries: u16,
) -> Result<JoinHandle<()>, SpawnError<S>> {
    let (tx, rx) = mpsc::sync_channel::<Result<(), SpawnError<S>>>(1);
    let thread = std::thread::Builder::new()
        .name("onair-ingest-uring".into())
        .spawn(move || match Receiver::setup(&ctx, entries) {
            Ok(mut r) => {
                let _ = tx.send(Ok(()));
                r.run(&ctx, sink);
            }
            Err(e) => {
                let _ = tx.send(Err((e, ctx, sink)));
            }
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            // The closure (with ctx and sink) is gone with the failed spawn: nothing to fall
            // back with. This only happens when the process cannot create threads.
            tracing::error!(error = %e, "ingest: cannot start thread");
            std::process::abort();
        }
    };
    match rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            tracing::error!("ingest: io_uring setup thread ended without an answer");
            std::process::abort();
        }
    }
}

struct Receiver {
    /// Multishot ends with an error (not ENOBUFS) since the last datagram.
    failed_arms: u32,
    ring: IoUring,
    bufs: BufRing,
    msghdr: Box<libc::msghdr>,
    fd: i32,
}

fn uring_err(what: &str, e: &std::io::Error) -> Error {
    crate::err!(Io, "io_uring {what}: {e}")
}

impl Receiver {
    fn setup(ctx: &Ctx, entries: u16) -> Result<Self> {
        let cq = (u32::from(entries) * 8).max(256);
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .build(64)
            .map_err(|e| uring_err("setup", &e))?;
        let bufs = BufRing::new(entries)?;
        // SAFETY: the ring memory is valid for `entries` descriptors, page-aligned, and lives
        // (in `self.bufs`) until after `unregister_buf_ring` in `shutdown`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring.as_ptr() as u64, entries, BGID, 0)
                .map_err(|e| uring_err("register buffer ring", &e))?;
        }
        bufs.publish();
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
        let msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        let mut r = Receiver {
            failed_arms: 0,
            ring,
            bufs,
            msghdr,
            fd: ctx.sock.as_raw_fd(),
        };
        r.arm()?;
        r.ring.submit().map_err(|e| uring_err("submit", &e))?;
        Ok(r)
    }

    /// Queues the multishot recvmsg.
    fn arm(&mut self) -> Result<()> {
        let sqe = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.msghdr, BGID)
            .build()
            .user_data(RECV_UD);
        // SAFETY: the msghdr (heap, owned by self) and the socket outlive the operation: it is
        // cancelled and reaped in `shutdown` before either is dropped.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| crate::err!(ResourceExhausted, "io_uring submission queue full"))
    }

    fn run<S: DatagramSink>(&mut self, ctx: &Ctx, mut sink: S) {
        let ts = Timespec::new().nsec(100_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        while !ctx.stop.load(Ordering::Acquire) {
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    ctx.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "ingest: io_uring wait failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let now = monotonic_ns();
            let rearm = self.reap(ctx, &mut sink, now);
            if rearm {
                ctx.stats.rearms.fetch_add(1, Ordering::Relaxed);
                if self.failed_arms >= 3 {
                    // The kernel keeps refusing the receive: do not spin.
                    if self.failed_arms == 3 {
                        tracing::warn!("ingest: io_uring receive keeps failing; retrying slowly");
                    }
                    let pause = u64::from(self.failed_arms.min(100)) * 10;
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
                if let Err(e) = self.arm() {
                    tracing::warn!(error = %e, "ingest: re-arm failed");
                }
            }
            sink.on_batch_end(now);
        }
        self.shutdown();
        sink.on_stop(monotonic_ns());
    }

    /// Handles every completion; returns whether the multishot ended and must be re-armed.
    fn reap<S: DatagramSink>(&mut self, ctx: &Ctx, sink: &mut S, now: u64) -> bool {
        let mut rearm = false;
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            if cqe.user_data() != RECV_UD {
                continue;
            }
            if !cqueue::more(cqe.flags()) {
                rearm = true;
            }
            let Ok(len) = usize::try_from(cqe.result()) else {
                if cqe.result() != -libc::ENOBUFS {
                    ctx.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                    self.failed_arms = self.failed_arms.saturating_add(1);
                }
                continue;
            };
            self.failed_arms = 0;
            let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                continue;
            };
            // SAFETY: `bid` comes from this completion and is provided again only below.
            match unsafe { self.bufs.completed(bid, len) } {
                Some(data) => match RecvMsgOut::parse(data, &self.msghdr) {
                    Ok(msg)
                        if msg.is_payload_truncated()
                            || msg.payload_data().len() > MAX_DATAGRAM =>
                    {
                        ctx.stats.truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(msg) => {
                        let payload = msg.payload_data();
                        ctx.stats.datagrams.fetch_add(1, Ordering::Relaxed);
                        ctx.stats
                            .bytes
                            .fetch_add(payload.len() as u64, Ordering::Relaxed);
                        sink.on_datagram(payload, now);
                    }
                    Err(()) => {
                        ctx.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                None => {
                    ctx.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.bufs.provide(bid);
        }
        drop(cq);
        self.bufs.publish();
        rearm
    }

    /// Cancels the multishot, reaps its final completion, unregisters the buffer ring.
    fn shutdown(&mut self) {
        let cancel = opcode::AsyncCancel::new(RECV_UD)
            .build()
            .user_data(CANCEL_UD);
        // SAFETY: AsyncCancel references no memory of ours.
        let pushed = unsafe { self.ring.submission().push(&cancel) }.is_ok();
        if pushed {
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            for _ in 0..10 {
                let _ = self.ring.submitter().submit_with_args(1, &args);
                let done = self
                    .ring
                    .completion()
                    .any(|c| c.user_data() == RECV_UD && !cqueue::more(c.flags()));
                if done {
                    break;
                }
            }
        }
        if let Err(e) = self.ring.submitter().unregister_buf_ring(BGID) {
            tracing::debug!(error = %e, "io_uring: unregister buffer ring");
        }
    }
}
