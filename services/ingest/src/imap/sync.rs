//! The supervisor (one per cell), the task of one account, and one sync pass.

use super::client::{self, ConnectError, Session};
use super::store::{self, Quarantined};
use super::{AccountConfig, AfterImport, TlsMode};
use crate::pipeline::{Ingestor, Source};
use crate::settings::ImapSettings;
use async_imap::types::UnsolicitedResponse;
use futures::TryStreamExt;
use postvak_platform::cell::{Cell, Cells, TenantContext};
use postvak_platform::netguard::AddressPolicy;
use postvak_platform::store::{NewEvent, StoreError, TenantId};
use postvak_proto::events::ingest::{self as ev, EnvelopeV1};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a session ended early. Everything here is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the pipeline failed and the database does not answer: {0}")]
    Pipeline(crate::pipeline::IngestError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("{0}")]
    Config(String),
    #[error("the server sent no UIDVALIDITY for the folder")]
    NoUidValidity,
}

/// Why a quarantined message was not re-imported.
#[derive(Debug, thiserror::Error)]
pub enum ReimportError {
    #[error("no such quarantined message")]
    NotQuarantined,
    #[error("the folder's UIDVALIDITY is now {now}: UID {uid} of {then} can no longer be fetched")]
    UidValidityChanged { then: u32, now: u32, uid: u32 },
    #[error("the message is no longer in the folder")]
    Gone,
    #[error("{size} bytes; the limit (imap.max_message_size) is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the pipeline failed: {0}")]
    Pipeline(crate::pipeline::IngestError),
}

/// What one sync pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub uid_validity: u32,
    /// Messages stored (new ones and duplicates of mail the inbox already had).
    pub imported: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    /// The folder was synced again from its start (UIDVALIDITY changed).
    pub resynced: bool,
}

/// The connector. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImapConnector {
    ingestor: Ingestor,
    settings: Arc<ImapSettings>,
    tls: Arc<rustls::ClientConfig>,
    destinations: AddressPolicy,
}

async fn within<T, E>(
    secs: u64,
    what: &'static str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, SyncError>
where
    SyncError: From<E>,
{
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(r) => r.map_err(SyncError::from),
        Err(_) => Err(SyncError::Timeout(what)),
    }
}

/// `true` when cancelled before `d` passed.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Does the message look like a mail at all? The first line must be a header field (RFC 5322
/// field name: printable ASCII but the colon) and the parser must have found a message.
fn malformed(raw: &[u8], parsed: &crate::parse::ParsedMail) -> Option<String> {
    if raw.is_empty() {
        return Some("the message is empty".into());
    }
    if parsed.flags.unparsed {
        return Some("the MIME parser found no message".into());
    }
    let first = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let name_len = first
        .iter()
        .take_while(|b| (33..=126).contains(*b) && **b != b':')
        .count();
    if name_len == 0 || first.get(name_len) != Some(&b':') {
        return Some("the message does not start with a header field".into());
    }
    None
}

impl ImapConnector {
    pub fn new(ingestor: Ingestor, settings: ImapSettings) -> anyhow::Result<Self> {
        let tls = client::tls_config(settings.ca_file.as_deref())?;
        let destinations = AddressPolicy::new(&settings.allow_private)
            .map_err(|e| anyhow::anyhow!("imap.allow_private: {e}"))?;
        Ok(Self {
            ingestor,
            settings: Arc::new(settings),
            tls,
            destinations,
        })
    }

    pub fn settings(&self) -> &ImapSettings {
        &self.settings
    }

    /// One supervisor per cell; they end when `cancel` fires.
    pub fn start(&self, cells: &Cells, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        cells
            .all()
            .map(|cell| tokio::spawn(self.clone().supervise(cell.clone(), cancel.clone())))
            .collect()
    }

    /// Runs one task per enabled account of the cell, restarts a task whose account changed,
    /// stops the task of an account disabled or deleted, until cancelled.
    pub async fn supervise(self, cell: Arc<Cell>, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent_accounts.max(1)));
        let mut running: HashMap<Uuid, (i64, CancellationToken, JoinHandle<()>)> = HashMap::new();
        let every = Duration::from_secs(self.settings.discovery_interval_secs.max(1));
        loop {
            match store::index(cell.db()).await {
                Ok(entries) => {
                    let wanted: HashMap<Uuid, (TenantId, i64)> = entries
                        .into_iter()
                        .filter(|(_, _, enabled, _)| *enabled)
                        .map(|(id, t, _, rev)| (id, (t, rev)))
                        .collect();
                    running.retain(|id, (rev, stop, handle)| {
                        let keep =
                            wanted.get(id).is_some_and(|(_, r)| r == rev) && !handle.is_finished();
                        if !keep {
                            stop.cancel();
                        }
                        keep
                    });
                    for (id, (tenant, rev)) in wanted {
                        if running.contains_key(&id) {
                            continue;
                        }
                        let stop = cancel.child_token();
                        let task = tokio::spawn(self.clone().run_account(
                            tenant,
                            id,
                            slots.clone(),
                            stop.clone(),
                        ));
                        running.insert(id, (rev, stop, task));
                    }
                }
                Err(e) => {
                    tracing::warn!(cell = %cell.name, error = %e, code = "imap_discovery_failed", "listing IMAP accounts failed");
                }
            }
            if sleep_or_cancel(every, &cancel).await {
                break;
            }
        }
        for (_, (_, stop, _)) in running.iter() {
            stop.cancel();
        }
        for (_, (_, _, handle)) in running.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// An account's task: sessions one after the other, with backoff after a failure.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, account_id = %account))]
    async fn run_account(
        self,
        tenant: TenantId,
        account: Uuid,
        slots: Arc<Semaphore>,
        cancel: CancellationToken,
    ) {
        let initial = Duration::from_secs(self.settings.backoff_initial_secs.max(1));
        let max = Duration::from_secs(self.settings.backoff_max_secs.max(1));
        let mut backoff = initial;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let mut synced = false;
            match self
                .session(tenant, account, &slots, &cancel, &mut synced)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    if synced {
                        backoff = initial;
                    }
                    let message = e.to_string();
                    tracing::warn!(error = %message, code = "imap_sync_failed", retry_in_secs = backoff.as_secs(), "IMAP sync failed");
                    metrics::counter!("postvak_imap_sync_failures_total").increment(1);
                    if let Ok(ctx) = self.ingestor.context(tenant).await {
                        let _ = store::set_status(
                            ctx.cell().db(),
                            tenant,
                            account,
                            "error",
                            Some(&message),
                        )
                        .await;
                    }
                    if sleep_or_cancel(backoff, &cancel).await {
                        return;
                    }
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }

    /// One connection: sync, wait for news (IDLE or poll), sync again, until cancelled or an
    /// error. `synced` is set after a pass succeeded (the caller resets its backoff).
    async fn session(
        &self,
        tenant: TenantId,
        account: Uuid,
        slots: &Arc<Semaphore>,
        cancel: &CancellationToken,
        synced: &mut bool,
    ) -> Result<(), SyncError> {
        let ctx = self
            .ingestor
            .context(tenant)
            .await
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let db = ctx.cell().db().clone();
        let Some(row) = store::get_account(&db, tenant, account).await? else {
            return Ok(());
        };
        let cfg = row.open(&ctx).await?;
        if !cfg.enabled {
            return Ok(());
        }
        if cfg.tls == TlsMode::Plain && !self.settings.allow_plaintext {
            return Err(SyncError::Config(
                "tls = plain is not allowed here (imap.allow_plaintext)".into(),
            ));
        }
        let s = &self.settings;
        let mut permit = Some(
            slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SyncError::Config("shutting down".into()))?,
        );
        store::set_status(&db, tenant, account, "syncing", None).await?;
        let mut session = within(
            s.connect_timeout_secs,
            "connecting",
            client::connect(&cfg, &self.tls, &self.destinations),
        )
        .await?;
        let caps = within(s.command_timeout_secs, "CAPABILITY", session.capabilities()).await?;
        let idle = caps.has_str("IDLE");
        let can_move = caps.has_str("MOVE");
        drop(caps);
        loop {
            if permit.is_none() {
                permit = Some(
                    slots
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| SyncError::Config("shutting down".into()))?,
                );
                store::set_status(&db, tenant, account, "syncing", None).await?;
            }
            let report = self
                .sync_pass(&ctx, &cfg, &mut session, can_move, cancel)
                .await?;
            debug_assert!(permit.is_some());
            *synced = true;
            if report.imported + report.quarantined > 0 || report.resynced {
                tracing::info!(
                    imported = report.imported,
                    duplicates = report.duplicates,
                    quarantined = report.quarantined,
                    resynced = report.resynced,
                    "IMAP sync pass"
                );
            }
            store::set_status(&db, tenant, account, "idle", None).await?;
            permit = None;
            if cancel.is_cancelled() {
                let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
                return Ok(());
            }
            if idle {
                let rx = session.unsolicited_responses.clone();
                let mut handle = session.idle();
                within(s.command_timeout_secs, "IDLE", handle.init()).await?;
                // News that came with the end of the pass or before the IDLE started were
                // queued, not returned by the IDLE: look at them first.
                let mut pending = false;
                while let Ok(u) = rx.try_recv() {
                    if matches!(
                        u,
                        UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
                    ) {
                        pending = true;
                    }
                }
                if !pending {
                    let (wait, _stop) =
                        handle.wait_with_timeout(Duration::from_secs(s.idle_renew_secs.max(1)));
                    tokio::select! {
                        r = wait => { r?; }
                        _ = cancel.cancelled() => return Ok(()),
                    }
                }
                session = within(s.command_timeout_secs, "DONE", handle.done()).await?;
            } else {
                if sleep_or_cancel(Duration::from_secs(s.poll_interval_secs.max(1)), cancel).await {
                    let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
                    return Ok(());
                }
                within(s.command_timeout_secs, "NOOP", session.noop()).await?;
            }
        }
    }

    /// Imports every message after the recorded position, one by one, recording the position
    /// after each (after the pipeline committed it).
    async fn sync_pass(
        &self,
        ctx: &TenantContext,
        cfg: &AccountConfig,
        session: &mut Session,
        can_move: bool,
        cancel: &CancellationToken,
    ) -> Result<SyncReport, SyncError> {
        let s = &self.settings;
        let db = ctx.cell().db().clone();
        let tenant = ctx.tenant();
        let mailbox = within(
            s.command_timeout_secs,
            "SELECT",
            session.select(&cfg.folder),
        )
        .await?;
        while session.unsolicited_responses.try_recv().is_ok() {}
        let validity = mailbox.uid_validity.ok_or(SyncError::NoUidValidity)?;
        let mut report = SyncReport {
            uid_validity: validity,
            ..SyncReport::default()
        };
        let row = store::get_account(&db, tenant, cfg.id)
            .await?
            .ok_or_else(|| SyncError::Config("the account was deleted".into()))?;
        let mut last_uid = u32::try_from(row.last_uid).unwrap_or(0);
        if row.uid_validity != Some(i64::from(validity)) {
            if row.uid_validity.is_some() {
                tracing::info!(old = ?row.uid_validity, new = validity, code = "imap_uidvalidity_changed", "UIDVALIDITY changed: syncing the folder again from its start");
                report.resynced = true;
            }
            store::reset_position(&db, tenant, cfg.id, validity).await?;
            last_uid = 0;
        }
        if mailbox.exists == 0 {
            return Ok(report);
        }
        // UIDs and sizes first: a huge message is never downloaded.
        let mut todo: Vec<(u32, Option<u32>)> =
            within(s.command_timeout_secs, "UID FETCH", async {
                session
                    .uid_fetch(
                        format!("{}:*", last_uid.saturating_add(1)),
                        "(UID RFC822.SIZE)",
                    )
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?
            .into_iter()
            .filter_map(|f| f.uid.map(|u| (u, f.size)))
            .filter(|(u, _)| *u > last_uid)
            .collect();
        todo.sort_unstable();
        todo.dedup_by_key(|(u, _)| *u);
        let envelope = EnvelopeV1 {
            peer: Some(format!("imap:{}:{}/{}", cfg.host, cfg.port, cfg.folder)),
            tls: cfg.tls != TlsMode::Plain,
            ..EnvelopeV1::default()
        };
        for (uid, size) in todo {
            if cancel.is_cancelled() {
                break;
            }
            if let Some(size) = size
                && u64::from(size) > s.max_message_size
            {
                self.quarantine(
                    &db,
                    cfg,
                    validity,
                    uid,
                    "too_large",
                    format!("{size} bytes; the limit is {}", s.max_message_size),
                    Some(u64::from(size)),
                )
                .await?;
                report.quarantined += 1;
                continue;
            }
            let fetched: Vec<async_imap::types::Fetch> =
                within(s.command_timeout_secs, "UID FETCH BODY", async {
                    session
                        .uid_fetch(uid.to_string(), "(UID BODY.PEEK[])")
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await?;
            let Some(body) = fetched
                .iter()
                .find(|f| f.uid == Some(uid))
                .and_then(|f| f.body())
            else {
                // Expunged meanwhile: nothing to import.
                store::record_progress(&db, tenant, cfg.id, validity, uid, 0).await?;
                continue;
            };
            if body.len() as u64 > s.max_message_size {
                self.quarantine(
                    &db,
                    cfg,
                    validity,
                    uid,
                    "too_large",
                    format!("{} bytes; the limit is {}", body.len(), s.max_message_size),
                    Some(body.len() as u64),
                )
                .await?;
                report.quarantined += 1;
                continue;
            }
            let raw = Arc::new(body.to_vec());
            drop(fetched);
            let parsed = Ingestor::parse(raw.clone())
                .await
                .map_err(SyncError::Pipeline)?;
            if let Some(why) = malformed(&raw, &parsed) {
                self.quarantine(
                    &db,
                    cfg,
                    validity,
                    uid,
                    "malformed",
                    why,
                    Some(raw.len() as u64),
                )
                .await?;
                report.quarantined += 1;
                continue;
            }
            let mut attempts = 0u32;
            let delivered = loop {
                match self
                    .ingestor
                    .deliver_to_inbox(
                        ctx,
                        cfg.inbox_id,
                        &raw,
                        &parsed,
                        None,
                        envelope.clone(),
                        Source::Imap,
                    )
                    .await
                {
                    Ok(d) => break Some(d),
                    Err(e) => {
                        // A database that does not answer is no fault of the message.
                        if db.ping().await.is_err() {
                            return Err(SyncError::Pipeline(e));
                        }
                        attempts += 1;
                        if attempts >= s.max_message_attempts.max(1) {
                            self.quarantine(
                                &db,
                                cfg,
                                validity,
                                uid,
                                "pipeline_failed",
                                e.to_string(),
                                Some(raw.len() as u64),
                            )
                            .await?;
                            report.quarantined += 1;
                            break None;
                        }
                        let wait = Duration::from_millis(200u64 << attempts.min(6));
                        if sleep_or_cancel(wait, cancel).await {
                            return Ok(report);
                        }
                    }
                }
            };
            let Some(d) = delivered else { continue };
            // Only now, with the message committed, does the position move past it.
            store::record_progress(&db, tenant, cfg.id, validity, uid, 1).await?;
            report.imported += 1;
            if d.duplicate {
                report.duplicates += 1;
            }
            metrics::counter!("postvak_imap_messages_total", "outcome" => if d.duplicate { "duplicate" } else { "stored" }).increment(1);
            self.after_import(session, cfg, uid, can_move).await?;
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn quarantine(
        &self,
        db: &postvak_platform::db::Db,
        cfg: &AccountConfig,
        uid_validity: u32,
        uid: u32,
        reason: &str,
        detail: String,
        size: Option<u64>,
    ) -> Result<(), SyncError> {
        tracing::warn!(tenant_id = %cfg.tenant, account_id = %cfg.id, uid_validity, uid, reason, detail = %detail, code = "imap_message_quarantined", "IMAP message quarantined");
        metrics::counter!("postvak_imap_messages_total", "outcome" => "quarantined").increment(1);
        store::quarantine(
            db,
            cfg.tenant,
            cfg.id,
            &Quarantined {
                uid_validity,
                uid,
                reason: reason.to_owned(),
                detail,
                size,
                at: store::now_secs(),
                reimported: None,
            },
        )
        .await?;
        Ok(())
    }

    /// What `after_import` asks of the source, after the message was committed.
    async fn after_import(
        &self,
        session: &mut Session,
        cfg: &AccountConfig,
        uid: u32,
        can_move: bool,
    ) -> Result<(), SyncError> {
        let t = self.settings.command_timeout_secs;
        let set = uid.to_string();
        match &cfg.after_import {
            AfterImport::Keep => {}
            AfterImport::MarkSeen => {
                within(t, "UID STORE", async {
                    session
                        .uid_store(&set, "+FLAGS.SILENT (\\Seen)")
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await?;
            }
            AfterImport::Move(folder) if can_move => {
                within(t, "UID MOVE", session.uid_mv(&set, folder)).await?;
            }
            AfterImport::Move(folder) => {
                within(t, "UID COPY", session.uid_copy(&set, folder)).await?;
                self.delete(session, &set).await?;
            }
            AfterImport::Delete => self.delete(session, &set).await?,
        }
        Ok(())
    }

    async fn delete(&self, session: &mut Session, set: &str) -> Result<(), SyncError> {
        let t = self.settings.command_timeout_secs;
        within(t, "UID STORE", async {
            session
                .uid_store(set, "+FLAGS.SILENT (\\Deleted)")
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        within(t, "UID EXPUNGE", async {
            session
                .uid_expunge(set)
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        Ok(())
    }

    /// Imports a quarantined message by request: fetches it again (the size limit still
    /// applies; the "is it a mail" check does not — someone looked at it and asked) and
    /// delivers it like any other. Idempotent: once done, the recorded delivery is answered
    /// without fetching again; two requests at once store the mail once (the pipeline's
    /// dedupe) and record the first.
    pub async fn reimport(
        &self,
        ctx: &TenantContext,
        account: Uuid,
        uid_validity: u32,
        uid: u32,
    ) -> Result<store::Reimported, ReimportError> {
        let tenant = ctx.tenant();
        let db = ctx.cell().db().clone();
        let q = store::quarantined_one(&db, tenant, account, uid_validity, uid)
            .await?
            .ok_or(ReimportError::NotQuarantined)?;
        if let Some(done) = q.reimported {
            return Ok(done);
        }
        let row = store::get_account(&db, tenant, account)
            .await?
            .ok_or(ReimportError::NotQuarantined)?;
        let cfg = row.open(ctx).await?;
        if cfg.tls == TlsMode::Plain && !self.settings.allow_plaintext {
            return Err(SyncError::Config(
                "tls = plain is not allowed here (imap.allow_plaintext)".into(),
            )
            .into());
        }
        let mut session = within(
            self.settings.connect_timeout_secs,
            "connecting",
            client::connect(&cfg, &self.tls, &self.destinations),
        )
        .await?;
        let result = self.reimport_in(ctx, &cfg, &mut session, &q).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        result
    }

    async fn reimport_in(
        &self,
        ctx: &TenantContext,
        cfg: &AccountConfig,
        session: &mut Session,
        q: &Quarantined,
    ) -> Result<store::Reimported, ReimportError> {
        let s = &self.settings;
        let t = s.command_timeout_secs;
        let caps = within(t, "CAPABILITY", session.capabilities()).await?;
        let can_move = caps.has_str("MOVE");
        drop(caps);
        let mailbox = within(t, "SELECT", session.select(&cfg.folder)).await?;
        while session.unsolicited_responses.try_recv().is_ok() {}
        let validity = mailbox.uid_validity.ok_or(SyncError::NoUidValidity)?;
        if validity != q.uid_validity {
            return Err(ReimportError::UidValidityChanged {
                then: q.uid_validity,
                now: validity,
                uid: q.uid,
            });
        }
        let set = q.uid.to_string();
        let sizes: Vec<async_imap::types::Fetch> = within(t, "UID FETCH", async {
            session
                .uid_fetch(&set, "(UID RFC822.SIZE)")
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        let size = sizes
            .iter()
            .find(|f| f.uid == Some(q.uid))
            .ok_or(ReimportError::Gone)?
            .size;
        drop(sizes);
        if let Some(size) = size
            && u64::from(size) > s.max_message_size
        {
            return Err(ReimportError::TooLarge {
                size: u64::from(size),
                limit: s.max_message_size,
            });
        }
        let fetched: Vec<async_imap::types::Fetch> = within(t, "UID FETCH BODY", async {
            session
                .uid_fetch(&set, "(UID BODY.PEEK[])")
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        let body = fetched
            .iter()
            .find(|f| f.uid == Some(q.uid))
            .and_then(|f| f.body())
            .ok_or(ReimportError::Gone)?;
        if body.len() as u64 > s.max_message_size {
            return Err(ReimportError::TooLarge {
                size: body.len() as u64,
                limit: s.max_message_size,
            });
        }
        let raw = Arc::new(body.to_vec());
        drop(fetched);
        let parsed = Ingestor::parse(raw.clone())
            .await
            .map_err(ReimportError::Pipeline)?;
        let envelope = EnvelopeV1 {
            peer: Some(format!("imap:{}:{}/{}", cfg.host, cfg.port, cfg.folder)),
            tls: cfg.tls != TlsMode::Plain,
            ..EnvelopeV1::default()
        };
        let d = self
            .ingestor
            .deliver_to_inbox(
                ctx,
                cfg.inbox_id,
                &raw,
                &parsed,
                None,
                envelope,
                Source::Imap,
            )
            .await
            .map_err(ReimportError::Pipeline)?;
        let done = store::Reimported {
            message_id: d.message_id,
            conversation_id: d.conversation_id,
            duplicate: d.duplicate,
            at: store::now_secs(),
        };
        let audit = NewEvent::from_payload(
            ev::IMAP_MESSAGE_REIMPORTED,
            1,
            &ev::ImapMessageReimportedV1 {
                account_id: cfg.id,
                uid_validity: q.uid_validity,
                uid: q.uid,
                message_id: d.message_id,
                duplicate: d.duplicate,
            },
        )?;
        let db = ctx.cell().db();
        if !store::mark_reimported(ctx, cfg.id, q.uid_validity, q.uid, &done, audit).await? {
            // A concurrent request recorded it first (the same mail: dedupe): answer that.
            return store::quarantined_one(db, ctx.tenant(), cfg.id, q.uid_validity, q.uid)
                .await?
                .and_then(|q| q.reimported)
                .ok_or(ReimportError::NotQuarantined);
        }
        metrics::counter!("postvak_imap_messages_total", "outcome" => "reimported").increment(1);
        // The mail is stored and recorded; a source that refuses the after-import action
        // does not undo that (the next sync pass never sees this UID again).
        if let Err(e) = self.after_import(session, cfg, q.uid, can_move).await {
            tracing::warn!(error = %e, account_id = %cfg.id, uid = q.uid, "after_import failed for a re-imported message");
        }
        Ok(done)
    }

    /// One sync pass of one account over a fresh connection, without waiting for news: what
    /// the account's task does each time, for tools and tests.
    pub async fn sync_once(
        &self,
        tenant: TenantId,
        account: Uuid,
    ) -> Result<SyncReport, SyncError> {
        let ctx = self
            .ingestor
            .context(tenant)
            .await
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let db = ctx.cell().db().clone();
        let row = store::get_account(&db, tenant, account)
            .await?
            .ok_or_else(|| SyncError::Config("no such account".into()))?;
        let cfg = row.open(&ctx).await?;
        if cfg.tls == TlsMode::Plain && !self.settings.allow_plaintext {
            return Err(SyncError::Config(
                "tls = plain is not allowed here (imap.allow_plaintext)".into(),
            ));
        }
        let s = &self.settings;
        let mut session = within(
            s.connect_timeout_secs,
            "connecting",
            client::connect(&cfg, &self.tls, &self.destinations),
        )
        .await?;
        let caps = within(s.command_timeout_secs, "CAPABILITY", session.capabilities()).await?;
        let can_move = caps.has_str("MOVE");
        drop(caps);
        let report = self
            .sync_pass(
                &ctx,
                &cfg,
                &mut session,
                can_move,
                &CancellationToken::new(),
            )
            .await?;
        store::set_status(&db, tenant, account, "idle", None).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_needs_a_header_first() {
        let ok = b"From: a@b.c\r\nSubject: x\r\n\r\nbody\r\n";
        assert!(malformed(ok, &crate::parse::parse(ok)).is_none());
        let bad = b"this is not a mail at all\r\n";
        assert!(malformed(bad, &crate::parse::parse(bad)).is_some());
        assert!(malformed(b"", &crate::parse::parse(b"")).is_some());
    }
}
