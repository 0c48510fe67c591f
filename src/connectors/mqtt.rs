//! `type = "mqtt"`: the node's view to an MQTT broker (3.1.1), the way DESIGN section 1 lays
//! out the topics:
//!
//! - `{prefix}/nodes/{node}/online`: retained `{"online":true,"timestamp"}` published on every
//!   (re)connect (the birth), and the same topic with `online:false` as the Last Will and as the
//!   death message sent before a clean disconnect. The will carries the time of the connect
//!   that registered it, the birth the time of the ConnAck, so a late will never looks newer
//!   than the birth that followed it.
//! - `{prefix}/servers/{id}` and `{prefix}/resources/{id}`: retained state, published by the node
//!   that serves it (a resource by its owner; a server by itself and by the node serving its
//!   resources), whenever it changes and again on every reconnect, so a broker restarted without
//!   persistence heals itself. Every payload carries the epoch: keep the newest.
//! - `{prefix}/events/{type}`: every event of the durable outbox, in order, not retained, at the
//!   connector's QoS. The cursor moves only once the broker has acknowledged (PUBACK) the event
//!   and every one before it: a broker down for hours loses nothing.
//!
//! One task per connection polls rumqttc's event loop and forwards what it reports; the
//! connector task matches `Outgoing::Publish(pkid)` to the publishes it queued (the event loop
//! handles requests in order) and `PubAck(pkid)` to what it sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ConnectorStatus;
use crate::config::connectors::MqttConfig;
use crate::config::{ServerIdx, Site};
use crate::runtime::cloudevents::rfc3339;
use crate::runtime::state::Snapshot;
use crate::store::{Reader, Store, StoredEvent};

/// Publishes queued or unacknowledged at once.
const WINDOW: usize = 64;
/// How long a connect may take before it is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the death message may take at shutdown.
const DEATH_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect delays: doubling from `min` to `max`, with ±20 % jitter unless turned off.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0 = the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << n.min(20))
            .min(self.max)
            .max(self.min);
        if self.jitter {
            base.mul_f64(0.8 + 0.4 * fastrand::f64())
        } else {
            base
        }
    }
}

/// A built MQTT connector, ready to [`Mqtt::run`].
pub struct Mqtt {
    name: String,
    cfg: MqttConfig,
    site: Arc<Site>,
    node: String,
    client_id: String,
    prefix: String,
    password: Option<String>,
    qos: QoS,
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
}

/// What a queued publish was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Event(u64),
    State,
    Death,
}

/// One connection to the broker.
struct Session {
    client: AsyncClient,
    rx: mpsc::Receiver<Result<Event, ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
    /// Handed to the client, not yet reported written by the event loop (in order).
    queued: VecDeque<Sent>,
    /// Written, awaiting a PUBACK, by packet id.
    inflight: HashMap<u16, Sent>,
    /// Events read from the outbox on this connection, by seq: whether acknowledged (or
    /// skipped by the filter).
    pending: BTreeMap<u64, bool>,
    /// The last seq read from the outbox.
    read: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Session {
    fn outstanding(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }
}

/// Why a connection ended.
enum End {
    Cancelled,
    Lost(String),
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
        let base = cfg.base.clone().unwrap_or_else(|| ".".into());
        let password = match &cfg.password {
            Some(p) => {
                let bytes = p.resolve(&base).map_err(|e| {
                    anyhow::anyhow!("connector {name}: cannot read the password ({p:?}): {e}")
                })?;
                Some(String::from_utf8_lossy(&bytes).trim().to_string())
            }
            None => None,
        };
        let node_id = site.server(node).id.clone();
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("buddygate-{}-{node_id}", site.name));
        let prefix = cfg
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("buddygate/{}", site.name));
        let qos = if cfg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        Ok(Self {
            store: std::sync::Mutex::new(Store::open_for_connector(data_dir)?),
            reader: std::sync::Mutex::new(Store::open_reader(data_dir)?),
            name,
            cfg,
            site,
            node: node_id,
            client_id,
            prefix,
            password,
            qos,
            backoff: Backoff::default(),
            status,
            published: HashMap::new(),
            dirty: BTreeMap::new(),
        })
    }

    /// The topic of this node's birth, death and Last Will.
    pub fn online_topic(&self) -> String {
        format!("{}/nodes/{}/online", self.prefix, self.node)
    }

    /// Connects, serves, reconnects with backoff, until `cancel`.
    pub async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<StoredEvent>>,
        mut snapshot: watch::Receiver<Arc<Snapshot>>,
        cancel: CancellationToken,
    ) {
        info!(connector = %self.name, url = %self.cfg.url, client_id = %self.client_id, "MQTT connector running.");
        let mut failures = 0u32;
        self.refresh_status();
        loop {
            let ended = match self.connect_once(&cancel).await {
                Ok(Some(session)) => {
                    failures = 0;
                    self.serve(session, &mut events, &mut snapshot, &cancel)
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
            let delay = self.backoff.delay(failures);
            failures = failures.saturating_add(1);
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

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.cfg.host, self.cfg.port);
        o.set_keep_alive(self.cfg.keep_alive);
        o.set_clean_session(true);
        o.set_inflight(u16::try_from(WINDOW * 2).unwrap_or(u16::MAX));
        o.set_request_channel_capacity(WINDOW * 4);
        o.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(user) = &self.cfg.username {
            o.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        let will = json!({"online": false, "timestamp": rfc3339(SystemTime::now())});
        o.set_last_will(LastWill::new(
            self.online_topic(),
            will.to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        o
    }

    /// One connect: `Ok(None)` when cancelled, an error text when refused or unreachable.
    async fn connect_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Session>, String> {
        let (client, eventloop) = AsyncClient::new(self.options(), WINDOW * 4);
        let (tx, rx) = mpsc::channel(WINDOW * 4);
        let poller = tokio::spawn(poll(eventloop, tx));
        let mut session = Session {
            client,
            rx,
            poller,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            pending: BTreeMap::new(),
            read: 0,
        };
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(CONNECT_TIMEOUT) => return Err("no CONNACK in time".into()),
            first = session.rx.recv() => first,
        };
        match first {
            Some(Ok(Event::Incoming(Packet::ConnAck(ack))))
                if ack.code == ConnectReturnCode::Success =>
            {
                Ok(Some(session))
            }
            Some(Ok(other)) => Err(format!("unexpected first packet {other:?}")),
            Some(Err(ConnectionError::ConnectionRefused(code))) => Err(match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    format!("the broker refused the credentials ({code:?})")
                }
                code => format!("the broker refused the connection ({code:?})"),
            }),
            Some(Err(e)) => Err(format!("cannot connect to {}: {e}", self.cfg.url)),
            None => Err("connection task ended".into()),
        }
    }

    /// Birth, retained state, then events until the connection ends or `cancel`.
    async fn serve(
        &mut self,
        mut s: Session,
        events: &mut broadcast::Receiver<Arc<StoredEvent>>,
        snapshot: &mut watch::Receiver<Arc<Snapshot>>,
        cancel: &CancellationToken,
    ) -> End {
        info!(connector = %self.name, url = %self.cfg.url, "MQTT connected.");
        *self.status.last_error.lock().expect("status lock") = None;
        let birth = json!({"online": true, "timestamp": rfc3339(SystemTime::now())});
        self.publish(&mut s, self.online_topic(), birth, true, Sent::State);
        self.published.clear();
        self.dirty.clear();
        let snap = snapshot.borrow_and_update().clone();
        self.publish_state(&snap);
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
                ev = s.rx.recv() => match ev {
                    Some(Ok(ev)) => {
                        if let Err(e) = self.on_event(&mut s, ev) {
                            return End::Lost(format!("store: {e}"));
                        }
                    }
                    Some(Err(e)) => return End::Lost(format!("connection lost: {e}")),
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
                }
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

    fn publish(&self, s: &mut Session, topic: String, payload: Value, retain: bool, what: Sent) {
        let qos = if what == Sent::Death {
            QoS::AtLeastOnce
        } else {
            self.qos
        };
        match s
            .client
            .try_publish(topic, qos, retain, payload.to_string())
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
            self.publish(s, topic, payload, true, Sent::State);
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
                if !self.cfg.wants(&ev.kind) {
                    s.pending.insert(ev.seq, true);
                    continue;
                }
                let payload: Value = serde_json::from_str(&ev.json)?;
                let topic = format!("{}/events/{}", self.prefix, ev.kind);
                self.publish(s, topic, payload, false, Sent::Event(ev.seq));
                s.pending.insert(ev.seq, false);
            }
        }
        self.advance(s)
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

    fn acked(&mut self, s: &mut Session, what: Sent) {
        if let Sent::Event(seq) = what {
            s.pending.insert(seq, true);
            self.status.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_event(&mut self, s: &mut Session, ev: Event) -> anyhow::Result<()> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(what) = s.queued.pop_front() else {
                    return Ok(());
                };
                if pkid == 0 {
                    // QoS 0: written is all there is.
                    self.acked(s, what);
                } else {
                    s.inflight.insert(pkid, what);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(what) = s.inflight.remove(&ack.pkid) {
                    self.acked(s, what);
                }
            }
            _ => return Ok(()),
        }
        self.advance(s)
    }

    /// The retained state this node publishes, by topic, without timestamps.
    fn state(&self, snap: &Snapshot) -> BTreeMap<String, Value> {
        let site = &self.site;
        let me = snap.node;
        let mut out = BTreeMap::new();
        for v in &snap.resources {
            if v.owner != Some(me) {
                continue;
            }
            let r = site.resource(v.resource);
            out.insert(
                format!("{}/resources/{}", self.prefix, r.id),
                json!({
                    "kind": r.kind.as_str(),
                    "owner": site.server(me).id,
                    "address": site.server(me).address.to_string(),
                    "epoch": v.epoch,
                }),
            );
        }
        for sv in &snap.servers {
            let (served_by, epoch) = served_by(site, &snap.resources, sv.server);
            if sv.server != me && served_by != me {
                continue;
            }
            let server = site.server(sv.server);
            out.insert(
                format!("{}/servers/{}", self.prefix, server.id),
                json!({
                    "state": sv.state.as_str(),
                    "address": server.address.to_string(),
                    "served_by": site.server(served_by).id,
                    "served_address": site.server(served_by).address.to_string(),
                    "epoch": epoch,
                }),
            );
        }
        out
    }

    /// Queues what changed since the last publish on this connection; [`Self::pump`] sends it.
    fn publish_state(&mut self, snap: &Snapshot) {
        if snap.booting {
            return;
        }
        let now = rfc3339(SystemTime::now());
        for (topic, value) in self.state(snap) {
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
        self.publish(s, self.online_topic(), death, true, Sent::Death);
        let deadline = tokio::time::sleep(DEATH_TIMEOUT);
        tokio::pin!(deadline);
        let mut acked = false;
        while !acked {
            tokio::select! {
                _ = &mut deadline => break,
                ev = s.rx.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(what) = s.queued.pop_front() {
                            s.inflight.insert(pkid, what);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        match s.inflight.remove(&ack.pkid) {
                            Some(Sent::Death) => acked = true,
                            Some(what) => self.acked(s, what),
                            None => {}
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
        let _ = self.advance(s);
        if s.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(ev)) = s.rx.recv().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        info!(connector = %self.name, "MQTT disconnected cleanly.");
    }
}

/// Who serves `server`'s resources in `views`: the owner of most of them (ties to the earlier
/// server in the site file; the server itself when none has an owner), and the epoch of
/// `{prefix}/servers/{id}`: the highest epoch among the resources that owner serves.
///
/// Not the highest among all of the server's resources: in the middle of a make-before-break
/// hand-over (a failback) the buddy still serves most of them while the returning server's
/// first claims are active at a higher epoch. The buddy then published `served_by` itself at
/// the returning server's epoch, and the returning server, a moment later, `served_by` itself
/// at that same epoch: a subscriber keeping the highest epoch (and ignoring an equal one, the
/// epoch rule) kept the buddy's message, and the broker retained whichever came last. Each
/// owner's own claims carry epochs no other owner shares, so the newer owner's message now
/// always has the higher epoch.
fn served_by(
    site: &Site,
    views: &[crate::failover::ResourceView],
    server: ServerIdx,
) -> (ServerIdx, crate::failover::Epoch) {
    let mut owners: BTreeMap<ServerIdx, usize> = BTreeMap::new();
    let mut any = 0;
    let mine = || {
        views
            .iter()
            .filter(|v| site.resource(v.resource).server == server)
    };
    for v in mine() {
        any = any.max(v.epoch);
        if let Some(o) = v.owner {
            *owners.entry(o).or_default() += 1;
        }
    }
    let by = owners
        .iter()
        .max_by_key(|(o, n)| (**n, std::cmp::Reverse(**o)))
        .map_or(server, |(o, _)| *o);
    let epoch = mine()
        .filter(|v| v.owner == Some(by))
        .map(|v| v.epoch)
        .max()
        .unwrap_or(any);
    (by, epoch)
}

/// Polls the event loop and forwards what it reports, until the first error.
async fn poll(mut eventloop: EventLoop, tx: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let ev = eventloop.poll().await;
        let stop = ev.is_err();
        if tx.send(ev).await.is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResourceIdx;
    use crate::failover::{ResourceState, ResourceView};

    /// Fault lab (tests/faults), every failback: the buddy published `servers/live-1` as
    /// served by itself at the returning server's epoch, then live-1 as served by itself at
    /// the same epoch; a subscriber applying the epoch rule ended on the buddy.
    #[test]
    fn servers_topic_epoch_is_the_serving_owners_own() {
        let site = crate::config::parse_str(
            r#"
[site]
name = "t"
secret = "x"
[api]
token = "x"
[[servers]]
id = "live-1"
address = "10.0.0.1"
heartbeat = ["10.0.0.1:7400"]
api = "10.0.0.1:8400"
buddies = ["fo-1"]
[[servers]]
id = "fo-1"
role = "failover"
mode = "mirrored"
address = "10.0.0.2"
heartbeat = ["10.0.0.2:7400"]
api = "10.0.0.2:8400"
[[resources]]
server = "live-1"
id = "{server}-cam-{01..04}"
kind = "camera"
"#,
            "site.toml",
        )
        .expect("valid site")
        .site;
        let live = site.server_idx("live-1").unwrap();
        let fo = site.server_idx("fo-1").unwrap();
        // `back` cameras are active on live-1 again at 399, the rest still on fo-1 at 298.
        let views = |back: u32| -> Vec<ResourceView> {
            (0..4)
                .map(|i| ResourceView {
                    resource: ResourceIdx(i),
                    owner: Some(if i < back { live } else { fo }),
                    epoch: if i < back { 399 } else { 298 },
                    state: ResourceState::Active,
                })
                .collect()
        };
        // fo-1 still serves most: its message carries its own epoch, below live-1's claims.
        assert_eq!(served_by(&site, &views(1), live), (fo, 298));
        // Half back: ties go to the earlier server in the site file.
        assert_eq!(served_by(&site, &views(2), live), (live, 399));
        assert_eq!(served_by(&site, &views(4), live), (live, 399));
        assert_eq!(served_by(&site, &views(0), live), (fo, 298));
        // Nobody serves them: the server itself, at the highest epoch known.
        let none: Vec<_> = views(1)
            .into_iter()
            .map(|v| ResourceView { owner: None, ..v })
            .collect();
        assert_eq!(served_by(&site, &none, live), (live, 399));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        let d: Vec<_> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
    }
}
