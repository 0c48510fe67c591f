//! The contract between the core and whoever drives it (the runtime, the simulator): what goes
//! in ([`Input`]), what comes out ([`Output`]), what must be durable ([`Durable`]) and what a
//! restarted node is given back ([`Restored`]).
//!
//! The driver's side of the contract:
//! - carry out outputs in the order given; an [`Output::Persist`] must be durable before any
//!   later output of the same list is carried out (a claim is on disk before its agent starts);
//! - start and stop of one resource are carried out one after another, never concurrently;
//! - call `handle(Input::Tick, now)` no later than `Node::next_deadline`;
//! - on restart, give the node back everything it ever persisted ([`Restored`]); an empty
//!   store is allowed (the node relearns from its peers before it claims anything).

use std::time::Duration;

use super::event::Event;
use super::wire::{Action, Heartbeat};
use crate::config::{ResourceIdx, ServerIdx};

/// Fencing token: every change of owner of a resource gets a higher one.
pub type Epoch = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    Start,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Timers: call at least by `Node::next_deadline`.
    Tick,
    /// A datagram that arrived on our heartbeat path `path` at `at` (the driver's clock when
    /// it was read from the socket, not when the core gets to it).
    Datagram {
        path: usize,
        bytes: Vec<u8>,
        at: Duration,
    },
    /// A heartbeat the driver already decoded and authenticated (`wire::decode`), for a
    /// driver that drops bad datagrams before they are queued.
    Heartbeat {
        path: usize,
        heartbeat: Box<Heartbeat>,
        at: Duration,
    },
    /// An agent finished a start or stop it was asked for.
    AgentDone {
        resource: ResourceIdx,
        epoch: Epoch,
        op: AgentOp,
        result: Result<(), String>,
    },
    /// A running resource failed its monitor (after the agent's own retries).
    MonitorFailed {
        resource: ResourceIdx,
        reason: String,
    },
    /// Whether witness `index` (position in `site.witnesses`) answers.
    Witness { index: usize, reachable: bool },
    /// An operator's manual failover or failback of `server`, sent to this node. `stamp` is
    /// the wall clock in ms when it arrived: commands sent to different nodes are ordered by
    /// it (a hybrid logical clock), so the operator's last word wins everywhere.
    Command {
        action: Action,
        server: ServerIdx,
        stamp: u64,
    },
    /// Clean shutdown: tell the buddies we are leaving so they take over at once.
    Shutdown,
    /// Whether the driver can make things durable (`false`: a full or failing disk). While it
    /// cannot, the node says it is leaving, so its buddies take over at once, and claims
    /// nothing; it comes back by itself when it can again.
    Storage { ok: bool },
}

/// One claim of this node as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRecord {
    pub resource: ResourceIdx,
    pub epoch: Epoch,
    /// `true` while this node holds the resource (its agent may run); `false` once the
    /// resource was released after a successful stop.
    pub held: bool,
}

/// An operator hold on a server (see [`crate::failover::wire::WireHold`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub server: ServerIdx,
    pub held: bool,
    pub counter: u64,
    pub origin: String,
}

/// The newest incarnation and sequence number accepted from a peer: replay protection that
/// survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRecord {
    pub server: ServerIdx,
    pub incarnation: u64,
    pub seq: u64,
}

/// Something the store must keep, durable before the next output is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable {
    Claim(ClaimRecord),
    /// The highest epoch seen for a resource (a peer's claim or failure).
    Known {
        resource: ResourceIdx,
        epoch: Epoch,
    },
    /// The highest round a peer knows among the resources of home server `server`.
    Floor {
        server: ServerIdx,
        round: u64,
    },
    Hold(HoldRecord),
    Peer(PeerRecord),
    /// This node's incarnation jumped past one its peers remember (an empty store and a
    /// clock set back): the next boot must start above it.
    Incarnation(u64),
    /// The newest operator failback of this server already carried out, `(counter, origin)`.
    FailbackDone {
        counter: u64,
        origin: String,
    },
}

/// What a node persisted in earlier runs; empty for a new or wiped store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub claims: Vec<ClaimRecord>,
    pub known: Vec<(ResourceIdx, Epoch)>,
    pub floors: Vec<(ServerIdx, u64)>,
    pub holds: Vec<HoldRecord>,
    pub peers: Vec<PeerRecord>,
    pub failback_done: Option<(u64, String)>,
}

impl Restored {
    /// Applies durable records in order, as a store would.
    pub fn apply(&mut self, d: &Durable) {
        match d {
            Durable::Claim(c) => {
                self.claims.retain(|x| x.resource != c.resource);
                self.claims.push(*c);
                self.raise(c.resource, c.epoch);
            }
            Durable::Known { resource, epoch } => self.raise(*resource, *epoch),
            Durable::Floor { server, round } => {
                match self.floors.iter_mut().find(|(s, _)| s == server) {
                    Some((_, f)) => *f = (*f).max(*round),
                    None => self.floors.push((*server, *round)),
                }
            }
            Durable::Hold(h) => {
                self.holds.retain(|x| x.server != h.server);
                self.holds.push(h.clone());
            }
            Durable::Peer(p) => {
                self.peers.retain(|x| x.server != p.server);
                self.peers.push(*p);
            }
            Durable::Incarnation(_) => {}
            Durable::FailbackDone { counter, origin } => {
                self.failback_done = Some((*counter, origin.clone()));
            }
        }
    }

    fn raise(&mut self, r: ResourceIdx, epoch: Epoch) {
        match self.known.iter_mut().find(|(x, _)| *x == r) {
            Some((_, e)) => *e = (*e).max(epoch),
            None => self.known.push((r, epoch)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a heartbeat on our path `path` to `to`'s address on the same path.
    Send {
        path: usize,
        to: ServerIdx,
        bytes: Vec<u8>,
    },
    /// Make these durable before carrying out any later output.
    Persist(Vec<Durable>),
    Start {
        resource: ResourceIdx,
        epoch: Epoch,
        /// A takeover: the instant (on the core's clock) from which the resource must be
        /// covered, when its home server was last heard less a margin for what its agent had
        /// not written yet. A hot-standby agent keeps what it buffered from then on; an
        /// overlap is harmless, a gap is not. `None` for home claims, failbacks and resumes.
        cover_from: Option<Duration>,
    },
    /// Hot standby (`standby = true`): prepare the resource before any failure (`prepare`), or
    /// release what was prepared. This node is the first buddy that would take it over.
    Standby {
        resource: ResourceIdx,
        prepare: bool,
    },
    Stop {
        resource: ResourceIdx,
        epoch: Epoch,
    },
    Event(Event),
}

/// Epochs are `round * 100 + slot`. Every claim of a resource starts a new round, above every
/// epoch known for it; the slot is `99 - rank` of the claimant (home server 99, first buddy 98,
/// ...). Two nodes that claim the same resource at once, each unaware of the other, so pick
/// different epochs: an epoch names one owner, and the preferred claimant's is the higher.
pub const EPOCH_SLOTS: u64 = 100;

/// The round an epoch belongs to.
pub fn epoch_round(epoch: Epoch) -> u64 {
    epoch / EPOCH_SLOTS
}

/// The epoch of a claim in `round` by a server of tie-break `rank` for the resource.
pub fn new_epoch(round: u64, rank: usize) -> Epoch {
    round * EPOCH_SLOTS + (EPOCH_SLOTS - 1).saturating_sub(rank as u64)
}

/// Backoff between retries of a failed stop: 1 s doubling to 30 s. Deterministic (the core
/// has no randomness): stops of different resources fail for their own reasons.
pub fn stop_retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(5);
    Duration::from_secs(1 << doublings).min(Duration::from_secs(30))
}
