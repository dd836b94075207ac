//! A real SMTP relay for tests: aiosmtpd (installed with pip when missing) with STARTTLS
//! required, AUTH required, and a certificate from a throw-away CA made with openssl. Every
//! accepted message is written to a directory as `<n>.eml`, with the envelope and the client's
//! port (which connection brought it) as `X-` headers on top.

use postvak_notification::{OutboundSmtpSettings, SmtpSecurity};
use postvak_platform::config::SecretString;
use postvak_platform::testkit::TempDir;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = r#"
import asyncio, os, ssl, sys, time, warnings
warnings.simplefilter("ignore")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, outdir, mode, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
login, password = sys.argv[6].encode(), sys.argv[7].encode()
counter = [0]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        if mode == "reject":
            return "550 5.7.1 Relaying denied by policy"
        if mode == "reject_customers" and any(r.endswith("@example.org") for r in envelope.rcpt_tos):
            return "550 5.1.1 Recipient address rejected: mailbox unavailable"
        counter[0] += 1
        name = os.path.join(outdir, "%09d-%d.eml" % (counter[0], os.getpid()))
        with open(name + ".tmp", "wb") as f:
            f.write(("X-Envelope-From: %s\r\nX-Envelope-To: %s\r\nX-Peer-Port: %d\r\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos), session.peer[1])).encode())
            f.write(envelope.original_content)
        os.rename(name + ".tmp", name)
        if mode == "slow":
            await asyncio.sleep(3)
        return "250 2.0.0 OK queued"

def auth(server, session, envelope, mechanism, data):
    ok = data is not None and getattr(data, "login", None) == login and getattr(data, "password", None) == password
    return AuthResult(success=ok)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
if mode == "smtps":
    # TLS from the first byte (port 465 style). aiosmtpd counts only STARTTLS as TLS for
    # auth_require_tls, so it is off here: every byte of this session is encrypted anyway.
    c = Controller(Handler(), hostname="127.0.0.1", port=port, ssl_context=ctx,
                   authenticator=auth, auth_required=True, auth_require_tls=False, ready_timeout=10)
else:
    c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                   authenticator=auth, auth_required=True, auth_require_tls=True, ready_timeout=10)
c.start()
print("READY", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    c.stop()
"#;

fn ensure_aiosmtpd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let have = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if have {
            return;
        }
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
            .output()
            .expect("python3 is needed to run the test SMTP relay");
        assert!(
            out.status.success(),
            "pip could not install aiosmtpd (needed as the test SMTP relay): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd
        .output()
        .expect("openssl is needed to make the test certificate");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost/127.0.0.1, in `dir`.
fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    run(std::process::Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=Postvak Test CA",
    ]));
    run(std::process::Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
        "-subj",
        "/CN=localhost",
    ]));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(std::process::Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("cert.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]));
}

/// A relay on a fixed port that may be started, stopped and started again.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// The AUTH login it accepts (`relay` / `s3cret` unless made with [`SmtpSink::with_login`]).
    pub login: (String, String),
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SmtpSink {
    /// Prepared but not listening (a relay that is down).
    pub fn new() -> Self {
        ensure_aiosmtpd();
        let dir = TempDir::new();
        make_certs(dir.path());
        std::fs::create_dir_all(dir.path().join("mail")).unwrap();
        std::fs::write(dir.path().join("sink.py"), SCRIPT).unwrap();
        Self {
            port: free_port(),
            dir,
            child: None,
            login: ("relay".into(), "s3cret".into()),
        }
    }

    /// Another relay with its own login, and a certificate from `ca_of`'s CA (the one an
    /// operator's `ca_cert_file` trusts).
    pub fn with_login(ca_of: &SmtpSink, login: &str, password: &str) -> Self {
        ensure_aiosmtpd();
        let dir = TempDir::new();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::copy(ca_of.dir.path().join(f), dir.path().join(f)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("mail")).unwrap();
        std::fs::write(dir.path().join("sink.py"), SCRIPT).unwrap();
        Self {
            port: free_port(),
            dir,
            child: None,
            login: (login.into(), password.into()),
        }
    }

    /// Starts accepting mail (`reject` = every message gets 550).
    pub async fn start(&mut self, reject: bool) {
        self.start_mode(if reject { "reject" } else { "accept" })
            .await;
    }

    /// Starts in a mode: `accept`, `reject` (550 to all), `reject_customers` (550 to mail for
    /// anyone at example.org, our agents' mail is accepted), `smtps` (accepts, TLS from the
    /// first byte instead of STARTTLS), `slow` (accepts, but answers each message 3 s after it
    /// is written to the directory).
    pub async fn start_mode(&mut self, mode: &str) {
        let mut child = Command::new("python3")
            .arg(self.dir.path().join("sink.py"))
            .arg(self.port.to_string())
            .arg(self.mail_dir())
            .arg(mode)
            .arg(self.dir.path().join("cert.pem"))
            .arg(self.dir.path().join("key.pem"))
            .arg(&self.login.0)
            .arg(&self.login.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start python3");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        assert!(
            matches!(ready, Ok(Ok(Some(ref l))) if l == "READY"),
            "the test SMTP relay did not start: {ready:?}"
        );
        self.child = Some(child);
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Settings that reach this relay with STARTTLS and AUTH, retrying quickly.
    pub fn settings(&self) -> OutboundSmtpSettings {
        OutboundSmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            security: SmtpSecurity::Starttls,
            username: Some("relay".into()),
            password: Some(SecretString::new("s3cret")),
            ca_cert_file: Some(self.dir.path().join("ca.pem")),
            timeout_ms: 5_000,
            retry_base_ms: 200,
            retry_max_ms: 1_000,
            ..OutboundSmtpSettings::default()
        }
    }

    /// Messages received so far, oldest first.
    pub fn received(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.mail_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }

    /// Waits until at least `n` messages arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay received {} of {n} messages",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
