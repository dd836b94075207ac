//! `postvak bench auth`: what authentication adds to a request — an API key, a bearer session,
//! and the per-request permission lookup — measured in-process against a real database, as
//! latency percentiles over many calls.

use crate::startup;
use anyhow::Context;
use postvak_core::access::TenantRole;
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_platform::auth::Authenticator;
use postvak_platform::cell::Principal;
use postvak_platform::config::Config;
use sqlx::Connection;
use std::fmt;
use std::time::{Duration, Instant};

/// Latency percentiles of one operation.
#[derive(Debug, Clone)]
pub struct Latency {
    pub name: &'static str,
    pub calls: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    fn of(name: &'static str, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).copied().unwrap_or_default()
        };
        Self {
            name,
            calls: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthReport {
    pub backend: String,
    pub rows: Vec<Latency>,
}

impl fmt::Display for AuthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "auth overhead per request ({}), target p99 < 1 ms",
            self.backend
        )?;
        writeln!(
            f,
            "{:<34} {:>7} {:>10} {:>10} {:>10}",
            "operation", "calls", "p50", "p99", "max"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<34} {:>7} {:>8.3}ms {:>8.3}ms {:>8.3}ms",
                r.name,
                r.calls,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3
            )?;
        }
        Ok(())
    }
}

/// A scratch database for one benchmark: a fresh database on the PostgreSQL server at
/// `target` (dropped afterwards), or a fresh SQLite file when `target` is `sqlite`.
pub(crate) struct Scratch {
    pub(crate) url: String,
    admin: Option<(String, String)>,
    _dir: postvak_platform::testkit::TempDir,
}

impl Scratch {
    pub(crate) async fn create(target: &str) -> anyhow::Result<Self> {
        let dir = postvak_platform::testkit::TempDir::new();
        if target == "sqlite" {
            return Ok(Self {
                url: format!("sqlite://{}/bench.db", dir.path().display()),
                admin: None,
                _dir: dir,
            });
        }
        let name = format!(
            "postvak_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut c = sqlx::PgConnection::connect(target).await.with_context(|| {
            format!("connecting to {}", postvak_platform::db::redact_url(target))
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await?;
        let _ = c.close().await;
        let base = target.rsplit_once('/').map_or(target, |(b, _)| b);
        Ok(Self {
            url: format!("{base}/{name}"),
            admin: Some((target.to_owned(), name)),
            _dir: dir,
        })
    }

    fn backend(&self) -> String {
        if self.admin.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
        .to_owned()
    }

    pub(crate) async fn drop_database(self) {
        if let Some((admin, name)) = self.admin
            && let Ok(mut c) = sqlx::PgConnection::connect(&admin).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut c)
            .await;
        }
    }
}

/// `postvak bench auth`.
pub async fn auth(target: &str, calls: usize) -> anyhow::Result<AuthReport> {
    let scratch = Scratch::create(target).await?;
    let result = postvak_platform::bench::interruptible(run(&scratch.url, calls)).await;
    let backend = scratch.backend();
    scratch.drop_database().await;
    result.map(|rows| AuthReport { backend, rows })
}

/// `postvak bench notification`: replies out to a local SMTP sink through the pool, and
/// webhook deliveries to a local receiver.
pub async fn notification(target: &str, mails: usize, webhooks: usize) -> anyhow::Result<String> {
    let scratch = Scratch::create(target).await?;
    let result = postvak_platform::bench::interruptible(async {
        let cells = postvak_ingest::standalone::open_cells(
            &scratch.url,
            postvak_platform::crypto::MasterKey::from_base64(
                &postvak_platform::crypto::MasterKey::generate_base64(),
            )?,
            true,
        )
        .await?;
        let report = postvak_notification::bench::run(
            &cells,
            &postvak_notification::bench::BenchOptions {
                mails,
                webhooks,
                ..postvak_notification::bench::BenchOptions::default()
            },
        )
        .await?;
        anyhow::Ok(format!("{} backend\n{report}", scratch.backend()))
    })
    .await;
    scratch.drop_database().await;
    result
}

async fn run(url: &str, calls: usize) -> anyhow::Result<Vec<Latency>> {
    let env = vec![
        (
            "POSTVAK_CELLS__BENCH__DATABASE_URL".to_owned(),
            url.to_owned(),
        ),
        (
            "POSTVAK_SECURITY__MASTER_KEY".to_owned(),
            postvak_platform::crypto::MasterKey::generate_base64(),
        ),
    ];
    let cfg = Config::load_with_env(None, env)?;
    let cells = startup::open_cells(&cfg, true).await?;
    let dir = Directory::new(cells.clone());
    let tenant = dir.create_tenant("Bench", None).await?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await?;
    let user = dir
        .create_user(&ctx, "agent@bench.example", "Agent", TenantRole::Agent)
        .await?;
    let inbox = dir
        .create_inbox(&ctx, "Support", &["support@bench.example".to_owned()])
        .await?;
    dir.grant_inbox(
        &ctx,
        inbox.id,
        postvak_core::access::Grantee::User(user.id),
        postvak_core::access::InboxRole::Reply,
        None,
        None,
    )
    .await?;
    let key = dir
        .issue_api_key(&ctx, "bench", &["read".to_owned()], None, None)
        .await?;
    let session = dir
        .create_session(tenant, user.id, SessionKind::Bearer, &["pwd".to_owned()])
        .await?;

    let mut rows = Vec::new();
    let warm = calls / 10 + 1;
    let mut measure_key = Vec::with_capacity(calls);
    for i in 0..calls + warm {
        let t = Instant::now();
        dir.authenticate_bearer(&key.token)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= warm {
            measure_key.push(t.elapsed());
        }
    }
    rows.push(Latency::of("API key → tenant context", measure_key));
    let mut cold = Vec::with_capacity(calls);
    for _ in 0..calls {
        dir.forget_cached_credentials();
        let t = Instant::now();
        dir.authenticate_bearer(&key.token)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(t.elapsed());
    }
    rows.push(Latency::of("API key, cache miss (database)", cold));
    let mut measure_session = Vec::with_capacity(calls);
    let mut user_ctx = None;
    for i in 0..calls + warm {
        let t = Instant::now();
        let c = dir
            .authenticate_bearer(&session.token)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= warm {
            measure_session.push(t.elapsed());
        }
        user_ctx = Some(c);
    }
    rows.push(Latency::of(
        "session token → tenant context",
        measure_session,
    ));
    let mut cold = Vec::with_capacity(calls);
    for _ in 0..calls {
        dir.forget_cached_credentials();
        let t = Instant::now();
        dir.authenticate_bearer(&session.token)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(t.elapsed());
    }
    rows.push(Latency::of("session, cache miss (database)", cold));
    let user_ctx = user_ctx.context("no session context")?;
    let mut measure_access = Vec::with_capacity(calls);
    for i in 0..calls + warm {
        let t = Instant::now();
        let a = dir
            .access(&user_ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        a.require_inbox(inbox.id, postvak_core::access::InboxRole::Reply)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= warm {
            measure_access.push(t.elapsed());
        }
    }
    rows.push(Latency::of("user permission on an inbox", measure_access));
    let mut cold = Vec::with_capacity(calls);
    for _ in 0..calls {
        dir.forget_cached_credentials();
        let t = Instant::now();
        dir.access(&user_ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(t.elapsed());
    }
    rows.push(Latency::of("permission, cache miss (database)", cold));
    rows.push(id_token_validation(&dir, &cells, tenant, calls).await?);
    for cell in cells.all() {
        cell.store.db().close().await;
    }
    Ok(rows)
}

/// ID-token validation with the provider's JWKS cached: a loopback OpenID provider (discovery
/// document and JWKS served here, RS256 key made by `openssl genrsa`) and tokens signed with it.
async fn id_token_validation(
    dir: &Directory,
    cells: &postvak_platform::cell::Cells,
    tenant: postvak_platform::store::TenantId,
    calls: usize,
) -> anyhow::Result<Latency> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let pem = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .context("the ID-token measurement needs the openssl command to make a key")?;
    anyhow::ensure!(pem.status.success(), "openssl genrsa failed");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem.stdout)?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)?;
    jwk.common.key_id = Some("bench".into());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let discovery = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let jwks = serde_json::json!({ "keys": [jwk] });
    let server = HttpServer::new(move || {
        let (d, k) = (discovery.clone(), jwks.clone());
        App::new()
            .route(
                "/.well-known/openid-configuration",
                web::get().to(move || {
                    let d = d.clone();
                    async move { HttpResponse::Ok().json(d) }
                }),
            )
            .route(
                "/jwks",
                web::get().to(move || {
                    let k = k.clone();
                    async move { HttpResponse::Ok().json(k) }
                }),
            )
    })
    .workers(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let sso = postvak_directory::sso::Sso::new(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await?;
    let input: postvak_directory::sso::SsoSettingsInput =
        serde_json::from_value(serde_json::json!({
            "issuer": issuer, "client_id": "postvak-bench", "client_secret": "bench-secret",
            "allowed_domains": ["bench.example"], "default_role": "agent",
        }))?;
    sso.configure(dir, &ctx, &input)
        .await
        .map_err(|e| anyhow::anyhow!("configuring SSO: {e}"))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("bench".into());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut samples = Vec::with_capacity(calls);
    let warm = calls / 10 + 1;
    for i in 0..calls + warm {
        let nonce = format!("nonce-{i}");
        let claims = serde_json::json!({
            "iss": issuer, "aud": "postvak-bench", "sub": format!("user-{i}"),
            "iat": now, "exp": now + 300, "nonce": nonce, "email": "agent@bench.example",
        });
        let token = jsonwebtoken::encode(&header, &claims, &key)?;
        let t = Instant::now();
        sso.verify_id_token(dir, tenant, &token, &nonce)
            .await
            .map_err(|e| anyhow::anyhow!("ID token refused: {e}"))?;
        if i >= warm {
            samples.push(t.elapsed());
        }
    }
    handle.stop(false).await;
    Ok(Latency::of("ID token (cached JWKS) validation", samples))
}
