//! The authorization matrix: every v1 endpoint × every caller that must be refused (no token,
//! malformed token, unknown token, the other subscriber on A's objects, the fabric on admin and
//! subscriber endpoints, subscribers on admin endpoints, the admin on owner-only and fabric
//! endpoints). For each: the status and error shape, nothing changed in the admin's view, and
//! the audit log — a refused command with a valid token is audited `denied:<code>`; requests
//! without a valid token and refused reads are not.

use serde_json::{Value, json};

use crate::harness::{Svc, World, json_body, random_hex};
use crate::openapi::{assert_shape, document};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    NoToken,
    Malformed,
    Unknown,
    SubA,
    SubB,
    Fabric,
    Admin,
}

/// What a wrong caller must get.
#[derive(Clone, Debug)]
enum Expect {
    /// This error status and code.
    Err(u16, &'static str),
    /// 404, byte for byte the answer for a missing object (`path`, `body`).
    LikeMissing(String, Option<Value>),
    /// 200 with a list that holds none of A's objects.
    ListWithout,
}

struct Endpoint {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// The audit action of a mutation; `None` for reads.
    action: Option<&'static str>,
    wrong: Vec<(Caller, Expect)>,
}

const MALFORMED: [&str; 6] = [
    "Basic YWRtaW46cGFzcw==",
    "Bearer",
    "Bearer two words",
    "Bearer bad!chars",
    "Token onair_0123",
    "Bearer onair_\u{e9}\u{e9}",
];

fn endpoints(w: &World) -> Vec<Endpoint> {
    use Caller::*;
    use Expect::*;
    let forbidden = || Err(403, "forbidden");
    let admin_only = || {
        vec![
            (SubA, forbidden()),
            (SubB, forbidden()),
            (Fabric, forbidden()),
        ]
    };
    let ep = |method, path: &str, body: Option<Value>, action, wrong| Endpoint {
        method,
        path: path.to_owned(),
        body,
        action,
        wrong,
    };
    let (p, s) = (&w.profile_a, &w.session_a);
    let missing_p = "prof_00000000000000000000000";
    let missing_s = "ses_000000000000000000000000";
    let profile_body =
        json!({ "name": "taken over", "service": "youtube", "stream_key": "live-X-1234" });
    let session_body = |pid: &str| json!({ "profile_id": pid, "meeting_id": "m-x", "source": "udp://127.0.0.1:40009" });
    let confirm = json!({ "confirm_id": w.confirm_a });
    let like = |path: String, body: Option<Value>| LikeMissing(path, body);
    vec![
        ep("GET", "/v1/entitlement", None, None, admin_only()),
        ep(
            "PUT",
            "/v1/entitlement",
            Some(json!({ "enabled": false, "recording_allowed": true })),
            Some("entitlement.set"),
            admin_only(),
        ),
        ep("GET", "/v1/policy", None, None, admin_only()),
        ep(
            "PUT",
            "/v1/policy",
            Some(json!({ "allow_plain_rtmp": true, "allowed_services": ["custom"] })),
            Some("policy.set"),
            admin_only(),
        ),
        ep("GET", "/v1/subscribers", None, None, admin_only()),
        ep(
            "POST",
            "/v1/subscribers",
            Some(json!({ "name": "intruder" })),
            Some("subscriber.create"),
            admin_only(),
        ),
        ep(
            "DELETE",
            &format!("/v1/subscribers/{}", w.sub_a),
            None,
            Some("subscriber.delete"),
            admin_only(),
        ),
        ep("GET", "/v1/tokens", None, None, admin_only()),
        ep(
            "POST",
            "/v1/tokens",
            Some(json!({ "role": "admin", "label": "escalation" })),
            Some("token.create"),
            admin_only(),
        ),
        ep(
            "DELETE",
            &format!("/v1/tokens/{}", w.svc.admin_id),
            None,
            Some("token.revoke"),
            admin_only(),
        ),
        ep("GET", "/v1/audit", None, None, admin_only()),
        ep("GET", "/v1/audit/verify", None, None, admin_only()),
        ep(
            "GET",
            "/v1/profiles",
            None,
            None,
            vec![(SubB, ListWithout), (Fabric, forbidden())],
        ),
        ep(
            "POST",
            "/v1/profiles",
            Some(profile_body.clone()),
            Some("profile.create"),
            vec![(Admin, forbidden()), (Fabric, forbidden())],
        ),
        ep(
            "GET",
            &format!("/v1/profiles/{p}"),
            None,
            None,
            vec![
                (SubB, like(format!("/v1/profiles/{missing_p}"), None)),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "PUT",
            &format!("/v1/profiles/{p}"),
            Some(profile_body.clone()),
            Some("profile.update"),
            vec![
                (
                    SubB,
                    like(format!("/v1/profiles/{missing_p}"), Some(profile_body)),
                ),
                (Admin, forbidden()),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "DELETE",
            &format!("/v1/profiles/{p}"),
            None,
            Some("profile.delete"),
            vec![
                (SubB, like(format!("/v1/profiles/{missing_p}"), None)),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "GET",
            "/v1/sessions",
            None,
            None,
            vec![(SubB, ListWithout), (Fabric, forbidden())],
        ),
        ep(
            "POST",
            "/v1/sessions",
            Some(session_body(p)),
            Some("session.create"),
            vec![
                (
                    SubB,
                    like("/v1/sessions".into(), Some(session_body(missing_p))),
                ),
                (Admin, forbidden()),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "GET",
            &format!("/v1/sessions/{s}"),
            None,
            None,
            vec![
                (SubB, like(format!("/v1/sessions/{missing_s}"), None)),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "POST",
            &format!("/v1/sessions/{s}/confirm"),
            Some(confirm.clone()),
            Some("session.confirm"),
            vec![
                (
                    SubB,
                    like(format!("/v1/sessions/{missing_s}/confirm"), Some(confirm)),
                ),
                (Admin, forbidden()),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "POST",
            &format!("/v1/sessions/{s}/stop"),
            None,
            Some("session.stop"),
            vec![
                (SubB, like(format!("/v1/sessions/{missing_s}/stop"), None)),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "POST",
            &format!("/v1/sessions/{s}/cancel"),
            None,
            Some("session.cancel"),
            vec![
                (SubB, like(format!("/v1/sessions/{missing_s}/cancel"), None)),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "POST",
            &format!("/v1/sessions/{s}/rearm"),
            None,
            Some("session.rearm"),
            vec![
                (SubB, like(format!("/v1/sessions/{missing_s}/rearm"), None)),
                (Admin, forbidden()),
                (Fabric, forbidden()),
            ],
        ),
        ep(
            "GET",
            "/v1/fabric/indicators",
            None,
            None,
            vec![
                (SubA, forbidden()),
                (SubB, forbidden()),
                (Admin, forbidden()),
            ],
        ),
        ep(
            "POST",
            &format!("/v1/fabric/indicators/{s}/ack"),
            None,
            Some("indicator.ack"),
            vec![
                (SubA, forbidden()),
                (SubB, forbidden()),
                (Admin, forbidden()),
            ],
        ),
    ]
}

/// The token of a caller with a valid token, and its audit actor name.
fn identity(w: &World, c: Caller) -> (String, String) {
    match c {
        Caller::SubA => (
            w.tok_a.clone(),
            format!("subscriber:{}/token:{}", w.sub_a, w.tok_a_id),
        ),
        Caller::SubB => (
            w.tok_b.clone(),
            format!("subscriber:{}/token:{}", w.sub_b, w.tok_b_id),
        ),
        Caller::Fabric => (w.fabric.clone(), format!("fabric:{}", w.fabric_id)),
        Caller::Admin => (w.svc.admin.clone(), format!("admin:{}", w.svc.admin_id)),
        _ => unreachable!("no identity for {c:?}"),
    }
}

/// Asserts the audit entries written since `after`: one `denied:<code>` entry per refused
/// command (`expected`), with the caller as actor; nothing else.
async fn assert_audited(svc: &Svc, after: i64, expected: &[(&str, &str, &str)], what: &str) {
    let got = svc.audit_after(after).await;
    assert_eq!(got.len(), expected.len(), "{what}: audit {got:#?}");
    for (e, (action, outcome, actor)) in got.iter().zip(expected) {
        let entry = &e["entry"];
        assert_eq!(entry["action"], *action, "{what}: {e}");
        assert_eq!(entry["outcome"], *outcome, "{what}: {e}");
        assert!(outcome.starts_with("denied:"));
        assert_eq!(entry["actor"], *actor, "{what}: {e}");
        assert_eq!(entry["source"], "127.0.0.1", "{what}: {e}");
    }
}

#[tokio::test]
async fn every_endpoint_refuses_every_wrong_caller_and_changes_nothing() {
    let w = World::setup("matrix").await;
    let svc = &w.svc;
    let doc = document();

    // Positive controls: the owner and the admin do see A's objects (so a 404 below means
    // "refused", not "absent").
    let mine = svc
        .ok_as(
            &w.tok_a,
            "GET",
            &format!("/v1/sessions/{}", w.session_a),
            None,
        )
        .await;
    assert_eq!(mine["confirm_id"], w.confirm_a.as_str());
    assert_shape(&doc, "Session", &mine);
    let seen_by_admin = svc
        .ok("GET", &format!("/v1/sessions/{}", w.session_a), None)
        .await;
    assert_eq!(
        seen_by_admin["confirm_id"],
        Value::Null,
        "only the owner sees it"
    );
    let prof = svc
        .ok_as(
            &w.tok_a,
            "GET",
            &format!("/v1/profiles/{}", w.profile_a),
            None,
        )
        .await;
    assert_shape(&doc, "Profile", &prof);

    let baseline = svc.snapshot().await;
    assert_shape(&doc, "Entitlement", &baseline["entitlement"]);
    assert_shape(&doc, "Policy", &baseline["policy"]);
    for (list, schema) in [
        ("subscribers", "Subscriber"),
        ("tokens", "Token"),
        ("profiles", "Profile"),
        ("sessions", "Session"),
    ] {
        for item in baseline[list].as_array().unwrap() {
            assert_shape(&doc, schema, item);
        }
    }
    assert_eq!(baseline["tokens"].as_array().unwrap().len(), 4);
    let mut head = svc.audit_head().await;

    let mut cases = 0;
    let mut audited = 0;
    for (i, ep) in endpoints(&w).into_iter().enumerate() {
        let unauth = [Caller::NoToken, Caller::Malformed, Caller::Unknown]
            .into_iter()
            .map(|c| (c, Expect::Err(401, "unauthenticated")));
        for (caller, expect) in unauth.chain(ep.wrong.iter().cloned()) {
            let what = format!("{} {} as {caller:?}", ep.method, ep.path);
            let body = ep.body.as_ref().and_then(json_body);
            let resp = match caller {
                Caller::NoToken => svc.raw(None, ep.method, &ep.path, &[], body).await,
                Caller::Malformed => {
                    let auth = if i % 7 == 6 {
                        // Two Authorization headers, each valid on its own.
                        vec![
                            format!("Bearer {}", svc.admin),
                            format!("Bearer {}", w.tok_a),
                        ]
                    } else {
                        vec![MALFORMED[i % 7].to_owned()]
                    };
                    let from = Some(svc.fresh_ip());
                    svc.raw(from, ep.method, &ep.path, &auth, body).await
                }
                Caller::Unknown => {
                    let t = if i.is_multiple_of(2) {
                        format!("onair_{}", random_hex(32))
                    } else {
                        // One character off the admin token.
                        let mut t = svc.admin.clone();
                        let last = if t.ends_with('0') { '1' } else { '0' };
                        t.pop();
                        t.push(last);
                        t
                    };
                    let from = Some(svc.fresh_ip());
                    let auth = [format!("Bearer {t}")];
                    svc.raw(from, ep.method, &ep.path, &auth, body).await
                }
                _ => {
                    let (token, _) = identity(&w, caller);
                    svc.call(Some(&token), ep.method, &ep.path, ep.body.as_ref())
                        .await
                }
            };
            let mut expected_audit = Vec::new();
            match &expect {
                Expect::Err(status, code) => {
                    resp.error(*status, code);
                    if let (403, Some(action)) = (*status, ep.action) {
                        expected_audit.push((action, "denied:forbidden"));
                    }
                }
                Expect::LikeMissing(path, mbody) => {
                    resp.error(404, "not_found");
                    let (token, _) = identity(&w, caller);
                    let missing = svc
                        .call(Some(&token), ep.method, path, mbody.as_ref())
                        .await;
                    assert_eq!(
                        (missing.status, missing.text()),
                        (resp.status, resp.text()),
                        "{what}: another subscriber's object must look missing"
                    );
                    if let Some(action) = ep.action {
                        expected_audit.push((action, "denied:not_found"));
                        expected_audit.push((action, "denied:not_found"));
                    }
                }
                Expect::ListWithout => {
                    assert_eq!(resp.status, 200, "{what}: {}", resp.text());
                    let list = resp.json();
                    assert_eq!(list, json!([]), "{what}: B owns nothing");
                }
            }
            let actor = match caller {
                Caller::NoToken | Caller::Malformed | Caller::Unknown => String::new(),
                c => identity(&w, c).1,
            };
            let expected: Vec<(&str, &str, &str)> = expected_audit
                .iter()
                .map(|(a, o)| (*a, *o, actor.as_str()))
                .collect();
            assert_audited(svc, head, &expected, &what).await;
            audited += expected.len();
            head = svc.audit_head().await;
            assert_eq!(svc.snapshot().await, baseline, "{what} changed the state");
            cases += 1;
        }
    }
    println!("authorization matrix: {cases} (endpoint × caller) cases, {audited} audited refusals");
    // 26 endpoints × 3 unauthenticated callers, 12 admin endpoints × 3 other roles, and 34
    // wrong callers on the profile, session and fabric endpoints.
    assert_eq!(cases, 26 * 3 + 12 * 3 + 34);
    let verify = svc.ok("GET", "/v1/audit/verify", None).await;
    assert_eq!(verify["intact"], true, "{verify}");
    assert_shape(&doc, "AuditVerify", &verify);
    let page = svc.ok("GET", "/v1/audit?after=0&limit=5", None).await;
    assert_shape(&doc, "AuditPage", &page);
    for rec in page["entries"].as_array().unwrap() {
        assert_shape(&doc, "AuditRecord", rec);
        assert_shape(&doc, "AuditEntry", &rec["entry"]);
    }
    w.svc.stop().await;
}
