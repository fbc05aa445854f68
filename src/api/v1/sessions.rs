//! Sessions: create (ad hoc or scheduled), confirm, stop, cancel, re-arm; with live stats.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{READERS, V1, actor, may_see, submit};
use crate::api::auth::PeerAddr;
use crate::api::{ApiError, Principal, Role as ApiRole, Routes, StrictJson, require};
use crate::control::consent::Command;
use crate::control::destination::Cidr;
use crate::control::model::{Schedule, Session, SessionState};
use crate::control::supervisor::SessionStats;

pub fn routes() -> Routes<V1> {
    Routes::new()
        .get("/v1/sessions", list)
        .post("/v1/sessions", create)
        .get("/v1/sessions/{id}", get)
        .post("/v1/sessions/{id}/confirm", confirm)
        .post("/v1/sessions/{id}/stop", stop)
        .post("/v1/sessions/{id}/cancel", cancel)
        .post("/v1/sessions/{id}/rearm", rearm)
}

type Peer = Option<Extension<PeerAddr>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    profile_id: String,
    meeting_id: String,
    /// `udp://IP:PORT` or `udp://GROUP:PORT?iface=IP`.
    source: String,
    /// Scheduled start (ms since the epoch); absent = ad hoc (awaits confirmation now).
    #[serde(default)]
    start_at_ms: Option<i64>,
    #[serde(default)]
    stop_at_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    confirm_id: String,
}

#[derive(Serialize)]
struct SessionView {
    id: String,
    owner: String,
    profile_id: String,
    meeting_id: String,
    source: String,
    schedule: Schedule,
    state: &'static str,
    /// Details of the state (reason, expiry, live since...).
    state_detail: serde_json::Value,
    /// Present to the owner while awaiting confirmation: what the confirm must carry.
    confirm_id: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    stats: Option<SessionStats>,
}

fn view(v1: &V1, p: &Principal, s: &Session) -> SessionView {
    let owner_asks =
        p.role == ApiRole::Subscriber && p.subscriber_id.as_deref() == Some(s.owner.as_str());
    let confirm_id = match &s.state {
        SessionState::AwaitingConfirmation { confirm_id, .. } if owner_asks => {
            Some(confirm_id.clone())
        }
        _ => None,
    };
    let mut detail = serde_json::to_value(&s.state).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = detail.as_object_mut() {
        obj.remove("confirm_id");
        obj.remove("state");
    }
    SessionView {
        id: s.id.clone(),
        owner: s.owner.clone(),
        profile_id: s.profile_id.clone(),
        meeting_id: s.meeting_id.clone(),
        source: s.source.clone(),
        schedule: s.schedule.clone(),
        state: s.state.name(),
        state_detail: detail,
        confirm_id,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        stats: if s.state.is_active() {
            v1.control.session_stats(&s.id)
        } else {
            None
        },
    }
}

fn find(v1: &V1, p: &Principal, id: &str) -> Result<SessionView, ApiError> {
    let s = v1
        .control
        .read(|st| {
            st.sessions
                .get(id)
                .filter(|x| may_see(p, &x.owner))
                .cloned()
        })
        .flatten()
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    Ok(view(v1, p, &s))
}

async fn list(
    p: Principal,
    State(v1): State<V1>,
) -> Result<StrictJson<Vec<SessionView>>, ApiError> {
    require(&p, READERS)?;
    let sessions: Vec<Session> = v1
        .control
        .read(|s| {
            s.sessions
                .values()
                .filter(|x| may_see(&p, &x.owner))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok(StrictJson(
        sessions.iter().map(|s| view(&v1, &p, s)).collect(),
    ))
}

async fn get(
    p: Principal,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StrictJson<SessionView>, ApiError> {
    require(&p, READERS)?;
    find(&v1, &p, &id).map(StrictJson)
}

async fn create(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    StrictJson(body): StrictJson<NewSession>,
) -> Result<(StatusCode, StrictJson<SessionView>), ApiError> {
    let who = actor(&p, peer);
    match checked_create(&v1, body) {
        Ok(cmd) => {
            let out = submit(&v1, who, cmd).await?;
            let id = out.created.unwrap_or_default();
            Ok((StatusCode::CREATED, StrictJson(find(&v1, &p, &id)?)))
        }
        Err(e) => Err(super::refuse(&v1, who, "session.create", "", e).await),
    }
}

fn checked_create(v1: &V1, body: NewSession) -> Result<Command, ApiError> {
    session_command(&v1.allowed_sources, body)
}

/// Decodes the bodies of `POST /v1/sessions` and `…/confirm` (see [`super::decode_body`]).
pub(super) fn decode(
    kind: super::BodyKind,
    bytes: &[u8],
    allowed: &[Cidr],
) -> Result<(), ApiError> {
    match kind {
        super::BodyKind::NewSession => {
            session_command(allowed, crate::api::json::decode(bytes)?).map(drop)
        }
        _ => crate::api::json::decode::<ConfirmBody>(bytes).map(drop),
    }
}

/// The edge checks of a new session (source format, allowed sources, schedule).
fn session_command(allowed: &[Cidr], body: NewSession) -> Result<Command, ApiError> {
    let ingest = crate::control::destination::parse_source(&body.source)
        .map_err(|e| ApiError::invalid_argument(e.message()))?;
    let ip = match ingest.multicast {
        Some((group, _)) => std::net::IpAddr::V4(group),
        None => ingest.bind.ip(),
    };
    if !allowed.iter().any(|c| c.contains(ip)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "policy",
            "this fabric source is not one the appliance ingests from",
        ));
    }
    let schedule = match body.start_at_ms {
        None if body.stop_at_ms.is_some() => {
            return Err(ApiError::invalid_argument("stop_at_ms needs start_at_ms"));
        }
        None => Schedule::AdHoc,
        Some(start_ms) => Schedule::At {
            start_ms,
            stop_ms: body.stop_at_ms,
        },
    };
    let cmd = Command::CreateSession {
        profile_id: body.profile_id,
        meeting_id: body.meeting_id,
        source: body.source,
        schedule,
    };
    Ok(cmd)
}

async fn confirm(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<ConfirmBody>,
) -> Result<StrictJson<SessionView>, ApiError> {
    let cmd = Command::Confirm {
        session_id: id.clone(),
        confirm_id: body.confirm_id,
    };
    act(&v1, &p, peer, &id, cmd).await
}

/// Runs a command on session `id` and answers with the session as it is after.
async fn act(
    v1: &V1,
    p: &Principal,
    peer: Peer,
    id: &str,
    cmd: Command,
) -> Result<StrictJson<SessionView>, ApiError> {
    submit(v1, actor(p, peer), cmd).await?;
    Ok(StrictJson(find(v1, p, id)?))
}

async fn stop(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StrictJson<SessionView>, ApiError> {
    act(
        &v1,
        &p,
        peer,
        &id,
        Command::Stop {
            session_id: id.clone(),
        },
    )
    .await
}

async fn cancel(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StrictJson<SessionView>, ApiError> {
    act(
        &v1,
        &p,
        peer,
        &id,
        Command::Cancel {
            session_id: id.clone(),
        },
    )
    .await
}

async fn rearm(
    p: Principal,
    peer: Peer,
    State(v1): State<V1>,
    Path(id): Path<String>,
) -> Result<StrictJson<SessionView>, ApiError> {
    act(
        &v1,
        &p,
        peer,
        &id,
        Command::Rearm {
            session_id: id.clone(),
        },
    )
    .await
}
