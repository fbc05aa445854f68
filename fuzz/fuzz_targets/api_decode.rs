//! The admin API's request decoding: every v1 JSON body through `StrictJson`'s decoder and the
//! edge checks that need no state (`onair::api::v1::decode_body`).
//! Input: `[kind][policy][body]`. Invariants: no panic; a refusal is a 400 or a 403; its message
//! never repeats the `stream_key` given in the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use onair::api::v1::{BodyKind, decode_body};
use onair::control::destination::Cidr;
use onair::control::model::{Policy, Service};

fuzz_target!(|data: &[u8]| {
    let [kind, policy, body @ ..] = data else {
        return;
    };
    let kind = BodyKind::ALL[usize::from(*kind) % BodyKind::ALL.len()];
    let mut p = Policy::default();
    if policy & 1 != 0 {
        p.allow_plain_rtmp = true;
        p.allowed_services.push(Service::Custom);
        p.allowed_hosts = vec!["ingest.example".into()];
        p.allowed_cidrs = vec!["10.0.0.0/8".into(), "::1/128".into()];
    }
    let allowed: Vec<Cidr> = ["127.0.0.0/8", "10.0.0.0/8", "239.0.0.0/8"]
        .iter()
        .filter_map(|c| Cidr::parse(c))
        .collect();
    let Err(e) = decode_body(kind, body, &allowed, &p) else {
        return;
    };
    let status = e.status().as_u16();
    assert!(
        status == 400 || status == 403,
        "status {status}: {}",
        e.message()
    );
    if let Some(key) = stream_key(body) {
        assert!(
            !e.message().contains(&key),
            "the message repeats the key: {}",
            e.message()
        );
    }
});

/// The body's `stream_key` when it is a string worth checking for: 8+ characters with a letter
/// and a digit, occurring once in the body (so it is not also a field name or another value).
fn stream_key(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = v.get("stream_key")?.as_str()?.to_owned();
    let text = std::str::from_utf8(body).ok()?;
    let plausible = key.len() >= 8
        && key.chars().any(|c| c.is_ascii_digit())
        && key.chars().any(|c| c.is_ascii_alphabetic())
        && text.matches(key.as_str()).count() == 1;
    plausible.then_some(key)
}
