//! The site file as written: the serde types of the TOML, one per section (`[site]`, `[api]`,
//! `[[servers]]`, `[[resources]]`), and the JSON Schema generated from them.
//!
//! Strings in server and resource blocks may still hold id ranges (`"cam-{001..050}"`) and
//! `{server}`; [`super::expand`] turns blocks into servers and resources, and
//! validation checks them. Every type rejects unknown keys. Use [`super::load`] rather
//! than deserializing [`SiteFile`] directly: it deserializes each section and block on its own,
//! so that every problem in the file is reported at once, with its position.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::ingress::ReadAccess;
use super::model::{
    AgentKind, AgentTimings, FailMode, Failback, Kind, Mode, Role, SecretRef, Standby,
};
use super::params::ParamText;

/// A whole site file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "buddygate site file")]
pub struct SiteFile {
    /// Site-wide settings: name, heartbeat key, timings, failback, witnesses.
    pub site: SiteSection,
    /// The REST/ONVIF API of every node.
    #[serde(default)]
    pub api: ApiSection,
    /// Live and failover servers (`[[servers]]` blocks). String values may use id ranges.
    #[serde(default)]
    pub servers: Vec<ServerBlock>,
    /// Cameras, I/O units, LPR and analytics configurations, maps and middleware
    /// (`[[resources]]` blocks). String values may use id ranges and `{server}`.
    #[serde(default)]
    pub resources: Vec<ResourceBlock>,
    /// Each node's store (its data dir): how long its event log is kept, how big it may grow.
    #[serde(default)]
    pub store: StoreSection,
}

/// `[site]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Site name: letters, digits, `.`, `_` and `-`. Appears in event sources
    /// (`buddygate://NAME/SERVER`) and payloads.
    pub name: String,
    /// Heartbeat HMAC key: `file:PATH` (relative to the site file) or `env:VAR`. An inline value
    /// is accepted with a warning.
    #[serde(deserialize_with = "secret::deserialize")]
    #[schemars(with = "String")]
    pub secret: SecretRef,
    /// How often every server heartbeats every buddy on every path, e.g. `"200ms"`.
    #[serde(default = "default_heartbeat_interval", with = "duration")]
    #[schemars(with = "String")]
    pub heartbeat_interval: Duration,
    /// Silence on every path for this long means the server is down. Must be greater than
    /// 2 x `heartbeat_interval`.
    #[serde(default = "default_failure_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub failure_timeout: Duration,
    /// `auto`: hand resources back once the live server has been stable for `failback_delay`;
    /// `manual`: only on `buddygate failback`.
    #[serde(default = "default_failback")]
    pub failback: Failback,
    /// With `failback = "auto"`: how long a returning live server must be stable first.
    #[serde(default = "default_failback_delay", with = "duration")]
    #[schemars(with = "String")]
    pub failback_delay: Duration,
    /// Optional `IP:port` witnesses; a node takes over only while it reaches a majority of them.
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// Folder of connector files, relative to the site file.
    #[serde(default = "default_connectors")]
    pub connectors: PathBuf,
}

/// `[api]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Bearer token required for every mutation: `file:PATH` or `env:VAR` (inline is warned).
    /// Without it, mutations are refused.
    #[serde(default, deserialize_with = "secret::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub token: Option<SecretRef>,
    /// WS-UsernameToken accounts for the ONVIF device and event services.
    #[serde(default)]
    pub onvif_users: Vec<OnvifUserEntry>,
    /// Who may read the API (`/api/v1/...`, `/metrics`, the event stream): `"token"` (default:
    /// `Authorization: Bearer` with `token` or `read_token`) or `"open"` (anyone who reaches the
    /// API port). `/healthz`, the dashboard page itself and ONVIF `GetSystemDateAndTime` are
    /// always open.
    #[serde(default)]
    pub read: ReadAccess,
    /// A bearer token that may read but not fail over, fail back or replay: for dashboards,
    /// `buddygate status` and Prometheus. `file:PATH` or `env:VAR` (inline is warned).
    #[serde(default, deserialize_with = "secret::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub read_token: Option<SecretRef>,
    /// Serve the API over HTTPS: `{ cert = "api.crt", key = "api.key" }`, PEM files relative
    /// to this file (the certificate names the API's address or host name). With
    /// `client_ca`, every client must present a certificate signed by that CA.
    #[serde(default)]
    pub tls: Option<ApiTlsFile>,
    /// Host names clients may use to reach the API (its `Host` header), besides the node's own
    /// addresses, loopback addresses and `localhost`: e.g. `["vms-1.example.com"]`. Any other
    /// `Host` is refused (421), which stops DNS rebinding.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where an ONVIF push `Subscribe` may send notifications: addresses (`"10.0.5.7"`),
    /// networks (`"10.0.5.0/24"`) or host names (`"psim.example.com"`), each with an optional
    /// port (`"10.0.5.7:8080"`). Empty (default): push subscriptions are refused. Pull points
    /// are not affected.
    #[serde(default)]
    pub onvif_push_allow: Vec<String>,
}

/// `[api] tls = { cert = "api.crt", key = "api.key", client_ca = "clients.pem" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsFile {
    /// PEM certificate chain of the API (leaf first), relative to the site file.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA certificate(s): when set, clients must present a certificate signed by one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[store]`: each node's event log and outbox, in its data dir. A node runs for years: its
/// store stays bounded by both keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Events are kept at least this long, and until every connector of the node has handled
    /// them (delivered, filtered out or dead-lettered); a dead letter is kept this long too.
    /// At least `"1h"`.
    #[serde(default = "default_retention", with = "duration")]
    #[schemars(with = "String", extend("default" = "30d"))]
    pub retention: Duration,
    /// The most the store may take on disk, e.g. `"1GiB"` or `"500MB"`: past it the oldest
    /// events go first, delivered or not (a warning and `buddygate_store_events_dropped_total`
    /// say so). At least `"16MiB"`.
    #[serde(default = "default_max_size", with = "size")]
    #[schemars(with = "String", extend("default" = "1GiB"))]
    pub max_size: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            retention: default_retention(),
            max_size: default_max_size(),
        }
    }
}

/// One ONVIF account: `{ user = "admin", password = "file:onvif.pass" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnvifUserEntry {
    /// User name.
    pub user: String,
    /// Password: `file:PATH` or `env:VAR` (inline is warned).
    #[serde(deserialize_with = "secret::deserialize")]
    #[schemars(with = "String")]
    pub password: SecretRef,
}

/// `[[servers]]`: one server, or many when its strings hold id ranges (`"live-{01..20}"`); all
/// ranges in one block are zipped and must have the same length.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerBlock {
    /// Server id: letters, digits, `.`, `_` and `-`; the `--node` of `buddygate run`.
    pub id: String,
    /// `live` (default) serves resources; `failover` takes them over.
    #[serde(default = "default_role")]
    pub role: Role,
    /// The IP address announced to PSIMs, MQTT and ONVIF consumers.
    pub address: String,
    /// One `IP:port` heartbeat listen address per network path; position `i` is network `i` on
    /// every server.
    pub heartbeat: Vec<String>,
    /// `IP:port` of the REST, SSE, metrics, ONVIF and dashboard listener.
    #[serde(default)]
    pub api: Option<String>,
    /// Live servers: failover server ids, in order of preference.
    #[serde(default)]
    pub buddies: Vec<String>,
    /// Failover servers: `mirrored`, `spread-servers` or `spread-cameras`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Failover servers in a spread mode: live servers hosted at once (no limit when absent).
    #[serde(default)]
    pub max_servers: Option<u32>,
    /// Failover servers in a spread mode: cameras hosted at once (no limit when absent).
    #[serde(default)]
    pub max_cameras: Option<u32>,
    /// `spread-cameras` servers: exactly which resource ids to take. Each entry is expanded on
    /// its own: `"live-{01..20}-cam-01"` picks 20 cameras.
    #[serde(default)]
    pub pick: Vec<String>,
}

/// `[[resources]]`: one resource, or many when `server` or `id` hold ranges. With a range in
/// `server`, `id` is expanded once per server and must use `{server}`:
/// `server = "live-{001..100}"`, `id = "{server}-cam-{01..50}"` declares 5,000 cameras.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceBlock {
    /// Resource id: letters, digits, `.`, `_` and `-`; unique in the site.
    pub id: String,
    /// `camera`, `io`, `lpr`, `analytics`, `map` or `middleware`.
    pub kind: Kind,
    /// Home server: the id of a live server.
    pub server: String,
    /// Higher is taken first when failover capacity is short.
    #[serde(default)]
    pub priority: i32,
    /// How the resource is started, stopped and monitored: `simulated` (default), `exec` or
    /// `http`. The keys below configure it; a key of another kind of agent is an error.
    #[serde(default = "default_agent")]
    pub agent: AgentKind,
    /// Every agent: how long one start, stop or monitor may take before it counts as failed (an
    /// `exec` agent is killed then).
    #[serde(default = "default_agent_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Every agent: how often a started resource is monitored; `"0s"` turns monitoring off. Two
    /// failed monitors in a row fail the resource, and its buddy takes it over.
    #[serde(default = "default_monitor_interval", with = "duration")]
    #[schemars(with = "String")]
    pub monitor_interval: Duration,
    /// Every agent: how many times a failed start is tried again (with exponential backoff)
    /// before the resource counts as failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Every agent: a start is complete when the resource really works. After `start`
    /// succeeds, `monitor` is polled until it reports running, for at most this long (the start
    /// fails then, and is retried like any failed start). Absent: a start is complete when
    /// `start` succeeds.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    #[schemars(with = "Option<String>")]
    pub ready_timeout: Option<Duration>,
    /// Every agent: standby. The first buddy that may take the resource prepares it (agent op
    /// `standby`: a recorder keeps the stream open with a short rolling buffer), and a
    /// takeover's `start` is told from which instant it must cover (`BUDDYGATE_COVER_FROM`), so
    /// it keeps the video the dying server never wrote. `true` or `"hot"`: always, while its
    /// home server runs it; `"warm"`: only once its home server misses heartbeats (1.5
    /// intervals of silence), and for 10 failure timeouts after; `false` or `"off"`. Default:
    /// `"warm"` for cameras (it costs nothing while the site is healthy; an agent without
    /// `standby` is skipped), `"off"` for the other kinds.
    #[serde(default)]
    #[schemars(with = "Option<super::model::StandbySchema>")]
    pub standby: Option<Standby>,
    /// Every agent: how long one `merge` may take (after a failback, the home server's agent
    /// is given the intervals a buddy recorded, to pull that footage back). Default `"10m"`.
    #[serde(default = "default_merge_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub merge_timeout: Duration,
    /// `exec` and `http` agents: the resource's own settings, e.g.
    /// `{ url = "rtsp://10.0.5.1/cam-{01..50}", vms_id = 17, password = "file:cam.pass" }`.
    /// Names are lower-case letters, digits and `_`; values are strings, integers or booleans.
    /// A value may use `{server}` and id ranges, zipped with the id's range. A value
    /// `file:PATH` or `env:VAR` is a secret, read when the agent runs. `exec` agents get
    /// `BUDDYGATE_PARAM_<NAME>` (upper case), `http` templates `{{ params.name }}`.
    #[serde(default)]
    #[schemars(extend(
        "propertyNames" = { "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64 },
        "maxProperties" = 32
    ))]
    pub params: BTreeMap<String, ParamText>,
    /// `simulated` agents: how long a start takes. Default `"50ms"`.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    #[schemars(with = "Option<String>", extend("default" = "50ms"))]
    pub activation: Option<Duration>,
    /// `simulated` agents: inject a failure, for demos and tests. `start`: every start fails;
    /// `monitor`: the resource starts, then its monitors fail.
    #[serde(default)]
    pub fail: Option<FailMode>,
    /// `exec` agents (required): the program run as `COMMAND start|stop|monitor`, with the
    /// resource in `BUDDYGATE_*` environment variables. A relative path is relative to the site
    /// file's folder. Exit 0 is success; for `monitor`, exit 7 means not running.
    #[serde(default)]
    pub command: Option<PathBuf>,
    /// `http` agents (required): the request's URL, a minijinja template over `site`, `node`,
    /// `resource`, `kind`, `server`, `epoch`, `address` and `op`, e.g.
    /// `"http://127.0.0.1:8080/api/cameras/{{ resource }}/{{ op }}"`. A 2xx answer is success.
    #[serde(default)]
    pub url: Option<String>,
    /// `http` agents: the request method. Default `"POST"`.
    #[serde(default)]
    #[schemars(extend("default" = "POST"))]
    pub method: Option<String>,
    /// `http` agents: the request body, a template like `url`; no body when absent.
    #[serde(default)]
    pub body: Option<String>,
    /// `http` agents: request headers, e.g. `{ "content-type" = "application/json" }`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// `http` agents: the URL template of the `standby` request (hot standby: prepare the
    /// resource before any failure; its release is the usual request with `op` = `stop`).
    /// Without it, a hot standby is skipped. Same variables as `url`.
    #[serde(default)]
    pub standby_url: Option<String>,
    /// `http` agents: the URL template of the `merge` request (after a failback: pull back what
    /// a buddy recorded, `{{ merge_from }}`, `{{ merge_to }}`, `{{ merge_server }}`,
    /// `{{ merge_address }}`). Without it, nothing is merged. Same variables as `url`.
    #[serde(default)]
    pub merge_url: Option<String>,
}

const fn default_heartbeat_interval() -> Duration {
    Duration::from_millis(200)
}

const fn default_failure_timeout() -> Duration {
    Duration::from_secs(1)
}

const fn default_failback() -> Failback {
    Failback::Auto
}

const fn default_failback_delay() -> Duration {
    Duration::from_secs(30)
}

const fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

const fn default_max_size() -> u64 {
    1 << 30
}

fn default_connectors() -> PathBuf {
    PathBuf::from("connectors")
}

const fn default_role() -> Role {
    Role::Live
}

const fn default_agent() -> AgentKind {
    AgentKind::Simulated
}

const fn default_agent_timeout() -> Duration {
    AgentTimings::DEFAULT.timeout
}

const fn default_merge_timeout() -> Duration {
    AgentTimings::DEFAULT.merge_timeout
}

const fn default_monitor_interval() -> Duration {
    match AgentTimings::DEFAULT.monitor_interval {
        Some(every) => every,
        None => Duration::ZERO,
    }
}

const fn default_retries() -> u32 {
    AgentTimings::DEFAULT.retries
}

/// The JSON Schema of [`SiteFile`], as committed in `schemas/site.schema.json`.
pub fn schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(schemars::transform::RecursiveTransform(no_null))
        .into_generator()
        .into_root_schema_for::<SiteFile>()
}

/// [`schema`] as pretty JSON with a final newline.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// TOML has no null: an optional key is simply left out. Turns `Option<T>`'s "T or null" into T.
fn no_null(schema: &mut schemars::Schema) {
    use serde_json::Value;
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.get("default") == Some(&Value::Null) {
        obj.remove("default");
    }
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            obj.insert("type".into(), only);
        }
    }
    let Some(Value::Array(any)) = obj.get("anyOf") else {
        return;
    };
    let rest: Vec<&Value> = any
        .iter()
        .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
        .collect();
    if let [Value::Object(only)] = rest.as_slice() {
        let only = only.clone();
        obj.remove("anyOf");
        obj.extend(only);
    }
}

/// Durations as humantime strings (`"200ms"`, `"1s"`, `"1m 30s"`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    use super::StrVisitor;

    const VISITOR: StrVisitor<Duration> = StrVisitor {
        expecting: "a duration such as \"200ms\" or \"1s\"",
        parse: |v| {
            humantime::parse_duration(v).map_err(|e| format!("invalid duration \"{v}\": {e}"))
        },
    };

    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(VISITOR)
    }

    pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_str(VISITOR).map(Some)
    }
}

/// Sizes in bytes as strings with a unit: `"500MB"` (10^6), `"1GiB"` (2^30), `"4096B"`.
pub(crate) mod size {
    use serde::{Deserializer, Serializer};

    use super::StrVisitor;

    const UNITS: [(&str, u64); 9] = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];

    /// `"500MB"`, `"1 GiB"`, `"4096B"`.
    pub(crate) fn parse(v: &str) -> Result<u64, String> {
        let t = v.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(digits);
        let unit = unit.trim();
        let bad = || {
            format!(
                "invalid size \"{v}\": expected a whole number and a unit \
                 (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. \"1GiB\""
            )
        };
        let n: u64 = n.parse().map_err(|_| bad())?;
        let (_, mult) = UNITS
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(unit))
            .ok_or_else(bad)?;
        n.checked_mul(*mult)
            .ok_or_else(|| format!("invalid size \"{v}\": too large"))
    }

    /// The largest binary unit that divides `n`.
    pub(crate) fn show(n: u64) -> String {
        for (unit, mult) in UNITS.iter().rev() {
            if n >= *mult && n.is_multiple_of(*mult) && unit.ends_with("iB") {
                return format!("{}{unit}", n / mult);
            }
        }
        format!("{n}B")
    }

    const VISITOR: StrVisitor<u64> = StrVisitor {
        expecting: "a size such as \"1GiB\" or \"500MB\"",
        parse,
    };

    pub(crate) fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&show(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_str(VISITOR)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn sizes() {
            assert_eq!(super::parse("1GiB"), Ok(1 << 30));
            assert_eq!(super::parse("500 MB"), Ok(500_000_000));
            assert_eq!(super::parse("16mib"), Ok(16 << 20));
            assert_eq!(super::parse("4096b"), Ok(4096));
            assert_eq!(super::parse("2gb"), Ok(2_000_000_000));
            assert!(super::parse("1.5GiB").is_err());
            assert!(super::parse("GiB").is_err());
            assert_eq!(super::show(1 << 30), "1GiB");
            assert_eq!(super::show(3 << 20), "3MiB");
            assert_eq!(super::show(1000), "1000B");
        }
    }
}

/// Secrets as `file:PATH`, `env:VAR` or inline strings.
pub(crate) mod secret {
    use serde::Deserializer;

    use super::StrVisitor;
    use crate::config::model::SecretRef;

    const VISITOR: StrVisitor<SecretRef> = StrVisitor {
        expecting: "a secret as \"file:PATH\" or \"env:VAR\"",
        parse: |v| Ok(SecretRef::parse(v)),
    };

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretRef, D::Error> {
        d.deserialize_str(VISITOR)
    }

    pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SecretRef>, D::Error> {
        d.deserialize_str(VISITOR).map(Some)
    }
}

/// A string deserialized by `parse`; `expecting` says what it should be.
struct StrVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> serde::de::Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}
