//! Events the core emits (DESIGN section 1, "Events"). Times are the core's monotonic `now`;
//! the runtime stamps wall-clock time and sequence numbers when it stores them.

use std::time::Duration;

use crate::config::{ResourceIdx, ServerIdx};

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
            Event::OwnershipConflict { .. } => "buddygate.ownership.conflict",
            Event::OwnershipResolved { .. } => "buddygate.ownership.resolved",
            Event::ConfigMismatch { .. } => "buddygate.config.mismatch",
        }
    }
}
