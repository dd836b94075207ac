//! Connecting and logging in: TCP, implicit TLS or STARTTLS (rustls with ring, Web PKI roots
//! plus an optional CA file), then `LOGIN` or `AUTHENTICATE XOAUTH2`.

use super::{AccountConfig, AuthKind, TlsMode};
use postvak_platform::netguard::{AddressPolicy, ResolveError};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// The connection under an IMAP session: plain TCP or TLS over it.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Session = async_imap::Session<ImapStream>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: {1} (imap.allow_private)")]
    Destination(String, ResolveError),
    #[error("TLS handshake with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("the server closed the connection before greeting")]
    NoGreeting,
    #[error("STARTTLS refused: {0}")]
    StartTls(async_imap::error::Error),
    #[error("login refused: {0}")]
    Login(async_imap::error::Error),
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The TLS client configuration: Web PKI roots plus the certificates of `ca_file`.
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, anyhow::Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("imap.ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("imap.ca_file {}: {e}", path.display()))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("imap.ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn handshake(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<ImapStream, ConnectError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError::ServerName(host.to_owned()))?;
    let s = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(host.to_owned(), e))?;
    Ok(ImapStream::Tls(Box::new(s)))
}

async fn greeting(client: &mut async_imap::Client<ImapStream>) -> Result<(), ConnectError> {
    match client.read_response().await? {
        Some(_) => Ok(()),
        None => Err(ConnectError::NoGreeting),
    }
}

/// `AUTHENTICATE XOAUTH2`: the first challenge is empty and answered with the token; a
/// refusal comes as a challenge with an error, answered empty (then the server says NO).
struct XOAuth2<'a> {
    user: &'a str,
    token: &'a str,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        if self.sent {
            return Vec::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token).into_bytes()
    }
}

/// Connects, protects the connection as configured, and logs in. The host is resolved here
/// and only addresses `policy` permits are dialled (checked at every connection, so a name
/// re-pointed inside after the account was created reaches nothing).
pub async fn connect(
    account: &AccountConfig,
    tls: &Arc<rustls::ClientConfig>,
    policy: &AddressPolicy,
) -> Result<Session, ConnectError> {
    let addr = format!("{}:{}", account.host, account.port);
    let permitted = policy
        .resolve(&account.host, account.port)
        .await
        .map_err(|e| ConnectError::Destination(addr.clone(), e))?;
    let tcp = TcpStream::connect(permitted.as_slice())
        .await
        .map_err(|e| ConnectError::Connect(addr.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let client = match account.tls {
        TlsMode::Tls => {
            let mut c = async_imap::Client::new(handshake(tls, &account.host, tcp).await?);
            greeting(&mut c).await?;
            c
        }
        TlsMode::Plain => {
            let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
            greeting(&mut c).await?;
            c
        }
        TlsMode::StartTls => {
            let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
            greeting(&mut c).await?;
            c.run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(ConnectError::StartTls)?;
            let ImapStream::Plain(tcp) = c.into_inner() else {
                return Err(ConnectError::NoGreeting);
            };
            // No greeting after STARTTLS.
            async_imap::Client::new(handshake(tls, &account.host, tcp).await?)
        }
    };
    let creds = &account.credentials;
    let session = match account.auth {
        AuthKind::Password => client
            .login(&creds.username, creds.secret.expose())
            .await
            .map_err(|(e, _)| ConnectError::Login(e))?,
        AuthKind::XOAuth2 => client
            .authenticate(
                "XOAUTH2",
                XOAuth2 {
                    user: &creds.username,
                    token: creds.secret.expose(),
                    sent: false,
                },
            )
            .await
            .map_err(|(e, _)| ConnectError::Login(e))?,
    };
    Ok(session)
}
