//! Cells and tenant contexts. A cell is one database plus one bus (a region); a process may
//! serve several. The global directory maps each tenant to exactly one cell. Service code
//! reaches a tenant's data only through a [`TenantContext`], which only authentication (or a
//! trusted internal path such as bootstrap and event consumers) creates.

use crate::bus::Bus;
use crate::db::Db;
use crate::store::{
    AppendOutcome, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamRef,
    TenantId,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// One cell: its event store (and database) and its bus.
#[derive(Debug)]
pub struct Cell {
    pub name: String,
    pub region: Option<String>,
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn Bus>,
}

impl Cell {
    pub fn db(&self) -> &Db {
        self.store.db()
    }

    /// Reads as `tenant`, for statements whose plan does not depend on their values (see
    /// [`crate::reads`]): a read connection on PostgreSQL, a read transaction on SQLite.
    pub async fn read_tx(
        &self,
        tenant: crate::store::TenantId,
    ) -> Result<crate::reads::ReadTx, crate::store::StoreError> {
        match self.store.reads() {
            Some(reads) => reads.acquire(tenant).await.map(crate::reads::ReadTx::Conn),
            None => self
                .db()
                .tenant_tx(tenant, false)
                .await
                .map(crate::reads::ReadTx::Tx),
        }
    }
}

/// Every cell this process serves, and the global directory's tenant → cell map.
#[derive(Clone)]
pub struct Cells {
    inner: Arc<CellsInner>,
}

struct CellsInner {
    cells: BTreeMap<String, Arc<Cell>>,
    default: String,
    directory: Db,
    placement: RwLock<HashMap<TenantId, String>>,
}

impl fmt::Debug for Cells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cells")
            .field("cells", &self.inner.cells.keys().collect::<Vec<_>>())
            .field("default", &self.inner.default)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("tenant {0} is not in the directory")]
    UnknownTenant(TenantId),
    #[error("tenant {tenant} lives in cell {cell}, which this process does not serve")]
    CellNotServed { tenant: TenantId, cell: String },
    #[error("cell {0} is not configured")]
    UnknownCell(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Cells {
    /// `directory` is the global directory database (which may be one of the cells' databases).
    pub fn new(cells: Vec<Cell>, default: &str, directory: Db) -> Result<Self, CellError> {
        let cells: BTreeMap<_, _> = cells
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        if !cells.contains_key(default) {
            return Err(CellError::UnknownCell(default.to_owned()));
        }
        Ok(Self {
            inner: Arc::new(CellsInner {
                cells,
                default: default.to_owned(),
                directory,
                placement: RwLock::new(HashMap::new()),
            }),
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Cell>> {
        self.inner.cells.values()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Cell>> {
        self.inner.cells.get(name).cloned()
    }

    pub fn default_cell(&self) -> Arc<Cell> {
        #[allow(clippy::expect_used)]
        self.get(&self.inner.default)
            .expect("the default cell is checked at construction")
    }

    pub fn directory(&self) -> &Db {
        &self.inner.directory
    }

    /// The cell a tenant lives in (cached; placement never changes under a running process
    /// except by a tenant move, which restarts the tenant's traffic).
    pub async fn cell_of(&self, tenant: TenantId) -> Result<Arc<Cell>, CellError> {
        let cached = read(&self.inner.placement).get(&tenant).cloned();
        let name = match cached {
            Some(n) => n,
            None => {
                let n = lookup_cell(&self.inner.directory, tenant)
                    .await?
                    .ok_or(CellError::UnknownTenant(tenant))?;
                write(&self.inner.placement).insert(tenant, n.clone());
                n
            }
        };
        self.get(&name)
            .ok_or(CellError::CellNotServed { tenant, cell: name })
    }

    /// Records that `tenant` lives in `cell` (idempotent for the same cell).
    pub async fn place_tenant(&self, tenant: TenantId, cell: &str) -> Result<(), CellError> {
        if !self.inner.cells.contains_key(cell) {
            return Err(CellError::UnknownCell(cell.to_owned()));
        }
        insert_placement(&self.inner.directory, tenant, cell).await?;
        write(&self.inner.placement).insert(tenant, cell.to_owned());
        Ok(())
    }

    /// A context for `tenant` acting as `principal`. Only authentication and trusted internal
    /// paths (bootstrap, consumers, CLI) call this.
    pub async fn context(
        &self,
        tenant: TenantId,
        principal: Principal,
    ) -> Result<TenantContext, CellError> {
        let cell = self.cell_of(tenant).await?;
        Ok(TenantContext {
            tenant,
            cell,
            principal,
        })
    }
}

async fn lookup_cell(db: &Db, tenant: TenantId) -> Result<Option<String>, StoreError> {
    use sqlx::Row;
    let row = match db {
        Db::Postgres(p) => sqlx::query("SELECT cell FROM tenant_cells WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_optional(p)
            .await
            .map(|r| r.map(|r| r.try_get::<String, _>(0))),
        Db::Sqlite(s) => sqlx::query("SELECT cell FROM tenant_cells WHERE tenant_id = ?1")
            .bind(tenant.0)
            .fetch_optional(&s.reader)
            .await
            .map(|r| r.map(|r| r.try_get::<String, _>(0))),
    }
    .map_err(crate::db::db_error)?;
    row.transpose().map_err(crate::db::db_error)
}

async fn insert_placement(db: &Db, tenant: TenantId, cell: &str) -> Result<(), StoreError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sql = "INSERT INTO tenant_cells (tenant_id, cell, placed_at) VALUES ($1, $2, $3) \
               ON CONFLICT (tenant_id) DO NOTHING";
    let done = match db {
        Db::Postgres(p) => sqlx::query(sql)
            .bind(tenant.0)
            .bind(cell)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Sqlite(s) => sqlx::query(sql)
            .bind(tenant.0)
            .bind(cell)
            .bind(now)
            .execute(&s.writer)
            .await
            .map(|_| ()),
    };
    done.map_err(crate::db::db_error)?;
    match lookup_cell(db, tenant).await? {
        Some(c) if c == cell => Ok(()),
        Some(c) => Err(StoreError::Database(format!(
            "tenant {tenant} already lives in cell {c}"
        ))),
        None => Err(StoreError::Database(format!(
            "placement of tenant {tenant} was not recorded"
        ))),
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        user_id: Uuid,
        role: postvak_core::access::TenantRole,
    },
    ApiKey {
        key_id: Uuid,
        scopes: Vec<String>,
    },
    /// A service acting on its own (consumers, timers, bootstrap).
    Service {
        name: &'static str,
    },
}

impl Principal {
    /// The `actor` written into event metadata.
    pub fn actor(&self) -> String {
        match self {
            Self::User { user_id, .. } => format!("user:{user_id}"),
            Self::ApiKey { key_id, .. } => format!("apikey:{key_id}"),
            Self::Service { name } => format!("service:{name}"),
        }
    }
}

/// A tenant bound to its cell and to who is acting. Every read and write of tenant data goes
/// through one, so a handler can't reach another tenant's streams by passing a bare id.
#[derive(Debug, Clone)]
pub struct TenantContext {
    tenant: TenantId,
    cell: Arc<Cell>,
    principal: Principal,
}

impl TenantContext {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Appends to one of this tenant's streams; the actor is recorded in each event's metadata.
    pub async fn append(
        &self,
        stream: &StreamRef,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let actor = self.principal.actor();
        for e in &mut events {
            if e.metadata.actor.is_none() {
                e.metadata.actor = Some(actor.clone());
            }
        }
        self.cell
            .store
            .append(self.tenant, stream, expected, events)
            .await
    }

    /// Reads one of this tenant's streams.
    pub async fn read_stream(&self, stream: &StreamRef) -> Result<Vec<RecordedEvent>, StoreError> {
        self.cell.store.read_stream(self.tenant, stream, 1).await
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
