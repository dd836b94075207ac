//! The directory service: tenants, inboxes (addresses and aliases), API keys; and API-key
//! authentication for every service. Users, teams, memberships and SSO build on this.
//!
//! Writes are events in the tenant's cell; the read models (`tenants`, `inboxes`,
//! `inbox_addresses`, `api_keys`) are updated right after the append so that the API reads its
//! own writes, idempotently, so a replay (`projections rebuild`) converges to the same rows.

pub mod api;
pub mod cache;
mod codec;
pub mod identity;
mod projection;
pub mod sso;

use async_trait::async_trait;
use postvak_core::Aggregate;
use postvak_core::directory::{
    DirectoryError, DirectoryEvent, Inbox, InboxCommand, Tenant, TenantCommand,
};
use postvak_platform::auth::Authenticator;
use postvak_platform::cell::{CellError, Cells, Principal, TenantContext};
use postvak_platform::http::ApiError;
use postvak_platform::store::{
    EventCodec, ExpectedVersion, NewEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::directory as ev;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use codec::StoredDirectoryEvent;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DirectoryError),
    #[error("address {0} already belongs to an inbox")]
    AddressTaken(String),
    #[error("not found")]
    NotFound,
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error("the last owner of a tenant can't be demoted or disabled")]
    LastOwner,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cell(#[from] CellError),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use actix_web::http::StatusCode;
        match e {
            ServiceError::Domain(d) => {
                let code = match d {
                    DirectoryError::TenantExists | DirectoryError::InboxExists => {
                        return ApiError::new(
                            StatusCode::CONFLICT,
                            "already_exists",
                            "Already exists",
                        )
                        .with_detail(d.to_string());
                    }
                    DirectoryError::NameRequired => "name_required",
                    DirectoryError::InvalidAddress(_) => "invalid_address",
                    DirectoryError::NoAddress => "address_required",
                };
                ApiError::unprocessable(code, d.to_string())
            }
            ServiceError::AddressTaken(a) => ApiError::new(
                StatusCode::CONFLICT,
                "address_taken",
                "Address already in use",
            )
            .with_detail(format!("{a} already belongs to an inbox")),
            ServiceError::NotFound => ApiError::not_found(),
            ServiceError::Exists(what) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", "Already exists")
                    .with_detail(format!("{what} already exists"))
            }
            ServiceError::LastOwner => ApiError::new(
                StatusCode::CONFLICT,
                "last_owner",
                "The tenant needs an owner",
            )
            .with_detail("promote another user to owner first"),
            ServiceError::Invalid(d) => ApiError::unprocessable("invalid_request", d),
            ServiceError::Store(s) => s.into(),
            ServiceError::Cell(c) => ApiError::internal(&c),
        }
    }
}

/// An API key as handed to its owner once: `pvk_<key id>_<secret>`.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key_id: Uuid,
    pub token: String,
}

/// The directory service.
#[derive(Debug, Clone)]
pub struct Directory {
    cells: Cells,
    cache: std::sync::Arc<AuthCaches>,
}

/// The authentication hot path's caches (see `cache.rs` for the consistency they give).
#[derive(Debug, Default)]
pub(crate) struct AuthCaches {
    pub keys: cache::TtlCache<Uuid, std::sync::Arc<projection::ApiKeyRow>>,
    pub sessions: cache::TtlCache<Vec<u8>, identity::SessionRow>,
    pub users: cache::TtlCache<(TenantId, Uuid), (postvak_core::access::TenantRole, bool)>,
    pub access: cache::TtlCache<(TenantId, Uuid), identity::TeamsAndGrants>,
}

const SERVICE: Principal = Principal::Service { name: "directory" };

fn tenant_stream(id: TenantId) -> StreamRef {
    StreamRef::new(ev::STREAM_TENANT, format!("tenant-{}", id.0))
}

fn inbox_stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_INBOX, format!("inbox-{id}"))
}

fn key_stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_API_KEY, format!("apikey-{id}"))
}

fn hash_secret(secret: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"postvak.apikey.v1");
    h.update(secret.as_bytes());
    h.finalize().to_vec()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Directory {
    pub fn new(cells: Cells) -> Self {
        Self {
            cells,
            cache: std::sync::Arc::default(),
        }
    }

    pub(crate) fn caches(&self) -> &AuthCaches {
        &self.cache
    }

    /// Drops every cached key, session, user and grant (benchmarks of the cold path; an
    /// operator's "revoke everywhere now" after an incident).
    pub fn forget_cached_credentials(&self) {
        self.cache.keys.retain(|_| false);
        self.cache.sessions.retain(|_| false);
        self.cache.users.retain(|_| false);
        self.cache.access.retain(|_| false);
    }

    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    /// Creates a tenant in `cell` (the default cell when `None`).
    pub async fn create_tenant(
        &self,
        name: &str,
        cell: Option<&str>,
    ) -> Result<TenantId, ServiceError> {
        let cell = match cell {
            Some(c) => self
                .cells
                .get(c)
                .ok_or_else(|| CellError::UnknownCell(c.to_owned()))?,
            None => self.cells.default_cell(),
        };
        let tenant = TenantId(Uuid::now_v7());
        let events = Tenant::default().decide(TenantCommand::Create {
            tenant_id: tenant.0,
            name: name.to_owned(),
            cell: cell.name.clone(),
        })?;
        self.cells.place_tenant(tenant, &cell.name).await?;
        let ctx = self.cells.context(tenant, SERVICE).await?;
        self.append(
            &ctx,
            &tenant_stream(tenant),
            ExpectedVersion::NoStream,
            &events,
        )
        .await?;
        Ok(tenant)
    }

    /// Creates an inbox with its addresses, which must not belong to any other inbox.
    pub async fn create_inbox(
        &self,
        ctx: &TenantContext,
        name: &str,
        addresses: &[String],
    ) -> Result<postvak_proto::rest::Inbox, ServiceError> {
        let inbox_id = Uuid::now_v7();
        let events = Inbox::default().decide(InboxCommand::Create {
            inbox_id,
            name: name.to_owned(),
            addresses: addresses.to_vec(),
        })?;
        let Some(DirectoryEvent::InboxCreated { addresses, .. }) = events.first() else {
            return Err(ServiceError::Store(StoreError::Serialization(
                "inbox decision produced no InboxCreated".into(),
            )));
        };
        // Reserve the addresses in the global directory first: two inboxes racing for one
        // address can't both get it. A failed append releases them.
        projection::reserve_addresses(self.cells.directory(), ctx.tenant(), inbox_id, addresses)
            .await?;
        if let Err(e) = self
            .append(
                ctx,
                &inbox_stream(inbox_id),
                ExpectedVersion::NoStream,
                &events,
            )
            .await
        {
            let _ =
                projection::release_addresses(self.cells.directory(), ctx.tenant(), inbox_id).await;
            return Err(e);
        }
        self.get_inbox(ctx, inbox_id).await
    }

    pub async fn get_inbox(
        &self,
        ctx: &TenantContext,
        inbox_id: Uuid,
    ) -> Result<postvak_proto::rest::Inbox, ServiceError> {
        projection::get_inbox(ctx.cell(), self.cells.directory(), ctx.tenant(), inbox_id)
            .await?
            .ok_or(ServiceError::NotFound)
    }

    /// A page of the tenant's inboxes ordered by id (UUIDv7: creation order); `only` limits it
    /// to the inboxes the caller may read.
    pub async fn list_inboxes(
        &self,
        ctx: &TenantContext,
        only: Option<Vec<Uuid>>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<postvak_proto::rest::Inbox>, ServiceError> {
        let filter = match only {
            Some(ids) => projection::InboxFilter::Only(ids),
            None => projection::InboxFilter::All,
        };
        Ok(projection::list_inboxes(
            ctx.cell().db(),
            self.cells.directory(),
            ctx.tenant(),
            &filter,
            after,
            limit,
        )
        .await?)
    }

    /// Every inbox id of the tenant.
    pub async fn inbox_ids(&self, ctx: &TenantContext) -> Result<Vec<Uuid>, ServiceError> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_inboxes(ctx, None, after, 200).await?;
            let done = page.len() < 200;
            after = page.last().map(|i| i.id);
            ids.extend(page.into_iter().map(|i| i.id));
            if done {
                return Ok(ids);
            }
        }
    }

    /// Changes an inbox's name, signature, time zone or business hours.
    pub async fn update_inbox(
        &self,
        ctx: &TenantContext,
        inbox_id: Uuid,
        update: postvak_proto::events::identity::InboxUpdatedV1,
    ) -> Result<postvak_proto::rest::Inbox, ServiceError> {
        self.get_inbox(ctx, inbox_id).await?;
        if update.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(DirectoryError::NameRequired.into());
        }
        if let Some(tz) = &update.timezone
            && (tz.is_empty()
                || !tz
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c)))
        {
            return Err(ServiceError::Invalid(format!(
                "{tz:?} is not an IANA time zone name"
            )));
        }
        if let Some(hours) = &update.business_hours {
            validate_business_hours(hours)?;
        }
        let update = postvak_proto::events::identity::InboxUpdatedV1 {
            inbox_id,
            name: update.name.map(|n| n.trim().to_owned()),
            ..update
        };
        let event =
            NewEvent::from_payload(postvak_proto::events::identity::INBOX_UPDATED, 1, &update)?;
        ctx.append(&inbox_stream(inbox_id), ExpectedVersion::Any, vec![event])
            .await?;
        projection::apply_inbox_update(ctx.cell().db(), ctx.tenant(), &update).await?;
        self.get_inbox(ctx, inbox_id).await
    }

    /// Every tenant (platform administration).
    pub async fn list_tenants(&self) -> Result<Vec<postvak_proto::rest::Tenant>, ServiceError> {
        Ok(projection::list_tenants(self.cells.directory()).await?)
    }

    pub async fn tenant_name(&self, ctx: &TenantContext) -> Result<String, ServiceError> {
        projection::tenant_name(self.cells.directory(), ctx.tenant())
            .await?
            .ok_or(ServiceError::NotFound)
    }

    /// Issues an API key. The token is returned once; only its hash is kept.
    pub async fn issue_api_key(
        &self,
        ctx: &TenantContext,
        name: &str,
        scopes: &[String],
        inboxes: Option<&[Uuid]>,
        expires_at: Option<time::OffsetDateTime>,
    ) -> Result<IssuedKey, ServiceError> {
        use base64::Engine;
        if scopes.is_empty() {
            return Err(ServiceError::Invalid(
                "an API key needs at least one scope".into(),
            ));
        }
        if let Some(bad) = scopes
            .iter()
            .find(|s| !matches!(s.as_str(), "read" | "write" | "admin"))
        {
            return Err(ServiceError::Invalid(format!(
                "unknown scope {bad:?}: use read, write or admin"
            )));
        }
        if expires_at.is_some_and(|t| t <= time::OffsetDateTime::now_utc()) {
            return Err(ServiceError::Invalid("expires_at is in the past".into()));
        }
        if let Some(ids) = inboxes {
            for id in ids {
                self.get_inbox(ctx, *id).await?;
            }
        }
        let key_id = Uuid::now_v7();
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let token = format!("pvk_{}_{}", key_id.simple(), secret);
        let payload = ev::ApiKeyIssuedV1 {
            key_id,
            name: name.trim().to_owned(),
            prefix: token[..12].to_owned(),
            secret_hash: hex::encode(hash_secret(&secret)),
            scopes: scopes.to_vec(),
            expires_at: expires_at.map(|t| t.unix_timestamp()),
        };
        let event = NewEvent::from_payload(ev::API_KEY_ISSUED, 1, &payload)?;
        ctx.append(&key_stream(key_id), ExpectedVersion::NoStream, vec![event])
            .await?;
        projection::apply_api_key(self.cells.directory(), ctx.tenant(), &payload, inboxes).await?;
        Ok(IssuedKey { key_id, token })
    }

    /// An API key's row, from the cache when fresh.
    pub(crate) async fn api_key(
        &self,
        key_id: Uuid,
    ) -> Result<Option<std::sync::Arc<projection::ApiKeyRow>>, StoreError> {
        if let Some(k) = self.cache.keys.get(&key_id) {
            return Ok(Some(k));
        }
        let key = projection::find_api_key(self.cells.directory(), key_id)
            .await?
            .map(std::sync::Arc::new);
        if let Some(k) = &key {
            self.cache.keys.insert(key_id, k.clone());
        }
        Ok(key)
    }

    /// Revokes an API key of the tenant; it stops working at once (within the auth cache's TTL
    /// on other replicas).
    pub async fn revoke_api_key(
        &self,
        ctx: &TenantContext,
        key_id: Uuid,
    ) -> Result<(), ServiceError> {
        let key = projection::find_api_key(self.cells.directory(), key_id).await?;
        if key.as_ref().is_none_or(|k| k.tenant_id != ctx.tenant()) {
            return Err(ServiceError::NotFound);
        }
        let event =
            NewEvent::from_payload(ev::API_KEY_REVOKED, 1, &ev::ApiKeyRevokedV1 { key_id })?;
        ctx.append(&key_stream(key_id), ExpectedVersion::Any, vec![event])
            .await?;
        projection::revoke_api_key(self.cells.directory(), ctx.tenant(), key_id).await?;
        self.cache.keys.remove(&key_id);
        Ok(())
    }

    /// The tenant's API keys (never their secrets).
    pub async fn list_api_keys(
        &self,
        ctx: &TenantContext,
    ) -> Result<Vec<postvak_proto::rest::ApiKey>, ServiceError> {
        Ok(
            projection::list_api_keys(self.cells.directory(), ctx.tenant())
                .await?
                .into_iter()
                .map(|k| postvak_proto::rest::ApiKey {
                    id: k.key_id,
                    name: k.name,
                    prefix: k.prefix,
                    scopes: k.scopes,
                    inboxes: k.inboxes,
                    expires_at: k.expires_at.map(projection::from_secs),
                    revoked_at: k.revoked_at.map(projection::from_secs),
                    last_used_at: k.last_used_at.map(projection::from_secs),
                    created_at: projection::from_secs(k.created_at),
                })
                .collect(),
        )
    }

    /// Checks an API key token; a context for its tenant on success.
    pub async fn authenticate_api_key(&self, token: &str) -> Result<TenantContext, ApiError> {
        let rest = token
            .strip_prefix("pvk_")
            .ok_or_else(ApiError::unauthorized)?;
        let (id, secret) = rest.split_once('_').ok_or_else(ApiError::unauthorized)?;
        let key_id = Uuid::try_parse(id).map_err(|_| ApiError::unauthorized())?;
        let Some(key) = self.api_key(key_id).await.map_err(ApiError::from)? else {
            return Err(ApiError::unauthorized());
        };
        if !constant_time_eq(&key.secret_hash, &hash_secret(secret)) {
            return Err(ApiError::unauthorized());
        }
        let now = projection::now();
        if key.revoked_at.is_some() {
            return Err(ApiError::unauthorized().with_detail("this API key was revoked"));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(ApiError::unauthorized().with_detail("this API key has expired"));
        }
        if key.last_used_at.is_none_or(|t| now - t >= 60) {
            // Recorded at most once a minute per key: auth must not write on every request.
            // The cache learns the new time before anything awaits, so the requests arriving
            // together at the turn of the minute do not all write it (they queued on the
            // row's lock: 21 ms each, measured under load). The write is off the request's
            // path: a lost one is only an older "last used".
            let mut touched = (*key).clone();
            touched.last_used_at = Some(now);
            self.cache.keys.insert(key_id, std::sync::Arc::new(touched));
            let directory = self.cells.directory().clone();
            tokio::spawn(async move {
                if let Err(e) = projection::touch_api_key(&directory, key_id, now).await {
                    tracing::warn!(error = %e, %key_id, "could not record the API key's last use");
                }
            });
        }
        self.cells
            .context(
                key.tenant_id,
                Principal::ApiKey {
                    key_id,
                    scopes: key.scopes.clone(),
                },
            )
            .await
            .map_err(|e| ApiError::internal(&e))
    }

    async fn append(
        &self,
        ctx: &TenantContext,
        stream: &StreamRef,
        expected: ExpectedVersion,
        events: &[DirectoryEvent],
    ) -> Result<(), ServiceError> {
        let mut new = Vec::with_capacity(events.len());
        for e in events {
            let stored = StoredDirectoryEvent::from(e.clone());
            let (event_type, version, payload) = stored.encode()?;
            new.push(NewEvent::new(event_type, version, payload));
        }
        ctx.append(stream, expected, new).await?;
        for e in events {
            projection::apply(ctx.cell().db(), self.cells.directory(), ctx.tenant(), e).await?;
        }
        Ok(())
    }

    /// Rebuilds the directory read models of one tenant from its events.
    pub async fn rebuild_projections(&self, ctx: &TenantContext) -> Result<u64, ServiceError> {
        let store = &ctx.cell().store;
        let mut after = postvak_platform::store::LogPosition::START;
        let mut applied = 0u64;
        loop {
            let page = store.read_log(after, 1000, Some(ctx.tenant())).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for stored in &page {
                let event = store.open(stored).await?;
                match event.event_type.as_str() {
                    ev::TENANT_CREATED | ev::INBOX_CREATED => {
                        let d = StoredDirectoryEvent::decode(&event)?;
                        projection::apply(
                            ctx.cell().db(),
                            self.cells.directory(),
                            ctx.tenant(),
                            &d.into(),
                        )
                        .await?;
                        applied += 1;
                    }
                    ev::API_KEY_ISSUED => {
                        let p: ev::ApiKeyIssuedV1 = event.payload()?;
                        projection::apply_api_key(self.cells.directory(), ctx.tenant(), &p, None)
                            .await?;
                        applied += 1;
                    }
                    postvak_proto::events::identity::INBOX_UPDATED => {
                        let p = event.payload()?;
                        projection::apply_inbox_update(ctx.cell().db(), ctx.tenant(), &p).await?;
                        applied += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(applied)
    }
}

#[async_trait]
impl Authenticator for Directory {
    async fn authenticate_bearer(&self, token: &str) -> Result<TenantContext, ApiError> {
        if token.starts_with("pvs_") {
            self.authenticate_session(token, identity::SessionKind::Bearer)
                .await
        } else {
            self.authenticate_api_key(token).await
        }
    }

    async fn authenticate_cookie(&self, token: &str) -> Result<TenantContext, ApiError> {
        self.authenticate_session(token, identity::SessionKind::Cookie)
            .await
    }
}

/// `{"mon": [["09:00", "17:00"]], …}`: weekday keys, lists of HH:MM ranges, start before end.
fn validate_business_hours(hours: &serde_json::Value) -> Result<(), ServiceError> {
    let bad = |why: String| ServiceError::Invalid(format!("business_hours: {why}"));
    let obj = hours
        .as_object()
        .ok_or_else(|| bad("must be an object keyed by weekday".into()))?;
    let minutes = |s: &str| -> Option<u32> {
        let (h, m) = s.split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    for (day, ranges) in obj {
        if !["mon", "tue", "wed", "thu", "fri", "sat", "sun"].contains(&day.as_str()) {
            return Err(bad(format!("{day:?} is not a weekday (mon … sun)")));
        }
        let ranges = ranges
            .as_array()
            .ok_or_else(|| bad(format!("{day} must be a list of [start, end]")))?;
        for r in ranges {
            let pair = r.as_array().filter(|a| a.len() == 2);
            let (start, end) = match pair.map(|a| (a[0].as_str(), a[1].as_str())) {
                Some((Some(s), Some(e))) => (minutes(s), minutes(e)),
                _ => return Err(bad(format!("{day}: each range is [\"HH:MM\", \"HH:MM\"]"))),
            };
            match (start, end) {
                (Some(s), Some(e)) if s < e => {}
                _ => return Err(bad(format!("{day}: {r} is not a valid range"))),
            }
        }
    }
    Ok(())
}
