//! The store of a busy site over a simulated year: `cargo bench --bench store`.
//!
//! 280,000 events a day (a lossy path flapping all day long, as in the fault lab: `path.down`
//! and `path.up`, and a 50-camera `failover.completed` every 10,000 events), 5 connectors that
//! keep up (one of them an hour behind), the default retention (30 days, 1 GiB). Events are
//! stored with simulated wall-clock times in ticks of 10,000 (about 51 simulated minutes); after
//! each tick the connectors' cursors move, the WAL is checkpointed and one retention pass runs
//! in the production's batches ([`Pruner`], the store writer's code). Prints the store's size on
//! disk over the year and how long each pruning batch took, in wall-clock time (the longest a
//! claim or event of the core can wait behind pruning) and in CPU time of the thread (its own
//! cost: on a busy machine the wall-clock figures include waiting for a CPU).
//!
//! `DAYS` (365), `PER_DAY` (280000), `MAX_SIZE` (bytes, default 1 GiB) and `DIR` (a folder on
//! the disk to measure; default a temporary one) change the run. Asserts nothing about time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use buddygate::store::{Attempt, Checkpointer, Pruner, Retention, Store};

const TICK: u64 = 10_000;
const CONNECTORS: [&str; 5] = ["psim", "vms", "bus", "io", "archive"];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A CloudEvent as the runtime stores it: a path flapping, or now and then a failover of 50
/// cameras.
fn event(seq: u64, at: SystemTime) -> (&'static str, String) {
    let id = format!("fo-1:3f9a2c1b7d4e:{seq}");
    if seq.is_multiple_of(TICK) {
        let resources: Vec<String> = (1..=50)
            .map(|i| {
                format!(
                    r#"{{"address":"10.0.1.21","epoch":298,"id":"live-2-cam-{i:02}","kind":"camera","owner":"fo-1"}}"#
                )
            })
            .collect();
        let json = format!(
            r#"{{"data":{{"down_since":"{t}","epoch":298,"failed":[],"new_server":{{"address":"10.0.1.21","id":"fo-1"}},"resources":[{}],"server":{{"address":"10.0.1.12","id":"live-2"}},"site":"hq","takeover_ms":1047}},"datacontenttype":"application/json","id":"{id}","seq":{seq},"source":"buddygate://hq/fo-1","specversion":"1.0","time":"{t}","type":"buddygate.failover.completed"}}"#,
            resources.join(","),
            t = rfc3339(at)
        );
        return ("buddygate.failover.completed", json);
    }
    let ty = if seq.is_multiple_of(2) {
        "buddygate.path.up"
    } else {
        "buddygate.path.down"
    };
    let json = format!(
        r#"{{"data":{{"address":"10.0.2.12:7400","path":1,"server":{{"address":"10.0.1.12","id":"live-2"}},"site":"hq"}},"datacontenttype":"application/json","id":"{id}","seq":{seq},"source":"buddygate://hq/fo-1","specversion":"1.0","time":"{}","type":"{ty}"}}"#,
        rfc3339(at)
    );
    (ty, json)
}

/// CPU time of this thread: a batch's own cost, whatever else the machine runs.
fn cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn on_disk(dir: &Path) -> u64 {
    ["node.db", "node.db-wal", "node.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let days = env("DAYS", 365);
    let per_day = env("PER_DAY", 280_000);
    let max_size = env("MAX_SIZE", 1 << 30);
    let dir: PathBuf = std::env::var_os("DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("buddygate-bench-store-{}", std::process::id()))
        });
    let _ = std::fs::remove_dir_all(&dir);
    // As in a node: the writer's connection stores the events and prunes (no automatic
    // checkpoints), the connectors write their cursors and attempts on one of their own, and a
    // third connection checkpoints the WAL.
    let mut store = Store::open_for_writer(&dir).unwrap();
    let mut outbox = Store::open_for_connector(&dir).unwrap();
    let checkpointer = Checkpointer::open(&dir).unwrap();
    let connectors: Vec<String> = CONNECTORS.iter().map(|c| c.to_string()).collect();
    let policy = Retention {
        keep: Duration::from_secs(30 * 86_400),
        max_size,
    };
    let mut pruner = Pruner::new(policy, connectors);
    let start = SystemTime::now() - Duration::from_secs(days * 86_400);
    let tick_every = Duration::from_secs_f64(86_400.0 * TICK as f64 / per_day as f64);
    let ticks = days * per_day / TICK;
    println!(
        "store: {days} simulated days, {per_day} events a day, {} connectors, retention 30 days, max_size {}; {}",
        CONNECTORS.len(),
        mib(max_size),
        dir.display()
    );
    let mut batches: Vec<Duration> = Vec::new();
    let mut batches_cpu: Vec<Duration> = Vec::new();
    let mut pruned = 0u64;
    let mut undelivered = 0u64;
    let mut peak = 0u64;
    let wall = Instant::now();
    let mut next_report = 1u64;
    let mut seq = 0u64;
    for tick in 0..ticks {
        let now = start + tick_every * (tick as u32 + 1);
        // 10,000 events in this tick, stored in transactions of 1,000.
        for _ in 0..TICK / 1000 {
            let evs: Vec<(&str, String)> = (1..=1000).map(|i| event(seq + i, now)).collect();
            let kinds: Vec<&str> = evs.iter().map(|e| e.0).collect();
            let stored = store
                .commit_at(
                    &[],
                    &kinds,
                    |s, i| {
                        debug_assert_eq!(s, seq + 1 + i as u64);
                        evs[i].1.clone()
                    },
                    now,
                )
                .unwrap();
            seq = stored.last().unwrap().seq;
        }
        // The connectors: four keep up, one is about an hour behind; each records attempts.
        for (i, c) in CONNECTORS.iter().enumerate() {
            let cursor = if i == 4 {
                seq.saturating_sub(per_day / 24)
            } else {
                seq
            };
            outbox.set_cursor(c, cursor).unwrap();
            for s in cursor.saturating_sub(20)..cursor {
                let a = Attempt {
                    seq: s,
                    attempt: 1,
                    outcome: "delivered 200".into(),
                    latency_ms: 2,
                    time: rfc3339(now),
                };
                outbox.delivered(c, &a).unwrap();
            }
        }
        checkpointer.checkpoint().unwrap();
        // One retention pass, in the store writer's batches.
        loop {
            let c0 = cpu();
            let (done, took) = pruner.step(&mut store, now).unwrap();
            batches.push(took);
            batches_cpu.push(cpu() - c0);
            pruned += done.events;
            undelivered += done.undelivered;
            if !pruner.in_pass() {
                break;
            }
        }
        let size = on_disk(&dir);
        peak = peak.max(size);
        let day = (tick + 1) * TICK / per_day;
        if day >= next_report && [1, 7, 30, 31, 60, 90, 180, 270, 365].contains(&day)
            || tick + 1 == ticks
        {
            next_report = day + 1;
            let r = store.reader().unwrap();
            let head = r.last_seq().unwrap();
            let oldest = r
                .events_after(0, 1)
                .unwrap()
                .first()
                .map_or(head, |e| e.seq);
            println!(
                "  day {day:>3}: {} on disk (peak {}), {} in use, {} events kept ({:.1} days), {} pruned, {:.0} s so far",
                mib(size),
                mib(peak),
                mib(store.used_bytes().unwrap()),
                head - oldest + 1,
                (head - oldest + 1) as f64 / per_day as f64,
                pruned,
                wall.elapsed().as_secs_f64()
            );
        }
    }
    batches.sort();
    batches_cpu.sort();
    let over = |limit: Duration| batches.iter().filter(|&&b| b > limit).count();
    println!(
        "pruning: {} batches (budget {:?}); {} events pruned, {} of them before every connector had them (size limit)",
        batches.len(),
        buddygate::store::BATCH_BUDGET,
        pruned,
        undelivered
    );
    for (what, d) in [("wall", &batches), ("cpu", &batches_cpu)] {
        println!(
            "  batch {what:>4}: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            pct(d, 0.5),
            pct(d, 0.99),
            pct(d, 0.999),
            d.last().copied().unwrap_or_default(),
        );
    }
    println!(
        "  batches over 5 ms (wall): {}; over 2 ms: {}",
        over(Duration::from_millis(5)),
        over(Duration::from_millis(2))
    );
    println!(
        "final: {} on disk, peak {}, {:.0} s",
        mib(on_disk(&dir)),
        mib(peak),
        wall.elapsed().as_secs_f64()
    );
    drop((store, outbox));
    if std::env::var_os("DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
