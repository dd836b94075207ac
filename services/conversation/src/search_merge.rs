//! Keeps the search index's pending list short, off the write path (PostgreSQL; ADR 0036).
//!
//! A search document goes into the GIN index's pending list when it is written (a reply, a
//! note, an inbound mail's projection). The write that finds the list over its limit would
//! merge the whole list into the index inside its own transaction: hundreds of milliseconds
//! on a large index, paid by one unlucky reply. One task per PostgreSQL cell merges the list
//! every `[search_index] merge_every_ms` instead (`postvak_search_merge_pending()`, migration
//! 0024), so writes only append. Searches read the pending list too, so a document is found before and after its
//! merge alike. On SQLite (FTS5) there is nothing to merge.

use postvak_platform::cell::{Cell, Cells};
use postvak_platform::db::{Db, db_error};
use postvak_platform::store::StoreError;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `[search_index]`: the merging of the search index's pending list.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchIndexSettings {
    /// Milliseconds between two merges of a cell's pending list; 0 leaves the merging to the
    /// writes and autovacuum (PostgreSQL's default behaviour). At 100 mails/s of ~30 KB of
    /// terms each, 1 s lets the list hold ~3 MB: far below its 16 MB limit. A merge rewrites
    /// the posting list of every term it meets, so merging more often writes more WAL for the
    /// same mails (ADR 0039: 1 s wrote 35–40% less than 200 ms).
    pub merge_every_ms: u64,
}

impl Default for SearchIndexSettings {
    fn default() -> Self {
        Self {
            merge_every_ms: 1_000,
        }
    }
}

/// Merges the pending list of the cell's search index into the index; returns the pages
/// merged (0 when another process of the cell was merging at that moment, or on SQLite).
pub async fn merge_pending(db: &Db) -> Result<u64, StoreError> {
    let Db::Postgres(pool) = db else {
        return Ok(0);
    };
    let pages: i64 = sqlx::query_scalar("SELECT postvak_search_merge_pending()")
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
    Ok(u64::try_from(pages).unwrap_or(0))
}

/// One merging task per PostgreSQL cell, ending on `cancel` (none when `merge_every_ms` is 0).
pub fn start(
    cells: &Cells,
    settings: &SearchIndexSettings,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    if settings.merge_every_ms == 0 {
        return Vec::new();
    }
    let every = Duration::from_millis(settings.merge_every_ms);
    cells
        .all()
        .filter(|cell| matches!(cell.db(), Db::Postgres(_)))
        .map(|cell| {
            let (cell, cancel) = (cell.clone(), cancel.clone());
            tokio::spawn(async move { run(cell, every, cancel).await })
        })
        .collect()
}

async fn run(cell: Arc<Cell>, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let started = Instant::now();
        match merge_pending(cell.db()).await {
            Ok(0) => {}
            Ok(pages) => {
                metrics::counter!("postvak_search_pending_pages_merged_total").increment(pages);
                metrics::histogram!("postvak_search_pending_merge_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(cell = %cell.name, error = %e, "merging the search index's pending list failed; trying again");
            }
        }
    }
}
