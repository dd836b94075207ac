//! Building and running the application: open every cell (store + bus), wire the services,
//! serve HTTP, run background work, and drain it all on shutdown.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use postvak_directory::Directory;
use postvak_platform::auth::SharedAuthenticator;
use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::bus::{Bus, BusKind};
use postvak_platform::cell::{Cell, Cells};
use postvak_platform::config::Config;
use postvak_platform::db::{self, Db, DbOptions};
use postvak_platform::store::{self, EventStore};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every service in one process (`postvak serve`).
    All,
    /// The directory API (`postvak run directory`).
    Directory,
    /// Only the relay from each cell's event store to its bus (`postvak run relay`).
    Relay,
    /// Inbound mail: the SMTP listener, the raw-MIME endpoint and the IMAP connector
    /// (`postvak run ingest`).
    Ingest,
    /// Conversations: the agent API and the consumers that open and update conversations
    /// (`postvak run conversation`).
    Conversation,
    /// Replies out through the SMTP relay, webhooks, agent notifications
    /// (`postvak run notification`).
    Notification,
    /// Rules, assignment, availability, SLA timers and metrics (`postvak run routing`).
    Routing,
    /// The conversation API alone, without consumers or workers (`postvak bench api`).
    Api,
}

/// The notification service's settings from `[outbound_smtp]` and `[webhooks]`.
pub fn notification_settings(
    cfg: &Config,
) -> anyhow::Result<postvak_notification::NotificationSettings> {
    Ok(postvak_notification::NotificationSettings {
        outbound_smtp: cfg.section("outbound_smtp")?,
        webhooks: cfg.section("webhooks")?,
    })
}

/// The SMTP listener's settings from the `[smtp]` section; by default it listens on loopback
/// only, so trying Postvak out never opens a mail port to the network.
pub fn smtp_settings(cfg: &Config) -> anyhow::Result<postvak_ingest::SmtpSettings> {
    let mut s: postvak_ingest::SmtpSettings = cfg.section("smtp")?;
    if s.addr == postvak_ingest::SmtpSettings::default().addr {
        s.addr = "127.0.0.1:2525".to_owned();
    }
    Ok(s)
}

/// Opens every configured cell. `migrate` runs pending migrations first (always done for
/// SQLite files, which belong to this process).
pub async fn open_cells(cfg: &Config, migrate: bool) -> anyhow::Result<Cells> {
    let master = cfg.master_key()?;
    let mut cells = Vec::new();
    let mut directory: Option<Db> = None;
    let directory_url = cfg.directory_url()?;
    for (name, c) in cfg.effective_cells() {
        let url = c.database_url.expose();
        let is_sqlite = db::kind_of(url)? == db::DbKind::Sqlite;
        if is_sqlite {
            ensure_parent_dir(url)?;
        }
        if migrate || is_sqlite {
            db::migrate(url)
                .await
                .with_context(|| format!("migrating cell {name}"))?;
        }
        let opts = DbOptions {
            max_connections: c.max_connections,
            app_role: match c.app_role.as_deref() {
                Some("") => None,
                Some(r) => Some(r.to_owned()),
                None if is_sqlite => None,
                None => Some(db::APP_ROLE.to_owned()),
            },
            ..DbOptions::default()
        };
        let store = store::open_store(url, &opts, master.clone())
            .await
            .with_context(|| format!("opening cell {name}"))?;
        check_migrated(store.as_ref(), &name).await?;
        let bus: Arc<dyn Bus> = match &c.nats_url {
            Some(nats) => Arc::new(
                NatsBus::connect(nats, &cfg.bus.prefix, &name)
                    .await
                    .with_context(|| format!("connecting cell {name} to NATS"))?,
            ),
            None => Arc::new(InProcessBus::new(store.clone())),
        };
        if url == directory_url.expose() {
            directory = Some(store.db().clone());
        }
        cells.push(Cell {
            name,
            region: c.region.clone(),
            store,
            bus,
        });
    }
    let directory = match directory {
        Some(d) => d,
        None => {
            let url = directory_url.expose();
            if migrate || db::kind_of(url)? == db::DbKind::Sqlite {
                db::migrate(url)
                    .await
                    .context("migrating the directory database")?;
            }
            db::connect(url, &DbOptions::default())
                .await
                .context("opening the directory database")?
        }
    };
    Ok(Cells::new(cells, &cfg.default_cell_name(), directory)?)
}

fn ensure_parent_dir(sqlite_url: &str) -> anyhow::Result<()> {
    let path = sqlite_url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Ok(())
}

/// A clear message instead of "relation does not exist" on first query.
async fn check_migrated(store: &dyn EventStore, cell: &str) -> anyhow::Result<()> {
    match store
        .stream_version(
            postvak_platform::store::TenantId(uuid::Uuid::nil()),
            &postvak_platform::store::StreamRef::new("probe", "probe"),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e @ postvak_platform::store::StoreError::Unavailable(_)) => Err(e.into()),
        Err(e) => anyhow::bail!(
            "cell {cell}: the database is not migrated or not readable ({e}); run `postvak migrate`"
        ),
    }
}

/// The running application.
pub struct Application {
    server: actix_web::dev::Server,
    port: u16,
    smtp_port: Option<u16>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    cells: Cells,
    grace: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish()
    }
}

impl Application {
    /// Binds the HTTP listener (port 0 picks a free port) and starts background work.
    pub async fn build(cfg: &Config, cells: Cells, role: Role) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&cfg.http.addr)
            .with_context(|| format!("binding HTTP on {}", cfg.http.addr))?;
        let port = listener.local_addr()?.port();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let directory = Directory::new(cells.clone());
        let authenticator: SharedAuthenticator = Arc::new(directory.clone());

        if matches!(role, Role::All | Role::Relay) {
            // The in-process bus reads the log itself (ADR 0002): only NATS needs a relay.
            for cell in cells.all().filter(|c| c.bus.kind() == BusKind::Nats) {
                spawn_relay(&mut tasks, cell, cancel.clone());
            }
        }

        let smtp_port = if matches!(role, Role::All | Role::Ingest) {
            let settings = smtp_settings(cfg)?;
            let addr = settings.addr.clone();
            let smtp = postvak_ingest::smtp::SmtpServer::bind(settings, cells.clone())
                .await
                .with_context(|| format!("binding SMTP on {addr}"))?;
            let port = smtp.port();
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = smtp.run(stop).await {
                    tracing::error!(error = %e, "SMTP listener stopped");
                }
            });
            Some(port)
        } else {
            None
        };

        // IMAP accounts (`[imap]`): one supervisor per cell syncing every enabled account.
        let imap_settings: postvak_ingest::ImapSettings = cfg.section("imap")?;
        if matches!(role, Role::All | Role::Ingest) && imap_settings.enabled {
            let connector = postvak_ingest::imap::ImapConnector::new(
                postvak_ingest::Ingestor::new(cells.clone()),
                imap_settings.clone(),
            )?;
            for handle in connector.start(&cells, cancel.clone()) {
                tasks.spawn(async move {
                    if let Err(e) = handle.await {
                        tracing::error!(error = %e, "IMAP supervisor ended abnormally");
                    }
                });
            }
        }

        // Blob garbage collection (`[blob_gc]`): one sweeper per cell (ADR 0021).
        let gc_settings: postvak_ingest::BlobGcSettings = cfg.section("blob_gc")?;
        if matches!(role, Role::All | Role::Ingest) && gc_settings.enabled {
            let sweeper = postvak_ingest::gc::BlobSweeper::new(
                postvak_ingest::Ingestor::new(cells.clone()),
                gc_settings,
            );
            for handle in sweeper.start(&cells, cancel.clone()) {
                tasks.spawn(async move {
                    if let Err(e) = handle.await {
                        tracing::error!(error = %e, "blob sweeper ended abnormally");
                    }
                });
            }
        }

        if matches!(role, Role::All | Role::Conversation) {
            for cell in cells.all() {
                for handle in
                    postvak_conversation::start_consumers(&cells, cell.clone(), cancel.clone())
                {
                    tasks.spawn(async move {
                        if let Err(e) = handle.await {
                            tracing::error!(error = %e, "conversation worker ended abnormally");
                        }
                    });
                }
                for handle in postvak_conversation::suggest::start(
                    &cells,
                    cell.clone(),
                    cfg.section("draft_providers")?,
                    cancel.clone(),
                ) {
                    tasks.spawn(async move {
                        if let Err(e) = handle.await {
                            tracing::error!(error = %e, "draft provider worker ended abnormally");
                        }
                    });
                }
            }
        }

        // The search index's pending list, merged off the write path wherever conversations
        // are written (ADR 0036).
        if matches!(role, Role::All | Role::Conversation | Role::Api) {
            let settings: postvak_conversation::search_merge::SearchIndexSettings =
                cfg.section("search_index")?;
            for handle in
                postvak_conversation::search_merge::start(&cells, &settings, cancel.clone())
            {
                tasks.spawn(async move {
                    if let Err(e) = handle.await {
                        tracing::error!(error = %e, "search index merger ended abnormally");
                    }
                });
            }
        }

        if matches!(role, Role::All | Role::Notification) {
            let settings = notification_settings(cfg)?;
            for cell in cells.all() {
                for handle in postvak_notification::start(
                    &cells,
                    cell.clone(),
                    settings.clone(),
                    cancel.clone(),
                ) {
                    tasks.spawn(async move {
                        if let Err(e) = handle.await {
                            tracing::error!(error = %e, "notification worker ended abnormally");
                        }
                    });
                }
            }
        }

        if matches!(role, Role::All | Role::Routing) {
            for cell in cells.all() {
                for handle in postvak_routing::start(&cells, cell.clone(), cancel.clone()).await {
                    tasks.spawn(async move {
                        if let Err(e) = handle.await {
                            tracing::error!(error = %e, "routing worker ended abnormally");
                        }
                    });
                }
            }
        }

        let _ = postvak_platform::telemetry::prometheus();
        let cells_data = web::Data::new(cells.clone());
        let directory_data = web::Data::new(directory);
        let auth_data = web::Data::new(authenticator);
        // One ingestor per process: it caches the tenants' index keys.
        let ingestor = web::Data::new(postvak_ingest::Ingestor::new(cells.clone()));
        let platform_token = web::Data::new(postvak_directory::api::PlatformAdminToken(
            cfg.security
                .platform_admin_token
                .as_ref()
                .filter(|t| !t.is_empty())
                .map(|t| t.expose().to_owned()),
        ));
        let serve_api = matches!(role, Role::All | Role::Directory | Role::Api);
        let sso = web::Data::new(
            postvak_directory::sso::Sso::new(cfg.http.public_url.as_deref())
                .map_err(|e| anyhow::anyhow!("http.public_url: {e}"))?,
        );
        let serve_ingest = matches!(role, Role::All | Role::Ingest);
        let serve_conversations = matches!(role, Role::All | Role::Conversation | Role::Api);
        let serve_notifications = matches!(role, Role::All | Role::Notification);
        let serve_routing = matches!(role, Role::All | Role::Routing);
        let raw_settings: postvak_ingest::RawApiSettings = cfg.section("raw_api")?;
        let webhook_policy = postvak_notification::ssrf::DestinationPolicy::new(
            &notification_settings(cfg)?.webhooks.allow_private,
        )
        .map_err(|e| anyhow::anyhow!("webhooks.allow_private: {e}"))?;
        let relay_policy = postvak_notification::relays::RelayPolicy::new(
            &notification_settings(cfg)?.outbound_smtp.allow_private,
        )
        .map_err(|e| anyhow::anyhow!("outbound_smtp.allow_private: {e}"))?;
        let provider_policy = web::Data::new(postvak_conversation::suggest::ProviderPolicy(
            postvak_platform::netguard::AddressPolicy::new(
                &cfg.section::<postvak_conversation::suggest::SuggestSettings>("draft_providers")?
                    .allow_private,
            )
            .map_err(|e| anyhow::anyhow!("draft_providers.allow_private: {e}"))?,
        ));
        let mut server = HttpServer::new(move || {
            let app = App::new()
                .wrap(from_fn(observe))
                .app_data(cells_data.clone())
                .app_data(directory_data.clone())
                .app_data(auth_data.clone())
                .app_data(platform_token.clone())
                .app_data(sso.clone())
                .app_data(ingestor.clone())
                .app_data(provider_policy.clone())
                .app_data(postvak_platform::http::json_config())
                .app_data(postvak_platform::http::query_config())
                .app_data(postvak_platform::http::path_config())
                .configure(postvak_platform::http::operational_routes)
                .route("/openapi.json", web::get().to(openapi_json))
                .default_service(web::to(not_found));
            let app = if serve_api {
                app.configure(postvak_directory::api::routes)
                    .configure(postvak_directory::sso::routes)
            } else {
                app
            };
            let app = if serve_ingest {
                app.configure(postvak_ingest::api::routes_with(raw_settings.clone()))
                    .configure(postvak_ingest::imap::api::routes_with(
                        imap_settings.clone(),
                    ))
            } else {
                app
            };
            let app = if serve_conversations {
                app.configure(postvak_conversation::api::routes)
            } else {
                app
            };
            let app = if serve_notifications {
                app.configure(postvak_notification::api::routes_with_policies(
                    webhook_policy.clone(),
                    relay_policy.clone(),
                ))
            } else {
                app
            };
            if serve_routing {
                app.configure(postvak_routing::routes)
            } else {
                app
            }
        })
        .listen(listener)?
        .shutdown_timeout(cfg.http.shutdown_grace_secs);
        if let Some(w) = cfg.http.workers {
            server = server.workers(w);
        }
        Ok(Self {
            server: server.run(),
            port,
            smtp_port,
            cancel,
            tasks,
            cells,
            grace: Duration::from_secs(cfg.http.shutdown_grace_secs),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SMTP port, when this process receives mail.
    pub fn smtp_port(&self) -> Option<u16> {
        self.smtp_port
    }

    pub fn cells(&self) -> &Cells {
        &self.cells
    }

    /// Serves until SIGINT/SIGTERM, then drains: HTTP requests in flight finish, background
    /// work finishes its current batch, within the grace period.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let result = self.server.await;
        tracing::info!("HTTP stopped; draining background work");
        // SMTP stops taking mail; sessions in the middle of a delivery finish it first.
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!("background work did not finish within the grace period");
            self.tasks.abort_all();
        }
        for cell in self.cells.all() {
            cell.store.db().close().await;
        }
        result.context("HTTP server")
    }
}

fn spawn_relay(tasks: &mut JoinSet<()>, cell: &Arc<Cell>, cancel: CancellationToken) {
    let cell = cell.clone();
    tasks.spawn(async move {
        let options = postvak_platform::relay::RelayOptions::new(cell.name.clone());
        if let Err(e) = postvak_platform::relay::run_relay(
            cell.store.clone(),
            cell.bus.clone(),
            options,
            cancel,
        )
        .await
        {
            tracing::error!(cell = %cell.name, error = %e, "relay stopped");
        }
    });
}

async fn openapi_json() -> HttpResponse {
    match crate::openapi::json() {
        Ok(doc) => HttpResponse::Ok()
            .content_type("application/json")
            .body(doc),
        Err(e) => actix_web::ResponseError::error_response(
            &postvak_platform::http::ApiError::internal(&e),
        ),
    }
}

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&postvak_platform::http::ApiError::not_found())
}

/// Request metrics and a span per request.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("http", %method, %route);
    let res = tracing::Instrument::instrument(next.call(req), span).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let elapsed = start.elapsed();
    metrics::counter!("postvak_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!("postvak_http_request_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    tracing::debug!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
    res
}
