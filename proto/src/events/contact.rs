//! Events of the `contact` stream type (owned by the conversation service).
//!
//! Key choice per event: the shapes that carry personal data (`contact.created`,
//! `contact.updated`) are sealed under the contact's own key (`contact:<id>`), so destroying
//! that key erases them without touching the log; the shapes that carry only ids and times
//! (`contact.conversation_linked`, `contact.merged`, `contact.absorbed`, `contact.erased`) are
//! sealed under the tenant key and stay readable after erasure.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM_CONTACT: &str = "contact";

pub const CONTACT_CREATED: &str = "contact.created";
pub const CONTACT_UPDATED: &str = "contact.updated";
pub const CONTACT_CONVERSATION_LINKED: &str = "contact.conversation_linked";
pub const CONTACT_MERGED: &str = "contact.merged";
pub const CONTACT_ABSORBED: &str = "contact.absorbed";
pub const CONTACT_ERASED: &str = "contact.erased";

/// Blind-index purpose of a contact's normalised address (`Keyring::blind_index`). A contract
/// between services: the conversation service indexes contacts' addresses under it, and the
/// routing service keys its VIP table by the same index, so neither stores the address.
pub const ADDRESS_INDEX_PURPOSE: &str = "contact.address";

/// The personal data of a contact. Addresses are normalised (trimmed, lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContactProfileV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    #[serde(default)]
    pub vip: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// `contact.created` v1 (contact key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCreatedV1 {
    pub contact_id: Uuid,
    pub profile: ContactProfileV1,
    /// `mail` (a sender or recipient) or `api`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `contact.updated` v1 (contact key): the whole profile after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactUpdatedV1 {
    pub profile: ContactProfileV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `contact.conversation_linked` v1 (tenant key: ids only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactConversationLinkedV1 {
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    pub at_us: i64,
}

/// `contact.merged` v1 (tenant key): this contact was a duplicate of `into`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactMergedV1 {
    pub into: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `contact.absorbed` v1 (tenant key): the duplicate `from` was merged into this contact (its
/// profile and links arrive as `contact.updated` and `contact.conversation_linked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAbsorbedV1 {
    pub from: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}

/// `contact.erased` v1 (tenant key): the audit record of an erasure. Carries no personal data;
/// the contact's key is destroyed right after it is appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactErasedV1 {
    pub contact_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
    pub at_us: i64,
}
