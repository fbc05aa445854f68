//! The receiver's configuration: strict (unknown keys rejected), defaults on each field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::session::StreamEntry;
use crate::error::Result;
use crate::rtmp_guard::GuardLimits;
use crate::secret::Secret;
use crate::{bail, err};

/// `onair receive` configuration (TOML, see docs/receive.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Address to listen on. Default `0.0.0.0:1935`. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks RTMPS only. Default: none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Directory the recordings go to; created if missing. Required.
    pub record_dir: PathBuf,
    /// The streams that may be published (`[[stream]]` tables). At least one.
    #[serde(rename = "stream")]
    pub streams: Vec<StreamConfig>,
    /// Connections served at once; more are closed on accept. Default 64.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections from one address (IPv6: one /64) served at once; more are closed on
    /// accept, so one host's half-open connections cannot take every slot. Default 16.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Seconds a connection may stay silent (handshake included) before it is closed.
    /// Default 10.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Protocol limits (`[limits]` table).
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// One accepted stream: publishing `key` on `rtmp://host/<app>/<key>` records as `<name>-….flv`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Name used in file names and logs: 1–64 of `A-Z a-z 0-9 _ -`. Unique.
    pub name: String,
    /// RTMP application (the first URL path segment), e.g. `live`.
    pub app: String,
    /// The stream key. Exactly one of `key` and `key_file`.
    #[serde(default, deserialize_with = "de_secret")]
    pub key: Option<Secret>,
    /// File holding the stream key (trailing whitespace trimmed); relative paths are relative
    /// to the config file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Limits on what one peer may send.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest RTMP message (one video frame). Default 8388608 (8 MiB), at most 16777215.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// Largest chunk size a peer may set. Default 65536.
    #[serde(default = "default_max_chunk_size_bytes")]
    pub max_chunk_size_bytes: u32,
    /// Largest AMF command/metadata message. Default 65536.
    #[serde(default = "default_max_amf_message_bytes")]
    pub max_amf_message_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: default_max_message_bytes(),
            max_chunk_size_bytes: default_max_chunk_size_bytes(),
            max_amf_message_bytes: default_max_amf_message_bytes(),
        }
    }
}

impl LimitsConfig {
    pub fn guard_limits(&self) -> GuardLimits {
        GuardLimits {
            max_message_bytes: self.max_message_bytes,
            max_chunk_size_bytes: self.max_chunk_size_bytes,
            max_amf_message_bytes: self.max_amf_message_bytes,
            ..GuardLimits::default()
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1935))
}
fn default_max_connections() -> usize {
    64
}
fn default_max_connections_per_address() -> usize {
    16
}
fn default_idle_timeout_secs() -> u64 {
    10
}
fn default_max_message_bytes() -> u32 {
    GuardLimits::default().max_message_bytes
}
fn default_max_chunk_size_bytes() -> u32 {
    GuardLimits::default().max_chunk_size_bytes
}
fn default_max_amf_message_bytes() -> u32 {
    GuardLimits::default().max_amf_message_bytes
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

impl ReceiverConfig {
    /// A config with defaults, for tests and embedding.
    pub fn new(record_dir: impl Into<PathBuf>, streams: Vec<StreamConfig>) -> Self {
        ReceiverConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            record_dir: record_dir.into(),
            streams,
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            idle_timeout_secs: default_idle_timeout_secs(),
            limits: LimitsConfig::default(),
        }
    }

    /// Parses TOML text. `base_dir` resolves relative `key_file` paths; key files are read.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut c: ReceiverConfig =
            toml::from_str(text).map_err(|e| err!(InvalidArgument, "config: {e}"))?;
        for s in &mut c.streams {
            s.load_key_file(base_dir)?;
        }
        c.stream_entries()?;
        Ok(c)
    }

    /// Validates and returns the accepted streams.
    pub fn stream_entries(&self) -> Result<Vec<StreamEntry>> {
        self.check_scalars()?;
        let mut out: Vec<StreamEntry> = Vec::with_capacity(self.streams.len());
        for s in &self.streams {
            let entry = s.entry()?;
            if out.iter().any(|o| o.name == entry.name) {
                bail!(
                    InvalidArgument,
                    "config: stream name {:?} used twice",
                    entry.name
                );
            }
            if out
                .iter()
                .any(|o| o.app == entry.app && o.key.ct_eq(entry.key.expose()))
            {
                bail!(
                    InvalidArgument,
                    "config: stream {:?} reuses a key",
                    entry.name
                );
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn check_scalars(&self) -> Result<()> {
        if self.streams.is_empty() {
            bail!(
                InvalidArgument,
                "config: at least one [[stream]] is required"
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!(InvalidArgument, "config: tls_cert and tls_key go together");
        }
        if self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.idle_timeout_secs == 0
        {
            bail!(
                InvalidArgument,
                "config: max_connections, max_connections_per_address and idle_timeout_secs must be > 0"
            );
        }
        let l = &self.limits;
        if !(4096..=0xFF_FFFF).contains(&l.max_message_bytes) {
            bail!(
                InvalidArgument,
                "config: limits.max_message_bytes must be 4096..=16777215"
            );
        }
        if !(128..=0x7FFF_FFFF).contains(&l.max_chunk_size_bytes) {
            bail!(
                InvalidArgument,
                "config: limits.max_chunk_size_bytes must be >= 128"
            );
        }
        if !(1024..=l.max_message_bytes).contains(&l.max_amf_message_bytes) {
            bail!(
                InvalidArgument,
                "config: limits.max_amf_message_bytes out of range"
            );
        }
        Ok(())
    }
}

impl StreamConfig {
    pub fn new(name: &str, app: &str, key: Secret) -> Self {
        StreamConfig {
            name: name.into(),
            app: app.into(),
            key: Some(key),
            key_file: None,
        }
    }

    fn load_key_file(&mut self, base_dir: &Path) -> Result<()> {
        let Some(path) = &self.key_file else {
            return Ok(());
        };
        if self.key.is_some() {
            bail!(
                InvalidArgument,
                "config: stream {:?} has both key and key_file",
                self.name
            );
        }
        let path = base_dir.join(path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err!(
                InvalidArgument,
                "config: stream {:?}: key_file {}: {e}",
                self.name,
                path.display()
            )
        })?;
        self.key = Some(Secret::new(text.trim_end()));
        Ok(())
    }

    fn entry(&self) -> Result<StreamEntry> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            bail!(
                InvalidArgument,
                "config: stream name {:?}: use 1-64 of A-Z a-z 0-9 _ -",
                self.name
            );
        }
        if self.app.is_empty() || self.app.contains('/') {
            bail!(
                InvalidArgument,
                "config: stream {:?}: app must be one path segment",
                self.name
            );
        }
        let Some(key) = self.key.clone() else {
            bail!(
                InvalidArgument,
                "config: stream {:?} needs key or key_file",
                self.name
            );
        };
        if key.is_empty() {
            bail!(
                InvalidArgument,
                "config: stream {:?} has an empty key",
                self.name
            );
        }
        Ok(StreamEntry {
            name: self.name.clone(),
            app: self.app.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
record_dir = "/tmp/rec"
[[stream]]
name = "town-hall"
app = "live"
key = "s3cret"
[limits]
max_message_bytes = 1048576
"#;

    #[test]
    fn parses_with_defaults() {
        let c = ReceiverConfig::from_toml(GOOD, Path::new("/")).expect("valid");
        assert_eq!(c.max_connections, 64);
        assert_eq!(c.max_connections_per_address, 16);
        assert_eq!(c.idle_timeout_secs, 10);
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.limits.max_chunk_size_bytes, 65536);
        let e = c.stream_entries().expect("entries");
        assert_eq!(e[0].key.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_key_named() {
        let text = GOOD.replace("app = \"live\"", "app = \"live\"\nkey_fiel = \"x\"");
        let e = ReceiverConfig::from_toml(&text, Path::new("/")).expect_err("unknown");
        assert!(e.message().contains("key_fiel"), "{e}");
        let text = format!("colour = 1\n{GOOD}");
        let e = ReceiverConfig::from_toml(&text, Path::new("/")).expect_err("unknown");
        assert!(e.message().contains("colour"), "{e}");
    }

    #[test]
    fn key_file_and_validation() {
        let dir = std::env::temp_dir().join(format!("onair-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("k"), "fromfile\n").expect("write");
        let text = GOOD.replace("key = \"s3cret\"", "key_file = \"k\"");
        let c = ReceiverConfig::from_toml(&text, &dir).expect("valid");
        assert_eq!(c.stream_entries().expect("ok")[0].key.expose(), "fromfile");
        let both = GOOD.replace("key = \"s3cret\"", "key = \"a\"\nkey_file = \"k\"");
        assert!(ReceiverConfig::from_toml(&both, &dir).is_err());
        let bad_name = GOOD.replace("town-hall", "../etc");
        assert!(ReceiverConfig::from_toml(&bad_name, &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../docs/examples/receive.toml");
        let c = ReceiverConfig::from_toml(text, Path::new("/")).expect("example is valid");
        assert_eq!(c.streams.len(), 2);
        assert_eq!(c.limits.max_chunk_size_bytes, 65536);
        assert!(c.tls_cert.is_some());
    }
}
