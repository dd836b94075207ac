//! Durable timers: snooze wake-ups, escalation, auto-close and SLA timers fire once, through
//! the conversation service's `conversation.apply`, naming the timer; and a runner killed with
//! SIGKILL around the due time, again and again, still fires each timer exactly once.

use postvak_conversation::commands;
use postvak_directory::Directory;
use postvak_platform::bus::Bus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::crypto::MasterKey;
use postvak_platform::db::{self, DbOptions};
use postvak_platform::store::{
    self, ExpectedVersion, NewEvent, RecordedEvent, StreamRef, TenantId, micros,
};
use postvak_platform::testkit;
use postvak_proto::events::conversation as cev;
use postvak_proto::events::timers as tev;
use postvak_proto::rest::sla as dto;
use postvak_routing::timers::{self, TimerRow};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::backend::{BACKENDS, Backend, Scratch};

/// A tenant with an inbox, the conversation service's `apply` command served, and
/// (optionally) the routing timers running, all in this process.
pub struct Env {
    pub cells: Cells,
    pub dir: Directory,
    pub ctx: TenantContext,
    pub tenant: TenantId,
    pub inbox: Uuid,
    pub cancel: CancellationToken,
    _scratch: Scratch,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn now_us() -> i64 {
    micros(OffsetDateTime::now_utc())
}

impl Env {
    pub async fn new(backend: Backend, run_timers: bool) -> Env {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let cancel = CancellationToken::new();
        let (cells, scratch) = crate::backend::open(backend, &cancel).await;
        Self::with_cells(cells, scratch, cancel, run_timers).await
    }

    async fn with_cells(
        cells: Cells,
        scratch: Scratch,
        cancel: CancellationToken,
        run_timers: bool,
    ) -> Env {
        let dir = Directory::new(cells.clone());
        let tenant = dir.create_tenant("Acme", None).await.unwrap();
        let ctx = cells
            .context(tenant, Principal::Service { name: "test" })
            .await
            .unwrap();
        let inbox = dir
            .create_inbox(&ctx, "Support", &["support@acme.test".to_owned()])
            .await
            .unwrap()
            .id;
        commands::serve(&cells, cells.default_cell(), cancel.clone())
            .await
            .unwrap();
        if run_timers {
            timers::start(cells.default_cell(), cancel.clone());
        }
        Env {
            cells,
            dir,
            ctx,
            tenant,
            inbox,
            cancel,
            _scratch: scratch,
        }
    }

    pub fn cell(&self) -> Arc<Cell> {
        self.cells.default_cell()
    }

    /// Appends conversation events as the conversation service would have.
    pub async fn script(&self, conv: Uuid, events: &[(&str, Value)]) {
        let new = events
            .iter()
            .map(|(t, p)| NewEvent::new(*t, 1, p.clone()))
            .collect();
        self.ctx
            .append(&conversation_stream(conv), ExpectedVersion::Any, new)
            .await
            .unwrap();
    }

    /// Opens a conversation from a customer message at `at_us`.
    pub async fn open(&self, inbox: Uuid, at_us: i64) -> Uuid {
        let conv = Uuid::now_v7();
        self.script(
            conv,
            &[
                (cev::OPENED, opened(conv, inbox, at_us)),
                (cev::MESSAGE_RECEIVED, message(conv, inbox, None, at_us)),
            ],
        )
        .await;
        conv
    }

    pub async fn stream(&self, s: &StreamRef) -> Vec<RecordedEvent> {
        self.ctx.read_stream(s).await.unwrap()
    }

    pub async fn conversation(&self, conv: Uuid) -> Vec<RecordedEvent> {
        self.stream(&conversation_stream(conv)).await
    }

    pub async fn timers(&self, conv: Uuid) -> Vec<TimerRow> {
        timers::list(self.cells.default_cell().db(), self.tenant, conv)
            .await
            .unwrap()
    }

    /// Makes a pending timer due now (as if its time had come).
    pub async fn make_due(&self, timer: Uuid) {
        let sql = "UPDATE routing_timers SET due_at = $1 WHERE timer_id = $2";
        match self.cell().db() {
            db::Db::Postgres(p) => {
                sqlx::query(sql)
                    .bind(now_us())
                    .bind(timer)
                    .execute(p)
                    .await
                    .unwrap();
            }
            db::Db::Sqlite(s) => {
                sqlx::query(sql)
                    .bind(now_us())
                    .bind(timer)
                    .execute(&s.writer)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Polls `check` every 100 ms for up to `secs` seconds.
pub async fn until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn conversation_stream(conv: Uuid) -> StreamRef {
    StreamRef::new(cev::STREAM_CONVERSATION, format!("conv-{conv}"))
}

pub fn opened(conv: Uuid, inbox: Uuid, at_us: i64) -> Value {
    json!({"conversation_id": conv, "inbox_id": inbox, "origin": "message",
           "participants": [], "at_us": at_us})
}

pub fn message(conv: Uuid, inbox: Uuid, author: Option<Uuid>, at_us: i64) -> Value {
    let mut m = json!({"message_id": Uuid::now_v7(), "conversation_id": conv,
                       "inbox_id": inbox, "subject": "Order 7", "snippet": "Where is it?",
                       "from": [{"address": "carol@example.org"}], "at_us": at_us});
    if let Some(a) = author {
        m["author"] = json!(a);
        m["from"] = json!([{"address": "support@acme.test"}]);
        m["to"] = json!([{"address": "carol@example.org"}]);
        m["body_text"] = json!("On its way.");
    }
    m
}

pub fn acted(at_us: i64) -> Value {
    json!({"at_us": at_us})
}

fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

fn fired_timer(rows: &[TimerRow], kind: &str) -> TimerRow {
    let matching: Vec<_> = rows.iter().filter(|t| t.kind == kind).collect();
    assert_eq!(matching.len(), 1, "one {kind} timer: {rows:?}");
    matching[0].clone()
}

/// The fire of a timer: exactly one `routing.timer_fired` on its stream, by the timer.
async fn assert_fired_once(env: &Env, timer: &TimerRow, outcome: &str) -> Vec<RecordedEvent> {
    let events = env.stream(&timers::timer_stream(timer.timer_id)).await;
    let fired: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == tev::TIMER_FIRED)
        .collect();
    assert_eq!(fired.len(), 1, "{:?}", types(&events));
    let p: tev::TimerFiredV1 = fired[0].payload().unwrap();
    assert_eq!(p.kind, timer.kind);
    assert_eq!(p.conversation_id, timer.conversation_id);
    assert_eq!(p.outcome, outcome);
    assert_eq!(
        fired[0].metadata.actor.as_deref(),
        Some(format!("timer:{}", timer.timer_id).as_str())
    );
    events
}

/// Events on a conversation caused by a timer.
fn by_timer(events: &[RecordedEvent], timer: Uuid) -> Vec<&RecordedEvent> {
    let actor = format!("timer:{timer}");
    events
        .iter()
        .filter(|e| e.metadata.actor.as_deref() == Some(actor.as_str()))
        .collect()
}

async fn snooze_wakes_once_and_a_customer_message_cancels_it(backend: Backend) {
    let env = Env::new(backend, true).await;
    let now = now_us();
    let sleeper = env.open(env.inbox, now).await;
    let answered = env.open(env.inbox, now).await;
    for c in [sleeper, answered] {
        env.script(
            c,
            &[(
                cev::SNOOZED,
                json!({"until_us": now + 1_500_000, "at_us": now}),
            )],
        )
        .await;
    }
    // The customer writes again before the snooze is over: that conversation needs no wake-up.
    env.script(
        answered,
        &[(
            cev::MESSAGE_RECEIVED,
            message(answered, env.inbox, None, now + 1),
        )],
    )
    .await;
    let woken = until(30, "the snoozed conversation to wake", || async {
        let events = env.conversation(sleeper).await;
        events
            .iter()
            .any(|e| e.event_type == cev::WOKEN)
            .then_some(events)
    })
    .await;
    let timer = until(20, "the wake-up to be recorded", || async {
        let t = fired_timer(&env.timers(sleeper).await, "snooze_wake");
        (t.state == "fired").then_some(t)
    })
    .await;
    assert_eq!(timer.outcome.as_deref(), Some("applied"));
    assert_fired_once(&env, &timer, "applied").await;
    let caused = by_timer(&woken, timer.timer_id);
    assert_eq!(
        types(&caused.into_iter().cloned().collect::<Vec<_>>()),
        [cev::WOKEN]
    );
    // Later passes change nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = env.conversation(sleeper).await;
    assert_eq!(
        again.iter().filter(|e| e.event_type == cev::WOKEN).count(),
        1
    );
    let rows = env.timers(answered).await;
    assert_eq!(fired_timer(&rows, "snooze_wake").state, "cancelled");
    assert!(
        !env.conversation(answered)
            .await
            .iter()
            .any(|e| e.event_type == cev::WOKEN)
    );
}

#[tokio::test]
async fn snooze_wakes_once_and_a_customer_message_cancels_it_sqlite() {
    snooze_wakes_once_and_a_customer_message_cancels_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn snooze_wakes_once_and_a_customer_message_cancels_it_postgres() {
    snooze_wakes_once_and_a_customer_message_cancels_it(Backend::Postgres).await;
}

#[tokio::test]
async fn snooze_wakes_once_and_a_customer_message_cancels_it_nats() {
    snooze_wakes_once_and_a_customer_message_cancels_it(Backend::PostgresNats).await;
}

async fn escalation_and_auto_close_act_through_the_conversation(backend: Backend) {
    let env = Env::new(backend, true).await;
    postvak_routing::sla::save_automation(
        &env.ctx,
        env.inbox,
        dto::Automation {
            escalate: Some(dto::EscalateSettings {
                after_hours: 4,
                set_priority: Some("urgent".into()),
                add_tag: Some("escalated".into()),
                notify: false,
            }),
            auto_close: Some(dto::AutoCloseSettings { after_days: 3 }),
        },
    )
    .await
    .unwrap();
    let now = now_us();
    let conv = env.open(env.inbox, now).await;
    let escalate = until(20, "the escalation timer", || async {
        env.timers(conv)
            .await
            .into_iter()
            .find(|t| t.kind == "escalate")
    })
    .await;
    assert_eq!(escalate.state, "pending");
    assert_eq!(escalate.due_at_us, now + 4 * 3_600_000_000);
    // Four hours pass.
    env.make_due(escalate.timer_id).await;
    let events = until(20, "the escalation", || async {
        let ev = env.conversation(conv).await;
        ev.iter().any(|e| e.event_type == cev::TAGGED).then_some(ev)
    })
    .await;
    let caused: Vec<RecordedEvent> = by_timer(&events, escalate.timer_id)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(types(&caused), [cev::PRIORITY_CHANGED, cev::TAGGED]);
    let p: cev::PriorityChangedV1 = caused[0].payload().unwrap();
    assert_eq!(p.priority, "urgent");
    let escalate = until(20, "the escalation to be recorded", || async {
        let t = fired_timer(&env.timers(conv).await, "escalate");
        (t.state == "fired").then_some(t)
    })
    .await;
    assert_fired_once(&env, &escalate, "applied").await;

    // An agent answers: auto-close is set three days out; the customer stays silent.
    let alice = Uuid::now_v7();
    env.script(
        conv,
        &[(
            cev::REPLY_QUEUED,
            message(conv, env.inbox, Some(alice), now_us()),
        )],
    )
    .await;
    let close = until(20, "the auto-close timer", || async {
        env.timers(conv)
            .await
            .into_iter()
            .find(|t| t.kind == "auto_close")
    })
    .await;
    env.make_due(close.timer_id).await;
    let events = until(20, "the auto-close", || async {
        let ev = env.conversation(conv).await;
        ev.iter()
            .any(|e| e.event_type == cev::STATUS_CHANGED)
            .then_some(ev)
    })
    .await;
    let caused: Vec<RecordedEvent> = by_timer(&events, close.timer_id)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(types(&caused), [cev::STATUS_CHANGED]);
    let s: cev::StatusChangedV1 = caused[0].payload().unwrap();
    assert_eq!(s.status, "closed");
    let close = until(20, "the auto-close to be recorded", || async {
        let t = fired_timer(&env.timers(conv).await, "auto_close");
        (t.state == "fired").then_some(t)
    })
    .await;
    assert_fired_once(&env, &close, "applied").await;
}

#[tokio::test]
async fn escalation_and_auto_close_act_through_the_conversation_sqlite() {
    escalation_and_auto_close_act_through_the_conversation(Backend::Sqlite).await;
}

#[tokio::test]
async fn escalation_and_auto_close_act_through_the_conversation_postgres() {
    escalation_and_auto_close_act_through_the_conversation(Backend::Postgres).await;
}

#[tokio::test]
async fn escalation_and_auto_close_act_through_the_conversation_nats() {
    escalation_and_auto_close_act_through_the_conversation(Backend::PostgresNats).await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 around the due time

const CHILD_DB: &str = "ROUTING_CRASH_CHILD_DB";
const CHILD_PREFIX: &str = "ROUTING_CRASH_CHILD_PREFIX";
const CHILD_KEY: &str = "ROUTING_CRASH_CHILD_KEY";

/// Applies the real effect, then fails as if its runner died before recording the fire.
struct DiesAfterEffect<'a>(&'a timers::ApplyCommand);

#[async_trait::async_trait]
impl timers::TimerEffect for DiesAfterEffect<'_> {
    async fn apply(
        &self,
        timer: &timers::DueTimer,
        actions: Vec<postvak_proto::command::conversation::ActionV1>,
    ) -> Result<String, timers::FireError> {
        self.0.apply(timer, actions).await?;
        Err(timers::FireError::Retry(
            "the runner died after the effect".into(),
        ))
    }
}

/// A runner dies between a snooze wake-up's effect (`woken`) and its record. The scheduler
/// then handles that `woken`, which cancels the conversation's pending wake-ups — but not the
/// one that caused it: the next runner fires it again, the command answers its stored reply,
/// and the timer ends `fired` once, with one `woken`.
async fn a_timer_whose_runner_died_after_its_effect_fires_once(backend: Backend) {
    let env = Env::new(backend, false).await;
    let cell = env.cell();
    tokio::spawn(postvak_platform::consumer::run_consumer(
        cell.store.clone(),
        cell.bus.clone(),
        Arc::new(postvak_routing::sla::TimerScheduler),
        env.cancel.clone(),
    ));
    let now = now_us();
    let conv = env.open(env.inbox, now).await;
    env.script(
        conv,
        &[(
            cev::SNOOZED,
            json!({"until_us": now + 500_000, "at_us": now}),
        )],
    )
    .await;
    let row = until(20, "the wake-up to be scheduled", || async {
        env.timers(conv).await.into_iter().next()
    })
    .await;
    // Due now: the conversation service wakes only a snooze whose time has come.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let due = timers::DueTimer {
        timer_id: row.timer_id,
        tenant: env.tenant,
        conversation_id: conv,
        kind: timers::TimerKind::SnoozeWake,
        params: json!({}),
        due_at_us: row.due_at_us,
        cause_event_id: None,
    };
    let effect = timers::ApplyCommand {
        bus: cell.bus.clone(),
        timeout: Duration::from_secs(10),
    };
    let died = timers::fire_one(cell.store.as_ref(), &DiesAfterEffect(&effect), &due).await;
    assert!(died.is_err(), "{died:?}");
    // The scheduler handles the `woken` the effect appended.
    let woken = until(20, "the conversation to wake", || async {
        env.conversation(conv)
            .await
            .into_iter()
            .find(|e| e.event_type == cev::WOKEN)
    })
    .await;
    until(20, "the scheduler to handle the woken", || async {
        processed_by_scheduler(&env, woken.event_id)
            .await
            .then_some(())
    })
    .await;
    assert_eq!(
        fired_timer(&env.timers(conv).await, "snooze_wake").state,
        "pending"
    );
    let again = timers::fire_one(cell.store.as_ref(), &effect, &due)
        .await
        .unwrap();
    assert_eq!(again, timers::Fired::Done("applied".to_owned()));
    let timer = fired_timer(&env.timers(conv).await, "snooze_wake");
    assert_eq!(timer.state, "fired");
    assert_fired_once(&env, &timer, "applied").await;
    let events = env.conversation(conv).await;
    assert_eq!(
        events.iter().filter(|e| e.event_type == cev::WOKEN).count(),
        1,
        "{:?}",
        types(&events)
    );
}

async fn processed_by_scheduler(env: &Env, event_id: Uuid) -> bool {
    let consumer = postvak_routing::sla::SCHEDULER;
    match env.cell().db() {
        db::Db::Postgres(p) => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM consumer_processed WHERE consumer = $1 AND event_id = $2)",
        )
        .bind(consumer)
        .bind(event_id)
        .fetch_one(p)
        .await
        .unwrap(),
        db::Db::Sqlite(s) => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM consumer_processed WHERE consumer = ?1 AND event_id = ?2)",
        )
        .bind(consumer)
        .bind(event_id.to_string())
        .fetch_one(&s.reader)
        .await
        .unwrap(),
    }
}

#[tokio::test]
async fn a_timer_whose_runner_died_after_its_effect_fires_once_sqlite() {
    a_timer_whose_runner_died_after_its_effect_fires_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_timer_whose_runner_died_after_its_effect_fires_once_nats() {
    a_timer_whose_runner_died_after_its_effect_fires_once(Backend::PostgresNats).await;
}

async fn nats_cells(url: &str, prefix: &str, key: &str) -> Cells {
    let opts = DbOptions {
        max_connections: 8,
        ..DbOptions::default()
    };
    let store = store::open_store(url, &opts, MasterKey::from_base64(key).unwrap())
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&testkit::nats_url(), prefix, "local")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NATS is required for this test and is not reachable at {}: {e}",
                    testkit::nats_url()
                )
            }),
    );
    let directory = store.db().clone();
    Cells::new(
        vec![Cell {
            name: "local".to_owned(),
            region: None,
            store,
            bus,
        }],
        "local",
        directory,
    )
    .unwrap()
}

/// The routing process of [`timers_fire_exactly_once_across_kill_9`]: the scheduler
/// consumer and the timer runner against PostgreSQL + NATS, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by timers_fire_exactly_once_across_kill_9"]
async fn crash_child() {
    let (Ok(url), Ok(prefix), Ok(key)) = (
        std::env::var(CHILD_DB),
        std::env::var(CHILD_PREFIX),
        std::env::var(CHILD_KEY),
    ) else {
        panic!("crash_child runs only as a child of timers_fire_exactly_once_across_kill_9");
    };
    let cells = nats_cells(&url, &prefix, &key).await;
    let _handles = timers::start(cells.default_cell(), CancellationToken::new());
    std::future::pending::<()>().await;
}

/// The routing child process; killed when dropped, so a failing test leaves none running.
struct ChildProcess(std::process::Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(url: &str, prefix: &str, key: &str) -> ChildProcess {
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args(["timers::crash_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_DB, url)
        .env(CHILD_PREFIX, prefix)
        .env(CHILD_KEY, key)
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .unwrap();
    ChildProcess(child)
}

fn kill_9(child: &mut ChildProcess) {
    let child = &mut child.0;
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
    let _ = child.wait();
}

/// Where a conversation's `snoozed` event got to on its way to the scheduler: the log, the
/// relay's checkpoint, the JetStream stream, the scheduler's durable consumer, its processed
/// marks and dead letters. Printed when a timer was never scheduled.
async fn snooze_trail(env: &Env, conv: Uuid, prefix: &str) -> String {
    use futures::StreamExt;
    let db::Db::Postgres(pool) = env.cell().db().clone() else {
        return "not PostgreSQL".to_owned();
    };
    let found: Option<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT event_id, tx::text, global_position FROM events \
         WHERE stream_id = $1 AND event_type = $2",
    )
    .bind(conversation_stream(conv).stream_id)
    .bind(cev::SNOOZED)
    .fetch_optional(&pool)
    .await
    .unwrap();
    let Some((event_id, tx, gp)) = found else {
        return format!("{conv}: no snoozed event in the log");
    };
    let relay: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx::text, global_position FROM relay_checkpoints WHERE cell = 'local'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    let checkpoint: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx::text, global_position FROM consumer_checkpoints WHERE consumer = $1",
    )
    .bind(postvak_routing::sla::SCHEDULER)
    .fetch_optional(&pool)
    .await
    .unwrap();
    let processed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM consumer_processed WHERE consumer = $1 AND event_id = $2",
    )
    .bind(postvak_routing::sla::SCHEDULER)
    .bind(event_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let dead: Vec<(String,)> = sqlx::query_as(
        "SELECT error FROM consumer_dead_letters WHERE consumer = $1 AND event_id = $2",
    )
    .bind(postvak_routing::sla::SCHEDULER)
    .bind(event_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let client = async_nats::connect(testkit::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = postvak_proto::subjects::jetstream_name(prefix, "local");
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap().state.clone();
    let mut in_stream = None;
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.headers
                .get("Nats-Msg-Id")
                .is_some_and(|v| v.as_str() == event_id.to_string())
        {
            in_stream = Some(seq);
        }
    }
    let mut consumers = Vec::new();
    let mut names = stream.consumer_names();
    while let Some(Ok(n)) = names.next().await {
        if let Ok(mut c) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&n)
            .await
            && let Ok(i) = c.info().await
        {
            consumers.push(format!(
                "{n}: delivered {} ack floor {} pending {} ack pending {} redelivered {} waiting {}",
                i.delivered.stream_sequence,
                i.ack_floor.stream_sequence,
                i.num_pending,
                i.num_ack_pending,
                i.num_redelivered,
                i.num_waiting
            ));
        }
    }
    format!(
        "{conv}: snoozed event {event_id} at ({tx}, {gp}); relay checkpoint {relay:?}; \
         JetStream {name} seq 1..{} holds it at {in_stream:?}; consumers [{}]; \
         scheduler checkpoint {checkpoint:?}, processed {processed}, dead letters {dead:?}",
        info.last_sequence,
        consumers.join("; ")
    )
}

/// Twelve snoozes fall due over three seconds while the routing process is killed with
/// SIGKILL every 600 ms and started again; afterwards every conversation was woken once, and
/// every timer has one `routing.timer_fired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_exactly_once_across_kill_9() {
    let url = testkit::fresh_postgres_database().await;
    db::migrate(&url).await.unwrap();
    let prefix = testkit::unique_prefix();
    let key = MasterKey::generate_base64();
    let cells = nats_cells(&url, &prefix, &key).await;
    let cell = cells.default_cell();
    let stop = CancellationToken::new();
    tokio::spawn(postvak_platform::relay::run_relay(
        cell.store.clone(),
        cell.bus.clone(),
        postvak_platform::relay::RelayOptions::new("local"),
        stop.clone(),
    ));
    let env = Env::with_cells(
        cells,
        Scratch::nats(&prefix),
        CancellationToken::new(),
        false,
    )
    .await;
    let mut child = spawn_child(&url, &prefix, &key);
    let start = now_us();
    let mut convs = Vec::new();
    for i in 0..12 {
        let conv = env.open(env.inbox, start).await;
        env.script(
            conv,
            &[(
                cev::SNOOZED,
                json!({"until_us": start + 3_000_000 + i * 250_000, "at_us": start}),
            )],
        )
        .await;
        convs.push(conv);
    }
    // Kill and restart around the due times (3 s … 5.75 s from now).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        kill_9(&mut child);
        child = spawn_child(&url, &prefix, &key);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut fired = 0;
        for c in &convs {
            fired += env
                .timers(*c)
                .await
                .iter()
                .filter(|t| t.state == "fired")
                .count();
        }
        if fired == convs.len() {
            break;
        }
        if Instant::now() >= deadline {
            let mut states = Vec::new();
            for c in &convs {
                let ts = env.timers(*c).await;
                states.push(format!(
                    "{c}: {:?}",
                    ts.iter()
                        .map(|t| (&t.kind, &t.state, &t.outcome))
                        .collect::<Vec<_>>()
                ));
            }
            let mut trail = Vec::new();
            for c in &convs {
                if env.timers(*c).await.is_empty() {
                    trail.push(snooze_trail(&env, *c, &prefix).await);
                }
            }
            panic!(
                "{fired} of {} timers fired after 60 s; timers per conversation:\n{}\n\
                 where each snooze without a timer stopped:\n{}",
                convs.len(),
                states.join("\n"),
                trail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_9(&mut child);
    stop.cancel();
    for c in &convs {
        let rows = env.timers(*c).await;
        let timer = fired_timer(&rows, "snooze_wake");
        assert_eq!(timer.outcome.as_deref(), Some("applied"), "{rows:?}");
        assert_fired_once(&env, &timer, "applied").await;
        let events = env.conversation(*c).await;
        let woken: Vec<_> = events
            .iter()
            .filter(|e| e.event_type == cev::WOKEN)
            .collect();
        assert_eq!(woken.len(), 1, "{:?}", types(&events));
        assert_eq!(
            woken[0].metadata.actor.as_deref(),
            Some(format!("timer:{}", timer.timer_id).as_str())
        );
    }
}
