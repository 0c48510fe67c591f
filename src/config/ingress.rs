//! How the node's API is reached and who may use it: the `[api]` keys beyond the mutation
//! token and the ONVIF accounts. Read access (`read`, `read_token`), HTTPS (`tls`), the host
//! names a request may name (`hosts`) and where ONVIF push subscriptions may send
//! (`onvif_push_allow`).
//!
//! These are kept beside the [`Site`](super::Site) in [`Loaded`](super::Loaded) rather than in
//! it: they only concern the node's own listener, never the failover core.

use std::net::IpAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::model::SecretRef;

/// `[api] read`: who may read the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadAccess {
    /// `Authorization: Bearer` with `token` or `read_token` (the default).
    #[default]
    Token,
    /// Anyone who reaches the API port may read it.
    Open,
}

/// `[api] tls`: the API's certificate and key, and the CA its clients' certificates must be
/// signed by (paths resolved against the site file's folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The `[api]` settings of the listener, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub read: ReadAccess,
    /// A bearer token that may only read.
    pub read_token: Option<SecretRef>,
    /// HTTPS instead of HTTP.
    pub tls: Option<ApiTls>,
    /// Host names a request's `Host` may name besides the node's own addresses, loopback
    /// addresses and `localhost` (lower case).
    pub hosts: Vec<String>,
    /// Consumers an ONVIF push `Subscribe` may name.
    pub onvif_push_allow: Vec<PushAllow>,
}

/// One entry of `onvif_push_allow`: an address, a network or a host name, each with an
/// optional port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushAllow {
    /// `10.0.5.7`, `10.0.5.0/24`, `fd00::/64`, `10.0.5.7:8080`, `[fd00::7]:8080`.
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    /// `psim.example.com`, `psim.example.com:8080` (compared without resolving it).
    Host { name: String, port: Option<u16> },
}

impl PushAllow {
    /// Parses one entry; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty: give an address, a network (10.0.5.0/24) or a host name".into());
        }
        if s.contains("://") {
            return Err(format!(
                "\"{s}\": give an address, a network or a host name, not a URL"
            ));
        }
        if let Some((addr, prefix)) = s.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("\"{s}\": {addr:?} is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\": the prefix length must be 0 to {max}"))?;
            return Ok(Self::Net {
                addr,
                prefix,
                port: None,
            });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self::Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
                port: None,
            });
        }
        if let Ok(sock) = s.parse::<std::net::SocketAddr>() {
            let addr = sock.ip();
            return Ok(Self::Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
                port: Some(sock.port()),
            });
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((name, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("\"{s}\": {port:?} is not a port"))?;
                (name, Some(port))
            }
            None => (s, None),
        };
        if !is_host_name(name) {
            return Err(format!(
                "\"{s}\" is not an address, a network (10.0.5.0/24) or a host name"
            ));
        }
        Ok(Self::Host {
            name: name.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a consumer at `host` (an IP address or a name, as written in its URL, without
    /// brackets) and `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            Self::Net {
                addr,
                prefix,
                port: p,
            } => {
                let Ok(ip) = host.parse::<IpAddr>() else {
                    return false;
                };
                port_ok(p) && in_network(canonical_ip(ip), canonical_ip(*addr), *prefix)
            }
            Self::Host { name, port: p } => port_ok(p) && host.eq_ignore_ascii_case(name),
        }
    }
}

impl std::fmt::Display for PushAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Net { addr, prefix, port } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                match (port, *prefix == full) {
                    (Some(p), _) if addr.is_ipv6() => write!(f, "[{addr}]:{p}"),
                    (Some(p), _) => write!(f, "{addr}:{p}"),
                    (None, true) => write!(f, "{addr}"),
                    (None, false) => write!(f, "{addr}/{prefix}"),
                }
            }
            Self::Host {
                name,
                port: Some(p),
            } => write!(f, "{name}:{p}"),
            Self::Host { name, port: None } => write!(f, "{name}"),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is in `net/prefix` (both of one family).
fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A DNS host name: labels of letters, digits and `-`, separated by dots (a final dot allowed).
pub fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_allow_entries() {
        let net = PushAllow::parse("10.0.5.0/24").unwrap();
        assert!(net.allows("10.0.5.7", 80));
        assert!(!net.allows("10.0.6.7", 80));
        assert!(!net.allows("psim.example.com", 80));
        assert!(net.allows("::ffff:10.0.5.9", 443));
        let one = PushAllow::parse("10.0.5.7:8080").unwrap();
        assert!(one.allows("10.0.5.7", 8080));
        assert!(!one.allows("10.0.5.7", 80));
        let v6 = PushAllow::parse("fd00::/64").unwrap();
        assert!(v6.allows("fd00::1:2", 80));
        assert!(!v6.allows("fd01::1", 80));
        let v6p = PushAllow::parse("[fd00::7]:80").unwrap();
        assert!(v6p.allows("fd00::7", 80));
        let host = PushAllow::parse("PSIM.example.com:443").unwrap();
        assert!(host.allows("psim.example.com", 443));
        assert!(!host.allows("psim.example.com", 80));
        assert!(!host.allows("10.0.5.7", 443));
        let all = PushAllow::parse("0.0.0.0/0").unwrap();
        assert!(all.allows("192.168.1.1", 1));
        for (entry, shown) in [
            ("10.0.5.0/24", "10.0.5.0/24"),
            ("10.0.5.7", "10.0.5.7"),
            ("[fd00::7]:80", "[fd00::7]:80"),
            ("psim.example.com:443", "psim.example.com:443"),
        ] {
            assert_eq!(PushAllow::parse(entry).unwrap().to_string(), shown);
        }
        for bad in [
            "",
            "http://10.0.5.7/",
            "10.0.5.0/33",
            "10.0.5/24",
            "psim example",
            "host:0",
            "host:x",
        ] {
            assert!(PushAllow::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_names() {
        assert!(is_host_name("vms-1.example.com"));
        assert!(is_host_name("localhost."));
        assert!(!is_host_name("-a.example"));
        assert!(!is_host_name("a..b"));
        assert!(!is_host_name("a_b"));
    }
}
