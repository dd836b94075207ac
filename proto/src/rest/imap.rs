//! REST DTOs of the IMAP connector (`/v1/inboxes/{inbox_id}/imap-accounts…`, ingest).
//! Secrets (password, access token) are accepted on create and update and never returned.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A new IMAP account whose mail is imported into the inbox.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImapAccount {
    pub host: String,
    /// Default: 993 for `tls`, 143 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tls` (implicit TLS, the default), `starttls`, or `plain` (only where the operator
    /// allowed it: loopback tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    pub username: String,
    /// `password` (the default) or `xoauth2` (the secret is an OAuth 2 access token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The password or access token. Never returned.
    pub secret: String,
    /// Default `INBOX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// `keep` (the default: never change the source), `mark_seen`, `move:<folder>` or
    /// `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_import: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for CreateImapAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateImapAccount")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .field("folder", &self.folder)
            .field("after_import", &self.after_import)
            .finish_non_exhaustive()
    }
}

/// Changes to an account; absent fields stay as they are. Changing the host, username or
/// folder keeps the sync position only if the server's UIDVALIDITY still matches.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateImapAccount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_import: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for UpdateImapAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateImapAccount")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .field("folder", &self.folder)
            .field("after_import", &self.after_import)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// An IMAP account and where its sync stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImapAccount {
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub username: String,
    pub auth: String,
    pub folder: String,
    pub after_import: String,
    pub enabled: bool,
    pub sync: ImapSyncStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// The connector's view of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImapSyncStatus {
    /// `pending` (not synced yet), `syncing`, `idle` (waiting for new mail), `error` (backing
    /// off; see `last_error`) or `disabled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_validity: Option<u32>,
    /// The highest UID imported or quarantined: the sync continues after it.
    pub last_uid: u32,
    /// Messages imported (duplicates of mail already in the inbox count too).
    pub imported: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync_at: Option<OffsetDateTime>,
    /// Messages set aside (newest first, at most 100) so the others could be imported.
    pub quarantined: Vec<QuarantinedMessage>,
}

/// A message the connector could not import and skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuarantinedMessage {
    pub uid_validity: u32,
    pub uid: u32,
    /// `too_large`, `malformed` or `pipeline_failed`.
    pub reason: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub quarantined_at: OffsetDateTime,
    /// Set once the message was imported by request
    /// (`POST …/quarantine/{uid_validity}/{uid}/reimport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reimported: Option<ReimportedMessage>,
}

/// A quarantined message imported by request. Asking again answers the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReimportedMessage {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// The inbox already had this mail: nothing new was stored.
    pub duplicate: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub reimported_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImapAccountList {
    pub items: Vec<ImapAccount>,
}
