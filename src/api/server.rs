//! Serving a `Router` over HTTPS (device certificate) or, on loopback only, plain HTTP.
//!
//! hyper's HTTP/1.1 connection driver is used directly (not `axum::serve`) to get TLS, a
//! header read timeout (slowloris), a TLS handshake timeout, a per-request timeout, a body limit
//! answered before the handler runs, a cap on concurrent connections (further clients wait
//! in the listen backlog) and a cap per source address (connections over it are closed at
//! once), so one host's stalled connections cannot take every slot.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::auth::PeerAddr;
use super::error::ApiError;
use super::json::{BodyLimit, DEFAULT_MAX_BODY_BYTES};
use super::tls;
use crate::conn_limit::PerAddress;
use crate::error::{Error, Result};
use crate::{bail, err};

/// How long shutdown waits for open connections to finish their request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns true when the server starts shutting down; in every request's extensions, so that
/// endless responses (the fabric's indicator event stream) end and the drain does not wait
/// [`DRAIN_TIMEOUT`] for them.
#[derive(Clone, Debug)]
pub struct ShuttingDown(pub watch::Receiver<bool>);

/// Transport security of the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// HTTPS with the device certificate, generated on first start.
    #[default]
    Device,
    /// Plain HTTP: only allowed on a loopback listen address.
    Plain,
}

/// The `[api]` configuration. Unknown keys are rejected.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address; port 0 picks a free port. Default `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// `device` (HTTPS, default) or `plain` (HTTP, loopback only).
    pub tls: TlsMode,
    /// Directory of the device certificate and key. Default `/data/onair/tls`.
    pub tls_dir: PathBuf,
    /// Names (DNS or IP) in a newly generated certificate. Default: the listen IP (every
    /// interface address when listening on all), `localhost` and the host name.
    pub tls_names: Option<Vec<String>>,
    /// Largest request body. Default 65536 (64 KiB).
    pub max_body_bytes: usize,
    /// Time allowed for a request's headers (and for the TLS handshake). Default 10000.
    pub header_read_timeout_ms: u64,
    /// Time allowed for a whole request once its headers are in. Default 30000.
    pub request_timeout_ms: u64,
    /// Concurrent connections; more wait in the listen backlog. Default 512.
    pub max_connections: usize,
    /// Concurrent connections from one address (IPv6: one /64); more are closed on accept.
    /// Default 32.
    pub max_connections_per_address: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls: TlsMode::Device,
            tls_dir: PathBuf::from("/data/onair/tls"),
            tls_names: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 512,
            max_connections_per_address: 32,
        }
    }
}

/// The per-connection limits derived from [`ApiConfig`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_body_bytes: usize,
    header_read_timeout: Duration,
    request_timeout: Duration,
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    fingerprint: Option<String>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SHA-256 fingerprint of the device certificate (`None` for plain HTTP).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Waits until the server stopped (after the shutdown future resolved and connections
    /// drained).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Binds and serves `router` until `shutdown` resolves. Refuses plain HTTP on a non-loopback
/// address; generates the device certificate on first start and logs its fingerprint.
pub async fn serve(
    config: ApiConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle> {
    let (acceptor, fingerprint) = prepare_tls(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| err!(Io, "admin API: binding {}: {e}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::from_net("admin API: local address", &e))?;
    match &fingerprint {
        Some(fp) => tracing::info!(addr = %local_addr, fingerprint = %fp,
            "admin API listening (HTTPS); device certificate SHA-256 {fp}"),
        None => tracing::info!(addr = %local_addr, "admin API listening (plain HTTP, loopback)"),
    }
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
    };
    let max_conns = config.max_connections.max(1);
    let per_address = PerAddress::new(config.max_connections_per_address);
    let task = tokio::spawn(accept_loop(
        listener,
        acceptor,
        router,
        limits,
        (max_conns, per_address),
        shutdown,
    ));
    Ok(ServerHandle {
        local_addr,
        fingerprint,
        task,
    })
}

/// The TLS acceptor and certificate fingerprint, or `None`s for plain HTTP on loopback.
fn prepare_tls(config: &ApiConfig) -> Result<(Option<TlsAcceptor>, Option<String>)> {
    if config.tls == TlsMode::Plain {
        if !config.listen.ip().to_canonical().is_loopback() {
            bail!(
                InvalidArgument,
                "admin API: plain HTTP is allowed only on a loopback address, and {} is not; \
                 set tls = \"device\" (HTTPS) or listen on 127.0.0.1",
                config.listen
            );
        }
        return Ok((None, None));
    }
    let names = config
        .tls_names
        .clone()
        .unwrap_or_else(|| tls::default_sans(config.listen));
    let cert = tls::load_or_create(&config.tls_dir, &names)?;
    let server_config = tls::server_config(&cert)?;
    Ok((
        Some(TlsAcceptor::from(server_config)),
        Some(cert.fingerprint),
    ))
}

/// Accepts until shutdown, one task per connection, at most `max_conns` at once and at most
/// `per_address`'s cap from one address; then asks the connections to finish and waits up to
/// [`DRAIN_TIMEOUT`].
async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    (max_conns, per_address): (usize, Arc<PerAddress>),
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(max_conns));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_permit) = per_address.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "admin API: too many connections from this address; closed");
            drop(stream);
            continue;
        };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop_rx.clone());
        tokio::spawn(async move {
            connection(stream, peer, acceptor, router, limits, stop).await;
            drop((permit, address_permit));
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
    tracing::info!("admin API stopped");
}

/// One connection: the TLS handshake (bounded by the header timeout), then HTTP/1.1.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        return serve_http(TokioIo::new(stream), peer, router, limits, stop).await;
    };
    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_http(TokioIo::new(tls), peer, router, limits, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin API: TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "admin API: TLS handshake timed out"),
    }
}

/// Runs hyper's HTTP/1.1 driver on `io` until the client leaves or the server stops.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let shutting_down = ShuttingDown(stop.clone());
    let svc =
        service_fn(move |req| handle(router.clone(), req, peer, limits, shutting_down.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "admin API: connection ended with an error");
            }
        }
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// One request: 413 by `Content-Length` before routing, then the router with the peer
/// address and body limit in the extensions and the body capped, bounded in time.
async fn handle(
    router: Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    limits: Limits,
    shutting_down: ShuttingDown,
) -> std::result::Result<Response<Body>, Infallible> {
    let limit = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut resp = ApiError::payload_too_large(limit).into_response();
        // The unread body would desynchronize the connection: close it.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return Ok(resp);
    }
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(PeerAddr(peer));
    parts.extensions.insert(BodyLimit(limit));
    parts.extensions.insert(shutting_down);
    let req = Request::from_parts(parts, Body::new(Limited::new(body, limit)));
    let mut router = router;
    let call = tower::Service::call(&mut router, req);
    match tokio::time::timeout(limits.request_timeout, call).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(never)) => match never {},
        Err(_) => Ok(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        )
        .into_response()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    #[test]
    fn config_is_strict_and_defaulted() {
        let c: ApiConfig = toml::from_str("listen = \"0.0.0.0:443\"\ntls = \"device\"").unwrap();
        assert_eq!(c.max_body_bytes, 64 * 1024);
        assert_eq!(c.max_connections, 512);
        assert_eq!(c.max_connections_per_address, 32);
        assert!(toml::from_str::<ApiConfig>("lisen = \"0.0.0.0:443\"").is_err());
        assert!(toml::from_str::<ApiConfig>("tls = \"none\"").is_err());
    }

    #[test]
    fn plain_refused_off_loopback() {
        let mut c = ApiConfig {
            tls: TlsMode::Plain,
            listen: "0.0.0.0:0".parse().unwrap(),
            ..ApiConfig::default()
        };
        let e = prepare_tls(&c).err().unwrap();
        assert!(e.message().contains("loopback"), "{e}");
        c.listen = "[::1]:0".parse().unwrap();
        assert!(prepare_tls(&c).is_ok());
    }
}
