//! The life of a site with real `buddygate run` processes on loopback: a power cut after a
//! failback, a failed stop, a daemon-only crash while the VMS keeps recording, maintenance
//! after a manual failover, replayed heartbeats after a restart, and overflow to a second
//! buddy. The resources are recorded by `tests/fixtures/agents/recorder.sh`, whose
//! "recordings" are processes that outlive the daemon, as a VMS does: the ground truth is
//! which nodes really record.

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn recorder_keys() -> &'static str {
    let path = format!(
        "agent = \"exec\"\ncommand = \"{}/tests/fixtures/agents/recorder.sh\"\n\
         monitor_interval = \"500ms\"\nretries = 0\n",
        env!("CARGO_MANIFEST_DIR")
    );
    Box::leak(path.into_boxed_str())
}

/// The recordings of one site: which nodes really record what (from the agent's pid files).
struct Recordings {
    site: String,
}

impl Recordings {
    fn new(site: &str) -> Self {
        let r = Self { site: site.into() };
        r.cleanup();
        r
    }

    fn dir() -> PathBuf {
        std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    }

    fn files(&self, suffix: &str) -> Vec<(String, PathBuf)> {
        let prefix = format!("buddygate-rec.{}.", self.site);
        std::fs::read_dir(Self::dir())
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let rest = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(suffix)?
                    .to_string();
                Some((rest, e.path()))
            })
            .collect()
    }

    /// (node, resource) pairs whose recording process is alive.
    fn live(&self) -> BTreeSet<(String, String)> {
        self.files(".pid")
            .into_iter()
            .filter(|(_, p)| {
                let pid = std::fs::read_to_string(p).unwrap_or_default();
                std::process::Command::new("kill")
                    .args(["-0", pid.trim()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .filter_map(|(rest, _)| {
                let (node, resource) = rest.split_once('.')?;
                Some((node.to_string(), resource.to_string()))
            })
            .collect()
    }

    /// Nodes recording `resource`.
    fn of(&self, resource: &str) -> Vec<String> {
        self.live()
            .into_iter()
            .filter(|(_, r)| r == resource)
            .map(|(n, _)| n)
            .collect()
    }

    /// Whether every camera of `home` (`cameras` of them) is recorded by `node` alone.
    fn all_on(&self, home: &str, cameras: usize, node: &str) -> bool {
        let live = self.live();
        (1..=cameras).all(|i| {
            let r = format!("{home}-cam-{i:02}");
            live.iter()
                .filter(|(_, x)| *x == r)
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                == vec![node]
        })
    }

    fn fail_stop(&self, node: &str, resource: &str, fail: bool) {
        let path = Self::dir().join(format!(
            "buddygate-rec.{}.{node}.{resource}.fail-stop",
            self.site
        ));
        if fail {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    fn cleanup(&self) {
        for (_, p) in self.files(".pid").into_iter().chain(self.files(".standby")) {
            if let Ok(pid) = std::fs::read_to_string(&p) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
            let _ = std::fs::remove_file(p);
        }
        for suffix in [".fail-stop", ".cover", ".merge"] {
            for (_, p) in self.files(suffix) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Kills `node`'s recordings with -9: its machine died.
    fn kill_node(&self, node: &str) {
        let prefix = format!("{node}.");
        for (rest, p) in self.files(".pid") {
            if rest.starts_with(&prefix)
                && let Ok(pid) = std::fs::read_to_string(&p)
            {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status();
            }
        }
    }

    /// (node, resource) pairs whose hot standby process is alive.
    fn standing_by(&self) -> BTreeSet<(String, String)> {
        self.files(".standby")
            .into_iter()
            .filter(|(_, p)| {
                let pid = std::fs::read_to_string(p).unwrap_or_default();
                std::process::Command::new("kill")
                    .args(["-0", pid.trim()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .filter_map(|(rest, _)| {
                let (node, resource) = rest.split_once('.')?;
                Some((node.to_string(), resource.to_string()))
            })
            .collect()
    }

    /// What `node`'s agent wrote for `resource` into the file with `suffix` (`.cover`,
    /// `.merge`).
    fn written(&self, node: &str, resource: &str, suffix: &str) -> String {
        let path = Self::dir().join(format!(
            "buddygate-rec.{}.{node}.{resource}{suffix}",
            self.site
        ));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Recordings {
    fn drop(&mut self) {
        self.cleanup();
    }
}

async fn all_owned_by(c: &Cluster, view_from: &str, home: &str, owner: &str) -> Option<Vec<u64>> {
    let v = owners(&c.api(view_from), home).await?;
    (!v.is_empty() && v.iter().all(|(o, _, _, s)| o == owner && s == "active"))
        .then(|| v.iter().map(|o| o.2).collect())
}

async fn events(c: &Cluster, node: &str) -> Vec<Value> {
    get(&format!(
        "{}/api/v1/events?after=0&limit=10000",
        c.api(node)
    ))
    .await
    .and_then(|v| v["events"].as_array().cloned())
    .unwrap_or_default()
}

async fn count_events(c: &Cluster, node: &str, ty: &str) -> usize {
    events(c, node)
        .await
        .iter()
        .filter(|e| e["type"] == ty)
        .count()
}

async fn post(c: &Cluster, node: &str, path: &str) {
    let resp = client()
        .post(format!("{}/api/v1/{path}", c.api(node)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

fn signal(pid: u32, sig: &str) {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_1_after_a_failback_and_a_power_cut_the_buddy_alone_claims_above_every_epoch() {
    let mut c = Cluster::new("lc-powercut", 1, 4, SiteOptions::default());
    c.start_all();
    eventually(SECS(10), "live-1 home", || {
        all_owned_by(&c, "fo-1", "live-1", "live-1")
    })
    .await;
    c.kill9("live-1");
    let taken = eventually(SECS(5), "takeover", || {
        all_owned_by(&c, "fo-1", "live-1", "fo-1")
    })
    .await;
    c.start("live-1");
    let back = eventually(SECS(10), "failback", || {
        all_owned_by(&c, "live-1", "live-1", "live-1")
    })
    .await;
    assert!(back.iter().zip(&taken).all(|(b, t)| b > t));
    // fo-1 learns the failback's epoch (and a moment to store it); then the power goes, and
    // only fo-1 comes back.
    eventually(SECS(5), "fo-1 sees the failback", || async {
        (all_owned_by(&c, "fo-1", "live-1", "live-1").await? == back).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.kill9("live-1");
    c.kill9("fo-1");
    c.start("fo-1");
    let after = eventually(SECS(8), "fo-1 alone takes over", || {
        all_owned_by(&c, "fo-1", "live-1", "fo-1")
    })
    .await;
    let newest = back.iter().max().unwrap();
    // Before the fix: 398, below the 399 every consumer was told.
    assert!(
        after.iter().all(|e| e > newest),
        "fo-1 took over at {after:?}, below {newest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_a_failed_stop_keeps_the_claim_is_retried_reported_and_resolves_only_after_it() {
    let rec = Recordings::new("lc-stop");
    let mut c = Cluster::new(
        "lc-stop",
        1,
        3,
        SiteOptions {
            extra_resource_keys: recorder_keys(),
            failback_delay: "30s",
            ..SiteOptions::default()
        },
    );
    c.start_all();
    eventually(SECS(10), "recording at home", || async {
        rec.all_on("live-1", 3, "live-1").then_some(())
    })
    .await;
    // A stalled live-1 (SIGSTOP): fo-1 takes over; both record (its VMS never stopped).
    let pid = c.pid("live-1");
    signal(pid, "-STOP");
    eventually(SECS(5), "fo-1 records too", || async {
        (rec.of("live-1-cam-01") == ["fo-1", "live-1"]).then_some(())
    })
    .await;
    // live-1 resumes and loses the conflict; its stop of cam-01 fails.
    rec.fail_stop("live-1", "live-1-cam-01", true);
    signal(pid, "-CONT");
    eventually(SECS(5), "cam-02 stopped on live-1", || async {
        (rec.of("live-1-cam-02") == ["fo-1"]).then_some(())
    })
    .await;
    tokio::time::sleep(SECS(3)).await;
    assert_eq!(rec.of("live-1-cam-01"), ["fo-1", "live-1"]);
    let resolved_cam01 = |evs: &[Value]| {
        evs.iter()
            .filter(|e| {
                e["type"] == "buddygate.ownership.resolved"
                    && e["data"]["resource"]["id"] == "live-1-cam-01"
            })
            .count()
    };
    // Before the fix both nodes said resolved, while both recorded.
    for node in ["live-1", "fo-1"] {
        assert_eq!(resolved_cam01(&events(&c, node).await), 0, "{node}");
    }
    let evs = events(&c, "live-1").await;
    let failed: Vec<_> = evs
        .iter()
        .filter(|e| {
            e["type"] == "buddygate.resource.failed"
                && e["data"]["resource"]["id"] == "live-1-cam-01"
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("stop failed")
    );
    let view = owners(&c.api("live-1"), "live-1").await.unwrap();
    assert!(view.iter().all(|o| o.0 == "fo-1"), "{view:?}");
    // The stop works again: the retry (1 s, 2 s, 4 s ...) ends it, then it is resolved.
    rec.fail_stop("live-1", "live-1-cam-01", false);
    eventually(SECS(12), "cam-01 stopped on live-1", || async {
        (rec.of("live-1-cam-01") == ["fo-1"]).then_some(())
    })
    .await;
    eventually(SECS(3), "ownership.resolved for cam-01", || async {
        (resolved_cam01(&events(&c, "live-1").await) >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_4a_a_daemon_only_crash_stops_what_the_buddy_took_meanwhile() {
    let rec = Recordings::new("lc-daemon");
    let mut c = Cluster::new(
        "lc-daemon",
        1,
        4,
        SiteOptions {
            extra_resource_keys: recorder_keys(),
            failback_delay: "30s",
            ..SiteOptions::default()
        },
    );
    c.start_all();
    eventually(SECS(10), "recording at home", || async {
        rec.all_on("live-1", 4, "live-1").then_some(())
    })
    .await;
    // kill -9 of buddygate only: the VMS on live-1 keeps recording.
    c.kill9("live-1");
    eventually(SECS(5), "fo-1 records too", || async {
        (rec.live().len() == 8).then_some(())
    })
    .await;
    c.start("live-1");
    let restarted = Instant::now();
    // Before the fix live-1 released its claims without a stop: both recorded for good.
    eventually(SECS(6), "live-1 stopped its copies", || async {
        rec.all_on("live-1", 4, "fo-1").then_some(())
    })
    .await;
    assert!(restarted.elapsed() < SECS(4));
    let view = eventually(SECS(3), "live-1 agrees", || {
        all_owned_by(&c, "live-1", "live-1", "fo-1")
    })
    .await;
    assert!(view.iter().all(|&e| e > 199));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_5_a_manual_failover_survives_a_maintenance_reboot_until_failback() {
    let mut c = Cluster::new(
        "lc-hold",
        1,
        4,
        SiteOptions {
            failback_delay: "2s",
            ..SiteOptions::default()
        },
    );
    c.start_all();
    eventually(SECS(10), "home", || {
        all_owned_by(&c, "fo-1", "live-1", "live-1")
    })
    .await;
    post(&c, "fo-1", "servers/live-1/failover").await;
    let held = eventually(SECS(3), "failed over", || {
        all_owned_by(&c, "fo-1", "live-1", "fo-1")
    })
    .await;
    // Reboot live-1 for maintenance; auto failback must not undo the operator's failover.
    c.kill9("live-1");
    tokio::time::sleep(SECS(2)).await;
    c.start("live-1");
    let start = Instant::now();
    while start.elapsed() < SECS(12) {
        let v = all_owned_by(&c, "fo-1", "live-1", "fo-1").await;
        assert_eq!(v.as_ref(), Some(&held), "the owner moved after the reboot");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Before the fix: 11 moves and 408 ownership.conflict events on each node in 20 s.
    for node in ["live-1", "fo-1"] {
        assert_eq!(
            count_events(&c, node, "buddygate.ownership.conflict").await,
            0,
            "{node}"
        );
    }
    let site = get(&format!("{}/api/v1/site", c.api("live-1")))
        .await
        .unwrap();
    let me = site["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "live-1")
        .unwrap()
        .clone();
    assert_eq!(me["state"], "leaving", "{me}");
    post(&c, "live-1", "servers/live-1/failback").await;
    eventually(SECS(3), "failed back", || {
        all_owned_by(&c, "fo-1", "live-1", "live-1")
    })
    .await;
}

/// Binds `addrs` (fo-1's heartbeat addresses, while fo-1 is down) and keeps what arrives.
fn capture(addrs: &[std::net::SocketAddr], for_: Duration) -> Vec<(usize, Vec<u8>)> {
    let socks: Vec<UdpSocket> = addrs.iter().map(|a| UdpSocket::bind(a).unwrap()).collect();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut got = Vec::new();
    let until = Instant::now() + for_;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        for (i, s) in socks.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                got.push((i, buf[..n].to_vec()));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_7_heartbeats_replayed_to_a_restarted_buddy_do_not_fail_over_a_healthy_server() {
    let mut c = Cluster::new("lc-replay", 1, 4, SiteOptions::default());
    c.start_all();
    eventually(SECS(10), "home", || {
        all_owned_by(&c, "fo-1", "live-1", "live-1")
    })
    .await;
    tokio::time::sleep(SECS(1)).await;
    // fo-1 goes down; an attacker on the LAN listens on its addresses while the operator holds
    // live-1 (it says "leaving") and then releases it.
    c.kill9("fo-1");
    let addrs = c.servers[c.index("fo-1")].heartbeat.clone();
    let capturing = std::thread::spawn(move || capture(&addrs, SECS(3)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    post(&c, "live-1", "servers/live-1/failover").await;
    tokio::time::sleep(SECS(1)).await;
    post(&c, "live-1", "servers/live-1/failback").await;
    let captured = capturing.join().unwrap();
    assert!(captured.len() > 10, "captured {} datagrams", captured.len());
    eventually(SECS(5), "live-1 home again", || {
        all_owned_by(&c, "live-1", "live-1", "live-1")
    })
    .await;
    // fo-1 restarts; the captured datagrams (authentic, "leaving" among them) are replayed.
    c.start("fo-1");
    let sock = UdpSocket::bind("127.0.1.250:0").unwrap();
    let targets = c.servers[c.index("fo-1")].heartbeat.clone();
    let started = Instant::now();
    while started.elapsed() < SECS(3) {
        for (path, bytes) in &captured {
            let _ = sock.send_to(bytes, targets[*path]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SECS(2)).await;
    // Before the fix fo-1 started a takeover of the healthy live-1 (and told every consumer).
    assert_eq!(
        count_events(&c, "fo-1", "buddygate.failover.started").await,
        0
    );
    assert!(all_owned_by(&c, "fo-1", "live-1", "live-1").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_9_overflow_reaches_a_second_buddy_that_does_not_serve_the_first_ones_servers() {
    let specs = [
        Spec {
            id: "live-1",
            buddies: &["fo-1"],
            cameras: 2,
        },
        Spec {
            id: "live-2",
            buddies: &["fo-1"],
            cameras: 2,
        },
        Spec {
            id: "live-3",
            buddies: &["fo-1", "fo-2"],
            cameras: 2,
        },
        Spec {
            id: "live-4",
            buddies: &["fo-2"],
            cameras: 2,
        },
        Spec {
            id: "fo-1",
            buddies: &[],
            cameras: 0,
        },
        Spec {
            id: "fo-2",
            buddies: &[],
            cameras: 0,
        },
    ];
    let mut c = Cluster::with_servers(
        "lc-overflow",
        &specs,
        SiteOptions {
            extra_failover_keys: "max_servers = 2\n",
            ..SiteOptions::default()
        },
    );
    c.start_all();
    for l in ["live-1", "live-2", "live-3"] {
        eventually(SECS(10), "home", || all_owned_by(&c, "fo-1", l, l)).await;
    }
    // live-1 and live-2 fill fo-1; live-3 must overflow to fo-2, which never hears them.
    c.kill9("live-1");
    c.kill9("live-2");
    eventually(SECS(5), "fo-1 full", || async {
        all_owned_by(&c, "fo-1", "live-1", "fo-1").await?;
        all_owned_by(&c, "fo-1", "live-2", "fo-1").await
    })
    .await;
    let killed = Instant::now();
    c.kill9("live-3");
    // Before the fix live-3's cameras were never taken over, and nothing said so.
    eventually(SECS(5), "live-3 on fo-2", || {
        all_owned_by(&c, "fo-2", "live-3", "fo-2")
    })
    .await;
    assert!(killed.elapsed() < SECS(3));
    for node in ["fo-1", "fo-2"] {
        assert_eq!(
            count_events(&c, node, "buddygate.resource.unplaced").await,
            0
        );
    }
    // And when no buddy has room, it is reported: fo-2 is full too once live-4 goes.
    c.kill9("live-4");
    eventually(SECS(5), "live-4 on fo-2", || {
        all_owned_by(&c, "fo-2", "live-4", "fo-2")
    })
    .await;
    c.kill9("fo-2");
    let unplaced = eventually(SECS(5), "resource.unplaced from fo-1", || async {
        let evs = events(&c, "fo-1").await;
        evs.into_iter().find(|e| {
            e["type"] == "buddygate.resource.unplaced" && e["data"]["server"]["id"] == "live-3"
        })
    })
    .await;
    let ids: Vec<&str> = unplaced["data"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["live-3-cam-01", "live-3-cam-02"]);
    let view = owners(&c.api("fo-1"), "live-3").await.unwrap();
    assert!(view.iter().all(|o| o.3 == "unassigned"), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_with_no_buddy_up_stops_its_recordings_at_once() {
    // No buddy runs: nobody can take anything over, so live-1 does not wait out its grace; it
    // stops its recordings itself instead of leaving them running.
    let rec = Recordings::new("lc-grace");
    let mut c = Cluster::new(
        "lc-grace",
        1,
        6,
        SiteOptions {
            extra_resource_keys: recorder_keys(),
            ..SiteOptions::default()
        },
    );
    c.start_with(
        "live-1",
        &["--shutdown-grace", "30s", "--agent-concurrency", "2"],
    );
    eventually(SECS(10), "live-1 records its cameras", || async {
        rec.all_on("live-1", 6, "live-1").then_some(())
    })
    .await;
    let t0 = Instant::now();
    let status = c.term("live-1");
    let took = t0.elapsed();
    assert!(status.success(), "live-1 exited with {status:?}");
    assert!(rec.live().is_empty(), "left running: {:?}", rec.live());
    assert!(
        took < SECS(10),
        "live-1 waited for a hand-over nobody could make: {took:?}"
    );
    let logs = c.logs("live-1");
    assert!(
        logs.contains("No buddy is up to take over; stopping what is left"),
        "{logs}"
    );
    assert!(logs.contains("Every resource and hot standby of this node is stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_standby_is_prepared_on_the_first_buddy_covers_the_takeover_and_is_released() {
    let rec = Recordings::new("lc-standby");
    let keys = format!("{}standby = true\n", recorder_keys());
    let mut c = Cluster::new(
        "lc-standby",
        1,
        3,
        SiteOptions {
            extra_resource_keys: Box::leak(keys.into_boxed_str()),
            failback: "manual",
            ..SiteOptions::default()
        },
    );
    c.start_all();
    eventually(SECS(10), "live-1 records, fo-1 stands by", || async {
        let by: Vec<_> = rec.standing_by().into_iter().collect();
        let seen = all_owned_by(&c, "fo-1", "live-1", "live-1").await.is_some();
        // fo-1's API says it stands by (its next snapshot after the agent's standby).
        let fo = get(&format!("{}/api/v1/resources", c.api("fo-1"))).await?;
        let says = fo["resources"]
            .as_array()?
            .iter()
            .all(|r| r["standby"] == true);
        (seen
            && says
            && rec.all_on("live-1", 3, "live-1")
            && by.len() == 3
            && by.iter().all(|(n, _)| n == "fo-1"))
        .then_some(())
    })
    .await;
    // Record a while: the takeover covers from a heartbeat interval before live-1 was last
    // heard, well after fo-1 saw it record.
    tokio::time::sleep(SECS(1)).await;
    let killed = std::time::SystemTime::now();
    c.kill9("live-1");
    rec.kill_node("live-1");
    eventually(SECS(5), "fo-1 records", || async {
        rec.all_on("live-1", 3, "fo-1").then_some(())
    })
    .await;
    assert!(
        rec.standing_by().is_empty(),
        "the start took the standby over"
    );
    for i in 1..=3 {
        let cam = format!("live-1-cam-{i:02}");
        let cover = rec.written("fo-1", &cam, ".cover");
        let cover = cover.trim();
        assert!(!cover.ends_with("cold"), "{cam} started cold: {cover}");
        let at = humantime::parse_rfc3339(cover).unwrap_or_else(|e| panic!("{cover}: {e}"));
        // The home server's last heartbeat less an interval: before the kill, by at most
        // two intervals (and some scheduling).
        let before = killed
            .duration_since(at)
            .expect("cover_from is before the kill");
        assert!(before <= Duration::from_millis(700), "{cam}: {before:?}");
    }
    // Back home: fo-1 stops recording and stands by again; its clean stop releases that.
    c.start("live-1");
    tokio::time::sleep(SECS(3)).await;
    post(&c, "fo-1", "servers/live-1/failback").await;
    eventually(SECS(10), "home again, fo-1 standing by", || async {
        let by = rec.standing_by();
        (rec.all_on("live-1", 3, "live-1") && by.len() == 3).then_some(())
    })
    .await;
    // Where the footage is, as fo-1 (up all along) saw it: live-1, fo-1 from the instant its
    // start covered from, live-1 again; and live-1 merged fo-1's interval after the failback.
    let ms = |t: &str| {
        humantime::parse_rfc3339(t)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let killed_ms = killed
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 1..=3 {
        let cam = format!("live-1-cam-{i:02}");
        let url = format!("{}/api/v1/resources/{cam}/history", c.api("fo-1"));
        let h = get(&url).await.expect("history");
        let h = h.as_array().expect("a list");
        let who: Vec<(&str, bool)> = h
            .iter()
            .map(|i| (i["owner"].as_str().unwrap(), i["to"].is_null()))
            .collect();
        assert_eq!(
            who,
            [("live-1", false), ("fo-1", false), ("live-1", true)],
            "{cam}: {h:?}"
        );
        let cover = rec.written("fo-1", &cam, ".cover");
        assert_eq!(
            h[1]["from"],
            cover.trim(),
            "{cam}: fo-1's footage starts where it covered from"
        );
        assert_eq!(h[1]["exact"], true);
        assert_eq!(h[1]["address"], c.servers[c.index("fo-1")].address.as_str());
        let home_to = ms(h[0]["to"].as_str().unwrap());
        assert!(
            (killed_ms..killed_ms + 2000).contains(&home_to),
            "{cam}: live-1 until {home_to}, killed at {killed_ms}"
        );
        assert!(h[1]["epoch"].as_u64() > h[0]["epoch"].as_u64());
        assert!(h[2]["epoch"].as_u64() > h[1]["epoch"].as_u64());
        // live-1 was down for fo-1's start: its own view says so.
        let url = format!("{}/api/v1/resources/{cam}/history", c.api("live-1"));
        let mine = get(&url).await.expect("history");
        let mine = mine.as_array().unwrap();
        assert_eq!(mine.len(), 3, "{mine:?}");
        assert_eq!(
            (&mine[1]["owner"], &mine[1]["exact"]),
            (&h[1]["owner"], &false.into())
        );
        assert!(ms(mine[1]["from"].as_str().unwrap()) <= ms(h[1]["from"].as_str().unwrap()));
        // The merge live-1 ran after the failback: fo-1's interval, as live-1 knows it.
        let merged = eventually(SECS(5), "live-1 merged fo-1's footage", || async {
            let m = rec.written("live-1", &cam, ".merge");
            (!m.is_empty()).then_some(m)
        })
        .await;
        let fields: Vec<&str> = merged.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "one interval: {merged}");
        assert_eq!(fields[0], mine[1]["from"].as_str().unwrap(), "{merged}");
        assert!(
            ms(fields[1]) >= ms(mine[1]["to"].as_str().unwrap()) - 100,
            "{merged}"
        );
        assert_eq!(
            &fields[2..],
            ["fo-1", c.servers[c.index("fo-1")].address.as_str()]
        );
    }
    // Asking for a window keeps what overlaps it; a wrong id or time is refused.
    let url = format!("{}/api/v1/resources/live-1-cam-01/history", c.api("fo-1"));
    let since_kill = get(&format!("{url}?from={}", killed_ms + 3000))
        .await
        .unwrap();
    assert_eq!(since_kill.as_array().unwrap().len(), 2, "{since_kill}");
    let resp = client()
        .get(format!(
            "{}/api/v1/resources/no-such-cam/history",
            c.api("fo-1")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .get(format!("{url}?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let status = c.term("fo-1");
    assert!(status.success());
    assert!(rec.standing_by().is_empty(), "{:?}", rec.standing_by());
    assert!(rec.all_on("live-1", 3, "live-1"));
}
