//! Database handles and migrations for both backends. A cell's database is PostgreSQL
//! (`postgres://…`) or one SQLite file (`sqlite://path` or `sqlite:path`).
//!
//! Migrations are embedded in the binary (no files needed at run time) and run by
//! `postvak migrate` or at start of the embedded default, as the database owner. The application
//! pool then acts as the `postvak_app` role, which cannot UPDATE or DELETE events.

use crate::store::StoreError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Postgres, Sqlite, Transaction};
use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

/// PostgreSQL migrations, in order: (version, description, SQL).
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "events",
        include_str!("../../../migrations/postgres/0001_events.sql"),
    ),
    (
        2,
        "bus",
        include_str!("../../../migrations/postgres/0002_bus.sql"),
    ),
    (
        3,
        "directory",
        include_str!("../../../migrations/postgres/0003_directory.sql"),
    ),
    (
        4,
        "ingest",
        include_str!("../../../migrations/postgres/0004_ingest.sql"),
    ),
    (
        5,
        "identity",
        include_str!("../../../migrations/postgres/0005_identity.sql"),
    ),
    (
        6,
        "conversation",
        include_str!("../../../migrations/postgres/0006_conversation.sql"),
    ),
    (
        7,
        "notification",
        include_str!("../../../migrations/postgres/0007_notification.sql"),
    ),
    (
        8,
        "conversation_search",
        include_str!("../../../migrations/postgres/0008_conversation_search.sql"),
    ),
    (
        9,
        "routing_rules",
        include_str!("../../../migrations/postgres/0009_routing_rules.sql"),
    ),
    (
        10,
        "routing_timers",
        include_str!("../../../migrations/postgres/0010_routing_timers.sql"),
    ),
    (
        11,
        "imap",
        include_str!("../../../migrations/postgres/0011_imap.sql"),
    ),
    (
        13,
        "contacts",
        include_str!("../../../migrations/postgres/0013_contacts.sql"),
    ),
    (
        14,
        "delivery_relays",
        include_str!("../../../migrations/postgres/0014_delivery_relays.sql"),
    ),
    (
        16,
        "sla_alerts",
        include_str!("../../../migrations/postgres/0016_sla_alerts.sql"),
    ),
    (
        17,
        "draft_providers",
        include_str!("../../../migrations/postgres/0017_draft_providers.sql"),
    ),
    (
        18,
        "imap_reimport",
        include_str!("../../../migrations/postgres/0018_imap_reimport.sql"),
    ),
    (
        19,
        "conversation_views",
        include_str!("../../../migrations/postgres/0019_conversation_views.sql"),
    ),
    (
        20,
        "inbox_relays_and_reply_files",
        include_str!("../../../migrations/postgres/0020_inbox_relays_and_reply_files.sql"),
    ),
    (
        21,
        "routing_vip_contacts",
        include_str!("../../../migrations/postgres/0021_routing_vip_contacts.sql"),
    ),
    (
        22,
        "ingest_blob_gc",
        include_str!("../../../migrations/postgres/0022_ingest_blob_gc.sql"),
    ),
    (
        23,
        "search_documents",
        include_str!("../../../migrations/postgres/0023_search_documents.sql"),
    ),
    (
        24,
        "search_pending_cleaner",
        include_str!("../../../migrations/postgres/0024_search_pending_cleaner.sql"),
    ),
    (
        25,
        "notification_due_seq",
        include_str!("../../../migrations/postgres/0025_notification_due_seq.sql"),
    ),
    (
        26,
        "search_prefix_vocabulary",
        include_str!("../../../migrations/postgres/0026_search_prefix_vocabulary.sql"),
    ),
    (
        27,
        "notification_due_lease",
        include_str!("../../../migrations/postgres/0027_notification_due_lease.sql"),
    ),
    (
        28,
        "routing_open_counts",
        include_str!("../../../migrations/postgres/0028_routing_open_counts.sql"),
    ),
];

/// SQLite migrations, in order.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "events",
        include_str!("../../../migrations/sqlite/0001_events.sql"),
    ),
    (
        2,
        "bus",
        include_str!("../../../migrations/sqlite/0002_bus.sql"),
    ),
    (
        3,
        "directory",
        include_str!("../../../migrations/sqlite/0003_directory.sql"),
    ),
    (
        4,
        "ingest",
        include_str!("../../../migrations/sqlite/0004_ingest.sql"),
    ),
    (
        5,
        "identity",
        include_str!("../../../migrations/sqlite/0005_identity.sql"),
    ),
    (
        6,
        "conversation",
        include_str!("../../../migrations/sqlite/0006_conversation.sql"),
    ),
    (
        7,
        "notification",
        include_str!("../../../migrations/sqlite/0007_notification.sql"),
    ),
    (
        8,
        "conversation_search",
        include_str!("../../../migrations/sqlite/0008_conversation_search.sql"),
    ),
    (
        9,
        "routing_rules",
        include_str!("../../../migrations/sqlite/0009_routing_rules.sql"),
    ),
    (
        10,
        "routing_timers",
        include_str!("../../../migrations/sqlite/0010_routing_timers.sql"),
    ),
    (
        11,
        "imap",
        include_str!("../../../migrations/sqlite/0011_imap.sql"),
    ),
    (
        13,
        "contacts",
        include_str!("../../../migrations/sqlite/0013_contacts.sql"),
    ),
    (
        14,
        "delivery_relays",
        include_str!("../../../migrations/sqlite/0014_delivery_relays.sql"),
    ),
    (
        16,
        "sla_alerts",
        include_str!("../../../migrations/sqlite/0016_sla_alerts.sql"),
    ),
    (
        17,
        "draft_providers",
        include_str!("../../../migrations/sqlite/0017_draft_providers.sql"),
    ),
    (
        18,
        "imap_reimport",
        include_str!("../../../migrations/sqlite/0018_imap_reimport.sql"),
    ),
    (
        19,
        "conversation_views",
        include_str!("../../../migrations/sqlite/0019_conversation_views.sql"),
    ),
    (
        20,
        "inbox_relays_and_reply_files",
        include_str!("../../../migrations/sqlite/0020_inbox_relays_and_reply_files.sql"),
    ),
    (
        21,
        "routing_vip_contacts",
        include_str!("../../../migrations/sqlite/0021_routing_vip_contacts.sql"),
    ),
    (
        22,
        "ingest_blob_gc",
        include_str!("../../../migrations/sqlite/0022_ingest_blob_gc.sql"),
    ),
    (
        23,
        "search_documents",
        include_str!("../../../migrations/sqlite/0023_search_documents.sql"),
    ),
    (
        25,
        "notification_due_seq",
        include_str!("../../../migrations/sqlite/0025_notification_due_seq.sql"),
    ),
    (
        27,
        "notification_due_lease",
        include_str!("../../../migrations/sqlite/0027_notification_due_lease.sql"),
    ),
    (
        28,
        "routing_open_counts",
        include_str!("../../../migrations/sqlite/0028_routing_open_counts.sql"),
    ),
];

fn migrator(list: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        list.iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect(),
    )
}

/// The role the application acts as on PostgreSQL.
pub const APP_ROLE: &str = "postvak_app";

/// How to open a cell's database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// PostgreSQL: `SET ROLE` to this after connecting (default `postvak_app`); `None` when the
    /// login user already is the restricted role.
    pub app_role: Option<String>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            app_role: Some(APP_ROLE.to_owned()),
        }
    }
}

/// A SQLite database: one writer connection (SQLite has one writer at a time; queueing in the
/// pool beats `SQLITE_BUSY` retries) and a pool of readers (WAL lets them run beside it).
#[derive(Debug, Clone)]
pub struct SqliteDb {
    pub writer: SqlitePool,
    pub reader: SqlitePool,
}

/// A cell's database.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqliteDb),
}

/// A transaction on either backend; consumers write their effect and checkpoint in one.
#[derive(Debug)]
pub enum DbTx {
    Postgres(PgTx),
    Sqlite(Transaction<'static, Sqlite>),
}

/// A PostgreSQL transaction that knows which tenant `postvak.tenant_id` holds in it, so
/// that binding it to that tenant again costs no round trip (a consumer's batch binds every
/// event's tenant: mostly the same). Derefs to the connection, as a sqlx transaction does.
#[derive(Debug)]
pub struct PgTx {
    tx: Transaction<'static, Postgres>,
    tenant: Option<crate::store::TenantId>,
}

impl std::ops::Deref for PgTx {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }
}

impl PgTx {
    /// A transaction whose `BEGIN` already set `postvak.tenant_id` to `tenant` (in the same
    /// round trip, as [`Db::tenant_tx`] does).
    pub fn bound(tx: Transaction<'static, Postgres>, tenant: crate::store::TenantId) -> Self {
        Self {
            tx,
            tenant: Some(tenant),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl From<Transaction<'static, Postgres>> for PgTx {
    fn from(tx: Transaction<'static, Postgres>) -> Self {
        Self { tx, tenant: None }
    }
}

impl DbTx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
        .map_err(db_error)
    }

    /// Binds the transaction to `tenant`, arming row-level security on PostgreSQL for the
    /// rest of it (`set_config(…, true)`); a transaction already bound to `tenant` is left
    /// as it is, without a round trip. SQLite has no row-level security: nothing to do.
    pub async fn bind_tenant(&mut self, tenant: crate::store::TenantId) -> Result<(), StoreError> {
        if let Self::Postgres(t) = self
            && t.tenant != Some(tenant)
        {
            sqlx::query("SELECT set_config('postvak.tenant_id', $1, true)")
                .bind(tenant.0.to_string())
                .execute(&mut **t)
                .await
                .map_err(db_error)?;
            t.tenant = Some(tenant);
        }
        Ok(())
    }

    /// Ends a transaction that only read. It is rolled back, which for a read is the same as a
    /// commit, but without a round trip of its own: the `ROLLBACK` is queued on the connection
    /// and goes out with the pool's check of the connection on release, after the response
    /// is on its way (ADR 0029).
    pub fn end_read(self) {
        drop(self);
    }
}

/// A connection of either backend, borrowed from whatever holds it: a transaction
/// ([`DbTx`]) or a tenant's read connection ([`crate::reads::ReadTx`]).
#[derive(Debug)]
pub enum Conn<'a> {
    Postgres(&'a mut sqlx::PgConnection),
    Sqlite(&'a mut sqlx::SqliteConnection),
}

/// What [`on_tx!`] runs statements on.
pub trait AsConn {
    fn conn(&mut self) -> Conn<'_>;

    /// SQLite? (Where the SQL differs per backend.)
    fn is_sqlite(&mut self) -> bool {
        matches!(self.conn(), Conn::Sqlite(_))
    }
}

impl AsConn for DbTx {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(t) => Conn::Postgres(t),
            Self::Sqlite(t) => Conn::Sqlite(t),
        }
    }
}

impl<T: AsConn + ?Sized> AsConn for &mut T {
    fn conn(&mut self) -> Conn<'_> {
        (**self).conn()
    }
}

/// Runs the same statement on either backend's transaction (or read connection):
/// `on_tx!(tx, |c| sqlx::query(SQL).bind(x).execute(c).await)`. The SQL must suit both (write
/// `$1, $2, …` in order of first use: SQLite numbers named parameters by first appearance) and
/// every bound type must encode on both (uuid, text, i64, bool, bytes, options of those).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $crate::db::AsConn::conn($tx) {
            $crate::db::Conn::Postgres($c) => $body,
            $crate::db::Conn::Sqlite($c) => $body,
        }
    };
}

/// `$first, $first+1, …` (`n` of them), for an `IN (…)` list on SQLite (PostgreSQL takes one
/// array parameter instead, `= ANY($n)`: one statement text whatever the length, ADR 0031).
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Sqlite,
}

pub fn kind_of(url: &str) -> Result<DbKind, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DbKind::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(DbKind::Sqlite)
    } else {
        Err(StoreError::Unavailable(format!(
            "database URL must start with postgres:// or sqlite: (got {})",
            redact_url(url)
        )))
    }
}

/// A URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL {url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit survives power loss, which is what "250 only after it is stored" needs.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10)))
}

/// Without an explicit `sslmode`, sqlx prefers TLS, so a server with `ssl = on` encrypts even
/// loopback connections: a handshake per connection and every byte through the cipher, for a
/// link that never leaves the host (~3.5 % of ingest's CPU samples). On a loopback host with
/// no `sslmode` in the URL, connect in plaintext; an explicit `sslmode` is always obeyed.
fn plaintext_on_loopback(connect: PgConnectOptions, url: &str) -> PgConnectOptions {
    let explicit = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("sslmode=")));
    let host = connect.get_host();
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && !explicit {
        connect.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        connect
    }
}

/// Opens the application pool of a cell's database (no migrations).
pub async fn connect(url: &str, opts: &DbOptions) -> Result<Db, StoreError> {
    match kind_of(url)? {
        DbKind::Postgres => {
            let connect = PgConnectOptions::from_str(url)
                .map_err(|e| {
                    StoreError::Unavailable(format!("bad PostgreSQL URL {}: {e}", redact_url(url)))
                })?
                .application_name("postvak");
            let connect = plaintext_on_loopback(connect, url);
            let role = opts.app_role.clone();
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                // sqlx pings a pooled connection before every use by default: one round trip
                // more per query. A broken connection fails the query instead, which is
                // retried or answered 503 like any other outage.
                .test_before_acquire(false)
                .acquire_timeout(opts.connect_timeout)
                .after_connect(move |conn, _| {
                    let role = role.clone();
                    Box::pin(async move {
                        if let Some(role) = role {
                            // The role name is ours (config), quoted as an identifier.
                            let sql = format!("SET ROLE \"{}\"", role.replace('"', "\"\""));
                            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(connect)
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot connect to PostgreSQL at {}: {e}",
                        redact_url(url)
                    ))
                })?;
            Ok(Db::Postgres(pool))
        }
        DbKind::Sqlite => {
            let o = sqlite_options(url)?;
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(o.clone())
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot open {url}: {e}")))?;
            let reader = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.clamp(1, 8))
                .acquire_timeout(opts.connect_timeout)
                .connect_with(o)
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot open {url}: {e}")))?;
            Ok(Db::Sqlite(SqliteDb { writer, reader }))
        }
    }
}

/// Runs pending migrations as the connecting (owner) user. Idempotent.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    migrate_up_to(url, i64::MAX).await
}

/// [`migrate`], stopping after migration `last`: for tests of a migration over data the
/// schema before it held.
#[doc(hidden)]
pub async fn migrate_up_to(url: &str, last: i64) -> Result<(), StoreError> {
    let upto = |list: &'static [(i64, &'static str, &'static str)]| {
        &list[..list.iter().take_while(|(v, _, _)| *v <= last).count()]
    };
    match kind_of(url)? {
        DbKind::Postgres => {
            let mut conn = PgConnectOptions::from_str(url)
                .map_err(|e| {
                    StoreError::Unavailable(format!("bad PostgreSQL URL {}: {e}", redact_url(url)))
                })?
                .connect()
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot connect to PostgreSQL at {}: {e}",
                        redact_url(url)
                    ))
                })?;
            migrator(upto(POSTGRES_MIGRATIONS))
                .run(&mut conn)
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            conn.close().await.map_err(db_error)
        }
        DbKind::Sqlite => {
            let mut conn = sqlite_options(url)?
                .connect()
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot open {url}: {e}")))?;
            migrator(upto(SQLITE_MIGRATIONS))
                .run(&mut conn)
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            conn.close().await.map_err(db_error)
        }
    }
}

impl Db {
    pub async fn begin(&self) -> Result<DbTx, StoreError> {
        match self {
            Self::Postgres(p) => p.begin().await.map(|t| DbTx::Postgres(t.into())),
            Self::Sqlite(s) => s.writer.begin().await.map(DbTx::Sqlite),
        }
        .map_err(db_error)
    }

    /// A transaction bound to `tenant`. On PostgreSQL it sets `postvak.tenant_id` for the
    /// transaction, which row-level security checks on every tenant table (the second wall
    /// behind each query's own `tenant_id` condition). `write = false` on SQLite reads from the
    /// reader pool instead of queueing behind the single writer.
    pub async fn tenant_tx(
        &self,
        tenant: crate::store::TenantId,
        write: bool,
    ) -> Result<DbTx, StoreError> {
        match self {
            Self::Postgres(p) => {
                // BEGIN and the tenant setting in one round trip (one simple-query message):
                // every request pays for this, reads included. The tenant id is a UUID printed
                // by `Uuid`'s Display (hex and hyphens), so it is safe inside the literal.
                let sql = format!(
                    "BEGIN; SELECT set_config('postvak.tenant_id', '{}', true)",
                    tenant.0.hyphenated()
                );
                let tx = p
                    .begin_with(sqlx::AssertSqlSafe(sql))
                    .await
                    .map_err(db_error)?;
                Ok(DbTx::Postgres(PgTx::bound(tx, tenant)))
            }
            // A write transaction takes SQLite's write lock at BEGIN (waiting up to the busy
            // timeout): a deferred one that reads first (a stream's version) and writes later
            // fails at once with SQLITE_BUSY if another process wrote in between.
            Self::Sqlite(s) if write => s
                .writer
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map(DbTx::Sqlite)
                .map_err(db_error),
            Self::Sqlite(s) => s.reader.begin().await.map(DbTx::Sqlite).map_err(db_error),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            Self::Sqlite(s) => sqlx::query("SELECT 1").execute(&s.reader).await.map(|_| ()),
        }
        .map_err(db_error)
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Sqlite(s) => {
                s.writer.close().await;
                s.reader.close().await;
            }
        }
    }
}

/// Maps a sqlx error to a store error: connection trouble is `Unavailable`, the rest `Database`.
pub fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::postgres::PgSslMode;

    fn mode(url: &str) -> PgSslMode {
        plaintext_on_loopback(PgConnectOptions::from_str(url).unwrap(), url).get_ssl_mode()
    }

    #[test]
    fn loopback_without_sslmode_is_plaintext_and_an_explicit_sslmode_wins() {
        assert!(matches!(
            mode("postgres://u@127.0.0.1:5432/d"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@localhost/d"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@[::1]:5432/d"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/d?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.internal/d"),
            PgSslMode::Prefer
        ));
        assert!(matches!(mode("postgres://u@10.0.0.5/d"), PgSslMode::Prefer));
    }
}
