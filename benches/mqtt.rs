//! MQTT connector: `cargo bench --bench mqtt`, against an embedded rumqttd on loopback.
//! - `failover.completed` stored -> received by a subscriber (QoS 1), one at a time: p50/p99;
//! - retained state for a failover of 1,000 resources: from the new snapshot to the subscriber
//!   holding the last of the 1,000 `resources/{id}` messages.
//!
//! Both over MQTT 3.1.1, then the latency again over MQTT 5 (connector, broker listener and
//! subscriber all v5; every publish carrying its properties).
//!
//! Prints figures for docs/benchmarks.md; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buddygate::config::{Kind, Mode};
use buddygate::connectors::mqtt::Mqtt;
use buddygate::connectors::{self, ConnectorKind, ConnectorStatus};
use buddygate::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use common::small_event as event;

fn broker(v5: bool) -> u16 {
    buddygate::demo::consumers::embedded_broker(v5).expect("embedded broker")
}

/// The MQTT 5 [`subscriber`].
async fn subscriber5(port: u16, filter: &str, seen: Arc<Mutex<Vec<String>>>, notify: Arc<Notify>) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("bench-sub5", "127.0.0.1", port), 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::Publish(p)) => {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&p.topic).into_owned());
                    notify.notify_waiters();
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await.unwrap();
}

/// Subscribes to `filter`; every received topic goes to `seen`, and `notify` wakes.
async fn subscriber(port: u16, filter: &str, seen: Arc<Mutex<Vec<String>>>, notify: Arc<Notify>) {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("bench-sub", "127.0.0.1", port), 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::Publish(p)) => {
                    seen.lock().unwrap().push(p.topic.clone());
                    notify.notify_waiters();
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = std::env::temp_dir().join(format!("buddygate-bench-mqtt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    measure(false, &base.join("v3")).await;
    measure(true, &base.join("v5")).await;
    let _ = std::fs::remove_dir_all(&base);
}

/// The figures over MQTT 3.1.1, or (`v5`) the latency over MQTT 5.
async fn measure(v5: bool, base: &Path) {
    let port = broker(v5);
    let version = if v5 { "MQTT 5" } else { "MQTT 3.1.1" };
    let site = Arc::new(
        buddygate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", Mode::SpreadServers, None, None)
            .many("live-1", Kind::Camera, 1000, 0)
            .build(),
    );
    let fo = site.server_idx("fo-1").unwrap();
    let live = site.server_idx("live-1").unwrap();
    let protocol = if v5 { "v5" } else { "v3.1.1" };
    let text =
        format!("type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n");
    let (c, _) = connectors::check_file(&text, "b.toml", Path::new("b.toml"), None);
    let ConnectorKind::Mqtt(cfg) = c.unwrap().kind else {
        panic!("not mqtt")
    };
    let snapshot = |owner, epoch| common::owners_snapshot(&site, live, fo, owner, epoch, 1000);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let notify = Arc::new(Notify::new());
    if v5 {
        subscriber5(port, "buddygate/hq/#", seen.clone(), notify.clone()).await;
    } else {
        subscriber(port, "buddygate/hq/#", seen.clone(), notify.clone()).await;
    }

    let dir = base.join("node");
    let mut store = Store::open(&dir).unwrap();
    let (tx, _) = broadcast::channel(1024);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot(live, 1)));
    let cancel = CancellationToken::new();
    let m = Mqtt::build(
        "bus".into(),
        cfg,
        site.clone(),
        fo,
        &dir,
        Arc::new(ConnectorStatus::default()),
    )
    .unwrap();
    tokio::spawn(m.run(tx.subscribe(), snap_rx, cancel.clone()));
    // Connected: its birth has arrived.
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|t| t == "buddygate/hq/nodes/fo-1/online")
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Latency.
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
        "{version}: failover.completed stored -> received by a subscriber ({} events, one at a time, QoS 1): p50 {:?}, p99 {:?}",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    if v5 {
        cancel.cancel();
        return;
    }

    // Retained state for a failover of 1,000 resources.
    seen.lock().unwrap().clear();
    let t0 = Instant::now();
    snap_tx.send(Arc::new(snapshot(fo, 2))).unwrap();
    loop {
        let n = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.starts_with("buddygate/hq/resources/"))
            .collect::<HashSet<_>>()
            .len();
        if n == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    println!(
        "retained state for a failover of 1,000 resources: the last resources/{{id}} at the subscriber {:.2?} after the snapshot",
        t0.elapsed()
    );
    cancel.cancel();
}
