//! Authentication seam: every request's credentials become a [`TenantContext`] through an
//! [`Authenticator`] registered as app data (API keys today; OIDC sessions build on it).

use crate::cell::TenantContext;
use crate::http::ApiError;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Turns a bearer token into a tenant context, or an error answering 401.
    async fn authenticate_bearer(&self, token: &str) -> Result<TenantContext, ApiError>;
}

/// Shared handle stored as app data.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// An authenticated request: extract it in a handler to require credentials.
#[derive(Debug, Clone)]
pub struct Authenticated(pub TenantContext);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<SharedAuthenticator>>().cloned();
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            let auth = auth.ok_or_else(|| ApiError::internal(&"no authenticator configured"))?;
            let header = header.ok_or_else(ApiError::unauthorized)?;
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ApiError::unauthorized().with_detail("use Authorization: Bearer <token>")
                })?;
            auth.authenticate_bearer(token.trim())
                .await
                .map(Authenticated)
        })
    }
}
