//! OpenID Connect single sign-on, per tenant: settings, the authorization-code login with PKCE,
//! `state` and `nonce`, ID-token validation, the MFA policy (`required_acr`/`required_amr`),
//! just-in-time users limited to allowed email domains, and the HTTP handlers.
//!
//! Invariants:
//! - An identity is `(iss, sub)`; an email never finds or links a user.
//! - The issuer an ID token is checked against is the one configured for the tenant the login
//!   *started* for (found through the single-use `state`), never one named by the response: a
//!   code or token of tenant A's provider can't log into tenant B (mix-up defence, RFC 9207).
//! - ID tokens must be signed with an asymmetric algorithm by a key of the issuer's JWKS
//!   (`alg: none` and shared-secret algorithms are refused).
//! - The client secret is sealed under the tenant's key in `sso_settings`; it is in no event,
//!   no log line and no response.

use crate::identity::{IssuedSession, SESSION_TTL, SessionKind};
use crate::projection::{global_tx, now};
use crate::{Directory, ServiceError};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AsyncHttpClient, AuthType,
    AuthenticationContextClass, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, HttpRequest as OidcRequest, HttpResponse as OidcResponse, IdToken, IdTokenVerifier,
    IssuerUrl, JsonWebKeySet, Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata,
    RedirectUrl, RequestTokenError, Scope, SignatureVerificationError, TokenResponse,
};
use postvak_core::access::TenantRole;
use postvak_platform::auth::SESSION_COOKIE;
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::db::db_error;
use postvak_platform::http::ApiError;
use postvak_platform::on_tx;
use postvak_platform::store::{
    ExpectedVersion, KeyScope, NewEvent, StoreError, StreamRef, TenantId,
};
use postvak_proto::Problem;
use postvak_proto::events::identity as ev;
use postvak_proto::rest;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// How long a started login may take until its callback.
pub const LOGIN_TTL_SECS: i64 = 600;
/// How long discovered provider metadata and its JWKS are trusted before fetching again.
pub const METADATA_TTL: Duration = Duration::from_secs(15 * 60);
/// An unknown `kid` refetches the JWKS (key rotation), at most this often per issuer.
const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Binds a started login to the browser that started it (login CSRF defence).
pub const STATE_COOKIE: &str = "postvak_sso_state";
/// The callback path, relative to the public base URL.
pub const CALLBACK_PATH: &str = "/v1/auth/sso/callback";
/// Tolerated clock difference for `iat` in the future.
const CLOCK_SKEW_SECS: i64 = 300;
/// Responses from a provider larger than this are refused.
const MAX_IDP_RESPONSE: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an SSO operation was refused. Each maps to a stable problem code.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("single sign-on is not configured for this tenant")]
    NotConfigured,
    #[error("{0}")]
    InvalidSettings(String),
    #[error("{0}")]
    InvalidRole(String),
    #[error("the issuer {0} is already configured for another tenant")]
    IssuerTaken(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("the identity provider refused the login: {0}")]
    IdpError(String),
    #[error("{0}")]
    IssuerMismatch(String),
    #[error("the ID token is not for this client: {0}")]
    AudienceMismatch(String),
    #[error("the ID token has expired: {0}")]
    TokenExpired(String),
    #[error("the ID token's nonce does not match the login: {0}")]
    NonceMismatch(String),
    #[error("{0}")]
    InvalidIdToken(String),
    #[error("the authorization code was not accepted: {0}")]
    CodeExchange(String),
    #[error("the identity provider could not be reached or answered nonsense: {0}")]
    IdpUnavailable(String),
    #[error("{0}")]
    MfaRequired(String),
    #[error("{0}")]
    DomainNotAllowed(String),
    #[error("the identity provider says this email address is not verified")]
    EmailNotVerified,
    #[error("the ID token carries no email, which is needed to create the user")]
    EmailMissing,
    #[error(
        "a user with this email exists but is not linked to this identity; an administrator must link it"
    )]
    AccountExists,
    #[error("this identity belongs to another tenant")]
    IdentityConflict,
    #[error("the user is disabled")]
    UserDisabled,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<StoreError> for SsoError {
    fn from(e: StoreError) -> Self {
        Self::Service(e.into())
    }
}

impl SsoError {
    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured => "sso_not_configured",
            Self::InvalidSettings(_) => "invalid_sso_settings",
            Self::InvalidRole(_) => "invalid_role",
            Self::IssuerTaken(_) => "issuer_taken",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidState(_) => "invalid_state",
            Self::IdpError(_) => "idp_error",
            Self::IssuerMismatch(_) => "issuer_mismatch",
            Self::AudienceMismatch(_) => "audience_mismatch",
            Self::TokenExpired(_) => "id_token_expired",
            Self::NonceMismatch(_) => "nonce_mismatch",
            Self::InvalidIdToken(_) => "invalid_id_token",
            Self::CodeExchange(_) => "code_exchange_failed",
            Self::IdpUnavailable(_) => "idp_unavailable",
            Self::MfaRequired(_) => "mfa_required",
            Self::DomainNotAllowed(_) => "domain_not_allowed",
            Self::EmailNotVerified => "email_not_verified",
            Self::EmailMissing => "email_missing",
            Self::AccountExists => "account_exists",
            Self::IdentityConflict => "identity_conflict",
            Self::UserDisabled => "user_disabled",
            Self::Service(_) => "internal_error",
        }
    }
}

impl From<SsoError> for ApiError {
    fn from(e: SsoError) -> Self {
        let code = e.code();
        let (status, title) = match &e {
            SsoError::Service(_) => {
                return match e {
                    SsoError::Service(s) => s.into(),
                    other => ApiError::internal(&other),
                };
            }
            SsoError::NotConfigured => (StatusCode::NOT_FOUND, "Single sign-on not configured"),
            SsoError::InvalidSettings(_) | SsoError::InvalidRole(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable")
            }
            SsoError::IssuerTaken(_) | SsoError::AccountExists => {
                (StatusCode::CONFLICT, "Conflict")
            }
            SsoError::InvalidRequest(_)
            | SsoError::InvalidState(_)
            | SsoError::IdpError(_)
            | SsoError::CodeExchange(_) => (StatusCode::BAD_REQUEST, "Login refused"),
            SsoError::IssuerMismatch(_)
            | SsoError::AudienceMismatch(_)
            | SsoError::TokenExpired(_)
            | SsoError::NonceMismatch(_)
            | SsoError::InvalidIdToken(_) => (StatusCode::UNAUTHORIZED, "Login refused"),
            SsoError::MfaRequired(_)
            | SsoError::DomainNotAllowed(_)
            | SsoError::EmailNotVerified
            | SsoError::EmailMissing
            | SsoError::IdentityConflict
            | SsoError::UserDisabled => (StatusCode::FORBIDDEN, "Login refused"),
            SsoError::IdpUnavailable(_) => {
                tracing::warn!(error = %e, "identity provider unavailable");
                (StatusCode::BAD_GATEWAY, "Identity provider unavailable")
            }
        };
        ApiError::new(status, code, title).with_detail(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

/// The tenant's SSO settings as an administrator writes them.
#[derive(Clone, Deserialize, ToSchema)]
pub struct SsoSettingsInput {
    /// The provider's issuer identifier, exactly as its discovery document states it
    /// (`https://…`; `http://` only for loopback hosts).
    pub issuer: String,
    pub client_id: String,
    /// The client secret. Omitted: the stored one is kept (or, with none stored, the client is
    /// public and relies on PKCE alone).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Email domains whose users are created on their first login. Empty: no just-in-time users.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// The ID-token claim whose value(s) `role_mapping` maps to a role (string or list).
    #[serde(default)]
    pub role_claim: Option<String>,
    /// Claim value → tenant role (`admin`, `agent` or `viewer`).
    #[serde(default)]
    pub role_mapping: BTreeMap<String, String>,
    /// The role of a just-in-time user whom no mapping matched.
    #[serde(default = "default_role")]
    pub default_role: String,
    /// When not empty, the `acr` claim must be one of these.
    #[serde(default)]
    pub required_acr: Vec<String>,
    /// Every one of these must be in the `amr` claim (e.g. `["otp"]` or `["mfa"]`).
    #[serde(default)]
    pub required_amr: Vec<String>,
}

fn default_role() -> String {
    "viewer".to_owned()
}

impl std::fmt::Debug for SsoSettingsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoSettingsInput")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("allowed_domains", &self.allowed_domains)
            .field("role_claim", &self.role_claim)
            .field("role_mapping", &self.role_mapping)
            .field("default_role", &self.default_role)
            .field("required_acr", &self.required_acr)
            .field("required_amr", &self.required_amr)
            .finish()
    }
}

/// The tenant's SSO settings as the API shows them (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SsoSettingsView {
    pub issuer: String,
    pub client_id: String,
    /// Whether a client secret is stored.
    pub client_secret_set: bool,
    pub allowed_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_claim: Option<String>,
    pub role_mapping: BTreeMap<String, String>,
    pub default_role: String,
    pub required_acr: Vec<String>,
    pub required_amr: Vec<String>,
    /// Where the provider must send the browser back (register it at the provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: time::OffsetDateTime,
}

/// Validated settings of one tenant.
#[derive(Clone)]
pub struct SsoSettings {
    pub tenant: TenantId,
    pub issuer: String,
    pub client_id: String,
    client_secret: Option<ClientSecret>,
    pub allowed_domains: Vec<String>,
    pub role_claim: Option<String>,
    pub role_mapping: BTreeMap<String, TenantRole>,
    pub default_role: TenantRole,
    pub required_acr: Vec<String>,
    pub required_amr: Vec<String>,
    pub updated_at: i64,
}

impl std::fmt::Debug for SsoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoSettings")
            .field("tenant", &self.tenant)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret_set", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl SsoSettings {
    fn view(&self, redirect_uri: Option<String>) -> SsoSettingsView {
        SsoSettingsView {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret_set: self.client_secret.is_some(),
            allowed_domains: self.allowed_domains.clone(),
            role_claim: self.role_claim.clone(),
            role_mapping: self
                .role_mapping
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect(),
            default_role: self.default_role.as_str().to_owned(),
            required_acr: self.required_acr.clone(),
            required_amr: self.required_amr.clone(),
            redirect_uri,
            updated_at: crate::projection::from_secs(self.updated_at),
        }
    }
}

/// Checks an issuer: an absolute `https` URL without query or fragment; `http` only for a
/// loopback host (development and tests).
pub fn validate_issuer(raw: &str) -> Result<String, SsoError> {
    let issuer = raw.trim();
    let bad = |why: &str| SsoError::InvalidSettings(format!("issuer {issuer:?}: {why}"));
    let url = openidconnect::url::Url::parse(issuer).map_err(|e| bad(&e.to_string()))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an issuer has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("an issuer carries no credentials"));
    }
    let loopback = match url.host() {
        Some(openidconnect::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("an issuer names a host")),
    };
    match url.scheme() {
        "https" => Ok(issuer.to_owned()),
        "http" if loopback => Ok(issuer.to_owned()),
        "http" => Err(bad(
            "must use https (http is allowed only for loopback hosts)",
        )),
        _ => Err(bad("must be an https URL")),
    }
}

fn parse_sso_role(s: &str, what: &str) -> Result<TenantRole, SsoError> {
    match TenantRole::parse(s.trim()) {
        Some(TenantRole::Owner) => Err(SsoError::InvalidRole(format!(
            "{what}: single sign-on can't make owners; promote a user to owner in Postvak"
        ))),
        Some(r) => Ok(r),
        None => Err(SsoError::InvalidRole(format!(
            "{what}: {s:?} is not a role: use admin, agent or viewer"
        ))),
    }
}

fn clean_list(values: &[String], what: &str) -> Result<Vec<String>, SsoError> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        let v = v.trim();
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            return Err(SsoError::InvalidSettings(format!(
                "{what}: {v:?} is not a single value"
            )));
        }
        if !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    }
    Ok(out)
}

fn clean_domain(raw: &str) -> Result<String, SsoError> {
    let d = raw.trim().trim_start_matches('@').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
        return Err(SsoError::InvalidSettings(format!(
            "allowed_domains: {raw:?} is not a domain name (write example.com, no wildcards)"
        )));
    }
    Ok(d)
}

/// Validates settings input (no I/O).
pub fn validate_settings(
    tenant: TenantId,
    input: &SsoSettingsInput,
) -> Result<SsoSettings, SsoError> {
    let issuer = validate_issuer(&input.issuer)?;
    let client_id = input.client_id.trim().to_owned();
    if client_id.is_empty() {
        return Err(SsoError::InvalidSettings("client_id is required".into()));
    }
    if let Some(secret) = &input.client_secret
        && secret.trim().is_empty()
    {
        return Err(SsoError::InvalidSettings(
            "client_secret is empty: omit it to keep the stored one".into(),
        ));
    }
    let mut allowed_domains = Vec::new();
    for d in &input.allowed_domains {
        let d = clean_domain(d)?;
        if !allowed_domains.contains(&d) {
            allowed_domains.push(d);
        }
    }
    let role_claim = match input.role_claim.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(c.to_owned()),
    };
    let mut role_mapping = BTreeMap::new();
    for (value, role) in &input.role_mapping {
        role_mapping.insert(
            value.clone(),
            parse_sso_role(role, &format!("role_mapping[{value:?}]"))?,
        );
    }
    if !role_mapping.is_empty() && role_claim.is_none() {
        return Err(SsoError::InvalidSettings(
            "role_mapping needs role_claim: the claim whose values it maps".into(),
        ));
    }
    Ok(SsoSettings {
        tenant,
        issuer,
        client_id,
        client_secret: input
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.trim().to_owned())),
        allowed_domains,
        role_claim,
        role_mapping,
        default_role: parse_sso_role(&input.default_role, "default_role")?,
        required_acr: clean_list(&input.required_acr, "required_acr")?,
        required_amr: clean_list(&input.required_amr, "required_amr")?,
        updated_at: now(),
    })
}

fn secret_aad(tenant: TenantId) -> Vec<u8> {
    let mut aad = b"postvak.sso.client_secret.v1:".to_vec();
    aad.extend_from_slice(tenant.0.as_bytes());
    aad
}

fn tenant_stream(id: TenantId) -> StreamRef {
    StreamRef::new(
        postvak_proto::events::directory::STREAM_TENANT,
        format!("tenant-{}", id.0),
    )
}

// ---------------------------------------------------------------------------------------------
// The HTTP client openidconnect talks through: reqwest 0.13, no redirects, bounded.

#[derive(Debug, Clone)]
struct OidcHttp(reqwest::Client);

/// A failed request to an identity provider.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdpHttpError(String);

impl<'c> AsyncHttpClient<'c> for OidcHttp {
    type Error = IdpHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<OidcResponse, IdpHttpError>> + Send + 'c>>;

    fn call(&'c self, request: OidcRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut req = self
                .0
                .request(parts.method, parts.uri.to_string())
                .body(body);
            for (name, value) in &parts.headers {
                req = req.header(name, value);
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| IdpHttpError(format!("{}: {}", parts.uri, error_chain(&e))))?;
            let mut builder = openidconnect::http::Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| IdpHttpError(format!("{}: {}", parts.uri, error_chain(&e))))?
            {
                if body.len() + chunk.len() > MAX_IDP_RESPONSE {
                    return Err(IdpHttpError(format!("{}: response too large", parts.uri)));
                }
                body.extend_from_slice(&chunk);
            }
            builder.body(body).map_err(|e| IdpHttpError(e.to_string()))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Provider metadata (RFC 9207's flag included) and its cache

/// Discovery fields openidconnect does not model: RFC 9207's flag.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Rfc9207Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for Rfc9207Metadata {}

type Metadata = ProviderMetadata<
    Rfc9207Metadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Every claim of the ID token beyond the standard ones (the role claim is one of them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OtherClaims(#[serde(default)] pub serde_json::Map<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type SsoIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

#[derive(Clone)]
struct CachedProvider {
    metadata: Arc<Metadata>,
    fetched: Instant,
    jwks_fetched: Instant,
}

/// The SSO runtime: the HTTP client towards identity providers and the cache of their
/// metadata and keys. Cheap to clone; share one per process (app data `web::Data<Sso>`).
#[derive(Clone)]
pub struct Sso {
    inner: Arc<SsoInner>,
}

struct SsoInner {
    http: OidcHttp,
    public_url: Option<String>,
    ttl: Duration,
    providers: Mutex<HashMap<String, CachedProvider>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("public_url", &self.inner.public_url)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Sso> = OnceLock::new();

impl Sso {
    /// `public_url` is the externally visible base URL of the API (`https://api.example.com`);
    /// the provider redirects to `<public_url>/v1/auth/sso/callback`. `None` derives it from
    /// each request (scheme and host, honouring `Forwarded`/`X-Forwarded-*`).
    pub fn new(public_url: Option<&str>) -> Result<Self, SsoError> {
        Self::with_ttl(public_url, METADATA_TTL)
    }

    pub fn with_ttl(public_url: Option<&str>, ttl: Duration) -> Result<Self, SsoError> {
        // reqwest is built with `rustls-no-provider`: install ring once (an already installed
        // provider is fine).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent("postvak-sso")
            .build()
            .map_err(|e| SsoError::IdpUnavailable(format!("building the HTTP client: {e}")))?;
        let public_url = match public_url.map(|u| u.trim().trim_end_matches('/')) {
            None | Some("") => None,
            Some(u) => {
                let parsed = openidconnect::url::Url::parse(u)
                    .map_err(|e| SsoError::InvalidSettings(format!("public URL {u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "https" | "http") {
                    return Err(SsoError::InvalidSettings(format!(
                        "public URL {u:?} must be http(s)"
                    )));
                }
                Some(u.to_owned())
            }
        };
        Ok(Self {
            inner: Arc::new(SsoInner {
                http: OidcHttp(http),
                public_url,
                ttl,
                providers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The process-wide runtime used when no `web::Data<Sso>` is registered.
    pub fn shared() -> Result<Self, SsoError> {
        if let Some(s) = SHARED.get() {
            return Ok(s.clone());
        }
        let s = Self::new(None)?;
        Ok(SHARED.get_or_init(|| s).clone())
    }

    pub fn public_url(&self) -> Option<&str> {
        self.inner.public_url.as_deref()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedProvider>> {
        self.inner
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what was discovered about an issuer.
    pub fn evict(&self, issuer: &str) {
        self.cache().remove(issuer);
    }

    async fn discover(&self, issuer: &str) -> Result<Arc<Metadata>, SsoError> {
        if let Some(c) = self.cache().get(issuer)
            && c.fetched.elapsed() < self.inner.ttl
        {
            return Ok(c.metadata.clone());
        }
        let issuer_url = IssuerUrl::new(issuer.to_owned())
            .map_err(|e| SsoError::InvalidSettings(format!("issuer {issuer:?}: {e}")))?;
        let metadata = Metadata::discover_async(issuer_url, &self.inner.http)
            .await
            .map_err(|e| {
                SsoError::IdpUnavailable(format!("discovery of {issuer}: {}", error_chain(&e)))
            })?;
        let metadata = Arc::new(metadata);
        let at = Instant::now();
        self.cache().insert(
            issuer.to_owned(),
            CachedProvider {
                metadata: metadata.clone(),
                fetched: at,
                jwks_fetched: at,
            },
        );
        Ok(metadata)
    }

    /// Fetches the issuer's JWKS again (an unknown `kid` may be a rotated key), unless that
    /// was done very recently. `Some` when new keys were fetched.
    async fn refresh_jwks(&self, issuer: &str) -> Result<Option<Arc<Metadata>>, SsoError> {
        let Some(cached) = self.cache().get(issuer).cloned() else {
            return Ok(None);
        };
        if cached.jwks_fetched.elapsed() < JWKS_REFRESH_MIN_INTERVAL {
            return Ok(None);
        }
        let jwks = JsonWebKeySet::fetch_async(cached.metadata.jwks_uri(), &self.inner.http)
            .await
            .map_err(|e| {
                SsoError::IdpUnavailable(format!("JWKS of {issuer}: {}", error_chain(&e)))
            })?;
        let metadata = Arc::new((*cached.metadata).clone().set_jwks(jwks));
        self.cache().insert(
            issuer.to_owned(),
            CachedProvider {
                metadata: metadata.clone(),
                fetched: cached.fetched,
                jwks_fetched: Instant::now(),
            },
        );
        Ok(Some(metadata))
    }

    fn callback_url(&self, request_base: Option<&str>) -> Result<String, SsoError> {
        let base = self
            .inner
            .public_url
            .as_deref()
            .or(request_base)
            .ok_or_else(|| SsoError::InvalidRequest("no public URL to return to".into()))?;
        Ok(format!("{}{CALLBACK_PATH}", base.trim_end_matches('/')))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Storage

async fn load_settings(dir: &Directory, tenant: TenantId) -> Result<Option<SsoSettings>, SsoError> {
    let mut tx = global_tx(dir.cells().directory(), false).await?;
    type SettingsRow = (String, String, Option<Vec<u8>>, Option<Uuid>, String, i64);
    let row: Option<SettingsRow> = on_tx!(&mut tx, |c| sqlx::query(
        "SELECT issuer, client_id, client_secret, client_secret_key, settings, updated_at \
         FROM sso_settings WHERE tenant_id = $1"
    )
    .bind(tenant.0)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?
        )))
        .transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    let Some((issuer, client_id, sealed, key, settings, updated_at)) = row else {
        return Ok(None);
    };
    let stored: ev::TenantSsoConfiguredV1 = serde_json::from_str(&settings)
        .map_err(|e| StoreError::Serialization(format!("sso_settings.settings: {e}")))?;
    let client_secret = match (sealed, key) {
        (Some(sealed), Some(key)) => {
            let ctx = dir
                .cells()
                .context(tenant, Principal::Service { name: "sso" })
                .await
                .map_err(ServiceError::from)?;
            let plain = ctx
                .cell()
                .store
                .keyring()
                .open(tenant, key, &sealed, &secret_aad(tenant))
                .await
                .map_err(StoreError::from)?;
            let secret = String::from_utf8(plain)
                .map_err(|_| StoreError::Serialization("sso client secret is not UTF-8".into()))?;
            Some(ClientSecret::new(secret))
        }
        _ => None,
    };
    Ok(Some(SsoSettings {
        tenant,
        issuer,
        client_id,
        client_secret,
        allowed_domains: stored.allowed_domains,
        role_claim: stored.role_claim,
        role_mapping: stored
            .role_mapping
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), TenantRole::parse(v)?)))
            .collect(),
        default_role: TenantRole::parse(&stored.default_role).unwrap_or(TenantRole::Viewer),
        required_acr: stored.required_acr,
        required_amr: stored.required_amr,
        updated_at,
    }))
}

/// A login between its start and its callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingTarget {
    /// `cookie` or `bearer`.
    session: String,
    /// Where the browser goes after a cookie login.
    redirect_uri: String,
    /// The `redirect_uri` sent to the provider (must be sent again with the code).
    callback: String,
}

#[derive(Debug)]
struct PendingLogin {
    tenant: TenantId,
    nonce: String,
    pkce_verifier: String,
    target: PendingTarget,
    created_at: i64,
}

/// Takes a pending login out (single use). `None` when unknown or already used.
async fn take_pending(dir: &Directory, state: &str) -> Result<Option<PendingLogin>, SsoError> {
    let mut tx = global_tx(dir.cells().directory(), true).await?;
    type PendingRow = (Uuid, String, String, String, i64);
    let row: Option<PendingRow> = on_tx!(&mut tx, |c| sqlx::query(
        "DELETE FROM sso_logins WHERE state = $1 \
         RETURNING tenant_id, nonce, pkce_verifier, redirect_uri, created_at"
    )
    .bind(state)
    .fetch_optional(c)
    .await
    .and_then(|r| r
        .map(|r| Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?
        )))
        .transpose()))
    .map_err(db_error)?;
    tx.commit().await?;
    let Some((tenant, nonce, pkce_verifier, target, created_at)) = row else {
        return Ok(None);
    };
    let target: PendingTarget = serde_json::from_str(&target)
        .map_err(|e| StoreError::Serialization(format!("sso_logins.redirect_uri: {e}")))?;
    Ok(Some(PendingLogin {
        tenant: TenantId(tenant),
        nonce,
        pkce_verifier,
        target,
        created_at,
    }))
}

// ---------------------------------------------------------------------------------------------
// What a validated ID token says

/// The identity an ID token proved, after signature, issuer, audience, expiry and nonce checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    /// The values of the tenant's role claim (a string claim is one value).
    pub role_values: Vec<String>,
}

/// A finished SSO login.
#[derive(Debug, Clone)]
pub struct SsoLogin {
    pub session: IssuedSession,
    pub kind: SessionKind,
    pub tenant: TenantId,
    /// Where a browser goes next (cookie sessions).
    pub redirect_uri: String,
}

/// The parameters the provider sent back to the callback.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    /// The authorization code.
    #[serde(default)]
    pub code: Option<String>,
    /// The state the login was started with.
    #[serde(default)]
    pub state: Option<String>,
    /// The issuer of the response (RFC 9207).
    #[serde(default)]
    pub iss: Option<String>,
    /// An error from the provider (`access_denied`, …).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

fn random_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Only printable ASCII, at most `max` characters: text from a provider put into our errors.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

fn constant_time_str_eq(a: &str, b: &str) -> bool {
    crate::constant_time_eq(a.as_bytes(), b.as_bytes())
}

/// Where a browser may be sent after login: a path on this site, or an absolute URL on the
/// same origin as the API. Anything else would make the login an open redirect.
pub fn validate_redirect(raw: &str, base: Option<&str>) -> Result<String, SsoError> {
    let r = raw.trim();
    let bad = || {
        SsoError::InvalidRequest(format!(
            "redirect_uri {r:?} must be a path on this site (/…) or a URL of its origin"
        ))
    };
    if r.len() > 2048 || r.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    if r.starts_with('/') {
        if r.starts_with("//") || r.starts_with("/\\") {
            return Err(bad());
        }
        return Ok(r.to_owned());
    }
    let url = openidconnect::url::Url::parse(r).map_err(|_| bad())?;
    let base = base
        .and_then(|b| openidconnect::url::Url::parse(b).ok())
        .ok_or_else(bad)?;
    if url.origin() == base.origin() {
        Ok(url.to_string())
    } else {
        Err(bad())
    }
}

fn map_claims_error(e: ClaimsVerificationError) -> SsoError {
    match e {
        ClaimsVerificationError::InvalidIssuer(m) => {
            SsoError::IssuerMismatch(format!("the ID token's issuer is wrong: {m}"))
        }
        ClaimsVerificationError::InvalidAudience(m) => SsoError::AudienceMismatch(m),
        ClaimsVerificationError::Expired(m) => SsoError::TokenExpired(m),
        ClaimsVerificationError::InvalidNonce(m) => SsoError::NonceMismatch(m),
        ClaimsVerificationError::SignatureVerification(s) => SsoError::InvalidIdToken(match s {
            SignatureVerificationError::NoMatchingKey => {
                "no key of the issuer's JWKS matches the token's kid and alg".to_owned()
            }
            SignatureVerificationError::NoSignature => "the ID token is not signed".to_owned(),
            SignatureVerificationError::DisallowedAlg(m) => format!("signature algorithm: {m}"),
            other => format!("signature: {other}"),
        }),
        other => SsoError::InvalidIdToken(other.to_string()),
    }
}

/// Decodes the JOSE header without trusting it: only to refuse `alg: none` up front.
fn header_alg(raw: &str) -> Result<String, SsoError> {
    use base64::Engine;
    let header = raw
        .split('.')
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| SsoError::InvalidIdToken("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| SsoError::InvalidIdToken("the JWT header is not base64url".into()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| SsoError::InvalidIdToken("the JWT header is not JSON".into()))?;
    value
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SsoError::InvalidIdToken("the JWT header names no alg".into()))
}

/// The signature algorithms accepted for ID tokens: asymmetric ones the provider advertises
/// (RS256 when it advertises none of them).
fn allowed_algs(metadata: &Metadata) -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    let asymmetric = [
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EdDsa,
    ];
    let algs: Vec<A> = metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|a| asymmetric.contains(a))
        .cloned()
        .collect();
    if algs.is_empty() {
        vec![A::RsaSsaPkcs1V15Sha256]
    } else {
        algs
    }
}

/// Why `verify_with` failed: an unknown key may be a rotated one, worth one JWKS refetch.
enum VerifyFailure {
    UnknownKey,
    Refused(SsoError),
}

impl From<SsoError> for VerifyFailure {
    fn from(e: SsoError) -> Self {
        Self::Refused(e)
    }
}

fn verify_with(
    settings: &SsoSettings,
    metadata: &Metadata,
    token: &SsoIdToken,
    nonce: &str,
) -> Result<VerifiedIdentity, VerifyFailure> {
    let issuer = IssuerUrl::new(settings.issuer.clone())
        .map_err(|e| SsoError::InvalidSettings(format!("issuer: {e}")))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // A public-client verifier: shared-secret (HS*) signatures are refused even when the
    // client has a secret, so only the provider's private keys can sign.
    let verifier = IdTokenVerifier::new_public_client(
        ClientId::new(settings.client_id.clone()),
        issuer,
        metadata.jwks().clone(),
    )
    .set_allowed_algs(allowed_algs(metadata))
    .set_issue_time_verifier_fn(move |iat| {
        if iat.timestamp() > now + CLOCK_SKEW_SECS {
            Err(format!("issued in the future ({iat})"))
        } else {
            Ok(())
        }
    });
    let nonce = Nonce::new(nonce.to_owned());
    let claims = token.claims(&verifier, &nonce).map_err(|e| match e {
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => VerifyFailure::UnknownKey,
        other => VerifyFailure::Refused(map_claims_error(other)),
    })?;
    let role_values = match settings.role_claim.as_deref() {
        None => Vec::new(),
        Some(name) => match claims.additional_claims().0.get(name) {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        },
    };
    Ok(VerifiedIdentity {
        issuer: settings.issuer.clone(),
        subject: claims.subject().as_str().to_owned(),
        email: claims.email().map(|e| e.as_str().to_owned()),
        email_verified: claims.email_verified(),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
        acr: claims.auth_context_ref().map(|a| a.as_str().to_owned()),
        amr: claims
            .auth_method_refs()
            .map(|v| v.iter().map(|a| a.as_str().to_owned()).collect())
            .unwrap_or_default(),
        role_values,
    })
}

/// The MFA policy: `acr` one of `required_acr`, every `required_amr` value in `amr`.
pub fn check_mfa(settings: &SsoSettings, id: &VerifiedIdentity) -> Result<(), SsoError> {
    if !settings.required_acr.is_empty()
        && !id
            .acr
            .as_ref()
            .is_some_and(|acr| settings.required_acr.contains(acr))
    {
        return Err(SsoError::MfaRequired(format!(
            "this tenant requires an authentication context (acr) of {:?}; the identity provider asserted {}",
            settings.required_acr,
            id.acr
                .as_deref()
                .map_or("none".to_owned(), |a| format!("{a:?}"))
        )));
    }
    let missing: Vec<&String> = settings
        .required_amr
        .iter()
        .filter(|r| !id.amr.contains(r))
        .collect();
    if !missing.is_empty() {
        return Err(SsoError::MfaRequired(format!(
            "this tenant requires the authentication methods (amr) {:?}; missing {:?} (asserted {:?})",
            settings.required_amr, missing, id.amr
        )));
    }
    Ok(())
}

/// The role of a just-in-time user: the highest role any claim value maps to, else the
/// default role.
pub fn mapped_role(settings: &SsoSettings, id: &VerifiedIdentity) -> TenantRole {
    id.role_values
        .iter()
        .filter_map(|v| settings.role_mapping.get(v).copied())
        .max()
        .unwrap_or(settings.default_role)
}

fn email_domain_allowed(settings: &SsoSettings, email: &str) -> bool {
    email.rsplit_once('@').is_some_and(|(_, d)| {
        settings
            .allowed_domains
            .iter()
            .any(|a| a.eq_ignore_ascii_case(d))
    })
}

// ---------------------------------------------------------------------------------------------
// The service

impl Sso {
    /// Writes a tenant's SSO settings (tenant admin). The issuer must answer discovery.
    #[tracing::instrument(skip(self, dir, ctx, input), fields(tenant_id = %ctx.tenant().0))]
    pub async fn configure(
        &self,
        dir: &Directory,
        ctx: &TenantContext,
        input: &SsoSettingsInput,
    ) -> Result<SsoSettingsView, SsoError> {
        let mut settings = validate_settings(ctx.tenant(), input)?;
        let existing = load_settings(dir, ctx.tenant()).await?;
        if settings.client_secret.is_none() {
            settings.client_secret = existing.as_ref().and_then(|e| e.client_secret.clone());
        }
        // Another tenant's issuer finds that tenant: it can't be shared.
        let mut tx = global_tx(dir.cells().directory(), false).await?;
        let owner: Option<Uuid> = on_tx!(&mut tx, |c| sqlx::query(
            "SELECT tenant_id FROM sso_settings WHERE issuer = $1"
        )
        .bind(&settings.issuer)
        .fetch_optional(c)
        .await
        .and_then(|r| r.map(|r| r.try_get(0)).transpose()))
        .map_err(db_error)?;
        tx.commit().await?;
        if owner.is_some_and(|t| t != ctx.tenant().0) {
            return Err(SsoError::IssuerTaken(settings.issuer));
        }
        self.evict(&settings.issuer);
        let metadata = self.discover(&settings.issuer).await.map_err(|e| match e {
            SsoError::IdpUnavailable(m) => SsoError::InvalidSettings(format!(
                "the issuer's discovery document could not be used: {m}"
            )),
            other => other,
        })?;
        if !metadata
            .response_types_supported()
            .iter()
            .any(|r| r.as_slice() == [CoreResponseType::Code])
        {
            return Err(SsoError::InvalidSettings(
                "the provider does not support the authorization code flow".into(),
            ));
        }

        let payload = ev::TenantSsoConfiguredV1 {
            issuer: settings.issuer.clone(),
            client_id: settings.client_id.clone(),
            allowed_domains: settings.allowed_domains.clone(),
            role_claim: settings.role_claim.clone(),
            role_mapping: settings
                .role_mapping
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                .collect(),
            default_role: settings.default_role.as_str().to_owned(),
            required_acr: settings.required_acr.clone(),
            required_amr: settings.required_amr.clone(),
        };
        let sealed = match &settings.client_secret {
            Some(secret) => Some(
                ctx.cell()
                    .store
                    .keyring()
                    .seal(
                        ctx.tenant(),
                        &KeyScope::Tenant,
                        secret.secret().as_bytes(),
                        &secret_aad(ctx.tenant()),
                    )
                    .await
                    .map_err(StoreError::from)?,
            ),
            None => None,
        };
        let event = NewEvent::from_payload(ev::TENANT_SSO_CONFIGURED, 1, &payload)?;
        ctx.append(
            &tenant_stream(ctx.tenant()),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .map_err(ServiceError::from)?;
        let json = serde_json::to_string(&payload)
            .map_err(|e| StoreError::Serialization(e.to_string()))?;
        let (key, secret) = match sealed {
            Some((k, s)) => (Some(k), Some(s)),
            None => (None, None),
        };
        let mut tx = global_tx(dir.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO sso_settings (tenant_id, issuer, client_id, client_secret, client_secret_key, settings, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id, \
             client_secret = excluded.client_secret, client_secret_key = excluded.client_secret_key, \
             settings = excluded.settings, updated_at = excluded.updated_at"
        )
        .bind(ctx.tenant().0)
        .bind(&settings.issuer)
        .bind(&settings.client_id)
        .bind(secret)
        .bind(key)
        .bind(&json)
        .bind(settings.updated_at)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        if let Some(old) = existing.filter(|e| e.issuer != settings.issuer) {
            self.evict(&old.issuer);
        }
        Ok(settings.view(self.callback_url(None).ok()))
    }

    /// The tenant's settings (never the secret).
    pub async fn settings_view(
        &self,
        dir: &Directory,
        ctx: &TenantContext,
        request_base: Option<&str>,
    ) -> Result<SsoSettingsView, SsoError> {
        let settings = load_settings(dir, ctx.tenant())
            .await?
            .ok_or(SsoError::NotConfigured)?;
        Ok(settings.view(self.callback_url(request_base).ok()))
    }

    /// Starts a login: stores the pending login and answers the provider URL to send the
    /// browser to, and the state to bind to the browser.
    #[tracing::instrument(skip(self, dir, redirect_uri, request_base), fields(tenant_id = %tenant.0))]
    pub async fn start(
        &self,
        dir: &Directory,
        tenant: TenantId,
        kind: SessionKind,
        redirect_uri: &str,
        request_base: Option<&str>,
    ) -> Result<(String, String), SsoError> {
        let settings = load_settings(dir, tenant)
            .await?
            .ok_or(SsoError::NotConfigured)?;
        // Absolute redirects only to the configured origin: a request's Host is not trusted.
        let redirect_uri = validate_redirect(redirect_uri, self.inner.public_url.as_deref())?;
        let callback = self.callback_url(request_base)?;
        let metadata = self.discover(&settings.issuer).await?;
        let client = CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(settings.client_id.clone()),
            None,
        )
        .set_redirect_uri(
            RedirectUrl::new(callback.clone())
                .map_err(|e| SsoError::InvalidRequest(format!("callback URL: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let nonce = random_token();
        let (state_fn, nonce_fn) = (state.clone(), nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_fn),
                move || Nonce::new(nonce_fn),
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge);
        // Ask for what the policy will demand, so the provider can step up.
        for acr in &settings.required_acr {
            request = request.add_auth_context_value(AuthenticationContextClass::new(acr.clone()));
        }
        let (url, _, _) = request.url();
        let target = PendingTarget {
            session: kind.as_str().to_owned(),
            redirect_uri,
            callback,
        };
        let target =
            serde_json::to_string(&target).map_err(|e| StoreError::Serialization(e.to_string()))?;
        let created = now();
        let mut tx = global_tx(dir.cells().directory(), true).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM sso_logins WHERE created_at < $1"
        )
        .bind(created - LOGIN_TTL_SECS)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO sso_logins (state, tenant_id, nonce, pkce_verifier, redirect_uri, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(&state)
        .bind(tenant.0)
        .bind(&nonce)
        .bind(verifier.secret())
        .bind(&target)
        .bind(created)
        .execute(c)
        .await
        .map(|_| ()))
        .map_err(db_error)?;
        tx.commit().await?;
        Ok((url.to_string(), state))
    }

    /// Finishes a login at the callback: the state (bound to this browser by `browser_state`)
    /// finds the pending login, the code is exchanged with its PKCE verifier, the ID token is
    /// validated against the tenant's issuer, and the user found, or created just in time.
    #[tracing::instrument(skip_all)]
    pub async fn callback(
        &self,
        dir: &Directory,
        params: &CallbackParams,
        browser_state: Option<&str>,
    ) -> Result<SsoLogin, SsoError> {
        let state = params
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SsoError::InvalidState("the callback carries no state".into()))?;
        if !browser_state.is_some_and(|b| constant_time_str_eq(b, state)) {
            return Err(SsoError::InvalidState(
                "this login was not started in this browser (state cookie missing or different)"
                    .into(),
            ));
        }
        let pending = take_pending(dir, state).await?.ok_or_else(|| {
            SsoError::InvalidState("unknown or already used state: start the login again".into())
        })?;
        if now() - pending.created_at > LOGIN_TTL_SECS {
            return Err(SsoError::InvalidState(
                "the login took too long: start it again".into(),
            ));
        }
        tracing::Span::current().record("tenant_id", tracing::field::display(pending.tenant.0));
        if let Some(error) = &params.error {
            return Err(SsoError::IdpError(format!(
                "{}{}",
                sanitize(error, 64),
                params
                    .error_description
                    .as_deref()
                    .map(|d| format!(" ({})", sanitize(d, 200)))
                    .unwrap_or_default()
            )));
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SsoError::InvalidRequest("the callback carries no code".into()))?;
        let settings = load_settings(dir, pending.tenant)
            .await?
            .ok_or(SsoError::NotConfigured)?;
        let metadata = self.discover(&settings.issuer).await?;
        // RFC 9207: the response names its issuer; it must be this tenant's. A provider that
        // announces the parameter must send it.
        match params.iss.as_deref() {
            Some(iss) if iss != settings.issuer => {
                return Err(SsoError::IssuerMismatch(format!(
                    "the authorization response comes from {:?}, but this login was started with {:?}",
                    sanitize(iss, 200),
                    settings.issuer
                )));
            }
            None if metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported
                == Some(true) =>
            {
                return Err(SsoError::IssuerMismatch(
                    "the provider announces RFC 9207 but the response carries no iss".into(),
                ));
            }
            _ => {}
        }
        let raw = self.exchange(&settings, &metadata, code, &pending).await?;
        let kind = if pending.target.session == "bearer" {
            SessionKind::Bearer
        } else {
            SessionKind::Cookie
        };
        let session = self
            .login_with_id_token(dir, pending.tenant, &raw, &pending.nonce, kind)
            .await?;
        Ok(SsoLogin {
            session,
            kind,
            tenant: pending.tenant,
            redirect_uri: pending.target.redirect_uri,
        })
    }

    async fn exchange(
        &self,
        settings: &SsoSettings,
        metadata: &Metadata,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<String, SsoError> {
        let auth_type = match metadata.token_endpoint_auth_methods_supported() {
            Some(methods)
                if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
            {
                AuthType::RequestBody
            }
            _ => AuthType::BasicAuth,
        };
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(settings.client_id.clone()),
            settings.client_secret.clone(),
        )
        .set_auth_type(auth_type)
        .set_redirect_uri(
            RedirectUrl::new(pending.target.callback.clone())
                .map_err(|e| SsoError::InvalidRequest(format!("callback URL: {e}")))?,
        );
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| {
                SsoError::IdpUnavailable(format!("the provider has no token endpoint: {e}"))
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.inner.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => SsoError::CodeExchange(format!(
                    "{}{}",
                    r.error().as_ref(),
                    r.error_description()
                        .map(|d| format!(" ({})", sanitize(d, 200)))
                        .unwrap_or_default()
                )),
                RequestTokenError::Parse(e, _) => {
                    SsoError::InvalidIdToken(format!("the token response could not be read: {e}"))
                }
                other => SsoError::IdpUnavailable(error_chain(&other)),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| SsoError::InvalidIdToken("the token response has no id_token".into()))?;
        // The compact serialization, exactly as received (signing input + signature).
        match serde_json::to_value(id_token) {
            Ok(serde_json::Value::String(s)) => Ok(s),
            _ => Err(SsoError::InvalidIdToken(
                "the id_token could not be read".into(),
            )),
        }
    }

    /// Validates an ID token for a login of `tenant` that was started with `nonce`: signature
    /// by a key of the tenant's issuer (asymmetric algorithms only; an unknown `kid` refetches
    /// the JWKS once), `iss` equal to the tenant's issuer, `aud` containing its client id,
    /// `exp`, `iat`, `nonce`.
    pub async fn verify_id_token(
        &self,
        dir: &Directory,
        tenant: TenantId,
        raw: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, SsoError> {
        let settings = load_settings(dir, tenant)
            .await?
            .ok_or(SsoError::NotConfigured)?;
        self.verify_for(&settings, raw, nonce).await
    }

    async fn verify_for(
        &self,
        settings: &SsoSettings,
        raw: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, SsoError> {
        let alg = header_alg(raw)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(SsoError::InvalidIdToken(
                "unsigned ID tokens (alg none) are refused".into(),
            ));
        }
        let token: SsoIdToken = raw
            .parse()
            .map_err(|e| SsoError::InvalidIdToken(format!("not a valid ID token: {e}")))?;
        let metadata = self.discover(&settings.issuer).await?;
        let unknown_key = || {
            SsoError::InvalidIdToken(
                "no key of the issuer's JWKS matches the token's kid and alg".into(),
            )
        };
        match verify_with(settings, &metadata, &token, nonce) {
            Ok(id) => Ok(id),
            Err(VerifyFailure::Refused(e)) => Err(e),
            Err(VerifyFailure::UnknownKey) => match self.refresh_jwks(&settings.issuer).await? {
                Some(fresh) => match verify_with(settings, &fresh, &token, nonce) {
                    Ok(id) => Ok(id),
                    Err(VerifyFailure::Refused(e)) => Err(e),
                    Err(VerifyFailure::UnknownKey) => Err(unknown_key()),
                },
                None => Err(unknown_key()),
            },
        }
    }

    /// Everything after the code exchange: validate the ID token, apply the MFA policy, find
    /// the user by `(iss, sub)` or create them just in time, and issue a session. The callback
    /// runs exactly this.
    pub async fn login_with_id_token(
        &self,
        dir: &Directory,
        tenant: TenantId,
        raw: &str,
        nonce: &str,
        kind: SessionKind,
    ) -> Result<IssuedSession, SsoError> {
        let settings = load_settings(dir, tenant)
            .await?
            .ok_or(SsoError::NotConfigured)?;
        let id = self.verify_for(&settings, raw, nonce).await?;
        check_mfa(&settings, &id)?;
        let user_id = resolve_user(dir, &settings, &id).await?;
        let mut amr = id.amr.clone();
        if amr.is_empty() {
            amr.push("ext".to_owned());
        }
        let session = dir.create_session(tenant, user_id, kind, &amr).await?;
        tracing::info!(tenant_id = %tenant.0, user_id = %user_id, "SSO login");
        Ok(session)
    }
}

/// The user of `(iss, sub)` in the settings' tenant; created (and linked) on first login when
/// the email's domain is allowed.
async fn resolve_user(
    dir: &Directory,
    settings: &SsoSettings,
    id: &VerifiedIdentity,
) -> Result<Uuid, SsoError> {
    let ctx = dir
        .cells()
        .context(settings.tenant, Principal::Service { name: "sso" })
        .await
        .map_err(ServiceError::from)?;
    if let Some(user) = linked_user(dir, &ctx, id).await? {
        sync_role(dir, &ctx, settings, id, user).await?;
        return Ok(user);
    }
    let email = id.email.as_deref().ok_or(SsoError::EmailMissing)?;
    if id.email_verified == Some(false) {
        return Err(SsoError::EmailNotVerified);
    }
    if !email_domain_allowed(settings, email) {
        return Err(SsoError::DomainNotAllowed(format!(
            "users of {:?} are not created by single sign-on in this tenant (allowed: {:?})",
            email.rsplit_once('@').map_or(email, |(_, d)| d),
            settings.allowed_domains
        )));
    }
    let role = mapped_role(settings, id);
    let display_name = id
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map_or_else(
            || email.split('@').next().unwrap_or(email).to_owned(),
            str::to_owned,
        );
    let user = match dir.create_user(&ctx, email, &display_name, role).await {
        Ok(u) => u,
        Err(ServiceError::Exists(_)) => {
            // A concurrent first login of the same identity may have won the race.
            return match linked_user(dir, &ctx, id).await? {
                Some(u) => Ok(u),
                None => Err(SsoError::AccountExists),
            };
        }
        Err(ServiceError::Domain(e)) => {
            return Err(SsoError::InvalidIdToken(format!("the email claim: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    match dir
        .link_identity(&ctx, user.id, &id.issuer, &id.subject)
        .await
    {
        Ok(()) => Ok(user.id),
        Err(ServiceError::Exists(_)) => Err(SsoError::IdentityConflict),
        Err(e) => Err(e.into()),
    }
}

/// With a role claim configured, the provider decides the role at every login, not only at
/// the first: a user moved to another group at the provider gets the mapped role (or the
/// default one) when they next log in. An owner is never changed this way (no mapping can
/// name the owner role); without a role claim, roles are managed in Postvak only.
async fn sync_role(
    dir: &Directory,
    ctx: &TenantContext,
    settings: &SsoSettings,
    id: &VerifiedIdentity,
    user_id: Uuid,
) -> Result<(), SsoError> {
    if settings.role_claim.is_none() {
        return Ok(());
    }
    let want = mapped_role(settings, id);
    let user = dir.get_user(ctx, user_id).await?;
    if user.role == TenantRole::Owner || user.role == want {
        return Ok(());
    }
    dir.update_user(ctx, user_id, Some(want), None).await?;
    tracing::info!(
        tenant_id = %settings.tenant.0,
        user_id = %user_id,
        from = user.role.as_str(),
        to = want.as_str(),
        "role changed by the identity provider's role claim"
    );
    Ok(())
}

async fn linked_user(
    dir: &Directory,
    ctx: &TenantContext,
    id: &VerifiedIdentity,
) -> Result<Option<Uuid>, SsoError> {
    match dir.find_user_by_identity(&id.issuer, &id.subject).await? {
        None => Ok(None),
        Some((t, _)) if t != ctx.tenant() => Err(SsoError::IdentityConflict),
        Some((_, user_id)) => {
            let user = dir.get_user(ctx, user_id).await?;
            if user.disabled {
                Err(SsoError::UserDisabled)
            } else {
                Ok(Some(user_id))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Registers the SSO routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/sso", web::get().to(get_sso_settings))
        .route("/v1/sso", web::put().to(put_sso_settings))
        .route("/v1/auth/sso/{tenant_id}/start", web::get().to(sso_start))
        .route("/v1/auth/sso/callback", web::get().to(sso_callback));
}

/// The registered runtime, or the process-wide one.
fn runtime(req: &HttpRequest) -> Result<Sso, ApiError> {
    match req.app_data::<web::Data<Sso>>() {
        Some(s) => Ok(s.get_ref().clone()),
        None => Sso::shared().map_err(ApiError::from),
    }
}

fn request_base(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// The tenant's single sign-on settings (tenant admin; never the client secret).
#[utoipa::path(get, path = "/v1/sso", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = SsoSettingsView),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json",
               description = "`sso_not_configured`")))]
pub async fn get_sso_settings(
    dir: web::Data<Directory>,
    auth: postvak_platform::auth::Authenticated,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    dir.access(&auth.0).await?.require_tenant_admin()?;
    let sso = runtime(&req)?;
    let view = sso
        .settings_view(&dir, &auth.0, Some(&request_base(&req)))
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Configures single sign-on for the tenant (tenant admin). The issuer must answer OpenID
/// discovery; the client secret is stored sealed and never shown again.
#[utoipa::path(put, path = "/v1/sso", tag = "directory", request_body = SsoSettingsInput,
    security(("bearer" = [])),
    responses((status = 200, body = SsoSettingsView),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "`issuer_taken`"),
              (status = 422, body = Problem, content_type = "application/problem+json",
               description = "`invalid_sso_settings`, `invalid_role`")))]
pub async fn put_sso_settings(
    dir: web::Data<Directory>,
    auth: postvak_platform::auth::Authenticated,
    req: HttpRequest,
    body: web::Json<SsoSettingsInput>,
) -> Result<HttpResponse, ApiError> {
    dir.access(&auth.0).await?.require_tenant_admin()?;
    let sso = runtime(&req)?;
    let mut view = sso.configure(&dir, &auth.0, &body).await?;
    if view.redirect_uri.is_none() {
        view.redirect_uri = sso.callback_url(Some(&request_base(&req))).ok();
    }
    Ok(HttpResponse::Ok().json(view))
}

/// Query of the login start.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartParams {
    /// Where the browser goes after a cookie login: a path of this site (default `/`) or a URL
    /// of its origin.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// `cookie` (default: a browser session) or `bearer` (the callback answers a token).
    #[serde(default)]
    pub session: Option<String>,
}

/// Starts a single sign-on login for a tenant: redirects to its identity provider
/// (authorization code with PKCE S256, `state` and `nonce`).
#[utoipa::path(get, path = "/v1/auth/sso/{tenant_id}/start", tag = "auth",
    params(("tenant_id" = Uuid, Path), StartParams),
    responses((status = 302, description = "To the identity provider"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json",
               description = "`sso_not_configured`"),
              (status = 502, body = Problem, content_type = "application/problem+json",
               description = "`idp_unavailable`")))]
pub async fn sso_start(
    dir: web::Data<Directory>,
    req: HttpRequest,
    path: web::Path<Uuid>,
    query: web::Query<StartParams>,
) -> Result<HttpResponse, ApiError> {
    let kind = match query.session.as_deref() {
        None | Some("cookie") => SessionKind::Cookie,
        Some("bearer") => SessionKind::Bearer,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_session_kind",
                format!(
                    "session must be \"cookie\" or \"bearer\", not {:?}",
                    sanitize(other, 40)
                ),
            ));
        }
    };
    let sso = runtime(&req)?;
    let (url, state) = sso
        .start(
            &dir,
            TenantId(path.into_inner()),
            kind,
            query.redirect_uri.as_deref().unwrap_or("/"),
            Some(&request_base(&req)),
        )
        .await?;
    Ok(HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, url))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .cookie(
            Cookie::build(STATE_COOKIE, state)
                .path("/v1/auth/sso")
                .http_only(true)
                .secure(true)
                .same_site(SameSite::Lax)
                .max_age(actix_web::cookie::time::Duration::seconds(LOGIN_TTL_SECS))
                .finish(),
        )
        .finish())
}

/// Where the identity provider sends the browser back. Cookie logins set the session cookie
/// and redirect (303) to the `redirect_uri` the login started with; bearer logins answer the
/// session token.
#[utoipa::path(get, path = "/v1/auth/sso/callback", tag = "auth", params(CallbackParams),
    responses((status = 200, body = rest::Session, description = "Bearer login"),
              (status = 303, description = "Cookie login: the session cookie is set"),
              (status = 400, body = Problem, content_type = "application/problem+json",
               description = "`invalid_state`, `idp_error`, `code_exchange_failed`"),
              (status = 401, body = Problem, content_type = "application/problem+json",
               description = "`issuer_mismatch`, `audience_mismatch`, `id_token_expired`, `nonce_mismatch`, `invalid_id_token`"),
              (status = 403, body = Problem, content_type = "application/problem+json",
               description = "`mfa_required`, `domain_not_allowed`, `email_not_verified`, `user_disabled`"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "`account_exists`"),
              (status = 502, body = Problem, content_type = "application/problem+json",
               description = "`idp_unavailable`")))]
pub async fn sso_callback(
    dir: web::Data<Directory>,
    req: HttpRequest,
    query: web::Query<CallbackParams>,
) -> Result<HttpResponse, ApiError> {
    let sso = runtime(&req)?;
    let browser_state = req.cookie(STATE_COOKIE).map(|c| c.value().to_owned());
    let login = sso.callback(&dir, &query, browser_state.as_deref()).await?;
    let mut spent = Cookie::build(STATE_COOKIE, "")
        .path("/v1/auth/sso")
        .finish();
    spent.make_removal();
    match login.kind {
        SessionKind::Cookie => Ok(HttpResponse::SeeOther()
            .insert_header((actix_web::http::header::LOCATION, login.redirect_uri))
            .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
            .cookie(spent)
            .cookie(
                Cookie::build(SESSION_COOKIE, login.session.token)
                    .path("/")
                    .http_only(true)
                    .secure(true)
                    .same_site(SameSite::Lax)
                    .max_age(actix_web::cookie::time::Duration::seconds(
                        SESSION_TTL.whole_seconds(),
                    ))
                    .finish(),
            )
            .finish()),
        SessionKind::Bearer => Ok(HttpResponse::Ok()
            .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
            .cookie(spent)
            .json(rest::Session {
                token: Some(login.session.token),
                user_id: login.session.user_id,
                expires_at: login.session.expires_at,
            })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> SsoSettingsInput {
        serde_json::from_value(v).unwrap()
    }

    fn settings(v: serde_json::Value) -> SsoSettings {
        validate_settings(TenantId(Uuid::nil()), &input(v)).unwrap()
    }

    fn identity(acr: Option<&str>, amr: &[&str], roles: &[&str]) -> VerifiedIdentity {
        VerifiedIdentity {
            issuer: "https://idp.example".into(),
            subject: "s".into(),
            email: Some("a@a.example".into()),
            email_verified: Some(true),
            name: None,
            acr: acr.map(str::to_owned),
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            role_values: roles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn issuers_are_https_or_loopback_http() {
        for ok in [
            "https://idp.example",
            "https://idp.example/realms/x",
            "http://127.0.0.1:8080",
            "http://localhost:3000/",
            "http://[::1]:9000",
        ] {
            assert!(validate_issuer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example",
            "ftp://idp.example",
            "https://idp.example/?a=1",
            "https://idp.example/#x",
            "https://u:p@idp.example",
            "idp.example",
            "",
        ] {
            assert!(
                matches!(validate_issuer(bad), Err(SsoError::InvalidSettings(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn redirects_stay_on_site() {
        assert_eq!(validate_redirect("/inbox?x=1", None).unwrap(), "/inbox?x=1");
        let base = Some("https://api.example");
        assert!(validate_redirect("https://api.example/app", base).is_ok());
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "https://api.example.evil.example/",
            "javascript:alert(1)",
            "/a b",
        ] {
            assert!(validate_redirect(bad, base).is_err(), "{bad}");
        }
        assert!(
            validate_redirect("https://api.example/app", None).is_err(),
            "no trusted origin"
        );
    }

    #[test]
    fn settings_are_normalised_and_owners_are_never_assigned() {
        let s = settings(serde_json::json!({
            "issuer": "https://idp.example", "client_id": " c ", "allowed_domains": ["@A.Example", "a.example"],
            "role_claim": "groups", "role_mapping": {"leads": "admin", "staff": "agent"},
            "required_amr": ["otp", "otp"],
        }));
        assert_eq!(s.client_id, "c");
        assert_eq!(s.allowed_domains, ["a.example"]);
        assert_eq!(s.default_role, TenantRole::Viewer);
        assert_eq!(s.required_amr, ["otp"]);
        for bad in [
            serde_json::json!({"issuer": "https://i.example", "client_id": "c", "default_role": "owner"}),
            serde_json::json!({"issuer": "https://i.example", "client_id": "c", "role_claim": "g", "role_mapping": {"x": "owner"}}),
        ] {
            assert!(matches!(
                validate_settings(TenantId(Uuid::nil()), &input(bad)),
                Err(SsoError::InvalidRole(_))
            ));
        }
    }

    #[test]
    fn the_highest_mapped_role_wins_else_the_default() {
        let s = settings(serde_json::json!({
            "issuer": "https://idp.example", "client_id": "c", "default_role": "agent",
            "role_claim": "groups", "role_mapping": {"leads": "admin", "staff": "viewer"},
        }));
        assert_eq!(
            mapped_role(&s, &identity(None, &[], &["staff", "leads"])),
            TenantRole::Admin
        );
        assert_eq!(
            mapped_role(&s, &identity(None, &[], &["staff"])),
            TenantRole::Viewer
        );
        assert_eq!(
            mapped_role(&s, &identity(None, &[], &["other"])),
            TenantRole::Agent
        );
    }

    #[test]
    fn mfa_policy_needs_the_acr_and_every_amr() {
        let s = settings(serde_json::json!({
            "issuer": "https://idp.example", "client_id": "c",
            "required_acr": ["gold", "platinum"], "required_amr": ["pwd", "otp"],
        }));
        assert!(check_mfa(&s, &identity(Some("gold"), &["pwd", "otp", "x"], &[])).is_ok());
        for (acr, amr) in [
            (Some("silver"), vec!["pwd", "otp"]),
            (None, vec!["pwd", "otp"]),
            (Some("gold"), vec!["pwd"]),
            (Some("gold"), vec![]),
        ] {
            assert!(
                matches!(
                    check_mfa(&s, &identity(acr, &amr, &[])),
                    Err(SsoError::MfaRequired(_))
                ),
                "{acr:?} {amr:?}"
            );
        }
        let open = settings(serde_json::json!({"issuer": "https://idp.example", "client_id": "c"}));
        assert!(check_mfa(&open, &identity(None, &[], &[])).is_ok());
    }

    #[test]
    fn unsigned_tokens_are_recognised_from_the_header() {
        assert_eq!(header_alg("eyJhbGciOiJub25lIn0.e30.").unwrap(), "none");
        assert!(header_alg("").is_err());
        assert!(header_alg("!!!.e30.").is_err());
    }

    #[test]
    fn only_the_client_secret_is_redacted_from_debug() {
        let i = input(
            serde_json::json!({"issuer": "https://i.example", "client_id": "c", "client_secret": "hunter2"}),
        );
        assert!(!format!("{i:?}").contains("hunter2"));
        let s = validate_settings(TenantId(Uuid::nil()), &i).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
