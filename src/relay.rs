//! A relay: one fabric ingest → the media core (on the ingest thread) → one or more egresses.
//!
//! This is the data plane's library API. Nothing in the binary starts a relay on its own: the
//! session supervisor (control plane) does, after consent, passing the confirm instant as the
//! gate so no media received before it leaves the box.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::egress::{self, Destination, EgressHandle, EgressOptions, SharedQueue, StatsSnapshot};
use crate::error::Result;
use crate::ingest::{self, DatagramSink, IngestConfig, IngestHandle};
use crate::media::core::{CoreStats, MediaCore, MediaFrame};

/// The ingest thread's sink: runs the media core, fans frames out when the ingest hands it on
/// (`on_batch_end`).
struct CoreSink {
    core: MediaCore,
    frames: Vec<MediaFrame>,
    outputs: Vec<(Arc<SharedQueue>, Arc<egress::EgressStats>)>,
    stats: Arc<Mutex<CoreStats>>,
    last_stats_ns: u64,
    last_datagram_ns: u64,
    /// Pending PES were flushed since the last datagram.
    flushed: bool,
}

/// After this long without a datagram the source is taken as paused or gone, and PES still
/// being assembled that look complete are emitted (a video PES without a length is otherwise
/// only complete when the next one starts).
pub const IDLE_FLUSH_NS: u64 = 250_000_000;

impl CoreSink {
    fn push_frames(&mut self) {
        if !self.frames.is_empty() {
            for (q, _) in &self.outputs {
                q.push_all(&self.frames);
            }
            self.frames.clear();
        }
    }
}

impl DatagramSink for CoreSink {
    fn on_stop(&mut self, _now_ns: u64) {
        // A frame still being received is not known complete: it is not sent (a source that
        // went quiet before the stop was already flushed by the idle flush).
        self.push_frames();
    }

    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        self.core.push_datagram(data, rx_ns, &mut self.frames);
        self.last_datagram_ns = rx_ns;
        self.flushed = false;
    }

    fn on_batch_end(&mut self, now_ns: u64) {
        if !self.flushed && now_ns.saturating_sub(self.last_datagram_ns) >= IDLE_FLUSH_NS {
            self.core.flush_idle(now_ns, &mut self.frames);
            self.flushed = true;
        }
        self.core.tick(now_ns, &mut self.frames);
        self.push_frames();
        if now_ns.saturating_sub(self.last_stats_ns) >= 200_000_000 {
            self.last_stats_ns = now_ns;
            let s = self.core.stats();
            for (_, es) in &self.outputs {
                es.av_offset_ms.store(s.av_offset_ms, Ordering::Relaxed);
            }
            if let Ok(mut g) = self.stats.lock() {
                *g = s;
            }
        }
    }
}

pub struct Relay {
    ingest: Option<IngestHandle>,
    egresses: Vec<EgressHandle>,
    core_stats: Arc<Mutex<CoreStats>>,
}

impl Relay {
    /// Starts the egresses (on the current tokio runtime), then the ingest. `gate_ns` is the
    /// consent instant on [`crate::clock::monotonic_ns`]'s clock: the first frame sent is a
    /// keyframe received at or after it.
    pub fn start(
        ingest_cfg: &IngestConfig,
        destinations: Vec<(Destination, EgressOptions)>,
        gate_ns: u64,
    ) -> Result<Relay> {
        let r = Relay::start_held(ingest_cfg, destinations, gate_ns)?;
        r.release();
        Ok(r)
    }

    /// Like [`Relay::start`], but the egresses only queue (bounded, GOP-aware) until
    /// [`Relay::release`]: the supervisor starts receiving at the confirm, so a keyframe that
    /// comes while the fabric acknowledges the indicator is not missed, and releases once
    /// the acknowledgement came (nothing connects to the ingest before).
    pub fn start_held(
        ingest_cfg: &IngestConfig,
        destinations: Vec<(Destination, EgressOptions)>,
        gate_ns: u64,
    ) -> Result<Relay> {
        let mut egresses = Vec::with_capacity(destinations.len());
        for (d, o) in destinations {
            match egress::spawn_held(d, o) {
                Ok(e) => egresses.push(e),
                Err(e) => {
                    for eg in &egresses {
                        eg.stop();
                    }
                    return Err(e);
                }
            }
        }
        let core_stats = Arc::new(Mutex::new(CoreStats::default()));
        let sink = CoreSink {
            core: MediaCore::with_gate(gate_ns),
            frames: Vec::with_capacity(256),
            outputs: egresses
                .iter()
                .map(|e| (e.queue.clone(), e.stats.clone()))
                .collect(),
            stats: core_stats.clone(),
            last_stats_ns: 0,
            last_datagram_ns: 0,
            flushed: true,
        };
        let ingest = match ingest::start(ingest_cfg, sink) {
            Ok(i) => i,
            Err(e) => {
                for eg in &egresses {
                    eg.stop();
                }
                return Err(e);
            }
        };
        Ok(Relay {
            ingest: Some(ingest),
            egresses,
            core_stats,
        })
    }

    /// Lets held egresses connect and send what they queued (see [`Relay::start_held`]).
    pub fn release(&self) {
        for e in &self.egresses {
            e.release();
        }
    }

    pub fn ingest(&self) -> Option<&IngestHandle> {
        self.ingest.as_ref()
    }

    pub fn egresses(&self) -> &[EgressHandle] {
        &self.egresses
    }

    pub fn core_stats(&self) -> CoreStats {
        self.core_stats
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn egress_stats(&self) -> Vec<StatsSnapshot> {
        self.egresses.iter().map(EgressHandle::snapshot).collect()
    }
}

/// Longest a normal stop lets queued frames drain, for all egresses together.
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Relay {
    async fn stop_ingest(&mut self) {
        if let Some(i) = self.ingest.take() {
            // Joining the ingest thread blocks briefly (≤ ~100 ms).
            let _ = tokio::task::spawn_blocking(move || i.stop()).await;
        }
    }

    async fn join_all(&mut self) -> Vec<Result<()>> {
        let mut out = Vec::new();
        for e in self.egresses.drain(..) {
            out.push(e.join().await);
        }
        out
    }

    /// A normal stop (the owner's, a scheduled end): the ingest stops, queued frames drain for
    /// at most [`DRAIN_LIMIT`] in all, then every egress ends. Returns each egress's outcome.
    pub async fn stop(mut self) -> Vec<Result<()>> {
        // The ingest first: its last frames (pushed when it stops) are queued before the
        // queues close, so a drain that completes cannot leave them behind.
        self.stop_ingest().await;
        for e in &self.egresses {
            e.queue.close();
        }
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        while !self.egresses.iter().all(EgressHandle::is_finished)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for e in &self.egresses {
            e.stop();
        }
        self.join_all().await
    }

    /// Consent withdrawn: every egress stops sending now (queued frames are dropped, sockets
    /// reset), then the ingest stops.
    pub async fn abort(mut self) -> Vec<Result<()>> {
        for e in &self.egresses {
            e.stop();
            e.queue.close();
        }
        let out = self.join_all().await;
        self.stop_ingest().await;
        out
    }
}
