//! Running an event handler as a durable, idempotent consumer.
//!
//! Deliveries are at least once. For each one the helper opens a transaction, records the event
//! id as processed (an id already there is a redelivery: the handler is skipped), runs the
//! handler in that transaction, advances the consumer's checkpoint, commits, and only then
//! acknowledges. The effect and the "processed" mark commit together or not at all.
//!
//! A failing handler is retried (nak with exponential backoff) and, after
//! [`ConsumerOptions::max_attempts`] deliveries or at once for a [`HandlerError::Permanent`],
//! recorded as a dead letter and acknowledged, so one bad event never blocks the ones after
//! it. Database or key-store outages are retried without counting towards dead-lettering.
//!
//! A stream's events are handled in stream order. JetStream gives at-least-once delivery, not
//! order: after a crash the events the dead process held come back only after `ack_wait`,
//! while the next process already receives the ones after them; a retried event (nak with a
//! delay) is likewise overtaken. Handlers fold a stream's events in order (a conversation's
//! `snoozed` means nothing before its `opened`), so an event whose predecessor in its stream
//! this consumer has not processed yet is *early*: it is put back (nak with a short delay, not
//! counted as an attempt) until the predecessor is processed or dead-lettered. Whether it was
//! is known from this run (the versions it finished) or else from the processed marks.
//! [`ConsumerOptions::order_wait`] bounds the wait for a predecessor that never comes (an
//! event published before the bus kept it): after it the event is handled, and logged.
//!
//! The checkpoint is a low watermark: every event at or before it was handled, skipped or
//! dead-lettered. An event waiting for a retry holds it back, so the in-process bus, which
//! resumes from the checkpoint after a restart, never loses a retry (what it reads again is
//! skipped as processed).

use crate::bus::{Bus, ConsumerSpec, EventConsumer, EventDelivery};
use crate::crypto::CryptoError;
use crate::db::{Db, DbTx, db_error};
use crate::relay::{position_from_db, tx_to_db};
use crate::store::{
    EventStore, LogPosition, RecordedEvent, StoreError, StoredEvent, TenantId, open_stored,
};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a handler did not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later: retried, dead-lettered when the attempts run out.
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (e.g. a payload this version cannot read): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// A database error: unavailability is retried without limit, the rest as `Transient`.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reacts to events, writing its effect through the transaction it is given.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Durable name: unique per consumer, stable across releases (it keys the checkpoint).
    fn name(&self) -> &str;
    /// Stream types to receive; empty = every event of the cell.
    fn stream_types(&self) -> Vec<String>;
    /// Handles one event. Must write only through `tx`, so that the effect commits with the
    /// "processed" mark. Shredded events arrive with [`crate::store::EventData::Shredded`].
    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError>;
    /// `true`: the events of one fetch may share one transaction (one commit for many
    /// events). Should any of them fail, that transaction is rolled back and each event is
    /// handled again in its own, as without batching. Default `false`.
    fn batch_transactions(&self) -> bool {
        false
    }

    /// Handles the fresh events of one batched transaction (see
    /// [`Self::batch_transactions`]), in log order. The default handles them one by one; a
    /// handler may override it to write many rows per statement. A failure rolls the whole
    /// batch back, as for `handle`.
    async fn handle_batch(
        &self,
        tx: &mut DbTx,
        events: &[&RecordedEvent],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// `true` when `handle` may append events through `tx` (`EventStore::append_in_tx`): the
    /// helper then announces each commit (`EventStore::announce_commit`), so log tailers —
    /// other processes' too — see those events at once instead of at their next poll.
    /// Default `false`.
    fn appends_events(&self) -> bool {
        false
    }

    /// Called after a transaction `handle` wrote into has committed (once per commit, also for
    /// a batch). A handler that queued work for a worker wakes it here: woken before the
    /// commit, the worker would look before the row is visible and sleep until its next poll.
    fn committed(&self) {}
}

/// Wakes a worker once the transaction that queued its work has committed: a handler calls
/// [`WakeAfterCommit::queued`] in `handle` and [`WakeAfterCommit::committed`] from
/// [`EventHandler::committed`]. (Woken inside the transaction, a waiting worker looks before
/// the row is visible, finds nothing and sleeps until its next poll.)
#[derive(Debug)]
pub struct WakeAfterCommit {
    wake: Arc<tokio::sync::Notify>,
    queued: std::sync::atomic::AtomicBool,
}

impl WakeAfterCommit {
    pub fn new(wake: Arc<tokio::sync::Notify>) -> Self {
        Self {
            wake,
            queued: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The running transaction queued work.
    pub fn queued(&self) {
        self.queued
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A transaction committed: wakes the worker if work was queued since the last commit
    /// (a rolled-back batch only costs a spurious wake-up; the worker also polls).
    pub fn committed(&self) {
        if self
            .queued
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.wake.notify_one();
        }
    }
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Deliveries fetched at once.
    pub batch_size: usize,
    /// Longest wait in one fetch; also bounds how long a stop request waits.
    pub fetch_wait: Duration,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Deliveries of a failing event before it is dead-lettered.
    pub max_attempts: u64,
    /// First retry delay; doubled per attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Longest wait of an early event for its predecessor in the stream (see the module
    /// documentation). A predecessor held by a dead process is back after `ack_wait`.
    pub order_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            fetch_wait: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            order_wait: Duration::from_secs(65),
        }
    }
}

impl ConsumerOptions {
    fn retry_delay(&self, attempts: u64) -> Duration {
        let exp = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        self.retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_max)
    }
}

/// What a consumer run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    pub handled: u64,
    /// Redeliveries of events already processed.
    pub duplicates: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    pub dead_lettered: u64,
    /// Deliveries put back because an earlier event of their stream was not processed yet.
    pub early: u64,
}

/// An event a consumer gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub position: LogPosition,
    pub attempts: u64,
    pub error: String,
}

/// Runs `handler` with default options until `cancel` fires.
pub async fn run_consumer(
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    handler: Arc<dyn EventHandler>,
    cancel: CancellationToken,
) -> ConsumerReport {
    run_consumer_with(store, bus, handler, ConsumerOptions::default(), cancel).await
}

/// Runs `handler` until `cancel` fires; the delivery in hand is finished first. Never gives up
/// on its own: bus and database errors are logged and retried with backoff.
#[tracing::instrument(skip_all, fields(consumer = %handler.name()))]
pub async fn run_consumer_with(
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    handler: Arc<dyn EventHandler>,
    options: ConsumerOptions,
    cancel: CancellationToken,
) -> ConsumerReport {
    let mut run = Run {
        db: store.db().clone(),
        store,
        handler,
        options,
        outstanding: BTreeSet::new(),
        max_finished: LogPosition::START,
        report: ConsumerReport::default(),
        finished_versions: HashMap::new(),
        finished_count: 0,
        early: HashMap::new(),
    };
    let mut pause = Pause::new(run.options.retry_max.min(Duration::from_secs(5)));
    'connect: loop {
        let Some(mut consumer) = run.open_consumer(bus.as_ref(), &cancel, &mut pause).await else {
            return run.report;
        };
        pause.reset();
        loop {
            if cancel.is_cancelled() {
                return run.report;
            }
            let deliveries = match consumer
                .fetch(run.options.batch_size.max(1), run.options.fetch_wait)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer cannot fetch");
                    if !pause.wait(&cancel).await {
                        return run.report;
                    }
                    continue 'connect;
                }
            };
            pause.reset();
            let deliveries = if run.handler.batch_transactions() && deliveries.len() > 1 {
                run.process_batch(deliveries).await
            } else {
                deliveries
            };
            for delivery in deliveries {
                run.process(delivery).await;
            }
        }
    }
}

/// The checkpoint of a consumer (`START` when it never handled anything).
pub async fn consumer_checkpoint(db: &Db, consumer: &str) -> Result<LogPosition, StoreError> {
    let row: Option<(i64, i64)> = match db {
        Db::Postgres(p) => {
            sqlx::query_as(
                "SELECT tx, global_position FROM consumer_checkpoints WHERE consumer = $1",
            )
            .bind(consumer)
            .fetch_optional(p)
            .await
        }
        Db::Sqlite(s) => {
            sqlx::query_as(
                "SELECT tx, global_position FROM consumer_checkpoints WHERE consumer = ?1",
            )
            .bind(consumer)
            .fetch_optional(&s.reader)
            .await
        }
    }
    .map_err(db_error)?;
    row.map_or(Ok(LogPosition::START), |(tx, gp)| position_from_db(tx, gp))
}

type DeadLetterRow = (String, String, String, i64, String, i64, i64, i64, String);

/// A consumer's dead letters, oldest position first.
pub async fn dead_letters(db: &Db, consumer: &str) -> Result<Vec<DeadLetter>, StoreError> {
    let rows: Vec<DeadLetterRow> = match db {
        Db::Postgres(p) => {
            sqlx::query_as(
                "SELECT event_id::text, stream_type, stream_id, stream_version, event_type, tx,
                    global_position, attempts, error
             FROM consumer_dead_letters WHERE consumer = $1 ORDER BY tx, global_position",
            )
            .bind(consumer)
            .fetch_all(p)
            .await
        }
        Db::Sqlite(s) => {
            sqlx::query_as(
                "SELECT event_id, stream_type, stream_id, stream_version, event_type, tx,
                    global_position, attempts, error
             FROM consumer_dead_letters WHERE consumer = ?1 ORDER BY tx, global_position",
            )
            .bind(consumer)
            .fetch_all(&s.reader)
            .await
        }
    }
    .map_err(db_error)?;
    rows.into_iter()
        .map(|(id, st, sid, sv, et, tx, gp, attempts, error)| {
            Ok(DeadLetter {
                event_id: Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Database(format!("bad event id {id}: {e}")))?,
                stream_type: st,
                stream_id: sid,
                stream_version: u64::try_from(sv).unwrap_or(0),
                event_type: et,
                position: position_from_db(tx, gp)?,
                attempts: u64::try_from(attempts).unwrap_or(0),
                error,
            })
        })
        .collect()
}

/// What became of one delivery.
enum Outcome {
    Handled,
    Duplicate,
    /// An earlier event of its stream is not processed yet: put back, not an attempt.
    Early,
    /// Retry; `counts` = false for outages, which never lead to dead-lettering.
    Failed {
        error: String,
        counts: bool,
        permanent: bool,
    },
}

struct Run {
    store: Arc<dyn EventStore>,
    db: Db,
    handler: Arc<dyn EventHandler>,
    options: ConsumerOptions,
    /// Positions of events waiting for a retry: the checkpoint stays below them.
    outstanding: BTreeSet<LogPosition>,
    /// The newest position finished in this run.
    max_finished: LogPosition,
    report: ConsumerReport,
    /// The highest version of each stream this run finished: the predecessor of an event is
    /// usually known here, without asking the database.
    finished_versions: HashMap<TenantId, HashMap<String, u64>>,
    /// Streams in `finished_versions`, over all tenants.
    finished_count: usize,
    /// Early events: when first put back, and how often (those deliveries are not attempts).
    early: HashMap<Uuid, (Instant, u64)>,
}

/// Streams remembered in [`Run::finished_versions`] before it starts over (each entry is a
/// shortcut: a forgotten stream costs one indexed read at its next event).
const FINISHED_VERSIONS_KEPT: usize = 100_000;

impl Run {
    async fn open_consumer(
        &self,
        bus: &dyn Bus,
        cancel: &CancellationToken,
        pause: &mut Pause,
    ) -> Option<Box<dyn EventConsumer>> {
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            let opened = match consumer_checkpoint(&self.db, self.handler.name()).await {
                Ok(start_after) => bus
                    .event_consumer(ConsumerSpec {
                        name: self.handler.name().to_owned(),
                        stream_types: self.handler.stream_types(),
                        start_after,
                        ack_wait: self.options.ack_wait,
                    })
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match opened {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(error = %e, "consumer cannot start"),
            }
            if !pause.wait(cancel).await {
                return None;
            }
        }
    }

    /// The checkpoint to write after finishing `at`, if it moves: `at` while no older event
    /// waits for a retry, and everything finished so far once none waits at all.
    fn finish(&mut self, at: LogPosition) -> Option<LogPosition> {
        self.outstanding.remove(&at);
        self.max_finished = self.max_finished.max(at);
        match self.outstanding.first() {
            None => Some(self.max_finished),
            Some(oldest) if *oldest < at => None,
            Some(_) => Some(at),
        }
    }

    /// Handles `deliveries` in one transaction and acknowledges them; on any failure nothing
    /// of it stays and they are returned, to be processed one by one.
    #[tracing::instrument(skip_all, fields(events = deliveries.len()))]
    async fn process_batch(&mut self, deliveries: Vec<EventDelivery>) -> Vec<EventDelivery> {
        let (outstanding, max_finished) = (self.outstanding.clone(), self.max_finished);
        match self.attempt_batch(&deliveries).await {
            Some(fresh) => {
                let name = self.handler.name().to_owned();
                let handled = fresh.iter().filter(|f| **f).count() as u64;
                let duplicates = fresh.len() as u64 - handled;
                self.report.handled += handled;
                self.report.duplicates += duplicates;
                metrics::counter!("postvak_consumer_events_total", "consumer" => name.clone(), "outcome" => "handled").increment(handled);
                metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "duplicate").increment(duplicates);
                for d in &deliveries {
                    ack(d).await;
                }
                Vec::new()
            }
            None => {
                self.outstanding = outstanding;
                self.max_finished = max_finished;
                deliveries
            }
        }
    }

    /// Which events were fresh (not duplicates), or `None` when the batch did not commit.
    async fn attempt_batch(&mut self, deliveries: &[EventDelivery]) -> Option<Vec<bool>> {
        let mut recorded = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            recorded.push(open_stored(self.store.keyring(), &d.event).await.ok()?);
        }
        let mut tx = self.db.begin().await.ok()?;
        // Every event's predecessor is finished, processed, or earlier in this batch; else the
        // events go one by one, where an early one waits.
        let mut in_batch: HashMap<(TenantId, &str), u64> = HashMap::new();
        for d in deliveries {
            let e = &d.event;
            let before = in_batch
                .get(&(e.tenant_id, e.stream_id.as_str()))
                .is_some_and(|v| *v + 1 >= e.stream_version);
            if !before
                && !self.predecessor_finished(e)
                && !predecessor_processed(&mut tx, self.handler.name(), e)
                    .await
                    .ok()?
            {
                return None;
            }
            let v = in_batch
                .entry((e.tenant_id, e.stream_id.as_str()))
                .or_insert(0);
            *v = (*v).max(e.stream_version);
        }
        let events: Vec<&StoredEvent> = deliveries.iter().map(|d| &d.event).collect();
        let fresh = mark_processed_many(&mut tx, self.handler.name(), &events)
            .await
            .ok()?;
        let handle: Vec<&RecordedEvent> = recorded
            .iter()
            .zip(&fresh)
            .filter_map(|(r, f)| f.then_some(r))
            .collect();
        if let Err(e) = self.handler.handle_batch(&mut tx, &handle).await {
            tracing::debug!(error = %e, events = handle.len(), "batch failed; one by one");
            return None;
        }
        let mut checkpoint = None;
        for d in deliveries {
            if let Some(at) = self.finish(d.event.position) {
                checkpoint = checkpoint.max(Some(at));
            }
        }
        if let Some(at) = checkpoint {
            save_consumer_checkpoint(&mut tx, self.handler.name(), at)
                .await
                .ok()?;
        }
        tx.commit().await.ok()?;
        for d in deliveries {
            self.remember_finished(&d.event);
        }
        if fresh.iter().any(|f| *f) {
            self.handler.committed();
            if self.handler.appends_events() {
                self.store.announce_commit();
            }
        }
        Some(fresh)
    }

    #[tracing::instrument(skip_all, fields(event_id = %delivery.event.event_id, event_type = %delivery.event.event_type))]
    async fn process(&mut self, delivery: EventDelivery) {
        let event = &delivery.event;
        // Deliveries put back as early were not attempts.
        let early = self.early.get(&event.event_id).map_or(0, |(_, n)| *n);
        let attempts = (delivery.redeliveries + 1).saturating_sub(early).max(1);
        let outcome = self.attempt(event).await;
        let name = self.handler.name().to_owned();
        match outcome {
            Outcome::Early => {
                self.report.early += 1;
                metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "early").increment(1);
                self.outstanding.insert(event.position);
                let waits = self
                    .early
                    .entry(event.event_id)
                    .or_insert((Instant::now(), 0));
                waits.1 += 1;
                let delay = early_delay(waits.1);
                tracing::debug!(stream_id = %event.stream_id, version = event.stream_version, "early: an earlier event of the stream is not processed yet");
                if let Err(e) = delivery.acker.nak(delay).await {
                    tracing::warn!(error = %e, "cannot nak");
                }
            }
            Outcome::Handled | Outcome::Duplicate => {
                self.remember_finished(event);
                if matches!(outcome, Outcome::Handled) {
                    self.report.handled += 1;
                    metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "handled").increment(1);
                } else {
                    self.report.duplicates += 1;
                    metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "duplicate").increment(1);
                }
                ack(&delivery).await;
            }
            Outcome::Failed {
                error,
                counts,
                permanent,
            } => {
                let give_up = permanent || (counts && attempts >= self.options.max_attempts);
                if give_up {
                    match self.dead_letter(event, attempts, &error).await {
                        Ok(()) => {
                            self.remember_finished(event);
                            tracing::error!(%error, attempts, "event dead-lettered");
                            self.report.dead_lettered += 1;
                            metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "dead_lettered").increment(1);
                            ack(&delivery).await;
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot record dead letter"),
                    }
                }
                tracing::warn!(%error, attempts, "handler failed; will retry");
                self.report.retried += 1;
                metrics::counter!("postvak_consumer_events_total", "consumer" => name, "outcome" => "retried").increment(1);
                self.outstanding.insert(event.position);
                let delay = self.options.retry_delay(attempts);
                if let Err(e) = delivery.acker.nak(delay).await {
                    // Redelivered after ack_wait instead.
                    tracing::warn!(error = %e, "cannot nak");
                }
            }
        }
    }

    async fn attempt(&mut self, event: &StoredEvent) -> Outcome {
        let outage = |e: &dyn std::fmt::Display| Outcome::Failed {
            error: e.to_string(),
            counts: false,
            permanent: false,
        };
        let recorded = match open_stored(self.store.keyring(), event).await {
            Ok(r) => r,
            Err(e) if is_outage(&e) => return outage(&e),
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot open event: {e}"),
                    counts: true,
                    permanent: true,
                };
            }
        };
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => return outage(&e),
        };
        if !self.predecessor_finished(event) {
            match predecessor_processed(&mut tx, self.handler.name(), event).await {
                Ok(true) => {}
                Ok(false) if self.may_wait(event) => return Outcome::Early,
                Ok(false) => {}
                Err(e) => return outage(&e),
            }
        }
        let fresh = match mark_processed(&mut tx, self.handler.name(), event).await {
            Ok(f) => f,
            Err(e) => return outage(&e),
        };
        if fresh && let Err(e) = self.handler.handle(&mut tx, &recorded).await {
            return match e {
                HandlerError::Store(ref s) if is_outage(s) => outage(&e),
                HandlerError::Permanent(_) => Outcome::Failed {
                    error: e.to_string(),
                    counts: true,
                    permanent: true,
                },
                _ => Outcome::Failed {
                    error: e.to_string(),
                    counts: true,
                    permanent: false,
                },
            };
        }
        // The checkpoint moves with the effect. Should the commit fail, the retry path puts
        // the position back among the outstanding ones.
        if let Some(at) = self.finish(event.position)
            && let Err(e) = save_consumer_checkpoint(&mut tx, self.handler.name(), at).await
        {
            return outage(&e);
        }
        if let Err(e) = tx.commit().await {
            return outage(&e);
        }
        if fresh {
            self.handler.committed();
            if self.handler.appends_events() {
                self.store.announce_commit();
            }
        }
        if fresh {
            Outcome::Handled
        } else {
            Outcome::Duplicate
        }
    }

    /// `event` is its stream's first, or this run finished its predecessor.
    fn predecessor_finished(&self, event: &StoredEvent) -> bool {
        event.stream_version <= 1
            || self
                .finished_versions
                .get(&event.tenant_id)
                .and_then(|streams| streams.get(event.stream_id.as_str()))
                .is_some_and(|v| *v + 1 >= event.stream_version)
    }

    fn remember_finished(&mut self, event: &StoredEvent) {
        self.early.remove(&event.event_id);
        let streams = self.finished_versions.entry(event.tenant_id).or_default();
        if let Some(v) = streams.get_mut(event.stream_id.as_str()) {
            *v = (*v).max(event.stream_version);
            return;
        }
        self.finished_count += 1;
        if self.finished_count > FINISHED_VERSIONS_KEPT {
            self.finished_versions.clear();
            self.finished_count = 1;
        }
        self.finished_versions
            .entry(event.tenant_id)
            .or_default()
            .insert(event.stream_id.clone(), event.stream_version);
    }

    /// Whether an early `event` may wait longer for its predecessor: `false` once it waited
    /// [`ConsumerOptions::order_wait`] (the predecessor is not coming; handled anyway).
    fn may_wait(&mut self, event: &StoredEvent) -> bool {
        let since = self
            .early
            .entry(event.event_id)
            .or_insert((Instant::now(), 0))
            .0;
        if since.elapsed() < self.options.order_wait {
            return true;
        }
        tracing::error!(
            stream_id = %event.stream_id,
            version = event.stream_version,
            waited_s = since.elapsed().as_secs(),
            "the predecessor of this event never came; handled out of stream order"
        );
        metrics::counter!("postvak_consumer_events_total", "consumer" => self.handler.name().to_owned(), "outcome" => "out_of_order").increment(1);
        false
    }

    async fn dead_letter(
        &mut self,
        event: &StoredEvent,
        attempts: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let name = self.handler.name().to_owned();
        let mut tx = self.db.begin().await?;
        mark_processed(&mut tx, &name, event).await?;
        insert_dead_letter(&mut tx, &name, event, attempts, error).await?;
        if let Some(at) = self.finish(event.position) {
            save_consumer_checkpoint(&mut tx, &name, at).await?;
        }
        tx.commit().await
    }
}

async fn ack(delivery: &EventDelivery) {
    // A lost ack means a redelivery, which the processed table turns into a no-op.
    if let Err(e) = delivery.acker.ack().await {
        tracing::warn!(error = %e, "cannot ack");
    }
}

fn is_outage(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unavailable(_) | StoreError::Crypto(CryptoError::Storage(_))
    )
}

/// How long an early event is put back: 100 ms, doubling per wait up to 2 s.
fn early_delay(waits: u64) -> Duration {
    let exp = u32::try_from(waits.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(5);
    Duration::from_millis(100)
        .saturating_mul(2u32.pow(exp))
        .min(Duration::from_secs(2))
}

/// Whether `consumer` processed (or dead-lettered) the event before `event` in its stream.
async fn predecessor_processed(
    tx: &mut DbTx,
    consumer: &str,
    event: &StoredEvent,
) -> Result<bool, StoreError> {
    let version = i64::try_from(event.stream_version.saturating_sub(1)).unwrap_or(i64::MAX);
    match tx {
        // Two primary-key lookups: events (tenant, stream, version), consumer_processed.
        DbTx::Postgres(c) => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events e JOIN consumer_processed p \
             ON p.consumer = $1 AND p.event_id = e.event_id \
             WHERE e.tenant_id = $2 AND e.stream_id = $3 AND e.stream_version = $4)",
        )
        .bind(consumer)
        .bind(event.tenant_id.0)
        .bind(&event.stream_id)
        .bind(version)
        .fetch_one(&mut **c)
        .await
        .map_err(db_error),
        // The processed marks hold ids as text, the log as blobs: two lookups.
        DbTx::Sqlite(c) => {
            let id: Option<Uuid> = sqlx::query_scalar(
                "SELECT event_id FROM events \
                 WHERE tenant_id = ?1 AND stream_id = ?2 AND stream_version = ?3",
            )
            .bind(event.tenant_id.0)
            .bind(&event.stream_id)
            .bind(version)
            .fetch_optional(&mut **c)
            .await
            .map_err(db_error)?;
            let Some(id) = id else {
                return Ok(false);
            };
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM consumer_processed \
                 WHERE consumer = ?1 AND event_id = ?2)",
            )
            .bind(consumer)
            .bind(id.to_string())
            .fetch_one(&mut **c)
            .await
            .map_err(db_error)
        }
    }
}

/// Records `event` as processed by `consumer`; `false` when it already was.
async fn mark_processed(
    tx: &mut DbTx,
    consumer: &str,
    event: &StoredEvent,
) -> Result<bool, StoreError> {
    let t = tx_to_db(event.position.tx)?;
    let done = match tx {
        DbTx::Postgres(c) => sqlx::query(
            "INSERT INTO consumer_processed (consumer, event_id, tx, global_position)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event.event_id)
        .bind(t)
        .bind(event.position.global_position)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
        DbTx::Sqlite(c) => sqlx::query(
            "INSERT INTO consumer_processed (consumer, event_id, tx, global_position)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event.event_id.to_string())
        .bind(t)
        .bind(event.position.global_position)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
    }
    .map_err(db_error)?;
    Ok(done == 1)
}

/// Records `events` as processed by `consumer` with one statement per backend round trip
/// (not one per event); for each, `false` when it already was (or appears earlier in
/// `events`).
async fn mark_processed_many(
    tx: &mut DbTx,
    consumer: &str,
    events: &[&StoredEvent],
) -> Result<Vec<bool>, StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let first: Vec<bool> = events.iter().map(|e| seen.insert(e.event_id)).collect();
    let mut rows = Vec::with_capacity(events.len());
    for (e, _) in events.iter().zip(&first).filter(|(_, f)| **f) {
        rows.push((
            e.event_id,
            tx_to_db(e.position.tx)?,
            e.position.global_position,
        ));
    }
    let mut inserted = std::collections::HashSet::with_capacity(rows.len());
    // Three parameters per row and the consumer's name: far below either backend's limit.
    for chunk in rows.chunks(MARK_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO consumer_processed (consumer, event_id, tx, global_position) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = 2 + i * 3;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${}, ${}, ${})", p, p + 1, p + 2));
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING event_id");
        let sql = sqlx::AssertSqlSafe(sql);
        match tx {
            DbTx::Postgres(c) => {
                let mut q = sqlx::query_scalar::<_, Uuid>(sql).bind(consumer);
                for (id, t, g) in chunk {
                    q = q.bind(*id).bind(*t).bind(*g);
                }
                inserted.extend(q.fetch_all(&mut **c).await.map_err(db_error)?);
            }
            DbTx::Sqlite(c) => {
                let mut q = sqlx::query_scalar::<_, String>(sql).bind(consumer);
                for (id, t, g) in chunk {
                    q = q.bind(id.to_string()).bind(*t).bind(*g);
                }
                for id in q.fetch_all(&mut **c).await.map_err(db_error)? {
                    inserted.insert(
                        Uuid::parse_str(&id).map_err(|e| StoreError::Database(e.to_string()))?,
                    );
                }
            }
        }
    }
    Ok(events
        .iter()
        .zip(first)
        .map(|(e, f)| f && inserted.contains(&e.event_id))
        .collect())
}

/// Events marked processed per statement by [`mark_processed_many`].
const MARK_CHUNK: usize = 256;

/// Moves a consumer's checkpoint forward (never back) inside `tx`.
pub async fn save_consumer_checkpoint(
    tx: &mut DbTx,
    consumer: &str,
    at: LogPosition,
) -> Result<(), StoreError> {
    let t = tx_to_db(at.tx)?;
    match tx {
        DbTx::Postgres(c) => sqlx::query(
            "INSERT INTO consumer_checkpoints (consumer, tx, global_position) VALUES ($1, $2, $3)
             ON CONFLICT (consumer) DO UPDATE
               SET tx = excluded.tx, global_position = excluded.global_position, updated_at = now()
             WHERE (excluded.tx, excluded.global_position)
                 > (consumer_checkpoints.tx, consumer_checkpoints.global_position)",
        )
        .bind(consumer)
        .bind(t)
        .bind(at.global_position)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
        DbTx::Sqlite(c) => sqlx::query(
            "INSERT INTO consumer_checkpoints (consumer, tx, global_position) VALUES (?1, ?2, ?3)
             ON CONFLICT (consumer) DO UPDATE
               SET tx = excluded.tx, global_position = excluded.global_position,
                   updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE (excluded.tx, excluded.global_position)
                 > (consumer_checkpoints.tx, consumer_checkpoints.global_position)",
        )
        .bind(consumer)
        .bind(t)
        .bind(at.global_position)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
    }
    .map(|_| ())
    .map_err(db_error)
}

async fn insert_dead_letter(
    tx: &mut DbTx,
    consumer: &str,
    e: &StoredEvent,
    attempts: u64,
    error: &str,
) -> Result<(), StoreError> {
    let t = tx_to_db(e.position.tx)?;
    let version = i64::try_from(e.stream_version).unwrap_or(i64::MAX);
    let attempts = i64::try_from(attempts).unwrap_or(i64::MAX);
    match tx {
        DbTx::Postgres(c) => sqlx::query(
            "INSERT INTO consumer_dead_letters (consumer, event_id, tenant_id, stream_type,
                 stream_id, stream_version, event_type, tx, global_position, attempts, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(e.event_id)
        .bind(e.tenant_id.0)
        .bind(&e.stream_type)
        .bind(&e.stream_id)
        .bind(version)
        .bind(&e.event_type)
        .bind(t)
        .bind(e.position.global_position)
        .bind(attempts)
        .bind(error)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
        DbTx::Sqlite(c) => sqlx::query(
            "INSERT INTO consumer_dead_letters (consumer, event_id, tenant_id, stream_type,
                 stream_id, stream_version, event_type, tx, global_position, attempts, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(e.event_id.to_string())
        .bind(e.tenant_id.0.to_string())
        .bind(&e.stream_type)
        .bind(&e.stream_id)
        .bind(version)
        .bind(&e.event_type)
        .bind(t)
        .bind(e.position.global_position)
        .bind(attempts)
        .bind(error)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
    }
    .map(|_| ())
    .map_err(db_error)
}

/// Exponential pause after errors, cut short by cancellation.
struct Pause {
    next: Duration,
    max: Duration,
}

impl Pause {
    fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}
