//! REST DTOs of contacts (`/v1/contacts…`).

use crate::rest::conversation::{Conversation, ConversationDetail};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// An external person: a sender or recipient of the tenant's mail. After erasure only `id`,
/// `status` (`erased`) and the times remain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Contact {
    pub id: Uuid,
    /// `active` or `erased` (a merged contact answers 410 naming the survivor).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Normalised (trimmed, lower-cased) addresses.
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    pub vip: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Conversations the contact took part in (as sender or recipient).
    pub conversation_count: u64,
    /// The contact's stream version (also its `ETag`).
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A page of contacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactPage {
    pub items: Vec<Contact>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/contacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContact {
    #[serde(default)]
    pub name: Option<String>,
    /// At least one; no other contact may hold any of them.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub organisation: Option<String>,
    #[serde(default)]
    pub vip: bool,
    #[serde(default)]
    pub notes: Option<String>,
}

/// Body of `PATCH /v1/contacts/{contact_id}`: the fields given are replaced (an empty string
/// clears a text field); `addresses`, when given, is the complete new list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContact {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    #[serde(default)]
    pub organisation: Option<String>,
    #[serde(default)]
    pub vip: Option<bool>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// Body of `POST /v1/contacts/{contact_id}/merge`: this contact is a duplicate of `into`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeContact {
    pub into: Uuid,
}

/// 410 `contact_merged`: the contact was merged into `merged_into`; ask for that one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactMergedProblem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub merged_into: Uuid,
}

/// The original message as received, when ingest still holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedEml {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// The raw RFC 5322 message, base64 (standard alphabet); absent when not `available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eml_base64: Option<String>,
    pub available: bool,
    /// Why it is missing, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A file an agent attached to a reply in one of the contact's conversations, with its
/// content, in an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedFile {
    /// The attachment's id (`attachment_list[].id` of its message).
    pub file_id: Uuid,
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
    /// The content, base64 (standard alphabet); absent when not `available`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    pub available: bool,
    /// Why it is missing, when it is (e.g. removed when a contact of the conversation was
    /// erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/contacts/{contact_id}/export`: everything kept about a contact (GDPR access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactExport {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub exported_at: OffsetDateTime,
    pub contact: Contact,
    /// The contact's conversations with their messages and internal notes.
    pub conversations: Vec<ConversationDetail>,
    /// The original `.eml` of every inbound message of those conversations.
    pub original_messages: Vec<ExportedEml>,
    /// The files agents attached to replies in those conversations, with their content
    /// (inbound attachments are inside `original_messages`).
    #[serde(default)]
    pub reply_files: Vec<ExportedFile>,
    /// What the export could not include, said plainly.
    pub notes: Vec<String>,
}

/// `GET /v1/contacts/{contact_id}/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactConversations {
    pub items: Vec<Conversation>,
}
