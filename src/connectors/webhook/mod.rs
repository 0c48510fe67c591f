//! `type = "webhook"`: deliveries to an HTTP endpoint (a PSIM), signed the Standard Webhooks
//! way (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`), in order per
//! endpoint, at least once.
//!
//! The loop (the shared [`outbox`], one event per delivery): take the next event after the
//! cursor; skip it if the `events` filter says so; deliver it, retrying on the `retry`
//! schedule (honouring `Retry-After`); then move the cursor. A delivery that uses up the
//! schedule becomes a dead letter (kept, replayable) and the next event goes, and so does one
//! that cannot succeed (its template does not render, its URL cannot be built, a `4xx` other
//! than `408` and `429`) at once; a `410 Gone` disables the endpoint until a replay. The
//! `webhook-id` is the CloudEvent id, the same on every attempt and replay, so a receiver can
//! drop duplicates.

mod config;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use self::config::{BasicAuthFile, OneOrMany, WebhookConfig, WebhookFile, decode_whsec};
use super::outbox::{self, Outbox, Sink, Try, error_chain, http_client, parse_retry_after};
use super::{ConnectorStatus, secret_text};
use crate::cloudevents::rfc3339;
use crate::config::{ServerIdx, Site};
use crate::store::StoredEvent;
use crate::view::Snapshot;

/// A built webhook connector, ready to [`Webhook::run`].
pub struct Webhook {
    name: String,
    cfg: WebhookConfig,
    site: Arc<Site>,
    node: String,
    client: reqwest::Client,
    keys: Vec<Vec<u8>>,
    bearer: Option<String>,
    basic: Option<(String, String)>,
    env: minijinja::Environment<'static>,
    outbox: Outbox,
    /// The node's view, for `reassert`.
    snapshot: Option<tokio::sync::watch::Receiver<Arc<Snapshot>>>,
}

impl Webhook {
    /// Reads the secrets, builds the HTTP client, opens the store. `base` is the folder
    /// `file:` secrets are relative to.
    pub fn build(
        name: String,
        cfg: WebhookConfig,
        site: Arc<Site>,
        node: ServerIdx,
        data_dir: &Path,
        status: Arc<ConnectorStatus>,
    ) -> anyhow::Result<Self> {
        let base = cfg.base.as_deref();
        let mut keys = Vec::new();
        for s in &cfg.secrets {
            let text = secret_text(s, base, "the signing secret")?;
            keys.push(decode_whsec(&text).map_err(|e| anyhow::anyhow!("connector {name}: {e}"))?);
        }
        let bearer = match &cfg.bearer {
            Some(b) => Some(secret_text(b, base, "the bearer token")?),
            None => None,
        };
        let basic = match &cfg.basic {
            Some((user, pw)) => Some((user.clone(), secret_text(pw, base, "the password")?)),
            None => None,
        };
        let client = http_client(&name, cfg.timeout, &cfg.tls)?;
        let mut env = crate::config::template_environment();
        if let Some((path, text)) = &cfg.template {
            env.add_template_owned(path.display().to_string(), text.clone())?;
        }
        let outbox = Outbox::open(
            &name,
            data_dir,
            status,
            outbox::retry_schedule(cfg.retry.clone()),
            1,
        )?;
        Ok(Self {
            node: site.server(node).id.clone(),
            name,
            cfg,
            site,
            client,
            keys,
            bearer,
            basic,
            env,
            outbox,
            snapshot: None,
        })
    }

    /// Measures the delivery latency from when the node stored each event.
    pub fn with_stored_at(mut self, stored_at: Arc<super::StoredAt>) -> Self {
        self.outbox.set_stored_at(stored_at);
        self
    }

    /// Gives the connector the node's view, which `reassert` re-sends.
    pub fn with_snapshot(mut self, rx: tokio::sync::watch::Receiver<Arc<Snapshot>>) -> Self {
        self.snapshot = Some(rx);
        self
    }

    /// Delivers until `cancel`.
    pub async fn run(
        self,
        events: broadcast::Receiver<Arc<StoredEvent>>,
        replay: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        info!(connector = %self.name, url = %crate::redact::url(&self.cfg.url), "Webhook connector running.");
        outbox::run(&self.outbox, &self, events, replay, cancel).await;
    }

    /// Sends this node's current ownership once, as `buddygate.ownership.reasserted` (not
    /// stored, one attempt: the next interval tries again). Only with nothing queued, so it
    /// never overtakes an event.
    async fn reassert(&self) {
        let Some(snapshot) = self.snapshot.as_ref().map(|s| s.borrow().clone()) else {
            return;
        };
        let status = self.outbox.status();
        if status.queue_depth() > 0
            || self.outbox.is_disabled()
            || !self.cfg.events.wants(REASSERTED)
        {
            return;
        }
        let Some(json) = reassertion(&snapshot, status.head.load(Ordering::Relaxed)) else {
            return;
        };
        let ev = StoredEvent {
            seq: status.head.load(Ordering::Relaxed),
            kind: REASSERTED.into(),
            json,
        };
        match self.attempt_one(&ev).await {
            Try::Ok(_) => debug!(connector = %self.name, "Ownership re-asserted."),
            Try::Gone => {
                let _ = self.outbox.disable("410 Gone on a re-assertion".into());
            }
            Try::Failed { reason, .. } | Try::Refused { reason } => {
                debug!(connector = %self.name, %reason, "Re-assertion not delivered; next interval.")
            }
        }
    }

    /// The request for `ev`: method, URL, body, headers, signature.
    fn request(&self, ev: &StoredEvent) -> Result<reqwest::RequestBuilder, String> {
        let event: Value =
            serde_json::from_str(&ev.json).map_err(|e| format!("stored event {}: {e}", ev.seq))?;
        let ctx = minijinja::context! {
            event => minijinja::Value::from(minijinja::value::Serde(&event)),
            data => minijinja::Value::from(minijinja::value::Serde(&event["data"])),
            site => &self.site.name,
            node => &self.node,
            seq => ev.seq,
        };
        let templated_url = self.cfg.url.contains("{{") || self.cfg.url.contains("{%");
        let mut url = if templated_url {
            self.env
                .render_str(&self.cfg.url, &ctx)
                .map_err(|e| format!("url template: {e}"))?
        } else {
            self.cfg.url.clone()
        };
        let (body, content_type) = match (&self.cfg.template, self.cfg.method.as_str()) {
            (_, "GET") => {
                if !templated_url {
                    url = with_query(&url, &event)?;
                }
                (String::new(), None)
            }
            (Some((path, _)), _) => {
                let t = self
                    .env
                    .get_template(&path.display().to_string())
                    .map_err(|e| format!("template: {e}"))?;
                let body = t.render(&ctx).map_err(|e| format!("template: {e}"))?;
                (body, Some(self.cfg.content_type.as_str()))
            }
            (None, _) => (ev.json.clone(), Some("application/cloudevents+json")),
        };
        let method = reqwest::Method::from_bytes(self.cfg.method.as_bytes())
            .map_err(|e| format!("method: {e}"))?;
        let mut req = self.client.request(method, &url);
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = &self.basic {
            req = req.basic_auth(u, Some(p));
        }
        let id = event["id"].as_str().unwrap_or_default().to_string();
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        req = req
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if !self.keys.is_empty() {
            req = req.header("webhook-signature", sign(&self.keys, &id, timestamp, &body));
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct).body(body);
        }
        Ok(req)
    }

    async fn attempt_one(&self, ev: &StoredEvent) -> Try {
        let send = || async {
            match self.request(ev) {
                Ok(req) => Ok(req.send().await),
                Err(reason) => Err(reason),
            }
        };
        let mut sent = send().await;
        if let Ok(Err(e)) = &sent
            && super::closed_connection(e)
        {
            debug!(connector = %self.name, error = %error_chain(e), "Sent on a closed connection; sending again.");
            sent = send().await;
        }
        let sent = match sent {
            Ok(sent) => sent,
            // The request cannot be made for this event (template, URL, method): another
            // attempt would fail the same way.
            Err(reason) => return Try::Refused { reason },
        };
        match sent {
            Ok(resp) if resp.status().is_success() => Try::Ok(resp.status().as_u16()),
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let status = resp.status().as_u16();
                Try::for_status(status, format!("http {status}"), retry_after)
            }
            Err(e) if e.is_builder() => Try::Refused {
                reason: format!("request: {}", error_chain(&e)),
            },
            Err(e) if e.is_timeout() => Try::Failed {
                reason: format!("timeout after {:?}", self.cfg.timeout),
                retry_after: None,
            },
            Err(e) => Try::Failed {
                reason: format!("error: {}", error_chain(&e)),
                retry_after: None,
            },
        }
    }
}

impl Sink for Webhook {
    fn wants(&self, ev: &StoredEvent) -> bool {
        self.cfg.events.wants(&ev.kind)
    }

    /// One event at a time (the outbox's batch is 1).
    async fn attempt(&self, events: &[StoredEvent]) -> Try {
        match events {
            [ev] => self.attempt_one(ev).await,
            _ => Try::Failed {
                reason: format!("{} events in one webhook delivery", events.len()),
                retry_after: None,
            },
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        self.cfg.reassert
    }

    async fn tick(&self) {
        self.reassert().await;
    }
}

/// The type of the periodic re-assertion.
pub const REASSERTED: &str = "buddygate.ownership.reasserted";

/// The CloudEvent re-asserting what `snap`'s node serves now; `None` when it serves nothing.
/// `seq` is the newest event of the node's log it reflects.
pub fn reassertion(snap: &Snapshot, seq: u64) -> Option<String> {
    let site = &snap.site;
    let me = site.server(snap.node);
    let owned: Vec<_> = snap
        .resources
        .iter()
        .filter(|r| r.owner == Some(snap.node) && r.state == crate::failover::ResourceState::Active)
        .collect();
    if owned.is_empty() {
        return None;
    }
    let epoch = owned.iter().map(|r| r.epoch).max().unwrap_or(0);
    let now = SystemTime::now();
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let resources: Vec<Value> = owned
        .iter()
        .map(|r| {
            let res = site.resource(r.resource);
            serde_json::json!({"id": res.id, "kind": res.kind.as_str(), "owner": me.id,
                "address": me.address.to_string(), "epoch": r.epoch})
        })
        .collect();
    Some(
        serde_json::json!({
            "specversion": "1.0",
            "id": format!("{}:{seq}.r{millis}", me.id),
            "type": REASSERTED,
            "source": format!("buddygate://{}/{}", site.name, me.id),
            "time": rfc3339(now),
            "datacontenttype": "application/json",
            "seq": seq,
            "data": {
                "site": site.name,
                "server": {"id": me.id, "address": me.address.to_string()},
                "epoch": epoch,
                "resources": resources,
            }
        })
        .to_string(),
    )
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` per key,
/// separated by spaces (Standard Webhooks).
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &str) -> String {
    keys.iter()
        .map(|k| {
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(k).expect("HMAC accepts any key");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body.as_bytes());
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A GET: the event's essentials as query parameters.
fn with_query(url: &str, event: &Value) -> Result<String, String> {
    let mut u = reqwest::Url::parse(url).map_err(|e| format!("url: {e}"))?;
    {
        let d = &event["data"];
        let mut q = u.query_pairs_mut();
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        q.append_pair("type", &s(&event["type"]));
        q.append_pair("id", &s(&event["id"]));
        q.append_pair("time", &s(&event["time"]));
        q.append_pair("site", &s(&d["site"]));
        if !d["server"]["id"].is_null() {
            q.append_pair("server", &s(&d["server"]["id"]));
        }
        if !d["new_server"]["id"].is_null() {
            q.append_pair("new_server", &s(&d["new_server"]["id"]));
            q.append_pair("address", &s(&d["new_server"]["address"]));
        }
        if !d["epoch"].is_null() {
            q.append_pair("epoch", &s(&d["epoch"]));
        }
    }
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_signing_secret_is_not_quoted_in_the_error() {
        for (secret, why) in [
            ("whsec_MfKQ9r8GKYqrTwjU!D8ILPZIo2LaLaSw", "not base64 at 16"),
            (
                "whsec_dGhpcyBpcyBhIHNlY29uZCBrZXkgISF=",
                "does not fit at 30",
            ),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "padding"),
        ] {
            let e = decode_whsec(secret).unwrap_err();
            assert!(e.contains(why), "{e}");
            // `!` is 33, `F` 70 (0x46).
            for quoted in ["!", "'F'", "0x46", "33", "70"] {
                assert!(!e.contains(quoted), "{e} quotes the secret ({quoted})");
            }
        }
    }

    /// The test vector of the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let key = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &[key],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_keys_sign_with_each() {
        let a = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = decode_whsec("whsec_dGhpcyBpcyBhIHNlY29uZCBrZXkgISE=").unwrap();
        let s = sign(&[a.clone(), b], "id", 1, "{}");
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&[a], "id", 1, "{}"));
        assert!(parts[1].starts_with("v1,"));
    }
}
