//! Operator holds. A manual `failover SERVER` holds the server out of service until a
//! `failback SERVER`: its resources move to its buddies and stay there through restarts,
//! reboots for maintenance and auto failback. A hold is state, not a message: every node keeps
//! the newest version per server in its store and carries all of them in every heartbeat, so a
//! node that was down, wiped or cut off when the command was given learns it from any peer.
//! Versions are a hybrid logical clock (above every version the origin had seen, at least its
//! wall clock in ms) with the origin's id as tie-break: the operator's last word wins.

use std::collections::BTreeMap;

use super::Node;
use crate::config::ServerIdx;
use crate::failover::io::{Durable, HoldRecord};
use crate::failover::wire::{Action, Name, WireHold};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hold {
    pub held: bool,
    pub counter: u64,
    pub origin: String,
}

impl Hold {
    fn version(&self) -> (u64, &str) {
        (self.counter, &self.origin)
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Holds {
    by_server: BTreeMap<ServerIdx, Hold>,
    /// The newest failback of this server already carried out.
    failback_done: Option<(u64, String)>,
}

impl Holds {
    pub fn restore(records: &[HoldRecord], failback_done: Option<(u64, String)>) -> Self {
        let mut h = Self {
            failback_done,
            ..Self::default()
        };
        for r in records {
            h.merge(r.server, r.held, r.counter, r.origin.clone());
        }
        h
    }

    /// Whether `s` is held out of service by an operator.
    pub fn held(&self, s: ServerIdx) -> bool {
        self.by_server.get(&s).is_some_and(|h| h.held)
    }

    /// Takes `held` at version `(counter, origin)` if it is newer; whether it was.
    pub fn merge(&mut self, s: ServerIdx, held: bool, counter: u64, origin: String) -> bool {
        let hold = Hold {
            held,
            counter,
            origin,
        };
        match self.by_server.get(&s) {
            Some(h) if h.version() >= hold.version() => false,
            _ => {
                self.by_server.insert(s, hold);
                true
            }
        }
    }

    pub fn record(&self, s: ServerIdx) -> Durable {
        let h = &self.by_server[&s];
        Durable::Hold(HoldRecord {
            server: s,
            held: h.held,
            counter: h.counter,
            origin: h.origin.clone(),
        })
    }

    /// A failback of `me` an operator asked for and this node has not carried out yet.
    pub fn failback_requested(&self, me: ServerIdx) -> Option<(u64, String)> {
        let h = self.by_server.get(&me)?;
        let version = (h.counter, h.origin.clone());
        let newer = self
            .failback_done
            .as_ref()
            .is_none_or(|(c, o)| (h.counter, h.origin.as_str()) > (*c, o.as_str()));
        (!h.held && newer).then_some(version)
    }

    pub fn set_failback_done(&mut self, version: (u64, String)) -> Durable {
        self.failback_done = Some(version.clone());
        Durable::FailbackDone {
            counter: version.0,
            origin: version.1,
        }
    }

    fn max_counter(&self) -> u64 {
        self.by_server
            .values()
            .map(|h| h.counter)
            .max()
            .unwrap_or(0)
    }

    pub fn wire(&self, name: impl Fn(ServerIdx) -> Name) -> Vec<WireHold> {
        self.by_server
            .iter()
            .map(|(&s, h)| WireHold {
                server: name(s),
                held: h.held,
                counter: h.counter,
                origin: h.origin.clone(),
            })
            .collect()
    }
}

impl Node {
    /// An operator's failover or failback of `server`, sent to this node.
    pub(super) fn on_command(&mut self, action: Action, server: ServerIdx, stamp: u64) {
        let counter = (self.holds.max_counter() + 1).max(stamp);
        let origin = self.ctx.id(self.ctx.me).to_string();
        let held = action == Action::Failover;
        if self.holds.merge(server, held, counter, origin) {
            self.lifted(server, held);
            self.pending.push(self.holds.record(server));
        }
        self.placement_dirty = true;
        self.send_now = true;
        self.urgent = true;
    }

    /// A hold on `s` changed: if it was lifted, what `s` last said (`leaving`, held) is stale
    /// until it speaks again; nothing takes its resources for that.
    pub(super) fn lifted(&mut self, s: ServerIdx, held: bool) {
        if let Some(p) = self.peers.by_server.get_mut(&s) {
            p.hold_lifted = !held;
        }
    }

    /// Whether an operator failback of this server is waiting to be carried out; if so it is
    /// marked done (durably): the caller carries it out now.
    pub(super) fn take_failback_request(&mut self) -> bool {
        match self.holds.failback_requested(self.ctx.me) {
            Some(version) => {
                let d = self.holds.set_failback_done(version);
                self.pending.push(d);
                true
            }
            None => false,
        }
    }
}
