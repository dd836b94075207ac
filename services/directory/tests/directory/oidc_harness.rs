//! Test harness: the directory API served on a random loopback port over a fresh database, a
//! real OpenID provider (npm `oidc-provider`, see `tests/oidc/provider.js`) on another, and a
//! headless "browser" (a cookie jar) that logs in through the provider's interaction endpoints.

use actix_web::{App, HttpServer, web};
use postvak_directory::Directory;
use postvak_directory::sso::Sso;
use postvak_platform::auth::SharedAuthenticator;
use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::cell::{Cell, Cells, Principal, TenantContext};
use postvak_platform::db::{self, Db, DbOptions};
use postvak_platform::store::{self, TenantId};
use postvak_platform::testkit::{self, TempDir};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn log(msg: impl std::fmt::Display) {
    if std::env::var("TEST_LOG").is_ok() {
        eprintln!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// The application

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The directory API on a random port.
pub struct TestApp {
    pub base: String,
    pub dir: Directory,
    pub sso: Sso,
    pub http: reqwest::Client,
    _tmp: Option<TempDir>,
    server: actix_web::dev::ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { handle.stop(false).await });
        }
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        let (tmp, url) = match backend {
            Backend::Postgres => (None, testkit::fresh_postgres_database().await),
            Backend::Sqlite => {
                let (tmp, url) = testkit::fresh_sqlite_database();
                (Some(tmp), url)
            }
        };
        db::migrate(&url).await.expect("migrations run");
        let opts = DbOptions {
            app_role: None,
            ..DbOptions::default()
        };
        let store = store::open_store(&url, &opts, testkit::master_key())
            .await
            .expect("store opens");
        let bus = Arc::new(InProcessBus::new(store.clone()));
        let directory_db: Db = store.db().clone();
        let cells = Cells::new(
            vec![Cell {
                name: "local".into(),
                region: None,
                store,
                bus,
            }],
            "local",
            directory_db,
        )
        .expect("cells");
        let dir = Directory::new(cells);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let sso = Sso::new(Some(&base)).expect("sso runtime");
        let dir_data = web::Data::new(dir.clone());
        let sso_data = web::Data::new(sso.clone());
        let auth: SharedAuthenticator = Arc::new(dir.clone());
        let auth_data = web::Data::new(auth);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(dir_data.clone())
                .app_data(sso_data.clone())
                .app_data(auth_data.clone())
                .app_data(postvak_platform::http::json_config())
                .app_data(postvak_platform::http::query_config())
                .app_data(postvak_platform::http::path_config())
                .configure(postvak_directory::api::routes)
                .configure(postvak_directory::sso::routes)
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        TestApp {
            base,
            dir,
            sso,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            _tmp: tmp,
            server: handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn callback_url(&self) -> String {
        self.url("/v1/auth/sso/callback")
    }

    /// A tenant and an admin API key for it.
    pub async fn tenant(&self, name: &str) -> (TenantId, String) {
        let tenant = self.dir.create_tenant(name, None).await.expect("tenant");
        let ctx = self.ctx(tenant).await;
        let key = self
            .dir
            .issue_api_key(&ctx, "admin", &["admin".to_owned()], None, None)
            .await
            .expect("key");
        (tenant, key.token)
    }

    pub async fn ctx(&self, tenant: TenantId) -> TenantContext {
        self.dir
            .cells()
            .context(tenant, Principal::Service { name: "test" })
            .await
            .expect("context")
    }

    /// `PUT /v1/sso` with an admin key; the response status and body.
    pub async fn put_sso(&self, key: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .put(self.url("/v1/sso"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("PUT /v1/sso");
        status_json(resp).await
    }

    /// Configures SSO for a tenant against `idp` with `client` and these policy fields.
    pub async fn configure(&self, key: &str, idp: &IdpInfo, client: &str, extra: Value) {
        let mut body = json!({
            "issuer": idp.issuer,
            "client_id": client,
            "client_secret": client_secret(client),
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, resp) = self.put_sso(key, &body).await;
        assert_eq!(status, 200, "PUT /v1/sso: {resp}");
    }

    /// `GET /v1/auth/sso/{tenant}/start`: the provider URL and the state cookie.
    pub async fn start(&self, tenant: TenantId, query: &str) -> Started {
        let resp = self
            .http
            .get(self.url(&format!("/v1/auth/sso/{}/start?{query}", tenant.0)))
            .send()
            .await
            .expect("start");
        assert_eq!(
            resp.status(),
            302,
            "start: {}",
            resp.text().await.unwrap_or_default()
        );
        let location = header(&resp, "location").expect("Location");
        let state_cookie =
            set_cookie(&resp, postvak_directory::sso::STATE_COOKIE).expect("state cookie");
        let state = query_param(&location, "state").expect("state in the authorization URL");
        assert_eq!(state, state_cookie, "the cookie binds the state");
        Started {
            authorize_url: location,
            state,
        }
    }

    /// Calls the callback with the query the provider sent and the state cookie.
    pub async fn callback(&self, query: &str, state_cookie: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}?{query}", self.callback_url()));
        if let Some(s) = state_cookie {
            req = req.header(
                "cookie",
                format!("{}={s}", postvak_directory::sso::STATE_COOKIE),
            );
        }
        req.send().await.expect("callback")
    }

    /// Runs raw SQL on the global directory database (to tamper with a pending login).
    pub async fn exec(&self, sql: &'static str, bind: &str) {
        match self.dir.cells().directory() {
            Db::Postgres(p) => {
                sqlx::query(sql).bind(bind).execute(p).await.expect("sql");
            }
            Db::Sqlite(s) => {
                sqlx::query(sql)
                    .bind(bind)
                    .execute(&s.writer)
                    .await
                    .expect("sql");
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Started {
    pub authorize_url: String,
    pub state: String,
}

pub async fn status_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts a problem+json refusal with this status and code.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let ctype = header(&resp, "content-type").unwrap_or_default();
    let (got, body) = status_json(resp).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (status, Some(code)),
        "body: {body}"
    );
    assert!(
        ctype.starts_with("application/problem+json"),
        "content type {ctype}"
    );
    body
}

pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The value a `Set-Cookie` header of the response gives `name`.
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name && !v.is_empty()).then(|| v.trim().to_owned())
        })
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Replaces (or, with `None`, removes) one query parameter of a query string.
pub fn with_param(query: &str, name: &str, value: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("query")
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(v) = value {
        pairs.push((name.to_owned(), v.to_owned()));
    }
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The OpenID provider

/// A client of a provider; its secret is derived from its id.
pub fn client_secret(client_id: &str) -> String {
    format!("secret-of-{client_id}-0123456789abcdef0123456789abcdef")
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: &'static str,
    pub email: &'static str,
    pub role: Option<&'static str>,
    pub amr: &'static [&'static str],
    pub acr: Option<&'static str>,
    pub email_verified: bool,
}

impl Account {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "password": PASSWORD,
            "email": self.email,
            "email_verified": self.email_verified,
            "name": format!("{} (test)", self.id),
            "role": self.role,
            "amr": self.amr,
            "acr": self.acr,
        })
    }
}

/// One provider to start: its name, client ids (all redirecting to `redirect_uri`) and accounts.
#[derive(Debug, Clone)]
pub struct IdpSpec {
    pub name: &'static str,
    pub clients: Vec<&'static str>,
    pub accounts: Vec<Account>,
}

/// What a started provider tells about itself.
#[derive(Debug, Clone, Deserialize)]
pub struct IdpInfo {
    pub name: String,
    pub issuer: String,
    pub kid: String,
    /// The provider's own signing key (to craft tokens whose only fault is their claims).
    pub private_pem: String,
    /// A key the provider never published.
    pub rogue_pem: String,
}

#[derive(Deserialize)]
struct Ready {
    providers: Vec<IdpInfo>,
}

/// Running providers (one node process); killed on drop.
pub struct Idps {
    pub providers: Vec<IdpInfo>,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl Idps {
    pub fn get(&self, name: &str) -> &IdpInfo {
        self.providers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no provider {name}"))
    }

    /// Starts the providers; their clients redirect to `redirect_uri`.
    pub async fn start(specs: &[IdpSpec], redirect_uri: &str) -> Idps {
        let oidc_dir = ensure_installed();
        let dir = TempDir::new();
        let config = json!({
            "providers": specs.iter().map(|s| json!({
                "name": s.name,
                "clients": s.clients.iter().map(|c| json!({
                    "client_id": c,
                    "client_secret": client_secret(c),
                    "redirect_uris": [redirect_uri],
                })).collect::<Vec<_>>(),
                "accounts": s.accounts.iter().map(Account::json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).expect("write provider config");
        let stderr_path = dir.path().join("provider.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = tokio::process::Command::new("node")
            .arg(oidc_dir.join("provider.js"))
            .arg(&config_path)
            .current_dir(&oidc_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node (is Node.js installed?): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Generous: under a parallel build, starting node and making RSA keys can be slow.
        let deadline = Duration::from_secs(120);
        let line = match tokio::time::timeout(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("the OpenID provider did not start ({other:?}):\n{err}");
            }
        };
        let ready: Ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("unexpected provider output {line:?}: {e}"));
        // Keep reading, so the provider never writes into a closed pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log(format!("[provider] {line}"));
            }
        });
        log(format!(
            "providers: {:?}",
            ready
                .providers
                .iter()
                .map(|p| &p.issuer)
                .collect::<Vec<_>>()
        ));
        Idps {
            providers: ready.providers,
            _child: child,
            _dir: dir,
        }
    }
}

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("oidc")
}

/// Installs the provider's npm packages once (from package-lock.json) when missing. Fails
/// clearly when Node.js or npm is not installed.
fn ensure_installed() -> PathBuf {
    static INSTALL: Mutex<bool> = Mutex::new(false);
    let dir = oidc_dir();
    let mut done = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *done {
        return dir;
    }
    for tool in ["node", "npm"] {
        match std::process::Command::new(tool).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "{tool} --version failed ({}): the OIDC tests need Node.js and npm",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!(
                "{tool} is not installed or not on PATH ({e}): the OIDC tests run a real OpenID \
                 provider (npm oidc-provider) and need Node.js ≥ 20 and npm"
            ),
        }
    }
    if !dir
        .join("node_modules")
        .join("oidc-provider")
        .join("package.json")
        .exists()
    {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("npm ci failed to run: {e}"));
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *done = true;
    dir
}

// ---------------------------------------------------------------------------------------------
// The browser

/// A headless browser for the provider: keeps its cookies, follows its redirects, answers
/// its login interaction, and stops at the application's callback.
pub struct Browser {
    http: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("browser"),
        }
    }

    /// Logs `account` in at the provider, starting from the authorization URL. Returns the
    /// query string the provider sent to `callback`.
    pub async fn login(&self, authorize_url: &str, account: &str, callback: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut url = authorize_url.to_owned();
        let mut logged_in = false;
        loop {
            assert!(Instant::now() < deadline, "the login did not finish");
            if let Some(query) = url.strip_prefix(&format!("{callback}?")) {
                return query.to_owned();
            }
            let resp = self.http.get(&url).send().await.expect("provider request");
            let status = resp.status();
            if status.is_redirection() {
                url = resolve(&url, &header(&resp, "location").expect("Location"));
                continue;
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "provider answered {status} at {url}: {body}");
            let uid = body["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("no interaction: {body}"));
            assert_eq!(body["prompt"], "login", "unexpected prompt: {body}");
            assert!(!logged_in, "the provider asked to log in twice: {body}");
            let post = resolve(&url, &format!("/interaction/{uid}/login"));
            let resp = self
                .http
                .post(&post)
                .form(&[("login", account), ("password", PASSWORD)])
                .send()
                .await
                .expect("login post");
            assert!(
                resp.status().is_redirection(),
                "login refused: {}",
                resp.text().await.unwrap_or_default()
            );
            logged_in = true;
            url = resolve(&post, &header(&resp, "location").expect("Location"));
        }
    }
}

fn resolve(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| location.to_owned())
}
