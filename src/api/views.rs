//! `GET /api/v1/site` and `GET /api/v1/resources`: this node's view of the site, from the
//! runtime's latest snapshot. The response types are public so a client (`buddygate status`)
//! can read them back.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::config::{Role, ServerIdx, Site};
use crate::view::Snapshot;

/// `GET /api/v1/site`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub site: String,
    /// The node answering.
    pub node: String,
    /// The answering node is still in its start-up wait.
    pub booting: bool,
    pub servers: Vec<ServerStatus>,
}

/// One server as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: String,
    /// `live` or `failover`.
    pub role: String,
    /// `up`, `suspect`, `down`, `leaving` or `unhealthy`.
    pub state: String,
    /// The IP announced to PSIMs, MQTT and ONVIF consumers.
    pub address: String,
    /// One per network path this node shares with the server; empty for the answering node
    /// itself and for servers it does not heartbeat with.
    pub paths: Vec<PathStatus>,
    /// It has just started and waits to hear its buddies.
    pub booting: bool,
    /// It runs a different site file.
    pub config_mismatch: bool,
    /// The answering node heartbeats with it (or is it); otherwise `state` says nothing.
    pub known: bool,
    /// Held out of service by an operator's failover, until a failback.
    #[serde(default)]
    pub held: bool,
}

/// One network path to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    /// The server's heartbeat address on this path.
    pub address: Option<String>,
    /// `up` or `down`.
    pub state: String,
    /// Milliseconds since the last good heartbeat on this path; `null` if never heard.
    pub last_heard_ms: Option<u64>,
}

/// `GET /api/v1/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesStatus {
    pub resources: Vec<ResourceStatus>,
}

/// Who serves one resource, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub id: String,
    /// `camera`, `io`, `lpr`, `analytics`, `map` or `middleware`.
    pub kind: String,
    /// Home server.
    pub server: String,
    /// The server serving it now; `null` when unassigned.
    pub owner: Option<String>,
    /// The owner's announced address; `null` when unassigned.
    pub address: Option<String>,
    pub epoch: u64,
    /// `active`, `starting`, `stopping`, `failed` or `unassigned`.
    pub state: String,
    /// It needs a host and no buddy can take it: the answering node reports it
    /// (`buddygate.resource.unplaced`).
    #[serde(default)]
    pub unplaced: bool,
    /// The answering node owns it: when its agent's start was complete (the resource worked:
    /// `ready_timeout`, or a start that blocks), RFC 3339; `null` otherwise.
    #[serde(default)]
    pub started_at: Option<String>,
    /// With `started_at`: from the moment the start was asked for (the claim durable) to
    /// then, in ms: waits for a permit, attempts, readiness.
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// When the answering node's agent last stopped its copy (a hand-over, a failback), if
    /// that came after its last start; `null` otherwise.
    #[serde(default)]
    pub stopped_at: Option<String>,
    /// With `stopped_at`: from the moment the stop was asked for to its end, in ms.
    #[serde(default)]
    pub stop_ms: Option<u64>,
    /// The answering node keeps it in hot standby (`standby = true`: it is the first buddy
    /// and the home server runs it).
    #[serde(default)]
    pub standby: bool,
}

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Live => "live",
        Role::Failover => "failover",
    }
}

/// A server's id, or `""` for an index outside the site (never expected; never a panic).
pub(crate) fn server_id(site: &Site, s: ServerIdx) -> &str {
    site.servers
        .get(usize::from(s.0))
        .map(|s| s.id.as_str())
        .unwrap_or("")
}

impl SiteStatus {
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let site = &snap.site;
        // The snapshot's clock, moved on to now: snapshots are published on changes.
        let now = snap.now
            + std::time::SystemTime::now()
                .duration_since(snap.taken_at)
                .unwrap_or_default();
        let servers = snap
            .servers
            .iter()
            .filter_map(|v| {
                let server = site.servers.get(usize::from(v.server.0))?;
                let paths = v
                    .paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PathStatus {
                        address: server.heartbeat.get(i).map(|a| a.to_string()),
                        state: if p.up { "up" } else { "down" }.to_string(),
                        last_heard_ms: p.last_heard.map(|t| {
                            u64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(u64::MAX)
                        }),
                    })
                    .collect();
                Some(ServerStatus {
                    id: server.id.clone(),
                    role: role_str(server.role).to_string(),
                    state: v.state.as_str().to_string(),
                    address: server.address.to_string(),
                    paths,
                    booting: v.booting,
                    config_mismatch: v.config_mismatch,
                    known: v.known,
                    held: v.held,
                })
            })
            .collect();
        Self {
            site: site.name.clone(),
            node: server_id(site, snap.node).to_string(),
            booting: snap.booting,
            servers,
        }
    }
}

impl ResourcesStatus {
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let site = &snap.site;
        let resources = snap
            .resources
            .iter()
            .filter_map(|v| {
                let resource = site.resources.get(v.resource.0 as usize)?;
                let owner = v.owner.and_then(|o| site.servers.get(usize::from(o.0)));
                let (start, stop) = snap
                    .agents
                    .last
                    .get(&v.resource)
                    .copied()
                    .unwrap_or_default();
                // The start of the claim this node holds now.
                let start =
                    start.filter(|t| t.ok && v.owner == Some(snap.node) && t.epoch == v.epoch);
                // A stop after this node's last start.
                let stop = stop.filter(|t| {
                    t.ok && snap
                        .agents
                        .last
                        .get(&v.resource)
                        .and_then(|l| l.0)
                        .is_none_or(|s| s.asked_at <= t.asked_at)
                });
                let ms = |t: &crate::agent::OpTime| {
                    u64::try_from(t.took.as_millis()).unwrap_or(u64::MAX)
                };
                let at = |t: &crate::agent::OpTime| crate::cloudevents::rfc3339(t.done_at());
                Some(ResourceStatus {
                    id: resource.id.clone(),
                    kind: resource.kind.as_str().to_string(),
                    server: server_id(site, resource.server).to_string(),
                    owner: owner.map(|o| o.id.clone()),
                    address: owner.map(|o| o.address.to_string()),
                    epoch: v.epoch,
                    state: v.state.as_str().to_string(),
                    unplaced: v.unplaced,
                    started_at: start.as_ref().map(at),
                    start_ms: start.as_ref().map(ms),
                    stopped_at: stop.as_ref().map(at),
                    stop_ms: stop.as_ref().map(ms),
                    standby: snap.agents.standby.contains(&v.resource),
                })
            })
            .collect();
        Self { resources }
    }
}

pub(crate) async fn site(State(state): State<AppState>) -> Json<SiteStatus> {
    let snap = state.shared.snapshot.borrow().clone();
    Json(SiteStatus::from_snapshot(&snap))
}

pub(crate) async fn resources(State(state): State<AppState>) -> Json<ResourcesStatus> {
    let snap = state.shared.snapshot.borrow().clone();
    Json(ResourcesStatus::from_snapshot(&snap))
}
