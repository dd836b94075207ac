//! Outbound mail: every `reply.queued` is sent once through the relay, from the inbox address,
//! with our Message-ID and the thread's `In-Reply-To`/`References` (ADR 0006).
//!
//! - The consumer records the reply in `outbound_mail` (content sealed, state `queued`) and
//!   schedules it, all through the consumer's transaction.
//! - The sender claims a due row by moving it to `sending` in a committed transaction, then
//!   talks SMTP, then records `sent` (250) or schedules a retry (4xx, connection trouble) or
//!   gives up (5xx, attempts exhausted) with a `reply.failed` event.
//! - A row found still `sending` after its lease was interrupted mid-transaction: it may have
//!   been delivered, so it is not resent; it fails with reason `uncertain` for a person to
//!   decide.

use crate::due::{self, DueItem, Job, Limits, Settling};
use crate::relays::{PoolError, RelayPolicy, Relays};
use crate::settings::DkimAlgorithm;
use crate::settings::{OutboundSmtpSettings, SmtpSecurity};
use crate::smtp::{PoolSpec, Security, SmtpError, SmtpPool};
use crate::{Part, SERVICE, backoff, duration_us, now_us};
use async_trait::async_trait;
use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::HeaderName;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use postvak_platform::cell::{Cell, Cells, TenantContext};
use postvak_platform::consumer::{EventHandler, HandlerError, WakeAfterCommit};
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::on_tx;
use postvak_platform::store::{
    EventStore, ExpectedVersion, KeyScope, NewEvent, RecordedEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::conversation::{self as cev, MailboxV1, MessageFileV1, MessageV1};
use postvak_proto::events::notification::{self as nev, ReplyFailedV1, ReplySentV1};
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This part's name inside the combined [`crate::CONSUMER`] (logs only; the checkpoint is
/// the combined consumer's).
pub const OUTBOX_CONSUMER: &str = "notification-outbox";

/// The lane of the default relay (an inbox's own relay has `relay:<inbox>`).
pub(crate) const RELAY_LANE: &str = "relay";

/// State of an outbound mail as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundStatus {
    /// `queued`, `sending`, `sent`, `failed`.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub sent_us: Option<i64>,
}

/// Why the sender could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SenderError {
    #[error("cannot read the relay's CA certificate {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("TLS settings of the relay: {0}")]
    Tls(String),
    #[error("DKIM key for {domain}: {reason}")]
    Dkim { domain: String, reason: String },
}

/// DKIM signing keys by sending domain (lowercase), and the domains whose configured key
/// could not be loaded (mail from those is held, never sent unsigned).
#[derive(Default, Clone)]
pub struct DkimKeys {
    keys: Arc<Vec<(String, DkimConfig)>>,
    broken: Arc<Vec<SenderError>>,
}

/// Names the domains only: a key never prints.
impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(d, _)| d))
            .finish()
    }
}

impl DkimKeys {
    /// Reads every configured key; one that can't be read or parsed is kept as an error for
    /// its domain only ([`DkimKeys::broken`]): mail from that domain is held, never sent
    /// unsigned from a domain the operator meant to sign, and the other domains' mail still
    /// goes out.
    pub fn load_each(s: &OutboundSmtpSettings) -> Self {
        let mut keys = Vec::new();
        let mut broken = Vec::new();
        for k in &s.dkim {
            match Self::load_one(k) {
                Ok(key) => keys.push(key),
                Err(e) => broken.push(e),
            }
        }
        Self {
            keys: Arc::new(keys),
            broken: Arc::new(broken),
        }
    }

    /// The error of the key configured for `from`'s domain, when it could not be loaded.
    pub fn broken(&self, from: &str) -> Option<&SenderError> {
        let domain = domain_of(from);
        self.broken
            .iter()
            .find(|e| matches!(e, SenderError::Dkim { domain: d, .. } if d.trim().eq_ignore_ascii_case(&domain)))
    }

    fn load_one(k: &crate::settings::DkimKeySettings) -> Result<(String, DkimConfig), SenderError> {
        let err = |reason: String| SenderError::Dkim {
            domain: k.domain.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&k.private_key_file)
            .map_err(|e| err(format!("{}: {e}", k.private_key_file.display())))?;
        let algorithm = match k.algorithm {
            DkimAlgorithm::Rsa => DkimSigningAlgorithm::Rsa,
            DkimAlgorithm::Ed25519 => DkimSigningAlgorithm::Ed25519,
        };
        let key = DkimSigningKey::new(text.trim(), algorithm)
            .map_err(|e| err(format!("not a usable private key: {e}")))?;
        let domain = k.domain.trim().to_ascii_lowercase();
        let headers = SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        let config = DkimConfig::new(
            k.selector.clone(),
            domain.clone(),
            key,
            headers,
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        );
        Ok((domain, config))
    }

    /// Signs `mail` when a key is configured for its From address's domain.
    pub fn sign(&self, from: &str, mail: &mut Message) -> bool {
        let domain = domain_of(from);
        match self.keys.iter().find(|(d, _)| *d == domain) {
            Some((_, config)) => {
                mail.sign(config);
                true
            }
            None => false,
        }
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Headers covered by the signature; DKIM treats a listed header that is absent as empty, so
/// listing the threading headers also keeps anyone from adding them later.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// The outbox handler and the sender for one cell (and the agent notifications, which share
/// the relay).
pub(crate) fn start(
    cells: &Cells,
    cell: Arc<Cell>,
    settings: OutboundSmtpSettings,
    cancel: CancellationToken,
) -> Part {
    let wake = Arc::new(Notify::new());
    let handler: Arc<dyn EventHandler> = Arc::new(OutboxHandler {
        wake: WakeAfterCommit::new(wake.clone()),
        store: cell.store.clone(),
    });
    let transport = transport(&settings).map_err(|e| {
        // Only the mail that would go through the default relay waits (in the outbox, until
        // the settings are fixed and the service restarted); inbox relays keep sending.
        tracing::error!(error = %e, "the default outbound SMTP relay is misconfigured; mail through it is held");
        e
    });
    let mut part = crate::agents::start(
        cells,
        cell.clone(),
        settings.clone(),
        transport.as_ref().ok().cloned(),
        cancel.clone(),
    );
    part.handlers.push(handler);
    let dkim = DkimKeys::load_each(&settings);
    for e in dkim.broken.iter() {
        tracing::error!(error = %e, "a DKIM key is misconfigured; mail from its domain is held");
    }
    // The default relay may take every slot; an inbox's own relay at most its own limit, so
    // a slow one never holds up the rest.
    let limits = Limits {
        per_lane: settings.concurrency,
        per_tenant: settings.concurrency,
        total: settings.concurrency,
        capped_lanes: Some((
            crate::relays::INBOX_LANE_PREFIX,
            settings.inbox_relay_concurrency,
        )),
    };
    let policy = match RelayPolicy::new(&settings.allow_private) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "outbound_smtp.allow_private is invalid; inbox relays get public addresses only");
            RelayPolicy::default()
        }
    };
    let (books, ledger) = tokio::sync::mpsc::channel(SENT_BATCH * 4);
    part.tasks.push(tokio::spawn(keep_sent_books(
        cell.store.clone(),
        cell.db().clone(),
        ledger,
    )));
    let (claims, requests) = tokio::sync::mpsc::channel(CLAIM_BATCH * 4);
    part.tasks.push(tokio::spawn(claim_mails(
        cell.db().clone(),
        settings.sending_lease(),
        requests,
    )));
    let job: Arc<dyn Job> = Arc::new(Sender {
        cells: cells.clone(),
        transport,
        relays: Relays::new(settings.clone(), policy),
        dkim,
        settings,
        books,
        claims,
    });
    part.tasks.push(tokio::spawn(due::dispatch(
        cell.db().clone(),
        due::MAIL,
        job,
        limits,
        wake,
        cancel,
    )));
    part
}

/// Mails claimed per transaction at most.
const CLAIM_BATCH: usize = 64;

/// A sender's request to claim a due mail, answered by [`claim_mails`].
struct ClaimRequest {
    tenant: TenantId,
    id: Uuid,
    answer: tokio::sync::oneshot::Sender<Result<Looked, StoreError>>,
}

/// What the claimer found for one mail (content still sealed).
enum Looked {
    Gone,
    NotYet,
    Claimed {
        attempts: u32,
        content: Vec<u8>,
        key: Uuid,
        relay: Option<i64>,
    },
    /// Its sending lease ended: it was interrupted while sending.
    Interrupted {
        conversation_id: Uuid,
        inbox_id: Uuid,
        attempts: u32,
        content: Vec<u8>,
        key: Uuid,
    },
}

/// An `outbound_mail` row as the claimer reads it.
struct MailRow {
    id: Uuid,
    state: String,
    attempts: i64,
    next_at: i64,
    content: Vec<u8>,
    key: Uuid,
    conversation_id: Uuid,
    inbox_id: Uuid,
    relay: Option<i64>,
}

/// Claims due mails for the senders: whatever has been asked for meanwhile (up to
/// [`CLAIM_BATCH`]) in one transaction — rows read with one query per tenant, the claimed ones
/// set `sending` with one statement and their due rows moved to the lease's end with
/// another — instead of a transaction per mail (ADR 0031). Each sender waits for the commit
/// before its first SMTP byte, as before. Should a batch fail, each mail is claimed alone.
async fn claim_mails(
    db: postvak_platform::db::Db,
    lease: std::time::Duration,
    mut requests: tokio::sync::mpsc::Receiver<ClaimRequest>,
) {
    let mut batch = Vec::with_capacity(CLAIM_BATCH);
    while requests.recv_many(&mut batch, CLAIM_BATCH).await > 0 {
        batch.sort_by_key(|r| r.tenant.0);
        match claim_many(&db, lease, &batch).await {
            Ok(mut found) => {
                for r in batch.drain(..) {
                    let looked = found.remove(&r.id).unwrap_or(Looked::Gone);
                    let _ = r.answer.send(Ok(looked));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, mails = batch.len(), "claims: batch failed; one by one");
                for r in batch.drain(..) {
                    let one = claim_many(&db, lease, std::slice::from_ref(&r))
                        .await
                        .map(|mut f| f.remove(&r.id).unwrap_or(Looked::Gone));
                    let _ = r.answer.send(one);
                }
            }
        }
    }
}

async fn claim_many(
    db: &postvak_platform::db::Db,
    lease: std::time::Duration,
    requests: &[ClaimRequest],
) -> Result<std::collections::HashMap<Uuid, Looked>, StoreError> {
    let mut out = std::collections::HashMap::with_capacity(requests.len());
    let Some(first) = requests.first() else {
        return Ok(out);
    };
    let now = now_us();
    let lease_end = now.saturating_add(duration_us(lease));
    let mut tx = db.tenant_tx(first.tenant, true).await?;
    for group in requests.chunk_by(|a, b| a.tenant == b.tenant) {
        let t = group[0].tenant;
        // Free when the transaction is bound to `t` already (the first group's, at BEGIN).
        tx.bind_tenant(t).await?;
        let mut ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = read_mail_rows(&mut tx, t, &ids).await?;
        let mut claim: Vec<(Uuid, String)> = Vec::new();
        let mut gone: Vec<Uuid> = ids
            .iter()
            .filter(|id| !rows.iter().any(|r| r.id == **id))
            .copied()
            .collect();
        for r in rows {
            let lane = crate::relays::lane(r.inbox_id, r.relay.is_some());
            let attempts = u32::try_from(r.attempts).unwrap_or(u32::MAX);
            match r.state.as_str() {
                "queued" | "sending" if r.next_at > now => {
                    // Not due yet (a retry's backoff, a lease still running): its time.
                    due::schedule(&mut tx, due::MAIL, r.id, t, &lane, r.next_at).await?;
                    out.insert(r.id, Looked::NotYet);
                }
                "queued" => {
                    claim.push((r.id, lane));
                    out.insert(
                        r.id,
                        Looked::Claimed {
                            attempts: attempts.saturating_add(1),
                            content: r.content,
                            key: r.key,
                            relay: r.relay,
                        },
                    );
                }
                "sending" => {
                    out.insert(
                        r.id,
                        Looked::Interrupted {
                            conversation_id: r.conversation_id,
                            inbox_id: r.inbox_id,
                            attempts,
                            content: r.content,
                            key: r.key,
                        },
                    );
                }
                _ => gone.push(r.id),
            }
        }
        if !claim.is_empty() {
            let ids: Vec<Uuid> = claim.iter().map(|(id, _)| *id).collect();
            let taken = mark_sending(&mut tx, t, &ids, lease_end).await?;
            // Claimed by another process meanwhile: not ours to send.
            for id in &ids {
                if !taken.contains(id) {
                    out.insert(*id, Looked::NotYet);
                }
            }
            claim.retain(|(id, _)| taken.contains(id));
            // Comes back after the lease if this process dies while sending.
            due::schedule_many(&mut tx, due::MAIL, t, &claim, lease_end).await?;
        }
        due::unschedule_many(&mut tx, due::MAIL, &gone).await?;
        for id in gone {
            out.insert(id, Looked::Gone);
        }
    }
    // Committed before the first SMTP byte: a crash from here on is never resent.
    tx.commit().await?;
    Ok(out)
}

/// The rows of `ids` (one tenant), with the revision of their inbox's own relay.
async fn read_mail_rows(
    tx: &mut DbTx,
    t: TenantId,
    ids: &[Uuid],
) -> Result<Vec<MailRow>, StoreError> {
    let select = "SELECT m.message_id, m.state, m.attempts, m.next_attempt_at, m.content, \
                  m.content_key, m.conversation_id, m.inbox_id, r.revision \
                  FROM outbound_mail m LEFT JOIN notification_smtp_relays r \
                    ON r.tenant_id = m.tenant_id AND r.inbox_id = m.inbox_id \
                  WHERE m.tenant_id = $1 AND m.message_id";
    macro_rules! rows {
        ($rows:expr) => {
            $rows.and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok(MailRow {
                            id: r.try_get(0)?,
                            state: r.try_get(1)?,
                            attempts: r.try_get(2)?,
                            next_at: r.try_get(3)?,
                            content: r.try_get(4)?,
                            key: r.try_get(5)?,
                            conversation_id: r.try_get(6)?,
                            inbox_id: r.try_get(7)?,
                            relay: r.try_get(8)?,
                        })
                    })
                    .collect::<Result<Vec<MailRow>, sqlx::Error>>()
            })
        };
    }
    match tx {
        DbTx::Postgres(c) => rows!(
            sqlx::query(sqlx::AssertSqlSafe(format!("{select} = ANY($2)")))
                .bind(t.0)
                .bind(ids)
                .fetch_all(&mut **c)
                .await
        ),
        DbTx::Sqlite(c) => {
            let list = postvak_platform::db::placeholders(2, ids.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("{select} IN ({list})"))).bind(t.0);
            for id in ids {
                q = q.bind(*id);
            }
            rows!(q.fetch_all(&mut **c).await)
        }
    }
    .map_err(db_error)
}

/// Sets `queued` rows of `ids` to `sending` until `lease_end`, counting the attempt; returns
/// the ids it changed (a row another process claimed first is not among them).
async fn mark_sending(
    tx: &mut DbTx,
    t: TenantId,
    ids: &[Uuid],
    lease_end: i64,
) -> Result<std::collections::HashSet<Uuid>, StoreError> {
    let update = "UPDATE outbound_mail SET state = 'sending', attempts = attempts + 1, \
                  next_attempt_at = $1 WHERE tenant_id = $2 AND state = 'queued' AND message_id";
    let taken: Vec<Uuid> = match tx {
        DbTx::Postgres(c) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "{update} = ANY($3) RETURNING message_id"
            )))
            .bind(lease_end)
            .bind(t.0)
            .bind(ids)
            .fetch_all(&mut **c)
            .await
        }
        DbTx::Sqlite(c) => {
            let list = postvak_platform::db::placeholders(3, ids.len());
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "{update} IN ({list}) RETURNING message_id"
            )))
            .bind(lease_end)
            .bind(t.0);
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(&mut **c).await
        }
    }
    .map_err(db_error)?;
    Ok(taken.into_iter().collect())
}

/// Sent mails recorded per transaction at most.
const SENT_BATCH: usize = 128;

/// A sent mail on its way to the books, and who waits for it to be recorded.
struct SentEntry {
    tenant: TenantId,
    sent: ReplySentV1,
    recorded: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Records sent mail: whatever has queued up meanwhile (up to [`SENT_BATCH`]) in one
/// transaction — each mail's row marked `sent`, its `reply.sent` appended, its due row
/// dropped — instead of a transaction per mail (ADR 0031); the senders waiting on it share
/// one commit. Should a batch fail, each entry is recorded on its own.
async fn keep_sent_books(
    store: Arc<dyn EventStore>,
    db: postvak_platform::db::Db,
    mut ledger: tokio::sync::mpsc::Receiver<SentEntry>,
) {
    let mut batch = Vec::with_capacity(SENT_BATCH);
    while ledger.recv_many(&mut batch, SENT_BATCH).await > 0 {
        batch.sort_by_key(|e| e.tenant.0);
        match record_sent_many(store.as_ref(), &db, &batch).await {
            Ok(()) => {
                for e in batch.drain(..) {
                    let _ = e.recorded.send(Ok(()));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, entries = batch.len(), "sent mail: batch failed; one by one");
                for e in batch.drain(..) {
                    let one = record_sent_many(store.as_ref(), &db, std::slice::from_ref(&e)).await;
                    let _ = e.recorded.send(one.map_err(|x| x.to_string()));
                }
            }
        }
    }
}

async fn record_sent_many(
    store: &dyn EventStore,
    db: &postvak_platform::db::Db,
    entries: &[SentEntry],
) -> Result<(), StoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut tx = db.tenant_tx(first.tenant, true).await?;
    for group in entries.chunk_by(|a, b| a.tenant == b.tenant) {
        let t = group[0].tenant;
        // Free when the transaction is bound to `t` already (the first group's, at BEGIN).
        tx.bind_tenant(t).await?;
        for e in group {
            record_sent_in(&mut tx, store, t, &e.sent).await?;
        }
        let ids: Vec<Uuid> = group.iter().map(|e| e.sent.message_id).collect();
        due::unschedule_many(&mut tx, due::MAIL, &ids).await?;
    }
    store.commit_appended(tx).await
}

/// Marks the row `sent` and appends `reply.sent` through `tx`, so the conversation learns of
/// every mail the outbox calls sent, and of no other.
async fn record_sent_in(
    tx: &mut DbTx,
    store: &dyn EventStore,
    t: TenantId,
    sent: &ReplySentV1,
) -> Result<(), StoreError> {
    let id = sent.message_id;
    let mut event = NewEvent::from_payload(nev::REPLY_SENT, 1, sent)?;
    event.metadata.actor = Some(SERVICE.actor());
    on_tx!(tx, |c| sqlx::query(
        "UPDATE outbound_mail SET state = 'sent', sent_us = $1, last_error = NULL \
         WHERE tenant_id = $2 AND message_id = $3"
    )
    .bind(sent.at_us)
    .bind(t.0)
    .bind(id)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    match store
        .append_in_tx(
            tx,
            t,
            &failure_stream(id),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
    {
        // Already recorded (a retry of this step): the row update is all that was missing.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long a held mail waits before it is looked at again: the settings are read only at
/// start, so this only bounds how late held mail goes out after a restart that fixed them,
/// while many held mails don't keep the sender busy (`retry_max_ms`, at most five minutes).
fn hold_interval(s: &OutboundSmtpSettings) -> std::time::Duration {
    s.retry_max()
        .min(std::time::Duration::from_secs(300))
        .max(s.retry_base())
}

/// The pooled connection to the default relay.
pub fn transport(s: &OutboundSmtpSettings) -> Result<SmtpPool, SenderError> {
    build_transport(&TransportSpec {
        connect_to: s.host.clone(),
        tls_name: s.host.clone(),
        port: s.port,
        security: s.security,
        username: s.username.clone(),
        password: s.password.clone(),
        ca_cert_file: s.ca_cert_file.clone(),
        timeout: s.timeout(),
        pool_size: s.pool_size,
    })
}

/// What a relay connection pool is built from.
pub(crate) struct TransportSpec {
    /// The host or address dialled (an inbox relay: the address that passed the check).
    pub connect_to: String,
    /// The name the relay's certificate must carry.
    pub tls_name: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<postvak_platform::config::SecretString>,
    /// The operator's extra trusted root (also trusted for inbox relays).
    pub ca_cert_file: Option<std::path::PathBuf>,
    pub timeout: std::time::Duration,
    pub pool_size: u32,
}

/// A pooled relay connection.
pub(crate) fn build_transport(s: &TransportSpec) -> Result<SmtpPool, SenderError> {
    let tls = if s.security == SmtpSecurity::None {
        None
    } else {
        let mut params = TlsParameters::builder(s.tls_name.clone());
        if let Some(path) = &s.ca_cert_file {
            let pem = std::fs::read(path).map_err(|e| SenderError::CaCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| SenderError::CaCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| SenderError::Tls(e.to_string()))?;
        Some((params, s.security == SmtpSecurity::Tls))
    };
    let security = match tls {
        None => Security::None,
        Some((params, true)) => Security::Implicit(params),
        Some((params, false)) => Security::StartTls(params),
    };
    Ok(SmtpPool::new(PoolSpec {
        host: s.connect_to.clone(),
        port: s.port,
        security,
        credentials: s.username.as_ref().map(|user| {
            let pw = s
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            Credentials::new(user.clone(), pw)
        }),
        timeout: s.timeout,
        max_idle: usize::try_from(s.pool_size.max(1)).unwrap_or(1),
    }))
}

struct OutboxHandler {
    wake: WakeAfterCommit,
    store: Arc<dyn EventStore>,
}

fn aad(tenant: TenantId, message_id: Uuid) -> Vec<u8> {
    let mut a = b"postvak.outbound_mail".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(message_id.as_bytes());
    a
}

#[async_trait]
impl EventHandler for OutboxHandler {
    fn name(&self) -> &str {
        OUTBOX_CONSUMER
    }

    fn committed(&self) {
        self.wake.committed();
    }

    fn stream_types(&self) -> Vec<String> {
        vec![cev::STREAM_CONVERSATION.to_owned()]
    }

    async fn handle(&self, tx: &mut DbTx, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.event_type != cev::REPLY_QUEUED {
            return Ok(());
        }
        if event.event_version != 1 {
            return Err(HandlerError::Permanent(format!(
                "reply.queued v{} is unknown",
                event.event_version
            )));
        }
        let m: MessageV1 = match event.payload() {
            Ok(m) => m,
            // Erased before it was sent: nothing to send.
            Err(StoreError::Shredded { .. }) => return Ok(()),
            Err(e) => return Err(HandlerError::Permanent(e.to_string())),
        };
        let tenant = event.tenant_id;
        let plain = serde_json::to_vec(&m).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let (key, sealed) = self
            .store
            .keyring()
            .seal(
                tenant,
                &KeyScope::Tenant,
                &plain,
                &aad(tenant, m.message_id),
            )
            .await
            .map_err(|e| HandlerError::Store(StoreError::Crypto(e)))?;
        let now = now_us();
        tx.bind_tenant(tenant).await?;
        let lane = crate::relays::lane(
            m.inbox_id,
            crate::relays::has_relay(tx, tenant, m.inbox_id).await?,
        );
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO outbound_mail (tenant_id, message_id, conversation_id, inbox_id, event_id, \
             content, content_key, state, attempts, next_attempt_at, created_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $8) \
             ON CONFLICT (tenant_id, message_id) DO NOTHING"
        )
        .bind(tenant.0)
        .bind(m.message_id)
        .bind(m.conversation_id)
        .bind(m.inbox_id)
        .bind(event.event_id)
        .bind(sealed)
        .bind(key)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(|e| HandlerError::Store(db_error(e)))?;
        due::schedule(tx, due::MAIL, m.message_id, tenant, &lane, now).await?;
        self.wake.queued();
        Ok(())
    }
}

struct Sender {
    cells: Cells,
    /// The default relay, or why it could not be built (its mail is then held).
    transport: Result<SmtpPool, SenderError>,
    /// Inbox relays' pools.
    relays: Relays,
    dkim: DkimKeys,
    settings: OutboundSmtpSettings,
    /// Sent mail on its way to be recorded ([`keep_sent_books`]).
    books: tokio::sync::mpsc::Sender<SentEntry>,
    /// Mails to claim ([`claim_mails`]).
    claims: tokio::sync::mpsc::Sender<ClaimRequest>,
}

/// A claimed mail.
struct Claimed {
    content: MessageV1,
    attempts: u32,
    /// The revision of the inbox's own relay, when it has one.
    relay: Option<u64>,
}

/// What the row said when the sender looked.
enum Found {
    Gone,
    NotYet,
    Claimed(Box<Claimed>),
    /// Interrupted while sending (lease over): fail as uncertain.
    Interrupted {
        conversation_id: Uuid,
        inbox_id: Uuid,
        attempts: u32,
        author: Option<Uuid>,
    },
}

#[async_trait]
impl Job for Sender {
    async fn run(&self, item: DueItem) -> Option<Settling> {
        if let Err(e) = self.send_one(&item).await {
            // The due row stays; the dispatcher tries again.
            tracing::warn!(error = %e, message_id = %item.item_id, "outbound mail step failed");
        }
        None
    }
}

impl Sender {
    /// Claims the mail through the claimer ([`claim_mails`]), which claims many per
    /// transaction; the claim is committed before this returns, so before the first SMTP byte.
    async fn claim(&self, ctx: &TenantContext, id: Uuid) -> Result<Found, StoreError> {
        let closed = || StoreError::Unavailable("the outbound claimer is closed".into());
        let (answer, claimed) = tokio::sync::oneshot::channel();
        self.claims
            .send(ClaimRequest {
                tenant: ctx.tenant(),
                id,
                answer,
            })
            .await
            .map_err(|_| closed())?;
        match claimed.await.map_err(|_| closed())?? {
            Looked::Gone => Ok(Found::Gone),
            Looked::NotYet => Ok(Found::NotYet),
            Looked::Claimed {
                attempts,
                content,
                key,
                relay,
            } => Ok(Found::Claimed(Box::new(Claimed {
                content: open_content(ctx, id, key, &content).await?,
                attempts,
                relay: relay.and_then(|r| u64::try_from(r).ok()),
            }))),
            Looked::Interrupted {
                conversation_id,
                inbox_id,
                attempts,
                content,
                key,
            } => Ok(Found::Interrupted {
                conversation_id,
                inbox_id,
                attempts,
                author: open_content(ctx, id, key, &content).await?.author,
            }),
        }
    }

    async fn send_one(&self, item: &DueItem) -> Result<(), StoreError> {
        let ctx = self
            .cells
            .context(item.tenant, SERVICE)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let id = item.item_id;
        let claimed = match self.claim(&ctx, id).await? {
            Found::Gone | Found::NotYet => return Ok(()),
            Found::Interrupted {
                conversation_id,
                inbox_id,
                attempts,
                author,
            } => {
                tracing::error!(message_id = %id, "mail interrupted while sending; not resent");
                let failed = ReplyFailedV1 {
                    message_id: id,
                    conversation_id,
                    inbox_id,
                    reason: "uncertain".into(),
                    smtp_code: None,
                    detail: "sending was interrupted; the relay may or may not have accepted it"
                        .into(),
                    attempts,
                    at_us: now_us(),
                    author,
                };
                return self.fail(&ctx, failed).await;
            }
            Found::Claimed(c) => *c,
        };
        let m = &claimed.content;
        let started = std::time::Instant::now();
        let outcome = self.send_claimed(&ctx, &claimed).await;
        match outcome {
            Ok(response) => {
                metrics::counter!("postvak_outbound_mail_total", "outcome" => "sent").increment(1);
                metrics::histogram!("postvak_outbound_mail_send_seconds")
                    .record(started.elapsed().as_secs_f64());
                let sent = ReplySentV1 {
                    message_id: id,
                    conversation_id: m.conversation_id,
                    inbox_id: m.inbox_id,
                    smtp_code: u16::from(response.code()),
                    response: response.message().collect::<Vec<_>>().join(" "),
                    attempts: claimed.attempts,
                    at_us: now_us(),
                };
                self.record_sent(&ctx, sent).await
            }
            Err(SendFailure::Held(why)) => {
                metrics::counter!("postvak_outbound_mail_total", "outcome" => "held").increment(1);
                // The cause was logged as an error at start; this names each mail it holds.
                tracing::warn!(message_id = %id, error = %why, "outbound mail held by a configuration error");
                let at = now_us().saturating_add(duration_us(hold_interval(&self.settings)));
                self.hold(&ctx, id, at, &why).await
            }
            Err(f) => {
                let (permanent, code, detail) = f.describe();
                let out_of_attempts = claimed.attempts >= self.settings.max_attempts;
                if permanent || out_of_attempts {
                    metrics::counter!("postvak_outbound_mail_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(message_id = %id, %detail, "outbound mail failed for good");
                    let failed = ReplyFailedV1 {
                        message_id: id,
                        conversation_id: m.conversation_id,
                        inbox_id: m.inbox_id,
                        reason: if permanent {
                            "rejected".into()
                        } else {
                            "retries_exhausted".into()
                        },
                        smtp_code: code,
                        detail,
                        attempts: claimed.attempts,
                        at_us: now_us(),
                        author: m.author,
                    };
                    self.fail(&ctx, failed).await
                } else {
                    metrics::counter!("postvak_outbound_mail_total", "outcome" => "retried")
                        .increment(1);
                    tracing::info!(message_id = %id, %detail, attempts = claimed.attempts, "outbound mail will be retried");
                    let delay = backoff(
                        self.settings.retry_base(),
                        self.settings.retry_max(),
                        claimed.attempts,
                    );
                    self.retry_later(
                        &ctx,
                        id,
                        now_us().saturating_add(duration_us(delay)),
                        &detail,
                    )
                    .await
                }
            }
        }
    }

    /// Builds the mail (reading its files) and hands it to the inbox's relay, or the default.
    async fn send_claimed(
        &self,
        ctx: &TenantContext,
        claimed: &Claimed,
    ) -> Result<lettre::transport::smtp::response::Response, SendFailure> {
        let m = &claimed.content;
        if let Some(e) = m.from.first().and_then(|f| self.dkim.broken(&f.address)) {
            return Err(SendFailure::Held(format!(
                "held: {e}; fix [outbound_smtp.dkim] and restart"
            )));
        }
        let default = || {
            self.transport.clone().map_err(|e| {
                SendFailure::Held(format!(
                    "held: the platform's default SMTP relay is misconfigured ({e}); fix [outbound_smtp] and restart"
                ))
            })
        };
        let mut files = Vec::with_capacity(m.files.len());
        for f in &m.files {
            match postvak_conversation::files::read(ctx, f.file_id).await {
                Ok(Some(bytes)) => files.push((f, bytes)),
                Ok(None) => {
                    return Err(SendFailure::Build(format!(
                        "attachment {} is gone",
                        f.filename.as_deref().unwrap_or("(unnamed)")
                    )));
                }
                Err(e) => return Err(SendFailure::Temporary(e.to_string())),
            }
        }
        let mut mail = build(m, &files).map_err(SendFailure::Build)?;
        if let Some(from) = m.from.first() {
            self.dkim.sign(&from.address, &mut mail);
        }
        match claimed.relay {
            Some(revision) => {
                let transport = match self.relays.transport(ctx, m.inbox_id, revision).await {
                    Ok(t) => t,
                    // Removed meanwhile: the default relay takes it.
                    Err(PoolError::Removed) => default()?,
                    Err(e) => return Err(SendFailure::Temporary(e.to_string())),
                };
                transport.send(&mail).await.map_err(SendFailure::Smtp)
            }
            None => default()?.send(&mail).await.map_err(SendFailure::Smtp),
        }
    }

    /// Marks the row `sent` and appends `reply.sent` in one transaction, so the conversation
    /// learns of every mail the outbox calls sent, and of no other.
    /// Records a sent mail through the books ([`keep_sent_books`]), which commit many sent
    /// mails at once; the slot waits for that commit, so at most one mail per slot is ever
    /// sent and not yet recorded (ADR 0006). Should the record fail, the row stays `sending`
    /// and its lease ends in `uncertain` — never a second send.
    async fn record_sent(&self, ctx: &TenantContext, sent: ReplySentV1) -> Result<(), StoreError> {
        let closed = || StoreError::Unavailable("the outbound books are closed".into());
        let (recorded, done) = tokio::sync::oneshot::channel();
        let entry = SentEntry {
            tenant: ctx.tenant(),
            sent,
            recorded,
        };
        self.books.send(entry).await.map_err(|_| closed())?;
        done.await
            .map_err(|_| closed())?
            .map_err(StoreError::Unavailable)
    }

    async fn retry_later(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.requeue(ctx, id, at, error, true).await
    }

    /// Puts a claimed mail back in the queue as if it had not been tried (nothing was sent;
    /// the attempt is not counted, so a configuration error never uses up its retries), with
    /// the reason as its `last_error`, and looks again at `at`.
    async fn hold(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        at: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        self.requeue(ctx, id, at, why, false).await
    }

    /// Back to `queued` with `error`, due again at `at` in its lane; `counted: false` gives
    /// back the attempt the claim took.
    async fn requeue(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        at: i64,
        error: &str,
        counted: bool,
    ) -> Result<(), StoreError> {
        let t = ctx.tenant();
        let sql = if counted {
            "UPDATE outbound_mail SET state = 'queued', next_attempt_at = $1, last_error = $2 \
             WHERE tenant_id = $3 AND message_id = $4 AND state = 'sending'"
        } else {
            "UPDATE outbound_mail SET state = 'queued', attempts = attempts - 1, \
             next_attempt_at = $1, last_error = $2 \
             WHERE tenant_id = $3 AND message_id = $4 AND state = 'sending'"
        };
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        on_tx!(&mut tx, |c| sqlx::query(sql)
            .bind(at)
            .bind(error)
            .bind(t.0)
            .bind(id)
            .execute(c)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        let lane = match self.relays_of(&mut tx, t, id).await? {
            Some(inbox) => crate::relays::lane(inbox, true),
            None => RELAY_LANE.to_owned(),
        };
        due::schedule(&mut tx, due::MAIL, id, t, &lane, at).await?;
        tx.commit().await
    }

    /// The inbox of a mail whose inbox has a relay of its own.
    async fn relays_of(
        &self,
        tx: &mut DbTx,
        t: TenantId,
        id: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        on_tx!(tx, |c| sqlx::query(
            "SELECT m.inbox_id FROM outbound_mail m JOIN notification_smtp_relays r \
               ON r.tenant_id = m.tenant_id AND r.inbox_id = m.inbox_id \
             WHERE m.tenant_id = $1 AND m.message_id = $2"
        )
        .bind(t.0)
        .bind(id)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| r.try_get::<Uuid, _>(0)).transpose()))
        .map_err(db_error)
    }

    /// Appends `reply.failed` (once: the stream holds only it), then marks the row failed.
    async fn fail(&self, ctx: &TenantContext, failed: ReplyFailedV1) -> Result<(), StoreError> {
        let id = failed.message_id;
        let event = NewEvent::from_payload(nev::REPLY_FAILED, 1, &failed)?;
        match ctx
            .append(&failure_stream(id), ExpectedVersion::NoStream, vec![event])
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let t = ctx.tenant();
        let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE outbound_mail SET state = 'failed', last_error = $1 \
             WHERE tenant_id = $2 AND message_id = $3"
        )
        .bind(&failed.detail)
        .bind(t.0)
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        due::unschedule(&mut tx, due::MAIL, id).await?;
        tx.commit().await
    }
}

async fn open_content(
    ctx: &TenantContext,
    id: Uuid,
    key: Uuid,
    sealed: &[u8],
) -> Result<MessageV1, StoreError> {
    let t = ctx.tenant();
    let plain = ctx
        .cell()
        .store
        .keyring()
        .open(t, key, sealed, &aad(t, id))
        .await
        .map_err(StoreError::Crypto)?;
    serde_json::from_slice(&plain)
        .map_err(|e| StoreError::Database(format!("outbound mail {id}: {e}")))
}

/// The stream that records the fate of one outbound message (`reply.sent` or `reply.failed`).
pub fn failure_stream(message_id: Uuid) -> StreamRef {
    StreamRef::new(nev::STREAM_OUTBOUND_MAIL, format!("mail-{message_id}"))
}

/// The state of an outbound message in the outbox (`None`: not recorded yet).
pub async fn status(
    ctx: &TenantContext,
    message_id: Uuid,
) -> Result<Option<OutboundStatus>, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let row = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT state, attempts, last_error, sent_us FROM outbound_mail \
         WHERE tenant_id = $1 AND message_id = $2"
    )
    .bind(t.0)
    .bind(message_id)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok(OutboundStatus {
            state: r.try_get(0)?,
            attempts: u32::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
            last_error: r.try_get(2)?,
            sent_us: r.try_get(3)?,
        }))
        .transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    Ok(row)
}

enum SendFailure {
    Smtp(SmtpError),
    Build(String),
    /// Not the relay's answer: its pool could not be built, a file could not be read.
    Temporary(String),
    /// The operator's configuration is wrong for this mail (the default relay, or the DKIM
    /// key of its From domain): nothing was sent, no attempt is counted, it waits.
    Held(String),
}

impl SendFailure {
    /// (permanent, SMTP code, detail)
    fn describe(&self) -> (bool, Option<u16>, String) {
        match self {
            Self::Smtp(e) => (e.is_permanent(), e.code(), e.to_string()),
            // A message we can't even build will never go out.
            Self::Build(e) => (true, None, e.clone()),
            Self::Temporary(e) | Self::Held(e) => (false, None, e.clone()),
        }
    }
}

fn mailbox(m: &MailboxV1) -> Result<Mailbox, String> {
    let address = m
        .address
        .parse()
        .map_err(|e| format!("bad address {}: {e}", m.address))?;
    Ok(Mailbox::new(m.name.clone(), address))
}

fn ids(v: &[String]) -> String {
    v.iter()
        .map(|i| format!("<{}>", i.trim_matches(|c| c == '<' || c == '>')))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The RFC 5322 message of a queued reply: from the inbox address (the event's `from`), our
/// Message-ID, the thread's `In-Reply-To` and full `References`, the text the agent wrote —
/// `text/plain` alone, multipart/alternative (text, HTML) when there is HTML, and inside
/// multipart/mixed with the attachments when there are files.
pub(crate) fn build(m: &MessageV1, files: &[(&MessageFileV1, Vec<u8>)]) -> Result<Message, String> {
    let from = m
        .from
        .first()
        .ok_or_else(|| "the reply has no sender".to_owned())?;
    let mut b = Message::builder().from(mailbox(from)?);
    for r in &m.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    for t in &m.to {
        b = b.to(mailbox(t)?);
    }
    for c in &m.cc {
        b = b.cc(mailbox(c)?);
    }
    if m.to.is_empty() && m.cc.is_empty() {
        return Err("the reply has no recipients".into());
    }
    if let Some(id) = &m.message_id_header {
        b = b.message_id(Some(ids(std::slice::from_ref(id))));
    }
    if !m.in_reply_to.is_empty() {
        b = b.in_reply_to(ids(&m.in_reply_to));
    }
    if !m.references.is_empty() {
        b = b.references(ids(&m.references));
    }
    b = b.subject(m.subject.clone().unwrap_or_default());
    let text = m.body_text.clone().unwrap_or_default();
    if files.is_empty() && m.body_html.is_none() {
        return b
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| e.to_string());
    }
    let mut attachments = Vec::with_capacity(files.len());
    for (f, bytes) in files {
        let ct = ContentType::parse(&f.content_type)
            .map_err(|e| format!("attachment content type {}: {e}", f.content_type))?;
        let name = f.filename.clone().unwrap_or_else(|| "attachment".into());
        attachments.push(Attachment::new(name).body(bytes.clone(), ct));
    }
    let body = match &m.body_html {
        Some(html) => Body::Alternative(MultiPart::alternative_plain_html(text, html.clone())),
        None => Body::Text(SinglePart::plain(text)),
    };
    let mail = if attachments.is_empty() {
        match body {
            Body::Alternative(alt) => b.multipart(alt),
            Body::Text(part) => b.singlepart(part),
        }
    } else {
        let mut mixed = match body {
            Body::Alternative(alt) => MultiPart::mixed().multipart(alt),
            Body::Text(part) => MultiPart::mixed().singlepart(part),
        };
        for a in attachments {
            mixed = mixed.singlepart(a);
        }
        b.multipart(mixed)
    };
    mail.map_err(|e| e.to_string())
}

enum Body {
    Alternative(MultiPart),
    Text(SinglePart),
}
