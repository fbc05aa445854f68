//! docs/openapi.json against the full router of `onair run`, and against what the API really
//! accepts and answers.

use std::collections::BTreeSet;
use std::sync::Arc;

use onair::api::RouteSpec;
use onair::api::openapi::{DOCUMENT, check_sync};
use onair::api::v1::V1;
use onair::control::supervisor::{self, RealClocks, SupervisorConfig};
use onair::store::Store;
use serde_json::Value;

use crate::harness::{Svc, TempDir};

pub fn document() -> Value {
    serde_json::from_str(DOCUMENT).unwrap()
}

/// Follows a local `$ref`.
pub fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let ptr = r.strip_prefix('#').unwrap();
            let target = doc.pointer(ptr).unwrap_or_else(|| panic!("dangling {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// The property names of component schema `name`.
pub fn properties(doc: &Value, name: &str) -> BTreeSet<String> {
    let s = &doc["components"]["schemas"][name];
    s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name} has no properties"))
        .keys()
        .cloned()
        .collect()
}

/// Asserts that a response object has exactly the documented properties of `name`.
pub fn assert_shape(doc: &Value, name: &str, v: &Value) {
    let keys: BTreeSet<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, properties(doc, name), "{name} as answered: {v}");
}

/// The request body schema of an operation, if it has one.
pub fn request_schema<'a>(doc: &'a Value, path: &str, method: &str) -> Option<&'a Value> {
    let op = &doc["paths"][path][method];
    let body = op.get("requestBody")?;
    Some(resolve(
        doc,
        &resolve(doc, body)["content"]["application/json"]["schema"],
    ))
}

#[tokio::test]
async fn document_lists_exactly_the_routes_of_the_full_app() {
    let dir = TempDir::new("openapi");
    let store = Store::open(&dir.path().join("data")).unwrap();
    let control =
        supervisor::start(store, Arc::new(RealClocks), SupervisorConfig::default()).unwrap();
    let routes = onair::run::routes(V1 {
        control,
        allowed_sources: Arc::new(Vec::new()),
        indicator_streams: Arc::default(),
    });
    let table = routes.table().to_vec();
    assert!(table.len() >= 29, "{table:?}");
    check_sync(DOCUMENT, &table).unwrap();

    // The check bites both ways on this document.
    let mut more = table.clone();
    more.push(RouteSpec {
        method: "POST",
        path: "/v1/sessions/{id}/undocumented".into(),
    });
    let e = check_sync(DOCUMENT, &more).unwrap_err();
    assert!(e.contains("POST /v1/sessions/{id}/undocumented"), "{e}");
    let fewer: Vec<RouteSpec> = table
        .iter()
        .filter(|r| !(r.method == "POST" && r.path == "/v1/sessions/{id}/confirm"))
        .cloned()
        .collect();
    let e = check_sync(DOCUMENT, &fewer).unwrap_err();
    assert!(
        e.contains("not routed: [POST /v1/sessions/{id}/confirm]"),
        "{e}"
    );
}

#[test]
fn every_operation_states_its_role_errors_params_and_strict_body() {
    let doc = document();
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            n += 1;
            let what = format!("{method} {path}");
            assert!(op["operationId"].is_string(), "{what}");
            let responses = op["responses"].as_object().unwrap();
            for (code, r) in responses {
                let r = resolve(&doc, r);
                assert!(r["description"].is_string(), "{what} {code}");
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &r["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Error",
                        "{what} {code}"
                    );
                }
            }
            if !path.starts_with("/v1/") {
                assert_eq!(op["security"], serde_json::json!([]), "{what} is public");
                continue;
            }
            assert!(
                op.get("security").is_none(),
                "{what} uses the bearer default"
            );
            let desc = op["description"].as_str().unwrap_or("");
            assert!(desc.starts_with("Role: "), "{what}: {desc}");
            for code in ["401", "403", "429"] {
                assert!(responses.contains_key(code), "{what} lacks {code}");
            }
            // Path parameters: exactly the template's.
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(p["required"], true, "{what}");
                            p["name"].as_str().unwrap()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(in_template, declared, "{what}");
            if let Some(schema) = request_schema(&doc, path, method) {
                assert_eq!(schema["type"], "object", "{what}");
                assert_eq!(schema["additionalProperties"], false, "{what}");
                for code in ["400", "413", "415"] {
                    assert!(responses.contains_key(code), "{what} lacks {code}");
                }
            }
        }
    }
    assert_eq!(n, 30); // 3 infra + 27 v1 (incl. GET /v1/system)
}

/// The serde message for an unknown field lists the struct's real fields: they must be the
/// documented properties of the request body.
#[tokio::test]
async fn request_bodies_have_exactly_the_documented_fields() {
    let doc = document();
    let svc = Svc::start("bodies").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let Some(schema) = request_schema(&doc, path, method) else {
                continue;
            };
            let documented: BTreeSet<String> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let url = path.replace("{id}", "x").replace("{session_id}", "x");
            let body = serde_json::json!({ "zz_unknown": 1 });
            let r = svc
                .call(Some(&svc.admin), &method.to_uppercase(), &url, Some(&body))
                .await;
            let msg = r.error(400, "invalid_argument");
            assert!(msg.contains("unknown field `zz_unknown`"), "{msg}");
            let expected = msg.split("expected").nth(1).unwrap_or("");
            assert!(!expected.ends_with('…'), "message cut: {msg}");
            let real: BTreeSet<String> = expected
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            assert_eq!(real, documented, "{method} {path}: {msg}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
    svc.stop().await;
}
