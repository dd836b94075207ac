//! Shared adapters of every Postvak service: the event store (PostgreSQL, SQLite), the bus
//! (NATS JetStream, in-process), the relay and consumer helpers, envelope encryption, cells and
//! tenant contexts, configuration, telemetry and the HTTP error mapping.

pub mod auth;
pub mod bench;
pub mod bus;
pub mod cell;
pub mod command;
pub mod config;
pub mod consumer;
pub mod crypto;
pub mod db;
pub mod http;
pub mod memo;
pub mod netguard;
pub mod reads;
pub mod relay;
pub mod store;
pub mod telemetry;
pub mod testkit;
