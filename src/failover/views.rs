//! What a node shows of its view: servers and their paths (`GET /site`), who serves each
//! resource (`GET /resources`), and its counters (`/metrics`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::io::Epoch;
use super::node::{Node, OwnState};
use super::wire::{ClaimState, PeerState};
use crate::config::{ResourceIdx, ServerIdx};

/// A server's state as this node sees it (`GET /site`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Up,
    /// Reachable, but some path is down or heartbeats are late.
    Suspect,
    Down,
    Leaving,
    Unhealthy,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Suspect => "suspect",
            ServerState::Down => "down",
            ServerState::Leaving => "leaving",
            ServerState::Unhealthy => "unhealthy",
        }
    }
}

/// A resource's state as this node knows it (`GET /resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceState {
    Active,
    Starting,
    Stopping,
    Failed,
    Unassigned,
}

impl ResourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Active => "active",
            ResourceState::Starting => "starting",
            ResourceState::Stopping => "stopping",
            ResourceState::Failed => "failed",
            ResourceState::Unassigned => "unassigned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathView {
    pub up: bool,
    pub last_heard: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerIdx,
    pub state: ServerState,
    /// Empty for this node itself and for servers it does not heartbeat with.
    pub paths: Vec<PathView>,
    /// Whether this node heartbeats with the server (or is it).
    pub known: bool,
    /// The server runs a different site file.
    pub config_mismatch: bool,
    /// The server says it has just started and is waiting to hear its buddies (for this
    /// node: it is still in its start-up wait).
    pub booting: bool,
    /// Held out of service by an operator's failover (until a failback).
    pub held: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceView {
    pub resource: ResourceIdx,
    pub owner: Option<ServerIdx>,
    pub epoch: Epoch,
    pub state: ResourceState,
    /// It needs a host and no buddy can take it; this node reports it (`resource.unplaced`).
    pub unplaced: bool,
}

/// Counters and gauges for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Rejected datagrams by reason (`hmac`, `replay`, `malformed`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
    pub takeovers: u64,
    pub failbacks: u64,
    pub resources_failed: u64,
    pub conflicts: u64,
    pub config_mismatches: u64,
    /// Agent stops that failed (each is retried).
    pub stop_failures: u64,
    /// Gauge: claims whose stop is failing now (the resource may run twice).
    pub stops_failing: u64,
    /// Gauge: resources this node reports unplaced now.
    pub unplaced: u64,
    /// Claims renewed at a new round because a newer epoch was known for them.
    pub renewals: u64,
    /// Resources stopped to bring this node back within its capacity.
    pub evictions: u64,
    /// Times this node jumped past an incarnation its peers remembered.
    pub incarnation_jumps: u64,
    /// Heartbeat rounds whose claims took more than one datagram for some peer.
    pub paged_rounds: u64,
    /// Names in heartbeats this node could not read (by index, from a peer running another
    /// site file).
    pub unreadable: u64,
    /// Times this node noticed it had not run for a while (a stall) and listened afresh
    /// before deciding anything.
    pub stalls: u64,
    /// Heartbeats counted for liveness only: they did not echo this node's incarnation (sent
    /// before the peer heard it, or replayed).
    pub unconfirmed: u64,
}

impl Node {
    pub fn server_view(&self, s: ServerIdx, now: Duration) -> ServerView {
        let held = self.holds_server(s);
        if s == self.me() {
            let state = match self.own_state() {
                PeerState::Leaving => ServerState::Leaving,
                PeerState::Unhealthy => ServerState::Unhealthy,
                PeerState::Up | PeerState::Booting => ServerState::Up,
            };
            return ServerView {
                server: s,
                state,
                paths: Vec::new(),
                known: true,
                config_mismatch: false,
                booting: self.is_booting(),
                held,
            };
        }
        match self.peer_view(s, now) {
            Some((state, paths, mismatch, booting)) => ServerView {
                server: s,
                state,
                paths,
                known: true,
                config_mismatch: mismatch,
                booting,
                held,
            },
            None => ServerView {
                server: s,
                state: ServerState::Down,
                paths: Vec::new(),
                known: false,
                config_mismatch: false,
                booting: false,
                held,
            },
        }
    }

    /// Who serves `r` now as this node knows it: the active claim that wins (highest epoch,
    /// ties to the smaller server id), else the best starting one, else a stopping one.
    pub fn resource_view(&self, r: ResourceIdx, now: Duration) -> ResourceView {
        let failures: Vec<(ServerIdx, Epoch)> = self.peer_failures(r, now).collect();
        self.view_with(r, now, &failures)
    }

    /// Every resource's view, in site order; costs each resource's own claims, not every
    /// claim of every peer (the snapshot the API and connectors read).
    pub fn resource_views(&self, now: Duration) -> Vec<ResourceView> {
        let mut failures: HashMap<ResourceIdx, Vec<(ServerIdx, Epoch)>> = HashMap::new();
        for (s, r, epoch) in self.all_peer_failures(now) {
            failures.entry(r).or_default().push((s, epoch));
        }
        self.site()
            .resource_indices()
            .map(|r| self.view_with(r, now, failures.get(&r).map_or(&[], Vec::as_slice)))
            .collect()
    }

    fn view_with(
        &self,
        r: ResourceIdx,
        now: Duration,
        failures: &[(ServerIdx, Epoch)],
    ) -> ResourceView {
        let mut best: Option<(u8, Epoch, &str, ServerIdx, ResourceState)> = None;
        let site = self.site().clone();
        let mut consider = |s: ServerIdx, epoch: Epoch, state: ResourceState| {
            let class = match state {
                ResourceState::Active => 3,
                ResourceState::Starting => 2,
                ResourceState::Stopping => 1,
                _ => 0,
            };
            let id = site.server(s).id.as_str();
            let better = match best {
                None => true,
                Some((c, e, i, _, _)) => {
                    (class, epoch, std::cmp::Reverse(id)) > (c, e, std::cmp::Reverse(i))
                }
            };
            if better {
                best = Some((class, epoch, id, s, state));
            }
        };
        let me = self.me();
        if let Some((epoch, state)) = self.own_claim(r) {
            let s = match state {
                OwnState::Resumed | OwnState::Starting => ResourceState::Starting,
                OwnState::Active => ResourceState::Active,
                OwnState::Stopping => ResourceState::Stopping,
            };
            consider(me, epoch, s);
        }
        if let Some(epoch) = self.own_failure(r) {
            consider(me, epoch, ResourceState::Failed);
        }
        for (s, epoch, state) in self.peer_claims(r, now) {
            let s2 = match state {
                ClaimState::Starting => ResourceState::Starting,
                ClaimState::Active => ResourceState::Active,
                ClaimState::Stopping => ResourceState::Stopping,
            };
            consider(s, epoch, s2);
        }
        for &(s, epoch) in failures {
            consider(s, epoch, ResourceState::Failed);
        }
        let unplaced = self.reports_unplaced(r);
        match best {
            Some((_, epoch, _, s, state)) => ResourceView {
                resource: r,
                owner: (state != ResourceState::Failed).then_some(s),
                epoch,
                state,
                unplaced,
            },
            None => ResourceView {
                resource: r,
                owner: None,
                epoch: self.known_epoch(r),
                state: ResourceState::Unassigned,
                unplaced,
            },
        }
    }
}
