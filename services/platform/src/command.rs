//! Commands between services: request/reply over the bus with an idempotency key.
//!
//! The serving side runs the handler in a database transaction and stores the reply under
//! `(service, command, idempotency_key)` in that same transaction: a retried request gets the
//! stored reply and the handler does not run again. The key row is inserted *before* the
//! handler runs, so a concurrent duplicate waits for the first to commit (PostgreSQL row lock;
//! SQLite has one writer) and then reads its reply.
//!
//! A key reused by another tenant or for another payload is refused
//! (`idempotency_key_reused`). A handler error (as opposed to a business rejection, which is a
//! stored [`CommandReply::Err`]) rolls back and answers `command_unavailable` without storing
//! anything, so the sender may retry with the same key.
//!
//! On SQLite the transaction holds the single writer connection while the handler runs: a
//! handler must write through the transaction it is given, not through another handle on the
//! same database.

use crate::bus::{Bus, BusError};
use crate::db::{Db, DbTx, db_error};
use crate::store::{StoreError, TenantId};
use async_trait::async_trait;
use postvak_proto::Problem;
use postvak_proto::command::{CommandEnvelope, CommandReply};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Commands handled at once by one server, at most.
const MAX_CONCURRENT: usize = 16;

/// Commands handled at once on `db`: each holds a pooled connection for its transaction, and
/// a handler may take a second one from the same pool (reading a stream the way the service
/// always does). With as many handlers as connections, all of them waited for a second
/// connection until the pool's acquire timeout (5 s, holding their transaction ids, which
/// also held back every log tailer of the database). Half the pool leaves every handler its
/// second connection and the process's other work some.
fn concurrency(db: &Db) -> usize {
    let pool = match db {
        Db::Postgres(p) => p.options().get_max_connections(),
        // One writer connection: the command's transaction; reads use the reader pool.
        Db::Sqlite(s) => s.reader.options().get_max_connections().saturating_mul(2),
    };
    usize::try_from(pool / 2)
        .unwrap_or(1)
        .clamp(1, MAX_CONCURRENT)
}

/// The handler could not decide (its dependencies failed): nothing is stored, the sender may
/// retry. A business refusal is not an error but an `Ok(CommandReply::Err { .. })`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handles one command.
#[async_trait]
pub trait CommandHandler: Send + Sync {
    /// Decides and writes the effect through `tx`; the reply is stored in the same transaction.
    async fn handle(
        &self,
        tx: &mut DbTx,
        command: &CommandEnvelope,
    ) -> Result<CommandReply, CommandError>;

    /// Called once the transaction `handle` wrote into has committed. A handler that appended
    /// events through it wakes this process's log tailers here (`EventStore::append_signal`),
    /// as `EventStore::commit_appended` would: otherwise they see the events only at their next
    /// poll.
    fn committed(&self) {}
}

/// Serves `service.command` until `cancel` fires. Returns once the subscription is in place
/// (a request sent after that finds this server); the returned task ends after the commands
/// in hand are answered.
pub async fn serve_command(
    bus: Arc<dyn Bus>,
    db: Db,
    service: &str,
    command: &str,
    handler: Arc<dyn CommandHandler>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let mut stream = bus.serve(service, command).await?;
    let service = service.to_owned();
    let command = command.to_owned();
    let span = tracing::info_span!("serve_command", %service, %command);
    Ok(tokio::spawn(
        async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(concurrency(&db)));
            let mut tasks = JoinSet::new();
            loop {
                let next = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    next = stream.next() => next,
                };
                let Some(incoming) = next else { break };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (db, handler) = (db.clone(), handler.clone());
                let (service, command) = (service.clone(), command.clone());
                tasks.spawn(async move {
                    let reply = execute(
                        &db,
                        &service,
                        &command,
                        handler.as_ref(),
                        &incoming.envelope,
                    )
                    .await;
                    if let Err(e) = incoming.responder.reply(reply).await {
                        // The sender times out and retries with the same key; the reply is stored.
                        tracing::warn!(error = %e, "cannot send command reply");
                    }
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            drop(stream);
            while tasks.join_next().await.is_some() {}
        }
        .instrument(span),
    ))
}

/// Runs one command idempotently and returns the reply to send.
pub async fn execute(
    db: &Db,
    service: &str,
    command: &str,
    handler: &dyn CommandHandler,
    envelope: &CommandEnvelope,
) -> CommandReply {
    match execute_inner(db, service, command, handler, envelope).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %e, key = %envelope.idempotency_key, "command failed");
            metrics::counter!("postvak_commands_total", "service" => service.to_owned(), "command" => command.to_owned(), "outcome" => "unavailable").increment(1);
            CommandReply::Err {
                problem: Problem::new(
                    503,
                    "command_unavailable",
                    "The command could not be carried out now; retry with the same key",
                    None,
                ),
            }
        }
    }
}

async fn execute_inner(
    db: &Db,
    service: &str,
    command: &str,
    handler: &dyn CommandHandler,
    envelope: &CommandEnvelope,
) -> Result<CommandReply, CommandError> {
    let key = &envelope.idempotency_key;
    let hash = request_hash(&envelope.payload);
    let mut tx = db.begin().await?;
    if claim_key(&mut tx, service, command, key, envelope.tenant_id, &hash).await? {
        let reply = handler.handle(&mut tx, envelope).await?;
        store_reply(&mut tx, service, command, key, &reply).await?;
        tx.commit().await?;
        handler.committed();
        metrics::counter!("postvak_commands_total", "service" => service.to_owned(), "command" => command.to_owned(), "outcome" => "handled").increment(1);
        return Ok(reply);
    }
    drop(tx);
    metrics::counter!("postvak_commands_total", "service" => service.to_owned(), "command" => command.to_owned(), "outcome" => "replayed").increment(1);
    let Some((tenant, stored_hash, reply)) = stored_reply(db, service, command, key).await? else {
        // Claimed and released between our insert and our read: a handler that failed.
        return Err(CommandError::Unavailable(format!(
            "command {key} was being handled elsewhere"
        )));
    };
    if tenant != envelope.tenant_id || stored_hash != hash {
        return Ok(CommandReply::Err {
            problem: Problem::new(
                422,
                "idempotency_key_reused",
                "This idempotency key was used for another request",
                None,
            ),
        });
    }
    match reply {
        Some(r) => Ok(r),
        None => Ok(CommandReply::Err {
            problem: Problem::new(
                409,
                "command_in_progress",
                "A request with this idempotency key is still being handled",
                None,
            ),
        }),
    }
}

/// SHA-256 over the payload's canonical JSON (object keys sorted), so a retry whose
/// serialiser ordered keys differently still matches.
fn request_hash(payload: &serde_json::Value) -> Vec<u8> {
    fn canonical(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    if let Some(x) = m.get(k) {
                        out.insert(k.clone(), canonical(x));
                    }
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(canonical).collect())
            }
            other => other.clone(),
        }
    }
    Sha256::digest(canonical(payload).to_string().as_bytes()).to_vec()
}

/// Inserts the key row; `false` when the key exists (a retry). On PostgreSQL the insert waits
/// for a concurrent transaction holding the same key.
async fn claim_key(
    tx: &mut DbTx,
    service: &str,
    command: &str,
    key: &str,
    tenant: Uuid,
    hash: &[u8],
) -> Result<bool, StoreError> {
    let done = match tx {
        DbTx::Postgres(c) => sqlx::query(
            "INSERT INTO command_replies (service, command, idempotency_key, tenant_id, request_hash)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(service)
        .bind(command)
        .bind(key)
        .bind(tenant)
        .bind(hash)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
        DbTx::Sqlite(c) => sqlx::query(
            "INSERT INTO command_replies (service, command, idempotency_key, tenant_id, request_hash)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )
        .bind(service)
        .bind(command)
        .bind(key)
        .bind(tenant.to_string())
        .bind(hash)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
    }
    .map_err(db_error)?;
    Ok(done == 1)
}

async fn store_reply(
    tx: &mut DbTx,
    service: &str,
    command: &str,
    key: &str,
    reply: &CommandReply,
) -> Result<(), StoreError> {
    let json = serde_json::to_value(reply)
        .map_err(|e| StoreError::Serialization(format!("command reply: {e}")))?;
    match tx {
        DbTx::Postgres(c) => sqlx::query(
            "UPDATE command_replies SET reply = $4
             WHERE service = $1 AND command = $2 AND idempotency_key = $3",
        )
        .bind(service)
        .bind(command)
        .bind(key)
        .bind(json)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
        DbTx::Sqlite(c) => sqlx::query(
            "UPDATE command_replies SET reply = ?4
             WHERE service = ?1 AND command = ?2 AND idempotency_key = ?3",
        )
        .bind(service)
        .bind(command)
        .bind(key)
        .bind(json.to_string())
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()),
    }
    .map(|_| ())
    .map_err(db_error)
}

/// `(tenant, request hash, reply)` stored under a key.
async fn stored_reply(
    db: &Db,
    service: &str,
    command: &str,
    key: &str,
) -> Result<Option<(Uuid, Vec<u8>, Option<CommandReply>)>, StoreError> {
    let row: Option<(String, Vec<u8>, Option<String>)> = match db {
        Db::Postgres(p) => {
            sqlx::query_as(
                "SELECT tenant_id::text, request_hash, reply::text FROM command_replies
             WHERE service = $1 AND command = $2 AND idempotency_key = $3",
            )
            .bind(service)
            .bind(command)
            .bind(key)
            .fetch_optional(p)
            .await
        }
        // The writer: a reply committed a moment ago is visible there for sure.
        Db::Sqlite(s) => {
            sqlx::query_as(
                "SELECT tenant_id, request_hash, reply FROM command_replies
             WHERE service = ?1 AND command = ?2 AND idempotency_key = ?3",
            )
            .bind(service)
            .bind(command)
            .bind(key)
            .fetch_optional(&s.writer)
            .await
        }
    }
    .map_err(db_error)?;
    let Some((tenant, hash, reply)) = row else {
        return Ok(None);
    };
    let tenant = Uuid::parse_str(&tenant)
        .map_err(|e| StoreError::Database(format!("bad tenant id {tenant}: {e}")))?;
    let reply = reply
        .map(|r| serde_json::from_str::<CommandReply>(&r))
        .transpose()
        .map_err(|e| StoreError::Database(format!("stored reply does not decode: {e}")))?;
    Ok(Some((tenant, hash, reply)))
}

/// Why a command sent to another service did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendCommandError {
    /// The service answered with a refusal (or `command_unavailable`: retry with the same key).
    #[error("{} ({})", .0.title, .0.code)]
    Rejected(Box<Problem>),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot encode the command payload: {0}")]
    Encode(String),
}

/// A command envelope for `tenant` with the current trace context.
pub fn command_envelope(
    tenant: TenantId,
    idempotency_key: impl Into<String>,
    actor: Option<String>,
    payload: &impl Serialize,
) -> Result<CommandEnvelope, SendCommandError> {
    Ok(CommandEnvelope {
        idempotency_key: idempotency_key.into(),
        tenant_id: tenant.0,
        actor,
        traceparent: current_traceparent(),
        payload: serde_json::to_value(payload)
            .map_err(|e| SendCommandError::Encode(e.to_string()))?,
    })
}

/// Sends a command and returns the payload of its `Ok` reply.
pub async fn send_command(
    bus: &dyn Bus,
    service: &str,
    command: &str,
    envelope: &CommandEnvelope,
    timeout: Duration,
) -> Result<serde_json::Value, SendCommandError> {
    match bus.request(service, command, envelope, timeout).await? {
        CommandReply::Ok { payload } => Ok(payload),
        CommandReply::Err { problem } => Err(SendCommandError::Rejected(Box::new(problem))),
    }
}

/// W3C `traceparent` of the current span, when OpenTelemetry tracks it.
fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}
