//! The supervisor: the one task that owns the control state. Commands arrive on a bounded
//! channel; each is applied to a copy of the state by the pure state machine; the changed
//! documents and the audit records are committed to the store in one transaction; only then
//! does the new state replace the old and the effects run (audit before effect). It also
//! drives the timers (every 200 ms) and the relays.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::consent::{self, AuditRecord, Command, Denied, Effect, Env, Outcome};
use super::destination;
use super::model::*;
use crate::egress::{self, Destination, EgressOptions, RtmpUrl, TlsOptions};
use crate::error::{Error, Result};
use crate::relay::Relay;
use crate::store::{AuditEntry, Batch, Store};

/// Wall and monotonic clocks, injected (tests may run them at another pace).
pub trait Clocks: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
    fn mono_ns(&self) -> u64;
}

pub struct RealClocks;

impl Clocks for RealClocks {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn mono_ns(&self) -> u64 {
        crate::clock::monotonic_ns()
    }
}

/// What the fabric is told (server-sent events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndicatorEvent {
    pub session_id: SessionId,
    pub meeting_id: String,
    /// The fabric source the session ingests: the fabric acknowledges only for a meeting it
    /// really sends there.
    pub source: String,
    pub streaming: bool,
    pub recording: bool,
}

/// Live counters of a session's relay, refreshed every tick.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionStats {
    pub video_frames: u64,
    pub audio_frames: u64,
    pub frames_out: u64,
    pub frames_dropped: u64,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bitrate_bps: u64,
    pub reconnects: u64,
    pub av_offset_ms: i64,
    pub publishing: bool,
    /// Receive time (monotonic ns) of the first frame sent: at or after the confirm instant.
    pub first_frame_rx_ns: Option<u64>,
}

/// Why a command was not carried out.
#[derive(Debug)]
pub enum Refused {
    Denied(Denied),
    /// The store could not record it: nothing happened.
    Store(Error),
    /// The supervisor is gone (shutting down).
    Closed,
}

type Reply = oneshot::Sender<Result<Outcome, Refused>>;

enum Request {
    Command {
        actor: Actor,
        cmd: Command,
        reply: Reply,
    },
    /// A refusal decided at the edge (bad input from an authenticated caller): audit only.
    Refusal { actor: Actor, record: AuditRecord },
    RelayEnded {
        session_id: SessionId,
        /// The relay's generation (0: no relay was running).
        generation: u64,
        error: Option<String>,
    },
}

/// Cloneable handle for the API.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
    state: Arc<RwLock<State>>,
    indicators: Arc<RwLock<BTreeMap<SessionId, IndicatorEvent>>>,
    events: broadcast::Sender<IndicatorEvent>,
    stats: Arc<RwLock<HashMap<SessionId, SessionStats>>>,
    store: Arc<std::sync::Mutex<Store>>,
}

impl Control {
    /// Runs one command through the supervisor.
    pub async fn submit(&self, actor: Actor, cmd: Command) -> Result<Outcome, Refused> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Command { actor, cmd, reply })
            .await
            .map_err(|_| Refused::Closed)?;
        rx.await.map_err(|_| Refused::Closed)?
    }

    /// Audits a refusal decided before the state machine (an authenticated caller's bad
    /// input). Best effort: the caller answers the refusal either way.
    pub async fn audit_refusal(
        &self,
        actor: Actor,
        action: &str,
        target: &str,
        code: &str,
        message: &str,
    ) {
        let record = AuditRecord {
            action: action.to_string(),
            target: target.to_string(),
            outcome: format!("denied:{code}"),
            detail: message.to_string(),
        };
        let _ = self.tx.send(Request::Refusal { actor, record }).await;
    }

    /// Reads the current state without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> Option<R> {
        self.state.read().ok().map(|s| f(&s))
    }

    /// A snapshot of the state (for reads).
    pub fn state(&self) -> State {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Indicators currently on, and a receiver for changes.
    pub fn indicators(&self) -> (Vec<IndicatorEvent>, broadcast::Receiver<IndicatorEvent>) {
        let rx = self.events.subscribe();
        let now = self
            .indicators
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        (now, rx)
    }

    pub fn session_stats(&self, id: &str) -> Option<SessionStats> {
        self.stats.read().ok().and_then(|m| m.get(id).cloned())
    }

    /// The store (for the audit log reads and sealing secrets at the edge).
    pub fn store(&self) -> Arc<std::sync::Mutex<Store>> {
        self.store.clone()
    }
}

pub struct SupervisorConfig {
    pub egress: EgressOptions,
    /// Timer period. Default 200 ms (entitlement revocation acts within 1 s).
    pub tick: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            egress: EgressOptions::default(),
            tick: Duration::from_millis(200),
        }
    }
}

/// Loads the state, applies `Boot` (live sessions become `interrupted`), and starts the
/// supervisor task on the current runtime.
pub fn start(store: Store, clocks: Arc<dyn Clocks>, config: SupervisorConfig) -> Result<Control> {
    let state = load_state(&store)?;
    let (tx, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(256);
    let control = Control {
        tx: tx.clone(),
        state: Arc::new(RwLock::new(state.clone())),
        indicators: Arc::new(RwLock::new(BTreeMap::new())),
        events,
        stats: Arc::new(RwLock::new(HashMap::new())),
        store: Arc::new(std::sync::Mutex::new(store)),
    };
    let mut sup = Supervisor {
        state,
        control: control.clone(),
        clocks,
        config,
        relays: HashMap::new(),
        held: HashMap::new(),
        early: None,
        stopping: HashMap::new(),
        next_gen: 0,
        pending_ends: Vec::new(),
        tx,
    };
    sup.run_command(&Actor::system(), Command::Boot)
        .map_err(|r| crate::err!(Io, "boot: {r:?}"))?;
    tokio::spawn(sup.run(rx));
    Ok(control)
}

const KINDS: [&str; 4] = ["subscriber", "token", "profile", "session"];

fn load_state(store: &Store) -> Result<State> {
    let mut s = State::default();
    if let Some(v) = store.get("entitlement", "company")? {
        s.entitlement =
            serde_json::from_value(v).map_err(|e| crate::err!(Io, "stored entitlement: {e}"))?;
    }
    if let Some(v) = store.get("policy", "company")? {
        s.policy = serde_json::from_value(v).map_err(|e| crate::err!(Io, "stored policy: {e}"))?;
    }
    s.subscribers = store.load_all_as("subscriber")?.into_iter().collect();
    s.tokens = store.load_all_as("token")?.into_iter().collect();
    s.profiles = store.load_all_as("profile")?.into_iter().collect();
    s.sessions = store.load_all_as("session")?.into_iter().collect();
    Ok(s)
}

/// The documents that differ between two states.
fn diff(old: &State, new: &State) -> Result<Batch> {
    let mut b = Batch::new();
    if old.entitlement != new.entitlement {
        b = b.put_as("entitlement", "company", &new.entitlement)?;
    }
    if old.policy != new.policy {
        b = b.put_as("policy", "company", &new.policy)?;
    }
    b = diff_map(b, KINDS[0], &old.subscribers, &new.subscribers)?;
    b = diff_map(b, KINDS[1], &old.tokens, &new.tokens)?;
    b = diff_map(b, KINDS[2], &old.profiles, &new.profiles)?;
    diff_map(b, KINDS[3], &old.sessions, &new.sessions)
}

fn diff_map<T: Serialize + PartialEq>(
    mut b: Batch,
    kind: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Result<Batch> {
    for (id, v) in new {
        if old.get(id) != Some(v) {
            b = b.put_as(kind, id, v)?;
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        b = b.delete(kind, id);
    }
    Ok(b)
}

fn entry(actor: &Actor, now_ms: i64, r: &AuditRecord) -> AuditEntry {
    AuditEntry {
        ts_ms: now_ms,
        actor: actor.name(),
        role: actor.role.as_str().into(),
        source: actor.source.clone(),
        action: r.action.clone(),
        target: r.target.clone(),
        outcome: r.outcome.clone(),
        detail: serde_json::Value::String(r.detail.clone()),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing system RNG leaves zeros; ids are then made unique by the counter below.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    u64::from_le_bytes(b) ^ COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Supervisor {
    state: State,
    control: Control,
    clocks: Arc<dyn Clocks>,
    config: SupervisorConfig,
    /// Running relays, with the generation they were started as.
    relays: HashMap<SessionId, (u64, Relay)>,
    /// Relays started at a confirm, receiving from its instant on, whose egresses wait for the
    /// fabric's indicator acknowledgement (`StartRelay` releases them); with their gate.
    held: HashMap<SessionId, (u64, Relay)>,
    /// A relay started for a confirm before the confirm is applied and committed, with its
    /// gate (see [`Supervisor::receive_before_confirm`]).
    early: Option<(SessionId, u64, Relay)>,
    /// Relays being stopped in the background (their end is reported later).
    stopping: HashMap<SessionId, u64>,
    next_gen: u64,
    /// Relay ends whose `RelayStopped` could not be committed: retried every tick.
    pending_ends: Vec<(SessionId, Option<String>)>,
    tx: mpsc::Sender<Request>,
}

impl Supervisor {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(req) => self.handle(req),
                    None => break,
                },
                _ = tick.tick() => {
                    let _ = self.run_command(&Actor::system(), Command::Tick);
                    self.retry_pending_ends();
                    self.watch_relays();
                }
            }
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Command { actor, cmd, reply } => {
                if reply.is_closed() {
                    // The caller gave up (request timeout): a confirm it saw fail must not
                    // take effect later.
                    tracing::warn!(
                        action = cmd.action(),
                        "request abandoned by its caller; not applied"
                    );
                    return;
                }
                let r = self.run_command(&actor, cmd);
                let _ = reply.send(r);
            }
            Request::Refusal { actor, record } => {
                let now_ms = self.clocks.now_ms();
                if let Err(e) = self.commit(Batch::new().audit(entry(&actor, now_ms, &record))) {
                    tracing::error!(error = %e, "audit of a refusal failed");
                    self.fail_safe();
                }
            }
            Request::RelayEnded {
                session_id,
                generation,
                error,
            } => self.relay_ended(session_id, generation, error),
        }
    }

    /// Apply → commit (state diff + audit) → publish → effects.
    fn run_command(&mut self, actor: &Actor, cmd: Command) -> Result<Outcome, Refused> {
        let now_ms = self.clocks.now_ms();
        let mono_ns = self.clocks.mono_ns();
        self.receive_before_confirm(actor, &cmd, now_ms, mono_ns);
        let r = self.apply_command(actor, cmd, now_ms, mono_ns);
        // A confirm that was refused, or did not start the session: its relay goes.
        if let Some((_, _, relay)) = self.early.take() {
            tokio::spawn(relay.abort());
        }
        r
    }

    /// For a confirm that will be accepted (tried first on a copy of the state, so a refused
    /// one binds nothing): binds the relay's ingest at once (egress held), before the confirm
    /// is applied and committed. A commit waits for the disk (fsync), and a keyframe arriving
    /// meanwhile would otherwise meet no socket and the stream would start a whole GOP late.
    /// The confirm instant `mono_ns` was taken before, so nothing that arrived before it is
    /// ever received.
    fn receive_before_confirm(&mut self, actor: &Actor, cmd: &Command, now_ms: i64, mono_ns: u64) {
        let Command::Confirm { session_id, .. } = cmd else {
            return;
        };
        if self.relays.contains_key(session_id) {
            return;
        }
        let mut trial = self.state.clone();
        let mut rng = random_u64;
        let mut env = Env {
            now_ms,
            mono_ns,
            rng: &mut rng,
        };
        if consent::apply(&mut trial, actor, cmd.clone(), &mut env).is_err() {
            return;
        }
        let starts = trial.sessions.get(session_id).is_some_and(|s| {
            matches!(&s.state, SessionState::Starting { consent, .. } if consent.confirmed_mono_ns == mono_ns)
        });
        if !starts {
            return;
        }
        if let Some((_, old)) = self.held.remove(session_id) {
            tokio::spawn(old.abort());
        }
        match self.build_relay(session_id, mono_ns, true) {
            Ok(relay) => self.early = Some((session_id.clone(), mono_ns, relay)),
            Err(e) => {
                tracing::debug!(session = %session_id, error = %e, "relay could not start before the confirm; trying again after it");
            }
        }
    }

    fn apply_command(
        &mut self,
        actor: &Actor,
        cmd: Command,
        now_ms: i64,
        mono_ns: u64,
    ) -> Result<Outcome, Refused> {
        let mut rng = random_u64;
        let mut env = Env {
            now_ms,
            mono_ns,
            rng: &mut rng,
        };
        let mut next = self.state.clone();
        let (action, target) = (cmd.action(), cmd.target());
        match consent::apply(&mut next, actor, cmd, &mut env) {
            Ok(outcome) => {
                if outcome.quiet {
                    // A heartbeat: in memory only (a restart interrupts live sessions anyway).
                    self.publish(next);
                    return Ok(outcome);
                }
                if outcome.audit.is_empty() && next == self.state {
                    return Ok(outcome); // a tick with nothing due
                }
                let mut batch = diff(&self.state, &next).map_err(Refused::Store)?;
                for r in &outcome.audit {
                    batch = batch.audit(entry(actor, now_ms, r));
                }
                if let Err(e) = self.commit(batch) {
                    self.fail_safe();
                    return Err(Refused::Store(e));
                }
                self.publish(next);
                for e in &outcome.effects {
                    self.effect(e);
                }
                Ok(outcome)
            }
            Err(denied) => {
                let r = AuditRecord {
                    action: action.into(),
                    target: consent::cap(&target, 256),
                    outcome: format!("denied:{}", denied.code.as_str()),
                    detail: denied.message.clone(),
                };
                // A refusal is audited too; if even that cannot be written, say so.
                if let Err(e) = self.commit(Batch::new().audit(entry(actor, now_ms, &r))) {
                    self.fail_safe();
                    return Err(Refused::Store(e));
                }
                Err(Refused::Denied(denied))
            }
        }
    }

    fn publish(&mut self, next: State) {
        self.state = next;
        if let Ok(mut s) = self.control.state.write() {
            *s = self.state.clone();
        }
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let mut store = self
            .control
            .store
            .lock()
            .map_err(|_| crate::err!(Internal, "store lock poisoned"))?;
        store.commit(batch).map(|_| ())
    }

    /// The store cannot record what happens: consent can no longer be audited or withdrawn
    /// durably, so every relay is aborted now (fail safe). Commands keep failing with 503
    /// until the store works again.
    fn fail_safe(&mut self) {
        for (_, (_, r)) in self.held.drain() {
            tokio::spawn(r.abort());
        }
        if self.relays.is_empty() {
            return;
        }
        tracing::error!(
            relays = self.relays.len(),
            "store failure: aborting every relay (fail safe)"
        );
        let ids: Vec<SessionId> = self.relays.keys().cloned().collect();
        for id in ids {
            self.stop_relay(&id, true);
        }
    }

    fn effect(&mut self, e: &Effect) {
        match e {
            Effect::Indicator {
                session_id,
                meeting_id,
                on,
                recording,
            } => {
                let source = self
                    .state
                    .sessions
                    .get(session_id)
                    .map(|s| s.source.clone())
                    .unwrap_or_default();
                let ev = IndicatorEvent {
                    session_id: session_id.clone(),
                    meeting_id: meeting_id.clone(),
                    source,
                    streaming: *on,
                    recording: *recording,
                };
                if let Ok(mut m) = self.control.indicators.write() {
                    if *on {
                        m.insert(session_id.clone(), ev.clone());
                    } else {
                        m.remove(session_id);
                    }
                }
                tracing::info!(session = %session_id, meeting = %meeting_id, streaming = on, recording, "indicator");
                let _ = self.control.events.send(ev);
                if *on {
                    self.prestart_relay(session_id);
                } else if let Some((_, held)) = self.held.remove(session_id) {
                    // Never acknowledged (or withdrawn first): it never sent anything.
                    tokio::spawn(held.abort());
                }
            }
            Effect::StartRelay {
                session_id,
                gate_mono_ns,
            } => self.start_relay(session_id, *gate_mono_ns),
            Effect::StopRelay { session_id, abort } => self.stop_relay(session_id, *abort),
            Effect::NotifyAwaiting {
                session_id,
                expires_ms,
                ..
            } => {
                tracing::info!(session = %session_id, expires_ms, "session awaits its owner's confirm");
            }
        }
    }

    /// At a confirm: starts receiving now (media from the confirm instant on, gated by the
    /// media core) with the egresses held until the indicator is acknowledged, so the first
    /// keyframe after the confirm is not missed while the fabric answers. A failure here is
    /// only logged: `StartRelay` tries again and reports it.
    fn prestart_relay(&mut self, session_id: &str) {
        let Some(Session {
            state: SessionState::Starting { consent, .. },
            ..
        }) = self.state.sessions.get(session_id)
        else {
            return;
        };
        let gate = consent.confirmed_mono_ns;
        if let Some((_, old)) = self.held.remove(session_id) {
            tokio::spawn(old.abort());
        }
        if let Some((id, g, relay)) = self.early.take() {
            if id == session_id && g == gate {
                tracing::debug!(session = %session_id, "relay receiving since before the confirm was committed; egress held until the indicator is acknowledged");
                self.held.insert(id, (g, relay));
                return;
            }
            tokio::spawn(relay.abort());
        }
        match self.build_relay(session_id, gate, true) {
            Ok(relay) => {
                tracing::debug!(session = %session_id, "relay receiving; egress held until the indicator is acknowledged");
                self.held.insert(session_id.to_string(), (gate, relay));
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "relay could not start at the confirm; trying again at the acknowledgement");
            }
        }
    }

    fn start_relay(&mut self, session_id: &str, gate_mono_ns: u64) {
        if let Some((_, old)) = self.relays.remove(session_id) {
            // Never two relays for one session.
            tokio::spawn(old.abort());
        }
        if let Some((gate, held)) = self.held.remove(session_id) {
            if gate == gate_mono_ns {
                held.release();
                self.next_gen += 1;
                tracing::info!(session = %session_id, generation = self.next_gen, "relay started");
                self.relays
                    .insert(session_id.to_string(), (self.next_gen, held));
                return;
            }
            tokio::spawn(held.abort());
        }
        match self.build_relay(session_id, gate_mono_ns, false) {
            Ok(relay) => {
                self.next_gen += 1;
                tracing::info!(session = %session_id, generation = self.next_gen, "relay started");
                self.relays
                    .insert(session_id.to_string(), (self.next_gen, relay));
            }
            Err(e) => {
                tracing::error!(session = %session_id, error = %e, "relay could not start");
                self.report_ended(session_id, 0, Some(e.to_string()));
            }
        }
    }

    fn build_relay(&self, session_id: &str, gate_mono_ns: u64, held: bool) -> Result<Relay> {
        let s = self
            .state
            .sessions
            .get(session_id)
            .ok_or_else(|| crate::err!(Internal, "no session {session_id}"))?;
        let p = self
            .state
            .profiles
            .get(&s.profile_id)
            .ok_or_else(|| crate::err!(Internal, "no profile for {session_id}"))?;
        let key = self
            .control
            .store
            .lock()
            .map_err(|_| crate::err!(Internal, "store lock poisoned"))?
            .open_secret(&p.stream_key_sealed)?;
        let mut dests = Vec::new();
        for url in std::iter::once(&p.url).chain(p.backup_url.iter()) {
            let (parsed, addr_policy) = destination::validate(&self.state.policy, p.service, url)
                .map_err(|m| crate::err!(Policy, "{m}"))?;
            dests.push((
                self.destination(parsed, addr_policy, key.clone(), p)?,
                self.config.egress.clone(),
            ));
        }
        let ingest = destination::parse_source(&s.source)?;
        if held {
            Relay::start_held(&ingest, dests, gate_mono_ns)
        } else {
            Relay::start(&ingest, dests, gate_mono_ns)
        }
    }

    fn destination(
        &self,
        url: RtmpUrl,
        addr_policy: destination::AddressPolicy,
        key: crate::secret::Secret,
        p: &Profile,
    ) -> Result<Destination> {
        let spki = p
            .spki_pin
            .as_deref()
            .map(egress::tls::parse_pin)
            .transpose()?;
        Ok(Destination {
            url,
            stream_key: key,
            tls: TlsOptions {
                ca_bundle_pem: p.ca_bundle_pem.as_ref().map(|s| s.as_bytes().to_vec()),
                spki_sha256: spki,
            },
            allow_plain_rtmp: self.state.policy.allow_plain_rtmp,
            addr_policy: Some(addr_policy),
        })
    }

    /// Stops a relay in the background (`abort`: at once; otherwise drain ≤ 1 s); its end is
    /// reported as `RelayEnded` with its generation. A relay already being stopped reports by
    /// itself; with no relay at all, the end is reported now.
    fn stop_relay(&mut self, session_id: &str, abort: bool) {
        let Some((generation, relay)) = self.relays.remove(session_id) else {
            if !self.stopping.contains_key(session_id) {
                self.report_ended(session_id, 0, None);
            }
            return;
        };
        self.stopping.insert(session_id.to_string(), generation);
        let tx = self.tx.clone();
        let id = session_id.to_string();
        tokio::spawn(async move {
            let results = if abort {
                relay.abort().await
            } else {
                relay.stop().await
            };
            let error = results
                .into_iter()
                .find_map(|r| r.err().map(|e| e.to_string()));
            let _ = tx
                .send(Request::RelayEnded {
                    session_id: id,
                    generation,
                    error,
                })
                .await;
        });
    }

    fn report_ended(&self, session_id: &str, generation: u64, error: Option<String>) {
        let tx = self.tx.clone();
        let id = session_id.to_string();
        tokio::spawn(async move {
            let _ = tx
                .send(Request::RelayEnded {
                    session_id: id,
                    generation,
                    error,
                })
                .await;
        });
    }

    /// A relay ended. Ends of relays that are not the session's current one are stale.
    fn relay_ended(&mut self, session_id: SessionId, generation: u64, error: Option<String>) {
        if generation != 0 {
            if self.stopping.get(&session_id) != Some(&generation) {
                tracing::debug!(session = %session_id, generation, "stale relay end ignored");
                return;
            }
            self.stopping.remove(&session_id);
        }
        if self.relays.contains_key(&session_id) {
            // A newer relay runs for this session: this end belongs to an older one.
            return;
        }
        let cmd = Command::RelayStopped {
            session_id: session_id.clone(),
            error: error.clone(),
        };
        if self.run_command(&Actor::system(), cmd).is_err() {
            self.pending_ends.push((session_id, error));
        }
    }

    fn retry_pending_ends(&mut self) {
        for (id, error) in std::mem::take(&mut self.pending_ends) {
            let cmd = Command::RelayStopped {
                session_id: id.clone(),
                error: error.clone(),
            };
            if self.run_command(&Actor::system(), cmd).is_err() {
                self.pending_ends.push((id, error));
            }
        }
    }

    /// Refreshes stats; stops a relay whose every egress ended by itself (a failing backup does
    /// not end a healthy primary), and aborts any relay whose session is not live (defense).
    fn watch_relays(&mut self) {
        let mut ended = Vec::new();
        let mut orphans = Vec::new();
        let mut stats = HashMap::new();
        for (id, (_, r)) in &self.relays {
            stats.insert(
                id.clone(),
                session_stats(&r.core_stats(), &r.egress_stats()),
            );
            if !r.egresses().is_empty()
                && r.egresses().iter().all(egress::EgressHandle::is_finished)
            {
                ended.push(id.clone());
            }
            let live = self
                .state
                .sessions
                .get(id)
                .is_some_and(|s| matches!(s.state, SessionState::Live { .. }));
            if !live {
                orphans.push(id.clone());
            }
        }
        if let Ok(mut m) = self.control.stats.write() {
            *m = stats;
        }
        for id in ended {
            self.stop_relay(&id, false);
        }
        for id in orphans {
            tracing::error!(session = %id, "a relay ran for a session that is not live: aborted");
            self.stop_relay(&id, true);
        }
        // A held relay belongs to a session still starting from the same confirm.
        let stale: Vec<SessionId> = self
            .held
            .iter()
            .filter(|(id, (gate, _))| {
                !self.state.sessions.get(*id).is_some_and(|s| {
                    matches!(&s.state, SessionState::Starting { consent, .. } if consent.confirmed_mono_ns == *gate)
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, r)) = self.held.remove(&id) {
                tracing::error!(session = %id, "a held relay outlived its session's start: aborted");
                tokio::spawn(r.abort());
            }
        }
    }
}

fn session_stats(c: &crate::media::core::CoreStats, e: &[egress::StatsSnapshot]) -> SessionStats {
    let mut s = SessionStats {
        video_frames: c.video_frames,
        audio_frames: c.audio_frames,
        av_offset_ms: c.av_offset_ms,
        first_frame_rx_ns: c.first_frame_rx_ns,
        ..SessionStats::default()
    };
    for x in e {
        s.frames_out += x.frames_out;
        s.frames_dropped += x.frames_dropped;
        s.bytes_sent += x.bytes_sent;
        s.bytes_acked += x.bytes_acked;
        s.bitrate_bps += x.bitrate_bps;
        s.reconnects += x.reconnects;
        s.publishing |= x.publishing;
    }
    s
}

/// Maps a refusal to the deny code the API reports.
pub fn refusal_code(r: &Refused) -> &'static str {
    match r {
        Refused::Denied(d) => d.code.as_str(),
        Refused::Store(_) => "unavailable",
        Refused::Closed => "unavailable",
    }
}

impl From<Denied> for Refused {
    fn from(d: Denied) -> Self {
        Refused::Denied(d)
    }
}
