//! The routing service: rules per inbox (conditions → actions, assignment by round-robin,
//! least-loaded or skill match), agent availability and workload, SLA clocks, durable timers
//! and metrics. Routing never appends to a conversation's stream: it asks the conversation
//! service with `conversation.apply` (ADR 0008), and records each decision on its own streams
//! (`routing.rule_fired`, timers).
//!
//! - `rules.rs` — the rules API, dry-run and read model; `engine.rs` — the consumer and the
//!   worker that evaluate rules and act; `availability.rs` — availability and reassignment.
//! - `sla.rs`, `timers.rs`, `metrics.rs` — SLA policies, durable timers, metrics.
//! - `vip.rs` — routing's copy of which contacts are VIP (for `vip_contact` conditions).

pub mod availability;
pub mod engine;
pub mod metrics;
pub mod rules;
pub mod sla;
pub mod timers;
pub mod vip;

use postvak_platform::cell::{Cell, Cells, TenantContext};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{LogPosition, RecordedEvent, StoreError};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the routing service's background work for one cell until `cancel` fires: the rules
/// consumer and worker, then the timers (scheduler consumer, metrics projection, runner).
pub async fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = start_rules(cells, cell.clone(), cancel.clone());
    tasks.extend(timers::start(cell, cancel));
    tasks
}

/// The rules consumer (`routing-rules`) and the worker that applies what rules decide.
pub fn start_rules(
    cells: &Cells,
    cell: Arc<Cell>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let consumer = Arc::new(engine::RuleConsumer {
        wake: postvak_platform::consumer::WakeAfterCommit::new(wake.clone()),
        store: cell.store.clone(),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (store, bus, cancel) = (cell.store.clone(), cell.bus.clone(), cancel.clone());
        async move {
            postvak_platform::consumer::run_consumer(store, bus, consumer, cancel).await;
        }
    }));
    tasks.push(tokio::spawn(engine::run_worker(
        cells.clone(),
        cell,
        wake,
        cancel,
    )));
    tasks
}

/// Registers every routing route: rules and dry-run, availability, SLA policies and
/// automation, metrics.
pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
    rules::routes(cfg);
    availability::routes(cfg);
    sla::routes(cfg);
    metrics::routes(cfg);
}

/// Rebuilds one tenant's read model: empties `tables` (its rows only), then replays the
/// tenant's log, one transaction per page, through `apply` for each event of a stream type
/// `wanted` accepts. Returns how many events were applied.
pub(crate) async fn rebuild_from_log(
    ctx: &TenantContext,
    tables: &[&str],
    wanted: impl Fn(&str) -> bool,
    mut apply: impl AsyncFnMut(&mut DbTx, &RecordedEvent) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let store = &ctx.cell().store;
    let db = ctx.cell().db();
    let tenant = ctx.tenant();
    let mut tx = db.tenant_tx(tenant, true).await?;
    for table in tables {
        let sql = format!("DELETE FROM {table} WHERE tenant_id = $1");
        on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.0)
            .execute(c)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
    }
    tx.commit().await?;
    let mut after = LogPosition::START;
    let mut applied = 0u64;
    loop {
        let page = store.read_log(after, 500, Some(tenant)).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let mut tx = db.tenant_tx(tenant, true).await?;
        for stored in &page {
            if !wanted(&stored.stream_type) {
                continue;
            }
            let event = store.open(stored).await?;
            apply(&mut tx, &event).await?;
            applied += 1;
        }
        tx.commit().await?;
    }
    Ok(applied)
}
