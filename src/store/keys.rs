//! The device key (a 32-byte file beside the database), secrets sealed under it with
//! AES-256-GCM, and API tokens.
//!
//! Sealed format, version 1: `v1:` + standard base64 (with padding) of `nonce(12) || ciphertext ||
//! tag(16)`; the AAD is the fixed string [`AAD_V1`]. Nonces are 96 random bits per seal: with the
//! few thousand seals an appliance makes in its life the collision probability is negligible
//! (the usual bound is 2^32 seals per key).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::{bail, err};

/// File name of the device key inside the data directory.
pub const KEY_FILE: &str = "device.key";
/// Length of the device key in bytes.
pub const KEY_LEN: usize = 32;
const SEALED_PREFIX_V1: &str = "v1:";
const AAD_V1: &[u8] = b"onair sealed secret v1";
const TAG_LEN: usize = 16;
/// Prefix of tokens made by [`new_token`].
pub const TOKEN_PREFIX: &str = "onair_";

/// The loaded device key.
pub(super) struct DeviceKey {
    key: LessSafeKey,
    /// A non-secret fingerprint stored in the database, so that a swapped key file is detected
    /// at start instead of when a secret fails to open.
    id: String,
}

impl DeviceKey {
    fn from_bytes(bytes: &[u8]) -> Result<DeviceKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| err!(Internal, "device key has the wrong length"))?;
        let mut fp = b"onair device key id v1\0".to_vec();
        fp.extend_from_slice(bytes);
        let id = hex(&digest(&SHA256, &fp).as_ref()[..8]);
        Ok(DeviceKey {
            key: LessSafeKey::new(unbound),
            id,
        })
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext` under a fresh random nonce; see the module doc for the format.
    pub(super) fn seal(&self, rng: &SystemRandom, plaintext: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| err!(Internal, "seal: the system random generator failed"))?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD_V1),
                &mut buf,
            )
            .map_err(|_| err!(Internal, "seal: encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX_V1}{}", base64_encode(&out)))
    }

    /// Decrypts a string made by [`DeviceKey::seal`]. A string that is not in the sealed format
    /// is `InvalidArgument`; one that fails authentication (other key, edited bytes) is `Io`.
    pub(super) fn open(&self, sealed: &str) -> Result<Secret> {
        let Some(b64) = sealed.strip_prefix(SEALED_PREFIX_V1) else {
            bail!(
                InvalidArgument,
                "sealed secret: unknown format (expected \"v1:\")"
            );
        };
        let Some(mut raw) = base64_decode(b64) else {
            bail!(InvalidArgument, "sealed secret: invalid base64");
        };
        if raw.len() < NONCE_LEN + TAG_LEN {
            bail!(InvalidArgument, "sealed secret: too short");
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD_V1),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| {
                err!(
                    Io,
                    "sealed secret does not authenticate: wrong device key or corrupted data"
                )
            })?;
        let text = std::str::from_utf8(plain)
            .map_err(|_| err!(Io, "sealed secret: plaintext is not UTF-8"))?;
        Ok(Secret::new(text))
    }
}

/// Loads `dir/device.key`, or creates it when absent and `may_create` is true.
///
/// A key file must be a regular file (not a symlink) of exactly [`KEY_LEN`] bytes with no
/// group or other permission bits; anything else is refused with an `Io` error.
pub(super) fn load_or_create(dir: &Path, may_create: bool) -> Result<DeviceKey> {
    let path = dir.join(KEY_FILE);
    match fs::symlink_metadata(&path) {
        Ok(_) => load(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                bail!(
                    Io,
                    "{} is missing but the database holds data sealed by a device key; \
                     restore the key file (refusing to create a new one)",
                    path.display()
                );
            }
            create(dir)
        }
        Err(e) => Err(io_err(&format!("device key {}", path.display()), &e)),
    }
}

fn load(path: &Path) -> Result<DeviceKey> {
    let shown = path.display();
    let meta = fs::symlink_metadata(path).map_err(|e| io_err(&format!("{shown}"), &e))?;
    if !meta.file_type().is_file() {
        bail!(Io, "device key {shown} is not a regular file");
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            Io,
            "device key {shown} has mode {mode:03o}: group/others may read it; \
             refusing to start (chmod 600 it after checking who read it)"
        );
    }
    if meta.len() != KEY_LEN as u64 {
        bail!(
            Io,
            "device key {shown} is {} bytes, expected {KEY_LEN}",
            meta.len()
        );
    }
    let mut bytes = Vec::with_capacity(KEY_LEN);
    File::open(path)
        .and_then(|f| f.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| io_err(&format!("read {shown}"), &e))?;
    if bytes.len() != KEY_LEN {
        bail!(Io, "device key {shown} changed size while being read");
    }
    DeviceKey::from_bytes(&bytes)
}

/// Writes a fresh random key crash-safely: temp file (0600) → fsync → rename → fsync(dir).
fn create(dir: &Path) -> Result<DeviceKey> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| err!(Internal, "device key: the system random generator failed"))?;
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&format!("remove stale {}", tmp.display()), &e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&format!("create {}", tmp.display()), &e))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&format!("write {}", tmp.display()), &e))?;
    drop(f);
    let path = dir.join(KEY_FILE);
    fs::rename(&tmp, &path).map_err(|e| io_err(&format!("rename to {}", path.display()), &e))?;
    sync_dir(dir)?;
    DeviceKey::from_bytes(&bytes)
}

/// fsyncs a directory so that a rename or create inside it survives power loss.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&format!("fsync directory {}", dir.display()), &e))
}

pub(super) fn io_err(context: &str, e: &std::io::Error) -> Error {
    err!(Io, "{context}: {e}")
}

/// SHA-256 of a token, lowercase hex. Tokens carry 256 random bits, so a fast hash is right:
/// there is nothing to brute-force, and a slow password hash would only slow every request.
pub fn hash_token(token: &str) -> String {
    hex(digest(&SHA256, token.as_bytes()).as_ref())
}

/// A new API token: [`TOKEN_PREFIX`] + 64 hex digits (32 random bytes). Errors only if the
/// system random generator fails.
pub fn new_token() -> Result<Secret> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| err!(Internal, "new token: the system random generator failed"))?;
    Ok(Secret::new(format!("{TOKEN_PREFIX}{}", hex(&bytes))))
}

/// Lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding.
pub(super) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict decoder for [`base64_encode`]'s output: `None` on any other input, including
/// non-canonical padding bits.
pub(super) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let s = text.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci + 1 == s.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            let v = B64.iter().position(|&x| x == c)?;
            n = (n << 6) | u32::try_from(v).ok()?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        let take = 3 - pad;
        // Bits below the last full byte must be zero (canonical encoding).
        if pad > 0 && bytes[1 + take..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[1..1 + take]);
    }
    Some(out)
}
