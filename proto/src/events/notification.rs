//! Stored shapes of the notification service.
//!
//! `reply.sent` and `reply.failed` are appended to the notification service's own `outbound_mail` stream
//! (`mail-<message uuid>`), one stream per outbound message: only the owning service appends
//! to a stream type, and the conversation service's decoder refuses event types it does not
//! know. The payload names the conversation so that its owner can show the failure. Times are
//! Unix microseconds.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_OUTBOUND_MAIL: &str = "outbound_mail";

/// A reply could not be delivered (the relay refused it for good, retries ran out, or the
/// sender was interrupted mid-transaction so that delivery is uncertain).
pub const REPLY_FAILED: &str = "reply.failed";

/// `reply.failed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyFailedV1 {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// `rejected` (a 5xx), `retries_exhausted`, `uncertain` (interrupted after the relay may
    /// have accepted it: not resent automatically).
    pub reason: String,
    /// The SMTP reply code, when the relay gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    /// The relay's answer or the error, for the agent.
    pub detail: String,
    pub attempts: u32,
    pub at_us: i64,
    /// The agent who wrote the reply (absent in events written before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
}

/// The relay accepted a reply (250). Appended to the same `mail-<message uuid>` stream as
/// `reply.failed`, in the transaction that marks the outbox row `sent`; a stream holds one of
/// the two, never both.
pub const REPLY_SENT: &str = "reply.sent";

/// `reply.sent` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplySentV1 {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// The relay's reply code to DATA (250).
    pub smtp_code: u16,
    /// The relay's answer to DATA (e.g. `2.0.0 Ok: queued as …`).
    pub response: String,
    pub attempts: u32,
    pub at_us: i64,
}

/// Audit trail of an inbox's own SMTP relay: `smtp_relay/relay-<inbox uuid, simple>`. The AUTH
/// password is never in an event (it is sealed outside the log, ADR 0004); `has_password`
/// says whether one was stored.
pub const STREAM_SMTP_RELAY: &str = "smtp_relay";

/// An inbox's relay was set or replaced.
pub const SMTP_RELAY_SET: &str = "smtp_relay.set";
/// An inbox's relay was removed: it sends through the platform default again.
pub const SMTP_RELAY_REMOVED: &str = "smtp_relay.removed";

/// `smtp_relay.set` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpRelaySetV1 {
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    /// `none`, `starttls`, `tls`.
    pub security: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub has_password: bool,
    /// The password changed with this event (its value is not recorded).
    #[serde(default)]
    pub password_changed: bool,
    pub revision: u64,
    pub at_us: i64,
}

/// `smtp_relay.removed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpRelayRemovedV1 {
    pub inbox_id: Uuid,
    pub at_us: i64,
}

/// Agent notifications pushed to the agent's live stream: one stream per notification,
/// `agent_notification/user-<user uuid, simple>-<notification uuid, simple>`, appended in the
/// transaction that records the notification (so it is pushed once, and only if recorded).
/// The stream id names the user so that `/v1/stream` can pick the caller's without opening
/// other users' events.
pub const STREAM_AGENT_NOTIFICATION: &str = "agent_notification";

/// Something an agent should know: assigned to them, mentioned, an SLA warning or breach, a
/// reply of theirs not delivered.
pub const AGENT_NOTIFIED: &str = "agent.notified";

/// `agent.notified` v1. Names the conversation, never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNotifiedV1 {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    /// `assigned`, `mentioned`, `reply_failed`, `sla_warning`, `sla_breached`.
    pub kind: String,
    pub conversation_id: Uuid,
    /// Who caused it (the assigner, the note's author), when a user did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Uuid>,
    /// SLA alerts: `{clock, due_at_us, policy}` as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at_us: i64,
}

/// The stream of one agent notification.
pub fn agent_notification_stream_id(user: Uuid, notification: Uuid) -> String {
    format!("user-{}-{}", user.simple(), notification.simple())
}

/// The user an `agent_notification` stream id belongs to.
pub fn agent_notification_user(stream_id: &str) -> Option<Uuid> {
    let rest = stream_id.strip_prefix("user-")?;
    Uuid::try_parse(rest.get(..32)?).ok()
}
