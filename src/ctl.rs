//! `onair ctl`: the admins' command-line client of the admin API.
//!
//! ```text
//! onair ctl [--url URL] [--token-file PATH] [--ca FILE | --pin SHA256 | --insecure-loopback]
//!           get|delete PATH  |  post|put PATH [--data-file FILE|-]
//! ```
//! The token comes from `--token-file` or `ONAIR_TOKEN`, never from the command line (argv is
//! visible to every user through `ps` and lands in shell history). HTTPS is verified against
//! `--ca` (e.g. the device certificate), a `--pin` of the certificate's SHA-256 fingerprint, or
//! the public roots; `--insecure-loopback` skips verification for 127.0.0.1/::1 only. Plain
//! `http://` is refused except to loopback. Exit code: 0 on 2xx, 1 on 4xx/5xx or a transport
//! error, 2 on a usage error. The HTTP/1.1 client is [`http`], a few hundred lines instead of
//! a client crate.

pub mod http;

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::{bail, err};
use http::{HttpResponse, Request};

const USAGE: &str = "usage: onair ctl [--url URL] [--token-file PATH] \
[--ca FILE | --pin SHA256 | --insecure-loopback] <get|delete PATH | post|put PATH [--data-file FILE|-]>

  --url URL            API address (default $ONAIR_URL or https://127.0.0.1:8443)
  --token-file PATH    file holding the bearer token (else $ONAIR_TOKEN)
  --ca FILE            trust this PEM certificate (e.g. the device certificate)
  --pin SHA256         accept only the certificate with this SHA-256 fingerprint
  --insecure-loopback  skip certificate checks; only for 127.0.0.1, ::1, localhost
  --data-file FILE|-   JSON request body from FILE or standard input";

/// Largest request body read from `--data-file`.
const MAX_DATA_BYTES: usize = 1 << 20;
/// Whole exchange deadline.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The public web PKI roots.
    WebPki,
    /// The certificates in this PEM file.
    Ca(PathBuf),
    /// The end-entity certificate's SHA-256.
    Pin([u8; 32]),
    /// No check; loopback targets only.
    InsecureLoopback,
}

/// Where the API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// A parsed command line.
#[derive(Debug)]
pub struct Options {
    pub target: Target,
    pub token: Option<Secret>,
    pub trust: Trust,
    pub method: &'static str,
    pub path: String,
    pub data: Option<Vec<u8>>,
}

/// Entry point of `onair ctl`.
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print_stdout(USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args(args, std::env::var("ONAIR_TOKEN").ok()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("onair ctl: {}\n{USAGE}", e.message());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onair ctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(&opts)) {
        Ok(resp) => report(&resp),
        Err(e) => {
            eprintln!("onair ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `args` (after `ctl`); `env_token` is `$ONAIR_TOKEN`.
pub fn parse_args(args: &[String], env_token: Option<String>) -> Result<Options> {
    let mut url = std::env::var("ONAIR_URL").unwrap_or_else(|_| "https://127.0.0.1:8443".into());
    let (mut token_file, mut data_file, mut trust) = (None, None, Vec::new());
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| err!(InvalidArgument, "{name} needs a value"))
        };
        match a.as_str() {
            "--token" => bail!(
                InvalidArgument,
                "refusing --token: a token on the command line leaks through ps and shell \
                 history; use --token-file PATH or ONAIR_TOKEN"
            ),
            s if s.starts_with("--token=") => bail!(
                InvalidArgument,
                "refusing --token=…: use --token-file PATH or ONAIR_TOKEN"
            ),
            "--url" => url = value("--url")?,
            "--token-file" => token_file = Some(PathBuf::from(value("--token-file")?)),
            "--data-file" => data_file = Some(value("--data-file")?),
            "--ca" => trust.push(Trust::Ca(PathBuf::from(value("--ca")?))),
            "--pin" => trust.push(Trust::Pin(crate::api::tls::require_fingerprint(&value(
                "--pin",
            )?)?)),
            "--insecure-loopback" => trust.push(Trust::InsecureLoopback),
            s if s.starts_with("--") => bail!(InvalidArgument, "unknown option {s}"),
            _ => positional.push(a.clone()),
        }
    }
    if trust.len() > 1 {
        bail!(
            InvalidArgument,
            "choose one of --ca, --pin, --insecure-loopback"
        );
    }
    let trust = trust.pop().unwrap_or(Trust::WebPki);
    let target = parse_url(&url)?;
    check_trust(&target, &trust)?;
    let (method, path) = parse_command(&positional)?;
    let data = match data_file {
        Some(_) if !matches!(method, "POST" | "PUT") => {
            bail!(InvalidArgument, "--data-file goes with post or put")
        }
        Some(f) => Some(read_data(&f)?),
        None => None,
    };
    let token = match token_file {
        Some(p) => Some(read_token_file(&p)?),
        None => env_token.map(|t| Secret::new(t.trim())),
    };
    if let Some(t) = &token {
        http::check_token(t.expose())?;
    }
    Ok(Options {
        target,
        token,
        trust,
        method,
        path,
        data,
    })
}

/// `get PATH`, `delete PATH`, `post PATH`, `put PATH`.
fn parse_command(positional: &[String]) -> Result<(&'static str, String)> {
    let [cmd, path] = positional else {
        bail!(InvalidArgument, "expected a command and a PATH");
    };
    let method = match cmd.as_str() {
        "get" => "GET",
        "post" => "POST",
        "put" => "PUT",
        "delete" => "DELETE",
        other => bail!(InvalidArgument, "unknown command {other:?}"),
    };
    http::check_path(path)?;
    Ok((method, path.clone()))
}

/// `http[s]://host[:port][/]`, host a name, an IPv4 address or `[IPv6]`.
pub fn parse_url(url: &str) -> Result<Target> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!(InvalidArgument, "--url must start with https:// or http://");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        bail!(
            InvalidArgument,
            "--url is scheme://host[:port], without a path"
        );
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| err!(InvalidArgument, "bad port in --url"))?,
        None if tls => 443,
        None => 80,
    };
    Ok(Target { tls, host, port })
}

fn split_host_port(authority: &str) -> Result<(String, Option<&str>)> {
    if let Some(r) = authority.strip_prefix('[') {
        let (h, rest) = r
            .split_once(']')
            .ok_or_else(|| err!(InvalidArgument, "bad IPv6 host"))?;
        let port = match rest {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err!(InvalidArgument, "bad --url"))?,
            ),
        };
        return Ok((h.to_owned(), port));
    }
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), Some(p)),
        None => (authority.to_owned(), None),
    })
}

/// Whether `host` names this machine by loopback.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Plain HTTP and `--insecure-loopback` only for loopback targets.
fn check_trust(target: &Target, trust: &Trust) -> Result<()> {
    let loopback = is_loopback_host(&target.host);
    if !target.tls && !loopback {
        bail!(
            InvalidArgument,
            "plain http:// is only allowed to loopback; use https://"
        );
    }
    if *trust == Trust::InsecureLoopback && !loopback {
        bail!(
            InvalidArgument,
            "--insecure-loopback is only for 127.0.0.1, ::1 or localhost"
        );
    }
    Ok(())
}

fn read_data(source: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = MAX_DATA_BYTES as u64 + 1;
    let res = if source == "-" {
        std::io::stdin().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(source).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    res.map_err(|e| err!(InvalidArgument, "reading {source}: {e}"))?;
    if buf.len() > MAX_DATA_BYTES {
        bail!(
            InvalidArgument,
            "{source} is larger than {MAX_DATA_BYTES} bytes"
        );
    }
    Ok(buf)
}

fn read_token_file(path: &std::path::Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err!(InvalidArgument, "reading {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!(InvalidArgument, "{} holds no token", path.display());
    }
    Ok(Secret::new(token))
}

/// Connects, sends the request and reads the response, within [`TIMEOUT`].
pub async fn execute(opts: &Options) -> Result<HttpResponse> {
    match tokio::time::timeout(TIMEOUT, exchange(opts)).await {
        Ok(r) => r,
        Err(_) => bail!(Unavailable, "no response within {} s", TIMEOUT.as_secs()),
    }
}

/// A connection to the API (plain on loopback only, or TLS checked by `trust`).
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// Opens a connection to `t` under the same rules as `onair ctl`.
pub async fn connect(t: &Target, trust: &Trust) -> Result<Box<dyn Conn>> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| Error::from_net(&format!("connecting to {}:{}", t.host, t.port), &e))?;
    let peer = tcp
        .peer_addr()
        .map_err(|e| Error::from_net("peer address", &e))?;
    if (*trust == Trust::InsecureLoopback || !t.tls) && !peer.ip().to_canonical().is_loopback() {
        bail!(
            Policy,
            "{} resolved to {}, which is not loopback",
            t.host,
            peer.ip()
        );
    }
    if !t.tls {
        return Ok(Box::new(tcp));
    }
    let connector = tokio_rustls::TlsConnector::from(client_config(trust)?);
    let name = ServerName::try_from(t.host.clone())
        .map_err(|_| err!(InvalidArgument, "bad host name {:?}", t.host))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(&e))?;
    Ok(Box::new(tls))
}

async fn exchange(opts: &Options) -> Result<HttpResponse> {
    let t = &opts.target;
    let req = Request {
        method: opts.method,
        host: &t.host,
        port: t.port,
        path: &opts.path,
        token: opts.token.as_ref(),
        body: opts.data.as_deref(),
    };
    let mut conn = connect(t, &opts.trust).await?;
    http::exchange(&mut conn, &req).await
}

/// A TLS failure, as a `Certificate` error when verification failed.
fn tls_error(e: &std::io::Error) -> Error {
    let cert = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if cert {
        return Error::new(
            ErrorKind::Certificate,
            format!("TLS: {e} (trust the device certificate with --ca FILE or --pin SHA256)"),
        );
    }
    Error::from_net("TLS handshake", e)
}

/// A rustls client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err!(Internal, "TLS versions: {e}"))?;
    let cfg = match trust {
        Trust::WebPki => {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Ca(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(http::PinVerifier::new(
                Some(*pin),
                provider,
            )))
            .with_no_client_auth(),
        Trust::InsecureLoopback => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(http::PinVerifier::new(None, provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err!(InvalidArgument, "--ca {}: {e}", path.display()))?;
    for c in certs {
        let c = c.map_err(|e| err!(InvalidArgument, "--ca {}: {e}", path.display()))?;
        roots
            .add(c)
            .map_err(|e| err!(InvalidArgument, "--ca {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        bail!(
            InvalidArgument,
            "--ca {} holds no certificate",
            path.display()
        );
    }
    Ok(roots)
}

/// Prints the response: pretty JSON (or text) on 2xx; the error code and message otherwise.
fn report(resp: &HttpResponse) -> ExitCode {
    let json: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    if (200..300).contains(&resp.status) {
        match json
            .as_ref()
            .and_then(|v| serde_json::to_string_pretty(v).ok())
        {
            Some(text) => print_stdout(&text),
            None if resp.body.is_empty() => {}
            None => print_stdout(&terminal_safe(&String::from_utf8_lossy(&resp.body))),
        }
        return ExitCode::SUCCESS;
    }
    let code = json.as_ref().and_then(|v| v["error"].as_str());
    let msg = json.as_ref().and_then(|v| v["message"].as_str());
    match (code, msg) {
        (Some(c), Some(m)) => {
            eprintln!("error: {} {}: {}", resp.status, printable(c), printable(m))
        }
        _ => eprintln!(
            "error: HTTP {}: {}",
            resp.status,
            printable(&String::from_utf8_lossy(&resp.body))
        ),
    }
    ExitCode::FAILURE
}

/// Prints a line; a closed stdout (`| head`) is not an error worth a panic.
fn print_stdout(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// A text body for a terminal: control characters other than newline and tab replaced.
fn terminal_safe(s: &str) -> String {
    let keep = |c: char| !c.is_control() || c == '\n' || c == '\t';
    s.trim_end()
        .chars()
        .map(|c| if keep(c) { c } else { '?' })
        .collect()
}

/// Server text made safe for a terminal: no control characters (escape sequences), capped.
fn printable(s: &str) -> String {
    crate::api::error::sanitize_message(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn token_on_argv_refused() {
        for a in [
            &["--token", "abc", "get", "/x"][..],
            &["--token=abc", "get", "/x"],
        ] {
            let e = parse_args(&args(a), None).unwrap_err();
            assert!(e.message().contains("--token-file"), "{e}");
        }
    }

    #[test]
    fn text_output_keeps_lines_but_not_escapes() {
        assert_eq!(terminal_safe("a 1\nb{x=\"y\"} 2\n"), "a 1\nb{x=\"y\"} 2");
        assert_eq!(terminal_safe("\u{1b}[31mred"), "?[31mred");
    }

    #[test]
    fn urls() {
        let t = parse_url("https://[::1]:8443").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 8443));
        let t = parse_url("http://127.0.0.1/").unwrap();
        assert_eq!((t.tls, t.port), (false, 80));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://x/api").is_err());
        assert!(parse_url("https://user@x").is_err());
    }

    #[test]
    fn plain_and_insecure_only_to_loopback() {
        let a = args(&["--url", "http://192.0.2.1:80", "get", "/healthz"]);
        assert!(parse_args(&a, None).is_err());
        let a = args(&[
            "--url",
            "https://192.0.2.1",
            "--insecure-loopback",
            "get",
            "/x",
        ]);
        assert!(parse_args(&a, None).is_err());
        let a = args(&[
            "--url",
            "https://127.0.0.1:1",
            "--insecure-loopback",
            "get",
            "/x",
        ]);
        let o = parse_args(&a, Some("tok\n".into())).unwrap();
        assert_eq!(o.token.unwrap().expose(), "tok");
        assert_eq!((o.method, o.path.as_str()), ("GET", "/x"));
    }

    #[test]
    fn bad_paths_and_commands() {
        for a in [
            &["get", "x"][..],
            &["get", "/a b"],
            &["fetch", "/x"],
            &["get"],
        ] {
            assert!(parse_args(&args(a), None).is_err(), "{a:?}");
        }
        assert!(parse_args(&args(&["get", "/x", "--data-file", "-"]), None).is_err());
    }
}
