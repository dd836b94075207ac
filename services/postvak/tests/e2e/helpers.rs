use postvak_platform::testkit::TempDir;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_postvak");

/// A `postvak` command with a clean environment (no inherited `POSTVAK_*` settings) and its
/// data directory in `dir`.
pub fn command(dir: &TempDir) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("POSTVAK_") && !k.starts_with("POSTVAK_TEST_") {
            c.env_remove(k);
        }
    }
    c.env("POSTVAK_DATA_DIR", dir.path())
        .env("POSTVAK_HTTP__ADDR", "127.0.0.1:0")
        .env("POSTVAK_SMTP__ADDR", "127.0.0.1:0")
        .env("POSTVAK_HTTP__SHUTDOWN_GRACE_SECS", "5")
        .env("POSTVAK_TELEMETRY__LOG_LEVEL", "warn")
        .current_dir(dir.path());
    c
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub api_key: Option<String>,
    pub smtp_port: Option<u16>,
}

impl Server {
    /// Starts `cmd` (already configured) and waits for it to print its HTTP address.
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postvak starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var("TEST_LOG").is_ok() {
                    eprintln!("[postvak] {line}");
                }
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        let mut base = None;
        let mut api_key = None;
        let mut smtp_port = None;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("HTTP API:") {
                        let url = rest.split_whitespace().next().unwrap();
                        base = Some(url.trim_end_matches("/v1").to_owned());
                    }
                    if let Some(rest) = line.trim().strip_prefix("SMTP:") {
                        smtp_port = rest
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| p.parse().ok());
                    }
                    if let Some(rest) = line.trim().strip_prefix("admin API key:") {
                        api_key = Some(rest.trim().to_owned());
                    }
                    let done = line.contains("Press Ctrl-C");
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "postvak exited with {status} before serving:\n{}",
                            lines.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let Some(base) = base else {
            let _ = child.kill();
            panic!(
                "postvak did not print its address within 60 s:\n{}",
                lines.join("\n")
            );
        };
        Server {
            child,
            base,
            api_key,
            smtp_port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("postvak did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Runs a short-lived command to completion: (exit code, stdout, stderr).
pub fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("postvak runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a problem+json body with the given status and code.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    body
}

/// Polls `GET /v1/conversations` (up to 20 s) until `done` holds for the page; returns it.
pub async fn conversations_until(
    server: &Server,
    key: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page: serde_json::Value = c
            .get(server.url("/v1/conversations"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "conversations after 20 s: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
