//! The inbound SMTP listener (an MX for the tenants' inbox addresses, never a relay).
//!
//! smtp-proto parses commands and un-stuffs DATA; this module is the session loop: EHLO/HELO,
//! STARTTLS (rustls with ring), SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES; `RCPT TO` only
//! for a known inbox address, alias or `+tag` form of one (else 550); per-peer connection and
//! message-rate limits; and **250 only after the pipeline has stored the raw message and
//! committed its `message.received` event** — any failure before that is a 451, so the sender
//! retries and dedupe makes the retry harmless.

use crate::pipeline::{Ingestor, Recipient, Source};
use crate::settings::SmtpSettings;
use anyhow::Context;
use postvak_platform::cell::Cells;
use postvak_proto::events::ingest::EnvelopeV1;
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as ProtoError, Request};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// A bound, not yet running, SMTP listener.
pub struct SmtpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

struct Shared {
    settings: SmtpSettings,
    ingestor: Ingestor,
    tls: Option<TlsAcceptor>,
    peers: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Loads a rustls server configuration (ring provider) from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl SmtpServer {
    /// Binds the listener (and loads the TLS certificate when configured).
    pub async fn bind(settings: SmtpSettings, cells: Cells) -> anyhow::Result<Self> {
        let tls = match (&settings.tls_cert_path, &settings.tls_key_path) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
            (None, None) => None,
            _ => anyhow::bail!("smtp: set both tls_cert_path and tls_key_path, or neither"),
        };
        let listener = TcpListener::bind(&settings.addr)
            .await
            .with_context(|| format!("binding SMTP on {}", settings.addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                settings,
                ingestor: Ingestor::new(cells),
                tls,
                peers: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `cancel`; then stops accepting, tells idle sessions `421`,
    /// and lets sessions in the middle of a delivery finish (up to the grace period).
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let limit = Arc::new(Semaphore::new(self.shared.settings.max_connections.max(1)));
        let mut sessions = JoinSet::new();
        tracing::info!(addr = %self.local_addr, tls = self.shared.tls.is_some(), "SMTP listening");
        loop {
            while sessions.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                p = limit.clone().acquire_owned() => p?,
            };
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let shared = self.shared.clone();
                    let cancel = cancel.clone();
                    sessions.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = serve_connection(shared, stream, peer, cancel).await {
                            tracing::debug!(%peer, error = %e, "SMTP session ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "SMTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let grace = Duration::from_secs(self.shared.settings.shutdown_grace_secs);
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("SMTP sessions did not finish within the grace period");
            sessions.abort_all();
        }
        Ok(())
    }
}

/// Decrements the peer's connection count when the session ends.
struct PeerGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut peers = lock(&self.shared.peers);
        if let Some(n) = peers.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerGuard> {
        let mut peers = lock(&self.peers);
        let n = peers.entry(ip).or_insert(0);
        if *n >= self.settings.max_connections_per_peer.max(1) {
            return None;
        }
        *n += 1;
        Some(PeerGuard {
            shared: self.clone(),
            ip,
        })
    }

    /// Takes one message token of the peer's bucket.
    fn take_message_token(&self, ip: IpAddr) -> bool {
        let per_minute = self.settings.max_messages_per_minute_per_peer;
        if per_minute == 0 {
            return true;
        }
        let capacity = f64::from(per_minute);
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() > 100_000 {
            // Forget peers whose buckets are full again: they lose nothing by it.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * capacity / 60.0 < capacity
            });
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * capacity / 60.0).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn serve_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let Some(_guard) = shared.admit(peer.ip()) else {
        metrics::counter!("postvak_smtp_refused_connections_total").increment(1);
        stream
            .write_all(b"421 4.7.0 Too many connections from your address, try again later\r\n")
            .await?;
        return Ok(());
    };
    let mut session = Session::new(shared.clone(), peer);
    stream
        .write_all(format!("220 {} ESMTP Postvak\r\n", shared.settings.hostname).as_bytes())
        .await?;
    match session.serve(&mut stream, &cancel).await? {
        Outcome::Closed => Ok(()),
        Outcome::StartTls => {
            let Some(acceptor) = shared.tls.clone() else {
                return Ok(());
            };
            let timeout = Duration::from_secs(30);
            let mut tls = tokio::time::timeout(timeout, acceptor.accept(stream))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake failed")?;
            session.after_tls();
            session.serve(&mut tls, &cancel).await?;
            let _ = tls.shutdown().await;
            Ok(())
        }
    }
}

enum Outcome {
    Closed,
    StartTls,
}

enum Next {
    Continue,
    StartTls,
    Quit,
}

struct Transaction {
    mail_from: String,
    recipients: Vec<Recipient>,
}

struct DataState {
    receiver: DataReceiver,
    body: Vec<u8>,
    too_big: bool,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    helo: Option<String>,
    tls: bool,
    tx: Option<Transaction>,
    data: Option<DataState>,
    errors: u32,
}

impl Session {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Self {
            shared,
            peer,
            helo: None,
            tls: false,
            tx: None,
            data: None,
            errors: 0,
        }
    }

    /// RFC 3207: after STARTTLS the client starts over with EHLO.
    fn after_tls(&mut self) {
        self.tls = true;
        self.helo = None;
        self.tx = None;
        self.data = None;
    }

    fn settings(&self) -> &SmtpSettings {
        &self.shared.settings
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let mut receiver = RequestReceiver::default();
        let mut chunk = vec![0u8; 32 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(512);
        let idle = Duration::from_secs(self.settings().idle_timeout_secs.max(1));
        loop {
            // Replies to a pipelined group go out together, once its commands are consumed.
            if !out.is_empty() {
                io.write_all(&out).await?;
                io.flush().await?;
                out.clear();
            }
            let n = tokio::select! {
                r = tokio::time::timeout(idle, io.read(&mut chunk)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        io.write_all(b"421 4.4.2 Idle too long, closing connection\r\n").await?;
                        return Ok(Outcome::Closed);
                    }
                },
                _ = cancel.cancelled() => {
                    io.write_all(b"421 4.3.2 Shutting down, try again later\r\n").await?;
                    return Ok(Outcome::Closed);
                }
            };
            if n == 0 {
                return Ok(Outcome::Closed);
            }
            let mut bytes = chunk[..n].iter();
            loop {
                if let Some(data) = self.data.as_mut() {
                    let done = data.receiver.ingest(&mut bytes, &mut data.body);
                    // +2: the CRLF primed at DATA.
                    if data.body.len() > self.shared.settings.max_message_size + 2 {
                        data.too_big = true;
                        // Keep reading to the end of DATA, storing nothing.
                        data.body.clear();
                    }
                    if !done {
                        break;
                    }
                    let reply = self.finish_data().await;
                    out.extend_from_slice(reply.as_bytes());
                    continue;
                }
                let req = match receiver.ingest(&mut bytes) {
                    Ok(r) => Ok(r.into_owned()),
                    Err(e) => Err(e),
                };
                match req {
                    Ok(req) => match self.handle(req, &mut out).await {
                        Next::Continue => {}
                        Next::Quit => {
                            io.write_all(&out).await?;
                            io.flush().await?;
                            return Ok(Outcome::Closed);
                        }
                        Next::StartTls => {
                            // Anything pipelined after STARTTLS is dropped (RFC 3207 §4.2:
                            // plaintext injected before the handshake must not be acted on).
                            io.write_all(&out).await?;
                            io.flush().await?;
                            return Ok(Outcome::StartTls);
                        }
                    },
                    Err(ProtoError::NeedsMoreData { .. }) => break,
                    Err(e) => {
                        out.extend_from_slice(protocol_error_reply(&e).as_bytes());
                        if self.count_error() {
                            out.extend_from_slice(
                                b"421 4.7.0 Too many errors, closing connection\r\n",
                            );
                            io.write_all(&out).await?;
                            return Ok(Outcome::Closed);
                        }
                    }
                }
            }
        }
    }

    /// `true` when the connection must close.
    fn count_error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= self.settings().max_errors.max(1)
    }

    async fn handle(&mut self, req: Request<String>, out: &mut Vec<u8>) -> Next {
        let reply: String = match req {
            Request::Ehlo { host } => {
                self.helo = Some(host.clone());
                self.tx = None;
                let s = self.settings();
                let mut lines = vec![
                    format!("{} greets {}", s.hostname, sanitize(&host)),
                    format!("SIZE {}", s.max_message_size),
                    "8BITMIME".to_owned(),
                    "PIPELINING".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                ];
                if self.shared.tls.is_some() && !self.tls {
                    lines.push("STARTTLS".to_owned());
                }
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{}\r\n", if i == last { ' ' } else { '-' }, l))
                    .collect()
            }
            Request::Helo { host } => {
                self.helo = Some(host);
                self.tx = None;
                format!("250 {}\r\n", self.settings().hostname)
            }
            Request::Lhlo { .. } => "500 5.5.1 This is SMTP, not LMTP\r\n".to_owned(),
            Request::StartTls => {
                if self.tls {
                    "503 5.5.1 TLS is already active\r\n".to_owned()
                } else if self.shared.tls.is_none() {
                    "502 5.5.1 STARTTLS is not available\r\n".to_owned()
                } else {
                    out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                    return Next::StartTls;
                }
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    "503 5.5.1 Send EHLO or HELO first\r\n".to_owned()
                } else if self.tx.is_some() {
                    "503 5.5.1 A transaction is already open; RSET first\r\n".to_owned()
                } else if from.size > self.settings().max_message_size {
                    format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                        self.settings().max_message_size
                    )
                } else if !self.shared.take_message_token(self.peer.ip()) {
                    metrics::counter!("postvak_smtp_rate_limited_total").increment(1);
                    "451 4.7.1 Too many messages from your address, try again later\r\n".to_owned()
                } else {
                    self.tx = Some(Transaction {
                        mail_from: from.address,
                        recipients: Vec::new(),
                    });
                    "250 2.1.0 Sender OK\r\n".to_owned()
                }
            }
            Request::Rcpt { to } => self.rcpt(&to.address).await,
            Request::Data => match &self.tx {
                None => "503 5.5.1 MAIL FROM first\r\n".to_owned(),
                Some(tx) if tx.recipients.is_empty() => {
                    "554 5.5.1 No valid recipients\r\n".to_owned()
                }
                Some(_) => {
                    let mut receiver = DataReceiver::new();
                    let mut body = Vec::with_capacity(16 * 1024);
                    // Primes the un-stuffer as if a line had just ended, so a first line that
                    // starts with a dot (or an empty message) is read right; stripped later.
                    receiver.ingest(&mut b"\r\n".iter(), &mut body);
                    self.data = Some(DataState {
                        receiver,
                        body,
                        too_big: false,
                    });
                    "354 Start mail input; end with <CRLF>.<CRLF>\r\n".to_owned()
                }
            },
            Request::Bdat { .. } => "502 5.5.1 CHUNKING is not offered; use DATA\r\n".to_owned(),
            Request::Rset => {
                self.tx = None;
                "250 2.0.0 Reset\r\n".to_owned()
            }
            Request::Noop { .. } => "250 2.0.0 OK\r\n".to_owned(),
            Request::Quit => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                return Next::Quit;
            }
            Request::Vrfy { .. } => {
                "252 2.1.5 Cannot VRFY; send the mail and we will try\r\n".to_owned()
            }
            Request::Help { .. } => "214 2.0.0 See RFC 5321\r\n".to_owned(),
            Request::Auth { .. } => {
                "502 5.5.1 AUTH is not offered: this server only receives mail for its inboxes\r\n"
                    .to_owned()
            }
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => "502 5.5.1 Command not implemented\r\n".to_owned(),
        };
        out.extend_from_slice(reply.as_bytes());
        Next::Continue
    }

    async fn rcpt(&mut self, address: &str) -> String {
        let max = self.settings().max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            return "503 5.5.1 MAIL FROM first\r\n".to_owned();
        };
        if tx.recipients.len() >= max {
            return "452 4.5.3 Too many recipients\r\n".to_owned();
        }
        match self.shared.ingestor.resolve_recipient(address).await {
            Ok(Some(r)) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.recipients.push(r);
                }
                "250 2.1.5 Recipient OK\r\n".to_owned()
            }
            Ok(None) => {
                metrics::counter!("postvak_smtp_rejected_recipients_total").increment(1);
                self.errors += 1;
                format!(
                    "550 5.1.1 <{}>: no such mailbox here\r\n",
                    sanitize(address)
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "recipient lookup failed");
                "451 4.3.0 Temporary failure looking up the recipient, try again later\r\n"
                    .to_owned()
            }
        }
    }

    async fn finish_data(&mut self) -> String {
        let data = self.data.take();
        let tx = self.tx.take();
        let (Some(data), Some(tx)) = (data, tx) else {
            return "503 5.5.1 No transaction\r\n".to_owned();
        };
        if data.too_big {
            metrics::counter!("postvak_smtp_too_large_total").increment(1);
            return format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                self.settings().max_message_size
            );
        }
        let mut body = data.body;
        if body.starts_with(b"\r\n") {
            body.drain(..2);
        }
        let envelope = EnvelopeV1 {
            mail_from: Some(tx.mail_from),
            rcpt_to: None,
            peer: Some(self.peer.ip().to_string()),
            helo: self.helo.clone(),
            tls: self.tls,
        };
        let started = Instant::now();
        match self
            .shared
            .ingestor
            .deliver(Arc::new(body), &tx.recipients, &envelope, Source::Smtp)
            .await
        {
            Ok(deliveries) => {
                metrics::histogram!("postvak_smtp_time_to_250_seconds")
                    .record(started.elapsed().as_secs_f64());
                let ids: Vec<String> = deliveries
                    .iter()
                    .map(|d| d.message_id.to_string())
                    .collect();
                format!("250 2.0.0 Stored as {}\r\n", ids.join(","))
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery failed; the sender will retry");
                "451 4.3.0 Temporary failure storing the message, try again later\r\n".to_owned()
            }
        }
    }
}

fn protocol_error_reply(e: &ProtoError) -> String {
    match e {
        ProtoError::UnknownCommand => "500 5.5.1 Unknown command\r\n".to_owned(),
        ProtoError::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax\r\n".to_owned(),
        ProtoError::InvalidRecipientAddress => {
            "501 5.1.3 Bad recipient address syntax\r\n".to_owned()
        }
        ProtoError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}\r\n"),
        ProtoError::InvalidParameter { param } => {
            format!("501 5.5.4 Invalid parameter {param}\r\n")
        }
        ProtoError::UnsupportedParameter { param } => {
            format!("504 5.5.4 Unsupported parameter {}\r\n", sanitize(param))
        }
        ProtoError::ResponseTooLong => "500 5.5.2 Line too long\r\n".to_owned(),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            "500 5.5.2 Syntax error\r\n".to_owned()
        }
    }
}

/// Client-supplied text echoed in a reply: printable ASCII only, bounded.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(256)
        .collect()
}
