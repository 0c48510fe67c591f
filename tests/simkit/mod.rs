//! What the simulator tests share: starting a site, reading the ground truth and the events.

#![allow(dead_code)]

use std::time::Duration;

use buddygate::config::{ResourceIdx, ServerIdx};
use buddygate::failover::Event;
use buddygate::sim::{Sim, SimOptions, SiteBuilder};

pub const MS: fn(u64) -> Duration = Duration::from_millis;
pub const SECS: fn(u64) -> Duration = Duration::from_secs;
/// A home server's first claim: round 1, rank 0.
pub const HOME: u64 = 199;
/// The first buddy's takeover: round 2, rank 1.
pub const TAKEOVER: u64 = 298;

pub fn homed(sim: &Sim, s: ServerIdx) -> Vec<ResourceIdx> {
    sim.topology().homed(s).to_vec()
}

/// Every resource of `rs` runs on `s` and nowhere else.
pub fn all_on(sim: &Sim, rs: &[ResourceIdx], s: ServerIdx) -> bool {
    rs.iter()
        .all(|&r| sim.owners(r).iter().map(|o| o.0).collect::<Vec<_>>() == vec![s])
}

/// A site booted for 5 s, every resource on its home server at epoch 199.
pub fn started(seed: u64, site: SiteBuilder) -> Sim {
    let mut sim = Sim::new(
        site.build(),
        SimOptions {
            seed,
            ..SimOptions::default()
        },
    );
    sim.run_for(SECS(5));
    for s in sim.site().server_indices() {
        for &r in sim.topology().homed(s) {
            assert_eq!(
                sim.owners(r),
                vec![(s, HOME)],
                "{} at boot",
                sim.site().resource(r).id
            );
        }
    }
    sim
}

/// `down_since` of the first `server.down` `node` raised after `after`.
pub fn down_since(sim: &Sim, node: ServerIdx, after: Duration) -> Option<Duration> {
    sim.events().iter().find_map(|(at, n, e)| match e {
        Event::ServerDown { down_since, .. } if *n == node && *at > after => Some(*down_since),
        _ => None,
    })
}

pub fn event_types(sim: &Sim, node: ServerIdx, after: Duration) -> Vec<&'static str> {
    sim.events()
        .iter()
        .filter(|(t, n, _)| *n == node && *t >= after)
        .map(|(_, _, e)| e.type_name())
        .collect()
}

pub fn count(sim: &Sim, node: ServerIdx, after: Duration, ty: &str) -> usize {
    event_types(sim, node, after)
        .into_iter()
        .filter(|t| *t == ty)
        .count()
}

/// Events of type `ty` from any node since `after`.
pub fn count_all(sim: &Sim, after: Duration, ty: &str) -> usize {
    sim.events()
        .iter()
        .filter(|(t, _, e)| *t >= after && e.type_name() == ty)
        .count()
}

/// No instant after `after` at which some resource of `rs` had no owner.
pub fn no_orphan_after(sim: &Sim, rs: &[ResourceIdx], after: Duration) -> bool {
    sim.gaps()
        .iter()
        .filter(|g| rs.contains(&g.resource) && g.owners == 0)
        .all(|g| g.to.is_some_and(|t| t <= after))
}

/// Whether each of `rs` has one owner and consumers that keep the newest epoch were told
/// exactly that owner at its epoch (or at a lower epoch, for an owner nobody announced).
pub fn consumers_agree(sim: &Sim, rs: &[ResourceIdx]) -> Result<(), String> {
    for &r in rs {
        let owners = sim.owners(r);
        let [(owner, epoch)] = owners[..] else {
            return Err(format!(
                "{} has owners {owners:?}",
                sim.site().resource(r).id
            ));
        };
        if let Some(told) = sim.told(r)
            && (told.epoch > epoch || (told.epoch == epoch && told.owner != owner))
        {
            return Err(format!(
                "{} runs on {} at {epoch}, consumers were told {} at {}",
                sim.site().resource(r).id,
                sim.site().server(owner).id,
                sim.site().server(told.owner).id,
                told.epoch
            ));
        }
    }
    Ok(())
}

/// The epochs `rs` run at now (their sole owner's).
pub fn epochs(sim: &Sim, rs: &[ResourceIdx]) -> Vec<u64> {
    rs.iter()
        .map(|&r| sim.owners(r).first().map_or(0, |o| o.1))
        .collect()
}

/// Every `resource.unplaced` event since `after`: (reporter, resources).
pub fn unplaced_events(sim: &Sim, after: Duration) -> Vec<(ServerIdx, Vec<ResourceIdx>)> {
    sim.events()
        .iter()
        .filter(|(t, _, _)| *t >= after)
        .filter_map(|(_, n, e)| match e {
            Event::ResourceUnplaced { resources, .. } => {
                Some((*n, resources.iter().map(|(r, _)| *r).collect()))
            }
            _ => None,
        })
        .collect()
}
