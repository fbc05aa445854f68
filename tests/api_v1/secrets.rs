//! Stream keys and tokens never leave: not in any response (but the one creating a token), any
//! error message, any log line, the store's files in clear, or the real process's command line
//! and stderr.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use onair::ctl::http as client;
use onair::secret::Secret;
use serde_json::{Value, json};

use crate::harness::{TempDir, World, capture_logs, logs, random_hex};

/// Asserts that a view of profiles shows that a key is set and carries no key field.
fn assert_key_hidden(list: &Value) {
    for p in list.as_array().unwrap() {
        assert_eq!(p["stream_key_set"], true, "{p}");
        assert!(p.get("stream_key").is_none(), "{p}");
        assert!(p.get("stream_key_sealed").is_none(), "{p}");
    }
}

#[tokio::test]
async fn secrets_stay_out_of_responses_logs_and_the_store() {
    capture_logs();
    let w = World::setup("secrets").await;
    let svc = &w.svc;
    let a = w.tok_a.as_str();
    let profile = format!("/v1/profiles/{}", w.profile_a);

    // A new key, then an update that keeps it.
    let key2 = format!("live-B-{}", random_hex(8));
    let body = json!({ "name": "A", "service": "youtube", "stream_key": key2 });
    let v = svc.ok_as(a, "PUT", &profile, Some(&body)).await;
    assert_eq!(v["stream_key_set"], true);
    let body = json!({ "name": "A again", "service": "youtube" });
    let v = svc.ok_as(a, "PUT", &profile, Some(&body)).await;
    assert_eq!(v["stream_key_set"], true, "an omitted key is kept");
    // Refusals that carry keys.
    let key3 = format!("live-C-{}", random_hex(8));
    let url = format!("rtmps://a.rtmps.youtube.com/live2/{key3}");
    let body = json!({ "name": "x", "service": "youtube", "url": url, "stream_key": key3 });
    svc.call(Some(a), "POST", "/v1/profiles", Some(&body))
        .await
        .error(400, "invalid_argument");
    let key4 = format!("live D-{}", random_hex(8));
    let body = json!({ "name": "x", "service": "youtube", "stream_key": key4 });
    svc.call(Some(a), "POST", "/v1/profiles", Some(&body))
        .await
        .error(400, "invalid_argument");
    let body = json!({ "name": "x", "service": "youtube", "stream_key": 7, "url": key3 });
    svc.call(Some(a), "POST", "/v1/profiles", Some(&body))
        .await
        .error(400, "invalid_argument");
    // A confirm (no ack, so no relay and no network), then a stop.
    let s = format!("/v1/sessions/{}", w.session_a);
    let confirm = json!({ "confirm_id": w.confirm_a });
    let v = svc
        .ok_as(a, "POST", &format!("{s}/confirm"), Some(&confirm))
        .await;
    assert_eq!(v["state"], "starting", "{v}");
    let v = svc.ok_as(a, "POST", &format!("{s}/stop"), None).await;
    assert_eq!(v["state"], "ended", "{v}");
    // Failed authentications with near-miss tokens are logged (without the token).
    for t in [&w.tok_b, &w.fabric, &svc.admin] {
        let from = Some(svc.fresh_ip());
        let auth = [format!("Bearer {t}x")];
        svc.raw(from, "GET", "/v1/profiles", &auth, None)
            .await
            .error(401, "unauthenticated");
    }

    assert_key_hidden(&svc.ok_as(a, "GET", "/v1/profiles", None).await);
    assert_key_hidden(&svc.ok("GET", "/v1/profiles", None).await);
    let one = svc.ok_as(a, "GET", &profile, None).await;
    assert_key_hidden(&json!([one]));
    let tokens = svc.ok("GET", "/v1/tokens", None).await;
    for t in tokens.as_array().unwrap() {
        assert!(t.get("hash").is_none() && t.get("token").is_none(), "{t}");
    }
    svc.ok("GET", "/v1/audit?limit=1000", None).await;

    let keys = [&w.key_a, &key2, &key3, &key4];
    let toks = [&svc.admin, &w.tok_a, &w.tok_b, &w.fabric];
    let hashes: Vec<String> = toks.iter().map(|t| onair::store::hash_token(t)).collect();
    for seen in svc.seen.lock().unwrap().iter() {
        let what = format!(
            "{} {} → {}: {}",
            seen.method, seen.path, seen.status, seen.text
        );
        for k in keys {
            assert!(!seen.text.contains(k.as_str()), "stream key in {what}");
        }
        for h in &hashes {
            assert!(!seen.text.contains(h.as_str()), "token hash in {what}");
        }
        for t in toks {
            if seen.text.contains(t.as_str()) {
                assert!(
                    seen.method == "POST" && seen.path == "/v1/tokens" && seen.status == 201,
                    "token in {what}"
                );
            }
        }
    }
    // Each token was shown exactly once: when it was created (the admin's: never).
    for t in toks {
        let shown = svc
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.text.contains(t.as_str()))
            .count();
        assert_eq!(shown, usize::from(*t != svc.admin));
    }

    let logged = logs();
    assert!(
        logged.contains("failed authentication"),
        "log capture works"
    );
    assert!(logged.contains("indicator"), "log capture works");
    for s in keys.iter().chain(toks.iter()) {
        assert!(!logged.contains(s.as_str()), "a secret was logged");
    }
    assert!(!logged.contains(&w.confirm_a), "a confirm id was logged");

    // At rest: keys sealed, tokens hashed.
    let data = svc.dir.path().join("data");
    let mut at_rest = Vec::new();
    for f in ["onair.db", "onair.db-wal"] {
        if let Ok(mut file) = std::fs::File::open(data.join(f)) {
            file.read_to_end(&mut at_rest).unwrap();
        }
    }
    assert!(at_rest.len() > 4096);
    let at_rest = String::from_utf8_lossy(&at_rest);
    for s in keys.iter().chain(toks.iter()) {
        assert!(!at_rest.contains(s.as_str()), "a secret is stored in clear");
    }
    w.svc.stop().await;
}

/// Kills the child on drop (also when an assertion fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn call(
    port: u16,
    token: &str,
    method: &'static str,
    path: &str,
    body: Option<&Value>,
) -> client::HttpResponse {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let token = Secret::new(token);
    let body = body.map(|b| b.to_string().into_bytes());
    let req = client::Request {
        method,
        host: "127.0.0.1",
        port,
        path,
        token: Some(&token),
        body: body.as_deref(),
    };
    client::exchange(&mut tcp, &req).await.unwrap()
}

async fn ok(port: u16, token: &str, method: &'static str, path: &str, body: Value) -> Value {
    let r = call(port, token, method, path, Some(&body)).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {text}",
        r.status
    );
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn real_binary_keeps_keys_and_tokens_out_of_cmdline_and_stderr() {
    let dir = TempDir::new("bin");
    let data = dir.path().join("data");
    let config = dir.path().join("onair.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"debug\"\n",
            data.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let pid = child.0.id();
    let stderr = child.0.stderr.take().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            line.clear();
        }
        all
    });
    let port: u16 = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("onair run announces its API address on stderr");
        if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse().unwrap();
        }
    };
    // Written before the API listens.
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(admin.starts_with("onair_"));

    let sub = ok(
        port,
        &admin,
        "POST",
        "/v1/subscribers",
        json!({ "name": "S" }),
    )
    .await;
    let tok = ok(
        port,
        &admin,
        "POST",
        "/v1/tokens",
        json!({ "role": "subscriber", "subscriber_id": sub["id"] }),
    )
    .await;
    let tok = tok["token"].as_str().unwrap().to_owned();
    let key = format!("live-bin-{}", random_hex(8));
    let p = ok(
        port,
        &tok,
        "POST",
        "/v1/profiles",
        json!({ "name": "P", "service": "youtube", "stream_key": key }),
    )
    .await;
    assert_eq!(p["stream_key_set"], true);
    let url = format!("rtmps://a.rtmps.youtube.com/live2/{key}");
    let body = json!({ "name": "P2", "service": "youtube", "stream_key": key, "url": url });
    let r = call(port, &tok, "POST", "/v1/profiles", Some(&body)).await;
    assert_eq!(r.status, 400);
    assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    let r = call(port, &format!("{admin}0"), "GET", "/v1/tokens", None).await;
    assert_eq!(r.status, 401);

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(" run --config "), "{cmdline}");
    for s in [&key, &admin, &tok] {
        assert!(
            !cmdline.contains(s.as_str()),
            "secret in /proc/{pid}/cmdline"
        );
    }

    drop(child);
    let stderr = reader.join().unwrap();
    let mut out = String::new();
    let _ = stdout.read_to_string(&mut out);
    assert!(stderr.contains("admin token written to"), "{stderr}");
    assert!(stderr.contains("failed authentication"), "{stderr}");
    for s in [&key, &admin, &tok] {
        assert!(!stderr.contains(s.as_str()), "secret on stderr: {stderr}");
        assert!(!out.contains(s.as_str()), "secret on stdout: {out}");
    }
}
