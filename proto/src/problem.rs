//! RFC 9457 problem details, the body of every error response.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://postvak.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable, machine-readable code, e.g. `stream_conflict`, `not_found`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Problem {
    pub fn new(status: u16, code: &str, title: &str, detail: Option<String>) -> Self {
        Self {
            type_uri: format!("https://postvak.dev/problems/{code}"),
            title: title.to_owned(),
            status,
            detail,
            code: code.to_owned(),
            instance: None,
        }
    }
}
