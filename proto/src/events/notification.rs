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
