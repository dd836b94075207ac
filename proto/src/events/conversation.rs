//! Stored shapes of the conversation service, on `conversation` streams (`conv-<uuid>`).
//!
//! Payloads hold personal data (subjects, addresses, bodies, notes); the store seals every
//! payload, so nothing here is plaintext at rest. Times are Unix microseconds.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_CONVERSATION: &str = "conversation";

pub const OPENED: &str = "conversation.opened";
pub const MESSAGE_RECEIVED: &str = "conversation.message_received";
/// An outbound reply: the shared mailbox's sent item, and what the notification service sends.
pub const REPLY_QUEUED: &str = "reply.queued";
pub const NOTE_ADDED: &str = "conversation.note_added";
pub const STATUS_CHANGED: &str = "conversation.status_changed";
pub const SNOOZED: &str = "conversation.snoozed";
pub const WOKEN: &str = "conversation.woken";
pub const PRIORITY_CHANGED: &str = "conversation.priority_changed";
pub const TAGGED: &str = "conversation.tagged";
pub const UNTAGGED: &str = "conversation.untagged";
pub const ASSIGNED: &str = "conversation.assigned";
pub const UNASSIGNED: &str = "conversation.unassigned";
pub const PARTICIPANT_ADDED: &str = "conversation.participant_added";
pub const ARCHIVED_FOR_INBOX: &str = "conversation.archived_for_inbox";
pub const MOVED: &str = "conversation.moved";
pub const MERGED_INTO: &str = "conversation.merged_into";
pub const MERGED_FROM: &str = "conversation.merged_from";
/// A queued reply could not be delivered (recorded by the conversation service from the
/// notification service's `reply.failed` fact).
pub const REPLY_DELIVERY_FAILED: &str = "reply.delivery_failed";

/// `conversation.opened` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedV1 {
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// `message` or `agent`.
    pub origin: String,
    /// The inbox's members at this moment.
    pub participants: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MailboxV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
}

/// `conversation.message_received` v1 and `reply.queued` v1: one message of the thread.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageV1 {
    pub message_id: Uuid,
    /// The conversation it belongs to (for consumers such as the notification service).
    pub conversation_id: Uuid,
    /// The inbox it came in to or is sent from.
    pub inbox_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_reply_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<MailboxV1>,
    #[serde(default)]
    pub snippet: String,
    /// Outbound: the text the agent wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// Inbound: ingest's sealed blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_blob: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_blob: Option<Uuid>,
    #[serde(default)]
    pub attachments: u32,
    /// The attachments' names, types and sizes (absent in events written before they were
    /// recorded; `attachments` still counts those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MessageFileV1>,
    /// Outbound: the HTML alternative the agent wrote, sent as multipart/alternative with
    /// `body_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_html: Option<String>,
    #[serde(default)]
    pub auto_reply: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
    /// Inbound: the body's words for the search index (from ingest's `search_words`; ADR 0026).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_words: Vec<String>,
    pub at_us: i64,
}

/// One attachment of a message. Inbound: `file_id` is ingest's sealed blob. Outbound: a row
/// of the conversation service's `conversation_reply_files` (sealed with the tenant key),
/// read by the notification service through `postvak_conversation::files` when it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFileV1 {
    pub file_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
    /// An inline part (an image the HTML refers to by `cid:`), not a download.
    #[serde(default)]
    pub inline: bool,
    /// Inbound: the part's `Content-ID` without `<>` (absent in events written before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// `conversation.note_added` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteAddedV1 {
    pub note_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Uuid>,
    pub at_us: i64,
}

/// `conversation.status_changed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChangedV1 {
    /// `open`, `pending`, `closed`, `spam`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.snoozed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnoozedV1 {
    pub until_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.woken` v1 (and other events with nothing but an actor and a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActedV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.priority_changed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityChangedV1 {
    /// `low`, `normal`, `high`, `urgent`.
    pub priority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.tagged` / `conversation.untagged` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagV1 {
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.assigned` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedV1 {
    pub assignee: Uuid,
    /// Taken by the assignee themselves.
    pub claimed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.unassigned` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnassignedV1 {
    pub previous: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.participant_added` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantAddedV1 {
    /// `user` or `inbox`.
    pub kind: String,
    pub id: Uuid,
    /// For an inbox: its members at this moment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.archived_for_inbox` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedForInboxV1 {
    pub inbox_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.moved` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedV1 {
    pub from_inbox: Uuid,
    pub to_inbox: Uuid,
    pub members: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.merged_into` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedIntoV1 {
    pub target: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `conversation.merged_from` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedFromV1 {
    pub source: Uuid,
    pub messages: Vec<Uuid>,
    pub thread_ids: Vec<String>,
    pub users: Vec<Uuid>,
    pub inboxes: Vec<Uuid>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `reply.delivery_failed` v1: the notification service gave up on an outbound reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyDeliveryFailedV1 {
    pub message_id: Uuid,
    /// `rejected` (a 5xx), `retries_exhausted`, `uncertain` (interrupted mid-send).
    pub reason: String,
    /// A refusal the relay called permanent (5xx): retrying the same mail won't help.
    pub permanent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    /// The relay's answer or the error.
    pub detail: String,
    /// The agent who wrote the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
    pub at_us: i64,
}

/// Bus topic of presence signals (ephemeral: never stored, never relayed to JetStream; ADR 0026).
pub const SIGNAL_PRESENCE: &str = "presence";

/// Someone is viewing or answering a conversation: sent between the processes of a cell as a
/// bus signal. Ids and a state only, no personal content. The receiver checks `tenant_id`
/// against its own and drops signals older than the presence TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSignalV1 {
    pub tenant_id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    /// `viewing` or `replying`.
    pub state: String,
    pub at_us: i64,
}
