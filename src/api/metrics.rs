//! `GET /metrics` (and `/api/v1/metrics`): the Prometheus text exposition format 0.0.4, every
//! name prefixed `buddygate_`, written by `prometheus-client`. Counters come from the core's
//! [`Stats`] (in the snapshot) and the runtime's [`Metrics`]; gauges from the snapshot's
//! views; the connector families from each connector's status.
//!
//! The figures live where they are counted (atomics in [`Metrics`] and the connectors'
//! statuses, the core's [`Stats`]): each scrape reads them through two collectors into a fresh
//! registry, so the runtime keeps its own counters and nothing is registered twice.
//!
//! [`Stats`]: crate::failover::Stats
//!
//! (Over ~500 lines: one collector per source of figures, node, store and connectors, each a
//! flat list of families; kept together so every exposed name is in one file.)

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::connectors::{ConnectorHandle, ConnectorStatus};
use crate::failover::{ResourceState, ServerState};
use crate::view::{Histogram, Metrics, Snapshot};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

pub(crate) async fn handler(State(state): State<AppState>) -> Response {
    let snap = state.shared.snapshot.borrow().clone();
    let body = render(
        snap,
        state.shared.metrics.clone(),
        state.shared.connectors.clone(),
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// The whole exposition for one snapshot, the runtime's counters and the connectors.
pub fn render(
    snap: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    connectors: Arc<Vec<ConnectorHandle>>,
) -> String {
    let mut registry = Registry::with_prefix("buddygate");
    registry.register_collector(Box::new(StoreFamilies(metrics.clone())));
    registry.register_collector(Box::new(NodeFigures { snap, metrics }));
    registry.register_collector(Box::new(ConnectorFigures(connectors)));
    let mut out = String::with_capacity(8192);
    // Writing to a String does not fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// 1 for a server this node hears (up or suspect), else 0.
fn up(state: ServerState) -> u64 {
    u64::from(matches!(state, ServerState::Up | ServerState::Suspect))
}

const SERVER_STATES: [ServerState; 5] = [
    ServerState::Up,
    ServerState::Suspect,
    ServerState::Down,
    ServerState::Leaving,
    ServerState::Unhealthy,
];

const RESOURCE_STATES: [ResourceState; 5] = [
    ResourceState::Active,
    ResourceState::Starting,
    ResourceState::Stopping,
    ResourceState::Failed,
    ResourceState::Unassigned,
];

/// Families written one after the other through a collector's encoder.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// A family of `kind` with one sample per `(labels, value)`. A counter's `name` is given
    /// without `_total`: the encoder adds it.
    fn family<L: EncodeLabelSet, M: EncodeMetric>(
        &mut self,
        name: &str,
        kind: MetricType,
        help: &str,
        samples: impl IntoIterator<Item = (L, M)>,
    ) -> fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, kind)?;
        for (labels, metric) in samples {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter with one unlabelled sample.
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let c = ConstCounter::new(value);
        c.encode(
            self.0
                .encode_descriptor(name, help, None, c.metric_type())?,
        )
    }

    /// A gauge with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let g = ConstGauge::new(value);
        g.encode(
            self.0
                .encode_descriptor(name, help, None, g.metric_type())?,
        )
    }
}

/// A [`Histogram`] as read at scrape time.
#[derive(Debug)]
struct Reading {
    /// (upper bound, count in that bucket alone).
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Reading {
    fn of(h: &Histogram) -> Self {
        let (cumulative, sum, count) = h.read();
        let mut below = 0;
        let buckets = cumulative
            .into_iter()
            .map(|(bound, n)| {
                let own = n - below;
                below = n;
                (bound, own)
            })
            .collect();
        Self {
            buckets,
            sum,
            count,
        }
    }
}

impl EncodeMetric for Reading {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The node's figures: the core's stats and views, the runtime's counters.
#[derive(Debug)]
struct NodeFigures {
    snap: Arc<Snapshot>,
    metrics: Arc<Metrics>,
}

impl Collector for NodeFigures {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (snap, metrics) = (&*self.snap, &*self.metrics);
        let (site, stats) = (&snap.site, &snap.stats);
        let node = super::views::server_id(site, snap.node);
        let mut m = Families(encoder);
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);

        m.family(
            "info",
            gauge,
            "The site and node this daemon serves (always 1).",
            [(
                [("site", site.name.as_str()), ("node", node)],
                ConstGauge::new(1u64),
            )],
        )?;
        m.gauge(
            "booting",
            "1 while this node waits to hear its buddies after start-up.",
            u64::from(snap.booting),
        )?;

        // Heartbeats and datagrams.
        m.counter(
            "heartbeats_sent",
            "Heartbeats sent, one per buddy and path.",
            stats.heartbeats_sent,
        )?;
        m.counter(
            "heartbeats_received",
            "Heartbeats received and accepted.",
            stats.heartbeats_received,
        )?;
        m.family(
            "datagrams_rejected",
            counter,
            "Heartbeat datagrams rejected, by reason (hmac, replay, malformed, ...).",
            stats
                .rejected
                .iter()
                .map(|(reason, n)| ([("reason", *reason)], ConstCounter::new(*n))),
        )?;
        let counters: [(&str, &str, u64); 15] = [
            (
                "datagrams_sent",
                "UDP datagrams sent on the heartbeat paths.",
                metrics.datagrams_sent.load(Relaxed),
            ),
            (
                "datagrams_received",
                "UDP datagrams received on the heartbeat paths.",
                metrics.datagrams_received.load(Relaxed),
            ),
            (
                "datagram_send_errors",
                "UDP sends that failed.",
                metrics.send_errors.load(Relaxed),
            ),
            // Failover.
            (
                "takeovers",
                "Failovers this node carried out (it took over another server's resources).",
                stats.takeovers,
            ),
            (
                "failbacks",
                "Failbacks this node carried out (it took its resources back).",
                stats.failbacks,
            ),
            (
                "resources_failed",
                "Resources that failed to start or failed their monitor here.",
                stats.resources_failed,
            ),
            (
                "ownership_conflicts",
                "Resources seen active on more than one server at once.",
                stats.conflicts,
            ),
            (
                "config_mismatches",
                "Buddies found running a different site file.",
                stats.config_mismatches,
            ),
            (
                "stop_failures",
                "Agent stops that failed (each is retried; the claim is kept meanwhile).",
                stats.stop_failures,
            ),
            (
                "claim_renewals",
                "Claims renewed at a new round because a newer epoch was known for them.",
                stats.renewals,
            ),
            (
                "capacity_evictions",
                "Resources stopped to bring this node back within its capacity.",
                stats.evictions,
            ),
            (
                "incarnation_jumps",
                "Times this node jumped past an incarnation its peers remembered.",
                stats.incarnation_jumps,
            ),
            (
                "heartbeats_unconfirmed",
                "Heartbeats counted for liveness only (they did not echo this node's incarnation).",
                stats.unconfirmed,
            ),
            (
                "heartbeat_paged_rounds",
                "Heartbeat rounds whose claims took more than one datagram for some peer.",
                stats.paged_rounds,
            ),
            (
                "stalls",
                "Times this node found it had not run for a while and listened afresh.",
                stats.stalls,
            ),
        ];
        for (name, help, value) in counters {
            m.counter(name, help, value)?;
        }
        m.0.encode_descriptor(
            "core_seconds",
            "Time spent in the failover core (deciding, not sending or storing).",
            None,
            MetricType::Counter,
        )
        .and_then(|e| {
            ConstCounter::new(metrics.core_micros.load(Relaxed) as f64 / 1e6).encode(e)
        })?;
        m.gauge(
            "stops_failing",
            "Claims whose agent stop is failing now (the resource may run on two servers).",
            stats.stops_failing,
        )?;
        m.gauge(
            "resources_unplaced",
            "Resources this node reports unplaced: they need a host and no buddy can take them.",
            stats.unplaced,
        )?;
        let takeover = Reading::of(&metrics.takeover_seconds);
        takeover.encode(m.0.encode_descriptor(
            "takeover_seconds",
            "Takeover time, from the failed server's last heartbeat to its resources active here.",
            None,
            MetricType::Histogram,
        )?)?;

        // Servers and paths, as this node sees them (servers it does not heartbeat with are
        // left out: it knows nothing about them).
        let known: Vec<_> = snap
            .servers
            .iter()
            .filter(|v| v.known)
            .filter_map(|v| Some((site.servers.get(usize::from(v.server.0))?, v)))
            .collect();
        m.family(
            "server_up",
            gauge,
            "1 if this node hears the server (state up or suspect), else 0.",
            known
                .iter()
                .map(|(s, v)| ([("server", s.id.as_str())], ConstGauge::new(up(v.state)))),
        )?;
        m.family(
            "server_state",
            gauge,
            "1 for the server's current state as this node sees it, 0 for the others.",
            known.iter().flat_map(|(s, v)| {
                SERVER_STATES.map(|state| {
                    let labels = [("server", s.id.as_str()), ("state", state.as_str())];
                    (labels, ConstGauge::new(u64::from(v.state == state)))
                })
            }),
        )?;
        m.family(
            "path_up",
            gauge,
            "1 if the network path to the server is up, by path index; 0 if down.",
            known.iter().flat_map(|(s, v)| {
                v.paths.iter().enumerate().map(|(i, p)| {
                    let address = s.heartbeat.get(i).map(|a| a.to_string());
                    let labels = [
                        ("server", s.id.clone()),
                        ("path", i.to_string()),
                        ("address", address.unwrap_or_default()),
                    ];
                    (labels, ConstGauge::new(u64::from(p.up)))
                })
            }),
        )?;

        // Resources.
        m.family(
            "resource_owned",
            gauge,
            "1 if this node serves the resource (its claim is active), else 0.",
            snap.resources.iter().filter_map(|v| {
                let resource = site.resources.get(v.resource.0 as usize)?;
                let owned = v.owner == Some(snap.node) && v.state == ResourceState::Active;
                let labels = [("resource", resource.id.as_str())];
                Some((labels, ConstGauge::new(u64::from(owned))))
            }),
        )?;
        m.family(
            "resources",
            gauge,
            "Resources of the site by state, as this node knows them.",
            RESOURCE_STATES.map(|state| {
                let n = snap.resources.iter().filter(|v| v.state == state).count();
                ([("state", state.as_str())], ConstGauge::new(n as u64))
            }),
        )?;

        // Agents, API, events.
        let ops = match metrics.agent_ops.lock() {
            Ok(ops) => ops.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        m.family(
            "agent_ops",
            counter,
            "Resource agent operations, by operation and outcome.",
            ops.into_iter().map(|((op, outcome), n)| {
                ([("op", op), ("outcome", outcome)], ConstCounter::new(n))
            }),
        )?;
        m.family(
            "api_refused",
            counter,
            "API requests and connections refused, by reason (unauthorized, forbidden, host, \
             connections, client_connections, streams, body_too_large, timeout, accept).",
            metrics
                .api_refused
                .read()
                .into_iter()
                .map(|(reason, n)| ([("reason", reason)], ConstCounter::new(n))),
        )?;
        m.family(
            "onvif_auth_failures",
            counter,
            "ONVIF requests refused for their WS-UsernameToken, by reason (missing, password, \
             created, nonce, throttled).",
            metrics
                .onvif_auth_failures
                .read()
                .into_iter()
                .map(|(reason, n)| ([("reason", reason)], ConstCounter::new(n))),
        )?;
        let gauges: [(&str, &str, u64); 4] = [
            (
                "api_connections",
                "API connections open now.",
                metrics.api_connections.load(Relaxed),
            ),
            (
                "api_streams",
                "Server-sent event streams open now.",
                metrics.api_streams.load(Relaxed),
            ),
            (
                "fd_limit",
                "The process's file-descriptor limit (soft RLIMIT_NOFILE).",
                crate::fds::soft_limit(),
            ),
            (
                "open_fds",
                "File descriptors the process has open.",
                crate::fds::open_count().unwrap_or(0),
            ),
        ];
        for (name, help, value) in gauges {
            m.gauge(name, help, value)?;
        }
        let counters: [(&str, &str, u64); 2] = [
            (
                "api_unauthorized",
                "API requests refused for a missing or wrong bearer token.",
                metrics.api_unauthorized.load(Relaxed),
            ),
            (
                "events_stored",
                "Events written to the event log since start.",
                metrics.events_stored.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            m.counter(name, help, value)?;
        }
        Ok(())
    }
}

/// The node's store: whether it takes writes, what waits in memory, retention.
#[derive(Debug)]
struct StoreFamilies(Arc<Metrics>);

impl Collector for StoreFamilies {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let f = &self.0.store;
        let mut m = Families(encoder);
        m.gauge(
            "store_ok",
            "1 while the store takes writes; 0 (a full or failing disk): the node says it is \
             leaving until it does again.",
            u64::from(f.failure().is_none()),
        )?;
        m.counter(
            "store_write_failures",
            "Writes of the store that failed (jobs and retries).",
            f.write_failures.load(Relaxed),
        )?;
        m.gauge(
            "store_events_waiting",
            "Events kept in memory until the store takes writes again.",
            f.events_waiting.load(Relaxed),
        )?;
        m.family(
            "store_events_dropped",
            MetricType::Counter,
            "Events lost: beyond what memory keeps while the store takes no writes (memory), or \
             deleted at the size limit before every connector handled them (size).",
            [
                (
                    [("reason", "memory")],
                    ConstCounter::new(f.events_dropped_memory.load(Relaxed)),
                ),
                (
                    [("reason", "size")],
                    ConstCounter::new(f.events_dropped_size.load(Relaxed)),
                ),
            ],
        )?;
        m.counter(
            "store_events_pruned",
            "Events deleted by retention.",
            f.events_pruned.load(Relaxed),
        )?;
        m.gauge(
            "store_used_bytes",
            "Bytes of the store in use, as last measured.",
            f.used_bytes.load(Relaxed),
        )?;
        Reading::of(&f.prune_batch_seconds).encode(m.0.encode_descriptor(
            "store_prune_batch_seconds",
            "How long each retention batch kept the store writer from the core's jobs.",
            None,
            MetricType::Histogram,
        )?)
    }
}

/// Per-connector delivery figures; nothing at all when the node has no connector.
#[derive(Debug)]
struct ConnectorFigures(Arc<Vec<ConnectorHandle>>);

impl Collector for ConnectorFigures {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let connectors = &*self.0;
        if connectors.is_empty() {
            return Ok(());
        }
        let mut m = Families(encoder);
        type Read = fn(&ConnectorStatus) -> u64;
        let counts: [(&str, MetricType, &str, Read); 4] = [
            (
                "connector_delivered",
                MetricType::Counter,
                "Events delivered (acknowledged with a 2xx).",
                |s| s.delivered.load(Relaxed),
            ),
            (
                "connector_retried",
                MetricType::Counter,
                "Failed attempts that were retried.",
                |s| s.retried.load(Relaxed),
            ),
            (
                "connector_failed",
                MetricType::Counter,
                "Failed attempts.",
                |s| s.failed.load(Relaxed),
            ),
            (
                "connector_dead_letters",
                MetricType::Gauge,
                "Deliveries that used up their retries, kept for replay.",
                |s| s.dead.load(Relaxed),
            ),
        ];
        for (name, kind, help, read) in counts {
            let samples = connectors.iter().map(|c| {
                let labels = [("connector", c.name.as_str()), ("type", c.kind)];
                (labels, Value(kind, read(&c.status)))
            });
            m.family(name, kind, help, samples)?;
        }
        m.family(
            "connector_queue_depth",
            MetricType::Gauge,
            "Events in the log this connector has not handled yet.",
            connectors.iter().map(|c| {
                let labels = [("connector", c.name.as_str())];
                (labels, ConstGauge::new(c.status.queue_depth()))
            }),
        )?;
        m.family(
            "connector_start_failed",
            MetricType::Gauge,
            "1 while the connector cannot be built (a secret missing, ...); it is tried again.",
            connectors.iter().map(|c| {
                let labels = [("connector", c.name.as_str())];
                (
                    labels,
                    ConstGauge::new(u64::from(c.status.start_error().is_some())),
                )
            }),
        )?;
        m.family(
            "connector_disabled",
            MetricType::Gauge,
            "1 when the endpoint answered 410 Gone; a replay re-enables it.",
            connectors.iter().map(|c| {
                let disabled = c.status.disabled.lock().is_ok_and(|d| d.is_some());
                let labels = [("connector", c.name.as_str())];
                (labels, ConstGauge::new(u64::from(disabled)))
            }),
        )?;
        m.family(
            "connector_delivery_seconds",
            MetricType::Histogram,
            "From the event being stored to its delivery being acknowledged.",
            connectors.iter().map(|c| {
                let labels = [("connector", c.name.as_str())];
                (labels, Reading::of(&c.status.latency_seconds))
            }),
        )
    }
}

/// A counter or gauge value, as its family says.
#[derive(Debug)]
struct Value(MetricType, u64);

impl EncodeMetric for Value {
    fn encode(&self, encoder: MetricEncoder<'_>) -> fmt::Result {
        match self.0 {
            MetricType::Counter => ConstCounter::new(self.1).encode(encoder),
            _ => ConstGauge::new(self.1).encode(encoder),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}
