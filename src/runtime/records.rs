//! The core's durable records and what a restarted node is given back, by index, and the
//! store's, by id: ids survive a change of the site file; indices do not.

use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::{ClaimRecord, Durable, HoldRecord, PeerRecord, Restored};
use crate::store::{NodeState, Record, StoredHold};

/// What the store kept, by index for this site file (ids it no longer has are dropped).
pub(super) fn restore(site: &Site, state: NodeState) -> Restored {
    let rs = site.resource_map();
    let server = |id: &str| site.server_idx(id);
    Restored {
        claims: state
            .claims
            .iter()
            .filter_map(|c| {
                Some(ClaimRecord {
                    resource: *rs.get(&c.resource)?,
                    epoch: c.epoch,
                    held: c.held,
                })
            })
            .collect(),
        known: state
            .known
            .iter()
            .filter_map(|(id, e)| Some((*rs.get(id)?, *e)))
            .collect(),
        floors: state
            .floors
            .iter()
            .filter_map(|(id, round)| Some((server(id)?, *round)))
            .collect(),
        holds: state
            .holds
            .iter()
            .filter_map(|h| {
                Some(HoldRecord {
                    server: server(&h.server)?,
                    held: h.held,
                    counter: h.counter,
                    origin: h.origin.clone(),
                })
            })
            .collect(),
        peers: state
            .peers
            .iter()
            .filter_map(|(id, incarnation, seq)| {
                Some(PeerRecord {
                    server: server(id)?,
                    incarnation: *incarnation,
                    seq: *seq,
                })
            })
            .collect(),
        failback_done: state.failback_done,
    }
}

/// A durable record of the core, by id for the store.
pub(super) fn record(site: &Site, d: &Durable) -> Record {
    let r = |r: ResourceIdx| site.resource(r).id.clone();
    let s = |s: ServerIdx| site.server(s).id.clone();
    match d {
        Durable::Claim(c) => Record::Claim {
            resource: r(c.resource),
            epoch: c.epoch,
            held: c.held,
        },
        Durable::Known { resource, epoch } => Record::Known {
            resource: r(*resource),
            epoch: *epoch,
        },
        Durable::Floor { server, round } => Record::Floor {
            server: s(*server),
            round: *round,
        },
        Durable::Hold(h) => Record::Hold(StoredHold {
            server: s(h.server),
            held: h.held,
            counter: h.counter,
            origin: h.origin.clone(),
        }),
        Durable::Peer(p) => Record::Peer {
            server: s(p.server),
            incarnation: p.incarnation,
            seq: p.seq,
        },
        Durable::Incarnation(n) => Record::Incarnation(*n),
        Durable::FailbackDone { counter, origin } => Record::FailbackDone {
            counter: *counter,
            origin: origin.clone(),
        },
    }
}
