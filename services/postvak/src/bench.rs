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
        writeln!(f, "auth overhead per request ({}), target p99 < 1 ms", self.backend)?;
        writeln!(f, "{:<34} {:>7} {:>10} {:>10} {:>10}", "operation", "calls", "p50", "p99", "max")?;
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

/// Runs against a scratch database on the PostgreSQL server at `target` (created and dropped),
/// or a scratch SQLite file when `target` is `sqlite`.
pub async fn auth(target: &str, calls: usize) -> anyhow::Result<AuthReport> {
    let dir = postvak_platform::testkit::TempDir::new();
    let (url, scratch) = if target == "sqlite" {
        (format!("sqlite://{}/bench.db", dir.path().display()), None)
    } else {
        let name = format!("postvak_bench_auth_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut c = sqlx::PgConnection::connect(target)
            .await
            .with_context(|| format!("connecting to {}", postvak_platform::db::redact_url(target)))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await?;
        let _ = c.close().await;
        let base = target.rsplit_once('/').map_or(target, |(b, _)| b);
        (format!("{base}/{name}"), Some(name))
    };
    let result = run(&url, calls).await;
    if let Some(name) = scratch
        && let Ok(mut c) = sqlx::PgConnection::connect(target).await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut c)
            .await;
    }
    result.map(|rows| AuthReport {
        backend: if target == "sqlite" { "SQLite".into() } else { "PostgreSQL".into() },
        rows,
    })
}

async fn run(url: &str, calls: usize) -> anyhow::Result<Vec<Latency>> {
    let env = vec![
        ("POSTVAK_CELLS__BENCH__DATABASE_URL".to_owned(), url.to_owned()),
        (
            "POSTVAK_SECURITY__MASTER_KEY".to_owned(),
            postvak_platform::crypto::MasterKey::generate_base64(),
        ),
    ];
    let cfg = Config::load_with_env(None, env)?;
    let cells = startup::open_cells(&cfg, true).await?;
    let dir = Directory::new(cells.clone());
    let tenant = dir.create_tenant("Bench", None).await?;
    let ctx = cells.context(tenant, Principal::Service { name: "bench" }).await?;
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
        dir.authenticate_bearer(&key.token).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= warm {
            measure_key.push(t.elapsed());
        }
    }
    rows.push(Latency::of("API key → tenant context", measure_key));
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
    rows.push(Latency::of("session token → tenant context", measure_session));
    let user_ctx = user_ctx.context("no session context")?;
    let mut measure_access = Vec::with_capacity(calls);
    for i in 0..calls + warm {
        let t = Instant::now();
        let a = dir.access(&user_ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        a.require_inbox(inbox.id, postvak_core::access::InboxRole::Reply)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= warm {
            measure_access.push(t.elapsed());
        }
    }
    rows.push(Latency::of("user permission on an inbox", measure_access));
    for cell in cells.all() {
        cell.store.db().close().await;
    }
    Ok(rows)
}
