//! `postvak bench routing`: from a mail accepted over SMTP (its 250) to the conversation
//! assigned by a round-robin rule and visible as assigned through the agent API — in
//! distributed mode: separate `postvak run relay|ingest|conversation|routing` processes on a
//! scratch PostgreSQL database and a unique NATS JetStream prefix (both removed afterwards).
//!
//! What is measured is what an agent's client sees: it holds `GET /v1/stream` (SSE) open on the
//! conversation process; on each `conversation.assigned` change it fetches
//! `GET /v1/conversations/{id}`, and the mail counts as visible when that answer names an
//! assignee. Latency = that answer's arrival − the 250 of the mail (matched by its subject).
//! The same run's `conversation.opened` (visible, not yet assigned) is the baseline: the part of
//! the latency that is ingest → NATS → conversation, before routing acts.
//!
//! Mails are sent open loop at `rate` per second over a pool of SMTP connections; a slow server
//! shows up as a lower achieved rate and a later 250, never as fewer mails.
//!
//! All mails come from one peer (127.0.0.1), so the ingest process is started with its per-peer
//! limits lifted (`smtp.max_messages_per_minute_per_peer = 0`, enough connections per peer): the
//! default bucket of 1200 mails a minute answers 451 after ~12 s at 100 mails/s, and the bench
//! would measure the limiter instead of routing. Any 4xx/5xx answer to a mail is counted, shown
//! by code in the report, and fails the run.

use crate::bench::Scratch;
use anyhow::Context;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_ingest::bench::{BenchClient, dot_stuff};
use postvak_platform::cell::Principal;
use postvak_platform::config::Config;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const TARGET_P99_MS: f64 = 1_000.0;

#[derive(Debug, Clone)]
pub struct RoutingBenchOptions {
    /// A PostgreSQL server URL: a scratch database is created on it and dropped after.
    pub target: String,
    pub nats: String,
    /// Mails per second.
    pub rate: u32,
    /// Seconds of sending.
    pub seconds: u64,
    /// Agents in the round-robin team.
    pub agents: usize,
    /// SMTP connections the mails are spread over.
    pub connections: usize,
    /// `[search_index] merge_every_ms` of the measured processes.
    pub search_merge_every_ms: u64,
}

const ADDRESS: &str = "support@routing-bench.example";
const SUBJECT: &str = "routing bench #";

pub async fn run(opts: RoutingBenchOptions) -> anyhow::Result<String> {
    anyhow::ensure!(
        opts.target.starts_with("postgres"),
        "bench routing measures distributed mode: --target must be a PostgreSQL URL"
    );
    anyhow::ensure!(
        opts.rate > 0 && opts.seconds > 0,
        "--rate and --seconds must be positive"
    );
    let scratch = Scratch::create(&opts.target).await?;
    let prefix = format!("pvbench{}", &Uuid::new_v4().simple().to_string()[..10]);
    let result =
        postvak_platform::bench::interruptible(measure(&scratch.url, &prefix, &opts)).await;
    // Remove what the run made: the JetStream stream (with its consumers) and the database.
    if let Ok(nats) = async_nats::connect(&opts.nats).await {
        let js = async_nats::jetstream::new(nats);
        let _ = js
            .delete_stream(postvak_proto::subjects::jetstream_name(&prefix, CELL))
            .await;
    }
    scratch.drop_database().await;
    result
}

const CELL: &str = "bench";

fn env_of(
    url: &str,
    nats: &str,
    prefix: &str,
    master: &str,
    connections: usize,
) -> Vec<(String, String)> {
    // Every bench connection comes from 127.0.0.1: one peer to the ingest's limits.
    let per_peer = (connections + 8).to_string();
    [
        ("POSTVAK_CELLS__BENCH__DATABASE_URL", url),
        ("POSTVAK_CELLS__BENCH__NATS_URL", nats),
        ("POSTVAK_BUS__PREFIX", prefix),
        ("POSTVAK_SECURITY__MASTER_KEY", master),
        ("POSTVAK_DEMO", "false"),
        ("POSTVAK_HTTP__ADDR", "127.0.0.1:0"),
        ("POSTVAK_SMTP__ADDR", "127.0.0.1:0"),
        ("POSTVAK_HTTP__SHUTDOWN_GRACE_SECS", "5"),
        ("POSTVAK_TELEMETRY__LOG_LEVEL", "warn"),
        ("POSTVAK_SMTP__MAX_MESSAGES_PER_MINUTE_PER_PEER", "0"),
        ("POSTVAK_SMTP__MAX_CONNECTIONS_PER_PEER", per_peer.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// One `postvak run <service>` child; SIGTERM on drop.
struct Proc {
    name: &'static str,
    child: Child,
    http: u16,
    smtp: Option<u16>,
}

impl Proc {
    fn start(service: &'static str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the postvak binary")?;
        let mut cmd = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("POSTVAK_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["run", service])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting {service}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut http, mut smtp) = (None, None);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let line = line.trim();
                    let port_of = |rest: &str| -> Option<u16> {
                        let addr = rest.split_whitespace().next()?;
                        let addr = addr.trim_end_matches("/v1");
                        addr.rsplit_once(':')?.1.parse().ok()
                    };
                    if let Some(rest) = line.strip_prefix("HTTP API:") {
                        http = port_of(rest);
                    }
                    if let Some(rest) = line.strip_prefix("SMTP:") {
                        smtp = port_of(rest);
                    }
                    if line.contains("Press Ctrl-C") {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        anyhow::bail!("postvak run {service} exited with {status}");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        anyhow::bail!("postvak run {service} did not start within 60 s");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("postvak run {service} closed its output before serving")
                }
            }
        }
        let http = http.with_context(|| format!("{service} printed no HTTP address"))?;
        Ok(Self {
            name: service,
            child,
            http,
            smtp,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(service = self.name, "did not stop within 10 s; killed");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When each thing happened to mail `n`.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    scheduled: Option<Instant>,
    accepted: Option<Instant>,
    opened_visible: Option<Instant>,
    assigned_visible: Option<Instant>,
}

type Timeline = Arc<Mutex<HashMap<u64, Times>>>;

async fn measure(url: &str, prefix: &str, opts: &RoutingBenchOptions) -> anyhow::Result<String> {
    let master = postvak_platform::crypto::MasterKey::generate_base64();
    let mut env = env_of(url, &opts.nats, prefix, &master, opts.connections.max(1));
    env.push((
        "POSTVAK_SEARCH_INDEX__MERGE_EVERY_MS".into(),
        opts.search_merge_every_ms.to_string(),
    ));
    let cfg = Config::load_with_env(None, env.clone())?;
    // Migrate and set the tenant up in this process (the directory's own code), then start the
    // services as separate processes.
    let cells = crate::startup::open_cells(&cfg, true).await?;
    let dir = Directory::new(cells.clone());
    let tenant = dir.create_tenant("Routing bench", None).await?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await?;
    let inbox = dir
        .create_inbox(&ctx, "Support", &[ADDRESS.to_owned()])
        .await?
        .id;
    let admin = dir
        .create_user(
            &ctx,
            "admin@routing-bench.example",
            "Admin",
            TenantRole::Admin,
        )
        .await?;
    let token = dir
        .create_session(tenant, admin.id, SessionKind::Bearer, &[])
        .await?
        .token;
    let team = dir.create_team(&ctx, "Support", &[]).await?.id;
    let mut agents = Vec::new();
    for i in 0..opts.agents.max(1) {
        let u = dir
            .create_user(
                &ctx,
                &format!("agent{i}@routing-bench.example"),
                &format!("Agent {i}"),
                TenantRole::Agent,
            )
            .await?;
        dir.grant_inbox(
            &ctx,
            inbox,
            Grantee::User(u.id),
            InboxRole::Reply,
            None,
            None,
        )
        .await?;
        dir.set_team_member(&ctx, team, u.id, true).await?;
        agents.push(u.id);
    }
    drop(dir);
    drop(ctx);
    drop(cells);

    let mut procs = Vec::new();
    for service in ["relay", "ingest", "conversation", "routing"] {
        procs.push(Proc::start(service, &env)?);
    }
    let (ingest, conversation, routing) = (&procs[1], &procs[2], &procs[3]);
    let smtp = ingest
        .smtp
        .context("the ingest process printed no SMTP port")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    for p in &procs {
        let r = http.get(p.url("/readyz")).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "{} is not ready: {}",
            p.name,
            r.status()
        );
    }
    let r = http
        .post(routing.url(&format!("/v1/inboxes/{inbox}/rules")))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "Round-robin over the support team",
            "actions": [{"type": "assign_team", "team": team, "strategy": "round_robin"}]
        }))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 201,
        "creating the rule: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );

    // The client's live view, held open for the whole run.
    let timeline: Timeline = Arc::default();
    let assignees: Arc<Mutex<BTreeMap<Uuid, u64>>> = Arc::default();
    let sse = http
        .get(conversation.url("/v1/stream?heartbeat_secs=5"))
        .bearer_auth(&token)
        .send()
        .await?;
    anyhow::ensure!(
        sse.status().is_success(),
        "GET /v1/stream: {}",
        sse.status()
    );
    let watcher = tokio::spawn(watch(
        sse,
        http.clone(),
        conversation.url(""),
        token.clone(),
        timeline.clone(),
        assignees.clone(),
    ));

    // Warm-up, not counted: WARM_UP mails all the way (consumers created, caches filled),
    // then the scratch database's statistics taken, as a running database has them.
    let bodies = Arc::new(bodies());
    let warm_ns: Vec<u64> = (0..WARM_UP).map(|i| u64::MAX - i).collect();
    let mut warming = tokio::task::JoinSet::new();
    for lane in warm_ns.chunks(warm_ns.len().div_ceil(WARM_UP_CONNECTIONS)) {
        let (lane, bodies) = (lane.to_vec(), bodies.clone());
        let mut client = BenchClient::connect(smtp).await?;
        warming.spawn(async move {
            for n in lane {
                send(&mut client, &mail(n, &bodies)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = warming.join_next().await {
        done??;
    }
    wait_for(&timeline, &warm_ns, Duration::from_secs(60))
        .await
        .context("the warm-up mails were not assigned within 60 s")?;
    analyze(url).await?;
    timeline
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();
    assignees
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();

    // Open loop: mail n is due at start + n/rate.
    let total = u64::from(opts.rate) * opts.seconds;
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(total as usize + 1);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let refused: Refusals = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..opts.connections.max(1) {
        let (rx, timeline, refused, bodies) = (
            rx.clone(),
            timeline.clone(),
            refused.clone(),
            bodies.clone(),
        );
        let mut client = BenchClient::connect(smtp).await?;
        senders.spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, due)) = next else {
                    return anyhow::Ok(());
                };
                match send(&mut client, &mail(n, &bodies)).await {
                    Ok(()) => {
                        let now = Instant::now();
                        if let Ok(mut t) = timeline.lock() {
                            let e = t.entry(n).or_default();
                            e.scheduled = Some(due);
                            e.accepted = Some(now);
                        }
                    }
                    Err(e) => {
                        // A refusal (or a dropped connection) is a failed mail: counted by its
                        // reply, and the session is replaced (its pipelined replies are out of
                        // step now).
                        let reply = smtp_reply_of(&e);
                        if let Ok(mut r) = refused.lock() {
                            *r.entry(reply).or_default() += 1;
                        }
                        client = BenchClient::connect(smtp)
                            .await
                            .context("reconnecting after a refused mail")?;
                    }
                }
            }
        });
    }
    let start = Instant::now();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / f64::from(opts.rate));
        tokio::time::sleep_until(due.into()).await;
        tx.send((n, due)).await.ok();
    }
    drop(tx);
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let sent_in = start.elapsed();
    // Wait for every accepted mail; a refused one can never arrive.
    let accepted: Vec<u64> = {
        let t = timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (0..total)
            .filter(|n| t.get(n).is_some_and(|e| e.accepted.is_some()))
            .collect()
    };
    let waited = wait_for(&timeline, &accepted, Duration::from_secs(60)).await;
    watcher.abort();
    drop(procs);

    let t = timeline
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut to_250 = Vec::new();
    let mut to_opened = Vec::new();
    let mut to_assigned = Vec::new();
    for n in 0..total {
        let Some(e) = t.get(&n) else { continue };
        if let (Some(s), Some(a)) = (e.scheduled, e.accepted) {
            to_250.push(a - s);
        }
        if let (Some(a), Some(o)) = (e.accepted, e.opened_visible) {
            to_opened.push(o.saturating_duration_since(a));
        }
        if let (Some(a), Some(v)) = (e.accepted, e.assigned_visible) {
            to_assigned.push(v.saturating_duration_since(a));
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "routing, distributed (relay, ingest, conversation, routing as separate processes; \
         PostgreSQL + NATS), {} agents in a round-robin team",
        agents.len()
    )?;
    writeln!(
        out,
        "sent {total} mails at {} /s for {} s over {} SMTP connections: {} accepted in {:.1} s \
         ({:.1} mails/s achieved)",
        opts.rate,
        opts.seconds,
        opts.connections,
        to_250.len(),
        sent_in.as_secs_f64(),
        to_250.len() as f64 / sent_in.as_secs_f64()
    )?;
    writeln!(
        out,
        "visibility: GET /v1/stream (SSE) on the conversation process; on each change a \
         GET /v1/conversations/{{id}}; counted when that answer shows it (assigned: names an assignee)"
    )?;
    writeln!(
        out,
        "{:<52} {:>6} {:>9} {:>9} {:>9}",
        "from", "mails", "p50", "p99", "max"
    )?;
    for (name, v) in [
        ("due → 250 (SMTP accept, queueing included)", &mut to_250),
        (
            "250 → visible opened (baseline: before routing)",
            &mut to_opened,
        ),
        (
            "250 → visible ASSIGNED (the issue's figure)",
            &mut to_assigned,
        ),
    ] {
        let (p50, p99, max) = percentiles(v);
        writeln!(
            out,
            "{name:<52} {:>6} {p50:>7.1}ms {p99:>7.1}ms {max:>7.1}ms",
            v.len()
        )?;
    }
    // Sustained means no backlog builds up: the same figure per window of sending, by when
    // each mail was due. A pipeline that falls behind shows a p50 growing window by window.
    let window = if opts.seconds >= 60 { 30 } else { 10 };
    let mut windows: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for n in 0..total {
        let Some(e) = t.get(&n) else { continue };
        if let (Some(s), Some(a), Some(v)) = (e.scheduled, e.accepted, e.assigned_visible) {
            let at = s.saturating_duration_since(start).as_secs() / window;
            windows
                .entry(at)
                .or_default()
                .push(v.saturating_duration_since(a));
        }
    }
    writeln!(
        out,
        "250 → visible ASSIGNED per {window} s of sending (p50 / p99 ms):"
    )?;
    for (at, v) in &mut windows {
        let (p50, p99, _) = percentiles(v);
        writeln!(
            out,
            "  {:>4}–{:<4} s {:>6} mails {p50:>7.1} / {p99:>7.1}",
            *at * window,
            (*at + 1) * window,
            v.len()
        )?;
    }
    let per_agent: Vec<u64> = assignees
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .values()
        .copied()
        .collect();
    writeln!(
        out,
        "assignments per agent (round-robin): {per_agent:?}; target p99 ≤ {TARGET_P99_MS:.0} ms"
    )?;
    let refused = refused
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let refused_total: u64 = refused.values().sum();
    if refused_total == 0 {
        writeln!(out, "SMTP refusals (4xx/5xx or dropped): none")?;
    } else {
        writeln!(
            out,
            "SMTP refusals (4xx/5xx or dropped): {refused_total} of {total} mails — FAILED"
        )?;
        for (reply, n) in &refused {
            writeln!(out, "  {n:>6} × {reply}")?;
        }
    }
    if let Err(e) = waited {
        anyhow::bail!("{out}\n{e:#}");
    }
    anyhow::ensure!(
        refused_total == 0,
        "{out}\n{refused_total} mails were refused by the ingest process"
    );
    Ok(out)
}

/// Refused mails by the server's reply line (code and enhanced status), or the error.
type Refusals = Arc<Mutex<BTreeMap<String, u64>>>;

/// The SMTP reply that refused a mail, from the bench client's error (`expected 250, got 451
/// 4.7.1 …`): its code and enhanced status code, so refusals of one kind count together; any
/// other failure (a dropped connection) by its message.
fn smtp_reply_of(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match text.split_once("got ") {
        Some((_, reply))
            if reply
                .get(..3)
                .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit())) =>
        {
            reply
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => text,
    }
}

fn percentiles(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (
        at(0.5),
        at(0.99),
        v.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    )
}

/// Mails sent before the measured window, over [`WARM_UP_CONNECTIONS`] connections. Enough
/// that the tables a mail touches span more pages than a primary-key lookup reads: PostgreSQL
/// plans a lookup on a table of two or three pages as a sequential scan, and a connection
/// keeps a prepared statement's generic plan until the table is analysed again (autovacuum:
/// up to a minute later, by when the table holds thousands of rows). With 200 warm-up mails
/// some runs looked `routing_conversations` and `routing_contacts` rows up that way:
/// ~107 buffers per lookup, a fifth of PostgreSQL's time at 100 mails/s (ADR 0042).
const WARM_UP: u64 = 1_000;
const WARM_UP_CONNECTIONS: usize = 8;

/// `ANALYZE` on the scratch database. Its tables start empty and never analysed, and
/// PostgreSQL plans a prepared statement (which sqlx caches per connection) on what it knows
/// then: on an empty `conversations` a lookup by primary key gets a plan through another index
/// with `tenant_id` first, which reads every row of the tenant once the table has grown (seen:
/// ~190 buffers per lookup). Autovacuum's first analyse, which fixes the plans, comes up to a
/// minute later: as long as the run. A database in service has statistics; so does the bench's
/// after its warm-up.
async fn analyze(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to the scratch database")?;
    sqlx::query("ANALYZE")
        .execute(&mut c)
        .await
        .context("ANALYZE on the scratch database")?;
    c.close().await.ok();
    Ok(())
}

/// Waits until every mail in `ns` was seen assigned.
async fn wait_for(timeline: &Timeline, ns: &[u64], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let missing = {
            let t = timeline.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            ns.iter()
                .filter(|n| t.get(n).and_then(|e| e.assigned_visible).is_none())
                .count()
        };
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{missing} of {} mails were not visible as assigned {} s after the last was sent",
                ns.len(),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the SSE stream; each conversation change is checked through the API by its own task.
async fn watch(
    mut sse: reqwest::Response,
    http: reqwest::Client,
    base: String,
    token: String,
    timeline: Timeline,
    assignees: Arc<Mutex<BTreeMap<Uuid, u64>>>,
) -> anyhow::Result<()> {
    let mut buf = String::new();
    while let Some(chunk) = sse.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = "";
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v;
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v;
                }
            }
            if event != "conversation" {
                continue;
            }
            let Ok(change) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let kind = change["change"].as_str().unwrap_or_default();
            let assigned = match kind {
                postvak_proto::events::conversation::OPENED => false,
                postvak_proto::events::conversation::ASSIGNED => true,
                _ => continue,
            };
            let Some(id) = change["conversation_id"].as_str().map(str::to_owned) else {
                continue;
            };
            let (http, base, token, timeline, assignees) = (
                http.clone(),
                base.clone(),
                token.clone(),
                timeline.clone(),
                assignees.clone(),
            );
            tokio::spawn(async move {
                // What the agent's client does on the change: fetch the conversation. The read
                // model may trail the event the stream announced, so it asks again until the
                // answer shows the change (or gives up after 30 s: counted as never visible).
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let got = async {
                        let r = http
                            .get(format!("{base}/v1/conversations/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .ok()?;
                        if !r.status().is_success() {
                            return None;
                        }
                        r.json::<serde_json::Value>().await.ok()
                    }
                    .await;
                    let now = Instant::now();
                    if let Some(body) = got {
                        // The detail is the conversation with its messages and notes.
                        let c = body.get("conversation").unwrap_or(&body);
                        let n = c["subject"]
                            .as_str()
                            .and_then(|s| s.strip_prefix(SUBJECT))
                            .and_then(|n| n.trim().parse::<u64>().ok());
                        let Some(n) = n else { return };
                        let assignee = c["assignee"].as_str().and_then(|a| a.parse::<Uuid>().ok());
                        if !assigned || assignee.is_some() {
                            let Ok(mut t) = timeline.lock() else { return };
                            let e = t.entry(n).or_default();
                            match assignee {
                                Some(a) if assigned && e.assigned_visible.is_none() => {
                                    e.assigned_visible = Some(now);
                                    if let Ok(mut per) = assignees.lock() {
                                        *per.entry(a).or_default() += 1;
                                    }
                                }
                                _ if !assigned && e.opened_visible.is_none() => {
                                    e.opened_visible = Some(now);
                                }
                                _ => {}
                            }
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    }
    Ok(())
}

/// Bench mail `n`: its own subject (how the watcher matches it to its 250) and Message-ID,
/// with one of [`BODIES`] realistic bodies (the ingest bench's: 2–50 KB, the word mix of real
/// mail, a fifth with an attachment), since what the body holds is what the conversation
/// service indexes (ADR 0026) before routing sees the conversation.
fn mail(n: u64, bodies: &[String]) -> Vec<u8> {
    let id = Uuid::new_v4();
    let body = &bodies[(n % bodies.len() as u64) as usize];
    let mut m = format!(
        "From: Customer {n} <customer{n}@example.org>\r\nTo: {ADDRESS}\r\n\
         Subject: {SUBJECT}{n}\r\nMessage-ID: <{id}@example.org>\r\n\
         Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    );
    m.push_str(body);
    m.into_bytes()
}

/// Body variants the mails cycle through (made before the clock starts).
const BODIES: u64 = 64;

fn bodies() -> Vec<String> {
    (0..BODIES)
        .map(|v| postvak_ingest::bench::mime_body(v.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xb0d1))
        .collect()
}

/// One mail to the bench inbox over `client` (the ingest bench's SMTP client).
async fn send(client: &mut BenchClient, data: &[u8]) -> anyhow::Result<()> {
    client.send_to(ADDRESS, &dot_stuff(data)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_process_gets_no_per_peer_message_limit() {
        let env = env_of(
            "postgres://postgres@127.0.0.1:5432/x",
            "nats://127.0.0.1:4222",
            "pvbenchtest",
            &postvak_platform::crypto::MasterKey::generate_base64(),
            16,
        );
        let cfg = Config::load_with_env(None, env).unwrap();
        let smtp: postvak_ingest::SmtpSettings = cfg.section("smtp").unwrap();
        assert_eq!(smtp.max_messages_per_minute_per_peer, 0, "0 = no limit");
        assert!(smtp.max_connections_per_peer > 16);
    }

    #[test]
    fn a_refusal_is_counted_by_its_reply_code() {
        let e = anyhow::anyhow!("expected 250, got 451 4.7.1 Too many messages, slow down");
        assert_eq!(smtp_reply_of(&e), "451 4.7.1");
        let e = anyhow::anyhow!("connection closed");
        assert_eq!(smtp_reply_of(&e), "connection closed");
    }
}
