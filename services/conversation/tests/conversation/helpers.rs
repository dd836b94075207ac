//! A fresh database per test, a tenant with an inbox and agents made by the real directory,
//! mail delivered through ingest's real pipeline, and the conversation API in actix's test
//! server.

use actix_web::{App, HttpServer, web};
use postvak_conversation::Conversations;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_ingest::{Ingestor, pipeline, standalone};
use postvak_platform::auth::SharedAuthenticator;
use postvak_platform::bus::Bus;
use postvak_platform::bus::nats::NatsBus;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::db::{self, DbOptions};
use postvak_platform::store;
use postvak_platform::store::TenantId;
use postvak_platform::testkit;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

#[derive(Debug)]
pub struct Agent {
    pub id: Uuid,
    pub token: String,
}

#[derive(Debug)]
pub struct TestEnv {
    pub url: String,
    pub cells: Cells,
    pub directory: Directory,
    pub service: Conversations,
    pub tenant: TenantId,
    pub ctx: TenantContext,
    pub inbox: Uuid,
    pub ingestor: Ingestor,
    /// `reply` members of the inbox.
    pub alice: Agent,
    pub bob: Agent,
    /// A `read` member.
    pub reader: Agent,
    pub cancel: CancellationToken,
    _tmp: Option<testkit::TempDir>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        init_logs();
        let (tmp, url) = match backend {
            Backend::Sqlite => {
                let (t, u) = testkit::fresh_sqlite_database();
                (Some(t), u)
            }
            Backend::Postgres => (None, testkit::fresh_postgres_database().await),
        };
        // PostgreSQL: the pool acts as `postvak_app`, so row-level security is exercised.
        let cells = standalone::open_cells(&url, testkit::master_key(), true)
            .await
            .unwrap();
        let directory = Directory::new(cells.clone());
        let tenant = directory.create_tenant("Acme", None).await.unwrap();
        let ctx = cells
            .context(tenant, Principal::Service { name: "test" })
            .await
            .unwrap();
        let inbox = directory
            .create_inbox(&ctx, "Support", &["support@acme.test".to_owned()])
            .await
            .unwrap()
            .id;
        let service = Conversations::new(cells.clone());
        let ingestor = Ingestor::new(cells.clone());
        let cancel = CancellationToken::new();
        let mut env = Self {
            url,
            cells: cells.clone(),
            directory,
            service,
            tenant,
            ctx,
            inbox,
            ingestor,
            alice: Agent {
                id: Uuid::nil(),
                token: String::new(),
            },
            bob: Agent {
                id: Uuid::nil(),
                token: String::new(),
            },
            reader: Agent {
                id: Uuid::nil(),
                token: String::new(),
            },
            cancel: cancel.clone(),
            _tmp: tmp,
        };
        env.alice = env.agent("alice@acme.test", InboxRole::Reply).await;
        env.bob = env.agent("bob@acme.test", InboxRole::Reply).await;
        env.reader = env.agent("reader@acme.test", InboxRole::Read).await;
        postvak_conversation::start_consumers(&cells, cells.default_cell(), cancel);
        env
    }

    /// An agent with `role` on the inbox and a bearer session.
    pub async fn agent(&self, email: &str, role: InboxRole) -> Agent {
        let user = self
            .directory
            .create_user(&self.ctx, email, email, TenantRole::Agent)
            .await
            .unwrap();
        self.directory
            .grant_inbox(
                &self.ctx,
                self.inbox,
                Grantee::User(user.id),
                role,
                None,
                None,
            )
            .await
            .unwrap();
        self.session(user.id).await
    }

    /// An agent without any grant.
    pub async fn user(&self, email: &str, role: TenantRole) -> Agent {
        let user = self
            .directory
            .create_user(&self.ctx, email, email, role)
            .await
            .unwrap();
        self.session(user.id).await
    }

    pub async fn session(&self, user: Uuid) -> Agent {
        let s = self
            .directory
            .create_session(self.tenant, user, SessionKind::Bearer, &[])
            .await
            .unwrap();
        Agent {
            id: user,
            token: s.token,
        }
    }

    pub async fn add_inbox(&self, name: &str, address: &str) -> Uuid {
        self.directory
            .create_inbox(&self.ctx, name, &[address.to_owned()])
            .await
            .unwrap()
            .id
    }

    /// Delivers a mail to an inbox through ingest's pipeline (as SMTP or the raw endpoint do).
    pub async fn deliver(&self, inbox: Uuid, raw: &[u8]) -> pipeline::Delivery {
        let raw = Arc::new(raw.to_vec());
        let parsed = Ingestor::parse(raw.clone()).await.unwrap();
        self.ingestor
            .deliver_to_inbox(
                &self.ctx,
                inbox,
                &raw,
                &parsed,
                None,
                Default::default(),
                pipeline::Source::Api,
            )
            .await
            .unwrap()
    }

    /// The API on a real HTTP server bound to a free port.
    pub async fn spawn_app(&self) -> TestApp {
        spawn_api(&self.cells, &self.directory, &self.cancel)
    }

    /// Polls until the conversation's read model has at least `messages` messages.
    pub async fn wait_for_conversation(&self, id: Uuid, messages: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = self.service.get(&self.ctx, id).await
                && c.conversation.message_count >= messages
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "conversation {id} did not appear with {messages} messages"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The conversation API of `cells` on a real HTTP server bound to a free port; stops when
/// `cancel` fires.
pub fn spawn_api(cells: &Cells, directory: &Directory, cancel: &CancellationToken) -> TestApp {
    let auth: SharedAuthenticator = Arc::new(directory.clone());
    let cells = web::Data::new(cells.clone());
    let directory = web::Data::new(directory.clone());
    let auth = web::Data::new(auth);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(cells.clone())
            .app_data(directory.clone())
            .app_data(auth.clone())
            .app_data(postvak_platform::http::json_config())
            .app_data(postvak_platform::http::query_config())
            .app_data(postvak_platform::http::path_config())
            .configure(postvak_conversation::api::routes)
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(false).await;
    });
    // reqwest is built without a default TLS provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
    }
}

/// The cells of one process in distributed mode: its own pools on the (migrated) PostgreSQL
/// database at `url` and its own NATS connection under `prefix`, with the deployment's master key. Two of them on one database
/// and prefix are two processes of one cell.
pub async fn nats_cells(
    url: &str,
    prefix: &str,
    master: postvak_platform::crypto::MasterKey,
) -> Cells {
    let opts = DbOptions {
        max_connections: 16,
        app_role: Some(db::APP_ROLE.to_owned()),
        ..DbOptions::default()
    };
    let store = store::open_store(url, &opts, master).await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&testkit::nats_url(), prefix, standalone::CELL)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NATS is required for this test and is not reachable at {}: {e}",
                    testkit::nats_url()
                )
            }),
    );
    let directory = store.db().clone();
    Cells::new(
        vec![Cell {
            name: standalone::CELL.to_owned(),
            region: None,
            store,
            bus,
        }],
        standalone::CELL,
        directory,
    )
    .unwrap()
}

/// A mail with CRLF line endings.
pub fn mail(message_id: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Eve Customer <eve@example.org>\r\nTo: support@acme.test\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
    );
    if !extra_headers.is_empty() {
        m.push_str(extra_headers.trim_end_matches("\r\n"));
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&body.replace('\n', "\r\n"));
    m.push_str("\r\n");
    m.into_bytes()
}

#[derive(Debug, Clone)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
}

/// A response: status, ETag and JSON body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub etag: Option<String>,
    pub content_type: String,
    pub body: serde_json::Value,
}

impl TestApp {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        who: &Agent,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&who.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Resp {
            status,
            etag,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str, who: &Agent) -> Resp {
        self.call("GET", path, who, None, &[]).await
    }

    pub async fn post(&self, path: &str, who: &Agent, body: serde_json::Value) -> Resp {
        self.call("POST", path, who, Some(body), &[]).await
    }
}
