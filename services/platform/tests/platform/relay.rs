//! The relay against real PostgreSQL (and SQLite) and NATS JetStream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::bus::{
    append_n, counts, drain, eventually, logs, nats_bus, pg_store, spec, sqlite_store,
    stream_messages, whole_log,
};
use postvak_platform::bus::Bus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::relay::{
    RelayError, RelayFault, RelayOptions, RelayReport, load_checkpoint, run_relay,
};
use postvak_platform::store::{
    EventData, EventStore, ExpectedVersion, NewEvent, Payloads, StoredEvent, StreamRef, TenantId,
    open_stored,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn options(batch_size: usize) -> RelayOptions {
    let mut o = RelayOptions::new(crate::bus::CELL);
    o.batch_size = batch_size;
    o.poll_interval = Duration::from_millis(50);
    o.standby_retry = Duration::from_millis(100);
    o
}

/// Runs a relay in the background; `stop` cancels it and returns its report.
struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<RelayReport, RelayError>>,
}

impl Running {
    fn start(store: &Arc<dyn EventStore>, bus: &Arc<dyn Bus>, options: RelayOptions) -> Self {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_relay(
            store.clone(),
            bus.clone(),
            options,
            cancel.clone(),
        ));
        Self { cancel, task }
    }

    async fn stop(self) -> RelayReport {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the relay stops when cancelled")
            .unwrap()
            .unwrap()
    }
}

async fn wait_for_stream(bus: &NatsBus, n: u64) {
    eventually(Duration::from_secs(20), "the stream to fill", || async {
        stream_messages(bus).await >= n
    })
    .await;
}

/// Every event exactly once in the stream and to a consumer, counted by event id.
async fn assert_exactly_once(bus: &NatsBus, log: &[StoredEvent]) -> Vec<StoredEvent> {
    assert_eq!(stream_messages(bus).await, log.len() as u64);
    let mut consumer = bus
        .event_consumer(spec(&format!("check-{}", Uuid::now_v7()), &[]))
        .await
        .unwrap();
    let got = drain(consumer.as_mut(), log.len(), Duration::from_millis(500)).await;
    assert_eq!(got.len(), log.len());
    let seen = counts(&got);
    assert_eq!(seen.len(), log.len());
    assert!(seen.values().all(|&c| c == 1));
    for e in log {
        assert_eq!(seen.get(&e.event_id), Some(&1), "{} missing", e.event_id);
    }
    got
}

#[tokio::test]
async fn relay_resumes_after_a_crash_between_publish_and_checkpoint() {
    logs();
    let (_url, store) = pg_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let tenant = TenantId(Uuid::now_v7());
    for s in 0..5 {
        let stream = StreamRef::new("inbox", format!("inbox-{s}"));
        append_n(
            store.as_ref(),
            tenant,
            &stream,
            10,
            |i| serde_json::json!({ "i": i }),
        )
        .await;
    }
    let log = whole_log(store.as_ref()).await;
    assert_eq!(log.len(), 50);

    // Dies after the third batch was acknowledged by JetStream, before its checkpoint.
    let mut crashing = options(10);
    crashing.fault = RelayFault::CrashAfterPublish { batch: 3 };
    let err = run_relay(
        store.clone(),
        bus.clone(),
        crashing,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    match err {
        RelayError::InjectedCrash { report, .. } => {
            assert_eq!(report.published, 30);
            assert_eq!(report.checkpoint, log[19].position);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        load_checkpoint(store.db(), crate::bus::CELL).await.unwrap(),
        log[19].position
    );
    assert_eq!(stream_messages(&nats).await, 30);

    // Restarted: it republishes batch 3 (JetStream drops it as duplicates) and goes on.
    let relay = Running::start(&store, &bus, options(10));
    wait_for_stream(&nats, 50).await;
    eventually(Duration::from_secs(10), "the final checkpoint", || async {
        load_checkpoint(store.db(), crate::bus::CELL).await.unwrap() == log[49].position
    })
    .await;
    let report = relay.stop().await;
    assert_eq!(report.duplicates, 10);
    assert_eq!(report.published, 20);

    let got = assert_exactly_once(&nats, &log).await;
    // In commit order, and exactly the stored events (ciphertext, chain and all).
    assert_eq!(got, log);
}

#[tokio::test]
async fn relay_publishes_concurrent_appends_once_each_in_stream_order() {
    logs();
    let (_url, store) = pg_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let relay = Running::start(&store, &bus, options(16));

    let tenant = TenantId(Uuid::now_v7());
    // 8 writers; pairs of them contend on one stream (ExpectedVersion::Any), so transactions
    // commit out of sequence order.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamRef::new("conversation", format!("conv-{}", w / 2));
                for i in 0..25 {
                    let events = (0..1 + i % 3)
                        .map(|k| {
                            NewEvent::new(
                                "message.added",
                                1,
                                serde_json::json!({ "w": w, "i": i, "k": k }),
                            )
                        })
                        .collect();
                    store
                        .append(tenant, &stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let log = whole_log(store.as_ref()).await;
    let total = log.len();
    // Per writer: 9 appends of 1 event, 8 of 2, 8 of 3.
    assert_eq!(total, 8 * 49);
    wait_for_stream(&nats, total as u64).await;
    relay.stop().await;

    // The log the relay reads is in stream order already, and so is what it published.
    assert_stream_order(&log, "the log");
    let got = assert_exactly_once(&nats, &log).await;
    assert_stream_order(&got, "JetStream");
}

/// Each stream's events come with versions 1, 2, 3… in `events`' order.
fn assert_stream_order(events: &[StoredEvent], whose: &str) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in events {
        let prev = last
            .insert(e.stream_id.clone(), e.stream_version)
            .unwrap_or(0);
        assert_eq!(
            e.stream_version,
            prev + 1,
            "{} out of order in {whose}",
            e.stream_id
        );
    }
}

#[tokio::test]
async fn plaintext_never_reaches_jetstream() {
    logs();
    let (_url, store) = pg_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let canary = format!("CANARY-{}", Uuid::new_v4().simple());
    let tenant = TenantId(Uuid::now_v7());
    let stream = StreamRef::new("conversation", "secret-1");
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        5,
        |i| serde_json::json!({ "subject": format!("{canary} #{i}"), "body": canary }),
    )
    .await;
    let relay = Running::start(&store, &bus, options(100));
    wait_for_stream(&nats, 5).await;
    relay.stop().await;

    let js_stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let last = js_stream.get_info().await.unwrap().state.last_sequence;
    assert_eq!(last, 5);
    let needle = canary.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for seq in 1..=last {
        let raw = js_stream.get_raw_message(seq).await.unwrap();
        assert!(!contains(&raw.payload), "plaintext in message {seq}");
        assert!(!contains(raw.subject.as_bytes()));
        for (name, values) in raw.headers.iter() {
            assert!(!contains(name.to_string().as_bytes()));
            for v in values {
                assert!(!contains(v.as_str().as_bytes()));
            }
        }
        // …and yet the message carries the event: it decrypts back to the canary.
        let wire: postvak_proto::WireEvent = serde_json::from_slice(&raw.payload).unwrap();
        let event = StoredEvent::from_wire(&wire).unwrap();
        let opened = open_stored(store.keyring(), &event).await.unwrap();
        let EventData::Json(v) = opened.data else {
            panic!("shredded")
        };
        assert_eq!(v["body"], serde_json::json!(canary));
    }
}

#[tokio::test]
async fn one_relay_per_cell_the_other_stands_by_and_takes_over() {
    logs();
    let (_url, store) = pg_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let tenant = TenantId(Uuid::now_v7());
    let stream = StreamRef::new("inbox", "i-1");

    let first = Running::start(&store, &bus, options(10));
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        5,
        |_| serde_json::json!({}),
    )
    .await;
    wait_for_stream(&nats, 5).await;
    // The second starts while the first holds the lock: it relays nothing.
    let second = Running::start(&store, &bus, options(10));
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        5,
        |_| serde_json::json!({}),
    )
    .await;
    wait_for_stream(&nats, 10).await;
    let first_report = first.stop().await;
    assert_eq!(first_report.published, 10);

    // The first stopped and released the lock: the standby takes over.
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        5,
        |_| serde_json::json!({}),
    )
    .await;
    wait_for_stream(&nats, 15).await;
    let second_report = second.stop().await;
    assert_eq!(second_report.published, 5);
    assert_eq!(second_report.duplicates, 0);

    let log = whole_log(store.as_ref()).await;
    assert_exactly_once(&nats, &log).await;
}

#[tokio::test]
async fn relay_from_sqlite_to_nats() {
    logs();
    let (_dir, _url, store) = sqlite_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let relay = Running::start(&store, &bus, options(7));
    let tenant = TenantId(Uuid::now_v7());
    append_n(
        store.as_ref(),
        tenant,
        &StreamRef::new("inbox", "i-1"),
        30,
        |i| serde_json::json!({ "i": i }),
    )
    .await;
    wait_for_stream(&nats, 30).await;
    relay.stop().await;
    let log = whole_log(store.as_ref()).await;
    assert_eq!(assert_exactly_once(&nats, &log).await, log);
}

/// Distributed mode: the relay runs in one process, the commits happen in another (here: a
/// second store with its own pool). A commit announced there wakes the relay's process over
/// PostgreSQL `LISTEN`/`NOTIFY`, so the event is published at once, not at the next poll
/// (two minutes here).
#[tokio::test]
async fn relay_wakes_on_another_process_commit_without_waiting_for_its_poll() {
    logs();
    let (url, relay_store) = pg_store().await;
    let other = postvak_platform::store::open_store(
        &url,
        &postvak_platform::db::DbOptions::default(),
        postvak_platform::testkit::master_key(),
    )
    .await
    .unwrap();
    let tenant = TenantId(Uuid::now_v7());
    let stream = StreamRef::new("inbox", "i-1");

    // The relay process's tailers are woken by the other process's commits. The listener
    // starts with the first tailer, so commits are repeated until one is seen.
    let signal = relay_store.append_signal();
    let mut woken = false;
    for i in 0..20 {
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        append_n(
            other.as_ref(),
            tenant,
            &stream,
            1,
            |_| serde_json::json!({ "i": i }),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .is_ok()
        {
            woken = true;
            break;
        }
    }
    assert!(
        woken,
        "a commit in another process never woke this one's tailers"
    );

    // A relay that polls only every two minutes publishes the other process's commits at once.
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let mut slow = options(100);
    slow.poll_interval = Duration::from_secs(120);
    let relay = Running::start(&relay_store, &bus, slow);
    let before = whole_log(relay_store.as_ref()).await.len() as u64;
    wait_for_stream(&nats, before).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    append_n(
        other.as_ref(),
        tenant,
        &stream,
        1,
        |_| serde_json::json!({ "last": true }),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the other process's commit published",
        || async { stream_messages(&nats).await > before },
    )
    .await;
    relay.stop().await;
    let log = whole_log(relay_store.as_ref()).await;
    assert_eq!(assert_exactly_once(&nats, &log).await, log);
}

#[tokio::test]
async fn relay_publishes_a_commit_held_back_by_an_older_transaction_once_that_ends() {
    use sqlx::Connection;
    logs();
    let (url, store) = pg_store().await;
    let nats = nats_bus().await;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let tenant = TenantId(Uuid::now_v7());
    let stream = StreamRef::new("inbox", "i-1");
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        3,
        |i| serde_json::json!({ "i": i }),
    )
    .await;
    // A relay that would only poll every two minutes.
    let mut slow = options(100);
    slow.poll_interval = Duration::from_secs(120);
    let relay = Running::start(&store, &bus, slow);
    wait_for_stream(&nats, 3).await;

    // An older transaction (any session of the cluster) is running when an event commits: the
    // event is announced, but the log may not return it before that transaction ends.
    let mut older = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id();")
        .execute(&mut older)
        .await
        .unwrap();
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        1,
        |_| serde_json::json!({ "late": true }),
    )
    .await;
    let (seen, held_back) = store
        .read_log_tail(
            postvak_platform::store::LogPosition::START,
            100,
            None,
            Payloads::All,
        )
        .await
        .unwrap();
    assert_eq!((seen.len(), held_back), (3, true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stream_messages(&nats).await,
        3,
        "published before it is certain"
    );

    // It ends without announcing anything; the relay publishes the event without its poll.
    sqlx::raw_sql("ROLLBACK").execute(&mut older).await.unwrap();
    let (seen, held_back) = store
        .read_log_tail(
            postvak_platform::store::LogPosition::START,
            100,
            Some(tenant),
            Payloads::All,
        )
        .await
        .unwrap();
    // Returned, or (while another session of the cluster still runs something older) held
    // back: never silently absent.
    assert!(seen.len() == 4 || held_back, "{} returned", seen.len());
    eventually(
        Duration::from_secs(10),
        "the held-back commit published",
        || async { stream_messages(&nats).await == 4 },
    )
    .await;
    relay.stop().await;
    let log = whole_log(store.as_ref()).await;
    assert_eq!(assert_exactly_once(&nats, &log).await, log);
}
