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
