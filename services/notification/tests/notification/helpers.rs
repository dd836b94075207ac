//! A fresh database per test, a tenant with an inbox and agents made by the real directory,
//! mail delivered through ingest's real pipeline, replies through the real conversation
//! service, and the notification service started with the test's settings.

#![allow(dead_code)] // shared by every test module; not each uses all of it

use postvak_conversation::Conversations;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_core::conversation::{Actor, ConversationCommand, Mailbox, Reply};
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_ingest::{Ingestor, pipeline, standalone};
use postvak_notification::NotificationSettings;
use postvak_platform::cell::{Cells, Principal, TenantContext};
use postvak_platform::store::TenantId;
use postvak_platform::testkit;
use postvak_proto::events::conversation::MessageV1;
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

/// One tenant with one inbox.
#[derive(Debug)]
pub struct Tenant {
    pub tenant: TenantId,
    pub ctx: TenantContext,
    pub inbox: Uuid,
    pub address: String,
    pub alice: Agent,
    pub admin: Agent,
}

#[derive(Debug)]
pub struct TestEnv {
    pub url: String,
    /// The master key, to open the same cells again (a second "process").
    pub master: String,
    pub cells: Cells,
    pub directory: Directory,
    pub service: Conversations,
    pub ingestor: Ingestor,
    pub acme: Tenant,
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
        let master = postvak_platform::crypto::MasterKey::generate_base64();
        let cells = standalone::open_cells(
            &url,
            postvak_platform::crypto::MasterKey::from_base64(&master).unwrap(),
            true,
        )
        .await
        .unwrap();
        let directory = Directory::new(cells.clone());
        let service = Conversations::new(cells.clone());
        let ingestor = Ingestor::new(cells.clone());
        let cancel = CancellationToken::new();
        let acme = make_tenant(&cells, &directory, "Acme", "support@acme.test").await;
        postvak_conversation::start_consumers(&cells, cells.default_cell(), cancel.clone());
        Self {
            url,
            master,
            cells,
            directory,
            service,
            ingestor,
            acme,
            cancel,
            _tmp: tmp,
        }
    }

    pub async fn tenant(&self, name: &str, address: &str) -> Tenant {
        make_tenant(&self.cells, &self.directory, name, address).await
    }

    /// The notification service with `sink` as the platform's relay, otherwise defaults.
    pub fn start_notification_to(&self, sink: &crate::smtp_sink::SmtpSink) -> CancellationToken {
        self.start_notification(NotificationSettings {
            outbound_smtp: sink.settings(),
            ..Default::default()
        })
    }

    pub fn start_notification(&self, settings: NotificationSettings) -> CancellationToken {
        let stop = self.cancel.child_token();
        postvak_notification::start(
            &self.cells,
            self.cells.default_cell(),
            settings,
            stop.clone(),
        );
        stop
    }

    /// The tenant's admin assigns conversation `id` to `user`.
    pub async fn assign(&self, t: &Tenant, id: Uuid, user: Uuid) {
        self.service
            .change(&t.ctx, id, None, |_| {
                Ok(vec![ConversationCommand::Assign {
                    assignee: user,
                    by: Actor::Admin(t.admin.id),
                    at_us: postvak_platform::store::micros(time::OffsetDateTime::now_utc()),
                }])
            })
            .await
            .unwrap();
    }

    /// Delivers a mail to a tenant's inbox through ingest's pipeline; waits for its
    /// conversation.
    pub async fn deliver(&self, t: &Tenant, raw: &[u8]) -> pipeline::Delivery {
        let raw = Arc::new(raw.to_vec());
        let parsed = Ingestor::parse(raw.clone()).await.unwrap();
        let d = self
            .ingestor
            .deliver_to_inbox(
                &t.ctx,
                t.inbox,
                &raw,
                &parsed,
                None,
                Default::default(),
                pipeline::Source::Api,
            )
            .await
            .unwrap();
        self.wait_for_message(t, d.conversation_id, d.message_id)
            .await;
        d
    }

    /// Waits until the conversation holds `message`.
    pub async fn wait_for_message(&self, t: &Tenant, id: Uuid, message: Uuid) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(l) = self.service.load(&t.ctx, id).await
                && l.events.iter().any(|e| {
                    e.payload::<MessageV1>()
                        .is_ok_and(|m| m.message_id == message)
                })
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no conversation {id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Alice replies as the inbox; returns the message id.
    pub async fn reply(&self, t: &Tenant, conversation: Uuid, body: &str) -> Uuid {
        let message_id = Uuid::now_v7();
        let from = Mailbox {
            name: Some("Support".into()),
            address: t.address.clone(),
        };
        let by = Actor::User(t.alice.id);
        self.service
            .change(&t.ctx, conversation, None, |_| {
                Ok(vec![ConversationCommand::Reply {
                    reply: Reply {
                        message_id,
                        from: from.clone(),
                        to: vec![],
                        cc: vec![],
                        subject: None,
                        body: body.to_owned(),
                        message_id_header: None,
                        reply_to: vec![Mailbox {
                            name: None,
                            address: t.address.replacen('@', "+r-token@", 1),
                        }],
                        body_html: None,
                        files: vec![],
                    },
                    by,
                    at_us: postvak_platform::store::micros(time::OffsetDateTime::now_utc()),
                }])
            })
            .await
            .unwrap();
        message_id
    }

    /// Polls the outbox until `message_id` is in `state`.
    pub async fn wait_for_state(
        &self,
        t: &Tenant,
        message_id: Uuid,
        state: &str,
    ) -> postvak_notification::outbound::OutboundStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = postvak_notification::outbound::status(&t.ctx, message_id)
                .await
                .unwrap();
            if let Some(s) = &s
                && s.state == state
            {
                return s.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mail {message_id} never reached {state}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn make_tenant(cells: &Cells, directory: &Directory, name: &str, address: &str) -> Tenant {
    let tenant = directory.create_tenant(name, None).await.unwrap();
    let ctx = cells
        .context(tenant, Principal::Service { name: "test" })
        .await
        .unwrap();
    let inbox = directory
        .create_inbox(&ctx, "Support", &[address.to_owned()])
        .await
        .unwrap()
        .id;
    let session = |user: Uuid| {
        let directory = directory.clone();
        async move {
            let s = directory
                .create_session(tenant, user, SessionKind::Bearer, &[])
                .await
                .unwrap();
            Agent {
                id: user,
                token: s.token,
            }
        }
    };
    let alice = directory
        .create_user(
            &ctx,
            &format!("alice@{name}.test"),
            "Alice",
            TenantRole::Agent,
        )
        .await
        .unwrap();
    directory
        .grant_inbox(
            &ctx,
            inbox,
            Grantee::User(alice.id),
            InboxRole::Reply,
            None,
            None,
        )
        .await
        .unwrap();
    let admin = directory
        .create_user(
            &ctx,
            &format!("admin@{name}.test"),
            "Admin",
            TenantRole::Admin,
        )
        .await
        .unwrap();
    Tenant {
        tenant,
        ctx,
        inbox,
        address: address.to_owned(),
        alice: session(alice.id).await,
        admin: session(admin.id).await,
    }
}

/// A mail from a customer with CRLF line endings.
pub fn mail(to: &str, message_id: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Eve Customer <eve@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n\
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

/// The notification API on a real HTTP server bound to a free port.
#[derive(Debug, Clone)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: serde_json::Value,
}

impl TestEnv {
    pub async fn spawn_app(&self) -> TestApp {
        use actix_web::{App, HttpServer, web};
        let auth: postvak_platform::auth::SharedAuthenticator = Arc::new(self.directory.clone());
        let cells = web::Data::new(self.cells.clone());
        let directory = web::Data::new(self.directory.clone());
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
                .configure(postvak_notification::api::routes_with_policies(
                    postvak_notification::ssrf::DestinationPolicy::new(&[
                        "127.0.0.1/32".into(),
                        "::1/128".into(),
                    ])
                    .unwrap(),
                    postvak_notification::relays::RelayPolicy::new(&["127.0.0.1/32".into()])
                        .unwrap(),
                ))
                .configure(postvak_conversation::api::routes)
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            handle.stop(false).await;
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        TestApp {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }
}

impl TestApp {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        who: &Agent,
        body: Option<serde_json::Value>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&who.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
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
            content_type,
            body,
        }
    }
}

/// The notification service in a runtime of its own, standing for another process: `crash()`
/// drops the runtime, so its tasks stop at whatever await they were in, like a killed process.
#[derive(Debug)]
pub struct Crashable {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestEnv {
    pub async fn start_crashable(&self, settings: NotificationSettings) -> Crashable {
        let (url, master) = (self.url.clone(), self.master.clone());
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let key = postvak_platform::crypto::MasterKey::from_base64(&master).unwrap();
                let cells = standalone::open_cells(&url, key, false).await.unwrap();
                postvak_notification::start(
                    &cells,
                    cells.default_cell(),
                    settings,
                    CancellationToken::new(),
                );
                let _ = ready_tx.send(());
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        ready_rx.await.unwrap();
        Crashable {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Crashable {
    pub async fn crash(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap();
        }
    }
}
