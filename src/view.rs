//! What a running node shows its readers (the API, the dashboard, the connectors) and what
//! they send back: a [`Snapshot`] of the core's view, published after changes; operator
//! [`Command`]s; the runtime's counters ([`Metrics`]).
//!
//! The core is owned by one task (no `Mutex` around it); everything here is a copy, a counter
//! or a message. The runtime writes these, the readers read them: neither imports the other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::agent::OpTime;
use crate::config::{ResourceIdx, ServerIdx, Site};
use crate::failover::wire::Action;
use crate::failover::{Node, ResourceView, ServerView, Stats};

/// The core's view at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub site: Arc<Site>,
    /// This node.
    pub node: ServerIdx,
    pub booting: bool,
    /// The core's monotonic clock when the snapshot was taken; `last_heard` in the views is on
    /// the same clock, so `now - last_heard` is the age.
    pub now: Duration,
    /// Wall-clock time of the snapshot.
    pub taken_at: SystemTime,
    /// One per server of the site, in site order.
    pub servers: Vec<ServerView>,
    /// One per resource of the site, in site order.
    pub resources: Vec<ResourceView>,
    pub stats: Stats,
    /// This node's agents: each resource's last start and stop here, and its hot standbys.
    pub agents: Arc<AgentTimes>,
}

/// What this node's agents did: when each resource last started and stopped here (from the
/// moment it was asked for to the moment it worked, or was stopped), and which resources it
/// keeps in hot standby.
#[derive(Debug, Clone, Default)]
pub struct AgentTimes {
    pub last: HashMap<ResourceIdx, (Option<OpTime>, Option<OpTime>)>,
    pub standby: HashSet<ResourceIdx>,
}

impl Snapshot {
    /// The view of `node` at the core's time `now`.
    pub fn of(node: &Node, now: Duration) -> Self {
        let site = node.site().clone();
        Self {
            node: node.me(),
            booting: node.is_booting(),
            now,
            taken_at: SystemTime::now(),
            servers: site
                .server_indices()
                .map(|s| node.server_view(s, now))
                .collect(),
            resources: node.resource_views(now),
            stats: node.stats().clone(),
            agents: Arc::default(),
            site,
        }
    }
}

/// A manual failover or failback for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub action: Action,
    pub server: ServerIdx,
}

/// Fixed-bucket histogram (Prometheus style, cumulative on render).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds.
    pub bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) per bucket, then (sum in seconds, count).
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, c)| {
                acc += c.load(Ordering::Relaxed);
                (b, acc)
            })
            .collect();
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Counters by a label value (`reason`, ...), for a labelled Prometheus family.
#[derive(Debug, Default)]
pub struct Counts(Mutex<BTreeMap<&'static str, u64>>);

impl Counts {
    pub fn add(&self, key: &'static str) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(key).or_default() += 1;
    }

    pub fn get(&self, key: &str) -> u64 {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(key).copied().unwrap_or(0)
    }

    /// Every (label value, count), in label order.
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Counters the runtime keeps besides the core's [`Stats`].
#[derive(Debug)]
pub struct Metrics {
    pub datagrams_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub send_errors: AtomicU64,
    /// API requests refused for a missing or wrong bearer token (401).
    pub api_unauthorized: AtomicU64,
    /// API requests and connections refused, by reason: `unauthorized`, `forbidden`, `host`,
    /// `connections`, `client_connections`, `streams`, `body_too_large`, `timeout`.
    pub api_refused: Counts,
    /// API connections open now.
    pub api_connections: AtomicU64,
    /// Server-sent event streams open now.
    pub api_streams: AtomicU64,
    /// ONVIF requests whose WS-UsernameToken was refused, by reason: `missing`, `password`,
    /// `created`, `nonce`, `throttled`.
    pub onvif_auth_failures: Counts,
    /// Agent operations by (op, outcome): ("start", "ok"), ("monitor", "failed"), ...
    pub agent_ops: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// `failover.completed` takeover times (from the last heartbeat of the failed server).
    pub takeover_seconds: Histogram,
    /// Time from the first witness-confirmed decision to all resources active.
    pub events_stored: AtomicU64,
    /// Datagrams refused before they reached the core, by reason (`hmac`, `size`,
    /// `queue_full`, ...); reported with the core's own refusals.
    pub wire_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Time spent in the failover core (`Node::handle_all`), in microseconds.
    pub core_micros: AtomicU64,
    /// The node's store: whether it takes writes, retention.
    pub store: StoreFigures,
}

/// The store as the runtime's writer sees it: written by the writer thread and the core task,
/// read by `/healthz` and `/metrics`.
#[derive(Debug)]
pub struct StoreFigures {
    /// Why the store takes no writes now (a full or failing disk); `None` while it does.
    pub failing: Mutex<Option<StoreFailure>>,
    /// Jobs (claims, records, events of one step) that could not be committed.
    pub write_failures: AtomicU64,
    /// Events kept in memory until the store takes writes again.
    pub events_waiting: AtomicU64,
    /// Events given up: beyond what memory keeps while the store takes no writes.
    pub events_dropped_memory: AtomicU64,
    /// Events deleted for the size limit before every connector had handled them.
    pub events_dropped_size: AtomicU64,
    /// Events deleted by retention (and the size limit).
    pub events_pruned: AtomicU64,
    /// Bytes of the store in use, as last measured.
    pub used_bytes: AtomicU64,
    /// How long each pruning batch kept the store writer from the core's jobs.
    pub prune_batch_seconds: Histogram,
}

/// Why the store takes no writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    pub reason: String,
    pub since: SystemTime,
}

impl Default for StoreFigures {
    fn default() -> Self {
        Self {
            failing: Mutex::new(None),
            write_failures: AtomicU64::new(0),
            events_waiting: AtomicU64::new(0),
            events_dropped_memory: AtomicU64::new(0),
            events_dropped_size: AtomicU64::new(0),
            events_pruned: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            prune_batch_seconds: Histogram::new(&[0.0005, 0.001, 0.002, 0.005, 0.01, 0.05]),
        }
    }
}

impl StoreFigures {
    /// Why the store takes no writes, if it does not.
    pub fn failure(&self) -> Option<StoreFailure> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            datagrams_received: AtomicU64::new(0),
            datagrams_sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            api_unauthorized: AtomicU64::new(0),
            api_refused: Counts::default(),
            api_connections: AtomicU64::new(0),
            api_streams: AtomicU64::new(0),
            onvif_auth_failures: Counts::default(),
            agent_ops: Mutex::new(BTreeMap::new()),
            takeover_seconds: Histogram::new(&[
                0.1, 0.25, 0.5, 1.0, 1.2, 1.5, 2.0, 5.0, 10.0, 30.0,
            ]),
            events_stored: AtomicU64::new(0),
            wire_rejected: Mutex::new(BTreeMap::new()),
            core_micros: AtomicU64::new(0),
            store: StoreFigures::default(),
        }
    }
}

impl Metrics {
    pub fn wire_reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.wire_rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn agent_op(&self, op: &'static str, outcome: &'static str) {
        if let Ok(mut m) = self.agent_ops.lock() {
            *m.entry((op, outcome)).or_default() += 1;
        }
    }
}

impl crate::agent::OpCounter for Metrics {
    fn agent_op(&self, op: &'static str, outcome: &'static str) {
        Metrics::agent_op(self, op, outcome);
    }
}
