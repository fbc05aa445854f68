//! The control plane's state model: entitlement, policy, subscribers, tokens, ingest profiles,
//! sessions. Plain data (serde), persisted as documents by the store; all changes go through
//! [`super::consent::apply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type SubscriberId = String;
pub type ProfileId = String;
pub type SessionId = String;
pub type TokenId = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Subscriber,
    Fabric,
    /// The appliance itself (timers, boot, the data plane reporting).
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Subscriber => "subscriber",
            Role::Fabric => "fabric",
            Role::System => "system",
        }
    }
}

/// Who asks. Built at the edge from a verified token (or `system()` for internal events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    /// Set for subscriber tokens.
    pub subscriber: Option<SubscriberId>,
    pub token_id: TokenId,
    /// Where the request came from (peer address), for the audit log.
    pub source: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            role: Role::System,
            subscriber: None,
            token_id: String::new(),
            source: "appliance".into(),
        }
    }

    pub fn name(&self) -> String {
        match (&self.subscriber, self.role) {
            (Some(s), _) => format!("subscriber:{s}/token:{}", self.token_id),
            (None, Role::System) => "system".into(),
            (None, r) => format!("{}:{}", r.as_str(), self.token_id),
        }
    }
}

/// The company's streaming entitlement. Off on a fresh appliance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entitlement {
    /// Streaming allowed at all. Default false.
    pub enabled: bool,
    /// Destinations that record (e.g. YouTube with DVR/VOD) allowed. Default false.
    pub recording_allowed: bool,
}

/// Ingest services with presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Youtube,
    Facebook,
    Twitch,
    Vimeo,
    Linkedin,
    Custom,
}

/// Admin policy. Every default is on its field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Allow `rtmp://` (no TLS) destinations. Default false.
    pub allow_plain_rtmp: bool,
    /// Refuse every public address: only private/loopback destinations. Default false.
    pub private_only: bool,
    /// Service presets subscribers may use. Default: all but `custom`.
    pub allowed_services: Vec<Service>,
    /// Host names allowed for custom destinations (exact, lower case). Default empty.
    pub allowed_hosts: Vec<String>,
    /// Address ranges allowed for custom destinations, CIDR notation. Default empty.
    pub allowed_cidrs: Vec<String>,
    /// Stop egress when the fabric stops acknowledging the indicator. Default true.
    pub stop_on_indicator_loss: bool,
    /// How long the fabric may be silent while live before that counts as lost. Default 5000.
    pub indicator_grace_ms: u64,
    /// How long after confirm the fabric has to acknowledge the indicator. Default 10000.
    pub indicator_ack_timeout_ms: u64,
    /// How long a session waits in `awaiting_confirmation` before it expires. Default 900000.
    pub confirm_window_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_plain_rtmp: false,
            private_only: false,
            allowed_services: vec![
                Service::Youtube,
                Service::Facebook,
                Service::Twitch,
                Service::Vimeo,
                Service::Linkedin,
            ],
            allowed_hosts: Vec::new(),
            allowed_cidrs: Vec::new(),
            stop_on_indicator_loss: true,
            indicator_grace_ms: 5_000,
            indicator_ack_timeout_ms: 10_000,
            confirm_window_ms: 15 * 60 * 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    pub id: SubscriberId,
    pub name: String,
    pub created_ms: i64,
}

/// An API token. Only its SHA-256 is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: TokenId,
    pub role: Role,
    pub subscriber: Option<SubscriberId>,
    pub label: String,
    pub hash: String,
    pub created_ms: i64,
}

/// A subscriber's ingest destination. The stream key is held sealed (encrypted with the device
/// key by the store); the state machine never sees it in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: ProfileId,
    pub owner: SubscriberId,
    pub name: String,
    pub service: Service,
    /// Primary ingest URL (`rtmps://host[:port]/app`); for presets, the preset's.
    pub url: String,
    /// Backup ingest URL (YouTube), if any.
    pub backup_url: Option<String>,
    pub stream_key_sealed: String,
    /// PEM CA bundle for a private ingest.
    pub ca_bundle_pem: Option<String>,
    /// Hex SHA-256 of the ingest certificate's SubjectPublicKeyInfo.
    pub spki_pin: Option<String>,
    /// Whether the destination records (shown to participants with the indicator).
    pub destination_records: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    AdHoc,
    At { start_ms: i64, stop_ms: Option<i64> },
}

/// Why a session ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Requested,
    ScheduledStop,
    EntitlementRevoked,
    ProfileDeleted,
    SourceEnded,
}

/// The consent record that made a session live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// When the session entered `awaiting_confirmation` (the confirm must be after this).
    pub awaiting_since_ms: i64,
    pub confirmed_ms: i64,
    /// The same instant on the ingest's monotonic clock: the relay's gate.
    pub confirmed_mono_ns: u64,
    pub confirmed_by: SubscriberId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SessionState {
    Scheduled,
    AwaitingConfirmation {
        since_ms: i64,
        expires_ms: i64,
        /// Single-use: the confirm must carry it; a new one is made for every wait.
        confirm_id: String,
    },
    Starting {
        consent: Consent,
        ack_deadline_ms: i64,
        /// The same deadline on the monotonic clock (what the timer checks: a wall-clock
        /// step cannot extend it).
        ack_deadline_mono_ns: u64,
    },
    Live {
        consent: Consent,
        since_ms: i64,
        last_ack_ms: i64,
        /// Last acknowledgement on the monotonic clock (what the grace period is checked on).
        last_ack_mono_ns: u64,
    },
    Stopping {
        reason: StopReason,
    },
    Ended {
        reason: EndReason,
    },
    Expired,
    Failed {
        reason: String,
    },
    Interrupted,
    Cancelled,
}

/// Why a live session is being stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StopReason {
    End { reason: EndReason },
    Fail { reason: String },
}

impl SessionState {
    pub fn name(&self) -> &'static str {
        match self {
            SessionState::Scheduled => "scheduled",
            SessionState::AwaitingConfirmation { .. } => "awaiting_confirmation",
            SessionState::Starting { .. } => "starting",
            SessionState::Live { .. } => "live",
            SessionState::Stopping { .. } => "stopping",
            SessionState::Ended { .. } => "ended",
            SessionState::Expired => "expired",
            SessionState::Failed { .. } => "failed",
            SessionState::Interrupted => "interrupted",
            SessionState::Cancelled => "cancelled",
        }
    }

    /// Media may be leaving the box (or is about to): the indicator must be on.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            SessionState::Starting { .. }
                | SessionState::Live { .. }
                | SessionState::Stopping { .. }
        )
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SessionState::Ended { .. }
                | SessionState::Expired
                | SessionState::Failed { .. }
                | SessionState::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub owner: SubscriberId,
    pub profile_id: ProfileId,
    pub meeting_id: String,
    /// The fabric source to ingest (`udp://host:port`, or `udp://group@iface:port`).
    pub source: String,
    pub schedule: Schedule,
    pub state: SessionState,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Everything the control plane knows. Cloned per command (small), so a command either
/// applies whole or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub entitlement: Entitlement,
    pub policy: Policy,
    pub subscribers: BTreeMap<SubscriberId, Subscriber>,
    pub tokens: BTreeMap<TokenId, Token>,
    pub profiles: BTreeMap<ProfileId, Profile>,
    pub sessions: BTreeMap<SessionId, Session>,
}
