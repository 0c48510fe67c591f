//! The failover core: a clock-free, I/O-free state machine per node (DESIGN sections 2-3).
//!
//! - [`io`]: the contract with the driver: [`Input`], [`Output`], what must be durable and
//!   what a restarted node is given back.
//! - [`node`]: [`Node::handle`]`(input, now) -> outputs`, composed of sub-states (peers and
//!   detection, own claims, known epochs, operator holds, boot and failback, takeover,
//!   batches, heartbeat content).
//! - [`views`]: what a node shows of its view (servers, resources, counters).
//! - [`placement`]: the pure placement function (modes, capacity, priority, buddy order).
//! - [`topology`]: who heartbeats whom and which failover servers may take what.
//! - [`wire`]: the heartbeat datagram (versioned, HMAC-tagged).
//! - [`event`]: the events the core emits.

pub mod event;
pub mod io;
pub mod node;
pub mod placement;
pub mod topology;
pub mod views;
pub mod wire;

pub use event::{DownReason, Event, FailedResource, UnplacedReason};
pub use io::{
    AgentOp, ClaimRecord, Durable, EPOCH_SLOTS, Epoch, HoldRecord, Input, Output, PeerRecord,
    Restored, epoch_round, new_epoch,
};
pub use node::{Node, OwnState};
pub use placement::{Placement, place};
pub use topology::Topology;
pub use views::{PathView, ResourceState, ResourceView, ServerState, ServerView, Stats};
pub use wire::{Action, Key};
