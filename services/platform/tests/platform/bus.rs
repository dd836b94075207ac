//! The bus against real NATS JetStream and in process; shared helpers of the bus, relay,
//! consumer and command tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::bus::{Bus, BusError, ConsumerSpec, EventConsumer, EventDelivery};
use postvak_platform::db::{self, DbOptions};
use postvak_platform::store::{
    self, EventStore, ExpectedVersion, LogPosition, NewEvent, StoredEvent, StreamRef, TenantId,
};
use postvak_platform::testkit::{self, TempDir};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

pub(crate) const CELL: &str = "t1";

/// Logs to the test output when `TEST_LOG` is set.
pub(crate) fn logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A migrated, fresh PostgreSQL database and its store.
pub(crate) async fn pg_store() -> (String, Arc<dyn EventStore>) {
    let url = testkit::fresh_postgres_database().await;
    db::migrate(&url).await.unwrap();
    let store = store::open_store(&url, &DbOptions::default(), testkit::master_key())
        .await
        .unwrap();
    (url, store)
}

/// A migrated, fresh SQLite database and its store.
pub(crate) async fn sqlite_store() -> (TempDir, String, Arc<dyn EventStore>) {
    let (dir, url) = testkit::fresh_sqlite_database();
    db::migrate(&url).await.unwrap();
    let store = store::open_store(&url, &DbOptions::default(), testkit::master_key())
        .await
        .unwrap();
    (dir, url, store)
}

/// A NATS bus with a prefix (and so a stream) of its own.
pub(crate) async fn nats_bus() -> NatsBus {
    NatsBus::connect(&testkit::nats_url(), &testkit::unique_prefix(), CELL)
        .await
        .unwrap()
}

/// Appends `n` events, one per append, to one stream; returns their ids.
pub(crate) async fn append_n(
    store: &dyn EventStore,
    tenant: TenantId,
    stream: &StreamRef,
    n: usize,
    payload: impl Fn(usize) -> serde_json::Value,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let out = store
            .append(
                tenant,
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("thing.happened", 1, payload(i))],
            )
            .await
            .unwrap();
        ids.extend(out.event_ids);
    }
    ids
}

/// On PostgreSQL, waits until `read_log` returns everything committed before this call: it
/// holds back events of transactions that are not below the snapshot's xmin, and that xmin is
/// the whole cluster's, so a transaction of a test running in parallel hides commits made
/// after it began. Waits for every transaction older than a fresh transaction id to end.
async fn settle(store: &dyn EventStore) {
    let postvak_platform::db::Db::Postgres(pool) = store.db() else {
        return;
    };
    let now: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "older transactions to end",
        || async {
            let xmin: i64 =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            xmin > now
        },
    )
    .await;
}

/// Every committed event of the store, in commit order.
pub(crate) async fn whole_log(store: &dyn EventStore) -> Vec<StoredEvent> {
    settle(store).await;
    let mut out = Vec::new();
    let mut after = LogPosition::START;
    loop {
        let page = store.read_log(after, 500, None).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(page);
    }
    out
}

/// Fetches until `expected` deliveries arrived (or 20 s passed), acking each, then checks that
/// nothing more comes within `quiet`. Returns the deliveries' events in delivery order.
pub(crate) async fn drain(
    consumer: &mut dyn EventConsumer,
    expected: usize,
    quiet: Duration,
) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < expected && Instant::now() < deadline {
        for d in consumer
            .fetch(100, Duration::from_millis(500))
            .await
            .unwrap()
        {
            d.acker.ack().await.unwrap();
            got.push(d.event);
        }
    }
    for d in consumer.fetch(100, quiet).await.unwrap() {
        d.acker.ack().await.unwrap();
        got.push(d.event);
    }
    got
}

/// How often each event id was seen.
pub(crate) fn counts(events: &[StoredEvent]) -> HashMap<Uuid, usize> {
    let mut m = HashMap::new();
    for e in events {
        *m.entry(e.event_id).or_insert(0) += 1;
    }
    m
}

/// Polls `check` until it holds or `within` passed.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of messages in the bus's JetStream stream.
pub(crate) async fn stream_messages(bus: &NatsBus) -> u64 {
    let stream = bus.jetstream().get_stream(bus.stream_name()).await.unwrap();
    stream.get_info().await.unwrap().state.messages
}

pub(crate) fn spec(name: &str, stream_types: &[&str]) -> ConsumerSpec {
    ConsumerSpec {
        name: name.to_owned(),
        stream_types: stream_types.iter().map(|s| (*s).to_owned()).collect(),
        start_after: LogPosition::START,
        ack_wait: Duration::from_secs(30),
    }
}

/// A stored event made by hand (the bus does not look inside it).
fn fake_event(n: i64, stream_type: &str) -> StoredEvent {
    StoredEvent {
        position: LogPosition {
            tx: 7,
            global_position: n,
        },
        event_id: Uuid::now_v7(),
        tenant_id: TenantId(Uuid::from_u128(42)),
        stream_type: stream_type.to_owned(),
        stream_id: format!("{stream_type}-1"),
        stream_version: n as u64,
        event_type: "thing.happened".to_owned(),
        event_version: 1,
        key_id: Uuid::now_v7(),
        payload: vec![1, 2, 3, n as u8],
        metadata: br#"{"actor":"service:test"}"#.to_vec(),
        recorded_at: store::from_micros(store::micros(OffsetDateTime::now_utc())),
        prev_hash: vec![0; 32],
        hash: vec![n as u8; 32],
    }
}

#[tokio::test]
async fn unreachable_nats_is_unavailable_at_once() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let err = NatsBus::connect(&url, &testkit::unique_prefix(), CELL)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    match &err {
        BusError::Unavailable(msg) => assert!(msg.contains(&url), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(err.code(), "bus_unavailable");
}

#[tokio::test]
async fn nats_publish_is_acked_in_order_and_deduplicated_by_event_id() {
    logs();
    let bus = nats_bus().await;
    bus.ping().await.unwrap();
    let events: Vec<_> = (1..=20).map(|n| fake_event(n, "inbox")).collect();
    let first = bus.publish_events(&events).await.unwrap();
    assert_eq!(first.len(), 20);
    assert!(first.iter().all(|a| !a.duplicate));
    let seqs: Vec<u64> = first.iter().map(|a| a.sequence).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());

    // Republished (a relay after a crash): same sequences, flagged duplicate, nothing stored.
    let again = bus.publish_events(&events[10..]).await.unwrap();
    assert!(again.iter().all(|a| a.duplicate));
    assert_eq!(
        again.iter().map(|a| a.sequence).collect::<Vec<_>>(),
        (11..=20).collect::<Vec<_>>()
    );
    assert_eq!(stream_messages(&bus).await, 20);

    let mut consumer = bus.event_consumer(spec("all", &[])).await.unwrap();
    let got = drain(consumer.as_mut(), 20, Duration::from_millis(300)).await;
    assert_eq!(got, events, "delivered exactly as published, in order");
}

/// Sets the stream's largest accepted message (`-1`: the server's limit).
async fn set_max_message_size(bus: &NatsBus, bytes: i32) {
    let mut stream = bus.jetstream().get_stream(bus.stream_name()).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_message_size = bytes;
    bus.jetstream().update_stream(config).await.unwrap();
}

#[tokio::test]
async fn nats_stores_nothing_after_a_message_of_the_batch_it_refused() {
    logs();
    let bus = nats_bus().await;
    let mut events: Vec<_> = (1..=6).map(|n| fake_event(n, "inbox")).collect();
    bus.publish_events(&events[..3]).await.unwrap();
    // The stream refuses the 5th (too large) while the 4th and 6th would fit.
    events[4].payload = vec![5; 4096];
    set_max_message_size(&bus, 2048).await;
    let err = bus.publish_events(&events[3..]).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert_eq!(
        stream_messages(&bus).await,
        4,
        "the 6th must not be stored ahead of the 5th"
    );

    // The relay's retry of the whole batch, once the stream takes it: the 4th is a duplicate,
    // the 5th and 6th are stored after it, in log order.
    set_max_message_size(&bus, -1).await;
    let acks = bus.publish_events(&events[3..]).await.unwrap();
    assert_eq!(
        acks.iter()
            .map(|a| (a.sequence, a.duplicate))
            .collect::<Vec<_>>(),
        vec![(4, true), (5, false), (6, false)]
    );
    let mut consumer = bus.event_consumer(spec("all", &[])).await.unwrap();
    let got = drain(consumer.as_mut(), 6, Duration::from_millis(300)).await;
    assert_eq!(got, events, "every event once, in log order");
}

#[tokio::test]
async fn nats_consumers_filter_by_stream_type_and_skip_malformed_messages() {
    logs();
    let bus = nats_bus().await;
    let a: Vec<_> = (1..=3).map(|n| fake_event(n, "inbox")).collect();
    bus.publish_events(&a).await.unwrap();
    // Garbage on an event subject, then a message whose payload field is not base64.
    let subject =
        postvak_proto::subjects::event_subject(bus.prefix(), CELL, &Uuid::nil(), "inbox", "junk");
    bus.jetstream()
        .publish(subject.clone(), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut bad = fake_event(99, "inbox").to_wire();
    bad.payload = "!!!".to_owned();
    bus.jetstream()
        .publish(subject, serde_json::to_vec(&bad).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let b: Vec<_> = (4..=6).map(|n| fake_event(n, "conversation")).collect();
    let c: Vec<_> = (7..=9).map(|n| fake_event(n, "routing")).collect();
    bus.publish_events(&b).await.unwrap();
    bus.publish_events(&c).await.unwrap();

    let quiet = Duration::from_millis(300);
    let mut only_b = bus
        .event_consumer(spec("only-b", &["conversation"]))
        .await
        .unwrap();
    assert_eq!(drain(only_b.as_mut(), 3, quiet).await, b);

    let mut a_and_c = bus
        .event_consumer(spec("a.and c", &["inbox", "routing"]))
        .await
        .unwrap();
    let expected: Vec<_> = a.iter().chain(&c).cloned().collect();
    assert_eq!(drain(a_and_c.as_mut(), 6, quiet).await, expected);

    let mut all = bus.event_consumer(spec("all", &[])).await.unwrap();
    let expected: Vec<_> = a.iter().chain(&b).chain(&c).cloned().collect();
    assert_eq!(drain(all.as_mut(), 9, quiet).await, expected);

    // The malformed ones were terminated: a new session of the durable sees nothing.
    let mut again = bus.event_consumer(spec("all", &[])).await.unwrap();
    assert!(again.fetch(10, quiet).await.unwrap().is_empty());
}

#[tokio::test]
async fn nats_nak_and_missing_ack_redeliver() {
    logs();
    let bus = nats_bus().await;
    let events: Vec<_> = (1..=2).map(|n| fake_event(n, "inbox")).collect();
    bus.publish_events(&events).await.unwrap();
    let mut s = spec("redeliver", &[]);
    s.ack_wait = Duration::from_secs(1);
    let mut consumer = bus.event_consumer(s).await.unwrap();
    let first = consumer.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|d| d.redeliveries == 0));
    first[0].acker.nak(Duration::from_millis(50)).await.unwrap();
    // first[1] is neither acked nor naked: back after ack_wait.
    let mut seen: Vec<EventDelivery> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        seen.extend(
            consumer
                .fetch(10, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seen.len(), 2);
    for d in &seen {
        assert_eq!(d.redeliveries, 1);
        d.acker.ack().await.unwrap();
    }
    let mut ids: Vec<_> = seen.iter().map(|d| d.event.event_id).collect();
    ids.sort();
    let mut want: Vec<_> = events.iter().map(|e| e.event_id).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(
        consumer
            .fetch(10, Duration::from_millis(1500))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn in_process_consumer_tails_the_store_filters_and_redelivers() {
    logs();
    let (_dir, _url, store) = sqlite_store().await;
    let bus = InProcessBus::new(store.clone());
    let tenant = TenantId(Uuid::now_v7());
    let inbox = StreamRef::new("inbox", "i-1");
    let conv = StreamRef::new("conversation", "c-1");
    let inbox_ids = append_n(
        store.as_ref(),
        tenant,
        &inbox,
        3,
        |i| serde_json::json!({ "i": i }),
    )
    .await;
    append_n(
        store.as_ref(),
        tenant,
        &conv,
        2,
        |i| serde_json::json!({ "c": i }),
    )
    .await;

    // publish_events is a no-op that acknowledges: the log is the stream.
    let log = whole_log(store.as_ref()).await;
    let acks = bus.publish_events(&log).await.unwrap();
    assert_eq!(acks.len(), 5);

    let mut s = spec("inbox-view", &["inbox"]);
    s.ack_wait = Duration::from_millis(300);
    let mut consumer = bus.event_consumer(s.clone()).await.unwrap();
    let first = consumer.fetch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        first.iter().map(|d| d.event.event_id).collect::<Vec<_>>(),
        inbox_ids
    );
    first[0].acker.ack().await.unwrap();
    first[1].acker.nak(Duration::ZERO).await.unwrap();
    // first[2] not acked: back after ack_wait; first[1] at once.
    let again = consumer.fetch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event.event_id, inbox_ids[1]);
    assert_eq!(again[0].redeliveries, 1);
    again[0].acker.ack().await.unwrap();
    let later = consumer.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].event.event_id, inbox_ids[2]);
    later[0].acker.ack().await.unwrap();
    assert!(
        consumer
            .fetch(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );

    // A new append wakes a waiting fetch without waiting for the poll.
    let waiter = tokio::spawn(async move {
        let got = consumer.fetch(10, Duration::from_secs(10)).await.unwrap();
        got.into_iter()
            .map(|d| d.event.event_id)
            .collect::<Vec<_>>()
    });
    let new = append_n(store.as_ref(), tenant, &inbox, 1, |_| serde_json::json!({})).await;
    assert_eq!(waiter.await.unwrap(), new);

    // A consumer resumes after its own checkpoint (the bus keeps nothing).
    s.start_after = log[1].position;
    let mut resumed = bus.event_consumer(s).await.unwrap();
    let got = drain(resumed.as_mut(), 2, Duration::from_millis(200)).await;
    assert_eq!(
        got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![inbox_ids[2], new[0]]
    );
}

/// Signals on one bus: each subscriber gets its tenant's signals of its topic, once each, and
/// nothing of another tenant or topic; on NATS they cross connections (two processes) and
/// JetStream stores none of them.
#[tokio::test]
async fn signals_reach_every_subscriber_of_their_tenant_once() {
    let (_tmp, _url, store) = sqlite_store().await;
    let inproc: Arc<dyn Bus> = Arc::new(InProcessBus::new(store));
    let prefix = testkit::unique_prefix();
    let nats_a = NatsBus::connect(&testkit::nats_url(), &prefix, CELL)
        .await
        .unwrap();
    let nats_b = NatsBus::connect(&testkit::nats_url(), &prefix, CELL)
        .await
        .unwrap();
    let before = stream_messages(&nats_a).await;
    // (name, the publishing process's bus, another process's bus)
    type Pair = (&'static str, Arc<dyn Bus>, Arc<dyn Bus>);
    let pairs: Vec<Pair> = vec![
        ("in-process", inproc.clone(), inproc),
        ("nats", Arc::new(nats_a.clone()), Arc::new(nats_b)),
    ];
    for (name, publisher, other) in pairs {
        let (mine, theirs) = (Uuid::now_v7(), Uuid::now_v7());
        let mut here = publisher.subscribe_signals("presence", mine).await.unwrap();
        let mut there = other.subscribe_signals("presence", mine).await.unwrap();
        let mut foreign = other.subscribe_signals("presence", theirs).await.unwrap();
        publisher
            .publish_signal("presence", theirs, b"theirs".to_vec())
            .await
            .unwrap();
        publisher
            .publish_signal("typing", mine, b"other topic".to_vec())
            .await
            .unwrap();
        publisher
            .publish_signal("presence", mine, b"one".to_vec())
            .await
            .unwrap();
        publisher
            .publish_signal("presence", mine, b"two".to_vec())
            .await
            .unwrap();
        for s in [&mut here, &mut there] {
            for want in [&b"one"[..], b"two"] {
                let got = tokio::time::timeout(Duration::from_secs(5), s.next())
                    .await
                    .unwrap_or_else(|_| panic!("{name}: no signal"))
                    .unwrap();
                assert_eq!(got.tenant, mine, "{name}");
                assert_eq!(got.payload, want, "{name}");
            }
            // Nothing else (no copy, nothing of the other topic or tenant).
            assert!(
                tokio::time::timeout(Duration::from_millis(300), s.next())
                    .await
                    .is_err(),
                "{name}"
            );
        }
        let got = tokio::time::timeout(Duration::from_secs(5), foreign.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.tenant, got.payload),
            (theirs, b"theirs".to_vec()),
            "{name}"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), foreign.next())
                .await
                .is_err(),
            "{name}"
        );
    }
    assert_eq!(
        stream_messages(&nats_a).await,
        before,
        "signals are not stored"
    );
}
