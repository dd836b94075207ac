//! Which network addresses a tenant-supplied destination may reach (webhooks, IMAP servers):
//! public unicast only — never loopback, private, link-local (cloud metadata), CGNAT,
//! multicast or reserved ranges — unless the operator lets a range through
//! (`allow_private`). One policy for every service that connects where a tenant says, so an
//! address class refused for webhooks is refused for IMAP too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address range (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address carried in IPv6 (mapped `::ffff:a.b.c.d`) is judged as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Not a public unicast address.
pub fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata lives here
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Not a public unicast address.
pub fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (also AWS's fd00:ec2::254)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: may reach any IPv4 inside
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// A public unicast address (an IPv4-mapped IPv6 address is judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => !forbidden_v4(v4),
        IpAddr::V6(v6) => !forbidden_v6(v6),
    }
}

/// Public addresses plus the operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Arc<Vec<Cidr>>,
}

impl AddressPolicy {
    /// `allow_private`: ranges let through even though they are not public.
    pub fn new(allow_private: &[String]) -> Result<Self, String> {
        let allow = allow_private
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allow: Arc::new(allow),
        })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || is_public(ip)
    }

    /// Resolves `host` (a name or an IP literal, brackets allowed) and returns the addresses
    /// this policy permits. Connecting only to these — not resolving again — is what defeats
    /// a name that re-points to an internal address after it was checked (DNS rebinding).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let all: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| ResolveError::Unresolvable)?
                .collect(),
        };
        let Some(first) = all.first() else {
            return Err(ResolveError::Unresolvable);
        };
        let ok: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.permits(a.ip()))
            .collect();
        if ok.is_empty() {
            return Err(ResolveError::Forbidden(first.ip()));
        }
        Ok(ok)
    }

    /// Like [`Self::resolve`], but refuses the host if ANY of its addresses is refused (at
    /// creation: a name that also points inside is not accepted at all).
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), ResolveError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let all: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| ResolveError::Unresolvable)?
                .collect(),
        };
        if all.is_empty() {
            return Err(ResolveError::Unresolvable);
        }
        match all.iter().find(|a| !self.permits(a.ip())) {
            Some(a) => Err(ResolveError::Forbidden(a.ip())),
            None => Ok(()),
        }
    }
}

/// Why a destination is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("{0} is not a public address (loopback, private, link-local or reserved)")]
    Forbidden(IpAddr),
    #[error("the host does not resolve")]
    Unresolvable,
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
        let p = AddressPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} passed");
        }
        for good in ["93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700::1111"] {
            assert!(p.permits(ip(good)), "{good} refused");
        }
    }

    #[tokio::test]
    async fn resolve_keeps_only_permitted_addresses() {
        let p = AddressPolicy::default();
        assert_eq!(
            p.resolve("127.0.0.1", 143).await,
            Err(ResolveError::Forbidden(ip("127.0.0.1")))
        );
        assert_eq!(
            p.check_host("[::1]", 143).await,
            Err(ResolveError::Forbidden(ip("::1")))
        );
        assert!(matches!(
            p.resolve("localhost", 143).await,
            Err(ResolveError::Forbidden(_))
        ));
        let open = AddressPolicy::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert_eq!(
            open.resolve("127.0.0.1", 143).await.unwrap(),
            vec![SocketAddr::new(ip("127.0.0.1"), 143)]
        );
        assert!(open.check_host("localhost", 143).await.is_ok());
        assert_eq!(
            p.check_host("no-such-host.invalid", 143).await,
            Err(ResolveError::Unresolvable)
        );
    }
}
