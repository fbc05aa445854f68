//! TLS for `rtmps://`: verified certificates and hostname by default (webpki roots), or a
//! per-destination CA bundle for private ingest, plus an optional SHA-256 pin of the server's
//! SubjectPublicKeyInfo checked after (never instead of) normal verification.

use std::sync::Arc;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, ErrorKind, Result};

/// How a destination's server certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM CA bundle: when set, these are the only trusted roots (private ingest).
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// SHA-256 of the end-entity certificate's DER SubjectPublicKeyInfo.
    pub spki_sha256: Option<[u8; 32]>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client config for one destination.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match &opts.ca_bundle_pem {
        Some(pem) => {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| crate::err!(InvalidArgument, "CA bundle: bad PEM: {e}"))?;
                roots.add(cert).map_err(|e| {
                    crate::err!(InvalidArgument, "CA bundle: unusable certificate: {e}")
                })?;
                n += 1;
            }
            if n == 0 {
                crate::bail!(InvalidArgument, "CA bundle holds no certificate");
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| crate::err!(InvalidArgument, "TLS verifier: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match opts.spki_sha256 {
        Some(pin) => Arc::new(PinnedVerifier { inner, pin }),
        None => inner,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::err!(Internal, "TLS versions: {e}"))?
        .dangerous() // only to install the pinning wrapper, which verifies first
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|_| crate::err!(InvalidArgument, "invalid TLS server name {host:?}"))
}

/// Maps a failed TLS connect to an error kind: certificate problems are not retried.
pub fn classify_tls_error(e: &std::io::Error) -> Error {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let kind = match tls {
            // Our own verification refused the server: a retry cannot fix it.
            rustls::Error::InvalidCertificate(_) => ErrorKind::Certificate,
            // An alert from the server (busy edge, internal error) may pass: retried.
            _ => ErrorKind::Protocol,
        };
        return Error::new(kind, format!("TLS handshake failed: {tls}"));
    }
    Error::from_net("TLS handshake", e)
}

#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: [u8; 32],
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let spki = spki_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        if digest.as_ref() != self.pin {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads one DER TLV at the start of `d`: (tag, whole TLV length, content).
fn der_tlv(d: &[u8]) -> Option<(u8, usize, &[u8])> {
    let tag = *d.first()?;
    let first = *d.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in d.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let content = d.get(hdr..hdr.checked_add(len)?)?;
    Some((tag, hdr + len, content))
}

/// The DER SubjectPublicKeyInfo (whole TLV) of an X.509 certificate.
pub fn spki_of(cert_der: &[u8]) -> Option<&[u8]> {
    let (_, _, cert) = der_tlv(cert_der)?;
    let (_, _, tbs) = der_tlv(cert)?;
    let mut rest = tbs;
    // [0] version is optional; then serial, signature, issuer, validity, subject, SPKI.
    if rest.first() == Some(&0xA0) {
        let (_, n, _) = der_tlv(rest)?;
        rest = rest.get(n..)?;
    }
    for _ in 0..5 {
        let (_, n, _) = der_tlv(rest)?;
        rest = rest.get(n..)?;
    }
    let (tag, n, _) = der_tlv(rest)?;
    (tag == 0x30).then(|| &rest[..n])
}

/// Parses a pin given as 64 hex digits (optionally `sha256/` + base64 is not accepted: hex only).
pub fn parse_pin(hex: &str) -> Result<[u8; 32]> {
    // Bytes, not string slices: a 64-byte pin with multi-byte characters must be refused,
    // not panic on a char boundary (this runs inside the supervisor).
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        crate::bail!(InvalidArgument, "SPKI pin must be 64 hex digits (SHA-256)");
    }
    let digit = |b: u8| char::from(b).to_digit(16);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (digit(pair[0]), digit(pair[1])) else {
            crate::bail!(InvalidArgument, "SPKI pin must be hex");
        };
        *o = u8::try_from(hi * 16 + lo).unwrap_or(0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_parsing_refuses_non_hex_without_panicking() {
        let good = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";
        assert_eq!(parse_pin(good).expect("hex")[..3], [0x01, 0x23, 0x45]);
        // 64 bytes whose byte 1 is inside a two-byte character.
        let multibyte = format!("a{}b", "é".repeat(31));
        assert_eq!(multibyte.len(), 64);
        assert!(parse_pin(&multibyte).is_err());
        // `u8::from_str_radix` accepts a leading `+`; a pin must not.
        assert!(parse_pin(&"+f".repeat(32)).is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
        assert!(parse_pin("abcd").is_err());
    }

    #[test]
    fn der_walker_bounds() {
        assert_eq!(
            der_tlv(&[0x30, 0x03, 1, 2, 3]),
            Some((0x30, 5, &[1u8, 2, 3][..]))
        );
        assert_eq!(der_tlv(&[0x30, 0x05, 1]), None);
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(spki_of(&[0x30, 0x00]), None);
        assert_eq!(spki_of(&[]), None);
    }

    #[test]
    fn pins_parse() {
        let p = parse_pin(&"ab".repeat(32)).expect("valid");
        assert_eq!(p, [0xAB; 32]);
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn default_roots_and_bad_bundles() {
        assert!(client_config(&TlsOptions::default()).is_ok());
        let bad = TlsOptions {
            ca_bundle_pem: Some(b"not a pem".to_vec()),
            spki_sha256: None,
        };
        let e = client_config(&bad).expect_err("no certificates");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
