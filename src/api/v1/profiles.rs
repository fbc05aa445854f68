//! Ingest profiles: a subscriber's destinations. The stream key is write-only: it is sealed
//! with the device key as it arrives and no response ever carries it.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{READERS, V1, actor, may_see, submit};
use crate::api::auth::PeerAddr;
use crate::api::{ApiError, Principal, Routes, StrictJson, require};
use crate::control::consent::{Command, ProfileSpec};
use crate::control::model::{Policy, Profile, Service};
use crate::secret::Secret;

pub fn routes() -> Routes<V1> {
    Routes::new()
        .get("/v1/profiles", list)
        .post("/v1/profiles", create)
        .get("/v1/profiles/{id}", get)
        .put("/v1/profiles/{id}", update)
        .delete("/v1/profiles/{id}", delete)
}

type Peer = Option<Extension<PeerAddr>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    name: String,
    service: Service,
    #[serde(default)]
    url: Option<String>,
    /// Required on create; on update, omitted keeps the current key.
    #[serde(default)]
    stream_key: Option<Secret>,
    #[serde(default)]
    ca_bundle_pem: Option<String>,
    #[serde(default)]
    spki_pin: Option<String>,
    #[serde(default)]
    destination_records: bool,
}

/// A profile as shown: everything but the key.
#[derive(Serialize)]
struct ProfileView {
    id: String,
    owner: String,
    name: String,
    service: Service,
    url: String,
    backup_url: Option<String>,
    stream_key_set: bool,
    ca_bundle_pem: Option<String>,
    spki_pin: Option<String>,
    destination_records: bool,
    created_ms: i64,
}

fn view(p: &Profile) -> ProfileView {
    ProfileView {
        id: p.id.clone(),
        owner: p.owner.clone(),
        name: p.name.clone(),
        service: p.service,
        url: p.url.clone(),
        backup_url: p.backup_url.clone(),
        stream_key_set: !p.stream_key_sealed.is_empty(),
        ca_bundle_pem: p.ca_bundle_pem.clone(),
        spki_pin: p.spki_pin.clone(),
        destination_records: p.destination_records,
        created_ms: p.created_ms,
    }
}

/// Keys are opaque printable strings: no control characters or spaces, 1..=512 bytes.
fn check_key(key: &Secret) -> Result<(), ApiError> {
    let k = key.expose();
    if k.is_empty() || k.len() > 512 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid_argument(
            "stream_key must be 1..512 printable characters without spaces or control characters",
        ));
    }
    Ok(())
}

/// Checks the body's key format; refuses a URL holding the key.
fn check_body(body: &ProfileBody) -> Result<(), ApiError> {
    if let Some(k) = &body.stream_key {
        check_key(k)?;
        if body
            .url
            .as_deref()
            .is_some_and(|u| k.expose().len() >= 4 && u.contains(k.expose()))
        {
            return Err(ApiError::invalid_argument(
                "the URL contains the stream key: give the URL without it, and the key in stream_key",
            ));
        }
    }
    Ok(())
}

/// Decodes a profile body and runs the checks that need no store: the key, and the URL against
/// `policy` (see [`super::decode_body`]).
pub(super) fn decode(bytes: &[u8], policy: &Policy) -> Result<(), ApiError> {
    let body: ProfileBody = crate::api::json::decode(bytes)?;
    check_body(&body)?;
    if let Some(url) = &body.url {
        crate::control::destination::validate(policy, body.service, url)
            .map_err(ApiError::invalid_argument)?;
    }
    Ok(())
}

/// Validates and seals the body's key; refuses a URL holding the key.
fn spec(v1: &V1, body: ProfileBody) -> Result<ProfileSpec, ApiError> {
    check_body(&body)?;
    let sealed = match &body.stream_key {
        Some(k) => {
            let store = v1.control.store();
            let sealed = store
                .lock()
                .map_err(|_| ApiError::internal(&"store lock"))?
                .seal(k.expose())?;
            Some(sealed)
        }
        None => None,
    };
    Ok(ProfileSpec {
        name: body.name,
        service: body.service,
        url: body.url,
        stream_key_sealed: sealed,
        ca_bundle_pem: body.ca_bundle_pem,
        spki_pin: body.spki_pin,
        destination_records: body.destination_records,
    })
}

fn find(v1: &V1, p: &Principal, id: &str) -> Result<ProfileView, ApiError> {
    v1.control
        .read(|s| {
            s.profiles
                .get(id)
                .filter(|x| may_see(p, &x.owner))
                .map(view)
        })
        .flatten()
        .ok_or_else(|| ApiError::not_found("no such profile"))
}

async fn list(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<Vec<ProfileView>>, ApiError> {
    require(&p, READERS)?;
    let list = v1
        .control
        .read(|s| {
            s.profiles
                .values()
                .filter(|x| may_see(&p, &x.owner))
                .map(view)
                .collect()
        })
        .unwrap_or_default();
    Ok(StrictJson(list))
}

async fn get(
    p: Principal,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StrictJson<ProfileView>, ApiError> {
    require(&p, READERS)?;
    find(&v1, &p, &id).map(StrictJson)
}

async fn create(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(body): StrictJson<ProfileBody>,
) -> Result<(StatusCode, StrictJson<ProfileView>), ApiError> {
    let who = actor(&p, peer);
    let checked = if body.stream_key.is_none() {
        Err(ApiError::invalid_argument("stream_key is required"))
    } else {
        spec(&v1, body)
    };
    let spec = match checked {
        Ok(s) => s,
        Err(e) => return Err(super::refuse(&v1, who, "profile.create", "", e).await),
    };
    let out = submit(&v1, who, Command::CreateProfile(spec)).await?;
    let id = out.created.unwrap_or_default();
    Ok((StatusCode::CREATED, StrictJson(find(&v1, &p, &id)?)))
}

async fn update(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<ProfileBody>,
) -> Result<StrictJson<ProfileView>, ApiError> {
    let who = actor(&p, peer);
    let spec = match spec(&v1, body) {
        Ok(s) => s,
        Err(e) => return Err(super::refuse(&v1, who, "profile.update", &id, e).await),
    };
    submit(
        &v1,
        who,
        Command::UpdateProfile {
            id: id.clone(),
            spec,
        },
    )
    .await?;
    Ok(StrictJson(find(&v1, &p, &id)?))
}

async fn delete(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    submit(&v1, actor(&p, peer), Command::DeleteProfile { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
