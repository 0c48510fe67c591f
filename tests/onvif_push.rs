//! The `type = "onvif"` connector against a real SOAP consumer (an axum server in the test that
//! parses every `wsnt:Notify` with quick-xml): real failovers of real `buddygate run`
//! processes, a consumer that is down during the failover, a kill -9 of the sending node with
//! deliveries pending, SOAP faults retried, WS-UsernameToken digests verified with the node's
//! own verifier, batches, dead letters and replay, and bad connector files.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use buddygate::api::onvif::auth::Authenticator;
use buddygate::config::connectors::DEFAULT_RETRY;
use buddygate::connectors::onvif::{Onvif, OnvifConfig, OnvifFile};
use buddygate::connectors::{self, ConnectorKind, ConnectorStatus};
use buddygate::onvif::soap::ns;
use buddygate::store::{Store, StoredEvent};
use quick_xml::events::Event;
use serde_json::{Value, json};

use common::receiver::{Receiver, Reply};
use common::{Outbox, Running};

/// One `tt:Message` of a `Notify`, as the consumer parsed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Msg {
    topic: String,
    operation: Option<String>,
    source: Vec<(String, String)>,
    data: Vec<(String, String)>,
}

impl Msg {
    fn source(&self, name: &str) -> Option<&str> {
        self.source
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn data(&self, name: &str) -> Option<&str> {
        self.data
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A `Notify` request as received.
#[derive(Debug, Clone)]
struct Received {
    body: String,
    messages: Vec<Msg>,
    /// What the consumer answered.
    status: u16,
    at: Instant,
}

/// The messages of a `wsnt:Notify` body, read with quick-xml (local names: the consumer does
/// not care which prefixes the sender picked). Panics on XML that is not well-formed.
fn parse_notify(body: &str) -> Vec<Msg> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut out: Vec<Msg> = Vec::new();
    let mut in_topic = false;
    let mut section = "";
    let mut notify = false;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) => {
                let attr = |name: &str| {
                    e.try_get_attribute(name)
                        .unwrap()
                        .map(|a| a.value.to_string())
                };
                match e.local_name().as_ref() {
                    "Notify" => notify = true,
                    "NotificationMessage" => out.push(Msg::default()),
                    "Topic" => in_topic = true,
                    "Message" => {
                        if let Some(op) = attr("PropertyOperation") {
                            out.last_mut().unwrap().operation = Some(op);
                        }
                    }
                    "Source" => section = "source",
                    "Data" => section = "data",
                    "SimpleItem" => {
                        let item = (attr("Name").unwrap(), attr("Value").unwrap());
                        let m = out.last_mut().unwrap();
                        match section {
                            "source" => m.source.push(item),
                            _ => m.data.push(item),
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_topic => {
                out.last_mut().unwrap().topic = t.as_ref().to_string();
            }
            Event::End(e) if e.local_name().as_ref() == "Topic" => in_topic = false,
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(notify, "not a wsnt:Notify: {body}");
    out
}

/// A real SOAP consumer: answers each `Notify` from a script (a status with a SOAP fault
/// body; 200 when the script runs out) and records every request.
#[derive(Clone)]
struct Consumer(Receiver);

impl Consumer {
    async fn start(addr: &str) -> Self {
        Consumer(Receiver::start(addr, "/notify").await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// The next answers: these statuses, with a SOAP fault unless 2xx.
    fn script(&self, statuses: &[u16]) {
        let replies: Vec<Reply> = statuses.iter().map(|&s| Reply::SoapFault(s)).collect();
        self.0.script(&replies);
    }

    fn requests(&self) -> Vec<Received> {
        self.0
            .requests()
            .into_iter()
            .map(|r| Received {
                messages: parse_notify(&r.body),
                body: r.body,
                status: r.status,
                at: r.at,
            })
            .collect()
    }

    /// Messages of the requests answered 2xx, in order.
    fn accepted(&self) -> Vec<Msg> {
        self.requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .flat_map(|r| r.messages)
            .collect()
    }
}

/// A loopback address nobody listens on (yet).
fn unused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn retries(n: usize, each: &str) -> String {
    let v: Vec<String> = (0..n).map(|_| format!("\"{each}\"")).collect();
    format!("[{}]", v.join(", "))
}

/// The connector file for a cluster test.
fn connector_file(url: &str, events: &str) -> String {
    format!(
        "type = \"onvif\"\nurl = \"{url}\"\nevents = {events}\ntimeout = \"1s\"\nretry = {}\n",
        retries(100, "200ms")
    )
}

/// The `onvif` entry of a node's `GET /api/v1/connectors`.
async fn status_of(api: &str, name: &str) -> Option<Value> {
    let v = common::get(&format!("{api}/api/v1/connectors")).await?;
    v["connectors"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// A started site of `live` live servers with `cameras` cameras each and fo-1, every node
/// running the connector `io` to `url` for `events`; returned once live-1's resources are
/// active on live-1.
async fn site(name: &str, live: usize, cameras: usize, url: &str, events: &str) -> common::Cluster {
    let mut c = common::Cluster::new(
        name,
        live,
        cameras,
        common::SiteOptions {
            connectors: vec![("io", connector_file(url, events))],
            ..Default::default()
        },
    );
    c.start_all();
    site_up(&c).await;
    c
}

/// Waits for the site to be up with live-1's resources active on live-1.
async fn site_up(c: &common::Cluster) {
    common::eventually(Duration::from_secs(15), "site up", || async {
        let v = common::owners(&c.api("fo-1"), "live-1").await?;
        (!v.is_empty() && v.iter().all(|r| r.0 == "live-1" && r.3 == "active")).then_some(())
    })
    .await;
}

/// live-1's resources as fo-1 serves them after a takeover: (owner address, epoch).
async fn taken_over(c: &common::Cluster) -> (String, u64) {
    common::eventually(Duration::from_secs(10), "takeover by fo-1", || async {
        let v = common::owners(&c.api("fo-1"), "live-1").await?;
        (!v.is_empty() && v.iter().all(|r| r.0 == "fo-1" && r.3 == "active"))
            .then(|| (v[0].1.clone(), v[0].2))
    })
    .await
}

/// 1. Three real nodes; kill -9 of live-1: the consumer gets a `Notify` from fo-1 naming each
/// of live-1's resources with fo-1's address and the new epoch, and `bg:Failover/Completed`.
/// The connector shows in the status API and in the metrics as kind "onvif".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_failover_reaches_the_consumer_as_notify() {
    let rx = Consumer::start("127.0.0.1:0").await;
    let mut c = site(
        "onvifpush",
        2,
        3,
        &rx.url(),
        "[\"buddygate.failover.*\", \"buddygate.failback.completed\", \"buddygate.server.*\"]",
    )
    .await;
    let t0 = Instant::now();
    c.kill9("live-1");
    let fo_addr = c.servers[c.index("fo-1")].address.clone();
    until(Duration::from_secs(5), "bg:Failover/Completed", || {
        rx.accepted()
            .iter()
            .any(|m| m.topic == "bg:Failover/Completed")
    })
    .await;
    let took = rx
        .requests()
        .iter()
        .find(|r| {
            r.messages
                .iter()
                .any(|m| m.topic == "bg:Failover/Completed")
        })
        .map(|r| r.at.duration_since(t0))
        .unwrap();
    eprintln!("kill -9 -> Notify received: {took:?}");
    let (address, epoch) = taken_over(&c).await;
    assert_eq!(address, fo_addr);
    let got = rx.accepted();
    for cam in 1..=3 {
        let id = format!("live-1-cam-{cam:02}");
        let m = got
            .iter()
            .find(|m| m.topic == "bg:Ownership/Resource" && m.source("Resource") == Some(&id))
            .unwrap_or_else(|| panic!("no message for {id} in {got:#?}"));
        assert_eq!(m.operation.as_deref(), Some("Changed"));
        assert_eq!(m.data("Owner"), Some("fo-1"));
        assert_eq!(m.data("Address"), Some(fo_addr.as_str()));
        assert_eq!(m.data("Epoch"), Some(epoch.to_string().as_str()));
        assert_eq!(m.data("Home"), Some("live-1"));
        assert_eq!(m.data("State"), Some("active"));
    }
    let done = got
        .iter()
        .find(|m| m.topic == "bg:Failover/Completed")
        .unwrap();
    assert_eq!(done.source("Server"), Some("live-1"));
    assert_eq!(done.data("NewServer"), Some("fo-1"));
    assert_eq!(done.data("Address"), Some(fo_addr.as_str()));
    assert_eq!(done.data("Epoch"), Some(epoch.to_string().as_str()));
    assert_eq!(done.data("Resources"), Some("3"));
    let down = got
        .iter()
        .find(|m| m.topic == "bg:Server/State" && m.source("Server") == Some("live-1"))
        .expect("live-1 down");
    assert_eq!(down.data("State"), Some("down"));
    // live-2's resources did not move: nothing says they did.
    assert!(
        !got.iter().any(|m| m
            .source("Resource")
            .is_some_and(|r| r.starts_with("live-2"))),
        "{got:#?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    let st = status_of(&c.api("fo-1"), "io").await.unwrap();
    assert_eq!(st["type"], "onvif");
    assert_eq!(st["target"], rx.url());
    assert_eq!(st["state"], "ok", "{st}");
    assert!(st["delivered"].as_u64().unwrap() >= 2, "{st}");
    let metrics = common::text(&format!("{}/metrics", c.api("fo-1"))).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("buddygate_connector_delivered_total{connector=\"io\",type=\"onvif\"}")),
        "{metrics}"
    );
}

/// 2. The consumer is down during the failover: fo-1 retries (its status says so), and once
/// the consumer is up every message arrives, in the order of fo-1's event log, none lost and
/// none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_down_during_the_failover_gets_everything_in_order_after_it_comes_back() {
    let addr = unused_addr();
    let url = format!("http://{addr}/notify");
    let mut c = site(
        "onvifdown",
        1,
        4,
        &url,
        "[\"buddygate.server.down\", \"buddygate.failover.completed\"]",
    )
    .await;
    c.kill9("live-1");
    let (fo_addr, epoch) = taken_over(&c).await;
    let api = c.api("fo-1");
    let retrying = common::eventually(Duration::from_secs(5), "retries", || async {
        let st = status_of(&api, "io").await?;
        (st["retried"].as_u64()? >= 2).then_some(st)
    })
    .await;
    assert_eq!(retrying["state"], "retrying", "{retrying}");
    assert_eq!(retrying["delivered"], 0);
    assert!(retrying["queue_depth"].as_u64().unwrap() >= 1, "{retrying}");
    assert!(
        retrying["last_error"]
            .as_str()
            .unwrap()
            .starts_with("error:"),
        "{retrying}"
    );
    assert!(
        retrying["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["outcome"] != "delivered 200")
    );

    let rx = Consumer::start(&addr.to_string()).await;
    until(Duration::from_secs(5), "bg:Failover/Completed", || {
        rx.accepted()
            .iter()
            .any(|m| m.topic == "bg:Failover/Completed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<(String, String)> = rx
        .accepted()
        .iter()
        .map(|m| {
            let what = m
                .source("Resource")
                .or(m.source("Server"))
                .unwrap()
                .to_string();
            (m.topic.clone(), what)
        })
        .collect();
    // Exactly what fo-1's log holds, in its order: live-1 down, then each resource of the
    // failover (in the event's order) and the failover itself.
    let log = common::get(&format!("{api}/api/v1/events?after=0"))
        .await
        .unwrap();
    let wanted: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str().unwrap_or(""),
                "buddygate.server.down" | "buddygate.failover.completed"
            )
        })
        .collect();
    let kinds: Vec<&str> = wanted.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["buddygate.server.down", "buddygate.failover.completed"]
    );
    let t = |a: &str, b: &str| (a.to_string(), b.to_string());
    let mut expected = vec![t("bg:Server/State", "live-1")];
    let resources = wanted[1]["data"]["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 4);
    for r in resources {
        expected.push(t("bg:Ownership/Resource", r["id"].as_str().unwrap()));
    }
    expected.push(t("bg:Failover/Completed", "live-1"));
    assert_eq!(got, expected);
    for m in rx.accepted().iter().skip(1) {
        assert_eq!(m.data("Address"), Some(fo_addr.as_str()));
        assert_eq!(m.data("Epoch"), Some(epoch.to_string().as_str()));
    }
    let st = common::eventually(Duration::from_secs(3), "caught up", || async {
        let st = status_of(&api, "io").await?;
        (st["queue_depth"] == 0).then_some(st)
    })
    .await;
    assert_eq!(st["state"], "ok", "{st}");
    assert_eq!(st["delivered"], 2, "{st}");
    assert!(st["retried"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["dead_letters"].as_array().unwrap().len(), 0);
}

/// 3. fo-1 is killed (-9) while its deliveries wait for a consumer that is down; once the
/// consumer and fo-1 are back, what fo-1 stored before the crash is delivered (the cursor is
/// durable), before anything newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_of_the_sending_node_with_deliveries_pending_loses_nothing() {
    let addr = unused_addr();
    let url = format!("http://{addr}/notify");
    let mut c = site(
        "onvifcrash",
        1,
        2,
        &url,
        "[\"buddygate.failover.completed\"]",
    )
    .await;
    c.kill9("live-1");
    let (fo_addr, epoch) = taken_over(&c).await;
    let api = c.api("fo-1");
    common::eventually(Duration::from_secs(5), "a failed attempt", || async {
        let st = status_of(&api, "io").await?;
        (st["failed"].as_u64()? >= 1).then_some(())
    })
    .await;
    c.kill9("fo-1");
    let rx = Consumer::start(&addr.to_string()).await;
    c.start("fo-1");
    until(Duration::from_secs(15), "the pre-crash failover", || {
        rx.accepted().iter().any(|m| {
            m.topic == "bg:Failover/Completed"
                && m.data("Epoch") == Some(epoch.to_string().as_str())
        })
    })
    .await;
    let got = rx.accepted();
    let first = got
        .iter()
        .find(|m| m.topic == "bg:Failover/Completed")
        .unwrap();
    assert_eq!(first.data("Epoch"), Some(epoch.to_string().as_str()));
    assert_eq!(first.data("Address"), Some(fo_addr.as_str()));
    for cam in ["live-1-cam-01", "live-1-cam-02"] {
        assert!(
            got.iter().any(|m| m.source("Resource") == Some(cam)
                && m.data("Epoch") == Some(epoch.to_string().as_str())),
            "{cam}: {got:#?}"
        );
    }
    // Epochs never go back: what was stored first is delivered first.
    let epochs: Vec<u64> = got
        .iter()
        .filter_map(|m| m.data("Epoch")?.parse().ok())
        .collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
}

impl Outbox {
    /// A `failover.completed` of `cams` cameras of live-1 to fo-1 at `epoch`.
    fn failover(&mut self, epoch: u64, cams: usize) -> StoredEvent {
        let resources: Vec<Value> = (1..=cams)
            .map(|i| json!({"id": format!("cam-{i}"), "kind": "camera", "owner": "fo-1", "address": "127.0.0.3", "epoch": epoch}))
            .collect();
        self.append(
            "buddygate.failover.completed",
            json!({"site": "hq", "server": {"id": "live-1", "address": "127.0.0.1"},
                   "new_server": {"id": "fo-1", "address": "127.0.0.3"}, "epoch": epoch,
                   "resources": resources, "failed": [], "takeover_ms": 400}),
        )
    }
}

fn config(text: &str, base: Option<&Path>) -> OnvifConfig {
    let ConnectorKind::Onvif(o) = common::connector(text, "io.toml", base) else {
        panic!("not onvif")
    };
    o
}

fn run(outbox: &Outbox, cfg: OnvifConfig) -> Running {
    let mut b = buddygate::sim::SiteBuilder::new("hq")
        .live("live-1", &["fo-1"])
        .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None);
    for i in 1..=10 {
        b = b.resource(
            &format!("cam-{i}"),
            buddygate::config::Kind::Camera,
            "live-1",
            0,
        );
    }
    let site = Arc::new(b.build());
    let status = Arc::new(ConnectorStatus::default());
    let o = Onvif::build("io".into(), cfg, site, &outbox.dir, status.clone()).unwrap();
    let events = outbox.events.subscribe();
    Running::spawn(status, |replay, cancel| o.run(events, replay, cancel))
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

/// 4. A consumer answering HTTP 500 with a SOAP fault is retried on the schedule, and the
/// fault's reason is the connector's last error; every `Notify` carries a WS-UsernameToken
/// whose digest the node's own verifier accepts (and rejects with another password).
#[tokio::test]
async fn soap_faults_are_retried_and_the_username_token_verifies() {
    let rx = Consumer::start("127.0.0.1:0").await;
    rx.script(&[500, 500]);
    let mut outbox = Outbox::new("auth");
    let dir = outbox.dir.join("connectors");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("io.pass"), "p4ss-w0rd\n").unwrap();
    outbox.failover(7, 2);
    let r = run(
        &outbox,
        config(
            &format!(
                "type = \"onvif\"\nurl = \"{}\"\nusername = \"bg-push\"\npassword = \"file:io.pass\"\nretry = [\"50ms\", \"50ms\", \"50ms\"]\n",
                rx.url()
            ),
            Some(&dir),
        ),
    );
    until(Duration::from_secs(5), "delivered after two faults", || {
        load(&r.status.delivered) == 1
    })
    .await;
    let reqs = rx.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The same messages on every attempt.
    assert!(reqs.iter().all(|q| q.messages == reqs[2].messages));
    assert_eq!(reqs[2].messages.len(), 3, "{:#?}", reqs[2].messages);
    assert_eq!(load(&r.status.failed), 2);
    assert_eq!(load(&r.status.retried), 2);
    assert_eq!(
        r.status.last_error.lock().unwrap().as_deref(),
        Some("http 500: soap fault: consumer busy")
    );
    let attempts = Store::open_reader(&outbox.dir)
        .unwrap()
        .attempts("io", 10)
        .unwrap();
    let mut outcomes: Vec<(u32, String)> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.clone()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            (1, "http 500: soap fault: consumer busy".to_string()),
            (2, "http 500: soap fault: consumer busy".to_string()),
            (3, "delivered 200".to_string()),
        ]
    );
    let verifier = Authenticator::new(
        vec![("bg-push".into(), "p4ss-w0rd".into())],
        Default::default(),
    );
    let impostor = Authenticator::new(vec![("bg-push".into(), "guess".into())], Default::default());
    for q in &reqs {
        let envelope = buddygate::onvif::xml::parse(q.body.as_bytes()).unwrap();
        let security = envelope
            .child(ns::ENV, "Header")
            .and_then(|h| h.child(ns::WSSE, "Security"));
        assert!(security.is_some(), "no wsse:Security in {}", q.body);
        assert!(
            impostor.check(security, SystemTime::now(), None).is_err(),
            "another password verifies"
        );
        assert_eq!(
            verifier.check(security, SystemTime::now(), None).unwrap(),
            "bg-push"
        );
    }
    r.cancel.cancel();
    let _ = r.task.await;
}

/// Batches of at most `batch` messages; a consumer failing past the schedule gives dead
/// letters (the cursor moves on), and a replay delivers them.
#[tokio::test]
async fn batches_dead_letters_and_replay() {
    let rx = Consumer::start("127.0.0.1:0").await;
    rx.script(&[503, 503]);
    let mut outbox = Outbox::new("dead");
    outbox.failover(5, 3);
    let r = run(
        &outbox,
        config(
            &format!(
                "type = \"onvif\"\nurl = \"{}\"\nretry = [\"20ms\"]\nbatch = 2\n",
                rx.url()
            ),
            None,
        ),
    );
    until(Duration::from_secs(5), "a dead letter", || {
        load(&r.status.dead) == 1
    })
    .await;
    assert_eq!(
        Store::open_reader(&outbox.dir)
            .unwrap()
            .cursor("io")
            .unwrap(),
        1
    );
    // Later events go on; a failover of 3 resources is 4 messages: two Notify of 2.
    outbox.failover(6, 3);
    until(Duration::from_secs(5), "the next event", || {
        load(&r.status.delivered) == 1
    })
    .await;
    let ok: Vec<Received> = rx
        .requests()
        .into_iter()
        .filter(|q| q.status == 200)
        .collect();
    assert_eq!(
        ok.iter().map(|q| q.messages.len()).collect::<Vec<_>>(),
        [2, 2]
    );
    assert!(
        ok.iter()
            .flat_map(|q| &q.messages)
            .all(|m| m.data("Epoch") == Some("6"))
    );
    r.replay.notify_one();
    until(Duration::from_secs(5), "the replay", || {
        load(&r.status.dead) == 0 && load(&r.status.delivered) == 2
    })
    .await;
    let last: Vec<Msg> = rx.accepted().into_iter().skip(4).collect();
    assert_eq!(last.len(), 4);
    assert!(
        last.iter().all(|m| m.data("Epoch") == Some("5")),
        "{last:#?}"
    );
    assert!(
        Store::open_reader(&outbox.dir)
            .unwrap()
            .dead_letters("io")
            .unwrap()
            .is_empty()
    );
    r.cancel.cancel();
    let _ = r.task.await;
}

#[test]
fn bad_onvif_files_report_every_problem_with_its_position() {
    let text = "type = \"onvif\"\nurl = \"ftp://io\"\nevents = [\"buddygate.nothing\"]\nusername = \"bg\"\ntimeout = \"0s\"\nretry = [\"soon\"]\nbatch = 0\nbatchsize = 5\n";
    let lines = common::refused(text, "io.toml", None);
    assert_eq!(
        lines,
        [
            "io.toml:2:7: url: \"ftp\": only http:// and https:// URLs are supported",
            "io.toml:3:11: events[0]: \"buddygate.nothing\" matches no event type (they are buddygate.server.down, buddygate.failover.completed, ...)",
            "io.toml:4:12: username: a username needs a `password` (WS-UsernameToken)",
            "io.toml:5:11: timeout: must be more than 0s",
            "io.toml:6:10: retry[0]: invalid duration \"soon\": expected number at 0",
            "io.toml:7:9: batch: batch 0: expected 1 to 1000 messages",
            "io.toml:8:1: batchsize: unknown key `batchsize`; expected one of `type`, `url`, `events`, `username`, `password`, `timeout`, `retry`, `batch`, `tls`",
        ]
    );
    let (_, d) = connectors::check_file(
        "type = \"onvif\"\nurl = \"http://io/notify\"\ntimeout = \"5 parsecs\"\npassword = \"hunter2\"\n",
        "t.toml",
        Path::new("t.toml"),
        None,
    );
    let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("t.toml:3:11: timeout: invalid duration \"5 parsecs\""),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1..],
        [
            "t.toml:4:12: password: a password needs a `username`",
            "t.toml:4:12: warning: password: inline secret; use file:PATH or env:VAR in production",
        ]
    );
    let (c, d) = connectors::check_file(
        "type = \"onvif\"\nurl = \"https://psim.example/onvif/notify\"\nusername = \"bg\"\npassword = \"env:ONVIF_PASS\"\nevents = [\"buddygate.failover.*\"]\n",
        "ok.toml",
        Path::new("ok.toml"),
        None,
    );
    assert!(d.is_empty(), "{d:?}");
    let ConnectorKind::Onvif(o) = c.unwrap().kind else {
        panic!("not onvif")
    };
    assert_eq!(o.batch, 100);
    assert_eq!(o.retry, DEFAULT_RETRY);
    assert_eq!(o.timeout, Duration::from_secs(5));
    assert!(
        o.events.wants("buddygate.failover.completed") && !o.events.wants("buddygate.server.up")
    );
}

#[test]
fn the_shipped_onvif_connector_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors");
    let path = dir.join("onvif-io.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (c, d) = connectors::check_file(&text, "onvif-io.toml", &path, Some(&dir));
    assert!(d.is_empty(), "{d:?}");
    let c = c.unwrap();
    assert_eq!(c.name, "onvif-io");
    assert_eq!(c.kind.type_name(), "onvif");
}

#[test]
fn the_committed_onvif_schema_is_fresh() {
    common::assert_schema_fresh(
        &schemars::schema_for!(OnvifFile),
        "schemas/onvif.schema.json",
        "onvif_push",
    );
}
