//! The resolved site: what the rest of the crate works with once the site file has been
//! parsed, its id ranges expanded, and validated. Nothing here does I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[store]`, checked: how long a node keeps its event log and how big its store may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    pub retention: Duration,
    /// Bytes.
    pub max_size: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let d = super::file::StoreSection::default();
        Self {
            retention: d.retention,
            max_size: d.max_size,
        }
    }
}

/// Index of a server in [`Site::servers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServerIdx(pub u16);

/// Index of a resource in [`Site::resources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceIdx(pub u32);

/// Where a secret comes from: `file:PATH`, `env:VAR`, or an inline value (accepted with a
/// warning). Resolving it is I/O and happens at build time, never during validation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
    Inline(String),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Env(v) => write!(f, "env:{v}"),
            Self::Inline(_) => f.write_str("<inline secret>"),
        }
    }
}

impl SecretRef {
    /// Parses `file:PATH`, `env:VAR`, or anything else as an inline value.
    pub fn parse(s: &str) -> Self {
        if let Some(p) = s.strip_prefix("file:") {
            Self::File(PathBuf::from(p))
        } else if let Some(v) = s.strip_prefix("env:") {
            Self::Env(v.to_string())
        } else {
            Self::Inline(s.to_string())
        }
    }

    /// Reads the secret. `base` is the folder relative `file:` paths start from.
    pub fn resolve(&self, base: &std::path::Path) -> std::io::Result<Vec<u8>> {
        match self {
            Self::File(p) => {
                let bytes = std::fs::read(base.join(p))?;
                let text = String::from_utf8_lossy(&bytes);
                Ok(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
            }
            Self::Env(v) => std::env::var(v).map(String::into_bytes).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("environment variable {v} is not set"),
                )
            }),
            Self::Inline(s) => Ok(s.clone().into_bytes()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Live,
    Failover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Mirrored,
    SpreadServers,
    SpreadCameras,
}

/// When the first buddy that may take a resource over prepares it (agent op `standby`: a
/// recorder opens the camera's stream and keeps a short rolling buffer), so that a takeover's
/// `start` keeps what it buffered from the home server's last heartbeat on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Standby {
    /// Never: a takeover starts the resource cold.
    #[default]
    Off,
    /// Always, while its home server runs it (`standby = true`): costs a stream per camera.
    Hot,
    /// Only while its home server is missing heartbeats (silent on every path for more than
    /// 1.5 heartbeat intervals) and for 10 failure timeouts after: costs nothing while the site
    /// is healthy, and the stream is open before the failure timeout ends.
    Warm,
}

/// What the JSON Schema says `standby` is.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
pub(crate) enum StandbySchema {
    Flag(bool),
    Mode(Standby),
}

impl<'de> Deserialize<'de> for Standby {
    /// `true` / `"hot"`, `"warm"`, `false` / `"off"`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Standby;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false, \"hot\", \"warm\" or \"off\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Standby, E> {
                Ok(if v { Standby::Hot } else { Standby::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Standby, E> {
                match v {
                    "hot" => Ok(Standby::Hot),
                    "warm" => Ok(Standby::Warm),
                    "off" => Ok(Standby::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Camera,
    Io,
    Lpr,
    Analytics,
    Map,
    Middleware,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Camera,
        Kind::Io,
        Kind::Lpr,
        Kind::Analytics,
        Kind::Map,
        Kind::Middleware,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Camera => "camera",
            Kind::Io => "io",
            Kind::Lpr => "lpr",
            Kind::Analytics => "analytics",
            Kind::Map => "map",
            Kind::Middleware => "middleware",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnvifUser {
    pub user: String,
    pub password: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Api {
    /// Bearer token for mutations. `None` means mutations are refused.
    pub token: Option<SecretRef>,
    pub onvif_users: Vec<OnvifUser>,
}

/// How a resource is started, stopped and monitored (DESIGN section 3.8): the `agent` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    Simulated,
    Exec,
    Http,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Simulated => "simulated",
            AgentKind::Exec => "exec",
            AgentKind::Http => "http",
        }
    }
}

/// Failure injection of a `simulated` agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Every start fails.
    Start,
    /// Starts succeed; every monitor fails.
    Monitor,
}

/// The variables agents see: `BUDDYGATE_<NAME>` for `exec`, `{{ name }}` in `http` templates.
pub const AGENT_VARIABLES: [&str; 8] = [
    "site", "node", "resource", "kind", "server", "epoch", "address", "op",
];

/// The variables of one operation only (`BUDDYGATE_COVER_FROM`, `{{ merge_from }}`, ...):
/// `cover_from` for a `start` that follows a takeover, the `merge_*` ones for `merge`. An
/// `exec` agent gets only those set for the operation; `http` templates see every one, `none`
/// when not set.
pub const OP_VARIABLES: [&str; 5] = [
    "cover_from",
    "merge_from",
    "merge_to",
    "merge_server",
    "merge_address",
];

/// A resource's agent with its settings resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentSpec {
    /// In memory, for demos and tests: a start takes `activation`; `fail` injects failures.
    Simulated {
        activation: Duration,
        fail: Option<FailMode>,
    },
    /// Runs `command start|stop|monitor`.
    Exec {
        /// The program, resolved against the site file's folder by [`crate::config::load`]:
        /// what is run. Left out of the site digest (see `written`).
        #[serde(skip)]
        command: PathBuf,
        /// The program as the site file names it. The digest covers this, so that servers that
        /// keep the same site file in different folders agree.
        written: PathBuf,
    },
    /// Sends a request rendered from minijinja templates over [`AGENT_VARIABLES`].
    Http {
        /// URL template.
        url: String,
        /// Upper-case HTTP method.
        method: String,
        /// Body template, if any.
        body: Option<String>,
        /// Literal headers, sorted by name.
        headers: Vec<(String, String)>,
        /// URL template of the `standby` request (hot standby, and its release is a `stop`);
        /// no standby when absent.
        standby_url: Option<String>,
        /// URL template of the `merge` request; no merge when absent.
        merge_url: Option<String>,
    },
}

impl AgentSpec {
    /// How long a simulated start takes unless `activation` says otherwise.
    pub const DEFAULT_ACTIVATION: Duration = Duration::from_millis(50);
    /// The method of an `http` agent unless `method` says otherwise.
    pub const DEFAULT_METHOD: &str = "POST";

    pub fn kind(&self) -> AgentKind {
        match self {
            AgentSpec::Simulated { .. } => AgentKind::Simulated,
            AgentSpec::Exec { .. } => AgentKind::Exec,
            AgentSpec::Http { .. } => AgentKind::Http,
        }
    }
}

impl Default for AgentSpec {
    /// A simulated agent that starts in 50ms and never fails.
    fn default() -> Self {
        AgentSpec::Simulated {
            activation: Self::DEFAULT_ACTIVATION,
            fail: None,
        }
    }
}

/// Timeouts, monitoring and retries of a resource's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTimings {
    /// Longest start, stop or monitor; longer counts as failed.
    pub timeout: Duration,
    /// How often a started resource is monitored; `None`: never.
    pub monitor_interval: Option<Duration>,
    /// Start attempts after the first one fails.
    pub retries: u32,
    /// After a start exits 0, how long `monitor` is polled until it reports running; the start
    /// is complete only then. `None`: the start's exit is the end of it.
    pub ready_timeout: Option<Duration>,
    /// Whether and when the first buddy prepares the resource before a failure.
    pub standby: Standby,
    /// Longest `merge` (copying a buddy's footage may take a while).
    pub merge_timeout: Duration,
}

impl AgentTimings {
    /// The site file's defaults: 10s timeout, monitor every 5s, 2 retries, no readiness poll,
    /// no standby, merges of at most 10 minutes.
    pub const DEFAULT: Self = Self {
        timeout: Duration::from_secs(10),
        monitor_interval: Some(Duration::from_secs(5)),
        retries: 2,
        ready_timeout: None,
        standby: Standby::Off,
        merge_timeout: Duration::from_secs(600),
    };
}

impl Default for AgentTimings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub role: Role,
    /// The IP announced to PSIMs, MQTT and ONVIF consumers.
    pub address: IpAddr,
    /// One listen address per network path; position `i` is network `i` on every server.
    pub heartbeat: Vec<SocketAddr>,
    pub api: Option<SocketAddr>,
    /// Live servers: failover servers in order of preference.
    pub buddies: Vec<ServerIdx>,
    /// Failover servers only.
    pub mode: Option<Mode>,
    pub max_servers: Option<u32>,
    pub max_cameras: Option<u32>,
    /// Spread-cameras failover servers: exactly which resources to take.
    pub pick: Vec<ResourceIdx>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    /// Home server.
    pub server: ServerIdx,
    /// Higher is taken first when capacity is short.
    pub priority: i32,
    /// How it is started, stopped and monitored.
    pub agent: AgentSpec,
    pub timings: AgentTimings,
    /// Its own agent settings (`params`), for `exec` and `http` agents.
    pub params: Params,
}

/// A resource's `params`, rendered for it (ranges and `{server}` filled in), sorted by name:
/// `BUDDYGATE_PARAM_<NAME>` for `exec` agents, `{{ params.name }}` in `http` templates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params(pub Vec<(String, ParamValue)>);

impl Params {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// One param's value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamValue {
    /// Given to the agent as written.
    Text(String),
    /// `file:PATH` or `env:VAR`: read each time the agent runs, so that a rotated credential
    /// is picked up.
    Secret {
        /// As the site file names it; the site digest covers this.
        written: SecretRef,
        /// The folder a relative `file:` path starts from (the site file's), set by
        /// [`crate::config::load`]; left out of the digest like an exec agent's `command`.
        #[serde(skip)]
        base: PathBuf,
    },
}

impl std::fmt::Debug for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => write!(f, "{t:?}"),
            Self::Secret { written, .. } => write!(f, "{written:?}"),
        }
    }
}

impl ParamValue {
    /// The value to give the agent: the text, or the secret read now (a file's trailing line
    /// break removed).
    pub fn value(&self) -> std::io::Result<String> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::Secret { written, base } => {
                String::from_utf8(written.resolve(base)?).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")
                })
            }
        }
    }

    /// Whether the value is a secret, which logs and errors must not show.
    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Secret { .. })
    }
}

/// A validated site. Every index inside points into `servers` or `resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    pub secret: SecretRef,
    pub heartbeat_interval: Duration,
    pub failure_timeout: Duration,
    pub failback: Failback,
    pub failback_delay: Duration,
    pub witnesses: Vec<SocketAddr>,
    /// Folder of connector files, relative to the site file.
    pub connectors: PathBuf,
    pub api: Api,
    pub servers: Vec<Server>,
    pub resources: Vec<Resource>,
}

impl Site {
    pub fn server(&self, idx: ServerIdx) -> &Server {
        &self.servers[idx.0 as usize]
    }

    pub fn resource(&self, idx: ResourceIdx) -> &Resource {
        &self.resources[idx.0 as usize]
    }

    pub fn server_idx(&self, id: &str) -> Option<ServerIdx> {
        self.servers
            .iter()
            .position(|s| s.id == id)
            .map(|i| ServerIdx(i as u16))
    }

    pub fn resource_idx(&self, id: &str) -> Option<ResourceIdx> {
        self.resources
            .iter()
            .position(|r| r.id == id)
            .map(|i| ResourceIdx(i as u32))
    }

    pub fn server_indices(&self) -> impl Iterator<Item = ServerIdx> + '_ {
        (0..self.servers.len()).map(|i| ServerIdx(i as u16))
    }

    pub fn resource_indices(&self) -> impl Iterator<Item = ResourceIdx> + '_ {
        (0..self.resources.len()).map(|i| ResourceIdx(i as u32))
    }

    /// Map from resource id to index, for decoding claims.
    pub fn resource_map(&self) -> HashMap<String, ResourceIdx> {
        self.resource_indices()
            .map(|r| (self.resource(r).id.clone(), r))
            .collect()
    }

    /// The first 8 bytes of SHA-256 over the canonical JSON of the site: two nodes with
    /// different site files see different digests in each other's heartbeats.
    pub fn digest(&self) -> [u8; 8] {
        let json = serde_json::to_vec(self).expect("site serializes");
        let hash = Sha256::digest(&json);
        let mut out = [0u8; 8];
        out.copy_from_slice(&hash[..8]);
        out
    }
}
