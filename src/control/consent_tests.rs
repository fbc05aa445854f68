//! Table tests of the consent flows and property tests of the guarantees.

use super::*;
use proptest::prelude::*;

const T0: i64 = 1_800_000_000_000;

struct World {
    state: State,
    now_ms: i64,
    mono_ns: u64,
    seed: u64,
    admin: Actor,
    fabric: Actor,
    subs: Vec<Actor>,
    profiles: Vec<ProfileId>,
}

fn actor(role: Role, sub: Option<&str>) -> Actor {
    Actor {
        role,
        subscriber: sub.map(str::to_string),
        token_id: format!("tok-{}", role.as_str()),
        source: "127.0.0.1".into(),
    }
}

impl World {
    fn new() -> World {
        let mut w = World {
            state: State::default(),
            now_ms: T0,
            mono_ns: 1_000,
            seed: 7,
            admin: actor(Role::Admin, None),
            fabric: actor(Role::Fabric, None),
            subs: Vec::new(),
            profiles: Vec::new(),
        };
        for name in ["alice", "bob"] {
            let admin = w.admin.clone();
            let id = w
                .ok(&admin, Command::CreateSubscriber { name: name.into() })
                .created
                .expect("id");
            w.subs.push(actor(Role::Subscriber, Some(&id)));
        }
        for i in 0..2 {
            let a = w.subs[i].clone();
            let p = w
                .ok(&a, Command::CreateProfile(spec()))
                .created
                .expect("profile");
            w.profiles.push(p);
        }
        w
    }

    fn apply(&mut self, a: &Actor, cmd: Command) -> Result<Outcome, Denied> {
        let mut seed = self.seed;
        let mut rng = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut env = Env {
            now_ms: self.now_ms,
            mono_ns: self.mono_ns,
            rng: &mut rng,
        };
        let mut next = self.state.clone();
        let r = apply(&mut next, a, cmd, &mut env);
        self.seed = rng();
        match &r {
            Ok(_) => self.state = next,
            Err(_) => assert_eq!(next, self.state, "a refused command changed the state"),
        }
        r
    }

    fn ok(&mut self, a: &Actor, cmd: Command) -> Outcome {
        match self.apply(a, cmd.clone()) {
            Ok(o) => o,
            Err(d) => panic!("{cmd:?} refused: {d:?}"),
        }
    }

    fn advance(&mut self, ms: i64) {
        self.now_ms += ms;
        self.mono_ns += u64::try_from(ms).unwrap_or(0) * 1_000_000;
    }

    fn tick(&mut self) -> Outcome {
        self.ok(&Actor::system(), Command::Tick)
    }

    fn session(&self, id: &str) -> &Session {
        &self.state.sessions[id]
    }

    fn confirm_id(&self, id: &str) -> String {
        match &self.session(id).state {
            SessionState::AwaitingConfirmation { confirm_id, .. } => confirm_id.clone(),
            s => panic!("not awaiting: {s:?}"),
        }
    }

    fn enable(&mut self) {
        let admin = self.admin.clone();
        self.ok(
            &admin,
            Command::SetEntitlement(Entitlement {
                enabled: true,
                recording_allowed: true,
            }),
        );
    }

    fn adhoc(&mut self, who: usize) -> SessionId {
        let a = self.subs[who].clone();
        let p = self.profiles[who].clone();
        self.ok(
            &a,
            Command::CreateSession {
                profile_id: p,
                meeting_id: "m-1".into(),
                source: "udp://127.0.0.1:5000".into(),
                schedule: Schedule::AdHoc,
            },
        )
        .created
        .expect("session")
    }

    fn go_live(&mut self, who: usize) -> SessionId {
        let s = self.adhoc(who);
        let a = self.subs[who].clone();
        let cid = self.confirm_id(&s);
        self.ok(
            &a,
            Command::Confirm {
                session_id: s.clone(),
                confirm_id: cid,
            },
        );
        let f = self.fabric.clone();
        let o = self.ok(
            &f,
            Command::IndicatorAck {
                session_id: s.clone(),
            },
        );
        assert!(
            o.effects
                .iter()
                .any(|e| matches!(e, Effect::StartRelay { .. }))
        );
        s
    }
}

fn spec() -> ProfileSpec {
    ProfileSpec {
        name: "yt".into(),
        service: Service::Youtube,
        url: None,
        stream_key_sealed: Some("v1:sealed".into()),
        ca_bundle_pem: None,
        spki_pin: None,
        destination_records: false,
    }
}

#[test]
fn off_by_default_nothing_can_be_created() {
    let mut w = World::new();
    assert!(!w.state.entitlement.enabled);
    let a = w.subs[0].clone();
    let p = w.profiles[0].clone();
    let r = w.apply(
        &a,
        Command::CreateSession {
            profile_id: p,
            meeting_id: "m".into(),
            source: "udp://127.0.0.1:5000".into(),
            schedule: Schedule::AdHoc,
        },
    );
    assert_eq!(r.err().map(|d| d.code), Some(DenyCode::Policy));
}

#[test]
fn adhoc_flow_confirm_ack_live_stop_ended() {
    let mut w = World::new();
    w.enable();
    let s = w.adhoc(0);
    assert_eq!(w.session(&s).state.name(), "awaiting_confirmation");
    let cid = w.confirm_id(&s);
    let a = w.subs[0].clone();
    w.advance(1_000);
    let gate_expected = w.mono_ns;
    let o = w.ok(
        &a,
        Command::Confirm {
            session_id: s.clone(),
            confirm_id: cid.clone(),
        },
    );
    assert!(
        o.effects
            .iter()
            .any(|e| matches!(e, Effect::Indicator { on: true, .. }))
    );
    assert!(
        !o.effects
            .iter()
            .any(|e| matches!(e, Effect::StartRelay { .. })),
        "no media before the indicator is acknowledged"
    );
    // A confirm is single-use.
    assert_eq!(
        w.apply(
            &a,
            Command::Confirm {
                session_id: s.clone(),
                confirm_id: cid
            }
        )
        .err()
        .map(|d| d.code),
        Some(DenyCode::Conflict)
    );
    let f = w.fabric.clone();
    let o = w.ok(
        &f,
        Command::IndicatorAck {
            session_id: s.clone(),
        },
    );
    assert_eq!(
        o.effects,
        vec![Effect::StartRelay {
            session_id: s.clone(),
            gate_mono_ns: gate_expected
        }]
    );
    assert_eq!(w.session(&s).state.name(), "live");
    let o = w.ok(
        &a,
        Command::Stop {
            session_id: s.clone(),
        },
    );
    assert_eq!(
        o.effects,
        vec![Effect::StopRelay {
            session_id: s.clone(),
            abort: false
        }]
    );
    assert_eq!(w.session(&s).state.name(), "stopping");
    let o = w.ok(
        &Actor::system(),
        Command::RelayStopped {
            session_id: s.clone(),
            error: None,
        },
    );
    assert!(
        o.effects
            .iter()
            .any(|e| matches!(e, Effect::Indicator { on: false, .. })),
        "indicator off only after the relay stopped"
    );
    assert_eq!(
        w.session(&s).state,
        SessionState::Ended {
            reason: EndReason::Requested
        }
    );
    // Every step was audited, the command first.
    assert_eq!(o.audit[0].action, "relay.stopped");
}

#[test]
fn only_the_owner_confirms_with_the_current_id() {
    let mut w = World::new();
    w.enable();
    let s = w.adhoc(0);
    let cid = w.confirm_id(&s);
    let (bob, admin, fabric) = (w.subs[1].clone(), w.admin.clone(), w.fabric.clone());
    for a in [&bob, &admin, &fabric] {
        let r = w.apply(
            a,
            Command::Confirm {
                session_id: s.clone(),
                confirm_id: cid.clone(),
            },
        );
        assert!(
            matches!(
                r.err().map(|d| d.code),
                Some(DenyCode::Forbidden | DenyCode::NotFound)
            ),
            "{a:?}"
        );
    }
    let alice = w.subs[0].clone();
    let r = w.apply(
        &alice,
        Command::Confirm {
            session_id: s.clone(),
            confirm_id: "cfm_guess".into(),
        },
    );
    assert_eq!(r.err().map(|d| d.code), Some(DenyCode::Conflict));
}

#[test]
fn scheduled_start_only_waits_for_confirm_and_expires() {
    let mut w = World::new();
    w.enable();
    let a = w.subs[0].clone();
    let p = w.profiles[0].clone();
    let s = w
        .ok(
            &a,
            Command::CreateSession {
                profile_id: p,
                meeting_id: "m".into(),
                source: "udp://127.0.0.1:5000".into(),
                schedule: Schedule::At {
                    start_ms: T0 + 60_000,
                    stop_ms: None,
                },
            },
        )
        .created
        .expect("id");
    assert_eq!(w.session(&s).state.name(), "scheduled");
    w.advance(60_000);
    let o = w.tick();
    assert!(
        o.effects
            .iter()
            .any(|e| matches!(e, Effect::NotifyAwaiting { .. }))
    );
    assert_eq!(w.session(&s).state.name(), "awaiting_confirmation");
    // Nobody confirms: it never goes further, and expires after the window.
    w.advance(i64::try_from(w.state.policy.confirm_window_ms).expect("ms") - 1);
    w.tick();
    assert_eq!(w.session(&s).state.name(), "awaiting_confirmation");
    w.advance(1);
    w.tick();
    assert_eq!(w.session(&s).state, SessionState::Expired);
}

#[test]
fn indicator_not_acknowledged_fails_without_media() {
    let mut w = World::new();
    w.enable();
    let s = w.adhoc(0);
    let cid = w.confirm_id(&s);
    let a = w.subs[0].clone();
    w.ok(
        &a,
        Command::Confirm {
            session_id: s.clone(),
            confirm_id: cid,
        },
    );
    w.advance(10_000);
    let o = w.tick();
    assert!(
        !o.effects
            .iter()
            .any(|e| matches!(e, Effect::StartRelay { .. }))
    );
    assert_eq!(
        w.session(&s).state,
        SessionState::Failed {
            reason: "indicator_not_acknowledged".into()
        }
    );
}

#[test]
fn indicator_lost_while_live_stops_egress() {
    let mut w = World::new();
    w.enable();
    let s = w.go_live(0);
    let f = w.fabric.clone();
    w.advance(4_000);
    w.ok(
        &f,
        Command::IndicatorAck {
            session_id: s.clone(),
        },
    );
    w.advance(5_000);
    assert!(w.tick().effects.is_empty(), "within the grace period");
    w.advance(1);
    let o = w.tick();
    assert_eq!(
        o.effects,
        vec![Effect::StopRelay {
            session_id: s.clone(),
            abort: true
        }]
    );
    w.ok(
        &Actor::system(),
        Command::RelayStopped {
            session_id: s.clone(),
            error: None,
        },
    );
    assert_eq!(
        w.session(&s).state,
        SessionState::Failed {
            reason: "indicator_lost".into()
        }
    );
}

#[test]
fn entitlement_revoked_stops_everything_active() {
    let mut w = World::new();
    w.enable();
    let live = w.go_live(0);
    let starting = w.adhoc(1);
    let cid = w.confirm_id(&starting);
    let b = w.subs[1].clone();
    w.ok(
        &b,
        Command::Confirm {
            session_id: starting.clone(),
            confirm_id: cid,
        },
    );
    let admin = w.admin.clone();
    let o = w.ok(&admin, Command::SetEntitlement(Entitlement::default()));
    assert!(o.effects.contains(&Effect::StopRelay {
        session_id: live.clone(),
        abort: true
    }));
    assert_eq!(
        w.session(&starting).state,
        SessionState::Ended {
            reason: EndReason::EntitlementRevoked
        }
    );
    assert_eq!(w.session(&live).state.name(), "stopping");
}

#[test]
fn deleting_the_profile_stops_its_sessions() {
    let mut w = World::new();
    w.enable();
    let live = w.go_live(0);
    let waiting = w.adhoc(0);
    let a = w.subs[0].clone();
    let p = w.profiles[0].clone();
    let o = w.ok(&a, Command::DeleteProfile { id: p });
    assert!(o.effects.contains(&Effect::StopRelay {
        session_id: live.clone(),
        abort: true
    }));
    assert_eq!(w.session(&waiting).state, SessionState::Cancelled);
}

#[test]
fn boot_interrupts_and_only_a_new_confirm_resumes() {
    let mut w = World::new();
    w.enable();
    let s = w.go_live(0);
    let o = w.ok(&Actor::system(), Command::Boot);
    assert!(
        !o.effects
            .iter()
            .any(|e| matches!(e, Effect::StartRelay { .. }))
    );
    assert_eq!(w.session(&s).state, SessionState::Interrupted);
    let f = w.fabric.clone();
    assert!(
        w.apply(
            &f,
            Command::IndicatorAck {
                session_id: s.clone()
            }
        )
        .is_err(),
        "an ack cannot revive it"
    );
    let a = w.subs[0].clone();
    w.ok(
        &a,
        Command::Rearm {
            session_id: s.clone(),
        },
    );
    let cid = w.confirm_id(&s);
    w.ok(
        &a,
        Command::Confirm {
            session_id: s.clone(),
            confirm_id: cid,
        },
    );
    w.ok(
        &f,
        Command::IndicatorAck {
            session_id: s.clone(),
        },
    );
    assert_eq!(w.session(&s).state.name(), "live");
}

#[test]
fn recording_destination_needs_the_recording_entitlement() {
    let mut w = World::new();
    let admin = w.admin.clone();
    w.ok(
        &admin,
        Command::SetEntitlement(Entitlement {
            enabled: true,
            recording_allowed: false,
        }),
    );
    let a = w.subs[0].clone();
    let rec = w
        .ok(
            &a,
            Command::CreateProfile(ProfileSpec {
                destination_records: true,
                ..spec()
            }),
        )
        .created
        .expect("p");
    let s = w
        .ok(
            &a,
            Command::CreateSession {
                profile_id: rec,
                meeting_id: "m".into(),
                source: "udp://127.0.0.1:5000".into(),
                schedule: Schedule::AdHoc,
            },
        )
        .created
        .expect("s");
    let cid = w.confirm_id(&s);
    assert_eq!(
        w.apply(
            &a,
            Command::Confirm {
                session_id: s,
                confirm_id: cid
            }
        )
        .err()
        .map(|d| d.code),
        Some(DenyCode::Policy)
    );
}

#[test]
fn the_last_admin_token_cannot_be_revoked() {
    let mut w = World::new();
    let admin = w.admin.clone();
    let sys = Actor::system();
    let first = w
        .ok(
            &sys,
            Command::CreateToken {
                role: Role::Admin,
                subscriber: None,
                label: "a".into(),
                hash: "h1".into(),
            },
        )
        .created
        .expect("id");
    let second = w
        .ok(
            &admin,
            Command::CreateToken {
                role: Role::Admin,
                subscriber: None,
                label: "b".into(),
                hash: "h2".into(),
            },
        )
        .created
        .expect("id");
    w.ok(&admin, Command::RevokeToken { id: first });
    let r = w.apply(&admin, Command::RevokeToken { id: second });
    assert_eq!(r.err().map(|d| d.code), Some(DenyCode::Conflict));
}

#[test]
fn subscribers_cannot_see_each_others_objects() {
    let mut w = World::new();
    w.enable();
    let s = w.adhoc(0);
    let bob = w.subs[1].clone();
    let p0 = w.profiles[0].clone();
    for cmd in [
        Command::Stop {
            session_id: s.clone(),
        },
        Command::Cancel {
            session_id: s.clone(),
        },
        Command::DeleteProfile { id: p0.clone() },
        Command::UpdateProfile {
            id: p0.clone(),
            spec: spec(),
        },
        Command::CreateSession {
            profile_id: p0,
            meeting_id: "m".into(),
            source: "udp://127.0.0.1:5000".into(),
            schedule: Schedule::AdHoc,
        },
    ] {
        assert_eq!(
            w.apply(&bob, cmd.clone()).err().map(|d| d.code),
            Some(DenyCode::NotFound),
            "{cmd:?}"
        );
    }
    // Fabric tokens do nothing but acknowledge.
    let f = w.fabric.clone();
    assert_eq!(
        w.apply(&f, Command::SetEntitlement(Entitlement::default()))
            .err()
            .map(|d| d.code),
        Some(DenyCode::Forbidden)
    );
}

#[test]
fn a_wall_clock_step_back_does_not_extend_the_indicator_grace() {
    // Regression: grace was checked on the wall clock; a step back of an hour kept egress
    // running for an hour without acknowledgements.
    let mut w = World::new();
    w.enable();
    let s = w.go_live(0);
    w.now_ms -= 3_600_000; // NTP steps the clock back
    w.mono_ns += 5_001 * 1_000_000; // 5 s pass for real
    let o = w.tick();
    assert_eq!(
        o.effects,
        vec![Effect::StopRelay {
            session_id: s,
            abort: true
        }]
    );
}

#[test]
fn heartbeats_are_not_audited() {
    let mut w = World::new();
    w.enable();
    let s = w.go_live(0);
    let f = w.fabric.clone();
    w.advance(1_000);
    let o = w.ok(
        &f,
        Command::IndicatorAck {
            session_id: s.clone(),
        },
    );
    assert!(o.quiet && o.audit.is_empty() && o.effects.is_empty());
}

#[test]
fn presets_always_record_and_revoking_recording_stops_them() {
    let mut w = World::new();
    w.enable();
    assert!(
        w.state.profiles[&w.profiles[0]].destination_records,
        "a YouTube profile declared non-recording"
    );
    let s = w.go_live(0);
    let admin = w.admin.clone();
    let o = w.ok(
        &admin,
        Command::SetEntitlement(Entitlement {
            enabled: true,
            recording_allowed: false,
        }),
    );
    assert_eq!(
        o.effects,
        vec![Effect::StopRelay {
            session_id: s.clone(),
            abort: true
        }]
    );
}

#[test]
fn a_policy_change_stops_sessions_it_no_longer_allows() {
    let mut w = World::new();
    w.enable();
    let s = w.go_live(0);
    let admin = w.admin.clone();
    let strict = Policy {
        allowed_services: vec![Service::Vimeo],
        ..Policy::default()
    };
    let o = w.ok(&admin, Command::SetPolicy(strict));
    assert_eq!(
        o.effects,
        vec![Effect::StopRelay {
            session_id: s.clone(),
            abort: true
        }]
    );
    w.ok(
        &Actor::system(),
        Command::RelayStopped {
            session_id: s.clone(),
            error: None,
        },
    );
    assert_eq!(
        w.session(&s).state,
        SessionState::Failed {
            reason: "policy_changed".into()
        }
    );
}

#[test]
fn boot_voids_confirm_ids_issued_before_the_restart() {
    let mut w = World::new();
    w.enable();
    let s = w.adhoc(0);
    let old = w.confirm_id(&s);
    w.ok(&Actor::system(), Command::Boot);
    let new = w.confirm_id(&s);
    assert_ne!(old, new);
    let a = w.subs[0].clone();
    let r = w.apply(
        &a,
        Command::Confirm {
            session_id: s.clone(),
            confirm_id: old,
        },
    );
    assert_eq!(r.err().map(|d| d.code), Some(DenyCode::Conflict));
}

#[test]
fn a_confirm_after_the_scheduled_stop_is_refused() {
    let mut w = World::new();
    w.enable();
    let a = w.subs[0].clone();
    let p = w.profiles[0].clone();
    let sched = Schedule::At {
        start_ms: T0,
        stop_ms: Some(T0 + 10_000),
    };
    let s = w
        .ok(
            &a,
            Command::CreateSession {
                profile_id: p,
                meeting_id: "m".into(),
                source: "udp://127.0.0.1:5000".into(),
                schedule: sched,
            },
        )
        .created
        .expect("id");
    let cid = w.confirm_id(&s);
    w.now_ms += 10_000;
    let r = w.apply(
        &a,
        Command::Confirm {
            session_id: s,
            confirm_id: cid,
        },
    );
    assert_eq!(r.err().map(|d| d.code), Some(DenyCode::Conflict));
}

#[test]
fn audit_records_what_a_command_set_and_caps_caller_input() {
    let mut w = World::new();
    let admin = w.admin.clone();
    let o = w.ok(
        &admin,
        Command::SetEntitlement(Entitlement {
            enabled: true,
            recording_allowed: false,
        }),
    );
    assert!(
        o.audit[0].detail.contains("\"enabled\":true"),
        "{}",
        o.audit[0].detail
    );
    let long = "x".repeat(60_000);
    let a = w.subs[0].clone();
    let r = w.apply(
        &a,
        Command::Stop {
            session_id: long.clone(),
        },
    );
    assert!(r.is_err());
    assert!(cap(&long, 256).len() <= 256 + 3);
}

// ---- property tests ----

#[derive(Clone, Debug)]
enum Op {
    Entitle(bool, bool),
    Create {
        who: usize,
        at_offset_ms: Option<i64>,
    },
    Confirm {
        who: usize,
        idx: usize,
        right_id: bool,
    },
    Ack {
        idx: usize,
        by_fabric: bool,
    },
    Stop {
        who: usize,
        idx: usize,
    },
    Cancel {
        who: usize,
        idx: usize,
    },
    Rearm {
        who: usize,
        idx: usize,
    },
    RelayStopped {
        idx: usize,
        failed: bool,
    },
    DeleteProfile {
        who: usize,
    },
    RecreateProfile {
        who: usize,
    },
    Tick,
    Boot,
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Op::Entitle(a, b)),
        (0..2usize, prop::option::of(-5_000i64..120_000))
            .prop_map(|(who, at_offset_ms)| Op::Create { who, at_offset_ms }),
        (0..3usize, 0..6usize, any::<bool>()).prop_map(|(who, idx, right_id)| Op::Confirm {
            who,
            idx,
            right_id
        }),
        (0..6usize, any::<bool>()).prop_map(|(idx, by_fabric)| Op::Ack { idx, by_fabric }),
        (0..3usize, 0..6usize).prop_map(|(who, idx)| Op::Stop { who, idx }),
        (0..3usize, 0..6usize).prop_map(|(who, idx)| Op::Cancel { who, idx }),
        (0..2usize, 0..6usize).prop_map(|(who, idx)| Op::Rearm { who, idx }),
        (0..6usize, any::<bool>()).prop_map(|(idx, failed)| Op::RelayStopped { idx, failed }),
        (0..2usize).prop_map(|who| Op::DeleteProfile { who }),
        (0..2usize).prop_map(|who| Op::RecreateProfile { who }),
        Just(Op::Tick),
        Just(Op::Boot),
        (1i64..20_000).prop_map(Op::Advance),
    ]
}

/// Track what the harness saw, to check the guarantees independently of the implementation.
#[derive(Default)]
struct Seen {
    /// Sessions whose relay was started, with the gate, since their last confirm.
    started: std::collections::BTreeMap<SessionId, u64>,
    indicator_on: std::collections::BTreeSet<SessionId>,
    /// The mono clock at each successful confirm.
    confirmed_at: std::collections::BTreeMap<SessionId, u64>,
}

fn run_op(w: &mut World, seen: &mut Seen, op: Op) {
    let ids: Vec<SessionId> = w.state.sessions.keys().cloned().collect();
    let sid = |i: usize| ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
    let who_actor = |w: &World, who: usize| {
        if who < 2 {
            w.subs[who].clone()
        } else {
            w.admin.clone()
        }
    };
    let (actor, cmd) = match op {
        Op::Entitle(enabled, recording_allowed) => (
            w.admin.clone(),
            Command::SetEntitlement(Entitlement {
                enabled,
                recording_allowed,
            }),
        ),
        Op::Create { who, at_offset_ms } => {
            let schedule = at_offset_ms.map_or(Schedule::AdHoc, |o| Schedule::At {
                start_ms: w.now_ms + o,
                stop_ms: None,
            });
            (
                w.subs[who].clone(),
                Command::CreateSession {
                    profile_id: w.profiles[who].clone(),
                    meeting_id: "m".into(),
                    source: "udp://127.0.0.1:5000".into(),
                    schedule,
                },
            )
        }
        Op::Confirm { who, idx, right_id } => {
            let s = sid(idx);
            let confirm_id = match (right_id, w.state.sessions.get(&s).map(|x| &x.state)) {
                (true, Some(SessionState::AwaitingConfirmation { confirm_id, .. })) => {
                    confirm_id.clone()
                }
                _ => "cfm_wrong".into(),
            };
            (
                who_actor(w, who),
                Command::Confirm {
                    session_id: s,
                    confirm_id,
                },
            )
        }
        Op::Ack { idx, by_fabric } => (
            if by_fabric {
                w.fabric.clone()
            } else {
                w.subs[0].clone()
            },
            Command::IndicatorAck {
                session_id: sid(idx),
            },
        ),
        Op::Stop { who, idx } => (
            who_actor(w, who),
            Command::Stop {
                session_id: sid(idx),
            },
        ),
        Op::Cancel { who, idx } => (
            who_actor(w, who),
            Command::Cancel {
                session_id: sid(idx),
            },
        ),
        Op::Rearm { who, idx } => (
            w.subs[who].clone(),
            Command::Rearm {
                session_id: sid(idx),
            },
        ),
        Op::RelayStopped { idx, failed } => (
            Actor::system(),
            Command::RelayStopped {
                session_id: sid(idx),
                error: failed.then(|| "rejected".into()),
            },
        ),
        Op::DeleteProfile { who } => (
            w.subs[who].clone(),
            Command::DeleteProfile {
                id: w.profiles[who].clone(),
            },
        ),
        Op::RecreateProfile { who } => (w.subs[who].clone(), Command::CreateProfile(spec())),
        Op::Tick => (Actor::system(), Command::Tick),
        Op::Boot => (Actor::system(), Command::Boot),
        Op::Advance(ms) => {
            w.advance(ms);
            return;
        }
    };
    let is_confirm = matches!(cmd, Command::Confirm { .. });
    let is_boot = matches!(cmd, Command::Boot);
    let target = cmd.target();
    let before = w.state.clone();
    let Ok(out) = w.apply(&actor, cmd) else {
        return;
    };
    if let (Op::RecreateProfile { who }, Some(p)) =
        (&op_kind_recreate(&actor, w), out.created.clone())
    {
        w.profiles[*who] = p;
    }
    if is_confirm {
        // Guarantee 3: only the owner, from awaiting_confirmation, before expiry.
        let s = &before.sessions[&target];
        assert_eq!(actor.subscriber.as_deref(), Some(s.owner.as_str()));
        assert!(
            matches!(s.state, SessionState::AwaitingConfirmation { expires_ms, .. } if w.now_ms < expires_ms)
        );
        assert!(before.entitlement.enabled);
        seen.confirmed_at.insert(target.clone(), w.mono_ns);
        seen.started.remove(&target);
    }
    for e in &out.effects {
        match e {
            Effect::StartRelay {
                session_id,
                gate_mono_ns,
            } => {
                // Guarantee 5/6: media only after an acknowledged indicator, gated at the confirm.
                assert!(
                    seen.indicator_on.contains(session_id),
                    "relay started before the indicator"
                );
                assert_eq!(
                    Some(gate_mono_ns),
                    seen.confirmed_at.get(session_id),
                    "gate is not the confirm instant"
                );
                seen.started.insert(session_id.clone(), *gate_mono_ns);
            }
            Effect::Indicator {
                session_id,
                on: true,
                ..
            } => {
                seen.indicator_on.insert(session_id.clone());
            }
            Effect::Indicator {
                session_id,
                on: false,
                ..
            } => {
                seen.indicator_on.remove(session_id);
            }
            _ => {}
        }
    }
    if is_boot {
        assert!(
            w.state.sessions.values().all(|s| !s.state.is_active()),
            "boot left a session active"
        );
    }
    check_invariants(w, seen, &out);
}

fn op_kind_recreate(actor: &Actor, w: &World) -> Op {
    let who = w.subs.iter().position(|s| s == actor).unwrap_or(9);
    if who < 2 {
        Op::RecreateProfile { who }
    } else {
        Op::Tick
    }
}

fn check_invariants(w: &World, seen: &Seen, out: &Outcome) {
    assert!(
        !out.audit.is_empty() || out.effects.is_empty(),
        "effects without audit"
    );
    for s in w.state.sessions.values() {
        match &s.state {
            SessionState::Live { consent, .. } => {
                // Guarantee 1, 2, 3, 5 for every live session, after every step.
                assert!(w.state.entitlement.enabled, "live without entitlement");
                let p = w
                    .state
                    .profiles
                    .get(&s.profile_id)
                    .expect("live without its profile");
                assert_eq!(p.owner, s.owner);
                assert_eq!(consent.confirmed_by, s.owner);
                assert!(consent.awaiting_since_ms <= consent.confirmed_ms);
                assert!(
                    seen.started.contains_key(&s.id),
                    "live without an acknowledged start"
                );
                assert!(
                    seen.indicator_on.contains(&s.id),
                    "live without the indicator"
                );
            }
            SessionState::Starting { consent, .. } => {
                assert!(w.state.entitlement.enabled);
                assert_eq!(consent.confirmed_by, s.owner);
                assert!(!seen.started.contains_key(&s.id));
            }
            SessionState::Stopping { .. } => assert!(
                seen.indicator_on.contains(&s.id),
                "indicator off before the last byte"
            ),
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn guarantees_hold_for_any_command_sequence(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        let mut seen = Seen::default();
        for op in ops {
            run_op(&mut w, &mut seen, op);
        }
    }
}
