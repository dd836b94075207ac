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
