//! Integration tests of the directory service against real PostgreSQL, SQLite and a real
//! OpenID provider. One binary (see STYLE.md): each area is a module.

// Helpers outside `#[test]` functions may fail loudly too: they are test code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_keys;
mod oidc_harness;
mod sso;
