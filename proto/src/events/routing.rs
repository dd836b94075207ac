//! Stored shapes of the routing service's rules, decisions and agent availability.
//!
//! Streams: `routing_rules` (`rules-<inbox>`: every rule event of one inbox, so the order is
//! one stream's), `routing_decision` (`decisions-<conversation>`: rules that fired for a
//! conversation) and `routing_availability` (`availability-<user>`).

use crate::rest::routing::{DecidedAction, RuleBody};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_RULES: &str = "routing_rules";
pub const STREAM_DECISION: &str = "routing_decision";
pub const STREAM_AVAILABILITY: &str = "routing_availability";

pub const RULE_CREATED: &str = "routing.rule_created";
pub const RULE_REPLACED: &str = "routing.rule_replaced";
pub const RULE_DELETED: &str = "routing.rule_deleted";
pub const RULES_REORDERED: &str = "routing.rules_reordered";
pub const RULE_FIRED: &str = "routing.rule_fired";
pub const NOTIFICATION_REQUESTED: &str = "routing.notification_requested";
pub const AVAILABILITY_CHANGED: &str = "routing.availability_changed";

/// `routing.rule_created` / `routing.rule_replaced` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSavedV1 {
    pub rule_id: Uuid,
    pub inbox_id: Uuid,
    pub rule: RuleBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `routing.rule_deleted` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDeletedV1 {
    pub rule_id: Uuid,
    pub inbox_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `routing.rules_reordered` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesReorderedV1 {
    pub inbox_id: Uuid,
    pub rule_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `routing.rule_fired` v1: a rule's conditions held for a conversation and these actions
/// were decided (recorded before they are applied, so a retry applies the same decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFiredV1 {
    pub rule_id: Uuid,
    pub rule_name: String,
    pub inbox_id: Uuid,
    pub conversation_id: Uuid,
    /// The conversation event that triggered the evaluation.
    pub trigger_event_id: Uuid,
    /// `opened`, `message` or `reassign`.
    pub trigger: String,
    pub actions: Vec<DecidedAction>,
    pub at_us: i64,
}

/// `routing.notification_requested` v1: a rule asks for people to be told (for the
/// notification service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequestedV1 {
    pub rule_id: Uuid,
    pub inbox_id: Uuid,
    pub conversation_id: Uuid,
    pub users: Vec<Uuid>,
    pub message: String,
    pub at_us: i64,
}

/// `routing.availability_changed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityChangedV1 {
    pub user_id: Uuid,
    /// `online`, `away`, `out_of_office`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}
