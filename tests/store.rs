//! A node that runs for years: its store on a small filesystem that fills up (real nodes; the
//! test mounts a tmpfs, so it needs root: it says so and does nothing without, unless
//! `REQUIRE_SYSTEM_TESTS` is set, as in CI, where it fails instead).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, SiteOptions, Spec, eventually, get, owners};
use serde_json::Value;

/// A tmpfs of `size` mounted on `at` for the test; unmounted when dropped.
struct Tmpfs {
    at: PathBuf,
    /// Stops the filler.
    filling: Option<Arc<AtomicBool>>,
}

impl Tmpfs {
    /// `None` (after saying why) when it cannot be mounted and root tests are not required.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                at: at.to_path_buf(),
                filling: None,
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("REQUIRE_SYSTEM_TESTS").is_none(),
                    "cannot mount a tmpfs: {why}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs (run as root): {why}");
                None
            }
        }
    }

    /// Fills the filesystem, and keeps it full (as a recorder writing video would): space the
    /// node frees (SQLite truncating its WAL) is taken again within 20 ms.
    fn fill(&mut self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.at.join("filler")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        self.filling = Some(stop.clone());
        let full = Arc::new(AtomicBool::new(false));
        let is_full = full.clone();
        std::thread::spawn(move || {
            let big = vec![0u8; 1 << 20];
            let small = vec![0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                while f.write_all(&big).is_ok() {}
                while f.write_all(&small).is_ok() {}
                full.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        while !is_full.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops filling and frees the space.
    fn free(&mut self) {
        if let Some(stop) = self.filling.take() {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
        std::fs::remove_file(self.at.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(stop) = self.filling.take() {
            stop.store(true, Ordering::Relaxed);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

async fn health(api: &str) -> Option<(u16, Value)> {
    let r = common::client()
        .get(format!("{api}/healthz"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Every resource of `home` active on `owner`, as `view`'s API shows it.
async fn served_by(c: &Cluster, view: &str, home: &str, owner: &str, limit: Duration) {
    let api = c.api(view);
    eventually(
        limit,
        &format!("{home}'s resources active on {owner}"),
        || {
            let api = api.clone();
            async move {
                let v = owners(&api, home).await?;
                (!v.is_empty() && v.iter().all(|r| r.0 == owner && r.3 == "active")).then_some(())
            }
        },
    )
    .await;
}

/// The events of `api`'s log: (seq, type, data.server.id, time).
async fn events(api: &str) -> Vec<(u64, String, String, String)> {
    let v = get(&format!("{api}/api/v1/events?after=0&limit=1000"))
        .await
        .unwrap_or_default();
    v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["seq"].as_u64().unwrap_or(0),
                        e["type"].as_str().unwrap_or("").to_string(),
                        e["data"]["server"]["id"].as_str().unwrap_or("").to_string(),
                        e["time"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// live-1's store on a 16 MiB tmpfs that fills up: its next write fails, it says it is
/// leaving and fo-1 takes over at once; what it could not store waits in memory and is
/// stored, in order, when space returns, and it comes back by itself (failback). Then a clean
/// stop and a restart on the full disk: it starts, runs as leaving, and comes back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_hands_over_keeps_every_event_and_comes_back() {
    let mut c = Cluster::with_servers(
        "fulldisk",
        &[
            Spec {
                id: "live-1",
                buddies: &["fo-1", "fo-2"],
                cameras: 3,
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
        ],
        SiteOptions {
            failover: 2,
            failback_delay: "2s",
            ..SiteOptions::default()
        },
    );
    let Some(mut disk) = Tmpfs::mount(&c.data_dir("live-1"), "16m") else {
        return;
    };
    c.start_all();
    served_by(&c, "fo-1", "live-1", "live-1", Duration::from_secs(15)).await;
    let live = c.api("live-1");
    assert_eq!(health(&live).await.unwrap().0, 200);
    let before = events(&live).await.last().map_or(0, |e| e.0);

    // The disk fills; fo-2 dies and comes back: live-1 has `server.down`, a new incarnation
    // and `server.up` to store. The first write may still fit in space SQLite's WAL already
    // held; the next cannot.
    disk.fill();
    c.kill9("fo-2");
    let site_state = |id: &'static str| {
        let live = live.clone();
        move || {
            let live = live.clone();
            async move {
                let v = get(&format!("{live}/api/v1/site")).await?;
                let s = v["servers"].as_array()?.iter().find(|s| s["id"] == id)?;
                s["state"].as_str().map(str::to_string)
            }
        }
    };
    eventually(Duration::from_secs(10), "live-1 sees fo-2 down", || {
        let f = site_state("fo-2");
        async move { (f().await? == "down").then_some(()) }
    })
    .await;
    c.start("fo-2");
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10),
        "live-1 reports its store failing",
        || {
            let live = live.clone();
            async move {
                let (status, body) = health(&live).await?;
                (status == 503).then_some(body)
            }
        },
    )
    .await;
    // Writes commit in order: what is stored now was stored before the first failed write
    // (`server.down` may still have fitted).
    let stored_before_failing = events(&live).await.last().map_or(0, |e| e.0);
    // Its buddy takes over at once (the `leaving` fast path, not the failure timeout).
    served_by(&c, "fo-1", "live-1", "fo-1", Duration::from_secs(10)).await;
    let took = t0.elapsed();
    let (_, body) = health(&live).await.unwrap();
    assert_eq!(body["status"], "storage_failed");
    assert!(
        body["storage"]["error"].as_str().unwrap().contains("full"),
        "{body}"
    );
    let metrics = common::text(&format!("{live}/metrics")).await;
    assert!(metrics.contains("buddygate_store_ok 0\n"), "{metrics}");
    eventually(Duration::from_secs(10), "live-1 hears fo-2 again", || {
        let f = site_state("fo-2");
        async move { (f().await? == "up").then_some(()) }
    })
    .await;
    // Nothing stored while the store fails.
    assert_eq!(
        events(&live).await.last().map_or(0, |e| e.0),
        stored_before_failing
    );
    assert!(
        took < Duration::from_secs(5),
        "takeover after the failed write took {took:?}"
    );

    // Space returns: the waiting events are stored in order, and live-1 comes back.
    disk.free();
    eventually(
        Duration::from_secs(10),
        "live-1's store takes writes again",
        || {
            let live = live.clone();
            async move { (health(&live).await?.0 == 200).then_some(()) }
        },
    )
    .await;
    served_by(&c, "fo-1", "live-1", "live-1", Duration::from_secs(20)).await;
    let after: Vec<_> = events(&live)
        .await
        .into_iter()
        .filter(|e| e.0 > before)
        .collect();
    let about_fo2: Vec<&str> = after
        .iter()
        .filter(|e| e.2 == "fo-2")
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(
        about_fo2,
        ["buddygate.server.down", "buddygate.server.up"],
        "{after:#?}"
    );
    let seqs: Vec<u64> = after.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (before + 1..=before + seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let logs = c.logs("live-1");
    assert_eq!(
        logs.matches("The store takes no writes: this node says it is leaving")
            .count(),
        1,
        "the error is logged once"
    );

    // A clean stop, and a restart while the disk is full: the node starts and runs as leaving.
    disk.fill();
    let st = c.term("live-1");
    assert!(st.success(), "{st:?}");
    served_by(&c, "fo-1", "live-1", "fo-1", Duration::from_secs(10)).await;
    c.start("live-1");
    eventually(
        Duration::from_secs(10),
        "live-1 runs on the full disk",
        || {
            let live = live.clone();
            async move {
                let (status, body) = health(&live).await?;
                (status == 503 && body["status"] == "storage_failed").then_some(())
            }
        },
    )
    .await;
    // It read what its store held (a store closed cleanly is read without writing a byte).
    assert!(
        !c.logs("live-1").contains("starting from an empty state"),
        "{}",
        c.logs("live-1")
    );
    // It does not take its cameras back (failback_delay is 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    served_by(&c, "fo-1", "live-1", "fo-1", Duration::from_secs(1)).await;
    disk.free();
    served_by(&c, "fo-1", "live-1", "live-1", Duration::from_secs(20)).await;
    assert_eq!(health(&live).await.unwrap().0, 200);
    drop(c);
    drop(disk);
}
