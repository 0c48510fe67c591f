//! A `type = "mqtt"` connector file: its keys, their defaults and their checks, the broker's
//! URL and TLS files (read and parsed when the file's folder is known, so a bad PEM is reported
//! by `buddygate check` rather than at the first connect).

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::SecretRef;
use crate::config::connectors::{EventFilter, TlsFile, errors, warn_inline};
use crate::config::decode::Section;
use crate::config::file::{duration, secret};
use crate::config::locate::{Issue, KeyPath};
use crate::connectors::ConnectorFile;

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
    /// Default `buddygate-{site}-{node}-{connector}`.
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
    /// Publish every retained topic this node publishes again this often (e.g. `"5m"`, the
    /// default; `"0s"`: never), with a new timestamp, even when nothing changed: a broker that
    /// lost its retained messages, or kept a stale one (a node that lost an ownership
    /// conflict published last), heals within the interval. At least `1s` when set.
    #[serde(default = "default_reassert", with = "duration")]
    #[schemars(with = "String", extend("default" = "5m"))]
    pub reassert: Duration,
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

const fn default_reassert() -> Duration {
    Duration::from_secs(300)
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
    /// `None`: `buddygate-{site}-{node}-{connector}`.
    pub client_id: Option<String>,
    /// `None`: `buddygate/{site}`.
    pub topic_prefix: Option<String>,
    pub qos: u8,
    pub events: EventFilter,
    pub keep_alive: Duration,
    pub protocol: MqttProtocol,
    /// `mqtts://`.
    pub tls_enabled: bool,
    /// CA and client certificate paths, resolved against the connector file's folder.
    pub tls: TlsFile,
    pub message_expiry: Option<Duration>,
    pub onvif_topics: bool,
    /// Every retained topic is published again this often; `None`: never.
    pub reassert: Option<Duration>,
    /// The connector file's folder: `file:` secrets are read from there.
    pub base: Option<PathBuf>,
}

impl ConnectorFile for MqttFile {
    type Config = MqttConfig;

    fn check(&self, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<MqttConfig> {
        let f = self;
        let root = KeyPath::root();
        let before = errors(issues);
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
        warn_inline(&root.key("password"), f.password.as_ref(), issues);
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
        let events = EventFilter::check(&f.events, issues);
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
        if !f.reassert.is_zero() && f.reassert < Duration::from_secs(1) {
            issues.push(Issue::error(
                &root.key("reassert"),
                "at least 1s (or \"0s\": never)",
            ));
        }
        let tls = check_mqtt_tls(f, tls_enabled, base, issues);
        if errors(issues) > before {
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
            events,
            keep_alive: f.keep_alive,
            protocol: f.protocol,
            tls_enabled,
            tls,
            message_expiry: f.message_expiry,
            onvif_topics: f.onvif_topics,
            reassert: (!f.reassert.is_zero()).then_some(f.reassert),
            base: base.map(Path::to_path_buf),
        })
    }
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
