//! Helpers for tests against real components: a fresh PostgreSQL database per test, a fresh
//! SQLite file per test, a unique NATS prefix per test. Compiled into the library (it is small
//! and has no test-only dependencies) so that every crate's integration tests share it.
//!
//! PostgreSQL is found at `POSTVAK_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), NATS at `POSTVAK_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`). When one is unreachable the test fails with a message saying so.

use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("POSTVAK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("POSTVAK_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A unique, NATS-safe prefix for one test's subjects and streams.
pub fn unique_prefix() -> String {
    format!("pvt{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A fresh, empty PostgreSQL database (migrations not run). Returns its URL.
///
/// # Panics
/// When PostgreSQL is unreachable: the test cannot run without it, and says why.
#[allow(clippy::panic)]
pub async fn fresh_postgres_database() -> String {
    let admin = admin_database_url();
    let mut conn = match PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is required for this test and is not reachable at {admin}: {e}. \
             Start it (see .ci/run) or set POSTVAK_TEST_DATABASE_URL."
        ),
    };
    let name = format!("pv_test_{}", Uuid::new_v4().simple());
    let sql = format!("CREATE DATABASE {name}");
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
    {
        panic!("cannot create test database {name}: {e}");
    }
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) => format!("{}/{name}", &admin[..i]),
        None => panic!("POSTVAK_TEST_DATABASE_URL has no database part: {admin}"),
    }
}

/// A fresh SQLite file URL in a new temporary directory (removed with the returned guard).
pub fn fresh_sqlite_database() -> (TempDir, String) {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.path().join("postvak.db").display());
    (dir, url)
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    #[allow(clippy::panic)]
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("postvak-test-{}", Uuid::new_v4().simple()));
        if let Err(e) = std::fs::create_dir_all(&p) {
            panic!("cannot create {}: {e}", p.display());
        }
        Self(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test master key (random per call).
pub fn master_key() -> crate::crypto::MasterKey {
    #[allow(clippy::expect_used)]
    crate::crypto::MasterKey::from_base64(&crate::crypto::MasterKey::generate_base64())
        .expect("a generated key is valid")
}
