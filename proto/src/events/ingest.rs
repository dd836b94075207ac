//! Stored shapes of the ingest service: `message.received` on `inbound_message` streams, and the
//! REST reply of the raw-MIME endpoint.
//!
//! One stream per delivered message and inbox, named after a blind index of
//! `(inbox, Message-ID, content hash)`: the event store's `(tenant, stream, version)` key is what
//! makes a second delivery of the same mail a no-op. The payload holds personal data (addresses,
//! subject, Message-IDs); the store seals every payload, so nothing here is plaintext at rest.
//! Bodies and attachments are never inline: they are sealed blobs referenced by id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_INBOUND_MESSAGE: &str = "inbound_message";

pub const MESSAGE_RECEIVED: &str = "message.received";

/// `message.received` v1: a mail was accepted for one inbox. The conversation service creates
/// or extends `conversation_id` from it; ingest decided the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceivedV1 {
    /// Our id for this inbound message (UUIDv7).
    pub message_id: Uuid,
    pub inbox_id: Uuid,
    pub conversation_id: Uuid,
    /// `true` when no earlier message of the inbox matched: `conversation_id` is new.
    pub new_thread: bool,
    /// What threaded it: `reply_token`, `own_message_id`, `in_reply_to`, `references`,
    /// `message_id` (a message seen earlier referenced this one) or `none`.
    pub thread_match: String,
    /// `smtp`, `api` or `imap`.
    pub source: String,
    /// Unix time in microseconds.
    pub received_at_us: i64,
    /// The message exactly as received.
    pub raw: BlobRefV1,
    /// SHA-256 (hex) of the message without its trace headers: with the Message-ID, the key
    /// that deduplicates deliveries.
    pub content_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_reply_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    pub headers: HeaderSummaryV1,
    pub envelope: EnvelopeV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_body: Option<BlobRefV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_body: Option<BlobRefV1>,
    /// The first characters of the text, for lists.
    #[serde(default)]
    pub snippet: String,
    /// The distinct words of the whole text (or of the text rendered from HTML) that search
    /// indexes, lower case, in order of first appearance, bounded (ADR 0026). Sealed with the
    /// rest of the payload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentV1>,
    pub flags: MessageFlagsV1,
    /// Results parsed from `Authentication-Results` headers (no live DNS checks are made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_results: Vec<AuthResultV1>,
}

/// A sealed blob of the tenant (ingest's `ingest_blobs` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRefV1 {
    pub blob_id: Uuid,
    pub size: u64,
    /// SHA-256 (hex) of the plaintext.
    pub sha256: String,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentV1 {
    pub blob: BlobRefV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// An inline part (an image the HTML refers to by `cid:`), not a download.
    pub inline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MailboxV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The headers a conversation view needs, decoded (RFC 2047, charsets).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderSummaryV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<MailboxV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<MailboxV1>,
    /// The `Date` header as RFC 3339, when it parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<String>,
}

/// How the mail reached us.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvelopeV1 {
    /// `MAIL FROM` (empty for bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<String>,
    /// The `RCPT TO` that selected this inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcpt_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageFlagsV1 {
    /// `Auto-Submitted` other than `no`, `X-Autoreply`, `X-Autorespond`,
    /// `Precedence: auto_reply`: never answer it.
    pub auto_reply: bool,
    /// A delivery status notification (`multipart/report; report-type=delivery-status`) or a
    /// null reverse path with a DSN-looking body.
    pub bounce: bool,
    /// `Precedence: bulk/list/junk` or a `List-Id`.
    pub bulk: bool,
    /// The MIME structure did not parse; only the raw message is kept.
    pub unparsed: bool,
    /// A part was in an unknown or broken charset or transfer encoding.
    pub encoding_problem: bool,
}

/// One `method=result` of an `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResultV1 {
    /// The `authserv-id` of the header.
    pub authserv_id: String,
    /// `spf`, `dkim`, `dmarc`, `arc`, …
    pub method: String,
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`, …
    pub result: String,
}

/// The REST reply to `POST /v1/inboxes/{inbox_id}/messages/raw`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RawMessageAccepted {
    /// Our id of the stored message.
    pub message_id: Uuid,
    pub inbox_id: Uuid,
    pub conversation_id: Uuid,
    /// A new conversation was started.
    pub new_thread: bool,
    /// The same mail was already stored for this inbox: nothing new was written.
    pub duplicate: bool,
}

/// The audit trail of an IMAP account's settings: one stream per account
/// (`imap-<account id>`), appended in the transaction that changes the account's row, with the
/// caller as the event's actor. Never the password or token (ADR 0004: secrets are not events);
/// a replaced secret shows only as `"secret"` in `changed`.
pub const STREAM_IMAP_ACCOUNT: &str = "imap_account";

pub const IMAP_ACCOUNT_CREATED: &str = "imap.account_created";
pub const IMAP_ACCOUNT_UPDATED: &str = "imap.account_updated";
pub const IMAP_ACCOUNT_DELETED: &str = "imap.account_deleted";
/// A quarantined message was imported by request (`POST …/quarantine/{uid_validity}/{uid}/reimport`).
pub const IMAP_MESSAGE_REIMPORTED: &str = "imap.message_reimported";

/// An IMAP account's settings as audited (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapAccountSettingsV1 {
    pub account_id: Uuid,
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    /// `tls`, `starttls` or `plain`.
    pub tls: String,
    /// `password` or `xoauth2`.
    pub auth: String,
    pub username: String,
    pub folder: String,
    pub after_import: String,
    pub enabled: bool,
}

/// `imap.account_created` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapAccountCreatedV1 {
    pub account: ImapAccountSettingsV1,
}

/// `imap.account_updated` v1: the settings after the change, and which fields changed
/// (`host`, `port`, `tls`, `auth`, `username`, `secret`, `folder`, `after_import`, `enabled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapAccountUpdatedV1 {
    pub account: ImapAccountSettingsV1,
    pub changed: Vec<String>,
    /// The sync position was reset (another server, login or folder).
    pub position_reset: bool,
}

/// `imap.account_deleted` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapAccountDeletedV1 {
    pub account_id: Uuid,
    pub inbox_id: Uuid,
}

/// `imap.message_reimported` v1: a quarantined message was fetched again and delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapMessageReimportedV1 {
    pub account_id: Uuid,
    pub uid_validity: u32,
    pub uid: u32,
    /// The delivered message (the first delivery's id when it was already stored).
    pub message_id: Uuid,
    pub duplicate: bool,
}
