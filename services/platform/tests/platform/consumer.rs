//! The consumer helper: effects exactly once under redelivery, retries, dead letters. Run on
//! PostgreSQL + NATS JetStream (with the relay) and on SQLite + the in-process bus.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::bus::{append_n, eventually, logs, nats_bus, pg_store, sqlite_store, whole_log};
use async_trait::async_trait;
use postvak_platform::bus::Bus;
use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::consumer::{
    ConsumerOptions, ConsumerReport, EventHandler, HandlerError, consumer_checkpoint, dead_letters,
    run_consumer_with,
};
use postvak_platform::db::{Db, DbTx};
use postvak_platform::relay::{RelayError, RelayOptions, RelayReport, run_relay};
use postvak_platform::store::{
    EventData, EventStore, LogPosition, RecordedEvent, StoredEvent, StreamRef, TenantId,
};
use postvak_platform::testkit::TempDir;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const NAME: &str = "effects";

/// Writes one row per handled event into `consumer_effects`, through the transaction. Fails
/// forever on stream `poison`; fails the first attempt of each event of stream `flaky`, and of
/// the first event of stream `flaky-head`.
#[derive(Default)]
struct Recorder {
    failed_once: Mutex<HashSet<Uuid>>,
}

#[async_trait]
impl EventHandler for Recorder {
    fn name(&self) -> &str {
        NAME
    }

    fn stream_types(&self) -> Vec<String> {
        vec!["inbox".to_owned(), "conversation".to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        let EventData::Json(payload) = &event.data else {
            return Err(HandlerError::Permanent("shredded".into()));
        };
        let n = payload["i"].as_i64().unwrap_or(-1);
        match event.stream_id.as_str() {
            "poison" => return Err(HandlerError::Transient("cannot digest this".into())),
            "flaky" if self.failed_once.lock().unwrap().insert(event.event_id) => {
                return Err(HandlerError::Transient("first attempt fails".into()));
            }
            "flaky-head"
                if event.stream_version == 1
                    && self.failed_once.lock().unwrap().insert(event.event_id) =>
            {
                return Err(HandlerError::Transient("first attempt fails".into()));
            }
            _ => {}
        }
        let version = event.stream_version as i64;
        match tx {
            DbTx::Postgres(c) => sqlx::query(
                "INSERT INTO consumer_effects (event_id, stream_id, stream_version, n)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(event.event_id)
            .bind(&event.stream_id)
            .bind(version)
            .bind(n)
            .execute(&mut **c)
            .await
            .map(|_| ()),
            DbTx::Sqlite(c) => sqlx::query(
                "INSERT INTO consumer_effects (event_id, stream_id, stream_version, n)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(event.event_id.to_string())
            .bind(&event.stream_id)
            .bind(version)
            .bind(n)
            .execute(&mut **c)
            .await
            .map(|_| ()),
        }
        .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// `(rows, distinct event ids)` in `consumer_effects`.
async fn effects(db: &Db) -> (i64, i64) {
    match db {
        Db::Postgres(p) => {
            sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM consumer_effects")
                .fetch_one(p)
                .await
        }
        Db::Sqlite(s) => {
            sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM consumer_effects")
                .fetch_one(&s.reader)
                .await
        }
    }
    .unwrap()
}

struct Consumer {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<ConsumerReport>,
}

impl Consumer {
    fn start(store: &Arc<dyn EventStore>, bus: &Arc<dyn Bus>) -> Self {
        let cancel = CancellationToken::new();
        let options = ConsumerOptions {
            batch_size: 8,
            fetch_wait: Duration::from_millis(200),
            ack_wait: Duration::from_secs(5),
            max_attempts: 3,
            retry_base: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            order_wait: Duration::from_secs(30),
        };
        let task = tokio::spawn(run_consumer_with(
            store.clone(),
            bus.clone(),
            Arc::new(Recorder::default()),
            options,
            cancel.clone(),
        ));
        Self { cancel, task }
    }

    async fn stop(self) -> ConsumerReport {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the consumer stops when cancelled")
            .unwrap()
    }
}

/// Appends the scenario; returns the events the consumer wants, in log order.
async fn scenario(store: &dyn EventStore) -> Vec<StoredEvent> {
    let tenant = TenantId(Uuid::now_v7());
    let json = |i: usize| serde_json::json!({ "i": i });
    let ok1 = StreamRef::new("inbox", "ok-1");
    append_n(store, tenant, &ok1, 5, json).await;
    append_n(store, tenant, &StreamRef::new("inbox", "poison"), 1, json).await;
    append_n(
        store,
        tenant,
        &StreamRef::new("conversation", "flaky"),
        2,
        json,
    )
    .await;
    append_n(store, tenant, &StreamRef::new("routing", "other"), 3, json).await;
    append_n(store, tenant, &ok1, 5, json).await;
    append_n(
        store,
        tenant,
        &StreamRef::new("conversation", "ok-2"),
        5,
        json,
    )
    .await;
    whole_log(store)
        .await
        .into_iter()
        .filter(|e| e.stream_type != "routing")
        .collect()
}

/// Handles the scenario once: 17 effects, the poison dead-lettered after 3 attempts, the
/// checkpoint at the last wanted event.
async fn first_pass(store: &Arc<dyn EventStore>, bus: &Arc<dyn Bus>, wanted: &[StoredEvent]) {
    let consumer = Consumer::start(store, bus);
    let db = store.db();
    eventually(
        Duration::from_secs(20),
        "17 effects and 1 dead letter",
        || async { effects(db).await.0 >= 17 && dead_letters(db, NAME).await.unwrap().len() == 1 },
    )
    .await;
    eventually(Duration::from_secs(10), "the checkpoint", || async {
        consumer_checkpoint(db, NAME).await.unwrap() == wanted[17].position
    })
    .await;
    let report = consumer.stop().await;
    assert_eq!(effects(db).await, (17, 17));
    assert_eq!(report.handled, 17);
    assert_eq!(report.dead_lettered, 1);
    // Poison: 2 retries then the dead letter; flaky: one retry each.
    assert_eq!(report.retried, 4);
    let dead = dead_letters(db, NAME).await.unwrap();
    assert_eq!(dead[0].stream_id, "poison");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].error, "cannot digest this");
    let poison = wanted.iter().find(|e| e.stream_id == "poison").unwrap();
    assert_eq!(dead[0].event_id, poison.event_id);
    assert_eq!(dead[0].position, poison.position);
}

/// Runs the consumer again over redelivered events: nothing happens twice.
async fn second_pass(
    store: &Arc<dyn EventStore>,
    bus: &Arc<dyn Bus>,
    wanted: &[StoredEvent],
    settled: impl AsyncFn() -> bool,
) {
    let consumer = Consumer::start(store, bus);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !settled().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the redeliveries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = consumer.stop().await;
    assert_eq!(report.duplicates, wanted.len() as u64);
    assert_eq!(report.handled, 0);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(effects(store.db()).await, (17, 17));
    assert_eq!(dead_letters(store.db(), NAME).await.unwrap().len(), 1);
}

/// PostgreSQL + NATS with the relay publishing, and the `consumer_effects` table (created by
/// the owner, granted to the application role; `seq` is the order rows were written in).
struct PgRig {
    owner: sqlx::PgPool,
    store: Arc<dyn EventStore>,
    nats: NatsBus,
    bus: Arc<dyn Bus>,
    relay_cancel: CancellationToken,
    relay: tokio::task::JoinHandle<Result<RelayReport, RelayError>>,
}

impl PgRig {
    async fn start() -> Self {
        logs();
        let (url, store) = pg_store().await;
        let owner = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE consumer_effects (seq bigint GENERATED ALWAYS AS IDENTITY,
                 event_id uuid NOT NULL, stream_id text NOT NULL,
                 stream_version bigint NOT NULL, n bigint NOT NULL);
             GRANT SELECT, INSERT ON consumer_effects TO postvak_app;",
        )
        .execute(&owner)
        .await
        .unwrap();
        let nats: NatsBus = nats_bus().await;
        let bus: Arc<dyn Bus> = Arc::new(nats.clone());
        let relay_cancel = CancellationToken::new();
        let mut relay_options = RelayOptions::new(crate::bus::CELL);
        relay_options.poll_interval = Duration::from_millis(50);
        let relay = tokio::spawn(run_relay(
            store.clone(),
            bus.clone(),
            relay_options,
            relay_cancel.clone(),
        ));
        Self {
            owner,
            store,
            nats,
            bus,
            relay_cancel,
            relay,
        }
    }

    async fn stop(self) {
        self.relay_cancel.cancel();
        self.relay.await.unwrap().unwrap();
    }
}

/// SQLite + the in-process bus, and the `consumer_effects` table (its `rowid` is the order
/// rows were written in). The folder holds the database.
async fn sqlite_rig() -> (TempDir, Arc<dyn EventStore>, Arc<dyn Bus>, sqlx::SqlitePool) {
    logs();
    let (dir, _url, store) = sqlite_store().await;
    let Db::Sqlite(sqlite) = store.db() else {
        panic!("not SQLite")
    };
    sqlx::raw_sql(
        "CREATE TABLE consumer_effects (event_id TEXT NOT NULL, stream_id TEXT NOT NULL,
             stream_version INTEGER NOT NULL, n INTEGER NOT NULL)",
    )
    .execute(&sqlite.writer)
    .await
    .unwrap();
    let writer = sqlite.writer.clone();
    let bus: Arc<dyn Bus> =
        Arc::new(InProcessBus::new(store.clone()).with_poll_interval(Duration::from_millis(50)));
    (dir, store, bus, writer)
}

#[tokio::test]
async fn postgres_and_nats_consumer_has_effects_exactly_once() {
    let rig = PgRig::start().await;
    let (store, bus, nats) = (&rig.store, &rig.bus, &rig.nats);
    let wanted = scenario(store.as_ref()).await;
    assert_eq!(wanted.len(), 18);

    first_pass(store, bus, &wanted).await;

    // Redelivery bypassing JetStream's dedupe: the same events again under no message id.
    let mut last_sequence = 0;
    for e in &wanted {
        let subject = postvak_proto::subjects::event_subject(
            nats.prefix(),
            crate::bus::CELL,
            &e.tenant_id.0,
            &e.stream_type,
            &e.event_type,
        );
        last_sequence = nats
            .jetstream()
            .publish(subject, serde_json::to_vec(&e.to_wire()).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
    }
    let js = nats.jetstream().clone();
    let stream_name = nats.stream_name().to_owned();
    second_pass(store, bus, &wanted, async || {
        let stream = js.get_stream(&stream_name).await.unwrap();
        let info = stream.consumer_info(NAME).await.unwrap();
        // The server counts a consumer's pending messages after the publish is acknowledged
        // (asynchronously, and late on a loaded machine): settled means the ack floor has
        // passed the last republished message, not merely that nothing is counted as pending.
        info.ack_floor.stream_sequence >= last_sequence
            && info.num_pending == 0
            && info.num_ack_pending == 0
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn sqlite_and_in_process_consumer_has_effects_exactly_once() {
    let (_dir, store, bus, writer) = sqlite_rig().await;
    let wanted = scenario(store.as_ref()).await;
    assert_eq!(wanted.len(), 18);

    first_pass(&store, &bus, &wanted).await;

    // The checkpoint is lost (as if the process died before writing it): the in-process bus
    // replays the whole log, and every event is a known duplicate.
    sqlx::query("DELETE FROM consumer_checkpoints")
        .execute(&writer)
        .await
        .unwrap();
    assert_eq!(
        consumer_checkpoint(store.db(), NAME).await.unwrap(),
        LogPosition::START
    );
    let db = store.db().clone();
    let last = wanted[17].position;
    second_pass(&store, &bus, &wanted, async || {
        consumer_checkpoint(&db, NAME).await.unwrap() == last
    })
    .await;
}

/// The first event of a stream fails once and is retried; the two after it, delivered
/// meanwhile, wait for it: the handler sees the stream in order (1, 2, 3), not 2, 3, 1.
async fn stream_order_survives_a_retry(
    store: &Arc<dyn EventStore>,
    bus: &Arc<dyn Bus>,
    order: impl AsyncFn() -> Vec<i64>,
) {
    let tenant = TenantId(Uuid::now_v7());
    let stream = StreamRef::new("conversation", "flaky-head");
    append_n(
        store.as_ref(),
        tenant,
        &stream,
        3,
        |i| serde_json::json!({ "i": i }),
    )
    .await;
    let consumer = Consumer::start(store, bus);
    eventually(Duration::from_secs(20), "3 effects", || async {
        effects(store.db()).await.0 >= 3
    })
    .await;
    let report = consumer.stop().await;
    assert_eq!(order().await, vec![1, 2, 3], "handled out of stream order");
    assert_eq!(effects(store.db()).await, (3, 3));
    assert_eq!(report.handled, 3);
    assert_eq!(report.retried, 1);
    assert!(report.early >= 1, "{report:?}");
    assert!(dead_letters(store.db(), NAME).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_and_nats_consumer_handles_a_stream_in_order_across_a_retry() {
    let rig = PgRig::start().await;
    let owner = rig.owner.clone();
    stream_order_survives_a_retry(&rig.store, &rig.bus, async || {
        sqlx::query_scalar("SELECT stream_version FROM consumer_effects ORDER BY seq")
            .fetch_all(&owner)
            .await
            .unwrap()
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn sqlite_and_in_process_consumer_handles_a_stream_in_order_across_a_retry() {
    let (_dir, store, bus, writer) = sqlite_rig().await;
    stream_order_survives_a_retry(&store, &bus, async || {
        sqlx::query_scalar("SELECT stream_version FROM consumer_effects ORDER BY rowid")
            .fetch_all(&writer)
            .await
            .unwrap()
    })
    .await;
}
