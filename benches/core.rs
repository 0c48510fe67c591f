//! Core benchmarks: `cargo bench --bench core`. Prints the figures kept in
//! docs/benchmarks.md. No timing here is asserted; tests assert behaviour.

use std::hint::black_box;
use std::time::{Duration, Instant};

use buddygate::config::{Kind, Mode, ServerIdx};
use buddygate::failover::placement::{Availability, Load};
use buddygate::failover::{Event, Input, Output, Topology, place};
use buddygate::sim::{Sim, SimOptions, SiteBuilder};

fn big_site() -> SiteBuilder {
    let mut b = SiteBuilder::new("big");
    for f in 0..10 {
        b = b.failover(
            &format!("fo-{f:02}"),
            Mode::SpreadServers,
            Some(2),
            Some(100),
        );
    }
    for l in 0..100 {
        let id = format!("live-{l:03}");
        let first = format!("fo-{:02}", l % 10);
        let second = format!("fo-{:02}", (l + 1) % 10);
        b = b
            .live(&id, &[&first, &second])
            .many(&id, Kind::Camera, 50, l % 7);
    }
    b
}

/// Median and p99 of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    (v[runs / 2], v[(runs * 99 / 100).min(runs - 1)])
}

fn placement_bench() {
    let site = big_site().build();
    let topo = Topology::new(&site);
    let down: Vec<ServerIdx> = (0..5u16)
        .map(|l| site.server_idx(&format!("live-{l:03}")).unwrap())
        .collect();
    let orphans: Vec<_> = down.iter().flat_map(|&s| topo.homed(s).to_vec()).collect();
    let (p50, p99) = time(200, || {
        let t = Instant::now();
        black_box(place(
            &site,
            &topo,
            black_box(&orphans),
            |_| Availability::Yes,
            |_, _| false,
            |_| None,
            |_| Load::default(),
        ));
        t.elapsed()
    });
    println!(
        "placement: {} orphans of 5 live servers in a {}-camera, {}-server site: p50 {:?}, p99 {:?}",
        orphans.len(),
        site.resources.len(),
        site.servers.len(),
        p50,
        p99
    );
}

fn takeover_and_round_bench() {
    let mut sim = Sim::new(big_site().build(), SimOptions::default());
    sim.run_for(Duration::from_secs(5));
    // One heartbeat round of a failover node: encode for every peer and path.
    let fo = sim.idx("fo-00");
    let node = sim.clone_node(fo).unwrap();
    let at = node.next_deadline();
    let sends = node.clone().handle(Input::Tick, at).len();
    let (tick50, _) = time(200, || {
        let mut n = node.clone();
        let t = Instant::now();
        black_box(n.handle(Input::Tick, at));
        t.elapsed()
    });
    // Receiving one heartbeat from a live server.
    let live = sim.idx("live-010");
    let mut ln = sim.clone_node(live).unwrap();
    let out = ln.handle(Input::Tick, ln.next_deadline());
    let (path, bytes) = out
        .into_iter()
        .find_map(|o| match o {
            Output::Send { path, to, bytes } if to == fo => Some((path, bytes)),
            _ => None,
        })
        .unwrap();
    let (recv50, _) = time(200, || {
        let mut n = node.clone();
        let input = Input::Datagram {
            path,
            bytes: bytes.clone(),
            at,
        };
        let t = Instant::now();
        black_box(n.handle(input, at));
        t.elapsed()
    });
    // The whole site's round: every node sends once; every datagram is received once.
    let mut site_sends = 0usize;
    let mut site_send_time = Duration::ZERO;
    for s in sim.site().server_indices() {
        let mut n = sim.clone_node(s).unwrap();
        let at = n.next_deadline();
        let t = Instant::now();
        site_sends += n.handle(Input::Tick, at).len();
        site_send_time += t.elapsed();
    }
    let round = site_send_time + recv50 * site_sends as u32;
    println!(
        "heartbeat round, 110-node site: fo-00 sends {sends} datagrams in {tick50:?}; one receive {recv50:?}; \
         whole site {site_sends} datagrams, {round:?} of core CPU per round (every {:?})",
        sim.site().heartbeat_interval
    );

    // 5 live servers fail at once: the core cost of each first buddy's reaction.
    let down: Vec<ServerIdx> = (0..5u16)
        .map(|l| sim.idx(&format!("live-{l:03}")))
        .collect();
    let crashed_at = sim.now();
    for &s in &down {
        sim.crash(s);
    }
    sim.run_for(Duration::from_millis(600));
    let ft = sim.site().failure_timeout;
    let mut total = Duration::ZERO;
    let mut worst = Duration::ZERO;
    let mut claimed = 0;
    for f in 0..5u16 {
        let fo = sim.idx(&format!("fo-{f:02}"));
        let node = sim.clone_node(fo).unwrap();
        let at = crashed_at + ft + sim.site().heartbeat_interval;
        let (p50, _) = time(50, || {
            let mut n = node.clone();
            let t = Instant::now();
            black_box(n.handle(Input::Tick, at));
            t.elapsed()
        });
        claimed += node
            .clone()
            .handle(Input::Tick, at)
            .iter()
            .filter(|o| matches!(o, Output::Start { .. }))
            .count();
        total += p50;
        worst = worst.max(p50);
    }
    println!(
        "5 live servers fail at once: {claimed} resources claimed by their buddies; core CPU per buddy \
         worst {worst:?}, all buddies together {total:?}"
    );
    // And end to end in the simulator: every camera re-homed.
    sim.run_for(Duration::from_secs(2));
    let rehomed = down
        .iter()
        .flat_map(|&s| sim.topology().homed(s).to_vec())
        .filter(|&r| sim.owners(r).len() == 1)
        .count();
    println!("  re-homed in the simulator: {rehomed} of 250");
}

fn false_failover_bench() {
    let minutes = 10;
    let seeds = 10;
    let mut false_failovers = 0;
    let mut server_downs = 0;
    let mut path_downs = 0;
    let wall = Instant::now();
    for seed in 1..=seeds {
        let site = SiteBuilder::new("lossy")
            .live("live-1", &["fo-1"])
            .live("live-2", &["fo-1"])
            .failover("fo-1", Mode::SpreadServers, Some(2), None)
            .many("live-1", Kind::Camera, 25, 0)
            .many("live-2", Kind::Camera, 25, 0)
            .build();
        let mut sim = Sim::new(
            site,
            SimOptions {
                seed,
                ..SimOptions::default()
            },
        );
        sim.run_for(Duration::from_secs(5));
        // 30% loss + 100 ms jitter on path 0, and 10% loss on both paths.
        sim.set_path(0, |l| {
            l.loss = 1.0 - 0.7 * 0.9;
            l.jitter = Duration::from_millis(100);
        });
        sim.set_path(1, |l| l.loss = 0.1);
        sim.run_for(Duration::from_secs(60 * minutes));
        for (_, _, e) in sim.events() {
            match e {
                Event::FailoverStarted { .. } => false_failovers += 1,
                Event::ServerDown { .. } => server_downs += 1,
                Event::PathDown { .. } => path_downs += 1,
                _ => {}
            }
        }
    }
    println!(
        "lossy network, {seeds} x {minutes} simulated minutes (path 0: 37% loss + 100 ms jitter; \
         path 1: 10% loss): false failovers {false_failovers}, false server.down {server_downs}, \
         path.down {path_downs} (simulated in {:?})",
        wall.elapsed()
    );
}

fn main() {
    placement_bench();
    takeover_and_round_bench();
    false_failover_bench();
}
