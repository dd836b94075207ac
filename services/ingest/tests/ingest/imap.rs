//! The IMAP connector against a real Dovecot (Debian `dovecot-imapd`, installed by
//! `tests/dovecot.sh` when missing) started by each test with its own configuration, a
//! passwd-file user and a maildir in a temporary directory, on a free loopback port. Mail is
//! put there with IMAP APPEND; accounts are created through the real HTTP API.

use crate::helpers::*;
use actix_web::{App, test, web};
use futures::TryStreamExt;
use postvak_ingest::ImapSettings;
use postvak_ingest::imap::ImapConnector;
use postvak_platform::auth::SharedAuthenticator;
use postvak_platform::testkit::{self, TempDir};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret \"quoted\" pass";

/// A Dovecot instance of this test; killed on drop.
struct Dovecot {
    child: Child,
    dir: TempDir,
    port: u16,
    tls_port: Option<u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dovecot_binary() -> PathBuf {
    let out = Command::new("bash")
        .arg(tests_dir().join("dovecot.sh"))
        .output()
        .expect("running tests/dovecot.sh");
    assert!(
        out.status.success(),
        "Dovecot is needed for the IMAP tests and could not be installed \
         (apt-get install dovecot-imapd): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn current_user() -> (u32, u32, String) {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    (
        id("-u").parse().unwrap(),
        id("-g").parse().unwrap(),
        id("-un"),
    )
}

impl Dovecot {
    /// Starts Dovecot; with `tls` (certificate and key) it also listens with implicit TLS
    /// and offers STARTTLS.
    async fn start(tls: Option<(&Path, &Path)>) -> Self {
        Self::start_with(tls, "").await
    }

    /// Like `start`, with extra configuration lines.
    async fn start_with(tls: Option<(&Path, &Path)>, extra: &str) -> Self {
        let bin = dovecot_binary();
        let dir = TempDir::new();
        let d = dir.path();
        for sub in ["run", "state", "mail", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (uid, gid, name) = current_user();
        // Dovecot never gives mail access as uid 0: as root, the mail belongs to `nobody`.
        let (mail_uid, mail_gid, users) = if uid == 0 {
            for sub in ["mail", "home"] {
                Command::new("chown")
                    .arg("65534:65534")
                    .arg(d.join(sub))
                    .status()
                    .unwrap();
            }
            Command::new("chmod").arg("755").arg(d).status().unwrap();
            (65534, 65534, String::new())
        } else {
            (
                uid,
                gid,
                format!("default_internal_user = {name}\ndefault_login_user = {name}\n"),
            )
        };
        std::fs::write(d.join("passwd"), format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let ssl = match tls {
            Some((cert, key)) => format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
                cert.display(),
                key.display()
            ),
            None => "ssl = no\n".to_owned(),
        };
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\n{ssl}disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\nmail_location = maildir:{d}/mail\n{users}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={mail_uid} gid={mail_gid} home={d}/home\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tls_port}\n  }}\n}}\n\
             service pop3-login {{\n  inet_listener pop3 {{\n    port = 0\n  }}\n}}\n{extra}\n",
            d = d.display(),
            tls_port = tls_port.unwrap_or(0),
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(&bin)
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dovecot");
        let mut dc = Self {
            child,
            dir,
            port,
            tls_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = dc.child.try_wait() {
                panic!(
                    "Dovecot exited ({status}) instead of starting: {}\n{}",
                    dc.stderr(),
                    dc.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Dovecot did not listen on 127.0.0.1:{port} within 20 s: {}",
                dc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dc
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// A logged-in session of the test user (plain connection).
    async fn session(&self) -> async_imap::Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap().unwrap();
        client
            .login(USER, PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
    }

    async fn append(&self, folder: &str, mails: &[Vec<u8>]) {
        let mut s = self.session().await;
        for m in mails {
            s.append(folder, None, None, m).await.unwrap();
        }
        s.logout().await.unwrap();
    }

    async fn create(&self, folder: &str) {
        let mut s = self.session().await;
        s.create(folder).await.unwrap();
        s.logout().await.unwrap();
    }

    async fn delete(&self, folder: &str) {
        let mut s = self.session().await;
        s.delete(folder).await.unwrap();
        s.logout().await.unwrap();
    }

    /// `(uid, flags)` of every message in the folder, and its UIDVALIDITY.
    async fn contents(&self, folder: &str) -> (u32, Vec<(u32, Vec<String>)>) {
        let mut s = self.session().await;
        let mb = s.examine(folder).await.unwrap();
        let mut out = Vec::new();
        if mb.exists > 0 {
            let fetched: Vec<_> = s
                .uid_fetch("1:*", "(UID FLAGS)")
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for f in fetched {
                out.push((
                    f.uid.unwrap(),
                    f.flags().map(|fl| format!("{fl:?}")).collect(),
                ));
            }
        }
        s.logout().await.unwrap();
        out.sort();
        (mb.uid_validity.unwrap(), out)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed leaf certificate for `localhost` (not a CA: WebPKI refuses a CA certificate
/// as a server's), made by the real `openssl`: (dir, cert, key).
fn server_cert() -> (TempDir, PathBuf, PathBuf) {
    require_tool("openssl", "apt-get install openssl");
    let dir = TempDir::new();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req failed");
    // Dovecot reads the key after dropping privileges.
    Command::new("chmod").arg("644").arg(&key).status().unwrap();
    (dir, cert, key)
}

fn settings(max_message_size: u64) -> ImapSettings {
    ImapSettings {
        // A poll would come only after 10 minutes: mail seen sooner came through IDLE.
        poll_interval_secs: 600,
        discovery_interval_secs: 1,
        max_message_size,
        backoff_initial_secs: 1,
        backoff_max_secs: 2,
        allow_plaintext: true,
        // Dovecot listens on loopback, which accounts may not name unless allowed.
        allow_private: vec!["127.0.0.0/8".into(), "::1/128".into()],
        ..ImapSettings::default()
    }
}

/// An admin API key of the test tenant.
async fn admin_token(env: &TestEnv) -> String {
    env.directory
        .issue_api_key(&env.ctx, "admin", &["admin".to_owned()], None, None)
        .await
        .unwrap()
        .token
}

/// The IMAP account routes over actix's test service (a macro: the service's request type
/// is not nameable from here).
macro_rules! imap_api {
    ($env:expr, $settings:expr) => {{
        let auth: SharedAuthenticator = Arc::new($env.directory.clone());
        test::init_service(
            App::new()
                .app_data(web::Data::new($env.cells.clone()))
                .app_data(web::Data::new(auth))
                .app_data(web::Data::new($env.directory.clone()))
                .app_data(postvak_platform::http::json_config())
                .app_data(postvak_platform::http::path_config())
                .configure(postvak_ingest::imap::api::routes_with($settings)),
        )
        .await
    }};
}

fn request(
    token: &str,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> test::TestRequest {
    let req = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "PATCH" => test::TestRequest::patch(),
        "DELETE" => test::TestRequest::delete(),
        m => panic!("method {m}"),
    }
    .uri(uri)
    .insert_header(("Authorization", format!("Bearer {token}")));
    match body {
        Some(b) => req.set_json(b),
        None => req,
    }
}

/// Status and JSON body; fails if a body carries the password.
fn answer(status: u16, bytes: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(bytes).to_string();
    assert!(
        !text.contains("s3cret"),
        "a response carried the password: {text}"
    );
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or(serde_json::Value::String(text))
    };
    (status, v)
}

macro_rules! call {
    ($app:expr, $token:expr, $method:expr, $uri:expr, $body:expr $(,)?) => {{
        let res =
            test::call_service(&$app, request(&$token, $method, &$uri, $body).to_request()).await;
        let status = res.status().as_u16();
        let bytes = test::read_body(res).await;
        answer(status, &bytes)
    }};
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn big_mail(id: &str, size: usize) -> Vec<u8> {
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n";
    mail(id, "Huge", "", &line.repeat(size / line.len() + 1))
}

fn imap_messages(
    msgs: &[postvak_proto::events::ingest::MessageReceivedV1],
) -> Vec<&postvak_proto::events::ingest::MessageReceivedV1> {
    msgs.iter().filter(|m| m.source == "imap").collect()
}

/// The whole life of an account: first sync with two poison messages, new mail through IDLE,
/// the source untouched, a restart with mail that arrived while the connector was down.
async fn imap_account_lifecycle(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // PostgreSQL runs with NATS: the relay publishes what the connector committed.
    let relay = if backend == Backend::Postgres {
        let bus = postvak_platform::bus::nats::NatsBus::connect(
            &testkit::nats_url(),
            &testkit::unique_prefix(),
            postvak_ingest::standalone::CELL,
        )
        .await
        .unwrap();
        let cell = env.cells.default_cell();
        let stop = CancellationToken::new();
        let dyn_bus: Arc<dyn postvak_platform::bus::Bus> = Arc::new(bus.clone());
        let task = tokio::spawn(postvak_platform::relay::run_relay(
            cell.store.clone(),
            dyn_bus,
            postvak_platform::relay::RelayOptions::new(cell.name.clone()),
            stop.clone(),
        ));
        Some((bus, stop, task))
    } else {
        None
    };
    let dovecot = Dovecot::start(None).await;
    let first = mail("first@example.org", "Order 1", "", "Where is my order?");
    let reply = mail(
        "second@example.org",
        "Re: Order 1",
        "In-Reply-To: <first@example.org>\r\nReferences: <first@example.org>",
        "Any news?",
    );
    let other = mail(
        "third@example.org",
        "Invoice",
        "",
        "Please send an invoice.",
    );
    dovecot
        .append(
            "INBOX",
            &[
                first.clone(),
                big_mail("huge@example.org", 100 * 1024),
                reply,
                b"this is not a mail at all, just a line of text\r\n".to_vec(),
                other,
            ],
        )
        .await;
    let (validity, before) = dovecot.contents("INBOX").await;
    assert_eq!(before.len(), 5);

    let s = settings(64 * 1024);
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let (status, created) = call!(
        app,
        token,
        "POST",
        &base,
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "secret": PASSWORD,
        })),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["folder"], "INBOX");
    assert_eq!(created["after_import"], "keep");
    assert_eq!(created["sync"]["status"], "pending");
    let account = created["id"].as_str().unwrap().to_owned();

    // The destination is checked again at every connection: without the operator's
    // exception for loopback the connector refuses to dial, before any byte is sent.
    let strict = ImapConnector::new(
        env.ingestor.clone(),
        ImapSettings {
            allow_private: Vec::new(),
            ..s.clone()
        },
    )
    .unwrap();
    let refused = strict
        .sync_once(env.ctx.tenant(), account.parse().unwrap())
        .await
        .expect_err("a loopback server without imap.allow_private");
    assert!(
        refused.to_string().contains("not a public address"),
        "{refused}"
    );
    assert!(env.messages().await.is_empty());

    let connector = ImapConnector::new(env.ingestor.clone(), s.clone()).unwrap();
    let cancel = CancellationToken::new();
    let handles = connector.start(&env.cells, cancel.clone());

    wait_for("the first sync", 60, || async {
        let (_, a) = call!(app, token, "GET", &format!("{base}/{account}"), None);
        a["sync"]["last_uid"] == 5 && a["sync"]["status"] == "idle"
    })
    .await;
    let msgs = env.messages().await;
    let imported = imap_messages(&msgs);
    assert_eq!(imported.len(), 3, "exactly the three good messages");
    assert_eq!(msgs.len(), 3);
    let by_id = |id: &str| {
        imported
            .iter()
            .find(|m| m.message_id_header.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} imported"))
    };
    let (a, b, c) = (
        by_id("first@example.org"),
        by_id("second@example.org"),
        by_id("third@example.org"),
    );
    assert_eq!(a.conversation_id, b.conversation_id, "the reply threads");
    assert_ne!(a.conversation_id, c.conversation_id);
    assert!(a.new_thread && !b.new_thread && c.new_thread);
    assert!(imported.iter().all(|m| m.inbox_id == env.inbox));
    let (_, acct) = call!(app, token, "GET", &format!("{base}/{account}"), None);
    assert_eq!(acct["sync"]["uid_validity"], validity);
    assert_eq!(acct["sync"]["imported"], 3);
    let q = acct["sync"]["quarantined"].as_array().unwrap();
    let mut reasons: Vec<(u64, String)> = q
        .iter()
        .map(|q| {
            (
                q["uid"].as_u64().unwrap(),
                q["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![(2, "too_large".to_owned()), (4, "malformed".to_owned())]
    );

    // New mail while running arrives through IDLE (the poll interval is 10 minutes).
    let started = Instant::now();
    dovecot
        .append(
            "INBOX",
            &[mail("fourth@example.org", "New", "", "Hello again")],
        )
        .await;
    wait_for("the IDLE import", 30, || async {
        imap_messages(&env.messages().await).len() == 4
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));

    // `keep`: the source is as it was — every message there, none marked seen or deleted.
    let (v2, after) = dovecot.contents("INBOX").await;
    assert_eq!(v2, validity);
    assert_eq!(after.len(), 6);
    for (uid, flags) in &after {
        assert!(
            !flags
                .iter()
                .any(|f| f.contains("Seen") || f.contains("Deleted")),
            "message {uid} was changed at the source: {flags:?}"
        );
    }

    // Stop; mail arrives while the connector is down; restart: backfill, no duplicates.
    cancel.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .expect("the supervisor stops on cancel")
            .unwrap();
    }
    dovecot
        .append(
            "INBOX",
            &[
                mail(
                    "fifth@example.org",
                    "Re: Invoice",
                    "In-Reply-To: <third@example.org>",
                    "ok",
                ),
                mail("sixth@example.org", "Later", "", "while you were away"),
            ],
        )
        .await;
    let connector = ImapConnector::new(env.ingestor.clone(), s.clone()).unwrap();
    let cancel = CancellationToken::new();
    let handles = connector.start(&env.cells, cancel.clone());
    wait_for("the backfill", 60, || async {
        let (_, a) = call!(app, token, "GET", &format!("{base}/{account}"), None);
        a["sync"]["last_uid"] == 8
    })
    .await;
    let msgs = env.messages().await;
    let imported = imap_messages(&msgs);
    assert_eq!(imported.len(), 6, "each message exactly once");
    let mut ids: Vec<_> = imported.iter().map(|m| m.message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    let fifth = imported
        .iter()
        .find(|m| m.message_id_header.as_deref() == Some("fifth@example.org"))
        .unwrap();
    assert_eq!(fifth.conversation_id, c.conversation_id);

    // Re-import of quarantined messages by request. Under the same limit the huge one is
    // still refused, and nothing is recorded.
    let reimport = |uid: u32| format!("{base}/{account}/quarantine/{validity}/{uid}/reimport");
    let (status, body) = call!(app, token, "POST", &reimport(2), None);
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("imap_message_too_large")),
        "{body}"
    );
    let (status, _) = call!(app, token, "POST", &reimport(99), None);
    assert_eq!(status, 404, "UID 99 was never quarantined");
    // With the limit raised, it is imported; asking again answers the same delivery.
    let raised = imap_api!(env, settings(1024 * 1024));
    let (status, first) = call!(raised, token, "POST", &reimport(2), None);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, again) = call!(raised, token, "POST", &reimport(2), None);
    assert_eq!((status, &again), (200, &first));
    // The "not a mail" one: someone looked at it and asked, so it is stored as it is.
    let (status, text_only) = call!(raised, token, "POST", &reimport(4), None);
    assert_eq!(status, 200, "{text_only}");
    let msgs = env.messages().await;
    let imported = imap_messages(&msgs);
    assert_eq!(
        imported.len(),
        8,
        "six synced and two re-imported, once each"
    );
    let huge = imported
        .iter()
        .find(|m| m.message_id_header.as_deref() == Some("huge@example.org"))
        .expect("the huge message was imported");
    assert_eq!(first["message_id"], huge.message_id.to_string());
    assert_eq!(first["conversation_id"], huge.conversation_id.to_string());
    let (_, acct) = call!(app, token, "GET", &format!("{base}/{account}"), None);
    let shown: Vec<(u64, String)> = acct["sync"]["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["uid"].as_u64().unwrap(),
                q["reimported"]["message_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        shown.contains(&(2, huge.message_id.to_string())),
        "{shown:?}"
    );
    assert_eq!(acct["sync"]["last_uid"], 8, "the position did not move");

    // Deleting the account stops its task; what was imported stays.
    let (status, _) = call!(app, token, "DELETE", &format!("{base}/{account}"), None);
    assert_eq!(status, 204);
    let (status, _) = call!(app, token, "GET", &format!("{base}/{account}"), None);
    assert_eq!(status, 404);
    dovecot
        .append("INBOX", &[mail("seventh@example.org", "After", "", "gone")])
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(imap_messages(&env.messages().await).len(), 8);

    // The account's audit trail: who did what, never the password.
    let trail = env
        .ctx
        .read_stream(&postvak_platform::store::StreamRef::new(
            "imap_account",
            format!("imap-{}", account.parse::<Uuid>().unwrap().simple()),
        ))
        .await
        .unwrap();
    let types: Vec<&str> = trail.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "imap.account_created",
            "imap.message_reimported",
            "imap.message_reimported",
            "imap.account_deleted"
        ]
    );
    let actor = trail[0].metadata.actor.clone().unwrap();
    assert!(actor.starts_with("apikey:"), "{actor}");
    for e in &trail {
        assert_eq!(e.metadata.actor.as_ref(), Some(&actor));
        let json = serde_json::to_string(&e.payload::<serde_json::Value>().unwrap()).unwrap();
        assert!(
            !json.contains("s3cret"),
            "an audit event carries the password: {json}"
        );
    }
    let created: postvak_proto::events::ingest::ImapAccountCreatedV1 = trail[0].payload().unwrap();
    assert_eq!(created.account.host, "127.0.0.1");
    assert_eq!(created.account.username, USER);
    cancel.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
    }

    if let Some((bus, stop, task)) = relay {
        // Every committed event — directory events and the six messages — reached NATS once.
        let mut total = 0u64;
        let mut after = postvak_platform::store::LogPosition::START;
        let store = &env.cells.default_cell().store;
        loop {
            let page = store.read_log(after, 1000, None).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            total += page.len() as u64;
        }
        wait_for("the relay", 30, || async {
            let stream = bus.jetstream().get_stream(bus.stream_name()).await.unwrap();
            let mut stream = stream;
            stream.info().await.unwrap().state.messages == total
        })
        .await;
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}

#[tokio::test]
async fn imap_account_lifecycle_sqlite() {
    imap_account_lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn imap_account_lifecycle_postgres_nats() {
    imap_account_lifecycle(Backend::Postgres).await;
}

/// A recreated folder has a new UIDVALIDITY: the connector syncs it again from the start and
/// the pipeline's dedupe makes the re-imports no-ops.
#[tokio::test]
async fn uidvalidity_change_resyncs_without_duplicates() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let dovecot = Dovecot::start(None).await;
    dovecot.create("Support").await;
    let mails: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            mail(
                &format!("m{i}@example.org"),
                &format!("Mail {i}"),
                "",
                "body",
            )
        })
        .collect();
    dovecot.append("Support", &mails).await;
    let s = settings(1024 * 1024);
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let (status, created) = call!(
        app,
        token,
        "POST",
        &format!("/v1/inboxes/{}/imap-accounts", env.inbox),
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "secret": PASSWORD, "folder": "Support",
        })),
    );
    assert_eq!(status, 201, "{created}");
    let account: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    let first = connector
        .sync_once(env.ctx.tenant(), account)
        .await
        .unwrap();
    assert_eq!(
        (first.imported, first.duplicates, first.resynced),
        (3, 0, false)
    );
    let (v1, _) = dovecot.contents("Support").await;

    dovecot.delete("Support").await;
    dovecot.create("Support").await;
    let mut again = mails.clone();
    again.push(mail(
        "m3@example.org",
        "Mail 3",
        "",
        "new after the recreation",
    ));
    dovecot.append("Support", &again).await;
    let (v2, _) = dovecot.contents("Support").await;
    assert_ne!(
        v1, v2,
        "Dovecot gave the recreated folder a new UIDVALIDITY"
    );

    let second = connector
        .sync_once(env.ctx.tenant(), account)
        .await
        .unwrap();
    assert!(second.resynced);
    assert_eq!(second.uid_validity, v2);
    assert_eq!((second.imported, second.duplicates), (4, 3));
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 4, "no duplicates after the UIDVALIDITY change");
    // A pass with nothing new imports nothing.
    let third = connector
        .sync_once(env.ctx.tenant(), account)
        .await
        .unwrap();
    assert_eq!(third.imported, 0);

    // Losing the position altogether (as if every progress write after a commit had been lost
    // in a crash): another server name forgets it, the folder is fetched again, and every
    // message is recognised as already stored.
    let (status, moved) = call!(
        app,
        token,
        "PATCH",
        format!("/v1/inboxes/{}/imap-accounts/{account}", env.inbox),
        Some(json!({"host": "localhost"})),
    );
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["sync"]["last_uid"], 0);
    let fourth = connector
        .sync_once(env.ctx.tenant(), account)
        .await
        .unwrap();
    assert_eq!((fourth.imported, fourth.duplicates), (4, 4));
    assert_eq!(env.messages().await.len(), 4);
}

/// Implicit TLS and STARTTLS against Dovecot with a self-signed certificate trusted through
/// `ca_file`; `mark_seen` and `move:` change the source as configured.
#[tokio::test]
async fn tls_starttls_and_after_import_actions() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_cert_dir, cert, key) = server_cert();
    let dovecot = Dovecot::start(Some((&cert, &key))).await;
    dovecot.create("Archive").await;
    dovecot.create("Other").await;
    dovecot
        .append("INBOX", &[mail("tls1@example.org", "One", "", "one")])
        .await;
    dovecot
        .append("Other", &[mail("tls2@example.org", "Two", "", "two")])
        .await;
    let s = ImapSettings {
        ca_file: Some(cert.clone()),
        allow_plaintext: false,
        ..settings(1024 * 1024)
    };
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let (status, a) = call!(
        app,
        token,
        "POST",
        &base,
        Some(json!({
            "host": "localhost", "port": dovecot.tls_port.unwrap(), "tls": "tls",
            "username": USER, "secret": PASSWORD, "after_import": "mark_seen",
        })),
    );
    assert_eq!(status, 201, "{a}");
    let (status, b) = call!(
        app,
        token,
        "POST",
        &base,
        Some(json!({
            "host": "localhost", "port": dovecot.port, "tls": "starttls",
            "username": USER, "secret": PASSWORD, "folder": "Other",
            "after_import": "move:Archive",
        })),
    );
    assert_eq!(status, 201, "{b}");
    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    for acct in [&a, &b] {
        let id: Uuid = acct["id"].as_str().unwrap().parse().unwrap();
        let r = connector.sync_once(env.ctx.tenant(), id).await.unwrap();
        assert_eq!(r.imported, 1);
    }
    assert_eq!(env.messages().await.len(), 2);
    let (_, inbox) = dovecot.contents("INBOX").await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].1.iter().any(|f| f.contains("Seen")), "{inbox:?}");
    assert!(dovecot.contents("Other").await.1.is_empty(), "moved away");
    assert_eq!(dovecot.contents("Archive").await.1.len(), 1);

    // A wrong password is an account error visible over the API, not a crash.
    let (status, _) = call!(
        app,
        token,
        "PATCH",
        &format!("{base}/{}", a["id"].as_str().unwrap()),
        Some(json!({"secret": "wrong"})),
    );
    assert_eq!(status, 200);
    let id: Uuid = a["id"].as_str().unwrap().parse().unwrap();
    let err = connector.sync_once(env.ctx.tenant(), id).await.unwrap_err();
    assert!(err.to_string().contains("login refused"), "{err}");
}

/// What the API refuses, and who may use it.
#[tokio::test]
async fn imap_account_api_validates_and_checks_permissions() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let app = imap_api!(env, ImapSettings::default());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    // A public address (an IP literal: no DNS needed).
    let good = json!({"host": "93.184.216.34", "username": "u@example.org", "secret": "pw"});
    let (status, body) = call!(
        app,
        token,
        "POST",
        &base,
        Some(json!({"host": "127.0.0.1", "tls": "plain", "username": "u", "secret": "pw"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("plaintext_not_allowed"))
    );
    for bad in [
        json!({"host": "", "username": "u", "secret": "pw"}),
        json!({"host": "imap.example.org", "username": "u", "secret": ""}),
        json!({"host": "imap.example.org", "username": "u", "secret": "pw", "after_import": "shred"}),
        json!({"host": "imap.example.org", "username": "u", "secret": "pw", "auth": "kerberos"}),
        json!({"host": "imap.example.org", "username": "u", "secret": "pw", "folder": "a\"b"}),
        json!({"host": "imap.example.org", "username": "u", "secret": "pw", "port": 0}),
    ] {
        let (status, body) = call!(app, token, "POST", &base, Some(bad.clone()));
        assert_eq!(status, 422, "{bad} → {body}");
        assert_eq!(body["code"], "invalid_imap_account");
    }
    let (status, body) = call!(
        app,
        token,
        "POST",
        &base,
        Some(json!({"host": "x", "password": "nope"}))
    );
    assert_eq!(status, 400, "{body}");
    // Internal destinations are refused (SSRF): loopback, private, link-local (cloud
    // metadata), names resolving there; a name that does not resolve is refused too.
    for (host, code) in [
        ("127.0.0.1", "imap_host_forbidden"),
        ("localhost", "imap_host_forbidden"),
        ("10.1.2.3", "imap_host_forbidden"),
        ("169.254.169.254", "imap_host_forbidden"),
        ("[::1]", "imap_host_forbidden"),
        ("no-such-host.invalid", "imap_host_unresolvable"),
    ] {
        let (status, body) = call!(
            app,
            token,
            "POST",
            &base,
            Some(json!({"host": host, "username": "u", "secret": "pw"})),
        );
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some(code)),
            "{host} → {body}"
        );
    }

    let (status, created) = call!(app, token, "POST", &base, Some(good));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["port"], 993);
    assert_eq!(created["tls"], "tls");
    assert_eq!(created["username"], "u@example.org");
    assert!(created.get("secret").is_none());
    let id = created["id"].as_str().unwrap();
    let (status, list) = call!(app, token, "GET", &base, None);
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, updated) = call!(
        app,
        token,
        "PATCH",
        &format!("{base}/{id}"),
        Some(json!({"enabled": false, "after_import": "move:Done"})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["after_import"], "move:Done");
    assert_eq!(updated["sync"]["status"], "disabled");
    let (status, _) = call!(
        app,
        token,
        "PATCH",
        &format!("{base}/{id}"),
        Some(json!({"secret": "n3w-s3cret"})),
    );
    assert_eq!(status, 200);
    // Audited: what changed, by whom — the secret only as the word "secret".
    let trail = env
        .ctx
        .read_stream(&postvak_platform::store::StreamRef::new(
            "imap_account",
            format!("imap-{}", id.parse::<Uuid>().unwrap().simple()),
        ))
        .await
        .unwrap();
    let changes: Vec<(String, Vec<String>)> = trail
        .iter()
        .skip(1)
        .map(|e| {
            let u: postvak_proto::events::ingest::ImapAccountUpdatedV1 = e.payload().unwrap();
            assert!(!u.position_reset);
            (e.event_type.clone(), u.changed)
        })
        .collect();
    assert_eq!(trail[0].event_type, "imap.account_created");
    assert_eq!(
        changes,
        vec![
            (
                "imap.account_updated".to_owned(),
                vec!["after_import".to_owned(), "enabled".to_owned()]
            ),
            ("imap.account_updated".to_owned(), vec!["secret".to_owned()]),
        ]
    );
    for e in &trail {
        let json = serde_json::to_string(&e.payload::<serde_json::Value>().unwrap()).unwrap();
        assert!(
            !json.contains("s3cret") && !json.contains("\"pw\""),
            "{json}"
        );
    }
    let (status, body) = call!(
        app,
        token,
        "PATCH",
        &format!("{base}/{id}"),
        Some(json!({"host": "192.168.0.10"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("imap_host_forbidden")),
        "{body}"
    );

    // A reply-only key may not manage accounts; another tenant's key sees nothing.
    let writer = env
        .directory
        .issue_api_key(&env.ctx, "writer", &["write".to_owned()], None, None)
        .await
        .unwrap();
    let (status, body) = call!(app, writer.token, "GET", &base, None);
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("inbox_permission_required"))
    );
    let (other_ctx, _) = env.other_tenant("support@other.test").await;
    let other = env
        .directory
        .issue_api_key(&other_ctx, "admin", &["admin".to_owned()], None, None)
        .await
        .unwrap();
    let (status, _) = call!(app, other.token, "GET", &format!("{base}/{id}"), None);
    assert_eq!(status, 404);
    let (status, _) = call!(
        app,
        token,
        "GET",
        &format!("{base}/{}", Uuid::now_v7()),
        None
    );
    assert_eq!(status, 404);
}

/// Many accounts at once with fewer sync slots than accounts: every good account is synced
/// (an account waiting in IDLE holds no slot), and one whose login fails backs off with its
/// error visible over the API without holding up the others.
#[tokio::test]
async fn many_accounts_sync_concurrently_and_a_failing_one_is_isolated() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let dovecot = Dovecot::start(None).await;
    let s = ImapSettings {
        max_concurrent_accounts: 2,
        ..settings(1024 * 1024)
    };
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let mut good = Vec::new();
    for f in 0..5 {
        let folder = format!("Team{f}");
        dovecot.create(&folder).await;
        let mails: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                mail(
                    &format!("f{f}-{i}@example.org"),
                    &format!("F{f} {i}"),
                    "",
                    "hi",
                )
            })
            .collect();
        dovecot.append(&folder, &mails).await;
        let (status, a) = call!(
            app,
            token,
            "POST",
            base,
            Some(json!({
                "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
                "username": USER, "secret": PASSWORD, "folder": folder,
            })),
        );
        assert_eq!(status, 201, "{a}");
        good.push(a["id"].as_str().unwrap().to_owned());
    }
    let (status, bad) = call!(
        app,
        token,
        "POST",
        base,
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "secret": "not the password",
        })),
    );
    assert_eq!(status, 201, "{bad}");
    let bad = bad["id"].as_str().unwrap().to_owned();

    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    let cancel = CancellationToken::new();
    let handles = connector.start(&env.cells, cancel.clone());
    wait_for("every good account", 60, || async {
        env.messages().await.len() == 10
    })
    .await;
    wait_for("the failing account's error", 30, || async {
        let (_, a) = call!(app, token, "GET", format!("{base}/{bad}"), None);
        a["sync"]["status"] == "error"
            && a["sync"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("login refused"))
    })
    .await;
    for id in &good {
        let (_, a) = call!(app, token, "GET", format!("{base}/{id}"), None);
        assert_eq!(a["sync"]["imported"], 2, "{a}");
        assert!(a["sync"]["last_error"].is_null(), "{a}");
    }
    // New mail for the last account still arrives while the others sit in IDLE.
    dovecot
        .append("Team4", &[mail("late@example.org", "Late", "", "late")])
        .await;
    wait_for("the late mail", 30, || async {
        env.messages().await.len() == 11
    })
    .await;
    cancel.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .expect("the supervisor stops on cancel")
            .unwrap();
    }
}

/// Renames the test database away (after closing its connections) or back: to the
/// connector, the database is down.
async fn rename_database(from: &str, to: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&testkit::admin_database_url())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(from)
        .execute(&mut admin)
        .await
        .unwrap();
        let sql = format!("ALTER DATABASE \"{from}\" RENAME TO \"{to}\"");
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "renaming {from}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The database goes away while new mail waits: the connector retries with backoff, imports
/// nothing and quarantines nothing meanwhile, and once the database is back imports the mail
/// exactly once.
#[tokio::test]
async fn database_outage_retries_without_advancing_or_quarantining() {
    let env = TestEnv::new(Backend::Postgres).await;
    let db_name = env.url.rsplit('/').next().unwrap().to_owned();
    let dovecot = Dovecot::start(None).await;
    dovecot
        .append("INBOX", &[mail("before@example.org", "Before", "", "one")])
        .await;
    let s = settings(1024 * 1024);
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let (status, a) = call!(
        app,
        token,
        "POST",
        base,
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "secret": PASSWORD,
        })),
    );
    assert_eq!(status, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_owned();
    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    let cancel = CancellationToken::new();
    let handles = connector.start(&env.cells, cancel.clone());
    wait_for("the first import", 60, || async {
        let (_, a) = call!(app, token, "GET", format!("{base}/{id}"), None);
        a["sync"]["last_uid"] == 1 && a["sync"]["status"] == "idle"
    })
    .await;

    let down = format!("{db_name}_down");
    rename_database(&db_name, &down).await;
    dovecot
        .append("INBOX", &[mail("during@example.org", "During", "", "two")])
        .await;
    // Several failed attempts (backoff 1–2 s) while the database is away.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rename_database(&down, &db_name).await;

    wait_for("the import after the outage", 60, || async {
        let (status, a) = call!(app, token, "GET", format!("{base}/{id}"), None);
        status == 200 && a["sync"]["last_uid"] == 2
    })
    .await;
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 2, "each message once");
    let (_, a) = call!(app, token, "GET", format!("{base}/{id}"), None);
    assert_eq!(a["sync"]["imported"], 2, "{a}");
    assert_eq!(a["sync"]["quarantined"], json!([]), "{a}");
    cancel.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
    }
}

/// A server without IDLE is polled every `poll_interval_secs`; `delete` removes imported mail
/// at the source (and only imported mail: a quarantined message stays).
#[tokio::test]
async fn without_idle_the_connector_polls_and_delete_removes_imported_mail() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let dovecot = Dovecot::start_with(None, "imap_capability = IMAP4rev1 LITERAL+ UIDPLUS").await;
    dovecot
        .append(
            "INBOX",
            &[
                mail("p1@example.org", "Poll 1", "", "one"),
                b"no header here\r\n".to_vec(),
            ],
        )
        .await;
    let mut probe = dovecot.session().await;
    let caps = probe.capabilities().await.unwrap();
    assert!(!caps.has_str("IDLE"), "this Dovecot must not offer IDLE");
    drop(caps);
    probe.logout().await.unwrap();
    let s = ImapSettings {
        poll_interval_secs: 1,
        ..settings(1024 * 1024)
    };
    let app = imap_api!(env, s.clone());
    let token = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let (status, a) = call!(
        app,
        token,
        "POST",
        base,
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "secret": PASSWORD, "after_import": "delete",
        })),
    );
    assert_eq!(status, 201, "{a}");
    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    let cancel = CancellationToken::new();
    let handles = connector.start(&env.cells, cancel.clone());
    wait_for("the first import", 60, || async {
        env.messages().await.len() == 1
    })
    .await;
    dovecot
        .append("INBOX", &[mail("p2@example.org", "Poll 2", "", "two")])
        .await;
    wait_for("the polled import", 30, || async {
        env.messages().await.len() == 2
    })
    .await;
    wait_for("the deletion at the source", 30, || async {
        dovecot.contents("INBOX").await.1.len() == 1
    })
    .await;
    // What is left is the quarantined message (UID 2).
    let (_, left) = dovecot.contents("INBOX").await;
    assert_eq!(left[0].0, 2);
    cancel.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
    }
}

/// A minimal OAuth 2 token introspection endpoint (RFC 7662) for Dovecot's `oauth2` passdb:
/// `token` is active for the test user, anything else is not. Returns its port.
async fn introspection_endpoint(token: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body by Content-Length.
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let body = if text.contains(&format!("token={token}")) {
                    format!("{{\"active\": true, \"username\": \"{USER}\"}}")
                } else {
                    "{\"active\": false}".to_owned()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

/// `auth = xoauth2`: the access token is checked by Dovecot's `oauth2` passdb against a
/// token introspection endpoint; a revoked token is a login error on the account.
#[tokio::test]
async fn xoauth2_login_with_an_access_token() {
    const TOKEN: &str = "ya29.test-access-token";
    let env = TestEnv::new(Backend::Sqlite).await;
    let port = introspection_endpoint(TOKEN).await;
    let dir = TempDir::new();
    let oauth_conf = dir.path().join("oauth2.conf");
    std::fs::write(
        &oauth_conf,
        format!(
            "introspection_mode = post\nintrospection_url = http://127.0.0.1:{port}/introspect\n\
             username_attribute = username\nactive_attribute = active\nactive_value = true\n\
             force_introspection = yes\n"
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .unwrap();
    Command::new("chmod")
        .arg("644")
        .arg(&oauth_conf)
        .status()
        .unwrap();
    let dovecot = Dovecot::start_with(
        None,
        &format!(
            "auth_mechanisms = plain login xoauth2\n\
             passdb {{\n  driver = oauth2\n  mechanisms = xoauth2\n  args = {}\n}}\n",
            oauth_conf.display()
        ),
    )
    .await;
    dovecot
        .append("INBOX", &[mail("oauth@example.org", "OAuth", "", "token")])
        .await;
    let s = settings(1024 * 1024);
    let app = imap_api!(env, s.clone());
    let admin = admin_token(&env).await;
    let base = format!("/v1/inboxes/{}/imap-accounts", env.inbox);
    let (status, a) = call!(
        app,
        admin,
        "POST",
        base,
        Some(json!({
            "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
            "username": USER, "auth": "xoauth2", "secret": TOKEN,
        })),
    );
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["auth"], "xoauth2");
    let id: Uuid = a["id"].as_str().unwrap().parse().unwrap();
    let connector = ImapConnector::new(env.ingestor.clone(), s).unwrap();
    let r = connector
        .sync_once(env.ctx.tenant(), id)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.log()));
    assert_eq!(r.imported, 1);
    let (status, _) = call!(
        app,
        admin,
        "PATCH",
        format!("{base}/{id}"),
        Some(json!({"secret": "revoked-token"})),
    );
    assert_eq!(status, 200);
    let err = connector.sync_once(env.ctx.tenant(), id).await.unwrap_err();
    assert!(err.to_string().contains("login refused"), "{err}");
}
