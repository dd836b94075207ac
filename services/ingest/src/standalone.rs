//! One cell over one database, without the rest of the binary: for the stand-alone SMTP
//! daemon (`postvak-ingest-smtpd`), the benchmark and tests.

use anyhow::Context;
use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::cell::{Cell, Cells};
use postvak_platform::crypto::MasterKey;
use postvak_platform::db::{self, DbKind, DbOptions};
use postvak_platform::store;
use std::sync::Arc;

/// The cell's name.
pub const CELL: &str = "local";

/// Opens (and with `migrate`, migrates) the database at `url` as the only cell, which also
/// holds the global directory; the bus is in-process.
pub async fn open_cells(url: &str, master: MasterKey, migrate: bool) -> anyhow::Result<Cells> {
    let kind = db::kind_of(url)?;
    if migrate {
        db::migrate(url).await.context("migrating")?;
    }
    let opts = DbOptions {
        max_connections: 32,
        app_role: match kind {
            DbKind::Postgres => Some(db::APP_ROLE.to_owned()),
            DbKind::Sqlite => None,
        },
        ..DbOptions::default()
    };
    let store = store::open_store(url, &opts, master)
        .await
        .context("opening the event store")?;
    let directory = store.db().clone();
    let bus = Arc::new(InProcessBus::new(store.clone()));
    Ok(Cells::new(
        vec![Cell {
            name: CELL.to_owned(),
            region: None,
            store,
            bus,
        }],
        CELL,
        directory,
    )?)
}
