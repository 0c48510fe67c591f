//! A `type = "webhook"` connector file: its keys, their defaults and their checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::connectors::{
    EventFilter, TlsFile, check_http_url, check_retry, check_timeout, check_tls,
    check_url_credentials, default_timeout, errors, warn_inline,
};
use crate::config::decode::Section;
use crate::config::file::{duration, secret};
use crate::config::locate::{Issue, KeyPath, Point};
use crate::config::{SecretRef, Severity};
use crate::connectors::ConnectorFile;

/// One string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `basic = { user = "...", password = "file:..." }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthFile {
    pub user: String,
    /// `file:PATH`, `env:VAR` or inline (with a warning).
    #[serde(deserialize_with = "secret::deserialize")]
    #[schemars(with = "String")]
    pub password: SecretRef,
}

/// A `type = "webhook"` connector file: HTTP deliveries to a PSIM, signed the Standard Webhooks
/// way, in order, retried, nothing lost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "buddygate webhook connector")]
pub struct WebhookFile {
    /// `"webhook"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to deliver: `http://` or `https://`. A minijinja template: `{{ event.type }}`,
    /// `{{ data.new_server.address }}`, ... may appear in it (URL-encoded with `| urlencode`).
    pub url: String,
    /// `POST` (default), `PUT`, or `GET` (the event goes in query parameters).
    #[serde(default = "default_method")]
    pub method: String,
    /// Event types to deliver; `*` globs allowed (`"buddygate.failover.*"`). Default: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Standard Webhooks signing secret(s), `whsec_<base64>`: inline (with a warning),
    /// `file:PATH` or `env:VAR`. Several sign every delivery with each (key rotation).
    pub secret: Option<OneOrMany>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Authorization: Bearer` token (`file:PATH`, `env:VAR` or inline with a warning).
    #[serde(default, deserialize_with = "secret::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub bearer: Option<SecretRef>,
    /// HTTP basic authentication.
    pub basic: Option<BasicAuthFile>,
    /// Per attempt, e.g. `"5s"` (default).
    #[serde(default = "default_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// A minijinja template file (relative to this file) for the body, for PSIMs with their own
    /// format. Without it the body is the CloudEvent (structured JSON).
    pub template: Option<PathBuf>,
    /// Content type of a templated body (default `application/json`).
    pub content_type: Option<String>,
    /// Delays before each retry after the first attempt; when they are used up the delivery is a
    /// dead letter (kept, replayable). Default: the Standard Webhooks schedule.
    pub retry: Option<Vec<String>>,
    /// Re-send this node's current ownership this often (e.g. `"5m"`, at least `1s`) as a
    /// `buddygate.ownership.reasserted` event, when nothing else is queued, so a PSIM that
    /// missed or discarded a message converges.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub reassert: Option<Duration>,
    /// TLS settings for `https://` endpoints.
    pub tls: Option<TlsFile>,
}

impl Section for WebhookFile {}

fn default_method() -> String {
    "POST".into()
}

/// A validated webhook connector. Secrets are still references: the runtime reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub method: String,
    pub events: EventFilter,
    pub secrets: Vec<SecretRef>,
    pub headers: Vec<(String, String)>,
    pub bearer: Option<SecretRef>,
    pub basic: Option<(String, SecretRef)>,
    pub timeout: Duration,
    /// The template's text and its path.
    pub template: Option<(PathBuf, String)>,
    pub content_type: String,
    pub retry: Vec<Duration>,
    pub reassert: Option<Duration>,
    pub tls: TlsFile,
    /// The connector file's folder: `file:` secrets are read from there.
    pub base: Option<PathBuf>,
}

impl ConnectorFile for WebhookFile {
    type Config = WebhookConfig;

    fn check(&self, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<WebhookConfig> {
        let f = self;
        let root = KeyPath::root();
        let before = errors(issues);
        let env = crate::config::template_environment();
        // url: a template that must render to http(s) for a sample event.
        match env.template_from_str(&f.url) {
            Err(e) => issues.push(Issue::error(
                &root.key("url"),
                format!("invalid template: {e}"),
            )),
            Ok(_) if f.url.contains("{{") || f.url.contains("{%") => {}
            Ok(_) => check_http_url(&f.url, issues),
        }
        check_url_credentials(&f.url, "`basic`, `bearer` or `headers`", issues);
        if !matches!(f.method.as_str(), "POST" | "PUT" | "GET") {
            issues.push(Issue::error(
                &root.key("method"),
                format!(
                    "method \"{}\": expected \"POST\", \"PUT\" or \"GET\"",
                    f.method
                ),
            ));
        }
        let events = EventFilter::check(&f.events, issues);
        let mut secrets = Vec::new();
        for (i, s) in f
            .secret
            .as_ref()
            .map(OneOrMany::list)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let at = match &f.secret {
                Some(OneOrMany::Many(_)) => root.key("secret").index(i),
                _ => root.key("secret"),
            };
            let r = SecretRef::parse(s);
            if let SecretRef::Inline(v) = &r {
                match decode_whsec(v) {
                    Ok(_) => issues.push(Issue::warning(
                        &at,
                        "inline secret; use file:PATH or env:VAR in production",
                    )),
                    Err(e) => issues.push(Issue::error(&at, e)),
                }
            }
            secrets.push(r);
        }
        let mut headers = Vec::new();
        for (k, v) in &f.headers {
            let at = root.key("headers").key(k);
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                issues.push(Issue::new(
                    Severity::Error,
                    &at,
                    Point::Key,
                    format!("\"{k}\" is not a valid header name"),
                ));
            } else if k.to_ascii_lowercase().starts_with("webhook-") {
                issues.push(Issue::new(
                    Severity::Error,
                    &at,
                    Point::Key,
                    format!("\"{k}\" is set by the signing; remove it"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                issues.push(Issue::error(&at, "not a valid header value"));
            }
            headers.push((k.clone(), v.clone()));
        }
        if f.bearer.is_some() && f.basic.is_some() {
            issues.push(Issue::error(
                &root.key("basic"),
                "give `bearer` or `basic`, not both",
            ));
        }
        warn_inline(&root.key("bearer"), f.bearer.as_ref(), issues);
        check_timeout(f.timeout, issues);
        let mut template = None;
        if let Some(t) = &f.template {
            if f.method == "GET" {
                issues.push(Issue::error(
                    &root.key("template"),
                    "a GET request has no body to template; template the url instead",
                ));
            }
            if let Some(base) = base {
                let path = base.join(t);
                match std::fs::read_to_string(&path) {
                    Ok(text) => match env.template_from_str(&text) {
                        Ok(_) => template = Some((path, text)),
                        Err(e) => issues.push(Issue::error(
                            &root.key("template"),
                            format!("{}: invalid template: {e}", path.display()),
                        )),
                    },
                    Err(e) => issues.push(Issue::error(
                        &root.key("template"),
                        format!("cannot read {}: {e}", path.display()),
                    )),
                }
            }
        }
        if f.content_type.is_some() && f.template.is_none() {
            issues.push(Issue::error(
                &root.key("content_type"),
                "only with `template` (a CloudEvent is application/cloudevents+json)",
            ));
        }
        let retry = check_retry(f.retry.as_deref(), issues);
        if f.reassert.is_some_and(|d| d < Duration::from_secs(1)) {
            issues.push(Issue::error(&root.key("reassert"), "at least 1s"));
        }
        let tls = check_tls(f.tls.as_ref(), &f.url, base, issues);
        if errors(issues) > before {
            return None;
        }
        Some(WebhookConfig {
            url: f.url.clone(),
            method: f.method.clone(),
            events,
            secrets,
            headers,
            bearer: f.bearer.clone(),
            basic: f
                .basic
                .as_ref()
                .map(|b| (b.user.clone(), b.password.clone())),
            timeout: f.timeout,
            content_type: f
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".into()),
            template,
            retry,
            reassert: f.reassert,
            tls,
            base: base.map(Path::to_path_buf),
        })
    }
}

/// The key bytes of a `whsec_<base64>` secret. An error never quotes the secret, not even
/// the one character that is wrong: it goes into logs, the API and events.
pub fn decode_whsec(s: &str) -> Result<Vec<u8>, String> {
    use base64::DecodeError;
    let b64 = s
        .trim()
        .strip_prefix("whsec_")
        .ok_or("a signing secret starts with `whsec_` (Standard Webhooks)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| {
            let why = match e {
                DecodeError::InvalidByte(at, _) => {
                    format!("a character that is not base64 at {at}")
                }
                DecodeError::InvalidLastSymbol { offset, .. } => {
                    format!("a last character that does not fit at {offset}")
                }
                DecodeError::InvalidLength(n) => {
                    format!("{n} characters, a length base64 cannot have")
                }
                DecodeError::InvalidPadding => "padding that is not right".into(),
            };
            format!("the part after `whsec_` is not base64: {why}")
        })?;
    if key.len() < 16 {
        return Err("a signing secret needs at least 16 bytes (24 base64 characters)".into());
    }
    Ok(key)
}
