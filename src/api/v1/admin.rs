//! Admin resources: entitlement, policy, subscribers, tokens, audit log.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{V1, actor, submit};
use crate::api::auth::PeerAddr;
use crate::api::{ApiError, Principal, Role as ApiRole, Routes, StrictJson, require};
use crate::control::consent::Command;
use crate::control::model::{Entitlement, Policy, Role, Subscriber};

pub fn routes() -> Routes<V1> {
    Routes::new()
        .get("/v1/entitlement", get_entitlement)
        .put("/v1/entitlement", put_entitlement)
        .get("/v1/policy", get_policy)
        .put("/v1/policy", put_policy)
        .get("/v1/subscribers", list_subscribers)
        .post("/v1/subscribers", create_subscriber)
        .delete("/v1/subscribers/{id}", delete_subscriber)
        .get("/v1/tokens", list_tokens)
        .post("/v1/tokens", create_token)
        .delete("/v1/tokens/{id}", revoke_token)
        .get("/v1/audit", audit_page)
        .get("/v1/audit/verify", audit_verify)
}

type Peer = Option<Extension<PeerAddr>>;

async fn get_entitlement(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<Entitlement>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    Ok(StrictJson(
        v1.control.read(|s| s.entitlement).unwrap_or_default(),
    ))
}

async fn put_entitlement(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(e): StrictJson<Entitlement>,
) -> Result<StrictJson<Entitlement>, ApiError> {
    submit(&v1, actor(&p, peer), Command::SetEntitlement(e)).await?;
    Ok(StrictJson(e))
}

async fn get_policy(p: Principal, State(v1): State<V1>) -> Result<StrictJson<Policy>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    Ok(StrictJson(
        v1.control.read(|s| s.policy.clone()).unwrap_or_default(),
    ))
}

async fn put_policy(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(policy): StrictJson<Policy>,
) -> Result<StrictJson<Policy>, ApiError> {
    let who = actor(&p, peer);
    if let Err(e) = check_policy(&policy) {
        return Err(super::refuse(&v1, who, "policy.set", "", e).await);
    }
    submit(&v1, who, Command::SetPolicy(policy.clone())).await?;
    Ok(StrictJson(policy))
}

/// The edge check of a new policy: every CIDR parses.
fn check_policy(policy: &Policy) -> Result<(), ApiError> {
    match policy
        .allowed_cidrs
        .iter()
        .find(|c| crate::control::destination::Cidr::parse(c).is_none())
    {
        Some(c) => Err(ApiError::invalid_argument(format!(
            "allowed_cidrs: {:?} is not a CIDR",
            crate::control::consent::cap(c, 64)
        ))),
        None => Ok(()),
    }
}

/// Decodes the admin bodies (see [`super::decode_body`]).
pub(super) fn decode(kind: super::BodyKind, bytes: &[u8]) -> Result<(), ApiError> {
    use crate::api::json::decode;
    match kind {
        super::BodyKind::Entitlement => decode::<Entitlement>(bytes).map(drop),
        super::BodyKind::Policy => check_policy(&decode::<Policy>(bytes)?),
        super::BodyKind::NewSubscriber => decode::<NewSubscriber>(bytes).map(drop),
        _ => decode::<NewToken>(bytes).map(drop),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscriber {
    name: String,
}

async fn list_subscribers(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<Vec<Subscriber>>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    Ok(StrictJson(
        v1.control
            .read(|s| s.subscribers.values().cloned().collect())
            .unwrap_or_default(),
    ))
}

async fn create_subscriber(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(body): StrictJson<NewSubscriber>,
) -> Result<(StatusCode, StrictJson<Subscriber>), ApiError> {
    let out = submit(
        &v1,
        actor(&p, peer),
        Command::CreateSubscriber { name: body.name },
    )
    .await?;
    let id = out.created.unwrap_or_default();
    let sub = v1
        .control
        .read(|s| s.subscribers.get(&id).cloned())
        .flatten();
    sub.map(|s| (StatusCode::CREATED, StrictJson(s)))
        .ok_or_else(|| ApiError::not_found("created and gone"))
}

async fn delete_subscriber(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    submit(&v1, actor(&p, peer), Command::DeleteSubscriber { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: Role,
    #[serde(default)]
    subscriber_id: Option<String>,
    #[serde(default)]
    label: String,
}

/// A token as listed (never its hash).
#[derive(Serialize)]
struct TokenView {
    id: String,
    role: Role,
    subscriber_id: Option<String>,
    label: String,
    created_ms: i64,
}

/// The only response that ever carries a token: the one that creates it.
#[derive(Serialize)]
struct CreatedToken {
    id: String,
    role: Role,
    subscriber_id: Option<String>,
    token: String,
}

async fn list_tokens(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<Vec<TokenView>>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    let list = v1
        .control
        .read(|s| {
            s.tokens
                .values()
                .map(|t| TokenView {
                    id: t.id.clone(),
                    role: t.role,
                    subscriber_id: t.subscriber.clone(),
                    label: t.label.clone(),
                    created_ms: t.created_ms,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(StrictJson(list))
}

async fn create_token(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(body): StrictJson<NewToken>,
) -> Result<(StatusCode, StrictJson<CreatedToken>), ApiError> {
    // The role is checked by the state machine, so that a refused attempt is audited.
    let who = actor(&p, peer);
    if body.label.len() > 200 || body.label.chars().any(char::is_control) {
        let e = ApiError::invalid_argument("label: at most 200 characters, no control characters");
        return Err(super::refuse(&v1, who, "token.create", "", e).await);
    }
    let token = crate::store::new_token()?;
    let hash = crate::store::hash_token(token.expose());
    let cmd = Command::CreateToken {
        role: body.role,
        subscriber: body.subscriber_id.clone(),
        label: body.label,
        hash,
    };
    let out = submit(&v1, who, cmd).await?;
    Ok((
        StatusCode::CREATED,
        StrictJson(CreatedToken {
            id: out.created.unwrap_or_default(),
            role: body.role,
            subscriber_id: body.subscriber_id,
            token: token.expose().to_string(),
        }),
    ))
}

async fn revoke_token(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    submit(&v1, actor(&p, peer), Command::RevokeToken { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn audit_page(
    p: Principal,
    State(v1): State<V1>,
    Query(page): Query<Page>,
) -> Result<StrictJson<serde_json::Value>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    let store = v1.control.store();
    let records = store
        .lock()
        .map_err(|_| ApiError::internal(&"store lock"))?
        .audit_page(page.after, page.limit.min(crate::store::MAX_PAGE))?;
    let json = serde_json::to_value(&records).map_err(|e| ApiError::internal(&e))?;
    Ok(StrictJson(serde_json::json!({ "entries": json })))
}

async fn audit_verify(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<serde_json::Value>, ApiError> {
    require(&p, &[ApiRole::Admin])?;
    let store = v1.control.store();
    let report = store
        .lock()
        .map_err(|_| ApiError::internal(&"store lock"))?
        .verify_audit()?;
    Ok(StrictJson(serde_json::json!({
        "entries": report.entries,
        "last_seq": report.last_seq,
        "intact": report.is_intact(),
        "first_broken_seq": report.first_broken.as_ref().map(|b| b.seq),
    })))
}
