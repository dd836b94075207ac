//! Postvak's pure domain: aggregates as `decide(&State, Cmd) -> Result<Vec<Event>>` and
//! `evolve(State, &Event) -> State`, the event hash chain, and (later) threading, rules and SLA
//! math. No I/O: nothing here depends on tokio, sqlx, NATS or actix.

pub mod access;
pub mod aggregate;
pub mod batch;
pub mod chain;
pub mod contact;
pub mod conversation;
pub mod directory;
pub mod routing;
pub mod sla;

pub use aggregate::Aggregate;
