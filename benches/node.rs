//! Real processes on loopback, default timings: `cargo bench --bench node`.
//! - kill -9 of a live server with 50 cameras -> all 50 active on the buddy (20 runs);
//! - SIGTERM -> takeover complete (20 runs);
//! - idle daemon RSS and CPU with 5 buddies.
//!
//! Prints figures for docs/benchmarks.md; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

async fn all_on(c: &Cluster, home: &str, owner: &str) -> Option<()> {
    let v = owners(&c.api(owner), home).await?;
    (!v.is_empty() && v.iter().all(|(o, _, _, s)| o == owner && s == "active")).then_some(())
}

async fn ready(c: &mut Cluster) {
    c.start_all();
    eventually(Duration::from_secs(15), "site up", || {
        all_on(c, "live-1", "live-1")
    })
    .await;
    eventually(Duration::from_secs(15), "fo-1 sees it", || async {
        let v = owners(&c.api("fo-1"), "live-1").await?;
        v.iter()
            .all(|(o, _, _, s)| o == "live-1" && s == "active")
            .then_some(())
    })
    .await;
    // Let the paths settle.
    tokio::time::sleep(Duration::from_millis(600)).await;
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1)]
}

async fn takeover_runs(runs: usize, sigterm: bool) -> (Vec<Duration>, Vec<u64>) {
    let mut times = Vec::new();
    let mut reported = Vec::new();
    for _ in 0..runs {
        let mut c = Cluster::new(
            "bench",
            1,
            50,
            SiteOptions {
                extra_resource_keys: "activation = \"10ms\"\nmonitor_interval = \"0s\"\n",
                ..SiteOptions::default()
            },
        );
        ready(&mut c).await;
        let t0 = Instant::now();
        if sigterm {
            let pid = c.pid("live-1");
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        } else {
            c.kill9("live-1");
        }
        eventually(Duration::from_secs(10), "takeover", || {
            all_on(&c, "live-1", "fo-1")
        })
        .await;
        times.push(t0.elapsed());
        let events = get(&format!(
            "{}/api/v1/events?after=0&limit=1000",
            c.api("fo-1")
        ))
        .await
        .unwrap_or_default();
        reported.extend(
            events["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| {
                    (e["type"] == "buddygate.failover.completed")
                        .then(|| e["data"]["takeover_ms"].as_u64())
                        .flatten()
                }),
        );
        if sigterm {
            c.term_wait("live-1");
        }
    }
    (times, reported)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let (mut t, rep) = takeover_runs(runs, false).await;
    let (p50, p99, max) = (pct(&mut t, 50), pct(&mut t, 99), *t.iter().max().unwrap());
    println!(
        "kill -9, 50 cameras, {runs} runs: all active on the buddy after p50 {} ms, p99 {} ms, max {} ms \
         (from the kill, polled every 20 ms); failover.completed takeover_ms (from the last heartbeat) p50 {} ms",
        p50.as_millis(),
        p99.as_millis(),
        max.as_millis(),
        {
            let mut r = rep.clone();
            r.sort();
            r.get(r.len() / 2).copied().unwrap_or(0)
        }
    );
    let (mut t, _) = takeover_runs(runs, true).await;
    println!(
        "SIGTERM, 50 cameras, {runs} runs: all active on the buddy after p50 {} ms, p99 {} ms",
        pct(&mut t, 50).as_millis(),
        pct(&mut t, 99).as_millis()
    );

    let mut c = Cluster::new(
        "idle",
        1,
        50,
        SiteOptions {
            failover: 5,
            extra_resource_keys: "activation = \"10ms\"\nmonitor_interval = \"5s\"\n",
            ..SiteOptions::default()
        },
    );
    ready(&mut c).await;
    let pid = c.pid("live-1");
    let hz = 100.0; // USER_HZ on Linux
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = (cpu_ticks(pid) - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle live server with 5 buddies and 50 cameras: RSS {} MB, CPU {:.2}% over 30 s",
        rss_kb(pid) / 1024,
        cpu
    );
}
