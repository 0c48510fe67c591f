//! Connectors: tell PSIMs, MQTT subscribers and ONVIF consumers what happened. Each connector
//! reads the node's durable event log (the outbox) from its own cursor, so a crash, a restart
//! or a consumer that is down for hours loses nothing: the cursor moves only after a delivery
//! succeeded or became a dead letter.
//!
//! One closed enum of kinds ([`ConnectorKind`]), one folder per kind with the same shape:
//! `config.rs` (its file's keys and their checks, a `ConnectorFile`), then `build` and `run`
//! in its `mod.rs`. [`load`] reads the connector files; the checks every kind shares are in
//! [`crate::config::connectors`]. The kinds that push over HTTP (`webhook`, `onvif`) share
//! [`outbox`]: the cursor, retries, dead letters, replay.

pub mod load;
pub mod mqtt;
pub mod onvif;
pub mod outbox;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::load::{SiteFiles, check_file, load_dir, load_site};
use self::mqtt::MqttConfig;
use self::onvif::OnvifConfig;
use self::webhook::WebhookConfig;
use crate::backoff::Backoff;
use crate::config::decode::Section;
use crate::config::locate::Issue;
use crate::config::{SecretRef, Site};
use crate::failover::Event;
use crate::store::StoredEvent;
use crate::view::{Histogram, Snapshot};

/// What kind of connector, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
// Built once at start-up; the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ConnectorKind {
    Webhook(WebhookConfig),
    Mqtt(MqttConfig),
    Onvif(OnvifConfig),
}

impl ConnectorKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ConnectorKind::Webhook(_) => "webhook",
            ConnectorKind::Mqtt(_) => "mqtt",
            ConnectorKind::Onvif(_) => "onvif",
        }
    }
}

/// One connector file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    /// The file's stem.
    pub name: String,
    pub file: PathBuf,
    pub kind: ConnectorKind,
}

/// A kind's connector file: decoded with the site file's diagnostics, then checked into the
/// kind's settings.
pub(crate) trait ConnectorFile: Section {
    type Config;

    /// The settings, or `None` when the checks added an error to `issues`. `base` is the file's
    /// folder, where templates and TLS files are read from; `None` skips those reads.
    fn check(&self, base: Option<&Path>, issues: &mut Vec<Issue>) -> Option<Self::Config>;
}

/// A secret's text (trimmed). `base` is the folder `file:` secrets are relative to (the
/// connector file's; `.` when unknown).
pub fn secret_text(s: &SecretRef, base: Option<&Path>, what: &str) -> anyhow::Result<String> {
    let bytes = s
        .resolve(base.unwrap_or(Path::new(".")))
        .map_err(|e| anyhow::anyhow!("cannot read {what} ({s:?}): {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// When each recent event was stored, on the monotonic clock: a connector measures its delivery
/// latency from there, so a step of the wall clock between the two does not distort it. Events
/// stored before this run of the node (or too long ago to be remembered) fall back to their
/// CloudEvent `time`.
#[derive(Debug, Default)]
pub struct StoredAt {
    recent: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
}

impl StoredAt {
    /// Events remembered.
    const KEEP: usize = 16_384;

    /// `seq` was stored at `at`.
    pub fn record(&self, seq: u64, at: std::time::Instant) {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == Self::KEEP {
            r.pop_front();
        }
        r.push_back((seq, at));
    }

    /// When `seq` was stored, if it is remembered.
    pub fn get(&self, seq: u64) -> Option<std::time::Instant> {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let i = r.partition_point(|&(s, _)| s < seq);
        r.get(i).filter(|&&(s, _)| s == seq).map(|&(_, at)| at)
    }

    /// How long ago `ev` was stored: from the monotonic stamp when there is one, else from
    /// its CloudEvent `time` (`None` when that is in the future).
    pub fn age(&self, ev: &StoredEvent) -> Option<std::time::Duration> {
        if let Some(at) = self.get(ev.seq) {
            return Some(at.elapsed());
        }
        let v: serde_json::Value = serde_json::from_str(&ev.json).ok()?;
        let t = humantime::parse_rfc3339(v["time"].as_str()?).ok()?;
        std::time::SystemTime::now().duration_since(t).ok()
    }
}

/// Live figures of one connector, shared with the API and metrics.
#[derive(Debug)]
pub struct ConnectorStatus {
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Attempts that failed (all of them, retried or not).
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    /// Sequence number of the last event handled (delivered, skipped or dead).
    pub cursor: AtomicU64,
    /// Newest event in the log, as last seen.
    pub head: AtomicU64,
    /// From the event being stored to its delivery being acknowledged.
    pub latency_seconds: Histogram,
    /// Why the connector is disabled (a 410), if it is.
    pub disabled: Mutex<Option<String>>,
    /// The last error, for `status`.
    pub last_error: Mutex<Option<String>>,
    /// Why the connector could not be built (a secret missing, a certificate unreadable):
    /// it is tried again with backoff; `None` once it runs.
    pub start_error: Mutex<Option<String>>,
}

impl Default for ConnectorStatus {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            head: AtomicU64::new(0),
            latency_seconds: Histogram::new(&[
                0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
            disabled: Mutex::new(None),
            last_error: Mutex::new(None),
            start_error: Mutex::new(None),
        }
    }
}

impl ConnectorStatus {
    /// Why the connector could not be built, while it cannot.
    pub fn start_error(&self) -> Option<String> {
        self.start_error.lock().ok().and_then(|e| e.clone())
    }

    /// Events not yet handled.
    pub fn queue_depth(&self) -> u64 {
        self.head
            .load(Ordering::Relaxed)
            .saturating_sub(self.cursor.load(Ordering::Relaxed))
    }
}

/// What the API sees of a running connector.
#[derive(Debug, Clone)]
pub struct ConnectorHandle {
    pub name: String,
    pub kind: &'static str,
    /// Where it delivers (for status).
    pub target: String,
    pub status: Arc<ConnectorStatus>,
    /// Wakes the connector to replay its dead letters (and re-enable it after a 410).
    pub replay: Arc<Notify>,
}

/// What connectors read from the node.
pub struct NodeFeeds<'a> {
    pub site: Arc<Site>,
    pub node: crate::config::ServerIdx,
    /// The node's data dir: its store holds the outbox and the cursors.
    pub data_dir: &'a std::path::Path,
    /// Every event as it is stored.
    pub events: &'a broadcast::Sender<Arc<StoredEvent>>,
    /// The node's view of servers and resources.
    pub snapshot: &'a tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// When each event was stored, for the delivery latency.
    pub stored_at: &'a Arc<StoredAt>,
    /// Where a connector that cannot start, and starts at last, is told
    /// ([`Event::ConnectorFailed`], [`Event::ConnectorRecovered`]): the failover core's task,
    /// which stores and publishes them like its own events.
    pub raise: &'a mpsc::Sender<Event>,
}

/// How long a connector that cannot be built waits before the next try: 1 s doubling to 1 min.
const BUILD_RETRY: Backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(60))
    .with_jitter(crate::backoff::Jitter::spread(0.1));

/// Starts every connector on `tasks`; returns their handles at once. A connector that cannot
/// be built (an `env:` secret that is not set, a certificate that cannot be read) does not
/// stop the others or the node: it is reported (an error in the log, `start_error` in its
/// status, `buddygate_connector_start_failed`, a `buddygate.connector.failed` event) and built
/// again with backoff until it runs (`buddygate.connector.recovered`).
pub fn start(
    feeds: NodeFeeds<'_>,
    connectors: &[Connector],
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Vec<ConnectorHandle> {
    let mut handles = Vec::new();
    for c in connectors {
        let status = Arc::new(ConnectorStatus::default());
        let replay = Arc::new(Notify::new());
        let target = match &c.kind {
            ConnectorKind::Webhook(cfg) => &cfg.url,
            ConnectorKind::Mqtt(cfg) => &cfg.url,
            ConnectorKind::Onvif(cfg) => &cfg.url,
        };
        handles.push(ConnectorHandle {
            name: c.name.clone(),
            kind: c.kind.type_name(),
            target: crate::redact::url(target),
            status: status.clone(),
            replay: replay.clone(),
        });
        let from = Feeds {
            site: feeds.site.clone(),
            node: feeds.node,
            data_dir: feeds.data_dir.to_path_buf(),
            events: feeds.events.clone(),
            snapshot: feeds.snapshot.clone(),
            stored_at: feeds.stored_at.clone(),
            raise: feeds.raise.clone(),
        };
        tasks.spawn(supervise(c.clone(), from, status, replay, cancel.clone()));
    }
    handles
}

/// [`NodeFeeds`], owned by a connector's task.
struct Feeds {
    site: Arc<Site>,
    node: crate::config::ServerIdx,
    data_dir: PathBuf,
    events: broadcast::Sender<Arc<StoredEvent>>,
    snapshot: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    stored_at: Arc<StoredAt>,
    raise: mpsc::Sender<Event>,
}

/// Builds connector `c` (again, with backoff, while that fails), then runs it until `cancel`.
/// Its first failed build raises `connector.failed`, the build that works after failures
/// `connector.recovered`: one of each per outage, however many builds it takes.
async fn supervise(
    c: Connector,
    f: Feeds,
    status: Arc<ConnectorStatus>,
    replay: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let mut since = None;
    loop {
        match build(&c, &f, status.clone()) {
            Ok(run) => {
                if let Ok(mut e) = status.start_error.lock() {
                    *e = None;
                }
                if let Some(since) = since {
                    tracing::info!(connector = %c.name, "Connector built; running.");
                    let recovered = Event::ConnectorRecovered {
                        connector: c.name.clone(),
                        kind: c.kind.type_name(),
                        attempts: failures.saturating_add(1),
                        failed_for: tokio::time::Instant::now().saturating_duration_since(since),
                    };
                    raise(&f, recovered, &cancel).await;
                }
                run(&f, replay, cancel).await;
                return;
            }
            Err(e) => {
                // The error names a secret (`env:VAR`, `file:PATH`), never its value; a URL in
                // it keeps no credentials.
                let reason = crate::redact::text(&format!("{e:#}"));
                failures = failures.saturating_add(1);
                let wait = BUILD_RETRY
                    .delay(failures)
                    .unwrap_or(Duration::from_secs(60));
                if let Ok(mut slot) = status.start_error.lock() {
                    *slot = Some(reason.clone());
                }
                if failures == 1 {
                    tracing::error!(connector = %c.name, error = %reason, retry_in = ?wait, "Connector cannot start; the node runs without it and tries again.");
                    since = Some(tokio::time::Instant::now());
                    let failed = Event::ConnectorFailed {
                        connector: c.name.clone(),
                        kind: c.kind.type_name(),
                        reason,
                        attempts: failures,
                        retry_in: wait,
                    };
                    raise(&f, failed, &cancel).await;
                } else {
                    tracing::warn!(connector = %c.name, error = %reason, retry_in = ?wait, "Connector still cannot start.");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Hands `e` to the failover core's task, to be stored and published (unless the node stops
/// first).
async fn raise(f: &Feeds, e: Event, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = f.raise.send(e) => {}
    }
}

/// Runs a built connector.
type Run = Box<dyn FnOnce(&Feeds, Arc<Notify>, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Builds connector `c`: reads its secrets and TLS files, opens its store.
fn build(c: &Connector, f: &Feeds, status: Arc<ConnectorStatus>) -> anyhow::Result<Run> {
    let name = c.name.clone();
    Ok(match &c.kind {
        ConnectorKind::Webhook(cfg) => {
            let w = webhook::Webhook::build(
                name,
                cfg.clone(),
                f.site.clone(),
                f.node,
                &f.data_dir,
                status,
            )?
            .with_snapshot(f.snapshot.clone())
            .with_stored_at(f.stored_at.clone());
            Box::new(move |f: &Feeds, replay, cancel| {
                Box::pin(w.run(f.events.subscribe(), replay, cancel))
            })
        }
        ConnectorKind::Mqtt(cfg) => {
            let m = mqtt::Mqtt::build(
                name,
                cfg.clone(),
                f.site.clone(),
                f.node,
                &f.data_dir,
                status,
            )?
            .with_stored_at(f.stored_at.clone());
            Box::new(move |f: &Feeds, replay, cancel| {
                Box::pin(m.run_with_replay(
                    f.events.subscribe(),
                    f.snapshot.clone(),
                    replay,
                    cancel,
                ))
            })
        }
        ConnectorKind::Onvif(cfg) => {
            let o = onvif::Onvif::build(name, cfg.clone(), f.site.clone(), &f.data_dir, status)?
                .with_stored_at(f.stored_at.clone());
            Box::new(move |f: &Feeds, replay, cancel| {
                Box::pin(o.run(f.events.subscribe(), replay, cancel))
            })
        }
    })
}

/// Whether a failed request went out on a kept-alive connection the consumer had closed as it
/// was reused (servers that do not read a body they did not want close theirs): worth sending
/// once more at once, on a new connection, rather than after the first retry delay. A consumer
/// that is down (connect error) or slow (timeout) goes through the retry schedule.
pub(crate) fn closed_connection(e: &reqwest::Error) -> bool {
    !e.is_connect() && !e.is_timeout() && !e.is_builder() && !e.is_status()
}
