//! The HTTP API over real HTTP on 127.0.0.1: a real `Shared` (channels, a SQLite store with
//! CloudEvents in it, counters) whose snapshot comes from a real failover node in the
//! simulator, after live-1 crashed and fo-1 took over its resources.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use buddygate::failover::{Action, Node};
use buddygate::store::{Store, StoredEvent};
use buddygate::view::{Command, Metrics, Snapshot};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use common::sim_node::{self, ApiOptions, node_after_takeover};

const TOKEN: &str = "s3cret-token";
/// The first buddy's takeover epoch: round 2, rank 1.
const TAKEOVER: u64 = 298;
/// A home server's first claim: round 1, rank 0.
const HOME: u64 = 199;
/// Events in the store before a test starts.
const STORED: u64 = 5;
/// Guards every wait on the network; tests never sleep.
const PATIENCE: Duration = Duration::from_secs(10);

fn cloud_event(seq: u64, kind: &str, data: Value) -> String {
    json!({
        "specversion": "1.0",
        "id": format!("hq-fo-1-{seq}"),
        "type": kind,
        "source": "buddygate://hq/fo-1",
        "time": "2026-11-24T22:00:00.412Z",
        "datacontenttype": "application/json",
        "seq": seq,
        "data": data,
    })
    .to_string()
}

struct Fixture {
    base: String,
    http: reqwest::Client,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    store: Store,
    metrics: Arc<Metrics>,
    node: Node,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: PathBuf,
    _snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options of one fixture.
struct Setup {
    name: &'static str,
    token: Option<&'static str>,
    channel: usize,
    access: buddygate::api::Access,
}

impl Setup {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            token: Some(TOKEN),
            channel: 64,
            access: Default::default(),
        }
    }
}

async fn start(setup: Setup) -> Fixture {
    let dir = std::env::temp_dir().join(format!(
        "buddygate-api-{}-{}",
        setup.name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::open(&dir).unwrap();
    let kinds = [
        "buddygate.path.down",
        "buddygate.server.down",
        "buddygate.failover.started",
        "buddygate.failover.completed",
        "buddygate.path.up",
    ];
    for kind in kinds {
        store
            .append_event(kind, |seq| {
                cloud_event(seq, kind, json!({"site": "hq", "server": {"id": "live-1"}}))
            })
            .unwrap();
    }
    let (node, now) = node_after_takeover([12, 12], true);
    let metrics = Arc::new(Metrics::default());
    metrics.datagrams_sent.store(41, Ordering::Relaxed);
    metrics.datagrams_received.store(40, Ordering::Relaxed);
    metrics.send_errors.store(2, Ordering::Relaxed);
    metrics.events_stored.store(STORED, Ordering::Relaxed);
    for _ in 0..3 {
        metrics.agent_op("start", "ok");
    }
    metrics.agent_op("monitor", "failed");
    metrics
        .takeover_seconds
        .observe(Duration::from_millis(1050));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = sim_node::serve(
        listener,
        Snapshot::of(&node, now),
        ApiOptions {
            token: setup.token.map(str::to_string),
            onvif_users: Vec::new(),
            data_dir: dir.clone(),
            channel: setup.channel,
            commands: 8,
            metrics: metrics.clone(),
            access: setup.access.clone(),
        },
    );
    Fixture {
        base: served.base,
        http: reqwest::Client::new(),
        commands: served.commands,
        events: served.events,
        store,
        metrics,
        node,
        cancel: served.cancel,
        server: served.server,
        dir,
        _snapshot: served.snapshot,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A read, with the API token.
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.get(path).await;
        json_of(resp).await
    }

    async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(self.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send().await.unwrap()
    }

    /// Stores an event and broadcasts it, as the runtime does.
    fn emit(&mut self, kind: &str) -> u64 {
        let e = self
            .store
            .append_event(kind, |seq| {
                cloud_event(seq, kind, json!({"site": "hq", "note": "live"}))
            })
            .unwrap();
        let seq = e.seq;
        let _ = self.events.send(Arc::new(e));
        seq
    }
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "status {status}: content-type {ct:?}"
    );
    let body = resp.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, value)
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

// ---- site and resources ------------------------------------------------------------------

#[tokio::test]
async fn site_shows_each_server_and_path_as_fo_1_sees_it() {
    let t0 = std::time::Instant::now();
    let f = start(Setup::new("site")).await;
    let (status, site) = f.get_json("/api/v1/site").await;
    // Ages run on from the snapshot by the wall clock: a loaded machine adds to them.
    let waited = u64::try_from(t0.elapsed().as_millis()).unwrap();
    assert_eq!(status, 200);
    assert_eq!(site["site"], "hq");
    assert_eq!(site["node"], "fo-1");
    assert_eq!(site["booting"], false);
    let servers = site["servers"].as_array().unwrap();
    let ids: Vec<&str> = servers.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["live-1", "live-2", "fo-1"]);

    let live1 = &servers[0];
    assert_eq!(live1["role"], "live");
    assert_eq!(live1["state"], "down");
    assert_eq!(live1["address"], "127.1.0.1");
    assert_eq!(live1["booting"], false);
    assert_eq!(live1["config_mismatch"], false);
    assert_eq!(live1["known"], true);
    let paths = live1["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 2);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(p["address"], format!("127.1.0.1:{}", 7400 + i));
        assert_eq!(p["state"], "down");
        // Crashed 3 s ago, after at most one heartbeat interval of silence.
        let age = p["last_heard_ms"].as_u64().unwrap();
        assert!(
            (3000..=3200 + waited).contains(&age),
            "live-1 heard {age} ms ago"
        );
    }

    let live2 = &servers[1];
    assert_eq!(live2["state"], "up");
    assert_eq!(live2["address"], "127.1.0.2");
    for p in live2["paths"].as_array().unwrap() {
        assert_eq!(p["state"], "up");
        assert!(p["last_heard_ms"].as_u64().unwrap() <= 400 + waited, "{p}");
    }

    let fo1 = &servers[2];
    assert_eq!(fo1["role"], "failover");
    assert_eq!(fo1["state"], "up");
    assert_eq!(fo1["paths"], json!([]));
}

#[tokio::test]
async fn resources_show_owner_address_and_epoch_after_the_takeover() {
    let f = start(Setup::new("resources")).await;
    let (status, body) = f.get_json("/api/v1/resources").await;
    assert_eq!(status, 200);
    let resources = body["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 25);
    let by_id = |id: &str| {
        resources
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"))
    };
    assert_eq!(
        by_id("live-1-camera-001"),
        &json!({"id": "live-1-camera-001", "kind": "camera", "server": "live-1", "owner": "fo-1",
                "address": "127.1.0.3", "epoch": TAKEOVER, "state": "active", "unplaced": false, "started_at": null, "start_ms": null,
                "stopped_at": null, "stop_ms": null, "standby": false})
    );
    assert_eq!(
        by_id("live-1-io"),
        &json!({"id": "live-1-io", "kind": "io", "server": "live-1", "owner": "fo-1",
                "address": "127.1.0.3", "epoch": TAKEOVER, "state": "active", "unplaced": false, "started_at": null, "start_ms": null,
                "stopped_at": null, "stop_ms": null, "standby": false})
    );
    assert_eq!(
        by_id("live-2-camera-012"),
        &json!({"id": "live-2-camera-012", "kind": "camera", "server": "live-2",
                "owner": "live-2", "address": "127.1.0.2", "epoch": HOME, "state": "active", "unplaced": false, "started_at": null, "start_ms": null,
                "stopped_at": null, "stop_ms": null, "standby": false})
    );
    for r in resources {
        assert_eq!(r["state"], "active", "{r}");
    }
}

// ---- the event log -----------------------------------------------------------------------

fn seqs(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn events_page_by_sequence_number() {
    let f = start(Setup::new("events")).await;
    let (status, all) = f.get_json("/api/v1/events").await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
    let first = &all["events"][0];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["type"], "buddygate.path.down");
    assert_eq!(first["data"]["server"]["id"], "live-1");

    let (_, page) = f.get_json("/api/v1/events?after=0&limit=2").await;
    assert_eq!(seqs(&page), [1, 2]);
    let (_, page) = f.get_json("/api/v1/events?after=2&limit=2").await;
    assert_eq!(seqs(&page), [3, 4]);
    let (_, page) = f.get_json("/api/v1/events?after=4&limit=2").await;
    assert_eq!(seqs(&page), [5]);
    let (_, page) = f.get_json("/api/v1/events?after=5").await;
    assert_eq!(seqs(&page), Vec::<u64>::new());
    for limit in ["1001", "100000", "99999999999999999999999"] {
        let (_, page) = f
            .get_json(&format!("/api/v1/events?after=3&limit={limit}"))
            .await;
        assert_eq!(seqs(&page), [4, 5], "a large limit is cut, not refused");
    }
}

#[tokio::test]
async fn bad_event_queries_are_400_with_a_message() {
    let f = start(Setup::new("badquery")).await;
    let cases = [
        (
            "/api/v1/events?after=abc",
            "after must be an event sequence number (an integer, 0 or more), got \"abc\"",
        ),
        (
            "/api/v1/events?after=-1",
            "after must be an event sequence number (an integer, 0 or more), got \"-1\"",
        ),
        (
            "/api/v1/events?after=18446744073709551616",
            "after must be an event sequence number (an integer, 0 or more), got \"18446744073709551616\"",
        ),
        (
            "/api/v1/events?limit=0",
            "limit must be an integer from 1 to 1000, got \"0\"",
        ),
        (
            "/api/v1/events?limit=ten",
            "limit must be an integer from 1 to 1000, got \"ten\"",
        ),
        (
            "/api/v1/events/stream?after=x",
            "after must be an event sequence number (an integer, 0 or more), got \"x\"",
        ),
    ];
    for (path, message) in cases {
        let (status, body) = f.get_json(path).await;
        assert_eq!((status, error_of(&body)), (400, message), "{path}");
    }
    let (status, body) = f.get_json("/api/v1/events?after=1&after=2").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).starts_with("bad query: "), "{body}");

    let resp = f
        .http
        .get(f.url("/api/v1/events/stream"))
        .bearer_auth(TOKEN)
        .header("last-event-id", "seven")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            "Last-Event-ID must be an event sequence number (an integer, 0 or more), got \"seven\""
        )
    );
}

/// Reads server-sent events off a response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug, PartialEq)]
struct Message {
    id: u64,
    event: String,
    data: Value,
}

impl SseReader {
    async fn open(f: &Fixture, path: &str, last_event_id: Option<&str>) -> Self {
        let mut req = f.http.get(f.url(path)).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next message with data (comments and keep-alives skipped); `None` at the end.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if let (Some(id), Some(event)) = (id, event) {
                    let data = serde_json::from_str(&data).unwrap();
                    return Some(Message { id, event, data });
                }
                continue;
            }
            let chunk = tokio::time::timeout(PATIENCE, self.resp.chunk())
                .await
                .expect("an event within the patience")
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn ids(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.next().await.expect("stream open").id);
        }
        ids
    }
}

#[tokio::test]
async fn stream_delivers_an_event_broadcast_after_the_client_connected() {
    let mut f = start(Setup::new("sse-live")).await;
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", None).await;
    let seq = f.emit("buddygate.failback.completed");
    assert_eq!(seq, STORED + 1);
    let m = sse.next().await.unwrap();
    assert_eq!(m.id, seq, "no replay without Last-Event-ID or ?after=");
    assert_eq!(m.event, "buddygate.failback.completed");
    assert_eq!(m.data["type"], "buddygate.failback.completed");
    assert_eq!(m.data["seq"], seq);
    assert_eq!(m.data["data"]["note"], "live");
    let seq = f.emit("buddygate.server.up");
    assert_eq!(sse.next().await.unwrap().id, seq);
}

#[tokio::test]
async fn stream_replays_from_last_event_id_then_goes_live_without_duplicates() {
    let mut f = start(Setup::new("sse-replay")).await;
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", Some("3")).await;
    assert_eq!(sse.ids(2).await, [4, 5]);
    let seq = f.emit("buddygate.server.up");
    let m = sse.next().await.unwrap();
    assert_eq!((m.id, m.event.as_str()), (seq, "buddygate.server.up"));

    // `?after=` does the same; a Last-Event-ID header (a reconnect) wins over it.
    let mut sse = SseReader::open(&f, "/api/v1/events/stream?after=4", None).await;
    assert_eq!(sse.ids(2).await, [5, 6]);
    let mut sse = SseReader::open(&f, "/api/v1/events/stream?after=0", Some("5")).await;
    assert_eq!(sse.ids(1).await, [6]);
}

#[tokio::test]
async fn a_lagging_stream_catches_up_from_the_store() {
    let mut f = start(Setup {
        channel: 4,
        ..Setup::new("sse-lag")
    })
    .await;
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", None).await;
    // The server's task cannot run between these sends (one thread): its receiver overflows.
    let last = (0..20)
        .map(|_| f.emit("buddygate.path.down"))
        .last()
        .unwrap();
    let expected: Vec<u64> = (STORED + 1..=last).collect();
    assert_eq!(sse.ids(expected.len()).await, expected);

    // A stream that replays and then lags.
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", Some("20")).await;
    let last = (0..10).map(|_| f.emit("buddygate.path.up")).last().unwrap();
    let expected: Vec<u64> = (21..=last).collect();
    assert_eq!(sse.ids(expected.len()).await, expected);
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_serve_returns() {
    let mut f = start(Setup::new("shutdown")).await;
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", None).await;
    f.emit("buddygate.server.up");
    assert!(sse.next().await.is_some());
    f.cancel.cancel();
    assert_eq!(sse.next().await, None, "the stream ends");
    let served = tokio::time::timeout(PATIENCE, &mut f.server)
        .await
        .expect("serve returns after cancel")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn an_unreadable_event_log_is_a_503_and_ends_replaying_streams() {
    let f = start(Setup::new("no-store")).await;
    std::fs::remove_dir_all(&f.dir).unwrap();
    let (status, body) = f.get_json("/api/v1/events").await;
    assert_eq!(
        (status, error_of(&body)),
        (503, "cannot read the event log; see the node's log")
    );
    // The client reconnects with Last-Event-ID and nothing is lost once the store is back.
    let mut sse = SseReader::open(&f, "/api/v1/events/stream", Some("2")).await;
    assert_eq!(sse.next().await, None);
}

// ---- mutations ---------------------------------------------------------------------------

#[tokio::test]
async fn mutations_need_the_bearer_token() {
    let mut f = start(Setup::new("auth")).await;
    let path = "/api/v1/servers/live-1/failover";

    let resp = f.post(path, None).await;
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"buddygate\""
    );
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            401,
            "missing bearer token: send Authorization: Bearer <api.token>"
        )
    );
    assert_eq!(f.metrics.api_unauthorized.load(Ordering::Relaxed), 1);

    let resp = f.post(path, Some("s3cret-tokem")).await;
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    let (status, body) = json_of(resp).await;
    assert_eq!((status, error_of(&body)), (401, "invalid bearer token"));
    assert_eq!(f.metrics.api_unauthorized.load(Ordering::Relaxed), 2);

    let resp = f
        .http
        .post(f.url(path))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            401,
            "unsupported Authorization header: send Authorization: Bearer <api.token>"
        )
    );
    assert_eq!(f.metrics.api_unauthorized.load(Ordering::Relaxed), 3);
    assert!(f.commands.try_recv().is_err(), "nothing reached the core");

    let (status, body) = json_of(f.post(path, Some(TOKEN)).await).await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"accepted": true, "action": "failover", "server": "live-1"})
    );
    let live1 = f.node.site().server_idx("live-1").unwrap();
    assert_eq!(
        f.commands.try_recv().unwrap(),
        Command {
            action: Action::Failover,
            server: live1
        }
    );

    // The scheme is case-insensitive; a JSON object body is accepted.
    let resp = f
        .http
        .post(f.url("/api/v1/servers/live-1/failback"))
        .header("authorization", format!("bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"accepted": true, "action": "failback", "server": "live-1"})
    );
    assert_eq!(
        f.commands.try_recv().unwrap(),
        Command {
            action: Action::Failback,
            server: live1
        }
    );
    assert_eq!(f.metrics.api_unauthorized.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn mutations_are_refused_without_a_configured_token() {
    let mut f = start(Setup {
        token: None,
        ..Setup::new("no-token")
    })
    .await;
    for token in [None, Some(TOKEN), Some("")] {
        let (status, body) = json_of(f.post("/api/v1/servers/live-1/failover", token).await).await;
        assert_eq!(
            (status, error_of(&body)),
            (403, "mutations are disabled: set api.token")
        );
    }
    let (status, _) = json_of(f.post("/api/v1/connectors/psim/replay", Some(TOKEN)).await).await;
    assert_eq!(status, 403);
    assert!(f.commands.try_recv().is_err());
    assert_eq!(f.metrics.api_unauthorized.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unknown_servers_connectors_and_bad_bodies_are_refused() {
    let mut f = start(Setup::new("refused")).await;
    let cases: [(&str, Option<&str>, u16, &str); 5] = [
        (
            "/api/v1/servers/live-9/failover",
            None,
            404,
            "no server named \"live-9\"",
        ),
        (
            "/api/v1/servers/live-9/failback",
            None,
            404,
            "no server named \"live-9\"",
        ),
        (
            "/api/v1/connectors/psim/replay",
            None,
            404,
            "no connector named \"psim\"",
        ),
        (
            "/api/v1/servers/live-1/failover",
            Some("{\"reason\": "),
            400,
            "malformed JSON body: EOF while parsing a value at line 1 column 11",
        ),
        (
            "/api/v1/servers/live-1/failover",
            Some("[1, 2]"),
            400,
            "the request body must be a JSON object, or empty",
        ),
    ];
    for (path, body, status, message) in cases {
        let mut req = f
            .http
            .post(f.url(path))
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let (got, json) = json_of(req.send().await.unwrap()).await;
        assert_eq!((got, error_of(&json)), (status, message), "{path}");
    }
    // Unauthenticated requests learn nothing about what exists.
    let (status, _) = json_of(f.post("/api/v1/connectors/psim/replay", None).await).await;
    assert_eq!(status, 401);
    let (status, _) = json_of(f.post("/api/v1/servers/live-9/failover", None).await).await;
    assert_eq!(status, 401);
    assert!(f.commands.try_recv().is_err());
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let f = start(Setup::new("routes")).await;
    let (status, body) = f.get_json("/api/v1/nope").await;
    assert_eq!(
        (status, error_of(&body)),
        (404, "no route for GET /api/v1/nope")
    );
    let (status, body) = f.get_json("/api/v2/site?x=1").await;
    assert_eq!(
        (status, error_of(&body)),
        (404, "no route for GET /api/v2/site")
    );

    let resp = f.get("/api/v1/servers/live-1/failover").await;
    assert_eq!(resp.headers()["allow"], "POST");
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            405,
            "method GET not allowed for /api/v1/servers/live-1/failover"
        )
    );
    let (status, body) = json_of(f.post("/api/v1/site", Some(TOKEN)).await).await;
    assert_eq!(status, 405);
    assert_eq!(error_of(&body), "method POST not allowed for /api/v1/site");
    let resp = f.http.delete(f.url("/metrics")).send().await.unwrap();
    assert_eq!(json_of(resp).await.0, 405);

    // Odd paths and ids never break anything.
    for path in [
        "/api/v1/servers/%FF%FE/failover",
        "/api/v1/servers/%00/failover",
        "/api/v1/servers/a%2Fb/failover",
    ] {
        let (status, body) = json_of(f.post(path, Some(TOKEN)).await).await;
        assert!(matches!(status, 400 | 404), "{path}: {status} {body}");
        error_of(&body);
    }
    let long = format!("/api/v1/servers/{}/failover", "x".repeat(10_000));
    let (status, _) = json_of(f.post(&long, Some(TOKEN)).await).await;
    assert_eq!(status, 404);
}

// ---- metrics, health, dashboard ----------------------------------------------------------

#[tokio::test]
async fn metrics_expose_the_expected_series() {
    let f = start(Setup::new("metrics")).await;
    let _ = f
        .post("/api/v1/servers/live-1/failover", Some("wrong"))
        .await;
    for path in ["/metrics", "/api/v1/metrics"] {
        let resp = f.get(path).await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = resp.text().await.unwrap();
        let stats = f.node.stats();
        assert!(
            !stats.rejected.is_empty(),
            "the forged datagram was counted"
        );
        let mut expected: Vec<String> = vec![
            "buddygate_info{site=\"hq\",node=\"fo-1\"} 1".into(),
            "buddygate_booting 0".into(),
            format!("buddygate_heartbeats_sent_total {}", stats.heartbeats_sent),
            format!(
                "buddygate_heartbeats_received_total {}",
                stats.heartbeats_received
            ),
            "buddygate_takeovers_total 1".into(),
            "buddygate_failbacks_total 0".into(),
            "buddygate_resources_failed_total 0".into(),
            "buddygate_ownership_conflicts_total 0".into(),
            "buddygate_config_mismatches_total 0".into(),
            "buddygate_server_up{server=\"live-1\"} 0".into(),
            "buddygate_server_up{server=\"live-2\"} 1".into(),
            "buddygate_server_up{server=\"fo-1\"} 1".into(),
            "buddygate_server_state{server=\"live-1\",state=\"down\"} 1".into(),
            "buddygate_server_state{server=\"live-1\",state=\"up\"} 0".into(),
            "buddygate_path_up{server=\"live-1\",path=\"0\",address=\"127.1.0.1:7400\"} 0".into(),
            "buddygate_path_up{server=\"live-1\",path=\"1\",address=\"127.1.0.1:7401\"} 0".into(),
            "buddygate_path_up{server=\"live-2\",path=\"1\",address=\"127.1.0.2:7401\"} 1".into(),
            "buddygate_resource_owned{resource=\"live-1-camera-001\"} 1".into(),
            "buddygate_resource_owned{resource=\"live-1-io\"} 1".into(),
            "buddygate_resource_owned{resource=\"live-2-camera-001\"} 0".into(),
            "buddygate_resources{state=\"active\"} 25".into(),
            "buddygate_resources{state=\"unassigned\"} 0".into(),
            "buddygate_agent_ops_total{op=\"start\",outcome=\"ok\"} 3".into(),
            "buddygate_agent_ops_total{op=\"monitor\",outcome=\"failed\"} 1".into(),
            "# TYPE buddygate_takeover_seconds histogram".into(),
            "buddygate_takeover_seconds_bucket{le=\"1\"} 0".into(),
            "buddygate_takeover_seconds_bucket{le=\"1.2\"} 1".into(),
            "buddygate_takeover_seconds_bucket{le=\"+Inf\"} 1".into(),
            "buddygate_takeover_seconds_sum 1.05".into(),
            "buddygate_takeover_seconds_count 1".into(),
            "buddygate_api_unauthorized_total 1".into(),
            "buddygate_datagrams_sent_total 41".into(),
            "buddygate_datagrams_received_total 40".into(),
            "buddygate_datagram_send_errors_total 2".into(),
            format!("buddygate_events_stored_total {STORED}"),
        ];
        for (reason, n) in &stats.rejected {
            expected.push(format!(
                "buddygate_datagrams_rejected_total{{reason=\"{reason}\"}} {n}"
            ));
        }
        let lines: Vec<&str> = text.lines().collect();
        for line in &expected {
            assert!(
                lines.contains(&line.as_str()),
                "{path}: no line {line:?} in\n{text}"
            );
        }
        // Every family has HELP and TYPE; every sample belongs to a declared family.
        let mut declared = Vec::new();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                declared.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("buddygate_"), "{line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| declared.iter().any(|d| d == f))
                    .unwrap_or(name);
                assert!(declared.iter().any(|d| d == family), "{line} undeclared");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}

#[tokio::test]
async fn healthz_answers_on_both_paths() {
    let f = start(Setup::new("healthz")).await;
    for path in ["/healthz", "/api/v1/healthz"] {
        let (status, body) = f.get_json(path).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "ok", "node": "fo-1", "booting": false, "storage": {"ok": true}})
        );
    }
    // A store that takes no writes: 503, with why and since when.
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_565_600);
    *f.metrics.store.failing.lock().unwrap() = Some(buddygate::view::StoreFailure {
        reason: "database or disk is full".into(),
        since,
    });
    f.metrics.store.events_waiting.store(3, Ordering::Relaxed);
    let (status, body) = f.get_json("/healthz").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"status": "storage_failed", "node": "fo-1", "booting": false, "storage": {
            "ok": false, "error": "database or disk is full",
            "since": "2026-11-25T00:13:20.000Z", "events_waiting": 3,
        }})
    );
    let text = f.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("buddygate_store_ok 0\n"), "{text}");
    assert!(
        text.contains("buddygate_store_events_waiting 3\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let f = start(Setup::new("dashboard")).await;
    let resp = f.get("/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for needle in ["/api/v1/site", "/api/v1/resources", "/api/v1/events/stream"] {
        assert!(html.contains(needle), "the page uses {needle}");
    }
    for external in ["http://", "https://", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }
}

// ---- ingress: who may read, Host, body limits, stream cap -------------------------------

const READ_TOKEN: &str = "read-only-9c1e";

/// Every read route, and what a refused read must not show.
const READS: [&str; 7] = [
    "/api/v1/site",
    "/api/v1/resources",
    "/api/v1/events",
    "/api/v1/events/stream",
    "/api/v1/connectors",
    "/metrics",
    "/api/v1/metrics",
];

impl Fixture {
    /// A GET with `token` (or none), and its status.
    async fn status_of(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        drop(resp);
        status
    }
}

#[tokio::test]
async fn reads_need_the_api_token_or_the_read_token() {
    let mut setup = Setup::new("reads");
    setup.access.read_token = Some(READ_TOKEN.into());
    let mut f = start(setup).await;
    for path in READS {
        let resp = f.http.get(f.url(path)).send().await.unwrap();
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"buddygate\"",
            "{path}"
        );
        assert_eq!(resp.headers()["connection"], "close", "{path}");
        let (status, body) = json_of(resp).await;
        assert_eq!(
            (status, error_of(&body)),
            (
                401,
                "missing bearer token: send Authorization: Bearer <api.token or api.read_token>"
            ),
            "{path}"
        );
        assert_eq!(f.status_of(path, Some("guess")).await, 401, "{path}");
        assert_eq!(f.status_of(path, Some(TOKEN)).await, 200, "{path}");
        assert_eq!(f.status_of(path, Some(READ_TOKEN)).await, 200, "{path}");
    }
    // Open without a token: health, the page itself.
    for path in ["/healthz", "/api/v1/healthz", "/"] {
        assert_eq!(f.status_of(path, None).await, 200, "{path}");
    }
    // The read token cannot fail anything over.
    let resp = f
        .post("/api/v1/servers/live-1/failover", Some(READ_TOKEN))
        .await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"buddygate\", error=\"insufficient_scope\""
    );
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (403, "this token may only read; a mutation needs api.token")
    );
    assert!(f.commands.try_recv().is_err());
    let refused = f.metrics.api_refused.read();
    assert_eq!(
        refused,
        [("forbidden", 1), ("unauthorized", 2 * READS.len() as u64)]
    );
}

#[tokio::test]
async fn open_reads_and_nodes_without_tokens() {
    let mut setup = Setup::new("open-reads");
    setup.access.open_reads = true;
    let f = start(setup).await;
    for path in READS {
        assert_eq!(f.status_of(path, None).await, 200, "{path}");
    }
    assert_eq!(
        f.post("/api/v1/servers/live-1/failover", None)
            .await
            .status(),
        401,
        "mutations still need the token"
    );
    // No token at all: reads and mutations are disabled, and say how to enable them.
    let mut setup = Setup::new("no-tokens");
    setup.token = None;
    let f = start(setup).await;
    let (status, body) = json_of(f.http.get(f.url("/api/v1/site")).send().await.unwrap()).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            403,
            "reads are disabled: set api.token or api.read_token, or api.read = \"open\""
        )
    );
}

#[tokio::test]
async fn the_host_must_name_this_node() {
    let mut setup = Setup::new("hosts");
    setup.access.hosts = vec!["vms-1.example.com".into()];
    let f = start(setup).await;
    let port = f.base.rsplit(':').next().unwrap().to_string();
    // fo-1's own addresses, loopback, localhost, a listed name: served.
    for host in [
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("VMS-1.example.com:{port}"),
        "127.1.0.4".to_string(),
    ] {
        let resp = f
            .http
            .get(f.url("/healthz"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
    // DNS rebinding: a page of attacker.example whose name now points here.
    for host in [
        "attacker.example:8400",
        "10.9.9.9",
        "vms-1.example.com.evil",
    ] {
        let resp = f
            .http
            .get(f.url("/api/v1/site"))
            .bearer_auth(TOKEN)
            .header("host", host)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 421, "{host}");
        assert!(
            error_of(&body).ends_with(
                "does not name this node: use its address, or add the name to [api] hosts"
            ),
            "{body}"
        );
    }
    assert_eq!(f.metrics.api_refused.get("host"), 3);
}

/// A raw request on a new connection; the status and the whole answer.
async fn raw(base: &str, request: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn bodies_are_limited_per_route_and_refused_before_they_are_read() {
    let mut f = start(Setup::new("bodies")).await;
    // A mutation announcing 2 MB without a token: 401 at once, nothing read.
    let head = "POST /api/v1/servers/live-1/failover HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n";
    let (status, text) = raw(&f.base, head, b"").await;
    assert_eq!(status, 401, "{text}");
    // With the token: 413 at once (1 KiB at most), still nothing read.
    let head = format!(
        "POST /api/v1/servers/live-1/failover HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw(&f.base, &head, b"").await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("{\"error\":\"length limit exceeded\"}"),
        "{text}"
    );
    // Chunked, without a length: cut at the limit.
    let head = format!(
        "POST /api/v1/servers/live-1/failover HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunk = format!("800\r\n{}\r\n0\r\n\r\n", " ".repeat(0x800));
    let (status, text) = raw(&f.base, &head, chunk.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    // A read takes no body.
    let head = format!(
        "GET /api/v1/site HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = raw(&f.base, &head, b"0123456789").await;
    assert_eq!(status, 413);
    assert!(f.commands.try_recv().is_err(), "nothing reached the core");
    assert_eq!(f.metrics.api_refused.get("body_too_large"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_body_announced_and_never_sent_is_answered_408() {
    let f = start(Setup::new("slow-body")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = f.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/servers/live-1/failover HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Paused time: the body timeout passes without a real wait.
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains("the request body did not arrive in time (10 s between chunks at most)"),
        "{text}"
    );
}

#[tokio::test]
async fn event_streams_are_capped() {
    let f = start(Setup::new("stream-cap")).await;
    let mut open = Vec::new();
    for _ in 0..buddygate::api::events::MAX_STREAMS {
        open.push(SseReader::open(&f, "/api/v1/events/stream", None).await);
    }
    // From another address: this one holds as many connections as one client may.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let resp = other
        .get(f.url("/api/v1/events/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "5");
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            503,
            "64 event streams are open, as many as this node serves; try again later"
        )
    );
    assert_eq!(f.metrics.api_streams.load(Ordering::Relaxed), 64);
    // One ends: its place is free again.
    drop(open.pop());
    common::eventually(PATIENCE, "a stream closed", || async {
        (f.metrics.api_streams.load(Ordering::Relaxed) == 63).then_some(())
    })
    .await;
    let again = SseReader::open(&f, "/api/v1/events/stream", None).await;
    drop(again);
}
