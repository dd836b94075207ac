//! Shared test setup: a fresh database per test (SQLite file or PostgreSQL database), a tenant
//! with an inbox made by the real directory service, an SMTP listener on a free port, and the
//! real external clients (Python's smtplib, swaks, openssl) — missing tools fail the test with
//! a message saying what to install.

use postvak_directory::Directory;
use postvak_ingest::settings::SmtpSettings;
use postvak_ingest::smtp::SmtpServer;
use postvak_ingest::standalone;
use postvak_ingest::{Ingestor, pipeline};
use postvak_platform::cell::{Cells, Principal, TenantContext};
use postvak_platform::testkit;
use postvak_proto::events::ingest::MessageReceivedV1;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

#[derive(Debug)]
pub struct TestEnv {
    pub url: String,
    pub master_b64: String,
    pub cells: Cells,
    pub directory: Directory,
    pub ctx: TenantContext,
    pub inbox: Uuid,
    pub ingestor: Ingestor,
    _tmp: Option<testkit::TempDir>,
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
        let master_b64 = postvak_platform::crypto::MasterKey::generate_base64();
        let master = postvak_platform::crypto::MasterKey::from_base64(&master_b64).unwrap();
        let cells = standalone::open_cells(&url, master, true).await.unwrap();
        let directory = Directory::new(cells.clone());
        let tenant = directory.create_tenant("Acme", None).await.unwrap();
        let ctx = cells
            .context(tenant, Principal::Service { name: "test" })
            .await
            .unwrap();
        let inbox = directory
            .create_inbox(
                &ctx,
                "Support",
                &["support@acme.test".to_owned(), "help@acme.test".to_owned()],
            )
            .await
            .unwrap()
            .id;
        let ingestor = Ingestor::new(cells.clone());
        Self {
            url,
            master_b64,
            cells,
            directory,
            ctx,
            inbox,
            ingestor,
            _tmp: tmp,
        }
    }

    pub async fn add_inbox(&self, name: &str, address: &str) -> Uuid {
        self.directory
            .create_inbox(&self.ctx, name, &[address.to_owned()])
            .await
            .unwrap()
            .id
    }

    /// A second tenant with its own inbox.
    pub async fn other_tenant(&self, address: &str) -> (TenantContext, Uuid) {
        let t = self.directory.create_tenant("Other", None).await.unwrap();
        let ctx = self
            .cells
            .context(t, Principal::Service { name: "test" })
            .await
            .unwrap();
        let inbox = self
            .directory
            .create_inbox(&ctx, "Other", &[address.to_owned()])
            .await
            .unwrap()
            .id;
        (ctx, inbox)
    }

    pub async fn messages(&self) -> Vec<MessageReceivedV1> {
        self.ingestor.received_messages(&self.ctx).await.unwrap()
    }

    pub async fn messages_of(&self, ctx: &TenantContext) -> Vec<MessageReceivedV1> {
        self.ingestor.received_messages(ctx).await.unwrap()
    }

    pub async fn blob(&self, blob_id: Uuid) -> Vec<u8> {
        self.ingestor
            .read_blob(&self.ctx, blob_id)
            .await
            .unwrap()
            .expect("blob stored")
    }

    /// Delivers raw bytes to an inbox of this tenant through the pipeline (as the raw-MIME
    /// endpoint does).
    pub async fn deliver(&self, inbox: Uuid, raw: &[u8]) -> pipeline::Delivery {
        let raw = std::sync::Arc::new(raw.to_vec());
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

    pub async fn spawn_smtp(&self, settings: SmtpSettings) -> RunningSmtp {
        let settings = SmtpSettings {
            addr: "127.0.0.1:0".into(),
            hostname: "mx.postvak.test".into(),
            ..settings
        };
        let server = SmtpServer::bind(settings, self.cells.clone())
            .await
            .unwrap();
        let port = server.port();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(server.run(cancel.clone()));
        RunningSmtp {
            port,
            cancel,
            handle,
        }
    }
}

#[derive(Debug)]
pub struct RunningSmtp {
    pub port: u16,
    pub cancel: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningSmtp {
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

/// The path of a tool, or a failed test saying how to get it.
pub fn require_tool(name: &str, hint: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "this test needs `{name}` and it is not installed: {hint}"
    );
    PathBuf::from(path)
}

pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Runs Python's smtplib client (tests/smtp_client.py); returns its JSON report.
pub async fn smtplib_send(
    port: u16,
    to: &[&str],
    files: &[&Path],
    starttls: bool,
) -> serde_json::Value {
    require_tool("python3", "install Python 3");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(tests_dir().join("smtp_client.py"))
        .arg("--port")
        .arg(port.to_string());
    if starttls {
        cmd.arg("--starttls");
    }
    for t in to {
        cmd.arg("--to").arg(t);
    }
    for f in files {
        cmd.arg("--file").arg(f);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("smtplib client finished in time")
        .unwrap();
    assert!(
        out.status.success(),
        "smtp_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A self-signed certificate for `localhost` made by the real `openssl`: (dir, cert, key).
pub fn self_signed_cert() -> (testkit::TempDir, PathBuf, PathBuf) {
    require_tool("openssl", "apt-get install openssl");
    let dir = testkit::TempDir::new();
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
    (dir, cert, key)
}

/// A mail with CRLF line endings.
pub fn mail(message_id: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@example.org>\r\nTo: support@acme.test\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
    );
    if !extra_headers.is_empty() {
        m.push_str(extra_headers.trim_end_matches("\r\n"));
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&body.replace("\r\n", "\n").replace('\n', "\r\n"));
    if !m.ends_with("\r\n") {
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// A minimal SMTP client speaking the protocol directly (for the crash test, where every reply
/// must be observed exactly).
#[derive(Debug)]
pub struct RawSmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawSmtp {
    pub async fn connect(port: u16) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        let (r, w) = s.into_split();
        let mut c = Self {
            reader: BufReader::new(r),
            writer: w,
        };
        c.reply().await?;
        c.cmd("EHLO client.test\r\n").await?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply; returns its code.
    pub async fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.len() >= 4 && line.as_bytes()[3] == b'-' {
                continue;
            }
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")));
        }
    }

    pub async fn cmd(&mut self, c: &str) -> std::io::Result<u16> {
        self.writer.write_all(c.as_bytes()).await?;
        self.reply().await
    }

    /// One transaction; the final reply code (250 = stored).
    pub async fn send(&mut self, to: &str, data: &[u8]) -> std::io::Result<u16> {
        let c = self.cmd("MAIL FROM:<alice@example.org>\r\n").await?;
        if c != 250 {
            return Ok(c);
        }
        let c = self.cmd(&format!("RCPT TO:<{to}>\r\n")).await?;
        if c != 250 {
            self.cmd("RSET\r\n").await?;
            return Ok(c);
        }
        let c = self.cmd("DATA\r\n").await?;
        if c != 354 {
            return Ok(c);
        }
        let mut stuffed = Vec::with_capacity(data.len() + 8);
        for line in data.split_inclusive(|b| *b == b'\n') {
            if line.first() == Some(&b'.') {
                stuffed.push(b'.');
            }
            stuffed.extend_from_slice(line);
        }
        if !stuffed.ends_with(b"\r\n") {
            stuffed.extend_from_slice(b"\r\n");
        }
        stuffed.extend_from_slice(b".\r\n");
        self.writer.write_all(&stuffed).await?;
        self.reply().await
    }
}
