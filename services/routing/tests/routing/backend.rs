//! The backends every routing test runs on: SQLite + the in-process bus (the embedded
//! default), PostgreSQL (row-level security armed) + the in-process bus, and PostgreSQL +
//! NATS JetStream with the relay publishing the log and commands as NATS request/reply — what
//! `postvak run <service>` uses in production. A missing PostgreSQL or NATS server fails the
//! test with a message saying so.

use postvak_ingest::standalone;
use postvak_platform::bus::Bus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::cell::{Cell, Cells};
use postvak_platform::db::{self, DbOptions};
use postvak_platform::store;
use postvak_platform::testkit;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    PostgresNats,
}

pub const BACKENDS: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::PostgresNats];

/// What a backend leaves behind until the test ends: the SQLite file's directory, or the
/// NATS stream (deleted on drop).
#[derive(Default)]
pub struct Scratch {
    _sqlite: Option<testkit::TempDir>,
    _nats: Option<NatsStream>,
}

impl Scratch {
    /// The JetStream stream of `prefix`, deleted at the end of the test.
    pub fn nats(prefix: &str) -> Self {
        Self {
            _sqlite: None,
            _nats: Some(NatsStream {
                prefix: prefix.to_owned(),
            }),
        }
    }
}

/// A test's JetStream stream, deleted when dropped.
pub struct NatsStream {
    prefix: String,
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        let name = postvak_proto::subjects::jetstream_name(&self.prefix, standalone::CELL);
        // Drop may run inside the test's runtime: clean up from a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(testkit::nats_url()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&name)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Opens a fresh database on `backend` with its bus (migrated); with NATS, the relay runs until
/// `cancel` fires.
pub async fn open(backend: Backend, cancel: &CancellationToken) -> (Cells, Scratch) {
    match backend {
        Backend::Sqlite => {
            let (tmp, url) = testkit::fresh_sqlite_database();
            let cells = standalone::open_cells(&url, testkit::master_key(), true)
                .await
                .unwrap();
            (
                cells,
                Scratch {
                    _sqlite: Some(tmp),
                    _nats: None,
                },
            )
        }
        Backend::Postgres => {
            let url = testkit::fresh_postgres_database().await;
            let cells = standalone::open_cells(&url, testkit::master_key(), true)
                .await
                .unwrap();
            (cells, Scratch::default())
        }
        Backend::PostgresNats => {
            let url = testkit::fresh_postgres_database().await;
            db::migrate(&url).await.unwrap();
            let opts = DbOptions {
                max_connections: 32,
                app_role: Some(db::APP_ROLE.to_owned()),
                ..DbOptions::default()
            };
            let store = store::open_store(&url, &opts, testkit::master_key())
                .await
                .unwrap();
            let prefix = testkit::unique_prefix();
            let bus: Arc<dyn Bus> = Arc::new(
                NatsBus::connect(&testkit::nats_url(), &prefix, standalone::CELL)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "NATS JetStream is required for this test and is not reachable at {}: {e}",
                            testkit::nats_url()
                        )
                    }),
            );
            tokio::spawn(postvak_platform::relay::run_relay(
                store.clone(),
                bus.clone(),
                postvak_platform::relay::RelayOptions::new(standalone::CELL),
                cancel.clone(),
            ));
            let directory = store.db().clone();
            let cells = Cells::new(
                vec![Cell {
                    name: standalone::CELL.to_owned(),
                    region: None,
                    store,
                    bus,
                }],
                standalone::CELL,
                directory,
            )
            .unwrap();
            (
                cells,
                Scratch {
                    _sqlite: None,
                    _nats: Some(NatsStream { prefix }),
                },
            )
        }
    }
}
