//! `postvak-ingest-smtpd`: only the SMTP listener, over one database. Configured from the
//! environment:
//!
//! - `POSTVAK_INGEST_DATABASE_URL` (`postgres://…` or `sqlite:…`), migrated at start;
//! - `POSTVAK_INGEST_MASTER_KEY` (32 bytes, base64);
//! - `POSTVAK_INGEST_SMTP` (optional): the SMTP settings as JSON, e.g.
//!   `{"addr":"127.0.0.1:0","hostname":"mx.example"}`.
//!
//! Prints `listening <port>` on stdout once the listener is bound; stops on SIGINT/SIGTERM.

use anyhow::Context;
use postvak_ingest::settings::SmtpSettings;
use postvak_ingest::smtp::SmtpServer;
use postvak_platform::crypto::MasterKey;
use std::io::Write;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let url =
        std::env::var("POSTVAK_INGEST_DATABASE_URL").context("set POSTVAK_INGEST_DATABASE_URL")?;
    let master = MasterKey::from_base64(
        &std::env::var("POSTVAK_INGEST_MASTER_KEY").context("set POSTVAK_INGEST_MASTER_KEY")?,
    )?;
    let settings: SmtpSettings = match std::env::var("POSTVAK_INGEST_SMTP") {
        Ok(json) => {
            serde_json::from_str(&json).context("POSTVAK_INGEST_SMTP is not valid settings")?
        }
        Err(_) => SmtpSettings::default(),
    };
    let cells = postvak_ingest::standalone::open_cells(&url, master, true).await?;
    let server = SmtpServer::bind(settings, cells).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", server.port())?;
        out.flush()?;
    }
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        stop.cancel();
    });
    server.run(cancel).await
}
