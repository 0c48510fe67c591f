//! Events the core emits (DESIGN section 1, "Events"), and the two the runtime raises about
//! its connectors ([`Event::ConnectorFailed`], [`Event::ConnectorRecovered`]): the core knows
//! nothing of connectors, but their events are stored, numbered and delivered like its own.
//! Times are the core's monotonic `now`; the runtime stamps wall-clock time and sequence
//! numbers when it stores them.

use std::time::Duration;

use crate::config::{ResourceIdx, ServerIdx, Site};

/// Why a server stopped serving its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Silence on every path for `failure_timeout`.
    Timeout,
    /// It said it is leaving (clean shutdown or manual failover).
    Leaving,
}

/// A resource that did not come up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedResource {
    pub resource: ResourceIdx,
    pub reason: String,
}

/// Why no buddy can take a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnplacedReason {
    /// Every buddy that may take it is full (`max_servers`, `max_cameras`, mirrored).
    Capacity,
    /// Every buddy that may take it failed to run it.
    Failed,
    /// No buddy that may take it is up.
    Unavailable,
}

impl UnplacedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnplacedReason::Capacity => "capacity",
            UnplacedReason::Failed => "failed",
            UnplacedReason::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ServerDown {
        server: ServerIdx,
        reason: DownReason,
        /// When it was last heard (or said it was leaving).
        down_since: Duration,
    },
    ServerUp {
        server: ServerIdx,
    },
    PathDown {
        server: ServerIdx,
        path: usize,
    },
    PathUp {
        server: ServerIdx,
        path: usize,
    },
    FailoverStarted {
        server: ServerIdx,
        new_server: ServerIdx,
        epoch: u64,
        resources: Vec<ResourceIdx>,
    },
    FailoverCompleted {
        server: ServerIdx,
        new_server: ServerIdx,
        epoch: u64,
        resources: Vec<ResourceIdx>,
        failed: Vec<FailedResource>,
        down_since: Duration,
        takeover: Duration,
    },
    FailbackCompleted {
        server: ServerIdx,
        epoch: u64,
        resources: Vec<ResourceIdx>,
        failed: Vec<FailedResource>,
        duration: Duration,
    },
    ResourceFailed {
        resource: ResourceIdx,
        server: ServerIdx,
        epoch: u64,
        reason: String,
    },
    /// Resources of `server` that need a host and that no buddy can take: nobody records
    /// them. Reported by their first buddy that is up; cleared by the takeover that places
    /// them (`failover.started`/`completed`) or by the home server running them again.
    ResourceUnplaced {
        server: ServerIdx,
        resources: Vec<(ResourceIdx, UnplacedReason)>,
    },
    OwnershipConflict {
        resource: ResourceIdx,
        /// Every active claim seen, (server, epoch), winner first.
        owners: Vec<(ServerIdx, u64)>,
    },
    OwnershipResolved {
        resource: ResourceIdx,
        owner: ServerIdx,
        epoch: u64,
    },
    ConfigMismatch {
        server: ServerIdx,
        local: [u8; 8],
        remote: [u8; 8],
    },
    /// One of this node's connectors cannot be built (a secret not set, a certificate that
    /// cannot be read): the node runs without it and builds it again with backoff. Raised
    /// once per outage, at its first failed build.
    ConnectorFailed {
        /// The connector's name (its file's stem).
        connector: String,
        /// `webhook`, `mqtt` or `onvif`.
        kind: &'static str,
        /// What the build said; names a secret (`env:VAR`, `file:PATH`), never its value.
        reason: String,
        /// Builds tried so far.
        attempts: u32,
        /// Until the next build.
        retry_in: Duration,
    },
    /// A connector that could not be built runs at last.
    ConnectorRecovered {
        connector: String,
        kind: &'static str,
        /// Builds it took, the one that worked included.
        attempts: u32,
        /// From its first failed build to the one that worked.
        failed_for: Duration,
    },
}

impl Event {
    /// The CloudEvents `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::ServerDown { .. } => "buddygate.server.down",
            Event::ServerUp { .. } => "buddygate.server.up",
            Event::PathDown { .. } => "buddygate.path.down",
            Event::PathUp { .. } => "buddygate.path.up",
            Event::FailoverStarted { .. } => "buddygate.failover.started",
            Event::FailoverCompleted { .. } => "buddygate.failover.completed",
            Event::FailbackCompleted { .. } => "buddygate.failback.completed",
            Event::ResourceFailed { .. } => "buddygate.resource.failed",
            Event::ResourceUnplaced { .. } => "buddygate.resource.unplaced",
            Event::OwnershipConflict { .. } => "buddygate.ownership.conflict",
            Event::OwnershipResolved { .. } => "buddygate.ownership.resolved",
            Event::ConfigMismatch { .. } => "buddygate.config.mismatch",
            Event::ConnectorFailed { .. } => "buddygate.connector.failed",
            Event::ConnectorRecovered { .. } => "buddygate.connector.recovered",
        }
    }

    /// One line describing the event, for people (logs, the demo).
    pub fn describe(&self, site: &Site) -> String {
        let s = |i: ServerIdx| site.server(i).id.as_str();
        match self {
            Event::ServerDown {
                server,
                reason,
                down_since,
            } => match reason {
                DownReason::Timeout => format!(
                    "server.down {} (silent on every path since {:.3}s)",
                    s(*server),
                    down_since.as_secs_f64()
                ),
                DownReason::Leaving => format!("server.down {} (leaving)", s(*server)),
            },
            Event::ServerUp { server } => format!("server.up {}", s(*server)),
            Event::PathDown { server, path } => format!("path.down {} path {path}", s(*server)),
            Event::PathUp { server, path } => format!("path.up {} path {path}", s(*server)),
            Event::FailoverStarted {
                server,
                new_server,
                epoch,
                resources,
            } => format!(
                "failover.started {} -> {}: {} resources at epoch {epoch}",
                s(*server),
                s(*new_server),
                resources.len()
            ),
            Event::FailoverCompleted {
                server,
                new_server,
                epoch,
                resources,
                failed,
                takeover,
                ..
            } => format!(
                "failover.completed {} -> {} ({}): {} active, {} failed, epoch {epoch}, {} ms after the last heartbeat",
                s(*server),
                s(*new_server),
                site.server(*new_server).address,
                resources.len(),
                failed.len(),
                takeover.as_millis()
            ),
            Event::FailbackCompleted {
                server,
                epoch,
                resources,
                duration,
                ..
            } => format!(
                "failback.completed {}: {} resources home at epoch {epoch} in {} ms",
                s(*server),
                resources.len(),
                duration.as_millis()
            ),
            Event::ResourceFailed {
                resource, reason, ..
            } => format!("resource.failed {}: {reason}", site.resource(*resource).id),
            Event::ResourceUnplaced { server, resources } => format!(
                "resource.unplaced {} resources of {} have no host: {}",
                resources.len(),
                s(*server),
                resources
                    .iter()
                    .map(|(r, why)| format!("{} ({})", site.resource(*r).id, why.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::OwnershipConflict { resource, owners } => format!(
                "ownership.conflict {}: {}",
                site.resource(*resource).id,
                owners
                    .iter()
                    .map(|(o, e)| format!("{}@{e}", s(*o)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::OwnershipResolved {
                resource,
                owner,
                epoch,
            } => format!(
                "ownership.resolved {} -> {}@{epoch}",
                site.resource(*resource).id,
                s(*owner)
            ),
            Event::ConfigMismatch { server, .. } => {
                format!("config.mismatch with {}", s(*server))
            }
            Event::ConnectorFailed {
                connector,
                kind,
                reason,
                retry_in,
                ..
            } => format!(
                "connector.failed {connector} ({kind}) cannot start: {reason}; trying again in {} ms",
                retry_in.as_millis()
            ),
            Event::ConnectorRecovered {
                connector,
                kind,
                attempts,
                failed_for,
            } => format!(
                "connector.recovered {connector} ({kind}) runs, after {attempts} attempts over {} ms",
                failed_for.as_millis()
            ),
        }
    }
}
