//! `postvak bench api`: the agent API under a real HTTP load tool (`wrk`) against a tenant with
//! many conversations — list (first page, filtered), get one conversation, reply — beside the
//! same server's `/healthz` (no database, no auth) as the HTTP-stack baseline of the same run.
//!
//! Seeding writes each conversation through the aggregate (`postvak_conversation::seed`), so the
//! log and read models are what the service writes. `--keep FILE` leaves the database and
//! records how to reach it; `--reuse FILE` measures it again without seeding.

use crate::bench::Scratch;
use crate::startup::{self, Application, Role};
use anyhow::Context;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_directory::Directory;
use postvak_platform::cell::Principal;
use postvak_platform::config::Config;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ApiBenchOptions {
    /// A PostgreSQL server URL (a scratch database is created) or `sqlite`.
    pub target: String,
    pub conversations: u64,
    /// Seconds per measured scenario.
    pub seconds: u64,
    /// Open connections of the read scenarios.
    pub connections: u32,
    /// Open connections of the reply scenario.
    pub reply_connections: u32,
    /// Conversations written at once while seeding.
    pub seed_concurrency: usize,
    pub keep: Option<PathBuf>,
    pub reuse: Option<PathBuf>,
    /// The scenarios to run (all of them by default).
    pub only: Vec<Scenario>,
    /// `[search_index] merge_every_ms` of the measured server.
    pub search_merge_every_ms: u64,
}

/// A measured scenario of the API bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `GET /healthz`: no database, no authentication.
    Baseline,
    /// The first page of a list, filtered (inbox + open) and unfiltered.
    List,
    /// One conversation with its messages and notes.
    Get,
    /// A reply to an open conversation.
    Reply,
}

/// How to reach a seeded database again (`--keep` / `--reuse`). Holds a scratch master key and
/// an API key: written with mode 0600.
#[derive(Debug, Serialize, Deserialize)]
struct Seeded {
    database_url: String,
    master_key: String,
    tenant_id: Uuid,
    inbox_id: Uuid,
    api_key: String,
    conversations: u64,
    events: u64,
    /// Conversations the get scenario picks from (spread over the whole seed).
    sample: Vec<Uuid>,
    /// Open conversations the reply scenario answers.
    open_sample: Vec<Uuid>,
}

/// One wrk run.
#[derive(Debug, Clone)]
struct WrkResult {
    name: String,
    connections: u32,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: u64,
}

pub async fn run(opts: ApiBenchOptions) -> anyhow::Result<String> {
    which_wrk()?;
    let mut scratch = None;
    let (seeded, seed_line) = match &opts.reuse {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let seeded: Seeded = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bench api state file", path.display()))?;
            (seeded, "reused, not seeded in this run".to_owned())
        }
        None => {
            let s = Scratch::create(&opts.target).await?;
            let url = s.url.clone();
            let started = Instant::now();
            let seeded = match postvak_platform::bench::interruptible(seed(&url, &opts)).await {
                Ok(seeded) => seeded,
                Err(e) => {
                    // Half a seed is of no use to `--reuse`: the database goes.
                    s.drop_database().await;
                    return Err(e.context("seeding (the scratch database was dropped)"));
                }
            };
            scratch = Some(s);
            let secs = started.elapsed().as_secs_f64();
            let line = format!(
                "seeded in {secs:.0} s ({:.0} conversations/s, {:.0} events/s)",
                seeded.conversations as f64 / secs,
                seeded.events as f64 / secs
            );
            (seeded, line)
        }
    };
    let result = postvak_platform::bench::interruptible(measure(&seeded, &opts)).await;
    match (&opts.keep, scratch) {
        (Some(path), Some(s)) => {
            write_private(path, &serde_json::to_string_pretty(&seeded)?)?;
            // The database stays: the state file names it.
            std::mem::forget(s);
        }
        (_, Some(s)) => s.drop_database().await,
        (_, None) => {}
    }
    let rows = result?;
    let backend = if seeded.database_url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let mut out = String::new();
    writeln!(
        out,
        "{backend}: {} conversations, {} events; {seed_line}",
        seeded.conversations, seeded.events
    )?;
    if backend == "PostgreSQL" {
        match opts.search_merge_every_ms {
            0 => writeln!(out, "search index pending list: merged by the writes")?,
            ms => writeln!(out, "search index pending list: merged every {ms} ms")?,
        }
    }
    writeln!(
        out,
        "{:<44} {:>5} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "scenario (wrk, 2 threads)", "conns", "requests", "req/s", "p50", "p99", "errors"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<44} {:>5} {:>9} {:>10.0} {:>7.2}ms {:>7.2}ms {:>8}",
            r.name,
            r.connections,
            r.requests,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx + r.errors
        )?;
    }
    if let Some(bad) = rows.iter().find(|r| r.non_2xx + r.errors > 0) {
        anyhow::bail!(
            "{out}\n{}: {} responses were not 2xx and {} requests failed",
            bad.name,
            bad.non_2xx,
            bad.errors
        );
    }
    Ok(out)
}

fn which_wrk() -> anyhow::Result<()> {
    match std::process::Command::new("wrk").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => anyhow::bail!(
            "`wrk` (the HTTP load tool) is not on PATH: install it (Debian: apt-get install wrk)"
        ),
    }
}

fn config(url: &str, master_key: &str, search_merge_every_ms: u64) -> anyhow::Result<Config> {
    let env = vec![
        (
            "POSTVAK_SEARCH_INDEX__MERGE_EVERY_MS".to_owned(),
            search_merge_every_ms.to_string(),
        ),
        (
            "POSTVAK_CELLS__BENCH__DATABASE_URL".to_owned(),
            url.to_owned(),
        ),
        (
            "POSTVAK_CELLS__BENCH__MAX_CONNECTIONS".to_owned(),
            "16".to_owned(),
        ),
        (
            "POSTVAK_SECURITY__MASTER_KEY".to_owned(),
            master_key.to_owned(),
        ),
        ("POSTVAK_HTTP__ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("POSTVAK_DEMO".to_owned(), "false".to_owned()),
    ];
    Ok(Config::load_with_env(None, env)?)
}

/// Conversations written per transaction while seeding.
const BATCH: u64 = 50;

async fn seed(url: &str, opts: &ApiBenchOptions) -> anyhow::Result<Seeded> {
    let master_key = postvak_platform::crypto::MasterKey::generate_base64();
    let cfg = config(url, &master_key, opts.search_merge_every_ms)?;
    let cells = startup::open_cells(&cfg, true).await?;
    let dir = Directory::new(cells.clone());
    let tenant = dir.create_tenant("Bench", None).await?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await?;
    let address = "support@bench.example".to_owned();
    let inbox = dir
        .create_inbox(&ctx, "Support", std::slice::from_ref(&address))
        .await?;
    let mut members = Vec::new();
    for i in 0..8 {
        let user = dir
            .create_user(
                &ctx,
                &format!("agent{i}@bench.example"),
                &format!("Agent {i}"),
                TenantRole::Agent,
            )
            .await?;
        dir.grant_inbox(
            &ctx,
            inbox.id,
            Grantee::User(user.id),
            InboxRole::Reply,
            None,
            None,
        )
        .await?;
        members.push(user.id);
    }
    let key = dir
        .issue_api_key(
            &ctx,
            "bench",
            &["read".to_owned(), "write".to_owned()],
            None,
            None,
        )
        .await?;
    let spec = Arc::new(postvak_conversation::seed::SeedInbox {
        inbox_id: inbox.id,
        address,
        members,
    });
    let now_us = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
    let total = opts.conversations;
    let next = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    // Every `stride`-th conversation is kept for the get and reply scenarios.
    let stride = (total / 20_000).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.seed_concurrency.max(1) {
        let (ctx, spec, next, events) = (ctx.clone(), spec.clone(), next.clone(), events.clone());
        tasks.spawn(async move {
            let mut sample = Vec::new();
            let mut open = Vec::new();
            loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok((sample, open));
                }
                let last = (first + BATCH).min(total);
                let written =
                    postvak_conversation::seed::seed_batch(&ctx, &spec, first..last, now_us)
                        .await
                        .with_context(|| format!("seeding conversations {first}..{last}"))?;
                for (n, (id, count)) in (first..last).zip(written) {
                    events.fetch_add(count as u64, Ordering::Relaxed);
                    if n.is_multiple_of(stride) {
                        sample.push(id);
                        if n.is_multiple_of(4) {
                            open.push(id);
                        }
                    }
                }
                let tenth = (total / 10).max(1);
                if first / tenth != last / tenth {
                    eprintln!("seeded {last} of {total} conversations");
                }
            }
        });
    }
    let mut sample = Vec::new();
    let mut open_sample = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (s, o) = done??;
        sample.extend(s);
        open_sample.extend(o);
    }
    drop(cells);
    analyze(url).await?;
    Ok(Seeded {
        database_url: url.to_owned(),
        master_key,
        tenant_id: tenant.0,
        inbox_id: inbox.id,
        api_key: key.token,
        conversations: total,
        events: events.load(Ordering::Relaxed),
        sample,
        open_sample,
    })
}

/// Leaves the database as autovacuum keeps a running one: statistics for the planner (right
/// after a bulk load PostgreSQL would plan from the empty tables' estimates), and on
/// PostgreSQL also vacuumed, so the visibility map is set and hint bits are written (a
/// never-vacuumed table makes every read set them, and index-only scans visit the heap). As
/// the login user, who owns the tables.
async fn analyze(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    match postvak_platform::db::kind_of(url)? {
        postvak_platform::db::DbKind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query("VACUUM (ANALYZE)").execute(&mut c).await?;
            c.close().await?;
        }
        postvak_platform::db::DbKind::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            sqlx::query("ANALYZE").execute(&mut c).await?;
            c.close().await?;
        }
    }
    Ok(())
}

async fn measure(seeded: &Seeded, opts: &ApiBenchOptions) -> anyhow::Result<Vec<WrkResult>> {
    let cfg = config(
        &seeded.database_url,
        &seeded.master_key,
        opts.search_merge_every_ms,
    )?;
    let cells = startup::open_cells(&cfg, false).await?;
    let app = Application::build(&cfg, cells, Role::Api).await?;
    let port = app.port();
    let stop = tokio::spawn(app.run_until_stopped());
    let base = format!("http://127.0.0.1:{port}");
    let scripts = postvak_platform::testkit::TempDir::new();
    let auth = format!("Authorization: Bearer {}", seeded.api_key);
    let secs = opts.seconds.max(1);
    let c = opts.connections.max(2);

    let get_lua = scripts.path().join("get.lua");
    std::fs::write(&get_lua, get_script(&seeded.sample))?;
    let reply_lua = scripts.path().join("reply.lua");
    std::fs::write(&reply_lua, reply_script(&seeded.open_sample))?;

    let list_url = format!(
        "{base}/v1/conversations?inbox_id={}&status=open&limit=25",
        seeded.inbox_id
    );
    let runs = |s: Scenario| opts.only.contains(&s);
    // Warm caches (auth, pools) before anything is measured.
    // (Its figures don't count: a cold cache may answer nothing within a short run.)
    let _ = wrk("warm-up", &list_url, &auth, None, c, 3).await;
    if runs(Scenario::Get) {
        let _ = wrk("warm-up", &base, &auth, Some(&get_lua), c, 3).await;
    }
    // The measured scenarios, in the report's order: (scenario, row name, URL, wrk script,
    // connections).
    let plan: [(Scenario, &str, String, Option<&Path>, u32); 5] = [
        (
            Scenario::Baseline,
            "baseline: GET /healthz (no db, no auth)",
            format!("{base}/healthz"),
            None,
            c,
        ),
        (
            Scenario::List,
            "list: inbox + status=open, first page of 25",
            list_url.clone(),
            None,
            c,
        ),
        (
            Scenario::List,
            "list: unfiltered, first page of 25",
            format!("{base}/v1/conversations?limit=25"),
            None,
            c,
        ),
        (
            Scenario::Get,
            "get: one conversation (random of the seed)",
            base.clone(),
            Some(&get_lua),
            c,
        ),
        (
            Scenario::Reply,
            "reply: POST …/replies (random open one)",
            base.clone(),
            Some(&reply_lua),
            opts.reply_connections.max(1),
        ),
    ];
    let mut rows = Vec::new();
    for (scenario, name, url, script, conns) in plan {
        if runs(scenario) {
            rows.push(wrk(name, &url, &auth, script, conns, secs).await?);
        }
    }
    stop.abort();
    Ok(rows)
}

fn lua_ids(ids: &[Uuid]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!("local ids = {{{}}}\n", list.join(","))
}

fn get_script(ids: &[Uuid]) -> String {
    lua_ids(ids)
        + "request = function()\n  return wrk.format(\"GET\", \"/v1/conversations/\" .. ids[math.random(#ids)])\nend\n"
}

fn reply_script(ids: &[Uuid]) -> String {
    lua_ids(ids)
        + "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
           wrk.body = '{\"body\":\"Thank you, we will get back to you today.\"}'\n\
           request = function()\n  return wrk.format(nil, \"/v1/conversations/\" .. ids[math.random(#ids)] .. \"/replies\")\nend\n"
}

async fn wrk(
    name: &str,
    url: &str,
    header: &str,
    script: Option<&Path>,
    connections: u32,
    seconds: u64,
) -> anyhow::Result<WrkResult> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("--timeout")
        .arg("5s")
        .arg("-H")
        .arg(header);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let out = cmd.output().await.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!(
            "wrk failed for {name}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(name, connections, &text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Reads wrk's `--latency` report.
fn parse_wrk(name: &str, connections: u32, text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult {
        name: name.to_owned(),
        connections,
        requests: 0,
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("50%") => r.p50_ms = duration_ms(parts.next().unwrap_or(""))?,
            Some("99%") => r.p99_ms = duration_ms(parts.next().unwrap_or(""))?,
            Some("Requests/sec:") => r.rps = parts.next().unwrap_or("0").parse()?,
            Some("Non-2xx") => {
                r.non_2xx = line.rsplit(' ').next().unwrap_or("0").parse()?;
            }
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                r.errors = line
                    .split(',')
                    .filter_map(|p| p.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum();
            }
            _ => {
                if let Some((n, _)) = line.split_once(" requests in ") {
                    r.requests = n.trim().parse()?;
                }
            }
        }
    }
    anyhow::ensure!(
        r.rps > 0.0 && r.p99_ms.is_finite(),
        "no figures in wrk's report"
    );
    Ok(r)
}

fn duration_ms(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| anyhow::anyhow!("not a duration: {s:?}"))?;
    let v: f64 = num.parse()?;
    Ok(match unit {
        "us" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        "m" => v * 60e3,
        _ => anyhow::bail!("unknown unit in {s:?}"),
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_latency_report() {
        let text = "Running 2s test @ http://127.0.0.1:1/healthz\n  2 threads and 8 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   410.11us  1.2ms  20.00ms   95.00%\n  \
            Latency Distribution\n     50%  250.00us\n     75%  400.00us\n     90%  700.00us\n     99%    2.50ms\n  \
            40000 requests in 2.00s, 5.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  \
            Non-2xx or 3xx responses: 7\nRequests/sec:  20000.50\nTransfer/sec:      2.50MB\n";
        let r = parse_wrk("x", 8, text).unwrap();
        assert_eq!(r.requests, 40000);
        assert!((r.p50_ms - 0.25).abs() < 1e-9);
        assert!((r.p99_ms - 2.5).abs() < 1e-9);
        assert!((r.rps - 20000.5).abs() < 1e-9);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.errors, 3);
    }

    #[test]
    fn a_report_without_figures_is_an_error() {
        assert!(parse_wrk("x", 1, "unable to connect to 127.0.0.1:1").is_err());
    }
}
