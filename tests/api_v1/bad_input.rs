//! Bad input: malformed, unknown-field, oversize and mistyped bodies; destinations outside the
//! policy; bad TLS settings and stream keys; bad fabric sources and schedules; wrong confirms;
//! entitlement off. Each is refused with the documented status and code, never echoes a key,
//! and leaves the state exactly as it was.

use serde_json::{Value, json};

use crate::harness::{Body, Svc, World, json_body};

/// Sends a request that must be refused with `status`/`code` and change nothing; returns the
/// error message.
#[allow(clippy::too_many_arguments)]
async fn refused(
    svc: &Svc,
    baseline: &Value,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Body>,
    status: u16,
    code: &str,
) -> String {
    let auth = [format!("Bearer {token}")];
    let r = svc.raw(None, method, path, &auth, body).await;
    let msg = r.error(status, code);
    assert_eq!(
        &svc.snapshot().await,
        baseline,
        "{method} {path} ({status} {code}: {msg}) changed the state"
    );
    msg
}

fn profile(extra: Value) -> Value {
    let mut v = json!({ "name": "bad", "service": "youtube", "stream_key": "live-ok-1234" });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let w = World::setup("bad").await;
    let svc = &w.svc;
    let a = w.tok_a.as_str();
    let admin = svc.admin.clone();
    let admin = admin.as_str();
    let baseline = svc.snapshot().await;
    let raw = |ct: Option<&'static str>, s: &str| Some((ct, s.as_bytes().to_vec()));
    let j = |v: Value| json_body(&v);
    let profile_path = format!("/v1/profiles/{}", w.profile_a);

    // Body handling, on the profile routes.
    for path in ["/v1/profiles", profile_path.as_str()] {
        let m = if path == "/v1/profiles" {
            "POST"
        } else {
            "PUT"
        };
        let ct = Some("application/json");
        for text in [
            r#"{"name": "x","#,
            "[1,2]",
            "",
            r#"{"name":"a"} {"b":1}"#,
            "nul\0",
        ] {
            refused(
                svc,
                &baseline,
                a,
                m,
                path,
                raw(ct, text),
                400,
                "invalid_argument",
            )
            .await;
        }
        let msg = refused(
            svc,
            &baseline,
            a,
            m,
            path,
            j(profile(json!({ "colour": "red" }))),
            400,
            "invalid_argument",
        )
        .await;
        assert!(msg.contains("unknown field `colour`"), "{msg}");
        let big = profile(json!({ "name": "x".repeat(64 * 1024) }));
        refused(svc, &baseline, a, m, path, j(big), 413, "payload_too_large").await;
        let body = profile(json!({})).to_string();
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let b = raw(ct, &body);
            refused(svc, &baseline, a, m, path, b, 415, "unsupported_media_type").await;
        }
        // Wrong types name the field, not the value.
        let msg = refused(
            svc,
            &baseline,
            a,
            m,
            path,
            j(profile(json!({ "destination_records": "live-typed-9999" }))),
            400,
            "invalid_argument",
        )
        .await;
        assert!(msg.contains("destination_records"), "{msg}");
        assert!(!msg.contains("live-typed-9999"), "{msg}");
    }

    // Destinations outside the policy: 403 policy.
    for extra in [
        json!({ "url": "http://a.rtmps.youtube.com/live2" }),
        json!({ "url": "file:///etc/passwd" }),
        json!({ "url": "rtmps://evil.example.com/live2" }),
        json!({ "url": "rtmp://a.rtmps.youtube.com/live2" }),
        json!({ "service": "custom", "url": "file:///etc/passwd" }),
        json!({ "service": "custom", "url": "rtmps://ingest.evil.example/live" }),
        json!({ "service": "custom", "url": "http://ingest.evil.example/live" }),
        json!({ "service": "twitch" }),
    ] {
        for (m, path) in [("POST", "/v1/profiles"), ("PUT", profile_path.as_str())] {
            let body = j(profile(extra.clone()));
            refused(svc, &baseline, a, m, path, body, 403, "policy").await;
        }
    }
    // Bad TLS settings: 400.
    let garbage_pem = "-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n";
    for extra in [
        json!({ "ca_bundle_pem": "not a PEM" }),
        json!({ "ca_bundle_pem": garbage_pem }),
        json!({ "spki_pin": "abcd" }),
        json!({ "spki_pin": "zz".repeat(32) }),
        json!({ "spki_pin": "+f".repeat(32) }),
        // 64 bytes with a character across the first pair: used to panic the supervisor.
        json!({ "spki_pin": format!("a{}b", "\u{e9}".repeat(31)) }),
    ] {
        for (m, path) in [("POST", "/v1/profiles"), ("PUT", profile_path.as_str())] {
            let body = j(profile(extra.clone()));
            refused(svc, &baseline, a, m, path, body, 400, "invalid_argument").await;
        }
    }
    // Bad stream keys: 400, never echoed.
    let long = "k".repeat(513);
    for key in [
        "live key-1234",
        "live\u{1}key-1234",
        "live\tkey-1234",
        "live\nkey",
        "",
        long.as_str(),
    ] {
        for (m, path) in [("POST", "/v1/profiles"), ("PUT", profile_path.as_str())] {
            let body = j(profile(json!({ "stream_key": key })));
            let msg = refused(svc, &baseline, a, m, path, body, 400, "invalid_argument").await;
            if !key.is_empty() {
                assert!(!msg.contains(key), "{msg}");
                assert!(!msg.contains("key-1234"), "{msg}");
            }
        }
    }
    let missing_key = json!({ "name": "no key", "service": "youtube" });
    refused(
        svc,
        &baseline,
        a,
        "POST",
        "/v1/profiles",
        j(missing_key),
        400,
        "invalid_argument",
    )
    .await;
    // A URL that carries the key: 400, the key not echoed.
    let key = "SK-in-url-7f3e9a";
    for url in [
        format!("rtmps://a.rtmps.youtube.com/live2/{key}"),
        format!("rtmps://a.rtmps.youtube.com:443/{key}"),
    ] {
        for (m, path) in [("POST", "/v1/profiles"), ("PUT", profile_path.as_str())] {
            let body = j(profile(json!({ "url": url, "stream_key": key })));
            let msg = refused(svc, &baseline, a, m, path, body, 400, "invalid_argument").await;
            assert!(msg.contains("contains the stream key"), "{msg}");
            assert!(!msg.contains(key), "{msg}");
        }
    }
    // The supervisor survived all of that: a valid profile is still accepted (and removed).
    let ok = svc
        .ok_as(
            a,
            "POST",
            "/v1/profiles",
            Some(&profile(json!({ "spki_pin": "ab".repeat(32) }))),
        )
        .await;
    let id = ok["id"].as_str().unwrap();
    svc.ok_as(a, "DELETE", &format!("/v1/profiles/{id}"), None)
        .await;
    assert_eq!(svc.snapshot().await, baseline);

    // Sessions: sources and schedules.
    let session = |extra: Value| {
        let mut v = json!({ "profile_id": w.profile_a, "meeting_id": "m-bad", "source": "udp://127.0.0.1:40002" });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        j(v)
    };
    for (extra, status, code) in [
        (
            json!({ "source": "tcp://127.0.0.1:5000" }),
            400,
            "invalid_argument",
        ),
        (
            json!({ "source": "udp://127.0.0.1:5000?foo=bar" }),
            400,
            "invalid_argument",
        ),
        (
            json!({ "source": "udp://127.0.0.1" }),
            400,
            "invalid_argument",
        ),
        (
            json!({ "source": "file:///dev/video0" }),
            400,
            "invalid_argument",
        ),
        (json!({ "source": "udp://10.9.9.9:5000" }), 403, "policy"),
        (json!({ "source": "udp://0.0.0.0:5000" }), 403, "policy"),
        (json!({ "source": "udp://[::1]:5000" }), 403, "policy"),
        (
            json!({ "source": "udp://239.9.9.9:5000?iface=127.0.0.1" }),
            403,
            "policy",
        ),
        (
            json!({ "start_at_ms": 4_000_000_000_000i64, "stop_at_ms": 3_999_999_999_999i64 }),
            400,
            "invalid_argument",
        ),
        (
            json!({ "start_at_ms": 4_000_000_000_000i64, "stop_at_ms": 4_000_000_000_000i64 }),
            400,
            "invalid_argument",
        ),
        (
            json!({ "stop_at_ms": 4_000_000_000_000i64 }),
            400,
            "invalid_argument",
        ),
        (json!({ "meeting_id": "" }), 400, "invalid_argument"),
        (json!({ "meeting_id": "m\u{7}" }), 400, "invalid_argument"),
        (json!({ "profile_id": "prof_missing" }), 404, "not_found"),
    ] {
        refused(
            svc,
            &baseline,
            a,
            "POST",
            "/v1/sessions",
            session(extra),
            status,
            code,
        )
        .await;
    }

    // Confirms.
    let s = &w.session_a;
    let confirm = |id: &str| j(json!({ "confirm_id": id }));
    let path = format!("/v1/sessions/{s}/confirm");
    refused(
        svc,
        &baseline,
        a,
        "POST",
        &path,
        confirm("cfm_0000000000000000000000"),
        409,
        "conflict",
    )
    .await;
    let mut near = w.confirm_a.clone();
    let last = near.pop().unwrap();
    near.push(if last == '0' { '1' } else { '0' });
    refused(
        svc,
        &baseline,
        a,
        "POST",
        &path,
        confirm(&near),
        409,
        "conflict",
    )
    .await;
    refused(
        svc,
        &baseline,
        admin,
        "POST",
        &path,
        confirm(&w.confirm_a),
        403,
        "forbidden",
    )
    .await;
    refused(
        svc,
        &baseline,
        a,
        "POST",
        &path,
        j(json!({})),
        400,
        "invalid_argument",
    )
    .await;
    let missing = "/v1/sessions/ses_missing/confirm";
    refused(
        svc,
        &baseline,
        a,
        "POST",
        missing,
        confirm(&w.confirm_a),
        404,
        "not_found",
    )
    .await;

    // Admin bodies.
    for (path, body) in [
        ("/v1/policy", json!({ "allowed_cidrs": ["10.0.0.0/33"] })),
        ("/v1/policy", json!({ "allowed_services": ["myspace"] })),
        ("/v1/entitlement", json!({ "enabled": true })),
    ] {
        refused(
            svc,
            &baseline,
            admin,
            "PUT",
            path,
            j(body),
            400,
            "invalid_argument",
        )
        .await;
    }
    for body in [
        json!({ "role": "system" }),
        json!({ "role": "subscriber" }),
        json!({ "role": "subscriber", "subscriber_id": "sub_missing" }),
        json!({ "role": "admin", "subscriber_id": w.sub_a }),
        json!({ "role": "admin", "label": "bad\nlabel" }),
    ] {
        refused(
            svc,
            &baseline,
            admin,
            "POST",
            "/v1/tokens",
            j(body),
            400,
            "invalid_argument",
        )
        .await;
    }
    for name in ["", "a\u{0}b"] {
        let body = j(json!({ "name": name }));
        refused(
            svc,
            &baseline,
            admin,
            "POST",
            "/v1/subscribers",
            body,
            400,
            "invalid_argument",
        )
        .await;
    }

    // Entitlement off: no session can be created or confirmed.
    let off = json!({ "enabled": false, "recording_allowed": false });
    svc.ok("PUT", "/v1/entitlement", Some(&off)).await;
    let baseline = svc.snapshot().await;
    assert_eq!(baseline["entitlement"], off);
    refused(
        svc,
        &baseline,
        a,
        "POST",
        "/v1/sessions",
        session(json!({})),
        403,
        "policy",
    )
    .await;
    let msg = refused(
        svc,
        &baseline,
        a,
        "POST",
        &path,
        confirm(&w.confirm_a),
        403,
        "policy",
    )
    .await;
    assert!(msg.contains("entitlement"), "{msg}");

    // No refusal above echoed a key.
    for seen in svc.seen.lock().unwrap().iter() {
        for key in ["key-1234", key, "live-typed-9999", "live-ok-1234"] {
            assert!(
                !seen.text.contains(key),
                "{} {} answered {}: {}",
                seen.method,
                seen.path,
                seen.status,
                seen.text
            );
        }
    }
    w.svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_decided_at_the_edge_are_audited() {
    // Regression: a valid caller's bad input refused before the state machine (source outside
    // the fabric's addresses, a bad stream key) left no trace in the audit log.
    let w = World::setup("edge_audit").await;
    let head = w.svc.audit_head().await;
    let body =
        json!({ "profile_id": w.profile_a, "meeting_id": "m", "source": "udp://10.9.9.9:5000" });
    let r = w
        .svc
        .call(Some(&w.tok_a), "POST", "/v1/sessions", Some(&body))
        .await;
    assert_eq!(r.status, 403);
    let bad_key = json!({ "name": "x", "service": "youtube", "stream_key": "has space" });
    let r = w
        .svc
        .call(Some(&w.tok_a), "POST", "/v1/profiles", Some(&bad_key))
        .await;
    assert_eq!(r.status, 400);
    let entries = w.svc.audit_after(head).await;
    let denied: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["entry"]["action"].as_str().unwrap_or("").to_owned(),
                e["entry"]["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        denied.contains(&("session.create".into(), "denied:policy".into())),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("profile.create".into(), "denied:invalid_argument".into())),
        "{denied:?}"
    );
    assert!(
        !entries.iter().any(|e| e.to_string().contains("has space")),
        "the refused key reached the audit log"
    );
    w.svc.stop().await;
}
