//! Bad configuration and unreachable dependencies give a clear message and exit code 2, never a
//! panic or a hang.

use crate::helpers::*;
use postvak_platform::testkit::TempDir;
use std::time::{Duration, Instant};

fn assert_clean_failure(code: i32, err: &str, needle: &str) {
    assert_eq!(code, 2, "exit code; stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

#[test]
fn malformed_config_file() {
    let dir = TempDir::new();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[http\naddr = ").unwrap();
    let mut c = command(&dir);
    c.arg("--config").arg(&path).arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "bad.toml");
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.args(["--config", "/nonexistent/postvak.toml", "migrate"]);
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "/nonexistent/postvak.toml");
}

#[test]
fn unknown_setting_is_named() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.env("POSTVAK_CELLS__EU1__DATABASE_URL", "mysql://nope")
        .arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "postgres:// or sqlite:");
}

#[test]
fn unreachable_postgres_fails_fast_and_clearly() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.env(
        "POSTVAK_CELLS__EU1__DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/postvak",
    )
    .env(
        "POSTVAK_SECURITY__MASTER_KEY",
        postvak_platform::crypto::MasterKey::generate_base64(),
    )
    .arg("migrate");
    let start = Instant::now();
    let (code, _, err) = run(c);
    assert_clean_failure(
        code,
        &err,
        "cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/postvak",
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn unreachable_nats_fails_fast_and_clearly() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.env(
        "POSTVAK_CELLS__LOCAL__DATABASE_URL",
        format!("sqlite://{}/x.db", dir.path().display()),
    )
    .env("POSTVAK_CELLS__LOCAL__NATS_URL", "nats://127.0.0.1:1")
    .env(
        "POSTVAK_SECURITY__MASTER_KEY",
        postvak_platform::crypto::MasterKey::generate_base64(),
    )
    .arg("serve");
    let start = Instant::now();
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "NATS");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn missing_master_key_with_configured_cells() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.env(
        "POSTVAK_CELLS__EU1__DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
    .arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "master_key");
}

#[test]
fn the_example_configuration_loads() {
    let dir = TempDir::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/postvak.example.toml"
    );
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let mut c = command(&dir);
    c.args(["--config", example, "openapi", "--check", doc]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_typo_in_the_smtp_section_is_named() {
    let dir = TempDir::new();
    let mut c = command(&dir);
    c.env("POSTVAK_SMTP__MAX_MESAGE_SIZE", "10").arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "max_mesage_size");
}

#[test]
fn a_bad_search_index_setting_is_named() {
    let dir = TempDir::new();
    let path = dir.path().join("postvak.toml");
    std::fs::write(&path, "[search_index]\nmerge_every_msec = 100\n").unwrap();
    let mut c = command(&dir);
    c.arg("--config").arg(&path).arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "merge_every_msec");

    let mut c = command(&dir);
    c.env("POSTVAK_SEARCH_INDEX__MERGE_EVERY_MS", "often")
        .arg("migrate");
    let (code, _, err) = run(c);
    assert_clean_failure(code, &err, "search_index");
}
