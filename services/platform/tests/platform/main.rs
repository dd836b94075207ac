//! Integration tests of the platform crate against real PostgreSQL, SQLite and NATS.
//! One binary (see STYLE.md): each area is a module.

mod store_conformance;
mod bus;
mod command;
mod relay;
mod consumer;
mod store_bench;
