//! Resource agents: start, stop and monitor a resource the way Pacemaker's resource agents do
//! (DESIGN section 3.8): idempotent operations with a timeout each, and a `monitor` that tells
//! "running" from "not running"; optionally `standby` (hot standby: prepare before any
//! failure) and `merge` (after a failback, pull back what a buddy recorded).
//!
//! - [`Agents::run`] runs one operation with a resource's agent: `simulated` (in memory),
//!   `exec` (`command start|stop|monitor|standby|merge`, the resource in `BUDDYGATE_*`
//!   variables) or `http` (a request rendered from minijinja templates).
//! - [`AgentPool`] runs what the failover core asks for: one resource's operations in order,
//!   different resources in parallel up to a bound (starts, stops, monitors and merges each
//!   with permits of their own), start retries with backoff, a monitor loop per started
//!   resource, hot standbys and their release, merges, and [`AgentReport`]s back to the task
//!   that owns the core.

mod exec;
mod http;
mod pool;
mod simulated;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use pool::{
    AgentPool, AgentReport, DEFAULT_CONCURRENCY, MergeInterval, OpCounter, OpTime, START_BACKOFF,
};

use crate::config::{
    AGENT_VARIABLES, AgentSpec, Kind, ResourceIdx, ServerIdx, Site, param_env_suffix,
};
use crate::failover::{AgentOp, Epoch};

/// One operation of the resource-agent contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Start,
    Stop,
    Monitor,
    /// Optional: prepare the resource before any failure (hot standby); released with `stop`.
    Standby,
    /// Optional: after a failback, pull back what a buddy recorded in an interval.
    Merge,
}

impl Op {
    /// `start`, `stop`, `monitor`, `standby`, `merge`: the argument of an `exec` agent and
    /// `{{ op }}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Monitor => "monitor",
            Op::Standby => "standby",
            Op::Merge => "merge",
        }
    }

    /// Whether an agent may leave it out (`exec` exit 3, no `standby_url` or `merge_url`).
    pub fn is_optional(self) -> bool {
        matches!(self, Op::Standby | Op::Merge)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AgentOp> for Op {
    fn from(op: AgentOp) -> Self {
        match op {
            AgentOp::Start => Op::Start,
            AgentOp::Stop => Op::Stop,
        }
    }
}

/// What an agent is told about the resource: `BUDDYGATE_<NAME>` for `exec` agents, `{{ name }}`
/// in `http` templates (names as in [`AGENT_VARIABLES`]; the operation is added per call), and
/// its `params`: `BUDDYGATE_PARAM_<NAME>`, `{{ params.name }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceEnv {
    /// Site name.
    pub site: String,
    /// This node: the server that runs the agent.
    pub node: String,
    /// Resource id.
    pub resource: String,
    pub kind: Kind,
    /// The resource's home server.
    pub server: String,
    /// The epoch of the ownership the operation is for.
    pub epoch: Epoch,
    /// This node's announced address.
    pub address: IpAddr,
    /// The resource's params, secrets read, sorted by name.
    pub params: Vec<Param>,
    /// The variables of this operation only, names from
    /// [`OP_VARIABLES`](crate::config::OP_VARIABLES):
    /// `BUDDYGATE_COVER_FROM`, `BUDDYGATE_MERGE_FROM`, ... for `exec`, `{{ cover_from }}`, ...
    /// in `http` templates.
    pub op_vars: Vec<(&'static str, String)>,
}

/// One of a resource's params with its value (a secret read from its file or variable).
#[derive(Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: String,
    /// Logs and errors never show a secret's value.
    pub secret: bool,
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            write!(f, "{}=<secret>", self.name)
        } else {
            write!(f, "{}={:?}", self.name, self.value)
        }
    }
}

impl Param {
    /// `BUDDYGATE_PARAM_<NAME>`: the variable an `exec` agent reads it from.
    pub fn env_name(&self) -> String {
        format!("BUDDYGATE_PARAM_{}", param_env_suffix(&self.name))
    }
}

impl ResourceEnv {
    /// The environment of `resource` on `node`. Reads the resource's secret params, so it
    /// fails when one cannot be read ([`AgentError::Param`]) as well as when the node or the
    /// resource is not in `site` ([`AgentError::NotInSite`]).
    pub fn new(
        site: &Site,
        node: ServerIdx,
        resource: ResourceIdx,
        epoch: Epoch,
    ) -> Result<Self, AgentError> {
        let this = site
            .servers
            .get(usize::from(node.0))
            .ok_or(AgentError::NotInSite)?;
        let r = usize::try_from(resource.0)
            .ok()
            .and_then(|i| site.resources.get(i))
            .ok_or(AgentError::NotInSite)?;
        let home = site
            .servers
            .get(usize::from(r.server.0))
            .ok_or(AgentError::NotInSite)?;
        let params = r
            .params
            .0
            .iter()
            .map(|(name, value)| {
                let read = value.value().map_err(|e| AgentError::Param {
                    name: name.clone(),
                    message: format!("cannot read {value:?}: {e}"),
                })?;
                Ok(Param {
                    name: name.clone(),
                    value: read,
                    secret: value.is_secret(),
                })
            })
            .collect::<Result<_, AgentError>>()?;
        Ok(Self {
            site: site.name.clone(),
            node: this.id.clone(),
            resource: r.id.clone(),
            kind: r.kind,
            server: home.id.clone(),
            epoch,
            address: this.address,
            params,
            op_vars: Vec::new(),
        })
    }

    /// Every variable for operation `op`, as (name, value), in [`AGENT_VARIABLES`] order.
    pub fn vars(&self, op: Op) -> [(&'static str, String); 8] {
        let value = |name: &str| match name {
            "site" => self.site.clone(),
            "node" => self.node.clone(),
            "resource" => self.resource.clone(),
            "kind" => self.kind.as_str().to_string(),
            "server" => self.server.clone(),
            "epoch" => self.epoch.to_string(),
            "address" => self.address.to_string(),
            _ => op.as_str().to_string(),
        };
        AGENT_VARIABLES.map(|name| (name, value(name)))
    }
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// It took longer than the resource's `timeout` (an `exec` agent was killed).
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// `monitor`: the resource is not running (exit 7, or a simulated resource never started).
    #[error("not running")]
    NotRunning,
    /// The program could not be started or waited for.
    #[error("cannot run {}: {source}", .command.display())]
    Io {
        command: PathBuf,
        source: std::io::Error,
    },
    /// The program exited with a failure. `output`: the last lines of its stderr (or stdout).
    #[error("{status}{}", colon(.output))]
    Exited { status: String, output: String },
    /// The HTTP request got a non-2xx answer; `body` starts its body.
    #[error("HTTP {status}{}", colon(.body))]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    /// The HTTP request could not be sent or answered.
    #[error("request failed: {0}")]
    Request(String),
    /// A template could not be rendered.
    #[error("cannot render the {key} template: {message}")]
    Template { key: &'static str, message: String },
    /// Failure injected with `fail = "start"` or `fail = "monitor"`.
    #[error("simulated {0} failure")]
    Simulated(Op),
    /// The pool's node or the resource is not in its site (a bug in the caller).
    #[error("this node or resource is not in the site")]
    NotInSite,
    /// A secret param could not be read.
    #[error("param {name}: {message}")]
    Param { name: String, message: String },
    /// `start` succeeded but `monitor` did not report the resource running within the
    /// resource's `ready_timeout`; `last`: what the last monitor said.
    #[error("not ready within {}: monitor: {last}", humantime::format_duration(*.timeout))]
    NotReady { timeout: Duration, last: String },
    /// The node could not run the agent at all: out of file descriptors, processes or memory
    /// (`EMFILE`, `ENFILE`, `EAGAIN`, `ENOMEM`). The node's trouble, not the resource's: a
    /// monitor that could not run says nothing about the resource.
    #[error("this node cannot run the agent now: {0}")]
    Exhausted(String),
    /// An optional operation (`standby`, `merge`) the agent does not implement: `exec` exit 3,
    /// or no `standby_url` / `merge_url` for an `http` agent. Not a failure.
    #[error("not implemented by this agent{}", colon(.0))]
    Unimplemented(String),
}

impl AgentError {
    /// The outcome label of `metrics.agent_op`: `timeout`, `exhausted` or `failed`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AgentError::TimedOut(_) | AgentError::NotReady { .. } => "timeout",
            AgentError::Exhausted(_) => "exhausted",
            AgentError::Unimplemented(_) => "unimplemented",
            _ => "failed",
        }
    }

    /// Whether the node, not the resource, failed: see [`AgentError::Exhausted`].
    pub fn is_exhausted(&self) -> bool {
        matches!(self, AgentError::Exhausted(_))
    }
}

/// `": text"`, or nothing for no text.
fn colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// What the three kinds of agents share on one node: the HTTP client and the simulated
/// resources that are running.
#[derive(Debug)]
pub struct Agents {
    /// `Err` when the client could not be built; then every `http` operation fails with it.
    http: Result<reqwest::Client, String>,
    simulated: simulated::Simulated,
}

impl Default for Agents {
    fn default() -> Self {
        Self::new()
    }
}

impl Agents {
    pub fn new() -> Self {
        Self {
            http: http::client(),
            simulated: simulated::Simulated::default(),
        }
    }

    /// Runs `op` with `spec` for the resource in `env`, for at most `timeout`.
    pub async fn run(
        &self,
        spec: &AgentSpec,
        env: &ResourceEnv,
        op: Op,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let run = async {
            match spec {
                AgentSpec::Simulated { activation, fail } => {
                    self.simulated.run(*activation, *fail, env, op).await
                }
                AgentSpec::Exec { command, .. } => exec::run(command, env, op).await,
                AgentSpec::Http {
                    url,
                    method,
                    body,
                    headers,
                    standby_url,
                    merge_url,
                } => {
                    let url = match op {
                        Op::Standby => standby_url
                            .as_deref()
                            .ok_or_else(|| AgentError::Unimplemented("no standby_url".into()))?,
                        Op::Merge => merge_url
                            .as_deref()
                            .ok_or_else(|| AgentError::Unimplemented("no merge_url".into()))?,
                        _ => url,
                    };
                    let client = self
                        .http
                        .as_ref()
                        .map_err(|e| AgentError::Request(format!("no HTTP client: {e}")))?;
                    let request = http::Request {
                        url,
                        method,
                        body: body.as_deref(),
                        headers,
                    };
                    http::run(client, &request, env, op).await
                }
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(AgentError::TimedOut(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences_for_events_and_logs() {
        let cases: [(AgentError, &str); 5] = [
            (
                AgentError::TimedOut(Duration::from_secs(10)),
                "timed out after 10s",
            ),
            (AgentError::NotRunning, "not running"),
            (
                AgentError::Exited {
                    status: "exit status 1".into(),
                    output: "no VMS".into(),
                },
                "exit status 1: no VMS",
            ),
            (
                AgentError::Status {
                    status: reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                    body: String::new(),
                },
                "HTTP 500 Internal Server Error",
            ),
            (
                AgentError::Simulated(Op::Monitor),
                "simulated monitor failure",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(AgentError::TimedOut(Duration::ZERO).outcome(), "timeout");
        assert_eq!(AgentError::NotRunning.outcome(), "failed");
    }
}
