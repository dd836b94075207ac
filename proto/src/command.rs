//! Commands between services travel as NATS request/reply (or in-process calls) with an
//! idempotency key: a retried request gets the first answer, the effect happens once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Problem;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Unique per intended effect; the serving side remembers its reply under this key.
    pub idempotency_key: String,
    pub tenant_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandReply {
    Ok { payload: serde_json::Value },
    Err { problem: Problem },
}

pub mod conversation;
