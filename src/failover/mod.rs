//! The failover core: a clock-free, I/O-free state machine per node (DESIGN sections 2-3).
//!
//! - [`node`]: [`Node::handle`]`(input, now) -> outputs`: detection per path, placement,
//!   epochs and claims, start-up wait, failback, events.
//! - [`placement`]: the pure placement function (modes, capacity, priority, buddy order).
//! - [`topology`]: who heartbeats whom and which failover servers may take what.
//! - [`wire`]: the heartbeat datagram (versioned, HMAC-tagged).
//! - [`event`]: the events the core emits.

pub mod event;
pub mod node;
pub mod placement;
pub mod topology;
pub mod wire;

pub use event::{DownReason, Event, FailedResource};
pub use node::{
    AgentOp, ClaimRecord, Epoch, Input, Node, Output, ResourceState, ResourceView, ServerState,
    ServerView, Stats, epoch_round, new_epoch,
};
pub use placement::{Placement, place};
pub use topology::Topology;
pub use wire::{Action, Key};
