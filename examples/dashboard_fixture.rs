//! Serves the API and dashboard of one simulated node with realistic, changing data: the
//! failover server `fo-1` of a site with three live servers and 80 resources, in the simulator
//! paced to the wall clock. `tests/dashboard/check.sh` points a headless browser at it; it is
//! also the quickest way to look at the dashboard by hand.
//!
//! ```text
//! cargo run --example dashboard_fixture -- PORT [SECONDS]
//! ```
//! PORT 0 picks a free port. The first line on stdout is `listening on http://ADDR`. It runs
//! for SECONDS (default: until Ctrl-C or SIGTERM). Reads need a token, as on a real node: the
//! page asks for one; give it `fixture-read-token` (or the API token `fixture-token`).
//!
//! Before it serves, a path to live-3 was down for a while. When it starts serving, live-1 has crashed and fo-1 has taken over its resources. Then, in
//! a 30 s cycle: path 1 between fo-1 and live-2 is cut (live-2 turns suspect), live-1 comes
//! back and gets its resources back (auto failback), the path heals, live-1 crashes again.
//! Every event of fo-1 is stored as a CloudEvent and broadcast, as the runtime does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use buddygate::config::{Failback, Kind, Mode, ServerIdx, Site};
use buddygate::failover::{DownReason, Event};
use buddygate::sim::{Sim, SimOptions, SiteBuilder};
use buddygate::store::history::{History, Owner, Seen};
use buddygate::store::{Store, StoredEvent};
use buddygate::view::{Metrics, Snapshot};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[path = "../tests/common/sim_node.rs"]
mod sim_node;

use sim_node::ApiOptions;

/// The read token the page must be given (`[api] read_token`).
const READ_TOKEN: &str = "fixture-read-token";
const STEP: Duration = Duration::from_millis(100);
const CYCLE: u64 = 60;

fn site() -> Site {
    SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .live("live-2", &["fo-1"])
        .live("live-3", &["fo-1"])
        .failover("fo-1", Mode::SpreadServers, Some(2), Some(80))
        .failback(Failback::Auto, Duration::from_secs(6))
        .many("live-1", Kind::Camera, 32, 0)
        .resource("live-1-io", Kind::Io, "live-1", 5)
        .resource("live-1-lpr", Kind::Lpr, "live-1", 8)
        .many("live-2", Kind::Camera, 24, 0)
        .resource("live-2-io", Kind::Io, "live-2", 5)
        .resource("live-2-analytics", Kind::Analytics, "live-2", 3)
        .many("live-3", Kind::Camera, 16, 0)
        .resource("live-3-map", Kind::Map, "live-3", 1)
        .resource("live-3-middleware", Kind::Middleware, "live-3", 1)
        .build()
}

/// Maps the simulator's clock to the wall clock.
struct Clock {
    sim: Duration,
    wall: SystemTime,
}

impl Clock {
    fn at(&self, t: Duration) -> SystemTime {
        if t >= self.sim {
            self.wall + (t - self.sim)
        } else {
            self.wall - (self.sim - t)
        }
    }

    fn rfc3339(&self, t: Duration) -> String {
        humantime::format_rfc3339_millis(self.at(t)).to_string()
    }
}

/// The CloudEvent the runtime would store for `event` (fixture data; the shapes follow
/// DESIGN section 1, "Events").
fn cloud_event(
    site: &Site,
    node: ServerIdx,
    seq: u64,
    t: Duration,
    clock: &Clock,
    e: &Event,
) -> String {
    let server = |s: ServerIdx| {
        let s = site.server(s);
        json!({"id": s.id, "address": s.address.to_string()})
    };
    let resource = |r| {
        let r = site.resource(r);
        json!({"id": r.id, "kind": r.kind.as_str()})
    };
    let failed = |f: &[buddygate::failover::FailedResource]| -> Vec<Value> {
        f.iter()
            .map(|f| json!({"id": site.resource(f.resource).id, "reason": f.reason}))
            .collect()
    };
    let name = &site.name;
    let data = match e {
        Event::ServerDown {
            server: s,
            reason,
            down_since,
        } => json!({"site": name, "server": server(*s),
            "reason": match reason { DownReason::Timeout => "timeout", DownReason::Leaving => "leaving" },
            "down_since": clock.rfc3339(*down_since)}),
        Event::ServerUp { server: s } => json!({"site": name, "server": server(*s)}),
        Event::PathDown { server: s, path } | Event::PathUp { server: s, path } => json!({
            "site": name, "server": server(*s),
            "path": {"index": path, "address": site.server(*s).heartbeat.get(*path).map(|a| a.to_string())}}),
        Event::FailoverStarted {
            server: s,
            new_server,
            epoch,
            resources,
        } => json!({"site": name, "server": server(*s), "new_server": server(*new_server),
            "epoch": epoch, "resources": resources.iter().map(|&r| resource(r)).collect::<Vec<_>>()}),
        Event::FailoverCompleted {
            server: s,
            new_server,
            epoch,
            resources,
            failed: f,
            down_since,
            takeover,
        } => {
            let owner = site.server(*new_server);
            json!({"site": name, "server": server(*s), "new_server": server(*new_server), "epoch": epoch,
                "resources": resources.iter().map(|&r| {
                    let r = site.resource(r);
                    json!({"id": r.id, "kind": r.kind.as_str(), "owner": owner.id,
                           "address": owner.address.to_string(), "epoch": epoch})
                }).collect::<Vec<_>>(),
                "failed": failed(f), "down_since": clock.rfc3339(*down_since),
                "takeover_ms": takeover.as_millis()})
        }
        Event::FailbackCompleted {
            server: s,
            epoch,
            resources,
            failed: f,
            duration,
        } => json!({"site": name, "server": server(*s), "epoch": epoch,
            "resources": resources.iter().map(|&r| resource(r)).collect::<Vec<_>>(),
            "failed": failed(f), "duration_ms": duration.as_millis()}),
        Event::ResourceFailed {
            resource: r,
            server: s,
            epoch,
            reason,
        } => {
            json!({"site": name, "resource": resource(*r), "server": server(*s), "epoch": epoch, "reason": reason})
        }
        Event::ResourceUnplaced {
            server: s,
            resources,
        } => json!({"site": name, "server": server(*s),
            "resources": resources.iter().map(|&(r, why)| {
                let mut v = resource(r);
                v["reason"] = json!(why.as_str());
                v
            }).collect::<Vec<_>>()}),
        Event::OwnershipConflict {
            resource: r,
            owners,
        } => json!({"site": name, "resource": resource(*r),
            "owners": owners.iter().map(|(s, e)| json!({"id": site.server(*s).id, "epoch": e})).collect::<Vec<_>>()}),
        Event::OwnershipResolved {
            resource: r,
            owner,
            epoch,
        } => {
            json!({"site": name, "resource": resource(*r), "owner": server(*owner), "epoch": epoch})
        }
        Event::ConfigMismatch { server: s, .. } => json!({"site": name, "server": server(*s)}),
        Event::ConnectorFailed {
            connector,
            kind,
            reason,
            attempts,
            retry_in,
        } => json!({"site": name, "server": server(node), "connector": connector, "kind": kind,
            "reason": reason, "attempts": attempts, "retry_in_ms": retry_in.as_millis()}),
        Event::ConnectorRecovered {
            connector,
            kind,
            attempts,
            failed_for,
        } => json!({"site": name, "server": server(node), "connector": connector, "kind": kind,
            "attempts": attempts, "failed_for_ms": failed_for.as_millis()}),
    };
    let me = &site.server(node).id;
    json!({
        "specversion": "1.0",
        "id": format!("{name}-{me}-{seq}"),
        "type": e.type_name(),
        "source": format!("buddygate://{name}/{me}"),
        "time": clock.rfc3339(t),
        "datacontenttype": "application/json",
        "seq": seq,
        "data": data,
    })
    .to_string()
}

struct Fixture {
    sim: Sim,
    me: ServerIdx,
    store: Store,
    clock: Clock,
    stored: usize,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    history: History,
}

/// Unix milliseconds.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes `snap` into the history of owners, as the runtime does.
fn observe(history: &mut History, snap: &Snapshot, at: SystemTime) -> anyhow::Result<()> {
    let site = &snap.site;
    let addresses: Vec<String> = site.servers.iter().map(|s| s.address.to_string()).collect();
    let seen = snap.resources.iter().map(|v| Seen {
        resource: site.resource(v.resource).id.as_str(),
        owner: match (v.state, v.owner) {
            (buddygate::failover::ResourceState::Active, Some(o)) => Some(Owner {
                id: site.server(o).id.as_str(),
                address: addresses[usize::from(o.0)].as_str(),
                epoch: v.epoch,
                covered_from: None,
            }),
            _ => None,
        },
    });
    history.observe(unix_ms(at), seen)?;
    Ok(())
}

impl Fixture {
    /// Stores and broadcasts fo-1's new events; publishes a new snapshot.
    fn publish(&mut self) -> anyhow::Result<()> {
        let site = self.sim.site().clone();
        let new: Vec<(Duration, Event)> = self.sim.events()[self.stored..]
            .iter()
            .filter(|(_, n, _)| *n == self.me)
            .map(|(t, _, e)| (*t, e.clone()))
            .collect();
        self.stored = self.sim.events().len();
        for (t, e) in new {
            let (me, clock) = (self.me, &self.clock);
            let stored = self.store.append_event(e.type_name(), |seq| {
                cloud_event(&site, me, seq, t, clock, &e)
            })?;
            self.metrics.events_stored.fetch_add(1, Ordering::Relaxed);
            match &e {
                Event::FailoverCompleted {
                    resources,
                    takeover,
                    ..
                } => {
                    self.metrics.takeover_seconds.observe(*takeover);
                    (0..resources.len()).for_each(|_| self.metrics.agent_op("start", "ok"));
                }
                Event::FailbackCompleted { resources, .. } => {
                    (0..resources.len()).for_each(|_| self.metrics.agent_op("stop", "ok"));
                }
                _ => {}
            }
            let _ = self.events.send(Arc::new(stored));
        }
        if let Some(node) = self.sim.node(self.me) {
            let stats = node.stats();
            let rejected: u64 = stats.rejected.values().sum();
            self.metrics
                .datagrams_sent
                .store(stats.heartbeats_sent, Ordering::Relaxed);
            self.metrics
                .datagrams_received
                .store(stats.heartbeats_received + rejected, Ordering::Relaxed);
            let snap = Snapshot::of(node, self.sim.now());
            observe(&mut self.history, &snap, self.clock.at(self.sim.now()))?;
            self.snapshot.send_replace(Arc::new(snap));
        }
        Ok(())
    }

    /// The scripted cycle: what happens at second `s` of it.
    fn act(&mut self, s: u64) {
        let (live1, live2) = (self.sim.idx("live-1"), self.sim.idx("live-2"));
        let me = self.me;
        match s {
            3 => self.cut(me, live2, true),
            25 => self.cut(me, live2, false),
            30 => self.sim.restart(live1),
            50 => self.sim.crash(live1),
            _ => {}
        }
    }

    fn cut(&mut self, a: ServerIdx, b: ServerIdx, cut: bool) {
        self.sim.link(a, b, 1).cut = cut;
        self.sim.link(b, a, 1).cut = cut;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: dashboard_fixture PORT [SECONDS]"))?
        .parse()?;
    let limit = args.next().map(|s| s.parse::<u64>()).transpose()?;

    let dir = std::env::temp_dir().join(format!(
        "buddygate-dashboard-fixture-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir)?;
    // Where the footage is: live-1 recorded its cameras for the last hour, until it crashed.
    let mut history = History::open(&dir, "fo-1", unix_ms(SystemTime::now()))?;

    // Boot the site, then crash live-1 and let fo-1 take over, in virtual time.
    let mut sim = Sim::new(site(), SimOptions::default());
    sim.run_for(Duration::from_secs(5));
    let (me, live3) = (sim.idx("fo-1"), sim.idx("live-3"));
    sim.link(me, live3, 0).cut = true;
    sim.link(live3, me, 0).cut = true;
    sim.run_for(Duration::from_secs(2));
    sim.heal_all();
    sim.run_for(Duration::from_secs(2));
    sim.crash(sim.idx("live-1"));
    sim.run_for(Duration::from_secs(3));
    let node = sim
        .clone_node(me)
        .ok_or_else(|| anyhow::anyhow!("fo-1 is not running"))?;
    {
        let mut before = Snapshot::of(&node, sim.now());
        let live1 = sim.idx("live-1");
        for v in before.resources.iter_mut().filter(|v| v.owner == Some(me)) {
            (v.owner, v.epoch) = (Some(live1), 199);
        }
        let hour = SystemTime::now() - Duration::from_secs(3600);
        observe(&mut history, &before, hour)?;
    }

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let metrics = Arc::new(Metrics::default());
    let served = sim_node::serve(
        listener,
        Snapshot::of(&node, sim.now()),
        ApiOptions {
            token: Some("fixture-token".into()),
            onvif_users: Vec::new(),
            data_dir: dir.clone(),
            channel: 256,
            commands: 16,
            metrics: metrics.clone(),
            access: buddygate::api::Access {
                read_token: Some(READ_TOKEN.into()),
                ..Default::default()
            },
        },
    );
    let mut commands = served.commands;
    let clock = Clock {
        sim: sim.now(),
        wall: SystemTime::now(),
    };
    let mut fx = Fixture {
        sim,
        me,
        store,
        clock,
        stored: 0,
        metrics,
        events: served.events,
        snapshot: served.snapshot,
        history,
    };
    fx.publish()?;
    println!("listening on {}", served.base);
    let (cancel, server) = (served.cancel, served.server);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(STEP);
    let started = tokio::time::Instant::now();
    let mut second = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            Some(cmd) = commands.recv() => {
                fx.sim.command(me, cmd.action, cmd.server);
            }
            _ = ticker.tick() => {
                let elapsed = started.elapsed().as_secs();
                if limit.is_some_and(|l| elapsed >= l) {
                    break;
                }
                while second < elapsed {
                    second += 1;
                    fx.act(second % CYCLE);
                }
                fx.sim.run_for(STEP);
                fx.publish()?;
            }
        }
    }
    cancel.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
