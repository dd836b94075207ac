//! Stored shapes of what agents did around a conversation that is not a change of it: a reply
//! or note refused because it was written against a stale view (409 `stale_conversation`), and
//! a reply written from a template. Owned by the conversation service; counted by the routing
//! service's metrics (ADR 0014).
//!
//! Stream `conversation_activity`, one stream per fact (`refused-<event id>`,
//! `template-<message id>`) appended with `NoStream`: appends never contend with each other or
//! with the conversation's own stream, and a repeat of the same reply cannot count twice.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_ACTIVITY: &str = "conversation_activity";

pub const STALE_WRITE_REFUSED: &str = "conversation.stale_write_refused";
pub const TEMPLATE_USED: &str = "conversation.template_used";

/// `conversation.stale_write_refused` v1: a reply or note sent with `If-Match: seen_version`
/// while the conversation was already at `current_version` — a duplicate reply prevented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleWriteRefusedV1 {
    pub conversation_id: Uuid,
    /// `reply` or `note`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub seen_version: u64,
    pub current_version: u64,
    pub at_us: i64,
}

/// `conversation.template_used` v1: the reply `message_id` was written from `template_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateUsedV1 {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub template_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub at_us: i64,
}
