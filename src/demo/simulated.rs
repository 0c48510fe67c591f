//! `buddygate demo`: a whole site on this machine with nothing to install.
//!
//! For now the site runs in the simulator ([`crate::sim`]) paced to the wall clock: the real
//! failover core on every node, a simulated network and simulated agents. It kills a live
//! node, shows the takeover as it happens, brings the node back, shows the failback and ends
//! with a summary table.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::config::{Failback, Kind, Mode, ServerIdx, Site};
use crate::sim::{Sim, SimOptions, SiteBuilder};

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Run in virtual time as fast as possible instead of pacing to the wall clock.
    pub fast: bool,
    pub seed: u64,
}

/// The demo site: two live servers with 25 cameras, an I/O unit, an LPR and an analytics
/// resource each, one spread-servers failover server.
pub fn demo_site() -> Site {
    let mut b = SiteBuilder::new("demo")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(60))
        .failback(Failback::Auto, Duration::from_secs(5));
    for live in ["live-1", "live-2"] {
        b = b
            .many(live, Kind::Camera, 25, 0)
            .resource(&format!("{live}-io"), Kind::Io, live, 5)
            .resource(&format!("{live}-lpr"), Kind::Lpr, live, 8)
            .resource(&format!("{live}-analytics"), Kind::Analytics, live, 3);
    }
    b.build()
}

struct Runner {
    sim: Sim,
    opts: DemoOptions,
    wall: Instant,
    shown: usize,
    out: std::io::Stdout,
}

impl Runner {
    fn say(&mut self, msg: &str) {
        let _ = writeln!(self.out, "[{:>8.3}s] {msg}", self.sim.now().as_secs_f64());
    }

    /// Advances the site by `d`, printing events as they happen.
    fn run(&mut self, d: Duration) {
        let step = Duration::from_millis(10);
        let until = self.sim.now() + d;
        while self.sim.now() < until {
            self.sim.run_for(step);
            self.show_events();
            if !self.opts.fast {
                let target = self.wall + self.sim.now();
                if let Some(wait) = target.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn show_events(&mut self) {
        let site = self.sim.site().clone();
        let events: Vec<_> = self.sim.events()[self.shown..].to_vec();
        self.shown += events.len();
        for (t, node, e) in events {
            let _ = writeln!(
                self.out,
                "[{:>8.3}s]   {:<6} {}",
                t.as_secs_f64(),
                site.server(node).id,
                e.describe(&site)
            );
        }
    }

    fn owners_line(&self, s: ServerIdx) -> (usize, String) {
        let n = self.sim.running_on(s).len();
        (n, self.sim.site().server(s).id.clone())
    }
}

/// Runs the demo; prints to stdout.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let site = demo_site();
    let sim = Sim::new(
        site,
        SimOptions {
            seed: opts.seed,
            ..SimOptions::default()
        },
    );
    let mut r = Runner {
        sim,
        opts,
        wall: Instant::now(),
        shown: 0,
        out: std::io::stdout(),
    };
    let site = r.sim.site().clone();
    let (l1, l2, fo) = (r.sim.idx("live-1"), r.sim.idx("live-2"), r.sim.idx("fo-1"));
    println!(
        "buddygate demo: site \"{}\", {} live servers, 1 failover server (spread-servers), {} resources",
        site.name,
        2,
        site.resources.len()
    );
    println!(
        "heartbeat every {:?} on 2 paths, failure timeout {:?}, auto failback after {:?}",
        site.heartbeat_interval, site.failure_timeout, site.failback_delay
    );
    println!(
        "(nodes run the real failover core over a simulated network; the real daemons on loopback come with `buddygate run`)\n"
    );
    r.say("starting 3 nodes");
    r.run(Duration::from_secs(3));
    for s in [l1, l2, fo] {
        let (n, id) = r.owners_line(s);
        r.say(&format!("{id}: {n} resources active"));
    }
    let homes: Vec<_> = r.sim.topology().homed(l1).to_vec();
    let before: Vec<_> = homes.iter().map(|&x| r.sim.owners(x)).collect();

    r.say("kill -9 live-1");
    let killed = r.sim.now();
    r.sim.crash(l1);
    let mut moved_at = None;
    let deadline = killed + Duration::from_secs(5);
    while r.sim.now() < deadline {
        r.run(Duration::from_millis(10));
        if moved_at.is_none()
            && homes
                .iter()
                .all(|&x| r.sim.owners(x).iter().any(|o| o.0 == fo))
        {
            moved_at = Some(r.sim.now());
            break;
        }
    }
    let takeover = moved_at.map(|t| t - killed);
    match takeover {
        Some(t) => r.say(&format!(
            "all {} resources of live-1 active on fo-1 ({}) {} ms after the kill",
            homes.len(),
            site.server(fo).address,
            t.as_millis()
        )),
        None => r.say("takeover did not complete within 5 s"),
    }
    let during: Vec<_> = homes.iter().map(|&x| r.sim.owners(x)).collect();
    r.run(Duration::from_secs(2));

    r.say("live-1 restarts");
    let back = r.sim.now();
    r.sim.restart(l1);
    let mut home_at = None;
    let deadline = back + site.failback_delay + Duration::from_secs(5);
    while r.sim.now() < deadline {
        r.run(Duration::from_millis(10));
        if homes
            .iter()
            .all(|&x| r.sim.owners(x).iter().map(|o| o.0).eq([l1]))
        {
            home_at = Some(r.sim.now());
            break;
        }
    }
    match home_at {
        Some(t) => r.say(&format!(
            "all resources back on live-1 {} ms after its restart (failback_delay {:?})",
            (t - back).as_millis(),
            site.failback_delay
        )),
        None => r.say("failback did not complete"),
    }
    r.run(Duration::from_millis(500));
    let after: Vec<_> = homes.iter().map(|&x| r.sim.owners(x)).collect();
    let orphan_ms: u128 = r
        .sim
        .gaps()
        .iter()
        .filter(|g| g.owners == 0 && g.from >= killed && homes.contains(&g.resource))
        .map(|g| g.length(r.sim.now()).as_millis())
        .max()
        .unwrap_or(0);

    println!("\nsummary (live-1's resources)");
    println!(
        "{:<22} {:<10} {:<16} {:<16} {:<16}",
        "resource", "kind", "before", "after kill", "after failback"
    );
    let cell = |o: &Vec<(ServerIdx, u64)>| {
        o.iter()
            .map(|(s, e)| format!("{}@{e}", site.server(*s).id))
            .collect::<Vec<_>>()
            .join(",")
    };
    for (i, &x) in homes.iter().enumerate() {
        let res = site.resource(x);
        if res.kind == Kind::Camera && i > 2 && i + 1 < 25 {
            if i == 3 {
                println!("{:<22} ...", "...");
            }
            continue;
        }
        println!(
            "{:<22} {:<10} {:<16} {:<16} {:<16}",
            res.id,
            res.kind.as_str(),
            cell(&before[i]),
            cell(&during[i]),
            cell(&after[i])
        );
    }
    println!(
        "\ntakeover: {} | longest time a resource had no owner: {orphan_ms} ms | failback: {}",
        takeover.map_or("-".to_string(), |t| format!("{} ms", t.as_millis())),
        home_at.map_or("-".to_string(), |t| format!(
            "{} ms after restart",
            (t - back).as_millis()
        ))
    );
    if takeover.is_none() || home_at.is_none() {
        anyhow::bail!("the demo did not complete");
    }
    Ok(())
}
