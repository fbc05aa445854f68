//! The device certificate: a self-signed ECDSA P-256 certificate generated on first start.
//!
//! Stored as `device-cert.pem` and `device-key.pem` (mode 0600) in the configured directory,
//! each written crash-safely (temp → fsync → rename → fsync dir), key first: a certificate file
//! present means both are complete. Clients trust it with `onair ctl --ca device-cert.pem` or
//! pin its SHA-256 fingerprint (`--pin`), the one logged at start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, ErrorKind, Result};
use crate::{bail, err};

/// Certificate file name inside the TLS directory.
pub const CERT_FILE: &str = "device-cert.pem";
/// Private key file name inside the TLS directory.
pub const KEY_FILE: &str = "device-key.pem";

/// A loaded (or freshly generated) device certificate.
pub struct DeviceCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the certificate DER, upper-case hex pairs joined by `:` (as `openssl x509
    /// -fingerprint -sha256` prints it).
    pub fingerprint: String,
    /// Whether this start generated it.
    pub generated: bool,
}

/// SHA-256 of `der`, formatted `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally `:`-separated, any case, an
/// optional `sha256:` prefix.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Loads the device certificate from `dir`, or generates one with these SANs. An existing
/// certificate is kept even when the configured names changed (clients trust or pin it);
/// delete both files to get a new one.
pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<DeviceCert> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| err!(InvalidArgument, "{}: {e}", cert_path.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| err!(InvalidArgument, "{}: {e}", key_path.display()))?;
        let fingerprint = fingerprint(&cert);
        return Ok(DeviceCert {
            cert,
            key,
            fingerprint,
            generated: false,
        });
    }
    if cert_path.exists() || key_path.exists() {
        tracing::warn!(dir = %dir.display(), "incomplete device certificate; generating a new one");
    }
    generate(dir, sans)
}

fn generate(dir: &Path, sans: &[String]) -> Result<DeviceCert> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err!(Internal, "generating the device key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec())
        .map_err(|e| err!(InvalidArgument, "device certificate names {sans:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "onair device");
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| err!(Internal, "self-signing the device certificate: {e}"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err!(Io, "creating {}: {e}", dir.display()))?;
    write_private(&dir.join(KEY_FILE), key_pair.serialize_pem().as_bytes())?;
    write_private(&dir.join(CERT_FILE), cert.pem().as_bytes())?;
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| err!(Internal, "device key encoding: {e}"))?;
    let der = cert.der().clone();
    tracing::info!(dir = %dir.display(), names = ?sans, "generated the device certificate");
    Ok(DeviceCert {
        fingerprint: fingerprint(&der),
        cert: der,
        key,
        generated: true,
    })
}

/// Writes `bytes` to `path` with mode 0600: temp file → fsync → rename → fsync(dir).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e: std::io::Error| err!(Io, "{what} {}: {e}", path.display());
    let dir = path
        .parent()
        .ok_or_else(|| err!(InvalidArgument, "{} has no parent", path.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("fsync of", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync of the directory of", e))
}

/// Default SANs: the listen IP (or every interface address when listening on all), `localhost`
/// and the host name.
pub fn default_sans(listen: SocketAddr) -> Vec<String> {
    let mut ips: Vec<IpAddr> = if listen.ip().is_unspecified() {
        interface_ips()
    } else {
        vec![listen.ip()]
    };
    ips.sort();
    ips.dedup();
    let mut out: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    out.push("localhost".into());
    if let Some(h) = hostname().filter(|h| h != "localhost") {
        out.push(h);
    }
    out
}

/// Addresses of this machine's interfaces (loopback included).
fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return vec![IpAddr::from([127, 0, 0, 1])];
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect()
}

/// The kernel host name, if it is a plain DNS name.
fn hostname() -> Option<String> {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(h)
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) for this certificate.
pub fn server_config(cert: &DeviceCert) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err!(Internal, "TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], cert.key.clone_key())
        .map_err(|e| Error::new(ErrorKind::Certificate, format!("device certificate: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Checks that a fingerprint pin is well formed.
pub fn require_fingerprint(s: &str) -> Result<[u8; 32]> {
    match parse_fingerprint(s) {
        Some(f) => Ok(f),
        None => bail!(
            InvalidArgument,
            "a SHA-256 fingerprint is 64 hex digits (colons allowed)"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn fingerprint_round_trips() {
        let fp = fingerprint(b"hello");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("2C:F2:4D:BA"), "{fp}");
        let raw = parse_fingerprint(&fp).unwrap();
        assert_eq!(
            parse_fingerprint(&fp.replace(':', "").to_lowercase()),
            Some(raw)
        );
        assert_eq!(parse_fingerprint("abc"), None);
    }

    #[test]
    fn generates_once_then_loads() {
        let dir = std::env::temp_dir().join(format!("onair-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let first = load_or_create(&dir, &sans).unwrap();
        assert!(first.generated);
        for f in [CERT_FILE, KEY_FILE] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(!dir.join("device-cert.tmp").exists());
        let second = load_or_create(&dir, &sans).unwrap();
        assert!(!second.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.cert, second.cert);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_sans_include_listen_ip_and_localhost() {
        let sans = default_sans("192.0.2.5:8443".parse().unwrap());
        assert_eq!(sans[0], "192.0.2.5");
        assert!(sans.contains(&"localhost".to_owned()));
    }
}
