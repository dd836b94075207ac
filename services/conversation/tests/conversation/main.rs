//! Integration tests of the conversation service against real SQLite and PostgreSQL (with
//! row-level security armed: the pool acts as `postvak_app`), the real directory and the real
//! ingest pipeline. One binary (see STYLE.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod commands;
mod contacts;
mod downloads;
mod drafts;
mod files;
mod helpers;
mod inbound;
mod list;
mod live;
mod search;
mod suggest;
mod templates;
