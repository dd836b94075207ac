//! The relay: the event store is the outbox. The relay tails the cell's committed log from its
//! checkpoint, publishes each batch in order, waits for the bus to acknowledge it, and only then
//! saves the checkpoint. A crash between publish and checkpoint republishes the last batch on
//! restart: JetStream drops the duplicates (`Nats-Msg-Id` = event id) and consumers dedupe too.
//!
//! One relay per cell runs at a time. On PostgreSQL it holds a session advisory lock on a
//! connection of its own; other replicas wait as standbys and take over when the connection of
//! the active one dies. On SQLite (one process) no lock is needed.
//!
//! With the in-process bus the relay is not needed (the log is the stream) but harmless.

use crate::bus::Bus;
use crate::db::{Db, db_error};
use crate::store::{EventStore, LogPosition, Payloads, StoreError, TailPause};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The cell whose log is relayed (names the checkpoint and the lock).
    pub cell: String,
    /// Events published per batch (one checkpoint write per batch).
    pub batch_size: usize,
    /// How often the log is read when no append signal came (appends from other processes).
    pub poll_interval: Duration,
    /// How often a standby retries the relay lock.
    pub standby_retry: Duration,
    /// Longest pause after an error (bus or database unavailable) before retrying.
    pub max_backoff: Duration,
    /// Fault injection for tests; [`RelayFault::None`] in production.
    pub fault: RelayFault,
}

impl RelayOptions {
    pub fn new(cell: impl Into<String>) -> Self {
        Self {
            cell: cell.into(),
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            standby_retry: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            fault: RelayFault::None,
        }
    }
}

/// A simulated crash, to test recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayFault {
    #[default]
    None,
    /// Stop right after the bus acknowledged batch number `batch` (1-based), before its
    /// checkpoint is saved, as if the process died there.
    CrashAfterPublish { batch: u64 },
}

/// What a relay run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub batches: u64,
    /// Events the bus stored.
    pub published: u64,
    /// Events the bus had already (republished after a crash).
    pub duplicates: u64,
    /// The last checkpoint saved.
    pub checkpoint: LogPosition,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay of cell {cell} stopped by an injected fault after publishing batch {batch}")]
    InjectedCrash {
        cell: String,
        batch: u64,
        report: RelayReport,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the relay of one cell until `cancel` fires; the batch in flight is finished (published
/// and checkpointed) first. Errors of the bus or the database are logged and retried with
/// backoff: the relay never gives up on its own.
#[tracing::instrument(skip_all, fields(cell = %options.cell))]
pub async fn run_relay(
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    options: RelayOptions,
    cancel: CancellationToken,
) -> Result<RelayReport, RelayError> {
    let mut report = RelayReport::default();
    let db = store.db().clone();
    let batch_size = options.batch_size.max(1);
    loop {
        let Some(mut leader) = acquire_leadership(&db, &options, &cancel).await else {
            return Ok(report);
        };
        tracing::info!("relay active");
        let mut checkpoint = match load_checkpoint_retrying(&db, &options, &cancel).await {
            Some(c) => c,
            None => {
                leader.release().await;
                return Ok(report);
            }
        };
        report.checkpoint = checkpoint;
        let mut backoff = Backoff::new(options.max_backoff);
        let mut pause = TailPause::new(options.poll_interval);
        loop {
            if cancel.is_cancelled() {
                leader.release().await;
                return Ok(report);
            }
            if !leader.still_held().await {
                tracing::warn!("relay lock connection lost; back to standby");
                break;
            }
            let signal = store.append_signal();
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (batch, held_back) = match store
                .read_log_tail(checkpoint, batch_size, None, Payloads::All)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot read the log");
                    backoff.wait(&cancel).await;
                    continue;
                }
            };
            // A short batch is all there is: after publishing it the relay waits for the next
            // announcement (armed before the read) instead of reading once more to find nothing.
            if !batch.is_empty() {
                pause.reset();
            }
            let wait = (batch.len() < batch_size).then(|| pause.after_short_read(held_back));
            let Some(last) = batch.last().map(|e| e.position) else {
                if let Some(wait) = wait {
                    idle(&cancel, notified, wait).await;
                }
                continue;
            };
            // Not raced against `cancel`: a batch once started is published and checkpointed.
            let acks = match bus.publish_events(&batch).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "relay cannot publish");
                    backoff.wait(&cancel).await;
                    continue;
                }
            };
            backoff.reset();
            let duplicates = acks.iter().filter(|a| a.duplicate).count() as u64;
            let published = acks.len() as u64 - duplicates;
            report.batches += 1;
            report.published += published;
            report.duplicates += duplicates;
            metrics::counter!("postvak_relay_published_total", "cell" => options.cell.clone())
                .increment(published);
            if duplicates > 0 {
                metrics::counter!("postvak_relay_duplicates_total", "cell" => options.cell.clone())
                    .increment(duplicates);
            }
            if let RelayFault::CrashAfterPublish { batch } = options.fault
                && batch == report.batches
            {
                leader.release().await;
                return Err(RelayError::InjectedCrash {
                    cell: options.cell.clone(),
                    batch,
                    report,
                });
            }
            checkpoint = last;
            match save_checkpoint(&db, &options.cell, checkpoint).await {
                Ok(()) => {
                    report.checkpoint = checkpoint;
                    metrics::gauge!(
                        "postvak_relay_checkpoint_position",
                        "cell" => options.cell.clone()
                    )
                    .set(checkpoint.global_position as f64);
                }
                // The next save covers this batch too; a crash before it republishes (harmless).
                Err(e) => tracing::warn!(error = %e, "relay cannot save its checkpoint"),
            }
            tracing::debug!(published, duplicates, ?checkpoint, "relayed batch");
            if let Some(wait) = wait {
                idle(&cancel, notified, wait).await;
            }
        }
        leader.release().await;
    }
}

/// Waits for an announcement (`notified`, armed before the read), `wait`, or cancellation.
async fn idle(
    cancel: &CancellationToken,
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    wait: Duration,
) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = notified => {}
        () = tokio::time::sleep(wait) => {}
    }
}

/// The relay's saved position for a cell (`START` when it never ran).
pub async fn load_checkpoint(db: &Db, cell: &str) -> Result<LogPosition, StoreError> {
    let row: Option<(i64, i64)> = match db {
        Db::Postgres(p) => {
            sqlx::query_as("SELECT tx, global_position FROM relay_checkpoints WHERE cell = $1")
                .bind(cell)
                .fetch_optional(p)
                .await
        }
        Db::Sqlite(s) => {
            sqlx::query_as("SELECT tx, global_position FROM relay_checkpoints WHERE cell = ?1")
                .bind(cell)
                .fetch_optional(&s.reader)
                .await
        }
    }
    .map_err(db_error)?;
    row.map_or(Ok(LogPosition::START), |(tx, gp)| position_from_db(tx, gp))
}

/// Saves the relay's position; never moves it backwards.
pub async fn save_checkpoint(db: &Db, cell: &str, at: LogPosition) -> Result<(), StoreError> {
    let tx = tx_to_db(at.tx)?;
    match db {
        Db::Postgres(p) => sqlx::query(
            "INSERT INTO relay_checkpoints (cell, tx, global_position) VALUES ($1, $2, $3)
             ON CONFLICT (cell) DO UPDATE
               SET tx = excluded.tx, global_position = excluded.global_position, updated_at = now()
             WHERE (excluded.tx, excluded.global_position)
                 > (relay_checkpoints.tx, relay_checkpoints.global_position)",
        )
        .bind(cell)
        .bind(tx)
        .bind(at.global_position)
        .execute(p)
        .await
        .map(|_| ()),
        Db::Sqlite(s) => sqlx::query(
            "INSERT INTO relay_checkpoints (cell, tx, global_position) VALUES (?1, ?2, ?3)
             ON CONFLICT (cell) DO UPDATE
               SET tx = excluded.tx, global_position = excluded.global_position,
                   updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE (excluded.tx, excluded.global_position)
                 > (relay_checkpoints.tx, relay_checkpoints.global_position)",
        )
        .bind(cell)
        .bind(tx)
        .bind(at.global_position)
        .execute(&s.writer)
        .await
        .map(|_| ()),
    }
    .map_err(db_error)
}

/// `xid8` values are 64-bit but stored as `BIGINT`; they stay far below 2^63 in practice.
pub(crate) fn tx_to_db(tx: u64) -> Result<i64, StoreError> {
    i64::try_from(tx).map_err(|_| StoreError::Database(format!("transaction id {tx} out of range")))
}

pub(crate) fn position_from_db(tx: i64, global_position: i64) -> Result<LogPosition, StoreError> {
    let tx = u64::try_from(tx)
        .map_err(|_| StoreError::Database(format!("negative transaction id {tx}")))?;
    Ok(LogPosition {
        tx,
        global_position,
    })
}

async fn load_checkpoint_retrying(
    db: &Db,
    options: &RelayOptions,
    cancel: &CancellationToken,
) -> Option<LogPosition> {
    let mut backoff = Backoff::new(options.max_backoff);
    loop {
        match load_checkpoint(db, &options.cell).await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %e, "relay cannot load its checkpoint"),
        }
        if !backoff.wait(cancel).await {
            return None;
        }
    }
}

/// The right to relay a cell's log.
enum Leadership {
    /// SQLite: one process, nobody to compete with.
    Sole,
    /// PostgreSQL: a session advisory lock held on this connection.
    Locked { conn: PgConnection, key: i64 },
}

impl Leadership {
    async fn still_held(&mut self) -> bool {
        match self {
            Self::Sole => true,
            // A dead connection has lost its session lock; a live one still holds it.
            Self::Locked { conn, .. } => conn.ping().await.is_ok(),
        }
    }

    async fn release(self) {
        if let Self::Locked { mut conn, key } = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

/// The advisory lock key of a cell's relay: the first 8 bytes of SHA-256 over a label.
fn lock_key(cell: &str) -> i64 {
    let digest = Sha256::digest(format!("postvak.relay.{cell}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Waits until this process may relay the cell; `None` when cancelled first.
async fn acquire_leadership(
    db: &Db,
    options: &RelayOptions,
    cancel: &CancellationToken,
) -> Option<Leadership> {
    let pool = match db {
        Db::Sqlite(_) => return Some(Leadership::Sole),
        Db::Postgres(p) => p,
    };
    let key = lock_key(&options.cell);
    let mut announced = false;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        match try_lock(pool, key).await {
            Ok(Some(conn)) => return Some(Leadership::Locked { conn, key }),
            Ok(None) => {
                if !announced {
                    tracing::info!("another relay is active for this cell; standing by");
                    announced = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "relay cannot take its lock"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(options.standby_retry) => {}
        }
    }
}

/// Takes the lock on a connection detached from the pool (a pooled connection would carry the
/// lock back into the pool); `None` when another session holds it.
async fn try_lock(pool: &sqlx::PgPool, key: i64) -> Result<Option<PgConnection>, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_error)?.detach();
    let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .map_err(db_error)?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Exponential backoff from 100 ms up to a bound, cut short by cancellation.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// `false` when cancelled while waiting.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}
