//! Connector files: `connectors/*.toml` beside the site file (the folder `site.connectors`
//! names), one connector each, named by the file's stem. Loaded and checked with the same
//! diagnostics as the site file: every problem at once, as `file:line:col: message`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;
use toml::de::DeTable;

use super::decode::{Section, decode_table};
use super::diag::{Diagnostic, Diagnostics, Severity};
use super::file::{duration, secret};
use super::locate::{Issue, KeyPath, Locator, Point};
use super::model::SecretRef;

/// Every event type the core emits.
pub const EVENT_TYPES: [&str; 12] = [
    "buddygate.server.down",
    "buddygate.server.up",
    "buddygate.path.down",
    "buddygate.path.up",
    "buddygate.failover.started",
    "buddygate.failover.completed",
    "buddygate.failback.completed",
    "buddygate.resource.failed",
    "buddygate.ownership.conflict",
    "buddygate.ownership.resolved",
    "buddygate.config.mismatch",
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

const fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A validated webhook connector. Secrets are still references: the runtime reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub method: String,
    /// Empty: every event.
    pub events: Vec<String>,
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

impl WebhookConfig {
    /// Whether this connector delivers events of type `ty`.
    pub fn wants(&self, ty: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| glob(p, ty))
    }
}

/// A `type = "mqtt"` connector file: retained state of every server and resource, the node's
/// birth and Last Will, and every event at QoS 1 (MQTT 3.1.1 or 5).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "buddygate mqtt connector")]
pub struct MqttFile {
    /// `"mqtt"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The broker: `mqtt://host:port` (port default 1883) or `mqtts://host:port` (TLS, port
    /// default 8883).
    pub url: String,
    /// `"v3.1.1"` (default; `"v3"` is the same) or `"v5"` (MQTT 5: message expiry, content
    /// type and user properties on every publish).
    #[serde(default)]
    pub protocol: MqttProtocol,
    pub username: Option<String>,
    /// `file:PATH`, `env:VAR` or inline (with a warning); only with `username`.
    #[serde(default, deserialize_with = "secret::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub password: Option<SecretRef>,
    /// Default `buddygate-{site}-{node}`.
    pub client_id: Option<String>,
    /// Default `buddygate/{site}`.
    pub topic_prefix: Option<String>,
    /// 0 or 1 (default).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Event types to publish; `*` globs allowed. Default: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// MQTT keep-alive, e.g. `"5s"` (default): how soon the broker notices a silent node and
    /// publishes its Last Will.
    #[serde(default = "default_keep_alive", with = "duration")]
    #[schemars(with = "String")]
    pub keep_alive: Duration,
    /// MQTT 5 only: the message expiry interval of events (e.g. `"1d"`), so a persistent
    /// session offline longer does not replay stale events. Default: none (events never
    /// expire; retained state always carries none).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub message_expiry: Option<Duration>,
    /// Also publish every event under the ONVIF Profile M event-broker topic form,
    /// `{prefix}/onvif-ej/{ONVIF topic}`, as ONVIF event JSON. Default false.
    #[serde(default)]
    pub onvif_topics: bool,
    /// TLS settings for `mqtts://` brokers, as for webhooks:
    /// `tls = { ca = "ca.pem", cert = "client.pem", key = "client.key" }`.
    pub tls: Option<TlsFile>,
}

impl Section for MqttFile {}

/// The MQTT protocol version a connector speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "v3.1.1", alias = "v3")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "v5")]
    V5,
}

const fn default_qos() -> u8 {
    1
}

const fn default_keep_alive() -> Duration {
    Duration::from_secs(5)
}

/// A validated MQTT connector. The password is still a reference: the runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// As written, for status.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// `None`: `buddygate-{site}-{node}`.
    pub client_id: Option<String>,
    /// `None`: `buddygate/{site}`.
    pub topic_prefix: Option<String>,
    pub qos: u8,
    /// Empty: every event.
    pub events: Vec<String>,
    pub keep_alive: Duration,
    pub protocol: MqttProtocol,
    /// `mqtts://`.
    pub tls_enabled: bool,
    /// CA and client certificate paths, resolved against the connector file's folder.
    pub tls: TlsFile,
    pub message_expiry: Option<Duration>,
    pub onvif_topics: bool,
    /// The connector file's folder: `file:` secrets are read from there.
    pub base: Option<PathBuf>,
}

impl MqttConfig {
    /// Whether this connector publishes events of type `ty`.
    pub fn wants(&self, ty: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| glob(p, ty))
    }
}

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
    /// Empty: every event.
    pub events: Vec<String>,
    /// WS-UsernameToken account.
    pub username: Option<(String, SecretRef)>,
    pub timeout: Duration,
    pub retry: Vec<Duration>,
    pub batch: usize,
    pub tls: TlsFile,
    /// The connector file's folder: `file:` secrets are read from there.
    pub base: Option<PathBuf>,
}

impl OnvifConfig {
    /// Whether this connector pushes events of type `ty`.
    pub fn wants(&self, ty: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| glob(p, ty))
    }
}

/// What kind of connector, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
// Built once at start-up; the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ConnectorKind {
    Webhook(WebhookConfig),
    Mqtt(MqttConfig),
    Onvif(OnvifConfig),
}

impl ConnectorKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ConnectorKind::Webhook(_) => "webhook",
            ConnectorKind::Mqtt(_) => "mqtt",
            ConnectorKind::Onvif(_) => "onvif",
        }
    }
}

/// One connector file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    /// The file's stem.
    pub name: String,
    pub file: PathBuf,
    pub kind: ConnectorKind,
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

/// Loads every `*.toml` in `dir` (a missing folder is no connectors). Diagnostics of all files
/// together; connectors only when none has an error.
pub fn load_dir(dir: &Path) -> (Vec<Connector>, Vec<Diagnostic>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(_) => return (Vec::new(), Vec::new()),
    };
    files.sort();
    let mut connectors = Vec::new();
    let mut diagnostics = Vec::new();
    for path in files {
        let name = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let base = path.parent().unwrap_or(Path::new("."));
                let (c, d) = check_file(&text, &name, &path, Some(base));
                connectors.extend(c);
                diagnostics.extend(d);
            }
            Err(e) => diagnostics.push(Diagnostic::whole_file(
                &name,
                format!("cannot read connector file: {e}"),
            )),
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        connectors.clear();
    }
    (connectors, diagnostics)
}

/// Checks one connector file's text. `base` (the file's folder) is where templates and TLS
/// files are read from; `None` skips those reads.
pub fn check_file(
    text: &str,
    file: &str,
    path: &Path,
    base: Option<&Path>,
) -> (Option<Connector>, Vec<Diagnostic>) {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let mut issues = Vec::new();
    if !syntax.is_empty() {
        for e in &syntax {
            issues.push(Issue::syntax(
                e.span().unwrap_or(0..0),
                e.message().to_string(),
            ));
        }
        let d = Diagnostics::sorted(to_diagnostics(&Locator::new(text, None), file, issues));
        return (None, d.0);
    }
    let locator = Locator::new(text, Some(&doc));
    let root = KeyPath::root();
    let kind = doc
        .get_ref()
        .get("type")
        .and_then(|v| v.get_ref().as_str().map(str::to_string));
    let connector = match kind.as_deref() {
        Some("webhook") => {
            let value =
                toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.get_ref().clone()));
            decode_table::<WebhookFile>(&value, &root, &mut issues)
                .and_then(|b| check_webhook(&b.value, base, &mut issues))
                .map(ConnectorKind::Webhook)
        }
        Some("mqtt") => {
            let value =
                toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.get_ref().clone()));
            decode_table::<MqttFile>(&value, &root, &mut issues)
                .and_then(|b| check_mqtt(&b.value, base, &mut issues))
                .map(ConnectorKind::Mqtt)
        }
        Some("onvif") => {
            let value =
                toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.get_ref().clone()));
            decode_table::<OnvifFile>(&value, &root, &mut issues)
                .and_then(|b| check_onvif(&b.value, base, &mut issues))
                .map(ConnectorKind::Onvif)
        }
        Some(other) => {
            issues.push(Issue::new(
                Severity::Error,
                &root.key("type"),
                Point::Value,
                format!(
                    "unknown connector type \"{other}\"; expected \"webhook\", \"mqtt\" or \"onvif\""
                ),
            ));
            None
        }
        None => {
            issues.push(Issue::error(
                &root,
                "missing key `type`: the kind of connector (\"webhook\", \"mqtt\" or \"onvif\")",
            ));
            None
        }
    };
    let failed = issues.iter().any(Issue::is_error);
    let diagnostics = to_diagnostics(&locator, file, issues);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let connector = connector.filter(|_| !failed).map(|kind| Connector {
        name,
        file: path.to_path_buf(),
        kind,
    });
    (connector, Diagnostics::sorted(diagnostics).0)
}

fn to_diagnostics(locator: &Locator<'_>, file: &str, issues: Vec<Issue>) -> Vec<Diagnostic> {
    issues
        .into_iter()
        .map(|issue| {
            let (line, col) = locator.line_col(locator.offset(&issue.at));
            Diagnostic {
                file: file.to_string(),
                line,
                col,
                severity: issue.severity,
                message: issue.text(),
            }
        })
        .collect()
}

fn check_webhook(
    f: &WebhookFile,
    base: Option<&Path>,
    issues: &mut Vec<Issue>,
) -> Option<WebhookConfig> {
    let root = KeyPath::root();
    let before = issues.iter().filter(|i| i.is_error()).count();
    let env = super::template_environment();
    // url: a template that must render to http(s) for a sample event.
    match env.template_from_str(&f.url) {
        Err(e) => issues.push(Issue::error(
            &root.key("url"),
            format!("invalid template: {e}"),
        )),
        Ok(_) if f.url.contains("{{") || f.url.contains("{%") => {}
        Ok(_) => check_http_url(&f.url, issues),
    }
    if !matches!(f.method.as_str(), "POST" | "PUT" | "GET") {
        issues.push(Issue::error(
            &root.key("method"),
            format!(
                "method \"{}\": expected \"POST\", \"PUT\" or \"GET\"",
                f.method
            ),
        ));
    }
    check_events(&f.events, issues);
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
    if let Some(SecretRef::Inline(_)) = &f.bearer {
        issues.push(Issue::warning(
            &root.key("bearer"),
            "inline secret; use file:PATH or env:VAR in production",
        ));
    }
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
    if issues.iter().filter(|i| i.is_error()).count() > before {
        return None;
    }
    Some(WebhookConfig {
        url: f.url.clone(),
        method: f.method.clone(),
        events: f.events.clone(),
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

/// `url`: an `http://` or `https://` URL with a host.
fn check_http_url(url: &str, issues: &mut Vec<Issue>) {
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

fn check_timeout(timeout: Duration, issues: &mut Vec<Issue>) {
    if timeout.is_zero() {
        issues.push(Issue::error(
            &KeyPath::root().key("timeout"),
            "must be more than 0s",
        ));
    }
}

/// `retry`: the delays before each retry; `None` is [`DEFAULT_RETRY`].
fn check_retry(list: Option<&[String]>, issues: &mut Vec<Issue>) -> Vec<Duration> {
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
fn check_tls(
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

fn check_onvif(f: &OnvifFile, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<OnvifConfig> {
    let root = KeyPath::root();
    let before = issues.iter().filter(|i| i.is_error()).count();
    check_http_url(&f.url, issues);
    check_events(&f.events, issues);
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
    if let Some(SecretRef::Inline(_)) = &f.password {
        issues.push(Issue::warning(
            &root.key("password"),
            "inline secret; use file:PATH or env:VAR in production",
        ));
    }
    check_timeout(f.timeout, issues);
    let retry = check_retry(f.retry.as_deref(), issues);
    if !(1..=MAX_BATCH).contains(&f.batch) {
        issues.push(Issue::error(
            &root.key("batch"),
            format!("batch {}: expected 1 to {MAX_BATCH} messages", f.batch),
        ));
    }
    let tls = check_tls(f.tls.as_ref(), &f.url, base, issues);
    if issues.iter().filter(|i| i.is_error()).count() > before {
        return None;
    }
    Some(OnvifConfig {
        url: f.url.clone(),
        events: f.events.clone(),
        username: f.username.clone().zip(f.password.clone()),
        timeout: f.timeout,
        retry,
        batch: f.batch,
        tls,
        base: base.map(Path::to_path_buf),
    })
}

fn check_events(events: &[String], issues: &mut Vec<Issue>) {
    let root = KeyPath::root();
    for (i, p) in events.iter().enumerate() {
        if !EVENT_TYPES.iter().any(|t| glob(p, t)) {
            issues.push(Issue::error(
                &root.key("events").index(i),
                format!("\"{p}\" matches no event type (they are buddygate.server.down, buddygate.failover.completed, ...)"),
            ));
        }
    }
}

fn check_mqtt(f: &MqttFile, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<MqttConfig> {
    let root = KeyPath::root();
    let before = issues.iter().filter(|i| i.is_error()).count();
    let mut host = String::new();
    let mut port = 1883;
    let tls_enabled = f.url.starts_with("mqtts:");
    match reqwest::Url::parse(&f.url) {
        Ok(u) if !matches!(u.scheme(), "mqtt" | "mqtts") => issues.push(Issue::error(
            &root.key("url"),
            format!(
                "\"{}\": expected mqtt://host:port or mqtts://host:port",
                u.scheme()
            ),
        )),
        Ok(u) => match u.host_str() {
            None | Some("") => issues.push(Issue::error(
                &root.key("url"),
                "no host: expected mqtt://host:port",
            )),
            Some(_) if !matches!(u.path(), "" | "/") || u.query().is_some() => {
                issues.push(Issue::error(
                    &root.key("url"),
                    "expected mqtt://host:port, without a path",
                ))
            }
            Some(_) if !u.username().is_empty() || u.password().is_some() => {
                issues.push(Issue::error(
                    &root.key("url"),
                    "credentials go in `username` and `password`, not in the URL",
                ))
            }
            Some(h) => {
                host = h.trim_start_matches('[').trim_end_matches(']').to_string();
                port = u.port().unwrap_or(if tls_enabled { 8883 } else { 1883 });
            }
        },
        Err(e) => issues.push(Issue::error(&root.key("url"), format!("not a URL: {e}"))),
    }
    if f.password.is_some() && f.username.is_none() {
        issues.push(Issue::error(
            &root.key("password"),
            "a password needs a `username`",
        ));
    }
    if let Some(SecretRef::Inline(_)) = &f.password {
        issues.push(Issue::warning(
            &root.key("password"),
            "inline secret; use file:PATH or env:VAR in production",
        ));
    }
    if let Some(id) = &f.client_id
        && (id.is_empty() || id.len() > 65535)
    {
        issues.push(Issue::error(&root.key("client_id"), "must not be empty"));
    }
    if let Some(p) = &f.topic_prefix {
        if p.is_empty() {
            issues.push(Issue::error(&root.key("topic_prefix"), "must not be empty"));
        } else if p.contains(['+', '#', '\0']) {
            issues.push(Issue::error(
                &root.key("topic_prefix"),
                format!("\"{p}\": a topic prefix cannot contain the wildcards + or #"),
            ));
        } else if p.ends_with('/') || p.starts_with('$') {
            issues.push(Issue::error(
                &root.key("topic_prefix"),
                format!("\"{p}\": must not end with / nor start with $"),
            ));
        }
    }
    if f.qos > 1 {
        issues.push(Issue::error(
            &root.key("qos"),
            format!("qos {}: expected 0 or 1", f.qos),
        ));
    }
    check_events(&f.events, issues);
    if f.keep_alive < Duration::from_secs(1) {
        issues.push(Issue::error(&root.key("keep_alive"), "must be at least 1s"));
    } else if f.protocol == MqttProtocol::V5 && f.keep_alive < Duration::from_secs(5) {
        // rumqttc's MQTT 5 client refuses shorter ones.
        issues.push(Issue::error(
            &root.key("keep_alive"),
            "with protocol = \"v5\", at least 5s",
        ));
    }
    if let Some(d) = f.message_expiry {
        if f.protocol != MqttProtocol::V5 {
            issues.push(Issue::error(
                &root.key("message_expiry"),
                "message expiry is an MQTT 5 property; set protocol = \"v5\"",
            ));
        } else if d < Duration::from_secs(1) || d.as_secs() > u64::from(u32::MAX) {
            issues.push(Issue::error(
                &root.key("message_expiry"),
                "between 1s and 136y (whole seconds on the wire)",
            ));
        }
    }
    let tls = check_mqtt_tls(f, tls_enabled, base, issues);
    if issues.iter().filter(|i| i.is_error()).count() > before {
        return None;
    }
    Some(MqttConfig {
        url: f.url.clone(),
        host,
        port,
        username: f.username.clone(),
        password: f.password.clone(),
        client_id: f.client_id.clone(),
        topic_prefix: f.topic_prefix.clone(),
        qos: f.qos,
        events: f.events.clone(),
        keep_alive: f.keep_alive,
        protocol: f.protocol,
        tls_enabled,
        tls,
        message_expiry: f.message_expiry,
        onvif_topics: f.onvif_topics,
        base: base.map(Path::to_path_buf),
    })
}

/// `tls = { ca, cert, key }` of an MQTT connector: only with `mqtts://`, `cert` and `key`
/// together, and (when the folder is known) every file readable and holding what it should,
/// so a bad PEM is reported by `buddygate check` rather than at the first connect.
fn check_mqtt_tls(
    f: &MqttFile,
    tls_enabled: bool,
    base: Option<&Path>,
    issues: &mut Vec<Issue>,
) -> TlsFile {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let root = KeyPath::root();
    let Some(tls) = &f.tls else {
        return TlsFile::default();
    };
    if !tls_enabled {
        issues.push(Issue::warning(
            &root.key("tls"),
            "TLS settings on an mqtt:// URL are not used (mqtts:// is TLS)",
        ));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        issues.push(Issue::error(
            &root.key("tls"),
            "`cert` and `key` go together (client certificate)",
        ));
    }
    let resolve = |p: &Option<PathBuf>| p.as_ref().map(|p| base.map_or(p.clone(), |b| b.join(p)));
    let out = TlsFile {
        ca: resolve(&tls.ca),
        cert: resolve(&tls.cert),
        key: resolve(&tls.key),
    };
    if base.is_none() {
        return out;
    }
    for (key, path) in [("ca", &out.ca), ("cert", &out.cert)] {
        let Some(path) = path else { continue };
        let problem = match std::fs::read(path) {
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
            Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
                Err(e) => Some(format!("{}: invalid PEM: {e}", path.display())),
                Ok(certs) if certs.is_empty() => Some(format!(
                    "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    path.display()
                )),
                Ok(_) => None,
            },
        };
        if let Some(p) = problem {
            issues.push(Issue::error(&root.key("tls").key(key), p));
        }
    }
    if let Some(path) = &out.key {
        let problem = match std::fs::read(path) {
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
            Ok(pem) => PrivateKeyDer::from_pem_slice(&pem)
                .err()
                .map(|e| format!("{}: no PEM private key in it ({e})", path.display())),
        };
        if let Some(p) = problem {
            issues.push(Issue::error(&root.key("tls").key("key"), p));
        }
    }
    out
}

/// The key bytes of a `whsec_<base64>` secret.
pub fn decode_whsec(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s
        .trim()
        .strip_prefix("whsec_")
        .ok_or("a signing secret starts with `whsec_` (Standard Webhooks)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `whsec_` is not base64: {e}"))?;
    if key.len() < 16 {
        return Err("a signing secret needs at least 16 bytes (24 base64 characters)".into());
    }
    Ok(key)
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
