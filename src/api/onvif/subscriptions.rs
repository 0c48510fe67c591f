//! Subscriptions, in memory: the hub that turns the node's events and snapshots into
//! notification messages, and each subscription's queue over it.
//!
//! One hub task per API: it reads the event broadcast (events: failover, failback,
//! conflict) and the snapshot watch (properties: what changed since the last snapshot), and
//! publishes each message once, numbered, on a broadcast channel that every subscription
//! reads. A subscription starts (and re-starts on `SetSynchronizationPoint`, or when it fell
//! so far behind that the channel dropped messages for it) with the `Initialized` message of
//! every property, taken under the same lock the hub publishes under: property messages
//! published before that point are skipped, since the `Initialized` ones supersede them.
//!
//! Subscriptions do not survive a restart of the node: a client renews or re-subscribes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::onvif::messages::{Message, Properties, event_messages};
use crate::onvif::topics::TopicMask;
use crate::store::StoredEvent;
use crate::view::Snapshot;

/// Messages the hub's channel keeps for slow subscriptions; one that falls further behind is
/// re-synchronized.
pub const CHANNEL: usize = 16_384;

type Published = (u64, Arc<Message>);

struct HubState {
    props: Properties,
    /// Number of the last message published.
    seq: u64,
    /// The `Initialized` messages of `props`, made on first use after a change.
    initialized: Option<Arc<[Arc<Message>]>>,
}

/// The node's messages, published once for every subscription.
pub struct Hub {
    tx: broadcast::Sender<Published>,
    state: Mutex<HubState>,
    started: AtomicBool,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(CHANNEL).0,
            state: Mutex::new(HubState {
                props: Properties::default(),
                seq: 0,
                initialized: None,
            }),
            started: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the hub task once: the properties as of now, then every change.
    pub fn start(self: &Arc<Self>, shared: &Shared, cancel: &CancellationToken) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let events = shared.events.subscribe();
        let mut snapshots = shared.snapshot.clone();
        let first = snapshots.borrow_and_update().clone();
        {
            let mut st = self.lock();
            st.props = Properties::of(&first);
            st.initialized = None;
        }
        tokio::spawn(self.clone().run(events, snapshots, first, cancel.clone()));
    }

    async fn run(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Arc<StoredEvent>>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut last: Arc<Snapshot>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = events.recv() => match r {
                    Ok(e) => self.publish(event_messages(&e), None),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "ONVIF: the event stream lagged; some event messages were not sent.");
                    }
                    Err(RecvError::Closed) => return,
                },
                r = snapshots.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    if same_views(&last, &snap) {
                        continue;
                    }
                    last = snap;
                    self.publish(Vec::new(), Some(Properties::of(&last)));
                }
            }
        }
    }

    /// Publishes `events`, then the property changes to `props` (if given), in one step.
    pub fn publish(&self, events: Vec<Message>, props: Option<Properties>) {
        let mut st = self.lock();
        let mut messages = events;
        if let Some(next) = props {
            messages.extend(st.props.changes(&next, SystemTime::now()));
            if st.props != next {
                st.props = next;
                st.initialized = None;
            }
        }
        for m in messages {
            st.seq += 1;
            // No receiver is fine: nobody subscribed.
            let _ = self.tx.send((st.seq, Arc::new(m)));
        }
    }

    /// A queue starting now, with every property `Initialized`.
    pub fn attach(&self) -> Queue {
        let mut st = self.lock();
        let rx = self.tx.subscribe();
        let (sync, synced) = Self::sync_point(&mut st);
        Queue {
            rx,
            sync,
            next: 0,
            synced,
        }
    }

    /// Re-sends every property as `Initialized` on `q`.
    pub fn resync(&self, q: &mut Queue) {
        let mut st = self.lock();
        let (sync, synced) = Self::sync_point(&mut st);
        q.sync = sync;
        q.next = 0;
        q.synced = synced;
    }

    fn sync_point(st: &mut HubState) -> (Arc<[Arc<Message>]>, u64) {
        let list = match &st.initialized {
            Some(l) => l.clone(),
            None => {
                let l: Arc<[Arc<Message>]> = st
                    .props
                    .initialized(SystemTime::now())
                    .into_iter()
                    .map(Arc::new)
                    .collect();
                st.initialized = Some(l.clone());
                l
            }
        };
        (list, st.seq)
    }
}

/// Whether two snapshots hold the same views (only their clocks differ).
fn same_views(a: &Snapshot, b: &Snapshot) -> bool {
    Arc::ptr_eq(&a.site, &b.site)
        && a.resources == b.resources
        && a.servers.len() == b.servers.len()
        && a.servers
            .iter()
            .zip(&b.servers)
            .all(|(x, y)| x.state == y.state && x.known == y.known)
}

/// One subscription's position: the `Initialized` messages still to send, then the hub's
/// channel.
pub struct Queue {
    rx: broadcast::Receiver<Published>,
    sync: Arc<[Arc<Message>]>,
    next: usize,
    /// Property messages numbered up to this are superseded by `sync`.
    synced: u64,
}

impl Queue {
    fn accept(&self, (seq, m): Published, mask: TopicMask, out: &mut Vec<Arc<Message>>) {
        if !mask.contains(m.topic) || (seq <= self.synced && m.topic.is_property()) {
            return;
        }
        out.push(m);
    }

    /// Moves what is ready (up to `limit` in `out`) without waiting.
    fn ready(&mut self, hub: &Hub, mask: TopicMask, limit: usize, out: &mut Vec<Arc<Message>>) {
        while out.len() < limit {
            if let Some(m) = self.sync.get(self.next) {
                self.next += 1;
                if mask.contains(m.topic) {
                    out.push(m.clone());
                }
                continue;
            }
            match self.rx.try_recv() {
                Ok(p) => self.accept(p, mask, out),
                Err(TryRecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "ONVIF subscription lagged; re-synchronizing.");
                    hub.resync(self);
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
    }
}

/// Why a pull returned nothing it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullError {
    /// Another pull is waiting on the same subscription.
    Busy,
}

/// One subscription: a pull point, or a push to a consumer.
pub struct Subscription {
    pub id: String,
    pub mask: TopicMask,
    /// The consumer's address for a push subscription (`Subscribe`).
    pub consumer: Option<String>,
    /// The account that made it: only that account may pull, renew or unsubscribe.
    pub owner: String,
    termination: Mutex<SystemTime>,
    queue: tokio::sync::Mutex<Queue>,
    /// Cancelled by `Unsubscribe` and on expiry.
    pub ended: CancellationToken,
}

impl Subscription {
    pub fn termination(&self) -> SystemTime {
        *self.termination.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_termination(&self, t: SystemTime) {
        *self.termination.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.ended.is_cancelled() || now >= self.termination()
    }

    /// Up to `limit` messages: at once if some are ready, else the first that comes within
    /// `timeout` (and what is ready with it); empty at the timeout, or when the subscription
    /// ends or the API shuts down first.
    pub async fn pull(
        &self,
        hub: &Hub,
        timeout: Duration,
        limit: usize,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Arc<Message>>, PullError> {
        let mut q = self.queue.try_lock().map_err(|_| PullError::Busy)?;
        let left = self
            .termination()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let deadline = Instant::now() + timeout.min(left);
        let mut out = Vec::new();
        loop {
            q.ready(hub, self.mask, limit, &mut out);
            if !out.is_empty() {
                return Ok(out);
            }
            let received = tokio::select! {
                r = q.rx.recv() => r,
                _ = tokio::time::sleep_until(deadline) => return Ok(out),
                _ = self.ended.cancelled() => return Ok(out),
                _ = shutdown.cancelled() => return Ok(out),
            };
            match received {
                Ok(p) => q.accept(p, self.mask, &mut out),
                Err(RecvError::Lagged(_)) => hub.resync(&mut q),
                Err(RecvError::Closed) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.ended.cancelled() => {}
                        _ = shutdown.cancelled() => {}
                    }
                    return Ok(out);
                }
            }
        }
    }

    /// `SetSynchronizationPoint`: every property again, as `Initialized`, next.
    pub async fn synchronize(&self, hub: &Hub) {
        let mut q = self.queue.lock().await;
        hub.resync(&mut q);
    }
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The node holds `max` subscriptions.
    Node { max: usize },
    /// The account holds `max` subscriptions.
    Account { max: usize },
}

/// All subscriptions of this node's API.
pub struct Subscriptions {
    map: Mutex<HashMap<String, Arc<Subscription>>>,
    pub max: usize,
    /// Subscriptions one account may hold at once.
    pub per_account: usize,
}

/// 128 random bits, hex.
fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        fastrand::fill(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Subscriptions {
    pub fn new(max: usize, per_account: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            per_account,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Subscription>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets expired subscriptions (and ends them).
    pub fn sweep(&self, now: SystemTime) {
        self.lock().retain(|_, s| {
            let keep = !s.expired(now);
            if !keep {
                s.ended.cancel();
            }
            keep
        });
    }

    pub fn create(
        &self,
        hub: &Hub,
        mask: TopicMask,
        consumer: Option<String>,
        termination: SystemTime,
        owner: &str,
    ) -> Result<Arc<Subscription>, Full> {
        self.sweep(SystemTime::now());
        let mut map = self.lock();
        if map.len() >= self.max {
            return Err(Full::Node { max: self.max });
        }
        if map.values().filter(|s| s.owner == owner).count() >= self.per_account {
            return Err(Full::Account {
                max: self.per_account,
            });
        }
        let sub = Arc::new(Subscription {
            id: new_id(),
            mask,
            consumer,
            owner: owner.to_string(),
            termination: Mutex::new(termination),
            queue: tokio::sync::Mutex::new(hub.attach()),
            ended: CancellationToken::new(),
        });
        map.insert(sub.id.clone(), sub.clone());
        Ok(sub)
    }

    /// A live subscription of `owner`; an expired one is forgotten and ended. Another
    /// account's subscription is not found.
    pub fn get(&self, id: &str, owner: &str, now: SystemTime) -> Option<Arc<Subscription>> {
        let mut map = self.lock();
        let sub = map.get(id).filter(|s| s.owner == owner)?.clone();
        if sub.expired(now) {
            map.remove(id);
            sub.ended.cancel();
            return None;
        }
        Some(sub)
    }

    /// Ends and forgets a subscription.
    pub fn remove(&self, id: &str) -> Option<Arc<Subscription>> {
        let sub = self.lock().remove(id)?;
        sub.ended.cancel();
        Some(sub)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
