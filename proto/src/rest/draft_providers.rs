//! REST DTOs of draft providers (`/v1/draft-providers…`, ADR 0016) and the request and answer
//! exchanged with a provider.
//!
//! A provider is an HTTP endpoint of the tenant (its CRM, ERP or its own AI agent). When a
//! customer writes, Postvak POSTs a [`SuggestionRequest`] to it, signed per the Standard
//! Webhooks spec with the provider's secret (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`); a `200` with a [`SuggestionAnswer`] becomes a shared draft marked as
//! suggested, a `204` means "nothing to suggest".

use crate::rest::conversation::Mailbox;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /v1/draft-providers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDraftProvider {
    /// `http` or `https` endpoint; must reach a public address.
    pub url: String,
    /// Only conversations of this inbox (default: every inbox of the tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    /// Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Body of `PUT /v1/draft-providers/{id}` (the whole provider but its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDraftProvider {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    pub enabled: bool,
}

/// A registered provider (its secret is never shown again after creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DraftProvider {
    pub id: Uuid,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<Uuid>,
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A provider just registered, with its signing secret (shown this once only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedDraftProvider {
    #[serde(flatten)]
    pub provider: DraftProvider,
    /// `whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DraftProviderList {
    pub items: Vec<DraftProvider>,
}

/// What Postvak POSTs to a provider (`type` = `draft.suggestion_requested`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SuggestionRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub provider_id: Uuid,
    pub conversation_id: Uuid,
    pub inbox_id: Uuid,
    /// The customer message that asked for it.
    pub message_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The customer (the sender of the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Mailbox>,
    /// The most recent messages, oldest first (at most 10).
    pub messages: Vec<SuggestionContextMessage>,
}

/// One message of a [`SuggestionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SuggestionContextMessage {
    pub id: Uuid,
    /// `inbound` or `outbound`.
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Mailbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The text (cut at 16 KiB).
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// A provider's `200` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SuggestionAnswer {
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}
