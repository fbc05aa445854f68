//! The fabric's side of the indicator protocol, as `onair fabric-sim --api …` plays it: subscribe
//! to `GET /v1/fabric/indicators` (server-sent events), show every indicator change
//! prominently, acknowledge `streaming: true` at once, and keep acknowledging every second
//! while it is on (the heartbeat the appliance needs to keep egress running).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::ctl::http::{self, Request};
use crate::ctl::{Target, Trust, connect};
use crate::error::Result;
use crate::secret::Secret;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Indicator {
    pub session_id: String,
    pub meeting_id: String,
    pub streaming: bool,
    pub recording: bool,
}

#[derive(Clone)]
pub struct IndicatorConfig {
    pub target: Target,
    pub trust: Trust,
    pub token: Secret,
    /// Acknowledgement period while an indicator is on. Default 1 s.
    pub heartbeat: Duration,
}

/// Indicators currently shown, shared with the caller (tests read it).
pub type Shown = Arc<Mutex<BTreeMap<String, Indicator>>>;

/// Runs until `stop` turns true: subscribes (re-subscribing after errors), acknowledges.
pub async fn run(cfg: IndicatorConfig, shown: Shown, mut stop: watch::Receiver<bool>) {
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Indicator>(64);
    let sub_cfg = cfg.clone();
    let subscriber = tokio::spawn(async move {
        loop {
            if let Err(e) = subscribe(&sub_cfg, &tx).await {
                tracing::warn!(error = %e, "fabric: indicator subscription lost; re-subscribing");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    loop {
        tokio::select! {
            Some(ind) = rx.recv() => on_event(&cfg, &shown, ind).await,
            _ = heartbeat.tick() => {
                let on: Vec<String> = shown.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                for id in on {
                    let _ = ack(&cfg, &id).await;
                }
            }
            _ = stop.changed() => break,
        }
    }
    subscriber.abort();
}

async fn on_event(cfg: &IndicatorConfig, shown: &Shown, ind: Indicator) {
    banner(&ind);
    let id = ind.session_id.clone();
    if let Ok(mut m) = shown.lock() {
        if ind.streaming {
            m.insert(id.clone(), ind.clone());
        } else {
            m.remove(&id);
        }
    }
    if ind.streaming
        && let Err(e) = ack(cfg, &id).await
    {
        tracing::warn!(session = %id, error = %e, "fabric: acknowledgement failed");
    }
}

/// What participants would see, on stderr.
fn banner(ind: &Indicator) {
    if ind.streaming {
        eprintln!(
            "\n==================== ON AIR ====================\n meeting {} is being streamed{}\n================================================\n",
            ind.meeting_id,
            if ind.recording { " AND RECORDED" } else { "" }
        );
    } else {
        eprintln!(
            "\n---- off air: meeting {} is no longer streamed ----\n",
            ind.meeting_id
        );
    }
}

async fn ack(cfg: &IndicatorConfig, session_id: &str) -> Result<()> {
    if !session_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        crate::bail!(Protocol, "unexpected session id from the appliance");
    }
    let path = format!("/v1/fabric/indicators/{session_id}/ack");
    let req = Request {
        method: "POST",
        host: &cfg.target.host,
        port: cfg.target.port,
        path: &path,
        token: Some(&cfg.token),
        body: Some(b""),
    };
    let mut conn = connect(&cfg.target, &cfg.trust).await?;
    let resp = tokio::time::timeout(Duration::from_secs(5), http::exchange(&mut conn, &req))
        .await
        .map_err(|_| crate::err!(Unavailable, "acknowledgement timed out"))??;
    if resp.status != 204 {
        crate::bail!(Protocol, "acknowledgement answered {}", resp.status);
    }
    Ok(())
}

/// Largest SSE event accepted.
const MAX_EVENT: usize = 64 * 1024;

/// One subscription: reads events until the connection ends.
async fn subscribe(cfg: &IndicatorConfig, tx: &tokio::sync::mpsc::Sender<Indicator>) -> Result<()> {
    let req = Request {
        method: "GET",
        host: &cfg.target.host,
        port: cfg.target.port,
        path: "/v1/fabric/indicators",
        token: Some(&cfg.token),
        body: None,
    };
    let mut conn = connect(&cfg.target, &cfg.trust).await?;
    conn.write_all(&http::encode(&req))
        .await
        .map_err(|e| crate::error::Error::from_net("subscribe", &e))?;
    let mut r = BufReader::new(conn);
    let status = read_head(&mut r).await?;
    if status != 200 {
        crate::bail!(
            PermissionDenied,
            "indicator subscription refused ({status}): check the fabric token"
        );
    }
    let mut pending = String::new();
    loop {
        let chunk = read_chunk(&mut r).await?;
        let Some(chunk) = chunk else { return Ok(()) };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        if pending.len() > MAX_EVENT {
            crate::bail!(Protocol, "indicator event too large");
        }
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(ind) = parse_event(&event) {
                let _ = tx.send(ind).await;
            }
        }
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<String> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .await
        .map_err(|e| crate::error::Error::from_net("read", &e))?;
    if n == 0 {
        crate::bail!(Unavailable, "the appliance closed the indicator stream");
    }
    if line.len() > 8192 {
        crate::bail!(Protocol, "line too long");
    }
    Ok(line.trim_end().to_string())
}

/// Reads the status line and headers; returns the status.
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<u16> {
    let status_line = read_line(r).await?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| crate::err!(Protocol, "bad status line"))?;
    for _ in 0..100 {
        if read_line(r).await?.is_empty() {
            return Ok(status);
        }
    }
    crate::bail!(Protocol, "too many headers")
}

/// One chunk of a chunked body; `None` at the end.
async fn read_chunk<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>> {
    let size_line = read_line(r).await?;
    let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
        .map_err(|_| crate::err!(Protocol, "bad chunk size"))?;
    if size == 0 {
        return Ok(None);
    }
    if size > MAX_EVENT {
        crate::bail!(Protocol, "chunk too large");
    }
    let mut buf = vec![0u8; size + 2];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| crate::error::Error::from_net("read chunk", &e))?;
    buf.truncate(size);
    Ok(Some(buf))
}

/// An `indicator` event's data; other events (keep-alives, resync) give `None`.
pub fn parse_event(text: &str) -> Option<Indicator> {
    let mut event = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    (event == "indicator")
        .then(|| serde_json::from_str(&data).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let ev = "event: indicator\ndata: {\"session_id\":\"ses_1\",\"meeting_id\":\"m\",\"streaming\":true,\"recording\":false}\n\n";
        let ind = parse_event(ev).expect("indicator");
        assert!(ind.streaming && !ind.recording);
        assert_eq!(ind.session_id, "ses_1");
        assert_eq!(parse_event(": keep-alive\n\n"), None);
        assert_eq!(parse_event("event: resync\ndata: {}\n\n"), None);
        assert_eq!(parse_event("event: indicator\ndata: {not json\n\n"), None);
    }
}
