//! The MQTT connector against an embedded broker (rumqttd, in-process on a free loopback port)
//! and real `buddygate run` nodes; and against a real Mosquitto for what rumqttd cannot do
//! (a restart that loses retained messages, an MQTT 5 refusal).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buddygate::config::connectors::EVENT_TYPES;
use buddygate::connectors::mqtt::MqttFile;
use buddygate::connectors::{self, ConnectorKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Starts an embedded rumqttd on 127.0.0.1; returns its port. It runs until the test process
/// ends (rumqttd has no stop): tests that need an outage put a [`Proxy`] in front of it.
fn broker() -> u16 {
    start_broker(false)
}

/// [`broker`], with an MQTT 5 listener instead of the 3.1.1 one when `v5`.
fn start_broker(v5: bool) -> u16 {
    buddygate::demo::consumers::embedded_broker(v5).expect("embedded broker")
}

/// A TCP relay in front of the broker that can be stopped (every connection cut, the port
/// closed) and started again on the same port: the broker as the nodes see it.
struct Proxy {
    port: u16,
    upstream: u16,
    stop: Option<CancellationToken>,
}

impl Proxy {
    fn new(upstream: u16) -> Self {
        Self {
            port: common::free_port("127.0.0.1"),
            upstream,
            stop: None,
        }
    }

    async fn start(&mut self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let upstream = self.upstream;
        tokio::spawn(async move {
            loop {
                let (mut down, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = copy_bidirectional(&mut down, &mut up) => {}
                    }
                });
            }
        });
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }
}

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Value,
    qos: QoS,
}

/// A subscriber to `filter` at QoS 1, recording what it receives.
struct Sub {
    msgs: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sub {
    async fn start(port: u16, id: &str, filter: &str) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let m = msgs.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                        qos: p.qos,
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
            .await
            .expect("SUBACK")
            .unwrap();
        Self { msgs, task }
    }

    fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// The last message on `topic`.
    fn last(&self, topic: &str) -> Option<Value> {
        self.all()
            .into_iter()
            .rev()
            .find(|m| m.topic == topic)
            .map(|m| m.payload)
    }
}

fn mqtt_connector(port: u16) -> String {
    format!("type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nkeep_alive = \"2s\"\n")
}

async fn site_up(c: &common::Cluster) {
    common::eventually(Duration::from_secs(15), "site up", || async {
        let v = common::owners(&c.api("fo-1"), "live-1").await?;
        (!v.is_empty() && v.iter().all(|r| r.0 == "live-1" && r.3 == "active")).then_some(())
    })
    .await;
}

/// `(id, owner, address, epoch)` of live-1's resources once fo-1 serves them all.
async fn failed_over(c: &common::Cluster) -> Vec<(String, String, String, u64)> {
    common::eventually(Duration::from_secs(15), "fo-1 serves live-1", || async {
        let v = common::get(&format!("{}/api/v1/resources", c.api("fo-1"))).await?;
        let rs: Vec<_> = v["resources"]
            .as_array()?
            .iter()
            .filter(|r| r["server"] == "live-1")
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["owner"].as_str().unwrap_or("").to_string(),
                    r["address"].as_str().unwrap_or("").to_string(),
                    r["epoch"].as_u64().unwrap_or(0),
                    r["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        rs.iter()
            .all(|r| r.1 == "fo-1" && r.4 == "active")
            .then(|| rs.into_iter().map(|r| (r.0, r.1, r.2, r.3)).collect())
    })
    .await
}

/// Event types from `source`, in the order received, duplicates (same id) dropped.
fn event_types(msgs: &[Msg], source: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    msgs.iter()
        .filter(|m| m.topic.contains("/events/") && m.payload["source"] == source)
        .filter(|m| seen.insert(m.payload["id"].as_str().unwrap_or("").to_string()))
        .map(|m| m.payload["type"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until `sub` has `failover.completed` from `source`, then asserts server.down,
/// failover.started and failover.completed arrived in that order.
async fn failover_events_in_order(sub: &Sub, source: &str, limit: Duration) {
    common::eventually(limit, "failover.completed", || async {
        event_types(&sub.all(), source)
            .contains(&"buddygate.failover.completed".to_string())
            .then_some(())
    })
    .await;
    let types = event_types(&sub.all(), source);
    let pos = |t: &str| types.iter().position(|x| x == t).unwrap_or(usize::MAX);
    assert!(
        pos("buddygate.server.down") < pos("buddygate.failover.started"),
        "{types:?}"
    );
    assert!(
        pos("buddygate.failover.started") < pos("buddygate.failover.completed"),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_learns_every_new_owner_and_the_will_and_birth_follow_the_node() {
    let port = broker();
    let mut c = common::Cluster::new(
        "mqtt",
        2,
        3,
        common::SiteOptions {
            connectors: vec![("bus", mqtt_connector(port))],
            ..Default::default()
        },
    );
    c.start_all();
    site_up(&c).await;
    let early = Sub::start(port, "early", "buddygate/mqtt/#").await;
    let online = "buddygate/mqtt/nodes/live-1/online";
    common::eventually(Duration::from_secs(10), "live-1 birth", || async {
        (early.last(online)?["online"] == true).then_some(())
    })
    .await;

    c.kill9("live-1");
    let owners = failed_over(&c).await;
    assert_eq!(owners.len(), 3);
    // The Last Will of the killed node.
    common::eventually(Duration::from_secs(10), "live-1 will", || async {
        (early.last(online)?["online"] == false).then_some(())
    })
    .await;
    // Events at QoS 1, in order.
    failover_events_in_order(&early, "buddygate://mqtt/fo-1", Duration::from_secs(10)).await;
    for m in early.all().iter().filter(|m| m.topic.contains("/events/")) {
        assert_eq!(m.qos, QoS::AtLeastOnce, "{m:?}");
        assert_eq!(
            m.topic,
            format!(
                "buddygate/mqtt/events/{}",
                m.payload["type"].as_str().unwrap()
            )
        );
    }

    // A subscriber that connects after the failover learns the owners from retained state.
    let late = Sub::start(port, "late", "buddygate/mqtt/#").await;
    common::eventually(Duration::from_secs(5), "retained owners", || async {
        owners
            .iter()
            .all(|(id, _, address, epoch)| {
                late.last(&format!("buddygate/mqtt/resources/{id}"))
                    .is_some_and(|v| {
                        v["owner"] == "fo-1"
                            && v["address"] == address.as_str()
                            && v["epoch"] == *epoch
                            && v["kind"] == "camera"
                            && v["timestamp"].is_string()
                    })
            })
            .then_some(())
    })
    .await;
    let server = common::eventually(Duration::from_secs(5), "retained server", || async {
        late.last("buddygate/mqtt/servers/live-1")
            .filter(|v| v["served_by"] == "fo-1")
    })
    .await;
    assert_eq!(server["state"], "down", "{server}");
    assert_eq!(server["served_by"], "fo-1", "{server}");
    assert_eq!(server["served_address"], "127.0.1.3", "{server}");
    assert_eq!(server["address"], "127.0.1.1", "{server}");
    // The broker hands retained messages over in no fixed order: the will may come after the
    // server's state.
    common::eventually(Duration::from_secs(5), "retained will", || async {
        (late.last(online)?["online"] == false).then_some(())
    })
    .await;
    assert!(
        late.all().iter().all(|m| !m.topic.contains("/events/")),
        "events are not retained"
    );

    // Restart: the birth replaces the will.
    c.start("live-1");
    common::eventually(Duration::from_secs(10), "live-1 birth again", || async {
        (early.last(online)?["online"] == true).then_some(())
    })
    .await;
    let after = Sub::start(port, "after", online).await;
    common::eventually(Duration::from_secs(5), "retained birth", || async {
        (after.last(online)?["online"] == true).then_some(())
    })
    .await;

    // A clean stop publishes the death message itself, then disconnects (no will).
    let status = c.term("live-1");
    assert!(status.success(), "{status:?}");
    common::eventually(Duration::from_secs(5), "death message", || async {
        (after.last(online)?["online"] == false).then_some(())
    })
    .await;
    assert!(c.logs("live-1").contains("MQTT disconnected cleanly."));
}

/// A new owner is published once its resource runs there, not when it is claimed: with a
/// 600 ms activation, `resources/{id}` naming fo-1 comes at least that long after fo-1's
/// `failover.started`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_is_published_once_the_resource_is_active() {
    let port = broker();
    let mut c = common::Cluster::new(
        "mqttactive",
        1,
        2,
        common::SiteOptions {
            connectors: vec![("bus", mqtt_connector(port))],
            extra_resource_keys: "activation = \"600ms\"\n",
            ..Default::default()
        },
    );
    c.start_all();
    site_up(&c).await;
    let sub = Sub::start(port, "active", "buddygate/mqttactive/#").await;
    c.kill9("live-1");
    let owners = failed_over(&c).await;
    common::eventually(Duration::from_secs(10), "fo-1's owners", || async {
        owners
            .iter()
            .all(|(id, ..)| {
                sub.last(&format!("buddygate/mqttactive/resources/{id}"))
                    .is_some_and(|v| v["owner"] == "fo-1")
            })
            .then_some(())
    })
    .await;
    // Timed on the node (the event's `time`, the owner message's `timestamp`): the
    // subscriber may get the event late, behind the state messages.
    let wall = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let msgs = sub.all();
    let started = wall(
        &msgs
            .iter()
            .find(|m| {
                m.topic.ends_with("/events/buddygate.failover.started")
                    && m.payload["source"] == "buddygate://mqttactive/fo-1"
            })
            .expect("fo-1's failover.started")
            .payload["time"],
    );
    let first_owner = msgs
        .iter()
        .filter(|m| m.topic.contains("/resources/") && m.payload["owner"] == "fo-1")
        .map(|m| wall(&m.payload["timestamp"]))
        .min()
        .expect("an owner message");
    let waited = first_owner.duration_since(started).unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(500),
        "fo-1 published itself as owner {waited:?} after failover.started, before its start ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_reported_and_retried_while_the_node_runs() {
    // A broker that answers every CONNECT with CONNACK 4, "bad user name or password" (rumqttd
    // just closes the connection).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 512];
                if conn
                    .read(&mut buf)
                    .await
                    .is_ok_and(|n| n > 0 && buf[0] == 0x10)
                {
                    let _ = conn.write_all(&[0x20, 0x02, 0x00, 0x04]).await;
                    let _ = conn.shutdown().await;
                }
            });
        }
    });
    let mut c = common::Cluster::new(
        "mqttauth",
        1,
        1,
        common::SiteOptions {
            connectors: vec![(
                "bus",
                format!(
                    "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nusername = \"buddygate\"\npassword = \"file:wrong.pass\"\n"
                ),
            )],
            ..Default::default()
        },
    );
    std::fs::write(c.dir.join("connectors").join("wrong.pass"), "wrong\n").unwrap();
    c.start_all();
    let api = c.api("fo-1");
    let status = common::eventually(Duration::from_secs(10), "refusal reported", || async {
        let v = common::get(&format!("{api}/api/v1/connectors")).await?;
        let bus = v["connectors"].as_array()?.first()?.clone();
        (bus["retried"].as_u64()? >= 2).then_some(bus)
    })
    .await;
    assert_eq!(status["type"], "mqtt", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the broker refused the credentials")),
        "{status}"
    );
    let health = common::client()
        .get(format!("{api}/healthz"))
        .send()
        .await
        .expect("the daemon keeps running");
    assert!(health.status().is_success());
    assert!(
        c.logs("fo-1")
            .contains("the broker refused the credentials")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_during_a_failover_gets_every_event_once_it_is_back() {
    let port = broker();
    let mut proxy = Proxy::new(port);
    proxy.start().await;
    let mut c = common::Cluster::new(
        "mqttdown",
        2,
        3,
        common::SiteOptions {
            connectors: vec![("bus", mqtt_connector(proxy.port))],
            ..Default::default()
        },
    );
    c.start_all();
    site_up(&c).await;
    let sub = Sub::start(port, "watcher", "buddygate/mqttdown/#").await;
    common::eventually(Duration::from_secs(10), "fo-1 birth", || async {
        (sub.last("buddygate/mqttdown/nodes/fo-1/online")?["online"] == true).then_some(())
    })
    .await;

    proxy.stop();
    c.kill9("live-1");
    let owners = failed_over(&c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !event_types(&sub.all(), "buddygate://mqttdown/fo-1")
            .contains(&"buddygate.failover.completed".to_string()),
        "nothing can arrive while the broker is away"
    );
    // The cursor is held: fo-1's events are queued, not handled.
    let bus = |api: String| async move {
        let v = common::get(&format!("{api}/api/v1/connectors")).await?;
        v["connectors"].as_array()?.first().cloned()
    };
    common::eventually(Duration::from_secs(5), "events queued", || async {
        let v = bus(c.api("fo-1")).await?;
        (v["queue_depth"].as_u64()? > 0 && v["delivered"] == 0).then_some(())
    })
    .await;

    proxy.start().await;
    failover_events_in_order(&sub, "buddygate://mqttdown/fo-1", Duration::from_secs(20)).await;
    for (id, _, address, epoch) in &owners {
        let v = common::eventually(Duration::from_secs(5), "retained owner", || async {
            sub.last(&format!("buddygate/mqttdown/resources/{id}"))
                .filter(|v| v["owner"] == "fo-1")
        })
        .await;
        assert_eq!(v["address"], address.as_str());
        assert_eq!(v["epoch"], *epoch);
    }
    common::eventually(Duration::from_secs(10), "cursor caught up", || async {
        let v = bus(c.api("fo-1")).await?;
        (v["queue_depth"] == 0 && v["delivered"].as_u64()? > 0).then_some(())
    })
    .await;
    // fo-1 heals its birth after the outage (its will fired when the relay cut it).
    common::eventually(Duration::from_secs(10), "fo-1 birth again", || async {
        (sub.last("buddygate/mqttdown/nodes/fo-1/online")?["online"] == true).then_some(())
    })
    .await;
}

#[test]
fn bad_mqtt_files_report_every_problem_with_its_position() {
    let text = "type = \"mqtt\"\nurl = \"http://x\"\npassword = \"hunter2\"\nqos = 2\ntopic_prefix = \"a/#\"\nevents = [\"buddygate.nothing\"]\nkeepalive = \"5s\"\n";
    let lines = common::refused(text, "bad.toml", None);
    assert_eq!(
        lines,
        [
            "bad.toml:2:7: url: \"http\": expected mqtt://host:port or mqtts://host:port",
            "bad.toml:3:12: password: a password needs a `username`",
            "bad.toml:3:12: warning: password: inline secret; use file:PATH or env:VAR in production",
            "bad.toml:4:7: qos: qos 2: expected 0 or 1",
            "bad.toml:5:16: topic_prefix: \"a/#\": a topic prefix cannot contain the wildcards + or #",
            "bad.toml:6:11: events[0]: \"buddygate.nothing\" matches no event type (they are buddygate.server.down, buddygate.failover.completed, ...)",
            "bad.toml:7:1: keepalive: unknown key `keepalive`; did you mean `keep_alive`?",
        ]
    );
    // TLS files are read at load: a bad PEM is a config error with its position.
    let dir = std::env::temp_dir().join(format!("buddygate-mqtt-pem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.join("bad.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = "type = \"mqtt\"\nurl = \"mqtts://broker\"\nprotocol = \"v3\"\nmessage_expiry = \"1d\"\ntls = { ca = \"ca.pem\",\n  cert = \"bad.pem\", key = \"missing.key\" }\n";
    let lines = common::refused(text, "t.toml", Some(&dir));
    let p = |f: &str| dir.join(f).display().to_string();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        lines[0],
        "t.toml:4:18: message_expiry: message expiry is an MQTT 5 property; set protocol = \"v5\""
    );
    assert_eq!(
        lines[1],
        format!(
            "t.toml:5:14: tls.ca: {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            p("ca.pem")
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "t.toml:6:10: tls.cert: {}: invalid PEM: ",
            p("bad.pem")
        )),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with(&format!(
            "t.toml:6:27: tls.key: cannot read {}: ",
            p("missing.key")
        )),
        "{}",
        lines[3]
    );
    let (c, d) = connectors::check_file(
        "type = \"mqtt\"\nurl = \"mqtts://broker\"\nprotocol = \"v5\"\nmessage_expiry = \"1d\"\n",
        "t.toml",
        Path::new("t.toml"),
        None,
    );
    assert!(d.is_empty(), "{d:?}");
    let ConnectorKind::Mqtt(m) = c.unwrap().kind else {
        panic!("not mqtt")
    };
    assert_eq!((m.port, m.tls_enabled), (8883, true));
    assert_eq!(m.message_expiry, Some(Duration::from_secs(86400)));
    let _ = std::fs::remove_dir_all(&dir);
    let (c, d) = connectors::check_file(
        "type = \"mqtt\"\nurl = \"mqtt://broker\"\nusername = \"bg\"\npassword = \"env:MQTT_PASS\"\nevents = [\"buddygate.failover.*\"]\n",
        "ok.toml",
        Path::new("ok.toml"),
        None,
    );
    assert!(d.is_empty(), "{d:?}");
    let ConnectorKind::Mqtt(m) = c.unwrap().kind else {
        panic!("not mqtt")
    };
    assert_eq!((m.host.as_str(), m.port, m.qos), ("broker", 1883, 1));
    assert!(m.events.wants("buddygate.failover.completed") && !m.events.wants("buddygate.path.up"));
}

/// More retained state than the window at once (a failover of 1,000 resources): every topic
/// gets out, through flow control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_1000_resources_publishes_every_retained_owner() {
    use buddygate::config::{Kind, Mode};
    use std::sync::Arc;

    let port = broker();
    let site = Arc::new(
        buddygate::sim::SiteBuilder::new("big")
            .live("live-1", &["fo-1"])
            .failover("fo-1", Mode::SpreadServers, None, None)
            .many("live-1", Kind::Camera, 1000, 0)
            .build(),
    );
    let fo = site.server_idx("fo-1").unwrap();
    let live = site.server_idx("live-1").unwrap();
    let snapshot = |owner, epoch| common::owners_snapshot(&site, live, fo, owner, epoch, 1000);
    let (c, _) = connectors::check_file(
        &format!("type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\n"),
        "b.toml",
        Path::new("b.toml"),
        None,
    );
    let ConnectorKind::Mqtt(cfg) = c.unwrap().kind else {
        panic!("not mqtt")
    };
    let dir = std::env::temp_dir().join(format!("buddygate-mqtt-big-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    drop(buddygate::store::Store::open(&dir).unwrap());
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(snapshot(live, 1)));
    let cancel = CancellationToken::new();
    let m = buddygate::connectors::mqtt::Mqtt::build(
        "bus".into(),
        cfg,
        site.clone(),
        fo,
        &dir,
        Arc::new(buddygate::connectors::ConnectorStatus::default()),
    )
    .unwrap();
    let task = tokio::spawn(m.run(tx.subscribe(), snap_rx, cancel.clone()));
    let sub = Sub::start(port, "big-sub", "buddygate/big/#").await;
    common::eventually(Duration::from_secs(5), "birth", || async {
        sub.last("buddygate/big/nodes/fo-1/online")
    })
    .await;
    snap_tx.send(Arc::new(snapshot(fo, 2))).unwrap();
    common::eventually(Duration::from_secs(20), "1,000 retained owners", || async {
        let got: std::collections::HashSet<String> = sub
            .all()
            .into_iter()
            .filter(|m| m.topic.starts_with("buddygate/big/resources/") && m.payload["epoch"] == 2)
            .map(|m| m.topic)
            .collect();
        (got.len() == 1000).then_some(())
    })
    .await;
    // Servers come after resources (topics in order).
    let server = common::eventually(Duration::from_secs(5), "retained server", || async {
        sub.last("buddygate/big/servers/live-1")
    })
    .await;
    assert_eq!(server["served_by"], "fo-1");
    cancel.cancel();
    task.await.unwrap();
    common::eventually(Duration::from_secs(5), "death", || async {
        (sub.last("buddygate/big/nodes/fo-1/online")?["online"] == false).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS listener in front of the broker (as stunnel or a load balancer would be) that
/// requires a client certificate from `ca`; returns its port.
async fn tls_front(upstream: u16, ca: &str, cert: &str, key: &str) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(common::tls_server_config(ca, cert, key));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // No accepted client certificate: the handshake fails here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_and_a_client_certificate() {
    let port = broker();
    let tls_connector = |port: u16, prefix: &str, tls: &str| {
        format!(
            "type = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{port}\"\ntopic_prefix = \"{prefix}\"\nkeep_alive = \"2s\"\ntls = {{ {tls} }}\n"
        )
    };
    let mut c = common::Cluster::new(
        "mqtts",
        1,
        2,
        common::SiteOptions {
            connectors: vec![
                ("tls", String::new()),
                ("nocert", String::new()),
                ("otherca", String::new()),
            ],
            ..Default::default()
        },
    );
    let dir = c.dir.join("connectors");
    let (ca, cert, key, _) = common::pki(&dir);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    common::pki(&other);
    let tls_port = tls_front(port, &ca, &cert, &key).await;
    for (name, prefix, tls) in [
        (
            "tls",
            "tls",
            "ca = \"ca.pem\", cert = \"client.pem\", key = \"client.key\"",
        ),
        ("nocert", "nocert", "ca = \"ca.pem\""),
        (
            "otherca",
            "otherca",
            "ca = \"other/ca.pem\", cert = \"client.pem\", key = \"client.key\"",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            tls_connector(tls_port, prefix, tls),
        )
        .unwrap();
    }
    let sub = Sub::start(port, "tls-sub", "#").await;
    c.start_all();
    site_up(&c).await;
    common::eventually(Duration::from_secs(10), "birth over TLS", || async {
        (sub.last("tls/nodes/live-1/online")?["online"] == true).then_some(())
    })
    .await;
    c.kill9("live-1");
    let owners = failed_over(&c).await;
    common::eventually(
        Duration::from_secs(10),
        "retained owners over TLS",
        || async {
            owners
                .iter()
                .all(|(id, ..)| {
                    sub.last(&format!("tls/resources/{id}"))
                        .is_some_and(|v| v["owner"] == "fo-1")
                })
                .then_some(())
        },
    )
    .await;
    common::eventually(
        Duration::from_secs(10),
        "failover.completed over TLS",
        || async { sub.last("tls/events/buddygate.failover.completed") },
    )
    .await;
    // Without a client certificate, or trusting another CA: never connected, said in the log.
    let all = sub.all();
    assert!(
        all.iter()
            .all(|m| !m.topic.starts_with("nocert/") && !m.topic.starts_with("otherca/")),
        "{all:?}"
    );
    let logs = c.logs("fo-1");
    assert!(
        logs.lines()
            .any(|l| l.contains("MQTT connection failed") && l.contains("otherca")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("MQTT connection failed") && l.contains("nocert")),
        "{logs}"
    );
}

/// What an MQTT 5 subscriber sees of one publish.
#[derive(Debug, Clone)]
struct Msg5 {
    topic: String,
    payload: Value,
    retain: bool,
    content_type: Option<String>,
    expiry: Option<u32>,
    user: Vec<(String, String)>,
}

impl Msg5 {
    fn user(&self, key: &str) -> Option<&str> {
        self.user
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An MQTT 5 subscriber to `filter`, recording publishes with their properties.
async fn sub5(
    port: u16,
    id: &str,
    filter: &str,
) -> (Arc<Mutex<Vec<Msg5>>>, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let msgs: Arc<Mutex<Vec<Msg5>>> = Default::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let m = msgs.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                    let props = p.properties.clone().unwrap_or_default();
                    m.lock().unwrap().push(Msg5 {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                        retain: p.retain,
                        content_type: props.content_type,
                        expiry: props.message_expiry_interval,
                        user: props.user_properties,
                    });
                }
                Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("SUBACK")
        .unwrap();
    (msgs, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_carries_content_type_expiry_user_properties_and_the_onvif_topic_form() {
    let port = start_broker(true);
    let mut c = common::Cluster::new(
        "mqtt5",
        1,
        2,
        common::SiteOptions {
            connectors: vec![(
                "bus",
                format!(
                    "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nprotocol = \"v5\"\nmessage_expiry = \"1h\"\nonvif_topics = true\n"
                ),
            )],
            ..Default::default()
        },
    );
    let (msgs, task) = sub5(port, "v5-sub", "buddygate/mqtt5/#").await;
    let all = || msgs.lock().unwrap().clone();
    c.start_all();
    site_up(&c).await;
    let online = "buddygate/mqtt5/nodes/live-1/online";
    common::eventually(Duration::from_secs(10), "live-1 birth", || async {
        all()
            .iter()
            .any(|m| m.topic == online && m.payload["online"] == true)
            .then_some(())
    })
    .await;
    c.kill9("live-1");
    let owners = failed_over(&c).await;
    let completed = common::eventually(Duration::from_secs(10), "failover.completed", || async {
        all()
            .into_iter()
            .find(|m| m.topic == "buddygate/mqtt5/events/buddygate.failover.completed")
    })
    .await;
    assert_eq!(
        completed.content_type.as_deref(),
        Some("application/cloudevents+json"),
        "{completed:?}"
    );
    assert_eq!(completed.user("ce-specversion"), Some("1.0"));
    assert_eq!(
        completed.user("ce-type"),
        Some("buddygate.failover.completed")
    );
    assert_eq!(completed.user("ce-id"), completed.payload["id"].as_str());
    assert_eq!(completed.user("ce-source"), Some("buddygate://mqtt5/fo-1"));
    assert_eq!(
        completed.user("epoch"),
        Some(owners[0].3.to_string().as_str()),
        "{completed:?}"
    );
    assert!(
        completed.expiry.is_some_and(|e| e > 3500 && e <= 3600),
        "{completed:?}"
    );
    assert!(!completed.retain);
    // Retained state: JSON, with its epoch as a user property.
    let (id, _, address, epoch) = &owners[0];
    let state = common::eventually(Duration::from_secs(10), "resource state", || async {
        all().into_iter().rev().find(|m| {
            m.topic == format!("buddygate/mqtt5/resources/{id}") && m.payload["owner"] == "fo-1"
        })
    })
    .await;
    assert_eq!(state.content_type.as_deref(), Some("application/json"));
    assert_eq!(state.user("epoch"), Some(epoch.to_string().as_str()));
    assert_eq!(state.expiry, None, "retained state never expires");
    // The ONVIF event-broker form of the same failover.
    let onvif = common::eventually(Duration::from_secs(10), "onvif-ej", || async {
        all()
            .into_iter()
            .find(|m| m.topic == "buddygate/mqtt5/onvif-ej/Failover/Completed/&live-1")
    })
    .await;
    assert_eq!(onvif.payload["Topic"], "bg:Failover/Completed", "{onvif:?}");
    assert_eq!(onvif.payload["Source"]["Server"], "live-1");
    assert_eq!(onvif.payload["Data"]["NewServer"], "fo-1");
    assert_eq!(onvif.payload["Data"]["Address"], address.as_str());
    assert_eq!(onvif.payload["Data"]["Epoch"], epoch.to_string());
    assert!(onvif.payload["UtcTime"].is_string());
    // The will, over MQTT 5 as well.
    common::eventually(Duration::from_secs(10), "live-1 will", || async {
        all()
            .iter()
            .rev()
            .find(|m| m.topic == online)
            .is_some_and(|m| m.payload["online"] == false)
            .then_some(())
    })
    .await;
    task.abort();
}

#[test]
fn the_committed_mqtt_schema_is_fresh() {
    let schema = serde_json::to_string_pretty(&schemars::schema_for!(MqttFile)).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/mqtt.schema.json");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &schema).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == schema,
        "schemas/mqtt.schema.json is stale: run BLESS=1 cargo test --test mqtt the_committed_mqtt_schema_is_fresh"
    );
}

/// docs/asyncapi.yaml describes every topic form and every event type the connector publishes,
/// and every schema it references exists. (The interop script parses it with PyYAML and matches
/// real topics against its channels.)
#[test]
fn the_asyncapi_document_covers_every_topic_and_event() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/asyncapi.yaml")).unwrap();
    assert!(doc.contains("\nasyncapi: 3.0.0\n"));
    for address in [
        "address: buddygate/{site}/nodes/{node}/online\n",
        "address: buddygate/{site}/servers/{server}\n",
        "address: buddygate/{site}/resources/{resource}\n",
        "address: buddygate/{site}/events/{type}\n",
        "address: buddygate/{site}/onvif-ej/Failover/Completed/&{server}\n",
        "address: buddygate/{site}/onvif-ej/Failover/Failback/&{server}\n",
        "address: buddygate/{site}/onvif-ej/Ownership/Conflict/&{resource}\n",
        "address: buddygate/{site}/onvif-ej/Ownership/Unplaced/&{resource}\n",
        "address: buddygate/{site}/onvif-ej/Connector/Failed/&{server}/&{connector}\n",
        "address: buddygate/{site}/onvif-ej/Connector/Recovered/&{server}/&{connector}\n",
    ] {
        assert!(doc.contains(address), "docs/asyncapi.yaml lacks {address}");
    }
    for ty in EVENT_TYPES {
        assert!(
            doc.contains(&format!("          - {ty}\n")),
            "docs/asyncapi.yaml: {ty} is not in the event channel's `type` enum"
        );
        let schema = format!("../schemas/events/{ty}.schema.json");
        assert!(doc.contains(&schema), "docs/asyncapi.yaml lacks {schema}");
    }
    // Every file reference resolves.
    for (i, _) in doc.match_indices("$ref: '../") {
        let rest = &doc[i + "$ref: '".len()..];
        let path = &rest[..rest.find('\'').unwrap()];
        assert!(
            root.join("docs").join(path).is_file(),
            "docs/asyncapi.yaml: {path} does not exist"
        );
    }
    // What the ONVIF form really publishes matches the document.
    let ev = buddygate::store::StoredEvent {
        seq: 1,
        kind: "buddygate.ownership.conflict".into(),
        json: r#"{"type":"buddygate.ownership.conflict","time":"2026-11-24T22:00:00.000Z","data":{"resource":{"id":"cam-001"},"owners":[{"id":"a","address":"10.0.0.1","epoch":3},{"id":"b","address":"10.0.0.2","epoch":4}]}}"#.into(),
    };
    let msgs = buddygate::connectors::mqtt::onvif_messages("buddygate/hq", &ev);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].0,
        "buddygate/hq/onvif-ej/Ownership/Conflict/&cam-001"
    );
    assert_eq!(msgs[0].1["Topic"], "bg:Ownership/Conflict");
    assert_eq!(msgs[0].1["Data"]["Owners"], "a,b");
    assert_eq!(msgs[0].1["Data"]["Epoch"], "4");
    let ev = buddygate::store::StoredEvent {
        seq: 2,
        kind: "buddygate.connector.failed".into(),
        json: r#"{"type":"buddygate.connector.failed","time":"2026-11-24T22:00:00.000Z","data":{"server":{"id":"fo-1","address":"10.0.0.3"},"connector":"psim","kind":"webhook","reason":"r","attempts":1,"retry_in_ms":1000}}"#.into(),
    };
    let msgs = buddygate::connectors::mqtt::onvif_messages("buddygate/hq", &ev);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].0,
        "buddygate/hq/onvif-ej/Connector/Failed/&fo-1/&psim"
    );
    assert_eq!(msgs[0].1["Topic"], "bg:Connector/Failed");
    assert_eq!(msgs[0].1["Data"]["RetryInMs"], "1000");
    let ev = buddygate::store::StoredEvent {
        seq: 3,
        kind: "buddygate.resource.unplaced".into(),
        json: r#"{"type":"buddygate.resource.unplaced","time":"2026-11-24T22:00:00.000Z","data":{"server":{"id":"live-1","address":"10.0.0.1"},"resources":[{"id":"cam-001","reason":"capacity"},{"id":"cam-002","reason":"unavailable"}]}}"#.into(),
    };
    let msgs = buddygate::connectors::mqtt::onvif_messages("buddygate/hq", &ev);
    let topics: Vec<&str> = msgs.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        topics,
        [
            "buddygate/hq/onvif-ej/Ownership/Unplaced/&cam-001",
            "buddygate/hq/onvif-ej/Ownership/Unplaced/&cam-002"
        ]
    );
    assert_eq!(msgs[0].1["Topic"], "bg:Ownership/Unplaced");
    assert_eq!(msgs[1].1["Data"]["Reason"], "unavailable");
}

// ---- with a real Mosquitto: broker restarts, MQTT 5 refusals -----------------------------

/// A Mosquitto broker on a free loopback port (no persistence: a restart loses every retained
/// message), started and stopped by the test. `None` when Mosquitto is not installed (unless
/// `REQUIRE_SYSTEM_TESTS` is set, as in `.ci/run`, which installs it).
struct Mosquitto {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Mosquitto {
    fn start(name: &str, acl: Option<&str>) -> Option<Self> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("REQUIRE_SYSTEM_TESTS").is_none(),
                "mosquitto is not installed"
            );
            eprintln!("SKIPPED: mosquitto is not installed");
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("buddygate-mosq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = common::free_port("127.0.0.1");
        let mut conf =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        if let Some(acl) = acl {
            std::fs::write(dir.join("acl"), acl).unwrap();
            conf.push_str(&format!("acl_file {}\n", dir.join("acl").display()));
        }
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut m = Self {
            port,
            dir,
            child: None,
        };
        m.spawn(bin);
        Some(m)
    }

    fn spawn(&mut self, bin: &str) {
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).unwrap();
        self.child = Some(
            std::process::Command::new(bin)
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (every connection cut, every retained message lost).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with or without its ACL.
    fn restart(&mut self, acl: bool) {
        self.stop();
        if !acl {
            let conf = std::fs::read_to_string(self.dir.join("mosquitto.conf")).unwrap();
            let conf: String = conf
                .lines()
                .filter(|l| !l.starts_with("acl_file"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(self.dir.join("mosquitto.conf"), conf).unwrap();
        }
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
        self.spawn(bin);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node's MQTT connector run in the test's process: its own store (events appended to it
/// as the node would store them) and its own view.
struct MqttNode {
    outbox: common::Outbox,
    snap: tokio::sync::watch::Sender<Arc<buddygate::view::Snapshot>>,
    status: Arc<buddygate::connectors::ConnectorStatus>,
    replay: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MqttNode {
    fn start(
        name: &str,
        site: &Arc<buddygate::config::Site>,
        node: buddygate::config::ServerIdx,
        file: &str,
        snap: buddygate::view::Snapshot,
    ) -> Self {
        let (c, d) = connectors::check_file(file, "bus.toml", Path::new("bus.toml"), None);
        let Some(ConnectorKind::Mqtt(cfg)) = c.map(|c| c.kind) else {
            panic!("not mqtt: {d:?}")
        };
        let outbox = common::Outbox::new(name);
        let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(snap));
        let status = Arc::new(buddygate::connectors::ConnectorStatus::default());
        let m = buddygate::connectors::mqtt::Mqtt::build(
            "bus".into(),
            cfg,
            site.clone(),
            node,
            &outbox.dir,
            status.clone(),
        )
        .unwrap();
        let cancel = CancellationToken::new();
        let replay = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(m.run_with_replay(
            outbox.events.subscribe(),
            snap_rx,
            replay.clone(),
            cancel.clone(),
        ));
        Self {
            outbox,
            snap: snap_tx,
            status,
            replay,
            cancel,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn two_camera_site() -> Arc<buddygate::config::Site> {
    Arc::new(
        buddygate::sim::SiteBuilder::new("part")
            .live("live-1", &["fo-1"])
            .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None)
            .many("live-1", buddygate::config::Kind::Camera, 2, 0)
            .build(),
    )
}

/// A partition where both sides serve live-1's cameras and both publish them; the broker
/// restarts (its retained messages lost) and the loser's republish lands last; then the
/// partition heals (the loser stands down; the winner logs the conflict and its resolution):
/// a subscriber that connects afterwards sees only the winner. `reassert` is off, so this is
/// the republish on a change of claimants alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_and_a_broker_restart_a_fresh_subscriber_sees_only_the_winner() {
    let Some(mut broker) = Mosquitto::start("partition", None) else {
        return;
    };
    let site = two_camera_site();
    let (live, fo) = (
        site.server_idx("live-1").unwrap(),
        site.server_idx("fo-1").unwrap(),
    );
    let file =
        |port| format!("type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nreassert = \"0s\"\n");
    // fo-1 (the winner, epoch 298) talks to the broker directly, live-1 (199) through a proxy
    // the test holds back after the restart.
    let mut proxy = Proxy::new(broker.port);
    proxy.start().await;
    let winner = MqttNode::start(
        "part-fo",
        &site,
        fo,
        &file(broker.port),
        common::owners_snapshot(&site, live, fo, fo, 298, 2),
    );
    let cams = [
        "buddygate/part/resources/live-1-camera-001",
        "buddygate/part/resources/live-1-camera-002",
    ];
    let owner_of = |sub: &Sub| -> Vec<(String, u64)> {
        cams.iter()
            .map(|t| {
                sub.last(t).map_or((String::new(), 0), |v| {
                    (
                        v["owner"].as_str().unwrap_or("").to_string(),
                        v["epoch"].as_u64().unwrap_or(0),
                    )
                })
            })
            .collect()
    };
    let watch = Sub::start(broker.port, "watch", "buddygate/part/resources/#").await;
    common::eventually(Duration::from_secs(5), "fo-1 published", || async {
        owner_of(&watch).iter().all(|o| o.0 == "fo-1").then_some(())
    })
    .await;
    let mut loser = MqttNode::start(
        "part-live",
        &site,
        live,
        &file(proxy.port),
        common::owners_snapshot(&site, fo, live, live, 199, 2),
    );
    common::eventually(Duration::from_secs(5), "live-1 published last", || async {
        owner_of(&watch)
            .iter()
            .all(|o| o.0 == "live-1")
            .then_some(())
    })
    .await;
    drop(watch);

    // The broker restarts; fo-1 is back first, live-1's republish lands last.
    proxy.stop();
    broker.restart(true);
    let watch = Sub::start(broker.port, "watch2", "buddygate/part/resources/#").await;
    common::eventually(Duration::from_secs(15), "fo-1 republished", || async {
        owner_of(&watch).iter().all(|o| o.0 == "fo-1").then_some(())
    })
    .await;
    proxy.start().await;
    common::eventually(
        Duration::from_secs(15),
        "live-1 republished last",
        || async {
            owner_of(&watch)
                .iter()
                .all(|o| o.0 == "live-1")
                .then_some(())
        },
    )
    .await;

    // The partition heals: live-1 stands down (its view: fo-1 serves them); fo-1 logs the
    // conflict and its resolution for each camera.
    loser
        .snap
        .send(Arc::new(common::owners_snapshot(
            &site, live, live, fo, 298, 2,
        )))
        .unwrap();
    let mut winner = winner;
    for cam in ["live-1-camera-001", "live-1-camera-002"] {
        let resource = serde_json::json!({"id": cam, "kind": "camera"});
        winner.outbox.append(
            "buddygate.ownership.conflict",
            serde_json::json!({"site": "part", "resource": resource, "owners": [
                {"id": "fo-1", "address": "127.0.0.2", "epoch": 298},
                {"id": "live-1", "address": "127.0.0.1", "epoch": 199}]}),
        );
        winner.outbox.append(
            "buddygate.ownership.resolved",
            serde_json::json!({"site": "part", "resource": resource, "owner": "fo-1",
                "address": "127.0.0.2", "epoch": 298}),
        );
    }
    common::eventually(Duration::from_secs(10), "fo-1 published again", || async {
        owner_of(&watch).iter().all(|o| o.0 == "fo-1").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = Sub::start(broker.port, "fresh", "buddygate/part/resources/#").await;
    let got = common::eventually(Duration::from_secs(5), "retained owners", || async {
        let o = owner_of(&fresh);
        o.iter().all(|o| !o.0.is_empty()).then_some(o)
    })
    .await;
    assert_eq!(got, [("fo-1".to_string(), 298), ("fo-1".to_string(), 298)]);
    assert!(
        fresh.all().iter().all(|m| m.payload["owner"] == "fo-1"),
        "{:?}",
        fresh.all()
    );
    loser.stop().await;
    winner.stop().await;
}

/// A resource no buddy can take is published as such by the node that reports it unplaced
/// (its last owner's message must not stay retained as the truth), and every retained topic
/// is published again every `reassert` interval with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplaced_resources_are_published_without_an_owner_and_everything_is_reasserted() {
    let port = broker();
    let site = two_camera_site();
    let (live, fo) = (
        site.server_idx("live-1").unwrap(),
        site.server_idx("fo-1").unwrap(),
    );
    let mut snap = common::owners_snapshot(&site, live, fo, fo, 298, 2);
    // cam-002: live-1 is down and fo-1 cannot take it.
    snap.resources[1].owner = None;
    snap.resources[1].epoch = 199;
    snap.resources[1].state = buddygate::failover::ResourceState::Unassigned;
    snap.resources[1].unplaced = true;
    let file = format!("type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nreassert = \"1s\"\n");
    let mut node = MqttNode::start("unplaced", &site, fo, &file, snap);
    let sub = Sub::start(port, "unplaced-sub", "buddygate/part/resources/#").await;
    let topic = "buddygate/part/resources/live-1-camera-002";
    // Retained messages come in no fixed order: wait for both.
    let (v, served) = common::eventually(Duration::from_secs(5), "unplaced", || async {
        Some((
            sub.last(topic)?,
            sub.last("buddygate/part/resources/live-1-camera-001")?,
        ))
    })
    .await;
    assert_eq!(
        (
            v["owner"].clone(),
            v["address"].clone(),
            v["state"].clone(),
            v["epoch"].clone()
        ),
        (Value::Null, Value::Null, "unplaced".into(), 199.into()),
        "{v}"
    );
    assert_eq!(
        (served["owner"].clone(), served["state"].clone()),
        ("fo-1".into(), "active".into())
    );
    // Re-asserted: the same state again, newer timestamps, nothing changed meanwhile.
    common::eventually(Duration::from_secs(5), "re-asserted twice", || async {
        let stamps: Vec<String> = sub
            .all()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload["timestamp"].as_str().unwrap().to_string())
            .collect();
        (stamps.len() >= 3 && stamps.windows(2).all(|w| w[0] < w[1])).then_some(())
    })
    .await;
    node.stop().await;
}

/// An MQTT 5 broker that refuses an event (a PUBACK with reason code NotAuthorized: the ACL
/// does not let the node publish `path.down`) makes it a dead letter: the cursor moves on
/// with it recorded, not silently. Once the broker lets it through, a replay delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_refusal_is_a_dead_letter_that_replays() {
    let acl = "topic read #\ntopic write buddygate/part/nodes/#\ntopic write buddygate/part/servers/#\n\
               topic write buddygate/part/resources/#\ntopic write buddygate/part/events/buddygate.failover.completed\n";
    let Some(mut broker) = Mosquitto::start("refusal", Some(acl)) else {
        return;
    };
    let site = two_camera_site();
    let (live, fo) = (
        site.server_idx("live-1").unwrap(),
        site.server_idx("fo-1").unwrap(),
    );
    let file = format!(
        "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nprotocol = \"v5\"\n",
        broker.port
    );
    let mut node = MqttNode::start(
        "refusal",
        &site,
        fo,
        &file,
        common::owners_snapshot(&site, live, fo, fo, 298, 2),
    );
    let data = serde_json::json!({"site": "part", "server": {"id": "live-1", "address": "127.0.0.1"}, "path": 0});
    node.outbox
        .append("buddygate.failover.completed", data.clone());
    let refused = node.outbox.append("buddygate.path.down", data.clone());
    node.outbox
        .append("buddygate.failover.completed", data.clone());
    let reader = buddygate::store::Store::open_reader(&node.outbox.dir).unwrap();
    common::eventually(Duration::from_secs(10), "all three handled", || async {
        (reader.cursor("bus").ok()? == 3).then_some(())
    })
    .await;
    let dead = reader.dead_letters("bus").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].seq, refused.seq);
    assert!(
        dead[0].reason.contains("NotAuthorized"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        node.status.dead.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        node.status
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // The broker now lets it through: a replay delivers it and clears the dead letter.
    broker.restart(false);
    let sub = Sub::start(broker.port, "refusal-sub", "buddygate/part/events/#").await;
    node.replay.notify_one();
    common::eventually(Duration::from_secs(15), "the replay delivered", || async {
        sub.all()
            .iter()
            .any(|m| m.payload["type"] == "buddygate.path.down")
            .then_some(())
    })
    .await;
    common::eventually(Duration::from_secs(5), "dead letter cleared", || async {
        reader.dead_letters("bus").ok()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        node.status.dead.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    node.stop().await;
}
