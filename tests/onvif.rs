//! The ONVIF device and event services over real HTTP on 127.0.0.1, with a real `Shared`
//! whose snapshot comes from a failover node in the simulator (fo-1, 3 s after live-1
//! crashed: it serves live-1's resources, live-2 serves its own).
//!
//! With `BUDDYGATE_ONVIF_SAMPLES=DIR`, every message the gateway sends in these tests
//! (responses, faults, Notify) is written to DIR for `tests/interop/onvif_validate.sh`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use buddygate::api::views::ResourcesStatus;
use buddygate::onvif::messages::{Message, PropertyOperation};
use buddygate::onvif::notify::{Credentials, NotifyError, notify};
use buddygate::onvif::security::password_digest;
use buddygate::onvif::soap::ns;
use buddygate::onvif::time::format_datetime;
use buddygate::onvif::topics::Topic;
use buddygate::onvif::xml::{self, Element};
use buddygate::store::StoredEvent;
use buddygate::view::{Metrics, Snapshot};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use common::sim_node::{self, ApiOptions, node_after_takeover};

const USER: &str = "admin";
const PASS: &str = "onvif-pa55";
/// More accounts, for the per-account limits.
const OTHERS: [(&str, &str); 4] = [
    ("viewer", "v-pa55"),
    ("ops", "o-pa55"),
    ("psim", "p-pa55"),
    ("vms", "m-pa55"),
];
const PATIENCE: Duration = Duration::from_secs(10);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Fixture {
    base: String,
    http: reqwest::Client,
    events: broadcast::Sender<Arc<StoredEvent>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start() -> Fixture {
    let (node, now) = node_after_takeover([4, 3], false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = Arc::new(Metrics::default());
    let mut users = vec![(USER.to_string(), PASS.to_string())];
    users.extend(OTHERS.iter().map(|(u, p)| (u.to_string(), p.to_string())));
    let served = sim_node::serve(
        listener,
        Snapshot::of(&node, now),
        ApiOptions {
            token: None,
            onvif_users: users,
            data_dir: std::env::temp_dir().join("buddygate-onvif-unused"),
            channel: 64,
            commands: 8,
            metrics: metrics.clone(),
            access: buddygate::api::Access {
                onvif_push_allow: vec![buddygate::config::PushAllow::parse("127.0.0.0/8").unwrap()],
                ..Default::default()
            },
        },
    );
    Fixture {
        base: served.base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap(),
        events: served.events,
        snapshot: served.snapshot,
        cancel: served.cancel,
        metrics,
    }
}

/// A client whose connections come from `ip` (another loopback address: another client).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// Writes `body` to `$BUDDYGATE_ONVIF_SAMPLES/name.xml` when set.
fn sample(name: &str, body: &str) {
    if let Ok(dir) = std::env::var("BUDDYGATE_ONVIF_SAMPLES") {
        let _ = std::fs::create_dir_all(&dir);
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.xml")), body).unwrap();
    }
}

fn security(user: &str, pass: &str, nonce: &[u8], created: &str) -> String {
    format!(
        r#"<wsse:Security xmlns:wsse="{}" xmlns:wsu="{}" s:mustUnderstand="true"><wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{}</wsse:Password><wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-soap-message-security-1.0#Base64Binary">{}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#,
        ns::WSSE,
        ns::WSU,
        password_digest(nonce, created, pass),
        B64.encode(nonce)
    )
}

fn fresh_security() -> String {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    security(USER, PASS, &nonce, &format_datetime(SystemTime::now()))
}

fn envelope(header: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{}" xmlns:tds="{}" xmlns:tev="{}" xmlns:wsnt="{}" xmlns:wsa="{}" xmlns:bg="{}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        ns::ENV,
        ns::TDS,
        ns::TEV,
        ns::WSNT,
        ns::WSA,
        ns::BG
    )
}

/// A received notification: (topic, property operation, Source and Data items by name).
type Got = (String, Option<String>, Vec<(String, String)>);

/// A parsed response.
struct Soap {
    status: u16,
    text: String,
    root: Element,
}

impl Soap {
    fn all(&self, name: &str) -> Vec<&Element> {
        fn walk<'a>(e: &'a Element, name: &str, out: &mut Vec<&'a Element>) {
            if e.name == name {
                out.push(e);
            }
            for c in &e.children {
                walk(c, name, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.root, name, &mut out);
        out
    }

    fn one(&self, name: &str) -> &Element {
        self.all(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {name} in {}", self.text))
    }

    fn text_of(&self, name: &str) -> String {
        self.one(name).text().to_string()
    }

    /// The fault's code values, outermost first.
    fn fault_codes(&self) -> Vec<String> {
        self.all("Value")
            .iter()
            .map(|v| v.text().to_string())
            .collect()
    }

    fn assert_fault(&self, status: u16, codes: &[&str]) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.fault_codes(), codes, "{}", self.text);
    }

    /// Notification messages as (topic, operation, items by name).
    fn messages(&self) -> Vec<Got> {
        self.all("NotificationMessage")
            .iter()
            .map(|n| {
                let topic = n.child(ns::WSNT, "Topic").unwrap().text().to_string();
                let m = n
                    .child(ns::WSNT, "Message")
                    .and_then(|m| m.child(ns::TT, "Message"))
                    .unwrap();
                let op = m.attr("", "PropertyOperation").map(str::to_string);
                let items = m
                    .children
                    .iter()
                    .flat_map(|c| &c.children)
                    .map(|i| {
                        (
                            i.attr("", "Name").unwrap().to_string(),
                            i.attr("", "Value").unwrap().to_string(),
                        )
                    })
                    .collect();
                (topic, op, items)
            })
            .collect()
    }
}

fn item<'a>(items: &'a [(String, String)], name: &str) -> &'a str {
    items
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no item {name} in {items:?}"))
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Soap {
        self.post_with(&self.http, path, body).await
    }

    /// A POST with `client`.
    async fn post_with(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Soap {
        let resp = client
            .post(self.url(path))
            .header("content-type", "application/soap+xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap();
        assert!(
            ct.starts_with("application/soap+xml"),
            "status {status}, content-type {ct:?}: {text}"
        );
        let root = xml::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(root.ns, ns::ENV);
        Soap { status, text, root }
    }

    /// An authenticated call.
    async fn call(&self, path: &str, body: &str) -> Soap {
        self.post_raw(path, envelope(&fresh_security(), body)).await
    }

    /// A call authenticated as `user`.
    async fn call_as(&self, (user, pass): (&str, &str), path: &str, body: &str) -> Soap {
        let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let header = security(user, pass, &nonce, &format_datetime(SystemTime::now()));
        self.post_raw(path, envelope(&header, body)).await
    }

    async fn create_pull_point(&self, extra: &str) -> String {
        let r = self
            .call(
                "/onvif/event_service",
                &format!(
                    "<tev:CreatePullPointSubscription>{extra}<tev:InitialTerminationTime>PT60S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>"
                ),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        sample("CreatePullPointSubscriptionResponse", &r.text);
        r.one("SubscriptionReference")
            .child(ns::WSA, "Address")
            .unwrap()
            .text()
            .to_string()
    }

    async fn pull(&self, address: &str, timeout: &str, limit: u32) -> Soap {
        self.call(
            address,
            &format!(
                "<tev:PullMessages><tev:Timeout>{timeout}</tev:Timeout><tev:MessageLimit>{limit}</tev:MessageLimit></tev:PullMessages>"
            ),
        )
        .await
    }

    /// Pulls until nothing more is ready.
    async fn drain(&self, address: &str) -> Vec<Got> {
        let mut all = Vec::new();
        loop {
            let r = self.pull(address, "PT0S", 1000).await;
            assert_eq!(r.status, 200, "{}", r.text);
            let m = r.messages();
            if m.is_empty() {
                return all;
            }
            all.extend(m);
        }
    }

    fn broadcast(&self, seq: u64, kind: &str, data: serde_json::Value) {
        let json = serde_json::json!({
            "specversion": "1.0", "id": format!("fo-1:{seq}"), "type": kind,
            "source": "buddygate://hq/fo-1", "time": "2026-11-24T22:00:00.412Z",
            "datacontenttype": "application/json", "seq": seq, "data": data,
        });
        let _ = self.events.send(Arc::new(StoredEvent {
            seq,
            kind: kind.into(),
            json: json.to_string(),
        }));
    }

    fn failover_completed(&self, seq: u64) {
        self.broadcast(
            seq,
            "buddygate.failover.completed",
            serde_json::json!({
                "site": "hq", "server": {"id": "live-1", "address": "127.1.0.1"},
                "new_server": {"id": "fo-1", "address": "127.1.0.3"}, "epoch": 298,
                "resources": [{"id": "live-1-cam-1", "kind": "camera", "owner": "fo-1",
                               "address": "127.1.0.3", "epoch": 298}],
                "failed": [], "down_since": "2026-11-24T22:00:00.000Z", "takeover_ms": 412
            }),
        );
    }
}

// ---- device service ------------------------------------------------------------------------

#[tokio::test]
async fn get_system_date_and_time_needs_no_authentication() {
    let f = start().await;
    let r = f
        .post_raw(
            "/onvif/device_service",
            envelope("", "<tds:GetSystemDateAndTime/>"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetSystemDateAndTimeResponse", &r.text);
    let year: i32 = r.text_of("Year").parse().unwrap();
    assert!(year >= 2024);
    assert_eq!(r.text_of("DateTimeType"), "NTP");
    // Everything else needs a token.
    let r = f
        .post_raw(
            "/onvif/device_service",
            envelope("", "<tds:GetDeviceInformation/>"),
        )
        .await;
    r.assert_fault(400, &["env:Sender", "ter:NotAuthorized"]);
    sample("Fault-NotAuthorized", &r.text);
}

#[tokio::test]
async fn device_service_finds_the_event_service() {
    let f = start().await;
    let r = f
        .call(
            "/onvif/device_service",
            "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetServicesResponse", &r.text);
    let services: Vec<(String, String)> = r
        .all("Service")
        .iter()
        .map(|s| {
            (
                s.child(ns::TDS, "Namespace").unwrap().text().to_string(),
                s.child(ns::TDS, "XAddr").unwrap().text().to_string(),
            )
        })
        .collect();
    assert_eq!(
        services,
        [
            (ns::TDS.to_string(), f.url("/onvif/device_service")),
            (ns::TEV.to_string(), f.url("/onvif/event_service")),
        ]
    );
    assert_eq!(r.one("Capabilities").children.len(), 1);

    let r = f
        .call(
            "/onvif/device_service",
            "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetCapabilitiesResponse", &r.text);
    let events = r.one("Events");
    assert_eq!(
        events.child(ns::TT, "XAddr").unwrap().text(),
        f.url("/onvif/event_service")
    );
    assert_eq!(
        events.child(ns::TT, "WSPullPointSupport").unwrap().text(),
        "true"
    );
    let r = f
        .call(
            "/onvif/device_service",
            "<tds:GetCapabilities><tds:Category>PTZ</tds:Category></tds:GetCapabilities>",
        )
        .await;
    r.assert_fault(
        500,
        &[
            "env:Receiver",
            "ter:ActionNotSupported",
            "ter:NoSuchService",
        ],
    );
    sample("Fault-NoSuchService", &r.text);

    let r = f
        .call("/onvif/device_service", "<tds:GetDeviceInformation/>")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetDeviceInformationResponse", &r.text);
    assert_eq!(r.text_of("Manufacturer"), "buddygate");
    assert_eq!(r.text_of("FirmwareVersion"), env!("CARGO_PKG_VERSION"));
    assert_eq!(r.text_of("SerialNumber"), "hq/fo-1");
}

// ---- authentication ------------------------------------------------------------------------

#[tokio::test]
async fn authentication_faults() {
    let f = start().await;
    let now = format_datetime(SystemTime::now());
    let info = "<tds:GetDeviceInformation/>";
    let cases = [
        ("missing", String::new()),
        ("wrong password", security(USER, "nope", b"nonce-1", &now)),
        ("unknown user", security("root", PASS, b"nonce-2", &now)),
        (
            "stale Created",
            security(
                USER,
                PASS,
                b"nonce-3",
                &format_datetime(SystemTime::now() - Duration::from_secs(600)),
            ),
        ),
        (
            "Created in the future",
            security(
                USER,
                PASS,
                b"nonce-4",
                &format_datetime(SystemTime::now() + Duration::from_secs(600)),
            ),
        ),
        (
            "PasswordText",
            security(USER, PASS, b"nonce-5", &now).replace("#PasswordDigest", "#PasswordText"),
        ),
        (
            "bad nonce",
            security(USER, PASS, b"nonce-6", &now).replace("bm9uY2UtNg==", "***"),
        ),
    ];
    // Every failure is the same fault with the same text: a client cannot tell a wrong
    // password from an unknown user, a stale Created or a malformed token.
    for (what, header) in cases {
        let r = f
            .post_raw("/onvif/device_service", envelope(&header, info))
            .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert_eq!(
            r.fault_codes(),
            ["env:Sender", "ter:NotAuthorized"],
            "{what}: {}",
            r.text
        );
        assert_eq!(r.text_of("Text"), "Sender not authorized", "{what}");
    }
    let counted = f.metrics.onvif_auth_failures.read();
    assert_eq!(
        counted,
        [("created", 2), ("missing", 1), ("password", 4)],
        "by reason, in /metrics only"
    );
    // Six failed tokens from 127.0.0.1: it is slowed down, and even a good token from it is
    // refused unchecked (the same fault) for a while.
    let header = security(USER, PASS, b"nonce-7", &now);
    let blocked = f
        .post_raw("/onvif/device_service", envelope(&header, info))
        .await;
    blocked.assert_fault(400, &["env:Sender", "ter:NotAuthorized"]);
    assert_eq!(blocked.text_of("Text"), "Sender not authorized");
    assert_eq!(f.metrics.onvif_auth_failures.get("throttled"), 1);
    // Another client is not: a good token once, then its replay.
    let other = client_from("127.0.0.2");
    let ok = f
        .post_with(&other, "/onvif/device_service", envelope(&header, info))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let replay = f
        .post_with(&other, "/onvif/device_service", envelope(&header, info))
        .await;
    replay.assert_fault(400, &["env:Sender", "ter:NotAuthorized"]);
    assert_eq!(replay.text_of("Text"), "Sender not authorized");
    assert_eq!(f.metrics.onvif_auth_failures.get("nonce"), 1);
}

// ---- bad input -----------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_a_fault_never_a_crash() {
    let f = start().await;
    let r = f.post_raw("/onvif/device_service", "<s:Envelope").await;
    r.assert_fault(400, &["env:Sender", "ter:WellFormed"]);
    sample("Fault-WellFormed", &r.text);

    let r = f.post_raw("/onvif/event_service", "<a><b></a>").await;
    r.assert_fault(400, &["env:Sender", "ter:WellFormed"]);

    let r = f
        .post_raw("/onvif/device_service", vec![0xff_u8, 0xfe, 0x00])
        .await;
    r.assert_fault(400, &["env:Sender", "ter:WellFormed"]);

    let dtd = r#"<!DOCTYPE lol [<!ENTITY a "aaaaaaaa">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&a;</s:Body></s:Envelope>"#;
    let r = f.post_raw("/onvif/device_service", dtd).await;
    r.assert_fault(400, &["env:Sender", "ter:WellFormed"]);

    let r = f.post_raw("/onvif/device_service", "<html/>").await;
    r.assert_fault(400, &["env:Sender", "ter:Tag"]);
    sample("Fault-Tag", &r.text);

    let soap11 =
        r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>"#;
    let r = f.post_raw("/onvif/device_service", soap11).await;
    r.assert_fault(500, &["env:VersionMismatch"]);
    sample("Fault-VersionMismatch", &r.text);

    let r = f.post_raw("/onvif/device_service", envelope("", "")).await;
    r.assert_fault(400, &["env:Sender", "ter:Tag"]);

    let must = r#"<x:Trace xmlns:x="urn:x" s:mustUnderstand="true"/>"#;
    let r = f
        .post_raw(
            "/onvif/device_service",
            envelope(must, "<tds:GetSystemDateAndTime/>"),
        )
        .await;
    r.assert_fault(500, &["env:MustUnderstand"]);
    sample("Fault-MustUnderstand", &r.text);

    let deep = "<x>".repeat(100) + &"</x>".repeat(100);
    let r = f
        .post_raw("/onvif/device_service", envelope("", &deep))
        .await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgs"]);

    // 300 KiB: above the 256 KiB cap, with and without a Content-Length.
    let huge = envelope("", &format!("<x>{}</x>", "a".repeat(300 * 1024)));
    let r = f.post_raw("/onvif/device_service", huge.clone()).await;
    r.assert_fault(413, &["env:Sender", "ter:InvalidArgs"]);
    sample("Fault-TooLarge", &r.text);
    let (status, body) = chunked_post(&f.base, "/onvif/device_service", huge.as_bytes()).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("ter:InvalidArgs"), "{body}");

    let r = f.call("/onvif/device_service", "<tds:SystemReboot/>").await;
    r.assert_fault(500, &["env:Receiver", "ter:ActionNotSupported"]);
    sample("Fault-ActionNotSupported", &r.text);
    let r = f
        .call("/onvif/event_service", "<tds:GetDeviceInformation/>")
        .await;
    r.assert_fault(500, &["env:Receiver", "ter:ActionNotSupported"]);

    // Still serving.
    let r = f
        .post_raw(
            "/onvif/device_service",
            envelope("", "<tds:GetSystemDateAndTime/>"),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn ws_addressing_is_echoed_when_sent() {
    let f = start().await;
    let header = r#"<wsa:MessageID>urn:uuid:42</wsa:MessageID><wsa:Action>http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime</wsa:Action><wsa:To>http://x/onvif/device_service</wsa:To>"#;
    // An answer, then a fault (no credentials): both relate to the request and name their action.
    for (op, action, name) in [
        (
            "<tds:GetSystemDateAndTime/>",
            "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTimeResponse",
            "GetSystemDateAndTimeResponse-wsa",
        ),
        (
            "<tds:GetDeviceInformation/>",
            "http://www.w3.org/2005/08/addressing/soap/fault",
            "Fault-NotAuthorized-wsa",
        ),
    ] {
        let r = f
            .post_raw("/onvif/device_service", envelope(header, op))
            .await;
        assert_eq!(r.text_of("RelatesTo"), "urn:uuid:42");
        assert_eq!(r.text_of("Action"), action);
        sample(name, &r.text);
    }
    // Without addressing headers, none come back.
    let r = f
        .post_raw(
            "/onvif/device_service",
            envelope("", "<tds:GetSystemDateAndTime/>"),
        )
        .await;
    assert!(r.all("Header").is_empty(), "{}", r.text);
}

// ---- event service -------------------------------------------------------------------------

#[tokio::test]
async fn event_service_capabilities_and_topic_set() {
    let f = start().await;
    let r = f
        .call("/onvif/event_service", "<tev:GetServiceCapabilities/>")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetServiceCapabilitiesResponse", &r.text);
    let caps = r.one("Capabilities");
    assert_eq!(caps.attr("", "WSPullPointSupport"), Some("true"));
    assert_eq!(caps.attr("", "MaxPullPoints"), Some("200"));

    let r = f
        .call("/onvif/event_service", "<tev:GetEventProperties/>")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("GetEventPropertiesResponse", &r.text);
    let set = r.one("TopicSet");
    let mut topics = Vec::new();
    for root in &set.children {
        assert_eq!(root.ns, ns::BG);
        for leaf in &root.children {
            let desc = leaf.child(ns::TT, "MessageDescription").unwrap();
            let names = |part: &str| -> Vec<String> {
                desc.child(ns::TT, part)
                    .unwrap()
                    .children
                    .iter()
                    .map(|d| d.attr("", "Name").unwrap().to_string())
                    .collect()
            };
            topics.push((
                format!("bg:{}/{}", root.name, leaf.name),
                desc.attr("", "IsProperty").unwrap().to_string(),
                names("Source"),
                names("Data"),
            ));
        }
    }
    let find = |t: &str| topics.iter().find(|x| x.0 == t).unwrap();
    assert_eq!(find("bg:Ownership/Resource").1, "true");
    assert_eq!(find("bg:Server/State").1, "true");
    assert_eq!(find("bg:Failover/Completed").1, "false");
    assert_eq!(find("bg:Failover/Failback").1, "false");
    assert_eq!(find("bg:Ownership/Conflict").1, "false");
    assert_eq!(find("bg:Failover/Completed").2, ["Server"]);
    assert!(
        find("bg:Failover/Completed")
            .3
            .contains(&"Address".to_string())
    );
    assert!(
        find("bg:Failover/Completed")
            .3
            .contains(&"Epoch".to_string())
    );
    assert_eq!(find("bg:Ownership/Unplaced").1, "false");
    assert_eq!(find("bg:Ownership/Unplaced").2, ["Resource"]);
    assert_eq!(find("bg:Ownership/Unplaced").3, ["Home", "Reason"]);
    assert_eq!(find("bg:Connector/Failed").1, "false");
    assert_eq!(find("bg:Connector/Failed").2, ["Server", "Connector"]);
    assert_eq!(
        find("bg:Connector/Failed").3,
        ["Kind", "Reason", "Attempts", "RetryInMs"]
    );
    assert_eq!(find("bg:Connector/Recovered").1, "false");
    assert_eq!(find("bg:Connector/Recovered").2, ["Server", "Connector"]);
    assert_eq!(
        find("bg:Connector/Recovered").3,
        ["Kind", "Attempts", "FailedForMs"]
    );
    assert_eq!(topics.len(), 8);
}

/// Every resource with an owner, as fo-1's snapshot has it: (id, owner, address, epoch).
fn expected_owners(f: &Fixture) -> Vec<(String, String, String, String)> {
    let snap = f.snapshot.borrow().clone();
    let mut v: Vec<_> = ResourcesStatus::from_snapshot(&snap)
        .resources
        .into_iter()
        .filter_map(|r| {
            Some((
                r.id,
                r.owner?,
                r.address.unwrap_or_default(),
                r.epoch.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

fn owners_in(messages: &[Got], op: &str) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = messages
        .iter()
        .filter(|(t, o, _)| t == "bg:Ownership/Resource" && o.as_deref() == Some(op))
        .map(|(_, _, items)| {
            (
                item(items, "Resource").to_string(),
                item(items, "Owner").to_string(),
                item(items, "Address").to_string(),
                item(items, "Epoch").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_pull_point_starts_with_every_property_and_renews_and_unsubscribes() {
    let f = start().await;
    let address = f.create_pull_point("").await;
    assert!(
        address.starts_with(&f.url("/onvif/subscription/")),
        "{address}"
    );
    let r = f.pull(&address, "PT5S", 1000).await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("PullMessagesResponse-Initialized", &r.text);
    let messages = r.messages();
    let owners = owners_in(&messages, "Initialized");
    assert_eq!(owners, expected_owners(&f));
    assert!(
        owners
            .iter()
            .any(|(_, o, a, _)| o == "fo-1" && a == "127.1.0.3")
    );
    let states: Vec<(&str, &str)> = messages
        .iter()
        .filter(|(t, _, _)| t == "bg:Server/State")
        .map(|(_, _, i)| (item(i, "Server"), item(i, "State")))
        .collect();
    assert_eq!(
        states,
        [("live-1", "down"), ("live-2", "up"), ("fo-1", "up")]
    );
    // MessageLimit is honoured.
    let address2 = f.create_pull_point("").await;
    let r = f.pull(&address2, "PT5S", 2).await;
    assert_eq!(r.messages().len(), 2);

    let until = format_datetime(SystemTime::now() + Duration::from_secs(600));
    let r = f
        .call(
            &address,
            &format!(
                "<wsnt:Renew><wsnt:TerminationTime>{until}</wsnt:TerminationTime></wsnt:Renew>"
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("RenewResponse", &r.text);
    assert_eq!(r.text_of("TerminationTime"), until);
    let r = f
        .call(
            &address,
            "<wsnt:Renew><wsnt:TerminationTime>PT120S</wsnt:TerminationTime></wsnt:Renew>",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = f
        .call(
            &address,
            "<wsnt:Renew><wsnt:TerminationTime>2001-01-01T00:00:00Z</wsnt:TerminationTime></wsnt:Renew>",
        )
        .await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    assert_eq!(r.all("UnacceptableTerminationTimeFault").len(), 1);
    sample("Fault-UnacceptableTerminationTime", &r.text);

    let r = f.call(&address, "<wsnt:Unsubscribe/>").await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("UnsubscribeResponse", &r.text);
    let r = f.pull(&address, "PT1S", 10).await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    assert_eq!(r.all("ResourceUnknownFault").len(), 1);
    sample("Fault-ResourceUnknown", &r.text);
    let r = f.call(&address, "<wsnt:Unsubscribe/>").await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    let r = f
        .pull(&f.url("/onvif/subscription/0123456789abcdef"), "PT1S", 10)
        .await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
}

#[tokio::test]
async fn termination_times_absolute_relative_and_refused() {
    let f = start().await;
    let at = format_datetime(SystemTime::now() + Duration::from_secs(300));
    let r = f
        .call(
            "/onvif/event_service",
            &format!("<tev:CreatePullPointSubscription><tev:InitialTerminationTime>{at}</tev:InitialTerminationTime></tev:CreatePullPointSubscription>"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text_of("TerminationTime"), at);
    for bad in ["2001-01-01T00:00:00Z", "PT0S", "tomorrow"] {
        let r = f
            .call(
                "/onvif/event_service",
                &format!("<tev:CreatePullPointSubscription><tev:InitialTerminationTime>{bad}</tev:InitialTerminationTime></tev:CreatePullPointSubscription>"),
            )
            .await;
        r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
        assert_eq!(
            r.all("UnacceptableInitialTerminationTimeFault").len(),
            1,
            "{bad}"
        );
        sample("Fault-UnacceptableInitialTerminationTime", &r.text);
    }
    // Without one, the node picks a minute.
    let r = f
        .call("/onvif/event_service", "<tev:CreatePullPointSubscription/>")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_expired_subscription_is_gone() {
    let f = start().await;
    let r = f
        .call(
            "/onvif/event_service",
            r#"<tev:CreatePullPointSubscription><tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Ownership/Conflict</wsnt:TopicExpression></tev:Filter><tev:InitialTerminationTime>PT1S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>"#,
        )
        .await;
    let address = r.one("SubscriptionReference").children[0]
        .text()
        .to_string();
    // A long pull ends, empty, at the termination time.
    let t0 = Instant::now();
    let r = f.pull(&address, "PT30S", 1000).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(t0.elapsed() < PATIENCE);
    let r = f.pull(&address, "PT10S", 1000).await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    assert_eq!(r.all("ResourceUnknownFault").len(), 1);
}

#[tokio::test]
async fn filters_select_topics_and_bad_ones_are_faults() {
    let f = start().await;
    let filter = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Failover//.|bg:Server/State</wsnt:TopicExpression></tev:Filter>"#;
    let address = f.create_pull_point(filter).await;
    let first = f.drain(&address).await;
    assert!(
        first.iter().all(|(t, _, _)| t == "bg:Server/State"),
        "{first:?}"
    );
    assert_eq!(first.len(), 3);

    for (bad, detail) in [
        (
            r#"<wsnt:TopicExpression Dialect="urn:nope">bg:Failover</wsnt:TopicExpression>"#,
            "TopicExpressionDialectUnknownFault",
        ),
        (
            r#"<wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">zz:A/B</wsnt:TopicExpression>"#,
            "InvalidTopicExpressionFault",
        ),
        (
            r#"<wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Nothing/Here</wsnt:TopicExpression>"#,
            "InvalidTopicExpressionFault",
        ),
        (
            r#"<wsnt:MessageContent Dialect="http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter">boolean(//tt:SimpleItem)</wsnt:MessageContent>"#,
            "InvalidMessageContentExpressionFault",
        ),
    ] {
        let r = f
            .call(
                "/onvif/event_service",
                &format!("<tev:CreatePullPointSubscription><tev:Filter>{bad}</tev:Filter></tev:CreatePullPointSubscription>"),
            )
            .await;
        r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
        assert_eq!(r.all(detail).len(), 1, "{}", r.text);
        sample(&format!("Fault-{detail}"), &r.text);
    }
}

#[tokio::test]
async fn a_waiting_pull_returns_as_soon_as_a_failover_completes() {
    let f = start().await;
    let filter = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Failover/Completed</wsnt:TopicExpression></tev:Filter>"#;
    let address = f.create_pull_point(filter).await;
    assert!(f.drain(&address).await.is_empty());
    let t0 = Instant::now();
    let pull = {
        let (http, url, body) = (
            f.http.clone(),
            address.clone(),
            envelope(
                &fresh_security(),
                "<tev:PullMessages><tev:Timeout>PT50S</tev:Timeout><tev:MessageLimit>10</tev:MessageLimit></tev:PullMessages>",
            ),
        );
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/soap+xml")
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // Broadcast while the pull waits (it is in flight for certain after a few round trips).
    for _ in 0..3 {
        f.call("/onvif/device_service", "<tds:GetDeviceInformation/>")
            .await;
    }
    f.failover_completed(10);
    let text = tokio::time::timeout(PATIENCE, pull).await.unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(50),
        "the pull waited for its timeout"
    );
    sample("PullMessagesResponse-FailoverCompleted", &text);
    let r = Soap {
        status: 200,
        root: xml::parse(text.as_bytes()).unwrap(),
        text,
    };
    let m = r.messages();
    assert_eq!(m.len(), 1, "{}", r.text);
    let (topic, op, items) = &m[0];
    assert_eq!(topic, "bg:Failover/Completed");
    assert_eq!(op, &None);
    assert_eq!(item(items, "Server"), "live-1");
    assert_eq!(item(items, "NewServer"), "fo-1");
    assert_eq!(item(items, "Address"), "127.1.0.3");
    assert_eq!(item(items, "Epoch"), "298");
    assert_eq!(item(items, "TakeoverMs"), "412");
}

#[tokio::test]
async fn a_pull_with_nothing_to_send_ends_empty_at_its_timeout() {
    let f = start().await;
    let filter = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Ownership/Conflict</wsnt:TopicExpression></tev:Filter>"#;
    let address = f.create_pull_point(filter).await;
    let t0 = Instant::now();
    let r = f.pull(&address, "PT1S", 10).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    sample("PullMessagesResponse-Empty", &r.text);
    assert!(r.messages().is_empty());
    assert!(
        took >= Duration::from_millis(950),
        "returned after {took:?}"
    );
    // Messages of other topics do not end the wait either.
    f.failover_completed(11);
    let r = f.pull(&address, "PT0.2S", 10).await;
    assert!(r.messages().is_empty());
    // A conflict does.
    f.broadcast(
        12,
        "buddygate.ownership.conflict",
        serde_json::json!({"site": "hq", "resource": {"id": "live-1-io", "kind": "io"},
            "owners": [{"id": "fo-1", "address": "127.1.0.3", "epoch": 298},
                       {"id": "live-1", "address": "127.1.0.1", "epoch": 298}]}),
    );
    let r = f.pull(&address, "PT5S", 10).await;
    sample("PullMessagesResponse-Conflict", &r.text);
    let m = r.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(item(&m[0].2, "Resource"), "live-1-io");
    assert_eq!(item(&m[0].2, "Owners"), "fo-1,live-1");
}

#[tokio::test]
async fn pull_limits_are_faults_with_the_maximums() {
    let f = start().await;
    let address = f.create_pull_point("").await;
    for (timeout, limit) in [("PT61S", 10), ("PT5S", 1001), ("PT5S", 0), ("soon", 10)] {
        let r = f.pull(&address, timeout, limit).await;
        r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
        assert_eq!(r.text_of("MaxTimeout"), "PT60S", "{}", r.text);
        assert_eq!(r.text_of("MaxMessageLimit"), "1000");
        sample("Fault-PullMessages", &r.text);
    }
}

#[tokio::test]
async fn a_second_concurrent_pull_is_a_fault() {
    let f = Arc::new(start().await);
    let filter = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Failover/Failback</wsnt:TopicExpression></tev:Filter>"#;
    let address = f.create_pull_point(filter).await;
    let spawn_first = || {
        let (f, a) = (f.clone(), address.clone());
        tokio::spawn(async move { f.pull(&a, "PT30S", 10).await.messages().len() })
    };
    // The second pull may win the race to the lock (then the first is the one faulted and
    // returns at once): start the first again until it is the one waiting.
    let mut first = spawn_first();
    let deadline = Instant::now() + PATIENCE;
    let fault = loop {
        f.call("/onvif/device_service", "<tds:GetDeviceInformation/>")
            .await;
        if first.is_finished() {
            first = spawn_first();
            continue;
        }
        let r = f.pull(&address, "PT0S", 10).await;
        if r.status != 200 && !first.is_finished() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no second pull was faulted: {}",
            r.text
        );
    };
    fault.assert_fault(500, &["env:Receiver", "ter:Action", "ter:PullInProgress"]);
    sample("Fault-PullInProgress", &fault.text);
    f.broadcast(
        20,
        "buddygate.failback.completed",
        serde_json::json!({"site": "hq", "server": {"id": "live-1", "address": "127.1.0.1"},
            "new_server": {"id": "live-1", "address": "127.1.0.1"}, "epoch": 399,
            "resources": [], "failed": [], "failback_ms": 30}),
    );
    assert_eq!(
        tokio::time::timeout(PATIENCE, first)
            .await
            .unwrap()
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn set_synchronization_point_resends_the_current_owners() {
    let f = start().await;
    let address = f.create_pull_point("").await;
    let initial = f.drain(&address).await;
    assert!(!initial.is_empty());
    assert!(f.drain(&address).await.is_empty());
    let r = f.call(&address, "<tev:SetSynchronizationPoint/>").await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("SetSynchronizationPointResponse", &r.text);
    let again = f.drain(&address).await;
    assert_eq!(owners_in(&again, "Initialized"), expected_owners(&f));
    assert_eq!(again.len(), initial.len());
    // Also reachable through the event service with wsa:To.
    let header = format!("{}<wsa:To>{address}</wsa:To>", fresh_security());
    let r = f
        .post_raw(
            "/onvif/event_service",
            envelope(&header, "<tev:SetSynchronizationPoint/>"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(f.drain(&address).await.len(), initial.len());
}

#[tokio::test]
async fn ownership_changes_in_the_snapshot_are_property_changes() {
    let f = start().await;
    let filter = r#"<tev:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Ownership/Resource</wsnt:TopicExpression></tev:Filter>"#;
    let address = f.create_pull_point(filter).await;
    f.drain(&address).await;
    let mut snap = (**f.snapshot.borrow()).clone();
    let site = snap.site.clone();
    let live2 = site.server_idx("live-2").unwrap();
    // First resource: moves to live-2 at a new epoch; second: left with no owner.
    let (a, b) = (snap.resources[0].resource, snap.resources[1].resource);
    snap.resources[0].owner = Some(live2);
    snap.resources[0].epoch += 100;
    snap.resources[1].owner = None;
    let moved_epoch = snap.resources[0].epoch;
    f.snapshot.send_replace(Arc::new(snap));
    let r = f.pull(&address, "PT5S", 100).await;
    let mut m = r.messages();
    if m.len() < 2 {
        m.extend(f.pull(&address, "PT5S", 100).await.messages());
    }
    sample("PullMessagesResponse-Changed", &r.text);
    assert_eq!(m.len(), 2, "{m:?}");
    let (_, op, items) = &m[0];
    assert_eq!(op.as_deref(), Some("Changed"));
    assert_eq!(item(items, "Resource"), site.resource(a).id);
    assert_eq!(item(items, "Owner"), "live-2");
    assert_eq!(item(items, "Address"), "127.1.0.2");
    assert_eq!(item(items, "Epoch"), moved_epoch.to_string());
    let (_, op, items) = &m[1];
    assert_eq!(op.as_deref(), Some("Deleted"));
    assert_eq!(item(items, "Resource"), site.resource(b).id);
}

#[tokio::test]
async fn subscriptions_are_capped() {
    let f = start().await;
    let create = "<tev:CreatePullPointSubscription/>";
    // One account holds at most a quarter of the node's subscriptions...
    let mut mine = Vec::new();
    for _ in 0..50 {
        mine.push(f.create_pull_point("").await);
    }
    let r = f.call("/onvif/event_service", create).await;
    r.assert_fault(
        500,
        &["env:Receiver", "ter:Action", "ter:TooManySubscriptions"],
    );
    assert_eq!(
        r.text_of("Text"),
        "this account holds 50 subscriptions, as many as one account may"
    );
    // ...so other accounts are not locked out, and cannot use its subscriptions.
    let viewer = OTHERS[0];
    let r = f
        .call_as(
            viewer,
            &mine[0],
            "<tev:PullMessages><tev:Timeout>PT0S</tev:Timeout><tev:MessageLimit>1</tev:MessageLimit></tev:PullMessages>",
        )
        .await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    assert_eq!(r.all("ResourceUnknownFault").len(), 1, "{}", r.text);
    for account in &OTHERS[..3] {
        for _ in 0..50 {
            let r = f.call_as(*account, "/onvif/event_service", create).await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    // The node's own cap: 200 in all.
    let r = f.call_as(OTHERS[3], "/onvif/event_service", create).await;
    r.assert_fault(
        500,
        &["env:Receiver", "ter:Action", "ter:TooManySubscriptions"],
    );
    assert_eq!(r.all("SubscribeCreationFailedFault").len(), 1);
    assert_eq!(
        r.text_of("Text"),
        "this node serves at most 200 subscriptions at once"
    );
    sample("Fault-TooManySubscriptions", &r.text);
    let r = f.call(&mine[0], "<wsnt:Unsubscribe/>").await;
    assert_eq!(r.status, 200);
    f.create_pull_point("").await;
}

/// A POST with a chunked body (no Content-Length) over a raw connection: (status line, body).
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/soap+xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for c in body.chunks(16 * 1024) {
        // The server may answer and close before the whole body is sent.
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .await
            .is_err()
            || s.write_all(c).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.lines().next().unwrap_or("").to_string() + " ";
    (status, text)
}

// ---- push ----------------------------------------------------------------------------------

/// A consumer on 127.0.0.1: answers `fail_first` requests with 503, then 200; forwards every
/// body it accepted.
async fn consumer(fail_first: usize) -> (String, mpsc::Receiver<String>) {
    #[derive(Clone)]
    struct C {
        tx: mpsc::Sender<String>,
        left: Arc<std::sync::atomic::AtomicUsize>,
    }
    async fn notify_handler(State(c): State<C>, body: String) -> StatusCode {
        use std::sync::atomic::Ordering;
        if c.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let _ = c.tx.send(body).await;
        StatusCode::OK
    }
    let (tx, rx) = mpsc::channel(64);
    let app = axum::Router::new()
        .route("/notify", axum::routing::post(notify_handler))
        .with_state(C {
            tx,
            left: Arc::new(std::sync::atomic::AtomicUsize::new(fail_first)),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn subscribe_pushes_notify_to_the_consumer_and_retries() {
    let f = start().await;
    let (url, mut received) = consumer(1).await;
    let r = f
        .call(
            "/onvif/event_service",
            &format!(
                r#"<wsnt:Subscribe><wsnt:ConsumerReference><wsa:Address>{url}</wsa:Address></wsnt:ConsumerReference><wsnt:Filter><wsnt:TopicExpression Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">bg:Failover//.</wsnt:TopicExpression></wsnt:Filter><wsnt:InitialTerminationTime>PT60S</wsnt:InitialTerminationTime></wsnt:Subscribe>"#
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    sample("SubscribeResponse", &r.text);
    let address = r.one("SubscriptionReference").children[0]
        .text()
        .to_string();
    f.failover_completed(30);
    let body = tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("Notify within the patience")
        .unwrap();
    sample("Notify", &body);
    let n = Soap {
        status: 200,
        root: xml::parse(body.as_bytes()).unwrap(),
        text: body,
    };
    assert_eq!(n.one("Notify").ns, ns::WSNT);
    let m = n.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(item(&m[0].2, "Address"), "127.1.0.3");
    assert_eq!(item(&m[0].2, "Epoch"), "298");
    assert_eq!(
        n.one("SubscriptionReference").children[0].text(),
        address.as_str()
    );
    // A push subscription is not pulled.
    let r = f.pull(&address, "PT1S", 10).await;
    r.assert_fault(500, &["env:Receiver", "ter:ActionNotSupported"]);
    let r = f
        .call(
            &address,
            "<wsnt:Renew><wsnt:TerminationTime>PT300S</wsnt:TerminationTime></wsnt:Renew>",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = f.call(&address, "<wsnt:Unsubscribe/>").await;
    assert_eq!(r.status, 200, "{}", r.text);
    f.failover_completed(31);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), received.recv())
            .await
            .is_err(),
        "Notify after Unsubscribe"
    );

    let r = f
        .call(
            "/onvif/event_service",
            "<wsnt:Subscribe><wsnt:ConsumerReference><wsa:Address>file:///etc/passwd</wsa:Address></wsnt:ConsumerReference></wsnt:Subscribe>",
        )
        .await;
    r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
    sample("Fault-SubscribeCreationFailed", &r.text);
}

/// Push `Subscribe` only to consumers `[api] onvif_push_allow` lists (the fixture allows
/// 127.0.0.0/8): an authenticated client cannot make the node send requests anywhere else.
#[tokio::test]
async fn push_subscriptions_only_to_allowed_consumers() {
    let f = start().await;
    for consumer in [
        "http://10.1.2.3:8080/notify",
        "http://169.254.169.254/latest/meta-data/",
        "http://psim.example.com/notify",
        "http://[fd00::1]/notify",
    ] {
        let r = f
            .call(
                "/onvif/event_service",
                &format!("<wsnt:Subscribe><wsnt:ConsumerReference><wsa:Address>{consumer}</wsa:Address></wsnt:ConsumerReference></wsnt:Subscribe>"),
            )
            .await;
        r.assert_fault(400, &["env:Sender", "ter:InvalidArgVal"]);
        assert!(
            r.text_of("Text")
                .ends_with("the site's [api] onvif_push_allow does not list it"),
            "{consumer}: {}",
            r.text
        );
        assert_eq!(r.all("SubscribeCreationFailedFault").len(), 1);
    }
    let r = f
        .call(
            "/onvif/event_service",
            "<wsnt:Subscribe><wsnt:ConsumerReference><wsa:Address>http://127.0.0.1:9/notify</wsa:Address></wsnt:ConsumerReference></wsnt:Subscribe>",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn the_public_notify_sender_delivers_and_reports_failures() {
    let (url, mut received) = consumer(1).await;
    let client = reqwest::Client::new();
    let messages = vec![Message {
        topic: Topic::OwnershipResource,
        utc_time: "2026-11-24T22:00:00.412Z".into(),
        operation: Some(PropertyOperation::Changed),
        source: vec![("Resource", "cam-001".into())],
        data: vec![
            ("Owner", "fo-1".into()),
            ("Address", "10.0.1.21".into()),
            ("Epoch", "7".into()),
        ],
    }];
    let err = notify(&client, &url, &messages, None).await.unwrap_err();
    assert!(
        matches!(err, NotifyError::Status { status: 503, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    notify(&client, &url, &messages, None).await.unwrap();
    let body = received.recv().await.unwrap();
    sample("Notify-connector", &body);
    assert!(
        body.contains(r#"<tt:SimpleItem Name="Address" Value="10.0.1.21"/>"#),
        "{body}"
    );
    assert!(body.contains("<wsnt:Topic Dialect=\"http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet\">bg:Ownership/Resource</wsnt:Topic>"));
    // With a WS-UsernameToken, as the onvif connector sends it to a consumer that wants one.
    let credentials = Credentials {
        user: "bg-push".into(),
        password: "p4ss".into(),
    };
    notify(&client, &url, &messages, Some(&credentials))
        .await
        .unwrap();
    let body = received.recv().await.unwrap();
    sample("Notify-connector-auth", &body);
    assert!(body.contains("<wsse:UsernameToken>"), "{body}");
    let down = notify(&client, "http://127.0.0.1:9/notify", &messages, None).await;
    assert!(matches!(down, Err(NotifyError::Transport { .. })));
}
