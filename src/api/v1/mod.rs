//! The v1 resources of the admin API. Requests are decoded into typed commands here (strict
//! JSON), run through the supervisor (which authorizes, audits and applies them), and answered
//! with views that never carry a stream key or a token hash.

mod admin;
mod fabric;
mod profiles;
mod sessions;
pub mod system;

use std::sync::Arc;

use axum::Extension;

use super::auth::PeerAddr;
use super::{ApiError, Principal, Role as ApiRole, Routes, TokenResolver};
use crate::control::consent::{Command, DenyCode, Outcome};
use crate::control::model::{Actor, Role};
use crate::control::supervisor::{Control, Refused};

/// What every v1 handler shares.
#[derive(Clone)]
pub struct V1 {
    pub control: Control,
    /// CIDRs a session's fabric source may use (config `fabric.allowed_sources`).
    pub allowed_sources: Arc<Vec<crate::control::destination::Cidr>>,
    /// Open indicator streams per fabric token (capped: [`fabric::MAX_STREAMS_PER_TOKEN`]).
    pub indicator_streams: Arc<fabric::StreamCounts>,
}

/// All v1 routes.
pub fn routes(v1: V1) -> Routes {
    admin::routes()
        .merge(profiles::routes())
        .merge(sessions::routes())
        .merge(fabric::routes())
        .merge(system::routes())
        .with_state(v1)
}

/// Resolves tokens against the control state (SHA-256 of the token, as stored).
pub struct ControlTokens(pub Control);

impl TokenResolver for ControlTokens {
    fn resolve(&self, presented: &str) -> Option<Principal> {
        let hash = crate::store::hash_token(presented);
        self.0
            .read(|s| {
                s.tokens
                    .values()
                    .find(|t| crate::secret::Secret::new(t.hash.clone()).ct_eq(&hash))
                    .map(|t| Principal {
                        token_id: t.id.clone(),
                        role: match t.role {
                            Role::Admin | Role::System => ApiRole::Admin,
                            Role::Subscriber => ApiRole::Subscriber,
                            Role::Fabric => ApiRole::Fabric,
                        },
                        subscriber_id: t.subscriber.clone(),
                    })
            })
            .flatten()
    }
}

/// The JSON request bodies of the v1 API, for [`decode_body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    NewSession,
    Confirm,
    Profile,
    Entitlement,
    Policy,
    NewSubscriber,
    NewToken,
}

impl BodyKind {
    pub const ALL: [BodyKind; 7] = [
        BodyKind::NewSession,
        BodyKind::Confirm,
        BodyKind::Profile,
        BodyKind::Entitlement,
        BodyKind::Policy,
        BodyKind::NewSubscriber,
        BodyKind::NewToken,
    ];
}

/// Decodes a request body as its handler does, with the edge checks that need no state: the
/// session source and schedule (against `allowed_sources`), the profile key and URL (against
/// `policy`), the policy's CIDRs. Nothing reaches the supervisor or the store. The fuzz target
/// `api_decode` drives this.
pub fn decode_body(
    kind: BodyKind,
    body: &[u8],
    allowed_sources: &[crate::control::destination::Cidr],
    policy: &crate::control::model::Policy,
) -> Result<(), ApiError> {
    match kind {
        BodyKind::NewSession | BodyKind::Confirm => sessions::decode(kind, body, allowed_sources),
        BodyKind::Profile => profiles::decode(body, policy),
        _ => admin::decode(kind, body),
    }
}

/// The actor of a request, for the state machine and the audit log.
pub fn actor(p: &Principal, peer: Option<Extension<PeerAddr>>) -> Actor {
    Actor {
        role: match p.role {
            ApiRole::Admin => Role::Admin,
            ApiRole::Subscriber => Role::Subscriber,
            ApiRole::Fabric => Role::Fabric,
        },
        subscriber: p.subscriber_id.clone(),
        token_id: p.token_id.clone(),
        source: peer.map_or_else(
            || "unknown".into(),
            |Extension(PeerAddr(a))| a.ip().to_string(),
        ),
    }
}

/// Runs a command; maps a refusal to its HTTP error.
pub async fn submit(v1: &V1, actor: Actor, cmd: Command) -> Result<Outcome, ApiError> {
    v1.control.submit(actor, cmd).await.map_err(refused)
}

pub fn refused(r: Refused) -> ApiError {
    match r {
        Refused::Denied(d) => match d.code {
            DenyCode::Forbidden => ApiError::forbidden(d.message),
            DenyCode::NotFound => ApiError::not_found(d.message),
            DenyCode::Conflict => ApiError::conflict(d.message),
            DenyCode::Invalid => ApiError::invalid_argument(d.message),
            DenyCode::Policy => {
                ApiError::new(axum::http::StatusCode::FORBIDDEN, "policy", d.message)
            }
        },
        Refused::Store(e) => {
            tracing::error!(error = %e, "store refused a write");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the appliance could not record this change (storage); nothing was changed",
            )
        }
        Refused::Closed => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        ),
    }
}

/// Who may read profiles and sessions (the fabric may not: 403, not an empty list).
pub const READERS: &[ApiRole] = &[ApiRole::Admin, ApiRole::Subscriber];

/// Audits a refusal decided here at the edge (the caller is authenticated), then returns it.
pub async fn refuse(v1: &V1, actor: Actor, action: &str, target: &str, err: ApiError) -> ApiError {
    v1.control
        .audit_refusal(actor, action, target, err.code(), err.message())
        .await;
    err
}

/// For reads: admins see everything, subscribers their own, others nothing.
pub fn may_see(p: &Principal, owner: &str) -> bool {
    match p.role {
        ApiRole::Admin => true,
        ApiRole::Subscriber => p.subscriber_id.as_deref() == Some(owner),
        ApiRole::Fabric => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod decode_tests {
    use super::*;
    use crate::control::destination::Cidr;
    use crate::control::model::Policy;

    fn status(kind: BodyKind, body: &[u8]) -> Option<u16> {
        let allowed: Vec<Cidr> = Cidr::parse("127.0.0.0/8").into_iter().collect();
        decode_body(kind, body, &allowed, &Policy::default())
            .err()
            .map(|e| e.status().as_u16())
    }

    /// `decode_body` (the fuzz target `api_decode`) runs the handlers' edge checks.
    #[test]
    fn decode_body_runs_the_edge_checks() {
        let s = br#"{"profile_id":"p","meeting_id":"m","source":"udp://127.0.0.1:5000"}"#;
        assert_eq!(status(BodyKind::NewSession, s), None);
        let s = br#"{"profile_id":"p","meeting_id":"m","source":"udp://10.0.0.1:5000"}"#;
        assert_eq!(status(BodyKind::NewSession, s), Some(403));
        let s =
            br#"{"profile_id":"p","meeting_id":"m","source":"udp://127.0.0.1:1","stop_at_ms":1}"#;
        assert_eq!(status(BodyKind::NewSession, s), Some(400));
        let p = br#"{"name":"x","service":"youtube","url":"rtmps://a.rtmps.youtube.com/live2","stream_key":"abcd-1234"}"#;
        assert_eq!(status(BodyKind::Profile, p), None);
        let p = br#"{"name":"x","service":"custom","url":"rtmps://evil.example/live","stream_key":"abcd-1234"}"#;
        assert_eq!(status(BodyKind::Profile, p), Some(400));
        assert_eq!(
            status(BodyKind::Policy, br#"{"allowed_cidrs":["nope"]}"#),
            Some(400)
        );
        for kind in BodyKind::ALL {
            assert_eq!(status(kind, b"["), Some(400), "{kind:?}");
        }
    }

    #[test]
    fn a_key_inside_the_url_is_refused_without_repeating_it() {
        let body = br#"{"name":"x","service":"youtube","url":"rtmps://a.rtmps.youtube.com/live2/abcd1234x","stream_key":"abcd1234x"}"#;
        let e = decode_body(BodyKind::Profile, body, &[], &Policy::default()).unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert!(!e.message().contains("abcd1234x"), "{}", e.message());
    }
}
