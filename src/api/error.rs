//! The API's error response: `{"error": "<code>", "message": "…"}` with the matching status.
//!
//! Handlers return `Result<_, ApiError>`; a domain [`Error`] converts by its [`ErrorKind`]
//! (`?` works). Internal and I/O errors are logged and answered with a generic message, so no
//! path, SQL or backtrace reaches a client. [`normalize`] rewrites every other error response
//! (axum's plain-text rejections, empty 405s) into the same JSON shape.

use std::fmt;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorKind};

/// Longest message sent to a client, in characters; longer ones are cut with `…`.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// An error answered to an API client.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status and code. The message is sanitized (control
    /// characters replaced, length capped); never put a secret in it.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: sanitize_message(&message.into()),
            retry_after_s: None,
        }
    }

    /// 400 `invalid_argument`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 401 `unauthenticated`; the response carries `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403 `forbidden`: authenticated, but the role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 409 `conflict`: the resource's state does not allow this (e.g. confirm twice).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit_bytes} bytes"),
        )
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 429 `rate_limited` with `Retry-After: retry_after_s`.
    pub fn rate_limited(message: impl Into<String>, retry_after_s: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after_s = Some(retry_after_s.max(1));
        e
    }

    /// 500 `internal` with a generic message; `detail` goes to the log only.
    pub fn internal(detail: &dyn fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answered as 500");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the appliance log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body `{"error": code, "message": message}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.code, "message": self.message }).to_string()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            ErrorKind::Policy => (StatusCode::FORBIDDEN, "policy"),
            ErrorKind::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            // A peer (an ingest) misbehaved or its certificate failed: the gateway's fault.
            ErrorKind::Protocol => (StatusCode::BAD_GATEWAY, "protocol"),
            ErrorKind::Certificate => (StatusCode::BAD_GATEWAY, "certificate"),
            ErrorKind::Io | ErrorKind::Internal => return ApiError::internal(&e),
        };
        ApiError::new(status, code, e.message())
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ApiError({} {}: {})",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Replaces control characters with `?` and cuts the message at [`MAX_MESSAGE_CHARS`].
pub fn sanitize_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(MAX_MESSAGE_CHARS + 3));
    for (i, c) in msg.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// The error code used for a bare status (axum rejections, fallbacks).
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_argument",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "invalid_argument",
    }
}

/// Whether a response already carries a JSON body.
fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites a non-JSON error response (status ≥ 400) into the JSON error shape.
///
/// The original body (axum's rejection text) is dropped, not echoed: it can quote request
/// values. The message names the status instead; [`crate::api::json::StrictJson`] gives the
/// detailed, sanitized messages for bodies.
pub async fn normalize(resp: Response) -> Response {
    let status = resp.status();
    if status.as_u16() < 400 || is_json(&resp) {
        return resp;
    }
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let mut out = ApiError::new(
        status,
        code_for_status(status),
        format!("request rejected: {reason}"),
    )
    .into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn json_of(resp: Response) -> serde_json::Value {
        let bytes = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn kinds_map_to_statuses() {
        let cases = [
            (ErrorKind::InvalidArgument, 400, "invalid_argument"),
            (ErrorKind::PermissionDenied, 403, "permission_denied"),
            (ErrorKind::Policy, 403, "policy"),
            (ErrorKind::ResourceExhausted, 429, "resource_exhausted"),
            (ErrorKind::Unavailable, 503, "unavailable"),
            (ErrorKind::Certificate, 502, "certificate"),
            (ErrorKind::Io, 500, "internal"),
            (ErrorKind::Internal, 500, "internal"),
        ];
        for (kind, status, code) in cases {
            let e = ApiError::from(Error::new(kind, "/var/lib/onair/db: disk full"));
            assert_eq!(e.status().as_u16(), status, "{kind:?}");
            assert_eq!(e.code(), code, "{kind:?}");
            if status == 500 {
                assert!(!e.message().contains("/var/lib"), "internal detail leaked");
            }
        }
    }

    #[tokio::test]
    async fn unauthenticated_has_www_authenticate() {
        let resp = ApiError::unauthenticated("no token").into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let v = json_of(resp).await;
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(v["message"], "no token");
    }

    #[tokio::test]
    async fn normalize_rewrites_plain_text() {
        let plain = (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Failed to deserialize: secret123",
        )
            .into_response();
        let resp = normalize(plain).await;
        assert_eq!(resp.status(), 422);
        let v = json_of(resp).await;
        assert_eq!(v["error"], "invalid_argument");
        assert!(!v["message"].as_str().unwrap().contains("secret123"));
    }

    #[test]
    fn sanitize_caps_and_strips_controls() {
        let long = "a\u{1}".repeat(400);
        let s = sanitize_message(&long);
        assert!(!s.chars().any(char::is_control));
        assert_eq!(s.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
