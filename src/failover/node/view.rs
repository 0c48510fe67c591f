//! What the views ([`crate::failover::views`]) read from a node: its claims, failures and holds,
//! and what it hears from each peer.

use std::time::Duration;

use super::{Node, OwnState};
use crate::config::{ResourceIdx, ServerIdx};
use crate::failover::io::Epoch;
use crate::failover::views::{PathView, ServerState};
use crate::failover::wire::{self, PeerState};

/// What the views ([`crate::failover::views`]) read.
impl Node {
    pub(crate) fn holds_server(&self, s: ServerIdx) -> bool {
        self.holds.held(s)
    }

    pub(crate) fn own_state(&self) -> wire::PeerState {
        self.my_state()
    }

    pub(crate) fn own_claim(&self, r: ResourceIdx) -> Option<(Epoch, OwnState)> {
        self.own.get(r).map(|c| (c.epoch, c.state))
    }

    /// Failures reported by peers heard within `failure_timeout`: (server, resource, epoch).
    pub(crate) fn all_peer_failures(
        &self,
        now: Duration,
    ) -> impl Iterator<Item = (ServerIdx, ResourceIdx, Epoch)> + '_ {
        self.peers
            .by_server
            .iter()
            .filter(move |(s, _)| self.recently_heard(**s, now))
            .flat_map(|(&s, p)| p.failed.iter().map(move |&(r, e)| (s, r, e)))
    }

    pub(crate) fn own_failure(&self, r: ResourceIdx) -> Option<Epoch> {
        self.own.failed.get(&r).map(|f| f.epoch)
    }

    pub(crate) fn known_epoch(&self, r: ResourceIdx) -> Epoch {
        self.known.get(r)
    }

    pub(crate) fn reports_unplaced(&self, r: ResourceIdx) -> bool {
        self.unplaced.contains(&r)
    }

    /// Claims on `r` of peers heard within `failure_timeout`: (server, epoch, state).
    pub(crate) fn peer_claims(
        &self,
        r: ResourceIdx,
        now: Duration,
    ) -> impl Iterator<Item = (ServerIdx, Epoch, wire::ClaimState)> + '_ {
        self.peers
            .holders(r)
            .iter()
            .filter(move |h| self.recently_heard(h.server, now))
            .map(|h| (h.server, h.epoch, h.state))
    }

    /// Failures of `r` reported by peers heard within `failure_timeout`: (server, epoch).
    pub(crate) fn peer_failures(
        &self,
        r: ResourceIdx,
        now: Duration,
    ) -> impl Iterator<Item = (ServerIdx, Epoch)> + '_ {
        self.peers
            .by_server
            .iter()
            .filter(move |(s, _)| self.recently_heard(**s, now))
            .flat_map(move |(&s, p)| {
                p.failed
                    .iter()
                    .filter(move |(x, _)| *x == r)
                    .map(move |&(_, e)| (s, e))
            })
    }

    /// A peer's state, paths, site-file mismatch and whether it is booting.
    pub(crate) fn peer_view(
        &self,
        s: ServerIdx,
        now: Duration,
    ) -> Option<(ServerState, Vec<PathView>, bool, bool)> {
        let p = self.peers.get(s)?;
        let state = if !p.paths.iter().any(|x| x.up) {
            ServerState::Down
        } else {
            match p.reported {
                PeerState::Leaving => ServerState::Leaving,
                PeerState::Unhealthy => ServerState::Unhealthy,
                PeerState::Up | PeerState::Booting => {
                    let late = p
                        .last_heard
                        .is_some_and(|t| now > t + 2 * self.ctx.site.heartbeat_interval);
                    if late || !p.paths.iter().all(|x| x.up) {
                        ServerState::Suspect
                    } else {
                        ServerState::Up
                    }
                }
            }
        };
        let paths = p
            .paths
            .iter()
            .map(|x| PathView {
                up: x.up,
                last_heard: x.last_heard,
            })
            .collect();
        let mismatch = p.digest != self.ctx.digest && p.last_heard.is_some();
        let booting = p.reported == PeerState::Booting && p.paths.iter().any(|x| x.up);
        Some((state, paths, mismatch, booting))
    }
}
