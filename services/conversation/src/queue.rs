//! The durable work queues the conversation service's consumers fill (inbound mail to
//! receive, contacts to link): one shape, one worker protocol — take a batch in order, then
//! delete each done entry or count its failure.

use postvak_platform::db::{Db, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{StoreError, TenantId};
use sqlx::Row;
use uuid::Uuid;

/// One queue table's statements (tables are named in SQL, so each gets its own text).
#[derive(Debug)]
pub(crate) struct QueueTable {
    /// For the logs.
    name: &'static str,
    select: &'static str,
    delete: &'static str,
    fail: &'static str,
}

pub(crate) const INBOUND: QueueTable = QueueTable {
    name: "inbound",
    select: "SELECT event_id, tenant_id, stream_id, stream_version FROM conversation_inbound_queue \
             ORDER BY queued_at, event_id LIMIT 64",
    delete: "DELETE FROM conversation_inbound_queue WHERE event_id = $1",
    fail: "UPDATE conversation_inbound_queue SET attempts = attempts + 1, last_error = $1 WHERE event_id = $2",
};

pub(crate) const CONTACT_LINK: QueueTable = QueueTable {
    name: "contact link",
    select: "SELECT event_id, tenant_id, stream_id, stream_version FROM contact_link_queue \
             ORDER BY queued_at, event_id LIMIT 64",
    delete: "DELETE FROM contact_link_queue WHERE event_id = $1",
    fail: "UPDATE contact_link_queue SET attempts = attempts + 1, last_error = $1 WHERE event_id = $2",
};

#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) event_id: Uuid,
    pub(crate) tenant: TenantId,
    pub(crate) stream_id: String,
    pub(crate) stream_version: u64,
}

pub(crate) async fn next_batch(db: &Db, table: &QueueTable) -> Result<Vec<Queued>, StoreError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(Uuid, Uuid, String, i64)> = on_tx!(&mut tx, |c| sqlx::query(table.select)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(event_id, tenant, stream_id, v)| Queued {
            event_id,
            tenant: TenantId(tenant),
            stream_id,
            stream_version: u64::try_from(v).unwrap_or(0),
        })
        .collect())
}

async fn finish(
    db: &Db,
    table: &QueueTable,
    event_id: Uuid,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    match error {
        None => on_tx!(&mut tx, |c| sqlx::query(table.delete)
            .bind(event_id)
            .execute(c)
            .await
            .map(|_| ())),
        Some(e) => on_tx!(&mut tx, |c| sqlx::query(table.fail)
            .bind(e)
            .bind(event_id)
            .execute(c)
            .await
            .map(|_| ())),
    }
    .map_err(db_error)?;
    tx.commit().await
}

/// Ends one entry after its work: deleted when `outcome` is `Ok`, else its failure counted
/// (it stays for the next round). `what` says what failed in the log. True when it succeeded.
pub(crate) async fn settle<E: std::fmt::Display>(
    db: &Db,
    table: &QueueTable,
    event_id: Uuid,
    outcome: Result<(), E>,
    what: &str,
) -> bool {
    let error = outcome.err().map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::warn!(error = %e, %event_id, "cannot {what}; will retry");
    }
    if let Err(e) = finish(db, table, event_id, error.as_deref()).await {
        tracing::warn!(error = %e, queue = table.name, "cannot update the queue");
    }
    error.is_none()
}
