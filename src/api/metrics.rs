//! `GET /metrics` (and `/api/v1/metrics`): the Prometheus text exposition format 0.0.4, every
//! name prefixed `buddygate_`. Counters come from the core's [`Stats`] (in the snapshot) and
//! the runtime's [`Metrics`]; gauges from the snapshot's views.
//!
//! [`Stats`]: crate::failover::Stats

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::failover::{ResourceState, ServerState};
use crate::view::{Metrics, Snapshot};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn handler(State(state): State<AppState>) -> Response {
    let snap = state.shared.snapshot.borrow().clone();
    let mut body = render(&snap, &state.shared.metrics);
    body.push_str(&render_connectors(&state.shared.connectors));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Writes metric families: `# HELP`, `# TYPE`, then samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP buddygate_{name} {help}");
        let _ = writeln!(self.out, "# TYPE buddygate_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.out, "buddygate_{name}");
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape `\`, `"` and line feeds.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// 1 for a server this node hears (up or suspect), else 0.
fn up(state: ServerState) -> u8 {
    u8::from(matches!(state, ServerState::Up | ServerState::Suspect))
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

/// The whole exposition for one snapshot and the runtime's counters.
pub fn render(snap: &Snapshot, metrics: &Metrics) -> String {
    let site = &snap.site;
    let stats = &snap.stats;
    let node = super::views::server_id(site, snap.node);
    let mut m = Exposition {
        out: String::with_capacity(4096 + 64 * snap.resources.len()),
    };

    m.family(
        "info",
        "gauge",
        "The site and node this daemon serves (always 1).",
    );
    m.sample("info", &[("site", &site.name), ("node", node)], 1);
    m.single(
        "booting",
        "gauge",
        "1 while this node waits to hear its buddies after start-up.",
        u8::from(snap.booting),
    );

    // Heartbeats and datagrams.
    m.single(
        "heartbeats_sent_total",
        "counter",
        "Heartbeats sent, one per buddy and path.",
        stats.heartbeats_sent,
    );
    m.single(
        "heartbeats_received_total",
        "counter",
        "Heartbeats received and accepted.",
        stats.heartbeats_received,
    );
    m.family(
        "datagrams_rejected_total",
        "counter",
        "Heartbeat datagrams rejected, by reason (hmac, replay, malformed, ...).",
    );
    for (reason, n) in &stats.rejected {
        m.sample("datagrams_rejected_total", &[("reason", reason)], n);
    }
    m.single(
        "datagrams_sent_total",
        "counter",
        "UDP datagrams sent on the heartbeat paths.",
        metrics.datagrams_sent.load(Ordering::Relaxed),
    );
    m.single(
        "datagrams_received_total",
        "counter",
        "UDP datagrams received on the heartbeat paths.",
        metrics.datagrams_received.load(Ordering::Relaxed),
    );
    m.single(
        "datagram_send_errors_total",
        "counter",
        "UDP sends that failed.",
        metrics.send_errors.load(Ordering::Relaxed),
    );

    // Failover.
    m.single(
        "takeovers_total",
        "counter",
        "Failovers this node carried out (it took over another server's resources).",
        stats.takeovers,
    );
    m.single(
        "failbacks_total",
        "counter",
        "Failbacks this node carried out (it took its resources back).",
        stats.failbacks,
    );
    m.single(
        "resources_failed_total",
        "counter",
        "Resources that failed to start or failed their monitor here.",
        stats.resources_failed,
    );
    m.single(
        "ownership_conflicts_total",
        "counter",
        "Resources seen active on more than one server at once.",
        stats.conflicts,
    );
    m.single(
        "config_mismatches_total",
        "counter",
        "Buddies found running a different site file.",
        stats.config_mismatches,
    );
    let (buckets, sum, count) = metrics.takeover_seconds.read();
    m.family(
        "takeover_seconds",
        "histogram",
        "Takeover time, from the failed server's last heartbeat to its resources active here.",
    );
    for (bound, n) in buckets {
        m.sample("takeover_seconds_bucket", &[("le", &bound.to_string())], n);
    }
    m.sample("takeover_seconds_bucket", &[("le", "+Inf")], count);
    m.sample("takeover_seconds_sum", &[], sum);
    m.sample("takeover_seconds_count", &[], count);

    // Servers and paths, as this node sees them (servers it does not heartbeat with are left
    // out: it knows nothing about them).
    let known = || {
        snap.servers.iter().filter(|v| v.known).filter_map(|v| {
            let server = site.servers.get(usize::from(v.server.0))?;
            Some((server, v))
        })
    };
    m.family(
        "server_up",
        "gauge",
        "1 if this node hears the server (state up or suspect), else 0.",
    );
    for (server, v) in known() {
        m.sample("server_up", &[("server", &server.id)], up(v.state));
    }
    m.family(
        "server_state",
        "gauge",
        "1 for the server's current state as this node sees it, 0 for the others.",
    );
    for (server, v) in known() {
        for state in SERVER_STATES {
            m.sample(
                "server_state",
                &[("server", &server.id), ("state", state.as_str())],
                u8::from(v.state == state),
            );
        }
    }
    m.family(
        "path_up",
        "gauge",
        "1 if the network path to the server is up, by path index; 0 if down.",
    );
    for (server, v) in known() {
        for (i, p) in v.paths.iter().enumerate() {
            let address = server
                .heartbeat
                .get(i)
                .map(|a| a.to_string())
                .unwrap_or_default();
            m.sample(
                "path_up",
                &[
                    ("server", &server.id),
                    ("path", &i.to_string()),
                    ("address", &address),
                ],
                u8::from(p.up),
            );
        }
    }

    // Resources.
    m.family(
        "resource_owned",
        "gauge",
        "1 if this node serves the resource (its claim is active), else 0.",
    );
    for v in &snap.resources {
        let Some(resource) = site.resources.get(v.resource.0 as usize) else {
            continue;
        };
        let owned = v.owner == Some(snap.node) && v.state == ResourceState::Active;
        m.sample(
            "resource_owned",
            &[("resource", &resource.id)],
            u8::from(owned),
        );
    }
    m.family(
        "resources",
        "gauge",
        "Resources of the site by state, as this node knows them.",
    );
    for state in RESOURCE_STATES {
        let n = snap.resources.iter().filter(|v| v.state == state).count();
        m.sample("resources", &[("state", state.as_str())], n);
    }

    // Agents, API, events.
    m.family(
        "agent_ops_total",
        "counter",
        "Resource agent operations, by operation and outcome.",
    );
    let ops = match metrics.agent_ops.lock() {
        Ok(ops) => ops.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for ((op, outcome), n) in ops {
        m.sample("agent_ops_total", &[("op", op), ("outcome", outcome)], n);
    }
    m.single(
        "api_unauthorized_total",
        "counter",
        "API mutations refused for a missing or wrong bearer token.",
        metrics.api_unauthorized.load(Ordering::Relaxed),
    );
    m.single(
        "events_stored_total",
        "counter",
        "Events written to the event log since start.",
        metrics.events_stored.load(Ordering::Relaxed),
    );
    m.out
}

/// Per-connector delivery figures.
pub fn render_connectors(connectors: &[crate::connectors::ConnectorHandle]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = Exposition { out: String::new() };
    if connectors.is_empty() {
        return m.out;
    }
    type Read = fn(&crate::connectors::ConnectorStatus) -> u64;
    let counters: [(&str, &str, Read); 4] = [
        (
            "connector_delivered_total",
            "Events delivered (acknowledged with a 2xx).",
            |s| s.delivered.load(Relaxed),
        ),
        (
            "connector_retried_total",
            "Failed attempts that were retried.",
            |s| s.retried.load(Relaxed),
        ),
        ("connector_failed_total", "Failed attempts.", |s| {
            s.failed.load(Relaxed)
        }),
        (
            "connector_dead_letters",
            "Deliveries that used up their retries, kept for replay.",
            |s| s.dead.load(Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        m.family(name, kind, help);
        for c in connectors {
            m.sample(
                name,
                &[("connector", &c.name), ("type", c.kind)],
                read(&c.status),
            );
        }
    }
    m.family(
        "connector_queue_depth",
        "gauge",
        "Events in the log this connector has not handled yet.",
    );
    for c in connectors {
        m.sample(
            "connector_queue_depth",
            &[("connector", &c.name)],
            c.status.queue_depth(),
        );
    }
    m.family(
        "connector_disabled",
        "gauge",
        "1 when the endpoint answered 410 Gone; a replay re-enables it.",
    );
    for c in connectors {
        let disabled = c
            .status
            .disabled
            .lock()
            .map(|d| d.is_some())
            .unwrap_or(false);
        m.sample(
            "connector_disabled",
            &[("connector", &c.name)],
            u8::from(disabled),
        );
    }
    m.family(
        "connector_delivery_seconds",
        "histogram",
        "From the event being stored to its delivery being acknowledged.",
    );
    for c in connectors {
        let (buckets, sum, count) = c.status.latency_seconds.read();
        for (bound, n) in buckets {
            m.sample(
                "connector_delivery_seconds_bucket",
                &[("connector", &c.name), ("le", &bound.to_string())],
                n,
            );
        }
        m.sample(
            "connector_delivery_seconds_bucket",
            &[("connector", &c.name), ("le", "+Inf")],
            count,
        );
        m.sample(
            "connector_delivery_seconds_sum",
            &[("connector", &c.name)],
            sum,
        );
        m.sample(
            "connector_delivery_seconds_count",
            &[("connector", &c.name)],
            count,
        );
    }
    m.out
}
