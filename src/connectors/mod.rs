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

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::load::{SiteFiles, check_file, load_dir, load_site};
use self::mqtt::MqttConfig;
use self::onvif::OnvifConfig;
use self::webhook::WebhookConfig;
use crate::config::decode::Section;
use crate::config::locate::Issue;
use crate::config::{SecretRef, Site};
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
        }
    }
}

impl ConnectorStatus {
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
}

/// Starts every connector on `tasks`; returns their handles.
pub fn start(
    feeds: NodeFeeds<'_>,
    connectors: &[Connector],
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<ConnectorHandle>> {
    let NodeFeeds {
        site,
        node,
        data_dir,
        events,
        snapshot,
    } = feeds;
    let mut handles = Vec::new();
    for c in connectors {
        let status = Arc::new(ConnectorStatus::default());
        let replay = Arc::new(Notify::new());
        let (target, task): (&str, BoxFuture<'static, ()>) = match &c.kind {
            ConnectorKind::Webhook(cfg) => {
                let w = webhook::Webhook::build(
                    c.name.clone(),
                    cfg.clone(),
                    site.clone(),
                    node,
                    data_dir,
                    status.clone(),
                )?
                .with_snapshot(snapshot.clone());
                let run = w.run(events.subscribe(), replay.clone(), cancel.clone());
                (&cfg.url, Box::pin(run))
            }
            ConnectorKind::Mqtt(cfg) => {
                let m = mqtt::Mqtt::build(
                    c.name.clone(),
                    cfg.clone(),
                    site.clone(),
                    node,
                    data_dir,
                    status.clone(),
                )?;
                let run = m.run(events.subscribe(), snapshot.clone(), cancel.clone());
                (&cfg.url, Box::pin(run))
            }
            ConnectorKind::Onvif(cfg) => {
                let o = onvif::Onvif::build(
                    c.name.clone(),
                    cfg.clone(),
                    site.clone(),
                    data_dir,
                    status.clone(),
                )?;
                let run = o.run(events.subscribe(), replay.clone(), cancel.clone());
                (&cfg.url, Box::pin(run))
            }
        };
        handles.push(ConnectorHandle {
            name: c.name.clone(),
            kind: c.kind.type_name(),
            target: crate::redact::url(target),
            status,
            replay,
        });
        tasks.spawn(task);
    }
    Ok(handles)
}

/// Whether a failed request went out on a kept-alive connection the consumer had closed as it
/// was reused (servers that do not read a body they did not want close theirs): worth sending
/// once more at once, on a new connection, rather than after the first retry delay. A consumer
/// that is down (connect error) or slow (timeout) goes through the retry schedule.
pub(crate) fn closed_connection(e: &reqwest::Error) -> bool {
    !e.is_connect() && !e.is_timeout() && !e.is_builder() && !e.is_status()
}
