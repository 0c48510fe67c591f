//! A `type = "onvif"` connector file: its keys, their defaults and their checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::SecretRef;
use crate::config::connectors::{
    EventFilter, TlsFile, check_http_url, check_retry, check_timeout, check_tls,
    check_url_credentials, default_timeout, errors, warn_inline,
};
use crate::config::decode::Section;
use crate::config::file::{duration, secret};
use crate::config::locate::{Issue, KeyPath};
use crate::connectors::ConnectorFile;

/// A `type = "onvif"` connector file: WS-BaseNotification `wsnt:Notify` pushed to a consumer
/// (an I/O device, a PSIM), from the outbox, in order, retried like a webhook, nothing lost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "buddygate onvif connector")]
pub struct OnvifFile {
    /// `"onvif"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The consumer's address (its `NotificationConsumer` endpoint): `http://` or `https://`.
    pub url: String,
    /// Event types to push; `*` globs allowed. Default: all (those that have an ONVIF message:
    /// server state, ownership, failover, failback, conflicts).
    #[serde(default)]
    pub events: Vec<String>,
    /// WS-UsernameToken user name: each `Notify` carries a `wsse:Security` header with a
    /// `PasswordDigest` (what ONVIF devices and clients use). Only with `password`.
    pub username: Option<String>,
    /// `file:PATH`, `env:VAR` or inline (with a warning); only with `username`.
    #[serde(default, deserialize_with = "secret::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub password: Option<SecretRef>,
    /// Per attempt, e.g. `"5s"` (default).
    #[serde(default = "default_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Delays before each retry after the first attempt; when they are used up the messages are
    /// a dead letter (kept, replayable). Default: the webhook schedule (5s, 5m, 30m, 2h, 5h,
    /// 10h, 10h).
    pub retry: Option<Vec<String>>,
    /// At most this many messages per `Notify` (1 to 1000, default 100); a failover of more
    /// resources is sent as several.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// TLS settings for `https://` consumers.
    pub tls: Option<TlsFile>,
}

impl Section for OnvifFile {}

const fn default_batch() -> usize {
    100
}

/// Most messages per `Notify`.
pub const MAX_BATCH: usize = 1000;

/// A validated onvif connector. The password is still a reference: the runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnvifConfig {
    pub url: String,
    pub events: EventFilter,
    /// WS-UsernameToken account.
    pub username: Option<(String, SecretRef)>,
    pub timeout: Duration,
    pub retry: Vec<Duration>,
    pub batch: usize,
    pub tls: TlsFile,
    /// The connector file's folder: `file:` secrets are read from there.
    pub base: Option<PathBuf>,
}

impl ConnectorFile for OnvifFile {
    type Config = OnvifConfig;

    fn check(&self, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<OnvifConfig> {
        let f = self;
        let root = KeyPath::root();
        let before = errors(issues);
        check_http_url(&f.url, issues);
        check_url_credentials(&f.url, "`username` and `password`", issues);
        let events = EventFilter::check(&f.events, issues);
        match (&f.username, &f.password) {
            (Some(_), None) => issues.push(Issue::error(
                &root.key("username"),
                "a username needs a `password` (WS-UsernameToken)",
            )),
            (None, Some(_)) => issues.push(Issue::error(
                &root.key("password"),
                "a password needs a `username`",
            )),
            (Some(u), _) if u.is_empty() => {
                issues.push(Issue::error(&root.key("username"), "must not be empty"))
            }
            _ => {}
        }
        warn_inline(&root.key("password"), f.password.as_ref(), issues);
        check_timeout(f.timeout, issues);
        let retry = check_retry(f.retry.as_deref(), issues);
        if !(1..=MAX_BATCH).contains(&f.batch) {
            issues.push(Issue::error(
                &root.key("batch"),
                format!("batch {}: expected 1 to {MAX_BATCH} messages", f.batch),
            ));
        }
        let tls = check_tls(f.tls.as_ref(), &f.url, base, issues);
        if errors(issues) > before {
            return None;
        }
        Some(OnvifConfig {
            url: f.url.clone(),
            events,
            username: f.username.clone().zip(f.password.clone()),
            timeout: f.timeout,
            retry,
            batch: f.batch,
            tls,
            base: base.map(Path::to_path_buf),
        })
    }
}
