//! The indicator protocol with the conferencing fabric (fabric tokens only):
//! `GET /v1/fabric/indicators` streams server-sent events — first every indicator currently on,
//! then each change — and `POST /v1/fabric/indicators/{session_id}/ack` acknowledges that the
//! indicator is shown. The first ack moves a session from `starting` to `live`; while live the
//! fabric keeps acknowledging (heartbeat) or egress stops after the policy's grace period.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::{V1, actor, submit};
use crate::api::auth::PeerAddr;
use crate::api::server::ShuttingDown;
use crate::api::{ApiError, Principal, Role as ApiRole, Routes, require};
use crate::control::consent::Command;
use crate::control::supervisor::IndicatorEvent;

pub fn routes() -> Routes<V1> {
    Routes::new()
        .get("/v1/fabric/indicators", events)
        .post("/v1/fabric/indicators/{session_id}/ack", ack)
}

/// Keep-alive comment period, so a dead connection is noticed by both ends.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Most indicator streams one fabric token may hold open at once. A fabric keeps one; the
/// others cover a reconnect racing the old stream, which ends at its next keep-alive write
/// (≤ 5 s) once its connection is gone. Beyond it: 429 `resource_exhausted`.
pub const MAX_STREAMS_PER_TOKEN: usize = 4;

/// Open indicator streams per fabric token.
#[derive(Debug, Default)]
pub struct StreamCounts(Mutex<HashMap<String, usize>>);

impl StreamCounts {
    fn acquire(self: &Arc<Self>, token_id: &str) -> Result<StreamSlot, ApiError> {
        let mut m = self
            .0
            .lock()
            .map_err(|_| crate::err!(Internal, "indicator stream counts poisoned"))?;
        let n = m.entry(token_id.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_TOKEN {
            return Err(crate::err!(
                ResourceExhausted,
                "this fabric token already holds {MAX_STREAMS_PER_TOKEN} open indicator streams"
            )
            .into());
        }
        *n += 1;
        Ok(StreamSlot {
            counts: self.clone(),
            token_id: token_id.to_owned(),
        })
    }
}

/// One open stream, counted until dropped (with the stream's task).
struct StreamSlot {
    counts: Arc<StreamCounts>,
    token_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.counts.0.lock()
            && let Some(n) = m.get_mut(&self.token_id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.token_id);
            }
        }
    }
}

fn sse(ev: &IndicatorEvent) -> Bytes {
    let data = serde_json::to_string(ev).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: indicator\ndata: {data}\n\n"))
}

/// A response body fed by a bounded channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

async fn events(
    p: Principal,
    shutting_down: Option<Extension<ShuttingDown>>,
    State(v1): State<V1>,
) -> Result<Response, ApiError> {
    require(&p, &[ApiRole::Fabric])?;
    let slot = v1.indicator_streams.acquire(&p.token_id)?;
    // Without the server's signal (a router driven directly): one that never fires; its sender
    // lives as long as the stream (a dropped sender would end the stream at once).
    let (never, idle) = tokio::sync::watch::channel(false);
    let mut stopping = shutting_down.map_or(idle, |Extension(ShuttingDown(rx))| rx);
    let (now, mut changes) = v1.control.indicators();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let control = v1.control.clone();
    let token_id = p.token_id.clone();
    tokio::spawn(async move {
        let _never = never;
        let _slot = slot;
        for ev in &now {
            if tx.send(sse(ev)).await.is_err() {
                return;
            }
        }
        loop {
            let item = tokio::select! {
                r = changes.recv() => match r {
                    Ok(ev) => sse(&ev),
                    // A slow reader missed events: tell it to resubscribe for a fresh snapshot.
                    Err(broadcast::error::RecvError::Lagged(_)) => Bytes::from_static(b"event: resync\ndata: {}\n\n"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                // The server is stopping: end the stream so the connection can close now.
                _ = stopping.wait_for(|s| *s) => return,
            };
            if tx.send(item).await.is_err() {
                return; // the fabric went away
            }
            // A revoked token's stream ends (checked at least every keep-alive period).
            if !control
                .read(|s| s.tokens.contains_key(&token_id))
                .unwrap_or(false)
            {
                return;
            }
        }
    });
    let mut resp = Body::from_stream(ChannelBody(rx)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn ack(
    p: Principal,
    peer: Option<Extension<PeerAddr>>,
    State(v1): State<V1>,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    submit(&v1, actor(&p, peer), Command::IndicatorAck { session_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
