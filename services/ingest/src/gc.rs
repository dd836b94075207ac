//! Blob garbage collection (ADR 0021): blobs that no stored message's event names are removed
//! once they are older than a grace period.
//!
//! What a message names is recorded in `ingest_blob_refs`, in the delivery's own transaction
//! (so a committed event never names a blob without its reference). A blob is garbage when it
//! has no reference and was stored more than `grace` ago: left behind by an older version's
//! failed delivery, or by a message whose references were removed (erasure, retention).
//!
//! Why it never removes a blob a message needs:
//! - A tenant's messages stored before references were recorded (migration 0022) get theirs
//!   from the log first (`message.received` events, decrypted); until that backfill finished
//!   nothing of the tenant is removed.
//! - A delivery that finds one of its blobs already stored writes nothing for it but its
//!   reference. On PostgreSQL every delivery holds the advisory lock
//!   [`crate::repo::blob_gc_lock_key`] shared and a sweep holds it exclusively, so a sweep
//!   never runs between a delivery's "the blob is there" and its reference's commit; on SQLite
//!   both are write transactions, which run one at a time.
//! - Each removal is `DELETE … WHERE NOT EXISTS (reference)` checked in the same statement,
//!   at most [`SWEEP_PAGE`] blobs per transaction.

use crate::pipeline::{IngestError, Ingestor};
use crate::repo;
use postvak_platform::cell::{Cell, Cells};
use postvak_platform::store::{LogPosition, TenantId};
use postvak_proto::events::ingest::{self as ev, MessageReceivedV1};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Blobs removed per transaction at most.
pub const SWEEP_PAGE: i64 = 500;

/// `[blob_gc]`: the periodic sweeper.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobGcSettings {
    /// Run the sweeper at all (`postvak serve` / `run ingest`).
    pub enabled: bool,
    /// Seconds between sweeps of a cell.
    pub interval_secs: u64,
    /// An unreferenced blob is removed only once it is older than this (seconds).
    pub grace_secs: u64,
}

impl Default for BlobGcSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 3600,
            grace_secs: 24 * 3600,
        }
    }
}

/// What one sweep of a tenant did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Messages whose references were recovered from the log (first sweep of a tenant only).
    pub backfilled: u64,
    /// Blobs removed.
    pub removed: u64,
}

impl Ingestor {
    /// Removes the tenant's blobs that no stored message references and that were stored more
    /// than `grace` ago (see [`crate::gc`]).
    #[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant()))]
    pub async fn sweep_blobs(
        &self,
        ctx: &postvak_platform::cell::TenantContext,
        grace: Duration,
    ) -> Result<SweepReport, IngestError> {
        let tenant = ctx.tenant();
        let db = ctx.cell().db();
        let mut report = SweepReport::default();
        if !repo::blob_refs_backfilled(db, tenant).await? {
            report.backfilled = backfill_refs(ctx).await?;
            repo::mark_blob_refs_backfilled(db, tenant).await?;
        }
        loop {
            let n = repo::remove_unreferenced_blobs(db, tenant, grace, SWEEP_PAGE).await?;
            report.removed += n;
            if n < SWEEP_PAGE as u64 {
                break;
            }
        }
        if report.removed > 0 {
            metrics::counter!("postvak_ingest_blobs_removed_total").increment(report.removed);
            tracing::info!(removed = report.removed, "unreferenced blobs removed");
        }
        Ok(report)
    }
}

/// Records the blob references of every message in the tenant's log (idempotent).
async fn backfill_refs(ctx: &postvak_platform::cell::TenantContext) -> Result<u64, IngestError> {
    let store = &ctx.cell().store;
    let tenant = ctx.tenant();
    let mut after = LogPosition::START;
    let mut n = 0;
    loop {
        let page = store.read_log(after, 1000, Some(tenant)).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let mut tx = repo::write_tx(ctx.cell().db(), tenant).await?;
        for e in &page {
            if e.stream_type != ev::STREAM_INBOUND_MESSAGE || e.event_type != ev::MESSAGE_RECEIVED {
                continue;
            }
            let m: MessageReceivedV1 = store.open(e).await?.payload()?;
            let blobs: Vec<uuid::Uuid> = std::iter::once(m.raw.blob_id)
                .chain(m.text_body.iter().map(|b| b.blob_id))
                .chain(m.html_body.iter().map(|b| b.blob_id))
                .chain(m.attachments.iter().map(|a| a.blob.blob_id))
                .collect();
            repo::record_blob_refs_tx(&mut tx, tenant, m.message_id, &blobs).await?;
            n += 1;
        }
        tx.commit().await?;
    }
    Ok(n)
}

/// Sweeps every tenant of each cell every `interval_secs`.
#[derive(Debug, Clone)]
pub struct BlobSweeper {
    ingestor: Ingestor,
    settings: BlobGcSettings,
}

impl BlobSweeper {
    pub fn new(ingestor: Ingestor, settings: BlobGcSettings) -> Self {
        Self { ingestor, settings }
    }

    /// One task per cell, ending on `cancel`.
    pub fn start(&self, cells: &Cells, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        cells
            .all()
            .map(|cell| {
                let (this, cell, cancel) = (self.clone(), cell.clone(), cancel.clone());
                tokio::spawn(async move { this.run(cell, cancel).await })
            })
            .collect()
    }

    async fn run(&self, cell: Arc<Cell>, cancel: CancellationToken) {
        let interval = Duration::from_secs(self.settings.interval_secs.max(1));
        let grace = Duration::from_secs(self.settings.grace_secs);
        loop {
            if let Err(e) = self.sweep_cell(&cell, grace).await {
                tracing::warn!(cell = %cell.name, error = %e, "blob sweep failed; trying again later");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One sweep of every tenant placed in `cell`.
    pub async fn sweep_cell(
        &self,
        cell: &Cell,
        grace: Duration,
    ) -> Result<SweepReport, IngestError> {
        let cells = self.ingestor.cells();
        let mut total = SweepReport::default();
        for tenant in repo::tenants_of_cell(cells.directory(), &cell.name).await? {
            let ctx = self.ingestor.context(TenantId(tenant)).await?;
            let r = self.ingestor.sweep_blobs(&ctx, grace).await?;
            total.backfilled += r.backfilled;
            total.removed += r.removed;
        }
        Ok(total)
    }
}
