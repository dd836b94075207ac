//! Integration tests of the routing service (one binary).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backend;
mod metrics;
mod rules;
mod sla;
mod timers;
