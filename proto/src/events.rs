//! Stored event payload shapes. Each is identified by `(event_type, event_version)`; older
//! versions are upcast on read by the service that owns them. Domain enums are never stored.

pub mod directory {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    pub const STREAM_TENANT: &str = "tenant";
    pub const STREAM_INBOX: &str = "inbox";
    pub const STREAM_API_KEY: &str = "api_key";

    pub const TENANT_CREATED: &str = "tenant.created";
    pub const INBOX_CREATED: &str = "inbox.created";
    pub const API_KEY_ISSUED: &str = "api_key.issued";
    pub const API_KEY_REVOKED: &str = "api_key.revoked";

    /// `tenant.created` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantCreatedV1 {
        pub tenant_id: Uuid,
        pub name: String,
        pub cell: String,
    }

    /// `inbox.created` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InboxCreatedV1 {
        pub inbox_id: Uuid,
        pub name: String,
        pub addresses: Vec<String>,
    }

    /// `api_key.issued` v1. Only the hash of the secret is stored.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiKeyIssuedV1 {
        pub key_id: Uuid,
        pub name: String,
        pub prefix: String,
        pub secret_hash: String,
        pub scopes: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_at: Option<i64>,
    }

    /// `api_key.revoked` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiKeyRevokedV1 {
        pub key_id: Uuid,
    }
}

/// Identity and access events of the directory (users, teams, grants, SSO).
pub mod identity {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    pub const STREAM_USER: &str = "user";
    pub const STREAM_TEAM: &str = "team";

    pub const USER_CREATED: &str = "user.created";
    pub const USER_ROLE_CHANGED: &str = "user.role_changed";
    pub const USER_DISABLED: &str = "user.disabled";
    pub const USER_IDENTITY_LINKED: &str = "user.identity_linked";
    pub const USER_CREDENTIALS_CHANGED: &str = "user.credentials_changed";
    pub const TEAM_CREATED: &str = "team.created";
    pub const TEAM_MEMBER_ADDED: &str = "team.member_added";
    pub const TEAM_MEMBER_REMOVED: &str = "team.member_removed";
    pub const INBOX_UPDATED: &str = "inbox.updated";
    pub const INBOX_MEMBER_GRANTED: &str = "inbox.member_granted";
    pub const INBOX_MEMBER_REVOKED: &str = "inbox.member_revoked";
    pub const TENANT_SECURITY_CHANGED: &str = "tenant.security_changed";
    pub const TENANT_SSO_CONFIGURED: &str = "tenant.sso_configured";

    /// `user.created` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserCreatedV1 {
        pub user_id: Uuid,
        pub email: String,
        pub display_name: String,
        pub role: String,
    }

    /// `user.role_changed` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserRoleChangedV1 {
        pub user_id: Uuid,
        pub role: String,
    }

    /// `user.disabled` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserDisabledV1 {
        pub user_id: Uuid,
    }

    /// `user.identity_linked` v1: an OpenID Connect identity, keyed on (issuer, subject).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserIdentityLinkedV1 {
        pub user_id: Uuid,
        pub issuer: String,
        pub subject: String,
    }

    /// `user.credentials_changed` v1. Never carries the secret itself.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserCredentialsChangedV1 {
        pub user_id: Uuid,
        /// `password_set`, `totp_enrolled`, `totp_removed`.
        pub change: String,
    }

    /// `team.created` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TeamCreatedV1 {
        pub team_id: Uuid,
        pub name: String,
        pub skills: Vec<String>,
    }

    /// `team.member_added` / `team.member_removed` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TeamMemberV1 {
        pub team_id: Uuid,
        pub user_id: Uuid,
    }

    /// `inbox.updated` v1: the fields given are replaced.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InboxUpdatedV1 {
        pub inbox_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub signature: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timezone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub business_hours: Option<serde_json::Value>,
    }

    /// `inbox.member_granted` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InboxMemberGrantedV1 {
        pub inbox_id: Uuid,
        pub grant_id: Uuid,
        /// `user` or `team`.
        pub grantee_kind: String,
        pub grantee_id: Uuid,
        /// `read`, `reply`, `admin`.
        pub role: String,
        /// Unix seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub valid_from: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub valid_until: Option<i64>,
    }

    /// `inbox.member_revoked` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct InboxMemberRevokedV1 {
        pub inbox_id: Uuid,
        pub grant_id: Uuid,
    }

    /// `tenant.security_changed` v1.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantSecurityChangedV1 {
        /// Local logins must present a TOTP code.
        pub mfa_required: bool,
    }

    /// `tenant.sso_configured` v1 (the client secret is kept outside the log).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TenantSsoConfiguredV1 {
        pub issuer: String,
        pub client_id: String,
        pub allowed_domains: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub role_claim: Option<String>,
        #[serde(default)]
        pub role_mapping: std::collections::BTreeMap<String, String>,
        pub default_role: String,
        #[serde(default)]
        pub required_acr: Vec<String>,
        #[serde(default)]
        pub required_amr: Vec<String>,
    }
}

pub mod agent_activity;
pub mod contact;
pub mod conversation;
pub mod draft;
pub mod ingest;
pub mod notification;
pub mod routing;
pub mod timers;
