//! Commands the conversation service serves for other services (routing rules, timers).
//!
//! `conversation.apply` ([`APPLY`]): apply a list of actions to one conversation on behalf of
//! an automatic cause. The conversation service owns its streams; the events it appends carry
//! `actor = "<kind>:<cause id>"` and `causation_id = cause id` in their metadata, so the audit
//! trail names the rule or timer that decided.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Service name the conversation service serves commands under.
pub const SERVICE: &str = "conversation";
/// Command name of [`ApplyV1`].
pub const APPLY: &str = "apply";

/// Stable `code`s of `conversation.apply` refusals (`CommandReply::Err`).
pub mod codes {
    /// 404: no such conversation for the tenant.
    pub const NOT_FOUND: &str = "conversation_not_found";
    /// 409: the conversation was merged into another one.
    pub const MERGED: &str = "conversation_merged";
    /// 409: the conversation is closed and the actions don't reopen it.
    pub const CLOSED: &str = "conversation_closed";
    /// 422: an action the conversation refuses (bad tag, unknown status, …).
    pub const INVALID_ACTION: &str = "invalid_action";
    /// 422: the auto-reply template does not exist or is not usable for the inbox.
    pub const TEMPLATE_NOT_FOUND: &str = "template_not_found";
}

/// What caused an automatic change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKindV1 {
    Rule,
    Timer,
}

impl CauseKindV1 {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rule => "rule",
            Self::Timer => "timer",
        }
    }
}

/// The rule or timer on whose behalf the actions are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseV1 {
    pub kind: CauseKindV1,
    pub id: Uuid,
    pub name: String,
}

impl CauseV1 {
    /// The `actor` written into the resulting events' metadata: `rule:<uuid>` / `timer:<uuid>`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

/// One action on a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionV1 {
    Assign {
        user: Uuid,
    },
    Unassign,
    AddTag {
        tag: String,
    },
    /// `low`, `normal`, `high`, `urgent`.
    SetPriority {
        priority: String,
    },
    AddParticipantUser {
        user: Uuid,
    },
    AddParticipantInbox {
        inbox: Uuid,
    },
    /// `open`, `pending`, `closed`, `spam`.
    SetStatus {
        status: String,
    },
    /// Ends a snooze whose time has come.
    Wake,
    /// Replies as the inbox with a rendered template — never to an auto-reply or a bounce.
    AutoReply {
        template_id: Uuid,
    },
    /// An internal note.
    Note {
        body: String,
    },
}

/// `conversation.apply` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyV1 {
    pub conversation_id: Uuid,
    pub actions: Vec<ActionV1>,
    pub cause: CauseV1,
    /// The event that set the cause off (kept as the events' `correlation_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_event_id: Option<Uuid>,
}

/// Why an action changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedV1 {
    /// Index into `actions`.
    pub index: u32,
    /// `no_change`, `auto_reply_suppressed`, `already_participant`, `not_snoozed`,
    /// `snooze_not_over`, `no_recipient`.
    pub reason: String,
}

/// The `Ok` reply of `conversation.apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReplyV1 {
    pub conversation_id: Uuid,
    /// The conversation's version after the change.
    pub version: u64,
    /// Indexes into `actions` of those that changed something.
    pub changed: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedV1>,
}
