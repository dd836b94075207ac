//! The IMAP connector: mail from IMAP accounts, one or more per inbox, through the same
//! pipeline as SMTP ([`crate::Ingestor`], `Source::Imap`).
//!
//! - Accounts are managed over `/v1/inboxes/{inbox_id}/imap-accounts` ([`api`]); the login is
//!   sealed with the tenant key in `imap_accounts` (migration 0011), never an event, never
//!   printed.
//! - [`ImapConnector::start`] runs one supervisor per cell, which runs one task per enabled
//!   account (syncing at most `max_concurrent_accounts` at once) and follows accounts being
//!   created, changed and deleted.
//! - The sync is UID-based: `UID FETCH <last+1>:*` with `BODY.PEEK[]`, so the source is left
//!   as it was unless `after_import` says otherwise. The position (UIDVALIDITY, last UID) is
//!   written only after the pipeline committed the message, so a crash re-imports at most the
//!   message in flight, which the pipeline's dedupe turns into a no-op: exactly once as a
//!   user sees it (ADR 0010). A new UIDVALIDITY restarts the folder from its first message.
//! - A message that is too large, malformed, or that the pipeline keeps refusing while the
//!   database answers is quarantined (recorded with its UID and reason, logged with code
//!   `imap_message_quarantined`) and the sync goes on; a database that does not answer stops
//!   the account, which retries with backoff from where it was.

pub mod api;
mod client;
pub(crate) mod store;
mod sync;

pub use sync::{ImapConnector, ReimportError, SyncReport};

use std::fmt;
use uuid::Uuid;

/// A password or access token: never printed.
pub type Secret = postvak_platform::config::SecretString;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (port 993).
    Tls,
    /// Plain TCP upgraded with `STARTTLS` before logging in (port 143).
    StartTls,
    /// No encryption: only when the operator allows it (`imap.allow_plaintext`).
    Plain,
}

impl TlsMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tls" => Some(Self::Tls),
            "starttls" => Some(Self::StartTls),
            "plain" => Some(Self::Plain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::StartTls => "starttls",
            Self::Plain => "plain",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::Tls => 993,
            Self::StartTls | Self::Plain => 143,
        }
    }
}

/// How we log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// `LOGIN user password`.
    Password,
    /// `AUTHENTICATE XOAUTH2` with an access token the tenant supplies (no refresh here).
    XOAuth2,
}

impl AuthKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "password" => Some(Self::Password),
            "xoauth2" => Some(Self::XOAuth2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::XOAuth2 => "xoauth2",
        }
    }
}

/// What happens at the source once a message was imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterImport {
    /// Nothing: the source is never changed (the default).
    Keep,
    /// Set `\Seen`.
    MarkSeen,
    /// Move to another folder (`MOVE`, or `COPY` + `\Deleted` + `UID EXPUNGE`).
    Move(String),
    /// Set `\Deleted` and expunge it.
    Delete,
}

impl AfterImport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keep" => Some(Self::Keep),
            "mark_seen" => Some(Self::MarkSeen),
            "delete" => Some(Self::Delete),
            _ => s
                .strip_prefix("move:")
                .filter(|f| valid_folder(f))
                .map(|f| Self::Move(f.to_owned())),
        }
    }
}

impl fmt::Display for AfterImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keep => f.write_str("keep"),
            Self::MarkSeen => f.write_str("mark_seen"),
            Self::Move(folder) => write!(f, "move:{folder}"),
            Self::Delete => f.write_str("delete"),
        }
    }
}

/// A folder name we can send quoted: printable, no quotes, backslashes or control characters.
pub fn valid_folder(f: &str) -> bool {
    !f.is_empty() && f.len() <= 255 && f.chars().all(|c| !c.is_control() && c != '"' && c != '\\')
}

/// Username and password or access token.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &self.secret)
            .finish()
    }
}

/// An account as the connector uses it (login opened).
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub tenant: postvak_platform::store::TenantId,
    pub id: Uuid,
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub auth: AuthKind,
    pub credentials: Credentials,
    pub folder: String,
    pub after_import: AfterImport,
    pub enabled: bool,
    pub revision: i64,
}
