//! Where webhooks may go: never to loopback, private, link-local (cloud metadata), CGNAT,
//! multicast or reserved addresses, unless the operator lists a range in
//! `[webhooks] allow_private` (e.g. `["127.0.0.1/32"]` for a receiver on the same host).
//!
//! Checked twice: when a subscription is created (its host's addresses now), and at every
//! connection — the HTTP client resolves names through [`GuardedResolver`], which drops
//! forbidden addresses, so the client connects only to an address that passed the check
//! (a name that re-points to 127.0.0.1 after the subscription was made — DNS rebinding — finds
//! nothing to connect to). URLs with an IP literal are checked before each request.

pub use postvak_platform::netguard::Cidr;
use postvak_platform::netguard::{AddressPolicy, ResolveError};
use std::net::{IpAddr, SocketAddr};

/// The check, with the operator's exceptions: the platform's [`AddressPolicy`] (shared with
/// the IMAP connector and draft providers), with webhook-worded errors.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy(AddressPolicy);

impl DestinationPolicy {
    /// `allow_private`: ranges let through even though they are not public.
    pub fn new(allow_private: &[String]) -> Result<Self, String> {
        AddressPolicy::new(allow_private).map(Self)
    }

    /// May a webhook connect to `ip`?
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.0.permits(ip)
    }

    /// Checks a URL's host now: an IP literal, or every address its name resolves to.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), DestinationError> {
        let host = url.host_str().ok_or(DestinationError::Unresolvable)?;
        let port = url.port_or_known_default().unwrap_or(443);
        self.0.check_host(host, port).await.map_err(|e| match e {
            ResolveError::Forbidden(ip) => DestinationError::Forbidden(ip),
            ResolveError::Unresolvable => DestinationError::Unresolvable,
        })
    }
}

/// Why a destination is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("{0} is not allowed for webhooks (loopback, private, link-local or reserved)")]
    Forbidden(IpAddr),
    #[error("the webhook host does not resolve")]
    Unresolvable,
}

/// The HTTP client's resolver: resolves, keeps the permitted addresses, and fails when none
/// is left, so a connection only ever goes to a checked address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: DestinationPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if ok.is_empty() {
                let shown = all
                    .first()
                    .map_or_else(|| host.clone(), |a| a.ip().to_string());
                return Err(
                    format!("{host}: destination {shown} is not allowed for webhooks").into(),
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let p = DestinationPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} passed");
        }
        for good in ["93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700::1111"] {
            assert!(p.permits(ip(good)), "{good} refused");
        }
    }

    #[test]
    fn the_allow_list_lets_exactly_its_ranges_through() {
        let p = DestinationPolicy::new(&["127.0.0.1/32".into(), "10.8.0.0/16".into()]).unwrap();
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(p.permits(ip("10.8.200.1")));
        assert!(!p.permits(ip("10.9.0.1")));
        assert!(DestinationPolicy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(DestinationPolicy::new(&["nope".into()]).is_err());
    }
}
