//! `postvak bench store`: event store throughput beside a plain-SQL baseline measured in the same
//! run on the same database, so the ratios say what the store costs over the database itself.
//!
//! Three measurements, each with its baseline (rows of the same byte size in a plain table with
//! an identity primary key):
//! - single-event appends by concurrent writers, each on its own streams with exact expected
//!   versions ↔ single-row autocommit INSERTs from as many connections;
//! - appends in batches of 100 ↔ 100-row multi-row INSERTs;
//! - replay of the whole log (`read_log` pages, decrypt, deserialise the payload JSON) ↔ a paged
//!   `SELECT` scan of the baseline rows.

use crate::crypto::{Keyring, MasterKey};
use crate::db::{self, Db, DbOptions, redact_url};
use crate::store::postgres::{PgKeyStore, PostgresStore};
use crate::store::sqlite::{SqliteKeyStore, SqliteStore};
use crate::store::{
    Backend, EventStore, ExpectedVersion, KeyScope, LogPosition, NewEvent, StoreError, StoredEvent,
    StreamRef, TenantId, open_stored,
};
use anyhow::Context;
use serde_json::json;
use sqlx::{Connection, Row};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Targets the PostgreSQL store is held to (ratios to the baseline, and replay events/s).
pub const TARGET_SINGLE_RATIO: f64 = 0.7;
pub const TARGET_BATCH_RATIO: f64 = 0.5;
pub const TARGET_REPLAY_PER_SEC: f64 = 100_000.0;

#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// A PostgreSQL URL (a fresh database is created on that server, and dropped afterwards
    /// unless `keep`), or a SQLite file (`sqlite:path` or a plain path; it must not exist yet,
    /// or be a directory to create a fresh file in).
    pub url: String,
    /// How long each of the four write measurements runs (store and baseline each).
    pub phase: Duration,
    /// Store and baseline alternate in this many slices of each measurement.
    pub rounds: usize,
    /// Concurrent writers for single-event appends (and baseline connections).
    pub single_writers: usize,
    /// Concurrent writers for batch appends.
    pub batch_writers: usize,
    pub batch_size: usize,
    /// Size of each event's JSON payload.
    pub payload_bytes: usize,
    /// Events per `read_log` page (and baseline rows per page).
    pub page_size: usize,
    /// Keep the database (or file) afterwards.
    pub keep: bool,
}

impl Default for StoreBenchOptions {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            phase: Duration::from_secs(6),
            rounds: 3,
            single_writers: 16,
            batch_writers: 4,
            batch_size: 100,
            payload_bytes: 256,
            page_size: 2_000,
            keep: false,
        }
    }
}

/// One measurement and its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Store events per second.
    pub store_per_sec: f64,
    /// Baseline rows per second.
    pub raw_per_sec: f64,
    pub store_events: u64,
    pub raw_rows: u64,
}

impl Pair {
    fn new(store_events: u64, store_time: Duration, raw_rows: u64, raw_time: Duration) -> Self {
        Self {
            store_per_sec: per_sec(store_events, store_time),
            raw_per_sec: per_sec(raw_rows, raw_time),
            store_events,
            raw_rows,
        }
    }

    /// Store throughput as a fraction of the baseline's.
    pub fn ratio(&self) -> f64 {
        if self.raw_per_sec > 0.0 {
            self.store_per_sec / self.raw_per_sec
        } else {
            0.0
        }
    }
}

fn per_sec(n: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

#[derive(Debug, Clone)]
pub struct StoreBenchReport {
    pub backend: Backend,
    /// Where it ran (password redacted).
    pub database: String,
    /// Average stored event row size in bytes; baseline rows are this large.
    pub row_bytes: usize,
    pub single_writers: usize,
    pub batch_writers: usize,
    pub batch_size: usize,
    pub single: Pair,
    pub batch: Pair,
    pub replay: Pair,
}

impl StoreBenchReport {
    /// Whether the PostgreSQL targets hold (always judged; meaningful for PostgreSQL).
    pub fn meets_targets(&self) -> bool {
        self.single.ratio() >= TARGET_SINGLE_RATIO
            && self.batch.ratio() >= TARGET_BATCH_RATIO
            && self.replay.store_per_sec >= TARGET_REPLAY_PER_SEC
    }
}

impl fmt::Display for StoreBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        };
        writeln!(f, "event store benchmark: {backend} at {}", self.database)?;
        writeln!(
            f,
            "rows of {} bytes; baseline: plain table (identity key, bytea) in the same database",
            self.row_bytes
        )?;
        writeln!(
            f,
            "{:<34} {:>12} {:>12} {:>7}  target",
            "measurement", "store/s", "baseline/s", "ratio"
        )?;
        let check = |ok: bool| if ok { "ok" } else { "MISSED" };
        let rows = [
            (
                format!("single appends, {} writers", self.single_writers),
                self.single,
                format!(
                    ">= {TARGET_SINGLE_RATIO}x {}",
                    check(self.single.ratio() >= TARGET_SINGLE_RATIO)
                ),
            ),
            (
                format!(
                    "batches of {}, {} writers",
                    self.batch_size, self.batch_writers
                ),
                self.batch,
                format!(
                    ">= {TARGET_BATCH_RATIO}x {}",
                    check(self.batch.ratio() >= TARGET_BATCH_RATIO)
                ),
            ),
            (
                "replay (read+decrypt+decode)".to_owned(),
                self.replay,
                format!(
                    ">= {}k/s {}",
                    TARGET_REPLAY_PER_SEC / 1000.0,
                    check(self.replay.store_per_sec >= TARGET_REPLAY_PER_SEC)
                ),
            ),
        ];
        for (name, p, target) in rows {
            writeln!(
                f,
                "{:<34} {:>12.0} {:>12.0} {:>6.2}x  {}",
                name,
                p.store_per_sec,
                p.raw_per_sec,
                p.ratio(),
                target
            )?;
        }
        write!(
            f,
            "events: {} single, {} batched, {} replayed; baseline rows: {} + {}, {} scanned",
            self.single.store_events,
            self.batch.store_events,
            self.replay.store_events,
            self.single.raw_rows,
            self.batch.raw_rows,
            self.replay.raw_rows
        )
    }
}

/// Runs a bench's `work` until it ends or the user presses Ctrl-C, which ends it as an error:
/// the caller then removes what the run made (a scratch database), as after any failure,
/// instead of the process dying with it left behind. Every `postvak bench` goes through it.
pub async fn interruptible<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (Ctrl-C)"),
    }
}

/// Runs the benchmark against a fresh database (or file).
pub async fn store_bench(opts: StoreBenchOptions) -> anyhow::Result<StoreBenchReport> {
    anyhow::ensure!(
        opts.single_writers > 0 && opts.batch_writers > 0 && opts.batch_size > 0,
        "writers and batch size must be positive"
    );
    let target = Target::create(&opts.url).await?;
    let result = interruptible(run(&opts, &target)).await;
    if !opts.keep {
        target.remove().await;
    }
    result
}

/// The fresh database the benchmark runs in.
enum Target {
    Postgres {
        admin_url: String,
        url: String,
        name: String,
    },
    Sqlite {
        url: String,
        path: std::path::PathBuf,
    },
}

impl Target {
    async fn create(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let name = format!(
                "postvak_bench_{}",
                &Uuid::new_v4().simple().to_string()[..12]
            );
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .with_context(|| format!("cannot connect to {}", redact_url(url)))?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .with_context(|| format!("cannot create database {name}"))?;
            let _ = conn.close().await;
            Ok(Self::Postgres {
                admin_url: url.to_owned(),
                url: with_database(url, &name),
                name,
            })
        } else {
            let raw = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let mut path = std::path::PathBuf::from(raw);
            if path.is_dir() {
                path = path.join(format!(
                    "postvak-bench-{}.db",
                    &Uuid::new_v4().simple().to_string()[..12]
                ));
            }
            anyhow::ensure!(
                !path.exists(),
                "{} exists; the benchmark needs a fresh file",
                path.display()
            );
            Ok(Self::Sqlite {
                url: format!("sqlite://{}", path.display()),
                path,
            })
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::Postgres { url, .. } | Self::Sqlite { url, .. } => url,
        }
    }

    async fn remove(&self) {
        match self {
            Self::Postgres {
                admin_url, name, ..
            } => {
                if let Ok(mut c) = sqlx::PgConnection::connect(admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            }
            Self::Sqlite { path, .. } => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Plain-SQL access for the baseline (as the owner on PostgreSQL; the writer/reader pools on
/// SQLite, as the store uses them).
enum Raw {
    Postgres(sqlx::PgPool),
    Sqlite(db::SqliteDb),
}

async fn run(opts: &StoreBenchOptions, target: &Target) -> anyhow::Result<StoreBenchReport> {
    let url = target.url();
    db::migrate(url).await?;
    let db_opts = DbOptions {
        max_connections: u32::try_from(opts.single_writers.max(opts.batch_writers))
            .unwrap_or(16)
            .max(2),
        ..DbOptions::default()
    };
    let db = db::connect(url, &db_opts).await?;
    let master = MasterKey::from_base64(&MasterKey::generate_base64())?;
    let (store, raw): (Arc<dyn EventStore>, Raw) = match &db {
        Db::Postgres(pool) => {
            let keyring = Keyring::new(master, Arc::new(PgKeyStore::new(pool.clone())));
            // Pool settings as the store's (sqlx defaults, which ping a connection before each
            // acquire: about a quarter of a single-row INSERT's cost here).
            let owner = sqlx::postgres::PgPoolOptions::new()
                .max_connections(db_opts.max_connections)
                .connect(url)
                .await?;
            sqlx::query(
                "CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 data bytea NOT NULL)",
            )
            .execute(&owner)
            .await?;
            (
                Arc::new(PostgresStore::new(db.clone(), keyring)?),
                Raw::Postgres(owner),
            )
        }
        Db::Sqlite(s) => {
            let keyring = Keyring::new(master, Arc::new(SqliteKeyStore::new(s)));
            sqlx::query("CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
                .execute(&s.writer)
                .await?;
            (
                Arc::new(SqliteStore::new(db.clone(), keyring)?),
                Raw::Sqlite(s.clone()),
            )
        }
    };
    let tenant = TenantId(Uuid::now_v7());
    // The data key exists before anything is timed.
    store
        .keyring()
        .seal(tenant, &KeyScope::Tenant, b"", b"")
        .await?;

    // (a) single-event appends, (b) batches.
    let mut row_bytes = None;
    let single = write_measurement(
        &store,
        &raw,
        tenant,
        opts,
        opts.single_writers,
        1,
        "a",
        &mut row_bytes,
    )
    .await?;
    let batch = write_measurement(
        &store,
        &raw,
        tenant,
        opts,
        opts.batch_writers,
        opts.batch_size,
        "b",
        &mut row_bytes,
    )
    .await?;
    let row_bytes = row_bytes.unwrap_or_default();

    // (c) replay, once every appended event is visible to tailers.
    wait_until_visible(&raw).await?;
    let started = Instant::now();
    let replayed = replay(store.as_ref(), opts.page_size).await?;
    let replay_time = started.elapsed();
    let started = Instant::now();
    let scanned = raw_scan(&raw, opts.page_size).await?;
    let replay = Pair::new(replayed, replay_time, scanned, started.elapsed());

    let report = StoreBenchReport {
        backend: store.backend(),
        database: redact_url(url),
        row_bytes,
        single_writers: opts.single_writers,
        batch_writers: opts.batch_writers,
        batch_size: opts.batch_size,
        single,
        batch,
        replay,
    };
    store.db().close().await;
    if let Raw::Postgres(p) = raw {
        p.close().await;
    }
    Ok(report)
}

fn payload(n: u64, size: usize) -> serde_json::Value {
    // Printable filler of the requested size (not compressible to nothing, not random bytes).
    let filler: String = (0..size.saturating_sub(40))
        .map(|i| char::from(b'a' + ((i as u64 * 7 + n) % 26) as u8))
        .collect();
    json!({ "n": n, "kind": "bench", "body": filler })
}

/// One writer's streams and their versions, kept across rounds.
#[derive(Debug, Clone)]
struct Writer {
    streams: Vec<StreamRef>,
    versions: Vec<u64>,
    next: usize,
}

fn writers(n: usize, tag: &str) -> Vec<Writer> {
    (0..n)
        .map(|w| Writer {
            streams: (0..4)
                .map(|i| StreamRef::new("bench", format!("{tag}-w{w}-s{i}")))
                .collect(),
            versions: vec![0; 4],
            next: 0,
        })
        .collect()
}

/// Every writer appends `batch` events at a time to its own streams, round robin, with exact
/// expected versions, until `slice` has passed. Returns the events appended.
async fn append_slice(
    store: &Arc<dyn EventStore>,
    tenant: TenantId,
    writers: &mut Vec<Writer>,
    batch: usize,
    payload_bytes: usize,
    slice: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + slice;
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = std::mem::take(writers)
        .into_iter()
        .map(|mut w| {
            let store = store.clone();
            let count = count.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let k = w.next % w.streams.len();
                    w.next += 1;
                    let v = w.versions[k];
                    let events: Vec<NewEvent> = (0..batch as u64)
                        .map(|j| NewEvent::new("bench.event", 1, payload(v + j, payload_bytes)))
                        .collect();
                    let out = store
                        .append(tenant, &w.streams[k], ExpectedVersion::Exact(v), events)
                        .await?;
                    w.versions[k] = out.last_version;
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok::<_, StoreError>(w)
            })
        })
        .collect();
    for t in tasks {
        writers.push(t.await??);
    }
    Ok(count.load(Ordering::Relaxed))
}

/// Store and baseline take turns (`rounds` slices each), so that both see the same load from
/// whatever else runs on the machine.
#[allow(clippy::too_many_arguments)]
async fn write_measurement(
    store: &Arc<dyn EventStore>,
    raw: &Raw,
    tenant: TenantId,
    opts: &StoreBenchOptions,
    concurrency: usize,
    batch: usize,
    tag: &str,
    row_bytes: &mut Option<usize>,
) -> anyhow::Result<Pair> {
    let rounds = opts.rounds.max(1);
    let slice = opts.phase / u32::try_from(rounds).unwrap_or(u32::MAX);
    let mut state = writers(concurrency, tag);
    let (mut events, mut store_time, mut rows, mut raw_time) =
        (0, Duration::ZERO, 0, Duration::ZERO);
    for _ in 0..rounds {
        let started = Instant::now();
        events += append_slice(store, tenant, &mut state, batch, opts.payload_bytes, slice).await?;
        store_time += started.elapsed();
        let size = match *row_bytes {
            Some(b) => b,
            None => *row_bytes.insert(average_row_bytes(store.as_ref()).await?),
        };
        let started = Instant::now();
        rows += raw_insert_phase(raw, concurrency, batch, size, slice).await?;
        raw_time += started.elapsed();
    }
    Ok(Pair::new(events, store_time, rows, raw_time))
}

/// The average stored size of an event row (the sum of its columns' sizes).
async fn average_row_bytes(store: &dyn EventStore) -> anyhow::Result<usize> {
    let sample = store.read_log(LogPosition::START, 200, None).await?;
    anyhow::ensure!(!sample.is_empty(), "no events were appended");
    let total: usize = sample.iter().map(row_bytes).sum();
    Ok(total / sample.len())
}

fn row_bytes(e: &StoredEvent) -> usize {
    // global_position, tx, stream_version, recorded_at: 8 each; event_version 4; uuids 16 each.
    4 * 8
        + 4
        + 3 * 16
        + e.stream_type.len()
        + e.stream_id.len()
        + e.event_type.len()
        + e.payload.len()
        + e.metadata.len()
        + e.prev_hash.len()
        + e.hash.len()
}

async fn raw_insert_phase(
    raw: &Raw,
    connections: usize,
    rows_per_insert: usize,
    row_bytes: usize,
    phase: Duration,
) -> anyhow::Result<u64> {
    // The identity key is 8 of the row's bytes.
    let data = vec![0x5au8; row_bytes.saturating_sub(8).max(1)];
    let deadline = Instant::now() + phase;
    let count = Arc::new(AtomicU64::new(0));
    let placeholders = |dollar: bool| {
        (1..=rows_per_insert)
            .map(|i| {
                if dollar {
                    format!("(${i})")
                } else {
                    format!("(?{i})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let count = count.clone();
            let data = data.clone();
            let raw = match raw {
                Raw::Postgres(p) => Raw::Postgres(p.clone()),
                Raw::Sqlite(s) => Raw::Sqlite(s.clone()),
            };
            let sql = format!(
                "INSERT INTO bench_raw (data) VALUES {}",
                placeholders(matches!(raw, Raw::Postgres(_)))
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match &raw {
                        Raw::Postgres(p) => {
                            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                            for _ in 0..rows_per_insert {
                                q = q.bind(data.as_slice());
                            }
                            q.execute(p).await?;
                        }
                        Raw::Sqlite(s) => {
                            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                            for _ in 0..rows_per_insert {
                                q = q.bind(data.as_slice());
                            }
                            q.execute(&s.writer).await?;
                        }
                    }
                    count.fetch_add(rows_per_insert as u64, Ordering::Relaxed);
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(count.load(Ordering::Relaxed))
}

/// Reads the whole log page by page, decrypting and deserialising every payload; the next page
/// is fetched while the current one is decoded.
async fn replay(store: &dyn EventStore, page_size: usize) -> anyhow::Result<u64> {
    let keyring = store.keyring();
    let mut n = 0u64;
    let mut page = store.read_log(LogPosition::START, page_size, None).await?;
    while let Some(last) = page.last() {
        let after = last.position;
        let decode = async {
            for e in &page {
                let opened = open_stored(keyring, e).await?;
                if matches!(opened.data, crate::store::EventData::Shredded) {
                    return Err(StoreError::Shredded {
                        event_id: e.event_id,
                    });
                }
            }
            Ok::<_, StoreError>(page.len() as u64)
        };
        let (decoded, next) = tokio::join!(decode, store.read_log(after, page_size, None));
        n += decoded?;
        page = next?;
    }
    Ok(n)
}

/// PostgreSQL shows a tailer an event once every older transaction on the server has ended;
/// other sessions' transactions must not shorten the replay.
async fn wait_until_visible(raw: &Raw) -> anyhow::Result<()> {
    let Raw::Postgres(p) = raw else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let visible: bool = sqlx::query_scalar(
            "SELECT coalesce(pg_snapshot_xmin(pg_current_snapshot()) > max(tx), true) FROM events",
        )
        .fetch_one(p)
        .await?;
        if visible {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a transaction on the server kept the log's newest events invisible for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn raw_scan(raw: &Raw, page_size: usize) -> anyhow::Result<u64> {
    let limit = i64::try_from(page_size).unwrap_or(i64::MAX);
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let rows = match raw {
            Raw::Postgres(p) => {
                sqlx::query("SELECT id, data FROM bench_raw WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?.len())))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Raw::Sqlite(s) => {
                sqlx::query("SELECT id, data FROM bench_raw WHERE id > ?1 ORDER BY id LIMIT ?2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&s.reader)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?.len())))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        let Some(&(last, _)) = rows.last() else { break };
        after = last;
        n += rows.len() as u64;
    }
    Ok(n)
}
