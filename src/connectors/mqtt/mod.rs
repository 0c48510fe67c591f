//! `type = "mqtt"`: the node's view to an MQTT broker (3.1.1 or 5, plain or TLS), the way
//! DESIGN section 1 lays out the topics:
//!
//! - `{prefix}/nodes/{node}/online`: retained `{"online":true,"timestamp"}` published on every
//!   (re)connect (the birth), and the same topic with `online:false` as the Last Will and as the
//!   death message sent before a clean disconnect. The will carries the time of the connect
//!   that registered it, the birth the time of the ConnAck, so a late will never looks newer
//!   than the birth that followed it.
//! - `{prefix}/servers/{id}` and `{prefix}/resources/{id}`: retained state, published by the node
//!   that serves it (a resource by its owner; a server by itself and by the node serving its
//!   resources), whenever it changes, whenever the set of a resource's claimants changes (an
//!   `ownership.conflict` or `ownership.resolved` in the node's log: the winner publishes
//!   again after the loser's last word), again on every reconnect and every `reassert`
//!   interval, so a broker restarted without persistence, or left holding the loser's
//!   message, heals itself. A resource no buddy can take is published by the node that reports
//!   it unplaced: no owner, state `unplaced`. Every payload carries the epoch.
//! - `{prefix}/events/{type}`: every event of the durable outbox, in order, not retained, at the
//!   connector's QoS. The cursor moves only once the broker has acknowledged (PUBACK) the event
//!   and every one before it: a broker down for hours loses nothing. An MQTT 5 broker that
//!   refuses a publish (a PUBACK reason code such as `NotAuthorized`) makes it a dead letter,
//!   kept and replayable like a webhook's; replays go once the live tail is published.
//!
//! With `protocol = "v5"` every publish also carries MQTT 5 properties: a content type
//! (`application/cloudevents+json` for events, structured mode of the CloudEvents MQTT binding;
//! `application/json` for state), the payload format indicator (UTF-8), user properties
//! (`ce-specversion`, `ce-id`, `ce-type`, `ce-source` and `epoch` on events, `epoch` on state) and,
//! if configured, a message expiry on events.
//!
//! One task per connection polls the event loop of the protocol version (`link`) and
//! forwards what it reports; the connector task matches each publish written (in order: the
//! event loop handles requests in order) to the publishes it queued, and each PUBACK to what it
//! sent.
//!
//! (Over ~500 lines: the connector's run loop, which matches every publish to its PUBACK and to
//! the stored event behind it, reads best in one piece; the link, topics and config have files
//! of their own.)

mod config;
mod link;
mod session;
mod topics;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::config::{MqttConfig, MqttFile, MqttProtocol};
use self::link::{Link, Note, Props};
use self::session::{End, Sent, Session};
pub use self::topics::onvif_messages;
use self::topics::{event_props, retained, state_props};
use super::{ConnectorStatus, StoredAt, secret_text};
use crate::backoff::{Backoff, Jitter};
use crate::cloudevents::rfc3339;
use crate::config::{ServerIdx, Site};
use crate::store::{DeadLetter, Reader, Store, StoredEvent};
use crate::view::Snapshot;

/// Publishes queued or unacknowledged at once.
const WINDOW: usize = 64;
/// How long a connect may take before it is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the death message may take at shutdown.
const DEATH_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect delays: 100ms, doubling up to 5s, with ±20 % jitter.
const RECONNECT: Backoff =
    Backoff::doubling(Duration::from_millis(100), RECONNECT_MAX).with_jitter(Jitter::spread(0.2));
/// The longest wait between two connects.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A built MQTT connector, ready to [`Mqtt::run`].
pub struct Mqtt {
    name: String,
    cfg: MqttConfig,
    site: Arc<Site>,
    node: String,
    client_id: String,
    prefix: String,
    password: Option<String>,
    /// QoS 1 (else 0) for state and events.
    at_least_once: bool,
    /// The TLS client for `mqtts://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    backoff: Backoff,
    /// Behind a lock only so the connector can be sent between threads; one task uses it.
    store: std::sync::Mutex<Store>,
    reader: std::sync::Mutex<Reader>,
    status: Arc<ConnectorStatus>,
    /// Retained state as last queued on this connection (without its timestamp).
    published: HashMap<String, Value>,
    /// Retained state changed and not yet queued, by topic (the newest value wins); published
    /// within the window, before events.
    dirty: BTreeMap<String, Value>,
    /// The node's view as last seen.
    snap: Option<Arc<Snapshot>>,
    stored_at: Arc<StoredAt>,
}

impl Mqtt {
    /// Reads the password and opens the store.
    pub fn build(
        name: String,
        cfg: MqttConfig,
        site: Arc<Site>,
        node: ServerIdx,
        data_dir: &Path,
        status: Arc<ConnectorStatus>,
    ) -> anyhow::Result<Self> {
        let password = match &cfg.password {
            Some(p) => Some(
                secret_text(p, cfg.base.as_deref(), "the password")
                    .map_err(|e| anyhow::anyhow!("connector {name}: {e}"))?,
            ),
            None => None,
        };
        let node_id = site.server(node).id.clone();
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("buddygate-{}-{node_id}-{name}", site.name));
        let prefix = cfg
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("buddygate/{}", site.name));
        let tls = if cfg.tls_enabled {
            Some(
                link::tls_client(&cfg)
                    .map_err(|e| anyhow::anyhow!("connector {name}: TLS: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            store: std::sync::Mutex::new(Store::open_for_connector(data_dir)?),
            reader: std::sync::Mutex::new(Store::open_reader(data_dir)?),
            name,
            at_least_once: cfg.qos > 0,
            cfg,
            site,
            node: node_id,
            client_id,
            prefix,
            password,
            tls,
            backoff: RECONNECT,
            status,
            published: HashMap::new(),
            dirty: BTreeMap::new(),
            snap: None,
            stored_at: Arc::new(StoredAt::default()),
        })
    }

    /// Measures the delivery latency from when the node stored each event.
    pub fn with_stored_at(mut self, stored_at: Arc<StoredAt>) -> Self {
        self.stored_at = stored_at;
        self
    }

    /// The topic of this node's birth, death and Last Will.
    pub fn online_topic(&self) -> String {
        format!("{}/nodes/{}/online", self.prefix, self.node)
    }

    /// Connects, serves, reconnects with backoff, until `cancel`.
    pub async fn run(
        self,
        events: broadcast::Receiver<Arc<StoredEvent>>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        cancel: CancellationToken,
    ) {
        self.run_with_replay(events, snapshot, Arc::new(Notify::new()), cancel)
            .await;
    }

    /// [`Mqtt::run`], replaying the dead letters whenever `replay` is notified.
    pub async fn run_with_replay(
        mut self,
        mut events: broadcast::Receiver<Arc<StoredEvent>>,
        mut snapshot: watch::Receiver<Arc<Snapshot>>,
        replay: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        info!(connector = %self.name, url = %self.cfg.url, client_id = %self.client_id, "MQTT connector running.");
        let mut failures = 0u32;
        self.refresh_status();
        if let Ok(dead) = self.reader().dead_letters(&self.name) {
            self.status.dead.store(dead.len() as u64, Ordering::Relaxed);
        }
        loop {
            let ended = match self.connect_once(&cancel).await {
                Ok(Some(session)) => {
                    failures = 0;
                    self.serve(session, &mut events, &mut snapshot, &replay, &cancel)
                        .await
                }
                Ok(None) => End::Cancelled,
                Err(e) => End::Lost(e),
            };
            let reason = match ended {
                End::Cancelled => return,
                End::Lost(reason) => reason,
            };
            self.refresh_status();
            failures = failures.saturating_add(1);
            let delay = self.backoff.delay(failures).unwrap_or(RECONNECT_MAX);
            warn!(connector = %self.name, error = %reason, retry_in = ?delay, "MQTT connection failed; retrying.");
            self.status.failed.fetch_add(1, Ordering::Relaxed);
            self.status.retried.fetch_add(1, Ordering::Relaxed);
            *self.status.last_error.lock().expect("status lock") = Some(reason);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut sleep => break,
                    // New events while away: the queue grows (status).
                    _ = events.recv() => self.refresh_status(),
                    _ = replay.notified() => self.queue_replay(),
                }
            }
        }
    }

    /// Cursor and head from the store, for status while there is no connection.
    fn refresh_status(&self) {
        let reader = self.reader();
        if let (Ok(head), Ok(cursor)) = (reader.last_seq(), reader.cursor(&self.name)) {
            self.status.head.store(head, Ordering::Relaxed);
            self.status.cursor.store(cursor, Ordering::Relaxed);
        }
    }

    /// One connect: `Ok(None)` when cancelled, an error text when refused or unreachable.
    async fn connect_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Session>, String> {
        let options = link::Options {
            client_id: self.client_id.clone(),
            password: self.password.clone(),
            inflight: u16::try_from(WINDOW * 2).unwrap_or(u16::MAX),
            capacity: WINDOW * 4,
            tls: self.tls.clone(),
        };
        // The will carries the time of this connect, so a late will never looks newer than the
        // birth that follows it.
        let will = link::Will {
            topic: self.online_topic(),
            payload: json!({"online": false, "timestamp": rfc3339(SystemTime::now())}).to_string(),
            props: state_props(None),
        };
        let (client, rx, poller) = Link::connect(&self.cfg, &options, will);
        let mut session = Session::new(client, rx, poller);
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(CONNECT_TIMEOUT) => return Err("no CONNACK in time".into()),
            first = session.rx.recv() => first,
        };
        match first {
            Some(Note::Connected) => Ok(Some(session)),
            Some(Note::Refused(e)) => Err(e),
            Some(Note::Failed(e)) => Err(format!("cannot connect to {}: {e}", self.cfg.url)),
            Some(other) => Err(format!("unexpected first packet {other:?}")),
            None => Err("connection task ended".into()),
        }
    }

    /// Queues every dead letter for a replay (published once the live tail is).
    fn queue_replay(&self) {
        match self.store().queue_replay(&self.name) {
            Ok(n) => info!(connector = %self.name, dead_letters = n, "Replay requested."),
            Err(e) => warn!(connector = %self.name, error = %e, "Cannot queue a replay."),
        }
    }

    /// The birth and every retained topic of this node, again, with new timestamps.
    fn assert_all(&mut self, s: &mut Session) {
        let birth = json!({"online": true, "timestamp": rfc3339(SystemTime::now())});
        let props = state_props(None);
        self.publish(s, self.online_topic(), birth, true, Sent::State, props);
        self.published.clear();
        if let Some(snap) = self.snap.clone() {
            self.publish_state(&snap);
        }
    }

    /// Birth, retained state, then events until the connection ends or `cancel`.
    async fn serve(
        &mut self,
        mut s: Session,
        events: &mut broadcast::Receiver<Arc<StoredEvent>>,
        snapshot: &mut watch::Receiver<Arc<Snapshot>>,
        replay: &Notify,
        cancel: &CancellationToken,
    ) -> End {
        info!(connector = %self.name, url = %self.cfg.url, "MQTT connected.");
        *self.status.last_error.lock().expect("status lock") = None;
        self.dirty.clear();
        self.snap = Some(snapshot.borrow_and_update().clone());
        self.assert_all(&mut s);
        let every = self.cfg.reassert;
        let far = Duration::from_secs(86_400 * 365);
        let reassert = tokio::time::sleep(every.unwrap_or(far));
        tokio::pin!(reassert);
        match self.reader().cursor(&self.name) {
            Ok(c) => s.read = c,
            Err(e) => return End::Lost(format!("store: {e}")),
        }
        loop {
            if let Err(e) = self.pump(&mut s) {
                return End::Lost(format!("store: {e}"));
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.die(&mut s).await;
                    return End::Cancelled;
                }
                note = s.rx.recv() => match note {
                    Some(Note::Failed(e) | Note::Refused(e)) => {
                        return End::Lost(format!("connection lost: {e}"));
                    }
                    Some(note) => {
                        if let Err(e) = self.on_note(&mut s, note) {
                            return End::Lost(format!("store: {e}"));
                        }
                    }
                    None => return End::Lost("connection task ended".into()),
                },
                changed = snapshot.changed() => {
                    if changed.is_err() {
                        // The runtime is going away; the cancel follows.
                        cancel.cancelled().await;
                        self.die(&mut s).await;
                        return End::Cancelled;
                    }
                    let snap = snapshot.borrow_and_update().clone();
                    self.publish_state(&snap);
                    self.snap = Some(snap);
                }
                _ = &mut reassert => {
                    debug!(connector = %self.name, "Re-asserting every retained topic.");
                    self.assert_all(&mut s);
                    reassert.as_mut().reset(tokio::time::Instant::now() + every.unwrap_or(far));
                }
                _ = replay.notified() => self.queue_replay(),
                r = events.recv() => {
                    if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                        cancel.cancelled().await;
                        self.die(&mut s).await;
                        return End::Cancelled;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(
        &self,
        s: &mut Session,
        topic: String,
        payload: Value,
        retain: bool,
        what: Sent,
        props: Props,
    ) {
        let at_least_once = what == Sent::Death || self.at_least_once;
        match s
            .client
            .try_publish(topic, at_least_once, retain, payload.to_string(), props)
        {
            Ok(()) => s.queued.push_back(what),
            Err(e) => warn!(connector = %self.name, error = %e, "Cannot queue an MQTT publish."),
        }
    }

    /// Queues changed retained state, then the next events after the last one read, within
    /// the window.
    fn pump(&mut self, s: &mut Session) -> anyhow::Result<()> {
        while s.outstanding() < WINDOW {
            let Some((topic, payload)) = self.dirty.pop_first() else {
                break;
            };
            let props = state_props(payload.get("epoch").and_then(Value::as_u64));
            self.publish(s, topic, payload, true, Sent::State, props);
        }
        if !self.dirty.is_empty() {
            return Ok(());
        }
        let head = self.reader().last_seq()?;
        self.status.head.store(head, Ordering::Relaxed);
        while s.outstanding() < WINDOW && s.read < head {
            let batch = self
                .reader()
                .events_after(s.read, WINDOW - s.outstanding())?;
            if batch.is_empty() {
                break;
            }
            for ev in batch {
                s.read = ev.seq;
                self.claimants_changed(&ev);
                if !self.cfg.events.wants(&ev.kind) {
                    s.pending.insert(ev.seq, true);
                    continue;
                }
                let payload: Value = serde_json::from_str(&ev.json)?;
                if self.cfg.onvif_topics {
                    for (topic, message) in onvif_messages(&self.prefix, &ev) {
                        let props = Props {
                            content_type: Some("application/json"),
                            message_expiry: self.cfg.message_expiry,
                            user: Vec::new(),
                        };
                        self.publish(s, topic, message, false, Sent::Copy, props);
                    }
                }
                let topic = format!("{}/events/{}", self.prefix, ev.kind);
                let props = event_props(&payload, self.cfg.message_expiry);
                self.publish(s, topic, payload, false, Sent::Event(ev.seq), props);
                s.pending.insert(ev.seq, false);
            }
        }
        if s.read >= head {
            self.replay_some(s)?;
        }
        self.advance(s)
    }

    /// An `ownership.conflict` or `ownership.resolved` for a resource: the set of its
    /// claimants changed, so this node publishes its retained state again (if it publishes
    /// it), after whatever the other claimant published.
    fn claimants_changed(&mut self, ev: &StoredEvent) {
        if !matches!(
            ev.kind.as_str(),
            "buddygate.ownership.conflict" | "buddygate.ownership.resolved"
        ) {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.json) else {
            return;
        };
        let Some(id) = v["data"]["resource"]["id"].as_str() else {
            return;
        };
        let topic = format!("{}/resources/{id}", self.prefix);
        if self.published.remove(&topic).is_some()
            && let Some(snap) = self.snap.clone()
        {
            debug!(connector = %self.name, %topic, "Claimants changed; publishing again.");
            self.publish_state(&snap);
        }
    }

    /// Publishes dead letters queued for a replay, within the window (the live tail is
    /// published).
    fn replay_some(&mut self, s: &mut Session) -> anyhow::Result<()> {
        if s.outstanding() >= WINDOW {
            return Ok(());
        }
        let queued = self.reader().queued_replays(&self.name, WINDOW)?;
        for dead in queued {
            if s.outstanding() >= WINDOW {
                break;
            }
            if !s.replaying.insert(dead.seq) {
                continue;
            }
            let Some(ev) = self.reader().event(dead.seq)? else {
                self.store().remove_dead_letter(&self.name, dead.seq)?;
                self.status.dead.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            let payload: Value = serde_json::from_str(&ev.json)?;
            let topic = format!("{}/events/{}", self.prefix, ev.kind);
            let props = event_props(&payload, self.cfg.message_expiry);
            self.publish(s, topic, payload, false, Sent::Replay(ev.seq), props);
        }
        Ok(())
    }

    /// Moves the cursor past every acknowledged event at the front.
    fn advance(&mut self, s: &mut Session) -> anyhow::Result<()> {
        let mut last = None;
        while let Some(entry) = s.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            last = Some(*entry.key());
            entry.remove();
        }
        if let Some(seq) = last {
            self.store().set_cursor(&self.name, seq)?;
            self.status.cursor.store(seq, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The broker acknowledged `what`: an event is handled (its cursor may move), a replay
    /// is no longer a dead letter. `refused`: an MQTT 5 broker refused it (a reason code),
    /// which makes the event a dead letter instead.
    fn acked(
        &mut self,
        s: &mut Session,
        what: Sent,
        refused: Option<String>,
    ) -> anyhow::Result<()> {
        match (what, refused) {
            (Sent::Event(seq), None) => {
                s.pending.insert(seq, true);
                self.status.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = self.stored_at.get(seq) {
                    self.status.latency_seconds.observe(at.elapsed());
                }
            }
            (Sent::Event(seq), Some(reason)) => {
                warn!(connector = %self.name, seq, %reason, "The broker refused an event; kept as a dead letter.");
                self.bury(seq, &reason)?;
                self.status.dead.fetch_add(1, Ordering::Relaxed);
                s.pending.insert(seq, true);
            }
            (Sent::Replay(seq), None) => {
                s.replaying.remove(&seq);
                self.store().remove_dead_letter(&self.name, seq)?;
                self.status.dead.fetch_sub(1, Ordering::Relaxed);
                self.status.delivered.fetch_add(1, Ordering::Relaxed);
            }
            (Sent::Replay(seq), Some(reason)) => {
                warn!(connector = %self.name, seq, %reason, "The broker refused a replay; a dead letter again.");
                s.replaying.remove(&seq);
                self.bury(seq, &reason)?;
            }
            (Sent::Copy | Sent::State | Sent::Death, Some(reason)) => {
                warn!(connector = %self.name, %reason, "The broker refused a publish.");
            }
            (Sent::Copy | Sent::State | Sent::Death, None) => {}
        }
        Ok(())
    }

    /// Event `seq` as a dead letter of this connector (refused by the broker).
    fn bury(&mut self, seq: u64, reason: &str) -> anyhow::Result<()> {
        self.status.failed.fetch_add(1, Ordering::Relaxed);
        *self.status.last_error.lock().expect("status lock") =
            Some(format!("publish refused: {reason}"));
        self.store().add_dead_letter(
            &self.name,
            &DeadLetter {
                seq,
                attempts: 1,
                reason: format!("publish refused: {reason}"),
                time: rfc3339(SystemTime::now()),
                replay: false,
            },
        )?;
        Ok(())
    }

    fn on_note(&mut self, s: &mut Session, note: Note) -> anyhow::Result<()> {
        match note {
            Note::Written(pkid) => {
                let Some(what) = s.queued.pop_front() else {
                    return Ok(());
                };
                if pkid == 0 {
                    // QoS 0: written is all there is.
                    self.acked(s, what, None)?;
                } else {
                    s.inflight.insert(pkid, what);
                }
            }
            Note::Acked(pkid, refused) => {
                if let Some(what) = s.inflight.remove(&pkid) {
                    self.acked(s, what, refused)?;
                }
            }
            _ => return Ok(()),
        }
        self.advance(s)
    }

    /// Queues what changed since the last publish on this connection; [`Self::pump`] sends it.
    fn publish_state(&mut self, snap: &Snapshot) {
        if snap.booting {
            return;
        }
        let now = rfc3339(SystemTime::now());
        for (topic, value) in retained(&self.site, &self.prefix, snap) {
            if self.published.get(&topic) == Some(&value) {
                continue;
            }
            let mut payload = value.clone();
            payload["timestamp"] = Value::String(now.clone());
            self.dirty.insert(topic.clone(), payload);
            self.published.insert(topic, value);
        }
    }

    /// The death message, then a clean disconnect (no Last Will).
    async fn die(&mut self, s: &mut Session) {
        let death = json!({"online": false, "timestamp": rfc3339(SystemTime::now())});
        let props = state_props(None);
        self.publish(s, self.online_topic(), death, true, Sent::Death, props);
        let deadline = tokio::time::sleep(DEATH_TIMEOUT);
        tokio::pin!(deadline);
        let mut acked = false;
        while !acked {
            tokio::select! {
                _ = &mut deadline => break,
                note = s.rx.recv() => match note {
                    Some(Note::Written(pkid)) => {
                        if let Some(what) = s.queued.pop_front() {
                            s.inflight.insert(pkid, what);
                        }
                    }
                    Some(Note::Acked(pkid, refused)) => {
                        match s.inflight.remove(&pkid) {
                            Some(Sent::Death) => acked = true,
                            Some(what) => {
                                let _ = self.acked(s, what, refused);
                            }
                            None => {}
                        }
                    }
                    Some(Note::Connected | Note::Disconnected) => {}
                    _ => break,
                },
            }
        }
        let _ = self.advance(s);
        if s.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(note) = s.rx.recv().await {
                    if matches!(note, Note::Disconnected) || note.is_end() {
                        break;
                    }
                }
            })
            .await;
        }
        info!(connector = %self.name, "MQTT disconnected cleanly.");
    }
}
