//! The shared io_uring receiver: one thread, one ring and one provided-buffer pool serve every
//! io_uring ingest socket of the process. Each socket has one multishot `recv`; the kernel
//! picks a buffer of the shared pool per datagram; we hand its payload to that socket's sink in
//! place and give the buffer back to the pool. The thread waits for the next completion and
//! handles everything that completed by then (with many streams a wait brings many); sinks that
//! received get `on_batch_end` after every 8 datagram completions and at the end of the batch,
//! so a frame completed early in a large batch is not held until the whole batch is parsed.
//!
//! No batch timer by default: waiting a minimum time for more completions (`min_wait`, or a
//! timeout on older kernels) measured more CPU per stream on this class of machine (2-core VM:
//! each timer costs more than the wake-ups it saves) and more latency. The environment variable
//! `ONAIR_INGEST_BATCH_US` (0–5000) turns it on for benchmarks.
//!
//! Sockets are added and removed by commands from other threads (an eventfd read on the ring
//! wakes the thread). Removing a socket cancels its multishot and waits for the final
//! completion; the buffers of its datagrams went back to the pool as they were handled, and the
//! socket is closed only then. A multishot the kernel ends (ENOBUFS when every buffer is in
//! use, CQ overflow) is re-armed.
//!
//! Egress writes can ride on the same ring ([`queue_send`]): a relay's frames, serialized on
//! this thread, are sent by a `sendmsg` entry that the next wait submits, so the write and the
//! sleep are one `io_uring_enter`. The receiver of those bytes (on loopback, the sink) is then
//! woken as this thread goes to sleep instead of preempting it after a `writev`. The send is
//! non-blocking (`MSG_DONTWAIT`: the kernel completes it at once, with what the socket took or
//! `EAGAIN`, never parks it); the writer is told on this thread when it completed.
//!
//! This is the only module of onair with `unsafe` code.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use io_uring::types::{BufRingEntry, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use nix::libc;

use super::{DatagramSink, IngestStats, MAX_DATAGRAM};
use crate::clock::monotonic_ns;
use crate::error::{Error, Result};

/// Size of one provided buffer: the largest datagram and more (a multiple of 64, so every
/// buffer starts on a cache line): a datagram longer than `MAX_DATAGRAM` shows as such, cut or
/// not. A plain `recv` puts the datagram at the buffer's start; `recvmsg` wrote a 16-byte
/// header first, one more write to a cold cache line per datagram (3 % of the relays' samples
/// at 64 streams).
const BUF_SIZE: usize = MAX_DATAGRAM + 64;
const BGID: u16 = 0x0A1;
/// Descriptor slots of the buffer ring: the most buffers the pool can hold (33 MB).
const RING_ENTRIES: u16 = 16384;
/// Buffers are allocated in chunks of this many (132 KB), as sockets join.
const CHUNK: usize = 64;
/// Completion queue: twice the buffer count. Each datagram completion holds a buffer, but
/// completions without one come on top (a multishot ended by ENOBUFS, cancels, the wake-up
/// read); the kernel ends every multishot that posts while the queue overflows.
const CQ_ENTRIES: u32 = 2 * RING_ENTRIES as u32;
const SQ_ENTRIES: u32 = 256;
/// How long a wait collects completions before returning with what it has, while traffic is
/// dense (0: no batch wait). Was 500 µs, then 250 µs, then 120 µs: each step measured lower
/// latency; 0 measured both less CPU per stream (K = 16, 64, 256) and lower latency than
/// 120 µs (A/B in docs/performance.md).
pub const BATCH_WAIT_US: u32 = 0;
/// Longest a removal waits for the socket's final completion.
const REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn env_num(name: &str) -> Option<i64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Lowers the calling thread's nice value to `nice` (benchmarks: `ONAIR_INGEST_NICE`, −20–0).
fn set_nice(nice: i64) {
    let Ok(nice) = libc::c_int::try_from(nice.clamp(-20, 0)) else {
        return;
    };
    // SAFETY: gettid and setpriority take no pointers; setpriority on a thread id changes
    // only that thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "ingest: nice not set");
    }
}
/// With a batch wait: enough completions to return before it has passed (a burst).
const BATCH_WANT: usize = 4096;
/// Datagram completions handled before the sinks that received get `on_batch_end` (a large
/// batch is handed on in parts: latency at 256 streams).
const FLUSH_EVERY: usize = 8;
/// The longest wait without completions: sinks get `on_batch_end` at least this often.
const IDLE_TICK_NS: u64 = 100_000_000;

/// user_data: bit 63 marks a cancel's own completion, bit 62 the wake-up read; otherwise the
/// value is a socket's id (generation << 32 | slot).
const CANCEL_FLAG: u64 = 1 << 63;
const WAKE_UD: u64 = 1 << 62;
/// Bit 61: an egress send's completion; the low bits are its index in `Receiver::sends`.
const SEND_FLAG: u64 = 1 << 61;
/// Most pieces one send takes (the rest waits for the next).
pub(crate) const SEND_MAX_PIECES: usize = 64;

/// A write to a connected socket, issued from the receiver's ring (see [`queue_send`]).
pub(crate) struct SendReq {
    /// Keeps the descriptor open until the send completed.
    pub sock: Arc<dyn AsRawFd + Send + Sync>,
    /// Written in order, starting `skip` bytes into the first (at most [`SEND_MAX_PIECES`]).
    pub pieces: Vec<Bytes>,
    pub skip: usize,
    /// Called on the receiver thread with what the socket took (possibly less than all), or
    /// the error (`WouldBlock`: nothing taken now).
    pub done: Box<dyn FnOnce(std::io::Result<usize>) + Send>,
}

/// A send the kernel may read: the header and vector it was given, and what they point into.
struct SendOp {
    /// Keeps the descriptor open; the `Bytes` `iov` points into.
    sock: Arc<dyn AsRawFd + Send + Sync>,
    _pieces: Vec<Bytes>,
    /// Taken when answered.
    done: Option<Box<dyn FnOnce(std::io::Result<usize>) + Send>>,
    iov: Vec<libc::iovec>,
    msghdr: libc::msghdr,
}

thread_local! {
    /// Sends queued on the receiver thread for its next wait; `None` on every other thread.
    static SENDS: RefCell<Option<Vec<SendReq>>> = const { RefCell::new(None) };
}

impl SendOp {
    fn new(req: SendReq) -> Box<SendOp> {
        let SendReq {
            sock,
            pieces,
            skip,
            done,
        } = req;
        let mut iov = Vec::with_capacity(pieces.len().min(SEND_MAX_PIECES));
        for (k, b) in pieces.iter().take(SEND_MAX_PIECES).enumerate() {
            let from = if k == 0 { skip.min(b.len()) } else { 0 };
            let s = &b[from..];
            if !s.is_empty() {
                iov.push(libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                });
            }
        }
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
        let msghdr: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut op = Box::new(SendOp {
            sock,
            _pieces: pieces,
            done: Some(done),
            iov,
            msghdr,
        });
        // The vector's heap block and the `Bytes` it points into do not move with the box.
        op.msghdr.msg_iov = op.iov.as_mut_ptr();
        // `size_t` with glibc, `int` with musl; at most SEND_MAX_PIECES either way.
        op.msghdr.msg_iovlen = op.iov.len() as _;
        op
    }
}

impl SendOp {
    /// Tells the writer how the send ended (once).
    fn answer(&mut self, r: std::io::Result<usize>) {
        if let Some(done) = self.done.take() {
            done(r);
        }
    }
}

/// Sends in the ring and not yet reaped, by index (boxed: the kernel reads their headers).
#[derive(Default)]
struct Sends {
    ops: Vec<Option<Box<SendOp>>>,
    free: Vec<usize>,
}

impl Sends {
    fn insert(&mut self, op: Box<SendOp>) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        }
    }

    fn take(&mut self, idx: usize) -> Option<Box<SendOp>> {
        let op = self.ops.get_mut(idx)?.take()?;
        self.free.push(idx);
        Some(op)
    }

    /// How many are in the ring.
    fn out(&self) -> usize {
        self.ops.len() - self.free.len()
    }
}

/// Whether the calling thread is an io_uring receiver that takes sends ([`queue_send`]).
pub(crate) fn sends_here() -> bool {
    SENDS.with(|s| s.borrow().is_some())
}

/// Queues a send for the receiver's next wait. On any other thread it comes back.
pub(crate) fn queue_send(req: SendReq) -> std::result::Result<(), SendReq> {
    SENDS.with(|s| match s.borrow_mut().as_mut() {
        Some(v) => {
            v.push(req);
            Ok(())
        }
        None => Err(req),
    })
}

/// Offsets in `struct io_uring_buf` (Linux UAPI, include/uapi/linux/io_uring.h):
/// `{ __u64 addr; __u32 len; __u16 bid; __u16 resv; }`, 16 bytes; `resv` of entry 0 is the
/// ring's shared tail.
const BUF_ADDR: usize = 0;
const BUF_LEN: usize = 8;
const BUF_BID: usize = 12;

fn alloc_zeroed_raw(layout: Layout) -> Result<NonNull<u8>> {
    // SAFETY: every layout passed here has a non-zero size (RING_ENTRIES and CHUNK ≥ 1).
    let ptr = unsafe { alloc_zeroed(layout) };
    NonNull::new(ptr)
        .ok_or_else(|| crate::err!(ResourceExhausted, "io_uring buffer allocation failed"))
}

/// The provided-buffer pool: `RING_ENTRIES` descriptors shared with the kernel, and the
/// buffers the kernel writes datagrams into, allocated in chunks as the pool grows (it never
/// shrinks). All raw allocations: the kernel writes buffers while we read others, so no Rust
/// reference ever spans more than the one completed buffer.
struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    chunks: Vec<NonNull<u8>>,
    chunk_layout: Layout,
    /// Buffers in the pool (bids `0..count`).
    count: usize,
    tail: u16,
    /// Not freed on drop: the kernel may still reference it.
    leaked: bool,
}

impl BufRing {
    fn new() -> Result<Self> {
        let ring_layout = Layout::from_size_align(
            std::mem::size_of::<BufRingEntry>() * usize::from(RING_ENTRIES),
            4096,
        )
        .map_err(|e| crate::err!(Internal, "buf ring layout: {e}"))?;
        let chunk_layout = Layout::from_size_align(BUF_SIZE * CHUNK, 64)
            .map_err(|e| crate::err!(Internal, "buffer layout: {e}"))?;
        let ring = alloc_zeroed_raw(ring_layout)?.cast::<BufRingEntry>();
        Ok(BufRing {
            ring,
            ring_layout,
            chunks: Vec::new(),
            chunk_layout,
            count: 0,
            tail: 0,
            leaked: false,
        })
    }

    /// Grows the pool to at least `wanted` buffers (whole chunks, at most `RING_ENTRIES`);
    /// the new buffers are provided at once (visible after `publish`).
    fn grow_to(&mut self, wanted: usize) -> Result<()> {
        let wanted = wanted.min(usize::from(RING_ENTRIES));
        while self.count < wanted {
            let chunk = alloc_zeroed_raw(self.chunk_layout)?;
            self.chunks.push(chunk);
            for _ in 0..CHUNK {
                let bid = u16::try_from(self.count)
                    .map_err(|_| crate::err!(Internal, "buffer id out of range"))?;
                self.count += 1;
                self.provide(bid);
            }
        }
        Ok(())
    }

    fn buf_ptr(&self, bid: u16) -> Option<*mut u8> {
        let bid = usize::from(bid);
        let chunk = self.chunks.get(bid / CHUNK)?;
        // SAFETY: (bid % CHUNK) * BUF_SIZE < CHUNK * BUF_SIZE, the chunk allocation's size.
        Some(unsafe { chunk.as_ptr().add((bid % CHUNK) * BUF_SIZE) })
    }

    /// Writes the descriptor of buffer `bid` (< count) at the local tail (visible after
    /// `publish`). At most `count ≤ RING_ENTRIES` buffers are ever outstanding, so the tail
    /// never overruns the kernel's head.
    fn provide(&mut self, bid: u16) {
        let Some(addr) = self.buf_ptr(bid) else {
            return;
        };
        let idx = usize::from(self.tail & (RING_ENTRIES - 1));
        // SAFETY: idx < RING_ENTRIES keeps the descriptor inside the ring allocation; the
        // kernel reads descriptors only between its head and the published tail, and this slot
        // is past the published tail until `publish`. Fields are written through raw pointers at
        // their UAPI offsets (aligned: the entry is 16-byte aligned), never through a reference
        // that would also cover entry 0's shared tail.
        unsafe {
            let entry = self.ring.as_ptr().add(idx).cast::<u8>();
            entry
                .add(BUF_ADDR)
                .cast::<u64>()
                .write_volatile(addr as u64);
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
        if len > BUF_SIZE {
            return None;
        }
        let ptr = self.buf_ptr(bid)?;
        // SAFETY: the buffer is BUF_SIZE bytes (checked above); the caller guarantees that the
        // kernel does not write it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated in `new`/`grow_to` with these layouts; `Receiver`'s drop cancels
        // every receive and unregisters the ring before `BufRing` drops (or leaks the pool
        // when it cannot be sure), so the kernel no longer references any of them.
        unsafe {
            for c in &self.chunks {
                dealloc(c.as_ptr(), self.chunk_layout);
            }
            dealloc(self.ring.as_ptr().cast::<u8>(), self.ring_layout);
        }
    }
}

/// Counters of the shared receiver (all sockets).
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Returns from the completion wait (wake-ups of the ingest thread).
    pub wakeups: AtomicU64,
    /// Datagram completions handled.
    pub completions: AtomicU64,
    /// Buffers in the pool.
    pub buffers: AtomicU64,
}

pub(super) struct AddReq {
    pub sock: UdpSocket,
    pub sink: Box<dyn DatagramSink>,
    pub stats: Arc<IngestStats>,
    /// Buffers this socket adds to the pool.
    pub buffers: usize,
}

type AddReply = std::result::Result<u64, (Error, AddReq)>;

enum Cmd {
    Add(AddReq, mpsc::SyncSender<AddReply>),
    Remove(u64, mpsc::SyncSender<()>),
}

fn gone() -> Error {
    crate::err!(Unavailable, "io_uring receiver is gone")
}

/// The handle other threads hold on the shared receiver.
pub(super) struct Shared {
    cmds: mpsc::SyncSender<Cmd>,
    wake: File,
    pub stats: Arc<SharedStats>,
    /// Cleared when the receiver thread ends, however it ends (a panicking sink in an
    /// unwinding build): the next ingest start then launches a new receiver.
    alive: Arc<AtomicBool>,
}

/// Clears the flag when dropped, i.e. when the receiver thread's closure ends or unwinds.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Shared {
    /// Starts the receiver thread; fails if the kernel refuses io_uring.
    pub fn start() -> Result<Shared> {
        let (cmds, rx) = mpsc::sync_channel::<Cmd>(256);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let wake = eventfd()?;
        let wake_rd = wake
            .try_clone()
            .map_err(|e| crate::err!(Io, "eventfd clone: {e}"))?;
        let stats = Arc::new(SharedStats::default());
        let st = stats.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new()
            .name("onair-ingest-uring".into())
            .spawn(move || {
                let _guard = guard;
                match Receiver::setup(OwnedFd::from(wake_rd), st) {
                    Ok(mut r) => {
                        let _ = ready_tx.send(Ok(()));
                        r.run(&rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| crate::err!(Io, "ingest: cannot start thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Shared {
                cmds,
                wake,
                stats,
                alive,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(crate::err!(
                Internal,
                "io_uring receiver ended during setup"
            )),
        }
    }

    fn wake(&self) {
        let _ = (&self.wake).write(&1u64.to_ne_bytes());
    }

    /// Whether the receiver thread still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Adds a socket; its multishot is armed before the thread next waits. On failure the
    /// request comes back when it can, so the caller can fall back.
    pub fn add(&self, req: AddReq) -> std::result::Result<u64, (Error, Option<AddReq>)> {
        let (tx, rx) = mpsc::sync_channel(1);
        match self.cmds.send(Cmd::Add(req, tx)) {
            Ok(()) => {}
            Err(mpsc::SendError(Cmd::Add(req, _))) => return Err((gone(), Some(req))),
            Err(_) => return Err((gone(), None)),
        }
        self.wake();
        match rx.recv() {
            Ok(Ok(id)) => Ok(id),
            Ok(Err((e, req))) => Err((e, Some(req))),
            Err(_) => Err((gone(), None)),
        }
    }

    /// Removes a socket: cancels its receive, waits for the final completion, calls the
    /// sink's `on_stop` (on the receiver thread) and closes the socket. Returns when done.
    pub fn remove(&self, id: u64) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.cmds.send(Cmd::Remove(id, tx)).is_ok() {
            self.wake();
            // The final completion normally comes within a wait (≤ 100 ms); never hang the
            // caller (a relay being stopped) on a receive the kernel did not end.
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REMOVE_TIMEOUT) {
                tracing::error!(
                    "io_uring ingest: a socket's receive was not ended within {REMOVE_TIMEOUT:?}; \
                     its relay stops without it"
                );
            }
        }
    }
}

/// A blocking eventfd (io_uring polls it; a write never blocks before 2^64 - 2 wake-ups).
fn eventfd() -> Result<File> {
    // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(crate::err!(
            Io,
            "eventfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One socket on the ring.
struct Slot {
    id: u64,
    sock: UdpSocket,
    sink: Box<dyn DatagramSink>,
    stats: Arc<IngestStats>,
    buffers: usize,
    /// A multishot receive is in flight.
    armed: bool,
    /// Its multishot ended and must be re-armed.
    rearm: bool,
    /// Multishot ends with an error (not ENOBUFS) since the last datagram.
    failed_arms: u32,
    /// When a socket that keeps failing may be re-armed.
    retry_at_ns: u64,
    /// Got a datagram since its sink was last handed on (`on_batch_end`).
    touched: bool,
    /// Being removed: the caller waits for this.
    removing: Option<mpsc::SyncSender<()>>,
    /// The cancel of its receive is queued.
    cancel_sent: bool,
}

struct Receiver {
    ring: IoUring,
    bufs: BufRing,
    /// Buffers the sockets asked for (the pool grows to this, never shrinks).
    wanted: usize,
    wake: OwnedFd,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    generation: u32,
    touched: Vec<usize>,
    /// The kernel supports `min_wait` (6.12).
    min_wait: bool,
    batch_us: u32,
    /// With a batch wait only: the last wait returned more than one completion, the next one
    /// batches.
    busy: bool,
    /// Consecutive failed waits (logged at powers of two).
    wait_failures: u64,
    last_tick_ns: u64,
    stats: Arc<SharedStats>,
    /// The buffer ring is registered with the kernel.
    registered: bool,
    /// Egress sends queued in the ring and not yet reaped (boxed: the kernel reads their
    /// headers), and the free indices.
    sends: Sends,
    /// Sends taken from the thread's queue (kept for its capacity).
    send_reqs: Vec<SendReq>,
}

fn uring_err(what: &str, e: &std::io::Error) -> Error {
    crate::err!(Io, "io_uring {what}: {e}")
}

fn build_ring() -> std::io::Result<IoUring> {
    // Deferred task running: completions are produced when this (only) thread waits, which
    // is what lets a wait gather a batch without being woken for each datagram. It needs
    // kernel 6.1, which is also the first with everything else used here (multishot recv
    // came in 6.0, buffer rings in 5.19): an older kernel refuses the ring and the ingest
    // falls back to plain sockets, rather than arming receives it may not understand.
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES)
}

impl Receiver {
    fn setup(wake: OwnedFd, stats: Arc<SharedStats>) -> Result<Self> {
        let ring = build_ring().map_err(|e| uring_err("setup", &e))?;
        let min_wait = ring.params().is_feature_min_timeout();
        if let Some(n) = env_num("ONAIR_INGEST_NICE") {
            set_nice(n);
        }
        let bufs = BufRing::new()?;
        let mut r = Receiver {
            ring,
            bufs,
            wanted: 0,
            wake,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            slots: Vec::new(),
            free: Vec::new(),
            generation: 0,
            touched: Vec::new(),
            min_wait,
            batch_us: env_num("ONAIR_INGEST_BATCH_US")
                .and_then(|v| u32::try_from(v.clamp(0, 5000)).ok())
                .unwrap_or(BATCH_WAIT_US),
            busy: false,
            wait_failures: 0,
            last_tick_ns: 0,
            stats,
            registered: false,
            sends: Sends::default(),
            send_reqs: Vec::new(),
        };
        // SAFETY: the ring memory is valid for RING_ENTRIES descriptors, page-aligned, and
        // lives (in `r.bufs`) until after `unregister_buf_ring` in `Drop`.
        unsafe {
            r.ring
                .submitter()
                .register_buf_ring_with_flags(r.bufs.ring.as_ptr() as u64, RING_ENTRIES, BGID, 0)
                .map_err(|e| uring_err("register buffer ring", &e))?;
        }
        r.registered = true;
        SENDS.with(|s| *s.borrow_mut() = Some(Vec::new()));
        r.arm_wake();
        r.ring.submit().map_err(|e| uring_err("submit", &e))?;
        Ok(r)
    }

    /// Queues an entry, submitting first when the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry queued here references only memory that outlives its
            // operation: the wake buffer (owned by `self`, boxed, dropped only after every
            // operation is cancelled and reaped, see `Drop`), sockets (closed only after
            // their final completion), a send's header, vector and the `Bytes` and socket they
            // point into (boxed in `self.sends` until its completion is reaped, or leaked by
            // `Drop`), or nothing (cancels).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return true;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "ingest: io_uring submit failed");
            }
        }
        false
    }

    /// Puts the sends queued on this thread ([`queue_send`]) in the ring, for the next wait to
    /// submit. A send the ring has no room for is answered `WouldBlock` (its writer then
    /// waits for the socket itself).
    fn queue_sends(&mut self) {
        SENDS.with(|s| {
            if let Some(v) = s.borrow_mut().as_mut() {
                std::mem::swap(v, &mut self.send_reqs);
            }
        });
        let mut reqs = std::mem::take(&mut self.send_reqs);
        for req in reqs.drain(..) {
            let op = SendOp::new(req);
            let fd: RawFd = op.sock.as_raw_fd();
            let msg: *const libc::msghdr = &op.msghdr;
            // In place before the entry is queued: `push` may submit it at once.
            let idx = self.sends.insert(op);
            let sqe = opcode::SendMsg::new(types::Fd(fd), msg)
                .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                .build()
                .user_data(SEND_FLAG | idx as u64);
            if !self.push(&sqe)
                && let Some(mut op) = self.sends.take(idx)
            {
                op.answer(Err(std::io::ErrorKind::WouldBlock.into()));
            }
        }
        self.send_reqs = reqs;
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE_UD);
        self.wake_armed = self.push(&sqe);
    }

    /// Queues the multishot receive of slot `i`.
    fn arm(&mut self, i: usize) {
        let Some(Some(s)) = self.slots.get(i) else {
            return;
        };
        let sqe = opcode::RecvMulti::new(types::Fd(s.sock.as_raw_fd()), BGID)
            .build()
            .user_data(s.id);
        let ok = self.push(&sqe);
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.armed = ok;
            s.rearm = !ok;
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Cmd>) {
        while self.commands(rx) || self.slots.iter().any(Option::is_some) {
            self.queue_sends();
            self.wait();
            let now = monotonic_ns();
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            let n = self.reap(now);
            // With a batch wait (ONAIR_INGEST_BATCH_US > 0 only): batch only while traffic is
            // dense; a wait that returned a single completion (one sparse stream) is followed
            // by a plain wait for the next one.
            self.busy = self.batch_us > 0 && n > 1;
            self.end_batch(now);
            self.resubmit(now);
        }
    }

    /// Handles queued commands; false once every handle is gone.
    fn commands(&mut self, rx: &mpsc::Receiver<Cmd>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(req, reply)) => {
                    let r = self.add(req);
                    let _ = reply.send(r);
                }
                Ok(Cmd::Remove(id, reply)) => self.begin_remove(id, reply),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Waits for the next completion, at most `IDLE_TICK_NS`. With a batch wait
    /// (`ONAIR_INGEST_BATCH_US` > 0, benchmarks only) and dense traffic: for many completions,
    /// or once the batch wait has passed at least one (older kernels: whatever came within the
    /// batch wait).
    fn wait(&mut self) {
        // Up to the next idle tick (not a full tick from now: wake-ups that bring nothing
        // must not push the tick, and with it the idle flush, back).
        let to_tick = (self.last_tick_ns + IDLE_TICK_NS)
            .saturating_sub(monotonic_ns())
            .clamp(1_000_000, IDLE_TICK_NS);
        let idle = Timespec::new().nsec(to_tick as u32);
        // The sends this enter submits complete in it (non-blocking): wait for one more.
        let want = 1 + self.sends.out();
        let submitter = self.ring.submitter();
        // No socket left: sleep until a command, but not past an idle tick while a send's
        // completion is still to be handled (only a command would otherwise end the wait).
        let r = if self.slots.iter().all(Option::is_none) && self.sends.out() == 0 {
            submitter.submit_and_wait(want)
        } else if !self.busy {
            submitter.submit_with_args(want, &SubmitArgs::new().timespec(&idle))
        } else if self.min_wait {
            let args = SubmitArgs::new()
                .timespec(&idle)
                .min_wait_usec(self.batch_us);
            submitter.submit_with_args(BATCH_WANT, &args)
        } else {
            let batch = Timespec::new().nsec(self.batch_us * 1000);
            submitter.submit_with_args(BATCH_WANT, &SubmitArgs::new().timespec(&batch))
        };
        match r {
            Ok(_) => self.wait_failures = 0,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => {
                // Rate-limited: a wait that keeps failing would otherwise log 100 times a second.
                self.wait_failures += 1;
                if self.wait_failures.is_power_of_two() {
                    tracing::error!(error = %e, failures = self.wait_failures, "ingest: io_uring wait failed");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    fn add(&mut self, req: AddReq) -> AddReply {
        self.wanted += req.buffers;
        if let Err(e) = self.bufs.grow_to(self.wanted) {
            if self.bufs.count == 0 {
                self.wanted -= req.buffers;
                return Err((e, req));
            }
            tracing::warn!(error = %e, "ingest: io_uring buffer pool not grown");
        }
        self.bufs.publish();
        self.stats
            .buffers
            .store(self.bufs.count as u64, Ordering::Relaxed);
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        // 29 bits: an id (generation << 32 | slot) never has a flag bit (61–63) set.
        self.generation = (self.generation + 1) & 0x1fff_ffff;
        let id = (u64::from(self.generation) << 32) | idx as u64;
        self.slots[idx] = Some(Slot {
            id,
            sock: req.sock,
            sink: req.sink,
            stats: req.stats,
            buffers: req.buffers,
            armed: false,
            rearm: false,
            failed_arms: 0,
            retry_at_ns: 0,
            touched: false,
            removing: None,
            cancel_sent: false,
        });
        self.arm(idx);
        if matches!(&self.slots[idx], Some(s) if s.armed) {
            return Ok(id);
        }
        self.wanted -= req.buffers;
        self.free.push(idx as u32);
        match self.slots[idx].take() {
            Some(s) => Err((
                crate::err!(ResourceExhausted, "io_uring submission queue full"),
                AddReq {
                    sock: s.sock,
                    sink: s.sink,
                    stats: s.stats,
                    buffers: s.buffers,
                },
            )),
            None => Ok(id),
        }
    }

    fn begin_remove(&mut self, id: u64, reply: mpsc::SyncSender<()>) {
        let idx = (id & 0xffff_ffff) as usize;
        match self.slots.get_mut(idx) {
            Some(Some(s)) if s.id == id && s.removing.is_none() => {
                s.removing = Some(reply);
                if s.armed {
                    self.send_cancel(idx);
                } else {
                    self.finish(idx, monotonic_ns());
                }
            }
            _ => {
                let _ = reply.send(());
            }
        }
    }

    fn send_cancel(&mut self, idx: usize) {
        let Some(Some(s)) = self.slots.get(idx) else {
            return;
        };
        let sqe = opcode::AsyncCancel::new(s.id)
            .build()
            .user_data(s.id | CANCEL_FLAG);
        let sent = self.push(&sqe);
        if let Some(Some(s)) = self.slots.get_mut(idx) {
            s.cancel_sent = sent;
        }
    }

    /// The slot's receive is over (or was never in flight): stop its sink, close it, answer.
    fn finish(&mut self, idx: usize, now: u64) {
        let Some(mut s) = self.slots.get_mut(idx).and_then(Option::take) else {
            return;
        };
        self.wanted = self.wanted.saturating_sub(s.buffers);
        self.free.push(idx as u32);
        s.sink.on_stop(now);
        if let Some(reply) = s.removing.take() {
            let _ = reply.send(());
        }
    }

    /// Handles every completion; returns how many there were.
    fn reap(&mut self, now: u64) -> usize {
        let mut n = 0;
        // Datagram completions of live sockets since the sinks were last handed on.
        let mut handed = 0;
        let mut finished = Vec::new();
        loop {
            // Set when a part of a large batch queued sends: they go out before the rest is
            // parsed (a batch of hundreds of streams would otherwise hold them ~0.3 ms).
            let mut sends_queued = false;
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud & (SEND_FLAG | CANCEL_FLAG | WAKE_UD) == SEND_FLAG {
                    let idx = (ud & !SEND_FLAG) as usize;
                    if let Some(mut op) = self.sends.take(idx) {
                        let res = cqe.result();
                        op.answer(
                            usize::try_from(res).map_err(|_| {
                                std::io::Error::from_raw_os_error(res.saturating_neg())
                            }),
                        );
                    }
                    continue;
                }
                n += 1;
                if ud == WAKE_UD {
                    self.wake_armed = false;
                    continue;
                }
                if ud & CANCEL_FLAG != 0 {
                    // ENOENT/EALREADY: the receive already ended or is ending, its final
                    // completion comes on its own. Any other failure: send the cancel again.
                    let res = cqe.result();
                    if res < 0 && res != -libc::ENOENT && res != -libc::EALREADY {
                        let id = ud & !CANCEL_FLAG;
                        if let Some(Some(s)) = self.slots.get_mut((id & 0xffff_ffff) as usize)
                            && s.id == id
                        {
                            s.cancel_sent = false;
                        }
                    }
                    continue;
                }
                let idx = (ud & 0xffff_ffff) as usize;
                match self.slots.get_mut(idx) {
                    Some(Some(s)) if s.id == ud => {
                        let done = handle_recv(&cqe, s, &self.bufs, &mut self.touched, idx, now);
                        if done {
                            finished.push(idx);
                        }
                        handed += 1;
                    }
                    _ => {}
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    self.bufs.provide(bid);
                }
                // A frame completed early in a large batch is handed on now, not after the
                // whole batch was parsed (with hundreds of streams that is ~0.3 ms later).
                // Counted in receive completions (the wake-up read and cancels do not count).
                if handed == FLUSH_EVERY {
                    handed = 0;
                    flush_touched(&mut self.slots, &mut self.touched, now);
                    if SENDS.with(|s| s.borrow().as_ref().is_some_and(|v| !v.is_empty())) {
                        sends_queued = true;
                        break;
                    }
                }
            }
            drop(cq);
            if !sends_queued {
                break;
            }
            self.queue_sends();
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "ingest: io_uring submit of sends failed");
            }
        }
        self.bufs.publish();
        self.stats
            .completions
            .fetch_add(n as u64, Ordering::Relaxed);
        for idx in finished {
            self.finish(idx, now);
        }
        n
    }

    /// `on_batch_end` for every sink that received since it was last handed on, and for all of
    /// them every `IDLE_TICK_NS`.
    fn end_batch(&mut self, now: u64) {
        flush_touched(&mut self.slots, &mut self.touched, now);
        if now.saturating_sub(self.last_tick_ns) >= IDLE_TICK_NS {
            self.last_tick_ns = now;
            for s in self.slots.iter_mut().flatten() {
                if s.removing.is_none() {
                    s.sink.on_batch_end(now);
                }
            }
        }
    }

    /// Re-arms ended receives (a socket that keeps failing is retried slowly, without holding
    /// up the others), cancels not yet sent, and the wake-up read.
    fn resubmit(&mut self, now: u64) {
        for idx in 0..self.slots.len() {
            let Some(Some(s)) = self.slots.get_mut(idx) else {
                continue;
            };
            if s.removing.is_some() {
                if s.armed && !s.cancel_sent {
                    self.send_cancel(idx);
                }
                continue;
            }
            if !s.rearm || now < s.retry_at_ns {
                continue;
            }
            s.stats.rearms.fetch_add(1, Ordering::Relaxed);
            if s.failed_arms >= 3 {
                if s.failed_arms == 3 {
                    tracing::warn!("ingest: io_uring receive keeps failing; retrying slowly");
                }
                s.retry_at_ns = now + u64::from(s.failed_arms.min(100)) * 10_000_000;
            }
            self.arm(idx);
        }
        if !self.wake_armed {
            self.arm_wake();
        }
    }
}

/// `on_batch_end` for every sink that received since the last call.
fn flush_touched(slots: &mut [Option<Slot>], touched: &mut Vec<usize>, now: u64) {
    for idx in touched.drain(..) {
        if let Some(Some(s)) = slots.get_mut(idx) {
            s.touched = false;
            s.sink.on_batch_end(now);
        }
    }
}

/// One completion of slot `s`'s receive; returns whether the slot is removed and its receive
/// ended (it can be finished).
fn handle_recv(
    cqe: &cqueue::Entry,
    s: &mut Slot,
    bufs: &BufRing,
    touched: &mut Vec<usize>,
    idx: usize,
    now: u64,
) -> bool {
    let ended = !cqueue::more(cqe.flags());
    if ended {
        s.armed = false;
        s.rearm = s.removing.is_none();
    }
    let Ok(len) = usize::try_from(cqe.result()) else {
        if cqe.result() != -libc::ENOBUFS && cqe.result() != -libc::ECANCELED {
            s.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
            s.failed_arms = s.failed_arms.saturating_add(1);
        }
        return ended && s.removing.is_some();
    };
    s.failed_arms = 0;
    if len == 0 && s.removing.is_none() {
        // An empty datagram (the kernel also ends a multishot `recv` on it; it is re-armed).
        // Handed on as one, as the socket receiver does.
        s.stats.datagrams.fetch_add(1, Ordering::Relaxed);
        s.sink.on_datagram(&[], now);
        if !s.touched {
            s.touched = true;
            touched.push(idx);
        }
        return false;
    }
    let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
        return ended && s.removing.is_some();
    };
    if s.removing.is_some() {
        // Stopping: nothing more goes to the sink (the buffer goes back all the same).
        return ended;
    }
    // SAFETY: `bid` comes from this completion and is provided again only after this returns.
    match unsafe { bufs.completed(bid, len) } {
        Some(d) if d.len() > MAX_DATAGRAM => {
            s.stats.truncated.fetch_add(1, Ordering::Relaxed);
        }
        Some(payload) => {
            s.stats.datagrams.fetch_add(1, Ordering::Relaxed);
            s.stats
                .bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            s.sink.on_datagram(payload, now);
            if !s.touched {
                s.touched = true;
                touched.push(idx);
            }
        }
        None => {
            s.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    false
}

impl Drop for Receiver {
    /// Cancels every receive and waits for their final completions before the buffers, the
    /// wake buffer and the sockets go; if the kernel does not confirm in time they are leaked
    /// rather than freed under it.
    fn drop(&mut self) {
        let armed: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(&self.slots[i], Some(s) if s.armed))
            .collect();
        for &i in &armed {
            if let Some(Some(s)) = self.slots.get_mut(i) {
                s.cancel_sent = false;
                if s.removing.is_none() {
                    let (tx, _rx) = mpsc::sync_channel(1);
                    s.removing = Some(tx);
                }
            }
            self.send_cancel(i);
        }
        let cancel_wake = opcode::AsyncCancel::new(WAKE_UD)
            .build()
            .user_data(WAKE_UD | CANCEL_FLAG);
        if self.wake_armed {
            self.push(&cancel_wake);
        }
        // Sends still queued go out and are answered like any other.
        self.queue_sends();
        let ts = Timespec::new().nsec(50_000_000);
        for _ in 0..20 {
            let pending = self.slots.iter().flatten().any(|s| s.armed)
                || self.wake_armed
                || self.sends.out() > 0;
            if !pending {
                break;
            }
            let _ = self
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            self.reap(monotonic_ns());
        }
        // Sends queued by the answers above: their writers wait for the socket themselves.
        let late = SENDS.with(|s| s.borrow_mut().take()).unwrap_or_default();
        for req in late {
            (req.done)(Err(std::io::ErrorKind::WouldBlock.into()));
        }
        let settled = !self.slots.iter().flatten().any(|s| s.armed)
            && !self.wake_armed
            && self.sends.out() == 0;
        if settled
            && self.registered
            && let Err(e) = self.ring.submitter().unregister_buf_ring(BGID)
        {
            tracing::debug!(error = %e, "io_uring: unregister buffer ring");
        }
        if !settled {
            tracing::error!("io_uring receiver: receives not confirmed cancelled; leaking buffers");
            self.bufs.leaked = true;
            // Answer removals in progress (their callers see the receiver gone) before the
            // slots are leaked with their sockets.
            for s in self.slots.iter_mut().flatten() {
                drop(s.removing.take());
            }
            std::mem::forget(std::mem::take(&mut self.slots));
            // Sends not confirmed: their sockets are shut down (a send the kernel still
            // issues fails) and their writers told, so no connection waits for them forever.
            for op in self.sends.ops.iter_mut().flatten() {
                let _ = nix::sys::socket::shutdown(
                    op.sock.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
                op.answer(Err(std::io::ErrorKind::ConnectionAborted.into()));
            }
            std::mem::forget(std::mem::take(&mut self.sends.ops));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}
