//! What every connector file shares, and its checks: the `events` filter ([`EventFilter`]),
//! and the `url`, `timeout`, `retry`, `tls` and secret keys. Each kind's own settings and
//! checks are in its folder of [`crate::connectors`], which also loads the files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::locate::{Issue, KeyPath};
use super::model::SecretRef;

/// Every event type a connector can deliver: the core's, the runtime's about connectors, and
/// the webhook's periodic re-assertion.
pub const EVENT_TYPES: [&str; 15] = [
    "buddygate.server.down",
    "buddygate.server.up",
    "buddygate.path.down",
    "buddygate.path.up",
    "buddygate.failover.started",
    "buddygate.failover.completed",
    "buddygate.failback.completed",
    "buddygate.resource.failed",
    "buddygate.resource.unplaced",
    "buddygate.ownership.conflict",
    "buddygate.ownership.resolved",
    "buddygate.config.mismatch",
    "buddygate.connector.failed",
    "buddygate.connector.recovered",
    "buddygate.ownership.reasserted",
];

/// The Standard Webhooks retry schedule: after the first attempt, 5 s, 5 min, 30 min, 2 h,
/// 5 h, 10 h and 10 h.
pub const DEFAULT_RETRY: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// `tls = { ca = "...", cert = "...", key = "..." }`: paths relative to the connector file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM file of the CA(s) to trust for this endpoint (instead of the system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// `timeout` when not given: 5 s per attempt.
pub(crate) const fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A connector's `events`: the event types it delivers, `*` globs allowed
/// (`"buddygate.failover.*"`); none listed is every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    /// Every pattern of `events` that matches no event type is an error.
    pub(crate) fn check(events: &[String], issues: &mut Vec<Issue>) -> Self {
        let root = KeyPath::root();
        for (i, p) in events.iter().enumerate() {
            if !EVENT_TYPES.iter().any(|t| glob(p, t)) {
                issues.push(Issue::error(
                    &root.key("events").index(i),
                    format!("\"{p}\" matches no event type (they are buddygate.server.down, buddygate.failover.completed, ...)"),
                ));
            }
        }
        Self(events.to_vec())
    }

    /// Whether events of type `ty` pass.
    pub fn wants(&self, ty: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| glob(p, ty))
    }

    /// The patterns as written; empty: every event.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// `url`: an `http://` or `https://` URL with a host.
pub(crate) fn check_http_url(url: &str, issues: &mut Vec<Issue>) {
    let at = KeyPath::root().key("url");
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(u) => issues.push(Issue::error(
            &at,
            format!(
                "\"{}\": only http:// and https:// URLs are supported",
                u.scheme()
            ),
        )),
        Err(e) => issues.push(Issue::error(&at, format!("not a URL: {e}"))),
    }
}

/// `url` must carry no credentials: user info is an error that points to `keys`, where they
/// go instead; a credential-like query parameter (`?token=`) a warning (some endpoints know no
/// other way; it is redacted wherever the URL is shown).
pub(crate) fn check_url_credentials(url: &str, keys: &str, issues: &mut Vec<Issue>) {
    let at = KeyPath::root().key("url");
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    if authority.contains('@') {
        issues.push(Issue::error(
            &at,
            format!(
                "credentials go in {keys}, not in the URL (a URL is shown in logs and `buddygate status`)"
            ),
        ));
    }
    let query = url
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let secret: Vec<&str> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(name, value)| !value.is_empty() && crate::redact::is_credential_name(name))
        .map(|(name, _)| name)
        .collect();
    if let Some(name) = secret.first() {
        issues.push(Issue::warning(
            &at,
            format!(
                "`{name}=` looks like a credential in the URL: it is redacted in logs and API \
                 answers, but {keys} keep it out of the URL"
            ),
        ));
    }
}

pub(crate) fn check_timeout(timeout: Duration, issues: &mut Vec<Issue>) {
    if timeout.is_zero() {
        issues.push(Issue::error(
            &KeyPath::root().key("timeout"),
            "must be more than 0s",
        ));
    }
}

/// `retry`: the delays before each retry; `None` is [`DEFAULT_RETRY`].
pub(crate) fn check_retry(list: Option<&[String]>, issues: &mut Vec<Issue>) -> Vec<Duration> {
    let root = KeyPath::root();
    let Some(list) = list else {
        return DEFAULT_RETRY.to_vec();
    };
    if list.is_empty() {
        issues.push(Issue::error(
            &root.key("retry"),
            "empty: give at least one delay, e.g. [\"5s\"]",
        ));
    }
    let mut retry = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match humantime::parse_duration(s) {
            Ok(d) => retry.push(d),
            Err(e) => issues.push(Issue::error(
                &root.key("retry").index(i),
                format!("invalid duration \"{s}\": {e}"),
            )),
        }
    }
    retry
}

/// `tls`: `cert` and `key` together, files that exist (when `base` is given); paths made
/// relative to `base`.
pub(crate) fn check_tls(
    tls: Option<&TlsFile>,
    url: &str,
    base: Option<&Path>,
    issues: &mut Vec<Issue>,
) -> TlsFile {
    let root = KeyPath::root();
    let tls = tls.cloned().unwrap_or_default();
    if tls.cert.is_some() != tls.key.is_some() {
        issues.push(Issue::error(
            &root.key("tls"),
            "`cert` and `key` go together (mutual TLS)",
        ));
    }
    if (tls.ca.is_some() || tls.cert.is_some()) && url.starts_with("http://") {
        issues.push(Issue::warning(
            &root.key("tls"),
            "TLS settings on an http:// URL are not used",
        ));
    }
    if let Some(base) = base {
        for (key, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(p) = p
                && !base.join(p).is_file()
            {
                issues.push(Issue::error(
                    &root.key("tls").key(key),
                    format!("{} does not exist", base.join(p).display()),
                ));
            }
        }
    }
    TlsFile {
        ca: tls.ca.map(|p| base.map_or(p.clone(), |b| b.join(&p))),
        cert: tls.cert.map(|p| base.map_or(p.clone(), |b| b.join(&p))),
        key: tls.key.map(|p| base.map_or(p.clone(), |b| b.join(&p))),
    }
}

/// A warning for an inline secret at `at`.
pub(crate) fn warn_inline(at: &KeyPath, secret: Option<&SecretRef>, issues: &mut Vec<Issue>) {
    if let Some(SecretRef::Inline(_)) = secret {
        issues.push(Issue::warning(
            at,
            "inline secret; use file:PATH or env:VAR in production",
        ));
    }
}

/// How many of `issues` are errors.
pub(crate) fn errors(issues: &[Issue]) -> usize {
    issues.iter().filter(|i| i.is_error()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("buddygate.failover.*", "buddygate.failover.completed"));
        assert!(glob("*", "buddygate.path.up"));
        assert!(glob("*.completed", "buddygate.failback.completed"));
        assert!(!glob(
            "buddygate.failover.*",
            "buddygate.failback.completed"
        ));
        assert!(glob("buddygate.server.up", "buddygate.server.up"));
    }
}
