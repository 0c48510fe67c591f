//! Webhook delivery: `cargo bench --bench webhook`.
//! - event stored -> received by a local receiver, one at a time: p50/p99;
//! - throughput: 20 endpoints, 10,000 events queued, until every endpoint has every event.
//!
//! Prints figures for docs/benchmarks.md; asserts nothing about time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use buddygate::config::connectors::{self, ConnectorKind};
use buddygate::connectors::ConnectorStatus;
use buddygate::connectors::webhook::Webhook;
use buddygate::store::Store;
use serde_json::json;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

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

fn event(ty: &str, seq: u64) -> String {
    json!({"specversion": "1.0", "id": format!("fo-1:{seq}"), "type": ty, "source": "buddygate://hq/fo-1",
        "time": buddygate::runtime::cloudevents::rfc3339(SystemTime::now()), "datacontenttype": "application/json",
        "seq": seq, "data": {"site": "hq", "new_server": {"id": "fo-1", "address": "127.0.0.3"}, "epoch": 298}})
    .to_string()
}

fn start(
    name: &str,
    url: &str,
    dir: &Path,
    events: &broadcast::Sender<Arc<buddygate::store::StoredEvent>>,
    cancel: &CancellationToken,
) {
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
    let w = Webhook::build(
        name.into(),
        cfg,
        site.clone(),
        site.server_idx("fo-1").unwrap(),
        dir,
        Arc::new(ConnectorStatus::default()),
    )
    .unwrap();
    tokio::spawn(w.run(events.subscribe(), Arc::new(Notify::new()), cancel.clone()));
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
    start("psim", &url, &dir, &tx, &cancel);
    let mut lat = Vec::new();
    for i in 0..300u64 {
        let waiter = notify.notified();
        let t0 = Instant::now();
        let e = store
            .append_event("buddygate.failover.completed", |seq| {
                event("buddygate.failover.completed", seq)
            })
            .unwrap();
        let _ = tx.send(Arc::new(e));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("delivered");
        if i >= 20 {
            lat.push(t0.elapsed());
        }
    }
    lat.sort();
    println!(
        "failover.completed stored -> received by a local receiver ({} events, one at a time, signed): p50 {:?}, p99 {:?}",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
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
