//! The highest epoch seen per resource (rule 4: epochs never go backwards, across restarts,
//! power cuts and wiped stores).
//!
//! Two things are kept, both durable:
//! - per resource, the highest epoch of any claim (or failure) seen: this node's own and its
//!   peers'. A claim below it is stale: its holder renews it above (see `own`), so the epoch
//!   consumers keep always names the server that really records.
//! - per home server, a floor: the highest round any peer knows among that server's
//!   resources, carried in every heartbeat to the nodes that may claim them. A node whose
//!   store was wiped (or that was away) learns from the first heartbeat it hears where its
//!   next claims must start, without a list of every resource's epoch on the wire.
//!
//! A new claim starts a round above both.

use std::collections::BTreeSet;

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::io::{Durable, Epoch, epoch_round};

#[derive(Debug, Clone)]
pub(super) struct Known {
    epochs: Vec<Epoch>,
    /// Per home server: the highest round known among its resources (seen or told).
    floors: Vec<u64>,
    /// Per resource: its home server.
    home: Vec<ServerIdx>,
    /// Raised since the last [`Known::take_dirty`]; to persist.
    dirty: BTreeSet<ResourceIdx>,
    dirty_floors: BTreeSet<ServerIdx>,
}

impl Known {
    pub fn new(site: &Site) -> Self {
        Self {
            epochs: vec![0; site.resources.len()],
            floors: vec![0; site.servers.len()],
            home: site.resources.iter().map(|r| r.server).collect(),
            dirty: BTreeSet::new(),
            dirty_floors: BTreeSet::new(),
        }
    }

    /// The highest epoch of any claim seen for `r`.
    pub fn get(&self, r: ResourceIdx) -> Epoch {
        self.epochs.get(r.0 as usize).copied().unwrap_or(0)
    }

    /// The round a new claim of `r` starts: above every epoch known for it and the floor of
    /// its home server.
    pub fn next_round(&self, r: ResourceIdx) -> u64 {
        let home = self.home[r.0 as usize];
        epoch_round(self.get(r)).max(self.floor(home)) + 1
    }

    /// The highest round known among the resources of home server `h`.
    pub fn floor(&self, h: ServerIdx) -> u64 {
        self.floors.get(h.0 as usize).copied().unwrap_or(0)
    }

    /// What a restarted node read back from its store (not persisted again).
    pub fn restore(&mut self, r: ResourceIdx, epoch: Epoch) {
        self.set(r, epoch);
    }

    pub fn restore_floor(&mut self, h: ServerIdx, round: u64) {
        if let Some(f) = self.floors.get_mut(h.0 as usize) {
            *f = (*f).max(round);
        }
    }

    /// An epoch a peer advertised; persisted if it raised what was known.
    pub fn raise(&mut self, r: ResourceIdx, epoch: Epoch) {
        if self.set(r, epoch) {
            self.dirty.insert(r);
        }
    }

    /// This node's own claim: persisted with the claim itself.
    pub fn claimed(&mut self, r: ResourceIdx, epoch: Epoch) {
        self.set(r, epoch);
    }

    /// A peer knows round `round` among the resources of `h`.
    pub fn raise_floor(&mut self, h: ServerIdx, round: u64) {
        if let Some(f) = self.floors.get_mut(h.0 as usize)
            && round > *f
        {
            *f = round;
            self.dirty_floors.insert(h);
        }
    }

    fn set(&mut self, r: ResourceIdx, epoch: Epoch) -> bool {
        let Some(k) = self.epochs.get_mut(r.0 as usize) else {
            return false;
        };
        if epoch <= *k {
            return false;
        }
        *k = epoch;
        let h = self.home[r.0 as usize].0 as usize;
        self.floors[h] = self.floors[h].max(epoch_round(epoch));
        true
    }

    /// What was raised since last time, as durable records.
    pub fn take_dirty(&mut self) -> Vec<Durable> {
        let mut out: Vec<Durable> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|r| Durable::Known {
                resource: r,
                epoch: self.get(r),
            })
            .collect();
        for h in std::mem::take(&mut self.dirty_floors) {
            out.push(Durable::Floor {
                server: h,
                round: self.floor(h),
            });
        }
        out
    }
}
