//! The OpenAPI 3.1 document (`docs/openapi.json`, compiled in) and its sync check.
//!
//! The document is written by hand next to the handlers. [`check_sync`] compares its
//! `paths` with a [`RouteSpec`] table from [`crate::api::Routes`]: every route must be
//! documented and every documented operation must exist. Call it in a test with the table of
//! the complete router.

use std::collections::BTreeSet;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::routes::RouteSpec;

/// The document served at `/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// OpenAPI operation keys, mapped to our upper-case methods.
const METHODS: [(&str, &str); 5] = [
    ("get", "GET"),
    ("post", "POST"),
    ("put", "PUT"),
    ("patch", "PATCH"),
    ("delete", "DELETE"),
];

/// Handler for `GET /openapi.json`.
pub async fn serve_document() -> Response {
    let mut resp = DOCUMENT.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `(method, path)` operations a document declares.
pub fn documented_routes(doc_text: &str) -> Result<BTreeSet<RouteSpec>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(doc_text).map_err(|e| format!("openapi document is not JSON: {e}"))?;
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1"))
    {
        return Err("openapi document must declare \"openapi\": \"3.1.x\"".into());
    }
    let paths = doc["paths"]
        .as_object()
        .ok_or("openapi document has no \"paths\" object")?;
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .ok_or(format!("path {path} is not an object"))?;
        for (key, method) in METHODS {
            if item.contains_key(key) {
                out.insert(RouteSpec {
                    method,
                    path: path.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// `Ok` when the document and the route table declare exactly the same operations; otherwise
/// an error listing what is missing on each side.
pub fn check_sync(doc_text: &str, table: &[RouteSpec]) -> Result<(), String> {
    let documented = documented_routes(doc_text)?;
    let registered: BTreeSet<RouteSpec> = table.iter().cloned().collect();
    let fmt = |set: BTreeSet<&RouteSpec>| {
        set.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let undocumented: BTreeSet<_> = registered.difference(&documented).collect();
    let unrouted: BTreeSet<_> = documented.difference(&registered).collect();
    if undocumented.is_empty() && unrouted.is_empty() {
        return Ok(());
    }
    Err(format!(
        "routes not in docs/openapi.json: [{}]; documented but not routed: [{}]",
        fmt(undocumented),
        fmt(unrouted)
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    fn spec(method: &'static str, path: &str) -> RouteSpec {
        RouteSpec {
            method,
            path: path.into(),
        }
    }

    /// The document describes the full app; its exact sync with `run::routes` is checked in
    /// tests/api_v1. Here: the infrastructure routes are all in it.
    #[test]
    fn base_routes_are_documented() {
        let documented = documented_routes(DOCUMENT).unwrap();
        for r in crate::api::base_router().table() {
            assert!(documented.contains(r), "{r:?} not documented");
        }
    }

    #[test]
    fn detects_drift_both_ways() {
        let doc = r#"{"openapi":"3.1.0","paths":{"/a":{"get":{}},"/b/{id}":{"delete":{}}}}"#;
        check_sync(doc, &[spec("GET", "/a"), spec("DELETE", "/b/{id}")]).unwrap();
        let e = check_sync(doc, &[spec("GET", "/a"), spec("POST", "/a")]).unwrap_err();
        assert!(e.contains("not in docs/openapi.json: [POST /a]"), "{e}");
        assert!(e.contains("not routed: [DELETE /b/{id}]"), "{e}");
    }

    #[test]
    fn document_declares_error_schema() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let err = &doc["components"]["schemas"]["Error"];
        assert_eq!(err["required"], serde_json::json!(["error", "message"]));
    }
}
