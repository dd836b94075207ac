//! A pool of SMTP connections to one relay, in place of lettre's (ADR 0031).
//!
//! lettre's pool costs a relay connection most of its speed:
//! - its sockets keep Nagle's algorithm: a message's end (`CRLF.CRLF`) goes out as a second
//!   small write after the body and waits for the body's ACK, which the relay delays (40 ms on
//!   Linux) because it has nothing to say until it sees that end — ~25 mails/s per connection;
//! - every reuse first asks `NOOP`, a round trip per mail.
//!
//! Here each socket is opened by us with `TCP_NODELAY` and handed to lettre's
//! [`AsyncSmtpConnection`] (which still speaks SMTP, STARTTLS and AUTH); a connection parked for
//! less than [`TRUST_IDLE`] is reused without `NOOP`, an older one is checked first. Like
//! lettre's, the pool keeps at most `max_idle` connections and does not bound how many are in
//! use (the dispatcher's lane limits do). Each step has the configured timeout, so a relay that
//! stops answering frees its slot; such a connection is dropped, never parked.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A parked connection used within this long is trusted without `NOOP`. Relays close idle
/// connections after minutes (Postfix: 300 s), so a connection this fresh is alive unless the
/// relay restarted — then that one mail fails as a temporary error and is retried.
pub const TRUST_IDLE: Duration = Duration::from_secs(5);

/// Parked connections older than this are closed instead of reused.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How the connection is secured.
#[derive(Clone)]
pub enum Security {
    None,
    /// STARTTLS, required.
    StartTls(TlsParameters),
    /// TLS from the first byte (SMTPS, port 465).
    Implicit(TlsParameters),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::StartTls(_) => "StartTls",
            Self::Implicit(_) => "Implicit",
        })
    }
}

/// Why a mail was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The relay's answer (or lettre's view of the conversation).
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// No connection: refused, unreachable, or no answer in time.
    #[error("cannot connect to the SMTP relay {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the SMTP relay did not answer within {0:?}")]
    Timeout(Duration),
}

impl SmtpError {
    /// A 5xx answer: the mail will never be accepted as it is.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_permanent())
    }

    /// The relay's reply code, when it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Smtp(e) => e.status().map(u16::from),
            _ => None,
        }
    }
}

/// What a pool connects with.
#[derive(Debug)]
pub struct PoolSpec {
    /// The host name or address dialled.
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    /// Connecting, and each SMTP exchange, gives up after this long.
    pub timeout: Duration,
    /// Connections kept parked at most.
    pub max_idle: usize,
}

struct Parked {
    conn: AsyncSmtpConnection,
    since: Instant,
}

struct Inner {
    spec: PoolSpec,
    hello: ClientId,
    idle: Mutex<Vec<Parked>>,
}

/// Pooled connections to one relay; cheap to clone.
#[derive(Clone)]
pub struct SmtpPool(Arc<Inner>);

impl std::fmt::Debug for SmtpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpPool")
            .field("host", &self.0.spec.host)
            .field("port", &self.0.spec.port)
            .finish_non_exhaustive()
    }
}

impl SmtpPool {
    pub fn new(spec: PoolSpec) -> Self {
        Self(Arc::new(Inner {
            spec,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends `mail` and returns the relay's answer to its end. The connection goes back to
    /// the pool when the relay accepted or refused the mail and is still talking.
    pub async fn send(&self, mail: &lettre::Message) -> Result<Response, SmtpError> {
        self.send_raw(mail.envelope(), &mail.formatted()).await
    }

    pub async fn send_raw(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Response, SmtpError> {
        let timeout = self.0.spec.timeout;
        let mut conn = self.connection().await?;
        match tokio::time::timeout(timeout, conn.send(envelope, bytes)).await {
            Ok(Ok(answer)) => {
                self.park(conn);
                Ok(answer)
            }
            // lettre closes the connection on any error (QUIT), a refusal included.
            Ok(Err(e)) => Err(SmtpError::Smtp(e)),
            // Cut off mid-transaction: the connection's state is unknown.
            Err(_) => Err(SmtpError::Timeout(timeout)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn park(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.lock();
        if idle.len() < self.0.spec.max_idle.max(1) {
            idle.push(Parked {
                conn,
                since: Instant::now(),
            });
        }
        // Beyond the limit the connection is dropped (closed without QUIT, as lettre does).
    }

    /// A parked connection that is (or is checked to be) alive, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        loop {
            // Most recently parked first: the freshest, and the rest can age out.
            let parked = self.lock().pop();
            let Some(mut p) = parked else { break };
            let idle = p.since.elapsed();
            if idle < TRUST_IDLE && !p.conn.has_broken() {
                return Ok(p.conn);
            }
            if idle < MAX_IDLE
                && matches!(
                    tokio::time::timeout(self.0.spec.timeout, p.conn.test_connected()).await,
                    Ok(true)
                )
            {
                return Ok(p.conn);
            }
            p.conn.abort().await;
        }
        let timeout = self.0.spec.timeout;
        tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| SmtpError::Timeout(timeout))?
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let spec = &self.0.spec;
        let addr = format!("{}:{}", spec.host, spec.port);
        let connect_error = |reason: String| SmtpError::Connect {
            addr: addr.clone(),
            reason,
        };
        let tcp = connect_tcp(&spec.host, spec.port)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut conn = match &spec.security {
            Security::Implicit(tls) => {
                let peer = tcp.peer_addr().map_err(|e| connect_error(e.to_string()))?;
                #[allow(deprecated)]
                let mut stream =
                    lettre::transport::smtp::client::AsyncNetworkStream::use_existing_tokio1(
                        Box::new(tcp),
                    );
                stream.upgrade_tls(tls.clone()).await?;
                AsyncSmtpConnection::connect_with_transport(
                    Box::new(TlsOverTcp {
                        inner: tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream),
                        peer,
                    }),
                    &self.0.hello,
                )
                .await?
            }
            Security::None | Security::StartTls(_) => {
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.0.hello).await?
            }
        };
        if let Security::StartTls(tls) = &spec.security {
            conn.starttls(tls.clone(), &self.0.hello).await?;
        }
        if let Some(credentials) = &spec.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}

/// The first address of `host` that accepts, with `TCP_NODELAY` set.
async fn connect_tcp(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
    }))
}

/// lettre's TLS stream (over our socket) as a tokio stream, for an SMTPS connection.
#[allow(deprecated)]
struct TlsOverTcp {
    inner: tokio_util::compat::Compat<lettre::transport::smtp::client::AsyncNetworkStream>,
    peer: SocketAddr,
}

impl std::fmt::Debug for TlsOverTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOverTcp")
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncTokioStream for TlsOverTcp {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

impl AsyncRead for TlsOverTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsOverTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_to_the_relay_send_small_writes_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = connect_tcp("127.0.0.1", port).await.unwrap();
        assert!(s.nodelay().unwrap(), "Nagle's algorithm is still on");
    }

    #[tokio::test]
    async fn a_relay_that_is_not_listening_is_a_temporary_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool = SmtpPool::new(PoolSpec {
            host: "127.0.0.1".into(),
            port,
            security: Security::None,
            credentials: None,
            timeout: Duration::from_secs(5),
            max_idle: 1,
        });
        let envelope = Envelope::new(
            Some("a@example.org".parse().unwrap()),
            vec!["b@example.org".parse().unwrap()],
        )
        .unwrap();
        let e = pool
            .send_raw(&envelope, b"Subject: x\r\n\r\nx\r\n")
            .await
            .unwrap_err();
        assert!(matches!(e, SmtpError::Connect { .. }), "{e}");
        assert!(!e.is_permanent());
        assert_eq!(e.code(), None);
    }
}
