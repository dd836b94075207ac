//! REST DTOs of the routing service's rules (`/v1/inboxes/{id}/rules`), dry-run and agent
//! availability (`/v1/users/{id}/availability`).
//!
//! [`RuleBody`] is also the payload of the stored `routing.rule_created` /
//! `routing.rule_replaced` v1 events: a change to it is a change to a stored shape (add a
//! `…V2` event and upcast).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

fn yes() -> bool {
    true
}

fn opened() -> Vec<String> {
    vec!["opened".to_owned()]
}

fn all() -> String {
    "all".to_owned()
}

/// A condition of a rule. Text comparisons ignore case; word lists match whole words (an
/// entry with spaces or punctuation matches as a phrase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleCondition {
    /// The sender's address is one of `values`.
    SenderAddress {
        values: Vec<String>,
    },
    /// The sender's domain (or a subdomain of it) is one of `values`.
    SenderDomain {
        values: Vec<String>,
    },
    /// One of `values` is among the To/Cc recipients.
    Recipient {
        values: Vec<String>,
    },
    SubjectWords {
        values: Vec<String>,
    },
    BodyWords {
        values: Vec<String>,
    },
    /// A regular expression (Rust `regex` syntax, case-insensitive, at most 512 bytes).
    SubjectRegex {
        pattern: String,
    },
    BodyRegex {
        pattern: String,
    },
    /// The sender is a VIP: `values` holds addresses and `@domain` entries.
    Vip {
        values: Vec<String>,
    },
    /// The sender's address belongs to a contact marked VIP (`PATCH /v1/contacts/{id}` with
    /// `"vip": true`). Follows the contacts: unmarking, merging and erasing a contact take
    /// effect for mail that arrives afterwards. Written `{"type": "vip_contact"}`.
    VipContact {},
    /// The conversation has one of these tags.
    Tags {
        values: Vec<String>,
    },
    /// `smtp`, `imap`, `api` or `agent`.
    Channel {
        values: Vec<String>,
    },
    /// Inside (`true`) or outside the inbox's business hours, in its time zone.
    BusinessHours {
        inside: bool,
    },
    /// Minutes since the customer's last message.
    SinceCustomer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least_minutes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most_minutes: Option<u64>,
    },
    /// Minutes since an agent's last reply (never replied = longer than any bound).
    SinceAgent {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least_minutes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most_minutes: Option<u64>,
    },
}

/// An action of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleAction {
    AssignUser {
        user: Uuid,
    },
    /// `round_robin` or `least_loaded` within `team`; `skill_match`: the least-loaded member
    /// of the teams with `skill` (only `team` when given). Unavailable or full agents are
    /// skipped.
    AssignTeam {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<Uuid>,
        strategy: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skill: Option<String>,
    },
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
    /// Replies with a template — never to an auto-reply or a bounce.
    AutoReply {
        template_id: Uuid,
    },
    Close,
    /// Emits `routing.notification_requested` for these users.
    Notify {
        users: Vec<Uuid>,
        message: String,
    },
}

/// A rule as written (create and replace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `opened` (a new conversation) and/or `message` (a further inbound message).
    #[serde(default = "opened")]
    pub triggers: Vec<String>,
    /// `all` conditions must hold, or `any`.
    #[serde(default = "all", rename = "match")]
    pub match_mode: String,
    #[serde(default)]
    pub conditions: Vec<RuleCondition>,
    pub actions: Vec<RuleAction>,
    /// A fired rule with this flag ends the evaluation.
    #[serde(default)]
    pub stop_processing: bool,
}

/// A rule of an inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    pub id: Uuid,
    pub inbox_id: Uuid,
    /// 0-based place in the inbox's order.
    pub position: u32,
    // The fields of [`RuleBody`], written out rather than flattened: `RuleBody` refuses
    // unknown fields, and a flattened strict part would make the OpenAPI `allOf` forbid
    // `id`, `position`, … in every response.
    pub name: String,
    pub enabled: bool,
    pub triggers: Vec<String>,
    #[serde(rename = "match")]
    pub match_mode: String,
    pub conditions: Vec<RuleCondition>,
    pub actions: Vec<RuleAction>,
    pub stop_processing: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: time::OffsetDateTime,
}

/// The inbox's rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleList {
    pub items: Vec<Rule>,
}

/// Body of `POST /v1/inboxes/{inbox_id}/rules/reorder`: every rule of the inbox, once, in the
/// new order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderRules {
    pub rule_ids: Vec<Uuid>,
}

/// A message to try the inbox's rules on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `smtp` (default), `imap`, `api` or `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `opened` (default) or `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Evaluate as of this instant (default: now).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<time::OffsetDateTime>,
}

/// An action a rule decided, with its assignment resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DecidedAction {
    Assign {
        user: Uuid,
    },
    /// A team assignment found nobody online with room.
    NoAssignee {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        team: Option<Uuid>,
        strategy: String,
    },
    AddTag {
        tag: String,
    },
    SetPriority {
        priority: String,
    },
    AddParticipantUser {
        user: Uuid,
    },
    AddParticipantInbox {
        inbox: Uuid,
    },
    AutoReply {
        template_id: Uuid,
    },
    Close,
    Notify {
        users: Vec<Uuid>,
        message: String,
    },
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FiredRule {
    pub rule_id: Uuid,
    pub name: String,
    pub actions: Vec<DecidedAction>,
}

/// What the inbox's rules would do; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DryRunResult {
    pub fired: Vec<FiredRule>,
    pub in_business_hours: bool,
    /// The sender's address belongs to a VIP contact (what `vip_contact` conditions see).
    pub sender_is_vip_contact: bool,
}

/// An agent's availability for assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Availability {
    pub user_id: Uuid,
    /// `online`, `away` or `out_of_office`.
    pub status: String,
    /// Most open assigned conversations (none = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Open conversations assigned now.
    pub open_assigned: u32,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<time::OffsetDateTime>,
}

/// Body of `PUT /v1/users/{user_id}/availability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAvailability {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// With `out_of_office` or `away`: reassign the agent's open conversations now.
    #[serde(default)]
    pub reassign: bool,
}

/// One conversation taken from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reassigned {
    pub conversation_id: Uuid,
    /// The new assignee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Uuid>,
    /// `reassigned`; `no_one_available` (nobody online with room: kept as it was) or
    /// `no_assignment_rule` (the inbox has no rule assigning within a team: kept).
    pub outcome: String,
}

/// What a reassignment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReassignResult {
    pub items: Vec<Reassigned>,
}
