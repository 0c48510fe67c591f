//! The webhook connector against a real HTTP receiver and a real SQLite outbox: signing,
//! order, retries, Retry-After, 410, timeouts, dead letters and replay, a receiver that is down
//! for a while, a crash of the sender, the shipped templates, bad connector files; and a
//! three-node failover delivered to a PSIM.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buddygate::connectors::webhook::{Webhook, WebhookConfig, WebhookFile, decode_whsec, sign};
use buddygate::connectors::{self, ConnectorKind, ConnectorStatus};
use buddygate::store::{Store, StoredEvent};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use common::receiver::{Receiver, Reply, Request};
use common::{Outbox, Running};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The PSIM: records every request, answers from a script.
async fn receiver() -> Receiver {
    Receiver::start("127.0.0.1:0", "/hook").await
}

impl Outbox {
    fn push(&mut self, ty: &str) -> StoredEvent {
        self.append(
            ty,
            json!({"site": "hq", "server": {"id": "live-1", "address": "127.0.0.1"},
                   "new_server": {"id": "fo-1", "address": "127.0.0.3"}, "epoch": 298,
                   "resources": [{"id": "cam-1", "kind": "camera", "owner": "fo-1", "address": "127.0.0.3", "epoch": 298}]}),
        )
    }
}

fn config(text: &str, base: Option<&Path>) -> WebhookConfig {
    let ConnectorKind::Webhook(w) = common::connector(text, "psim.toml", base) else {
        panic!("not a webhook")
    };
    w
}

fn run(outbox: &Outbox, cfg: WebhookConfig) -> Running {
    let site = Arc::new(
        buddygate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None)
            .build(),
    );
    let status = Arc::new(ConnectorStatus::default());
    let w = Webhook::build(
        "psim".into(),
        cfg,
        site.clone(),
        site.server_idx("fo-1").unwrap(),
        &outbox.dir,
        status.clone(),
    )
    .unwrap();
    let events = outbox.events.subscribe();
    Running::spawn(status, |replay, cancel| w.run(events, replay, cancel))
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn basic(url: &str, extra: &str) -> String {
    format!(
        "type = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nretry = [\"50ms\", \"100ms\"]\n{extra}"
    )
}

fn ids(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn delivers_every_event_once_in_order_signed() {
    let rx = receiver().await;
    let mut outbox = Outbox::new("order");
    let sent: Vec<_> = (0..5)
        .map(|_| outbox.push("buddygate.failover.completed"))
        .collect();
    let r = run(&outbox, config(&basic(&rx.url(), ""), None));
    until(Duration::from_secs(5), "5 deliveries", || {
        rx.requests().len() == 5
    })
    .await;
    let reqs = rx.requests();
    let key = decode_whsec(SECRET).unwrap();
    for (req, ev) in reqs.iter().zip(&sent) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.headers["content-type"], "application/cloudevents+json");
        assert_eq!(req.body, ev.json, "the body is the stored CloudEvent");
        let id = req.headers["webhook-id"].to_str().unwrap();
        assert_eq!(id, format!("fo-1:{}", ev.seq));
        let ts: u64 = req.headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            req.headers["webhook-signature"].to_str().unwrap(),
            sign(std::slice::from_ref(&key), id, ts, &req.body)
        );
    }
    // More events are picked up as they are stored.
    outbox.push("buddygate.failback.completed");
    // The receiver records a request before it answers; the count moves once the answer is in.
    until(Duration::from_secs(5), "the 6th delivered", || {
        r.status
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            == 6
    })
    .await;
    assert_eq!(rx.requests().len(), 6);
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn server_errors_are_retried_on_the_schedule_and_retry_after_is_honoured() {
    let rx = receiver().await;
    rx.script(&[
        Reply::Status(500),
        Reply::Status(503),
        Reply::RetryAfter(429, 1),
    ]);
    let mut outbox = Outbox::new("retry");
    outbox.push("buddygate.failover.completed");
    let r = run(
        &outbox,
        config(
            &basic(&rx.url(), "retry = [\"50ms\", \"100ms\", \"100ms\"]\n")
                .replace("retry = [\"50ms\", \"100ms\"]\n", ""),
            None,
        ),
    );
    until(Duration::from_secs(5), "4 attempts", || {
        rx.requests().len() == 4
    })
    .await;
    let reqs = rx.requests();
    assert_eq!(
        ids(&reqs),
        vec!["fo-1:1"; 4],
        "the same webhook-id on every attempt"
    );
    let gap = |i: usize| reqs[i].at - reqs[i - 1].at;
    assert!(
        gap(1) >= Duration::from_millis(45),
        "backoff before retry 1: {:?}",
        gap(1)
    );
    assert!(
        gap(2) >= Duration::from_millis(90),
        "backoff before retry 2: {:?}",
        gap(2)
    );
    assert!(
        gap(3) >= Duration::from_millis(990),
        "Retry-After: 1 honoured: {:?}",
        gap(3)
    );
    until(Duration::from_secs(1), "delivered", || {
        r.status
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert_eq!(
        r.status.retried.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    r.cancel.cancel();
    let _ = r.task.await;
}

/// A receiver that answers the first request of each connection with a kept-alive 200 and
/// drops the connection when a second request arrives on it (what a server that closes idle
/// connections does when the close and the next request cross). Returns its URL and the
/// number of requests answered.
async fn closing_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut request = Vec::new();
                // Read one request: headers and a Content-Length body.
                loop {
                    let Ok(read) = conn.read(&mut buf).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                // The next request on this connection: read its first bytes, then hang up.
                let _ = conn.read(&mut buf).await;
            });
        }
    });
    (url, answered)
}

/// A delivery that goes out on a kept-alive connection the receiver closed is sent again at
/// once on a new one, not after the first retry delay (10 s here).
#[tokio::test]
async fn a_request_on_a_connection_the_receiver_closed_is_resent_at_once() {
    let (url, answered) = closing_receiver().await;
    let mut outbox = Outbox::new("closed");
    let text =
        format!("type = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nretry = [\"10s\"]\n");
    let r = run(&outbox, config(&text, None));
    for i in 1..=3 {
        outbox.push("buddygate.failover.completed");
        until(
            Duration::from_secs(3),
            &format!("delivery {i} without waiting for a retry"),
            || answered.load(std::sync::atomic::Ordering::SeqCst) == i,
        )
        .await;
    }
    assert_eq!(
        r.status.retried.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_until_a_replay() {
    let rx = receiver().await;
    rx.script(&[Reply::Status(410)]);
    let mut outbox = Outbox::new("gone");
    outbox.push("buddygate.failover.completed");
    outbox.push("buddygate.failback.completed");
    let r = run(&outbox, config(&basic(&rx.url(), ""), None));
    until(Duration::from_secs(5), "disabled", || {
        r.status.disabled.lock().unwrap().is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests().len(), 1, "nothing more after a 410");
    r.replay.notify_one();
    until(
        Duration::from_secs(5),
        "both delivered after the replay",
        || rx.requests().len() == 3,
    )
    .await;
    assert_eq!(
        ids(&rx.requests()),
        ["fo-1:1", "fo-1:1", "fo-1:2"],
        "in order"
    );
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn timeouts_and_exhausted_retries_become_dead_letters_that_replay() {
    let rx = receiver().await;
    // Event 1: a timeout, then two 500s: dead. Event 2: delivered.
    rx.script(&[
        Reply::Slow(Duration::from_secs(2)),
        Reply::Status(500),
        Reply::Status(500),
    ]);
    let mut outbox = Outbox::new("dead");
    outbox.push("buddygate.failover.completed");
    outbox.push("buddygate.failback.completed");
    let r = run(
        &outbox,
        config(&basic(&rx.url(), "timeout = \"200ms\"\n"), None),
    );
    until(
        Duration::from_secs(5),
        "event 2 delivered past the dead letter",
        || rx.requests().len() == 4,
    )
    .await;
    assert_eq!(
        ids(&rx.requests()),
        ["fo-1:1", "fo-1:1", "fo-1:1", "fo-1:2"]
    );
    let reader = Store::open_reader(&outbox.dir).unwrap();
    let dead = reader.dead_letters("psim").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].seq, 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "http 500");
    let attempts = reader.attempts("psim", 10).unwrap();
    assert!(
        attempts.iter().any(|a| a.outcome.starts_with("timeout")),
        "{attempts:?}"
    );
    r.replay.notify_one();
    until(Duration::from_secs(5), "the dead letter replayed", || {
        rx.requests().len() == 5
    })
    .await;
    assert_eq!(ids(&rx.requests())[4], "fo-1:1");
    until(Duration::from_secs(2), "dead letters cleared", || {
        reader.dead_letters("psim").unwrap().is_empty()
    })
    .await;
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_in_order_with_the_same_ids() {
    let rx = receiver().await;
    let addr = rx.addr;
    rx.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut outbox = Outbox::new("down");
    for _ in 0..10 {
        outbox.push("buddygate.failover.completed");
    }
    let r = run(
        &outbox,
        config(
            &basic(&format!("http://{addr}/hook"), "").replace("[\"50ms\", \"100ms\"]", "[\"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]"),
            None,
        ),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(r.status.failed.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    let rx = Receiver::start(&addr.to_string(), "/hook").await;
    until(Duration::from_secs(5), "10 deliveries", || {
        rx.requests().len() == 10
    })
    .await;
    let expected: Vec<String> = (1..=10).map(|s| format!("fo-1:{s}")).collect();
    assert_eq!(ids(&rx.requests()), expected);
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn a_crash_with_deliveries_pending_loses_nothing() {
    let rx = receiver().await;
    rx.script(&[Reply::Status(500); 100]);
    let mut outbox = Outbox::new("crash");
    for _ in 0..3 {
        outbox.push("buddygate.failover.completed");
    }
    let cfg = config(
        &basic(&rx.url(), "").replace("[\"50ms\", \"100ms\"]", "[\"10s\"]"),
        None,
    );
    let r = run(&outbox, cfg.clone());
    until(Duration::from_secs(5), "a failed attempt", || {
        !rx.requests().is_empty()
    })
    .await;
    // The sender dies mid-retry.
    r.task.abort();
    let _ = r.task.await;
    rx.clear_script();
    let r = run(&outbox, cfg);
    until(
        Duration::from_secs(5),
        "all three after the restart",
        || {
            ids(&rx.requests())
                .iter()
                .filter(|i| *i != "fo-1:1")
                .count()
                == 2
        },
    )
    .await;
    let got = ids(&rx.requests());
    assert_eq!(got.last().unwrap(), "fo-1:3");
    assert!(got.contains(&"fo-1:2".to_string()));
    // The cursor moves once the 2xx is in, just after the receiver recorded the request.
    until(Duration::from_secs(5), "the cursor at 3", || {
        Store::open_reader(&outbox.dir)
            .unwrap()
            .cursor("psim")
            .unwrap()
            == 3
    })
    .await;
    r.cancel.cancel();
    let _ = r.task.await;
}

#[tokio::test]
async fn the_events_filter_skips_other_types_and_moves_on() {
    let rx = receiver().await;
    let mut outbox = Outbox::new("filter");
    outbox.push("buddygate.path.down");
    outbox.push("buddygate.failover.completed");
    outbox.push("buddygate.server.up");
    outbox.push("buddygate.failback.completed");
    let r = run(
        &outbox,
        config(
            &basic(&rx.url(), "events = [\"buddygate.fail*.completed\"]\n"),
            None,
        ),
    );
    until(Duration::from_secs(5), "2 deliveries", || {
        rx.requests().len() == 2
    })
    .await;
    assert_eq!(ids(&rx.requests()), ["fo-1:2", "fo-1:4"]);
    until(Duration::from_secs(2), "cursor at the end", || {
        Store::open_reader(&outbox.dir)
            .unwrap()
            .cursor("psim")
            .unwrap()
            == 4
    })
    .await;
    r.cancel.cancel();
    let _ = r.task.await;
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors")
}

#[tokio::test]
async fn the_shipped_templates_render_for_a_real_failover() {
    let rx = receiver().await;
    let mut outbox = Outbox::new("templates");
    outbox.push("buddygate.failover.completed");
    let base = shipped();
    for (template, ct) in [
        (
            "templates/milestone-analytics-event.xml.j2",
            "application/xml",
        ),
        ("templates/nx-generic-event.json.j2", "application/json"),
        ("templates/server-moved.json.j2", "application/json"),
    ] {
        let before = rx.requests().len();
        let name = format!("t{before}");
        let text = format!(
            "type = \"webhook\"\nurl = \"{}\"\ntemplate = \"{template}\"\ncontent_type = \"{ct}\"\n",
            rx.url()
        );
        let (c, d) = connectors::check_file(
            &text,
            "t.toml",
            &base.join(format!("{name}.toml")),
            Some(&base),
        );
        assert!(d.is_empty(), "{d:?}");
        let ConnectorKind::Webhook(cfg) = c.unwrap().kind else {
            panic!("not a webhook")
        };
        let r = run(&outbox, cfg);
        until(Duration::from_secs(5), template, || {
            rx.requests().len() == before + 1
        })
        .await;
        r.cancel.cancel();
        let _ = r.task.await;
        // Each template gets its own cursor in a fresh name: reset for the next one.
        let mut s = Store::open(&outbox.dir).unwrap();
        s.set_cursor("psim", 0).unwrap();
        let req = rx.requests().last().unwrap().clone();
        assert_eq!(req.headers["content-type"], ct);
        match ct {
            "application/xml" => {
                assert!(req.body.contains("<AnalyticsEvent"), "{}", req.body);
                assert!(req.body.contains("<Name>127.0.0.3</Name>"), "{}", req.body);
                assert!(
                    req.body.contains("<CustomTag>epoch=298</CustomTag>"),
                    "{}",
                    req.body
                );
                assert!(
                    req.body.contains(
                        "live-1 (127.0.0.1) is now served by fo-1 (127.0.0.3), epoch 298"
                    )
                );
            }
            _ => {
                let v: Value =
                    serde_json::from_str(&req.body).unwrap_or_else(|e| panic!("{e}: {}", req.body));
                if template.contains("nx") {
                    assert_eq!(v["caption"], "buddygate: buddygate.failover.completed");
                    assert_eq!(
                        v["description"],
                        "live-1 is now served by fo-1 at 127.0.0.3 (epoch 298)"
                    );
                    assert_eq!(v["metadata"]["cameraRefs"], json!(["cam-1"]));
                } else {
                    assert_eq!(v["moved_to"], json!({"id": "fo-1", "address": "127.0.0.3"}));
                    assert_eq!(v["epoch"], 298);
                    assert_eq!(v["resources"], json!(["cam-1"]));
                }
            }
        }
    }
}

#[tokio::test]
async fn get_puts_the_essentials_in_the_query() {
    let rx = receiver().await;
    let mut outbox = Outbox::new("get");
    outbox.push("buddygate.failover.completed");
    let text = format!(
        "type = \"webhook\"\nmethod = \"GET\"\nurl = \"{}\"\n",
        rx.url()
    );
    let r = run(&outbox, config(&text, None));
    until(Duration::from_secs(5), "a GET", || rx.requests().len() == 1).await;
    let req = &rx.requests()[0];
    assert_eq!(req.method, "GET");
    assert!(req.body.is_empty());
    for part in [
        "type=buddygate.failover.completed",
        "id=fo-1%3A1",
        "server=live-1",
        "new_server=fo-1",
        "address=127.0.0.3",
        "epoch=298",
    ] {
        assert!(req.uri.contains(part), "{} lacks {part}", req.uri);
    }
    r.cancel.cancel();
    let _ = r.task.await;
}

#[test]
fn bad_connector_files_report_every_problem_with_its_position() {
    let text = "type = \"webhook\"\nurl = \"ftp://x\"\nmethod = \"DELETE\"\nevents = [\"buddygate.nothing\"]\nsecret = \"abc\"\ntimeot = \"5s\"\nretry = [\"5s\", \"soon\"]\n";
    let lines = common::refused(text, "bad.toml", None);
    assert_eq!(
        lines,
        [
            "bad.toml:2:7: url: \"ftp\": only http:// and https:// URLs are supported",
            "bad.toml:3:10: method: method \"DELETE\": expected \"POST\", \"PUT\" or \"GET\"",
            "bad.toml:4:11: events[0]: \"buddygate.nothing\" matches no event type (they are buddygate.server.down, buddygate.failover.completed, ...)",
            "bad.toml:5:10: secret: a signing secret starts with `whsec_` (Standard Webhooks)",
            "bad.toml:6:1: timeot: unknown key `timeot`; did you mean `timeout`?",
            "bad.toml:7:16: retry[1]: invalid duration \"soon\": expected number at 0",
        ]
    );
    let (_, d) =
        connectors::check_file("url = \"http://x\"\n", "t.toml", Path::new("t.toml"), None);
    assert_eq!(
        d[0].to_string(),
        "t.toml:1:1: missing key `type`: the kind of connector (\"webhook\", \"mqtt\" or \"onvif\")"
    );
    let (_, d) = connectors::check_file("type = \"kafka\"\n", "t.toml", Path::new("t.toml"), None);
    assert_eq!(
        d[0].to_string(),
        "t.toml:1:8: type: unknown connector type \"kafka\"; expected \"webhook\", \"mqtt\" or \"onvif\""
    );
}

#[test]
fn check_reports_connector_problems_with_the_site_and_exits_64() {
    let dir = std::env::temp_dir().join(format!("buddygate-check-conn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::write(dir.join("site.key"), "k").unwrap();
    std::fs::write(
        dir.join("site.toml"),
        "[site]\nname = \"s\"\nsecret = \"file:site.key\"\n[[servers]]\nid = \"a\"\naddress = \"127.0.0.1\"\nheartbeat = [\"127.0.0.1:7400\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("connectors/psim.toml"),
        "type = \"webhook\"\nurl = \"http://x/\"\nmethod = \"PATCH\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("connectors/io.toml"),
        "type = \"onvif\"\nurl = \"http://io/notify\"\nbatch = 5000\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buddygate"))
        .args(["check", "--config"])
        .arg(dir.join("site.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("connectors/psim.toml:3:10: method: method \"PATCH\""),
        "{err}"
    );
    // Every file's problems at once, whatever its kind.
    assert!(
        err.contains("connectors/io.toml:3:9: batch: batch 5000: expected 1 to 1000 messages"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_committed_webhook_schema_is_fresh() {
    common::assert_schema_fresh(
        &schemars::schema_for!(WebhookFile),
        "schemas/webhook.schema.json",
        "webhook",
    );
}

/// Three real nodes: a kill -9 of live-1 reaches the PSIM as `failover.completed` from fo-1,
/// with fo-1's address and the new epoch; with the PSIM down and fo-1 killed too, nothing is
/// lost once both are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_failover_reaches_the_psim_and_survives_a_crash_of_the_sender() {
    let rx = receiver().await;
    let mut c = common::Cluster::new(
        "webhook",
        1,
        5,
        common::SiteOptions {
            connectors: vec![(
                "psim",
                format!(
                    "type = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"buddygate.failover.*\", \"buddygate.failback.completed\"]\nretry = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\n",
                    rx.url()
                ),
            )],
            ..Default::default()
        },
    );
    c.start_all();
    common::eventually(Duration::from_secs(10), "site up", || async {
        let v = common::owners(&c.api("fo-1"), "live-1").await?;
        (!v.is_empty() && v.iter().all(|r| r.0 == "live-1" && r.3 == "active")).then_some(())
    })
    .await;
    let t0 = Instant::now();
    c.kill9("live-1");
    until(
        Duration::from_secs(5),
        "failover.completed at the PSIM",
        || {
            rx.requests()
                .iter()
                .any(|r| r.body.contains("buddygate.failover.completed"))
        },
    )
    .await;
    let took = t0.elapsed();
    let req = rx
        .requests()
        .into_iter()
        .find(|r| r.body.contains("buddygate.failover.completed"))
        .unwrap();
    let v: Value = serde_json::from_str(&req.body).unwrap();
    let fo_addr = &c.servers[c.index("fo-1")].address;
    assert_eq!(v["source"], "buddygate://webhook/fo-1");
    assert_eq!(v["data"]["new_server"]["address"], fo_addr.as_str());
    assert_eq!(v["data"]["server"]["id"], "live-1");
    assert!(v["data"]["epoch"].as_u64().unwrap() > 199);
    assert_eq!(v["data"]["resources"].as_array().unwrap().len(), 5);
    assert_eq!(
        req.headers["webhook-id"].to_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The PSIM goes away; live-1 comes back and fails back; fo-1 is killed with that delivery
    // pending; then everything comes back.
    rx.cancel.cancel();
    let before = rx.requests().len();
    c.start("live-1");
    common::eventually(Duration::from_secs(10), "failback", || async {
        let v = common::owners(&c.api("fo-1"), "live-1").await?;
        v.iter()
            .all(|r| r.0 == "live-1" && r.3 == "active")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill9("fo-1");
    let rx2 = Receiver::start(&rx.addr.to_string(), "/hook").await;
    c.start("fo-1");
    // fo-1 did not emit the failback (live-1 did), but its own events are all delivered:
    // started and completed, in order, with the same ids as before the crash.
    until(
        Duration::from_secs(10),
        "redelivery after the restart",
        || !rx2.requests().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first: Vec<String> = ids(&rx.requests()[..before]);
    let all: Vec<String> = first.iter().cloned().chain(ids(&rx2.requests())).collect();
    // live-1 delivers its own failback.completed to the same PSIM.
    assert!(all.iter().any(|i| i.starts_with("live-1:")), "{all:?}");
    let all: Vec<String> = all.into_iter().filter(|i| i.starts_with("fo-1:")).collect();
    let mut seqs: Vec<u64> = all
        .iter()
        .map(|i| i.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let sorted = {
        let mut s = seqs.clone();
        s.sort();
        s
    };
    assert_eq!(seqs, sorted, "delivered in order: {all:?}");
    seqs.dedup();
    assert!(seqs.len() >= 2, "{all:?}");
}

/// An HTTPS receiver that requires a client certificate from the CA.
async fn tls_receiver(ca: &str, cert: &str, key: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(common::tls_server_config(ca, cert, key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<Mutex<Vec<String>>> = Default::default();
    let b = bodies.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let b = b.clone();
        async move {
            b.lock().unwrap().push(body);
            "ok"
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A handshake without an accepted client certificate fails here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (format!("https://127.0.0.1:{}/hook", addr.port()), bodies)
}

#[tokio::test]
async fn https_with_a_private_ca_and_a_client_certificate() {
    let dir = std::env::temp_dir().join(format!("buddygate-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key, _) = common::pki(&dir);
    let (url, bodies) = tls_receiver(&ca, &cert, &key).await;
    let mut outbox = Outbox::new("tls");
    outbox.push("buddygate.failover.completed");

    // Without the client certificate: refused, retried, dead.
    let text = format!(
        "type = \"webhook\"\nurl = \"{url}\"\nretry = [\"20ms\"]\ntls = {{ ca = \"ca.pem\" }}\n"
    );
    let r = run(&outbox, config(&text, Some(&dir)));
    until(Duration::from_secs(5), "a dead letter", || {
        r.status.dead.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(bodies.lock().unwrap().is_empty());
    r.cancel.cancel();
    let _ = r.task.await;
    let mut s = Store::open(&outbox.dir).unwrap();
    s.set_cursor("psim", 0).unwrap();

    // With it: delivered over mutual TLS.
    let text = format!(
        "type = \"webhook\"\nurl = \"{url}\"\nretry = [\"20ms\"]\ntls = {{ ca = \"ca.pem\", cert = \"client.pem\", key = \"client.key\" }}\n"
    );
    let r = run(&outbox, config(&text, Some(&dir)));
    until(Duration::from_secs(5), "a delivery over mTLS", || {
        bodies.lock().unwrap().len() == 1
    })
    .await;
    assert!(bodies.lock().unwrap()[0].contains("buddygate.failover.completed"));
    r.cancel.cancel();
    let _ = r.task.await;

    // A server certificate from another CA: refused.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _, _) = common::pki(&other);
    std::fs::write(dir.join("other-ca.pem"), other_ca).unwrap();
    let mut s = Store::open(&outbox.dir).unwrap();
    s.set_cursor("psim", 0).unwrap();
    let text = format!(
        "type = \"webhook\"\nurl = \"{url}\"\nretry = [\"20ms\"]\ntls = {{ ca = \"other-ca.pem\", cert = \"client.pem\", key = \"client.key\" }}\n"
    );
    let r = run(&outbox, config(&text, Some(&dir)));
    until(Duration::from_secs(5), "refused", || {
        r.status.failed.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    let reader = Store::open_reader(&outbox.dir).unwrap();
    let attempts = reader.attempts("psim", 10).unwrap();
    assert!(
        attempts[0].outcome.contains("invalid peer certificate"),
        "{attempts:?}"
    );
    assert!(
        attempts
            .iter()
            .any(|a| a.outcome.contains("CertificateRequired")),
        "{attempts:?}"
    );
    assert_eq!(bodies.lock().unwrap().len(), 1);
    r.cancel.cancel();
    let _ = r.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reassert_resends_the_current_ownership_when_nothing_is_queued() {
    use buddygate::view::Snapshot;
    // fo-1 after taking live-1's cameras over, in the simulator.
    let mut sim = buddygate::sim::Sim::new(
        buddygate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None)
            .many("live-1", buddygate::config::Kind::Camera, 3, 0)
            .build(),
        buddygate::sim::SimOptions::default(),
    );
    sim.run_for(Duration::from_secs(3));
    let (live, fo) = (sim.idx("live-1"), sim.idx("fo-1"));
    sim.crash(live);
    sim.run_for(Duration::from_secs(2));
    let node = sim.clone_node(fo).unwrap();
    let snap = Arc::new(Snapshot::of(&node, sim.now()));
    let (_keep, rx_snap) = tokio::sync::watch::channel(snap);

    let rx = receiver().await;
    let mut outbox = Outbox::new("reassert");
    outbox.push("buddygate.failover.completed");
    let (c, d) = connectors::check_file(
        &format!(
            "type = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nreassert = \"1s\"\n",
            rx.url()
        ),
        "r.toml",
        Path::new("r.toml"),
        None,
    );
    assert!(!d.iter().any(|d| d.is_error()), "{d:?}");
    let ConnectorKind::Webhook(cfg) = c.unwrap().kind else {
        panic!("a webhook connector");
    };
    let site = sim.site().clone();
    let status = Arc::new(ConnectorStatus::default());
    let w = Webhook::build("psim".into(), cfg, site, fo, &outbox.dir, status.clone())
        .unwrap()
        .with_snapshot(rx_snap);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(w.run(
        outbox.events.subscribe(),
        Arc::new(Notify::new()),
        cancel.clone(),
    ));
    until(
        Duration::from_secs(5),
        "two re-assertions after the event",
        || {
            rx.requests()
                .iter()
                .filter(|r| r.body.contains("ownership.reasserted"))
                .count()
                >= 2
        },
    )
    .await;
    let reqs = rx.requests();
    assert!(
        reqs[0].body.contains("buddygate.failover.completed"),
        "the event first"
    );
    let v: Value = serde_json::from_str(&reqs[1].body).unwrap();
    assert_eq!(v["type"], "buddygate.ownership.reasserted");
    assert_eq!(v["data"]["server"]["id"], "fo-1");
    assert_eq!(v["data"]["epoch"], 298);
    let ids: Vec<&str> = v["data"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "live-1-camera-001",
            "live-1-camera-002",
            "live-1-camera-003"
        ]
    );
    let id = reqs[1].headers["webhook-id"].to_str().unwrap();
    assert!(id.starts_with("fo-1:1.r"), "{id}");
    let ts: u64 = reqs[1].headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        reqs[1].headers["webhook-signature"].to_str().unwrap(),
        sign(&[decode_whsec(SECRET).unwrap()], id, ts, &reqs[1].body)
    );
    // Not stored: the log still has the one event, the cursor is on it.
    assert_eq!(
        Store::open_reader(&outbox.dir).unwrap().last_seq().unwrap(),
        1
    );
    cancel.cancel();
    let _ = task.await;
}

/// A permanent error goes to the dead letters at once, not through the retry schedule (here
/// an hour long): a 4xx other than 408 and 429, a template that cannot render for the event.
/// 408 and 429 are retried.
#[tokio::test]
async fn permanent_errors_are_dead_letters_at_once() {
    let rx = receiver().await;
    rx.script(&[
        Reply::Status(400),
        Reply::Status(404),
        Reply::Status(408),
        Reply::Status(429),
    ]);
    let mut outbox = Outbox::new("permanent");
    for _ in 0..3 {
        outbox.push("buddygate.failover.completed");
    }
    let text = format!(
        "type = \"webhook\"\nurl = \"{}\"\nretry = [\"50ms\", \"50ms\", \"1h\"]\n",
        rx.url()
    );
    let r = run(&outbox, config(&text, None));
    // 400: dead; 404: dead; 408 then 429 retried, then delivered.
    until(Duration::from_secs(5), "5 requests", || {
        rx.requests().len() == 5
    })
    .await;
    assert_eq!(
        ids(&rx.requests()),
        ["fo-1:1", "fo-1:2", "fo-1:3", "fo-1:3", "fo-1:3"]
    );
    let reader = Store::open_reader(&outbox.dir).unwrap();
    let dead = reader.dead_letters("psim").unwrap();
    let dead: Vec<(u64, u32, &str)> = dead
        .iter()
        .map(|d| (d.seq, d.attempts, d.reason.as_str()))
        .collect();
    assert_eq!(
        dead,
        [(1, 1, "refused: http 400"), (2, 1, "refused: http 404")]
    );
    // The cursor moves once the 2xx is in: just after the receiver saw the request.
    until(Duration::from_secs(5), "the cursor past event 3", || {
        reader.cursor("psim").unwrap() == 3
    })
    .await;
    r.cancel.cancel();
    let _ = r.task.await;

    // A template that cannot render for an event (no `data.resources`): dead at once too.
    let dir = std::env::temp_dir().join(format!("buddygate-badtemplate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.j2"), "{{ data.missing.deeper }}").unwrap();
    let rx = receiver().await;
    let mut outbox = Outbox::new("badtemplate");
    outbox.push("buddygate.failover.completed");
    let text = format!(
        "type = \"webhook\"\nurl = \"{}\"\ntemplate = \"t.j2\"\nretry = [\"1h\"]\n",
        rx.url()
    );
    let r = run(&outbox, config(&text, Some(&dir)));
    let reader = Store::open_reader(&outbox.dir).unwrap();
    until(Duration::from_secs(5), "a dead letter", || {
        !reader.dead_letters("psim").unwrap().is_empty()
    })
    .await;
    let d = &reader.dead_letters("psim").unwrap()[0];
    assert_eq!(d.attempts, 1);
    assert!(d.reason.starts_with("refused: template:"), "{}", d.reason);
    assert!(rx.requests().is_empty());
    r.cancel.cancel();
    let _ = r.task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A URL that cannot be built for an event is a permanent error too: a templated URL that
/// renders to something that is not a URL, or that cannot render (a missing field). Each is a
/// dead letter at once, not after a retry schedule (an hour here); the next event goes.
#[tokio::test]
async fn a_url_that_cannot_be_built_is_a_dead_letter_at_once() {
    let rx = receiver().await;
    let mut outbox = Outbox::new("badurl");
    // Renders to "live-1/hook" for the first event (no scheme, no host) and fails to render
    // for the second (no `data.server`); the third renders to the receiver.
    outbox.push("buddygate.failover.completed");
    outbox.append("buddygate.failover.completed", json!({"site": "hq"}));
    outbox.append(
        "buddygate.failover.completed",
        json!({"site": "hq", "server": {"id": rx.url(), "address": "127.0.0.1"}}),
    );
    let text = "type = \"webhook\"\nurl = \"{{ data.server.id }}\"\nretry = [\"1h\"]\n";
    let r = run(&outbox, config(text, None));
    let reader = Store::open_reader(&outbox.dir).unwrap();
    until(Duration::from_secs(5), "the third event delivered", || {
        reader.cursor("psim").unwrap() == 3
    })
    .await;
    let dead: Vec<(u64, u32, String)> = reader
        .dead_letters("psim")
        .unwrap()
        .into_iter()
        .map(|d| (d.seq, d.attempts, d.reason))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!((dead[0].0, dead[0].1), (1, 1));
    assert!(dead[0].2.starts_with("refused: request:"), "{}", dead[0].2);
    assert_eq!((dead[1].0, dead[1].1), (2, 1));
    assert!(
        dead[1].2.starts_with("refused: url template:"),
        "{}",
        dead[1].2
    );
    assert_eq!(ids(&rx.requests()), ["fo-1:3"]);
    r.cancel.cancel();
    let _ = r.task.await;
}

/// Dead letters queued for a replay do not hold up a live event: one replay attempt at most
/// is in front of it, however long the replay.
#[tokio::test]
async fn a_long_replay_does_not_delay_a_live_failover() {
    let rx = receiver().await;
    // 20 events, each refused (400): 20 dead letters.
    rx.script(&[Reply::Status(400); 20]);
    let mut outbox = Outbox::new("replaylive");
    for _ in 0..20 {
        outbox.push("buddygate.path.down");
    }
    let r = run(&outbox, config(&basic(&rx.url(), ""), None));
    until(Duration::from_secs(5), "20 dead letters", || {
        r.status.dead.load(std::sync::atomic::Ordering::Relaxed) == 20
    })
    .await;
    // The replay: every event takes the receiver 150 ms (3 s in all).
    rx.script(&[Reply::Slow(Duration::from_millis(150)); 20]);
    r.replay.notify_one();
    until(Duration::from_secs(5), "the replay under way", || {
        rx.requests().len() > 21
    })
    .await;
    let t0 = Instant::now();
    let live = outbox.push("buddygate.failover.completed");
    let id = format!("fo-1:{}", live.seq);
    until(Duration::from_secs(5), "the live failover", || {
        ids(&rx.requests()).contains(&id)
    })
    .await;
    let took = t0.elapsed();
    let reqs = ids(&rx.requests());
    let at = reqs.iter().position(|i| *i == id).unwrap();
    let replayed_before = at - 20;
    assert!(
        replayed_before < 20,
        "the live event went after the whole replay: {reqs:?}"
    );
    assert!(took < Duration::from_millis(800), "{took:?}");
    // The rest of the replay follows.
    until(Duration::from_secs(10), "the replay done", || {
        r.status.dead.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
    r.cancel.cancel();
    let _ = r.task.await;
}

/// A Standard Webhooks receiver as a PSIM writes one: it verifies the signature and processes
/// each `webhook-id` once, answering 2xx to a duplicate without processing it.
#[derive(Clone, Default)]
struct Dedupe {
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
    /// (webhook-id, CloudEvent) of what was processed, in order.
    processed: Arc<Mutex<Vec<(String, Value)>>>,
    duplicates: Arc<std::sync::atomic::AtomicUsize>,
}

impl Dedupe {
    async fn start(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = decode_whsec(SECRET).unwrap();
        let d = self.clone();
        let app =
            axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: String| {
                let (d, key) = (d.clone(), key.clone());
                async move {
                    let h = |n: &str| headers[n].to_str().unwrap().to_string();
                    let (id, ts) = (h("webhook-id"), h("webhook-timestamp"));
                    let signed = sign(&[key], &id, ts.parse().unwrap(), &body);
                    if h("webhook-signature") != signed {
                        return axum::http::StatusCode::UNAUTHORIZED;
                    }
                    if !d.seen.lock().unwrap().insert(id.clone()) {
                        d.duplicates
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return axum::http::StatusCode::OK;
                    }
                    let ev: Value = serde_json::from_str(&body).unwrap();
                    d.processed.lock().unwrap().push((id, ev));
                    axum::http::StatusCode::OK
                }
            });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    /// The types processed from `node`, in order.
    fn from(&self, node: &str) -> Vec<(String, Value)> {
        let source = format!("buddygate://wipe/{node}");
        self.processed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e["source"] == source.as_str())
            .cloned()
            .collect()
    }
}

/// fo-1's data dir is wiped between two failovers: its sequence starts again at 1, yet the
/// second failover's events have new ids, so a receiver that dedupes on `webhook-id` processes
/// them instead of dropping them as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_unique_across_a_wiped_data_dir() {
    let psim = Dedupe::default();
    let url = psim.clone().start().await;
    let mut c = common::Cluster::new(
        "wipe",
        1,
        2,
        common::SiteOptions {
            failback_delay: "1s",
            connectors: vec![(
                "psim",
                format!(
                    "type = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = [\"buddygate.failover.*\", \"buddygate.server.*\"]\nretry = [\"200ms\"]\n"
                ),
            )],
            ..Default::default()
        },
    );
    let home = |c: &common::Cluster, owner: &'static str| {
        let api = c.api("fo-1");
        async move {
            common::eventually(Duration::from_secs(15), owner, || async {
                let v = common::owners(&api, "live-1").await?;
                (!v.is_empty() && v.iter().all(|r| r.0 == owner && r.3 == "active")).then_some(())
            })
            .await
        }
    };
    let completed = |psim: &Dedupe| {
        psim.from("fo-1")
            .iter()
            .filter(|(_, e)| e["type"] == "buddygate.failover.completed")
            .count()
    };
    c.start_all();
    home(&c, "live-1").await;
    c.kill9("live-1");
    until(
        Duration::from_secs(10),
        "the first failover processed",
        || completed(&psim) == 1,
    )
    .await;
    c.start("live-1");
    home(&c, "live-1").await;

    // Wipe fo-1: it stops cleanly, loses its data dir, starts again.
    assert!(c.term("fo-1").success());
    let first = psim.from("fo-1");
    std::fs::remove_dir_all(c.data_dir("fo-1")).unwrap();
    c.start("fo-1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill9("live-1");
    until(
        Duration::from_secs(10),
        "the second failover processed",
        || completed(&psim) == 2,
    )
    .await;
    let all = psim.from("fo-1");
    let second = &all[first.len()..];
    // The sequence started again: seqs of the first run come back...
    let seqs = |evs: &[(String, Value)]| -> Vec<u64> {
        evs.iter()
            .map(|(_, e)| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert!(
        seqs(second).iter().any(|s| seqs(&first).contains(s)),
        "{:?} / {:?}",
        seqs(&first),
        seqs(second)
    );
    // ...under new ids: `{node}:{run}:{seq}`, a new run.
    let run = |id: &str| id.split(':').nth(1).unwrap().to_string();
    assert_ne!(run(&first[0].0), run(&second[0].0));
    for (id, e) in &all {
        assert_eq!(id, e["id"].as_str().unwrap());
        let parts: Vec<&str> = id.split(':').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "fo-1");
        assert_eq!(parts[1].len(), 12);
        assert_eq!(parts[2], e["seq"].to_string());
    }
    assert_eq!(
        psim.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A site of one live server with `cameras` and fo-1, whose three webhook connectors (to `rx`,
/// `?c=NAME`, `events = [events]`) are `psim`, which can start, `unset`, whose secret is an
/// `env:` variable never set, and `later`, whose `file:` secret is not there yet.
fn three_connectors(rx: &Receiver, site: &str, cameras: usize, events: &str) -> common::Cluster {
    let file = |name: &str, secret: &str| {
        format!(
            "type = \"webhook\"\nurl = \"{}?c={name}\"\nsecret = \"{secret}\"\nevents = [\"{events}\"]\nretry = [\"200ms\"]\n",
            rx.url()
        )
    };
    common::Cluster::new(
        site,
        1,
        cameras,
        common::SiteOptions {
            connectors: vec![
                ("psim", file("psim", SECRET)),
                ("unset", file("unset", "env:BUDDYGATE_TEST_NEVER_SET")),
                ("later", file("later", "file:later.secret")),
            ],
            ..Default::default()
        },
    )
}

/// A connector that cannot be built at start (an `env:` secret that is not set, a `file:`
/// secret not there yet) does not stop the node or the other connectors: it is reported
/// failed (API, metric) and built again until it can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_cannot_start_is_reported_and_retried_while_the_node_runs() {
    let rx = receiver().await;
    let mut c = three_connectors(&rx, "badconn", 2, "buddygate.failover.completed");
    c.start_all();
    let api = c.api("fo-1");
    let connectors = || async {
        let v = common::get(&format!("{}/api/v1/connectors", c.api("fo-1"))).await?;
        let by_name: std::collections::HashMap<String, Value> = v["connectors"]
            .as_array()?
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
            .collect();
        Some(by_name)
    };
    let v = common::eventually(Duration::from_secs(10), "both reported failed", || async {
        let v = connectors().await?;
        (v["unset"]["state"] == "failed" && v["later"]["state"] == "failed").then_some(v)
    })
    .await;
    let why = v["unset"]["start_error"].as_str().unwrap();
    assert!(why.contains("BUDDYGATE_TEST_NEVER_SET"), "{why}");
    assert!(
        v["later"]["start_error"]
            .as_str()
            .unwrap()
            .contains("later.secret")
    );
    assert_eq!(v["psim"]["state"], "ok");
    let metrics = common::text(&format!("{api}/metrics")).await;
    assert!(
        metrics.contains("buddygate_connector_start_failed{connector=\"unset\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("buddygate_connector_start_failed{connector=\"psim\"} 0\n"));
    // The secret file appears: that connector starts at its next try.
    std::fs::write(c.dir.join("connectors/later.secret"), format!("{SECRET}\n")).unwrap();
    common::eventually(Duration::from_secs(10), "later runs", || async {
        let v = connectors().await?;
        (v["later"]["state"] == "ok" && v["later"]["start_error"].is_null()).then_some(())
    })
    .await;
    // The node and the connectors that run do their work: a failover reaches the PSIM twice.
    common::eventually(Duration::from_secs(15), "site up", || async {
        let v = common::owners(&api, "live-1").await?;
        (!v.is_empty() && v.iter().all(|r| r.0 == "live-1" && r.3 == "active")).then_some(())
    })
    .await;
    c.kill9("live-1");
    until(
        Duration::from_secs(10),
        "failover.completed via psim and later",
        || {
            let got: Vec<String> = rx.requests().iter().map(|r| r.uri.clone()).collect();
            got.iter().any(|u| u.ends_with("c=psim")) && got.iter().any(|u| u.ends_with("c=later"))
        },
    )
    .await;
    assert!(!rx.requests().iter().any(|r| r.uri.ends_with("c=unset")));
    assert!(c.logs("fo-1").contains("Connector cannot start"));
    assert!(c.logs("fo-1").contains("Connector still cannot start"));
}

/// The events of a connector that cannot start, as its supervisor raises them for the node's
/// event log: `connector.failed` once at its first failed build however many builds fail
/// after it, `connector.recovered` once when it is built at last; the reason names the
/// secret, never its value.
#[tokio::test(start_paused = true)]
async fn a_connector_that_cannot_start_raises_failed_once_and_recovered_once() {
    use buddygate::failover::Event;
    let outbox = Outbox::new("connector-events");
    let dir = outbox.dir.join("connectors");
    std::fs::create_dir_all(&dir).unwrap();
    // A signing secret that is not base64: the error must not quote it.
    let bad = "whsec_MfKQ9r8GKYqrTwjU!D8ILPZIo2LaLaSw";
    std::fs::write(dir.join("bad.secret"), format!("{bad}\n")).unwrap();
    let file = |name: &str, secret: &str| {
        let text = format!(
            "type = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{secret}\"\n"
        );
        let path = dir.join(format!("{name}.toml"));
        let (c, d) = connectors::check_file(&text, &format!("{name}.toml"), &path, Some(&dir));
        c.unwrap_or_else(|| panic!("{d:?}"))
    };
    let list = [
        file("unset", "env:BUDDYGATE_TEST_NEVER_SET"),
        file("later", "file:later.secret"),
        file("badkey", "file:bad.secret"),
    ];
    let site = Arc::new(
        buddygate::sim::SiteBuilder::new("hq")
            .live("live-1", &["fo-1"])
            .failover("fo-1", buddygate::config::Mode::SpreadServers, None, None)
            .build(),
    );
    let (live, fo) = (
        site.server_idx("live-1").unwrap(),
        site.server_idx("fo-1").unwrap(),
    );
    let (_snap_tx, snapshot) =
        tokio::sync::watch::channel(Arc::new(common::owners_snapshot(&site, live, fo, fo, 1, 0)));
    let (raise, mut raised) = tokio::sync::mpsc::channel(64);
    let tasks = tokio_util::task::TaskTracker::new();
    let cancel = CancellationToken::new();
    let handles = connectors::start(
        connectors::NodeFeeds {
            site: site.clone(),
            node: fo,
            data_dir: &outbox.dir,
            events: &outbox.events,
            snapshot: &snapshot,
            stored_at: &Arc::new(connectors::StoredAt::default()),
            raise: &raise,
        },
        &list,
        &tasks,
        &cancel,
    );
    drop(raise);
    let mut failed = std::collections::HashMap::new();
    while failed.len() < 3 {
        let next = tokio::time::timeout(Duration::from_millis(500), raised.recv());
        match next
            .await
            .expect("connector.failed at the first build")
            .unwrap()
        {
            Event::ConnectorFailed {
                connector,
                kind,
                reason,
                attempts,
                retry_in,
            } => {
                assert_eq!(kind, "webhook");
                assert_eq!(attempts, 1);
                assert!(
                    retry_in >= Duration::from_millis(900)
                        && retry_in <= Duration::from_millis(1100),
                    "{retry_in:?}"
                );
                assert!(failed.insert(connector, reason).is_none());
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        failed["unset"].contains("env:BUDDYGATE_TEST_NEVER_SET"),
        "{}",
        failed["unset"]
    );
    assert!(
        failed["later"].contains("later.secret"),
        "{}",
        failed["later"]
    );
    assert!(
        failed["badkey"].contains("not base64"),
        "{}",
        failed["badkey"]
    );
    for secret in [bad, "MfKQ9r8G", "!"] {
        assert!(!failed["badkey"].contains(secret), "{}", failed["badkey"]);
    }
    // Four more builds of each fail (after 1, 2, 4 and 8 s): nothing more is raised.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(raised.try_recv().is_err());
    let status = |name: &str| {
        handles
            .iter()
            .find(|h| h.name == name)
            .unwrap()
            .status
            .clone()
    };
    assert!(status("later").start_error().is_some());
    // The secret appears: the next build works (about 16 s after the last).
    std::fs::write(dir.join("later.secret"), format!("{SECRET}\n")).unwrap();
    match tokio::time::timeout(Duration::from_secs(30), raised.recv()).await {
        Ok(Some(Event::ConnectorRecovered {
            connector,
            kind,
            attempts,
            failed_for,
        })) => {
            assert_eq!((connector.as_str(), kind), ("later", "webhook"));
            assert_eq!(attempts, 6, "five failed builds, then this one");
            assert!(failed_for >= Duration::from_secs(25), "{failed_for:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(status("later").start_error().is_none());
    // The others go on failing, silently.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(raised.try_recv().is_err());
    assert!(status("unset").start_error().is_some());
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
}

/// A node whose connectors cannot start tells the connectors that run: `connector.failed`
/// once per connector however often its build is retried, `connector.recovered` once when one
/// runs at last, through the node's event log (numbered, durable); the recovered connector then
/// delivers that log too, its own recovery included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_failed_and_recovered_events_reach_the_connectors_that_run() {
    let rx = receiver().await;
    let mut c = three_connectors(&rx, "connev", 1, "buddygate.connector.*");
    c.start("fo-1");
    // (connector, type, data) of what `via` delivered.
    let got = |via: &str| -> Vec<(String, String, Value)> {
        rx.requests()
            .iter()
            .filter(|r| r.status < 300 && r.uri.ends_with(&format!("c={via}")))
            .map(|r| {
                let e: Value = serde_json::from_str(&r.body).unwrap();
                let who = e["data"]["connector"].as_str().unwrap().to_string();
                (who, e["type"].as_str().unwrap().to_string(), e)
            })
            .collect()
    };
    let count = |via: &str, who: &str, ty: &str| {
        got(via)
            .iter()
            .filter(|(w, t, _)| w == who && t == &format!("buddygate.connector.{ty}"))
            .count()
    };
    until(
        Duration::from_secs(10),
        "connector.failed for unset and later",
        || count("psim", "unset", "failed") == 1 && count("psim", "later", "failed") == 1,
    )
    .await;
    // Their builds are retried (after about 1 s, then 2 s): no more events.
    let retries = |c: &common::Cluster, who: &str| {
        c.logs("fo-1")
            .lines()
            .filter(|l| {
                l.contains("Connector still cannot start")
                    && l.contains(&format!("connector={who}"))
            })
            .count()
    };
    until(Duration::from_secs(10), "two retries of each", || {
        retries(&c, "unset") >= 2 && retries(&c, "later") >= 2
    })
    .await;
    let failed = got("psim")
        .into_iter()
        .find(|(w, t, _)| w == "unset" && t == "buddygate.connector.failed")
        .unwrap()
        .2;
    assert_eq!(failed["source"], "buddygate://connev/fo-1");
    let d = &failed["data"];
    assert_eq!(d["site"], "connev");
    assert_eq!(d["server"]["id"], "fo-1");
    assert_eq!(d["kind"], "webhook");
    assert_eq!(d["attempts"], 1);
    let retry_in = d["retry_in_ms"].as_u64().unwrap();
    assert!((900..=1100).contains(&retry_in), "{retry_in}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("env:BUDDYGATE_TEST_NEVER_SET"), "{reason}");
    // The secret file appears: that connector starts at its next try (about 4 s after the
    // last, 7 s after the first).
    std::fs::write(c.dir.join("connectors/later.secret"), format!("{SECRET}\n")).unwrap();
    until(
        Duration::from_secs(15),
        "connector.recovered for later",
        || count("psim", "later", "recovered") == 1,
    )
    .await;
    let recovered = got("psim")
        .into_iter()
        .find(|(_, t, _)| t == "buddygate.connector.recovered")
        .unwrap()
        .2;
    let d = &recovered["data"];
    assert_eq!(
        (d["connector"].as_str(), d["kind"].as_str()),
        (Some("later"), Some("webhook"))
    );
    assert!(d["attempts"].as_u64().unwrap() >= 4, "{d}");
    assert!(d["failed_for_ms"].as_u64().unwrap() >= 6000, "{d}");
    assert!(recovered["seq"].as_u64() > failed["seq"].as_u64());
    // The recovered connector delivers the log from its start: both failures, its recovery.
    until(
        Duration::from_secs(10),
        "later delivers its own recovery",
        || count("later", "later", "recovered") == 1,
    )
    .await;
    assert_eq!(count("later", "unset", "failed"), 1);
    assert_eq!(count("later", "later", "failed"), 1);
    // One event of each, however many builds failed; none for the connector still down.
    until(Duration::from_secs(10), "a third retry of unset", || {
        retries(&c, "unset") >= 3
    })
    .await;
    assert_eq!(count("psim", "unset", "failed"), 1);
    assert_eq!(count("psim", "later", "failed"), 1);
    assert_eq!(count("psim", "later", "recovered"), 1);
    assert_eq!(count("psim", "unset", "recovered"), 0);
    assert!(!rx.requests().iter().any(|r| r.uri.ends_with("c=unset")));
    // In the node's event log, as every event.
    let log = common::get(&format!("{}/api/v1/events?after=0", c.api("fo-1")))
        .await
        .unwrap();
    let types: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("buddygate.connector."))
        .collect();
    assert_eq!(
        types,
        [
            "buddygate.connector.failed",
            "buddygate.connector.failed",
            "buddygate.connector.recovered"
        ]
    );
}
