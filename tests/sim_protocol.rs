//! The buddy protocol in the simulator: each scenario of the failover-core issue, asserted on
//! the ground truth (who actually runs what) and on the events.

use std::time::Duration;

use buddygate::config::{Failback, Kind, Mode};
use buddygate::failover::wire::{self, Action, Heartbeat, PeerState};
use buddygate::failover::{Event, new_epoch};
use buddygate::sim::{Sim, SiteBuilder};

mod simkit;
use simkit::*;

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
        assert!(
            took > MS(800),
            "seed {seed}: took over too early ({took:?})"
        );
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
                } if *n == fo => Some((
                    *server,
                    *new_server,
                    *epoch,
                    resources.len(),
                    failed.len(),
                    *takeover,
                )),
                _ => None,
            })
            .expect("failover.completed");
        assert_eq!(done.0, live);
        assert_eq!(done.1, fo);
        assert_eq!(done.2, TAKEOVER, "epoch after one takeover");
        assert_eq!(done.3, rs.len());
        assert_eq!(done.4, 0);
        assert!(done.5 <= limit, "takeover_ms {:?}", done.5);
        // live-2 untouched.
        let l2 = sim.idx("live-2");
        assert!(all_on(&sim, &homed(&sim, l2), l2));
    }
}

#[test]
fn b_one_path_lost_is_a_path_event_never_a_failover() {
    let mut sim = started(3, two_live_one_buddy());
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, live);
    let t0 = sim.now();
    sim.link(live, fo, 0).cut = true;
    sim.link(fo, live, 0).cut = true;
    sim.run_for(SECS(10));
    assert!(all_on(&sim, &rs, live));
    assert_eq!(event_types(&sim, fo, t0), ["buddygate.path.down"]);
    assert_eq!(event_types(&sim, live, t0), ["buddygate.path.down"]);
    let view = sim.node(fo).unwrap().server_view(live, sim.now());
    assert_eq!(view.state.as_str(), "suspect");
    assert!(!view.paths[0].up && view.paths[1].up);
    let t1 = sim.now();
    sim.heal_all();
    sim.run_for(SECS(2));
    assert_eq!(event_types(&sim, fo, t1), ["buddygate.path.up"]);
    assert_eq!(
        sim.node(fo)
            .unwrap()
            .server_view(live, sim.now())
            .state
            .as_str(),
        "up"
    );
    assert!(all_on(&sim, &rs, live));
}

/// A server that dies is one event, even when its paths time out a few milliseconds apart
/// (its last heartbeats left on them one after the other): no `path.down` just before the
/// `server.down`. A path lost while another still carries heartbeats is still reported, once
/// that other path shows the server alive.
#[test]
fn b_a_dead_server_is_one_event_however_far_apart_its_paths_time_out() {
    let mut sim = started(3, two_live_one_buddy());
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    sim.link(live, fo, 1).delay = MS(5);
    sim.run_for(SECS(2));
    let t0 = sim.now();
    sim.crash(live);
    sim.run_for(SECS(3));
    assert_eq!(event_types(&sim, fo, t0)[0], "buddygate.server.down");
    assert!(
        !event_types(&sim, fo, t0).contains(&"buddygate.path.down"),
        "{:?}",
        event_types(&sim, fo, t0)
    );

    // Back, then one path cut: reported while path 1 is alive.
    sim.start(live);
    sim.run_for(SECS(10));
    let t1 = sim.now();
    sim.link(live, fo, 0).cut = true;
    sim.run_for(SECS(3));
    assert_eq!(event_types(&sim, fo, t1), ["buddygate.path.down"]);
}

/// Found by the fault harness on a real network (tests/faults, soak: a partition right after
/// a flapping path): path 1 is down, comes back, and one heartbeat gets through on it (one good
/// heartbeat: not up yet) while path 0 drops out; then the live server dies. Path 0 times out
/// first and the server is marked down while it was still "heard" (on path 1) within
/// failure_timeout; nothing re-ran placement when that silence reached failure_timeout, so the
/// server was never taken over.
#[test]
fn b_a_server_last_heard_on_a_path_not_up_yet_is_still_taken_over() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(100))
        .many("live-1", Kind::Camera, 4, 0);
    for seed in 1..=20 {
        let mut sim = started(seed, site.clone());
        let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
        let rs = homed(&sim, live);
        sim.link(live, fo, 1).cut = true;
        sim.run_for(SECS(2));
        sim.link(live, fo, 1).cut = false;
        sim.link(live, fo, 0).cut = true;
        sim.run_for(MS(20 + seed * 9));
        sim.crash(live);
        let bound = sim.site().failure_timeout + 2 * sim.site().heartbeat_interval;
        assert!(
            sim.run_until_cond(bound, |sim| all_on(sim, &rs, fo)),
            "seed {seed}: not taken over within {bound:?} of the crash"
        );
    }
}

fn with_witnesses() -> SiteBuilder {
    two_live_one_buddy().witnesses(3)
}

#[test]
fn c_a_buddy_cut_off_from_the_live_server_and_the_witnesses_does_not_take_over() {
    let mut sim = started(4, with_witnesses());
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, live);
    sim.cut(live, fo, true);
    sim.set_witness(fo, 0, false);
    sim.set_witness(fo, 1, false);
    sim.run_for(SECS(10));
    assert!(all_on(&sim, &rs, live), "the cut-off buddy took over");
    assert_eq!(
        count(&sim, fo, Duration::ZERO, "buddygate.failover.started"),
        0
    );
    assert_eq!(count(&sim, fo, Duration::ZERO, "buddygate.server.down"), 1);

    // Control: the same cut while the buddy reaches a majority of witnesses: it takes over,
    // once the silence has lasted failure_timeout with the witnesses in reach.
    sim.set_witness(fo, 1, true);
    let ft = sim.site().failure_timeout;
    assert!(!sim.run_until_cond(ft - MS(50), |sim| {
        rs.iter().any(|&r| sim.owners(r).iter().any(|o| o.0 == fo))
    }));
    assert!(sim.run_until_cond(MS(150), |sim| {
        rs.iter().all(|&r| sim.owners(r).iter().any(|o| o.0 == fo))
    }));
}

/// Found by the fault harness on a real network (tests/faults, scenario `fo-isolated`): a
/// failover server cut off from everything, live servers and witnesses, comes back. Its witness
/// probe may answer a moment before the first heartbeat arrives; the silence it "heard" while
/// it was cut off must not count, or it takes over every live server that never failed.
#[test]
fn c_a_buddy_back_from_isolation_does_not_take_over_on_stale_silence() {
    for seed in 1..=5 {
        let mut sim = started(seed, with_witnesses());
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let t0 = sim.now();
        sim.partition(&[fo], &[l1, l2], true);
        for w in 0..3 {
            sim.set_witness(fo, w, false);
        }
        sim.run_for(SECS(4));
        // The heal: the witnesses answer first, the heartbeats follow within one interval.
        for w in 0..3 {
            sim.set_witness(fo, w, true);
        }
        sim.run_for(MS(150));
        sim.partition(&[fo], &[l1, l2], false);
        sim.run_for(SECS(5));
        for live in [l1, l2] {
            assert!(
                all_on(&sim, &homed(&sim, live), live),
                "seed {seed}: {} lost its resources",
                sim.site().server(live).id
            );
        }
        assert_eq!(
            count(&sim, fo, t0, "buddygate.failover.started"),
            0,
            "seed {seed}"
        );
    }
}

/// Two live servers, each with the other's first buddy as its second.
fn crossed_buddies() -> SiteBuilder {
    SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .live("live-2", &["fo-2", "fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(100))
        .failover("fo-2", Mode::SpreadServers, Some(2), Some(100))
        .many("live-1", Kind::Camera, 4, 0)
        .many("live-2", Kind::Camera, 4, 0)
}

/// Partitions `left | right` (server ids) for 4 s and heals; asserts each live server's
/// resources were taken over by `holder` during the partition, nothing moved in the 2 s after
/// the heal (failback waits longer) and every one is still on its holder.
fn heal_moves_nothing(
    site: SiteBuilder,
    left: [&str; 2],
    right: [&str; 2],
    holder: [(&str, &str); 2],
) {
    heal_moves_nothing_with(site, left, right, holder, Duration::ZERO);
}

/// The same, with the failover servers hearing each other `late` after the heal (ARP, a
/// slower path): each hears the live server on its side stand down before it hears the buddy
/// that holds its cameras.
fn heal_moves_nothing_with(
    site: SiteBuilder,
    left: [&str; 2],
    right: [&str; 2],
    holder: [(&str, &str); 2],
    late: Duration,
) {
    for seed in 1..=5 {
        let mut sim = started(seed, site.clone());
        let ids = |ids: [&str; 2]| ids.map(|id| sim.idx(id));
        sim.partition(&ids(left), &ids(right), true);
        sim.run_for(SECS(4));
        let holder = holder.map(|(live, buddy)| (sim.idx(live), sim.idx(buddy)));
        for (live, buddy) in holder {
            for &r in &homed(&sim, live) {
                assert!(
                    sim.owners(r).iter().any(|o| o.0 == buddy),
                    "seed {seed}: {} not taken over by {}",
                    sim.site().resource(r).id,
                    sim.site().server(buddy).id
                );
            }
        }
        let heal = sim.now();
        sim.heal_all();
        if !late.is_zero() {
            let (f1, f2) = (sim.idx("fo-1"), sim.idx("fo-2"));
            for p in 0..2 {
                sim.link(f1, f2, p).delay = late;
                sim.link(f2, f1, p).delay = late;
            }
        }
        sim.run_for(SECS(2));
        let moves: Vec<String> = sim
            .events()
            .iter()
            .filter(|(t, _, e)| *t >= heal && e.type_name() == "buddygate.failover.started")
            .map(|(t, n, _)| format!("{:?} {}", *t - heal, sim.site().server(*n).id))
            .collect();
        assert!(
            moves.is_empty(),
            "seed {seed}: failovers after the heal: {moves:?}"
        );
        for (live, buddy) in holder {
            assert!(
                all_on(&sim, &homed(&sim, live), buddy),
                "seed {seed}: {} left {} before failback",
                sim.site().server(live).id,
                sim.site().server(buddy).id
            );
        }
    }
}

/// Found by the fault harness on a real network (tests/faults, scenario `partition`): a cross
/// partition {live-1, fo-2} | {live-2, fo-1} heals. live-1 stands down for fo-1's higher
/// epoch; fo-2 must not then claim live-1's cameras because fo-1's paths are still in their
/// up-hysteresis (heard, claims applied, but not yet two good heartbeats): that started a
/// chain of needless moves (fo-1 -> fo-2 -> fo-1 -> live-1) for every camera.
#[test]
fn d_a_healed_cross_partition_moves_nothing_but_the_failback() {
    heal_moves_nothing(
        crossed_buddies().witnesses(1),
        ["live-1", "fo-2"],
        ["live-2", "fo-1"],
        [("live-1", "fo-1"), ("live-2", "fo-2")],
    );
}

/// Found by the fault lab (`partition`, about one run in eight): the same heal, but fo-1 and
/// fo-2 hear each other 150 ms after live-1 and live-2 hear them. fo-2 saw live-1 stand down
/// (for fo-1, which it had not heard yet) and took live-1's cameras at 397: a needless move.
#[test]
fn d_a_healed_cross_partition_heard_late_between_buddies_moves_nothing() {
    heal_moves_nothing_with(
        crossed_buddies(),
        ["live-1", "fo-2"],
        ["live-2", "fo-1"],
        [("live-1", "fo-1"), ("live-2", "fo-2")],
        MS(150),
    );
}

/// Sticky placement (docs/protocol.md): each live server's first buddy is on its own side, so
/// its second buddy, across the partition, takes it over. After the heal every camera stays
/// with the buddy holding it until failback; before, each moved to its first buddy (two moves).
#[test]
fn d_a_healed_crossed_takeover_stays_put_until_failback() {
    heal_moves_nothing(
        crossed_buddies(),
        ["live-1", "fo-1"],
        ["live-2", "fo-2"],
        [("live-1", "fo-2"), ("live-2", "fo-1")],
    );
}

/// Sticky placement: the first buddy dies after taking over, the second takes over, and the
/// first one's return moves nothing.
#[test]
fn a_first_buddy_back_from_a_crash_leaves_the_second_buddy_serving() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 10, 0);
    let mut sim = started(3, site);
    let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
    let rs = homed(&sim, l1);
    sim.crash(l1);
    assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, f1)));
    sim.crash(f1);
    assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, f2)));
    let back = sim.now();
    sim.restart(f1);
    sim.run_for(SECS(10));
    assert_eq!(count(&sim, f1, back, "buddygate.failover.started"), 0);
    assert!(all_on(&sim, &rs, f2), "the cameras stayed on fo-2");
}

#[test]
fn d_a_healed_partition_leaves_one_owner_per_resource_within_two_intervals() {
    for seed in 1..=10 {
        let mut sim = started(seed, two_live_one_buddy());
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        sim.partition(&[l1], &[fo, l2], true);
        sim.run_for(SECS(5));
        // Availability first: both sides record.
        for &r in &rs {
            let owners = sim.owners(r);
            assert_eq!(owners, vec![(l1, HOME), (fo, TAKEOVER)], "seed {seed}");
        }
        let heal = sim.now();
        sim.heal_all();
        let hb = sim.site().heartbeat_interval;
        sim.run_for(2 * hb + MS(20));
        for &r in &rs {
            assert_eq!(
                sim.owners(r),
                vec![(fo, TAKEOVER)],
                "seed {seed}: higher epoch wins"
            );
        }
        for g in sim.gaps().iter().filter(|g| g.owners > 1) {
            let end = g.to.expect("dual ownership ended");
            assert!(
                end <= heal + 2 * hb + MS(20),
                "seed {seed}: dual owner until {end:?}"
            );
        }
        assert!(count(&sim, l1, heal, "buddygate.ownership.conflict") >= 1);
        assert_eq!(
            count(&sim, l1, heal, "buddygate.ownership.resolved"),
            count(&sim, l1, heal, "buddygate.ownership.conflict")
        );
        // And the resolution left nobody without an owner.
        assert!(no_orphan_after(&sim, &rs, heal), "seed {seed}");
    }
}

/// Found by the fault lab (scenario `partition`, a slow disk): a live server cut off from its
/// buddy longer than failback_delay, still recording, stands down for the buddy's higher epoch
/// at the heal and must then wait failback_delay from the heal, not from the path going down
/// before it (it reclaimed 150 ms after standing down).
#[test]
fn e_a_live_server_that_stood_down_at_a_heal_waits_failback_delay() {
    for seed in 1..=5 {
        let mut sim = started(seed, two_live_one_buddy().failback(Failback::Auto, SECS(3)));
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        sim.partition(&[l1], &[fo, l2], true);
        sim.run_for(SECS(8));
        let heal = sim.now();
        sim.heal_all();
        assert!(
            sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)),
            "seed {seed}: live-1 stood down"
        );
        sim.run_for(heal + SECS(3) - MS(100) - sim.now());
        assert!(
            all_on(&sim, &rs, fo),
            "seed {seed}: live-1 reclaimed {:?} after the heal, before failback_delay",
            sim.now() - heal
        );
        assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, l1)));
    }
}

#[test]
fn e_auto_failback_waits_failback_delay_and_is_make_before_break() {
    let mut sim = started(5, two_live_one_buddy().failback(Failback::Auto, SECS(10)));
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, live);
    sim.crash(live);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
    let taken = sim.now();
    sim.run_for(SECS(3));
    sim.restart(live);
    let back = sim.now();
    // f: the restarted live server does not reclaim before failback.
    sim.run_for(SECS(9));
    assert!(all_on(&sim, &rs, fo), "reclaimed before failback_delay");
    assert!(sim.node(live).unwrap().held().next().is_none());
    assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, live)));
    let done = sim.now() - back;
    assert!(
        done >= SECS(10) && done < SECS(12),
        "failback after {done:?}"
    );
    for &r in &rs {
        assert_eq!(sim.owners(r), vec![(live, new_epoch(3, 0))]);
    }
    assert!(
        no_orphan_after(&sim, &rs, taken),
        "an instant with zero owners"
    );
    assert_eq!(count(&sim, live, back, "buddygate.failback.completed"), 1);
    assert_eq!(count(&sim, fo, back, "buddygate.ownership.conflict"), 0);
}

#[test]
fn e_manual_failback_waits_for_the_operator_and_travels_through_heartbeats() {
    let mut sim = started(6, two_live_one_buddy().failback(Failback::Manual, SECS(1)));
    let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.crash(l1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
    let taken = sim.now();
    sim.restart(l1);
    sim.run_for(SECS(20));
    assert!(all_on(&sim, &rs, fo), "manual failback happened by itself");
    // Sent to live-2, which does not serve live-1: it reaches live-1 through fo-1.
    sim.command(l2, Action::Failback, l1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, l1)));
    assert!(no_orphan_after(&sim, &rs, taken));
}

#[test]
fn manual_failover_moves_a_healthy_server_and_holds_until_failback() {
    let mut sim = started(7, two_live_one_buddy().failback(Failback::Auto, SECS(2)));
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    let t0 = sim.now();
    sim.command(fo, Action::Failover, l1);
    assert!(sim.run_until_cond(MS(500), |sim| all_on(sim, &rs, fo)));
    assert!(no_orphan_after(&sim, &rs, t0));
    assert_eq!(count(&sim, fo, t0, "buddygate.ownership.conflict"), 0);
    assert_eq!(count(&sim, l1, t0, "buddygate.ownership.conflict"), 0);
    sim.run_for(SECS(10));
    assert!(
        all_on(&sim, &rs, fo),
        "auto failback undid a manual failover"
    );
    sim.command(l1, Action::Failback, l1);
    assert!(sim.run_until_cond(SECS(1), |sim| all_on(sim, &rs, l1)));
    assert!(no_orphan_after(&sim, &rs, t0));
}

#[test]
fn f_a_live_server_restarted_with_an_empty_data_dir_does_not_reclaim() {
    let mut sim = started(8, two_live_one_buddy().failback(Failback::Auto, SECS(10)));
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, live);
    sim.crash(live);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
    sim.restart_empty(live);
    sim.run_for(SECS(5));
    assert!(all_on(&sim, &rs, fo));
    assert!(sim.gaps().iter().all(|g| g.owners < 2));
    sim.run_for(SECS(7));
    assert!(all_on(&sim, &rs, live), "failback after the delay");
}

#[test]
fn leaving_and_unhealthy_take_the_fast_path() {
    let mut sim = started(9, two_live_one_buddy());
    let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    let t0 = sim.now();
    sim.shutdown(l1, SECS(2));
    assert!(all_on(&sim, &rs, fo));
    let took = sim.now() - t0;
    assert!(took < MS(100), "clean shutdown handed over in {took:?}");
    assert!(no_orphan_after(&sim, &rs, t0), "a gap during the hand-over");
    assert_eq!(
        count(&sim, fo, t0, "buddygate.ownership.conflict"),
        0,
        "a clean hand-over is not a conflict"
    );

    // unhealthy: one camera's monitor fails on live-2; only that camera moves, at once.
    let cam = homed(&sim, l2)[3];
    let t1 = sim.now();
    sim.fail_monitor(l2, cam);
    assert!(sim.run_until_cond(MS(100), |sim| sim.owners(cam) == vec![(fo, TAKEOVER)]));
    assert!(sim.now() - t1 < MS(100));
    let others: Vec<_> = homed(&sim, l2).into_iter().filter(|&r| r != cam).collect();
    assert!(all_on(&sim, &others, l2));
    assert_eq!(
        sim.node(fo)
            .unwrap()
            .server_view(l2, sim.now())
            .state
            .as_str(),
        "unhealthy"
    );
    assert_eq!(count(&sim, l2, t1, "buddygate.resource.failed"), 1);
}

#[test]
fn g_short_capacity_puts_the_highest_priorities_on_the_first_buddy() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .live("live-2", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(15))
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 10, 1)
        .many("live-2", Kind::Camera, 10, 7)
        .resource("live-1-lpr", Kind::Lpr, "live-1", 9)
        .resource("live-1-cam-vip", Kind::Camera, "live-1", 9);
    for seed in 1..=10 {
        let mut sim = started(seed, site_clone(&site));
        let (l1, l2, f1, f2) = (
            sim.idx("live-1"),
            sim.idx("live-2"),
            sim.idx("fo-1"),
            sim.idx("fo-2"),
        );
        sim.crash(l1);
        sim.crash(l2);
        sim.run_for(SECS(3));
        let on = |s| {
            let mut v: Vec<String> = sim
                .running_on(s)
                .iter()
                .map(|&r| sim.site().resource(r).id.clone())
                .collect();
            v.sort();
            v
        };
        let fo1 = on(f1);
        let fo2 = on(f2);
        // fo-1: the VIP camera (9), the LPR (not a camera), the 10 cameras of live-2 (7),
        // and 4 of live-1's priority-1 cameras (ties by site order): 15 cameras in all.
        let mut expect1: Vec<String> = vec!["live-1-cam-vip".into(), "live-1-lpr".into()];
        expect1.extend((1..=10).map(|n| format!("live-2-camera-{n:03}")));
        expect1.extend((1..=4).map(|n| format!("live-1-camera-{n:03}")));
        expect1.sort();
        assert_eq!(fo1, expect1, "seed {seed}");
        let mut expect2: Vec<String> = (5..=10).map(|n| format!("live-1-camera-{n:03}")).collect();
        expect2.sort();
        assert_eq!(fo2, expect2, "seed {seed}");
    }
}

fn site_clone(b: &SiteBuilder) -> SiteBuilder {
    b.clone()
}

#[test]
fn a_buddy_crashing_mid_takeover_leaves_it_to_the_next_buddy() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 20, 0);
    let mut sim = started(11, site);
    let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
    let rs = homed(&sim, l1);
    sim.crash(l1);
    assert!(sim.run_until_cond(SECS(2), |sim| {
        sim.events()
            .iter()
            .any(|(_, n, e)| *n == f1 && e.type_name() == "buddygate.failover.started")
    }));
    sim.crash(f1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, f2)));
    for &r in &rs {
        assert_eq!(
            sim.owners(r)[0].1,
            new_epoch(3, 2),
            "fo-2 claims above fo-1's epoch"
        );
    }
}

fn forged(
    sim: &Sim,
    key: &wire::Key,
    from: &str,
    incarnation: u64,
    seq: u64,
    state: PeerState,
) -> Vec<u8> {
    let digest = sim.site().digest();
    wire::encode(
        key,
        &Heartbeat {
            from: from.into(),
            incarnation,
            seq,
            path: 0,
            state,
            digest,
            ..Heartbeat::default()
        },
    )
}

#[test]
fn h_forged_and_replayed_heartbeats_are_rejected() {
    let mut sim = started(12, two_live_one_buddy());
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    // A forged "leaving" from live-1 would trigger a takeover if it were believed.
    let bad_key = wire::Key::new(b"not the site key");
    let forged_leaving = forged(
        &sim,
        &bad_key,
        "live-1",
        u64::MAX,
        u64::MAX,
        PeerState::Leaving,
    );
    sim.inject(fo, 0, forged_leaving);
    // A replay: correctly signed, but an incarnation and sequence already seen.
    let key = sim.key().clone();
    let replay = forged(&sim, &key, "live-1", 1, 1, PeerState::Leaving);
    sim.inject(fo, 0, replay);
    // Noise.
    sim.inject(fo, 1, vec![0u8; 40]);
    sim.inject(
        fo,
        1,
        b"BG\x03 garbage garbage garbage garbage garbage".to_vec(),
    );
    sim.run_for(SECS(3));
    assert!(
        all_on(&sim, &rs, l1),
        "a forged or replayed heartbeat moved resources"
    );
    let stats = sim.node(fo).unwrap().stats().clone();
    assert_eq!(stats.rejected.get("hmac"), Some(&2));
    assert_eq!(stats.rejected.get("replay"), Some(&1));
    assert_eq!(stats.rejected.get("magic"), Some(&1));
    // Forged heartbeats do not keep a dead server alive either.
    sim.crash(l1);
    for i in 0..20u64 {
        let f = forged(&sim, &bad_key, "live-1", 99, 1000 + i, PeerState::Up);
        sim.inject(fo, 0, f);
        sim.run_for(MS(100));
    }
    assert!(all_on(&sim, &rs, fo));
}

/// A mirrored live server with 2,000 cameras and two buddies: claims take several datagrams.
fn big_mirrored() -> SiteBuilder {
    SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .failover("fo-2", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, 2000, 0)
}

#[test]
fn heartbeats_fit_one_unfragmented_datagram_and_pages_carry_every_claim() {
    use buddygate::failover::node::heartbeat::DATAGRAM_BUDGET;
    for different_file in [false, true] {
        let mut sim = started(13, big_mirrored());
        let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
        if different_file {
            // fo-2 runs another site file: claims travel by id, in more pages.
            let other = big_mirrored().failback(Failback::Manual, SECS(30)).build();
            sim.set_site(f2, other);
            sim.kill_daemon(f2);
            sim.start(f2);
            sim.run_for(SECS(3));
        }
        let rs = homed(&sim, l1);
        sim.crash(l1);
        assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, f1)));
        sim.run_for(SECS(2));
        // fo-2 knows fo-1 holds every camera: it took none, and its view says so.
        assert!(sim.running_on(f2).is_empty());
        let node = sim.node(f2).unwrap();
        let now = sim.now();
        assert!(
            rs.iter()
                .all(|&r| node.resource_view(r, now).owner == Some(f1))
        );
        assert!(
            sim.max_datagram <= DATAGRAM_BUDGET,
            "a {} byte datagram",
            sim.max_datagram
        );
        assert!(sim.node(f1).unwrap().stats().paged_rounds > 0);
        assert_eq!(node.stats().unreadable, 0);
    }
}

/// A failover node stalled (VM pause, SIGSTOP, CPU starvation) for twice the failure timeout
/// resumes with every heartbeat it missed queued: it reads them all, listens afresh, and takes
/// over nothing from servers that kept heartbeating.
#[test]
fn a_stalled_buddy_takes_nothing_over_from_servers_that_kept_heartbeating() {
    for seed in 1..=5 {
        let mut sim = started(seed, two_live_one_buddy());
        let fo = sim.idx("fo-1");
        let t = sim.now();
        sim.pause(fo);
        sim.run_for(2 * sim.site().failure_timeout);
        sim.resume(fo);
        sim.run_for(SECS(3));
        assert_eq!(
            count(&sim, fo, t, "buddygate.failover.started"),
            0,
            "seed {seed}"
        );
        assert_eq!(
            count(&sim, fo, t, "buddygate.server.down"),
            0,
            "seed {seed}"
        );
        assert!(sim.running_on(fo).is_empty());
        assert_eq!(sim.node(fo).unwrap().stats().stalls, 1);
    }
}

/// Found by the random fault run (seed 177): a one-way cut from live-1 to its first buddy fo-2
/// (fo-2 cannot hear it; fo-1, the other buddy, can). fo-2 took live-1's cameras over, live-1
/// stood down, failed back after failback_delay, and fo-2 renewed above it: the cameras moved
/// every few seconds. A server that a peer still hears is not down.
#[test]
fn a_buddy_that_cannot_hear_a_live_server_its_co_buddy_hears_takes_nothing() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-2", "fo-1"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 6, 0)
        .failback(Failback::Auto, SECS(3));
    for seed in 1..=5 {
        let mut sim = started(seed, site.clone());
        let (l1, f2) = (sim.idx("live-1"), sim.idx("fo-2"));
        let rs = homed(&sim, l1);
        let t = sim.now();
        sim.cut_one_way(l1, f2, true);
        sim.run_for(SECS(10));
        assert!(all_on(&sim, &rs, l1), "seed {seed}");
        assert_eq!(
            count_all(&sim, t, "buddygate.failover.started"),
            0,
            "seed {seed}"
        );
        // And when live-1 really dies, fo-2 takes over once fo-1 stops hearing it too.
        sim.crash(l1);
        let limit = sim.site().failure_timeout + sim.site().heartbeat_interval;
        assert!(
            sim.run_until_cond(limit, |sim| all_on(sim, &rs, f2)),
            "seed {seed}"
        );
    }
}

/// Hot standby: the first buddy that is up prepares a standby camera while its home server
/// runs it; the next buddy does when the first goes; a takeover's start covers from the home
/// server's last heartbeat, less an interval; the standby ends when the buddy takes it over.
#[test]
fn hot_standby_is_prepared_by_the_first_buddy_up_and_the_takeover_covers_from_the_last_heartbeat() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 4, 0)
        .standby(&["live-1-camera-001", "live-1-camera-002"]);
    let mut sim = started(3, site);
    let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
    let (c1, c2) = (sim.ridx("live-1-camera-001"), sim.ridx("live-1-camera-002"));
    assert_eq!(sim.standby_on(f1), vec![c1, c2]);
    assert!(sim.standby_on(f2).is_empty());
    sim.crash(f1);
    sim.run_for(SECS(2));
    assert_eq!(
        sim.standby_on(f2),
        vec![c1, c2],
        "the next buddy prepares them"
    );
    sim.start(f1);
    sim.run_for(SECS(4));
    assert_eq!(sim.standby_on(f1), vec![c1, c2]);
    assert!(sim.standby_on(f2).is_empty(), "released when fo-1 is back");
    let t = sim.now();
    sim.crash(l1);
    let rs = homed(&sim, l1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, f1)));
    assert!(
        sim.standby_on(f1).is_empty(),
        "the start superseded the standby"
    );
    let down_since = down_since(&sim, f1, t).expect("server.down");
    assert!(down_since <= t);
    let margin = sim.site().heartbeat_interval;
    for &r in &rs {
        assert_eq!(sim.cover_from(f1, r), Some(down_since - margin));
    }
}

/// Warm standby: nothing is prepared while the home server is heard; once it is silent on
/// every path for 1.5 heartbeat intervals, its first buddy prepares the warm cameras (well
/// before the failure timeout), releases them when it has been heard for 10 failure timeouts
/// since, and a takeover after a real failure supersedes the standby and covers from the home
/// server's last heartbeat, less an interval.
#[test]
fn warm_standby_is_prepared_when_the_home_server_misses_heartbeats_and_released_when_it_is_heard() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 4, 0)
        .warm_standby(&["live-1-camera-001", "live-1-camera-002"]);
    let mut sim = started(5, site);
    let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
    let (c1, c2) = (sim.ridx("live-1-camera-001"), sim.ridx("live-1-camera-002"));
    sim.run_for(SECS(5));
    assert!(
        sim.standby_on(f1).is_empty(),
        "nothing while live-1 is heard"
    );
    assert!(sim.standby_on(f2).is_empty());

    // live-1 stalls for 3 intervals: fo-1 prepares, nobody takes over.
    let hb = sim.site().heartbeat_interval;
    let ft = sim.site().failure_timeout;
    sim.pause(l1);
    assert!(
        sim.run_until_cond(hb * 2, |sim| sim.standby_on(f1) == vec![c1, c2]),
        "fo-1 prepares within 2 intervals of silence"
    );
    assert!(sim.standby_on(f2).is_empty(), "only the first buddy");
    sim.run_for(hb);
    sim.resume(l1);
    sim.run_for(ft * 5);
    assert_eq!(sim.standby_on(f1), vec![c1, c2], "kept for a while");
    let rs = homed(&sim, l1);
    assert!(
        all_on(&sim, &rs, l1),
        "a stall shorter than the failure timeout moves nothing"
    );
    assert!(
        sim.run_until_cond(ft * 6, |sim| sim.standby_on(f1).is_empty()),
        "released after 10 failure timeouts of steady heartbeats"
    );

    // A real failure: prepared before the failure timeout, superseded by the start.
    let t = sim.now();
    sim.crash(l1);
    assert!(sim.run_until_cond(ft - hb, |sim| sim.standby_on(f1) == vec![c1, c2]));
    assert!(
        rs.iter().all(|&r| sim.cover_from(f1, r).is_none()),
        "prepared before any takeover"
    );
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, f1)));
    assert!(sim.standby_on(f1).is_empty(), "the start superseded it");
    let down_since = down_since(&sim, f1, t).expect("server.down");
    for &r in &rs {
        assert_eq!(sim.cover_from(f1, r), Some(down_since - hb));
    }
}

/// A buddy back from a stall of its own listens before it judges anything: the silence of a
/// warm standby's home server then asks for no wake-up that has already passed (a driver
/// would spin on it).
#[test]
fn a_buddy_back_from_a_stall_asks_for_no_past_wake_up_while_it_listens() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, 2, 0)
        .warm_standby(&["live-1-camera-001"]);
    let mut sim = started(6, site);
    let (l1, f1) = (sim.idx("live-1"), sim.idx("fo-1"));
    sim.pause(f1);
    sim.crash(l1);
    sim.run_for(SECS(3));
    sim.resume(f1);
    for _ in 0..20 {
        sim.run_for(MS(1));
        let node = sim.node(f1).expect("fo-1 runs");
        assert!(
            node.next_deadline() > sim.now(),
            "fo-1 asks to be woken at {:?}, now is {:?}",
            node.next_deadline(),
            sim.now()
        );
    }
}

/// A live server whose disk fills up cannot make a claim durable: it says it is leaving, its
/// buddy takes over at once, and it takes its resources back after failback_delay once its
/// disk works again.
#[test]
fn a_full_disk_hands_over_at_once_and_comes_back_by_itself() {
    let mut sim = started(4, two_live_one_buddy().failback(Failback::Auto, SECS(3)));
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    let t = sim.now();
    sim.set_storage(l1, false);
    assert!(sim.run_until_cond(MS(100), |sim| all_on(sim, &rs, fo)));
    assert!(no_orphan_after(&sim, &rs, t));
    sim.run_for(SECS(5));
    assert!(all_on(&sim, &rs, fo), "no claim while the disk is full");
    sim.set_storage(l1, true);
    assert!(sim.run_until_cond(SECS(5), |sim| all_on(sim, &rs, l1)));
    assert_eq!(count_all(&sim, t, "buddygate.ownership.conflict"), 0);
}

/// A network that loses heartbeats (the fault lab's profile: 37 % loss and 100 ms of jitter on
/// one path, 10 % on the other) for 10 minutes: warm standby prepares and releases as the home
/// server's heartbeats come and go, and never moves anything. How much of the time it is
/// prepared is printed (`--nocapture`): what such a network costs in streams.
#[test]
fn warm_standby_on_a_lossy_network_prepares_but_never_moves_anything() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .failover("fo-1", Mode::Mirrored, None, None)
        .many("live-1", Kind::Camera, 2, 0)
        .warm_standby(&["live-1-camera-001", "live-1-camera-002"]);
    let mut sim = started(7, site);
    let (l1, f1) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.set_path(0, |l| {
        l.loss = 0.37;
        l.jitter = MS(100);
    });
    sim.set_path(1, |l| l.loss = 0.10);
    let (mut prepared, mut preparations, mut was) = (Duration::ZERO, 0u32, false);
    let step = MS(10);
    let total = SECS(600);
    let until = sim.now() + total;
    while sim.now() < until {
        sim.run_for(step);
        let now = !sim.standby_on(f1).is_empty();
        if now {
            prepared += step;
        }
        if now && !was {
            preparations += 1;
        }
        was = now;
        assert!(all_on(&sim, &rs, l1), "moved at {:?}", sim.now());
    }
    println!(
        "lossy network, 10 min: warm standby prepared {:.1} % of the time, {preparations} times",
        100.0 * prepared.as_secs_f64() / total.as_secs_f64()
    );
}
