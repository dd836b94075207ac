//! The benchmark runs end to end (tiny durations; real figures come from
//! `postvak bench ingest` or `INGEST_BENCH_FULL=1` in release mode).

use postvak_ingest::bench::{BenchOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_on_both_backends() {
    crate::helpers::init_logs();
    let full = std::env::var_os("INGEST_BENCH_FULL").is_some();
    let opts = if full {
        BenchOptions {
            targets: vec![
                postvak_platform::testkit::admin_database_url(),
                "sqlite".into(),
            ],
            ..BenchOptions::default()
        }
    } else {
        BenchOptions {
            targets: vec![
                postvak_platform::testkit::admin_database_url(),
                "sqlite".into(),
            ],
            clients: 4,
            throughput: Duration::from_secs(1),
            rate: 50,
            latency: Duration::from_secs(1),
            nats: Some(postvak_platform::testkit::nats_url()),
        }
    };
    let report = run(opts).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.targets.len(), 2);
    for t in &report.targets {
        assert!(t.mails > 0, "{report}");
        assert_eq!(t.failures, 0, "{report}");
    }
    // PostgreSQL runs with its relay, as in production: every stored event reached JetStream
    // (more than the mails: the tenant and inbox were created through the log too).
    let (relayed, _) = report.targets[0]
        .relayed
        .expect("the PostgreSQL target has a relay");
    assert!(relayed > report.targets[0].mails, "{report}");
    assert!(report.targets[1].relayed.is_none(), "{report}");
}
