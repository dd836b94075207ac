//! The store benchmark as a smoke test (short phases, both backends). The full run, with its
//! figures, is `cargo run --release -- bench store [--target URL]`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use postvak_platform::bench::{StoreBenchOptions, store_bench};
use postvak_platform::store::Backend;
use postvak_platform::testkit::{self, TempDir};
use std::time::Duration;

fn short(url: String) -> StoreBenchOptions {
    StoreBenchOptions {
        url,
        phase: Duration::from_millis(400),
        single_writers: 4,
        batch_writers: 2,
        batch_size: 20,
        page_size: 100,
        ..StoreBenchOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_bench_smoke_postgres() {
    let report = store_bench(short(testkit::admin_database_url()))
        .await
        .unwrap();
    assert_eq!(report.backend, Backend::Postgres);
    assert!(report.single.store_events > 0 && report.single.raw_rows > 0);
    assert!(report.batch.store_events > 0 && report.batch.raw_rows > 0);
    assert_eq!(
        report.replay.store_events,
        report.single.store_events + report.batch.store_events
    );
    assert_eq!(
        report.replay.raw_rows,
        report.single.raw_rows + report.batch.raw_rows
    );
    assert!(report.row_bytes > 256);
    let shown = report.to_string();
    assert!(
        shown.contains("single appends") && shown.contains("replay"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_bench_smoke_sqlite() {
    let dir = TempDir::new();
    let report = store_bench(short(dir.path().display().to_string()))
        .await
        .unwrap();
    assert_eq!(report.backend, Backend::Sqlite);
    assert_eq!(
        report.replay.store_events,
        report.single.store_events + report.batch.store_events
    );
    // The fresh file was removed afterwards.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
