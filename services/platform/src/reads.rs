//! Tenant read connections on PostgreSQL: a read in one round trip (ADR 0035).
//!
//! A read through the application pool pays three round trips: `BEGIN` with the tenant setting
//! that row-level security checks, the query, and the `ROLLBACK` that sqlx's pool sends with
//! its check of every connection it takes back. PostgreSQL also plans a list query again on
//! every execution: its generic plan looks dearer than a custom one, so it never settles on it.
//!
//! A [`PgReads`] keeps its own connections for reads (never for writes):
//! - each holds **one tenant's setting for the session** (`set_config(…, false)`, outside any
//!   transaction). A read for the tenant a connection was last set to sends only its query;
//!   one for another tenant first sets it again (one round trip, as `BEGIN` did). The statements
//!   run in autocommit: in READ COMMITTED each statement has its own snapshot either way.
//! - its sessions use **generic plans** (`plan_cache_mode = force_generic_plan`): a prepared
//!   statement is planned once per connection. Only statements whose plan does not depend on
//!   the values (index walks of a tenant's views, lookups by key) may run here; a search, whose
//!   best plan depends on how common its words are, goes through the pool.
//! - a connection goes back only through [`ReadTx::end_read`], after its statements completed.
//!   One dropped in the middle (an error, a cancelled request) is closed, never reused: no
//!   connection in an unknown state, or with a pending result, serves another read.
//! - they never return to the application pool, so no other code finds a tenant's setting on
//!   its connection.
//!
//! At most as many connections as the application pool allows, opened on demand; a connection
//! idle for [`IDLE`] is closed when next seen.

use crate::db::{AsConn, Conn, DbTx, db_error};
use crate::store::{StoreError, TenantId};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

/// An idle read connection is closed after this long.
pub const IDLE: Duration = Duration::from_secs(300);

/// A cell's read connections (PostgreSQL). Cheap to clone.
#[derive(Clone)]
pub struct PgReads {
    inner: Arc<Inner>,
}

struct Inner {
    /// The application pool: its connect options, bounds, and the role its sessions act as.
    pool: PgPool,
    connect: PgConnectOptions,
    /// `SET ROLE` target of a new session, learnt from the pool (`None`: the login role).
    role: OnceCell<Option<String>>,
    idle: Mutex<Vec<Idle>>,
    /// At most this many connections (the pool's bound), one permit each.
    max: usize,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
}

struct Idle {
    tenant: TenantId,
    conn: PgConnection,
    since: Instant,
}

impl std::fmt::Debug for PgReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReads")
            .field("idle", &self.idle_count())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl PgReads {
    /// Read connections beside `pool`, to the same database as the same role, as many at most.
    pub fn new(pool: &PgPool) -> Self {
        let max = pool.options().get_max_connections().max(1) as usize;
        Self {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                connect: (*pool.connect_options()).clone(),
                role: OnceCell::new(),
                idle: Mutex::new(Vec::new()),
                max,
                permits: Arc::new(Semaphore::new(max)),
                acquire_timeout: pool.options().get_acquire_timeout(),
            }),
        }
    }

    /// A connection reading as `tenant`: one last set to that tenant if one is idle, else
    /// another set to it (one round trip), else a new one. Waits for a free one up to the
    /// pool's acquire timeout.
    pub async fn acquire(&self, tenant: TenantId) -> Result<ReadConn, StoreError> {
        let permit = tokio::time::timeout(
            self.inner.acquire_timeout,
            self.inner.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| db_error(sqlx::Error::PoolTimedOut))?
        .map_err(|_| db_error(sqlx::Error::PoolClosed))?;
        let (conn, set_to) = match self.take_idle(tenant) {
            Some((conn, t)) => (conn, Some(t)),
            None => (self.open().await?, None),
        };
        let mut read = ReadConn {
            conn: Some(conn),
            tenant,
            home: self.inner.clone(),
            _permit: permit,
        };
        if set_to != Some(tenant) {
            // A failure drops `read`: the connection is closed, not reused.
            let c = read
                .conn
                .as_mut()
                .ok_or(StoreError::Unavailable("read connection missing".into()))?;
            sqlx::query("SELECT set_config('postvak.tenant_id', $1, false)")
                .bind(tenant.0.hyphenated().to_string())
                .execute(&mut *c)
                .await
                .map_err(db_error)?;
        }
        Ok(read)
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Connections handed out and not yet back.
    pub fn in_use(&self) -> usize {
        self.inner
            .max
            .saturating_sub(self.inner.permits.available_permits())
    }

    /// The most recently used idle connection of `tenant`, else the most recently used one of
    /// any tenant (with the tenant it is set to). Connections idle too long are closed.
    fn take_idle(&self, tenant: TenantId) -> Option<(PgConnection, TenantId)> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.inner.idle.lock().ok()?;
            let now = Instant::now();
            let mut i = 0;
            while i < idle.len() {
                if now.duration_since(idle[i].since) > IDLE {
                    stale.push(idle.swap_remove(i).conn);
                } else {
                    i += 1;
                }
            }
            let at = idle
                .iter()
                .rposition(|c| c.tenant == tenant)
                .or_else(|| idle.len().checked_sub(1));
            at.map(|i| {
                let c = idle.remove(i);
                (c.conn, c.tenant)
            })
        };
        for c in stale {
            close_later(c);
        }
        found
    }

    /// A new session: the pool's role, generic plans.
    async fn open(&self) -> Result<PgConnection, StoreError> {
        let role = self
            .inner
            .role
            .get_or_try_init(|| async {
                // The pool's sessions `SET ROLE` after connecting (db::connect): a read session
                // acts as the same role, so the same row-level security applies.
                let (current, session): (String, String) =
                    sqlx::query_as("SELECT current_user::text, session_user::text")
                        .fetch_one(&self.inner.pool)
                        .await
                        .map_err(db_error)?;
                Ok::<_, StoreError>((current != session).then_some(current))
            })
            .await?
            .clone();
        let mut conn =
            tokio::time::timeout(self.inner.acquire_timeout, self.inner.connect.connect())
                .await
                .map_err(|_| db_error(sqlx::Error::PoolTimedOut))?
                .map_err(db_error)?;
        let mut setup = String::from("SET plan_cache_mode = force_generic_plan");
        if let Some(role) = role {
            // The role name comes from the database (current_user), quoted as an identifier.
            setup.push_str(&format!("; SET ROLE \"{}\"", role.replace('"', "\"\"")));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        Ok(conn)
    }
}

/// Closes a connection (with PostgreSQL's Terminate message) off the caller's path.
fn close_later(conn: PgConnection) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = conn.close().await;
        });
    }
}

/// A read connection set to one tenant. Back to its [`PgReads`] only by [`Self::finish`]; dropped
/// otherwise, it is closed.
pub struct ReadConn {
    conn: Option<PgConnection>,
    tenant: TenantId,
    home: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for ReadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadConn")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl ReadConn {
    /// Back to the idle connections, set to this tenant. Only after every statement completed:
    /// the connection then has nothing pending.
    pub fn finish(mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match self.home.idle.lock() {
            Ok(mut idle) => idle.push(Idle {
                tenant: self.tenant,
                conn,
                since: Instant::now(),
            }),
            Err(_) => close_later(conn),
        }
    }

    fn connection(&mut self) -> &mut PgConnection {
        // Only `finish` and `drop` take it, and both consume the ReadConn.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a ReadConn holds its connection until it ends"))
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            close_later(conn);
        }
    }
}

/// A tenant's reads: one of its read connections on PostgreSQL (when the cell has them), else
/// a read transaction (SQLite's reader pool; the application pool otherwise).
#[derive(Debug)]
pub enum ReadTx {
    Conn(ReadConn),
    Tx(DbTx),
}

impl ReadTx {
    /// Ends the reads: the connection goes back for the next read (a transaction is rolled
    /// back, which for reads is the same as a commit).
    pub fn end_read(self) {
        match self {
            Self::Conn(c) => c.finish(),
            Self::Tx(t) => t.end_read(),
        }
    }
}

impl AsConn for ReadConn {
    fn conn(&mut self) -> Conn<'_> {
        Conn::Postgres(self.connection())
    }
}

impl AsConn for ReadTx {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Conn(c) => c.conn(),
            Self::Tx(t) => t.conn(),
        }
    }
}
