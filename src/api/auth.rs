//! Bearer-token authentication: roles, the `Principal` extractor and failed-auth rate limiting.
//!
//! A handler takes a [`Principal`] argument to require a valid token, then calls [`require`]
//! for the roles it allows. Tokens are resolved by a [`TokenResolver`] (the store's looks up the
//! SHA-256 of the presented token, see [`token_hash`]). Failed attempts (malformed or unknown
//! tokens) are counted per source address in a token bucket; an address out of tokens gets 429
//! with `Retry-After` for every request that presents credentials, except a token that already
//! authenticated from that address before: a brute-forcer behind the same address (a NAT, a
//! jump host) cannot lock out an admin who was working from there. It gains nothing from this:
//! only tokens proven valid from that address are let through, every guess still gets 429.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::secret::Secret;

/// Longest token accepted in a header, in bytes.
const MAX_TOKEN_LEN: usize = 512;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// On-site administrator: entitlement, policy, tokens, everything.
    Admin,
    /// A subscriber: their own profiles and sessions.
    Subscriber,
    /// The conferencing fabric: indicator events and acknowledgements.
    Fabric,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's public id (for audit logs), never the token itself.
    pub token_id: String,
    pub role: Role,
    /// Set for `Role::Subscriber` tokens: whose resources they reach.
    pub subscriber_id: Option<String>,
}

/// Maps a presented bearer token to its principal.
pub trait TokenResolver: Send + Sync {
    /// The principal of `presented`, or `None` for an unknown or revoked token.
    fn resolve(&self, presented: &str) -> Option<Principal>;
}

/// SHA-256 of a token: what a store keeps instead of the token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two byte strings in time independent of their contents.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An in-memory resolver (tests, the first-start admin token): keeps only token hashes and
/// compares every entry in constant time.
#[derive(Default)]
pub struct MemoryTokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl MemoryTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token` for `principal`.
    pub fn insert(&mut self, token: &Secret, principal: Principal) {
        self.entries.push((token_hash(token.expose()), principal));
    }

    /// Builder form of [`MemoryTokens::insert`].
    pub fn with(mut self, token: &str, principal: Principal) -> Self {
        self.insert(&Secret::new(token), principal);
        self
    }
}

impl TokenResolver for MemoryTokens {
    fn resolve(&self, presented: &str) -> Option<Principal> {
        let h = token_hash(presented);
        let mut found = None;
        for (stored, p) in &self.entries {
            // No early exit: the time does not depend on which entry matched.
            if ct_eq(stored, &h) && found.is_none() {
                found = Some(p);
            }
        }
        found.cloned()
    }
}

/// Allows a handler only for the given roles: `require(&p, &[Role::Admin])?`.
pub fn require(principal: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&principal.role) {
        Ok(())
    } else {
        Err(ApiError::forbidden("this token's role may not do this"))
    }
}

/// The TCP peer of a request, put in the request extensions by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Failed-auth limits. Defaults: 10 failures in a burst, refilled at 10 a minute, 4096 tracked
/// addresses.
#[derive(Clone, Copy, Debug)]
pub struct LimiterConfig {
    pub burst: u32,
    pub per_minute: u32,
    pub max_entries: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            burst: 10,
            per_minute: 10,
            max_entries: 4096,
        }
    }
}

/// Tokens (hashes) remembered per address as having authenticated from it.
const TRUSTED_PER_ADDRESS: usize = 4;

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Hashes of tokens that authenticated from this address, most recent last.
    trusted: Vec<[u8; 32]>,
}

/// A token bucket of allowed auth failures per source address (IPv6 by /64), bounded in size.
pub struct FailureLimiter {
    cfg: LimiterConfig,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    pub fn new(cfg: LimiterConfig) -> Self {
        FailureLimiter {
            cfg,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn rate_per_s(&self) -> f64 {
        f64::from(self.cfg.per_minute.max(1)) / 60.0
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate_per_s()).min(f64::from(self.cfg.burst));
        b.updated = now;
    }

    /// `Err(retry_after_s)` when `ip` has no failures left.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = table.get_mut(&key(ip)) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            return Ok(());
        }
        let wait_s = ((1.0 - b.tokens) / self.rate_per_s()).ceil();
        Err(Duration::from_secs_f64(wait_s).as_secs().max(1))
    }

    /// Counts one failed attempt from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(ip);
        if !table.contains_key(&k) && table.len() >= self.cfg.max_entries {
            self.evict(&mut table, now);
        }
        let burst = f64::from(self.cfg.burst);
        let b = table.entry(k).or_insert(Bucket {
            tokens: burst,
            updated: now,
            trusted: Vec::new(),
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Remembers that the token with hash `token` authenticated from `ip`: it keeps working
    /// from there while the address is blocked ([`FailureLimiter::is_trusted`]).
    pub fn record_success(&self, ip: IpAddr, token: [u8; 32], now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(ip);
        if let Some(b) = table.get(&k) {
            if b.trusted.last() == Some(&token) {
                return; // the common case: the same client again
            }
        } else if table.len() >= self.cfg.max_entries {
            self.evict(&mut table, now);
        }
        let b = table.entry(k).or_insert(Bucket {
            tokens: f64::from(self.cfg.burst),
            updated: now,
            trusted: Vec::new(),
        });
        b.trusted.retain(|t| *t != token);
        if b.trusted.len() >= TRUSTED_PER_ADDRESS {
            b.trusted.remove(0);
        }
        b.trusted.push(token);
    }

    /// Whether the token with hash `token` authenticated from `ip` before.
    pub fn is_trusted(&self, ip: IpAddr, token: &[u8; 32]) -> bool {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table
            .get(&key(ip))
            .is_some_and(|b| b.trusted.iter().any(|t| ct_eq(t, token)))
    }

    /// Frees room: drops refilled buckets (forgetting their trusted tokens, which only matter
    /// while an address is blocked), else the least recently updated one.
    fn evict(&self, table: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let burst = f64::from(self.cfg.burst);
        let rate = self.rate_per_s();
        table.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
        });
        if table.len() >= self.cfg.max_entries {
            let oldest = table.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| *k);
            if let Some(k) = oldest {
                table.remove(&k);
            }
        }
    }

    /// Number of tracked addresses.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limiter's key: IPv4 as is, IPv6 by its /64 (one host usually owns a whole /64).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// What the [`Principal`] extractor needs; installed as a request extension by
/// [`crate::api::App`].
#[derive(Clone)]
pub struct AuthState {
    pub resolver: Arc<dyn TokenResolver>,
    pub limiter: Arc<FailureLimiter>,
}

impl AuthState {
    pub fn new(resolver: Arc<dyn TokenResolver>, cfg: LimiterConfig) -> Self {
        AuthState {
            resolver,
            limiter: Arc::new(FailureLimiter::new(cfg)),
        }
    }
}

/// The header's token: `None` when missing, `Err` when present but malformed.
fn bearer_token(parts: &Parts) -> Option<Result<&str, ()>> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    let parsed = first.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        let ok = scheme.eq_ignore_ascii_case("bearer")
            && !token.is_empty()
            && token.len() <= MAX_TOKEN_LEN
            && token.bytes().all(is_token_byte);
        ok.then_some(token)
    });
    Some(parsed.ok_or(()))
}

/// RFC 6750 `b64token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(auth) = parts.extensions.get::<AuthState>().cloned() else {
            return Err(ApiError::internal(
                &"AuthState extension missing: router not built by App",
            ));
        };
        let Some(token) = bearer_token(parts) else {
            return Err(ApiError::unauthenticated("missing bearer token"));
        };
        let ip = parts
            .extensions
            .get::<PeerAddr>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
        let now = Instant::now();
        let hash = token.ok().map(token_hash);
        if let Err(retry_after_s) = auth.limiter.check(ip, now) {
            // Blocked: only a token that authenticated from this address before gets through.
            if !hash.is_some_and(|h| auth.limiter.is_trusted(ip, &h)) {
                return Err(ApiError::rate_limited(
                    "too many failed authentication attempts from this address",
                    retry_after_s,
                ));
            }
        }
        let principal = token.ok().and_then(|t| auth.resolver.resolve(t));
        match (principal, hash) {
            (Some(p), Some(h)) => {
                auth.limiter.record_success(ip, h, now);
                Ok(p)
            }
            _ => {
                auth.limiter.record_failure(ip, now);
                tracing::warn!(peer = %ip, "failed authentication");
                Err(ApiError::unauthenticated("invalid bearer token"))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    fn admin() -> Principal {
        Principal {
            token_id: "t1".into(),
            role: Role::Admin,
            subscriber_id: None,
        }
    }

    #[test]
    fn memory_tokens_resolve_only_exact() {
        let t = MemoryTokens::new().with("tok-abc", admin());
        assert_eq!(t.resolve("tok-abc"), Some(admin()));
        assert_eq!(t.resolve("tok-abd"), None);
        assert_eq!(t.resolve("tok-ab"), None);
    }

    #[test]
    fn require_checks_roles() {
        let p = admin();
        assert!(require(&p, &[Role::Admin]).is_ok());
        assert_eq!(require(&p, &[Role::Fabric]).unwrap_err().status(), 403);
    }

    #[test]
    fn bucket_blocks_after_burst_and_refills() {
        let l = FailureLimiter::new(LimiterConfig::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.check(ip, t0).is_ok());
            l.record_failure(ip, t0);
        }
        let retry = l.check(ip, t0).unwrap_err();
        assert_eq!(retry, 6, "one failure refills in 60/10 s");
        assert!(l.check(ip, t0 + Duration::from_secs(6)).is_ok());
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(l.check(other, t0).is_ok());
    }

    #[test]
    fn a_token_that_worked_from_an_address_survives_its_block() {
        let l = FailureLimiter::new(LimiterConfig::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        let admin = token_hash("onair_admin");
        l.record_success(ip, admin, t0);
        for _ in 0..50 {
            l.record_failure(ip, t0);
        }
        assert!(l.check(ip, t0).is_err(), "the address is blocked");
        assert!(l.is_trusted(ip, &admin), "the admin's token still passes");
        assert!(
            !l.is_trusted(ip, &token_hash("onair_guess")),
            "a guess does not"
        );
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(!l.is_trusted(other, &admin), "trust is per address");
        for i in 0..TRUSTED_PER_ADDRESS {
            l.record_success(ip, token_hash(&format!("t{i}")), t0);
        }
        assert!(
            !l.is_trusted(ip, &admin),
            "bounded: the oldest is forgotten"
        );
    }

    #[test]
    fn table_is_bounded() {
        let cfg = LimiterConfig {
            max_entries: 8,
            ..LimiterConfig::default()
        };
        let l = FailureLimiter::new(cfg);
        let t0 = Instant::now();
        for i in 0..100u8 {
            l.record_failure(IpAddr::from([10, 0, 0, i]), t0);
        }
        assert!(l.len() <= 8);
    }

    #[test]
    fn ipv6_keyed_by_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert_eq!(key(a), key(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
