//! `onair run` configuration: TOML, strict (unknown keys are refused, naming the key), every
//! default on its field and in docs/config.md. With no file, [`RunConfig::default`] is the
//! embedded default: state under ./var/onair, admin API on 127.0.0.1:8080 (plain HTTP, allowed
//! only on loopback), fabric ingest on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Where the store, device key, device certificate and admin token live.
    /// Default "var/onair" (relative to the working directory).
    pub data_dir: PathBuf,
    pub api: ApiSection,
    pub fabric: FabricSection,
    pub egress: EgressSection,
    pub log: LogSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Admin API address. Default "127.0.0.1:8080".
    pub listen: SocketAddr,
    /// HTTPS with the device certificate. Default: true, except on a loopback address
    /// (false). Plain HTTP on a non-loopback address is refused at start.
    pub tls: Option<bool>,
    /// Largest request body. Default 65536.
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabricSection {
    /// Address ranges (CIDR) a session's fabric source may bind to. Default ["127.0.0.0/8"].
    pub allowed_sources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSection {
    /// Outbound RTMP chunk size, 128..=65536. Default 32768.
    pub chunk_size: u32,
    /// TCP+TLS connect timeout, ms. Default 10000.
    pub connect_timeout_ms: u64,
    /// Longest reconnect delay, ms. Default 10000.
    pub backoff_max_ms: u64,
    /// Per-destination queue bound, bytes. Default 16777216.
    pub queue_max_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// JSON lines instead of text. Default false.
    pub json: bool,
    /// Filter (tracing EnvFilter syntax); RUST_LOG overrides it. Default "info".
    pub level: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            data_dir: PathBuf::from("var/onair"),
            api: ApiSection::default(),
            fabric: FabricSection::default(),
            egress: EgressSection::default(),
            log: LogSection::default(),
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for FabricSection {
    fn default() -> Self {
        FabricSection {
            allowed_sources: vec!["127.0.0.0/8".into()],
        }
    }
}

impl Default for EgressSection {
    fn default() -> Self {
        EgressSection {
            chunk_size: 32_768,
            connect_timeout_ms: 10_000,
            backoff_max_ms: 10_000,
            queue_max_bytes: 16 << 20,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            json: false,
            level: "info".into(),
        }
    }
}

impl RunConfig {
    /// Parses and validates a config file's text.
    pub fn from_toml(text: &str) -> Result<RunConfig> {
        let c: RunConfig =
            toml::from_str(text).map_err(|e| crate::err!(InvalidArgument, "config: {e}"))?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::err!(
                InvalidArgument,
                "cannot read config {}: {e}",
                path.display()
            )
        })?;
        RunConfig::from_toml(&text)
    }

    pub fn validate(&self) -> Result<()> {
        if !(128..=65_536).contains(&self.egress.chunk_size) {
            crate::bail!(
                InvalidArgument,
                "config: egress.chunk_size must be 128..=65536"
            );
        }
        for c in &self.fabric.allowed_sources {
            if crate::control::destination::Cidr::parse(c).is_none() {
                crate::bail!(
                    InvalidArgument,
                    "config: fabric.allowed_sources: {c:?} is not a CIDR"
                );
            }
        }
        if self.api_tls() == Some(false) && !self.api.listen.ip().is_loopback() {
            crate::bail!(
                InvalidArgument,
                "config: api.tls = false is only allowed on a loopback address (not {})",
                self.api.listen
            );
        }
        Ok(())
    }

    /// Whether the API serves HTTPS (see [`ApiSection::tls`]).
    pub fn api_tls(&self) -> Option<bool> {
        Some(self.api.tls.unwrap_or(!self.api.listen.ip().is_loopback()))
    }

    pub fn egress_options(&self) -> crate::egress::EgressOptions {
        crate::egress::EgressOptions {
            chunk_size: self.egress.chunk_size,
            connect_timeout: Duration::from_millis(self.egress.connect_timeout_ms),
            backoff_max: Duration::from_millis(self.egress.backoff_max_ms),
            queue_max_bytes: self.egress.queue_max_bytes,
            ..crate::egress::EgressOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = RunConfig::from_toml("").expect("valid");
        assert_eq!(c, RunConfig::default());
        assert_eq!(
            c.api_tls(),
            Some(false),
            "plain HTTP on loopback by default"
        );
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("../docs/examples/onair.toml");
        let c = RunConfig::from_toml(text).expect("example");
        assert_eq!(c.api.listen.port(), 8443);
        assert_eq!(c.api_tls(), Some(true));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = RunConfig::from_toml("[api]\nlisten = \"127.0.0.1:1\"\ncolour = 1\n")
            .expect_err("unknown");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = RunConfig::from_toml("data_dirr = \"x\"").expect_err("typo");
        assert!(e.to_string().contains("data_dirr"), "{e}");
    }

    #[test]
    fn plain_http_off_loopback_is_refused() {
        let e = RunConfig::from_toml("[api]\nlisten = \"0.0.0.0:8080\"\ntls = false\n")
            .expect_err("refused");
        assert!(e.to_string().contains("loopback"), "{e}");
        let c = RunConfig::from_toml("[api]\nlisten = \"0.0.0.0:8443\"\n").expect("tls default");
        assert_eq!(c.api_tls(), Some(true));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(RunConfig::from_toml("[egress]\nchunk_size = 16000000\n").is_err());
        assert!(RunConfig::from_toml("[fabric]\nallowed_sources = [\"nope\"]\n").is_err());
        assert!(RunConfig::from_toml("[api]\nlisten = \"not an address\"\n").is_err());
    }
}
