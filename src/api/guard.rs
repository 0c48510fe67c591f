//! Who may use the API, decided from a request's head before its body is read: the `Host`
//! check (against DNS rebinding), bearer tokens for reads and for mutations, and the counting
//! and rate-limited logging of everything refused (here and in the listener).
//!
//! - [`Access`]: the site's `[api]` settings the guards apply, resolved (tokens read).
//! - [`check_host`]: a layer; a `Host` that names neither this node (its configured
//!   addresses, the address the client connected to, loopback, `localhost`) nor one of
//!   `[api] hosts` is refused with 421.
//! - [`require_read`], [`require_mutation`]: route layers; reads accept the API token or the
//!   read token (or nothing with `read = "open"`), mutations only the API token.
//! - [`Refusals`]: counts every refusal in `buddygate_api_refused_total{reason}` and logs at
//!   most one line per reason every ten seconds.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::listener::Full;
use super::{ApiError, AppState};
use crate::config::{PushAllow, Site, canonical_ip};
use crate::ratelimit::LogLimiter;
use crate::view::Metrics;

/// The `[api]` settings the API enforces, with its secrets read: built by `buddygate run` from
/// the site file's [`Ingress`](crate::config::Ingress). The default: reads need a token, no
/// extra host names, no ONVIF push consumers, plain HTTP.
#[derive(Clone, Default)]
pub struct Access {
    /// `read = "open"`: reads need no token.
    pub open_reads: bool,
    /// `read_token`: a bearer token that may only read.
    pub read_token: Option<String>,
    /// `hosts`: host names a request may name besides the node's own addresses (lower case).
    pub hosts: Vec<String>,
    /// `onvif_push_allow`: the consumers a push `Subscribe` may name.
    pub onvif_push_allow: Vec<PushAllow>,
    /// `tls`: serve HTTPS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("open_reads", &self.open_reads)
            .field("read_token", &self.read_token.as_ref().map(|_| "<secret>"))
            .field("hosts", &self.hosts)
            .field("onvif_push_allow", &self.onvif_push_allow)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The address the client connected to (a request extension set by the listener).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalAddr(pub(crate) SocketAddr);

/// Everything refused, counted and logged (at most one line per reason per period).
#[derive(Debug)]
pub struct Refusals {
    metrics: Arc<Metrics>,
    log: LogLimiter,
}

impl Refusals {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            log: LogLimiter::new(),
        }
    }

    /// Counts a refusal for `reason` and logs it unless a line for `reason` was logged lately.
    pub(crate) fn refuse(&self, reason: &'static str, client: Option<SocketAddr>, what: &str) {
        self.metrics.api_refused.add(reason);
        if let Some(suppressed) = self.log.allow(reason) {
            let client = client.map(|c| c.to_string()).unwrap_or_default();
            tracing::warn!(reason, client, suppressed, "API request refused: {what}.");
        }
    }

    pub(crate) fn connection(&self, peer: SocketAddr, full: Full) {
        let (reason, what) = match full {
            Full::Node => (
                "connections",
                "the node serves as many connections as it may",
            ),
            Full::Client => (
                "client_connections",
                "this client holds as many connections as one client may",
            ),
        };
        self.refuse(reason, Some(peer), what);
    }

    pub(crate) fn accept_failed(&self, e: &std::io::Error) {
        self.metrics.api_refused.add("accept");
        if let Some(suppressed) = self.log.allow("accept") {
            tracing::warn!(error = %e, suppressed, "API cannot accept connections.");
        }
    }
}

/// The host names and addresses a request's `Host` may name.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    names: HashSet<String>,
    addresses: HashSet<IpAddr>,
}

impl Hosts {
    /// `node`'s announced, API and heartbeat addresses, and `extra` (`[api] hosts`).
    pub(crate) fn of(site: &Site, node: crate::config::ServerIdx, extra: &[String]) -> Self {
        let mut names: HashSet<String> = ["localhost".to_string()].into();
        let mut addresses = HashSet::new();
        if let Some(me) = site.servers.get(usize::from(node.0)) {
            addresses.insert(canonical_ip(me.address));
            addresses.extend(me.api.map(|a| canonical_ip(a.ip())));
            addresses.extend(me.heartbeat.iter().map(|h| canonical_ip(h.ip())));
        }
        for h in extra {
            match h.parse::<IpAddr>() {
                Ok(ip) => {
                    addresses.insert(canonical_ip(ip));
                }
                Err(_) => {
                    names.insert(h.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        Self { names, addresses }
    }

    /// Whether `host` (a `Host` header's value, port and all) names this node, reached at
    /// `local`.
    pub(crate) fn allows(&self, host: &str, local: Option<IpAddr>) -> bool {
        let name = host_name(host);
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = canonical_ip(ip);
                ip.is_loopback() || self.addresses.contains(&ip) || local == Some(ip)
            }
            Err(_) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.names.contains(&name)
            }
        }
    }
}

/// The host part of a `Host` value: without the port, IPv6 without brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Refuses (421) a request whose `Host` does not name this node. A request without `Host`
/// (HTTP/1.0) is let through: browsers always send one, and DNS rebinding needs a browser.
pub(crate) async fn check_host(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    if let Some(host) = host {
        let local = req
            .extensions()
            .get::<LocalAddr>()
            .map(|l| canonical_ip(l.0.ip()));
        if !state.hosts.allows(&host, local) {
            let client = client_of(&req);
            let shown: String = host.chars().take(64).collect();
            state.refusals.refuse(
                "host",
                client,
                &format!("Host {shown:?} does not name this node"),
            );
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {shown:?} does not name this node: use its address, or add the name to [api] hosts"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The client's address, when the listener set it.
pub(crate) fn client_of<B>(req: &axum::http::Request<B>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Mutation,
}

const CHALLENGE: &str = "Bearer realm=\"buddygate\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"buddygate\", error=\"invalid_token\"";
const CHALLENGE_SCOPE: &str = "Bearer realm=\"buddygate\", error=\"insufficient_scope\"";

/// Whether two tokens are equal, in time that depends on neither: each keys an HMAC over the
/// same message, so the tags have one length whatever the tokens' lengths, and the MAC's
/// `verify_slice` compares them in constant time.
pub(crate) fn same_token(expected: &str, given: &str) -> bool {
    type HmacSha256 = Hmac<Sha256>;
    let tag = |key: &str| -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).ok()?;
        mac.update(b"buddygate api token");
        Some(mac)
    };
    match (tag(expected), tag(given)) {
        (Some(expected), Some(given)) => expected
            .verify_slice(&given.finalize().into_bytes())
            .is_ok(),
        _ => false,
    }
}

/// What the request offers as credentials.
enum Credentials<'a> {
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Unsupported,
    Bearer(&'a str),
}

fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::Missing;
    };
    let bearer = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    bearer.map_or(Credentials::Unsupported, Credentials::Bearer)
}

/// Decides `need` from the request's headers alone; counts and logs a refusal.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: Need,
    client: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let shared = &state.shared;
    if need == Need::Read && shared.access.open_reads {
        return Ok(());
    }
    let token = shared.token.as_deref().filter(|t| !t.is_empty());
    let read_token = shared
        .access
        .read_token
        .as_deref()
        .filter(|t| !t.is_empty());
    let forbidden = |message: &str| {
        state.refusals.refuse("forbidden", client, message);
        ApiError::new(StatusCode::FORBIDDEN, message)
    };
    let (scheme, what) = match need {
        Need::Read => ("read", "reads"),
        Need::Mutation => ("mutation", "mutations"),
    };
    if token.is_none() && (need == Need::Mutation || read_token.is_none()) {
        return Err(forbidden(match need {
            Need::Mutation => "mutations are disabled: set api.token",
            Need::Read => {
                "reads are disabled: set api.token or api.read_token, or api.read = \"open\""
            }
        }));
    }
    let unauthorized = |message: &str, challenge| {
        shared
            .metrics
            .api_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        state
            .refusals
            .refuse("unauthorized", client, &format!("{what}: {message}"));
        ApiError::unauthorized(message, challenge)
    };
    let hint = match need {
        Need::Read => "send Authorization: Bearer <api.token or api.read_token>",
        Need::Mutation => "send Authorization: Bearer <api.token>",
    };
    let given = match credentials(headers) {
        Credentials::Missing => {
            return Err(unauthorized(
                &format!("missing bearer token: {hint}"),
                CHALLENGE,
            ));
        }
        Credentials::Unsupported => {
            return Err(unauthorized(
                &format!("unsupported Authorization header: {hint}"),
                CHALLENGE,
            ));
        }
        Credentials::Bearer(given) => given,
    };
    let is = |expected: Option<&str>| expected.is_some_and(|t| same_token(t, given));
    // Both comparisons always run: the time taken does not tell which token matched.
    let (api, read) = (is(token), is(read_token));
    match (need, api, read) {
        (_, true, _) | (Need::Read, false, true) => Ok(()),
        (Need::Mutation, false, true) => {
            state.refusals.refuse(
                "forbidden",
                client,
                "the read token was sent for a mutation",
            );
            Err(ApiError::with_challenge(
                StatusCode::FORBIDDEN,
                format!("this token may only read; a {scheme} needs api.token"),
                CHALLENGE_SCOPE,
            ))
        }
        _ => Err(unauthorized("invalid bearer token", CHALLENGE_INVALID)),
    }
}

/// Route layer of the read routes.
pub(crate) async fn require_read(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&state, req.headers(), Need::Read, client_of(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Route layer of the mutations: decided before the body is read.
pub(crate) async fn require_mutation(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&state, req.headers(), Need::Mutation, client_of(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        assert_eq!(host_name("10.0.1.11:8400"), "10.0.1.11");
        assert_eq!(host_name("[fd00::1]:8400"), "fd00::1");
        assert_eq!(host_name("[fd00::1]"), "fd00::1");
        assert_eq!(host_name("vms.example.com"), "vms.example.com");
        let hosts = Hosts {
            names: ["localhost".to_string(), "vms.example.com".to_string()].into(),
            addresses: ["10.0.1.11".parse().unwrap()].into(),
        };
        assert!(hosts.allows("10.0.1.11:8400", None));
        assert!(hosts.allows("VMS.example.com.:8400", None));
        assert!(hosts.allows("localhost:8400", None));
        assert!(hosts.allows("127.0.0.9:1", None));
        assert!(hosts.allows("[::1]:8400", None));
        assert!(hosts.allows("192.168.7.7", Some("192.168.7.7".parse().unwrap())));
        assert!(!hosts.allows("evil.example.com", None));
        assert!(!hosts.allows("10.0.1.12:8400", None));
        assert!(!hosts.allows("", None));
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
    }
}
