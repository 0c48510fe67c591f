//! `type = "webhook"`: deliveries to an HTTP endpoint (a PSIM), signed the Standard Webhooks
//! way (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`), in order per
//! endpoint, at least once.
//!
//! The loop: take the next event after the cursor; skip it if the `events` filter says so;
//! deliver it, retrying on the `retry` schedule (honouring `Retry-After`); then move the cursor.
//! A delivery that uses up the schedule becomes a dead letter (kept, replayable) and the next
//! event goes; a `410 Gone` disables the endpoint until a replay. The `webhook-id` is the
//! CloudEvent id, the same on every attempt and replay, so a receiver can drop duplicates.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ConnectorStatus;
use crate::config::connectors::{WebhookConfig, decode_whsec};
use crate::config::{ServerIdx, Site};
use crate::runtime::cloudevents::rfc3339;
use crate::runtime::state::Snapshot;
use crate::store::{Attempt, DeadLetter, Reader, Store, StoredEvent};

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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
    /// Behind a lock only so the connector can be sent between threads; one task uses it.
    store: std::sync::Mutex<Store>,
    reader: std::sync::Mutex<Reader>,
    status: Arc<ConnectorStatus>,
    /// The node's view, for `reassert`.
    snapshot: Option<tokio::sync::watch::Receiver<Arc<Snapshot>>>,
}

/// How one delivery ended.
enum Outcome {
    Delivered,
    Dead(String, u32),
    Disabled(String),
    Cancelled,
}

/// How one attempt ended.
enum Try {
    Ok(u16),
    Gone,
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

fn secret_text(s: &crate::config::SecretRef, base: &Path, what: &str) -> anyhow::Result<String> {
    let bytes = s
        .resolve(base)
        .map_err(|e| anyhow::anyhow!("cannot read {what} ({s:?}): {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
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
        let base = site_base(&cfg);
        let mut keys = Vec::new();
        for s in &cfg.secrets {
            let text = secret_text(s, &base, "the signing secret")?;
            keys.push(decode_whsec(&text).map_err(|e| anyhow::anyhow!("connector {name}: {e}"))?);
        }
        let bearer = match &cfg.bearer {
            Some(b) => Some(secret_text(b, &base, "the bearer token")?),
            None => None,
        };
        let basic = match &cfg.basic {
            Some((user, pw)) => Some((user.clone(), secret_text(pw, &base, "the password")?)),
            None => None,
        };
        let mut builder = reqwest::Client::builder().timeout(cfg.timeout).no_proxy();
        if let Some(ca) = &cfg.tls.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("connector {name}: cannot read {}: {e}", ca.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("connector {name}: {}: {e}", ca.display()))?;
            // Only this CA: an endpoint with a private CA is not also trusted by public ones.
            builder = builder.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            let mut pem = std::fs::read(cert).map_err(|e| {
                anyhow::anyhow!("connector {name}: cannot read {}: {e}", cert.display())
            })?;
            pem.extend(std::fs::read(key).map_err(|e| {
                anyhow::anyhow!("connector {name}: cannot read {}: {e}", key.display())
            })?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("connector {name}: client certificate: {e}"))?;
            builder = builder.identity(identity);
        }
        let client = builder.build()?;
        let mut env = crate::config::template_environment();
        if let Some((path, text)) = &cfg.template {
            env.add_template_owned(path.display().to_string(), text.clone())?;
        }
        let store = Store::open_for_connector(data_dir)?;
        let reader = Store::open_reader(data_dir)?;
        if let Some(reason) = reader.disabled(&name)? {
            *status.disabled.lock().expect("status lock") = Some(reason);
        }
        status
            .dead
            .store(reader.dead_letters(&name)?.len() as u64, Ordering::Relaxed);
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
            store: std::sync::Mutex::new(store),
            reader: std::sync::Mutex::new(reader),
            status,
            snapshot: None,
        })
    }

    /// Gives the connector the node's view, which `reassert` re-sends.
    pub fn with_snapshot(mut self, rx: tokio::sync::watch::Receiver<Arc<Snapshot>>) -> Self {
        self.snapshot = Some(rx);
        self
    }

    /// Delivers until `cancel`.
    pub async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<StoredEvent>>,
        replay: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        info!(connector = %self.name, url = %self.cfg.url, "Webhook connector running.");
        let mut reassert_at = self.cfg.reassert.map(|d| tokio::time::Instant::now() + d);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            match self.serve_once(&replay, &cancel).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    warn!(connector = %self.name, error = %e, "Connector store error; retrying in 1 s.");
                    *self.status.last_error.lock().expect("status lock") = Some(e.to_string());
                }
            }
            // Nothing to do: wait for a new event, a replay, or a second (a missed wake-up).
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = events.recv() => {}
                _ = replay.notified() => self.queue_replay(),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(reassert_at.unwrap_or_else(far_future)), if reassert_at.is_some() => {
                    reassert_at = self.cfg.reassert.map(|d| tokio::time::Instant::now() + d);
                    self.reassert().await;
                }
            }
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends this node's current ownership once, as `buddygate.ownership.reasserted` (not
    /// stored, one attempt: the next interval tries again). Only with nothing queued, so it
    /// never overtakes an event.
    async fn reassert(&mut self) {
        let Some(snapshot) = self.snapshot.as_ref().map(|s| s.borrow().clone()) else {
            return;
        };
        if self.status.queue_depth() > 0
            || self.status.disabled.lock().expect("status lock").is_some()
            || !self.cfg.wants(REASSERTED)
        {
            return;
        }
        let Some(json) = reassertion(&snapshot, self.status.head.load(Ordering::Relaxed)) else {
            return;
        };
        let ev = StoredEvent {
            seq: self.status.head.load(Ordering::Relaxed),
            kind: REASSERTED.into(),
            json,
        };
        match self.attempt(&ev).await {
            Try::Ok(_) => debug!(connector = %self.name, "Ownership re-asserted."),
            Try::Gone => {
                let _ = self.disable("410 Gone on a re-assertion".into());
            }
            Try::Failed { reason, .. } => {
                debug!(connector = %self.name, %reason, "Re-assertion not delivered; next interval.")
            }
        }
    }

    fn queue_replay(&mut self) {
        match self.store().queue_replay(&self.name) {
            Ok(n) => {
                info!(connector = %self.name, dead_letters = n, "Replay requested.");
                *self.status.disabled.lock().expect("status lock") = None;
            }
            Err(e) => warn!(connector = %self.name, error = %e, "Cannot queue a replay."),
        }
    }

    /// Handles what is due: replays first, then the next events. `Ok(true)` when it did
    /// something and should look again at once.
    async fn serve_once(
        &mut self,
        replay: &Notify,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        self.status
            .head
            .store(self.reader().last_seq()?, Ordering::Relaxed);
        if self.status.disabled.lock().expect("status lock").is_some() {
            // Disabled by a 410: only a replay re-enables it.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = replay.notified() => self.queue_replay(),
            }
            return Ok(true);
        }
        self.status
            .head
            .store(self.reader().last_seq()?, Ordering::Relaxed);
        let dead_letters = self.reader().dead_letters(&self.name)?;
        for dead in dead_letters {
            if !dead.replay {
                continue;
            }
            let Some(ev) = self.reader().event(dead.seq)? else {
                self.store().remove_dead_letter(&self.name, dead.seq)?;
                continue;
            };
            match self.deliver(&ev, cancel).await {
                Outcome::Delivered => {
                    self.store().remove_dead_letter(&self.name, dead.seq)?;
                    self.status.dead.fetch_sub(1, Ordering::Relaxed);
                }
                Outcome::Dead(reason, attempts) => {
                    self.store().add_dead_letter(
                        &self.name,
                        &DeadLetter {
                            seq: dead.seq,
                            attempts,
                            reason,
                            time: rfc3339(SystemTime::now()),
                            replay: false,
                        },
                    )?;
                }
                Outcome::Disabled(reason) => return self.disable(reason),
                Outcome::Cancelled => return Ok(false),
            }
            return Ok(true);
        }
        let cursor = self.reader().cursor(&self.name)?;
        self.status.cursor.store(cursor, Ordering::Relaxed);
        let batch = self.reader().events_after(cursor, 100)?;
        if batch.is_empty() {
            return Ok(false);
        }
        for ev in batch {
            if !self.cfg.wants(&ev.kind) {
                self.advance(ev.seq)?;
                continue;
            }
            match self.deliver(&ev, cancel).await {
                Outcome::Delivered => {
                    self.status.cursor.store(ev.seq, Ordering::Relaxed);
                }
                Outcome::Dead(reason, attempts) => {
                    warn!(connector = %self.name, seq = ev.seq, %reason, "Delivery failed for good; kept as a dead letter.");
                    self.store().add_dead_letter(
                        &self.name,
                        &DeadLetter {
                            seq: ev.seq,
                            attempts,
                            reason,
                            time: rfc3339(SystemTime::now()),
                            replay: false,
                        },
                    )?;
                    self.status.dead.fetch_add(1, Ordering::Relaxed);
                    self.advance(ev.seq)?;
                }
                Outcome::Disabled(reason) => return self.disable(reason),
                Outcome::Cancelled => return Ok(false),
            }
        }
        Ok(true)
    }

    fn advance(&mut self, seq: u64) -> anyhow::Result<()> {
        self.store().set_cursor(&self.name, seq)?;
        self.status.cursor.store(seq, Ordering::Relaxed);
        Ok(())
    }

    fn disable(&mut self, reason: String) -> anyhow::Result<bool> {
        warn!(connector = %self.name, %reason, "Endpoint gone (410): disabled until a replay.");
        self.store().set_disabled(&self.name, Some(&reason))?;
        *self.status.disabled.lock().expect("status lock") = Some(reason);
        Ok(true)
    }

    /// One event, with every retry of the schedule.
    async fn deliver(&mut self, ev: &StoredEvent, cancel: &CancellationToken) -> Outcome {
        let attempts = 1 + self.cfg.retry.len() as u32;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let started = Instant::now();
            let result = self.attempt(ev).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let outcome = match &result {
                Try::Ok(code) => format!("delivered {code}"),
                Try::Gone => "http 410 gone".to_string(),
                Try::Failed { reason, .. } => reason.clone(),
            };
            let record = Attempt {
                seq: ev.seq,
                attempt,
                outcome: outcome.clone(),
                latency_ms,
                time: rfc3339(SystemTime::now()),
            };
            // A success moves the cursor in the same transaction.
            let stored = if matches!(result, Try::Ok(_)) {
                self.store().delivered(&self.name, &record)
            } else {
                self.store().record_attempt(&self.name, &record)
            };
            if let Err(e) = stored {
                warn!(connector = %self.name, error = %e, "Cannot record a delivery attempt.");
            }
            match result {
                Try::Ok(_) => {
                    self.status.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(age) = event_age(ev) {
                        self.status.latency_seconds.observe(age);
                    }
                    return Outcome::Delivered;
                }
                Try::Gone => {
                    self.status.failed.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Disabled(format!("410 Gone for event {}", ev.seq));
                }
                Try::Failed {
                    reason,
                    retry_after,
                } => {
                    self.status.failed.fetch_add(1, Ordering::Relaxed);
                    *self.status.last_error.lock().expect("status lock") = Some(reason.clone());
                    last = reason;
                    let Some(&planned) = self.cfg.retry.get(attempt as usize - 1) else {
                        break;
                    };
                    self.status.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.unwrap_or_else(|| jitter(planned));
                    debug!(connector = %self.name, seq = ev.seq, attempt, reason = %last, ?wait, "Delivery failed; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Outcome::Cancelled,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        Outcome::Dead(last, attempts)
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

    async fn attempt(&self, ev: &StoredEvent) -> Try {
        let req = match self.request(ev) {
            Ok(r) => r,
            Err(reason) => {
                return Try::Failed {
                    reason,
                    retry_after: None,
                };
            }
        };
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Try::Ok(resp.status().as_u16()),
            Ok(resp) if resp.status() == reqwest::StatusCode::GONE => Try::Gone,
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                Try::Failed {
                    reason: format!("http {}", resp.status().as_u16()),
                    retry_after,
                }
            }
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

/// The type of the periodic re-assertion.
pub const REASSERTED: &str = "buddygate.ownership.reasserted";

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

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

/// The folder `file:` secrets of a connector are read from: its file's folder.
fn site_base(cfg: &WebhookConfig) -> std::path::PathBuf {
    cfg.base
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
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

/// `Retry-After`: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// +-10 %, so that many nodes do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// How long ago the event was stored (its CloudEvent `time`).
fn event_age(ev: &StoredEvent) -> Option<Duration> {
    let v: Value = serde_json::from_str(&ev.json).ok()?;
    let t = humantime::parse_rfc3339(v["time"].as_str()?).ok()?;
    SystemTime::now().duration_since(t).ok()
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

    #[test]
    fn retry_after_is_seconds_capped() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        // A date in the past: retry at once.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let d = parse_retry_after(&in_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
