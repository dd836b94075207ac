//! Per-inbox SMTP relays (ADR 0019): an inbox may send its replies through its own relay
//! (host, port, `none`/`starttls`/`tls`, optional AUTH) instead of the platform default
//! `[outbound_smtp]`.
//!
//! - The settings live in `notification_smtp_relays`, the AUTH password sealed with the tenant
//!   key (AAD: tenant ‖ inbox) outside the log; every change is an audit event on
//!   `smtp_relay/relay-<inbox>` without the secret, committed with the change.
//! - A relay's host must resolve to public addresses only, unless the operator allows its
//!   range (`[outbound_smtp] allow_private`), when it is set and again whenever a connection
//!   pool is built for it; the pool dials the checked address only (the certificate is still
//!   verified against the host name), so a name that re-points inside later is not followed.
//! - [`Relays`] keeps one bounded pool per relay (keyed by tenant, inbox and revision, so a
//!   change takes effect at the next mail) and closes the least recently used beyond
//!   `inbox_relay_pools`; pools are rebuilt (re-resolved and re-checked) after
//!   [`RESOLVE_TTL`].

use crate::now_us;
use crate::outbound::{SenderError, TransportSpec, build_transport};
use crate::settings::{OutboundSmtpSettings, SmtpSecurity};
use crate::smtp::SmtpPool;
use postvak_platform::cell::TenantContext;
use postvak_platform::config::SecretString;
use postvak_platform::db::{DbTx, db_error};
use postvak_platform::netguard::{AddressPolicy, ResolveError};
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::notification as nev;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A pool is rebuilt — its host resolved and checked again — after this long.
pub const RESOLVE_TTL: Duration = Duration::from_secs(300);

/// Where inbox relays may be (`[outbound_smtp] allow_private`).
#[derive(Debug, Clone, Default)]
pub struct RelayPolicy(pub AddressPolicy);

impl RelayPolicy {
    pub fn new(allow_private: &[String]) -> Result<Self, String> {
        AddressPolicy::new(allow_private).map(Self)
    }
}

/// An inbox relay as stored, password opened.
#[derive(Clone)]
pub struct RelayConfig {
    pub inbox_id: Uuid,
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub revision: u64,
    pub created_us: i64,
    pub updated_us: i64,
}

/// Never prints the password.
impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("inbox_id", &self.inbox_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("has_password", &self.password.is_some())
            .field("revision", &self.revision)
            .finish()
    }
}

pub fn security_str(s: SmtpSecurity) -> &'static str {
    match s {
        SmtpSecurity::None => "none",
        SmtpSecurity::Starttls => "starttls",
        SmtpSecurity::Tls => "tls",
    }
}

pub fn parse_security(s: &str) -> Option<SmtpSecurity> {
    match s {
        "none" => Some(SmtpSecurity::None),
        "starttls" => Some(SmtpSecurity::Starttls),
        "tls" => Some(SmtpSecurity::Tls),
        _ => None,
    }
}

fn password_aad(tenant: TenantId, inbox: Uuid) -> Vec<u8> {
    let mut a = b"postvak.notification.smtp-relay".to_vec();
    a.extend_from_slice(tenant.0.as_bytes());
    a.extend_from_slice(inbox.as_bytes());
    a
}

/// The audit stream of an inbox's relay.
pub fn audit_stream(inbox: Uuid) -> StreamRef {
    StreamRef::new(nev::STREAM_SMTP_RELAY, format!("relay-{}", inbox.simple()))
}

struct Row9 {
    host: String,
    port: i64,
    security: String,
    username: Option<String>,
    password: Option<Vec<u8>>,
    password_key: Option<Uuid>,
    revision: i64,
    created_us: i64,
    updated_us: i64,
}

async fn read_row(tx: &mut DbTx, t: TenantId, inbox: Uuid) -> Result<Option<Row9>, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT host, port, security, username, password, password_key, revision, created_us, \
         updated_us FROM notification_smtp_relays WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(t.0)
    .bind(inbox)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok(Row9 {
            host: r.try_get(0)?,
            port: r.try_get(1)?,
            security: r.try_get(2)?,
            username: r.try_get(3)?,
            password: r.try_get(4)?,
            password_key: r.try_get(5)?,
            revision: r.try_get(6)?,
            created_us: r.try_get(7)?,
            updated_us: r.try_get(8)?,
        }))
        .transpose()))
    .map_err(db_error)
}

async fn open_row(ctx: &TenantContext, inbox: Uuid, r: Row9) -> Result<RelayConfig, StoreError> {
    let t = ctx.tenant();
    let bad = |what: &str| StoreError::Serialization(format!("stored SMTP relay: {what}"));
    let password = match (r.password, r.password_key) {
        (Some(sealed), Some(key)) => {
            let plain = ctx
                .cell()
                .store
                .keyring()
                .open(t, key, &sealed, &password_aad(t, inbox))
                .await
                .map_err(StoreError::Crypto)?;
            Some(SecretString::new(
                String::from_utf8(plain).map_err(|_| bad("password"))?,
            ))
        }
        _ => None,
    };
    Ok(RelayConfig {
        inbox_id: inbox,
        host: r.host,
        port: u16::try_from(r.port).map_err(|_| bad("port"))?,
        security: parse_security(&r.security).ok_or_else(|| bad("security"))?,
        username: r.username,
        password,
        revision: u64::try_from(r.revision).unwrap_or(0),
        created_us: r.created_us,
        updated_us: r.updated_us,
    })
}

/// The inbox's relay, if it has one.
pub async fn get(ctx: &TenantContext, inbox: Uuid) -> Result<Option<RelayConfig>, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let row = read_row(&mut tx, t, inbox).await?;
    tx.commit().await?;
    match row {
        Some(r) => Ok(Some(open_row(ctx, inbox, r).await?)),
        None => Ok(None),
    }
}

/// What a `PUT` asks for, checked.
#[derive(Debug, Clone)]
pub struct RelayWrite {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    /// `None`: keep the stored password (only with the same username).
    pub password: Option<SecretString>,
}

/// Why a relay can't be stored.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Invalid(String),
    #[error("a username needs a password; none is stored for it")]
    PasswordRequired,
    #[error("{0}")]
    Destination(ResolveError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sets (or replaces) the inbox's relay and records `smtp_relay.set` in the same transaction.
pub async fn put(
    ctx: &TenantContext,
    inbox: Uuid,
    w: RelayWrite,
) -> Result<RelayConfig, RelayError> {
    let t = ctx.tenant();
    let now = now_us();
    // Sealed before the transaction: the keyring may write a data key.
    let sealed = match &w.password {
        Some(p) => Some(
            ctx.cell()
                .store
                .keyring()
                .seal(
                    t,
                    &KeyScope::Tenant,
                    p.expose().as_bytes(),
                    &password_aad(t, inbox),
                )
                .await
                .map_err(StoreError::Crypto)?,
        ),
        None => None,
    };
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let old = read_row(&mut tx, t, inbox).await?;
    let (password, password_key, password_changed) = match (&sealed, &w.username, &old) {
        (Some((key, sealed)), Some(_), _) => (Some(sealed.clone()), Some(*key), true),
        (Some(_), None, _) => {
            return Err(RelayError::Invalid("a password needs a username".into()));
        }
        (None, None, old) => (
            None,
            None,
            old.as_ref().is_some_and(|o| o.password.is_some()),
        ),
        (None, Some(user), Some(o))
            if o.username.as_deref() == Some(user) && o.password.is_some() =>
        {
            (o.password.clone(), o.password_key, false)
        }
        (None, Some(_), _) => return Err(RelayError::PasswordRequired),
    };
    let revision = old.as_ref().map_or(1, |o| o.revision.saturating_add(1));
    let created_us = old.as_ref().map_or(now, |o| o.created_us);
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO notification_smtp_relays (tenant_id, inbox_id, host, port, security, \
         username, password, password_key, revision, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (tenant_id, inbox_id) DO UPDATE SET host = excluded.host, \
         port = excluded.port, security = excluded.security, username = excluded.username, \
         password = excluded.password, password_key = excluded.password_key, \
         revision = excluded.revision, updated_us = excluded.updated_us"
    )
    .bind(t.0)
    .bind(inbox)
    .bind(&w.host)
    .bind(i64::from(w.port))
    .bind(security_str(w.security))
    .bind(w.username.as_deref())
    .bind(password.as_deref())
    .bind(password_key)
    .bind(revision)
    .bind(created_us)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
    .map_err(db_error)?;
    let audit = nev::SmtpRelaySetV1 {
        inbox_id: inbox,
        host: w.host.clone(),
        port: w.port,
        security: security_str(w.security).to_owned(),
        username: w.username.clone(),
        has_password: password.is_some(),
        password_changed,
        revision: u64::try_from(revision).unwrap_or(0),
        at_us: now,
    };
    let mut event = NewEvent::from_payload(nev::SMTP_RELAY_SET, 1, &audit)?;
    event.metadata.actor = Some(ctx.principal().actor());
    let store = &ctx.cell().store;
    store
        .append_in_tx(
            &mut tx,
            t,
            &audit_stream(inbox),
            ExpectedVersion::Any,
            vec![event],
        )
        .await?;
    store.commit_appended(tx).await?;
    let stored_password = match (&w.password, password.is_some()) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => get(ctx, inbox).await?.and_then(|r| r.password),
        (None, false) => None,
    };
    Ok(RelayConfig {
        inbox_id: inbox,
        host: w.host,
        port: w.port,
        security: w.security,
        username: w.username,
        password: stored_password,
        revision: u64::try_from(revision).unwrap_or(0),
        created_us,
        updated_us: now,
    })
}

/// Removes the inbox's relay (`false`: it had none) and records `smtp_relay.removed`.
pub async fn delete(ctx: &TenantContext, inbox: Uuid) -> Result<bool, StoreError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, true).await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM notification_smtp_relays WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(t.0)
    .bind(inbox)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    if n == 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let mut event = NewEvent::from_payload(
        nev::SMTP_RELAY_REMOVED,
        1,
        &nev::SmtpRelayRemovedV1 {
            inbox_id: inbox,
            at_us: now_us(),
        },
    )?;
    event.metadata.actor = Some(ctx.principal().actor());
    let store = &ctx.cell().store;
    store
        .append_in_tx(
            &mut tx,
            t,
            &audit_stream(inbox),
            ExpectedVersion::Any,
            vec![event],
        )
        .await?;
    store.commit_appended(tx).await?;
    Ok(true)
}

/// Whether the inbox has a relay of its own (read inside the outbox consumer's transaction,
/// to put its mail in that relay's lane).
pub(crate) async fn has_relay(tx: &mut DbTx, t: TenantId, inbox: Uuid) -> Result<bool, StoreError> {
    on_tx!(tx, |c| sqlx::query(
        "SELECT 1 FROM notification_smtp_relays WHERE tenant_id = $1 AND inbox_id = $2"
    )
    .bind(t.0)
    .bind(inbox)
    .fetch_optional(c)
    .await
    .map(|r| r.is_some()))
    .map_err(db_error)
}

/// The due-work lane of an inbox's mail: its own relay's, or the default relay's.
pub(crate) fn lane(inbox: Uuid, own_relay: bool) -> String {
    if own_relay {
        format!("{INBOX_LANE_PREFIX}{inbox}")
    } else {
        crate::outbound::RELAY_LANE.to_owned()
    }
}

pub(crate) const INBOX_LANE_PREFIX: &str = "relay:";

struct Pool {
    revision: u64,
    built: Instant,
    used: Instant,
    transport: SmtpPool,
}

/// Why no pool could be built for an inbox relay (the mail is retried later).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the inbox's SMTP relay {host} is refused: {reason}")]
    Destination { host: String, reason: ResolveError },
    #[error("the inbox's SMTP relay was removed while the mail was being sent")]
    Removed,
    #[error(transparent)]
    Sender(#[from] SenderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pools of inbox relays of one cell (bounded).
pub(crate) struct Relays {
    settings: OutboundSmtpSettings,
    policy: RelayPolicy,
    pools: Mutex<HashMap<(TenantId, Uuid), Pool>>,
}

impl Relays {
    pub fn new(settings: OutboundSmtpSettings, policy: RelayPolicy) -> Self {
        Self {
            settings,
            policy,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for the inbox's relay at `revision` (building it when missing, stale or of
    /// an older revision).
    pub async fn transport(
        &self,
        ctx: &TenantContext,
        inbox: Uuid,
        revision: u64,
    ) -> Result<SmtpPool, PoolError> {
        let key = (ctx.tenant(), inbox);
        {
            let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = pools.get_mut(&key)
                && p.revision == revision
                && p.built.elapsed() < RESOLVE_TTL
            {
                p.used = Instant::now();
                return Ok(p.transport.clone());
            }
        }
        let Some(cfg) = get(ctx, inbox).await? else {
            return Err(PoolError::Removed);
        };
        let addrs = self
            .policy
            .0
            .resolve(&cfg.host, cfg.port)
            .await
            .map_err(|reason| PoolError::Destination {
                host: cfg.host.clone(),
                reason,
            })?;
        // `resolve` returns only permitted addresses; there is at least one.
        let Some(addr) = addrs.first() else {
            return Err(PoolError::Destination {
                host: cfg.host.clone(),
                reason: ResolveError::Unresolvable,
            });
        };
        let mut spec = TransportSpec {
            connect_to: addr.ip().to_string(),
            tls_name: cfg
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: cfg.port,
            security: cfg.security,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            ca_cert_file: self.settings.ca_cert_file.clone(),
            timeout: self.settings.timeout(),
            pool_size: self.settings.inbox_relay_pool_size,
        };
        let transport = match build_transport(&spec) {
            // The operator's extra CA is unreadable: that breaks the default relay, not this
            // one; it is still checked against the public roots (a relay that needs the
            // private CA then fails its TLS handshake, a temporary failure of its own).
            Err(e @ SenderError::CaCert { .. }) => {
                tracing::error!(error = %e, %inbox, "the operator's CA certificate is unreadable; this inbox relay is checked against the public roots only");
                spec.ca_cert_file = None;
                build_transport(&spec)?
            }
            other => other?,
        };
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let cap = self.settings.inbox_relay_pools.max(1);
        while pools.len() >= cap && !pools.contains_key(&key) {
            // Close the least recently used pool.
            let Some(oldest) = pools.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| *k) else {
                break;
            };
            pools.remove(&oldest);
        }
        let now = Instant::now();
        pools.insert(
            key,
            Pool {
                revision: cfg.revision,
                built: now,
                used: now,
                transport: transport.clone(),
            },
        );
        Ok(transport)
    }
}
