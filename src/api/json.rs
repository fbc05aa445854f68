//! `StrictJson<T>`: the only way a request body enters a handler.
//!
//! Requires `Content-Type: application/json`, reads at most the server's body limit
//! ([`BodyLimit`], default [`DEFAULT_MAX_BODY_BYTES`]) and deserializes with serde. Request types
//! should carry `#[serde(deny_unknown_fields)]` and decode straight into typed commands.
//! Errors say which field is wrong (its path, serde's reason) but never echo a value: strings,
//! numbers and booleans quoted by serde are replaced by their type, since a value may be a
//! stream key or token.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Default request body limit: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The body limit in force, put in the request extensions by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

/// A JSON request body decoded strictly into `T` (see the module docs). Also a JSON response:
/// `StrictJson(value)` serializes with `Content-Type: application/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictJson<T>(pub T);

impl<T, S> FromRequest<S> for StrictJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        check_content_type(&req)?;
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_MAX_BODY_BYTES, |l| l.0);
        let bytes = read_body(req.into_body(), limit).await?;
        decode(&bytes).map(StrictJson)
    }
}

impl<T: Serialize> IntoResponse for StrictJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => {
                let mut resp = Response::new(Body::from(body));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => ApiError::internal(&e).into_response(),
        }
    }
}

/// Accepts `application/json` with optional parameters (`; charset=utf-8`), case-insensitive.
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(
            "request body must be JSON with Content-Type: application/json",
        ))
    }
}

/// Reads the whole body, failing with 413 past `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) if is_length_limit(&e) => Err(ApiError::payload_too_large(limit)),
        Err(_) => Err(ApiError::invalid_argument(
            "could not read the request body",
        )),
    }
}

/// Whether a body error (possibly wrapped) is a length-limit error.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Deserializes `bytes` into `T`, with an error message naming the field but no value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = redact_values(&e.inner().to_string());
        let msg = if path.is_empty() || path == "." {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid JSON body at `{path}`: {inner}")
        };
        ApiError::invalid_argument(msg)
    })?;
    // Only whitespace may follow the value.
    de.end().map_err(|e| {
        ApiError::invalid_argument(format!(
            "invalid JSON body: {}",
            redact_values(&e.to_string())
        ))
    })?;
    Ok(value)
}

/// Replaces the values serde quotes in its messages (`string "…"`, `integer `…``,
/// `floating point `…``, `boolean `…``, `character '…'`) by their type alone.
pub fn redact_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    loop {
        let next = VALUE_PREFIXES
            .iter()
            .filter_map(|(p, close)| rest.find(p).map(|i| (i, *p, *close)))
            .min_by_key(|(i, _, _)| *i);
        let Some((i, prefix, close)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i]);
        out.push_str(prefix.trim_end_matches([' ', '"', '`', '\'']));
        rest = skip_quoted(&rest[i + prefix.len()..], close);
    }
}

/// serde's quoted value forms and the character that closes each.
const VALUE_PREFIXES: [(&str, char); 6] = [
    ("string \"", '"'),
    // `unknown variant `x`, expected one of …`: the variant is the caller's input.
    ("unknown variant `", '`'),
    ("integer `", '`'),
    ("floating point `", '`'),
    ("boolean `", '`'),
    ("character '", '\''),
];

/// Skips a `Debug`-escaped quoted value up to and including its unescaped `close`.
fn skip_quoted(s: &str, close: char) -> &str {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == close {
            return &s[i + c.len_utf8()..];
        }
    }
    ""
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn unknown_field_is_named() {
        let e = decode::<Profile>(br#"{"name":"a","port":1,"colour":"red"}"#).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.message().contains("unknown field `colour`"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn wrong_type_names_path_not_value() {
        let e = decode::<Profile>(br#"{"name":"a","port":"live_SECRET"}"#).unwrap_err();
        assert!(e.message().contains("`port`"), "{}", e.message());
        assert!(
            e.message().contains("invalid type: string"),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("SECRET"), "{}", e.message());
        let e = decode::<Profile>(br#"{"name":true,"port":1}"#).unwrap_err();
        assert!(!e.message().contains("true"), "{}", e.message());
    }

    #[test]
    fn trailing_data_rejected() {
        let e = decode::<Profile>(br#"{"name":"a","port":1} {"x":1}"#).unwrap_err();
        assert!(
            e.message().contains("trailing characters"),
            "{}",
            e.message()
        );
        assert!(decode::<Profile>(b" {\"name\":\"a\",\"port\":1}\n").is_ok());
    }

    #[test]
    fn unknown_enum_variants_are_not_echoed() {
        // Regression: `service: "sk-live-XYZ"` came back as "unknown variant `sk-live-XYZ`".
        let m = "unknown variant `sk-live-XYZ`, expected one of `youtube`, `custom` at line 1";
        let r = redact_values(m);
        assert!(!r.contains("sk-live-XYZ"), "{r}");
        assert!(r.starts_with("unknown variant"), "{r}");
        assert!(r.contains("expected one of"), "{r}");
    }

    #[test]
    fn redaction_handles_escaped_quotes() {
        let m = r#"invalid value: string "a\"b\u{1}c", expected a key at line 1"#;
        assert_eq!(
            redact_values(m),
            "invalid value: string, expected a key at line 1"
        );
        assert_eq!(
            redact_values("invalid type: integer `42`, expected x"),
            "invalid type: integer, expected x"
        );
        assert_eq!(
            redact_values("unterminated string \"abc"),
            "unterminated string"
        );
    }
}
