//! HTTP plumbing shared by every service: the API error type (problem+json with stable codes),
//! and the operational endpoints `/healthz`, `/readyz` and `/metrics`.

use crate::bus::BusError;
use crate::cell::Cells;
use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, ResponseError, web};
use postvak_proto::Problem;
use postvak_proto::rest::{Health, HealthCheck};
use std::fmt;

/// The one error type of every handler. Maps domain and adapter errors to a status, a stable
/// code and an RFC 9457 body; 5xx bodies never carry internals (they are logged instead).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
        )
    }

    pub fn forbidden(code: &'static str, title: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, title)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").with_detail(detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, "Unprocessable").with_detail(detail)
    }

    pub fn internal(err: &dyn fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
        )
    }

    pub fn problem(&self) -> Problem {
        Problem::new(
            self.status.as_u16(),
            self.code,
            self.title,
            self.detail.clone(),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type("application/problem+json")
            .json(self.problem())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "stream_conflict",
                "Changed by someone else",
            )
            .with_detail(e.to_string()),
            StoreError::StreamTypeMismatch { .. }
            | StoreError::VersionOverflow { .. }
            | StoreError::EmptyAppend
            | StoreError::DuplicateEvent { .. } => {
                Self::new(StatusCode::CONFLICT, e.code(), "Cannot append")
                    .with_detail(e.to_string())
            }
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "Temporarily unavailable",
                )
            }
            _ => Self::internal(&e),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        tracing::error!(error = %e, "bus error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            "Temporarily unavailable",
        )
    }
}

/// JSON body errors as problem+json (actix's default is plain text).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|err, _req| ApiError::bad_request("invalid_json", err.to_string()).into())
}

/// Query string errors as problem+json.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::bad_request("invalid_query", err.to_string()).into())
}

/// Path errors (a malformed id) answer 404 like a missing object, so ids can't be probed.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err, _req| ApiError::not_found().into())
}

/// `/healthz`: the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// `/readyz`: every cell's database and bus answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "A dependency is down", body = Health)))]
pub async fn readyz(cells: web::Data<Cells>) -> HttpResponse {
    let mut checks = Vec::new();
    for cell in cells.all() {
        let db = tokio::time::timeout(std::time::Duration::from_secs(2), cell.store.ping()).await;
        checks.push(HealthCheck {
            name: format!("cell:{}:database", cell.name),
            ok: matches!(db, Ok(Ok(()))),
            error: match db {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.code().to_owned()),
                Err(_) => Some("timeout".into()),
            },
        });
        let bus = tokio::time::timeout(std::time::Duration::from_secs(2), cell.bus.ping()).await;
        checks.push(HealthCheck {
            name: format!("cell:{}:bus", cell.name),
            ok: matches!(bus, Ok(Ok(()))),
            error: match bus {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.code().to_owned()),
                Err(_) => Some("timeout".into()),
            },
        });
    }
    let ok = checks.iter().all(|c| c.ok);
    let body = Health {
        status: if ok { "ok" } else { "unavailable" }.into(),
        checks,
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `/metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics() -> HttpResponse {
    match crate::telemetry::prometheus() {
        Some(h) => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body(h.render()),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "Metrics recorder not installed",
        )
        .error_response(),
    }
}

/// Registers the operational routes.
pub fn operational_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}
