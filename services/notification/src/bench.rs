//! `bench::run`: outbound mails/s through the pooled relay connection to a local SMTP sink, and
//! webhook deliveries/s to a local receiver, each with p50/p99 queue-to-sent latency (from the
//! append of the event to the commit of `sent`/`delivered`).
//!
//! It creates a tenant of its own in the given cells, appends `reply.queued` (then
//! `conversation.note_added`) events straight to conversation streams — the stored shapes the
//! service consumes — and runs the real consumers, outbox, sender and deliverer against a
//! built-in SMTP sink (plain SMTP, accepts everything) and an HTTP receiver (answers 204), both
//! on 127.0.0.1. Targets from the issue: ≥ 500 mails/s and ≥ 2,000 deliveries/s on 2 cores.

use crate::settings::{NotificationSettings, OutboundSmtpSettings, SmtpSecurity, WebhookSettings};
use postvak_directory::Directory;
use postvak_platform::cell::{Cells, Principal, TenantContext};
use postvak_platform::on_tx;
use postvak_platform::store::{ExpectedVersion, NewEvent, StreamRef};
use postvak_proto::events::conversation::{self as cev, MailboxV1, MessageV1, NoteAddedV1};
use postvak_proto::rest::notification::CreateWebhook;
use sqlx::Row;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TARGET_MAILS_PER_SEC: f64 = 500.0;
pub const TARGET_DELIVERIES_PER_SEC: f64 = 2_000.0;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub mails: usize,
    pub webhooks: usize,
    /// Connections to the sink (pool size and sends in flight). lettre does not set
    /// TCP_NODELAY, so one connection carries only ~20–25 mails/s even to a local sink (Nagle
    /// against delayed ACKs at the end of DATA): throughput scales with connections.
    pub smtp_connections: u32,
    /// Requests in flight to the one receiver.
    pub webhook_concurrency: usize,
    /// Give up waiting after this long per phase.
    pub deadline: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            mails: 2_000,
            webhooks: 5_000,
            smtp_connections: 32,
            webhook_concurrency: 32,
            deadline: Duration::from_secs(300),
        }
    }
}

/// One phase's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub count: usize,
    pub done: usize,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// p99 from the append to the consumer's record of it (the rest is the worker's).
    pub recorded_p99_ms: f64,
    /// Cost per finished item, counted over the phase (see [`Cost`]).
    pub cost: Cost,
}

/// What a phase cost per finished item: CPU of this process, and on PostgreSQL the
/// transactions of the bench's database (`pg_stat_database`) and the CPU of its backends
/// (`/proc/<pid>/stat` of the server processes serving it; needs the server on this host).
/// CPU, not wall time, is the guide on a shared machine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    pub process_cpu_ms: f64,
    pub db_transactions: Option<f64>,
    pub db_cpu_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub backend: &'static str,
    pub mail: Phase,
    pub webhooks: Phase,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "notification bench ({})", self.backend)?;
        writeln!(
            f,
            "{:<22} {:>10} {:>8} {:>10} {:>10} {:>10} {:>14} {:>8}",
            "measurement", "done", "secs", "per sec", "p50 ms", "p99 ms", "p99 recorded", "target"
        )?;
        for (name, p, target) in [
            ("outbound mail", &self.mail, TARGET_MAILS_PER_SEC),
            (
                "webhook deliveries",
                &self.webhooks,
                TARGET_DELIVERIES_PER_SEC,
            ),
        ] {
            writeln!(
                f,
                "{:<22} {:>10} {:>8.2} {:>10.0} {:>10.1} {:>10.1} {:>14.1} {:>8}",
                name,
                format!("{}/{}", p.done, p.count),
                p.seconds,
                p.per_sec,
                p.p50_ms,
                p.p99_ms,
                p.recorded_p99_ms,
                if p.per_sec >= target { "met" } else { "missed" }
            )?;
        }
        writeln!(
            f,
            "{:<22} {:>16} {:>18} {:>16}",
            "cost per item", "process CPU ms", "db transactions", "db CPU ms"
        )?;
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        for (name, p) in [
            ("outbound mail", &self.mail),
            ("webhook deliveries", &self.webhooks),
        ] {
            writeln!(
                f,
                "{:<22} {:>16.3} {:>18} {:>16}",
                name,
                p.cost.process_cpu_ms,
                opt(p.cost.db_transactions),
                opt(p.cost.db_cpu_ms)
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] postvak_platform::store::StoreError),
}

fn setup(e: impl fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Runs both phases in the default cell of `cells` (migrated).
pub async fn run(cells: &Cells, options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let directory = Directory::new(cells.clone());
    let tenant = directory
        .create_tenant(&format!("bench-{}", Uuid::new_v4().simple()), None)
        .await
        .map_err(setup)?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await
        .map_err(setup)?;
    let smtp_port = smtp_sink(cancel.clone()).await.map_err(setup)?;
    let hook_url = receiver(cancel.clone()).map_err(setup)?;
    let settings = NotificationSettings {
        outbound_smtp: OutboundSmtpSettings {
            host: "127.0.0.1".into(),
            port: smtp_port,
            security: SmtpSecurity::None,
            pool_size: options.smtp_connections,
            concurrency: usize::try_from(options.smtp_connections).unwrap_or(8),
            ..OutboundSmtpSettings::default()
        },
        webhooks: WebhookSettings {
            per_endpoint_concurrency: options.webhook_concurrency,
            per_tenant_concurrency: options.webhook_concurrency,
            total_concurrency: options.webhook_concurrency,
            // The receiver listens on this host.
            allow_private: vec!["127.0.0.1/32".into()],
            ..WebhookSettings::default()
        },
    };
    crate::start(cells, ctx.cell().clone(), settings, cancel.clone());

    let inbox = Uuid::now_v7();
    let mail = phase(&ctx, options.mails, options.deadline, Kind::Mail, inbox).await?;
    crate::webhooks::create(
        &ctx,
        &CreateWebhook {
            url: hook_url,
            events: vec!["convo.note.created".into()],
            inbox_id: None,
        },
        &crate::ssrf::DestinationPolicy::new(&["127.0.0.1/32".into()]).map_err(setup)?,
    )
    .await
    .map_err(setup)?;
    let webhooks = phase(
        &ctx,
        options.webhooks,
        options.deadline,
        Kind::Webhook,
        inbox,
    )
    .await?;
    Ok(BenchReport {
        backend: match ctx.cell().db() {
            postvak_platform::db::Db::Postgres(_) => "postgres",
            postvak_platform::db::Db::Sqlite(_) => "sqlite",
        },
        mail,
        webhooks,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mail,
    Webhook,
}

async fn phase(
    ctx: &TenantContext,
    count: usize,
    deadline: Duration,
    kind: Kind,
    inbox: Uuid,
) -> Result<Phase, BenchError> {
    let before = Counters::read(ctx).await;
    let started = Instant::now();
    let mut queued_at = std::collections::HashMap::with_capacity(count);
    // 50 events per conversation stream, appended in batches.
    let per_stream = 50;
    let mut left = count;
    while left > 0 {
        let n = left.min(per_stream);
        left -= n;
        let conversation = Uuid::now_v7();
        let stream = StreamRef::new(cev::STREAM_CONVERSATION, format!("conv-{conversation}"));
        let at_us = crate::now_us();
        let events = (0..n)
            .map(|i| match kind {
                Kind::Mail => {
                    let id = Uuid::now_v7();
                    NewEvent::from_payload(
                        cev::REPLY_QUEUED,
                        1,
                        &MessageV1 {
                            message_id: id,
                            conversation_id: conversation,
                            inbox_id: inbox,
                            message_id_header: Some(format!("{id}@bench.test")),
                            in_reply_to: vec!["first@example.org".into()],
                            references: vec!["first@example.org".into()],
                            subject: Some("Re: bench".into()),
                            from: vec![MailboxV1 {
                                name: Some("Bench".into()),
                                address: "support@bench.test".into(),
                            }],
                            to: vec![MailboxV1 {
                                name: None,
                                address: "customer@example.org".into(),
                            }],
                            snippet: "Reply".into(),
                            body_text: Some(format!("Reply {i}.\n")),
                            at_us,
                            ..MessageV1::default()
                        },
                    )
                }
                Kind::Webhook => NewEvent::from_payload(
                    cev::NOTE_ADDED,
                    1,
                    &NoteAddedV1 {
                        note_id: Uuid::now_v7(),
                        author: None,
                        body: format!("Note {i}"),
                        mentions: vec![],
                        at_us,
                    },
                ),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let appended = ctx
            .append(&stream, ExpectedVersion::NoStream, events)
            .await?;
        let now = crate::now_us();
        queued_at.extend(appended.event_ids.into_iter().map(|e| (e, now)));
    }
    let until = started + deadline;
    // Polls a count (reading every finished row each time made the bench's own query a
    // large share of the server's work); the rows once at the end.
    loop {
        if finished_count(ctx, kind).await? >= count || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (done, mut latencies, mut recorded) = finished(ctx, kind, &queued_at).await?;
    let cost = Counters::read(ctx).await.cost_since(&before, done);
    latencies.sort_unstable();
    recorded.sort_unstable();
    let pct = |v: &[i64], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[idx.min(v.len() - 1)] as f64 / 1000.0
    };
    Ok(Phase {
        count,
        done,
        seconds,
        per_sec: done as f64 / seconds.max(1e-9),
        p50_ms: pct(&latencies, 0.50),
        p99_ms: pct(&latencies, 0.99),
        recorded_p99_ms: pct(&recorded, 0.99),
        cost,
    })
}

/// CPU and database counters at one instant.
struct Counters {
    /// This process's CPU, clock ticks.
    process_ticks: Option<u64>,
    /// `xact_commit + xact_rollback` of the database (PostgreSQL).
    transactions: Option<i64>,
    /// CPU ticks of each server process connected to the database (PostgreSQL).
    backends: HashMap<i32, u64>,
}

/// utime + stime of a process, in clock ticks (Linux).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Linux reports CPU in ticks of 1/100 s (`USER_HZ`) on every architecture it runs on here.
const TICK_MS: f64 = 10.0;

impl Counters {
    async fn read(ctx: &TenantContext) -> Self {
        let process_ticks = cpu_ticks("self");
        let (transactions, backends) = match ctx.cell().db() {
            postvak_platform::db::Db::Postgres(p) => {
                // The statistics of other backends reach the view when they flush them.
                let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
                    .execute(p)
                    .await;
                let tx: Option<i64> = sqlx::query(
                    "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database \
                     WHERE datname = current_database()",
                )
                .fetch_optional(p)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get(0).ok());
                let pids: Vec<i32> = sqlx::query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
                )
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
                .unwrap_or_default();
                let backends = pids
                    .into_iter()
                    .filter_map(|pid| Some((pid, cpu_ticks(&pid.to_string())?)))
                    .collect();
                (tx, backends)
            }
            postvak_platform::db::Db::Sqlite(_) => (None, HashMap::new()),
        };
        Self {
            process_ticks,
            transactions,
            backends,
        }
    }

    /// Per item since `before`. A backend that started meanwhile counts from zero.
    fn cost_since(&self, before: &Self, items: usize) -> Cost {
        let n = items.max(1) as f64;
        let process_cpu_ms = match (self.process_ticks, before.process_ticks) {
            (Some(a), Some(b)) => a.saturating_sub(b) as f64 * TICK_MS / n,
            _ => 0.0,
        };
        let db_transactions = self
            .transactions
            .zip(before.transactions)
            .map(|(a, b)| (a - b) as f64 / n);
        let db_cpu_ms = self.transactions.map(|_| {
            let ticks: u64 = self
                .backends
                .iter()
                .map(|(pid, t)| t.saturating_sub(before.backends.get(pid).copied().unwrap_or(0)))
                .sum();
            ticks as f64 * TICK_MS / n
        });
        Cost {
            process_cpu_ms,
            db_transactions,
            db_cpu_ms,
        }
    }
}

/// How many items are finished.
async fn finished_count(ctx: &TenantContext, kind: Kind) -> Result<usize, BenchError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let sql: &'static str = match kind {
        Kind::Mail => "SELECT COUNT(*) FROM outbound_mail WHERE tenant_id = $1 AND state = 'sent'",
        Kind::Webhook => {
            "SELECT COUNT(*) FROM webhook_deliveries WHERE tenant_id = $1 AND state = 'delivered'"
        }
    };
    let n: i64 = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(t.0)
        .fetch_one(c)
        .await
        .and_then(|r| r.try_get(0)))
    .map_err(postvak_platform::db::db_error)?;
    tx.commit().await?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Finished items and their queue-to-done latencies in microseconds: from the commit of the
/// append (the reply is queued) to the commit of `sent`/`delivered`.
async fn finished(
    ctx: &TenantContext,
    kind: Kind,
    queued_at: &std::collections::HashMap<Uuid, i64>,
) -> Result<(usize, Vec<i64>, Vec<i64>), BenchError> {
    let t = ctx.tenant();
    let mut tx = ctx.cell().db().tenant_tx(t, false).await?;
    let sql: &'static str = match kind {
        Kind::Mail => {
            "SELECT event_id, sent_us, created_us FROM outbound_mail \
             WHERE tenant_id = $1 AND state = 'sent'"
        }
        Kind::Webhook => {
            "SELECT event_id, delivered_us, created_us FROM webhook_deliveries \
             WHERE tenant_id = $1 AND state = 'delivered'"
        }
    };
    let rows: Vec<(Uuid, Option<i64>, i64)> = on_tx!(&mut tx, |c| sqlx::query(sql)
        .bind(t.0)
        .fetch_all(c)
        .await
        .and_then(|rows| rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()))
    .map_err(postvak_platform::db::db_error)?;
    tx.commit().await?;
    let lat = rows
        .iter()
        .filter_map(|(e, d, _)| Some(d.as_ref()?.saturating_sub(*queued_at.get(e)?)))
        .collect();
    let recorded = rows
        .iter()
        .filter_map(|(e, _, c)| Some(c.saturating_sub(*queued_at.get(e)?)))
        .collect();
    Ok((rows.len(), lat, recorded))
}

/// A plain SMTP sink on 127.0.0.1 that accepts every message (and discards it).
async fn smtp_sink(cancel: CancellationToken) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                () = cancel.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            tokio::spawn(async move {
                let _ = smtp_session(stream).await;
            });
        }
    });
    Ok(port)
}

async fn smtp_session(stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 bench ESMTP\r\n").await?;
    let mut line = String::new();
    let mut in_data = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" {
                in_data = false;
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 OK\r\n",
        };
        w.write_all(answer).await?;
    }
}

/// An HTTP receiver on 127.0.0.1 reading every POST and answering 204.
fn receiver(cancel: CancellationToken) -> std::io::Result<String> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(|| {
        // Reads the body, as a receiver that checks the signature must (left unread, actix
        // closes the connection after answering, and every delivery paid a new one).
        App::new().default_service(web::to(|body: web::Bytes| async move {
            drop(body);
            HttpResponse::NoContent().finish()
        }))
    })
    .workers(2)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(false).await;
    });
    Ok(format!("http://127.0.0.1:{port}/hook"))
}
