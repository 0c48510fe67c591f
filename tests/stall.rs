//! Stalls and floods with real `buddygate run` processes on loopback: a failover node stopped
//! (SIGSTOP) for twice the failure timeout, a live node whose disk stalls for 2 s, and a flood of
//! junk datagrams on every heartbeat path. None of them may fail over a server that kept
//! heartbeating.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

async fn all_owned_by(c: &Cluster, view_from: &str, home: &str, owner: &str) -> Option<()> {
    let v = owners(&c.api(view_from), home).await?;
    (!v.is_empty() && v.iter().all(|(o, _, _, s)| o == owner && s == "active")).then_some(())
}

async fn events_of(c: &Cluster, node: &str, ty: &str) -> Vec<Value> {
    get(&format!(
        "{}/api/v1/events?after=0&limit=10000",
        c.api(node)
    ))
    .await
    .and_then(|v| v["events"].as_array().cloned())
    .unwrap_or_default()
    .into_iter()
    .filter(|e| e["type"] == ty)
    .collect()
}

fn signal(pid: u32, sig: &str) {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_node_stopped_for_twice_the_failure_timeout_takes_nothing_over() {
    let mut c = Cluster::new("stall-fo", 2, 4, SiteOptions::default());
    c.start_all();
    for l in ["live-1", "live-2"] {
        eventually(SECS(10), "home", || all_owned_by(&c, "fo-1", l, l)).await;
    }
    let pid = c.pid("fo-1");
    signal(pid, "-STOP");
    tokio::time::sleep(SECS(2)).await;
    signal(pid, "-CONT");
    tokio::time::sleep(SECS(3)).await;
    // Before: queued datagrams carried no arrival time and silence was judged before they were
    // read, so fo-1 took over both healthy servers when it resumed.
    assert!(
        events_of(&c, "fo-1", "buddygate.failover.started")
            .await
            .is_empty()
    );
    assert!(
        events_of(&c, "fo-1", "buddygate.server.down")
            .await
            .is_empty()
    );
    for l in ["live-1", "live-2"] {
        assert!(all_owned_by(&c, "fo-1", l, l).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_whose_disk_stalls_two_seconds_keeps_heartbeating() {
    let mut c = Cluster::new("stall-disk", 2, 4, SiteOptions::default());
    c.start_with_env("live-1", &[("BUDDYGATE_FAULT_INJECTION", "1")]);
    c.start("live-2");
    c.start("fo-1");
    for l in ["live-1", "live-2"] {
        eventually(SECS(10), "home", || all_owned_by(&c, "fo-1", l, l)).await;
    }
    // The next write of live-1's store waits while this file exists.
    let stall = c.data_dir("live-1").join("stall-store");
    std::fs::write(&stall, "").unwrap();
    // An operator command makes live-1 write (the hold it is told of).
    let resp = client()
        .post(format!(
            "{}/api/v1/servers/live-2/failover",
            c.api("live-1")
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    eventually(SECS(5), "live-2 failed over", || {
        all_owned_by(&c, "fo-1", "live-2", "fo-1")
    })
    .await;
    tokio::time::sleep(SECS(2)).await;
    std::fs::remove_file(&stall).unwrap();
    tokio::time::sleep(SECS(2)).await;
    // Before: claims and events were fsynced on the core's task before heartbeats went out,
    // so a slow disk silenced live-1 and fo-1 took it over.
    let downs = events_of(&c, "fo-1", "buddygate.server.down").await;
    assert!(
        downs.iter().all(|e| e["data"]["server"]["id"] != "live-1"),
        "{downs:?}"
    );
    let paths = events_of(&c, "fo-1", "buddygate.path.down").await;
    assert!(paths.is_empty(), "{paths:?}");
    assert!(all_owned_by(&c, "fo-1", "live-1", "live-1").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_on_every_path_moves_nothing_and_stays_small() {
    let mut c = Cluster::new("flood", 1, 4, SiteOptions::default());
    c.start_all();
    eventually(SECS(10), "home", || {
        all_owned_by(&c, "fo-1", "live-1", "live-1")
    })
    .await;
    let targets = c.servers[c.index("fo-1")].heartbeat.clone();
    let pid = c.pid("fo-1");
    let before = rss_kib(pid);
    let flood = std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.3.1:0").unwrap();
        let junk: Vec<Vec<u8>> = (0..64u8)
            .map(|i| {
                let mut d = b"BG\x03".to_vec();
                d.extend((0..(i as usize * 997 % 60_000 + 40)).map(|j| (j as u8) ^ i));
                d
            })
            .collect();
        let until = Instant::now() + SECS(4);
        let mut sent = 0u64;
        while Instant::now() < until {
            for (i, d) in junk.iter().enumerate() {
                let _ = sock.send_to(d, targets[i % targets.len()]);
                sent += 1;
            }
        }
        sent
    });
    let mut peak = before;
    while !flood.is_finished() {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = flood.join().unwrap();
    tokio::time::sleep(SECS(2)).await;
    eprintln!("junk flood: {sent} datagrams, RSS {before} KiB before, {peak} KiB peak");
    assert!(
        sent > 10_000,
        "the flood was too small to mean anything: {sent}"
    );
    assert!(peak < 50 * 1024, "RSS {peak} KiB during the flood");
    // Before: every datagram up to 65,000 bytes was MAC-checked; the loop fell behind, the
    // socket buffer filled with junk and the kernel dropped live-1's heartbeats with it.
    let flaps = events_of(&c, "fo-1", "buddygate.path.down").await;
    assert!(flaps.is_empty(), "{flaps:?}");
    assert!(
        events_of(&c, "fo-1", "buddygate.server.down")
            .await
            .is_empty()
    );
    assert!(
        events_of(&c, "fo-1", "buddygate.failover.started")
            .await
            .is_empty()
    );
    assert!(all_owned_by(&c, "fo-1", "live-1", "live-1").await.is_some());
    let metrics = client()
        .get(format!("{}/metrics", c.api("fo-1")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("buddygate_datagrams_re"))
    {
        eprintln!("junk flood: {l}");
    }
    assert!(metrics.contains("reason=\"hmac\"") || metrics.contains("reason=\"malformed\""));
}
