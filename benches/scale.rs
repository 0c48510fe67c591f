//! A 100-server site as real processes on loopback: `cargo bench --bench scale`.
//!
//! 100 live servers x 50 cameras (simulated agents, 10 ms activation) and 10 spread-servers
//! failover servers (room for 3 live servers each); live-NNN's buddies are fo-(NNN mod 10)
//! then fo-(NNN+1 mod 10). Two heartbeat paths, 200 ms heartbeats, 1 s failure timeout.
//! Prints:
//! - start-up: from nothing to every server up in every failover server's view;
//! - idle: RSS and CPU per role, datagrams per second on loopback;
//! - takeover, over several runs: 5 live servers killed at once (live-000, -010, -020, -030
//!   share first buddy fo-0, which has room for 3: one overflows to its second buddy fo-1;
//!   and live-055): kill to every resource active (the takeovers' `failover.completed`), when
//!   every concerned node agrees, and the busiest buddy's CPU during the takeover;
//! - and checks that nothing is unserved, nothing runs twice and capacity holds.
//!
//! Timings are printed, not asserted (docs/benchmarks.md); the checks panic.
//! `SCALE_RUNS=N` sets the number of takeover runs (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

const LIVE: usize = 100;
const FAILOVER: usize = 10;
const CAMERAS: usize = 50;
const KILLED: [usize; 5] = [0, 10, 20, 30, 55];

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn live(i: usize) -> String {
    format!("live-{i:03}")
}

fn fo(i: usize) -> String {
    format!("fo-{i}")
}

/// `buddygate_core_seconds_total` of a node.
async fn core_seconds(c: &Cluster, node: &str) -> f64 {
    let Ok(resp) = client()
        .get(format!("{}/metrics", c.api(node)))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("buddygate_core_seconds_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn get_auth(url: &str) -> Option<Value> {
    let resp = client().get(url).bearer_auth(TOKEN).send().await.ok()?;
    resp.json().await.ok()
}

/// CPU time (user + system) of a process, in clock ticks (10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the name: state is field 0, utime field 11, stime field 12.
    n(11) + n(12)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn udp_out() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    let i = head.split_whitespace().position(|h| h == "OutDatagrams");
    i.and_then(|i| vals.split_whitespace().nth(i)?.parse().ok())
        .unwrap_or(0)
}

fn pct(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1)]
}

/// Every failover server sees every peer up and done booting.
async fn all_up(c: &Cluster) -> Option<()> {
    for f in 0..FAILOVER {
        let v = get_auth(&format!("{}/api/v1/site", c.api(&fo(f)))).await?;
        let ok = v["servers"]
            .as_array()?
            .iter()
            .all(|s| s["known"] == false || (s["state"] == "up" && s["booting"] == false));
        if !ok || v["booting"] == true {
            return None;
        }
    }
    Some(())
}

/// Who each of `homes`' resources is active on, in `node`'s view.
async fn view(
    c: &Cluster,
    node: &str,
    homes: &BTreeSet<String>,
) -> Option<BTreeMap<String, String>> {
    let v = get_auth(&format!("{}/api/v1/resources", c.api(node))).await?;
    Some(
        v["resources"]
            .as_array()?
            .iter()
            .filter(|r| homes.contains(r["server"].as_str().unwrap_or("")))
            .map(|r| {
                let owner = if r["state"] == "active" {
                    r["owner"].as_str().unwrap_or("").to_string()
                } else {
                    String::new()
                };
                (r["id"].as_str().unwrap_or("").to_string(), owner)
            })
            .collect(),
    )
}

fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn time_ms(v: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(wall_ms(t))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("SCALE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut specs = Vec::new();
    for l in 0..LIVE {
        let buddies: &'static [&'static str] = Box::leak(
            vec![leak(fo(l % FAILOVER)), leak(fo((l + 1) % FAILOVER))].into_boxed_slice(),
        );
        specs.push(Spec {
            id: leak(live(l)),
            buddies,
            cameras: CAMERAS,
        });
    }
    for f in 0..FAILOVER {
        specs.push(Spec {
            id: leak(fo(f)),
            buddies: &[],
            cameras: 0,
        });
    }
    let mut c = Cluster::with_servers(
        "scale",
        &specs,
        SiteOptions {
            extra_resource_keys: "activation = \"10ms\"\nmonitor_interval = \"0s\"\n",
            extra_failover_keys: "max_servers = 3\n",
            failback_delay: "5s",
            ..SiteOptions::default()
        },
    );
    let started = Instant::now();
    c.start_all();
    eventually(Duration::from_secs(120), "every server up", || all_up(&c)).await;
    let startup = started.elapsed();
    println!(
        "scale: {LIVE} live x {CAMERAS} cameras, {FAILOVER} failover servers, {} processes",
        LIVE + FAILOVER
    );
    println!("start-up to every server up in every failover server's view: {startup:.2?}");

    // Idle: 10 s after a settling pause.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<(String, u32)> = c
        .servers
        .iter()
        .map(|s| (s.id.clone(), c.pid(&s.id)))
        .collect();
    let before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let udp0 = udp_out();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = t0.elapsed().as_secs_f64();
    let udp = (udp_out() - udp0) as f64 / secs;
    let mut by_role: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for ((id, pid), b) in pids.iter().zip(&before) {
        let cpu = (cpu_ticks(*pid) - b) as f64 / 100.0 / secs * 100.0;
        let role = if id.starts_with("fo-") {
            "failover"
        } else {
            "live"
        };
        let e = by_role.entry(role).or_default();
        e.0.push(cpu);
        e.1.push(rss_mib(*pid));
    }
    for (role, (cpu, rss)) in &by_role {
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        println!(
            "idle {role}: CPU avg {:.2}% max {:.2}%, RSS avg {:.1} MiB max {:.1} MiB ({} processes)",
            avg(cpu),
            max(cpu),
            avg(rss),
            max(rss),
            cpu.len()
        );
    }
    println!("idle datagrams: {udp:.0}/s on loopback, all nodes");
    if let Some(hold) = std::env::var("SCALE_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Time to profile an idle node: `perf record -p PID`.
        println!("holding {hold} s; fo-0 is pid {}", c.pid(&fo(0)));
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }

    let killed: BTreeSet<String> = KILLED.iter().map(|&l| live(l)).collect();
    let concerned: Vec<String> = {
        let mut s = BTreeSet::new();
        for &l in &KILLED {
            s.insert(fo(l % FAILOVER));
            s.insert(fo((l + 1) % FAILOVER));
        }
        s.into_iter().collect()
    };
    let mut done_ms = Vec::new();
    let mut agree_ms = Vec::new();
    let mut busiest = Vec::new();
    let mut busiest_core: Vec<f64> = Vec::new();
    for run in 0..runs {
        let fo_pids: Vec<(String, u32)> = concerned.iter().map(|f| (f.clone(), c.pid(f))).collect();
        let cpu0: Vec<u64> = fo_pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
        let mut core0 = Vec::new();
        for f in &concerned {
            core0.push(core_seconds(&c, f).await);
        }
        let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
        for f in &concerned {
            let v = get_auth(&format!("{}/api/v1/events?after=0&limit=100000", c.api(f))).await;
            let last = v
                .and_then(|v| v["events"].as_array().and_then(|e| e.last().cloned()))
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(0);
            seqs.insert(f.clone(), last);
        }
        let kill_wall = SystemTime::now();
        let kill = Instant::now();
        for k in &killed {
            c.kill9(k);
        }
        // Every killed server's failover.completed, from the events of the concerned nodes.
        let completed = eventually(
            Duration::from_secs(15),
            "every takeover completed",
            || async {
                let mut last: Option<u64> = Some(0);
                let mut resources: BTreeSet<String> = BTreeSet::new();
                for f in &concerned {
                    let v = get_auth(&format!(
                        "{}/api/v1/events?after={}&limit=100000",
                        c.api(f),
                        seqs[f]
                    ))
                    .await?;
                    for e in v["events"].as_array()? {
                        if e["type"] == "buddygate.failover.completed"
                            && killed.contains(e["data"]["server"]["id"].as_str().unwrap_or(""))
                        {
                            for r in e["data"]["resources"].as_array()? {
                                resources.insert(r["id"].as_str()?.to_string());
                            }
                            last = Some(last?.max(time_ms(&e["time"])?));
                        }
                    }
                }
                (resources.len() == killed.len() * CAMERAS).then_some(last?)
            },
        )
        .await;
        let done = Duration::from_millis(completed.saturating_sub(wall_ms(kill_wall)));
        // When every concerned node (each killed server's two buddies) agrees on who serves
        // each of its resources.
        let agreed = eventually(Duration::from_secs(15), "concerned nodes agree", || async {
            let mut truth: BTreeMap<String, String> = BTreeMap::new();
            for &l in &KILLED {
                let home: BTreeSet<String> = [live(l)].into();
                let a = view(&c, &fo(l % FAILOVER), &home).await?;
                let b = view(&c, &fo((l + 1) % FAILOVER), &home).await?;
                let full = a.len() == CAMERAS && a.values().all(|o| !o.is_empty());
                if !full || a != b {
                    return None;
                }
                truth.extend(a);
            }
            Some(truth)
        })
        .await;
        let agree = kill.elapsed();
        let mut core = Vec::new();
        for (f, before) in concerned.iter().zip(&core0) {
            core.push((f.clone(), (core_seconds(&c, f).await - before) * 1000.0));
        }
        let (cf, cc) = core
            .iter()
            .cloned()
            .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let cpu: Vec<(String, f64)> = fo_pids
            .iter()
            .zip(&cpu0)
            .map(|((f, p), b)| (f.clone(), (cpu_ticks(*p) - b) as f64 * 10.0))
            .collect();
        let (bf, bc) = cpu
            .iter()
            .cloned()
            .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
        // Checks: every resource on one failover server, capacity held.
        let mut homes_on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, owner) in &agreed {
            assert!(owner.starts_with("fo-"), "run {run}: {id} on {owner}");
            let home = id.rsplit_once("-cam-").map_or("", |(h, _)| h).to_string();
            homes_on.entry(owner.clone()).or_default().insert(home);
        }
        for (f, homes) in &homes_on {
            assert!(
                homes.len() <= 3,
                "run {run}: {f} serves {homes:?}, over max_servers"
            );
        }
        for f in &concerned {
            let v = view(&c, f, &killed).await.expect("view");
            let mine = v.values().filter(|o| *o == f).count();
            let truth = agreed.values().filter(|o| *o == f).count();
            assert_eq!(mine, truth, "run {run}: {f} disagrees about what it serves");
        }
        println!(
            "run {run}: all {} resources active {done:?} after the kill; concerned nodes agree by {agree:.2?} (polled); \
             busiest buddy {bf} {bc:.0} ms CPU (process), core {cf} {cc:.1} ms; served by {:?}",
            killed.len() * CAMERAS,
            homes_on
                .iter()
                .map(|(f, h)| format!("{f}: {}", h.len()))
                .collect::<Vec<_>>()
        );
        done_ms.push(done);
        agree_ms.push(agree);
        busiest.push(bc);
        busiest_core.push(cc);
        // Bring them back and let them fail back.
        for k in &killed {
            c.start(k);
        }
        eventually(Duration::from_secs(40), "failed back", || async {
            let v = view(&c, &fo(0), &killed).await?;
            v.iter()
                .all(|(id, o)| id.starts_with(o.as_str()))
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "takeover of 5 live servers (one overflowing to its second buddy), {runs} runs: \
         all active p50 {:?} max {:?}; agreement p50 {:.2?} max {:.2?}; busiest buddy CPU max {:.0} ms \
         (process), core max {:.1} ms",
        pct(&done_ms, 50),
        pct(&done_ms, 100),
        pct(&agree_ms, 50),
        pct(&agree_ms, 100),
        busiest.iter().cloned().fold(0.0, f64::max),
        busiest_core.iter().cloned().fold(0.0, f64::max)
    );
}
