//! The consumers `buddygate demo` runs beside its nodes: a PSIM webhook receiver that checks
//! every signature, and an ONVIF pull-point consumer (WS-UsernameToken digest, SOAP 1.2). Each
//! reports what it received, as it arrives, on a channel the demo prints from.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::onvif::auth::password_digest;
use crate::api::onvif::soap::ns;
use crate::api::onvif::time::format_datetime;
use crate::api::onvif::xml::{self, Element};
use crate::connectors::webhook::sign;

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
