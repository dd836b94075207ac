//! End-to-end tests of the `postvak` binary: it is started as a user would start it, with real
//! SQLite files, PostgreSQL and NATS, and spoken to over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod cli_errors;
mod distributed;
mod embedded;
mod identity;
