//! The routing service: rules, assignment strategies, SLA clocks and durable timers. Not built
//! yet (its own issue).

pub mod metrics;
pub mod sla;
pub mod timers;
