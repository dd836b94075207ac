//! The event envelope. Payloads travel as ciphertext: a `WireEvent` never carries plaintext.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Who did it and why: kept in the clear (it holds ids, never personal data) so that audit
/// tooling can follow causation chains without keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// `user:<uuid>`, `apikey:<uuid>`, `service:<name>`, `rule:<uuid>`, `timer:<uuid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context, so a trace continues across the bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A committed event as it is relayed on NATS (`Nats-Msg-Id` = `event_id`). `payload` is the
/// stored AES-256-GCM ciphertext (nonce ‖ ciphertext ‖ tag), base64; consumers decrypt it with
/// the cell's keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Transaction id of the commit (PostgreSQL `xid8`; 0 on SQLite).
    pub tx: u64,
    pub global_position: i64,
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub event_version: u32,
    pub key_id: Uuid,
    /// base64 of nonce ‖ ciphertext ‖ tag.
    pub payload: String,
    /// The metadata JSON exactly as hashed.
    pub metadata: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// hex
    pub prev_hash: String,
    /// hex
    pub hash: String,
}
