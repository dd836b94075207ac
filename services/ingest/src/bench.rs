//! `postvak bench ingest`: SMTP clients on loopback send realistic mails (2–50 KB, a fifth with
//! an attachment, 30 % replies to earlier mails of the run) into a fresh database through the
//! real listener and pipeline. Two measurements per target:
//!
//! - **throughput**: `clients` connections send back to back for `throughput` seconds;
//!   accepted-and-committed mails per second (a mail counts once its 250 is read, which the
//!   server sends only after the commit);
//! - **latency at a fixed rate**: mails are scheduled at `rate` per second (open loop) for
//!   `latency` seconds; time to 250 is measured from the scheduled start of each transaction
//!   (so queueing behind a slow server counts) to the 250.
//!
//! Targets (issue 4): ≥ 1,000 mails/s; p99 ≤ 50 ms at 200 mails/s.

use crate::settings::SmtpSettings;
use crate::smtp::SmtpServer;
use anyhow::Context;
use postvak_directory::Directory;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::cell::{Cells, Principal};
use postvak_platform::crypto::MasterKey;
use postvak_platform::db::redact_url;
use postvak_platform::relay::{RelayOptions, run_relay};
use sqlx::Connection;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TARGET_MAILS_PER_SEC: f64 = 1_000.0;
pub const TARGET_P99_MS: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Each target is measured in turn: a PostgreSQL URL (a fresh database is created on that
    /// server and dropped afterwards) or `sqlite` / `sqlite:<dir>` (a fresh file in a new
    /// temporary directory, or in `<dir>`).
    pub targets: Vec<String>,
    pub clients: usize,
    pub throughput: Duration,
    /// Mails per second of the latency measurement.
    pub rate: u32,
    pub latency: Duration,
    /// PostgreSQL targets: the NATS server a relay publishes the stored events to, running
    /// beside the listener as it does in production (its CPU counts). `None`: no relay.
    pub nats: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            targets: vec![
                "postgres://postgres@127.0.0.1:5432/postgres".into(),
                "sqlite".into(),
            ],
            clients: 16,
            throughput: Duration::from_secs(10),
            rate: 200,
            latency: Duration::from_secs(10),
            nats: Some("nats://127.0.0.1:4222".into()),
        }
    }
}

/// The measurements of one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub target: String,
    pub mails: u64,
    pub bytes: u64,
    pub mails_per_sec: f64,
    pub throughput_p50_ms: f64,
    pub throughput_p99_ms: f64,
    pub rate: u32,
    pub achieved_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub failures: u64,
    /// With a relay: events on the JetStream stream at the end, and how long after the last
    /// 250 the relay had published the whole log.
    pub relayed: Option<(u64, Duration)>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub clients: usize,
    pub targets: Vec<TargetReport>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ingest benchmark: {} SMTP clients on loopback, mails 2–50 KB (20% with an attachment, 30% replies)",
            self.clients
        )?;
        for t in &self.targets {
            let ok = |b: bool| if b { "meets target" } else { "BELOW TARGET" };
            writeln!(f, "target {}", t.target)?;
            writeln!(
                f,
                "  throughput: {:>8.0} mails/s accepted and committed ({} mails, {:.1} MB; time to 250 p50 {:.1} ms, p99 {:.1} ms) — target ≥ {:.0}: {}",
                t.mails_per_sec,
                t.mails,
                t.bytes as f64 / 1e6,
                t.throughput_p50_ms,
                t.throughput_p99_ms,
                TARGET_MAILS_PER_SEC,
                ok(t.mails_per_sec >= TARGET_MAILS_PER_SEC)
            )?;
            writeln!(
                f,
                "  at {}/s (achieved {:.0}/s): time to 250 p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms — target p99 ≤ {:.0} ms: {}",
                t.rate,
                t.achieved_rate,
                t.latency_p50_ms,
                t.latency_p99_ms,
                t.latency_max_ms,
                TARGET_P99_MS,
                ok(t.latency_p99_ms <= TARGET_P99_MS)
            )?;
            if let Some((events, lag)) = t.relayed {
                writeln!(
                    f,
                    "  relayed to NATS JetStream beside the listener: {events} events, the whole log {:.0} ms after the last 250",
                    lag.as_secs_f64() * 1e3
                )?;
            }
            if t.failures > 0 {
                writeln!(
                    f,
                    "  failures (non-250 answers or broken connections): {}",
                    t.failures
                )?;
            }
        }
        Ok(())
    }
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.clients > 0 && opts.rate > 0,
        "clients and rate must be positive"
    );
    let mut targets = Vec::new();
    for t in &opts.targets {
        let target = Target::create(t).await?;
        let result = postvak_platform::bench::interruptible(bench_target(&opts, &target)).await;
        target.drop_it().await;
        targets.push(result.with_context(|| format!("benchmarking {}", target.label))?);
    }
    Ok(Report {
        clients: opts.clients,
        targets,
    })
}

enum Where {
    Postgres { admin: String, name: String },
    Sqlite { dir: Option<std::path::PathBuf> },
}

struct Target {
    label: String,
    url: String,
    place: Where,
}

impl Target {
    async fn create(spec: &str) -> anyhow::Result<Self> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let name = format!("pv_bench_ingest_{}", Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(spec)
                .await
                .with_context(|| format!("connecting to {}", redact_url(spec)))?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating database {name}"))?;
            let _ = conn.close().await;
            let base = spec.rsplit_once('/').map_or(spec, |(b, _)| b);
            Ok(Self {
                label: format!("PostgreSQL ({})", redact_url(spec)),
                url: format!("{base}/{name}"),
                place: Where::Postgres {
                    admin: spec.to_owned(),
                    name,
                },
            })
        } else {
            let given = spec.strip_prefix("sqlite:").filter(|d| !d.is_empty());
            let (dir, temp) = match given {
                Some(d) => (std::path::PathBuf::from(d), None),
                None => {
                    let d = std::env::temp_dir()
                        .join(format!("postvak-bench-ingest-{}", Uuid::new_v4().simple()));
                    (d.clone(), Some(d))
                }
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("ingest-{}.db", Uuid::new_v4().simple()));
            Ok(Self {
                label: "embedded SQLite".into(),
                url: format!("sqlite://{}", file.display()),
                place: Where::Sqlite { dir: temp },
            })
        }
    }

    async fn drop_it(&self) {
        match &self.place {
            Where::Postgres { admin, name } => {
                if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            }
            Where::Sqlite { dir: Some(d) } => {
                let _ = std::fs::remove_dir_all(d);
            }
            Where::Sqlite { dir: None } => {}
        }
    }
}

const RCPT: &str = "support@bench.example";

async fn bench_target(opts: &BenchOptions, target: &Target) -> anyhow::Result<TargetReport> {
    let master = MasterKey::from_base64(&MasterKey::generate_base64())?;
    let cells: Cells = crate::standalone::open_cells(&target.url, master, true).await?;
    let dir = Directory::new(cells.clone());
    let tenant = dir
        .create_tenant("Bench", None)
        .await
        .map_err(|e| anyhow::anyhow!("creating the tenant: {e}"))?;
    let ctx = cells
        .context(tenant, Principal::Service { name: "bench" })
        .await?;
    dir.create_inbox(&ctx, "Support", &[RCPT.to_owned()])
        .await
        .map_err(|e| anyhow::anyhow!("creating the inbox: {e}"))?;
    let server = SmtpServer::bind(
        SmtpSettings {
            addr: "127.0.0.1:0".into(),
            max_connections_per_peer: opts.clients + 8,
            max_messages_per_minute_per_peer: 0,
            ..SmtpSettings::default()
        },
        cells.clone(),
    )
    .await?;
    let port = server.port();
    let relay = match (&target.place, &opts.nats) {
        (Where::Postgres { .. }, Some(url)) => Some(BenchRelay::start(&cells, url).await?),
        _ => None,
    };
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(server.run(cancel.clone()));
    let mails = Arc::new(MailFactory::new());
    // Warm-up: keys, pools, caches.
    let mut warm = BenchClient::connect(port).await?;
    for _ in 0..20 {
        warm.send(&mails.next()).await?;
    }

    // Throughput.
    let stop_at = Instant::now() + opts.throughput;
    let bytes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        let (mails, bytes, failures) = (mails.clone(), bytes.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let Ok(mut c) = BenchClient::connect(port).await else {
                failures.fetch_add(1, Ordering::Relaxed);
                return lat;
            };
            while Instant::now() < stop_at {
                let m = mails.next();
                let t = Instant::now();
                match c.send(&m).await {
                    Ok(()) => {
                        lat.push(t.elapsed());
                        bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        match BenchClient::connect(port).await {
                            Ok(n) => c = n,
                            Err(_) => break,
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mails_done = lat.len() as u64;
    let (tp50, tp99, _) = percentiles(&mut lat);

    // Fixed rate, open loop.
    let total = (f64::from(opts.rate) * opts.latency.as_secs_f64()).ceil() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.rate));
    let (tx, rx) = async_channel_bounded(total as usize);
    let start = Instant::now() + Duration::from_millis(50);
    for i in 0..total {
        let _ = tx.send(start + interval * i as u32).await;
    }
    drop(tx);
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        let (rx, mails, failures) = (rx.clone(), mails.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let Ok(mut c) = BenchClient::connect(port).await else {
                failures.fetch_add(1, Ordering::Relaxed);
                return lat;
            };
            loop {
                let next = rx.lock().await.recv().await;
                let Some(at) = next else { break };
                tokio::time::sleep_until(at.into()).await;
                match c.send(&mails.next()).await {
                    Ok(()) => lat.push(at.elapsed()),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        match BenchClient::connect(port).await {
                            Ok(n) => c = n,
                            Err(_) => break,
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut lat2 = Vec::new();
    for t in tasks {
        lat2.extend(t.await?);
    }
    let achieved = lat2.len() as f64 / start.elapsed().as_secs_f64();
    let (lp50, lp99, lmax) = percentiles(&mut lat2);
    let last_250 = Instant::now();
    let relayed = match relay {
        Some(r) => Some(r.drain(&cells, last_250).await?),
        None => None,
    };
    cancel.cancel();
    let _ = handle.await;
    for c in cells.all() {
        c.store.db().close().await;
    }
    cells.directory().close().await;
    Ok(TargetReport {
        target: target.label.clone(),
        mails: mails_done,
        bytes: bytes.load(Ordering::Relaxed),
        mails_per_sec: mails_done as f64 / elapsed,
        throughput_p50_ms: tp50,
        throughput_p99_ms: tp99,
        rate: opts.rate,
        achieved_rate: achieved,
        latency_p50_ms: lp50,
        latency_p99_ms: lp99,
        latency_max_ms: lmax,
        failures: failures.load(Ordering::Relaxed),
        relayed,
    })
}

/// The cell's relay publishing to a scratch JetStream stream (unique prefix, deleted at the
/// end), as a production PostgreSQL deployment runs it.
struct BenchRelay {
    bus: Arc<NatsBus>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<
        Result<postvak_platform::relay::RelayReport, postvak_platform::relay::RelayError>,
    >,
}

impl BenchRelay {
    async fn start(cells: &Cells, url: &str) -> anyhow::Result<Self> {
        let prefix = format!(
            "pvbenchingest{}",
            &Uuid::new_v4().simple().to_string()[..10]
        );
        let bus = NatsBus::connect(url, &prefix, crate::standalone::CELL)
            .await
            .with_context(|| {
                format!("connecting to NATS at {url} for the relay (needs JetStream)")
            })?;
        let bus = Arc::new(bus);
        let store = cells
            .all()
            .next()
            .context("the bench has one cell")?
            .store
            .clone();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_relay(
            store,
            bus.clone(),
            RelayOptions::new(crate::standalone::CELL),
            cancel.clone(),
        ));
        Ok(Self { bus, cancel, task })
    }

    /// Waits (at most a minute) until the stream holds every event of the log, stops the
    /// relay and deletes the stream: the events and how long after `since` the log was out.
    async fn drain(self, cells: &Cells, since: Instant) -> anyhow::Result<(u64, Duration)> {
        let deadline = since + Duration::from_secs(60);
        let name = self.bus.stream_name().to_owned();
        // An error still stops the relay and deletes the stream below.
        let result = async {
            let db = cells.all().next().context("the bench has one cell")?.db();
            let postvak_platform::db::Db::Postgres(pool) = db else {
                anyhow::bail!("the relay runs on PostgreSQL targets only");
            };
            let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(pool)
                .await
                .context("counting the log")?;
            let mut stream = self.bus.jetstream().get_stream(&name).await?;
            loop {
                let on_stream = stream.info().await?.state.messages;
                if on_stream >= logged as u64 {
                    return Ok((on_stream, since.elapsed()));
                }
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "the relay published {on_stream} of {logged} events within a minute of the last 250"
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        .await;
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = self.bus.jetstream().delete_stream(&name).await;
        result
    }
}

type Rx = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>;

fn async_channel_bounded(n: usize) -> (tokio::sync::mpsc::Sender<Instant>, Rx) {
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// (p50, p99, max) in milliseconds.
fn percentiles(v: &mut [Duration]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99), at(1.0))
}

/// Realistic mails: 2–50 KB of text, a fifth with a base64 attachment, 30 % replies naming an
/// earlier mail of the run. The bodies (and their SMTP dot-stuffing) are made once, before the
/// clock starts, from a pool of [`BODIES`] variants; each mail gets its own headers (a unique
/// Message-ID, so none is a duplicate). The clients run in the server's process: generating
/// 2–50 KB of text per mail there was CPU taken from the server under test.
struct MailFactory {
    n: AtomicU64,
    run: String,
    /// (MIME headers + body, already dot-stuffed and ending in `.\r\n`).
    bodies: Vec<Vec<u8>>,
}

/// Body variants: sizes and attachments spread as before, over a pool large enough that the
/// server cannot tell.
const BODIES: u64 = 128;

impl MailFactory {
    fn new() -> Self {
        Self {
            n: AtomicU64::new(0),
            run: Uuid::new_v4().simple().to_string()[..8].to_owned(),
            bodies: (0..BODIES).map(|v| body(splitmix(v ^ 0x5eed))).collect(),
        }
    }

    /// One mail as sent after `DATA`: dot-stuffed, with the terminating `.`.
    fn next(&self) -> Vec<u8> {
        let i = self.n.fetch_add(1, Ordering::Relaxed);
        let h = splitmix(i);
        let reply = h % 10 < 3 && i > 0;
        let body = &self.bodies[(h % BODIES) as usize];
        let mut m = Vec::with_capacity(body.len() + 512);
        m.extend_from_slice(
            format!(
                "From: Customer {i} <c{i}@example.org>\r\nTo: Support <{RCPT}>\r\n\
                 Subject: {}Order {} question\r\nMessage-ID: <bench-{}-{i}@example.org>\r\n\
                 Date: Mon, 2 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n",
                if reply { "Re: " } else { "" },
                h % 1000,
                self.run
            )
            .as_bytes(),
        );
        if reply {
            let parent = (h >> 16) % i;
            m.extend_from_slice(
                format!(
                    "In-Reply-To: <bench-{run}-{parent}@example.org>\r\nReferences: <bench-{run}-{parent}@example.org>\r\n",
                    run = self.run
                )
                .as_bytes(),
            );
        }
        m.extend_from_slice(body);
        m
    }
}

/// The MIME part of a mail after the common headers: a text body, or text and a PDF
/// attachment; dot-stuffed, ending with the `.` line.
fn body(h: u64) -> Vec<u8> {
    dot_stuff(mime_body(h).as_bytes())
}

/// The MIME part of a realistic mail (after `From`/`To`/`Subject`/`Message-ID`/`Date` and
/// `MIME-Version`), chosen by `h`: 2–50 KB, text with the word mix of real mail ([`lorem`]),
/// one in five with a base64 PDF attachment. Not dot-stuffed. Also `postvak bench routing`'s
/// mail bodies.
pub fn mime_body(h: u64) -> String {
    let size = 2_000 + (h % 48_000) as usize;
    let attach = (h >> 8).is_multiple_of(5);
    let text_len = if attach { size / 2 } else { size };
    let text = lorem(text_len, h);
    let mut m = String::with_capacity(size + 1024);
    if attach {
        m.push_str("Content-Type: multipart/mixed; boundary=\"BENCH\"\r\n\r\n--BENCH\r\n");
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        m.push_str(&text);
        m.push_str("\r\n--BENCH\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n");
        m.push_str("Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n");
        m.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        let raw: Vec<u8> = (0..(size - text_len) * 3 / 4)
            .map(|k| splitmix(h ^ k as u64) as u8)
            .collect();
        for chunk in base64(&raw).as_bytes().chunks(76) {
            m.push_str(&String::from_utf8_lossy(chunk));
            m.push_str("\r\n");
        }
        m.push_str("--BENCH--\r\n");
    } else {
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        m.push_str(&text);
        m.push_str("\r\n");
    }
    m
}

/// A message as sent after `DATA`: lines starting with `.` doubled, and the terminating `.`.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Text of about `len` bytes in CRLF lines, with the word mix of real mail rather than a
/// dozen words repeated: the 18 commonest words of a support inbox, then a long tail of ~4,000
/// made-up words (two to four syllables) drawn with a Zipf-like skew, so a body has a few
/// hundred distinct words, as a real one does (what the search index pays for, ADR 0026).
fn lorem(len: usize, seed: u64) -> String {
    const COMMON: &[&str] = &[
        "hello", "order", "invoice", "delivery", "please", "thanks", "the", "package", "arrived",
        "damaged", "refund", "when", "could", "you", "check", "account", "number", "regards",
    ];
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mer", "sti", "van", "de", "ri", "pol", "un", "tra", "bel", "os", "ghe", "mi",
        "nar", "che", "fu", "sel", "ta", "qui",
    ];
    const TAIL: u64 = 4_000;
    let mut out = String::with_capacity(len + 16);
    let mut k = seed;
    let mut col = 0;
    while out.len() < len {
        k = splitmix(k);
        let start = out.len();
        if k.is_multiple_of(2) {
            out.push_str(COMMON[((k >> 1) % COMMON.len() as u64) as usize]);
        } else {
            // u³ skews towards the low ranks: a few tail words are frequent, most are rare.
            let u = ((k >> 11) as f64) / ((1u64 << 53) as f64);
            let mut rank = (u * u * u * TAIL as f64) as u64;
            for _ in 0..2 + rank % 3 {
                out.push_str(SYLLABLES[(rank % SYLLABLES.len() as u64) as usize]);
                rank /= SYLLABLES.len() as u64;
                rank += 7;
            }
        }
        col += out.len() - start + 1;
        if col > 70 {
            out.push_str("\r\n");
            col = 0;
        } else {
            out.push(' ');
        }
    }
    out
}

fn base64(d: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(d.len() * 4 / 3 + 4);
    for c in d.chunks(3) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(char::from(T[(n >> 18) as usize & 63]));
        out.push(char::from(T[(n >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(T[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(T[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

/// A minimal SMTP client: one transaction at a time, EHLO once per connection.
/// A minimal pipelining SMTP client for benchmarks: EHLO once per connection, one
/// transaction at a time (also used by `postvak bench routing`).
#[derive(Debug)]
pub struct BenchClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl BenchClient {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Self {
            reader: BufReader::new(r),
            writer: w,
        };
        c.expect(220).await?;
        c.writer.write_all(b"EHLO bench.example\r\n").await?;
        c.expect(250).await?;
        Ok(c)
    }

    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            anyhow::ensure!(
                self.reader.read_line(&mut line).await? > 0,
                "connection closed"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        anyhow::ensure!(
            line.starts_with(&code.to_string()),
            "expected {code}, got {}",
            line.trim()
        );
        Ok(())
    }

    /// MAIL, RCPT and DATA pipelined (we advertise PIPELINING), then the body (`wire`: already
    /// dot-stuffed and terminated, see [`MailFactory::next`]).
    async fn send(&mut self, wire: &[u8]) -> anyhow::Result<()> {
        self.send_to(RCPT, wire).await
    }

    /// One mail to `rcpt`; the final 250 comes only after the mail's commit.
    pub async fn send_to(&mut self, rcpt: &str, wire: &[u8]) -> anyhow::Result<()> {
        self.writer
            .write_all(
                format!("MAIL FROM:<c@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
            )
            .await?;
        self.expect(250).await?;
        self.expect(250).await?;
        self.expect(354).await?;
        self.writer.write_all(wire).await?;
        self.expect(250).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_bodies_have_the_word_mix_of_real_mail() {
        let text = lorem(25_000, 42);
        let distinct = postvak_core::conversation::body_search_words(&text).len();
        assert!(
            (150..1_000).contains(&distinct),
            "{distinct} distinct words in 25 KB"
        );
        // Repeatable: the same seed gives the same text.
        assert_eq!(lorem(2_000, 7), lorem(2_000, 7));
    }
}
