//! The wire contract of Postvak: the event envelope as it is stored and relayed, NATS subjects,
//! command envelopes and REST DTOs. These are the only types that are serialized; a change to
//! one of them is a compatibility decision.

pub mod command;
pub mod envelope;
pub mod events;
pub mod problem;
pub mod rest;
pub mod subjects;

pub use envelope::{EventMetadata, WireEvent};
pub use problem::Problem;
