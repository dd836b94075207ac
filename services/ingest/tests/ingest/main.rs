//! Integration tests of the ingest service against real components: SQLite and PostgreSQL,
//! Python's smtplib, swaks, openssl, and real mail corpora. One binary (see STYLE.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod atomic;
mod bench;
mod corpora;
mod crash;
mod dedupe;
mod gc;
mod helpers;
mod imap;
mod props;
mod race;
mod smtp;
