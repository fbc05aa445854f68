//! The admin API's infrastructure over real loopback sockets: TLS with the device certificate,
//! plain HTTP on loopback only, auth and its rate limit, strict JSON errors, limits, slowloris,
//! metrics, the OpenAPI document, and the `onair ctl` binary against a live server.

#![allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path as UrlPath;
use onair::api::{
    self, ApiConfig, ApiError, MemoryTokens, Principal, Role, Routes, ServerHandle, StrictJson,
    TlsMode,
};
use onair::ctl::http::{self as client, HttpResponse};
use onair::ctl::{Trust, client_config};
use onair::secret::Secret;
use pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

const ADMIN: &str = "admin-token-0123456789abcdef";
const SUBSCRIBER: &str = "sub-token-0123456789abcdef";
const STREAM_KEY: &str = "live_8f3kQ2zX9pLm";

/// A stream key that refuses control characters the way a real type would: by quoting the
/// value in serde's `invalid_value` message, which the API must not echo.
#[derive(Debug)]
struct StreamKey(#[allow(dead_code)] String);

impl<'de> Deserialize<'de> for StreamKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.chars().any(char::is_control) {
            return Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&s),
                &"a stream key without control characters",
            ));
        }
        Ok(StreamKey(s))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProfile {
    name: String,
    #[allow(dead_code)]
    stream_key: StreamKey,
    #[allow(dead_code)]
    port: Option<u16>,
}

async fn whoami(p: Principal) -> StrictJson<serde_json::Value> {
    StrictJson(serde_json::json!({ "token_id": p.token_id, "role": p.role }))
}

async fn admin_only(p: Principal) -> Result<StrictJson<serde_json::Value>, ApiError> {
    api::require(&p, &[Role::Admin])?;
    Ok(StrictJson(serde_json::json!({ "ok": true })))
}

async fn create_profile(
    _p: Principal,
    StrictJson(req): StrictJson<NewProfile>,
) -> (axum::http::StatusCode, StrictJson<serde_json::Value>) {
    let body = serde_json::json!({ "name": req.name });
    (axum::http::StatusCode::CREATED, StrictJson(body))
}

async fn item(UrlPath(id): UrlPath<u32>) -> StrictJson<u32> {
    StrictJson(id)
}

/// The infra routes plus a few stand-in resource routes.
fn test_routes() -> Routes {
    api::base_router().merge(
        Routes::new()
            .get("/v1/whoami", whoami)
            .get("/v1/admin-only", admin_only)
            .post("/v1/profiles", create_profile)
            .get("/v1/items/{id}", item),
    )
}

fn tokens() -> MemoryTokens {
    let principal = |id: &str, role, sub: Option<&str>| Principal {
        token_id: id.into(),
        role,
        subscriber_id: sub.map(Into::into),
    };
    MemoryTokens::new()
        .with(ADMIN, principal("adm1", Role::Admin, None))
        .with(
            SUBSCRIBER,
            principal("sub1", Role::Subscriber, Some("alice")),
        )
}

struct TestServer {
    handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    dir: PathBuf,
}

impl TestServer {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.handle.join())
            .await
            .expect("server stops");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("onair-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn plain_config() -> ApiConfig {
    ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsMode::Plain,
        ..ApiConfig::default()
    }
}

async fn start(name: &str, mut config: ApiConfig) -> TestServer {
    let dir = temp_dir(name);
    config.tls_dir = dir.join("tls");
    let app = api::App::new(Arc::new(tokens())).build(test_routes());
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let handle = api::serve(config, app.router, shutdown)
        .await
        .expect("serve");
    TestServer {
        handle,
        stop: Some(tx),
        dir,
    }
}

/// One request over a fresh plain connection from `addr`'s loopback, optionally from `from`.
async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let token = token.map(Secret::new);
    let req = client::Request {
        method,
        host: "127.0.0.1",
        port: addr.port(),
        path,
        token: token.as_ref(),
        body,
    };
    client::exchange(&mut tcp, &req).await.unwrap()
}

/// Sends raw bytes (for headers `ctl`'s client never sends) and reads the response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    client::read_response(&mut tcp, "POST").await.unwrap()
}

/// Asserts the JSON error shape and returns (code, message).
fn error_of(resp: &HttpResponse, status: u16) -> (String, String) {
    assert_eq!(
        resp.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON error body");
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 2, "exactly error and message: {v}");
    (
        v["error"].as_str().unwrap().to_owned(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

/// Captures `tracing` output in memory.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sha256_hex_colons(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

async fn tls_get(addr: SocketAddr, trust: &Trust) -> std::io::Result<HttpResponse> {
    let connector = tokio_rustls::TlsConnector::from(client_config(trust).unwrap());
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let req = client::Request {
        method: "GET",
        host: "127.0.0.1",
        port: addr.port(),
        path: "/healthz",
        token: None,
        body: None,
    };
    client::exchange(&mut tls, &req)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[tokio::test]
async fn tls_device_certificate_trusted_pinned_and_logged() {
    let logs = LogBuf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let config = ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ApiConfig::default()
    };
    let srv = start("tls", config).await;
    drop(guard);
    let cert_path = srv.dir.join("tls/device-cert.pem");
    let der = {
        use pki_types::pem::PemObject;
        pki_types::CertificateDer::from_pem_file(&cert_path).unwrap()
    };
    let fp = sha256_hex_colons(&der);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains(&format!("device certificate SHA-256 {fp}")),
        "{logged}"
    );
    assert_eq!(srv.handle.fingerprint(), Some(fp.as_str()));
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(srv.dir.join("tls/device-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let ok = tls_get(srv.addr(), &Trust::Ca(cert_path.clone()))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let pin = onair::api::tls::parse_fingerprint(&fp).unwrap();
    assert_eq!(
        tls_get(srv.addr(), &Trust::Pin(pin)).await.unwrap().status,
        200
    );

    let e = tls_get(srv.addr(), &Trust::WebPki).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let mut wrong = pin;
    wrong[0] ^= 1;
    assert!(tls_get(srv.addr(), &Trust::Pin(wrong)).await.is_err());
    let plain = TcpStream::connect(srv.addr()).await.unwrap();
    let mut plain = plain;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "plain HTTP must not be served on the TLS port"
    );
    srv.stop().await;
}

#[tokio::test]
async fn plain_http_only_on_loopback() {
    let srv = start("plain", plain_config()).await;
    let resp = request(srv.addr(), "GET", "/healthz", None, None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, br#"{"status":"ok"}"#);
    srv.stop().await;

    let config = ApiConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        tls: TlsMode::Plain,
        ..ApiConfig::default()
    };
    let app = api::App::new(Arc::new(tokens())).build(test_routes());
    let err = api::serve(config, app.router, std::future::pending())
        .await
        .err()
        .expect("plain HTTP on 0.0.0.0 must be refused");
    assert!(err.message().contains("loopback"), "{err}");
}

#[tokio::test]
async fn auth_rejects_missing_malformed_unknown_and_checks_roles() {
    let srv = start("auth", plain_config()).await;
    let a = srv.addr();
    let resp = request(a, "GET", "/v1/whoami", None, None).await;
    assert_eq!(error_of(&resp, 401).0, "unauthenticated");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    for header in [
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        "Bearer tok@en",
        "Bearer a b",
    ] {
        let raw_req = format!(
            "GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw(a, raw_req.as_bytes()).await;
        assert_eq!(error_of(&resp, 401).0, "unauthenticated", "{header}");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    let resp = request(a, "GET", "/v1/whoami", Some("not-a-known-token"), None).await;
    let (code, msg) = error_of(&resp, 401);
    assert_eq!(code, "unauthenticated");
    assert!(!msg.contains("not-a-known-token"));
    let resp = request(a, "GET", "/v1/whoami", Some(ADMIN), None).await;
    assert_eq!(resp.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v, serde_json::json!({"token_id": "adm1", "role": "admin"}));
    let resp = request(a, "GET", "/v1/admin-only", Some(SUBSCRIBER), None).await;
    assert_eq!(error_of(&resp, 403).0, "forbidden");
    assert_eq!(
        request(a, "GET", "/v1/admin-only", Some(ADMIN), None)
            .await
            .status,
        200
    );
    srv.stop().await;
}

/// A request from a chosen loopback source address.
async fn request_from(from: &str, addr: SocketAddr, token: &str) -> HttpResponse {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(addr).await.unwrap();
    let token = Secret::new(token);
    let req = client::Request {
        method: "GET",
        host: "127.0.0.1",
        port: addr.port(),
        path: "/v1/whoami",
        token: Some(&token),
        body: None,
    };
    client::exchange(&mut tcp, &req).await.unwrap()
}

#[tokio::test]
async fn failed_auth_is_rate_limited_per_address() {
    let srv = start("ratelimit", plain_config()).await;
    let a = srv.addr();
    for i in 0..10 {
        let resp = request_from("127.0.0.1", a, &format!("wrong-{i}")).await;
        assert_eq!(resp.status, 401, "attempt {i}");
    }
    let resp = request_from("127.0.0.1", a, "wrong-11").await;
    assert_eq!(error_of(&resp, 429).0, "rate_limited");
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Blocked even with a valid token: guessing must not go on.
    assert_eq!(request_from("127.0.0.1", a, ADMIN).await.status, 429);
    // Another address is not affected.
    assert_eq!(request_from("127.0.0.2", a, ADMIN).await.status, 200);
    srv.stop().await;
}

/// Regression (issue 6, hostile clients): a brute force from the address an admin works from
/// (a NAT, a jump host) locked that admin out. A token that authenticated from the address
/// before the block keeps working; every guess still gets 429.
#[tokio::test]
async fn brute_force_does_not_lock_out_a_token_already_used_from_that_address() {
    let srv = start("ratelimit_trusted", plain_config()).await;
    let a = srv.addr();
    assert_eq!(request_from("127.0.0.3", a, ADMIN).await.status, 200);
    for i in 0..30 {
        let resp = request_from("127.0.0.3", a, &format!("wrong-{i}")).await;
        assert!(matches!(resp.status, 401 | 429), "attempt {i}");
    }
    let resp = request_from("127.0.0.3", a, "wrong-last").await;
    assert_eq!(error_of(&resp, 429).0, "rate_limited");
    assert_eq!(request_from("127.0.0.3", a, ADMIN).await.status, 200);
    srv.stop().await;
}

fn post_raw(content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let mut out = format!(
        "POST /v1/profiles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn json_errors_have_one_shape() {
    let srv = start("json", plain_config()).await;
    let a = srv.addr();
    let good = format!(r#"{{"name":"yt","stream_key":"{STREAM_KEY}"}}"#);
    let resp = raw(
        a,
        &post_raw(Some("application/json; charset=utf-8"), good.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));

    let resp = raw(a, &post_raw(Some("text/plain"), good.as_bytes())).await;
    assert_eq!(error_of(&resp, 415).0, "unsupported_media_type");
    let resp = raw(a, &post_raw(None, good.as_bytes())).await;
    assert_eq!(error_of(&resp, 415).0, "unsupported_media_type");

    let resp = raw(a, &post_raw(Some("application/json"), b"{\"name\": ")).await;
    assert_eq!(error_of(&resp, 400).0, "invalid_argument");

    let body = format!(r#"{{"name":"yt","stream_key":"{STREAM_KEY}","colour":"red"}}"#);
    let resp = raw(a, &post_raw(Some("application/json"), body.as_bytes())).await;
    let (code, msg) = error_of(&resp, 400);
    assert_eq!(code, "invalid_argument");
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    assert!(!msg.contains(STREAM_KEY), "{msg}");

    let body = format!(r#"{{"name":"yt","stream_key":"{STREAM_KEY}","port":"{STREAM_KEY}"}}"#);
    let resp = raw(a, &post_raw(Some("application/json"), body.as_bytes())).await;
    let (_, msg) = error_of(&resp, 400);
    assert!(msg.contains("`port`") && !msg.contains(STREAM_KEY), "{msg}");
    srv.stop().await;
}

#[tokio::test]
async fn secret_with_control_characters_is_not_echoed() {
    let srv = start("secret", plain_config()).await;
    // JSON-escaped control characters reach the StreamKey type, which rejects them.
    let body = r#"{"name":"yt","stream_key":"live_8f3k\u0007Q2zX\u001b[31m9pLm"}"#;
    let resp = raw(
        srv.addr(),
        &post_raw(Some("application/json"), body.as_bytes()),
    )
    .await;
    let (code, msg) = error_of(&resp, 400);
    assert_eq!(code, "invalid_argument");
    assert!(msg.contains("stream_key"), "{msg}");
    for piece in ["live_8f3k", "Q2zX", "9pLm", "\u{1b}", "\u{7}"] {
        assert!(!msg.contains(piece), "message leaks {piece:?}: {msg}");
    }
    // Raw (unescaped) control characters are a syntax error, also without the value.
    let body = "{\"name\":\"yt\",\"stream_key\":\"live_8f3k\u{1}Q2zX9pLm\"}";
    let resp = raw(
        srv.addr(),
        &post_raw(Some("application/json"), body.as_bytes()),
    )
    .await;
    let (_, msg) = error_of(&resp, 400);
    assert!(!msg.contains("live_8f3k"), "{msg}");
    srv.stop().await;
}

#[tokio::test]
async fn limits_and_routing_errors_are_json() {
    let config = ApiConfig {
        max_body_bytes: 1024,
        ..plain_config()
    };
    let srv = start("limits", config).await;
    let a = srv.addr();
    let big = format!(r#"{{"name":"{}","stream_key":"k"}}"#, "x".repeat(2000));
    let resp = raw(a, &post_raw(Some("application/json"), big.as_bytes())).await;
    assert_eq!(error_of(&resp, 413).0, "payload_too_large");
    // Chunked, so no Content-Length: the limit is found while reading.
    let chunked = format!(
        "POST /v1/profiles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let resp = raw(a, chunked.as_bytes()).await;
    assert_eq!(error_of(&resp, 413).0, "payload_too_large");

    let resp = request(a, "GET", "/v1/nope", Some(ADMIN), None).await;
    assert_eq!(error_of(&resp, 404).0, "not_found");
    let resp = request(a, "DELETE", "/healthz", None, None).await;
    assert_eq!(error_of(&resp, 405).0, "method_not_allowed");
    let resp = request(a, "GET", "/v1/items/notanumber", None, None).await;
    let (code, msg) = error_of(&resp, 400);
    assert_eq!(code, "invalid_argument");
    assert!(!msg.contains("notanumber"), "{msg}");
    assert_eq!(
        request(a, "GET", "/v1/items/7", None, None).await.body,
        b"7"
    );
    srv.stop().await;
}

#[tokio::test]
async fn slowloris_is_cut_off_after_header_timeout() {
    let config = ApiConfig {
        header_read_timeout_ms: 1500,
        ..plain_config()
    };
    let srv = start("slowloris", config).await;
    let tcp = TcpStream::connect(srv.addr()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = rd.read_to_end(&mut buf).await;
        Instant::now()
    });
    let header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    for b in header {
        let give_up = start.elapsed() > Duration::from_millis(4500);
        if give_up || reader.is_finished() || wr.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let closed_at = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("server closes the connection")
        .unwrap();
    let after = closed_at - start;
    assert!(
        after >= Duration::from_millis(1400),
        "closed too early: {after:?}"
    );
    assert!(
        after <= Duration::from_millis(4000),
        "closed too late: {after:?}"
    );
    assert!(
        sent < header.len(),
        "the whole header got through ({sent} bytes)"
    );
    // The server still serves others.
    assert_eq!(
        request(srv.addr(), "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    srv.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_after_header_timeout() {
    let config = ApiConfig {
        header_read_timeout_ms: 1000,
        ..plain_config()
    };
    let srv = start("keepalive", config).await;
    let mut tcp = TcpStream::connect(srv.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = client::read_response(&mut tcp, "GET").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), None, "kept alive");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(4), tcp.read(&mut buf))
        .await
        .expect("idle connection closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF expected");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    srv.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait() {
    let config = ApiConfig {
        max_connections: 1,
        ..plain_config()
    };
    let srv = start("conncap", config).await;
    let idle = TcpStream::connect(srv.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn(request(srv.addr(), "GET", "/healthz", None, None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "second connection served past max_connections = 1"
    );
    drop(idle);
    let resp = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the slot frees")
        .unwrap();
    assert_eq!(resp.status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let srv = start("metrics", plain_config()).await;
    let a = srv.addr();
    for _ in 0..2 {
        assert_eq!(request(a, "GET", "/healthz", None, None).await.status, 200);
    }
    assert_eq!(
        request(a, "GET", "/v1/items/1", None, None).await.status,
        200
    );
    assert_eq!(
        request(a, "GET", "/v1/items/2", None, None).await.status,
        200
    );
    assert_eq!(
        request(a, "GET", "/v1/whoami", None, None).await.status,
        401
    );
    assert_eq!(
        request(a, "GET", "/no/such/route", None, None).await.status,
        404
    );
    let resp = request(a, "GET", "/metrics", None, None).await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(resp.body).unwrap();
    let samples = api::metrics::parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let count = |route: &str, status: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "onair_http_requests_total"
                    && s.label("method") == Some("GET")
                    && s.label("route") == Some(route)
                    && s.label("status") == Some(status)
            })
            .map(|s| s.value)
    };
    assert_eq!(count("/healthz", "200"), Some(2.0), "{text}");
    assert_eq!(count("/v1/items/{id}", "200"), Some(2.0), "{text}");
    assert_eq!(count("/v1/whoami", "401"), Some(1.0), "{text}");
    assert_eq!(count("unmatched", "404"), Some(1.0), "{text}");
    assert!(
        !text.contains("/no/such/route"),
        "raw paths must not become labels"
    );
    let hist = samples.iter().find(|s| {
        s.name == "onair_http_request_duration_seconds_count"
            && s.label("route") == Some("/healthz")
    });
    assert_eq!(hist.map(|s| s.value), Some(2.0));
    srv.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_and_in_sync() {
    let srv = start("openapi", plain_config()).await;
    let resp = request(srv.addr(), "GET", "/openapi.json", None, None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let served = String::from_utf8(resp.body).unwrap();
    assert_eq!(served, api::openapi::DOCUMENT);
    // The document is the full app's (exact sync: tests/api_v1); the infra routes are in it.
    let documented = api::openapi::documented_routes(&served).unwrap();
    for r in api::base_router().table() {
        assert!(documented.contains(r), "{r:?}");
    }
    // The test routes are not documented, and the check says so.
    let e = api::openapi::check_sync(&served, test_routes().table()).unwrap_err();
    assert!(e.contains("GET /v1/items/{id}"), "{e}");
    srv.stop().await;
}

/// Runs the real `onair ctl` with a clean environment.
async fn ctl(args: &[&str], env_token: Option<&str>, stdin: Option<&[u8]>) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let env_token = env_token.map(str::to_owned);
    let stdin = stdin.map(<[u8]>::to_vec);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onair"));
        cmd.arg("ctl")
            .args(&args)
            .env_remove("ONAIR_TOKEN")
            .env_remove("ONAIR_URL");
        cmd.env("RUST_LOG", "warn");
        if let Some(t) = env_token {
            cmd.env("ONAIR_TOKEN", t);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(&data).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn write_token_file(dir: &Path, token: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p.to_str().unwrap().to_owned()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_plain_token_sources_and_errors() {
    let srv = start("ctl", plain_config()).await;
    let url = format!("http://127.0.0.1:{}", srv.addr().port());
    let token_file = write_token_file(&srv.dir, ADMIN);

    let out = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            &token_file,
            "get",
            "/v1/whoami",
        ],
        None,
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "admin");
    assert!(text(&out.stdout).contains("\n  \"role\""), "pretty-printed");

    let out = ctl(
        &["--url", &url, "get", "/v1/whoami"],
        Some(SUBSCRIBER),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("subscriber"));

    let out = ctl(
        &["--url", &url, "--token", ADMIN, "get", "/v1/whoami"],
        None,
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );

    let out = ctl(
        &["--url", &url, "get", "/v1/admin-only"],
        Some(SUBSCRIBER),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("403 forbidden: this token's role may not do this"),
        "{err}"
    );

    let out = ctl(&["--url", &url, "get", "/v1/whoami"], None, None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("401 unauthenticated"),
        "{}",
        text(&out.stderr)
    );

    let out = ctl(&["--url", &url, "get", "/metrics"], None, None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let metrics = text(&out.stdout);
    api::metrics::parse_text(&metrics).unwrap();
    assert!(metrics.contains("route=\"/v1/whoami\""), "{metrics}");

    let body = format!(r#"{{"name":"yt","stream_key":"{STREAM_KEY}"}}"#);
    let args = [
        "--url",
        &url,
        "--token-file",
        &token_file,
        "post",
        "/v1/profiles",
        "--data-file",
        "-",
    ];
    let out = ctl(&args, None, Some(body.as_bytes())).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"yt\""));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_tls_with_ca_pin_and_refusals() {
    let config = ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ApiConfig::default()
    };
    let srv = start("ctl-tls", config).await;
    let url = format!("https://127.0.0.1:{}", srv.addr().port());
    let ca = srv.dir.join("tls/device-cert.pem");
    let ca = ca.to_str().unwrap();
    let fp = srv.handle.fingerprint().unwrap().to_owned();

    let out = ctl(
        &["--url", &url, "--ca", ca, "get", "/v1/whoami"],
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = ctl(
        &["--url", &url, "--pin", &fp, "get", "/healthz"],
        None,
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = ctl(
        &["--url", &url, "--insecure-loopback", "get", "/healthz"],
        None,
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = ctl(&["--url", &url, "get", "/healthz"], None, None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--ca FILE or --pin"),
        "{}",
        text(&out.stderr)
    );
    let wrong = format!(
        "{}{}",
        if fp.starts_with('0') { "1" } else { "0" },
        &fp[1..]
    );
    let out = ctl(
        &["--url", &url, "--pin", &wrong, "get", "/healthz"],
        None,
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    srv.stop().await;
}
