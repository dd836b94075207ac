//! The command line.

use crate::startup::{self, Application, Role};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use postvak_directory::Directory;
use postvak_platform::config::Config;
use postvak_platform::store::TenantId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "postvak",
    version,
    about = "Multi-tenant, event-sourced shared-inbox backend"
)]
pub struct Cli {
    /// TOML configuration file (env `POSTVAK_*` overrides it). Without one: the embedded
    /// default (SQLite under ./data, in-process bus).
    #[arg(long, short, global = true, env = "POSTVAK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process (the default command).
    Serve {
        /// Run pending database migrations first (always done for SQLite).
        #[arg(long)]
        migrate: bool,
    },
    /// Run one service (Kubernetes: one Deployment per service and cell).
    Run {
        #[arg(value_enum)]
        service: Service,
    },
    /// Run pending migrations on every cell's database and the directory database.
    Migrate,
    /// Audit tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the OpenAPI document.
    Openapi {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fail (exit 1) if this file differs from the generated document.
        #[arg(long, conflicts_with = "out")]
        check: Option<PathBuf>,
    },
    /// Benchmarks (figures, never pass/fail).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Service {
    /// The directory API (tenants, inboxes, API keys) and authentication.
    Directory,
    /// The relay from each cell's event store to its NATS bus.
    Relay,
    /// Inbound mail: the SMTP listener and the raw-MIME endpoint.
    Ingest,
    /// Conversations: the agent API and the consumers behind it.
    Conversation,
    /// Replies out through the SMTP relay, webhooks and agent notifications.
    Notification,
    /// Routing: rules, assignment, agent availability, SLA timers and metrics.
    Routing,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every stream's hash chain; exit 1 if anything was modified, deleted or reordered.
    Verify {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<Uuid>,
        /// Only this cell.
        #[arg(long)]
        cell: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a tenant; prints its id.
    CreateTenant {
        #[arg(long)]
        name: String,
        #[arg(long)]
        cell: Option<String>,
    },
    /// Create an inbox for a tenant; prints its id.
    CreateInbox {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        name: String,
        /// Repeat for aliases; the first is the sending address.
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
    },
    /// Issue an API key for a tenant; prints the token once.
    IssueKey {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long, default_value = "cli")]
        name: String,
        /// read, write or admin; repeatable.
        #[arg(long = "scope", default_value = "admin")]
        scopes: Vec<String>,
    },
    /// Rebuild a tenant's directory and contact read models from its events (conversations'
    /// senders and recipients are filed as contacts again).
    RebuildProjections {
        #[arg(long)]
        tenant: Uuid,
    },
    /// Print a new random master key (base64) for `security.master_key`.
    GenKey,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Event store: appends (16 writers; batches of 100) and replay, beside raw SQL baselines
    /// measured in the same run on the same database.
    Store {
        /// A PostgreSQL URL (a scratch database is created on that server and dropped after),
        /// or a SQLite path (`sqlite:path`; a directory gets a fresh file).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        target: String,
        /// Seconds each write measurement runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Inbound mail: SMTP clients on loopback into the store; mails/s sustained and p99 time to
    /// 250 at a fixed rate.
    Ingest {
        /// PostgreSQL server URLs and/or `sqlite`; each is measured in a scratch database.
        #[arg(long = "target", default_values = ["postgres://postgres@127.0.0.1:5432/postgres", "sqlite"])]
        targets: Vec<String>,
        /// Concurrent SMTP clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of the throughput measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Mails per second of the latency measurement.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// NATS server the relay publishes to beside the listener, for PostgreSQL targets as
        /// in production; `none` measures without a relay.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
    /// Outbound mail to a local SMTP sink and webhook deliveries to a local receiver.
    Notification {
        /// A PostgreSQL server URL (a scratch database is created and dropped) or `sqlite`.
        #[arg(long, default_value = "sqlite")]
        target: String,
        #[arg(long, default_value_t = 1_000)]
        mails: usize,
        #[arg(long, default_value_t = 1_000)]
        webhooks: usize,
    },
    /// The agent API under `wrk` against a tenant with many conversations: list (first page,
    /// filtered), get, reply — p50/p99 and requests/s, beside `/healthz` as the baseline.
    Api {
        /// A PostgreSQL server URL (a scratch database is created; dropped unless `--keep`) or
        /// `sqlite`.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        target: String,
        /// Conversations seeded (about 9 events each).
        #[arg(long, default_value_t = 1_000_000)]
        conversations: u64,
        /// Seconds per measured scenario.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections of the read scenarios.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Connections of the reply scenario.
        #[arg(long, default_value_t = 4)]
        reply_connections: u32,
        /// Conversations written at once while seeding.
        #[arg(long, default_value_t = 16)]
        seed_concurrency: usize,
        /// Keep the seeded database; write how to reach it (secrets inside, mode 0600) here.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Measure a database kept by an earlier `--keep FILE` instead of seeding.
        #[arg(long, conflicts_with = "keep")]
        reuse: Option<PathBuf>,
        /// Run only these scenarios (comma-separated: baseline, list, get, reply), e.g. to
        /// profile one of them.
        #[arg(long, value_delimiter = ',', default_value = "baseline,list,get,reply")]
        only: Vec<crate::bench_api::Scenario>,
        /// `[search_index] merge_every_ms` of the measured server (0: writes merge the search
        /// index's pending list themselves, PostgreSQL's default), to compare the two.
        #[arg(long, default_value_t = 1_000)]
        search_merge_every_ms: u64,
    },
    /// Routing in distributed mode (relay, ingest, conversation, routing as separate processes
    /// on PostgreSQL + NATS): from a mail's SMTP 250 to the conversation visible as assigned by
    /// a round-robin rule (SSE + GET), p50/p99 at a fixed rate.
    Routing {
        /// A PostgreSQL server URL: a scratch database is created and dropped after.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        target: String,
        /// The NATS server (a unique stream prefix is used and its stream deleted after).
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Mails per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Agents in the round-robin team.
        #[arg(long, default_value_t = 8)]
        agents: usize,
        /// SMTP connections the mails are spread over.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// `[search_index] merge_every_ms` of the measured processes (0: writes merge the
        /// search index's pending list themselves), to compare settings.
        #[arg(long, default_value_t = 1_000)]
        search_merge_every_ms: u64,
    },
    /// Authentication and permission checks per request: p50/p99 latency.
    Auth {
        /// A PostgreSQL server URL (a scratch database is created and dropped) or `sqlite`.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        target: String,
        /// Calls per measurement.
        #[arg(long, default_value_t = 5_000)]
        calls: usize,
    },
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let cfg = Config::load(path)?;
    // Sections owned by other crates are checked now, so a typo fails every command at once.
    startup::smtp_settings(&cfg)?;
    cfg.section::<postvak_ingest::RawApiSettings>("raw_api")?;
    cfg.section::<postvak_ingest::ImapSettings>("imap")?;
    cfg.section::<postvak_ingest::BlobGcSettings>("blob_gc")?;
    cfg.section::<postvak_conversation::search_merge::SearchIndexSettings>("search_index")?;
    startup::notification_settings(&cfg)?;
    Ok(cfg)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = load(cli.config.as_deref())?;
    let command = cli.command.unwrap_or(Command::Serve { migrate: false });
    match command {
        Command::Serve { migrate } => {
            let _telemetry = postvak_platform::telemetry::init(&cfg.telemetry)?;
            serve(&cfg, migrate, Role::All).await?;
        }
        Command::Run { service } => {
            let _telemetry = postvak_platform::telemetry::init(&cfg.telemetry)?;
            let role = match service {
                Service::Directory => Role::Directory,
                Service::Relay => Role::Relay,
                Service::Ingest => Role::Ingest,
                Service::Conversation => Role::Conversation,
                Service::Notification => Role::Notification,
                Service::Routing => Role::Routing,
            };
            serve(&cfg, false, role).await?;
        }
        Command::Migrate => {
            startup::open_cells(&cfg, true).await?;
            println!("migrations are up to date");
        }
        Command::Audit {
            command: AuditCommand::Verify { tenant, cell },
        } => return audit_verify(&cfg, tenant, cell).await,
        Command::Admin { command } => admin(&cfg, command).await?,
        Command::Openapi { out, check } => {
            let doc = crate::openapi::json()?;
            match (out, check) {
                (Some(path), _) => std::fs::write(&path, doc)
                    .with_context(|| format!("writing {}", path.display()))?,
                (None, Some(path)) => {
                    let have = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if have != doc {
                        eprintln!(
                            "{} is stale: regenerate it with `postvak openapi --out {}`",
                            path.display(),
                            path.display()
                        );
                        return Ok(ExitCode::from(1));
                    }
                    println!("{} is up to date", path.display());
                }
                (None, None) => print!("{doc}"),
            }
        }
        Command::Bench {
            command: BenchCommand::Store { target, seconds },
        } => {
            let report =
                postvak_platform::bench::store_bench(postvak_platform::bench::StoreBenchOptions {
                    url: target,
                    phase: std::time::Duration::from_secs(seconds.max(1)),
                    ..Default::default()
                })
                .await?;
            println!("{report}");
        }
        Command::Bench {
            command:
                BenchCommand::Ingest {
                    targets,
                    clients,
                    seconds,
                    rate,
                    nats,
                },
        } => {
            let report = postvak_ingest::bench::run(postvak_ingest::bench::BenchOptions {
                nats: (nats != "none").then_some(nats),
                targets,
                clients: clients.max(1),
                throughput: std::time::Duration::from_secs(seconds.max(1)),
                rate: rate.max(1),
                latency: std::time::Duration::from_secs(seconds.max(1)),
            })
            .await?;
            println!("{report}");
        }
        Command::Bench {
            command:
                BenchCommand::Notification {
                    target,
                    mails,
                    webhooks,
                },
        } => {
            println!(
                "{}",
                crate::bench::notification(&target, mails, webhooks).await?
            );
        }
        Command::Bench {
            command:
                BenchCommand::Api {
                    target,
                    conversations,
                    seconds,
                    connections,
                    reply_connections,
                    seed_concurrency,
                    keep,
                    reuse,
                    only,
                    search_merge_every_ms,
                },
        } => {
            let report = crate::bench_api::run(crate::bench_api::ApiBenchOptions {
                target,
                conversations: conversations.max(1),
                seconds,
                connections,
                reply_connections,
                seed_concurrency,
                keep,
                reuse,
                only,
                search_merge_every_ms,
            })
            .await?;
            println!("{report}");
        }
        Command::Bench {
            command:
                BenchCommand::Routing {
                    target,
                    nats,
                    rate,
                    seconds,
                    agents,
                    connections,
                    search_merge_every_ms,
                },
        } => {
            let report = crate::bench_routing::run(crate::bench_routing::RoutingBenchOptions {
                target,
                nats,
                rate,
                seconds,
                agents,
                connections,
                search_merge_every_ms,
            })
            .await?;
            println!("{report}");
        }
        Command::Bench {
            command: BenchCommand::Auth { target, calls },
        } => {
            println!("{}", crate::bench::auth(&target, calls.max(100)).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: &Config, migrate: bool, role: Role) -> anyhow::Result<()> {
    let cells = startup::open_cells(cfg, migrate).await?;
    let demo = if cfg.demo_enabled() && role == Role::All {
        Some(bootstrap_demo(&Directory::new(cells.clone()), &cfg.data_dir).await?)
    } else {
        None
    };
    let app = Application::build(cfg, cells, role).await?;
    let host = cfg
        .http
        .addr
        .rsplit_once(':')
        .map_or("127.0.0.1", |(h, _)| h);
    println!("Postvak is running.");
    println!(
        "  HTTP API:  http://{host}:{}/v1  (OpenAPI: /openapi.json, health: /healthz, /readyz, metrics: /metrics)",
        app.port()
    );
    match app.smtp_port() {
        Some(port) => println!(
            "  SMTP:      {host}:{port}  (mail to an inbox address becomes a conversation message)"
        ),
        None => println!("  SMTP:      not in this process"),
    }
    for cell in app.cells().all() {
        println!(
            "  cell {:<8} {:?} store, {:?} bus",
            cell.name,
            cell.store.backend(),
            cell.bus.kind()
        );
    }
    if let Some(d) = &demo {
        println!("  demo tenant: {} ({})", d.tenant_name, d.tenant_id);
        println!(
            "  demo inbox:  {} <{}> ({})",
            d.inbox_name, d.inbox_address, d.inbox_id
        );
        println!("  admin API key: {}", d.api_key);
        println!(
            "  try: curl -H 'Authorization: Bearer {}' http://{host}:{}/v1/inboxes",
            d.api_key,
            app.port()
        );
    }
    println!("Press Ctrl-C to stop.");
    tracing::info!(port = app.port(), "listening");
    app.run_until_stopped().await
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DemoInfo {
    tenant_id: Uuid,
    tenant_name: String,
    inbox_id: Uuid,
    inbox_name: String,
    inbox_address: String,
    api_key: String,
}

/// First start: a demo tenant with one inbox and an admin API key, remembered in
/// `data/demo.json` (mode 0600) so later starts can show the key again.
async fn bootstrap_demo(dir: &Directory, data_dir: &Path) -> anyhow::Result<DemoInfo> {
    let path = data_dir.join("demo.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; delete it and ./data to start afresh",
                path.display()
            )
        });
    }
    let tenant = dir.create_tenant("Demo", None).await?;
    let ctx = dir
        .cells()
        .context(
            tenant,
            postvak_platform::cell::Principal::Service { name: "bootstrap" },
        )
        .await?;
    let address = "support@demo.postvak.test".to_owned();
    let inbox = dir
        .create_inbox(&ctx, "Support", std::slice::from_ref(&address))
        .await?;
    let key = dir
        .issue_api_key(&ctx, "demo admin", &["admin".to_owned()], None, None)
        .await?;
    let info = DemoInfo {
        tenant_id: tenant.0,
        tenant_name: "Demo".into(),
        inbox_id: inbox.id,
        inbox_name: inbox.name,
        inbox_address: address,
        api_key: key.token,
    };
    write_private(&path, &serde_json::to_string_pretty(&info)?)?;
    Ok(info)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn audit_verify(
    cfg: &Config,
    tenant: Option<Uuid>,
    cell: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cells = startup::open_cells(cfg, false).await?;
    let mut intact = true;
    for c in cells.all() {
        if cell.as_ref().is_some_and(|want| want != &c.name) {
            continue;
        }
        let report = c.store.verify(tenant.map(TenantId)).await?;
        println!(
            "cell {}: {} streams, {} events, {}",
            c.name,
            report.streams,
            report.events,
            if report.is_intact() {
                "intact".to_owned()
            } else {
                format!("{} FINDINGS", report.findings.len())
            }
        );
        for f in &report.findings {
            println!(
                "  tenant {} stream {}: {:?}",
                f.tenant_id, f.stream_id, f.fault
            );
        }
        intact &= report.is_intact();
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn admin(cfg: &Config, command: AdminCommand) -> anyhow::Result<()> {
    if let AdminCommand::GenKey = command {
        println!("{}", postvak_platform::crypto::MasterKey::generate_base64());
        return Ok(());
    }
    let cells = startup::open_cells(cfg, false).await?;
    let dir = Directory::new(cells.clone());
    let service = postvak_platform::cell::Principal::Service { name: "cli" };
    match command {
        AdminCommand::CreateTenant { name, cell } => {
            let t = dir.create_tenant(&name, cell.as_deref()).await?;
            println!("{t}");
        }
        AdminCommand::CreateInbox {
            tenant,
            name,
            addresses,
        } => {
            let ctx = cells.context(TenantId(tenant), service).await?;
            let inbox = dir.create_inbox(&ctx, &name, &addresses).await?;
            println!("{}", inbox.id);
        }
        AdminCommand::IssueKey {
            tenant,
            name,
            scopes,
        } => {
            for s in &scopes {
                if !matches!(s.as_str(), "read" | "write" | "admin") {
                    anyhow::bail!("unknown scope {s:?}: use read, write or admin");
                }
            }
            let ctx = cells.context(TenantId(tenant), service).await?;
            let key = dir.issue_api_key(&ctx, &name, &scopes, None, None).await?;
            println!("{}", key.token);
        }
        AdminCommand::RebuildProjections { tenant } => {
            let ctx = cells.context(TenantId(tenant), service).await?;
            let n = dir.rebuild_projections(&ctx).await?;
            println!("re-applied {n} events");
            let n = postvak_conversation::contacts::rebuild(&cells, &ctx).await?;
            println!("re-applied {n} contact and message events");
            let n = postvak_routing::metrics::rebuild(&ctx).await?;
            println!("re-applied {n} conversation and timer events to the routing metrics");
            let n = postvak_routing::vip::rebuild(&ctx).await?;
            println!("re-applied {n} contact events to routing's VIP contacts");
        }
        AdminCommand::GenKey => {}
    }
    Ok(())
}
