//! The consent state machine (DESIGN.md §1), pure: a command, the actor, the time and a source
//! of randomness in; the new state, effects and audit records out. No I/O, no clock.
//!
//! Guarantees enforced here (and checked by the property tests after every step):
//! 1. off by default — no session is created, confirmed or live without the entitlement;
//!    revoking it stops every active session;
//! 2. explicit setup — a session uses a profile its owner created; deleting the profile stops it;
//! 3. never automatic — only the owner's confirm, carrying the single-use id of the current
//!    `awaiting_confirmation` wait and made before it expires, moves a session towards live;
//!    a schedule only reaches `awaiting_confirmation`;
//! 4. restart never resumes — [`Command::Boot`] maps every active session to `interrupted`;
//! 5. indicator — `starting → live` only on the fabric's acknowledgement; silence longer than the
//!    grace period while live stops egress (policy default);
//! 6. no media from before consent — the relay is started with the confirm instant as its gate;
//! 7. audited — every command yields audit records, refusals included; the driver writes them
//!    before any effect runs.

use super::destination;
use super::model::*;

/// Time and randomness, injected.
pub struct Env<'a> {
    /// Wall clock, ms since the epoch (schedules, expiry, audit).
    pub now_ms: i64,
    /// The ingest's monotonic clock (`clock::monotonic_ns`): the consent instant for the gate.
    pub mono_ns: u64,
    pub rng: &'a mut dyn FnMut() -> u64,
}

impl Env<'_> {
    fn new_id(&mut self, prefix: &str) -> String {
        format!("{prefix}_{:016x}{:08x}", (self.rng)(), (self.rng)() as u32)
    }
}

/// What a profile is created or updated with (decoded and sealed at the edge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSpec {
    pub name: String,
    pub service: Service,
    /// Required for `custom` and `linkedin`; for presets, optional and must be the preset's host.
    pub url: Option<String>,
    /// Sealed by the store; `None` on update keeps the current key.
    pub stream_key_sealed: Option<String>,
    pub ca_bundle_pem: Option<String>,
    pub spki_pin: Option<String>,
    pub destination_records: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    SetEntitlement(Entitlement),
    SetPolicy(Policy),
    CreateSubscriber {
        name: String,
    },
    DeleteSubscriber {
        id: SubscriberId,
    },
    CreateToken {
        role: Role,
        subscriber: Option<SubscriberId>,
        label: String,
        hash: String,
    },
    RevokeToken {
        id: TokenId,
    },
    CreateProfile(ProfileSpec),
    UpdateProfile {
        id: ProfileId,
        spec: ProfileSpec,
    },
    DeleteProfile {
        id: ProfileId,
    },
    CreateSession {
        profile_id: ProfileId,
        meeting_id: String,
        source: String,
        schedule: Schedule,
    },
    Confirm {
        session_id: SessionId,
        confirm_id: String,
    },
    /// Owner re-arms an interrupted or failed session: a new wait for confirmation.
    Rearm {
        session_id: SessionId,
    },
    Stop {
        session_id: SessionId,
    },
    Cancel {
        session_id: SessionId,
    },
    /// The fabric shows the indicator (first ack and heartbeats).
    IndicatorAck {
        session_id: SessionId,
    },
    /// The data plane ended for a session (`error`: a hard failure).
    RelayStopped {
        session_id: SessionId,
        error: Option<String>,
    },
    /// Timers: schedules, expiry, ack timeouts, indicator grace, scheduled stops.
    Tick,
    /// The appliance (re)started.
    Boot,
}

impl Command {
    /// Audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            Command::SetEntitlement(_) => "entitlement.set",
            Command::SetPolicy(_) => "policy.set",
            Command::CreateSubscriber { .. } => "subscriber.create",
            Command::DeleteSubscriber { .. } => "subscriber.delete",
            Command::CreateToken { .. } => "token.create",
            Command::RevokeToken { .. } => "token.revoke",
            Command::CreateProfile(_) => "profile.create",
            Command::UpdateProfile { .. } => "profile.update",
            Command::DeleteProfile { .. } => "profile.delete",
            Command::CreateSession { .. } => "session.create",
            Command::Confirm { .. } => "session.confirm",
            Command::Rearm { .. } => "session.rearm",
            Command::Stop { .. } => "session.stop",
            Command::Cancel { .. } => "session.cancel",
            Command::IndicatorAck { .. } => "indicator.ack",
            Command::RelayStopped { .. } => "relay.stopped",
            Command::Tick => "tick",
            Command::Boot => "boot",
        }
    }

    /// What the command sets, for the audit log (never a key or a token hash), capped.
    pub fn detail(&self) -> String {
        let v = match self {
            Command::SetEntitlement(e) => serde_json::json!(e),
            Command::SetPolicy(p) => serde_json::json!(p),
            Command::CreateSubscriber { name } => serde_json::json!({ "name": name }),
            Command::CreateToken {
                role,
                subscriber,
                label,
                ..
            } => {
                serde_json::json!({ "role": role, "subscriber": subscriber, "label": label })
            }
            Command::CreateProfile(s) | Command::UpdateProfile { spec: s, .. } => {
                serde_json::json!({
                    "name": s.name, "service": s.service, "url": s.url, "records": s.destination_records,
                    "ca_bundle": s.ca_bundle_pem.is_some(), "spki_pin": s.spki_pin, "key_changed": s.stream_key_sealed.is_some(),
                })
            }
            Command::CreateSession {
                profile_id,
                meeting_id,
                source,
                schedule,
            } => serde_json::json!({
                "profile": profile_id, "meeting": meeting_id, "source": source, "schedule": schedule,
            }),
            Command::RelayStopped { error: Some(e), .. } => serde_json::json!({ "error": e }),
            _ => return String::new(),
        };
        cap(&v.to_string(), 2048)
    }

    /// Audit target.
    pub fn target(&self) -> String {
        match self {
            Command::DeleteSubscriber { id } | Command::RevokeToken { id } => id.clone(),
            Command::UpdateProfile { id, .. } | Command::DeleteProfile { id } => id.clone(),
            Command::CreateSession { profile_id, .. } => profile_id.clone(),
            Command::Confirm { session_id, .. }
            | Command::Rearm { session_id }
            | Command::Stop { session_id }
            | Command::Cancel { session_id }
            | Command::IndicatorAck { session_id }
            | Command::RelayStopped { session_id, .. } => session_id.clone(),
            _ => String::new(),
        }
    }
}

/// Something the driver must do after the audit and the new state are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Tell the fabric: show (or clear) the streaming indicator for this meeting.
    Indicator {
        session_id: SessionId,
        meeting_id: String,
        on: bool,
        recording: bool,
    },
    /// Start the data plane; nothing received before `gate_mono_ns` may leave.
    StartRelay {
        session_id: SessionId,
        gate_mono_ns: u64,
    },
    /// Stop the data plane. `abort`: consent was withdrawn (entitlement revoked, profile
    /// deleted, indicator lost, policy changed): stop sending at once, drop what is queued.
    /// Otherwise (the owner's stop, a scheduled stop) queued frames may drain briefly.
    StopRelay { session_id: SessionId, abort: bool },
    /// Tell the owner their session waits for a confirm.
    NotifyAwaiting {
        session_id: SessionId,
        confirm_id: String,
        expires_ms: i64,
    },
}

/// One audit record (the driver adds who/when/where).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyCode {
    Forbidden,
    NotFound,
    Conflict,
    Invalid,
    Policy,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::Forbidden => "forbidden",
            DenyCode::NotFound => "not_found",
            DenyCode::Conflict => "conflict",
            DenyCode::Invalid => "invalid_argument",
            DenyCode::Policy => "policy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub code: DenyCode,
    pub message: String,
}

fn deny<T>(code: DenyCode, message: impl Into<String>) -> Result<T, Denied> {
    Err(Denied {
        code,
        message: message.into(),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub effects: Vec<Effect>,
    pub audit: Vec<AuditRecord>,
    /// Id of what the command created, if anything.
    pub created: Option<String>,
    /// Nothing to audit or persist (an indicator heartbeat): the new state is kept in memory.
    pub quiet: bool,
}

impl Outcome {
    fn record(&mut self, action: &str, target: &str, detail: impl Into<String>) {
        self.audit.push(AuditRecord {
            action: action.into(),
            target: target.into(),
            outcome: "ok".into(),
            detail: detail.into(),
        });
    }
}

/// Applies one command. On `Err` the state is unchanged (the caller applies commands to a
/// clone, or discards it) and the refusal is to be audited by the caller.
pub fn apply(
    state: &mut State,
    actor: &Actor,
    cmd: Command,
    env: &mut Env,
) -> Result<Outcome, Denied> {
    let mut out = Outcome::default();
    let action = cmd.action();
    let target = cmd.target();
    let detail = cmd.detail();
    match cmd {
        Command::SetEntitlement(e) => set_entitlement(state, actor, e, env.now_ms, &mut out)?,
        Command::SetPolicy(p) => set_policy(state, actor, p, env.now_ms, &mut out)?,
        Command::CreateSubscriber { name } => {
            out.created = Some(create_subscriber(state, actor, name, env)?)
        }
        Command::DeleteSubscriber { id } => delete_subscriber(state, actor, &id, env, &mut out)?,
        Command::CreateToken {
            role,
            subscriber,
            label,
            hash,
        } => {
            out.created = Some(create_token(
                state, actor, role, subscriber, label, hash, env,
            )?)
        }
        Command::RevokeToken { id } => revoke_token(state, actor, &id)?,
        Command::CreateProfile(spec) => {
            out.created = Some(create_profile(state, actor, spec, env)?)
        }
        Command::UpdateProfile { id, spec } => update_profile(state, actor, &id, spec)?,
        Command::DeleteProfile { id } => delete_profile(state, actor, &id, env, &mut out)?,
        Command::CreateSession {
            profile_id,
            meeting_id,
            source,
            schedule,
        } => {
            out.created = Some(create_session(
                state, actor, profile_id, meeting_id, source, schedule, env, &mut out,
            )?)
        }
        Command::Confirm {
            session_id,
            confirm_id,
        } => confirm(state, actor, &session_id, &confirm_id, env, &mut out)?,
        Command::Rearm { session_id } => rearm(state, actor, &session_id, env, &mut out)?,
        Command::Stop { session_id } => stop(state, actor, &session_id, env, &mut out)?,
        Command::Cancel { session_id } => cancel(state, actor, &session_id, env, &mut out)?,
        Command::IndicatorAck { session_id } => {
            indicator_ack(state, actor, &session_id, env, &mut out)?
        }
        Command::RelayStopped { session_id, error } => {
            relay_stopped(state, actor, &session_id, error, env, &mut out)?
        }
        Command::Tick => {
            require_system(actor)?;
            tick(state, env, &mut out);
        }
        Command::Boot => {
            require_system(actor)?;
            boot(state, env, &mut out);
        }
    }
    // The command itself first (with what it set), then what it caused.
    if !out.quiet && (!matches!(action, "tick" | "boot") || !out.audit.is_empty()) {
        out.audit.insert(
            0,
            AuditRecord {
                action: action.into(),
                target: cap(&out.created.clone().unwrap_or(target), 256),
                outcome: "ok".into(),
                detail,
            },
        );
    }
    Ok(out)
}

/// At most `max` bytes (on a char boundary): audit fields a caller controls are bounded.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn not_found() -> Denied {
    Denied {
        code: DenyCode::NotFound,
        message: "no such object".into(),
    }
}

fn require_admin(a: &Actor) -> Result<(), Denied> {
    match a.role {
        Role::Admin => Ok(()),
        _ => deny(DenyCode::Forbidden, "this needs an admin token"),
    }
}

fn require_system(a: &Actor) -> Result<(), Denied> {
    match a.role {
        Role::System => Ok(()),
        _ => deny(DenyCode::Forbidden, "internal event"),
    }
}

/// The subscriber acting, if the actor is one.
fn subscriber_of(a: &Actor) -> Result<&SubscriberId, Denied> {
    match (a.role, &a.subscriber) {
        (Role::Subscriber, Some(s)) => Ok(s),
        _ => deny(DenyCode::Forbidden, "this needs a subscriber token"),
    }
}

/// A new policy applies to active sessions at once: one whose destination it no longer allows
/// is stopped (abort).
fn set_policy(
    state: &mut State,
    actor: &Actor,
    p: Policy,
    now: i64,
    out: &mut Outcome,
) -> Result<(), Denied> {
    require_admin(actor)?;
    state.policy = p;
    let refused: Vec<SessionId> = state
        .sessions
        .values()
        .filter(|s| s.state.is_active())
        .filter(|s| {
            state.profiles.get(&s.profile_id).is_none_or(|prof| {
                std::iter::once(&prof.url)
                    .chain(prof.backup_url.iter())
                    .any(|u| destination::validate(&state.policy, prof.service, u).is_err())
            })
        })
        .map(|s| s.id.clone())
        .collect();
    for id in refused {
        end_active(
            state,
            &id,
            StopReason::Fail {
                reason: "policy_changed".into(),
            },
            now,
            out,
        );
    }
    Ok(())
}

fn set_entitlement(
    state: &mut State,
    actor: &Actor,
    e: Entitlement,
    now: i64,
    out: &mut Outcome,
) -> Result<(), Denied> {
    require_admin(actor)?;
    state.entitlement = e;
    let ids: Vec<SessionId> = state.sessions.keys().cloned().collect();
    for id in ids {
        let records = state
            .sessions
            .get(&id)
            .and_then(|s| state.profiles.get(&s.profile_id))
            .is_some_and(|p| p.destination_records);
        // Off: everything stops. Recording no longer allowed: what goes to a recording
        // destination stops.
        if !e.enabled || (records && !e.recording_allowed) {
            end_active(
                state,
                &id,
                StopReason::End {
                    reason: EndReason::EntitlementRevoked,
                },
                now,
                out,
            );
        }
    }
    Ok(())
}

fn create_subscriber(
    state: &mut State,
    actor: &Actor,
    name: String,
    env: &mut Env,
) -> Result<String, Denied> {
    require_admin(actor)?;
    check_name(&name)?;
    let id = env.new_id("sub");
    state.subscribers.insert(
        id.clone(),
        Subscriber {
            id: id.clone(),
            name,
            created_ms: env.now_ms,
        },
    );
    Ok(id)
}

fn delete_subscriber(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    require_admin(actor)?;
    state.subscribers.remove(id).ok_or_else(not_found)?;
    let profiles: Vec<ProfileId> = state
        .profiles
        .values()
        .filter(|p| p.owner == id)
        .map(|p| p.id.clone())
        .collect();
    for p in profiles {
        remove_profile(state, &p, env, out);
    }
    state
        .tokens
        .retain(|_, t| t.subscriber.as_deref() != Some(id));
    Ok(())
}

fn create_token(
    state: &mut State,
    actor: &Actor,
    role: Role,
    subscriber: Option<SubscriberId>,
    label: String,
    hash: String,
    env: &mut Env,
) -> Result<String, Denied> {
    // The first admin token is created by the system at first start.
    if actor.role != Role::System {
        require_admin(actor)?;
    }
    match (role, &subscriber) {
        (Role::Subscriber, Some(s)) if state.subscribers.contains_key(s) => {}
        (Role::Subscriber, _) => {
            return deny(
                DenyCode::Invalid,
                "a subscriber token needs an existing subscriber",
            );
        }
        (Role::Admin | Role::Fabric, None) => {}
        (Role::System, _) => return deny(DenyCode::Invalid, "system tokens do not exist"),
        (_, Some(_)) => {
            return deny(
                DenyCode::Invalid,
                "only subscriber tokens name a subscriber",
            );
        }
    }
    let id = env.new_id("tok");
    state.tokens.insert(
        id.clone(),
        Token {
            id: id.clone(),
            role,
            subscriber,
            label,
            hash,
            created_ms: env.now_ms,
        },
    );
    Ok(id)
}

fn revoke_token(state: &mut State, actor: &Actor, id: &str) -> Result<(), Denied> {
    require_admin(actor)?;
    let t = state.tokens.get(id).ok_or_else(not_found)?;
    let admins = state
        .tokens
        .values()
        .filter(|t| t.role == Role::Admin)
        .count();
    if t.role == Role::Admin && admins == 1 {
        return deny(
            DenyCode::Conflict,
            "the last admin token cannot be revoked: create another one first",
        );
    }
    state.tokens.remove(id);
    Ok(())
}

fn check_name(name: &str) -> Result<(), Denied> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return deny(
            DenyCode::Invalid,
            "a name must be 1..200 characters without control characters",
        );
    }
    Ok(())
}

/// Validates a spec; returns (url, backup_url).
fn check_profile(policy: &Policy, spec: &ProfileSpec) -> Result<(String, Option<String>), Denied> {
    check_name(&spec.name)?;
    let (url, backup) = match (destination::preset(spec.service), &spec.url) {
        (_, Some(u)) => (u.clone(), None),
        (Some((p, b)), None) => (p.to_string(), b.map(str::to_string)),
        (None, None) => {
            return deny(
                DenyCode::Invalid,
                "this service needs the ingest URL it gave you",
            );
        }
    };
    destination::validate(policy, spec.service, &url).map_err(|m| Denied {
        code: DenyCode::Policy,
        message: m,
    })?;
    if let Some(pem) = &spec.ca_bundle_pem {
        use pki_types::pem::PemObject;
        let certs: Vec<_> = pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
        if certs.is_empty() || certs.iter().any(Result::is_err) {
            return deny(
                DenyCode::Invalid,
                "ca_bundle_pem holds no valid PEM certificate",
            );
        }
    }
    if let Some(pin) = &spec.spki_pin {
        crate::egress::tls::parse_pin(pin).map_err(|e| Denied {
            code: DenyCode::Invalid,
            message: e.message().into(),
        })?;
    }
    Ok((url, backup))
}

/// Public services keep the stream (VOD/DVR): a subscriber cannot declare one non-recording.
/// Only a custom (private) destination's owner says whether it records.
fn records(records: bool, service: Service) -> bool {
    records || service != Service::Custom
}

fn create_profile(
    state: &mut State,
    actor: &Actor,
    spec: ProfileSpec,
    env: &mut Env,
) -> Result<String, Denied> {
    let owner = subscriber_of(actor)?.clone();
    let (url, backup_url) = check_profile(&state.policy, &spec)?;
    let Some(key) = spec.stream_key_sealed else {
        return deny(DenyCode::Invalid, "a profile needs a stream key");
    };
    let id = env.new_id("prof");
    state.profiles.insert(
        id.clone(),
        Profile {
            id: id.clone(),
            owner,
            name: spec.name,
            service: spec.service,
            url,
            backup_url,
            stream_key_sealed: key,
            ca_bundle_pem: spec.ca_bundle_pem,
            spki_pin: spec.spki_pin,
            destination_records: records(spec.destination_records, spec.service),
            created_ms: env.now_ms,
        },
    );
    Ok(id)
}

/// The profile, if the actor owns it (subscribers) — admins may read and delete any.
fn owned_profile<'s>(state: &'s State, actor: &Actor, id: &str) -> Result<&'s Profile, Denied> {
    let p = state.profiles.get(id).ok_or_else(not_found)?;
    match actor.role {
        Role::Admin => Ok(p),
        Role::Subscriber if actor.subscriber.as_deref() == Some(p.owner.as_str()) => Ok(p),
        Role::Subscriber => Err(not_found()), // do not reveal others' objects
        _ => deny(DenyCode::Forbidden, "not allowed"),
    }
}

fn update_profile(
    state: &mut State,
    actor: &Actor,
    id: &str,
    spec: ProfileSpec,
) -> Result<(), Denied> {
    subscriber_of(actor)?;
    owned_profile(state, actor, id)?;
    let (url, backup_url) = check_profile(&state.policy, &spec)?;
    let in_use = state
        .sessions
        .values()
        .any(|s| s.profile_id == id && s.state.is_active());
    if in_use {
        return deny(
            DenyCode::Conflict,
            "the profile is in use by a live session",
        );
    }
    let p = state.profiles.get_mut(id).ok_or_else(not_found)?;
    p.name = spec.name;
    p.service = spec.service;
    p.url = url;
    p.backup_url = backup_url;
    if let Some(k) = spec.stream_key_sealed {
        p.stream_key_sealed = k;
    }
    p.ca_bundle_pem = spec.ca_bundle_pem;
    p.spki_pin = spec.spki_pin;
    p.destination_records = records(spec.destination_records, spec.service);
    Ok(())
}

fn delete_profile(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    owned_profile(state, actor, id)?;
    remove_profile(state, id, env, out);
    Ok(())
}

/// Removes a profile; its sessions stop (active) or are cancelled (waiting).
fn remove_profile(state: &mut State, id: &str, env: &mut Env, out: &mut Outcome) {
    state.profiles.remove(id);
    let sessions: Vec<SessionId> = state
        .sessions
        .values()
        .filter(|s| s.profile_id == id)
        .map(|s| s.id.clone())
        .collect();
    for s in sessions {
        end_active(
            state,
            &s,
            StopReason::End {
                reason: EndReason::ProfileDeleted,
            },
            env.now_ms,
            out,
        );
        if let Some(sess) = state.sessions.get_mut(&s)
            && matches!(
                sess.state,
                SessionState::Scheduled
                    | SessionState::AwaitingConfirmation { .. }
                    | SessionState::Interrupted
            )
        {
            set_state(sess, SessionState::Cancelled, env.now_ms, out);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn create_session(
    state: &mut State,
    actor: &Actor,
    profile_id: ProfileId,
    meeting_id: String,
    source: String,
    schedule: Schedule,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<String, Denied> {
    let owner = subscriber_of(actor)?.clone();
    owned_profile(state, actor, &profile_id)?;
    if !state.entitlement.enabled {
        return deny(
            DenyCode::Policy,
            "streaming is not enabled for this company (entitlement off)",
        );
    }
    check_name(&meeting_id)?;
    if source.len() > 200 || destination::parse_source(&source).is_err() {
        return deny(
            DenyCode::Invalid,
            "the fabric source must be udp://IP:PORT or udp://GROUP:PORT?iface=IP",
        );
    }
    if let Schedule::At { start_ms, stop_ms } = schedule
        && stop_ms.is_some_and(|s| s <= start_ms)
    {
        return deny(
            DenyCode::Invalid,
            "the stop time must be after the start time",
        );
    }
    let id = env.new_id("ses");
    let mut session = Session {
        id: id.clone(),
        owner,
        profile_id,
        meeting_id,
        source,
        schedule: schedule.clone(),
        state: SessionState::Scheduled,
        created_ms: env.now_ms,
        updated_ms: env.now_ms,
    };
    let due = match schedule {
        Schedule::AdHoc => true,
        Schedule::At { start_ms, .. } => start_ms <= env.now_ms,
    };
    if due {
        await_confirmation(&mut session, &state.policy, env, out);
    }
    state.sessions.insert(id.clone(), session);
    Ok(id)
}

fn await_confirmation(s: &mut Session, policy: &Policy, env: &mut Env, out: &mut Outcome) {
    let confirm_id = env.new_id("cfm");
    let expires_ms = env
        .now_ms
        .saturating_add(i64::try_from(policy.confirm_window_ms).unwrap_or(i64::MAX));
    out.effects.push(Effect::NotifyAwaiting {
        session_id: s.id.clone(),
        confirm_id: confirm_id.clone(),
        expires_ms,
    });
    set_state(
        s,
        SessionState::AwaitingConfirmation {
            since_ms: env.now_ms,
            expires_ms,
            confirm_id,
        },
        env.now_ms,
        out,
    );
}

fn set_state(s: &mut Session, new: SessionState, now_ms: i64, out: &mut Outcome) {
    let detail = format!("{} -> {}", s.state.name(), new.name());
    s.state = new;
    s.updated_ms = now_ms;
    out.record("session.state", &s.id, detail);
}

/// The session, if the actor may act on it as its owner (or an admin for stop/cancel).
fn session_for<'s>(
    state: &'s mut State,
    actor: &Actor,
    id: &str,
    admin_ok: bool,
) -> Result<&'s mut Session, Denied> {
    let s = state.sessions.get_mut(id).ok_or_else(not_found)?;
    match actor.role {
        Role::Admin if admin_ok => Ok(s),
        Role::Subscriber if actor.subscriber.as_deref() == Some(s.owner.as_str()) => Ok(s),
        Role::Subscriber => Err(not_found()),
        _ => deny(DenyCode::Forbidden, "only the session's owner may do this"),
    }
}

fn confirm(
    state: &mut State,
    actor: &Actor,
    id: &str,
    confirm_id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    let owner = subscriber_of(actor)?.clone();
    let entitled = state.entitlement;
    let policy = state.policy.clone();
    let profile = {
        let s = session_for(state, actor, id, false)?;
        s.profile_id.clone()
    };
    let Some(p) = state.profiles.get(&profile).cloned() else {
        return deny(DenyCode::Conflict, "the session's profile is gone");
    };
    if !entitled.enabled {
        return deny(
            DenyCode::Policy,
            "streaming is not enabled for this company (entitlement off)",
        );
    }
    if p.destination_records && !entitled.recording_allowed {
        return deny(
            DenyCode::Policy,
            "this destination records, and recording is not allowed for this company",
        );
    }
    let s = session_for(state, actor, id, false)?;
    let SessionState::AwaitingConfirmation {
        since_ms,
        expires_ms,
        confirm_id: expected,
    } = &s.state
    else {
        return deny(
            DenyCode::Conflict,
            format!(
                "the session is {}, not awaiting confirmation",
                s.state.name()
            ),
        );
    };
    if env.now_ms >= *expires_ms {
        return deny(DenyCode::Conflict, "the confirmation window has expired");
    }
    if let Schedule::At {
        stop_ms: Some(stop),
        ..
    } = s.schedule
        && env.now_ms >= stop
    {
        return deny(
            DenyCode::Conflict,
            "the session's scheduled stop time has passed",
        );
    }
    if !crate::secret::Secret::new(expected.clone()).ct_eq(confirm_id) {
        return deny(
            DenyCode::Conflict,
            "this confirm is not for the session's current wait",
        );
    }
    let consent = Consent {
        awaiting_since_ms: *since_ms,
        confirmed_ms: env.now_ms,
        confirmed_mono_ns: env.mono_ns,
        confirmed_by: owner,
    };
    let ack_deadline_ms = env
        .now_ms
        .saturating_add(i64::try_from(policy.indicator_ack_timeout_ms).unwrap_or(i64::MAX));
    let ack_deadline_mono_ns = env
        .mono_ns
        .saturating_add(policy.indicator_ack_timeout_ms.saturating_mul(1_000_000));
    out.effects.push(Effect::Indicator {
        session_id: s.id.clone(),
        meeting_id: s.meeting_id.clone(),
        on: true,
        recording: p.destination_records,
    });
    set_state(
        s,
        SessionState::Starting {
            consent,
            ack_deadline_ms,
            ack_deadline_mono_ns,
        },
        env.now_ms,
        out,
    );
    Ok(())
}

fn rearm(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    subscriber_of(actor)?;
    if !state.entitlement.enabled {
        return deny(
            DenyCode::Policy,
            "streaming is not enabled for this company (entitlement off)",
        );
    }
    let policy = state.policy.clone();
    let profile_ok = state
        .sessions
        .get(id)
        .is_some_and(|s| state.profiles.contains_key(&s.profile_id));
    let s = session_for(state, actor, id, false)?;
    if !matches!(
        s.state,
        SessionState::Interrupted | SessionState::Failed { .. }
    ) {
        return deny(
            DenyCode::Conflict,
            format!(
                "only an interrupted or failed session can be re-armed (it is {})",
                s.state.name()
            ),
        );
    }
    if !profile_ok {
        return deny(DenyCode::Conflict, "the session's profile is gone");
    }
    await_confirmation(s, &policy, env, out);
    Ok(())
}

fn stop(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    let s = session_for(state, actor, id, true)?;
    if !s.state.is_active() {
        return deny(
            DenyCode::Conflict,
            format!("the session is {}, not live", s.state.name()),
        );
    }
    end_active(
        state,
        id,
        StopReason::End {
            reason: EndReason::Requested,
        },
        env.now_ms,
        out,
    );
    Ok(())
}

fn cancel(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    let s = session_for(state, actor, id, true)?;
    if !matches!(
        s.state,
        SessionState::Scheduled
            | SessionState::AwaitingConfirmation { .. }
            | SessionState::Interrupted
    ) {
        return deny(
            DenyCode::Conflict,
            format!(
                "a {} session cannot be cancelled (stop it instead)",
                s.state.name()
            ),
        );
    }
    set_state(s, SessionState::Cancelled, env.now_ms, out);
    Ok(())
}

/// Starts stopping an active session: `starting` ends at once (no media left yet), `live`
/// goes to `stopping` until the relay reports it stopped.
fn end_active(state: &mut State, id: &str, reason: StopReason, now: i64, out: &mut Outcome) {
    let Some(s) = state.sessions.get_mut(id) else {
        return;
    };
    match &s.state {
        SessionState::Starting { .. } => {
            out.effects.push(indicator_off(s));
            set_state(s, final_state(&reason), now, out);
        }
        SessionState::Live { .. } => {
            let abort = !matches!(
                reason,
                StopReason::End {
                    reason: EndReason::Requested
                        | EndReason::ScheduledStop
                        | EndReason::SourceEnded
                }
            );
            out.effects.push(Effect::StopRelay {
                session_id: s.id.clone(),
                abort,
            });
            set_state(s, SessionState::Stopping { reason }, now, out);
        }
        _ => {}
    }
}

fn final_state(reason: &StopReason) -> SessionState {
    match reason {
        StopReason::End { reason } => SessionState::Ended { reason: *reason },
        StopReason::Fail { reason } => SessionState::Failed {
            reason: reason.clone(),
        },
    }
}

fn indicator_ack(
    state: &mut State,
    actor: &Actor,
    id: &str,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    if actor.role != Role::Fabric {
        return deny(
            DenyCode::Forbidden,
            "only the fabric acknowledges the indicator",
        );
    }
    // Recording must still be allowed when media is about to leave (the admin may have
    // changed it since the confirm).
    let records = state
        .sessions
        .get(id)
        .and_then(|s| state.profiles.get(&s.profile_id))
        .is_some_and(|p| p.destination_records);
    let recording_refused = records && !state.entitlement.recording_allowed;
    let s = state.sessions.get_mut(id).ok_or_else(not_found)?;
    match &s.state {
        SessionState::Starting { .. } if recording_refused => {
            out.effects.push(indicator_off(s));
            set_state(
                s,
                SessionState::Failed {
                    reason: "recording_not_allowed".into(),
                },
                env.now_ms,
                out,
            );
            Ok(())
        }
        SessionState::Starting { consent, .. } => {
            let consent = consent.clone();
            out.effects.push(Effect::StartRelay {
                session_id: s.id.clone(),
                gate_mono_ns: consent.confirmed_mono_ns,
            });
            set_state(
                s,
                SessionState::Live {
                    consent,
                    since_ms: env.now_ms,
                    last_ack_ms: env.now_ms,
                    last_ack_mono_ns: env.mono_ns,
                },
                env.now_ms,
                out,
            );
            Ok(())
        }
        SessionState::Live { .. } => {
            // A heartbeat: kept in memory, not audited (one per second per session).
            if let SessionState::Live {
                last_ack_ms,
                last_ack_mono_ns,
                ..
            } = &mut s.state
            {
                *last_ack_ms = env.now_ms.max(*last_ack_ms);
                *last_ack_mono_ns = env.mono_ns.max(*last_ack_mono_ns);
            }
            out.quiet = true;
            Ok(())
        }
        SessionState::Stopping { .. } => Ok(()),
        other => deny(
            DenyCode::Conflict,
            format!("the session is {}: no indicator expected", other.name()),
        ),
    }
}

fn relay_stopped(
    state: &mut State,
    actor: &Actor,
    id: &str,
    error: Option<String>,
    env: &mut Env,
    out: &mut Outcome,
) -> Result<(), Denied> {
    require_system(actor)?;
    let s = state.sessions.get_mut(id).ok_or_else(not_found)?;
    let next = match (&s.state, error) {
        (SessionState::Stopping { reason }, _) => final_state(reason),
        (SessionState::Live { .. }, Some(e)) => SessionState::Failed { reason: e },
        (SessionState::Live { .. }, None) => SessionState::Ended {
            reason: EndReason::SourceEnded,
        },
        _ => return Ok(()),
    };
    if matches!(s.state, SessionState::Live { .. }) {
        // An egress ended by itself: make sure nothing of that relay keeps sending.
        out.effects.push(Effect::StopRelay {
            session_id: s.id.clone(),
            abort: true,
        });
    }
    // The indicator goes off only now: after the last byte has left.
    out.effects.push(indicator_off(s));
    set_state(s, next, env.now_ms, out);
    Ok(())
}

/// What a timer does to one session.
enum Due {
    Await,
    Expire,
    AckTimeout,
    Stop(StopReason),
}

fn due(s: &Session, policy: &Policy, entitled: bool, now: i64, mono_ns: u64) -> Option<Due> {
    let grace_ns = policy.indicator_grace_ms.saturating_mul(1_000_000);
    match (&s.state, &s.schedule) {
        (SessionState::Scheduled, Schedule::At { start_ms, .. })
            if *start_ms <= now && entitled =>
        {
            Some(Due::Await)
        }
        (SessionState::AwaitingConfirmation { expires_ms, .. }, _) if *expires_ms <= now => {
            Some(Due::Expire)
        }
        (
            SessionState::Starting {
                ack_deadline_mono_ns,
                ..
            },
            _,
        ) if *ack_deadline_mono_ns <= mono_ns => Some(Due::AckTimeout),
        (
            SessionState::Live {
                last_ack_mono_ns, ..
            },
            _,
        ) if policy.stop_on_indicator_loss
            && mono_ns.saturating_sub(*last_ack_mono_ns) > grace_ns =>
        {
            Some(Due::Stop(StopReason::Fail {
                reason: "indicator_lost".into(),
            }))
        }
        (
            SessionState::Live { .. },
            Schedule::At {
                stop_ms: Some(stop),
                ..
            },
        ) if *stop <= now => Some(Due::Stop(StopReason::End {
            reason: EndReason::ScheduledStop,
        })),
        _ => None,
    }
}

fn tick(state: &mut State, env: &mut Env, out: &mut Outcome) {
    let now = env.now_ms;
    let policy = state.policy.clone();
    let entitled = state.entitlement.enabled;
    let work: Vec<(SessionId, Due)> = state
        .sessions
        .values()
        .filter_map(|s| due(s, &policy, entitled, now, env.mono_ns).map(|d| (s.id.clone(), d)))
        .collect();
    for (id, d) in work {
        if let Due::Stop(reason) = d {
            end_active(state, &id, reason, now, out);
            continue;
        }
        let Some(s) = state.sessions.get_mut(&id) else {
            continue;
        };
        match d {
            Due::Await => await_confirmation(s, &policy, env, out),
            Due::Expire => set_state(s, SessionState::Expired, now, out),
            Due::AckTimeout => {
                out.effects.push(indicator_off(s));
                set_state(
                    s,
                    SessionState::Failed {
                        reason: "indicator_not_acknowledged".into(),
                    },
                    now,
                    out,
                );
            }
            Due::Stop(_) => {}
        }
    }
}

fn indicator_off(s: &Session) -> Effect {
    Effect::Indicator {
        session_id: s.id.clone(),
        meeting_id: s.meeting_id.clone(),
        on: false,
        recording: false,
    }
}

fn boot(state: &mut State, env: &mut Env, out: &mut Outcome) {
    let policy = state.policy.clone();
    for s in state.sessions.values_mut() {
        if s.state.is_active() {
            out.effects.push(indicator_off(s));
            set_state(s, SessionState::Interrupted, env.now_ms, out);
        } else if matches!(s.state, SessionState::AwaitingConfirmation { .. }) {
            // A confirm id from before the restart is void (and its expiry may rest on a wall
            // clock that stepped): a new wait, with a new id.
            await_confirmation(s, &policy, env, out);
        }
    }
}

#[cfg(test)]
#[path = "consent_tests.rs"]
mod tests;
