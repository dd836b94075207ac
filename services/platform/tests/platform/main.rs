//! Integration tests of the platform crate against real PostgreSQL, SQLite and NATS.
//! One binary (see STYLE.md): each area is a module.

mod bus;
mod command;
mod consumer;
mod migrations;
mod reads;
mod relay;
mod store_bench;
mod store_conformance;
