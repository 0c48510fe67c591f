//! Webhook and onvif push delivery: `cargo bench --bench webhook`.
//! - event stored -> received by a local receiver, one at a time: p50/p99;
//! - the same for the onvif connector: a failover of 50 cameras stored -> its `Notify` (51
//!   messages) received by a local SOAP consumer;
//! - throughput: 20 endpoints, 10,000 events queued, until every endpoint has every event.
//!
//! Prints figures for docs/benchmarks.md; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buddygate::connectors::onvif::Onvif;
use buddygate::connectors::webhook::Webhook;
use buddygate::connectors::{self, ConnectorKind, ConnectorStatus};
use buddygate::store::Store;
use serde_json::json;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use common::small_event as event;

async fn receiver(count: Arc<AtomicU64>, notify: Arc<Notify>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let (count, notify) = (count.clone(), notify.clone());
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            notify.notify_waiters();
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

/// Stores `ev(seq)` and waits for the receiver, `runs` times; p50 and p99 of the last
/// `runs - 20`.
async fn latency(
    store: &mut Store,
    tx: &broadcast::Sender<Arc<buddygate::store::StoredEvent>>,
    notify: &Notify,
    status: &ConnectorStatus,
    runs: u64,
    ev: impl Fn(u64) -> String,
) -> (Duration, Duration, usize) {
    let mut lat = Vec::new();
    for i in 0..runs {
        let waiter = notify.notified();
        let t0 = Instant::now();
        let e = store
            .append_event("buddygate.failover.completed", &ev)
            .unwrap();
        let _ = tx.send(Arc::new(e));
        if tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .is_err()
        {
            panic!(
                "event {i} not delivered in 5 s: delivered {}, failed {}, last error {:?}",
                status.delivered.load(Ordering::Relaxed),
                status.failed.load(Ordering::Relaxed),
                status.last_error.lock().unwrap()
            );
        }
        if i >= 20 {
            lat.push(t0.elapsed());
        }
    }
    lat.sort();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100], lat.len())
}

/// A failover of live-1's 50 cameras to fo-1.
fn failover_of_50(seq: u64) -> String {
    let resources: Vec<serde_json::Value> = (1..=50)
        .map(|i| json!({"id": format!("cam-{i:02}"), "kind": "camera", "owner": "fo-1", "address": "127.0.0.3", "epoch": 298}))
        .collect();
    let data = json!({"site": "hq", "server": {"id": "live-1", "address": "127.0.0.1"},
             "new_server": {"id": "fo-1", "address": "127.0.0.3"}, "epoch": 298,
             "resources": resources, "failed": [], "takeover_ms": 400});
    common::cloud_event("buddygate.failover.completed", seq, data)
}

fn start_onvif(
    url: &str,
    dir: &Path,
    events: &broadcast::Sender<Arc<buddygate::store::StoredEvent>>,
    cancel: &CancellationToken,
) -> Arc<ConnectorStatus> {
    let text = format!("type = \"onvif\"\nurl = \"{url}\"\n");
    let (c, _) = connectors::check_file(&text, "b.toml", Path::new("b.toml"), None);
    let ConnectorKind::Onvif(cfg) = c.unwrap().kind else {
        panic!("not onvif")
    };
    let mut site = buddygate::sim::SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None);
    for i in 1..=50 {
        site = site.resource(
            &format!("cam-{i:02}"),
            buddygate::config::Kind::Camera,
            "live-1",
            0,
        );
    }
    let status = Arc::new(ConnectorStatus::default());
    let o = Onvif::build(
        "io".into(),
        cfg,
        Arc::new(site.build()),
        dir,
        status.clone(),
    )
    .unwrap();
    tokio::spawn(o.run(events.subscribe(), Arc::new(Notify::new()), cancel.clone()));
    status
}

fn start(
    name: &str,
    url: &str,
    dir: &Path,
    events: &broadcast::Sender<Arc<buddygate::store::StoredEvent>>,
    cancel: &CancellationToken,
) -> Arc<ConnectorStatus> {
    let text = format!(
        "type = \"webhook\"\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let (c, _) = connectors::check_file(&text, "b.toml", Path::new("b.toml"), None);
    let ConnectorKind::Webhook(cfg) = c.unwrap().kind else {
        panic!("not a webhook")
    };
    let site = Arc::new(
        buddygate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None)
            .build(),
    );
    let status = Arc::new(ConnectorStatus::default());
    let w = Webhook::build(
        name.into(),
        cfg,
        site.clone(),
        site.server_idx("fo-1").unwrap(),
        dir,
        status.clone(),
    )
    .unwrap();
    tokio::spawn(w.run(events.subscribe(), Arc::new(Notify::new()), cancel.clone()));
    status
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = std::env::temp_dir().join(format!("buddygate-bench-webhook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);

    // Latency.
    let dir = base.join("latency");
    let mut store = Store::open(&dir).unwrap();
    let (tx, _) = broadcast::channel(1024);
    let cancel = CancellationToken::new();
    let count = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let url = receiver(count.clone(), notify.clone()).await;
    let status = start("psim", &url, &dir, &tx, &cancel);
    let (p50, p99, n) = latency(&mut store, &tx, &notify, &status, 300, |seq| {
        event("buddygate.failover.completed", seq)
    })
    .await;
    println!(
        "failover.completed stored -> received by a local receiver ({n} events, one at a time, signed): p50 {p50:?}, p99 {p99:?}"
    );

    // The onvif connector: one Notify of 51 messages per event.
    let url = receiver(count.clone(), notify.clone()).await;
    let onvif_dir = base.join("onvif");
    let mut onvif_store = Store::open(&onvif_dir).unwrap();
    let status = start_onvif(&url, &onvif_dir, &tx, &cancel);
    let (p50, p99, n) = latency(&mut onvif_store, &tx, &notify, &status, 300, failover_of_50).await;
    println!(
        "onvif connector: failover.completed of 50 cameras stored -> Notify (51 messages) received by a local consumer ({n} events, one at a time): p50 {p50:?}, p99 {p99:?}"
    );
    cancel.cancel();

    // Throughput: 20 endpoints, 10,000 events queued.
    let dir = base.join("throughput");
    let mut store = Store::open(&dir).unwrap();
    let n = 10_000u64;
    for _ in 0..n {
        store
            .append_event("buddygate.failover.completed", |seq| {
                event("buddygate.failover.completed", seq)
            })
            .unwrap();
    }
    let (tx, _) = broadcast::channel(16);
    let cancel = CancellationToken::new();
    let count = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let mut urls = Vec::new();
    for _ in 0..20 {
        urls.push(receiver(count.clone(), notify.clone()).await);
    }
    let t0 = Instant::now();
    for (i, url) in urls.iter().enumerate() {
        start(&format!("psim-{i}"), url, &dir, &tx, &cancel);
    }
    while count.load(Ordering::Relaxed) < 20 * n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    println!(
        "throughput: 20 endpoints x {n} queued events = {} deliveries in {:.2?} ({:.0} deliveries/s, each acknowledged and its cursor stored)",
        20 * n,
        took,
        (20 * n) as f64 / took.as_secs_f64()
    );
    cancel.cancel();
    let _ = std::fs::remove_dir_all(&base);
}
