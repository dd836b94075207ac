//! Stored shapes of the routing service's durable timers and SLA clocks, on `routing_timer`
//! streams (`timer-<timer uuid>`): one stream per timer, appended once with `NoStream` when it
//! fires, so a fire can never be recorded twice. Times are Unix microseconds. No personal data.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_ROUTING_TIMER: &str = "routing_timer";

/// A timer fired (whatever its effect): `routing.timer_fired`.
pub const TIMER_FIRED: &str = "routing.timer_fired";
/// An SLA clock reached its warning fraction: `routing.sla_warning`.
pub const SLA_WARNING: &str = "routing.sla_warning";
/// An SLA clock passed its target: `routing.sla_breached`.
pub const SLA_BREACHED: &str = "routing.sla_breached";

/// `routing.timer_fired` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFiredV1 {
    pub timer_id: Uuid,
    /// `snooze_wake`, `escalate`, `auto_close`, `sla_warning`, `sla_breach`.
    pub kind: String,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    pub due_at_us: i64,
    /// `applied`, `recorded` (SLA events), or the code of the conversation service's refusal.
    pub outcome: String,
    pub at_us: i64,
}

/// `routing.sla_warning` / `routing.sla_breached` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaClockEventV1 {
    pub policy_id: Uuid,
    pub policy_name: String,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// `first_response`, `next_response`, `resolution`.
    pub clock: String,
    /// When the target is (or was) reached.
    pub due_at_us: i64,
    pub timer_id: Uuid,
    pub at_us: i64,
}
