//! A minimal HTTP/1.1 client exchange over any async byte stream (TCP or TLS): one request
//! with `Content-Length` and `Connection: close`; the response's status, headers and body
//! (by `Content-Length`, chunked, or to end of stream), every part bounded.

use std::sync::Arc;

use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::Result;
use crate::secret::Secret;
use crate::{bail, err};

/// Longest status or header line.
const MAX_LINE: usize = 8 * 1024;
/// Most header lines in a response.
const MAX_HEADERS: usize = 100;
/// Largest response body.
const MAX_BODY: usize = 16 << 20;

/// One request to send.
pub struct Request<'a> {
    pub method: &'static str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub token: Option<&'a Secret>,
    /// A JSON body (sent with `Content-Type: application/json`).
    pub body: Option<&'a [u8]>,
}

/// A received response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request target: starts with `/`, visible ASCII only (no CR/LF smuggling), bounded.
pub fn check_path(path: &str) -> Result<()> {
    let ok =
        path.starts_with('/') && path.len() <= 2048 && path.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        bail!(
            InvalidArgument,
            "PATH must start with / and hold visible ASCII only (no spaces)"
        );
    }
    Ok(())
}

/// A bearer token's characters (RFC 6750 `b64token`).
pub fn check_token(token: &str) -> Result<()> {
    let ok = !token.is_empty()
        && token.len() <= 512
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !ok {
        bail!(
            InvalidArgument,
            "the token holds characters a bearer token cannot have"
        );
    }
    Ok(())
}

/// The request bytes.
pub fn encode(req: &Request<'_>) -> Vec<u8> {
    let host = if req.host.contains(':') {
        format!("[{}]:{}", req.host, req.port)
    } else {
        format!("{}:{}", req.host, req.port)
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: onair-ctl/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        req.method,
        req.path,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = req.token {
        head.push_str(&format!("Authorization: Bearer {}\r\n", t.expose()));
    }
    let body = req.body.unwrap_or_default();
    if req.body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `req` on `stream` and reads the response.
pub async fn exchange<S>(stream: &mut S, req: &Request<'_>) -> Result<HttpResponse>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| crate::error::Error::from_net("HTTP exchange", &e);
    stream.write_all(&encode(req)).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    read_response(stream, req.method).await
}

/// Reads one response (skipping 1xx) to a request made with `method`.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    method: &str,
) -> Result<HttpResponse> {
    let mut r = BufReader::new(stream);
    loop {
        let (status, headers) = read_head(&mut r).await?;
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real response follows.
        }
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else {
            read_body(&mut r, &headers).await?
        };
        return Ok(HttpResponse {
            status,
            headers,
            body,
        });
    }
}

/// Reads one line ending in LF (CR stripped), at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<String> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| crate::error::Error::from_net("reading the response", &e))?;
    if n == 0 {
        bail!(Unavailable, "the server closed the connection");
    }
    if line.last() != Some(&b'\n') {
        bail!(Protocol, "response line too long or cut");
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| err!(Protocol, "response header is not UTF-8"))
}

/// Status line and headers.
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, Vec<(String, String)>)> {
    let status_line = read_line(r).await?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        bail!(Protocol, "not an HTTP/1.x response");
    }
    let status: u16 = code
        .parse()
        .map_err(|_| err!(Protocol, "bad status code"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r).await?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        if headers.len() == MAX_HEADERS {
            bail!(Protocol, "too many response headers");
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| err!(Protocol, "malformed response header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// The body by `Transfer-Encoding: chunked`, `Content-Length`, or to end of stream.
async fn read_body<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    headers: &[(String, String)],
) -> Result<Vec<u8>> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let io = |e: std::io::Error| crate::error::Error::from_net("reading the response body", &e);
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return read_chunked(r).await;
    }
    if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| err!(Protocol, "bad Content-Length"))?;
        if len > MAX_BODY {
            bail!(
                ResourceExhausted,
                "response body of {len} bytes is too large"
            );
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.map_err(io)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    (&mut *r)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(io)?;
    if body.len() > MAX_BODY {
        bail!(ResourceExhausted, "response body is too large");
    }
    Ok(body)
}

/// Chunked transfer coding: hex sizes (extensions ignored), data, CRLF; trailers skipped.
async fn read_chunked<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r).await?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| err!(Protocol, "bad chunk size"))?;
        if size == 0 {
            while !read_line(r).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            bail!(ResourceExhausted, "response body is too large");
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .await
            .map_err(|e| crate::error::Error::from_net("reading a chunk", &e))?;
        if !read_line(r).await?.is_empty() {
            bail!(Protocol, "chunk not followed by CRLF");
        }
    }
}

/// Accepts the server certificate whose SHA-256 equals the pin (`None`: any certificate, for
/// `--insecure-loopback`). Handshake signatures are still verified.
#[derive(Debug)]
pub struct PinVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn new(pin: Option<[u8; 32]>, provider: Arc<CryptoProvider>) -> Self {
        PinVerifier { pin, provider }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity);
        let diff = digest
            .as_ref()
            .iter()
            .zip(pin)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    async fn roundtrip(response: &'static [u8], method: &'static str) -> Result<HttpResponse> {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let n = server.read(&mut buf).await.unwrap();
            server.write_all(response).await.unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        });
        let token = Secret::new("tok");
        let req = Request {
            method,
            host: "::1",
            port: 8443,
            path: "/v1/x",
            token: Some(&token),
            body: Some(b"{}"),
        };
        let resp = exchange(&mut client, &req).await;
        let sent = srv.await.unwrap();
        assert!(
            sent.starts_with(&format!("{method} /v1/x HTTP/1.1\r\nHost: [::1]:8443\r\n")),
            "{sent}"
        );
        assert!(sent.contains("Authorization: Bearer tok\r\n"));
        assert!(sent.ends_with("Content-Length: 2\r\n\r\n{}"), "{sent}");
        resp
    }

    #[tokio::test]
    async fn content_length_body() {
        let r = roundtrip(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA",
            "POST",
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"hello"[..], Some("b"))
        );
    }

    #[tokio::test]
    async fn chunked_body_and_continue() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
        let r = roundtrip(raw, "PUT").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
    }

    #[tokio::test]
    async fn malformed_responses_fail() {
        assert!(roundtrip(b"SSH-2.0-x\r\n\r\n", "POST").await.is_err());
        assert!(
            roundtrip(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "POST"
            )
            .await
            .is_err()
        );
        assert!(
            roundtrip(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "POST"
            )
            .await
            .is_err()
        );
    }

    #[test]
    fn path_and_token_checks() {
        assert!(check_path("/v1/sessions?x=1").is_ok());
        assert!(check_path("/a\r\nX: y").is_err());
        assert!(check_token("abc.DEF-_~+/=").is_ok());
        assert!(check_token("abc\r\nX: y").is_err());
    }
}
