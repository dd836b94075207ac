//! `/v1/conversations` — the agent API. Stub replaced below.
use actix_web::web;
pub fn routes(_cfg: &mut web::ServiceConfig) {}
