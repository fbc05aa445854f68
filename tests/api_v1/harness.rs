//! The service under test, a raw HTTP/1.1 client that records every response, log capture,
//! state snapshots and audit reads.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use onair::api::ServerHandle;
use onair::config::{ApiSection, FabricSection, RunConfig};
use onair::ctl::http as client;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;

/// Everything logged through `tracing` in this test process.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide log capture (DEBUG and up), once.
pub fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A temp directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("onair-v1-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the JSON error shape (exactly `error` and `message`) with this status and code;
    /// returns the message.
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "exactly error and message: {v}");
        assert_eq!(v["error"], code, "{v}");
        let msg = v["message"].as_str().unwrap().to_owned();
        assert!(!msg.is_empty());
        if status == 401 {
            assert_eq!(self.header("www-authenticate"), Some("Bearer"));
        }
        msg
    }
}

/// One response as seen by the client, for the secrets checks.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Header lines and body.
    pub text: String,
}

/// A request body: `(content type or None, bytes)`.
pub type Body = (Option<&'static str>, Vec<u8>);

pub fn json_body(v: &Value) -> Option<Body> {
    Some((Some("application/json"), v.to_string().into_bytes()))
}

/// The real service on a loopback port, plain HTTP, in a temp data dir.
pub struct Svc {
    pub addr: SocketAddr,
    pub admin: String,
    pub admin_id: String,
    pub dir: TempDir,
    pub seen: Mutex<Vec<Seen>>,
    stop: Option<oneshot::Sender<()>>,
    api: Option<ServerHandle>,
    next_ip: AtomicU32,
}

impl Svc {
    pub async fn start(tag: &str) -> Svc {
        let dir = TempDir::new(tag);
        let config = RunConfig {
            data_dir: dir.path().join("data"),
            api: ApiSection {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: Some(false),
                max_body_bytes: 64 * 1024,
            },
            fabric: FabricSection {
                allowed_sources: vec!["127.0.0.0/8".into(), "239.1.0.0/16".into()],
            },
            ..RunConfig::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let service = onair::run::start(&config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let token_file = service.admin_token_file.clone().expect("first start");
        let admin = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_owned();
        let mut svc = Svc {
            addr: service.api.local_addr(),
            admin,
            admin_id: String::new(),
            dir,
            seen: Mutex::new(Vec::new()),
            stop: Some(tx),
            api: Some(service.api),
            next_ip: AtomicU32::new(0),
        };
        let tokens = svc.ok("GET", "/v1/tokens", None).await;
        svc.admin_id = tokens[0]["id"].as_str().unwrap().to_owned();
        assert_eq!(tokens.as_array().unwrap().len(), 1);
        svc
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(api) = self.api.take() {
            tokio::time::timeout(std::time::Duration::from_secs(30), api.join())
                .await
                .expect("API stops");
        }
    }

    /// A fresh loopback source address (the failed-auth limiter counts per address).
    pub fn fresh_ip(&self) -> Ipv4Addr {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed) + 1;
        Ipv4Addr::new(127, 20 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
    }

    /// Sends one request with the given `Authorization` header values, from `from`.
    pub async fn raw(
        &self,
        from: Option<Ipv4Addr>,
        method: &str,
        path: &str,
        auth: &[String],
        body: Option<Body>,
    ) -> Resp {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((from.unwrap_or(Ipv4Addr::LOCALHOST), 0)))
            .unwrap();
        let mut tcp = sock.connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.addr.port()
        );
        for a in auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        let bytes = match &body {
            Some((ct, bytes)) => {
                if let Some(ct) = ct {
                    head.push_str(&format!("Content-Type: {ct}\r\n"));
                }
                bytes.as_slice()
            }
            None => &[],
        };
        head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
        let mut out = head.into_bytes();
        out.extend_from_slice(bytes);
        // The server may answer (413) before reading everything: keep going to the response.
        let _ = tcp.write_all(&out).await;
        let r = client::read_response(&mut tcp, method).await.unwrap();
        let resp = Resp {
            status: r.status,
            headers: r.headers,
            body: r.body,
        };
        let mut text = String::new();
        for (n, v) in &resp.headers {
            text.push_str(&format!("{n}: {v}\n"));
        }
        text.push_str(&resp.text());
        self.seen.lock().unwrap().push(Seen {
            method: method.to_owned(),
            path: path.to_owned(),
            status: resp.status,
            text,
        });
        resp
    }

    /// A request with a bearer token (or none) from 127.0.0.1.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Resp {
        let auth: Vec<String> = token.map(|t| format!("Bearer {t}")).into_iter().collect();
        self.raw(None, method, path, &auth, body.and_then(json_body))
            .await
    }

    /// An admin request that must succeed; its JSON (Null for 204).
    pub async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let admin = self.admin.clone();
        self.ok_as(&admin, method, path, body).await
    }

    pub async fn ok_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let r = self.call(Some(token), method, path, body).await;
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        if r.status == 204 {
            Value::Null
        } else {
            r.json()
        }
    }

    /// The admin's view of everything that a command could change.
    pub async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (k, p) in [
            ("entitlement", "/v1/entitlement"),
            ("policy", "/v1/policy"),
            ("subscribers", "/v1/subscribers"),
            ("tokens", "/v1/tokens"),
            ("profiles", "/v1/profiles"),
            ("sessions", "/v1/sessions"),
        ] {
            out.insert(k.into(), self.ok("GET", p, None).await);
        }
        Value::Object(out)
    }

    /// Audit entries with seq > `after`, oldest first.
    pub async fn audit_after(&self, after: i64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = self
                .ok("GET", &format!("/v1/audit?after={cursor}&limit=1000"), None)
                .await;
            let entries = page["entries"].as_array().unwrap().clone();
            let n = entries.len();
            if let Some(last) = entries.last() {
                cursor = last["seq"].as_i64().unwrap();
            }
            out.extend(entries);
            if n < 1000 {
                return out;
            }
        }
    }

    /// The seq of the newest audit entry.
    pub async fn audit_head(&self) -> i64 {
        self.audit_after(0)
            .await
            .last()
            .map_or(0, |e| e["seq"].as_i64().unwrap())
    }

    /// Creates a token; returns (id, token).
    pub async fn token(&self, role: &str, subscriber: Option<&str>) -> (String, String) {
        let v = self
            .ok(
                "POST",
                "/v1/tokens",
                Some(&json!({ "role": role, "subscriber_id": subscriber, "label": role })),
            )
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

/// A populated appliance: entitlement on, subscribers A and B with tokens, a fabric token,
/// A's YouTube profile and A's ad-hoc session awaiting confirmation.
pub struct World {
    pub svc: Svc,
    pub sub_a: String,
    pub sub_b: String,
    pub tok_a: String,
    pub tok_b: String,
    pub tok_a_id: String,
    pub tok_b_id: String,
    pub fabric: String,
    pub fabric_id: String,
    pub profile_a: String,
    pub session_a: String,
    pub confirm_a: String,
    pub key_a: String,
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl World {
    pub async fn setup(tag: &str) -> World {
        let svc = Svc::start(tag).await;
        svc.ok(
            "PUT",
            "/v1/entitlement",
            // YouTube keeps the stream, so recording must be allowed for A's profile to confirm.
            Some(&json!({ "enabled": true, "recording_allowed": true })),
        )
        .await;
        let sub = |name: &'static str| {
            let svc = &svc;
            async move {
                let v = svc
                    .ok("POST", "/v1/subscribers", Some(&json!({ "name": name })))
                    .await;
                v["id"].as_str().unwrap().to_owned()
            }
        };
        let sub_a = sub("Alice").await;
        let sub_b = sub("Bob").await;
        let (tok_a_id, tok_a) = svc.token("subscriber", Some(&sub_a)).await;
        let (tok_b_id, tok_b) = svc.token("subscriber", Some(&sub_b)).await;
        let (fabric_id, fabric) = svc.token("fabric", None).await;
        let key_a = format!("live-A-{}", random_hex(8));
        let p = svc
            .ok_as(
                &tok_a,
                "POST",
                "/v1/profiles",
                Some(&json!({ "name": "A on YouTube", "service": "youtube", "stream_key": key_a })),
            )
            .await;
        assert_eq!(p["stream_key_set"], true);
        let profile_a = p["id"].as_str().unwrap().to_owned();
        let s = svc
            .ok_as(
                &tok_a,
                "POST",
                "/v1/sessions",
                Some(&json!({
                    "profile_id": profile_a,
                    "meeting_id": "meeting-A",
                    "source": "udp://127.0.0.1:40001",
                })),
            )
            .await;
        assert_eq!(s["state"], "awaiting_confirmation", "{s}");
        let session_a = s["id"].as_str().unwrap().to_owned();
        let confirm_a = s["confirm_id"].as_str().unwrap().to_owned();
        World {
            svc,
            sub_a,
            sub_b,
            tok_a,
            tok_b,
            tok_a_id,
            tok_b_id,
            fabric,
            fabric_id,
            profile_a,
            session_a,
            confirm_a,
            key_a,
        }
    }
}
