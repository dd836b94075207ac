//! Stored shapes of draft suggestions (ADR 0016), on the conversation service's own
//! `draft_suggestion` stream, one stream per suggested draft (`suggestion-<draft uuid>`):
//! `draft.suggested` when a provider's suggestion became a draft, then at most one
//! `draft.suggestion_accepted` when a reply was sent from that draft. Metrics count
//! acceptance as accepted / suggested. Times are Unix microseconds.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_DRAFT_SUGGESTION: &str = "draft_suggestion";

pub const DRAFT_SUGGESTED: &str = "draft.suggested";
pub const SUGGESTION_ACCEPTED: &str = "draft.suggestion_accepted";

/// `draft.suggested` v1 (no content: the draft holds it, outside the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftSuggestedV1 {
    pub draft_id: Uuid,
    pub provider_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// The customer message that asked for it.
    pub message_id: Uuid,
    pub at_us: i64,
}

/// `draft.suggestion_accepted` v1: a reply was sent from a suggested draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestionAcceptedV1 {
    pub draft_id: Uuid,
    pub provider_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// The reply sent.
    pub reply_id: Uuid,
    /// Whether someone changed the draft before sending (its version moved past 1).
    pub edited: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}
