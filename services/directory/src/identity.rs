//! Users, credentials (local password + TOTP), sessions, teams, inbox grants, tenant security
//! settings, and the per-request [`Access`] computed from them.
//!
//! Credentials are not events: a password hash or TOTP secret in an immutable log would outlive
//! every rotation. Their changes are events (`user.credentials_changed`) without the secret.

use crate::projection::{from_secs, global_tx, now};
use crate::{Directory, ServiceError};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use postvak_core::access::{Grant, Grantee, InboxRole, TenantRole, inbox_permission};
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::db::db_error;
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::events::identity as ev;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// How long a session lives.
pub const SESSION_TTL: time::Duration = time::Duration::hours(12);
/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "postvak_session";

const EMAIL_INDEX: &str = "user-email";
const TOTP_ISSUER: &str = "Postvak";

fn user_stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_USER, format!("user-{id}"))
}

fn team_stream(id: Uuid) -> StreamRef {
    StreamRef::new(ev::STREAM_TEAM, format!("team-{id}"))
}

fn inbox_stream(id: Uuid) -> StreamRef {
    StreamRef::new(
        postvak_proto::events::directory::STREAM_INBOX,
        format!("inbox-{id}"),
    )
}

fn tenant_stream(id: TenantId) -> StreamRef {
    StreamRef::new(
        postvak_proto::events::directory::STREAM_TENANT,
        format!("tenant-{}", id.0),
    )
}

fn event<T: Serialize>(event_type: &str, payload: &T) -> Result<NewEvent, StoreError> {
    NewEvent::from_payload(event_type, 1, payload)
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: TenantRole,
    pub disabled: bool,
    pub totp_enabled: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct Profile {
    email: String,
    display_name: String,
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub skills: Vec<String>,
    pub members: Vec<Uuid>,
}

/// Why a login was refused. Each maps to a stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("unknown user or wrong password")]
    BadCredentials,
    #[error("this tenant requires a one-time code")]
    TotpRequired,
    #[error("the one-time code is wrong or was already used")]
    BadTotp,
    #[error("this tenant requires MFA and the user has not enrolled a one-time code generator")]
    MfaEnrollmentRequired,
    #[error("the user is disabled")]
    Disabled,
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        let code = match e {
            LoginError::BadCredentials => "invalid_credentials",
            LoginError::TotpRequired => "totp_required",
            LoginError::BadTotp => "invalid_totp",
            LoginError::MfaEnrollmentRequired => "mfa_enrollment_required",
            LoginError::Disabled => "user_disabled",
        };
        ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            code,
            "Login refused",
        )
        .with_detail(e.to_string())
    }
}

/// A session just issued: the token is shown once.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub token: String,
    pub user_id: Uuid,
    pub expires_at: OffsetDateTime,
}

/// What the caller of a request may do, computed once per request.
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    teams: Vec<Uuid>,
    grants: Vec<Grant>,
    /// API keys limited to some inboxes.
    key_inboxes: Option<Vec<Uuid>>,
    now: OffsetDateTime,
}

impl Access {
    /// Users, teams, inboxes, keys and SSO.
    pub fn administers_tenant(&self) -> bool {
        match &self.principal {
            Principal::User { role, .. } => role.administers_tenant(),
            Principal::ApiKey { scopes, .. } => {
                self.key_inboxes.is_none() && scopes.iter().any(|s| s == "admin")
            }
            Principal::Service { .. } => true,
        }
    }

    /// The permission held on one inbox now.
    pub fn inbox_role(&self, inbox: Uuid) -> Option<InboxRole> {
        match &self.principal {
            Principal::User { user_id, role } => {
                inbox_permission(*role, *user_id, &self.teams, inbox, &self.grants, self.now)
            }
            Principal::ApiKey { scopes, .. } => {
                if self
                    .key_inboxes
                    .as_ref()
                    .is_some_and(|ids| !ids.contains(&inbox))
                {
                    return None;
                }
                scopes
                    .iter()
                    .filter_map(|s| match s.as_str() {
                        "admin" => Some(InboxRole::Admin),
                        "write" => Some(InboxRole::Reply),
                        "read" => Some(InboxRole::Read),
                        _ => None,
                    })
                    .max()
            }
            Principal::Service { .. } => Some(InboxRole::Admin),
        }
    }

    /// Requires `needed` on `inbox`. Not holding any permission on it answers 404 (as if it
    /// didn't exist); holding a lesser one answers 403 naming what is missing.
    pub fn require_inbox(&self, inbox: Uuid, needed: InboxRole) -> Result<(), ApiError> {
        match self.inbox_role(inbox) {
            None => Err(ApiError::not_found()),
            Some(have) if have >= needed => Ok(()),
            Some(have) => Err(ApiError::forbidden(
                "inbox_permission_required",
                "Not allowed on this inbox",
            )
            .with_detail(format!(
                "this needs the {:?} permission on the inbox; you hold {:?}",
                needed.as_str(),
                have.as_str()
            ))),
        }
    }

    pub fn require_tenant_admin(&self) -> Result<(), ApiError> {
        if self.administers_tenant() {
            Ok(())
        } else {
            Err(
                ApiError::forbidden("tenant_admin_required", "Administrators only")
                    .with_detail("this needs the tenant admin or owner role (or an admin API key)"),
            )
        }
    }

    /// Every inbox id that the caller may read among `all`.
    pub fn readable<'a>(&self, all: impl IntoIterator<Item = &'a Uuid>) -> Vec<Uuid> {
        all.into_iter()
            .filter(|i| self.inbox_role(**i).is_some())
            .copied()
            .collect()
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match &self.principal {
            Principal::User { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }
}

fn token_hash(token: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"postvak.session.v1");
    h.update(token.as_bytes());
    h.finalize().to_vec()
}

fn totp_for(secret: &[u8], account: &str) -> Result<totp_rs::Totp, ServiceError> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(account.replace(':', "_"))
        .with_issuer(Some(TOTP_ISSUER))
        .build()
        .map_err(|e| ServiceError::Store(StoreError::Serialization(format!("totp: {e}"))))
}

impl Directory {
    async fn email_index(&self, ctx: &TenantContext, email: &str) -> Result<Vec<u8>, ServiceError> {
        Ok(ctx
            .cell()
            .store
            .keyring()
            .blind_index(
                ctx.tenant(),
                EMAIL_INDEX,
                email.trim().to_lowercase().as_bytes(),
            )
            .await
            .map_err(StoreError::from)?
            .to_vec())
    }

    /// Creates a user of the tenant.
    pub async fn create_user(
        &self,
        ctx: &TenantContext,
        email: &str,
        display_name: &str,
        role: TenantRole,
    ) -> Result<User, ServiceError> {
        let email = postvak_core::directory::normalise_address(email)?;
        let display_name = display_name.trim().to_owned();
        if display_name.is_empty() {
            return Err(postvak_core::directory::DirectoryError::NameRequired.into());
        }
        let index = self.email_index(ctx, &email).await?;
        if self.user_by_index(ctx, &index).await?.is_some() {
            return Err(ServiceError::Exists("a user with this email"));
        }
        let user_id = Uuid::now_v7();
        let payload = ev::UserCreatedV1 {
            user_id,
            email: email.clone(),
            display_name: display_name.clone(),
            role: role.as_str().to_owned(),
        };
        ctx.append(
            &user_stream(user_id),
            ExpectedVersion::NoStream,
            vec![event(ev::USER_CREATED, &payload)?],
        )
        .await?;
        self.project_user_created(ctx, &payload, &index).await?;
        self.get_user(ctx, user_id).await
    }

    async fn project_user_created(
        &self,
        ctx: &TenantContext,
        p: &ev::UserCreatedV1,
        index: &[u8],
    ) -> Result<(), ServiceError> {
        let profile = serde_json::to_vec(&Profile {
            email: p.email.clone(),
            display_name: p.display_name.clone(),
        })
        .map_err(|e| StoreError::Serialization(e.to_string()))?;
        let (key, sealed) = ctx
            .cell()
            .store
            .keyring()
            .seal(
                ctx.tenant(),
                &KeyScope::Tenant,
                &profile,
                p.user_id.as_bytes(),
            )
            .await
            .map_err(StoreError::from)?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        let inserted = on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO users (tenant_id, user_id, email_index, profile, profile_key, role, disabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, false, $7) ON CONFLICT DO NOTHING"
        )
        .bind(ctx.tenant().0)
        .bind(p.user_id)
        .bind(index)
        .bind(&sealed)
        .bind(key)
        .bind(&p.role)
        .bind(now())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        tx.commit().await?;
        if inserted == 0 && self.get_user(ctx, p.user_id).await.is_err() {
            return Err(ServiceError::Exists("a user with this email"));
        }
        Ok(())
    }

    async fn user_by_index(
        &self,
        ctx: &TenantContext,
        index: &[u8],
    ) -> Result<Option<Uuid>, ServiceError> {
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
        let id = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT user_id FROM users WHERE tenant_id = $1 AND email_index = $2"
        )
        .bind(ctx.tenant().0)
        .bind(index)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| r.try_get::<Uuid, _>(0)).transpose()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(id)
    }

    /// The tenant's users (or one).
    pub async fn list_users(
        &self,
        ctx: &TenantContext,
        only: Option<Uuid>,
    ) -> Result<Vec<User>, ServiceError> {
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
        let rows: Vec<UserRow> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT u.user_id, u.profile, u.profile_key, u.role, u.disabled, u.created_at, \
                    (cr.totp_last_step IS NOT NULL) \
             FROM users u LEFT JOIN user_credentials cr \
               ON cr.tenant_id = u.tenant_id AND cr.user_id = u.user_id \
             WHERE u.tenant_id = $1 AND ($2 IS NULL OR u.user_id = $2) ORDER BY u.user_id"
        )
        .bind(ctx.tenant().0)
        .bind(only)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?
            )))
            .collect()))
        .map_err(db_error)?;
        tx.commit().await?;
        let keyring = ctx.cell().store.keyring();
        let mut out = Vec::with_capacity(rows.len());
        for (id, sealed, key, role, disabled, created, totp) in rows {
            let plain = keyring
                .open(ctx.tenant(), key, &sealed, id.as_bytes())
                .await
                .map_err(StoreError::from)?;
            let profile: Profile = serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Serialization(e.to_string()))?;
            out.push(User {
                id,
                email: profile.email,
                display_name: profile.display_name,
                role: TenantRole::parse(&role).unwrap_or(TenantRole::Viewer),
                disabled,
                totp_enabled: totp,
                created_at: from_secs(created),
            });
        }
        Ok(out)
    }

    pub async fn get_user(&self, ctx: &TenantContext, id: Uuid) -> Result<User, ServiceError> {
        self.list_users(ctx, Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or(ServiceError::NotFound)
    }

    /// Changes a user's role and/or disables or re-enables them. Disabling also ends their
    /// sessions. The last active owner can't be demoted or disabled.
    pub async fn update_user(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        role: Option<TenantRole>,
        disabled: Option<bool>,
    ) -> Result<User, ServiceError> {
        let user = self.get_user(ctx, id).await?;
        let demotes_owner = user.role == TenantRole::Owner
            && (role.is_some_and(|r| r != TenantRole::Owner) || disabled == Some(true));
        if demotes_owner {
            let owners = self
                .list_users(ctx, None)
                .await?
                .iter()
                .filter(|u| u.role == TenantRole::Owner && !u.disabled)
                .count();
            if owners <= 1 {
                return Err(ServiceError::LastOwner);
            }
        }
        let mut events = Vec::new();
        if let Some(r) = role.filter(|r| *r != user.role) {
            events.push(event(
                ev::USER_ROLE_CHANGED,
                &ev::UserRoleChangedV1 {
                    user_id: id,
                    role: r.as_str().to_owned(),
                },
            )?);
        }
        if disabled == Some(true) && !user.disabled {
            events.push(event(
                ev::USER_DISABLED,
                &ev::UserDisabledV1 { user_id: id },
            )?);
        }
        if disabled == Some(false) && user.disabled {
            return Err(ServiceError::Invalid(
                "a disabled user can't be re-enabled; create a new user".into(),
            ));
        }
        if events.is_empty() {
            return Ok(user);
        }
        ctx.append(&user_stream(id), ExpectedVersion::Any, events)
            .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE users SET role = COALESCE($1, role), disabled = (disabled OR $2) \
             WHERE tenant_id = $3 AND user_id = $4"
        )
        .bind(role.map(TenantRole::as_str))
        .bind(disabled == Some(true))
        .bind(ctx.tenant().0)
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        self.caches().users.remove(&(ctx.tenant(), id));
        if disabled == Some(true) {
            self.end_sessions(ctx.tenant(), id).await?;
        }
        self.get_user(ctx, id).await
    }

    async fn credentials_changed(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
        change: &str,
    ) -> Result<(), ServiceError> {
        ctx.append(
            &user_stream(user_id),
            ExpectedVersion::Any,
            vec![event(
                ev::USER_CREDENTIALS_CHANGED,
                &ev::UserCredentialsChangedV1 {
                    user_id,
                    change: change.to_owned(),
                },
            )?],
        )
        .await?;
        Ok(())
    }

    /// Sets a local password (argon2id). At least 12 characters.
    pub async fn set_password(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
        password: &str,
    ) -> Result<(), ServiceError> {
        if password.chars().count() < 12 {
            return Err(ServiceError::Invalid(
                "a password needs at least 12 characters".into(),
            ));
        }
        self.get_user(ctx, user_id).await?;
        let pw = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || {
            argon2::Argon2::default()
                .hash_password(pw.as_bytes())
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| StoreError::Serialization(e.to_string()))?
        .map_err(|e| StoreError::Serialization(format!("argon2: {e}")))?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO user_credentials (tenant_id, user_id, password_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET password_hash = excluded.password_hash"
        )
        .bind(ctx.tenant().0)
        .bind(user_id)
        .bind(&hash)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        self.credentials_changed(ctx, user_id, "password_set").await
    }

    /// Starts TOTP enrolment: a new secret (base32) and its `otpauth://` URL. The generator is
    /// active once `confirm_totp` saw a code from it.
    pub async fn enroll_totp(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
    ) -> Result<(String, String), ServiceError> {
        let user = self.get_user(ctx, user_id).await?;
        let secret = totp_rs::Secret::generate();
        let bytes = secret.as_bytes().to_vec();
        let totp = totp_for(&bytes, &user.email)?;
        let url = totp
            .to_url()
            .map_err(|e| StoreError::Serialization(format!("totp: {e}")))?;
        let (key, sealed) = ctx
            .cell()
            .store
            .keyring()
            .seal(ctx.tenant(), &KeyScope::Tenant, &bytes, user_id.as_bytes())
            .await
            .map_err(StoreError::from)?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO user_credentials (tenant_id, user_id, totp_secret, totp_key, totp_last_step) \
             VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET totp_secret = excluded.totp_secret, \
             totp_key = excluded.totp_key, totp_last_step = NULL"
        )
        .bind(ctx.tenant().0)
        .bind(user_id)
        .bind(&sealed)
        .bind(key)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok((secret.to_base32(), url))
    }

    /// Activates the enrolled generator with a current code from it.
    pub async fn confirm_totp(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
        code: &str,
    ) -> Result<(), ServiceError> {
        match self
            .check_totp(ctx.tenant(), ctx, user_id, code, true)
            .await?
        {
            Ok(()) => {
                self.credentials_changed(ctx, user_id, "totp_enrolled")
                    .await
            }
            Err(_) => Err(ServiceError::Invalid(
                "the code does not match the enrolled generator".into(),
            )),
        }
    }

    /// Checks a TOTP code and records its time step so it can't be replayed. `enrolling`
    /// accepts a generator that is not yet confirmed.
    async fn check_totp(
        &self,
        tenant: TenantId,
        ctx: &TenantContext,
        user_id: Uuid,
        code: &str,
        enrolling: bool,
    ) -> Result<Result<(), LoginError>, ServiceError> {
        let mut tx = ctx.cell().db().tenant_tx(tenant, true).await?;
        let row: Option<TotpRow> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT totp_secret, totp_key, totp_last_step FROM user_credentials \
             WHERE tenant_id = $1 AND user_id = $2"
        )
        .bind(tenant.0)
        .bind(user_id)
        .fetch_optional(c)
        .await
        .and_then(|r| r
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()))
        .map_err(db_error)?;
        let Some((Some(sealed), Some(key), last)) = row else {
            return Ok(Err(LoginError::MfaEnrollmentRequired));
        };
        if last.is_none() && !enrolling {
            return Ok(Err(LoginError::MfaEnrollmentRequired));
        }
        let secret = ctx
            .cell()
            .store
            .keyring()
            .open(tenant, key, &sealed, user_id.as_bytes())
            .await
            .map_err(StoreError::from)?;
        let totp = totp_for(&secret, "user")?;
        let Some(step) = totp.check_current(code.trim()) else {
            return Ok(Err(LoginError::BadTotp));
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // Each step is accepted once (RFC 6238 §5.2): the update only succeeds past the last.
        let updated = on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE user_credentials SET totp_last_step = $1 \
             WHERE tenant_id = $2 AND user_id = $3 AND (totp_last_step IS NULL OR totp_last_step < $1)"
        )
        .bind(step)
        .bind(tenant.0)
        .bind(user_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(if updated == 1 {
            Ok(())
        } else {
            Err(LoginError::BadTotp)
        })
    }

    /// Local login: email + password (+ TOTP code). On success a session.
    pub async fn login_password(
        &self,
        tenant: TenantId,
        email: &str,
        password: &str,
        totp: Option<&str>,
        kind: SessionKind,
    ) -> Result<IssuedSession, ApiError> {
        let ctx = self
            .cells()
            .context(tenant, Principal::Service { name: "login" })
            .await
            .map_err(|_| ApiError::from(LoginError::BadCredentials))?;
        let index = self
            .email_index(&ctx, email)
            .await
            .map_err(ApiError::from)?;
        let user_id = self
            .user_by_index(&ctx, &index)
            .await
            .map_err(ApiError::from)?;
        let mut tx = ctx
            .cell()
            .db()
            .tenant_tx(tenant, false)
            .await
            .map_err(ApiError::from)?;
        let row: Option<(Option<String>, bool, Option<i64>)> = match user_id {
            Some(id) => on_tx!(&mut tx, |c| sqlx::query(
                "SELECT cr.password_hash, u.disabled, cr.totp_last_step FROM users u \
                 LEFT JOIN user_credentials cr ON cr.tenant_id = u.tenant_id AND cr.user_id = u.user_id \
                 WHERE u.tenant_id = $1 AND u.user_id = $2"
            )
            .bind(tenant.0)
            .bind(id)
            .fetch_optional(c)
            .await
            .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).transpose()))
            .map_err(|e| ApiError::from(db_error(e)))?,
            None => None,
        };
        tx.commit().await.map_err(ApiError::from)?;
        // Verify against a fixed hash when the user is unknown, so timing does not tell.
        let hash = row
            .as_ref()
            .and_then(|r| r.0.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_owned());
        let pw = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            argon2::Argon2::default()
                .verify_password(pw.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        let (Some(user_id), Some((Some(_), disabled, totp_step))) = (user_id, row) else {
            return Err(LoginError::BadCredentials.into());
        };
        if !verified {
            return Err(LoginError::BadCredentials.into());
        }
        if disabled {
            return Err(LoginError::Disabled.into());
        }
        let mfa_required = self.mfa_required(tenant).await.map_err(ApiError::from)?;
        let mut amr = vec!["pwd".to_owned()];
        if totp_step.is_some() || mfa_required {
            let Some(code) = totp else {
                return Err(if totp_step.is_none() {
                    LoginError::MfaEnrollmentRequired
                } else {
                    LoginError::TotpRequired
                }
                .into());
            };
            self.check_totp(tenant, &ctx, user_id, code, false)
                .await
                .map_err(ApiError::from)?
                .map_err(ApiError::from)?;
            amr.push("otp".to_owned());
            amr.push("mfa".to_owned());
        }
        self.create_session(tenant, user_id, kind, &amr)
            .await
            .map_err(ApiError::from)
    }

    /// Whether local logins of the context's tenant need a one-time code.
    pub async fn mfa_required_for(&self, ctx: &TenantContext) -> Result<bool, ServiceError> {
        self.mfa_required(ctx.tenant()).await
    }

    async fn mfa_required(&self, tenant: TenantId) -> Result<bool, ServiceError> {
        let cell = self.cells().cell_of(tenant).await?;
        let mut tx = cell.db().tenant_tx(tenant, false).await?;
        let v = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT mfa_required FROM tenant_security WHERE tenant_id = $1"
        )
        .bind(tenant.0)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| r.try_get::<bool, _>(0)).transpose()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(v.unwrap_or(false))
    }

    /// Requires MFA for local logins (SSO logins follow the tenant's `required_acr/amr`).
    pub async fn set_mfa_required(
        &self,
        ctx: &TenantContext,
        required: bool,
    ) -> Result<(), ServiceError> {
        ctx.append(
            &tenant_stream(ctx.tenant()),
            ExpectedVersion::Any,
            vec![event(
                ev::TENANT_SECURITY_CHANGED,
                &ev::TenantSecurityChangedV1 {
                    mfa_required: required,
                },
            )?],
        )
        .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO tenant_security (tenant_id, mfa_required) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET mfa_required = excluded.mfa_required"
        )
        .bind(ctx.tenant().0)
        .bind(required)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(())
    }

    /// Issues a session for a user (local login or SSO).
    pub async fn create_session(
        &self,
        tenant: TenantId,
        user_id: Uuid,
        kind: SessionKind,
        amr: &[String],
    ) -> Result<IssuedSession, ServiceError> {
        use base64::Engine;
        let token = format!(
            "pvs_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let created = OffsetDateTime::now_utc();
        let expires_at = created + SESSION_TTL;
        let mut tx = global_tx(self.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO sessions (token_hash, tenant_id, user_id, kind, amr, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(token_hash(&token))
        .bind(tenant.0)
        .bind(user_id)
        .bind(kind.as_str())
        .bind(amr.join(" "))
        .bind(created.unix_timestamp())
        .bind(expires_at.unix_timestamp())
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(IssuedSession {
            token,
            user_id,
            expires_at,
        })
    }

    /// Checks a session token (bearer or cookie); a context for its user on success.
    pub async fn authenticate_session(
        &self,
        token: &str,
        kind: SessionKind,
    ) -> Result<TenantContext, ApiError> {
        let hash = token_hash(token);
        let row = match self.caches().sessions.get(&hash) {
            Some(r) => Some(r),
            None => {
                let mut tx = global_tx(self.cells().directory(), false)
                    .await
                    .map_err(ApiError::from)?;
                let row: Option<SessionRow> = on_tx!(&mut tx, |c| sqlx::query(
                    "SELECT tenant_id, user_id, kind, expires_at, revoked_at FROM sessions WHERE token_hash = $1"
                )
                .bind(&hash)
                .fetch_optional(c)
                .await
                .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?))).transpose()))
                .map_err(|e| ApiError::from(db_error(e)))?;
                tx.commit().await.map_err(ApiError::from)?;
                if let Some(r) = &row {
                    self.caches().sessions.insert(hash, r.clone());
                }
                row
            }
        };
        let Some((tenant, user_id, stored_kind, expires, revoked)) = row else {
            return Err(ApiError::unauthorized());
        };
        if stored_kind != kind.as_str() || revoked.is_some() {
            return Err(ApiError::unauthorized());
        }
        if expires <= now() {
            return Err(ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "session_expired",
                "Session expired",
            )
            .with_detail("log in again"));
        }
        let tenant = TenantId(tenant);
        let (role, disabled) = match self.caches().users.get(&(tenant, user_id)) {
            Some(u) => u,
            None => {
                let ctx = self
                    .cells()
                    .context(tenant, Principal::Service { name: "session" })
                    .await
                    .map_err(|e| ApiError::internal(&e))?;
                let user = self
                    .get_user(&ctx, user_id)
                    .await
                    .map_err(|_| ApiError::unauthorized())?;
                self.caches()
                    .users
                    .insert((tenant, user_id), (user.role, user.disabled));
                (user.role, user.disabled)
            }
        };
        if disabled {
            return Err(ApiError::unauthorized().with_detail("the user is disabled"));
        }
        self.cells()
            .context(tenant, Principal::User { user_id, role })
            .await
            .map_err(|e| ApiError::internal(&e))
    }

    /// Ends one session (logout).
    pub async fn logout(&self, token: &str) -> Result<(), ServiceError> {
        self.caches().sessions.remove(&token_hash(token));
        let mut tx = global_tx(self.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL"
        )
        .bind(now())
        .bind(token_hash(token))
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(())
    }

    async fn end_sessions(&self, tenant: TenantId, user_id: Uuid) -> Result<(), ServiceError> {
        let mut tx = global_tx(self.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE tenant_id = $2 AND user_id = $3 AND revoked_at IS NULL"
        )
        .bind(now())
        .bind(tenant.0)
        .bind(user_id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(())
    }

    /// The user linked to an OpenID identity, if any.
    pub async fn find_user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<(TenantId, Uuid)>, ServiceError> {
        let mut tx = global_tx(self.cells().directory(), false).await?;
        let row: Option<(Uuid, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT tenant_id, user_id FROM user_identities WHERE issuer = $1 AND subject = $2"
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(row.map(|(t, u)| (TenantId(t), u)))
    }

    /// Links an OpenID identity `(issuer, subject)` to a user of the context's tenant.
    pub async fn link_identity(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
        issuer: &str,
        subject: &str,
    ) -> Result<(), ServiceError> {
        self.get_user(ctx, user_id).await?;
        ctx.append(
            &user_stream(user_id),
            ExpectedVersion::Any,
            vec![event(
                ev::USER_IDENTITY_LINKED,
                &ev::UserIdentityLinkedV1 {
                    user_id,
                    issuer: issuer.to_owned(),
                    subject: subject.to_owned(),
                },
            )?],
        )
        .await?;
        let mut tx = global_tx(self.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO user_identities (issuer, subject, tenant_id, user_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (issuer, subject) DO NOTHING"
        )
        .bind(issuer)
        .bind(subject)
        .bind(ctx.tenant().0)
        .bind(user_id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        match self.find_user_by_identity(issuer, subject).await? {
            Some((t, u)) if t == ctx.tenant() && u == user_id => Ok(()),
            _ => Err(ServiceError::Exists(
                "this identity is linked to another user",
            )),
        }
    }

    /// The user of the tenant with this email, if any.
    pub async fn find_user_by_email(
        &self,
        ctx: &TenantContext,
        email: &str,
    ) -> Result<Option<Uuid>, ServiceError> {
        let index = self.email_index(ctx, email).await?;
        self.user_by_index(ctx, &index).await
    }

    /// Creates a team with skills (used by skill-based routing).
    pub async fn create_team(
        &self,
        ctx: &TenantContext,
        name: &str,
        skills: &[String],
    ) -> Result<Team, ServiceError> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(postvak_core::directory::DirectoryError::NameRequired.into());
        }
        let mut skills: Vec<String> = skills
            .iter()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        skills.sort();
        skills.dedup();
        if skills.iter().any(|s| s.contains(char::is_whitespace)) {
            return Err(ServiceError::Invalid("a skill is one word".into()));
        }
        let team_id = Uuid::now_v7();
        ctx.append(
            &team_stream(team_id),
            ExpectedVersion::NoStream,
            vec![event(
                ev::TEAM_CREATED,
                &ev::TeamCreatedV1 {
                    team_id,
                    name: name.clone(),
                    skills: skills.clone(),
                },
            )?],
        )
        .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO teams (tenant_id, team_id, name, skills) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        )
        .bind(ctx.tenant().0)
        .bind(team_id)
        .bind(&name)
        .bind(skills.join(" "))
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        self.get_team(ctx, team_id).await
    }

    pub async fn list_teams(
        &self,
        ctx: &TenantContext,
        only: Option<Uuid>,
    ) -> Result<Vec<Team>, ServiceError> {
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
        let teams: Vec<(Uuid, String, String)> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT team_id, name, skills FROM teams WHERE tenant_id = $1 AND ($2 IS NULL OR team_id = $2) ORDER BY team_id"
        )
        .bind(ctx.tenant().0)
        .bind(only)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()))
        .map_err(db_error)?;
        let members: Vec<(Uuid, Uuid)> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT team_id, user_id FROM team_members WHERE tenant_id = $1 ORDER BY user_id"
        )
        .bind(ctx.tenant().0)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(teams
            .into_iter()
            .map(|(id, name, skills)| Team {
                id,
                name,
                skills: skills.split_whitespace().map(str::to_owned).collect(),
                members: members
                    .iter()
                    .filter(|(t, _)| *t == id)
                    .map(|(_, u)| *u)
                    .collect(),
            })
            .collect())
    }

    pub async fn get_team(&self, ctx: &TenantContext, id: Uuid) -> Result<Team, ServiceError> {
        self.list_teams(ctx, Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or(ServiceError::NotFound)
    }

    /// Adds (`add = true`) or removes a user from a team.
    pub async fn set_team_member(
        &self,
        ctx: &TenantContext,
        team_id: Uuid,
        user_id: Uuid,
        add: bool,
    ) -> Result<Team, ServiceError> {
        let team = self.get_team(ctx, team_id).await?;
        self.get_user(ctx, user_id).await?;
        if team.members.contains(&user_id) == add {
            return Ok(team);
        }
        ctx.append(
            &team_stream(team_id),
            ExpectedVersion::Any,
            vec![event(
                if add {
                    ev::TEAM_MEMBER_ADDED
                } else {
                    ev::TEAM_MEMBER_REMOVED
                },
                &ev::TeamMemberV1 { team_id, user_id },
            )?],
        )
        .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        if add {
            on_tx!(&mut tx, |c| sqlx::query(
                "INSERT INTO team_members (tenant_id, team_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            )
            .bind(ctx.tenant().0)
            .bind(team_id)
            .bind(user_id)
            .execute(c)
            .await
            .map(|_| ()))
        } else {
            on_tx!(&mut tx, |c| sqlx::query(
                "DELETE FROM team_members WHERE tenant_id = $1 AND team_id = $2 AND user_id = $3"
            )
            .bind(ctx.tenant().0)
            .bind(team_id)
            .bind(user_id)
            .execute(c)
            .await
            .map(|_| ()))
        }
        .map_err(db_error)?;
        tx.commit().await?;
        self.permissions_changed(ctx.tenant());
        self.get_team(ctx, team_id).await
    }

    /// Grants a user or team a role on an inbox, optionally within a window (handover).
    pub async fn grant_inbox(
        &self,
        ctx: &TenantContext,
        inbox_id: Uuid,
        grantee: Grantee,
        role: InboxRole,
        valid_from: Option<OffsetDateTime>,
        valid_until: Option<OffsetDateTime>,
    ) -> Result<Grant, ServiceError> {
        self.get_inbox(ctx, inbox_id).await?;
        if let (Some(f), Some(u)) = (valid_from, valid_until)
            && u <= f
        {
            return Err(ServiceError::Invalid(
                "valid_until must be after valid_from".into(),
            ));
        }
        let (kind, id) = match grantee {
            Grantee::User(u) => {
                self.get_user(ctx, u).await?;
                ("user", u)
            }
            Grantee::Team(t) => {
                self.get_team(ctx, t).await?;
                ("team", t)
            }
        };
        let grant_id = Uuid::now_v7();
        let payload = ev::InboxMemberGrantedV1 {
            inbox_id,
            grant_id,
            grantee_kind: kind.to_owned(),
            grantee_id: id,
            role: role.as_str().to_owned(),
            valid_from: valid_from.map(OffsetDateTime::unix_timestamp),
            valid_until: valid_until.map(OffsetDateTime::unix_timestamp),
        };
        ctx.append(
            &inbox_stream(inbox_id),
            ExpectedVersion::Any,
            vec![event(ev::INBOX_MEMBER_GRANTED, &payload)?],
        )
        .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO inbox_grants (tenant_id, grant_id, inbox_id, grantee_kind, grantee_id, role, valid_from, valid_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
        )
        .bind(ctx.tenant().0)
        .bind(grant_id)
        .bind(inbox_id)
        .bind(kind)
        .bind(id)
        .bind(role.as_str())
        .bind(payload.valid_from)
        .bind(payload.valid_until)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        self.permissions_changed(ctx.tenant());
        Ok(Grant {
            grant_id,
            inbox_id,
            grantee,
            role,
            valid_from: valid_from.map(|t| from_secs(t.unix_timestamp())),
            valid_until: valid_until.map(|t| from_secs(t.unix_timestamp())),
        })
    }

    pub async fn revoke_grant(
        &self,
        ctx: &TenantContext,
        inbox_id: Uuid,
        grant_id: Uuid,
    ) -> Result<(), ServiceError> {
        if !self
            .grants(ctx, Some(inbox_id))
            .await?
            .iter()
            .any(|g| g.grant_id == grant_id)
        {
            return Err(ServiceError::NotFound);
        }
        ctx.append(
            &inbox_stream(inbox_id),
            ExpectedVersion::Any,
            vec![event(
                ev::INBOX_MEMBER_REVOKED,
                &ev::InboxMemberRevokedV1 { inbox_id, grant_id },
            )?],
        )
        .await?;
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM inbox_grants WHERE tenant_id = $1 AND grant_id = $2"
        )
        .bind(ctx.tenant().0)
        .bind(grant_id)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        self.permissions_changed(ctx.tenant());
        Ok(())
    }

    /// Grants of one inbox (or all of the tenant's).
    pub async fn grants(
        &self,
        ctx: &TenantContext,
        inbox: Option<Uuid>,
    ) -> Result<Vec<Grant>, ServiceError> {
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
        let rows: Vec<GrantRow> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT grant_id, inbox_id, grantee_kind, grantee_id, role, valid_from, valid_until \
             FROM inbox_grants WHERE tenant_id = $1 AND ($2 IS NULL OR inbox_id = $2) ORDER BY grant_id"
        )
        .bind(ctx.tenant().0)
        .bind(inbox)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?, r.try_get(6)?))).collect()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(rows.into_iter().filter_map(grant_from_row).collect())
    }

    /// One user's teams and the grants that reach them (directly or through a team).
    async fn user_teams_and_grants(
        &self,
        ctx: &TenantContext,
        user_id: Uuid,
    ) -> Result<TeamsAndGrants, ServiceError> {
        let key = (ctx.tenant(), user_id);
        if let Some(hit) = self.caches().access.get(&key) {
            return Ok(hit);
        }
        let mut tx = ctx.cell().db().tenant_tx(ctx.tenant(), false).await?;
        let teams: Vec<Uuid> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT team_id FROM team_members WHERE tenant_id = $1 AND user_id = $2"
        )
        .bind(ctx.tenant().0)
        .bind(user_id)
        .fetch_all(c)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect()))
        .map_err(db_error)?;
        let rows: Vec<GrantRow> = on_tx!(&mut tx, |c| {
            sqlx::query(
            "SELECT grant_id, inbox_id, grantee_kind, grantee_id, role, valid_from, valid_until \
             FROM inbox_grants WHERE tenant_id = $1 AND (grantee_id = $2 OR grantee_id IN \
               (SELECT team_id FROM team_members WHERE tenant_id = $1 AND user_id = $2))"
        )
        .bind(ctx.tenant().0)
        .bind(user_id)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?
            )))
            .collect())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        let found = (
            teams,
            rows.into_iter()
                .filter_map(grant_from_row)
                .collect::<Vec<_>>(),
        );
        self.caches().access.insert(key, found.clone());
        Ok(found)
    }

    /// Drops cached permissions of a tenant after its grants or teams changed.
    fn permissions_changed(&self, tenant: TenantId) {
        self.caches().access.retain(|(t, _)| *t != tenant);
    }

    /// What the caller may do (a user's grants and teams: two indexed queries).
    pub async fn access(&self, ctx: &TenantContext) -> Result<Access, ApiError> {
        let now = OffsetDateTime::now_utc();
        match ctx.principal() {
            Principal::User { user_id, .. } => {
                let (teams, grants) = self
                    .user_teams_and_grants(ctx, *user_id)
                    .await
                    .map_err(ApiError::from)?;
                Ok(Access {
                    principal: ctx.principal().clone(),
                    teams,
                    grants,
                    key_inboxes: None,
                    now,
                })
            }
            Principal::ApiKey { key_id, .. } => {
                let key = self.api_key(*key_id).await.map_err(ApiError::from)?;
                Ok(Access {
                    principal: ctx.principal().clone(),
                    teams: Vec::new(),
                    grants: Vec::new(),
                    key_inboxes: key.and_then(|k| k.inboxes.clone()),
                    now,
                })
            }
            Principal::Service { .. } => Ok(Access {
                principal: ctx.principal().clone(),
                teams: Vec::new(),
                grants: Vec::new(),
                key_inboxes: None,
                now,
            }),
        }
    }
}

/// user_id, sealed profile, its key, role, disabled, created_at, TOTP confirmed.
type UserRow = (Uuid, Vec<u8>, Uuid, String, bool, i64, bool);
/// sealed TOTP secret, its key, last accepted step.
type TotpRow = (Option<Vec<u8>>, Option<Uuid>, Option<i64>);
/// A session row: tenant, user, kind, expires_at, revoked_at.
pub(crate) type SessionRow = (Uuid, Uuid, String, i64, Option<i64>);
/// A user's teams and the grants that reach them.
pub(crate) type TeamsAndGrants = (Vec<Uuid>, Vec<Grant>);
/// grant_id, inbox_id, grantee kind, grantee id, role, valid_from, valid_until.
type GrantRow = (Uuid, Uuid, String, Uuid, String, Option<i64>, Option<i64>);

fn grant_from_row((grant_id, inbox_id, kind, id, role, from, until): GrantRow) -> Option<Grant> {
    Some(Grant {
        grant_id,
        inbox_id,
        grantee: if kind == "team" {
            Grantee::Team(id)
        } else {
            Grantee::User(id)
        },
        role: InboxRole::parse(&role)?,
        valid_from: from.map(from_secs),
        valid_until: until.map(from_secs),
    })
}

/// A session for a browser (cookie) or an API client (bearer token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Cookie,
    Bearer,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cookie => "cookie",
            Self::Bearer => "bearer",
        }
    }
}

/// An argon2id hash of a random password nobody knows: verified against when the user is
/// unknown, so a login for an unknown email takes as long as one with a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2oTZ2ooBYXYHsLTpr6bmj6ZhG3Sqx6JiJjyBzLVWAdk";
