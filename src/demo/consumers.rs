//! The consumers `buddygate demo` runs beside its nodes: a PSIM webhook receiver that checks
//! every signature, an ONVIF pull-point consumer (WS-UsernameToken digest, SOAP 1.2), and an
//! MQTT subscriber on an embedded broker (rumqttd). Each reports what it received, as it
//! arrives, on a channel the demo prints from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connectors::webhook::sign;
use crate::onvif::security::password_digest;
use crate::onvif::soap::ns;
use crate::onvif::time::format_datetime;
use crate::onvif::xml::{self, Element};

/// One thing a consumer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub by: &'static str,
    pub what: String,
}

/// Starts a webhook receiver on 127.0.0.1; returns its URL. Every request's Standard Webhooks
/// signature is checked against `key`.
pub async fn webhook_receiver(
    key: Vec<u8>,
    tx: mpsc::UnboundedSender<Received>,
    cancel: CancellationToken,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let key = Arc::new(key);
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (key, tx) = (key.clone(), tx.clone());
        async move {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
            let body = String::from_utf8_lossy(&body).into_owned();
            let ts: u64 = h("webhook-timestamp").parse().unwrap_or(0);
            let ok = h("webhook-signature")
                == sign(std::slice::from_ref(&key), h("webhook-id"), ts, &body);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let d = &v["data"];
            let what = match v["type"].as_str().unwrap_or("?") {
                t @ ("buddygate.failover.completed" | "buddygate.failback.completed") => format!(
                    "{t}: {} now at {} ({}), epoch {}",
                    d["server"]["id"].as_str().unwrap_or("?"),
                    d["new_server"]["id"].as_str().unwrap_or("?"),
                    d["new_server"]["address"].as_str().unwrap_or("?"),
                    d["epoch"]
                ),
                t => t.to_string(),
            };
            let _ = tx.send(Received {
                by: "PSIM webhook",
                what: format!(
                    "{what} [{} {}]",
                    h("webhook-id"),
                    if ok { "signature ok" } else { "BAD SIGNATURE" }
                ),
            });
            if ok {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::UNAUTHORIZED
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok(format!("http://{addr}/buddygate"))
}

fn envelope(user: &str, pass: &str, body: &str) -> String {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let created = format_datetime(SystemTime::now());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{env}" xmlns:tev="{tev}"><s:Header><wsse:Security xmlns:wsse="{wsse}" xmlns:wsu="{wsu}"><wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password><wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-soap-message-security-1.0#Base64Binary">{nonce}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        env = ns::ENV,
        tev = ns::TEV,
        wsse = ns::WSSE,
        wsu = ns::WSU,
        digest = password_digest(&nonce, &created, pass),
        nonce = base64::engine::general_purpose::STANDARD.encode(nonce),
    )
}

fn find<'a>(e: &'a Element, name: &str, out: &mut Vec<&'a Element>) {
    if e.name == name {
        out.push(e);
    }
    for c in &e.children {
        find(c, name, out);
    }
}

async fn call(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    pass: &str,
    body: &str,
) -> Result<Element, String> {
    let resp = client
        .post(url)
        .header("content-type", "application/soap+xml; charset=utf-8")
        .body(envelope(user, pass, body))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let doc = xml::parse(&bytes).map_err(|e| format!("{e:?}"))?;
    if !status.is_success() {
        return Err(format!("SOAP fault ({status})"));
    }
    Ok(doc)
}

/// An ONVIF client on `api` (a node's API base URL): creates a pull-point subscription and
/// long-polls it, reporting failover and failback events (with their data items).
pub async fn onvif_consumer(
    api: String,
    user: String,
    pass: String,
    tx: mpsc::UnboundedSender<Received>,
    cancel: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    let events = format!("{api}/onvif/event_service");
    let created = call(
        &client,
        &events,
        &user,
        &pass,
        "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>PT10M</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
    )
    .await;
    let address = match created {
        Ok(doc) => {
            let mut found = Vec::new();
            find(&doc, "Address", &mut found);
            found.first().map(|a| a.text().to_string())
        }
        Err(e) => {
            let _ = tx.send(Received {
                by: "ONVIF client",
                what: format!("could not subscribe: {e}"),
            });
            return;
        }
    };
    let Some(address) = address else {
        return;
    };
    let _ = tx.send(Received {
        by: "ONVIF client",
        what: format!("pull-point subscription at {address}"),
    });
    loop {
        let pulled = tokio::select! {
            _ = cancel.cancelled() => return,
            r = call(&client, &address, &user, &pass,
                "<tev:PullMessages><tev:Timeout>PT5S</tev:Timeout><tev:MessageLimit>100</tev:MessageLimit></tev:PullMessages>") => r,
        };
        let Ok(doc) = pulled else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut messages = Vec::new();
        find(&doc, "NotificationMessage", &mut messages);
        for m in messages {
            let topic = m
                .child_local("Topic")
                .map(|t| t.text().to_string())
                .unwrap_or_default();
            if !topic.contains("Failover") {
                continue;
            }
            let mut items = Vec::new();
            find(m, "SimpleItem", &mut items);
            let items: Vec<String> = items
                .iter()
                .filter_map(|i| Some(format!("{}={}", i.attr("", "Name")?, i.attr("", "Value")?)))
                .collect();
            let _ = tx.send(Received {
                by: "ONVIF client",
                what: format!("{topic} {}", items.join(" ")),
            });
        }
    }
}

/// Starts an embedded MQTT broker (rumqttd) on 127.0.0.1 in its own threads, with an MQTT 3.1.1
/// listener, or an MQTT 5 one when `v5`; returns its port once it accepts connections. It lives
/// as long as the process (rumqttd has no stop); its logs go to `tracing`, which the demo does
/// not print. The demo's broker, and the tests' and benchmarks'.
pub fn embedded_broker(v5: bool) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let name = if v5 { "v5" } else { "v4" };
    let settings = rumqttd::ServerSettings {
        name: name.into(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let listeners = HashMap::from([(name.to_string(), settings)]);
    let (v4, v5) = if v5 {
        (None, Some(listeners))
    } else {
        (Some(listeners), None)
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 2000,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4,
        v5,
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let _ = broker.start();
        })?;
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("the embedded MQTT broker did not start on 127.0.0.1:{port}")
}

/// Retained resource topics are many (one a camera): the subscriber shows the first few of a
/// new owner, then how many more followed, once the burst is over.
const SHOWN_PER_OWNER: usize = 2;
const BURST_IDLE: Duration = Duration::from_millis(250);

/// Resource topics seen for one owner in the current burst.
struct Burst {
    shown: usize,
    hidden: usize,
    first: tokio::time::Instant,
    last: tokio::time::Instant,
}

/// An MQTT subscriber to `{prefix}/#` on the broker at 127.0.0.1:`port`, reporting (as "MQTT")
/// the retained snapshot it finds, then every owner, server state, online flag and event as it
/// arrives (path events left out).
pub async fn mqtt_subscriber(
    port: u16,
    prefix: String,
    tx: mpsc::UnboundedSender<Received>,
    cancel: CancellationToken,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new("buddygate-demo-subscriber", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    if client
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .is_err()
    {
        return;
    }
    let report = |what: String| {
        let _ = tx.send(Received { by: "MQTT", what });
    };
    // While `Some`: the retained messages that arrive right after the SUBACK, by kind.
    let mut snapshot: Option<BTreeMap<String, usize>> = None;
    let mut bursts: BTreeMap<String, Burst> = BTreeMap::new();
    let mut idle_at: Option<tokio::time::Instant> = None;
    loop {
        let idle = async {
            match idle_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = idle => {
                idle_at = None;
                if let Some(kinds) = snapshot.take() {
                    let n: usize = kinds.values().sum();
                    let kinds: Vec<String> =
                        kinds.iter().map(|(k, n)| format!("{n} {k}/")).collect();
                    report(format!("subscribed to {prefix}/#: {n} retained topics ({})", kinds.join(", ")));
                }
                for (owner, b) in std::mem::take(&mut bursts) {
                    if b.hidden > 0 {
                        report(format!(
                            "... and {} more resources/ -> {owner}, the last {} ms after the first",
                            b.hidden,
                            (b.last - b.first).as_millis()
                        ));
                    }
                }
                continue;
            }
            ev = eventloop.poll() => ev,
        };
        let p = match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                snapshot = Some(BTreeMap::new());
                idle_at = Some(tokio::time::Instant::now() + BURST_IDLE);
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let now = tokio::time::Instant::now();
        idle_at = Some(now + BURST_IDLE);
        let topic = p
            .topic
            .strip_prefix(&format!("{prefix}/"))
            .unwrap_or(&p.topic);
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        let kind = topic.split('/').next().unwrap_or("");
        if let Some(kinds) = snapshot.as_mut() {
            *kinds.entry(kind.to_string()).or_default() += 1;
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        let what = match kind {
            "resources" => {
                let b = bursts.entry(s("owner")).or_insert(Burst {
                    shown: 0,
                    hidden: 0,
                    first: now,
                    last: now,
                });
                b.last = now;
                if b.shown == SHOWN_PER_OWNER {
                    b.hidden += 1;
                    continue;
                }
                b.shown += 1;
                format!(
                    "{topic} -> {} {} epoch {}",
                    s("owner"),
                    s("address"),
                    v["epoch"]
                )
            }
            "servers" => format!(
                "{topic} {}, served by {} {} epoch {}",
                s("state"),
                s("served_by"),
                s("served_address"),
                v["epoch"]
            ),
            "nodes" => format!("{topic} {}", v["online"]),
            "events" if topic.contains(".path.") => continue,
            "events" => {
                let d = &v["data"];
                let server = d["server"]["id"].as_str().unwrap_or("?");
                match d["new_server"]["id"].as_str() {
                    _ if topic.ends_with("failback.completed") => {
                        format!("{topic} {server} home epoch {}", d["epoch"])
                    }
                    Some(new) => format!("{topic} {server} -> {new} epoch {}", d["epoch"]),
                    None => topic.to_string(),
                }
            }
            _ => topic.to_string(),
        };
        report(what);
    }
}
