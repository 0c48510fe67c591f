//! The life of a site in the simulator: restarts, power cuts, wiped disks, maintenance after a
//! manual failover, failing stops, capacity, replays, differing site files and overflow at
//! scale. One regression test per case of the lifecycle issue, each named after it; each
//! broke a rule of DESIGN section 3 before the fix.

use buddygate::config::{Failback, Kind, Mode, ServerIdx};
use buddygate::failover::wire::{self, Action, Heartbeat, PeerState};
use buddygate::failover::{Event, new_epoch};
use buddygate::sim::{Sim, SiteBuilder};

mod simkit;
use simkit::*;

fn one_live_one_buddy() -> SiteBuilder {
    SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), None)
        .many("live-1", Kind::Camera, 6, 0)
        .many("live-2", Kind::Camera, 6, 0)
        .failback(Failback::Auto, SECS(3))
}

/// live-1 fails over to fo-1 (298), then fails back (399).
fn after_failover_and_failback(seed: u64, site: SiteBuilder) -> Sim {
    let mut sim = started(seed, site);
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.crash(l1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
    sim.start(l1);
    assert!(sim.run_until_cond(SECS(8), |sim| all_on(sim, &rs, l1)));
    assert_eq!(epochs(&sim, &rs), vec![new_epoch(3, 0); rs.len()]);
    sim.run_for(SECS(1));
    sim
}

#[test]
fn case_1_a_power_cut_after_a_failback_and_only_the_buddy_back_claims_above_it() {
    for seed in 1..=5 {
        let mut sim = after_failover_and_failback(seed, one_live_one_buddy());
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        for s in [l1, l2, fo] {
            sim.crash(s);
        }
        sim.start(fo);
        assert!(
            sim.run_until_cond(SECS(5), |sim| all_on(sim, &rs, fo)),
            "seed {seed}"
        );
        // Before the fix: 398, below live-1's 399 that every consumer was told.
        for e in epochs(&sim, &rs) {
            assert!(e > new_epoch(3, 0), "seed {seed}: fo-1 took over at {e}");
        }
        sim.run_for(SECS(1));
        consumers_agree(&sim, &rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(sim.stale_claims().is_empty(), "{:?}", sim.stale_claims());
    }
}

#[test]
fn case_1_a_live_server_with_a_wiped_data_dir_claims_above_its_old_epoch() {
    for seed in 1..=5 {
        let mut sim = after_failover_and_failback(seed, one_live_one_buddy());
        let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        sim.restart_empty(l1);
        assert!(sim.run_until_cond(SECS(5), |sim| all_on(sim, &rs, l1)
            && epochs(sim, &rs).iter().all(|&e| e > new_epoch(3, 0))));
        // Before the fix: 199, then the buddy's next takeover at 398.
        sim.crash(l1);
        assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, fo)));
        for e in epochs(&sim, &rs) {
            assert!(e > new_epoch(4, 0), "seed {seed}: takeover at {e}");
        }
        sim.run_for(SECS(1));
        consumers_agree(&sim, &rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn case_1_a_site_wide_power_cut_after_a_takeover_ends_on_the_owner_consumers_were_told() {
    for seed in 1..=10 {
        let mut sim = started(seed, one_live_one_buddy());
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        sim.crash(l1);
        assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
        for s in [l1, l2, fo] {
            sim.crash(s);
        }
        // Back in random order, within the start-up wait of each other.
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut order = [l1, l2, fo];
        rng.shuffle(&mut order);
        for s in order {
            sim.run_for(MS(rng.u64(0..1500)));
            sim.start(s);
        }
        sim.run_for(SECS(3));
        let all: Vec<_> = sim.site().resource_indices().collect();
        consumers_agree(&sim, &all).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            count_all(&sim, SECS(0), "buddygate.ownership.conflict"),
            0,
            "seed {seed}: the home server did not wait (rule 6)"
        );
        // Then failback, above the takeover's epoch.
        assert!(sim.run_until_cond(SECS(6), |sim| all_on(sim, &rs, l1)));
        for e in epochs(&sim, &rs) {
            assert!(e > TAKEOVER, "seed {seed}: failback at {e}");
        }
    }
}

#[test]
fn case_2_a_failure_long_ago_does_not_bar_a_buddy_for_good() {
    let mut sim = started(3, one_live_one_buddy());
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.crash(l1);
    assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)));
    // One monitor failure on fo-1: no other buddy, so the camera is unplaced for a while.
    sim.fail_monitor(fo, rs[2]);
    sim.run_for(SECS(1));
    sim.start(l1);
    assert!(sim.run_until_cond(SECS(8), |sim| all_on(sim, &rs, l1)));
    sim.run_for(SECS(600));
    sim.crash(l1);
    // Before the fix, rs[2] never got an owner again.
    assert!(
        sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, fo)),
        "{:?}",
        sim.owners(rs[2])
    );
}

#[test]
fn case_3_a_failed_stop_keeps_the_claim_is_retried_and_resolves_only_once_it_succeeds() {
    let mut sim = started(4, one_live_one_buddy());
    let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    let cam = rs[0];
    // A partition: both sides record live-1's cameras.
    sim.partition(&[l1], &[fo, l2], true);
    sim.run_for(SECS(2));
    assert!(rs.iter().all(|&r| sim.owners(r).len() == 2));
    // live-1 loses at the heal (fo-1's takeover is the higher epoch); its stop of `cam` fails.
    sim.fail_stop(l1, cam, true);
    let heal = sim.now();
    sim.heal_all();
    sim.run_for(SECS(4));
    assert_eq!(sim.owners(cam).len(), 2, "both still record cam");
    let resolved = |sim: &Sim| {
        sim.events()
            .iter()
            .filter(|(t, _, e)| {
                *t >= heal
                    && matches!(e, Event::OwnershipResolved { resource, .. } if *resource == cam)
            })
            .count()
    };
    // Before the fix both nodes said resolved while both recorded.
    assert_eq!(resolved(&sim), 0);
    let failed: Vec<_> = sim
        .events()
        .iter()
        .filter(|(t, n, e)| {
            *t >= heal
                && *n == l1
                && matches!(e, Event::ResourceFailed { resource, reason, .. }
                    if *resource == cam && reason.starts_with("stop failed"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "reported once per failing streak");
    let stats = sim.node(l1).unwrap().stats();
    assert_eq!(stats.stops_failing, 1);
    assert!(stats.stop_failures >= 2, "retried: {}", stats.stop_failures);
    assert!(
        sim.store(l1)
            .claims
            .iter()
            .any(|c| c.resource == cam && c.held)
    );
    let old = sim
        .store(l1)
        .claims
        .iter()
        .find(|c| c.resource == cam)
        .unwrap()
        .epoch;
    // A daemon restart does not forget it: the claim is still stopped after the restart.
    sim.kill_daemon(l1);
    sim.start(l1);
    sim.run_for(SECS(4));
    assert_eq!(sim.owners(cam).len(), 2);
    sim.fail_stop(l1, cam, false);
    assert!(sim.run_until_cond(SECS(40), |sim| all_on(sim, &[cam], fo)));
    sim.run_for(SECS(1));
    assert!(resolved(&sim) >= 1, "resolved once the stop succeeded");
    // The old claim is released (a failback may since have claimed it anew).
    assert!(
        !sim.store(l1)
            .claims
            .iter()
            .any(|c| c.resource == cam && c.held && c.epoch == old)
    );
}

#[test]
fn case_4a_a_daemon_only_crash_stops_what_the_buddy_took_meanwhile() {
    for seed in 1..=5 {
        let mut sim = started(
            seed,
            one_live_one_buddy().failback(Failback::Auto, SECS(20)),
        );
        let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        // kill -9 of buddygate only: the VMS keeps recording.
        sim.kill_daemon(l1);
        assert!(sim.run_until_cond(SECS(2), |sim| rs.iter().all(|&r| sim.owners(r).len() == 2)));
        sim.start(l1);
        // Before the fix the resumed claims were released without a stop: both recorded for good.
        assert!(
            sim.run_until_cond(SECS(4), |sim| all_on(sim, &rs, fo)),
            "seed {seed}: {:?}",
            sim.owners(rs[0])
        );
        consumers_agree(&sim, &rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn case_4b_a_failover_daemon_restarted_while_it_holds_cameras_keeps_them() {
    let site = SiteBuilder::new("hq")
        .live("live-1", &["fo-1", "fo-2"])
        .failover("fo-1", Mode::SpreadServers, None, None)
        .failover("fo-2", Mode::SpreadServers, None, None)
        .many("live-1", Kind::Camera, 8, 0);
    for seed in 1..=5 {
        let mut sim = started(seed, site.clone());
        let (l1, f1, f2) = (sim.idx("live-1"), sim.idx("fo-1"), sim.idx("fo-2"));
        let rs = homed(&sim, l1);
        sim.crash(l1);
        assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, f1)));
        let t = sim.now();
        sim.kill_daemon(f1);
        sim.run_for(MS(50));
        sim.start(f1);
        sim.run_for(SECS(4));
        // Before the fix fo-2 took them 50 ms into fo-1's boot.
        assert!(
            rs.iter().all(|&r| !sim.running_on(f2).contains(&r)),
            "seed {seed}: fo-2 took over"
        );
        assert!(all_on(&sim, &rs, f1), "seed {seed}");
        assert!(
            sim.owner_changes(rs[0]).iter().all(|&(at, _)| at <= t),
            "seed {seed}: {:?}",
            sim.owner_changes(rs[0])
        );
    }
}

#[test]
fn case_5_a_manual_failover_survives_a_maintenance_reboot_until_failback() {
    for seed in 1..=5 {
        let mut sim = started(seed, one_live_one_buddy().failback(Failback::Auto, SECS(2)));
        let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        let t0 = sim.now();
        sim.command(l2, Action::Failover, l1);
        assert!(sim.run_until_cond(SECS(1), |sim| all_on(sim, &rs, fo)));
        // Maintenance: live-1 reboots, with its store, and once more with a wiped one.
        sim.restart(l1);
        sim.run_for(SECS(10));
        sim.restart_empty(l1);
        sim.run_for(SECS(10));
        // Before the fix the owner flipped every 2-3 s.
        assert!(all_on(&sim, &rs, fo), "seed {seed}: auto failback undid it");
        for &r in &rs {
            assert_eq!(sim.owner_changes(r).iter().filter(|c| c.0 > t0).count(), 1);
        }
        assert_eq!(count_all(&sim, t0, "buddygate.ownership.conflict"), 0);
        // A failback sent to any node ends it, once.
        sim.command(fo, Action::Failback, l1);
        assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &rs, l1)));
        sim.run_for(SECS(10));
        assert!(all_on(&sim, &rs, l1));
        assert!(no_orphan_after(&sim, &rs, t0));
    }
}

#[test]
fn case_5_a_node_that_missed_the_command_learns_the_hold_from_any_peer() {
    let mut sim = started(2, one_live_one_buddy().failback(Failback::Auto, SECS(2)));
    let (l1, l2, fo) = (sim.idx("live-1"), sim.idx("live-2"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    // live-1 is down (and its store is lost) while the operator fails it over.
    sim.crash(l1);
    sim.wipe(l1);
    sim.command(l2, Action::Failover, l1);
    sim.run_for(SECS(30));
    sim.start(l1);
    sim.run_for(SECS(10));
    assert!(all_on(&sim, &rs, fo));
    assert!(sim.node(l1).unwrap().server_view(l1, sim.now()).held);
}

#[test]
fn case_6_a_higher_priority_failure_restores_capacity_by_stopping_the_lower_one() {
    let site = SiteBuilder::new("hq")
        .live("live-a", &["fo-1"])
        .live("live-b", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, None, Some(2))
        .many("live-a", Kind::Camera, 2, 0)
        .many("live-b", Kind::Camera, 2, 10);
    for seed in 1..=5 {
        let mut sim = started(seed, site.clone());
        let (la, lb, fo) = (sim.idx("live-a"), sim.idx("live-b"), sim.idx("fo-1"));
        let (a, b) = (homed(&sim, la), homed(&sim, lb));
        sim.crash(la);
        assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &a, fo)));
        let t = sim.now();
        sim.crash(lb);
        assert!(sim.run_until_cond(SECS(2), |sim| all_on(sim, &b, fo)));
        sim.run_for(SECS(1));
        // Before the fix fo-1 ran 4 cameras with max_cameras = 2, for good.
        let mut running = sim.running_on(fo);
        running.sort();
        assert_eq!(running, b, "seed {seed}");
        let unplaced = unplaced_events(&sim, t);
        assert_eq!(unplaced, vec![(fo, a.clone())], "seed {seed}");
        assert_eq!(sim.node(fo).unwrap().stats().unplaced, 2);
        // live-a back: its cameras go home, and the report clears.
        sim.start(la);
        assert!(sim.run_until_cond(SECS(5), |sim| all_on(sim, &a, la)));
        sim.run_for(SECS(1));
        assert_eq!(sim.node(fo).unwrap().stats().unplaced, 0);
    }
}

fn heartbeat(
    sim: &Sim,
    from: &str,
    incarnation: u64,
    seq: u64,
    echo: u64,
    state: PeerState,
) -> Vec<u8> {
    wire::encode(
        sim.key(),
        &Heartbeat {
            from: from.into(),
            incarnation,
            seq,
            path: 0,
            state,
            digest: sim.site().digest(),
            echo,
            ..Heartbeat::default()
        },
    )
}

#[test]
fn case_7_heartbeats_replayed_to_a_restarted_buddy_do_not_fail_over_a_healthy_server() {
    let mut sim = started(5, one_live_one_buddy());
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.run_for(SECS(20));
    // Captured earlier: live-1's current incarnation, old sequence numbers, "leaving".
    let inc = sim.node(l1).unwrap().incarnation();
    let fo_inc = sim.node(fo).unwrap().incarnation();
    let captured: Vec<Vec<u8>> = (1..40)
        .map(|seq| heartbeat(&sim, "live-1", inc, seq * 3, fo_inc, PeerState::Leaving))
        .collect();
    let t = sim.now();
    sim.kill_daemon(fo);
    sim.start(fo);
    for (i, bytes) in captured.into_iter().enumerate() {
        sim.inject(fo, 0, bytes);
        sim.run_for(MS(if i < 20 { 5 } else { 100 }));
    }
    sim.run_for(SECS(3));
    // Before the fix fo-1 started a takeover of the healthy live-1.
    assert!(all_on(&sim, &rs, l1));
    assert_eq!(count(&sim, fo, t, "buddygate.failover.started"), 0);
    let stats = sim.node(fo).unwrap().stats();
    assert!(
        stats.rejected.get("replay").copied().unwrap_or(0) + stats.unconfirmed >= 39,
        "{stats:?}"
    );
}

#[test]
fn case_7_a_node_restarted_empty_with_its_clock_behind_is_heard_again() {
    let mut sim = started(6, one_live_one_buddy().failback(Failback::Auto, SECS(30)));
    let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    let rs = homed(&sim, l1);
    sim.restart_empty_clock_behind(l1);
    // Before the fix fo-1 rejected every heartbeat of live-1 as a replay until fo-1 restarted:
    // it took live-1's cameras over and kept them.
    assert!(sim.run_until_cond(SECS(3), |sim| all_on(sim, &rs, l1)));
    let jumped = sim.node(l1).unwrap().stats().incarnation_jumps;
    assert_eq!(jumped, 1);
    let t = sim.now();
    sim.run_for(SECS(5));
    assert_eq!(count(&sim, fo, t, "buddygate.failover.started"), 0);
    assert_eq!(
        sim.node(fo)
            .unwrap()
            .server_view(l1, sim.now())
            .state
            .as_str(),
        "up"
    );
}

#[test]
fn case_8_buddies_with_differently_ordered_site_files_end_with_one_owner() {
    let site = |order: &[&str]| {
        SiteBuilder::new("hq")
            .live("live-1", order)
            .failover("fo-1", Mode::SpreadServers, None, None)
            .failover("fo-2", Mode::SpreadServers, None, None)
            .many("live-1", Kind::Camera, 6, 0)
    };
    for seed in 1..=5 {
        let mut sim = started(seed, site(&["fo-1", "fo-2"]));
        let (l1, f2) = (sim.idx("live-1"), sim.idx("fo-2"));
        let rs = homed(&sim, l1);
        // A rollout that reorders buddies reached fo-2 only.
        sim.set_site(f2, site(&["fo-2", "fo-1"]).build());
        sim.kill_daemon(f2);
        sim.start(f2);
        sim.run_for(SECS(3));
        sim.crash(l1);
        sim.run_for(SECS(4));
        // Before the fix both claimed at 298 and never resolved.
        consumers_agree(&sim, &rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(count_all(&sim, SECS(0), "buddygate.config.mismatch") > 0);
    }
}

/// Four live servers share fo-a (room for 3 servers); live-d, the least important, also has
/// fo-b, which heartbeats live-d only.
fn overflow_site(second_buddy: bool) -> SiteBuilder {
    let mut b = SiteBuilder::new("hq");
    for (i, live) in ["live-a", "live-b", "live-c", "live-d"].iter().enumerate() {
        let buddies: &[&str] = if *live == "live-d" && second_buddy {
            &["fo-a", "fo-b"]
        } else {
            &["fo-a"]
        };
        b = b
            .live(live, buddies)
            .many(live, Kind::Camera, 5, 10 - i as i32);
    }
    b = b
        .live("live-e", &["fo-b"])
        .many("live-e", Kind::Camera, 5, 0)
        .failover("fo-a", Mode::SpreadServers, Some(3), None);
    b.failover("fo-b", Mode::SpreadServers, Some(3), None)
}

#[test]
fn case_9_overflow_reaches_a_second_buddy_that_does_not_know_the_first_ones_servers() {
    for seed in 1..=5 {
        let mut sim = started(seed, overflow_site(true));
        let ids = ["live-a", "live-b", "live-c", "live-d"];
        let lives: Vec<ServerIdx> = ids.iter().map(|id| sim.idx(id)).collect();
        let (fa, fb) = (sim.idx("fo-a"), sim.idx("fo-b"));
        let t = sim.now();
        for &l in &lives {
            sim.crash(l);
        }
        let limit = sim.site().failure_timeout + SECS(1);
        // Before the fix live-d's cameras were never taken over, silently.
        assert!(
            sim.run_until_cond(limit, |sim| {
                lives[..3].iter().all(|&l| all_on(sim, &homed(sim, l), fa))
                    && all_on(sim, &homed(sim, lives[3]), fb)
            }),
            "seed {seed}"
        );
        assert!(unplaced_events(&sim, t).is_empty());
        let _ = t;
    }
}

#[test]
fn case_9_what_no_buddy_can_take_is_reported_never_silent() {
    let mut sim = started(1, overflow_site(false));
    let ids = ["live-a", "live-b", "live-c", "live-d"];
    let lives: Vec<ServerIdx> = ids.iter().map(|id| sim.idx(id)).collect();
    let fa = sim.idx("fo-a");
    let t = sim.now();
    for &l in &lives {
        sim.crash(l);
    }
    sim.run_for(SECS(3));
    let d = homed(&sim, lives[3]);
    assert!(d.iter().all(|&r| sim.owners(r).is_empty()));
    assert_eq!(unplaced_events(&sim, t), vec![(fa, d.clone())]);
    let view = sim.node(fa).unwrap().resource_view(d[0], sim.now());
    assert!(view.unplaced);
    assert_eq!(view.state.as_str(), "unassigned");
    // live-a comes back: room for live-d on fo-a, and the report clears.
    sim.start(lives[0]);
    assert!(sim.run_until_cond(SECS(40), |sim| all_on(sim, &d, fa)));
    assert_eq!(sim.node(fa).unwrap().stats().unplaced, 0);
}

#[test]
fn a_manual_failback_while_the_home_still_stops_its_old_copies_brings_everything_back() {
    for seed in 1..=3 {
        let mut sim = started(
            seed,
            one_live_one_buddy().failback(Failback::Manual, SECS(3)),
        );
        let (l1, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
        let rs = homed(&sim, l1);
        // A daemon-only crash: fo-1 takes over while live-1's VMS keeps recording.
        sim.kill_daemon(l1);
        assert!(sim.run_until_cond(SECS(2), |sim| rs.iter().all(|&r| sim.owners(r).len() == 2)));
        // Back, live-1 stops its old copies; two of those stops fail for a while.
        for &r in &rs[..2] {
            sim.fail_stop(l1, r, true);
        }
        sim.start(l1);
        sim.run_for(SECS(2));
        // The operator's failback arrives while those two are still being stopped.
        sim.command(l1, Action::Failback, l1);
        sim.run_for(SECS(1));
        for &r in &rs[..2] {
            sim.fail_stop(l1, r, false);
        }
        // Before: the failback was done with the four it could take; two stayed on fo-1.
        assert!(
            sim.run_until_cond(SECS(40), |sim| all_on(sim, &rs, l1)),
            "seed {seed}: {:?}",
            rs.iter().map(|&r| sim.owners(r)).collect::<Vec<_>>()
        );
        let _ = fo;
    }
}
