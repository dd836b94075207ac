//! REST DTOs of the conversation service (`/v1/conversations…`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A name and an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Mailbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
}

/// An inbox taking part in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationInbox {
    pub inbox_id: Uuid,
    /// Archived from this inbox's view (still live for the other participants).
    pub archived: bool,
}

/// A conversation as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    /// The inbox it belongs to.
    pub inbox_id: Uuid,
    /// `open`, `pending`, `closed`, `spam`.
    pub status: String,
    /// `low`, `normal`, `high`, `urgent`.
    pub priority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Uuid>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The start of the latest message.
    pub snippet: String,
    /// The customer side: who replies go to by default.
    pub contacts: Vec<Mailbox>,
    /// Participant users (snapshot of the inbox's members when it started, plus those added).
    pub participants: Vec<Uuid>,
    pub inboxes: Vec<ConversationInbox>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub snoozed_until: Option<OffsetDateTime>,
    pub message_count: u64,
    pub note_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// The stream version: the `ETag`; send it back as `If-Match` with a change.
    pub version: u64,
}

/// A page of conversations, newest change first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<Conversation>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationMessage {
    pub id: Uuid,
    /// `inbound` or `outbound` (a reply sent as the inbox: the shared mailbox's sent item).
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub from: Vec<Mailbox>,
    pub to: Vec<Mailbox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    pub snippet: String,
    /// Outbound: the text written. Inbound bodies are blobs of the ingest service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// Inbound: the text body, at `GET /v1/conversations/{id}/files/{text_blob_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_blob_id: Option<Uuid>,
    /// Inbound: the HTML body, at `GET /v1/conversations/{id}/files/{html_blob_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_blob_id: Option<Uuid>,
    pub attachments: u32,
    /// The attachments: name, type and size (empty for messages recorded before these were
    /// kept; `attachments` still counts them). Each one's content is at
    /// `GET /v1/conversations/{id}/files/{attachment id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_list: Vec<MessageAttachment>,
    /// Outbound: the HTML alternative, when the agent wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_reply_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Outbound: the agent who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
    pub auto_reply: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Outbound: how its delivery stands (absent on inbound messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<MessageDelivery>,
}

/// An attachment of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageAttachment {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
    /// An inline part (an image the HTML refers to by `cid:`), not a download.
    pub inline: bool,
    /// Inbound: the part's `Content-ID` without `<>`: an HTML body's `cid:<content_id>`
    /// refers to this file (`GET /v1/conversations/{id}/files/{file id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// The bytes of a file of a conversation, exactly as stored (`GET …/files/{file_id}`,
/// `GET …/messages/{message_id}/raw`). Not JSON: the response's `Content-Type` is the file's
/// own, so the schema says only that the body is the file's content.
#[derive(Debug, Clone, Copy)]
pub struct FileContent;

impl utoipa::PartialSchema for FileContent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some(
                "The file's bytes; `Content-Type` is the file's own type",
            ))
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for FileContent {}

/// The delivery of an outbound message as the notification service reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageDelivery {
    /// `queued` (not reported yet: waiting, being sent or retried), `sent` (the relay accepted
    /// it) or `failed` (given up: see `reason`).
    pub state: String,
    /// Failed: `rejected` (a permanent 5xx), `retries_exhausted`, `uncertain` (interrupted
    /// while sending; it may or may not have gone out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    /// The relay's answer or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<OffsetDateTime>,
}

/// An internal note (never sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Note {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Uuid>,
    pub body: String,
    pub mentions: Vec<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// A conversation with its messages and notes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub messages: Vec<ConversationMessage>,
    pub notes: Vec<Note>,
}

/// Body of `POST /v1/conversations`: an agent writes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub inbox_id: Uuid,
    pub to: Vec<Mailbox>,
    #[serde(default)]
    pub cc: Vec<Mailbox>,
    pub subject: String,
    pub body: String,
}

/// Body of `POST /v1/conversations/{id}/replies`. Sent from the inbox's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReply {
    pub body: String,
    /// Default: the sender (or `Reply-To`) of the latest inbound message.
    #[serde(default)]
    pub to: Vec<Mailbox>,
    #[serde(default)]
    pub cc: Vec<Mailbox>,
    /// Default: `Re: ` + the conversation's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The template the reply was written from (a template of the tenant or of the
    /// conversation's inbox); counted as template use in `GET /v1/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    /// The shared draft this reply was written in: it is removed once the reply is queued,
    /// and a suggested one counts as accepted (`draft.suggestion_accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_id: Option<Uuid>,
    /// An HTML alternative of `body`: the mail is then multipart/alternative (text and HTML).
    /// `body` and `body_html` together at most 512 KiB (413 `reply_body_too_large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_html: Option<String>,
    /// Files sent with the reply (multipart/mixed), at most 20 and 10 MiB decoded in all
    /// (413 `attachments_too_large`); stored sealed, shown on the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<NewAttachment>,
}

/// A file attached to a reply, inline as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAttachment {
    /// 1–255 characters, no control characters, slashes or backslashes
    /// (422 `invalid_attachment_filename`).
    pub filename: String,
    /// A MIME type `type/subtype`, e.g. `application/pdf`, without parameters
    /// (422 `invalid_attachment_content_type`).
    pub content_type: String,
    /// The content, standard base64 with padding (422 `invalid_attachment_base64`).
    pub content_base64: String,
}

/// Body of `POST /v1/conversations/{id}/notes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNote {
    pub body: String,
    /// Users mentioned (`@`): they are notified.
    #[serde(default)]
    pub mentions: Vec<Uuid>,
}

/// Body of `PUT /v1/conversations/{id}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    /// `open`, `pending`, `closed`, `spam`.
    pub status: String,
}

/// Body of `PUT /v1/conversations/{id}/snooze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Snooze {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: OffsetDateTime,
}

/// Body of `PUT /v1/conversations/{id}/priority`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriority {
    /// `low`, `normal`, `high`, `urgent`.
    pub priority: String,
}

/// Body of `POST /v1/conversations/{id}/tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTag {
    pub tag: String,
}

/// Body of `PUT /v1/conversations/{id}/assignee`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    pub user_id: Uuid,
}

/// Body of `POST /v1/conversations/{id}/participants`: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddParticipant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
}

/// Body of `POST /v1/conversations/{id}/archive`: archive from this inbox's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveForInbox {
    pub inbox_id: Uuid,
}

/// Body of `POST /v1/conversations/{id}/move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveConversation {
    pub inbox_id: Uuid,
}

/// Body of `POST /v1/conversations/{id}/merge`: merge this conversation into `into`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeConversation {
    pub into: Uuid,
}

/// One change of a conversation (as listed in a `stale_conversation` problem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationChange {
    pub version: u64,
    /// The event type, e.g. `conversation.message_received`, `reply.queued`.
    pub change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// 409 `stale_conversation`: the conversation changed since the version in `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StaleConversationProblem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub current_version: u64,
    /// What happened after the version the client saw.
    pub changes: Vec<ConversationChange>,
    /// The messages that arrived or were sent since.
    pub new_messages: Vec<ConversationMessage>,
}

/// 409 `conversation_claimed`: someone else holds the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimedProblem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// The user who holds it.
    pub holder: Uuid,
}

/// Body of `POST /v1/conversations/{id}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPresence {
    /// `viewing` or `replying`.
    pub state: String,
}

/// `event: conversation` on `/v1/stream`: a conversation the caller may read changed. The
/// SSE `id` is the position in the event log (send it back as `Last-Event-ID` to resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationStreamEvent {
    pub conversation_id: Uuid,
    /// The conversation's version after the change (its new `ETag`).
    pub version: u64,
    /// The event type, e.g. `conversation.note_added`.
    pub change: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// `event: presence` on `/v1/stream`: someone else is looking at or answering a conversation
/// the caller may read. Ephemeral: not kept, not replayed on resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PresenceStreamEvent {
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    /// `viewing` or `replying`.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// A shared draft of a reply: visible to everyone who may read the conversation, edited by one
/// person at a time (the lock expires by itself). `ETag` = `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Draft {
    pub id: Uuid,
    pub conversation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<Uuid>,
    /// Who may edit it now (a machine caller holds it as the nil id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<Uuid>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lock_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// Made from a draft provider's suggestion (stays so after edits; ADR 0016).
    #[serde(default)]
    pub suggested: bool,
    /// The draft provider that suggested it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_by: Option<Uuid>,
}

/// Body of `POST /v1/conversations/{id}/drafts` and `PUT …/drafts/{draft_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveDraft {
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default)]
    pub to: Vec<Mailbox>,
    #[serde(default)]
    pub cc: Vec<Mailbox>,
}

/// The drafts of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DraftList {
    pub items: Vec<Draft>,
}

/// 409 `draft_locked`: someone else is editing the draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DraftLockedProblem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    pub holder: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

/// A reply template of the tenant (no `inbox_id`) or of one inbox. `{{contact.name}}`,
/// `{{agent.name}}`, `{{agent.signature}}` and `{{inbox.name}}` are filled in when used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Body of `POST /v1/templates` and `PUT /v1/templates/{id}` (the inbox can't change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveTemplate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    /// Omitted: a template of the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
}

/// Templates the caller may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<Template>,
}

/// A template filled in for one conversation and agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenderedTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
}
