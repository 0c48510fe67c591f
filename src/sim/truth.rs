//! The ground truth the protocol is judged by: who actually runs each resource (the agents'
//! view, not the nodes'), the intervals with no owner or several, every change of sole owner,
//! and the newest owner each resource was announced with, which is where a consumer that keeps
//! the highest epoch (as the integration docs tell it to) ends up.

use std::time::Duration;

use super::Sim;
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::{Epoch, Event};

/// An interval during which a resource had no owner or more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub resource: ResourceIdx,
    pub from: Duration,
    /// `None` while it lasts.
    pub to: Option<Duration>,
    pub owners: usize,
}

impl Gap {
    pub fn length(&self, now: Duration) -> Duration {
        self.to.unwrap_or(now) - self.from
    }
}

/// What consumers were last told about a resource: the highest epoch announced in any event
/// (`failover.completed`, `failback.completed`, `ownership.resolved`) and its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub epoch: Epoch,
    pub owner: ServerIdx,
    pub at: Duration,
    /// The node whose event said it.
    pub by: ServerIdx,
}

pub(super) struct Truth {
    gaps: Vec<Gap>,
    open_gap: Vec<Option<usize>>,
    /// Per resource: every change of sole owner, (time, owner).
    changes: Vec<Vec<(Duration, ServerIdx)>>,
    told: Vec<Option<Told>>,
    /// Per node, per resource: the highest epoch it ever knew (across restarts that kept its
    /// store); a claim below it is a stale claim.
    knew: Vec<Vec<Epoch>>,
    /// Claims made at or below an epoch the claimant knew: (time, node, resource, epoch, knew).
    pub stale_claims: Vec<(Duration, ServerIdx, ResourceIdx, Epoch, Epoch)>,
}

impl Truth {
    pub fn new(site: &Site) -> Self {
        let n = site.resources.len();
        Self {
            gaps: (0..n)
                .map(|i| Gap {
                    resource: ResourceIdx(i as u32),
                    from: Duration::ZERO,
                    to: None,
                    owners: 0,
                })
                .collect(),
            open_gap: (0..n).map(Some).collect(),
            changes: vec![Vec::new(); n],
            told: vec![None; n],
            knew: vec![vec![0; n]; site.servers.len()],
            stale_claims: Vec::new(),
        }
    }

    pub fn on_event(&mut self, at: Duration, by: ServerIdx, e: &Event) {
        let mut tell = |r: ResourceIdx, epoch: Epoch, owner: ServerIdx| {
            let t = &mut self.told[r.0 as usize];
            if t.is_none_or(|t| epoch > t.epoch) {
                *t = Some(Told {
                    epoch,
                    owner,
                    at,
                    by,
                });
            }
        };
        match e {
            Event::FailoverCompleted {
                new_server,
                epoch,
                resources,
                ..
            } => {
                for &r in resources {
                    tell(r, *epoch, *new_server);
                }
            }
            Event::FailbackCompleted {
                server,
                epoch,
                resources,
                ..
            } => {
                for &r in resources {
                    tell(r, *epoch, *server);
                }
            }
            Event::OwnershipResolved {
                resource,
                owner,
                epoch,
            } => tell(*resource, *epoch, *owner),
            _ => {}
        }
    }
}

impl Sim {
    /// Ground truth: who runs `r` now, with the epoch each started it at.
    pub fn owners(&self, r: ResourceIdx) -> Vec<(ServerIdx, Epoch)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.running.get(&r).map(|&e| (ServerIdx(i as u16), e)))
            .collect()
    }

    /// Resources `s` actually runs.
    pub fn running_on(&self, s: ServerIdx) -> Vec<ResourceIdx> {
        self.nodes[s.0 as usize].running.keys().copied().collect()
    }

    /// Intervals with no owner (`owners == 0`) or several (`owners > 1`).
    pub fn gaps(&self) -> &[Gap] {
        &self.truth.gaps
    }

    /// Every change of sole owner of `r`: (time, owner).
    pub fn owner_changes(&self, r: ResourceIdx) -> &[(Duration, ServerIdx)] {
        &self.truth.changes[r.0 as usize]
    }

    /// The newest owner consumers were told of for `r`.
    pub fn told(&self, r: ResourceIdx) -> Option<Told> {
        self.truth.told[r.0 as usize]
    }

    /// Claims a node made at or below an epoch it knew of: must stay empty.
    pub fn stale_claims(&self) -> &[(Duration, ServerIdx, ResourceIdx, Epoch, Epoch)] {
        &self.truth.stale_claims
    }

    /// The store of `s` was wiped: what it knew is gone with it.
    pub(super) fn forget(&mut self, s: ServerIdx) {
        for k in &mut self.truth.knew[s.0 as usize] {
            *k = 0;
        }
    }

    /// After every input to `s`: what its node knows now, and the claims it just made.
    pub(super) fn observe(&mut self, s: ServerIdx) {
        let Some(node) = self.nodes[s.0 as usize].node.as_ref() else {
            return;
        };
        let site = node.site().clone();
        for r in site.resource_indices() {
            if (r.0 as usize) < self.truth.knew[s.0 as usize].len() {
                let k = &mut self.truth.knew[s.0 as usize][r.0 as usize];
                *k = (*k).max(node.known_epoch(r));
            }
        }
    }

    /// A claim `s` just persisted: it must be above everything `s` knew before.
    pub(super) fn check_claim(&mut self, s: ServerIdx, r: ResourceIdx, epoch: Epoch) {
        let knew = self.truth.knew[s.0 as usize][r.0 as usize];
        if epoch <= knew {
            self.truth.stale_claims.push((self.now, s, r, epoch, knew));
        }
    }

    pub(super) fn update_truth(&mut self, r: ResourceIdx) {
        let owners = self.owners(r);
        let ri = r.0 as usize;
        if let [(sole, _)] = owners[..] {
            let changes = &mut self.truth.changes[ri];
            if changes.last().is_none_or(|&(_, o)| o != sole) {
                changes.push((self.now, sole));
            }
        }
        let count = owners.len();
        let class = count.min(2);
        let gaps = &mut self.truth.gaps;
        if let Some(g) = self.truth.open_gap[ri] {
            if gaps[g].owners.min(2) == class {
                gaps[g].owners = gaps[g].owners.max(count);
                return;
            }
            gaps[g].to = Some(self.now);
            self.truth.open_gap[ri] = None;
        }
        if count != 1 {
            self.truth.open_gap[ri] = Some(gaps.len());
            gaps.push(Gap {
                resource: r,
                from: self.now,
                to: None,
                owners: count,
            });
        }
    }
}
