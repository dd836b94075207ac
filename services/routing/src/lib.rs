//! The routing service: rules, assignment strategies, SLA clocks and durable timers. Not built
//! yet (its own issue).
