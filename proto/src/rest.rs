//! REST DTOs shared by services.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// One entry per dependency checked (`cell:eu1:database`, `cell:eu1:bus`).
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An inbox: a shared address (and its aliases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Inbox {
    pub id: uuid::Uuid,
    pub name: String,
    /// Lower-cased addresses; the first is the one replies are sent from.
    pub addresses: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    /// Appended to replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// IANA time zone of the inbox's business hours, e.g. `Europe/Amsterdam`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Opening hours per weekday: `{"mon": [["09:00","17:00"]], …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub business_hours: Option<serde_json::Value>,
}

/// Body of `POST /v1/inboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInbox {
    pub name: String,
    pub addresses: Vec<String>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InboxPage {
    pub items: Vec<Inbox>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Who the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub tenant_id: uuid::Uuid,
    pub tenant_name: String,
    pub cell: String,
    /// `apikey:<id>`, `user:<id>`.
    pub actor: String,
    pub scopes: Vec<String>,
}

/// An API key as listed (the secret is shown once, at issue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: uuid::Uuid,
    pub name: String,
    /// The first characters of the token, to recognise it.
    pub prefix: String,
    pub scopes: Vec<String>,
    /// Limited to these inboxes; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inboxes: Option<Vec<uuid::Uuid>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<time::OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<time::OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A user of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: uuid::Uuid,
    pub email: String,
    pub display_name: String,
    /// `owner`, `admin`, `agent` or `viewer`.
    pub role: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// A one-time code generator is enrolled and confirmed.
    pub totp_enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
}

/// Body of `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub display_name: String,
    /// `owner`, `admin`, `agent` (default) or `viewer`.
    #[serde(default)]
    pub role: Option<String>,
    /// Sets a local password at once (at least 12 characters).
    #[serde(default)]
    pub password: Option<String>,
}

/// Body of `PATCH /v1/users/{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub role: Option<String>,
    /// `true` disables the user and ends their sessions.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Body of `PUT /v1/users/{user_id}/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

/// Answer of `POST /v1/users/{user_id}/totp`: load it into an authenticator app, then confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollment {
    /// Base32 secret.
    pub secret: String,
    /// `otpauth://totp/…`
    pub otpauth_url: String,
}

/// Body of `POST /v1/users/{user_id}/totp/confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

/// A team (skills drive skill-based routing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Team {
    pub id: uuid::Uuid,
    pub name: String,
    pub skills: Vec<String>,
    pub members: Vec<uuid::Uuid>,
}

/// Body of `POST /v1/teams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: String,
    #[serde(default)]
    pub skills: Vec<String>,
}

/// A membership of an inbox (a grant), possibly bounded in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InboxMember {
    pub id: uuid::Uuid,
    pub inbox_id: uuid::Uuid,
    /// Exactly one of `user_id` and `team_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<uuid::Uuid>,
    /// `read`, `reply` or `admin`.
    pub role: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<time::OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<time::OffsetDateTime>,
}

/// Body of `POST /v1/inboxes/{inbox_id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInboxMember {
    #[serde(default)]
    pub user_id: Option<uuid::Uuid>,
    #[serde(default)]
    pub team_id: Option<uuid::Uuid>,
    pub role: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<time::OffsetDateTime>,
}

/// Body of `PATCH /v1/inboxes/{inbox_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInbox {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub business_hours: Option<serde_json::Value>,
}

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// `read`, `write`, `admin`.
    pub scopes: Vec<String>,
    /// Limit the key to these inboxes.
    #[serde(default)]
    pub inboxes: Option<Vec<uuid::Uuid>>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// A new API key; `token` is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedApiKey {
    pub id: uuid::Uuid,
    pub token: String,
}

/// Body of `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub tenant_id: uuid::Uuid,
    pub email: String,
    pub password: String,
    /// The current one-time code, where the user enrolled one or the tenant requires MFA.
    #[serde(default)]
    pub totp: Option<String>,
    /// `bearer` (default): the token is returned; `cookie`: a secure session cookie is set.
    #[serde(default)]
    pub session: Option<String>,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Bearer token (absent for cookie sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub user_id: uuid::Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: time::OffsetDateTime,
}

/// The tenant's security settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Local logins must present a TOTP code.
    pub mfa_required: bool,
}

/// A tenant (platform administration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: uuid::Uuid,
    pub name: String,
    pub cell: String,
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// Default: the default cell.
    #[serde(default)]
    pub cell: Option<String>,
    /// The first owner.
    pub owner_email: String,
    pub owner_name: String,
}

/// Answer of `POST /v1/tenants`: the tenant, its owner, and an admin API key shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedTenant {
    pub tenant: Tenant,
    pub owner: User,
    pub api_key: IssuedApiKey,
}

pub mod contact;
pub mod conversation;
pub mod draft_providers;
pub mod imap;
pub mod notification;
pub mod routing;
pub mod sla;
