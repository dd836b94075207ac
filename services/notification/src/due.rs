//! Due work of every tenant (`notification_due`) and the dispatcher that runs it with limits
//! per lane (one webhook endpoint, the relay) and overall. The table holds only ids and times,
//! so it carries no row-level security: it is read before any tenant is bound. Each job checks
//! its own row again in a tenant transaction; a stale due row is harmless.

use async_trait::async_trait;
use postvak_platform::db::{Db, DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{StoreError, TenantId};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) const MAIL: &str = "mail";
pub(crate) const WEBHOOK: &str = "webhook";
/// Agent notifications: one item per user.
pub(crate) const AGENT: &str = "agent";

#[derive(Debug, Clone)]
pub(crate) struct DueItem {
    pub item_id: Uuid,
    pub tenant: TenantId,
    pub lane: String,
}

/// Due items, at most `$3` per lane: a lane with a large backlog (a slow endpoint) can't fill
/// the page and hide the other lanes' work. A row another process holds ([`claim`]) is not
/// due until its lease ends.
const DUE_SQL: &str = "SELECT item_id, tenant_id, lane FROM ( \
                         SELECT item_id, tenant_id, lane, due_at, ROW_NUMBER() OVER \
                           (PARTITION BY lane ORDER BY due_at, item_id) AS rn \
                         FROM notification_due WHERE kind = $1 AND due_at <= $2 \
                           AND (leased_until IS NULL OR leased_until <= $2)) d \
                       WHERE rn <= $3 ORDER BY due_at LIMIT $4";

async fn due_items(
    db: &Db,
    kind: &str,
    now: i64,
    per_lane: i64,
    limit: i64,
) -> Result<Vec<DueItem>, StoreError> {
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query(DUE_SQL)
                .bind(kind)
                .bind(now)
                .bind(per_lane)
                .bind(limit)
                .fetch_all($pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| {
                            Ok(DueItem {
                                item_id: r.try_get(0)?,
                                tenant: TenantId(r.try_get(1)?),
                                lane: r.try_get(2)?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                })
        };
    }
    match db {
        Db::Postgres(p) => fetch!(p),
        Db::Sqlite(s) => fetch!(&s.reader),
    }
    .map_err(db_error)
}

/// Schedules (or reschedules) an item.
pub(crate) async fn schedule(
    tx: &mut DbTx,
    kind: &str,
    item: Uuid,
    tenant: TenantId,
    lane: &str,
    due_at: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO notification_due (kind, item_id, tenant_id, lane, due_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (kind, item_id) DO UPDATE SET due_at = excluded.due_at"
    )
    .bind(kind)
    .bind(item)
    .bind(tenant.0)
    .bind(lane)
    .bind(due_at)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

/// Schedules many items of one tenant, all due at `due_at` (one statement per
/// [`MANY_CHUNK`] items); `items` are `(item, lane)`.
pub(crate) async fn schedule_many(
    tx: &mut DbTx,
    kind: &str,
    tenant: TenantId,
    items: &[(Uuid, String)],
    due_at: i64,
) -> Result<(), StoreError> {
    for chunk in items.chunks(MANY_CHUNK) {
        // Kind, tenant and time once, numbered in order of first use (ADR 0005).
        let mut sql = String::from(
            "INSERT INTO notification_due (kind, item_id, tenant_id, lane, due_at) \
             VALUES ($1, $2, $3, $4, $5)",
        );
        for i in 1..chunk.len() {
            let p = 6 + (i - 1) * 2;
            sql.push_str(&format!(", ($1, ${}, $3, ${}, $5)", p, p + 1));
        }
        sql.push_str(" ON CONFLICT (kind, item_id) DO UPDATE SET due_at = excluded.due_at");
        on_tx!(tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(kind);
            for (i, (item, lane)) in chunk.iter().enumerate() {
                q = q.bind(*item);
                if i == 0 {
                    q = q.bind(tenant.0);
                }
                q = q.bind(lane.as_str());
                if i == 0 {
                    q = q.bind(due_at);
                }
            }
            q.execute(c).await.map(|_| ())
        })
        .map_err(db_error)?;
    }
    Ok(())
}

/// Drops the due rows of many items: on PostgreSQL one statement (`= ANY($2)`, one text for
/// every count, so prepared once), on SQLite one per [`MANY_CHUNK`].
pub(crate) async fn unschedule_many(
    tx: &mut DbTx,
    kind: &str,
    items: &[Uuid],
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    if let DbTx::Postgres(c) = tx {
        sqlx::query("DELETE FROM notification_due WHERE kind = $1 AND item_id = ANY($2)")
            .bind(kind)
            .bind(items)
            .execute(&mut **c)
            .await
            .map_err(db_error)?;
        return Ok(());
    }
    for chunk in items.chunks(MANY_CHUNK) {
        let list = postvak_platform::db::placeholders(2, chunk.len());
        let sql = format!("DELETE FROM notification_due WHERE kind = $1 AND item_id IN ({list})");
        on_tx!(tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(kind);
            for item in chunk {
                q = q.bind(*item);
            }
            q.execute(c).await.map(|_| ())
        })
        .map_err(db_error)?;
    }
    Ok(())
}

/// Items per statement of [`schedule_many`] and [`unschedule_many`].
const MANY_CHUNK: usize = 256;

/// Schedules an item no later than `due_at` (an earlier schedule stays), and counts the
/// schedule in the row's `seq`, so that a job that read the row before does not move it away
/// (see [`release`]).
pub(crate) async fn schedule_earliest(
    tx: &mut DbTx,
    kind: &str,
    item: Uuid,
    tenant: TenantId,
    lane: &str,
    due_at: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO notification_due (kind, item_id, tenant_id, lane, due_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (kind, item_id) DO UPDATE SET due_at = CASE \
           WHEN excluded.due_at < notification_due.due_at THEN excluded.due_at \
           ELSE notification_due.due_at END, seq = notification_due.seq + 1"
    )
    .bind(kind)
    .bind(item)
    .bind(tenant.0)
    .bind(lane)
    .bind(due_at)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

/// A job's hold on an item's due row, from [`claim`]: the row's schedule counter when it was
/// claimed, and the lease's end, which is also the token only this holder knows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pub seq: i64,
    pub until: i64,
}

/// Claims an item's due row for a job until `until` (µs), if it is due at `now` and nobody
/// holds it: `None` when there is no such row or another process holds it. The claim commits
/// with `tx`; a concurrent claim waits for it (PostgreSQL re-checks the lease on the row it
/// waited for; SQLite has one writer) and finds the row held. The job reads the work the row
/// stands for after its claim, so a schedule after that read shows as a new counter
/// (see [`release`]).
pub(crate) async fn claim(
    tx: &mut DbTx,
    kind: &str,
    item: Uuid,
    now: i64,
    until: i64,
) -> Result<Option<Claim>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE notification_due SET leased_until = $1 \
         WHERE kind = $2 AND item_id = $3 AND due_at <= $4 \
           AND (leased_until IS NULL OR leased_until <= $4) RETURNING seq"
    )
    .bind(until)
    .bind(kind)
    .bind(item)
    .bind(now)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| r.try_get::<i64, _>(0).map(|seq| Claim { seq, until }))
        .transpose()))
    .map_err(db_error)
}

/// Ends a claim: moves the item's due row to `due_at` (`None`: drops it) and clears the lease
/// — when nobody scheduled the item since the claim. When somebody did, the work they
/// scheduled is newer than what the job read: the row keeps its earlier time (`due_at` only
/// brings it forward) and is released, due again. A holder whose lease ran out and was
/// claimed by another process changes nothing but, at most, an earlier time.
///
/// On PostgreSQL the conditional statements wait for a concurrent schedule's row lock and
/// then see its new counter, so a schedule is never overwritten whichever commits first.
pub(crate) async fn release(
    tx: &mut DbTx,
    kind: &str,
    item: Uuid,
    tenant: TenantId,
    lane: &str,
    held: Claim,
    due_at: Option<i64>,
) -> Result<(), StoreError> {
    let moved = match due_at {
        Some(at) => on_tx!(tx, |c| sqlx::query(
            "UPDATE notification_due SET due_at = $1, leased_until = NULL \
             WHERE kind = $2 AND item_id = $3 AND seq = $4 AND leased_until = $5"
        )
        .bind(at)
        .bind(kind)
        .bind(item)
        .bind(held.seq)
        .bind(held.until)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?,
        None => on_tx!(tx, |c| sqlx::query(
            "DELETE FROM notification_due \
             WHERE kind = $1 AND item_id = $2 AND seq = $3 AND leased_until = $4"
        )
        .bind(kind)
        .bind(item)
        .bind(held.seq)
        .bind(held.until)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?,
    };
    if moved > 0 {
        return Ok(());
    }
    if let Some(at) = due_at {
        schedule_earliest(tx, kind, item, tenant, lane, at).await?;
    }
    on_tx!(tx, |c| sqlx::query(
        "UPDATE notification_due SET leased_until = NULL \
         WHERE kind = $1 AND item_id = $2 AND leased_until = $3"
    )
    .bind(kind)
    .bind(item)
    .bind(held.until)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

pub(crate) async fn unschedule(tx: &mut DbTx, kind: &str, item: Uuid) -> Result<(), StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "DELETE FROM notification_due WHERE kind = $1 AND item_id = $2"
    )
    .bind(kind)
    .bind(item)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)
}

/// Resolves when a finished job's outcome is committed (see [`Job::run`]).
pub(crate) type Settling = futures::future::BoxFuture<'static, ()>;

/// One kind of work.
#[async_trait]
pub(crate) trait Job: Send + Sync + 'static {
    /// Runs `item`. Its slot (lane, tenant, total) is free when this returns. A job that hands
    /// its outcome to be committed later returns the commit as [`Settling`]: until it
    /// resolves, the item is not started again (its due row may still be there), but the slot
    /// already serves other items. `None`: the outcome is committed.
    async fn run(&self, item: DueItem) -> Option<Settling>;
}

#[derive(Default)]
struct InFlight {
    /// Items running or settling: never started twice.
    items: HashSet<Uuid>,
    /// Items running (holding a slot).
    running: usize,
    lanes: HashMap<String, usize>,
    tenants: HashMap<TenantId, usize>,
}

/// Limits of a dispatcher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub per_lane: usize,
    /// In flight for one tenant over all its lanes (many slow endpoints of one tenant can't
    /// take every slot).
    pub per_tenant: usize,
    pub total: usize,
    /// Lanes whose name starts with this prefix get their own, usually smaller, limit (an
    /// inbox's own relay: `relay:<inbox>`), so that one slow relay can't take every slot.
    pub capped_lanes: Option<(&'static str, usize)>,
}

impl Limits {
    fn lane_limit(&self, lane: &str) -> usize {
        match self.capped_lanes {
            Some((prefix, cap)) if lane.starts_with(prefix) => cap.max(1),
            _ => self.per_lane.max(1),
        }
    }
}

/// Runs due items of `kind` until `cancel` fires. A lane at its limit is skipped, never
/// waited for, so a slow lane delays only itself. The limits count running jobs; an item whose
/// outcome is still being committed ([`Settling`]) holds no slot but is not started again.
///
/// One query reads a page of due work (16 × `total`, at most 4 × `per_lane` per lane) into a
/// local backlog; a finished job starts the next eligible item of that backlog without asking
/// the database again. The page is read again only when the backlog holds nothing startable
/// for a free slot, when new work is announced (`wake`) while a slot is free or the backlog is
/// empty, or after a pause — not once per finished job, which made the dispatcher's own query
/// (a sort of every due row of the kind) the bottleneck at a few thousand jobs per second.
pub(crate) async fn dispatch(
    db: Db,
    kind: &'static str,
    job: Arc<dyn Job>,
    limits: Limits,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let state = Arc::new(Mutex::new(InFlight::default()));
    let per_lane = limits.per_lane.max(1);
    let total = limits.total.max(1);
    let limits = Limits {
        per_lane,
        per_tenant: limits.per_tenant.max(1),
        total,
        capped_lanes: limits.capped_lanes,
    };
    // Finished jobs: start the next from the backlog.
    let done = Arc::new(Notify::new());
    let mut backlog: Vec<DueItem> = Vec::new();
    let mut read_db = true;
    let mut pause = Duration::from_millis(200);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if read_db {
            pause = Duration::from_millis(200);
            let now = crate::now_us();
            // Four times what a lane may have in flight, so that a page still holds
            // startable work of a busy lane; the page four times that per slot, so that lanes
            // with a backlog fill it no sooner than with one lane-limit each (as before).
            let lane_page = i64::try_from(per_lane.saturating_mul(4)).unwrap_or(i64::MAX);
            let fetch = i64::try_from(total.saturating_mul(16)).unwrap_or(4096);
            match due_items(&db, kind, now, lane_page, fetch).await {
                Ok(items) => {
                    let s = state.lock().unwrap_or_else(PoisonError::into_inner);
                    backlog = items
                        .into_iter()
                        .filter(|i| !s.items.contains(&i.item_id))
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind, "cannot read due work");
                    pause = Duration::from_secs(2);
                }
            }
            start_eligible(&mut backlog, &state, &job, &done, limits);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            // New work: read at once if a slot could take it; with every slot taken, the
            // backlog is drawn first (the page is in due order, so the new work would come
            // after it) and the page read when the backlog has nothing for a free slot.
            () = wake.notified() => read_db = backlog.is_empty() || slot_free(&state, limits),
            () = tokio::time::sleep(pause) => read_db = true,
            () = done.notified() => {
                // A slot is free: the backlog first, the database when it has nothing for a
                // slot that is still free (finished jobs' notices coalesce: another may have
                // taken the slot meanwhile).
                read_db = start_eligible(&mut backlog, &state, &job, &done, limits) == 0
                    && slot_free(&state, limits);
            }
        }
    }
}

/// Starts what the limits allow from `backlog` (oldest first), removing what it started;
/// returns how many.
fn start_eligible(
    backlog: &mut Vec<DueItem>,
    state: &Arc<Mutex<InFlight>>,
    job: &Arc<dyn Job>,
    done: &Arc<Notify>,
    limits: Limits,
) -> usize {
    let (per_tenant, total) = (limits.per_tenant, limits.total);
    let mut started = 0;
    let mut keep = Vec::with_capacity(backlog.len());
    // One lock for the walk (the jobs it spawns take it only when they finish).
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut items = backlog.drain(..);
    for item in items.by_ref() {
        {
            if s.items.contains(&item.item_id) {
                continue;
            }
            if s.running >= total {
                // Every slot is taken: the rest waits as it is.
                keep.push(item);
                break;
            }
            let lane_busy =
                s.lanes.get(&item.lane).copied().unwrap_or(0) >= limits.lane_limit(&item.lane);
            let tenant_busy = s.tenants.get(&item.tenant).copied().unwrap_or(0) >= per_tenant;
            if lane_busy || tenant_busy {
                keep.push(item);
                continue;
            }
            *s.lanes.entry(item.lane.clone()).or_default() += 1;
            *s.tenants.entry(item.tenant).or_default() += 1;
            s.items.insert(item.item_id);
            s.running += 1;
        }
        started += 1;
        let (job, state, done) = (job.clone(), state.clone(), done.clone());
        tokio::spawn(async move {
            let (id, lane, tenant) = (item.item_id, item.lane.clone(), item.tenant);
            let settling = job.run(item).await;
            {
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                s.running = s.running.saturating_sub(1);
                if settling.is_none() {
                    s.items.remove(&id);
                }
                if let Some(n) = s.tenants.get_mut(&tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        s.tenants.remove(&tenant);
                    }
                }
                if let Some(n) = s.lanes.get_mut(&lane) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        s.lanes.remove(&lane);
                    }
                }
            }
            done.notify_one();
            if let Some(settling) = settling {
                settling.await;
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .items
                    .remove(&id);
            }
        });
    }
    keep.extend(items);
    drop(s);
    *backlog = keep;
    started
}

/// Whether a job could start now if the backlog had one for it.
fn slot_free(state: &Mutex<InFlight>, limits: Limits) -> bool {
    state.lock().unwrap_or_else(PoisonError::into_inner).running < limits.total
}

#[cfg(test)]
mod tests {
    use super::*;
    use postvak_platform::testkit;
    use std::time::Instant;

    /// Starts each item once per run and records it; `held`'s outcome is committed only when
    /// the test says so, every other item's at once.
    struct Recorder {
        db: Db,
        held: Uuid,
        release: Arc<Notify>,
        started: Arc<Mutex<Vec<Uuid>>>,
    }

    async fn drop_due(db: &Db, tenant: TenantId, item: Uuid) {
        let mut tx = db.tenant_tx(tenant, true).await.unwrap();
        unschedule(&mut tx, WEBHOOK, item).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[async_trait]
    impl Job for Recorder {
        async fn run(&self, item: DueItem) -> Option<Settling> {
            self.started.lock().unwrap().push(item.item_id);
            if item.item_id != self.held {
                drop_due(&self.db, item.tenant, item.item_id).await;
                return None;
            }
            let (db, release) = (self.db.clone(), self.release.clone());
            Some(Box::pin(async move {
                release.notified().await;
                drop_due(&db, item.tenant, item.item_id).await;
            }))
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A job whose outcome is still being committed frees its slot (the lane's next item runs)
    /// but is not started again while its due row is still there.
    #[tokio::test]
    async fn a_settling_item_frees_its_slot_and_is_not_started_twice() {
        let (_tmp, url) = testkit::fresh_sqlite_database();
        let cells = postvak_ingest::standalone::open_cells(&url, testkit::master_key(), true)
            .await
            .unwrap();
        let db = cells.default_cell().db().clone();
        let tenant = TenantId(Uuid::now_v7());
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let now = crate::now_us();
        let mut tx = db.tenant_tx(tenant, true).await.unwrap();
        schedule(&mut tx, WEBHOOK, first, tenant, "lane", now - 2)
            .await
            .unwrap();
        schedule(&mut tx, WEBHOOK, second, tenant, "lane", now - 1)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let started = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let job: Arc<dyn Job> = Arc::new(Recorder {
            db: db.clone(),
            held: first,
            release: release.clone(),
            started: started.clone(),
        });
        let (wake, cancel) = (Arc::new(Notify::new()), CancellationToken::new());
        let limits = Limits {
            per_lane: 1,
            per_tenant: 1,
            total: 1,
            capped_lanes: None,
        };
        let dispatcher = tokio::spawn(dispatch(
            db.clone(),
            WEBHOOK,
            job,
            limits,
            wake.clone(),
            cancel.clone(),
        ));
        // One slot: the second item runs while the first's outcome is not committed yet.
        until("the second item", || started.lock().unwrap().len() >= 2).await;
        assert_eq!(*started.lock().unwrap(), vec![first, second]);
        // The first item's due row is still there: pages read meanwhile must skip it.
        for _ in 0..3 {
            wake.notify_one();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(*started.lock().unwrap(), vec![first, second]);
        release.notify_one();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = due_items(&db, WEBHOOK, crate::now_us(), 10, 10)
                .await
                .unwrap();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "due rows left: {left:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*started.lock().unwrap(), vec![first, second]);
        cancel.cancel();
        dispatcher.await.unwrap();
    }
}
