//! REST DTOs of the routing service's SLA policies (`/v1/inboxes/{id}/sla-policy`), timer
//! settings (`/v1/inboxes/{id}/automation`) and metrics (`/v1/metrics`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// Targets in business seconds (counted in the inbox's business hours and time zone).
///
/// Flattened into [`PutSlaPolicy`], so neither struct says `deny_unknown_fields` (serde does
/// not support it with `flatten`, and the OpenAPI `allOf` would forbid each part's fields to
/// the other): the API checks unknown fields itself ([`PutSlaPolicy::unknown_fields`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SlaTargets {
    /// From the first customer message to the first agent reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_response_secs: Option<i64>,
    /// From a customer message after an agent reply to the next agent reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_response_secs: Option<i64>,
    /// From opening to closing; paused while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution_secs: Option<i64>,
}

/// An inbox's SLA policy, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PutSlaPolicy {
    pub name: String,
    #[serde(flatten)]
    pub targets: SlaTargets,
    /// Overrides per priority (`low`, `normal`, `high`, `urgent`), clock by clock.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_priority: BTreeMap<String, SlaTargets>,
    /// Warn when this fraction of a target has elapsed (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
    /// Local dates (`YYYY-MM-DD`) without business hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<String>,
}

/// An inbox's SLA policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlaPolicy {
    pub id: Uuid,
    pub inbox_id: Uuid,
    #[serde(flatten)]
    pub policy: PutSlaPolicy,
}

/// Escalation of conversations left unassigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalateSettings {
    /// Hours unassigned before escalating (1 … 8760).
    pub after_hours: i64,
    /// Raise the priority to this (`low`, `normal`, `high`, `urgent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_tag: Option<String>,
    /// Notify the participants with an internal note.
    #[serde(default)]
    pub notify: bool,
}

/// Closing conversations the customer did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoCloseSettings {
    /// Days after the last agent reply without a customer reply (1 … 365).
    pub after_days: i64,
}

/// An inbox's timer settings; an absent section is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<EscalateSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_close: Option<AutoCloseSettings>,
}

/// A distribution of durations in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DurationStats {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_secs: Option<f64>,
}

/// Conversations left open and unassigned when a shift ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShiftEnd {
    /// The end of the business day, Unix seconds.
    pub ended_at: i64,
    pub unassigned: u64,
}

/// One agent's open conversations now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentWorkload {
    pub user_id: Uuid,
    pub open: u64,
    /// Replies sent in the period.
    pub replies: u64,
    /// Replies sent from a suggested draft in the period.
    #[serde(default)]
    pub suggestions_accepted: u64,
}

/// Suggested replies (draft providers): how many were made and how many were sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SuggestionStats {
    /// Drafts suggested in the period. With `team_id`/`user_id`: those made while the
    /// conversation was assigned to one of them.
    pub suggested: u64,
    /// Replies sent from a suggested draft in the period (`draft.suggestion_accepted`). With
    /// `team_id`/`user_id`: those they sent.
    pub accepted: u64,
    /// Of `accepted`, sent without a change to the suggestion.
    pub accepted_unedited: u64,
    /// `accepted` / `suggested` (absent when nothing was suggested). Both are counted by their
    /// own time, so a suggestion made before the period and sent in it can lift this above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
}

/// The team's metrics over a period (`from` ≤ t < `to`, Unix seconds) and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub from: i64,
    pub to: i64,
    /// First responses made in the period: time from the first customer message.
    pub first_response: DurationStats,
    /// Conversations closed in the period: time from opening.
    pub resolution: DurationStats,
    /// Open conversations with nobody assigned, now.
    pub unassigned_now: u64,
    /// Open (or pending) and unassigned at the end of each business day of the inbox in the
    /// period that has ended (its time zone and business hours; 24/7 inboxes: local
    /// midnight), oldest first, at most the latest 400. Only with `inbox_id` and without
    /// `team_id`/`user_id`; empty otherwise.
    #[serde(default)]
    pub unassigned_at_end_of_shift: Vec<ShiftEnd>,
    pub workload: Vec<AgentWorkload>,
    pub sla_breaches: u64,
    pub sla_warnings: u64,
    pub reopened: u64,
    /// Agent replies in the period divided by the conversations they went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies_per_conversation: Option<f64>,
    /// Writes refused because the writer's view was stale (409 `stale_conversation`).
    pub duplicate_replies_prevented: u64,
    pub template_uses: u64,
    /// Suggested replies made and sent (ADR 0016, ADR 0020).
    #[serde(default)]
    pub suggestions: SuggestionStats,
}

impl PutSlaPolicy {
    const FIELDS: [&'static str; 7] = [
        "name",
        "first_response_secs",
        "next_response_secs",
        "resolution_secs",
        "by_priority",
        "warn_at",
        "holidays",
    ];
    const TARGET_FIELDS: [&'static str; 3] = [
        "first_response_secs",
        "next_response_secs",
        "resolution_secs",
    ];

    /// Fields of a request body (JSON) that a policy doesn't have, as `path.field`.
    pub fn unknown_fields(body: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(top) = body.as_object() {
            for (k, v) in top {
                if !Self::FIELDS.contains(&k.as_str()) {
                    out.push(k.clone());
                } else if k == "by_priority"
                    && let Some(levels) = v.as_object()
                {
                    for (level, targets) in levels {
                        for f in targets.as_object().into_iter().flat_map(|t| t.keys()) {
                            if !Self::TARGET_FIELDS.contains(&f.as_str()) {
                                out.push(format!("by_priority.{level}.{f}"));
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let body = json!({
            "name": "Gold",
            "first_responce_secs": 60,
            "by_priority": {"high": {"first_response_secs": 30, "resolution": 5}},
        });
        assert_eq!(
            PutSlaPolicy::unknown_fields(&body),
            vec!["by_priority.high.resolution", "first_responce_secs"]
        );
    }

    #[test]
    fn a_policy_as_written_has_no_unknown_fields_and_round_trips() {
        let body = json!({
            "name": "Gold",
            "first_response_secs": 60,
            "next_response_secs": 120,
            "resolution_secs": 3600,
            "by_priority": {"urgent": {"first_response_secs": 10}},
            "warn_at": 0.8,
            "holidays": ["2026-12-25"],
        });
        assert!(PutSlaPolicy::unknown_fields(&body).is_empty());
        let p: PutSlaPolicy = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(p.targets.first_response_secs, Some(60));
        assert_eq!(serde_json::to_value(&p).unwrap(), body);
    }
}
