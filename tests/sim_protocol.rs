//! The buddy protocol in the simulator: each scenario of the failover-core issue, asserted on
//! the ground truth (who actually runs what) and on the events.

use std::time::Duration;

use buddygate::config::{Failback, Kind, Mode, ResourceIdx, ServerIdx};
use buddygate::failover::wire::{self, Action, Heartbeat, PeerState};
use buddygate::failover::{Event, ResourceState};
use buddygate::sim::{Sim, SimOptions, SiteBuilder};

const MS: fn(u64) -> Duration = Duration::from_millis;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn two_live_one_buddy() -> SiteBuilder {
    SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(100))
        .many("live-1", Kind::Camera, 25, 0)
        .resource("live-1-io", Kind::Io, "live-1", 0)
        .resource("live-1-lpr", Kind::Lpr, "live-1", 5)
        .many("live-2", Kind::Camera, 25, 0)
}

fn homed(sim: &Sim, s: ServerIdx) -> Vec<ResourceIdx> {
    sim.topology().homed(s).to_vec()
}

fn all_on(sim: &Sim, rs: &[ResourceIdx], s: ServerIdx) -> bool {
    rs.iter().all(|&r| sim.owners(r).iter().map(|o| o.0).collect::<Vec<_>>() == vec![s])
}

fn started(seed: u64, site: SiteBuilder) -> Sim {
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
            assert_eq!(sim.owners(r), vec![(s, 1)], "{} at boot", sim.site().resource(r).id);
        }
    }
    sim
}

fn event_types(sim: &Sim, node: ServerIdx, after: Duration) -> Vec<&'static str> {
    sim.events()
        .iter()
        .filter(|(t, n, _)| *n == node && *t >= after)
        .map(|(_, _, e)| e.type_name())
        .collect()
}

#[test]
fn a_crash_moves_every_resource_within_failure_timeout_plus_one_interval() {
    for seed in 1..=20 {
        let mut sim = started(seed, two_live_one_buddy());
        let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
        let rs = homed(&sim, live);
        let t0 = sim.now();
        sim.crash(live);
        let limit = sim.site().failure_timeout + sim.site().heartbeat_interval;
        assert!(
            sim.run_until_cond(limit, |sim| all_on(sim, &rs, fo)),
            "seed {seed}: not everything on fo-1 within {limit:?}"
        );
        let took = sim.now() - t0;
        assert!(took > MS(800), "seed {seed}: took over too early ({took:?})");
        sim.run_for(SECS(1));
        let types = event_types(&sim, fo, t0);
        assert_eq!(
            types,
            [
                "buddygate.server.down",
                "buddygate.failover.started",
                "buddygate.failover.completed"
            ],
            "seed {seed}"
        );
        let done = sim
            .events()
            .iter()
            .find_map(|(_, n, e)| match e {
                Event::FailoverCompleted {
                    server,
                    new_server,
                    epoch,
                    resources,
                    failed,
                    takeover,
                    ..
                } if *n == fo => Some((*server, *new_server, *epoch, resources.len(), failed.len(), *takeover)),
                _ => None,
            })
            .expect("failover.completed");
        assert_eq!(done.0, live);
        assert_eq!(done.1, fo);
        assert_eq!(done.2, 2, "epoch after one takeover");
        assert_eq!(done.3, rs.len());
        assert_eq!(done.4, 0);
        assert!(done.5 <= limit, "takeover_ms {:?}", done.5);
        // live-2 untouched.
        let l2 = sim.idx("live-2");
        assert!(all_on(&sim, &homed(&sim, l2), l2));
    }
}
