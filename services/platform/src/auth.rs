//! Authentication seam: every request's credentials become a [`TenantContext`] through an
//! [`Authenticator`] registered as app data — a bearer token (API key or session token) or a
//! browser session cookie.

use crate::cell::TenantContext;
use crate::http::ApiError;
use actix_web::http::Method;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The browser session cookie.
pub const SESSION_COOKIE: &str = "postvak_session";
/// Header a browser must send with a state-changing request made with the session cookie. A
/// cross-site form can't set it, and a cross-site script can't without a CORS preflight, so
/// this is the CSRF defence (alongside `SameSite=Lax`).
pub const CSRF_HEADER: &str = "x-postvak-csrf";

#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Turns a bearer token into a tenant context, or an error answering 401.
    async fn authenticate_bearer(&self, token: &str) -> Result<TenantContext, ApiError>;
    /// Turns a session cookie into a tenant context, or an error answering 401.
    async fn authenticate_cookie(&self, token: &str) -> Result<TenantContext, ApiError>;
}

/// Shared handle stored as app data.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// An authenticated request: extract it in a handler to require credentials.
#[derive(Debug, Clone)]
pub struct Authenticated(pub TenantContext);

enum Credential {
    Bearer(String),
    Cookie { token: String, csrf_ok: bool },
}

fn credential(req: &HttpRequest) -> Result<Credential, ApiError> {
    if let Some(header) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized().with_detail("use Authorization: Bearer <token>")
            })?;
        return Ok(Credential::Bearer(token.trim().to_owned()));
    }
    if let Some(cookie) = req.cookie(SESSION_COOKIE) {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        return Ok(Credential::Cookie {
            token: cookie.value().to_owned(),
            csrf_ok: safe || req.headers().contains_key(CSRF_HEADER),
        });
    }
    Err(ApiError::unauthorized())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<SharedAuthenticator>>().cloned();
        let cred = credential(req);
        Box::pin(async move {
            let auth = auth.ok_or_else(|| ApiError::internal(&"no authenticator configured"))?;
            match cred? {
                Credential::Bearer(token) => auth.authenticate_bearer(&token).await,
                Credential::Cookie { token, csrf_ok } => {
                    if !csrf_ok {
                        return Err(ApiError::forbidden("csrf_header_required", "CSRF check failed")
                            .with_detail(format!(
                                "requests authenticated by the session cookie must send the {CSRF_HEADER} header"
                            )));
                    }
                    auth.authenticate_cookie(&token).await
                }
            }
            .map(Authenticated)
        })
    }
}
