//! The benchmark runs end to end (small numbers; `postvak bench notification` runs big ones).

use postvak_notification::bench::{BenchOptions, run};
use postvak_platform::testkit;
use std::time::Duration;

#[tokio::test]
async fn the_benchmark_sends_and_delivers_everything_it_queues() {
    crate::helpers::init_logs();
    let (_tmp, url) = testkit::fresh_sqlite_database();
    let cells = postvak_ingest::standalone::open_cells(&url, testkit::master_key(), true)
        .await
        .unwrap();
    let report = run(
        &cells,
        &BenchOptions {
            mails: 200,
            webhooks: 300,
            deadline: Duration::from_secs(60),
            ..BenchOptions::default()
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.mail.done, 200, "{report}");
    assert_eq!(report.webhooks.done, 300, "{report}");
    assert!(report.mail.p99_ms >= report.mail.p50_ms);
    assert!(report.to_string().contains("outbound mail"));
}

/// `POSTVAK_BENCH=1` runs the full-size benchmark on both backends and prints the reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_size_benchmark_when_asked() {
    if std::env::var_os("POSTVAK_BENCH").is_none() {
        return;
    }
    crate::helpers::init_logs();
    let (_tmp, sqlite) = testkit::fresh_sqlite_database();
    let pg = testkit::fresh_postgres_database().await;
    for url in [sqlite, pg] {
        let cells = postvak_ingest::standalone::open_cells(&url, testkit::master_key(), true)
            .await
            .unwrap();
        let report = run(
            &cells,
            &BenchOptions {
                mails: 1000,
                webhooks: 1000,
                ..BenchOptions::default()
            },
        )
        .await
        .unwrap();
        println!("{report}");
    }
}
